//! The config file's `allow` and `block` entries, end to end with a real
//! daemon: they are listed with origin `config`, and a line taken out of
//! the file takes its entry out at the next start, while entries added by
//! hand stay.

use serde_json::Value;
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch},
    netns::{Host, Lab},
    require_root,
};

/// `(list, prefix, origin)` of every entry.
fn entries(daemon: &DaemonProcess) -> Vec<(String, String, String)> {
    let out = daemon.cli(&["list", "--json"]);
    let mut all: Vec<(String, String, String)> = serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .into_iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
            (field("list"), field("prefix"), field("origin"))
        })
        .collect();
    all.sort();
    all
}

fn entry(list: &str, prefix: &str, origin: &str) -> (String, String, String) {
    (list.to_owned(), prefix.to_owned(), origin.to_owned())
}

#[test]
fn a_line_taken_out_of_the_config_takes_its_entry_out() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("config").expect("scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let config = dir.path().join("spacefilter.toml");
    let config_arg = config.to_str().expect("a UTF-8 path").to_owned();
    std::fs::write(
        &config,
        "allow = [\"198.51.100.0/24\"]\nblock = [\"198.18.9.0/24\", \"2001:db8:9::/48\"]\n",
    )
    .expect("writing the config");
    let mut daemon =
        DaemonProcess::start(&lab.ns(Host::Server), &paths, &["--config", &config_arg])
            .expect("starting the daemon");
    assert_eq!(
        entries(&daemon),
        vec![
            entry("allow", "198.51.100.0/24", "config"),
            entry("block", "198.18.9.0/24", "config"),
            entry("block", "2001:db8:9::/48", "config"),
        ]
    );
    daemon.cli(&["block", "198.18.7.7"]).ok("block by hand");
    daemon.terminate(STOP_TIMEOUT).expect("stopping");

    // One block line and the allow line gone: their entries go, the rest
    // (the file's other block, the one added by hand) stays.
    std::fs::write(&config, "block = [\"198.18.9.0/24\"]\n").expect("rewriting the config");
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &["--config", &config_arg])
        .expect("restarting the daemon");
    assert_eq!(
        entries(&daemon),
        vec![
            entry("block", "198.18.7.7/32", "manual"),
            entry("block", "198.18.9.0/24", "config"),
        ]
    );
}
