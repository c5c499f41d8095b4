//! A large list, end to end: the real daemon imports a bulk file of many
//! prefixes, lists every one of them back (JSON and text, each entry as
//! the import and live traffic left it), and after a `kill -9` restarts
//! with all of them; its memory stays bounded throughout. How fast, and
//! the figures at a million entries, are the benchmark's (BENCHMARKS.md,
//! "Control plane"): this checks what the listing holds, and that memory
//! is bounded at all. While the import holds the daemon's lock, `stats`
//! still answers.
//!
//! Needs the daemon binary built (`cargo build -p spacefilter`) and root.

use std::{collections::BTreeSet, fmt::Write as _, net::SocketAddr, time::Duration};

use spacefilter::{
    Prefix,
    api::{EntryView, Request, Response, StatsView, client::Client},
};
use spacefilter_tests::{
    bench::{Rng, Table},
    daemon::{DaemonPaths, DaemonProcess, Scratch, memory_mib},
    netns::{Family, Host, Lab},
    require_root,
    traffic::{self, UdpSink},
};

/// Prefixes imported: enough that the listing is streamed in many chunks
/// and the maps repack as they grow, few enough for a debug build in a few
/// seconds.
const ENTRIES: usize = 100_000;
/// A bound on the daemon's peak resident memory: the target at a million
/// entries, which a tenth of that stays far below. (With this capacity the
/// lookup tables it maps take some 90 MiB of it.)
const PEAK_BOUND_MIB: f64 = 300.0;
/// Datagrams the attacker sends, per address family.
const BURST: u64 = 40;

fn blocked(socket: &std::path::Path) -> u64 {
    let mut client = Client::connect(socket).expect("connecting to the daemon");
    match client.call(Request::Stats, &mut |_, _| {}) {
        Ok(Response::Stats(StatsView { reasons, .. })) => {
            reasons.get("blocked").map_or(0, |c| c.packets)
        }
        other => panic!("stats: {other:?}"),
    }
}

/// Writes `table`'s blocked prefixes to a bulk file in `dir`.
fn write_import(dir: &Scratch, table: &Table) -> std::path::PathBuf {
    let file = dir.join("import.netset");
    let mut text = String::from("# a large import\n");
    for prefix in &table.block {
        let _ = writeln!(text, "{prefix}");
    }
    std::fs::write(&file, text).expect("writing the import");
    file
}

/// The table line the CLI prints for `e`, an entry without a TTL.
fn text_line(e: &EntryView) -> String {
    format!(
        "{:<43} {:<6} {:<7} {:>12} {:>14}  {}",
        e.prefix,
        e.list.name(),
        e.origin.name(),
        "-",
        e.hits,
        e.comment.as_deref().unwrap_or("")
    )
}

/// What identifies an entry across a restart (its hits and time left
/// change).
fn key(e: &EntryView) -> (String, String, &'static str, Option<String>) {
    (
        e.list.name().to_owned(),
        e.prefix.clone(),
        e.origin.name(),
        e.comment.clone(),
    )
}

/// Every entry, in order, as the import (`table`), the hand and the
/// traffic (from `attacker`) left it.
fn check_listed(listed: &[EntryView], table: &Table, attacker: &[String]) {
    assert_eq!(listed.len(), ENTRIES + 3);
    let mut sorted = listed.to_vec();
    sorted.sort_by_key(|e| (e.list, e.prefix.parse::<Prefix>().expect("a prefix")));
    assert!(sorted == listed, "the listing is out of order");
    let imported: BTreeSet<String> = table.block.iter().map(ToString::to_string).collect();
    let mut from_file = BTreeSet::new();
    for e in listed {
        match (e.list.name(), e.origin.name()) {
            ("block", "file") => {
                assert_eq!(
                    (&e.comment, e.expires_in_secs, e.hits),
                    (&None, None, 0),
                    "{e:?}"
                );
                from_file.insert(e.prefix.clone());
            }
            ("block", "manual") => {
                assert!(attacker.contains(&e.prefix), "{e:?}");
                assert_eq!(e.comment.as_deref(), Some("the attacker"));
                assert!(e.hits >= BURST, "{e:?}");
            }
            ("allow", "manual") => {
                assert_eq!(e.prefix, "100.64.0.0/24");
                assert_eq!(e.comment.as_deref(), Some("kept"));
                assert!(
                    e.expires_in_secs.is_some_and(|s| s > 3000 && s <= 3600),
                    "{e:?}"
                );
            }
            _ => panic!("unexpected entry {e:?}"),
        }
    }
    assert!(
        from_file == imported,
        "the imported entries are not all listed"
    );
}

