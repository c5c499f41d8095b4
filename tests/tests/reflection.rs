//! The reflection guard's profile: symmetric NTP through `BPF_PROG_TEST_RUN`,
//! and the profile read from the host by a real daemon in the lab's server
//! namespace, with real sockets: answers to the host's client sockets pass,
//! answers aimed at its listening services are dropped.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use serde_json::Value;
use spacefilter::Reason;
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, Scratch},
    fixture::{load_reflection_guard, run},
    netns::{Family, Host, Lab},
    packets::Packet,
    reference::{XDP_DROP, XDP_PASS},
    require_root,
    traffic::{UdpSink, wait_until},
};

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    Packet::ip(
        IpAddr::V4(Ipv4Addr::new(198, 18, 2, 9)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    )
    .udp(sport, dport)
    .payload_len(48)
    .build()
    .into_bytes()
}

/// NTP peers poll each other from 123 to 123: not reflection, even with
/// 123 a service port. NTP answers (and other reflectors') aimed at a
/// service are still dropped, NTP's own port included.
#[test]
fn symmetric_ntp_passes_while_amplification_is_dropped() {
    let mut filter = load_reflection_guard(&[(123, 123), (443, 443), (27015, 27015)]);
    let cases = [
        ("symmetric NTP", 123, 123, XDP_PASS, Reason::Passed),
        (
            "NTP answer to a game server",
            123,
            27015,
            XDP_DROP,
            Reason::Reflection,
        ),
        ("NTP answer to QUIC", 123, 443, XDP_DROP, Reason::Reflection),
        (
            "memcached answer to NTP",
            11211,
            123,
            XDP_DROP,
            Reason::Reflection,
        ),
        ("DNS answer to NTP", 53, 123, XDP_DROP, Reason::Reflection),
        (
            "NTP to a port that serves nothing",
            123,
            124,
            XDP_PASS,
            Reason::Passed,
        ),
    ];
    for (what, sport, dport, action, reason) in cases {
        let (got, delta) = run(&mut filter, &udp(sport, dport), 1);
        assert_eq!(got, action, "{what}");
        assert_eq!(delta.get(reason).packets, 1, "{what}: {delta:?}");
    }
}

/// The game server's port: outside the ephemeral range, listening.
const GAME: u16 = 27015;
/// The resolver's query port: outside the ephemeral range, connected.
const QUERY: u16 = 20000;
const DNS: u16 = 53;

/// Sends `count` datagrams from `from`'s port `sport` to the server's
/// port `dport`.
fn send_from(lab: &Lab, from: Host, sport: u16, dport: u16, count: u32) {
    let to = SocketAddr::new(Host::Server.addr(Family::V4), dport);
    lab.run_in(from, move || -> io::Result<()> {
        let socket = UdpSocket::bind(("0.0.0.0", sport))?;
        for _ in 0..count {
            socket.send_to(b"an answer of some size", to)?;
        }
        Ok(())
    })
    .expect("in the sender's namespace")
    .expect("sending");
}

