//! Observability end to end, with a real daemon in the lab and floods from
//! the in-kernel generator: drop samples captured to a pcap file that
//! tcpdump reads, the sampler's cap under a flood, `top` ranking the
//! flooding sources and showing a few drops with no flood, the kernel debug log switched at runtime, and the
//! per-interface counters.
//!
//! The floods share one CPU, so the tests here run one at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use serde_json::Value;
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, Scratch},
    flood::{Flood, FloodLab, Shape, spoofed_sources},
    netns::{Family, Host, IFACE, Lab},
    require_root,
    traffic::{send_udp, wait_until},
};

/// The attacker's subnet, blocked in these tests.
const BLOCKED: &str = "198.18.2.0/24";
/// The discard port, with nothing listening on it in the lab.
const DISCARD: u16 = 9;
/// Frames the flood capture takes.
const FRAMES: u64 = 2_000;
/// The sampler's cap a second in the flood test.
const CAP: u64 = 400;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn v4(host: Host) -> IpAddr {
    host.addr(Family::V4)
}

/// A daemon in the server's namespace of `lab`, with `extra` arguments,
/// blocking the attacker's subnet.
fn daemon(lab: &Lab, dir: &Scratch, extra: &[&str]) -> DaemonProcess {
    let mut args = vec!["--capacity", "1024"];
    args.extend_from_slice(extra);
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &args,
    )
    .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    daemon.cli(&["block", BLOCKED]).ok("block");
    daemon
}

/// One JSON value per line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}")))
        .collect()
}

/// Waits until a capture client reads `daemon`'s samples (it subscribed).
fn capture_subscribed(daemon: &DaemonProcess) -> bool {
    wait_until(Duration::from_secs(5), || {
        let shown = daemon.cli(&["sample", "show", "--json"]);
        json_lines(shown.ok("sample show"))
            .first()
            .is_some_and(|view| view["capture_clients"].as_u64().unwrap_or(0) >= 1)
    })
}

/// `count` sources in the blocked subnet.
fn blocked_sources(count: usize) -> Vec<IpAddr> {
    spoofed_sources(BLOCKED.parse().unwrap(), count, 11)
}

#[test]
fn capture_during_a_flood_writes_a_pcap_that_tcpdump_reads() {
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("flood lab");
    let dir = Scratch::new("capture").expect("scratch");
    let daemon = daemon(
        &lab,
        &dir,
        &["--sample-every", "50", "--sample-cap", "5000"],
    );
    let sources = blocked_sources(40);
    // A few copies of each source's frame per call, so that the sources
    // take turns quickly.
    let flood = Flood::new(Shape::Udp { port: DISCARD }, &sources, v4(Host::Server))
        .with_burst(16)
        .at_rate(200_000);
    let pcap = dir.join("flood.pcap");

    thread::scope(|scope| {
        let capture = scope.spawn(|| {
            daemon.cli(&[
                "capture",
                "--out",
                pcap.to_str().unwrap(),
                "--count",
                &FRAMES.to_string(),
                "--reason",
                "blocked",
            ])
        });
        // The capture reads before the flood starts.
        assert!(capture_subscribed(&daemon), "the capture never subscribed");
        lab.flood(&flood, Duration::from_secs(3)).expect("flooding");
        let out = capture.join().expect("capture thread");
        out.ok("capture");
        assert!(
            out.stderr
                .contains(&format!("wrote {FRAMES} dropped frames")),
            "{}",
            out.stderr
        );
    });

    let read = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("running tcpdump");
    assert!(
        read.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let text = String::from_utf8_lossy(&read.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, FRAMES, "tcpdump read:\n{text}");
    let flooding: BTreeSet<String> = sources.iter().map(ToString::to_string).collect();
    let mut seen = BTreeSet::new();
    for line in &lines {
        // e.g. "12:00:00.000000 IP 198.18.2.7.1234 > 198.18.0.1.9: UDP, length 18"
        let source = line
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.rsplit_once('.'))
            .map_or_else(
                || panic!("unexpected tcpdump line {line:?}"),
                |(addr, _port)| addr.to_owned(),
            );
        assert!(flooding.contains(&source), "{source} did not flood: {line}");
        assert!(
            line.contains(&format!("> {}.{DISCARD}:", v4(Host::Server))),
            "{line}"
        );
        seen.insert(source);
    }
    // Random samples of a flood cycling through 40 sources see most of
    // them.
    assert!(seen.len() >= 30, "only {} sources seen", seen.len());
}