/// The table (`list`) holds the entries of `listed`, a line each.
fn check_table(table: &str, listed: &[EntryView]) {
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), listed.len() + 1);
    assert!(lines[0].starts_with("PREFIX"), "{}", lines[0]);
    for (line, e) in lines[1..].iter().zip(listed) {
        // Hits may have grown in between, and time left shrunk: those
        // entries are matched by their prefix.
        if e.hits == 0 && e.expires_in_secs.is_none() {
            assert_eq!(*line, text_line(e));
        } else {
            assert!(line.starts_with(&e.prefix), "{line}");
        }
    }
}

#[test]
fn a_large_list_is_listed_whole_and_survives_a_restart() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("bulk").expect("creating a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let capacity = (ENTRIES + 4096).to_string();
    let args = ["--capacity", capacity.as_str()];
    let mut daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let (idle_rss, _, _) = memory_mib(daemon.pid());

    let table = Table::generate(ENTRIES, &mut Rng::new(0x00b0_1c0f));
    let file = write_import(&dir, &table);
    daemon
        .cli(&["block", "--file", &file.display().to_string()])
        .ok("block --file");
    let (rss, peak, mapped) = memory_mib(daemon.pid());
    eprintln!(
        "after importing {ENTRIES}: {rss:.0} MiB resident ({mapped:.0} MiB mapped), {peak:.0} \
         MiB peak; {idle_rss:.0} MiB before"
    );
    // The reading follows the daemon: the rules take room.
    #[expect(clippy::cast_precision_loss, reason = "a size in MiB")]
    let least = (ENTRIES * 20) as f64 / f64::from(1 << 20);
    assert!(rss - idle_rss >= least, "{idle_rss} MiB, then {rss} MiB");
    assert!(peak < PEAK_BOUND_MIB, "peak {peak} MiB");

    // The attacker's addresses, blocked by hand after the import: its
    // traffic gives them hits (counted in the last of the hit counters,
    // which are read in parts), and the imported entries none. An allow
    // entry with a TTL.
    let attacker: Vec<String> = Family::ALL
        .iter()
        .map(|&f| Host::Attacker.host_prefix(f).to_string())
        .collect();
    for prefix in &attacker {
        daemon
            .cli(&["block", prefix, "--comment", "the attacker"])
            .ok("block");
    }
    daemon
        .cli(&["allow", "100.64.0.0/24", "--ttl", "1h", "--comment", "kept"])
        .ok("allow");

    let sink = UdpSink::start(&lab, Host::Server).expect("starting the sink");
    let before = blocked(daemon.socket());
    for family in Family::ALL {
        let to = SocketAddr::new(Host::Server.addr(family), sink.port());
        let sent = traffic::send_udp(&lab, Host::Attacker, to, BURST, Duration::from_micros(500))
            .expect("sending UDP");
        assert_eq!(sent, BURST);
    }
    assert!(
        traffic::wait_until(Duration::from_secs(3), || blocked(daemon.socket())
            >= before + 2 * BURST),
        "the attacker's datagrams were not all dropped"
    );

    let out = daemon.cli(&["list", "--json"]);
    let listed: Vec<EntryView> =
        serde_json::from_str(out.ok("list --json")).expect("list --json prints JSON");
    check_listed(&listed, &table, &attacker);
    let out = daemon.cli(&["list"]);
    check_table(out.ok("list"), &listed);
    let out = daemon.cli(&["list", "--blocked", "--json"]);
    let blocks: Vec<EntryView> = serde_json::from_str(out.ok("list --blocked")).expect("JSON");
    assert_eq!(blocks.len(), ENTRIES + 2);
    let (_, peak, _) = memory_mib(daemon.pid());
    assert!(peak < PEAK_BOUND_MIB, "peak {peak} MiB after the listings");

    // After a crash, the next daemon has them all.
    daemon.kill().expect("killing the daemon");
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("restarting the daemon: {err:#}"));
    let (rss, peak, mapped) = memory_mib(daemon.pid());
    eprintln!(
        "after a restart with {}: {rss:.0} MiB resident ({mapped:.0} MiB mapped), {peak:.0} MiB \
         peak",
        listed.len()
    );
    assert!(peak < PEAK_BOUND_MIB, "peak {peak} MiB at the restart");
    let out = daemon.cli(&["list", "--json"]);
    let restored: Vec<EntryView> = serde_json::from_str(out.ok("list --json")).expect("JSON");
    let keys = |entries: &[EntryView]| entries.iter().map(key).collect::<Vec<_>>();
    assert!(
        keys(&restored) == keys(&listed),
        "the restart lost or changed entries"
    );
}

