//! The daemon as the systemd unit runs it, end to end in a lab: what it
//! tells the service manager (`READY=1` once it answers on its control
//! socket with the rules in force, `RELOADING=1`/`READY=1` around SIGHUP,
//! `WATCHDOG=1` at half the watchdog's timeout, `STOPPING=1`), its log
//! lines with their journald priorities, and its life with the unit's
//! capabilities and no others.
//!
//! The service manager's side is a datagram socket the test binds and
//! names in `NOTIFY_SOCKET`, as systemd does.

use std::{
    ffi::OsString,
    fs,
    os::unix::{fs::MetadataExt as _, net::UnixDatagram, net::UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use spacefilter_tests::{
    daemon::{BpfFs, DaemonPaths, DaemonProcess, Launch, START_TIMEOUT, STOP_TIMEOUT, Scratch},
    netns::{Family, Host, IFACE, Lab},
    require_root,
    traffic::{UdpSink, send_udp},
};

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("binding the notification socket");
        Self { socket }
    }

    /// The next notification, if one comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("a read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(len) => Some(String::from_utf8_lossy(&buf[..len]).into_owned()),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(err) => panic!("reading the notification socket: {err}"),
        }
    }

    /// Notifications up to the first with `line` among its lines, which
    /// is returned with the ones before it; fails after `timeout`.
    fn until(
        &self,
        line: &str,
        timeout: Duration,
        daemon: &DaemonProcess,
    ) -> (String, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.next(left.max(Duration::from_millis(1))) else {
                panic!(
                    "no {line} within {timeout:?}; before it: {before:?}\n{}",
                    daemon.log()
                );
            };
            if message.lines().any(|l| l == line) {
                return (message, before);
            }
            before.push(message);
        }
    }
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
}

/// `(list, prefix)` of every entry.
fn entries(daemon: &DaemonProcess) -> Vec<(String, String)> {
    let out = daemon.cli(&["list", "--json"]);
    let mut all: Vec<(String, String)> = serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .into_iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
            (field("list"), field("prefix"))
        })
        .collect();
    all.sort();
    all
}

