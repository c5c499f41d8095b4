//! End to end: the real `spacefilter run` daemon in a lab's server
//! namespace, steered by the real CLI binary (and, where a test needs many
//! requests or bad ones, by the socket protocol directly), with live
//! traffic from the lab's clients. Each test builds its own lab and runs
//! its own daemon, so they run in parallel.
//!
//! Needs the daemon binary built (`cargo build -p spacefilter`; `cargo
//! xtask test` does it) and root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use spacefilter::{
    api::{
        Changed, EntryView, MAX_REQUEST_BYTES, Origin, PROTOCOL_VERSION, Request, Response,
        StatsView, StatusView, client::Client,
    },
    store::Store,
};
use spacefilter_tests::{
    daemon::{
        self, CliOutput, DaemonPaths, DaemonProcess, OCCUPIER_NAME, STOP_TIMEOUT, Scratch,
        XdpProgram,
    },
    netns::{Family, Host, IFACE, Lab},
    require_root,
    traffic::{self, UdpSink, UdpStream},
};

/// List capacity for the daemons. The default costs a second or more of
/// kernel time per start; the tests hold a handful of entries.
const CAPACITY: &str = "1024";
/// Datagrams per burst in the arrival checks.
const BURST: u64 = 40;
/// Between two datagrams of a burst.
const GAP: Duration = Duration::from_micros(500);
/// How long traffic that should arrive may take.
const ARRIVAL: Duration = Duration::from_secs(3);
/// Datagrams per second of each steady stream.
const STREAM_RATE: u64 = 1000;

/// A lab with a daemon attached to the server's interface. Fields drop in
/// order: the daemon (stopped), the lab, the scratch directory.
struct Setup {
    daemon: DaemonProcess,
    lab: Lab,
    dir: Scratch,
}

impl Setup {
    fn new(tag: &str) -> Self {
        Self::with_args(tag, &["--capacity", CAPACITY])
    }

    fn with_args(tag: &str, args: &[&str]) -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let dir = Scratch::new(tag).expect("creating a scratch directory");
        let daemon = DaemonProcess::start(
            &lab.ns(Host::Server),
            &DaemonPaths::in_dir(dir.path()),
            args,
        )
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
        Self { daemon, lab, dir }
    }

    /// Starts a new daemon on the same state directory and socket; the old
    /// one must have exited.
    fn restart(&mut self, args: &[&str]) {
        assert!(!self.daemon.is_running(), "the old daemon still runs");
        self.daemon = DaemonProcess::start(
            &self.lab.ns(Host::Server),
            &DaemonPaths::in_dir(self.dir.path()),
            args,
        )
        .unwrap_or_else(|err| panic!("restarting the daemon: {err:#}"));
    }

    fn cli(&self, args: &[&str]) -> CliOutput {
        self.daemon.cli(args)
    }

    /// `spacefilter list --json`.
    fn list(&self) -> Vec<EntryView> {
        let out = self.cli(&["list", "--json"]);
        serde_json::from_str(out.ok("list --json"))
            .unwrap_or_else(|err| panic!("list --json printed {:?}: {err}", out.stdout))
    }

    /// `spacefilter status --json`.
    fn status(&self) -> StatusView {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_str(out.ok("status --json"))
            .unwrap_or_else(|err| panic!("status --json printed {:?}: {err}", out.stdout))
    }

    /// The counters, asked over the socket directly: quicker than the CLI,
    /// for polling.
    fn stats(&self) -> StatsView {
        stats_over_socket(self.daemon.socket())
    }

    /// Sends a burst from `from` and asserts that all of it reaches the
    /// server and that the `reason` counter accounts for it.
    fn assert_reaches(&self, sink: &UdpSink, from: Host, family: Family, reason: &str) {
        let what = format!("{from} → server over {family}");
        let source = from.addr(family);
        let before = sink.received_from(source);
        let counted = packets(&self.stats(), reason);
        let sent = traffic::send_udp(&self.lab, from, server(family, sink), BURST, GAP)
            .expect("sending UDP");
        assert_eq!(sent, BURST, "{what}: the sender's kernel refused datagrams");
        let arrived = sink.wait_for(source, before + BURST, ARRIVAL) - before;
        assert_eq!(
            arrived,
            BURST,
            "{what}: datagrams lost\n{}",
            self.lab.link_stats(Host::Server)
        );
        let now = packets(&self.stats(), reason);
        assert!(
            now - counted >= BURST,
            "{what}: expected {BURST} frames counted as {reason}, got {}",
            now - counted
        );
    }

    /// Sends a burst from `from` and asserts that none of it reaches the
    /// server's socket and that the program counted it as blocked.
    fn assert_blocked(&self, sink: &UdpSink, from: Host, family: Family) {
        let what = format!("{from} → server over {family}, blocked");
        let source = from.addr(family);
        let before = sink.received_from(source);
        let blocked = packets(&self.stats(), "blocked");
        let sent = traffic::send_udp(&self.lab, from, server(family, sink), BURST, GAP)
            .expect("sending UDP");
        assert_eq!(sent, BURST, "{what}: the sender's kernel refused datagrams");
        traffic::wait_until(ARRIVAL, || {
            packets(&self.stats(), "blocked") >= blocked + BURST
        });
        let counted = packets(&self.stats(), "blocked") - blocked;
        assert!(
            counted >= BURST,
            "{what}: expected {BURST} frames counted as blocked, got {counted}\n{}",
            self.lab.link_stats(Host::Server)
        );
        assert_eq!(
            sink.received_from(source),
            before,
            "{what}: blocked datagrams reached the server's socket"
        );
    }
}

/// The address of the server's UDP sink.
fn server(family: Family, sink: &UdpSink) -> SocketAddr {
    SocketAddr::new(Host::Server.addr(family), sink.port())
}

fn stats_over_socket(socket: &Path) -> StatsView {
    let mut client = Client::connect(socket).expect("connecting to the daemon");
    match client
        .call(Request::Stats, &mut |_, _| {})
        .expect("asking for the stats")
    {
        Response::Stats(view) => view,
        other => panic!("stats: unexpected reply {other:?}"),
    }
}

fn packets(view: &StatsView, reason: &str) -> u64 {
    view.reasons.get(reason).map_or(0, |c| c.packets)
}

