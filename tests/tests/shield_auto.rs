//! `shield auto` through the daemon: armed, the shield lets traffic be;
//! a flood of unverified datagrams to its port switches it on (and the
//! flood is held to the budget for unverified sources); calm switches it
//! off again. Switches are shown, counted in the metrics, and the setting
//! survives a restart.

use std::{net::SocketAddr, time::Duration};

use spacefilter::api::{ShieldView, StatsView};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch},
    netns::{Family, Host, Lab},
    require_root,
    traffic::{UdpSink, UdpStream, wait_until},
};

fn show(daemon: &DaemonProcess) -> ShieldView {
    let out = daemon.cli(&["shield", "show", "--json"]);
    serde_json::from_str(out.ok("shield show")).expect("shield show --json")
}

fn shielded(daemon: &DaemonProcess) -> u64 {
    let out = daemon.cli(&["stats", "--json"]);
    let stats: StatsView = serde_json::from_str(out.ok("stats")).expect("stats --json");
    stats.reasons.get("shielded").map_or(0, |c| c.packets)
}

#[test]
fn shield_auto_switches_on_a_flood_and_off_after_calm() {
    require_root();
    let lab = Lab::new().expect("lab");
    let sink = UdpSink::start(&lab, Host::Server).expect("udp sink");
    let dir = Scratch::new("auto").expect("scratch");
    let paths = DaemonPaths::in_dir(dir.path());
    let start = || {
        DaemonProcess::start(&lab.ns(Host::Server), &paths, &["--capacity", "1024"])
            .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"))
    };
    let mut daemon = start();
    let spec = format!("udp/{}", sink.port());
    daemon
        .cli(&[
            "shield",
            "auto",
            "--ports",
            &spec,
            "--above",
            "300",
            "--calm",
            "2s",
            "--unverified-pps",
            "20",
        ])
        .ok("shield auto");
    let view = show(&daemon);
    assert!(view.enabled && !view.active, "armed, not on: {view:?}");
    assert!(
        daemon.cli(&["status"]).ok("status").contains("armed"),
        "status says so"
    );

    // Below the threshold: nothing switches, nothing is held.
    let to = SocketAddr::new(Host::Server.addr(Family::V4), sink.port());
    let attacker = Host::Attacker.addr(Family::V4);
    let calm = UdpStream::start(&lab, Host::Attacker, to, 50).expect("a calm stream");
    let before = sink.received_from(attacker);
    assert!(
        sink.wait_for(attacker, before + 100, Duration::from_secs(5)) >= before + 100,
        "a calm stream arrives"
    );
    drop(calm);
    assert!(!show(&daemon).active, "below the threshold");
    assert_eq!(shielded(&daemon), 0, "nothing held while armed");

    // A flood of unverified datagrams switches it on.
    let flood = UdpStream::start(&lab, Host::Attacker, to, 3000).expect("a flood");
    assert!(
        wait_until(Duration::from_secs(10), || show(&daemon).active),
        "the flood switches the shield on: {:?}",
        show(&daemon)
    );
    let view = show(&daemon);
    assert_eq!(view.auto_switches, 1, "{view:?}");
    assert!(view.watched_pps > 300, "{view:?}");
    assert!(
        wait_until(Duration::from_secs(5), || shielded(&daemon) > 1000),
        "the flood is held to the budget: {} shielded",
        shielded(&daemon)
    );
    drop(flood);

    // Calm switches it off.
    assert!(
        wait_until(Duration::from_secs(10), || !show(&daemon).active),
        "calm switches the shield off: {:?}",
        show(&daemon)
    );
    let held = shielded(&daemon);
    let calm = UdpStream::start(&lab, Host::Attacker, to, 50).expect("a calm stream");
    let before = sink.received_from(attacker);
    assert!(sink.wait_for(attacker, before + 100, Duration::from_secs(5)) >= before + 100);
    drop(calm);
    assert_eq!(shielded(&daemon), held, "off again: nothing held");

    // The setting survives a restart, armed.
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    daemon = start();
    let view = show(&daemon);
    assert!(
        view.enabled && view.auto.is_some() && !view.active,
        "{view:?}"
    );
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
}
