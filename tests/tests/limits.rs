//! The per-source rate limiter end to end: a real daemon in the lab's
//! server namespace, steered with the real CLI, real UDP streams from the
//! listener and the attacker.

use std::{net::SocketAddr, thread, time::Duration};

use serde_json::Value;
use spacefilter_tests::{
    daemon::{DaemonProcess, SinkLab},
    netns::{Family, Host},
    traffic::{UdpStream, wait_until},
};

/// Stops `stream` from `host` and checks that all it sent arrived.
fn assert_all_arrived(s: &SinkLab, host: Host, stream: UdpStream) {
    let sent = stream.stop();
    assert!(
        wait_until(Duration::from_secs(2), || s.received(host) >= sent),
        "{host} lost packets: sent {sent}, received {}",
        s.received(host)
    );
}

#[test]
fn attacker_over_its_limit_is_cut_then_auto_blocked_then_released() {
    let s = SinkLab::new("limit");
    s.daemon
        .cli(&[
            "limit",
            "set",
            "--pps",
            "200",
            "--burst",
            "50",
            "--block-after",
            "2s",
            "--block-ttl",
            "3s",
        ])
        .ok("limit set");
    let shown = s.daemon.cli(&["limit", "show", "--json"]);
    let limits: Value = serde_json::from_str(shown.ok("limit show")).expect("JSON");
    assert_eq!(limits["pps"], 200);

    // The listener stays well within the limit for the whole test.
    let listener = s.stream(Host::Listener, 100);
    let attacker = s.stream(Host::Attacker, 2000);

    // Over its limit: most of the attacker's flood is dropped...
    assert!(
        wait_until(Duration::from_secs(5), || s.counter("rate_limited") > 500),
        "no rate limiting seen: {}",
        s.daemon.log()
    );
    // ... and after two seconds over it, it is blocked outright.
    assert!(
        wait_until(Duration::from_secs(6), || s
            .entries()
            .iter()
            .any(|e| e["list"] == "auto" && e["origin"] == "auto")),
        "no auto-block listed: {:?}\n{}",
        s.entries(),
        s.daemon.log()
    );
    let entry = s
        .entries()
        .into_iter()
        .find(|e| e["list"] == "auto")
        .expect("listed");
    assert_eq!(entry["prefix"], "198.18.2.66/32");
    assert!(s.counter("auto_blocked") > 0);
    let during = s.received(Host::Attacker);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.received(Host::Attacker),
        during,
        "the auto-blocked attacker still gets through"
    );
    let hits = s
        .entries()
        .into_iter()
        .find(|e| e["list"] == "auto")
        .and_then(|e| e["hits"].as_u64())
        .unwrap_or(0);
    assert!(hits > 100, "the auto-block counted {hits} hits");

    // The block expires: the entry goes, and the attacker's traffic (now
    // stopped) would be let through again up to its limit.
    drop(attacker);
    assert!(
        wait_until(Duration::from_secs(8), || !s
            .entries()
            .iter()
            .any(|e| e["list"] == "auto")),
        "the auto-block did not expire: {:?}",
        s.entries()
    );
    let after = s.received(Host::Attacker);
    let _gentle = s.stream(Host::Attacker, 50);
    assert!(
        wait_until(Duration::from_secs(3), || s.received(Host::Attacker)
            > after + 20),
        "the attacker's traffic did not come back after the auto-block expired"
    );

    // The listener lost nothing: everything it sent arrived.
    assert_all_arrived(&s, Host::Listener, listener);
}

#[test]
fn dry_run_counts_without_dropping() {
    let s = SinkLab::new("dryrun");
    s.daemon
        .cli(&["limit", "set", "--pps", "100", "--burst", "20", "--dry-run"])
        .ok("limit set --dry-run");
    let attacker = s.stream(Host::Attacker, 1000);
    assert!(
        wait_until(Duration::from_secs(5), || s.counter("would_limit") > 300),
        "no would_limit counted"
    );
    assert_all_arrived(&s, Host::Attacker, attacker);
    assert_eq!(s.counter("rate_limited"), 0);
    assert_eq!(s.counter("auto_blocked"), 0);

    // Off: nothing counted any more.
    s.daemon.cli(&["limit", "off"]).ok("limit off");
    let before = s.counter("would_limit");
    let _attacker = s.stream(Host::Attacker, 1000);
    thread::sleep(Duration::from_millis(700));
    assert_eq!(s.counter("would_limit"), before);
}