/// What identifies an entry across restarts (hits and time left change).
type EntryKey = (String, String, &'static str, Option<String>);

fn key(e: &EntryView) -> EntryKey {
    (
        e.list.name().to_owned(),
        e.prefix.clone(),
        e.origin.name(),
        e.comment.clone(),
    )
}

fn keys(entries: &[EntryView]) -> BTreeSet<EntryKey> {
    entries.iter().map(key).collect()
}

fn find<'a>(entries: &'a [EntryView], list: &str, prefix: &str) -> Option<&'a EntryView> {
    entries
        .iter()
        .find(|e| e.list.name() == list && e.prefix == prefix)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `block` takes effect on live traffic as soon as the command
/// returns: the attacker's stream stops at the XDP hook, the listener's
/// carries on; `unblock` lets the attacker through again. Prints the
/// measured latencies.
#[test]
fn block_takes_effect_on_live_traffic() {
    let s = Setup::new("live");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    for family in Family::ALL {
        let _attacker_stream =
            UdpStream::start(&s.lab, Host::Attacker, server(family, &sink), STREAM_RATE)
                .expect("starting the attacker's stream");
        let _listener_stream =
            UdpStream::start(&s.lab, Host::Listener, server(family, &sink), STREAM_RATE)
                .expect("starting the listener's stream");
        for host in [Host::Attacker, Host::Listener] {
            let source = host.addr(family);
            let before = sink.received_from(source);
            assert!(
                sink.wait_for(source, before + 100, ARRIVAL) >= before + 100,
                "{family}: the stream from {source} does not arrive"
            );
        }
        block_live(&s, &sink, family);
        unblock_live(&s, &sink, family);
    }
    assert!(s.list().is_empty());
}