fn os(pairs: &[(&str, String)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// Four `WATCHDOG=1` in a row, and nothing else between them, each less
/// than `timeout` after the one before (and not far under half of it).
fn check_watchdog(manager: &Manager, timeout: Duration, daemon: &DaemonProcess) {
    let mut pings = Vec::new();
    let started = Instant::now();
    while pings.len() < 4 {
        let (_, others) = manager.until("WATCHDOG=1", timeout, daemon);
        assert!(others.is_empty(), "{others:?}");
        pings.push(started.elapsed());
    }
    let gaps: Vec<Duration> = pings
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    eprintln!("watchdog pings {gaps:?} apart (timeout {timeout:?})");
    for gap in &gaps {
        assert!(
            *gap > timeout / 4 && *gap < timeout,
            "pings {gaps:?} apart for a timeout of {timeout:?}"
        );
    }
}

#[test]
fn the_daemon_tells_the_service_manager_when_it_serves_reloads_lives_and_stops() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("service").expect("a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let notify = dir.join("notify");
    let manager = Manager::bind(&notify);
    let config = dir.join("spacefilter.toml");
    fs::write(&config, "block = [\"198.18.9.0/24\"]\n").expect("writing the config");
    let config_arg = config.to_str().expect("UTF-8").to_owned();
    // Standard error is journald's stream when JOURNAL_STREAM names its
    // device and inode: here, the log file's.
    fs::File::create(&paths.log).expect("creating the log");
    let log = fs::metadata(&paths.log).expect("the log's inode");
    let journal_stream = format!("{}:{}", log.dev(), log.ino());
    let watchdog = Duration::from_secs(1);

    let launch = Launch {
        env: os(&[
            ("NOTIFY_SOCKET", notify.display().to_string()),
            ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
            ("JOURNAL_STREAM", journal_stream),
        ]),
        wrapper: Vec::new(),
    };
    let mut daemon = DaemonProcess::spawn_with(
        &lab.ns(Host::Server),
        &paths,
        &["--config", &config_arg],
        &launch,
    )
    .expect("starting the daemon");

    // READY=1 comes first, and when it comes the daemon answers on its
    // socket with the rules of its config in force.
    let (ready, before) = manager.until("READY=1", START_TIMEOUT, &daemon);
    assert!(before.is_empty(), "before READY=1: {before:?}");
    assert!(
        UnixStream::connect(daemon.socket()).is_ok(),
        "READY=1 came before the control socket answered"
    );
    assert_eq!(
        entries(&daemon),
        [("block".to_owned(), "198.18.9.0/24".to_owned())]
    );
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS: {ready:?}"));
    eprintln!("STATUS={status}");
    assert!(
        status.contains(&format!("filtering on {IFACE} (")) && status.contains("1 blocked"),
        "{status}"
    );

    // WATCHDOG=1 at half the timeout, each well within it.
    check_watchdog(&manager, watchdog, &daemon);

    // SIGHUP: RELOADING=1 (with the clock), then READY=1 once the file's
    // entries are in force.
    fs::write(&config, "block = [\"198.18.8.0/24\", \"198.18.7.0/24\"]\n")
        .expect("rewriting the config");
    daemon.signal(Signal::SIGHUP).expect("SIGHUP");
    let (reloading, _) = manager.until("RELOADING=1", STOP_TIMEOUT, &daemon);
    assert!(
        field(&reloading, "MONOTONIC_USEC").is_some_and(|n| n.parse::<u64>().is_ok()),
        "{reloading:?}"
    );
    let (ready, between) = manager.until("READY=1", STOP_TIMEOUT, &daemon);
    assert!(
        between.iter().all(|m| m == "WATCHDOG=1\n"),
        "between RELOADING=1 and READY=1: {between:?}"
    );
    assert_eq!(
        entries(&daemon),
        [
            ("block".to_owned(), "198.18.7.0/24".to_owned()),
            ("block".to_owned(), "198.18.8.0/24".to_owned())
        ]
    );
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("2 blocked")),
        "{ready:?}"
    );

    // SIGTERM: STOPPING=1, and a clean exit.
    daemon.signal(Signal::SIGTERM).expect("SIGTERM");
    let (stopping, _) = manager.until("STOPPING=1", STOP_TIMEOUT, &daemon);
    // In the lab's namespace /sys is another one: nothing is pinned.
    assert!(
        field(&stopping, "STATUS").is_some_and(|s| s.contains("comes off")),
        "{stopping:?}"
    );
    let status = daemon.wait_exit(STOP_TIMEOUT).expect("the daemon exits");
    assert!(status.success(), "{status}");

    // Its log, written for journald: each line opens with its priority.
    let text = daemon.log();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>[INFO  spacefilter")),
        "{text}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "lines without a priority:\n{text}"
    );
}

#[test]
fn without_a_watchdog_or_journald_it_sends_no_pings_and_logs_as_ever() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("service-plain").expect("a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let notify = dir.join("notify");
    let manager = Manager::bind(&notify);
    // JOURNAL_STREAM names another file than standard error: inherited
    // from a parent whose standard error was journald's.
    let launch = Launch {
        env: os(&[
            ("NOTIFY_SOCKET", notify.display().to_string()),
            ("JOURNAL_STREAM", "1:1".to_owned()),
        ]),
        wrapper: Vec::new(),
    };
    let mut daemon = DaemonProcess::spawn_with(&lab.ns(Host::Server), &paths, &[], &launch)
        .expect("starting the daemon");
    manager.until("READY=1", START_TIMEOUT, &daemon);
    // Three times the interval of a one-second watchdog.
    let quiet = manager.next(Duration::from_millis(1500));
    assert_eq!(quiet, None, "a notification without a watchdog asked for");
    daemon.signal(Signal::SIGTERM).expect("SIGTERM");
    manager.until("STOPPING=1", STOP_TIMEOUT, &daemon);
    daemon.wait_exit(STOP_TIMEOUT).expect("the daemon exits");
    let text = daemon.log();
    assert!(
        text.lines().count() > 3 && text.lines().all(|l| l.starts_with("[20")),
        "the log:\n{text}"
    );
}

/// The unit's `CapabilityBoundingSet=`, as `setpriv --bounding-set` names
/// the capabilities (`bpf`, `net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/spacefilter.service");
    let text = fs::read_to_string(&unit).expect("the unit");
    let caps: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet= line")
        .split_whitespace()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ names").to_lowercase())
        .collect();
    assert!(!caps.is_empty());
    caps
}