#[test]
fn bad_limits_are_refused_and_limits_survive_a_restart() {
    let mut s = SinkLab::new("limitbad");
    for (args, what) in [
        (vec!["limit", "set"], "no rate"),
        (
            vec!["limit", "set", "--pps", "10", "--v6-prefix", "129"],
            "prefix",
        ),
        (
            vec!["limit", "set", "--pps", "0", "--bps", "0"],
            "zero rates",
        ),
        (
            vec!["limit", "set", "--pps", "18446744073709551615"],
            "a rate past any counter",
        ),
        (
            vec!["limit", "set", "--syn-pps", "18446744073709551615"],
            "a SYN rate past any counter",
        ),
    ] {
        let out = s.daemon.cli(&args);
        out.expect_code(2, what);
        assert!(
            out.stderr.contains("not supported") || what != "a rate past any counter",
            "{}",
            out.stderr
        );
    }
    s.daemon
        .cli(&["limit", "set", "--bps", "100000", "--block-after", "5s"])
        .ok("limit set");
    s.daemon.kill().expect("kill -9");
    let paths = s.daemon.paths().clone();
    s.daemon = DaemonProcess::start(&s.lab.ns(Host::Server), &paths, &["--capacity", "1024"])
        .expect("restarting");
    let shown = s.daemon.cli(&["limit", "show", "--json"]);
    let limits: Value = serde_json::from_str(shown.ok("limit show")).expect("JSON");
    assert_eq!(limits["enabled"], true);
    assert_eq!(limits["bps"], 100_000);
    assert_eq!(limits["block_after_ms"], 5000);
    // The clock the guards read, as `limit show` names it: the coarse one
    // while every burst holds 10 ms of its rate, the precise one for a
    // shorter burst, none with the guards off.
    let shown = |daemon: &DaemonProcess| daemon.cli(&["limit", "show"]).ok("limit show").to_owned();
    assert!(
        shown(&s.daemon).contains("clock: the kernel's coarse clock"),
        "{}",
        shown(&s.daemon)
    );
    s.daemon
        .cli(&["limit", "set", "--pps", "100000", "--burst", "100"])
        .ok("limit set");
    assert!(
        shown(&s.daemon).contains("clock: the precise clock"),
        "{}",
        shown(&s.daemon)
    );
    s.daemon.cli(&["limit", "off"]).ok("limit off");
    assert!(!shown(&s.daemon).contains("clock:"), "{}", shown(&s.daemon));
}

#[test]
fn reflection_from_ntp_and_memcached_is_dropped_while_clients_pass() {
    let s = SinkLab::new("reflect");
    // The sink listens on an ephemeral port: name it a service port.
    let port = s.sink.port().to_string();
    s.daemon
        .cli(&["reflect", "set", "--service-ports", &port])
        .ok("reflect set");
    let shown = s.daemon.cli(&["reflect", "show", "--json"]);
    let view: Value = serde_json::from_str(shown.ok("reflect show")).expect("JSON");
    assert_eq!(view["reflect"], true, "the guard is on by default");

    let to = SocketAddr::new(Host::Server.addr(Family::V4), s.sink.port());
    for reflector in [123_u16, 11211] {
        let sent = s
            .lab
            .run_in(Host::Attacker, move || -> std::io::Result<u64> {
                let socket = std::net::UdpSocket::bind(("0.0.0.0", reflector))?;
                for _ in 0..100 {
                    socket.send_to(b"amplified answer", to)?;
                }
                Ok(100)
            })
            .expect("in the attacker's namespace")
            .expect("sending from a reflector port");
        assert_eq!(sent, 100);
    }
    let listener = s.stream(Host::Listener, 200);
    assert!(
        wait_until(Duration::from_secs(5), || s.counter("reflection") >= 200),
        "reflection counted: {}",
        s.counter("reflection")
    );
    assert_eq!(
        s.received(Host::Attacker),
        0,
        "reflected UDP reached the service"
    );
    assert_all_arrived(&s, Host::Listener, listener);
}

#[test]
fn syn_flood_is_cut_while_the_listener_connects() {
    use spacefilter_tests::traffic::{TcpEcho, tcp_exchange};
    let s = SinkLab::new("synflood");
    let echo = TcpEcho::start(&s.lab, Host::Server).expect("TCP echo");
    let to = SocketAddr::new(Host::Server.addr(Family::V4), echo.port());
    s.daemon
        .cli(&["limit", "set", "--syn-pps", "5", "--syn-burst", "5"])
        .ok("limit set --syn-pps");
    // The attacker opens connections as fast as it can: SYN after SYN.
    let flood = thread::spawn({
        let attacker_ns = s.lab.ns(Host::Attacker);
        move || {
            spacefilter_tests::netns::run_in_netns(&attacker_ns, move || {
                for _ in 0..300 {
                    let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(2));
                }
            })
        }
    });
    // Meanwhile the listener's connections all get through.
    for _ in 0..5 {
        tcp_exchange(&s.lab, Host::Listener, to, Duration::from_secs(3))
            .expect("the listener's connection during the SYN flood");
    }
    flood.join().expect("flood thread").expect("flood");
    assert!(
        s.counter("syn_limited") > 100,
        "SYNs limited: {}",
        s.counter("syn_limited")
    );
    assert!(
        echo.accepted_from(Host::Attacker.addr(Family::V4)) <= 10,
        "the attacker got {} connections through a budget of 5",
        echo.accepted_from(Host::Attacker.addr(Family::V4))
    );
}