#[test]
fn sampling_under_a_flood_never_exceeds_its_cap() {
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("flood lab");
    let dir = Scratch::new("samplecap").expect("scratch");
    let daemon = daemon(
        &lab,
        &dir,
        &["--sample-every", "1", "--sample-cap", &CAP.to_string()],
    );
    let shown = json_lines(daemon.cli(&["sample", "show", "--json"]).ok("sample show"));
    // The cap is shared out between the CPUs: what is in force is what
    // counts.
    let cap = shown[0]["sample_cap"].as_u64().unwrap();
    assert!(cap <= CAP && cap > 0, "{shown:?}");
    let flood = Flood::new(
        Shape::Udp { port: DISCARD },
        &blocked_sources(16),
        v4(Host::Server),
    );

    let (captured, sent) = thread::scope(|scope| {
        let capture = scope.spawn(|| {
            daemon.cli(&[
                "capture",
                "--out",
                dir.join("cap.pcap").to_str().unwrap(),
                "--duration",
                "5s",
                "--json",
            ])
        });
        assert!(capture_subscribed(&daemon), "the capture never subscribed");
        let sent = lab.flood(&flood, Duration::from_secs(3)).expect("flooding");
        (capture.join().expect("capture thread"), sent)
    });
    captured.ok("capture");
    let samples = json_lines(&captured.stdout);
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for sample in &samples {
        *per_second
            .entry(sample["mono_ns"].as_u64().unwrap() / 1_000_000_000)
            .or_default() += 1;
    }
    for (second, count) in &per_second {
        assert!(
            *count <= cap,
            "second {second}: {count} samples over the cap of {cap}: {per_second:?}"
        );
    }
    // The flood was far above the cap: the sampler spent its budget in
    // each full second of it, and said why it sent no more.
    assert!(sent.frames > 20 * cap, "the flood was too small: {sent:?}");
    let busiest = per_second.values().max().copied().unwrap_or(0);
    assert!(busiest >= cap / 2, "{per_second:?}");
    let after = json_lines(daemon.cli(&["sample", "show", "--json"]).ok("sample show"));
    assert!(
        after[0]["samples_capped"].as_u64().unwrap() > sent.frames / 2,
        "{after:?}"
    );
    assert_eq!(
        after[0]["samples_sent"].as_u64().unwrap(),
        samples.len() as u64,
        "every sample sent reached the capture"
    );
}

#[test]
fn top_ranks_the_heaviest_dropped_sources() {
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("flood lab");
    let dir = Scratch::new("top").expect("scratch");
    let daemon = daemon(
        &lab,
        &dir,
        &["--sample-every", "10", "--sample-cap", "2000"],
    );
    let heavy: IpAddr = "198.18.2.200".parse().unwrap();
    let light: IpAddr = "198.18.2.201".parse().unwrap();
    // Three frames from the heavy source for every one from the light.
    let flood = Flood::new(
        Shape::Udp { port: DISCARD },
        &[heavy, heavy, heavy, light],
        v4(Host::Server),
    )
    .at_rate(300_000);

    let (ranked, top) = thread::scope(|scope| {
        let flooding = scope.spawn(|| lab.flood(&flood, Duration::from_secs(8)));
        // The ranking covers the last 5 s: wait until both sources are in
        // it, with at least a second of the flood behind them.
        let ranked = wait_until(Duration::from_secs(5), || {
            let top = daemon.cli(&["top", "--json", "--count", "1", "--limit", "5"]);
            json_lines(top.ok("top --json"))
                .first()
                .is_some_and(|snapshot| {
                    snapshot["sources"].as_array().is_some_and(|s| s.len() >= 2)
                        && snapshot["drops_per_sec"]["blocked"].as_f64().unwrap_or(0.0) > 0.0
                })
        });
        let top = daemon.cli(&["top", "--json", "--count", "2", "--limit", "5"]);
        flooding.join().expect("flood thread").expect("flooding");
        (ranked, top)
    });
    assert!(ranked, "the ranking never held both sources");
    let snapshots = json_lines(top.ok("top --json"));
    assert_eq!(snapshots.len(), 2, "{}", top.stdout);
    let last = &snapshots[1];
    let sources = last["sources"].as_array().unwrap();
    assert_eq!(sources[0]["key"], heavy.to_string(), "{last}");
    assert_eq!(sources[1]["key"], light.to_string(), "{last}");
    let share = sources[0]["share"].as_f64().unwrap();
    assert!(
        (0.65..=0.85).contains(&share),
        "heavy share {share}: {last}"
    );
    assert_eq!(sources[0]["reason"], "blocked");
    assert_eq!(sources[0]["matched"], format!("block {BLOCKED}"));
    assert_eq!(last["prefixes"][0]["key"], BLOCKED, "{last}");
    assert!(last["prefixes"][0]["share"].as_f64().unwrap() > 0.99);
    // The rates come from the counters: the flood was paced at 300k/s (a
    // busy machine's generator falls short of that, hence the low bar).
    let blocked = last["drops_per_sec"]["blocked"].as_f64().unwrap();
    assert!(blocked > 30_000.0, "{last}");
    let estimate = sources[0]["packets_per_sec"].as_f64().unwrap();
    assert!((estimate - share * blocked).abs() < 1.0, "{last}");
}

