//! The filter outlives the daemon: each interface's XDP link is pinned, so
//! a crash or a stop leaves the program filtering, and the next daemon
//! takes the link over in one update, with no frame let through meanwhile.
//! `spacefilter detach` takes it off.
//!
//! Counted where a user feels it: datagrams from a blocked attacker and
//! from a legitimate listener, as a UDP service on the server receives
//! them, while the daemon crashes, restarts and stops.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nix::sys::signal::Signal;
use spacefilter::api::StatusView;
use spacefilter_tests::{
    daemon::{BpfFs, DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch, binary},
    netns::{Family, Host, IFACE, Lab},
    require_root,
    traffic::{UdpSink, UdpStream, send_udp, wait_until},
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams a second from each side while a daemon restarts.
const RATE: u64 = 2000;

/// A lab whose server pins its links on a BPF filesystem of its own, with
/// a UDP service there that counts what arrives from whom. Dropped in
/// this order: the service, the filesystem, the scratch folder, the lab.
struct Pinned {
    sink: UdpSink,
    /// The service's address.
    to: SocketAddr,
    paths: DaemonPaths,
    pin_dir: PathBuf,
    _bpffs: BpfFs,
    dir: Scratch,
    lab: Lab,
}

impl Pinned {
    fn new(name: &str) -> Pinned {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let dir = Scratch::new(name).expect("a scratch directory");
        let bpffs = BpfFs::mount(&dir.path().join("bpf")).expect("a BPF filesystem");
        let pin_dir = bpffs.path().join("spacefilter");
        let paths = DaemonPaths::in_dir(&dir.path().join("state"));
        let sink = UdpSink::start(&lab, Host::Server).expect("a UDP service on the server");
        let to = SocketAddr::new(Host::Server.addr(Family::V4), sink.port());
        Pinned {
            sink,
            to,
            paths,
            pin_dir,
            _bpffs: bpffs,
            dir,
            lab,
        }
    }
}

fn start(lab: &Lab, paths: &DaemonPaths, pin_dir: &Path) -> DaemonProcess {
    start_with(lab, paths, pin_dir, &[])
}

fn start_with(lab: &Lab, paths: &DaemonPaths, pin_dir: &Path, extra: &[&str]) -> DaemonProcess {
    let pin_dir = pin_dir.to_str().expect("UTF-8");
    let mut args = vec!["--capacity", "1024", "--pin-dir", pin_dir];
    args.extend_from_slice(extra);
    DaemonProcess::start(&lab.ns(Host::Server), paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"))
}

/// Whether the server's interface has an XDP program attached.
fn xdp_attached(lab: &Lab) -> bool {
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.ns(Host::Server),
            "-j",
            "-d",
            "link",
            "show",
            "dev",
            IFACE,
        ])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).contains("\"xdp\"")
}

/// Whether the egress program's TCX link (kernel 6.6) is pinned in
/// `pin_dir` and alive: the program that verifies the host's peers by its
/// traffic, on the server's interface.
fn egress_pinned(pin_dir: &Path) -> bool {
    let Some(pin) = std::fs::read_dir(pin_dir).ok().and_then(|entries| {
        entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tcx-"))
        })
    }) else {
        return false;
    };
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&pin)
        .output()
        .expect("running bpftool");
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // bpftool before 7.3 names the link type by its number (11: TCX).
    link["type"] == "tcx" || link["type"] == 11
}

/// The programs of the server interface's egress `clsact` filters that
/// run this project's egress program (by program id, as `tc` lists them).
fn egress_filters(lab: &Lab) -> Vec<u64> {
    let out = Command::new("tc")
        .args([
            "-n",
            &lab.ns(Host::Server),
            "-j",
            "filter",
            "show",
            "dev",
            IFACE,
            "egress",
        ])
        .output()
        .expect("running tc (`cargo xtask setup` installs iproute2)");
    // No clsact qdisc: no filter, and tc says so on stderr.
    let filters: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    filters
        .iter()
        .filter(|f| {
            f["options"]["bpf_name"]
                .as_str()
                .is_some_and(|name| name.starts_with("spacefilter_egress"))
        })
        .filter_map(|f| f["options"]["prog"]["id"].as_u64())
        .collect()
}

