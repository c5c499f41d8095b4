//! Kernel features the program does without: a feature switched off (as
//! if the kernel lacked its helpers) leaves a working filter without it,
//! and `status` says which feature is off and why.

use std::{net::SocketAddr, time::Duration};

use spacefilter::api::{StatsView, StatusView};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch, metrics_page},
    netns::{Family, Host, Lab},
    require_root, shield,
    traffic::{TcpEcho, send_udp, tcp_exchange, wait_until},
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Connections made through the shield in a row.
const CONNECTIONS: u64 = 10;
/// A port nothing listens on.
const DISCARD: u16 = 9;

fn stats(daemon: &DaemonProcess) -> StatsView {
    serde_json::from_str(daemon.cli(&["stats", "--json"]).ok("stats")).expect("stats --json")
}

fn packets(stats: &StatsView, reason: &str) -> u64 {
    stats.reasons.get(reason).map_or(0, |c| c.packets)
}

fn status(daemon: &DaemonProcess) -> StatusView {
    serde_json::from_str(daemon.cli(&["status", "--json"]).ok("status")).expect("status --json")
}

/// The same daemon, first with every feature the kernel has (the positive
/// control: SYNs to the shielded port are answered with cookies at XDP),
/// then with `--without tcp-cookies`: the same clients still connect,
/// through the kernel's own cookies and the shield's budget, the lists
/// still drop, and `status` names the feature that is off.
#[test]
fn without_tcp_cookies_the_filter_works_and_says_so() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let _tools = shield::accept_xdp_tx(&lab, "floor_pass").expect("an XDP program on the switch");
    let echo = TcpEcho::start(&lab, Host::Server).expect("starting the TCP echo service");
    let port = echo.port();
    let dir = Scratch::new("features").expect("a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let server = SocketAddr::new(Host::Server.addr(Family::V4), port);
    let spec = format!("tcp/{port}");
    let exchanges = |what: &str| {
        for i in 0..CONNECTIONS {
            tcp_exchange(&lab, Host::Listener, server, TIMEOUT)
                .unwrap_or_else(|err| panic!("{what}: exchange {i}: {err:#}"));
        }
    };

    // Every feature on.
    let mut daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &["--capacity", "1024"])
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    daemon
        .cli(&["shield", "on", "--ports", &spec])
        .ok("shield on");
    let view = status(&daemon);
    assert!(
        view.features_off.is_empty(),
        "this kernel has every feature: {:?}",
        view.features_off
    );
    exchanges("with cookies at XDP");
    assert_eq!(
        packets(&stats(&daemon), "syn_cookie"),
        CONNECTIONS,
        "every SYN answered at XDP"
    );
    daemon.terminate(STOP_TIMEOUT).expect("stopping");

    // The same state directory (the shield stays on), without the feature.
    let mut daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &paths,
        &[
            "--capacity",
            "1024",
            "--without",
            "tcp-cookies",
            "--metrics",
            "127.0.0.1:9979",
        ],
    )
    .unwrap_or_else(|err| panic!("starting the daemon without tcp-cookies: {err:#}"));
    let view = status(&daemon);
    assert_eq!(view.features_off.len(), 1, "{:?}", view.features_off);
    let off = &view.features_off[0];
    assert_eq!(off.feature, "tcp-cookies");
    assert!(off.why.contains("--without"), "{off:?}");
    assert!(off.instead.contains("own cookies"), "{off:?}");
    let text = daemon.cli(&["status"]);
    assert!(
        text.ok("status")
            .contains("feature tcp-cookies off: switched off by `run --without`"),
        "status says so: {}",
        text.stdout
    );
    assert!(
        daemon.log().contains("kernel feature tcp-cookies is off"),
        "the log says so: {}",
        daemon.log()
    );

    let metrics = metrics_page(&lab, 9979);
    for (feature, on) in [("tcp-cookies", 0), ("frame-heads", 1), ("coarse-clock", 1)] {
        let line = format!("spacefilter_kernel_feature{{feature=\"{feature}\"}} {on}");
        assert!(metrics.contains(&line), "{line} in the metrics:\n{metrics}");
    }

    let before = stats(&daemon);
    exchanges("without cookies at XDP");
    let after = stats(&daemon);
    assert_eq!(
        packets(&after, "syn_cookie"),
        packets(&before, "syn_cookie"),
        "no SYN answered at XDP"
    );
    assert!(
        packets(&after, "passed") >= packets(&before, "passed") + CONNECTIONS,
        "the handshakes went on to the kernel: {after:?}"
    );

    lists_still_drop(&lab, &daemon);
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    drop(echo);
}

/// The attacker's frames pass (the positive control), then are dropped
/// once blocked.
fn lists_still_drop(lab: &Lab, daemon: &DaemonProcess) {
    let attacker = Host::Attacker.addr(Family::V4).to_string();
    let to = SocketAddr::new(Host::Server.addr(Family::V4), DISCARD);
    let before = stats(daemon);
    send_udp(lab, Host::Attacker, to, 20, Duration::from_millis(1)).expect("sending");
    assert!(
        wait_until(TIMEOUT, || packets(&stats(daemon), "passed")
            >= packets(&before, "passed") + 20),
        "the attacker's frames pass before the block"
    );
    let between = stats(daemon);
    assert_eq!(packets(&between, "blocked"), packets(&before, "blocked"));
    daemon.cli(&["block", &attacker]).ok("block");
    send_udp(lab, Host::Attacker, to, 20, Duration::from_millis(1)).expect("sending");
    assert!(
        wait_until(TIMEOUT, || packets(&stats(daemon), "blocked")
            == packets(&between, "blocked") + 20),
        "blocked without the feature: {:?}",
        stats(daemon)
    );
}

/// An unknown feature is refused at start with exit 2, naming the bad
/// value and the good ones.
#[test]
fn without_refuses_an_unknown_feature() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("features-bad").expect("a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let mut daemon =
        DaemonProcess::spawn(&lab.ns(Host::Server), &paths, &["--without", "syn-cookies"])
            .unwrap_or_else(|err| panic!("spawning the daemon: {err:#}"));
    let status = daemon.wait_exit(Duration::from_secs(15)).expect("exiting");
    assert_eq!(status.code(), Some(2), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("syn-cookies") && log.contains("tcp-cookies"),
        "names the bad value and the good ones: {log}"
    );
}
