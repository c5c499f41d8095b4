//! The daemon as a CrowdSec bouncer, against a real local API (Debian's
//! `crowdsec`) in the lab's server namespace: decisions made with `cscli`
//! become blocks of origin `crowdsec` that drop the attacker's datagrams at
//! XDP, a deleted decision lets them through again, a decision covering
//! the host's own address is refused, an administrator's block of the same
//! prefix stays theirs (and the ban applies if they lift it), and the
//! blocks stay while the API is down.

use std::{path::Path, time::Duration};

use serde_json::Value;
use spacefilter_tests::{
    crowdsec::Lapi,
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch, cli, metrics_page},
    netns::{Host, Lab},
    pki::Pki,
    require_root,
    traffic::{self, UdpSink, wait_until},
};

/// Between two polls of the decision stream.
const INTERVAL: &str = "200ms";
/// How long a decision may take to reach the maps: a few polls.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Where the daemon serves metrics, in the server's namespace.
const METRICS_PORT: u16 = 9977;
/// Datagrams sent from each host by one probe.
const PROBE: u64 = 20;

/// The entry `list` shows for `prefix`, if any.
fn entry(daemon: &DaemonProcess, prefix: &str) -> Option<Value> {
    let out = daemon.cli(&["list", "--json"]);
    serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .into_iter()
        .find(|e| e["prefix"] == prefix)
}

fn wait_for_entry(daemon: &DaemonProcess, prefix: &str, origin: &str) -> Value {
    let mut found = None;
    wait_until(TIMEOUT, || {
        found = entry(daemon, prefix).filter(|e| e["origin"] == origin);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "{prefix} never listed with origin {origin}: {:?}",
            entry(daemon, prefix)
        )
    })
}

fn attacker_gets_through(lab: &Lab, sink: &UdpSink) -> u64 {
    traffic::attacker_gets_through(lab, Host::Server, sink, PROBE, TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

fn link(daemon: &DaemonProcess) -> Value {
    let out = daemon.cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(out.ok("status")).expect("status JSON");
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["kind"] == "crowdsec").cloned())
        .unwrap_or(Value::Null)
}

/// A daemon following a local API in the lab's server namespace, and a
/// sink beside it. Fields drop in order: the daemon, the API, the sink,
/// the lab, the directory.
struct Bouncer {
    daemon: DaemonProcess,
    /// The daemon's paths and arguments, to start it again.
    paths: DaemonPaths,
    args: Vec<String>,
    lapi: Lapi,
    sink: UdpSink,
    lab: Lab,
    _dir: Scratch,
}

impl Bouncer {
    fn start() -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let dir = Scratch::new("crowdsec").expect("scratch directory");
        let lapi_dir = dir.join("lapi");
        std::fs::create_dir_all(&lapi_dir).expect("LAPI directory");
        let lapi = Lapi::start(&lab.ns(Host::Server), &lapi_dir).expect("starting the local API");
        let key_file = dir.join("bouncer.key");
        lapi.add_bouncer("spacefilter", &key_file)
            .expect("adding the bouncer");
        let sink = UdpSink::start(&lab, Host::Server).expect("UDP sink");
        // The bouncer's link comes from the config file's `[crowdsec]`
        // table, as in the packaged service (the other CrowdSec tests
        // give it as flags).
        let config = dir.join("spacefilter.toml");
        std::fs::write(
            &config,
            format!(
                "[crowdsec]\nurl = \"{}\"\nkey_file = \"{}\"\ninterval = \"{INTERVAL}\"\n",
                lapi.url(),
                key_file.display()
            ),
        )
        .expect("writing the config file");
        let args: Vec<String> = [
            "--capacity",
            "1024",
            "--config",
            config.to_str().expect("UTF-8"),
            "--metrics",
            &format!("127.0.0.1:{METRICS_PORT}"),
        ]
        .map(str::to_owned)
        .into();
        let paths = DaemonPaths::in_dir(&dir.join("daemon"));
        let daemon = start_daemon(&lab, &paths, &args);
        Self {
            daemon,
            paths,
            args,
            lapi,
            sink,
            lab,
            _dir: dir,
        }
    }

    /// Stops the daemon, runs `meanwhile`, and starts it again.
    fn restart_daemon(&mut self, meanwhile: impl FnOnce(&mut Self)) {
        self.daemon
            .terminate(STOP_TIMEOUT)
            .expect("stopping the daemon");
        meanwhile(self);
        self.daemon = start_daemon(&self.lab, &self.paths, &self.args);
    }

    fn attacker_gets_through(&self) -> u64 {
        attacker_gets_through(&self.lab, &self.sink)
    }

    fn cscli(&self, args: &[&str]) {
        self.lapi
            .cscli(args)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
}

/// Starts the daemon and waits until its link to the local API is up.
fn start_daemon(lab: &Lab, paths: &DaemonPaths, args: &[String]) -> DaemonProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    assert!(
        wait_until(TIMEOUT, || link(&daemon)["up"] == true),
        "the link to the local API comes up: {}",
        link(&daemon)
    );
    daemon
}