/// Receives up to `want` datagrams on `socket`; returns how many came
/// before one failed to come within two seconds.
fn receive(socket: &UdpSocket, want: u32) -> u32 {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < want && socket.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

fn reflection_count(daemon: &DaemonProcess) -> u64 {
    let out = daemon.cli(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(out.ok("stats")).expect("stats JSON");
    stats["reasons"]["reflection"]["packets"]
        .as_u64()
        .unwrap_or(0)
}

/// A resolver's query socket bound outside the ephemeral range (BIND and
/// Unbound pick query ports across 1024-65535) gets its DNS answers with
/// the guard on; the same answers aimed at a listening game server are
/// dropped, while the game server's own clients reach it.
#[test]
fn answers_reach_client_sockets_and_not_listening_services() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("reflect-host").expect("scratch directory");
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &["--capacity", "1024"],
    )
    .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let game = UdpSink::start_on(&lab, Host::Server, GAME).expect("the game server");
    let resolver = SocketAddr::new(Host::Listener.addr(Family::V4), DNS);
    let query = lab
        .run_in(Host::Server, move || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(("0.0.0.0", QUERY))?;
            socket.connect(resolver)?;
            Ok(socket)
        })
        .expect("in the server's namespace")
        .expect("the resolver's query socket");

    // `reflect show` reads the host again and says what it read.
    let shown = daemon.cli(&["reflect", "show", "--json"]);
    let view: Value = serde_json::from_str(shown.ok("reflect show")).expect("JSON");
    assert_eq!(view["reflect"], true, "the guard is on by default");
    // The resolver's answers reach the query socket, every one.
    send_from(&lab, Host::Listener, DNS, QUERY, 50);
    assert_eq!(receive(&query, 50), 50, "DNS answers to the query socket");
    // The game server's clients reach it (the positive control for what
    // follows) ...
    send_from(&lab, Host::Attacker, 40_000, GAME, 50);
    let attacker = Host::Attacker.addr(Family::V4);
    assert_eq!(game.wait_for(attacker, 50, Duration::from_secs(5)), 50);
    // ... and DNS answers aimed at it are reflection.
    let before = reflection_count(&daemon);
    send_from(&lab, Host::Attacker, DNS, GAME, 50);
    assert!(
        wait_until(Duration::from_secs(5), || reflection_count(&daemon)
            >= before + 50),
        "reflection counted: {} (was {before})\n{}",
        reflection_count(&daemon),
        daemon.log()
    );
    assert_eq!(game.received_from(attacker), 50, "amplified answers got in");
    assert_eq!(reflection_count(&daemon), before + 50, "only those");

    // What the profile was built from.
    let profile = &view["reflect_profile"];
    assert_eq!(profile["ephemeral"], serde_json::json!([32768, 60999]));
    let has = |key: &str, port: u16| {
        profile[key]
            .as_array()
            .is_some_and(|ports| ports.contains(&Value::from(port)))
    };
    assert!(has("clients", QUERY), "{profile}");
    assert!(has("listening", GAME), "{profile}");
    assert!(
        profile["service_ports"]
            .as_array()
            .is_some_and(|r| r.contains(&serde_json::json!([GAME, GAME]))),
        "{profile}"
    );
}

/// A listening port inside the default ephemeral range is no service until
/// the host's range moves below it; `reflect show` reads the range again and
/// puts the new profile in force. `--service-ports auto` mixed with ports is
/// refused and changes nothing.
#[test]
fn the_ephemeral_range_is_read_again_on_show() {
    const INSIDE: u16 = 35000;
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("reflect-range").expect("scratch directory");
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &["--capacity", "1024"],
    )
    .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let sink = UdpSink::start_on(&lab, Host::Server, INSIDE).expect("a listener");
    let listener = Host::Listener.addr(Family::V4);
    daemon.cli(&["reflect", "show"]).ok("reflect show");
    // Inside the ephemeral range: an answer to a client, perhaps; it passes.
    send_from(&lab, Host::Listener, DNS, INSIDE, 20);
    assert_eq!(sink.wait_for(listener, 20, Duration::from_secs(5)), 20);

    lab.run_in(Host::Server, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 60999")
    })
    .expect("in the server's namespace")
    .expect("setting the ephemeral range");
    let out = daemon.cli(&["reflect", "show"]);
    let text = out.ok("reflect show");
    assert!(
        text.contains("outside the ephemeral range 40000-60999")
            && text.contains(&format!("listening UDP ports: {INSIDE}"))
            && text.contains(&format!("to service ports {INSIDE} ")),
        "{text}"
    );
    let before = reflection_count(&daemon);
    send_from(&lab, Host::Listener, DNS, INSIDE, 20);
    assert!(
        wait_until(Duration::from_secs(5), || reflection_count(&daemon)
            >= before + 20),
        "reflection counted: {} (was {before})",
        reflection_count(&daemon)
    );
    assert_eq!(sink.received_from(listener), 20, "answers got in");

    // Bad input: exit 2, a reason, nothing changed.
    let refused = daemon.cli(&["reflect", "set", "--service-ports", "auto,443"]);
    refused.expect_code(2, "auto with ports");
    assert!(
        refused.stderr.contains("either `auto`"),
        "{}",
        refused.stderr
    );
    let shown = daemon.cli(&["reflect", "show", "--json"]);
    let view: Value = serde_json::from_str(shown.ok("reflect show")).expect("JSON");
    assert_eq!(view["service_ports"], serde_json::json!([]), "{view}");
    // Explicit ports, and back to the host's.
    daemon
        .cli(&["reflect", "set", "--service-ports", "443"])
        .ok("reflect set 443");
    let text = daemon.cli(&["reflect", "show"]).ok("show").to_owned();
    assert!(
        text.contains("--service-ports 443 set explicitly"),
        "{text}"
    );
    daemon
        .cli(&["reflect", "set", "--service-ports", "auto"])
        .ok("reflect set auto");
    let text = daemon.cli(&["reflect", "show"]).ok("show").to_owned();
    assert!(
        text.contains(&format!("to service ports {INSIDE} ")),
        "{text}"
    );
}