/// Restarts the daemon (`stop` ends the old one) while the attacker and the
/// listener each send a stream to the sink; returns the datagrams the sink
/// received from the attacker meanwhile, once every one the listener sent
/// has arrived (or the wait gave up).
fn attacker_frames_across_a_restart(
    lab: &Lab,
    sink: &UdpSink,
    to: SocketAddr,
    restart: impl FnOnce() -> DaemonProcess,
) -> (u64, DaemonProcess) {
    let attacker = Host::Attacker.addr(Family::V4);
    let listener = Host::Listener.addr(Family::V4);
    let (from_attacker, from_listener) =
        (sink.received_from(attacker), sink.received_from(listener));
    let attack = UdpStream::start(lab, Host::Attacker, to, RATE).expect("attack stream");
    let legit = UdpStream::start(lab, Host::Listener, to, RATE).expect("legit stream");
    // Both streams run before the restart begins.
    assert!(
        wait_until(TIMEOUT, || sink.received_from(listener)
            > from_listener + RATE / 10),
        "the listener's stream arrives"
    );
    let daemon = restart();
    // And run on a moment after it.
    let now = sink.received_from(listener);
    assert!(
        wait_until(TIMEOUT, || sink.received_from(listener) > now + RATE / 10),
        "the listener's stream arrives after the restart"
    );
    let _ = attack.stop();
    let sent = legit.stop();
    let _ = sink.wait_for(listener, from_listener + sent, TIMEOUT);
    (sink.received_from(attacker) - from_attacker, daemon)
}

/// SIGHUP reads the config again and keeps the daemon, and the block:
/// not one datagram from the attacker gets through meanwhile.
fn sighup_under_a_flood(
    lab: &Lab,
    sink: &UdpSink,
    to: SocketAddr,
    mut daemon: DaemonProcess,
) -> DaemonProcess {
    let (leaked, mut daemon) = attacker_frames_across_a_restart(lab, sink, to, || {
        daemon.signal(Signal::SIGHUP).expect("SIGHUP");
        assert!(
            wait_until(TIMEOUT, || daemon.log().contains("SIGHUP")),
            "{}",
            daemon.log()
        );
        daemon
    });
    eprintln!("SIGHUP: {leaked} datagrams from the attacker got through");
    assert_eq!(leaked, 0, "the attacker got through at a SIGHUP");
    assert!(daemon.is_running(), "SIGHUP ended the daemon");
    daemon
}