/// Blocks the attacker's subnet while both clients stream, and measures
/// how soon the attacker's datagrams stop.
fn block_live(s: &Setup, sink: &UdpSink, family: Family) {
    let attacker = Host::Attacker.addr(family);
    let listener = Host::Listener.addr(family);
    let prefix = Host::Attacker.subnet(family).to_string();
    let blocked_before = packets(&s.stats(), "blocked");
    let out = s.cli(&["block", &prefix, "--comment", "live test"]);
    let returned = Instant::now();
    out.ok("block");
    assert!(out.stdout.contains("1 added"), "{}", out.stdout);
    let (attacker_at_return, listener_at_return) =
        (sink.received_from(attacker), sink.received_from(listener));

    // Watch for a second: when is the first blocked frame counted, when
    // does the last attacker datagram reach the socket?
    let mut first_drop = None;
    let mut last_arrival = None;
    let mut seen = attacker_at_return;
    while returned.elapsed() < Duration::from_secs(1) {
        if first_drop.is_none() && packets(&s.stats(), "blocked") > blocked_before {
            first_drop = Some(returned.elapsed());
        }
        let now = sink.received_from(attacker);
        if now > seen {
            seen = now;
            last_arrival = Some(returned.elapsed());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let late = seen - attacker_at_return;
    let listener_during = sink.received_from(listener) - listener_at_return;
    let first_drop =
        first_drop.unwrap_or_else(|| panic!("{family}: no frame counted as blocked within 1 s"));
    eprintln!(
        "{family}: `spacefilter block {prefix}` took {:.1} ms (spawn to exit); first blocked \
         frame counted {:.1} ms after it returned; {late} attacker datagrams reached the \
         socket after it returned, the last {} ms after",
        millis(out.elapsed),
        millis(first_drop),
        last_arrival.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", millis(d)))
    );
    assert!(
        first_drop < Duration::from_millis(500),
        "{family}: the first blocked frame was counted only {first_drop:?} after the block \
         returned"
    );
    // Datagrams that passed the hook before the entry went in may still
    // be waiting in the socket's queue; nothing later.
    assert!(
        last_arrival.is_none_or(|d| d < Duration::from_millis(500)),
        "{family}: attacker datagrams still arrived {last_arrival:?} after the block"
    );
    assert!(
        listener_during >= STREAM_RATE / 4,
        "{family}: the listener's stream stalled during the block: {listener_during} \
         datagrams in a second"
    );
    let settled = sink.received_from(attacker);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.received_from(attacker),
        settled,
        "{family}: attacker datagrams got through"
    );

    // The blocked counter, through the CLI.
    let view: StatsView =
        serde_json::from_str(s.cli(&["stats", "--json"]).ok("stats --json")).expect("JSON");
    assert!(
        packets(&view, "blocked") >= blocked_before + STREAM_RATE / 4,
        "{family}: blocked counter {} (was {blocked_before})",
        packets(&view, "blocked")
    );
    let entry = find(&s.list(), "block", &prefix)
        .cloned()
        .expect("the entry is listed");
    assert!(entry.hits >= STREAM_RATE / 4, "{entry:?}");
}

/// Unblocks the attacker's subnet: its stream comes back.
fn unblock_live(s: &Setup, sink: &UdpSink, family: Family) {
    let attacker = Host::Attacker.addr(family);
    let listener = Host::Listener.addr(family);
    let prefix = Host::Attacker.subnet(family).to_string();
    let before = sink.received_from(attacker);
    let out = s.cli(&["unblock", &prefix]);
    let returned = Instant::now();
    out.ok("unblock");
    assert!(out.stdout.contains("1 removed"), "{}", out.stdout);
    assert!(
        sink.wait_for(attacker, before + 1, ARRIVAL) > before,
        "{family}: the attacker's stream did not come back after unblock"
    );
    eprintln!(
        "{family}: attacker datagrams arrived again {:.1} ms after `unblock` returned",
        millis(returned.elapsed())
    );
    let before = sink.received_from(listener);
    assert!(sink.wait_for(listener, before + 50, ARRIVAL) >= before + 50);
}

/// A block with a TTL drops traffic, then expires: traffic flows again,
/// the entry is gone from the list and from the state directory, and a
/// restarted daemon does not bring it back.
#[test]
fn ttl_expires_entries() {
    const KEPT: &str = "203.0.113.0/24";
    let mut s = Setup::new("ttl");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    let v4 = Host::Attacker.subnet(Family::V4).to_string();
    let v6 = Host::Attacker.subnet(Family::V6).to_string();
    // A timed block blocked again without --ttl becomes permanent, and
    // keeps its comment.
    s.cli(&["block", KEPT, "--ttl", "2s", "--comment", "kept"])
        .ok("block --ttl 2s");
    let out = s.cli(&["block", KEPT]);
    assert!(
        out.ok("block again").contains("1 updated"),
        "{}",
        out.stdout
    );
    let started = Instant::now();
    s.cli(&["block", &v4, &v6, "--ttl", "2s", "--comment", "short"])
        .ok("block --ttl 2s");
    let entries = s.list();
    let kept = |entries: &[EntryView], when: &str| {
        assert_eq!(entries.len(), 1, "{when}: {entries:?}");
        let e = find(entries, "block", KEPT).unwrap_or_else(|| panic!("{when}: {entries:?}"));
        assert_eq!(
            (e.expires_in_secs, e.comment.as_deref()),
            (None, Some("kept")),
            "{when}: {e:?}"
        );
    };
    for prefix in [&v4, &v6] {
        let e = find(&entries, "block", prefix).expect("listed");
        assert!(e.expires_in_secs.is_some_and(|t| t <= 2), "{prefix}: {e:?}");
    }
    for family in Family::ALL {
        s.assert_blocked(&sink, Host::Attacker, family);
        s.assert_reaches(&sink, Host::Listener, family, "passed");
    }

    // Probe until the attacker gets through again.
    let attacker = Host::Attacker.addr(Family::V4);
    let flowed = traffic::wait_until(Duration::from_secs(6), || {
        let before = sink.received_from(attacker);
        traffic::send_udp(&s.lab, Host::Attacker, server(Family::V4, &sink), 3, GAP)
            .expect("sending UDP");
        sink.wait_for(attacker, before + 1, Duration::from_millis(50)) > before
    });
    let expired_after = started.elapsed();
    assert!(flowed, "the attacker is still blocked 6 s into a 2 s TTL");
    eprintln!(
        "a 2 s block let traffic through again {:.0} ms after the command started",
        millis(expired_after)
    );
    assert!(
        expired_after >= Duration::from_millis(1500),
        "expired too early: {expired_after:?}"
    );
    // Both entries expire together; the one made permanent stays.
    traffic::wait_until(Duration::from_secs(2), || s.list().len() == 1);
    kept(&s.list(), "after the expiry");
    assert_eq!(s.status().block_entries, 1);
    for family in Family::ALL {
        s.assert_reaches(&sink, Host::Attacker, family, "passed");
    }

    // The state directory no longer holds them.
    let status = s.daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert!(status.success(), "{status}");
    {
        let (_store, rules) =
            Store::open(&s.daemon.paths().state_dir).expect("opening the state directory");
        let held: Vec<String> = rules.keys().map(|(_, p)| p.to_string()).collect();
        assert_eq!(held, [KEPT], "the state holds {rules:?}");
    }
    s.restart(&["--capacity", CAPACITY]);
    kept(&s.list(), "after a restart");
    s.assert_reaches(&sink, Host::Attacker, Family::V4, "passed");
}

/// After `kill -9`, a daemon restarted on the same state directory has
/// every rule back (block and allow, TTLs counting down from where they
/// were, comments, origins) and enforces them on live traffic.
#[test]
fn rules_survive_kill_9() {
    let mut s = Setup::new("crash");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    let file = s.dir.join("list.netset");
    std::fs::write(&file, "# from a feed\n203.0.113.0/24\n2001:db8:bad::/48\n").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        &[
            "block",
            "198.18.2.0/24",
            "--ttl",
            "10m",
            "--comment",
            "v4 flood",
        ][..],
        &["block", "2001:2:0:2::/64", "--comment", "v6 flood"],
        &[
            "allow",
            "2001:2:0:2::66",
            "--ttl",
            "1h",
            "--comment",
            "known good",
        ],
        &["allow", "198.18.1.10"],
        &["block", "--file", file, "--ttl", "30m"],
    ] {
        s.cli(args).ok(&args.join(" "));
    }
    let before = s.list();
    let listed_at = Instant::now();
    assert_eq!(before.len(), 6, "{before:?}");
    let enforce = |s: &Setup| {
        s.assert_blocked(&sink, Host::Attacker, Family::V4);
        s.assert_reaches(&sink, Host::Attacker, Family::V6, "allowlisted");
        s.assert_reaches(&sink, Host::Listener, Family::V4, "allowlisted");
        s.assert_reaches(&sink, Host::Listener, Family::V6, "passed");
    };
    enforce(&s);

    let status = s.daemon.kill().expect("killing the daemon");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    // The socket file stays behind, answered by no one.
    assert!(s.daemon.socket().exists());
    let out = s.cli(&["status"]);
    out.expect_code(1, "status with the daemon dead");
    assert!(out.stderr.contains("not running"), "{}", out.stderr);

    thread::sleep(Duration::from_secs(1));
    s.restart(&["--capacity", CAPACITY]);
    let after = s.list();
    assert_eq!(
        keys(&after),
        keys(&before),
        "the rules changed over kill -9"
    );
    let elapsed = listed_at.elapsed().as_secs();
    for old in &before {
        let new = find(&after, old.list.name(), &old.prefix).unwrap();
        match (old.expires_in_secs, new.expires_in_secs) {
            (None, None) => {}
            (Some(old_left), Some(new_left)) => {
                // Whole seconds, rounded down on both sides.
                let expected = old_left.saturating_sub(elapsed);
                assert!(
                    new_left + 2 >= expected && new_left <= old_left,
                    "{}: {old_left} s left before, {new_left} s after {elapsed} s",
                    old.prefix
                );
            }
            (old_left, new_left) => panic!("{}: TTL {old_left:?} became {new_left:?}", old.prefix),
        }
    }
    assert!(
        find(&after, "block", "203.0.113.0/24").is_some_and(|e| e.origin == Origin::File),
        "{after:?}"
    );
    let status = s.status();
    assert_eq!((status.block_entries, status.allow_entries), (4, 2));
    assert!(
        s.daemon.log().contains("restored 6 rules"),
        "{}",
        s.daemon.log()
    );
    enforce(&s);
}

/// The `n`th address of 198.19.0.0/16.
fn nth_address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n)
}