#[test]
fn crowdsec_decisions_are_enforced_at_xdp() {
    let bouncer = Bouncer::start();
    assert!(
        metrics_page(&bouncer.lab, METRICS_PORT)
            .contains("spacefilter_link_up{kind=\"crowdsec\"} 1"),
        "the metrics show the link up"
    );
    bans_come_and_go(&bouncer);
    the_guard_and_the_admin_come_first(&bouncer);
    let bouncer = the_blocks_stay_while_the_api_is_down(bouncer);
    a_start_catches_up(bouncer);
}

/// A ban on an address, deleted; a ban on a range.
fn bans_come_and_go(b: &Bouncer) {
    let daemon = &b.daemon;
    // No decision yet: the attacker gets through.
    assert_eq!(b.attacker_gets_through(), PROBE, "before any decision");

    b.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.18.2.66",
        "--duration",
        "1m",
    ]);
    let banned = wait_for_entry(daemon, "198.18.2.66/32", "crowdsec");
    let left = banned["expires_in_secs"].as_u64().expect("a timed entry");
    assert!(
        (1..=60).contains(&left),
        "the block lasts as long as the decision: {banned}"
    );
    assert_eq!(b.attacker_gets_through(), 0, "banned");

    // Deleted: through again.
    b.cscli(&["decisions", "delete", "--ip", "198.18.2.66"]);
    assert!(
        wait_until(TIMEOUT, || entry(daemon, "198.18.2.66/32").is_none()),
        "the deleted decision's block goes"
    );
    assert_eq!(b.attacker_gets_through(), PROBE, "after the delete");

    b.cscli(&[
        "decisions",
        "add",
        "--range",
        "198.18.2.0/24",
        "--duration",
        "2h",
    ]);
    wait_for_entry(daemon, "198.18.2.0/24", "crowdsec");
    assert_eq!(b.attacker_gets_through(), 0, "range banned");
}

/// A ban on the host's own address is refused by the lockout guard (a ban
/// beside it goes through); an administrator's block of a prefix CrowdSec
/// then bans stays theirs, and stays when the decision goes; if they lift
/// it while the ban holds, the ban applies.
fn the_guard_and_the_admin_come_first(b: &Bouncer) {
    let daemon = &b.daemon;
    b.cscli(&["decisions", "add", "--ip", "198.18.0.1", "--duration", "1m"]);
    b.cscli(&[
        "decisions",
        "add",
        "--ip",
        "203.0.113.9",
        "--duration",
        "1m",
    ]);
    wait_for_entry(daemon, "203.0.113.9/32", "crowdsec");
    assert!(
        wait_until(TIMEOUT, || daemon
            .log()
            .contains("CrowdSec ban on 198.18.0.1/32 refused")),
        "the refusal is logged"
    );
    assert!(
        entry(daemon, "198.18.0.1/32").is_none(),
        "the host's own address is not blocked"
    );

    for held in ["203.0.113.50/32", "203.0.113.52/32"] {
        daemon
            .cli(&["block", held, "--comment", "by hand"])
            .ok("manual block");
    }
    // The bans on the administrator's prefixes come before the one on
    // 203.0.113.51: once that one is listed, the others have been read.
    for ip in ["203.0.113.50", "203.0.113.52", "203.0.113.51"] {
        b.cscli(&["decisions", "add", "--ip", ip, "--duration", "1m"]);
    }
    wait_for_entry(daemon, "203.0.113.51/32", "crowdsec");
    for held in ["203.0.113.50/32", "203.0.113.52/32"] {
        assert_eq!(
            entry(daemon, held).expect("still listed")["origin"],
            "manual"
        );
    }
    // The administrator lifts their block of 203.0.113.52 while CrowdSec's
    // ban on it holds: the ban applies, for the time left on it.
    daemon
        .cli(&["unblock", "203.0.113.52/32"])
        .ok("manual unblock");
    let resumed = wait_for_entry(daemon, "203.0.113.52/32", "crowdsec");
    let left = resumed["expires_in_secs"].as_u64().expect("a timed entry");
    assert!(
        (1..=60).contains(&left),
        "the block lasts as long as the decision: {resumed}"
    );
    assert!(
        daemon
            .log()
            .contains("CrowdSec bans 203.0.113.52/32, whose block by someone else is gone"),
        "the ban's return is logged"
    );
    for ip in ["203.0.113.50", "203.0.113.51", "203.0.113.52"] {
        b.cscli(&["decisions", "delete", "--ip", ip]);
    }
    for lifted in ["203.0.113.51/32", "203.0.113.52/32"] {
        assert!(
            wait_until(TIMEOUT, || entry(daemon, lifted).is_none()),
            "{lifted}: the decision deleted after it is lifted"
        );
    }
    assert_eq!(
        entry(daemon, "203.0.113.50/32").expect("the manual block stays")["origin"],
        "manual"
    );
}

