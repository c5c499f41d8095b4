//! The Prometheus endpoint end to end: known traffic through a real daemon
//! in the lab, scraped by a real HTTP client (curl, in the server's
//! namespace, where the daemon listens on loopback), parsed by a Prometheus
//! text parser, every counter checked against what was sent.

use std::{net::SocketAddr, process::Command, time::Duration};

use prometheus_parse::{Scrape, Value};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, Scratch},
    netns::{Family, Host, IFACE, Lab},
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

/// The value of `metric` with all of `labels`; every metric here counts
/// whole things.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts, whole and positive"
)]
fn value_with(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {metric} {labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v.round() as u64,
        _ => panic!("{metric} is not a number"),
    }
}

/// The value of `metric` with the label `label` (or the first sample).
fn value(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> u64 {
    value_with(scrape, metric, label.as_slice())
}

/// Packets of `reason` on the server's interface.
fn packets(scrape: &Scrape, reason: &str) -> u64 {
    value_with(
        scrape,
        "spacefilter_packets_total",
        &[("reason", reason), ("iface", IFACE)],
    )
}

/// Sends `count` datagrams from `from` to the server's `port`, a little
/// apart so that no queue on the way overflows.
fn send(lab: &Lab, from: Host, port: u16, count: u64) -> u64 {
    let to = SocketAddr::new(Host::Server.addr(Family::V4), port);
    send_udp(lab, from, to, count, Duration::from_micros(500)).expect("sending")
}

/// A lab, and a daemon serving metrics in its server's namespace, with a
/// UDP sink there.
fn start(tag: &str) -> (Lab, Scratch, DaemonProcess, UdpSink) {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new(tag).expect("scratch");
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &["--capacity", "1024", "--metrics", METRICS],
    )
    .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let sink = UdpSink::start(&lab, Host::Server).expect("sink");
    (lab, dir, daemon, sink)
}

#[test]
fn counters_match_the_traffic_sent() {
    let (lab, _dir, daemon, sink) = start("metrics");
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

    let before = scrape(&lab);
    let blocked = send(&lab, Host::Attacker, sink.port(), 300);
    let dropped = send(&lab, Host::Listener, 7001, 120);
    let limited = send(&lab, Host::Listener, 7002, 100);
    let clean = send(&lab, Host::Listener, sink.port(), 200);
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
        packets(&after, "blocked") - packets(&before, "blocked") >= blocked
    }));
    let delta = |reason| packets(&after, reason) - packets(&before, reason);

    assert_eq!(delta("blocked"), blocked);
    assert_eq!(delta("rule_dropped"), dropped);
    let hits = |rule| value(&after, "spacefilter_rule_hits_total", Some(("rule", rule)));
    assert_eq!(hits("1"), dropped);
    assert_eq!(delta("rule_limited") + delta("rule_passed"), limited);
    assert!(delta("rule_limited") >= 85, "{}", delta("rule_limited"));
    assert_eq!(hits("2"), limited);
    // The clean datagrams, and whatever else the listener's stack sent
    // (neighbour discovery), passed.
    assert!(delta("passed") >= clean);
    assert_eq!(
        value(&after, "spacefilter_entries", Some(("list", "block"))),
        1
    );
    assert_eq!(value(&after, "spacefilter_up", None), 1);
    assert!(value(&after, "spacefilter_limiter_sources_max", None) > 0);
    // Bytes too: every blocked frame is at least a minimal UDP frame.
    let bytes = |s| value(s, "spacefilter_bytes_total", Some(("reason", "blocked")));
    assert!(bytes(&after) - bytes(&before) >= blocked * 42);
    // Every frame came in on the one attached interface.
    assert!(
        !after.samples.iter().any(
            |s| s.metric == "spacefilter_packets_total" && s.labels.get("iface") != Some(IFACE)
        ),
        "frames counted elsewhere than {IFACE}"
    );
    // The sampler (1 in 100 by default) saw some of the drops, and sent
    // what it picked: nothing here comes near its cap.
    assert_eq!(value(&after, "spacefilter_sample_every", None), 100);
    let samples = |outcome| {
        value(
            &after,
            "spacefilter_samples_total",
            Some(("outcome", outcome)),
        )
    };
    assert_eq!(samples("capped") + samples("lost"), 0);
    assert!(samples("sent") <= blocked + dropped + limited);
}

/// The per-source rate limiter's verdicts, and its auto-blocks.
#[test]
fn rate_limits_and_auto_blocks_are_counted() {
    let (lab, _dir, daemon, sink) = start("metricslim");
    // The per-source rate limiter: the attacker held to 50
    // datagrams a second (burst 50) while it sends 300 in about 0.15 s,
    // and auto-blocked once it has stayed over its limit for 50 ms.
    daemon
        .cli(&[
            "limit",
            "set",
            "--pps",
            "50",
            "--burst",
            "50",
            "--block-after",
            "50ms",
            "--block-ttl",
            "1m",
        ])
        .ok("limit");
    let before = scrape(&lab);
    let sent = send(&lab, Host::Attacker, sink.port(), 300);
    // Never all of them: this waits the whole second, for the last
    // arrivals.
    let through = sink.wait_for(
        Host::Attacker.addr(Family::V4),
        sent,
        Duration::from_secs(1),
    );
    let held = |s: &Scrape| {
        packets(s, "rate_limited") - packets(&before, "rate_limited") + packets(s, "auto_blocked")
            - packets(&before, "auto_blocked")
    };
    let mut after = scrape(&lab);
    assert!(wait_until(Duration::from_secs(3), || {
        after = scrape(&lab);
        held(&after) + through >= sent && value(&after, "spacefilter_auto_blocks_total", None) == 1
    }));
    assert_eq!(
        held(&after) + through,
        sent,
        "every datagram was held or arrived"
    );
    let limited = packets(&after, "rate_limited") - packets(&before, "rate_limited");
    let auto_blocked = packets(&after, "auto_blocked") - packets(&before, "auto_blocked");
    assert!(
        limited > 0 && auto_blocked > 0,
        "{limited} limited, {auto_blocked} auto-blocked"
    );
    assert!(
        (200..=250).contains(&(limited + auto_blocked)),
        "{limited} + {auto_blocked}"
    );
    assert_eq!(
        value(&after, "spacefilter_entries", Some(("list", "auto"))),
        1
    );
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