/// Eight clients at once, a thousand blocks each, one request per
/// block (most over the socket, some through the CLI): none is lost, in
/// the daemon or in its state directory.
#[test]
fn concurrent_clients_lose_nothing() {
    const CLIENTS: u32 = 8;
    const EACH: u32 = 1000;
    /// Every this many blocks goes through the CLI.
    const CLI_EVERY: u32 = 40;
    let mut s = Setup::with_args("concurrent", &["--capacity", "10000"]);
    let socket = s.daemon.socket().to_path_buf();
    let started = Instant::now();
    thread::scope(|scope| {
        for client in 0..CLIENTS {
            let socket = &socket;
            scope.spawn(move || {
                let mut conn = Client::connect(socket).expect("connecting");
                for i in 0..EACH {
                    let prefix = nth_address(client * EACH + i).to_string();
                    if i % CLI_EVERY == 0 {
                        let out = daemon::cli(socket, &["block", &prefix, "--json"]);
                        let changed: Changed =
                            serde_json::from_str(out.ok("block --json")).expect("JSON");
                        assert_eq!(changed.added, 1, "{prefix}: {changed:?}");
                        continue;
                    }
                    let reply = conn
                        .call(
                            Request::Add {
                                list: spacefilter::List::Block,
                                prefixes: vec![prefix.clone()],
                                ttl_secs: None,
                                comment: Some(format!("client {client}")),
                                origin: Origin::Manual,
                                force: false,
                            },
                            &mut |_, _| {},
                        )
                        .expect("adding");
                    match reply {
                        Response::Changed(Changed { added: 1, .. }) => {}
                        other => panic!("{prefix}: {other:?}"),
                    }
                }
            });
        }
    });
    let took = started.elapsed();
    let total = CLIENTS * EACH;
    eprintln!(
        "{total} blocks from {CLIENTS} concurrent clients ({} through the CLI) in {:.1} s",
        total / CLI_EVERY,
        took.as_secs_f64()
    );
    let expected: BTreeSet<String> = (0..total)
        .map(|n| format!("{}/32", nth_address(n)))
        .collect();
    let check = |s: &Setup, when: &str| {
        let listed: BTreeSet<String> = s
            .list()
            .into_iter()
            .filter(|e| e.list == spacefilter::List::Block)
            .map(|e| e.prefix)
            .collect();
        assert_eq!(listed.len(), expected.len(), "{when}: entries listed");
        assert!(listed == expected, "{when}: the listed entries differ");
        let status = s.status();
        assert_eq!(
            status.block_entries,
            u64::from(total),
            "{when}: status {status:?}"
        );
    };
    check(&s, "live");
    s.daemon.terminate(STOP_TIMEOUT).expect("stopping");
    s.restart(&["--capacity", "10000"]);
    check(&s, "after a restart");
}

/// One writer of [`acknowledged_changes_survive_kill_9_mid_flood`]: blocks
/// its own addresses one request at a time, unblocking every fifth one it
/// blocked, until the daemon goes away. Returns what it was told was done
/// (the addresses that must be blocked, and those that must not) and the
/// one address whose request got no answer.
fn flood_writer(
    socket: &Path,
    first: u32,
    acked: &AtomicUsize,
) -> (BTreeSet<String>, BTreeSet<String>, Option<String>) {
    let mut present = BTreeSet::new();
    let mut absent = BTreeSet::new();
    let Ok(mut conn) = Client::connect(socket) else {
        return (present, absent, None);
    };
    for i in 0..FLOOD_EACH {
        let prefix = format!("{}/32", nth_address(first + i));
        let remove = i % 5 == 4;
        let target = if remove {
            format!("{}/32", nth_address(first + i - 1))
        } else {
            prefix.clone()
        };
        let request = if remove {
            Request::Remove {
                list: spacefilter::List::Block,
                prefixes: vec![target.clone()],
            }
        } else {
            Request::Add {
                list: spacefilter::List::Block,
                prefixes: vec![target.clone()],
                ttl_secs: None,
                comment: None,
                origin: Origin::Manual,
                force: false,
            }
        };
        match conn.call(request, &mut |_, _| {}) {
            Ok(Response::Changed(_)) => {
                if remove {
                    present.remove(&target);
                    absent.insert(target);
                } else {
                    present.insert(target);
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => panic!("{target}: {other:?}"),
            // The daemon was killed: this request may or may not have been
            // carried out.
            Err(_) => return (present, absent, Some(target)),
        }
    }
    (present, absent, None)
}

/// Writes per writer in [`acknowledged_changes_survive_kill_9_mid_flood`].
const FLOOD_EACH: u32 = 2000;

/// Every change acknowledged before a `kill -9` that lands in the middle
/// of a stream of writes (past the point where the daemon folds its
/// journal into a new snapshot) is there after the restart.
#[test]
fn acknowledged_changes_survive_kill_9_mid_flood() {
    const WRITERS: u32 = 4;
    /// Past the journal's compaction (every 4096 changes).
    const KILL_AFTER: usize = 5000;
    let mut s = Setup::with_args("midflood", &["--capacity", "10000"]);
    let socket = s.daemon.socket().to_path_buf();
    let acked = AtomicUsize::new(0);
    let results = thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (socket, acked) = (&socket, &acked);
                scope.spawn(move || flood_writer(socket, w * FLOOD_EACH, acked))
            })
            .collect();
        let reached = traffic::wait_until(Duration::from_secs(45), || {
            acked.load(Ordering::Relaxed) >= KILL_AFTER
        });
        assert!(
            reached,
            "only {} changes in 45 s",
            acked.load(Ordering::Relaxed)
        );
        s.daemon.kill().expect("killing the daemon");
        writers
            .into_iter()
            .map(|w| w.join().expect("a writer panicked"))
            .collect::<Vec<_>>()
    });
    let done = acked.load(Ordering::Relaxed);
    s.restart(&["--capacity", "10000"]);
    let listed: BTreeSet<String> = s.list().into_iter().map(|e| e.prefix).collect();
    let mut unanswered = 0;
    for (present, absent, in_flight) in results {
        let lost: Vec<_> = present
            .iter()
            .filter(|p| !listed.contains(*p) && Some(*p) != in_flight.as_ref())
            .collect();
        assert!(lost.is_empty(), "acknowledged blocks lost: {lost:?}");
        let back: Vec<_> = absent
            .iter()
            .filter(|p| listed.contains(*p) && Some(*p) != in_flight.as_ref())
            .collect();
        assert!(back.is_empty(), "acknowledged unblocks undone: {back:?}");
        unanswered += usize::from(in_flight.is_some());
    }
    eprintln!(
        "kill -9 after {done} acknowledged changes ({unanswered} unanswered): all there after \
         the restart"
    );
    assert!(s.daemon.log().contains("restored"), "{}", s.daemon.log());
}