/// A few drops, far fewer than wake the daemon (the program submits a
/// sample without a wakeup until half the ring is unread), still
/// reach `top`: the daemon also reads the ring on a timer.
#[test]
fn a_few_drops_reach_top_without_a_flood() {
    require_root();
    let _serial = serial();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("fewdrops").expect("scratch");
    let daemon = daemon(&lab, &dir, &["--sample-every", "1"]);
    let to = SocketAddr::new(v4(Host::Server), DISCARD);
    let sent = send_udp(&lab, Host::Attacker, to, 5, Duration::from_millis(1)).expect("sending");
    assert_eq!(sent, 5, "datagrams sent");
    let attacker = v4(Host::Attacker).to_string();
    let mut last = Value::Null;
    let shown = wait_until(Duration::from_secs(3), || {
        let top = daemon.cli(&["top", "--json", "--count", "1", "--limit", "5"]);
        last = json_lines(top.ok("top --json")).swap_remove(0);
        last["sources"]
            .as_array()
            .is_some_and(|sources| sources.iter().any(|s| s["key"] == attacker.as_str()))
    });
    assert!(shown, "the attacker's drops never reached top: {last}");
    // The positive control: the drops were counted by the program.
    let stats = json_lines(daemon.cli(&["stats", "--json"]).ok("stats"))[0].clone();
    assert!(
        stats["reasons"]["blocked"]["packets"].as_u64().unwrap() >= sent,
        "{stats}"
    );
}

#[test]
fn kernel_debug_log_switches_at_runtime() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("debuglog").expect("scratch");
    let daemon = daemon(&lab, &dir, &[]);
    let to = SocketAddr::new(v4(Host::Server), DISCARD);
    let attacker = v4(Host::Attacker).to_string();
    let kernel_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("spacefilter::kernel") && l.contains(&attacker))
            .count()
    };

    send_udp(&lab, Host::Attacker, to, 5, Duration::from_millis(1)).expect("sending");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(kernel_lines(&daemon.log()), 0, "logged while off");

    let on = json_lines(daemon.cli(&["debug", "on", "--json"]).ok("debug on"));
    assert_eq!(on[0]["debug_log"], true);
    send_udp(&lab, Host::Attacker, to, 5, Duration::from_millis(1)).expect("sending");
    assert!(
        wait_until(Duration::from_secs(3), || kernel_lines(&daemon.log()) >= 5),
        "{}",
        daemon.log()
    );
    let line = daemon
        .log()
        .lines()
        .find(|l| l.contains("spacefilter::kernel") && l.contains(&attacker))
        .unwrap()
        .to_owned();
    // "<source> len <bytes> ifindex <n> (match <slot>): <reason>"
    assert!(line.contains(&format!("{attacker} len ")), "{line}");
    assert!(line.trim_end().ends_with("): blocked"), "{line}");

    daemon.cli(&["debug", "off"]).ok("debug off");
    let logged = kernel_lines(&daemon.log());
    send_udp(&lab, Host::Attacker, to, 5, Duration::from_millis(1)).expect("sending");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(kernel_lines(&daemon.log()), logged, "logged after off");
}