/// `setpriv` running the daemon with only `caps` (root keeps its uid; its
/// bounding set is all the capabilities it gets at exec).
fn with_only(caps: &[String]) -> Launch {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    Launch {
        env: Vec::new(),
        wrapper: vec![
            "setpriv".into(),
            format!("--bounding-set=-all,{}", set.join(",")).into(),
            "--inh-caps=-all".into(),
            "--".into(),
        ],
    }
}

#[test]
fn the_daemon_runs_with_the_units_capabilities_and_needs_each() {
    require_root();
    let caps = unit_capabilities();
    eprintln!("the unit's capabilities: {caps:?}");
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("capabilities").expect("a scratch directory");
    let bpffs = BpfFs::mount(&dir.join("bpf")).expect("a BPF filesystem");
    let pin_dir = bpffs.path().join("spacefilter");
    let pin_arg = pin_dir.to_str().expect("UTF-8").to_owned();
    // A group root is not a member of: giving the socket to it takes
    // CAP_CHOWN.
    let args = [
        "--capacity",
        "1024",
        "--pin-dir",
        &pin_arg,
        "--socket-group",
        "nogroup",
    ];
    let paths = DaemonPaths::in_dir(&dir.join("daemon"));
    let start = |launch: &Launch| -> DaemonProcess {
        let mut daemon = DaemonProcess::spawn_with(&lab.ns(Host::Server), &paths, &args, launch)
            .expect("starting the daemon");
        daemon
            .wait_ready(START_TIMEOUT)
            .unwrap_or_else(|err| panic!("{err:#}"));
        daemon
    };

    let mut daemon = start(&with_only(&caps));
    let caps_line = fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's status")
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff")
        .to_owned();
    eprintln!("the daemon's {caps_line}");
    assert_eq!(
        fs::metadata(daemon.socket()).expect("the socket").gid(),
        65534,
        "the socket's group"
    );
    // It filters: a blocked source's datagrams are dropped and counted.
    let sink = UdpSink::start(&lab, Host::Server).expect("a UDP service");
    let to = std::net::SocketAddr::new(Host::Server.addr(Family::V4), sink.port());
    let attacker = Host::Attacker.addr(Family::V4);
    daemon.cli(&["block", &attacker.to_string()]).ok("block");
    send_udp(&lab, Host::Attacker, to, 20, Duration::ZERO).expect("sending");
    send_udp(&lab, Host::Listener, to, 20, Duration::ZERO).expect("sending");
    assert_eq!(
        sink.wait_for(Host::Listener.addr(Family::V4), 20, STOP_TIMEOUT),
        20
    );
    assert_eq!(
        sink.received_from(attacker),
        0,
        "the blocked source got through"
    );
    // The shield sets its host settings (/proc/sys/net) and puts them back.
    daemon
        .cli(&["shield", "on", "--ports", "tcp/443"])
        .ok("shield on");
    daemon.cli(&["shield", "off"]).ok("shield off");
    // A restart takes the pinned link over.
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    let mut daemon = start(&with_only(&caps));
    assert!(
        daemon.log().contains("took over"),
        "no takeover:\n{}",
        daemon.log()
    );
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert!(
        !daemon.log().contains("ERROR"),
        "errors with the unit's capabilities:\n{}",
        daemon.log()
    );

    // Each is needed: without it the daemon does not start.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let logged = fs::metadata(&paths.log).map_or(0, |m| m.len());
        let mut daemon =
            DaemonProcess::spawn_with(&lab.ns(Host::Server), &paths, &args, &with_only(&fewer))
                .expect("starting the daemon");
        let status = daemon
            .wait_exit(START_TIMEOUT)
            .unwrap_or_else(|err| panic!("without {missing}: {err:#}"));
        assert!(!status.success(), "the daemon ran without {missing}");
        // Refused where the capability is used, not anywhere else.
        let log = daemon.log();
        let log = log
            .get(usize::try_from(logged).expect("a log size")..)
            .unwrap_or_default();
        let why = log
            .lines()
            .find(|l| l.starts_with("spacefilter: "))
            .unwrap_or_else(|| panic!("without {missing}, no reason given:\n{log}"));
        eprintln!(
            "without {missing}: {}",
            why.chars().take(200).collect::<String>()
        );
        let expected = if missing == "chown" {
            "to group"
        } else {
            "loading the XDP program"
        };
        assert!(why.contains(expected), "without {missing}: {why}");
    }
}