/// The API goes down: the blocks stay, and status says so.
fn the_blocks_stay_while_the_api_is_down(mut b: Bouncer) -> Bouncer {
    b.lapi.stop();
    let daemon = &b.daemon;
    assert!(
        wait_until(TIMEOUT, || link(daemon)["up"] == false),
        "the link goes down: {}",
        link(daemon)
    );
    let down = link(daemon);
    assert!(down["last_error"].is_string(), "the error is shown: {down}");
    assert!(
        cli(daemon.socket(), &["status"])
            .ok("status")
            .contains("link crowdsec http://127.0.0.1:8080: DOWN"),
        "status prints the link"
    );
    let page = metrics_page(&b.lab, METRICS_PORT);
    assert!(
        page.contains("spacefilter_link_up{kind=\"crowdsec\"} 0"),
        "the metrics show the link down: {page}"
    );
    wait_for_entry(daemon, "198.18.2.0/24", "crowdsec");
    assert_eq!(
        b.attacker_gets_through(),
        0,
        "still banned while the API is down"
    );
    b
}

/// Decisions deleted and added while the daemon was stopped: its first
/// poll lifts the deleted ones' blocks (kept by its state directory) and
/// applies the new ones; an administrator's block is left alone.
fn a_start_catches_up(mut b: Bouncer) {
    b.lapi.restart().expect("starting the local API again");
    b.restart_daemon(|b| {
        b.cscli(&["decisions", "delete", "--range", "198.18.2.0/24"]);
        b.cscli(&[
            "decisions",
            "add",
            "--ip",
            "203.0.113.77",
            "--duration",
            "1m",
        ]);
    });
    let daemon = &b.daemon;
    wait_for_entry(daemon, "203.0.113.77/32", "crowdsec");
    assert!(
        wait_until(TIMEOUT, || entry(daemon, "198.18.2.0/24").is_none()),
        "the range deleted meanwhile is lifted: {:?}",
        entry(daemon, "198.18.2.0/24")
    );
    assert_eq!(
        b.attacker_gets_through(),
        PROBE,
        "through after the catch-up"
    );
    assert_eq!(
        entry(daemon, "203.0.113.50/32").expect("the manual block stays")["origin"],
        "manual"
    );
}

#[test]
fn a_missing_key_file_is_bad_input() {
    let dir = Scratch::new("crowdsec-bad").expect("scratch directory");
    let missing = dir.join("no-such.key");
    let out = cli(
        &dir.join("sock"),
        &[
            "run",
            "--iface",
            "eth0",
            "--crowdsec",
            "http://127.0.0.1:8080",
            "--crowdsec-key-file",
            missing.to_str().expect("UTF-8"),
        ],
    );
    out.expect_code(2, "run with a missing key file");
    assert!(
        out.stderr.contains("--crowdsec-key-file"),
        "the error names the option: {}",
        out.stderr
    );
    let out = cli(
        &dir.join("sock"),
        &[
            "run",
            "--iface",
            "eth0",
            "--crowdsec",
            "127.0.0.1:8080",
            "--crowdsec-key-file",
            "/dev/null",
        ],
    );
    out.expect_code(2, "run with a URL without a scheme");
    assert!(
        out.stderr.contains("http://"),
        "the error says what to give: {}",
        out.stderr
    );
}

/// A local API served over https with a certificate of a private CA: the
/// daemon polls it with `--crowdsec-cacert`, and without it says in
/// `status` that no CA it trusts signed the certificate.
#[test]
fn an_https_local_api_is_trusted_with_its_ca() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("crowdsec-tls").expect("scratch directory");
    let pki = Pki::generate(&dir.join("pki"), "127.0.0.1".parse().expect("an address"))
        .expect("making the certificates");
    let lapi_dir = dir.join("lapi");
    std::fs::create_dir_all(&lapi_dir).expect("LAPI directory");
    let lapi = Lapi::start_with(&lab.ns(Host::Server), &lapi_dir, Some(&pki))
        .expect("starting the local API");
    assert!(lapi.url().starts_with("https://"), "{}", lapi.url());
    let key_file = dir.join("bouncer.key");
    lapi.add_bouncer("spacefilter", &key_file)
        .expect("adding the bouncer");
    let path = |p: &Path| p.to_str().expect("UTF-8").to_owned();
    let args = |cacert: Option<&Path>| {
        let mut args: Vec<String> = [
            "--capacity",
            "1024",
            "--crowdsec",
            &lapi.url(),
            "--crowdsec-key-file",
            &path(&key_file),
            "--crowdsec-interval",
            INTERVAL,
        ]
        .map(str::to_owned)
        .into();
        if let Some(cacert) = cacert {
            args.extend(["--crowdsec-cacert".to_owned(), path(cacert)]);
        }
        args
    };
    let paths = DaemonPaths::in_dir(&dir.join("daemon"));
    let mut daemon = start_daemon(&lab, &paths, &args(Some(&pki.ca)));
    daemon.terminate(STOP_TIMEOUT).expect("stopping the daemon");
    let args = args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let mut last = Value::Null;
    assert!(
        wait_until(TIMEOUT, || {
            last = link(&daemon);
            last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("UnknownIssuer"))
        }),
        "without the CA, the link says the certificate is not trusted: {last}"
    );
    assert_eq!(last["up"], false, "{last}");
}