/// A raw connection to the control socket.
struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("writing to the socket");
    }

    /// The next reply line as JSON; `None` once the daemon has hung up
    /// (end of stream, or a reset: a Unix socket closed with unread data
    /// in it resets its peer once the data sent before is read).
    fn reply(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|err| panic!("reply {line:?}: {err}")),
            ),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(err) => panic!("reading a reply: {err}"),
        }
    }

    /// Sends one line and returns the reply.
    fn ask(&mut self, line: &[u8]) -> Value {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        self.send(&bytes);
        self.reply()
            .expect("the daemon hung up instead of answering")
    }
}

fn assert_error(reply: &Value, kind: &str, needle: &str, what: &str) {
    assert_eq!(reply["type"], "error", "{what}: {reply}");
    assert_eq!(reply["kind"], kind, "{what}: {reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{what}: {message:?} lacks {needle:?}"
    );
}

/// Bytes from a fixed xorshift sequence, without newlines.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x.to_le_bytes()[3] {
                b'\n' => b'?',
                b => b,
            }
        })
        .collect()
}

/// Sends bad requests on one connection: each gets an error reply.
fn bad_requests_get_errors(raw: &mut Raw) {
    let mut random = noise(4096);
    random.retain(|b| !b.is_ascii_whitespace());
    assert_error(
        &raw.ask(&random),
        "bad_input",
        "not a valid request",
        "random bytes",
    );
    assert_error(
        &raw.ask(&[0; 64]),
        "bad_input",
        "not a valid request",
        "NULs",
    );
    for (line, needle) in [
        (&br#"{"v":1,"cmd":"add","list":"#[..], "not a valid request"),
        (br#"{"v":1,"cmd":"explode"}"#, "explode"),
        (br#"{"v":1}"#, "cmd"),
        (br#"{"cmd":"status"}"#, "missing field"),
        (br"[1,2,3]", "not a valid request"),
        (br#""status""#, "not a valid request"),
        (br"null", "not a valid request"),
        (
            br#"{"v":1,"cmd":"add","list":"purple","prefixes":["192.0.2.1"]}"#,
            "purple",
        ),
        (
            br#"{"v":1,"cmd":"add","list":"block","prefixes":"192.0.2.1"}"#,
            "not a valid request",
        ),
        (
            br#"{"v":1,"cmd":"add","list":"block","prefixes":["not-a-prefix"]}"#,
            "not-a-prefix",
        ),
        (
            br#"{"v":1,"cmd":"add","list":"block","prefixes":["192.0.2.7/24"]}"#,
            "192.0.2.0/24",
        ),
        (
            br#"{"v":1,"cmd":"add","list":"block","prefixes":[]}"#,
            "no prefixes",
        ),
        (br#"{"v":99,"cmd":"status"}"#, "version 99"),
    ] {
        let what = String::from_utf8_lossy(line);
        assert_error(&raw.ask(line), "bad_input", needle, &what);
    }
}

/// A line over the limit gets an error, then the daemon hangs up. Returns
/// the connection.
fn oversized_line_is_refused(socket: &Path) -> Raw {
    let mut over = Raw::connect(socket);
    let mut writer = over.writer.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0;
        while sent <= MAX_REQUEST_BYTES + (1 << 20) {
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let reply = over.reply().expect("a reply to the oversized line");
    assert_error(&reply, "bad_input", "longer than", "oversized line");
    assert!(over.reply().is_none(), "the connection stays open");
    let sent = flood.join().unwrap();
    assert!(sent >= MAX_REQUEST_BYTES, "only {sent} bytes went out");
    over
}

/// A client that sends requests and never reads the replies, until its
/// writes time out (the daemon stops reading when its replies cannot go
/// out). Returns the connection, still open.
fn flood_without_reading(socket: &Path) -> Raw {
    let flooder = Raw::connect(socket);
    flooder
        .writer
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut writer = flooder.writer.try_clone().unwrap();
    let request = b"{\"v\":1,\"cmd\":\"status\"}\n".repeat(1000);
    for _ in 0..200 {
        if writer.write_all(&request).is_err() {
            break;
        }
    }
    flooder
}

/// Garbage on the socket gets error replies and never disturbs the
/// daemon: random bytes, broken JSON, unknown commands, a wrong protocol
/// version, an oversized line, clients that hang or flood without reading.
#[test]
fn garbage_on_the_socket_is_answered_and_harmless() {
    let s = Setup::new("garbage");
    let socket = s.daemon.socket();

    // Clients that connect and hang: silent, or half a request.
    let _silent = Raw::connect(socket);
    let mut half = Raw::connect(socket);
    half.send(br#"{"v":1,"cmd":"sta"#);

    // One connection, many bad requests: each gets an error, and the
    // connection keeps working.
    let mut raw = Raw::connect(socket);
    bad_requests_get_errors(&mut raw);
    assert_eq!(raw.ask(br#"{"v":1,"cmd":"status"}"#)["type"], "status");
    // Blank lines are skipped, several requests in one write are answered
    // in order.
    raw.send(b"\n\n{\"v\":1,\"cmd\":\"stats\"}\n{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(raw.reply().unwrap()["type"], "stats");
    assert_eq!(raw.reply().unwrap()["type"], "status");

    // A huge line within the limit is read (its padding ignored).
    let mut big = br#"{"v":1,"cmd":"status","padding":""#.to_vec();
    big.resize(big.len() + (8 << 20), b'x');
    big.extend_from_slice(b"\"}");
    assert_eq!(
        Raw::connect(socket).ask(&big)["type"],
        "status",
        "an 8 MiB line"
    );

    let over = oversized_line_is_refused(socket);

    // A client that sends a request and leaves without the answer; one
    // that floods requests and never reads its replies.
    let mut gone = Raw::connect(socket);
    gone.send(b"{\"v\":1,\"cmd\":\"list\"}\n");
    drop(gone);
    let flooder = flood_without_reading(socket);

    // Everyone else is still served.
    let status = s.status();
    assert_eq!(status.interfaces.len(), 1, "{status:?}");
    s.cli(&["block", "192.0.2.0/24"])
        .ok("block after the garbage");
    assert!(find(&s.list(), "block", "192.0.2.0/24").is_some());
    let mut again = Raw::connect(socket);
    assert_eq!(again.ask(br#"{"v":1,"cmd":"status"}"#)["type"], "status");
    let mut daemon = s.daemon;
    assert!(daemon.is_running(), "the daemon died");
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    // Hanging clients do not hold up a shutdown either.
    let stopping = Instant::now();
    let status = daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "the daemon took {:?} to stop",
        stopping.elapsed()
    );
    drop((half, raw, over, flooder, again));
}

/// Bad input through the CLI: exit status 2 and a message that says
/// what is wrong; no daemon: exit status 1 and one sentence. None of it
/// changes the rules.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let s = Setup::new("badinput");
    s.cli(&["block", "203.0.113.0/24", "--comment", "baseline"])
        .ok("baseline block");
    s.cli(&["allow", "198.18.1.10"]).ok("baseline allow");
    let baseline = keys(&s.list());
    let unchanged = |what: &str| {
        assert_eq!(keys(&s.list()), baseline, "{what} changed the rules");
    };
    let refused = |args: &[&str], needles: &[&str]| {
        let what = args.join(" ");
        let out = s.cli(args);
        out.expect_code(2, &what);
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{what}: {:?} lacks {needle:?}",
                out.stderr
            );
        }
        unchanged(&what);
        out
    };

    refused(&["block", "198.18.0.7/24"], &["did you mean 198.18.0.0/24"]);
    refused(&["block", "2001:2::7/48"], &["did you mean 2001:2::/48"]);
    refused(&["block", "not-a-prefix"], &["not an IP address"]);
    refused(&["block", "198.18.2.0/33"], &["not an IP address"]);
    refused(&["unblock", "bogus"], &["not an IP address"]);
    refused(&["block", "192.0.2.0/24", "--ttl", "0s"], &["--ttl"]);
    refused(&["block", "192.0.2.0/24", "--ttl", "soon"], &["soon"]);

    // A file with a bad line: the line is named, nothing is applied.
    let file = s.dir.join("bad.netset");
    std::fs::write(
        &file,
        "# a list\n192.0.2.0/24\n\n198.51.100.0/24\n198.51.100.7/24\n2001:db8::/32\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    refused(
        &["block", "--file", file],
        &["line 5", "198.51.100.0/24", "nothing was changed"],
    );
    refused(&["block", "--file", "/nonexistent/list"], &["cannot read"]);

    // The lockout guard: the server's own address, its whole family.
    for (args, needles) in [
        (
            &["block", "198.18.0.0/16"][..],
            &["198.18.0.1", "--force"][..],
        ),
        (&["block", "198.18.0.1"], &["198.18.0.1", "--force"]),
        (&["block", "2001:2::/48"], &["2001:2::1", "--force"]),
        (&["block", "0.0.0.0/0"], &["every address", "--force"]),
        (&["block", "::/0"], &["every address", "--force"]),
        (&["allow", "0.0.0.0/0"], &["every address", "--force"]),
        // All or nothing: the harmless prefix next to it is not applied.
        (&["block", "192.0.2.0/24", "198.18.0.0/16"], &["--force"]),
    ] {
        refused(args, needles);
    }
    for prefix in ["198.18.0.0/16", "0.0.0.0/0"] {
        s.cli(&["block", prefix, "--force"]).ok("block --force");
        assert!(find(&s.list(), "block", prefix).is_some(), "{prefix}");
        s.cli(&["unblock", prefix]).ok("unblock");
        unchanged(&format!("block {prefix} --force, unblock"));
    }

    // No daemon: one clear sentence.
    let nothing = s.dir.join("nothing.sock");
    for args in [
        &["status"][..],
        &["list"],
        &["block", "192.0.2.1"],
        &["stats", "--watch"],
    ] {
        let out = daemon::cli(&nothing, args);
        let what = format!("{} without a daemon", args.join(" "));
        out.expect_code(1, &what);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .starts_with("spacefilter: the spacefilter daemon is not running"),
            "{what}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
    }
    unchanged("the commands without a daemon");
}

/// `block --file` reads a FireHOL-style list (comments, blank lines,
/// both families), applies all of it with origin "file", and enforces it;
/// `unblock --file` takes it off again.
#[test]
fn block_file_applies_firehol_lists() {
    let s = Setup::new("file");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    let file = s.dir.join("firehol_level1.netset");
    std::fs::write(
        &file,
        "#\n# firehol_level1\n#\n# Maintainer: nobody\n#\n\n198.18.2.0/24\n203.0.113.0/24 # a \
         comment\n   192.0.2.7\n\n2001:2:0:2::/64\n2001:db8::1\n# the end\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = s.cli(&["block", "--file", path, "--json", "--comment", "feed"]);
    let changed: Changed = serde_json::from_str(out.ok("block --file")).expect("JSON");
    assert_eq!(changed.added, 5, "{changed:?}");
    let entries = s.list();
    let listed: BTreeMap<&str, &EntryView> =
        entries.iter().map(|e| (e.prefix.as_str(), e)).collect();
    for prefix in [
        "198.18.2.0/24",
        "203.0.113.0/24",
        "192.0.2.7/32",
        "2001:2:0:2::/64",
        "2001:db8::1/128",
    ] {
        let e = listed
            .get(prefix)
            .unwrap_or_else(|| panic!("{prefix}: {entries:?}"));
        assert_eq!(e.origin, Origin::File, "{e:?}");
        assert_eq!(e.list.name(), "block");
        assert_eq!(e.comment.as_deref(), Some("feed"));
    }
    assert_eq!(entries.len(), 5);
    for family in Family::ALL {
        s.assert_blocked(&sink, Host::Attacker, family);
        s.assert_reaches(&sink, Host::Listener, family, "passed");
    }
    s.cli(&["unblock", "--file", path]).ok("unblock --file");
    assert_eq!(s.list(), []);
    s.assert_reaches(&sink, Host::Attacker, Family::V6, "passed");
}

/// `stats --watch --json` streams one parseable line per interval,
/// with every reason's counters and rates.
#[test]
fn stats_watch_streams_json_lines() {
    let s = Setup::new("watch");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    let _stream = UdpStream::start(
        &s.lab,
        Host::Listener,
        server(Family::V4, &sink),
        STREAM_RATE,
    )
    .expect("starting a stream");
    let mut command = Command::new(daemon::binary());
    command
        .args([
            "stats",
            "--watch",
            "--json",
            "--interval",
            "200ms",
            "--socket",
        ])
        .arg(s.daemon.socket());
    let mut child = daemon::spawn_piped(&mut command).expect("starting stats --watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    for _ in 0..3 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => lines.push(line),
            Err(err) => {
                let _ = child.kill();
                panic!("stats --watch: no line within 5 s ({err}); got {lines:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();

    let views: Vec<StatsView> = lines
        .iter()
        .map(|(_, line)| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect();
    for view in &views {
        for reason in ["passed", "allowlisted", "blocked", "malformed", "not_ip"] {
            assert!(view.reasons.contains_key(reason), "{reason}: {view:?}");
        }
    }
    for pair in views.windows(2) {
        let gap = pair[1].at_ms.saturating_sub(pair[0].at_ms);
        assert!(
            pair[1].at_ms >= pair[0].at_ms && gap <= 3000,
            "lines {gap} ms apart: {views:?}"
        );
        assert!(
            pair[1].reasons["passed"].packets >= pair[0].reasons["passed"].packets,
            "counters went backwards: {views:?}"
        );
    }
    // Three readings span two intervals (less if a late tick was caught
    // up), and the listener's stream shows in the counters and the rates.
    let span = views[2].at_ms - views[0].at_ms;
    assert!(span >= 150, "three lines within {span} ms: {views:?}");
    let passed = views[2].reasons["passed"].packets - views[0].reasons["passed"].packets;
    assert!(
        passed >= 50,
        "{passed} packets passed in {span} ms of a {STREAM_RATE}/s stream: {views:?}"
    );
    assert!(
        views[0].reasons["passed"].packets_per_sec.abs() < 1e-9,
        "a rate without a previous reading: {views:?}"
    );
    assert!(
        views[1..]
            .iter()
            .any(|v| v.reasons["passed"].packets_per_sec > 0.0),
        "no rate shows the {STREAM_RATE}/s stream: {views:?}"
    );
    let printed = lines[2].0 - lines[0].0;
    assert!(
        printed >= Duration::from_millis(150),
        "three lines printed within {printed:?}"
    );
}

/// `status --json` shows the interface, its mode, the program and the
/// entry counts.
#[test]
fn status_shows_what_the_daemon_holds() {
    let s = Setup::new("status");
    s.cli(&["block", "198.18.2.0/24", "2001:2:0:2::/64"])
        .ok("block");
    s.cli(&["allow", "198.18.2.66"]).ok("allow");
    let status = s.status();
    assert_eq!(status.interfaces.len(), 1, "{status:?}");
    assert_eq!(status.interfaces[0].name, IFACE);
    assert_eq!(status.interfaces[0].mode, "native");
    assert!(status.program_id > 0, "{status:?}");
    assert_eq!((status.block_entries, status.allow_entries), (2, 1));
    assert_eq!(status.capacity.to_string(), CAPACITY);
    assert_eq!(status.protocol, PROTOCOL_VERSION);
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.uptime_secs < 60);
    let programs = daemon::xdp_programs(&s.lab).expect("reading the XDP programs");
    assert_eq!(
        programs,
        [XdpProgram {
            id: u64::from(status.program_id),
            name: "spacefilter".to_owned()
        }],
        "the program on {IFACE} is not the one status reports"
    );
    let text = s.cli(&["status"]);
    let text = text.ok("status");
    assert!(text.contains("attached to eth0 (native mode)"), "{text}");
    assert!(
        text.contains(&format!("program id {}", status.program_id)),
        "{text}"
    );
    // The list filters agree with the counts.
    for (flag, name, count) in [("--blocked", "block", 2), ("--allowed", "allow", 1)] {
        let out = s.cli(&["list", flag, "--json"]);
        let entries: Vec<EntryView> = serde_json::from_str(out.ok("list")).expect("JSON");
        assert_eq!(entries.len(), count, "{flag}: {entries:?}");
        assert!(
            entries.iter().all(|e| e.list.name() == name),
            "{flag}: {entries:?}"
        );
    }
}

/// SIGTERM: the daemon exits 0, removes its socket and leaves no XDP
/// program on the interface.
#[test]
fn sigterm_detaches_and_cleans_up() {
    let mut s = Setup::new("sigterm");
    s.cli(&["block", "198.18.2.0/24"]).ok("block");
    let id = s.status().program_id;
    assert_eq!(
        daemon::xdp_programs(&s.lab)
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>(),
        [u64::from(id)]
    );
    let status = s.daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert_eq!(status.code(), Some(0), "{status}\n{}", s.daemon.log());
    assert!(
        !s.daemon.socket().exists(),
        "the socket {} is still there",
        s.daemon.socket().display()
    );
    let left = daemon::xdp_programs(&s.lab).unwrap();
    assert!(left.is_empty(), "XDP programs left on {IFACE}: {left:?}");
    let link = s
        .lab
        .ip(Host::Server, &format!("-j -d link show dev {IFACE}"))
        .unwrap();
    assert!(!link.contains("\"xdp\""), "XDP still on {IFACE}: {link}");
    let log = s.daemon.log();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("detached from eth0"), "{log}");
    s.cli(&["status"]).expect_code(1, "status after SIGTERM");
    // The rules stay on disk for the next start.
    s.restart(&["--capacity", CAPACITY]);
    assert!(find(&s.list(), "block", "198.18.2.0/24").is_some());
}

/// The daemon will not attach over another XDP program, and says
/// which one; with --force it replaces a program attached the classic way
/// (netlink). Another daemon's program is held by a `bpf_link`, which
/// --force cannot move: that is refused too, and the first daemon carries
/// on.
#[test]
fn refuses_to_replace_another_program_unless_forced() {
    let mut s = Setup::new("occupied");
    let sink = UdpSink::start(&s.lab, Host::Server).expect("starting the UDP sink");
    let ns = s.lab.ns(Host::Server);
    s.cli(&["block", "198.18.2.0/24"]).ok("block");
    let first_id = s.status().program_id;

    // A second daemon on the same interface.
    for force in [false, true] {
        let second = DaemonPaths::in_dir(&s.dir.join(format!("second-{force}")));
        let mut args = vec!["--capacity", CAPACITY];
        if force {
            args.push("--force");
        }
        let mut other = DaemonProcess::spawn(&ns, &second, &args).expect("spawning");
        let status = other.wait_exit(Duration::from_secs(15)).expect("exiting");
        let log = other.log();
        // Refused (needs --force) is the caller's to fix: 2; a takeover that
        // cannot be done (the program is held by a bpf_link) is a failure: 1.
        let want = if force { 1 } else { 2 };
        assert_eq!(status.code(), Some(want), "force {force}: {status}\n{log}");
        assert!(
            log.contains(&format!("spacefilter (id {first_id})")),
            "force {force}: the refusal does not name the program:\n{log}"
        );
        if force {
            assert!(log.contains("bpf_link"), "{log}");
        } else {
            assert!(log.contains("--force"), "{log}");
        }
        assert!(!second.socket.exists());
    }
    // The first daemon is untouched.
    assert_eq!(s.status().program_id, first_id);
    s.assert_blocked(&sink, Host::Attacker, Family::V4);

    // A program attached by netlink, as `ip link set dev eth0 xdp ...` does.
    s.daemon.terminate(STOP_TIMEOUT).expect("stopping");
    let occupier = daemon::attach_occupier(&s.lab, &s.dir)
        .unwrap_or_else(|err| panic!("attaching the occupier: {err:#}"));
    let mut refused = DaemonProcess::spawn(
        &ns,
        &DaemonPaths::in_dir(s.dir.path()),
        &["--capacity", CAPACITY],
    )
    .expect("spawning");
    let status = refused.wait_exit(Duration::from_secs(15)).expect("exiting");
    let log = refused.log();
    assert_eq!(status.code(), Some(2), "{status}\n{log}");
    assert!(
        log.contains(&format!("{OCCUPIER_NAME} (id {occupier})")) && log.contains("--force"),
        "the refusal does not name {OCCUPIER_NAME} (id {occupier}):\n{log}"
    );
    drop(refused);
    assert_eq!(
        daemon::xdp_programs(&s.lab).unwrap(),
        [XdpProgram {
            id: occupier,
            name: OCCUPIER_NAME.to_owned()
        }]
    );
    // Its traffic passes: the occupier passes everything.
    s.restart(&["--capacity", CAPACITY, "--force"]);
    let status = s.status();
    assert_eq!(status.interfaces[0].mode, "native", "{status:?}");
    assert_eq!(
        daemon::xdp_programs(&s.lab).unwrap(),
        [XdpProgram {
            id: u64::from(status.program_id),
            name: "spacefilter".to_owned()
        }]
    );
    assert!(
        s.daemon
            .log()
            .contains(&format!("detaching {OCCUPIER_NAME}")),
        "{}",
        s.daemon.log()
    );
    s.assert_blocked(&sink, Host::Attacker, Family::V4);
    s.assert_reaches(&sink, Host::Listener, Family::V4, "passed");
}

/// Runs the CLI as `nobody`, in group `nogroup` only.
fn cli_as_nobody(socket: &Path, args: &[&str]) -> CliOutput {
    let started = Instant::now();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(daemon::binary())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("running setpriv");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `--socket-group`: the group's members read (stats, list, status) over
/// the socket, and are refused any change; others cannot connect at all.
#[test]
fn socket_group_members_may_read_but_not_change() {
    let s = Setup::with_args(
        "sockgroup",
        &["--capacity", CAPACITY, "--socket-group", "nogroup"],
    );
    s.daemon
        .cli(&["block", "198.18.2.0/24"])
        .ok("block as root");
    let socket = s.daemon.socket();
    for verb in [&["stats"][..], &["list"], &["status"], &["sample", "show"]] {
        cli_as_nobody(socket, verb).ok(&format!("{verb:?} as a group member"));
    }
    let listed = cli_as_nobody(socket, &["list"]);
    assert!(listed.stdout.contains("198.18.2.0/24"), "{}", listed.stdout);
    for verb in [
        &["block", "198.18.3.0/24"][..],
        &["unblock", "198.18.2.0/24"],
        &["debug", "on"],
    ] {
        let out = cli_as_nobody(socket, verb);
        out.expect_code(2, &format!("{verb:?} as a group member"));
        assert!(
            out.stderr.contains("may read but not change"),
            "{}",
            out.stderr
        );
    }
    let entries = s.daemon.cli(&["list", "--json"]).ok("list").to_owned();
    assert!(entries.contains("198.18.2.0/24") && !entries.contains("198.18.3.0/24"));

    // Without the group, the socket stays root's.
    let t = Setup::new("sockroot");
    let out = cli_as_nobody(t.daemon.socket(), &["stats"]);
    out.expect_code(1, "stats as nobody without the group");
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
}

/// A socket folder the daemon makes (outside systemd, `/run/spacefilter`
/// does not exist before the first start) is given to `--socket-group`
/// as the socket is, folders above it included: a folder of root's alone
/// would keep the group's members from a socket they may use. Without the
/// group, the folders stay root's.
#[test]
fn socket_folders_the_daemon_makes_let_its_group_in() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("sockdir").expect("scratch directory");
    // Let nobody through the scratch folder itself.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = |name: &str, args: &[&str]| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let mut paths = DaemonPaths::in_dir(&dir.join(name));
        paths.socket = dir.join(name).join("run/spacefilter/sock");
        let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, args)
            .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
        (daemon, paths.socket)
    };

    let (grouped, socket) = start("grouped", &["--socket-group", "nogroup"]);
    cli_as_nobody(&socket, &["status"]).ok("status as a group member");
    let group = std::fs::metadata(&socket).unwrap().gid();
    for folder in [
        socket.parent().unwrap(),
        socket.parent().unwrap().parent().unwrap(),
    ] {
        let meta = std::fs::metadata(folder).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.gid()),
            (0o750, group),
            "{}",
            folder.display()
        );
    }
    drop(grouped);

    let (_root, socket) = start("root", &[]);
    let out = cli_as_nobody(&socket, &["status"]);
    out.expect_code(1, "status as nobody without the group");
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert_eq!(
        std::fs::metadata(socket.parent().unwrap()).unwrap().gid(),
        0
    );
}

#[test]
fn an_unknown_socket_group_is_refused() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = Scratch::new("badgroup").expect("scratch");
    let mut daemon = DaemonProcess::spawn(
        &lab.ns(Host::Server),
        &DaemonPaths::in_dir(dir.path()),
        &[
            "--capacity",
            CAPACITY,
            "--socket-group",
            "no-such-group-here",
        ],
    )
    .expect("spawning");
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(2), "{}", daemon.log());
    assert!(
        daemon.log().contains("no-such-group-here"),
        "{}",
        daemon.log()
    );
}