#[test]
fn the_filter_outlives_the_daemon_and_its_successor_takes_over_with_no_gap() {
    let pinned = Pinned::new("pinned");
    let Pinned {
        lab,
        dir,
        pin_dir,
        paths,
        sink,
        ..
    } = &pinned;
    let to = pinned.to;
    let attacker = Host::Attacker.addr(Family::V4);
    let listener = Host::Listener.addr(Family::V4);

    // Control: where links cannot be pinned (not a BPF filesystem), a
    // restart leaves the interface open, and the attacker gets through.
    let unpinned = dir.path().join("not-bpffs");
    let mut daemon = start(lab, paths, &unpinned);
    assert!(
        daemon.log().contains("the XDP links are not pinned"),
        "{}",
        daemon.log()
    );
    daemon.cli(&["block", &attacker.to_string()]).ok("block");
    let (leaked, mut daemon) = attacker_frames_across_a_restart(lab, sink, to, || {
        daemon.terminate(STOP_TIMEOUT).expect("stopping");
        start(lab, paths, &unpinned)
    });
    eprintln!("unpinned restart (control): {leaked} datagrams from the attacker got through");
    assert!(
        leaked > 0,
        "the control lets the attacker through while no daemon runs"
    );
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert!(
        !xdp_attached(lab),
        "an unpinned filter goes with its daemon"
    );

    // Pinned: the filter is on from the start, the block restored.
    let mut daemon = start(lab, paths, pin_dir);
    assert!(daemon.log().contains("link pinned at"), "{}", daemon.log());
    let status: StatusView = serde_json::from_str(daemon.cli(&["status", "--json"]).ok("status"))
        .expect("status --json");
    assert!(status.interfaces[0].pinned, "{status:?}");

    // A crash leaves the program filtering: the attacker is still dropped,
    // the listener still served.
    daemon.kill().expect("kill -9");
    assert!(xdp_attached(lab), "the filter stays after a crash");
    assert!(
        egress_pinned(pin_dir),
        "the egress program stays too: the host's traffic keeps verifying its peers"
    );
    let before = (sink.received_from(attacker), sink.received_from(listener));
    send_udp(lab, Host::Attacker, to, 50, Duration::ZERO).expect("sending");
    send_udp(lab, Host::Listener, to, 50, Duration::ZERO).expect("sending");
    let _ = sink.wait_for(listener, before.1 + 50, TIMEOUT);
    assert_eq!(
        sink.received_from(listener),
        before.1 + 50,
        "the listener is served"
    );
    assert_eq!(
        sink.received_from(attacker),
        before.0,
        "the attacker is still dropped while no daemon runs"
    );

    // A successor takes the link over while both streams run: not one
    // datagram from the attacker gets through.
    let (leaked, mut daemon) =
        attacker_frames_across_a_restart(lab, sink, to, || start(lab, paths, pin_dir));
    assert!(daemon.log().contains("took over eth0"), "{}", daemon.log());
    // The running program is adopted with its maps, not loaded again.
    assert!(
        daemon.log().contains("adopted the running program"),
        "{}",
        daemon.log()
    );
    eprintln!("takeover after a crash: {leaked} datagrams from the attacker got through");
    assert_eq!(leaked, 0, "the attacker got through during the takeover");
    let mode_kept = "the pinned link runs in native mode, not the skb mode asked for";
    assert!(!daemon.log().contains(mode_kept), "{}", daemon.log());
    // And a clean stop and start, the same, even when the successor asks
    // for another mode: it keeps the link's, and says so.
    let (leaked, daemon) = attacker_frames_across_a_restart(lab, sink, to, || {
        daemon.terminate(STOP_TIMEOUT).expect("stopping");
        start_with(lab, paths, pin_dir, &["--mode", "skb"])
    });
    eprintln!("stop and start: {leaked} datagrams from the attacker got through");
    assert_eq!(leaked, 0, "the attacker got through during a restart");
    assert!(
        daemon.log().contains("left the filter on eth0"),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains(mode_kept), "{}", daemon.log());
    let mut daemon = sighup_under_a_flood(lab, sink, to, daemon);

    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert!(xdp_attached(lab), "the filter stays after a stop");
    assert!(egress_pinned(pin_dir), "and so does the egress program");
    detach_takes_the_filter_off(&pinned);
}

