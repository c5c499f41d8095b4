//! The Prometheus endpoint end to end: known traffic through a real daemon
//! in the lab, scraped by a real HTTP client (curl, in the server's
//! namespace, where the daemon listens on loopback), parsed by a Prometheus
//! text parser, every counter checked against what was sent.

use std::{net::SocketAddr, process::Command, time::Duration};

use prometheus_parse::{Scrape, Value};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, Scratch},
    netns::{Family, Host, Lab},
    require_root,
    traffic::{UdpSink, send_udp, wait_until},
};

const METRICS: &str = "127.0.0.1:9977";

fn scrape(lab: &Lab) -> Scrape {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Server)])
        .args([
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of `metric` with the label `label` = `value` (or none).
fn value(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {metric} {label:?}"))
}

#[test]
#[expect(clippy::cast_precision_loss, reason = "small counts")]
fn counters_match_the_traffic_sent() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("metrics").expect("scratch");
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &["--capacity", "1024", "--metrics", METRICS],
    )
    .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let sink = UdpSink::start(&lab, Host::Server).expect("sink");
    let drop_port = 7001_u16;
    let limit_port = 7002_u16;
    daemon.cli(&["block", "198.18.2.0/24"]).ok("block");
    daemon
        .cli(&[
            "rule", "add", "--action", "drop", "--proto", "udp", "--dport", "7001",
        ])
        .ok("drop rule");
    daemon
        .cli(&[
            "rule", "add", "--action", "limit", "--proto", "udp", "--dport", "7002", "--pps", "1",
            "--burst", "10",
        ])
        .ok("limit rule");
    let server = Host::Server.addr(Family::V4);
    let before = scrape(&lab);
    let counter =
        |s: &Scrape, reason: &str| value(s, "spacefilter_packets_total", Some(("reason", reason)));

    let blocked = send_udp(
        &lab,
        Host::Attacker,
        SocketAddr::new(server, sink.port()),
        300,
        Duration::from_micros(500),
    )
    .expect("attacker");
    let dropped = send_udp(
        &lab,
        Host::Listener,
        SocketAddr::new(server, drop_port),
        120,
        Duration::from_micros(500),
    )
    .expect("to the dropped port");
    let limited = send_udp(
        &lab,
        Host::Listener,
        SocketAddr::new(server, limit_port),
        100,
        Duration::from_micros(500),
    )
    .expect("to the limited port");
    let clean = send_udp(
        &lab,
        Host::Listener,
        SocketAddr::new(server, sink.port()),
        200,
        Duration::from_micros(500),
    )
    .expect("clean");
    assert!(
        sink.wait_for(
            Host::Listener.addr(Family::V4),
            clean,
            Duration::from_secs(3)
        ) >= clean
    );

    let mut after = scrape(&lab);
    assert!(wait_until(Duration::from_secs(3), || {
        after = scrape(&lab);
        counter(&after, "blocked") - counter(&before, "blocked") >= blocked as f64
    }));
    let delta = |reason| counter(&after, reason) - counter(&before, reason);
    assert_eq!(delta("blocked"), blocked as f64);
    assert_eq!(delta("rule_dropped"), dropped as f64);
    assert_eq!(
        value(&after, "spacefilter_rule_hits_total", Some(("rule", "1"))),
        dropped as f64
    );
    assert_eq!(
        delta("rule_limited") + delta("rule_passed"),
        limited as f64,
        "the limit rule's frames"
    );
    assert!(delta("rule_limited") >= 85.0, "{}", delta("rule_limited"));
    assert_eq!(
        value(&after, "spacefilter_rule_hits_total", Some(("rule", "2"))),
        limited as f64
    );
    // The clean datagrams, and whatever else the listener's stack sent
    // (neighbour discovery), passed.
    assert!(delta("passed") >= clean as f64);
    assert_eq!(
        value(&after, "spacefilter_entries", Some(("list", "block"))),
        1.0
    );
    assert_eq!(value(&after, "spacefilter_up", None), 1.0);
    assert!(value(&after, "spacefilter_limiter_sources_max", None) > 0.0);
    // Bytes too: every blocked frame is at least a minimal UDP frame.
    let bytes = value(
        &after,
        "spacefilter_bytes_total",
        Some(("reason", "blocked")),
    ) - value(
        &before,
        "spacefilter_bytes_total",
        Some(("reason", "blocked")),
    );
    assert!(bytes >= blocked as f64 * 42.0, "{bytes}");
}

#[test]
fn metrics_refuse_a_public_address_unless_asked() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("metricspub").expect("scratch");
    let mut daemon = DaemonProcess::spawn(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &["--capacity", "1024", "--metrics", "0.0.0.0:9977"],
    )
    .expect("spawning");
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(2), "{}", daemon.log());
    assert!(
        daemon.log().contains("--metrics-public"),
        "{}",
        daemon.log()
    );
}