/// `stats` reads the counters without the daemon's lock: while a large
/// import holds it, `stats` answers again and again, while a `status`
/// asked meanwhile (which takes the lock: the positive control) waits for
/// the import to finish.
#[test]
fn stats_answers_while_an_import_holds_the_lock() {
    /// Answers that must come while a `status` waits behind the import:
    /// hundreds do (the import holds the lock for seconds), and only a
    /// few could while a `status` thread has yet to send its request.
    const ANSWERS: usize = 100;

    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("bulk-stats").expect("creating a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let capacity = (ENTRIES + 4096).to_string();
    let args = ["--capacity", capacity.as_str()];
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    let file = write_import(&dir, &Table::generate(ENTRIES, &mut Rng::new(0x05_7a75)));

    let mut command = std::process::Command::new(spacefilter_tests::daemon::binary());
    command
        .args(["block", "--file", &file.display().to_string(), "--socket"])
        .arg(daemon.socket());
    let mut import = spacefilter_tests::daemon::spawn_piped(&mut command).expect("starting");
    let socket = daemon.socket().to_path_buf();
    let mut most = 0;
    let mut waiters = 0;
    while most < ANSWERS && import.try_wait().expect("checking the import").is_none() {
        // A `status` on a connection of its own, already open, so that it
        // is asked as soon as the thread says so.
        let mut client = Client::connect(&socket).expect("connecting to the daemon");
        let (asked_tx, asked) = std::sync::mpsc::channel();
        let status = std::thread::spawn(move || {
            asked_tx.send(()).expect("telling the test");
            client.call(Request::Status, &mut |_, _| {}).map(drop)
        });
        asked.recv().expect("the status thread");
        waiters += 1;
        let mut answered = 0;
        loop {
            blocked(daemon.socket());
            if status.is_finished() || import.try_wait().expect("checking").is_some() {
                break;
            }
            answered += 1;
        }
        most = most.max(answered);
        status
            .join()
            .expect("the status thread")
            .expect("status answers");
    }
    let done = import.wait_with_output().expect("waiting for the import");
    assert!(
        done.status.success(),
        "the import failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        most >= ANSWERS,
        "stats answered at most {most} times while a status waited for the import ({waiters} \
         status calls)"
    );
    let out = daemon.cli(&["status", "--json"]);
    assert!(
        out.ok("status")
            .contains(&format!("\"block_entries\":{ENTRIES}")),
        "after the import: {}",
        out.ok("status")
    );
}