/// Two interfaces, one program: the server's link to the switch and its
/// loopback, each with its own counters and the host's total their sum.
#[test]
fn counters_are_kept_per_interface() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("ifacestats").expect("scratch");
    // Generic mode: loopback has no driver hook.
    let daemon = daemon(&lab, &dir, &["--iface", "lo", "--mode", "skb"]);
    daemon.cli(&["block", "127.0.0.2"]).ok("block on loopback");
    let to = SocketAddr::new(v4(Host::Server), DISCARD);
    let on_link =
        send_udp(&lab, Host::Attacker, to, 50, Duration::from_micros(500)).expect("sending");
    let on_loopback: u64 = 30;
    lab.run_in(Host::Server, || {
        let socket = std::net::UdpSocket::bind("127.0.0.2:0").expect("binding 127.0.0.2");
        for _ in 0..on_loopback {
            socket
                .send_to(b"flood", "127.0.0.1:9")
                .expect("sending on loopback");
            thread::sleep(Duration::from_micros(200));
        }
    })
    .expect("in the server's namespace");
    let blocked = |stats: &Value, iface: &str| {
        stats["interfaces"][iface]["blocked"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counters for {iface}: {stats}"))
    };
    let mut stats = Value::Null;
    assert!(wait_until(Duration::from_secs(3), || {
        stats = json_lines(daemon.cli(&["stats", "--json"]).ok("stats"))[0].clone();
        stats["reasons"]["blocked"]["packets"].as_u64().unwrap() >= on_link + on_loopback
    }));
    assert_eq!(blocked(&stats, IFACE), on_link, "{stats}");
    assert_eq!(blocked(&stats, "lo"), on_loopback, "{stats}");
    assert_eq!(
        stats["reasons"]["blocked"]["packets"].as_u64().unwrap(),
        on_link + on_loopback,
        "{stats}"
    );
    // The text view shows each interface when there are several.
    let text = daemon.cli(&["stats"]).ok("stats").to_owned();
    assert!(
        text.contains(&format!("[{IFACE}]")) && text.contains("[lo]"),
        "{text}"
    );
}

#[test]
fn bad_observe_requests_are_refused() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("observebad").expect("scratch");
    let daemon = daemon(&lab, &dir, &[]);
    // A file already there is left as it was by a capture refused.
    let existing = dir.join("existing.pcap");
    std::fs::write(&existing, b"an earlier capture").expect("writing");
    let existing_arg = existing.to_str().unwrap();
    for (reason, what) in [
        ("passed", "a reason that does not drop"),
        ("blockd", "a typo"),
    ] {
        let out = daemon.cli(&["capture", "--out", existing_arg, "--reason", reason]);
        out.expect_code(2, what);
        assert!(
            out.stderr.contains("not a reason frames are dropped for"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"an earlier capture");
    let out = daemon.cli(&["sample", "set", "--cap", "0"]);
    out.expect_code(2, "a zero cap");
    assert!(out.stderr.contains("sample off"), "{}", out.stderr);
    daemon.cli(&["sample", "off"]).ok("sample off");
    let out = daemon.cli(&["capture", "--out", dir.join("none.pcap").to_str().unwrap()]);
    out.expect_code(2, "capture with sampling off");
    assert!(out.stderr.contains("sampling is off"), "{}", out.stderr);
    assert!(
        !dir.join("none.pcap").exists() && !dir.join("none.pcap.partial").exists(),
        "an empty capture file was left behind"
    );
    // Refused by the daemon (sampling off), a capture leaves a file
    // already there as it was too.
    let out = daemon.cli(&["capture", "--out", existing_arg]);
    out.expect_code(2, "capture with sampling off over a file");
    assert_eq!(std::fs::read(&existing).unwrap(), b"an earlier capture");
    let shown = json_lines(
        daemon
            .cli(&["sample", "set", "--every", "7", "--json"])
            .ok("set"),
    );
    assert_eq!(shown[0]["sample_every"], 7);
    let out = daemon.cli(&["top"]);
    out.expect_code(2, "top without a terminal");
    assert!(out.stderr.contains("--json"), "{}", out.stderr);
}