#[test]
fn header_rules_from_the_cli_drop_count_and_persist() {
    let mut s = SinkLab::new("rules");
    let port = s.sink.port().to_string();
    let out = s.daemon.cli(&[
        "rule",
        "add",
        "--action",
        "drop",
        "--proto",
        "udp",
        "--dport",
        &port,
        "--comment",
        "the service is down",
    ]);
    out.ok("rule add");
    // Bad rules are refused and change nothing.
    for (args, what) in [
        (
            vec!["rule", "add", "--action", "limit"],
            "limit without pps",
        ),
        (
            vec![
                "rule", "add", "--action", "drop", "--proto", "icmp", "--dport", "53",
            ],
            "ports on ICMP",
        ),
        (
            vec!["rule", "add", "--action", "drop", "--tcp-flags", "SYN,!FOO"],
            "bad flag",
        ),
        (
            vec![
                "rule",
                "add",
                "--action",
                "drop",
                "--tcp-flags",
                "SYN,ACK,!SYN",
            ],
            "a flag both set and clear",
        ),
        (
            vec!["rule", "add", "--action", "drop", "--len", "0-33"],
            "lengths no IP frame has",
        ),
        (vec!["rule", "add", "--action", "drop"], "drop everything"),
        (vec!["rule", "del", "99"], "no such rule"),
    ] {
        let out = s.daemon.cli(&args);
        out.expect_code(2, what);
        if what.contains("flag both") || what.contains("no IP frame") {
            assert!(
                out.stderr.contains("can never match"),
                "{what}: refused as a rule that can never match: {}",
                out.stderr
            );
        }
    }
    let to = SocketAddr::new(Host::Server.addr(Family::V4), s.sink.port());
    let sent = spacefilter_tests::traffic::send_udp(
        &s.lab,
        Host::Listener,
        to,
        50,
        Duration::from_millis(1),
    )
    .expect("sending");
    let list = |s: &SinkLab| -> Vec<Value> {
        let out = s.daemon.cli(&["rule", "list", "--json"]);
        serde_json::from_str(out.ok("rule list")).expect("JSON")
    };
    assert!(
        wait_until(Duration::from_secs(3), || list(&s)[0]["hits"] == sent),
        "the rule's hits do not match the {sent} datagrams sent: {:?}",
        list(&s)
    );
    assert_eq!(list(&s).len(), 1);
    assert_eq!(s.received(Host::Listener), 0);
    assert_eq!(s.counter("rule_dropped"), sent);

    // The rules survive a restart, hits aside.
    s.daemon.kill().expect("kill -9");
    let paths = s.daemon.paths().clone();
    s.daemon = DaemonProcess::start(&s.lab.ns(Host::Server), &paths, &["--capacity", "1024"])
        .expect("restarting");
    let rules = list(&s);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["comment"], "the service is down");
    let id = rules[0]["id"].as_u64().expect("id").to_string();
    s.daemon.cli(&["rule", "del", &id]).ok("rule del");
    assert!(list(&s).is_empty());
    send_and_expect_arrival(&s, to);
}

/// A rule on TCP flags is a TCP rule: `--tcp-flags '!ACK' --dport P`
/// drops TCP segments without ACK to P and leaves UDP to P (QUIC) alone,
/// whose flags would read as none; with `--proto udp` it is refused.
#[test]
fn a_tcp_flags_rule_leaves_udp_alone() {
    let s = SinkLab::new("tcpflags");
    let port = s.sink.port().to_string();
    s.daemon
        .cli(&[
            "rule",
            "add",
            "--action",
            "drop",
            "--proto",
            "udp",
            "--tcp-flags",
            "!ACK",
            "--dport",
            &port,
        ])
        .expect_code(2, "TCP flags on UDP");
    s.daemon
        .cli(&[
            "rule",
            "add",
            "--action",
            "drop",
            "--tcp-flags",
            "!ACK",
            "--dport",
            &port,
        ])
        .ok("rule add");
    let out = s.daemon.cli(&["rule", "list", "--json"]);
    let rules: Vec<Value> = serde_json::from_str(out.ok("rule list")).expect("JSON");
    assert_eq!(rules[0]["proto"], 6, "a TCP rule: {rules:?}");
    // UDP to the port passes.
    let to = SocketAddr::new(Host::Server.addr(Family::V4), s.sink.port());
    send_and_expect_arrival(&s, to);
    assert_eq!(s.counter("rule_dropped"), 0);
    // A TCP SYN to the port (no ACK) is dropped by the rule (without it,
    // the kernel would answer with a reset: no listener there).
    let connect = s
        .lab
        .run_in(Host::Listener, || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500))
        })
        .expect("netns");
    assert_eq!(
        connect.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::TimedOut),
        "the SYN went unanswered"
    );
    assert!(s.counter("rule_dropped") >= 1);
}

fn send_and_expect_arrival(s: &SinkLab, to: SocketAddr) {
    let sent = spacefilter_tests::traffic::send_udp(
        &s.lab,
        Host::Listener,
        to,
        20,
        Duration::from_millis(1),
    )
    .expect("sending");
    assert!(
        wait_until(Duration::from_secs(3), || s.received(Host::Listener)
            >= sent),
        "after the rule was deleted, {} of {sent} arrived",
        s.received(Host::Listener)
    );
}