/// `detach` takes the filter off once the daemon has stopped: the
/// attacker's datagrams arrive again (the positive control of every count
/// before it).
fn detach_takes_the_filter_off(pinned: &Pinned) {
    let Pinned {
        lab,
        paths,
        pin_dir,
        sink,
        to,
        ..
    } = pinned;
    let to = *to;
    let attacker = Host::Attacker.addr(Family::V4);
    // It reads where the links are pinned from the daemon's config file,
    // as the package's removal script has it do; a config file it cannot
    // read changes nothing.
    let detach = |config: &Path| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(Host::Server)])
            .arg(binary())
            .args(["detach", "--config"])
            .arg(config)
            .output()
            .expect("running detach")
    };
    let config = paths.state_dir.with_file_name("detach.toml");
    let out = detach(&config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read config"),
        "{out:?}"
    );
    assert!(
        xdp_attached(lab),
        "a config file it cannot read changes nothing"
    );
    std::fs::write(
        &config,
        format!(
            "pin_dir = {:?}\nsocket = {:?}\n",
            pin_dir.display().to_string(),
            paths.socket.display().to_string()
        ),
    )
    .expect("writing the config file");
    let out = detach(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("detached from eth0"), "{stdout}");
    assert!(
        wait_until(TIMEOUT, || !xdp_attached(lab)),
        "detach takes the program off"
    );
    assert!(!egress_pinned(pin_dir), "and the egress program");
    // With nothing pinned in it any more, the pin folder goes too (the
    // package's removal leaves none behind, wherever `pin_dir` pointed),
    // and a second detach finds nothing to do and creates nothing.
    assert!(!pin_dir.exists(), "{} is left", pin_dir.display());
    let again = detach(&config);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no filter pinned"),
        "{again:?}"
    );
    assert!(
        !pin_dir.exists(),
        "a detach with nothing to do creates nothing"
    );
    let named = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Server)])
        .arg(binary())
        .args(["detach", "--iface", "eth0", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .expect("running detach");
    assert_eq!(named.status.code(), Some(2), "{named:?}");
    assert!(
        String::from_utf8_lossy(&named.stderr).contains("eth0 has no filter pinned"),
        "{named:?}"
    );
    assert!(!pin_dir.exists(), "nor does one that names an interface");
    let before = sink.received_from(attacker);
    send_udp(lab, Host::Attacker, to, 20, Duration::ZERO).expect("sending");
    assert_eq!(
        sink.wait_for(attacker, before + 20, TIMEOUT),
        before + 20,
        "the attacker's datagrams arrive once the filter is off"
    );
}

/// Whether the attacker's datagrams have stopped arriving: none for
/// half a second.
fn attacker_held_off(sink: &UdpSink, attacker: std::net::IpAddr) -> bool {
    let mut last = (sink.received_from(attacker), std::time::Instant::now());
    wait_until(Duration::from_secs(10), || {
        let now = sink.received_from(attacker);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(500)
    })
}

/// A successor carries over what its predecessor's program learnt while
/// no daemon ran: a source the old program auto-blocked stays blocked
/// through the takeover (a fresh bucket would let its burst through
/// again), and the new daemon lists the block once it reconciles.
#[test]
fn a_takeover_keeps_what_the_flood_taught() {
    let pinned = Pinned::new("carry");
    let Pinned {
        lab,
        pin_dir,
        paths,
        sink,
        ..
    } = &pinned;
    let to = pinned.to;
    let attacker = Host::Attacker.addr(Family::V4);

    let mut daemon = start(lab, paths, pin_dir);
    daemon
        .cli(&[
            "limit",
            "set",
            "--pps",
            "200",
            "--burst",
            "200",
            "--block-after",
            "1s",
            "--block-ttl",
            "10m",
        ])
        .ok("limit set");
    daemon.kill().expect("kill -9");

    // While no daemon runs, the attacker floods: its burst gets through
    // (the positive control: a fresh bucket lets it in), then the old
    // program auto-blocks it.
    let attack = UdpStream::start(lab, Host::Attacker, to, RATE).expect("attack stream");
    assert!(
        wait_until(TIMEOUT, || sink.received_from(attacker) >= 200),
        "the attacker's burst arrives"
    );
    assert!(
        attacker_held_off(sink, attacker),
        "the old program never held the attacker off"
    );
    let before = sink.received_from(attacker);

    // The successor takes over while the flood goes on: not one more
    // datagram gets through. Built from the same program with the same
    // options, it adopts the running program, whose maps hold what the
    // flood taught.
    let mut daemon = start(lab, paths, pin_dir);
    assert!(daemon.log().contains("took over eth0"), "{}", daemon.log());
    assert!(
        daemon.log().contains("adopted the running program"),
        "{}",
        daemon.log()
    );
    let listed = |daemon: &DaemonProcess| {
        // Long enough for a fresh bucket's burst and a second over the
        // limit.
        wait_until(Duration::from_secs(15), || {
            daemon
                .cli(&["list", "--json"])
                .ok("list")
                .contains(&format!("\"{attacker}/32\""))
        })
    };
    assert!(listed(&daemon), "the adopted auto-block was never listed");
    let leaked = sink.received_from(attacker) - before;
    eprintln!(
        "adoption during a flood: {leaked} datagrams from an auto-blocked source got through"
    );
    assert_eq!(
        leaked, 0,
        "the auto-blocked source got through the adoption"
    );

    // A successor with other options (here, room for more sources) loads
    // a program of its own, and copies what the flood taught into it
    // before it takes the link over.
    daemon.kill().expect("kill -9");
    let before = sink.received_from(attacker);
    let daemon = start_with(lab, paths, pin_dir, &["--max-sources", "70000"]);
    assert!(daemon.log().contains("took over eth0"), "{}", daemon.log());
    assert!(
        daemon.log().contains("is not adopted") && daemon.log().contains("with other options"),
        "{}",
        daemon.log()
    );
    let listed = listed(&daemon);
    let _ = attack.stop();
    let leaked = sink.received_from(attacker) - before;
    eprintln!(
        "takeover during a flood: {leaked} datagrams from an auto-blocked source got through"
    );
    assert_eq!(
        leaked, 0,
        "the auto-blocked source got through the takeover"
    );
    assert!(listed, "the carried auto-block was never listed");
    assert!(
        daemon
            .log()
            .contains("carried over from the predecessor's program"),
        "{}",
        daemon.log()
    );
}

/// Without TCX links (a kernel before 6.6; here `--without tcx-links`), the
/// egress program is a `clsact` filter, which cannot be pinned: a crash
/// or a stop leaves it on (the host's traffic goes on verifying its
/// peers), the next start replaces it instead of adding a second one
/// (which would keep the old program and its maps alive for good), and
/// `detach` takes it off.
#[test]
fn a_clsact_egress_filter_is_left_on_and_replaced_never_doubled() {
    let pinned = Pinned::new("clsact");
    let Pinned {
        lab,
        paths,
        pin_dir,
        ..
    } = &pinned;
    let without = ["--without", "tcx-links"];
    let mut daemon = start_with(lab, paths, pin_dir, &without);
    // With the rate limiter on, the egress program records the peers.
    daemon
        .cli(&["limit", "set", "--pps", "1000000"])
        .ok("limit set");
    let first = egress_filters(lab);
    assert_eq!(first.len(), 1, "one egress filter: {first:?}");
    assert!(!egress_pinned(pin_dir), "and no TCX link");
    assert!(
        daemon.log().contains("kernel feature tcx-links is off"),
        "{}",
        daemon.log()
    );

    daemon.kill().expect("kill -9");
    assert_eq!(egress_filters(lab), first, "a crash leaves the filter on");
    let mut daemon = start_with(lab, paths, pin_dir, &without);
    let second = egress_filters(lab);
    assert_eq!(second.len(), 1, "replaced, not added: {second:?}");
    // The running program is adopted: its egress program is put back.
    assert!(
        daemon.log().contains("adopted the running program"),
        "{}",
        daemon.log()
    );
    assert_eq!(second, first, "the adopted program's egress filter");
    assert!(
        daemon
            .log()
            .contains("replaced the egress filter a predecessor left"),
        "{}",
        daemon.log()
    );
    // The new filter verifies the peers the host sends to.
    let replied = |daemon: &DaemonProcess| {
        let stats: serde_json::Value =
            serde_json::from_str(daemon.cli(&["stats", "--json"]).ok("stats")).expect("JSON");
        stats["verified"]["replied"].as_u64().unwrap_or(0)
    };
    let before = replied(&daemon);
    let peer = SocketAddr::new(Host::Listener.addr(Family::V4), 9);
    send_udp(lab, Host::Server, peer, 3, Duration::ZERO).expect("sending from the server");
    assert!(
        wait_until(TIMEOUT, || replied(&daemon) > before),
        "the host's datagram to its peer verified it"
    );

    // A successor with other options loads a program of its own: its
    // egress filter replaces the old one.
    daemon.kill().expect("kill -9");
    let args = ["--without", "tcx-links", "--max-sources", "70000"];
    let mut daemon = start_with(lab, paths, pin_dir, &args);
    let third = egress_filters(lab);
    assert_eq!(third.len(), 1, "replaced, not added: {third:?}");
    assert_ne!(third, first, "the new program's filter");

    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert_eq!(egress_filters(lab), third, "a stop leaves the filter on");
    assert!(
        daemon.log().contains("left the egress program on eth0"),
        "{}",
        daemon.log()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Server)])
        .arg(binary())
        .args(["detach", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .expect("running detach");
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(TIMEOUT, || egress_filters(lab).is_empty()
            && !xdp_attached(lab)),
        "detach takes the XDP program and the egress filter off: {:?}",
        egress_filters(lab)
    );
}
