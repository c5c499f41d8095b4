//! The control plane, measured on a real daemon (`spacefilter run`) in a
//! [`FloodLab`]: how soon `spacefilter block` stops a stream that is
//! already flowing, a bulk import, listing it, and a restart with its
//! rules, and the daemon's own memory and CPU at idle and while the
//! program drops floods.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    maps::{Map, MapData, MapInfo, PerCpuArray},
    programs::loaded_programs,
};
use spacefilter::{List, Reason, api::EntryView};
use spacefilter_common::{Counter, STATS_SLOTS, map_names, stats_index};

use super::{
    Rng, Table,
    floods::{FALLBACK_PPS, FloodCase, SERVICE_PORT, SOURCE_PPS, SPOOFED_SOURCES},
};
use crate::{
    daemon::{BpfFs, DaemonPaths, DaemonProcess, Scratch, binary, memory_mib},
    flood::{Flood, FloodLab, Shape, USER_HZ},
    netns::{Family, Host},
    traffic::{UdpSink, UdpStream, wait_until},
};

/// What the control-plane benchmark does, and how long it takes.
#[derive(Clone, Copy, Debug)]
pub struct ControlOptions {
    /// Prefixes in the bulk import (and under the second set of block
    /// timings).
    pub import: usize,
    /// Block, time, unblock: this many times for each table.
    pub repeats: usize,
    /// How long the daemon's CPU is measured at idle and in each flood.
    pub interval: Duration,
}

/// The attacker's stream while `block` is timed, datagrams a second.
const STREAM_RATE: u64 = 20_000;
/// How often that stream tops up: a short sleep spreads its datagrams out,
/// so that the first one dropped comes soon after the block.
const STREAM_TICK: Duration = Duration::from_micros(50);
/// How often the timing loop looks at the program's counters and the
/// command (a sleep: the actual period is longer, by the timer slack).
const POLL: Duration = Duration::from_micros(20);
/// Sources of the rate-limited flood, from [`LIMITED_FIRST`] on: each goes
/// over its limit, and is auto-blocked after [`BLOCK_AFTER`]; few enough
/// that they do not count as a spoofed-source flood. On the lab's subnet,
/// where no host has them, and apart from the spoofed flood's sources.
const LIMITED_SOURCES: u32 = 2_000;
const LIMITED_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
/// The per-source limit of the rate-limited flood, packets a second (and
/// its burst): far below what each source sends at any rate the generator
/// reaches, so that each goes over at once and stays over.
const LIMITED_PPS: u64 = 10;
/// `--block-after` of the rate-limited flood.
const BLOCK_AFTER: &str = "1s";
/// How long the daemon is given to list every auto-block of that flood.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Runs of `spacefilter list` timed, in each format.
const LIST_RUNS: usize = 5;
/// How long a restart with the import may take before the benchmark gives
/// up: some seconds of CPU (the kernel sizes the maps, the verifier checks
/// the program, a million rules are restored), longer than the tests'
/// start timeout on a busy machine.
const RESTART_TIMEOUT: Duration = Duration::from_mins(1);

/// The verdict counters (`STATS`) of a program that another process
/// loaded, read straight from the kernel: the daemon's, to see the first
/// drop the moment it is counted, without asking the daemon.
pub(super) struct ProgramStats {
    map: PerCpuArray<MapData, Counter>,
}

impl ProgramStats {
    /// The counters of the program with id `program_id`.
    pub(super) fn of_program(program_id: u32) -> anyhow::Result<ProgramStats> {
        let program = loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == program_id)
            .with_context(|| format!("no program with id {program_id}"))?;
        let maps = program
            .map_ids()?
            .context("the kernel does not list the program's maps")?;
        for id in maps {
            if MapInfo::from_id(id)?.name_as_str() == Some(map_names::STATS) {
                let map = PerCpuArray::try_from(Map::PerCpuArray(MapData::from_id(id)?))?;
                return Ok(ProgramStats { map });
            }
        }
        bail!("program {program_id} has no map {}", map_names::STATS)
    }

    /// Packets counted, over all CPUs and every interface slot, for the
    /// reasons that `pick` takes.
    pub(super) fn packets(&self, pick: impl Fn(Reason) -> bool) -> anyhow::Result<u64> {
        let slots = self.map.len() / STATS_SLOTS;
        let mut total = 0;
        for reason in Reason::ALL.into_iter().filter(|&r| pick(r)) {
            for slot in 0..slots {
                total += self
                    .map
                    .get(&stats_index(slot, reason as u32), 0)?
                    .iter()
                    .map(|c| c.packets)
                    .sum::<u64>();
            }
        }
        Ok(total)
    }

    fn dropped(&self) -> anyhow::Result<u64> {
        self.packets(Reason::drops)
    }
}

/// The program id of the daemon, from `status --json`.
pub(super) fn program_id(daemon: &DaemonProcess) -> anyhow::Result<u32> {
    let status = daemon.cli(&["status", "--json"]);
    ensure!(
        status.code == Some(0),
        "status failed: {}",
        status.stderr.trim()
    );
    let value: serde_json::Value = serde_json::from_str(&status.stdout)
        .with_context(|| format!("reading `status --json`: {}", status.stdout))?;
    value["program_id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no program id in {}", status.stdout.trim()))
}

/// Runs a client verb that must succeed.
fn cli_ok(daemon: &DaemonProcess, args: &[&str]) -> anyhow::Result<String> {
    let out = daemon.cli(args);
    ensure!(
        out.code == Some(0),
        "`spacefilter {}` failed: {}",
        args.join(" "),
        out.stderr.trim()
    );
    Ok(out.stdout)
}

/// User plus system CPU time of process `pid` (all its threads) so far, in
/// seconds: fields 14 and 15 (`utime`, `stime`) of `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: count the fields
    // after it, from field 3 (the state).
    let rest = &stat[stat.rfind(')').context("no command name in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    #[expect(clippy::cast_precision_loss, reason = "tick counts")]
    let seconds = (ticks(14)? + ticks(15)?) as f64 / USER_HZ;
    Ok(seconds)
}

/// What a process used over an interval: its CPU time as a share of one
/// CPU, and its resident memory at the end.
struct Usage {
    cpu_share: f64,
    rss_mib: f64,
}

impl Usage {
    /// Runs `work` and measures what process `pid` used meanwhile.
    fn during<T>(pid: u32, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Usage)> {
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        let result = work()?;
        let cpu = cpu_seconds(pid)? - cpu_before;
        let (rss_mib, _, _) = memory_mib(pid);
        let usage = Usage {
            cpu_share: cpu / started.elapsed().as_secs_f64(),
            rss_mib,
        };
        Ok((result, usage))
    }

    fn show(&self) -> String {
        format!(
            "{:.0} MiB resident, {:.1} % of one CPU",
            self.rss_mib,
            self.cpu_share * 100.0
        )
    }
}

/// Median and range of a few timings, in ms.
pub(super) fn spread(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    match (ms.first(), ms.last()) {
        (Some(min), Some(max)) => format!("{:.2} ms [{min:.2} to {max:.2}]", ms[ms.len() / 2]),
        _ => "-".to_owned(),
    }
}

/// When the first drop of a flowing stream came, after `spacefilter
/// block` started and after it returned, and how long the command ran,
/// in ms, once per repeat.
#[derive(Default)]
struct BlockTimings {
    after_start: Vec<f64>,
    after_return: Vec<f64>,
    command: Vec<f64>,
}

impl BlockTimings {
    fn rows(self, table: &str, repeats: usize) -> Vec<(String, String)> {
        vec![
            (
                format!(
                    "first drop of a flowing stream after `spacefilter block` returns, {table} \
                     (median [range] of {repeats}; negative: the drop came first)"
                ),
                spread(self.after_return),
            ),
            (
                format!("first drop after `spacefilter block` starts, {table}"),
                spread(self.after_start),
            ),
            (
                format!("`spacefilter block` run to exit, {table}"),
                spread(self.command),
            ),
        ]
    }
}

/// Blocks the attacker's address while it streams to the server, times
/// the first drop the program counts against the command's start and
/// return, unblocks it and waits for the stream to arrive again; `repeats`
/// times.
///
/// The program writes the entry into its map before the daemon journals
/// it and answers, so the first drop may come before the command returns.
/// Both instants are taken by one loop that polls the counters and the
/// command (about every 0.1 ms); the stream sends a datagram every 50 µs.
fn block_timings(
    lab: &FloodLab,
    daemon: &DaemonProcess,
    repeats: usize,
) -> anyhow::Result<BlockTimings> {
    let server = Host::Server.addr(Family::V4);
    let attacker = Host::Attacker.addr(Family::V4);
    let prefix = Host::Attacker.host_prefix(Family::V4).to_string();
    let sink = UdpSink::start_on(lab, Host::Server, SERVICE_PORT)?;
    let stream = UdpStream::start_every(
        lab,
        Host::Attacker,
        SocketAddr::new(server, SERVICE_PORT),
        STREAM_RATE,
        STREAM_TICK,
    )?;
    let stats = ProgramStats::of_program(program_id(daemon)?)?;
    let blocked = |r: Reason| r == Reason::Blocked;
    let mut timings = BlockTimings::default();
    for _ in 0..repeats {
        let flowing = sink.received_from(attacker);
        ensure!(
            wait_until(Duration::from_secs(3), || sink.received_from(attacker)
                > flowing + 20),
            "the attacker's stream does not reach the server"
        );
        let before = stats.packets(blocked)?;
        let started = Instant::now();
        let mut child = Command::new(binary())
            .args(["block", &prefix, "--socket"])
            .arg(daemon.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running spacefilter block")?;
        let (mut dropped_at, mut returned_at) = (None, None);
        while dropped_at.is_none() || returned_at.is_none() {
            let now = Instant::now();
            if dropped_at.is_none() && stats.packets(blocked)? > before {
                dropped_at = Some(now);
            }
            if returned_at.is_none()
                && let Some(status) = child.try_wait()?
            {
                ensure!(status.success(), "spacefilter block failed: {status}");
                returned_at = Some(now);
            }
            if now.duration_since(started) > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("no drop within 10 s of `spacefilter block`");
            }
            thread::sleep(POLL);
        }
        let (Some(dropped_at), Some(returned_at)) = (dropped_at, returned_at) else {
            unreachable!("the loop ends when both are known");
        };
        let ms = |from: Instant, to: Instant| {
            if to >= from {
                to.duration_since(from).as_secs_f64() * 1e3
            } else {
                -from.duration_since(to).as_secs_f64() * 1e3
            }
        };
        timings.after_start.push(ms(started, dropped_at));
        timings.after_return.push(ms(returned_at, dropped_at));
        timings.command.push(ms(started, returned_at));
        cli_ok(daemon, &["unblock", &prefix])?;
    }
    let _ = stream.stop();
    Ok(timings)
}

/// Writes `size` prefixes from `rng` into a file and imports them with
/// `block --file`; returns how long the import took and the rows on it.
fn import(
    daemon: &DaemonProcess,
    scratch: &Scratch,
    size: usize,
    rng: &mut Rng,
) -> anyhow::Result<(Duration, Vec<(String, String)>)> {
    let table = Table::generate(size, rng);
    let file = scratch.join("import.netset");
    let mut text = String::with_capacity(size * 20);
    text.push_str("# benchmark import\n");
    for prefix in &table.block {
        let _ = writeln!(text, "{prefix}");
    }
    std::fs::write(&file, text)?;
    let import = daemon.cli(&["block", "--file", &file.display().to_string()]);
    ensure!(
        import.code == Some(0),
        "the import failed: {}",
        import.stderr.trim()
    );
    let (rss, peak, mapped) = memory_mib(daemon.pid());
    let one = daemon.cli(&["block", "198.18.200.0/24"]);
    ensure!(one.code == Some(0), "block failed: {}", one.stderr.trim());
    Ok((
        import.elapsed,
        vec![
            (
                format!("`block --file` with {size} prefixes (parse, send, write maps, journal)"),
                format!("{:.2} s", import.elapsed.as_secs_f64()),
            ),
            (
                format!("daemon memory after the import of {size}"),
                format!("{rss:.0} MiB resident ({mapped:.0} MiB mapped), {peak:.0} MiB peak"),
            ),
            (
                format!("one `block` on top of {size} entries (command run to exit)"),
                format!("{:.1} ms", one.elapsed.as_secs_f64() * 1e3),
            ),
        ],
    ))
}

/// Median times of `spacefilter list`: text, JSON.
type ListTimes = (Duration, Duration);

/// Runs `spacefilter list` (text, then `--json`) [`LIST_RUNS`] times each
/// with its output to a file, as `spacefilter list > file` would, and
/// times each run to its exit; checks that every entry is listed. Returns
/// the median times (text, JSON) and the rows.
fn list_timings(
    daemon: &DaemonProcess,
    scratch: &Scratch,
    entries: usize,
) -> anyhow::Result<(ListTimes, Vec<(String, String)>)> {
    let out = scratch.join("listing");
    let mut medians = Vec::new();
    let mut rows = Vec::new();
    for (format, extra) in [("text", None), ("--json", Some("--json"))] {
        let mut ms = Vec::new();
        for _ in 0..LIST_RUNS {
            let file = std::fs::File::create(&out)?;
            let started = Instant::now();
            let status = Command::new(binary())
                .arg("list")
                .args(extra)
                .arg("--socket")
                .arg(daemon.socket())
                .stdin(Stdio::null())
                .stdout(file)
                .status()
                .context("running spacefilter list")?;
            let took = started.elapsed();
            ensure!(status.success(), "spacefilter list failed: {status}");
            // A header line and a line an entry; one JSON line of them.
            let listed = std::fs::read(&out)?;
            let count = if extra.is_some() {
                serde_json::from_slice::<Vec<serde_json::Value>>(&listed)?.len()
            } else {
                String::from_utf8(listed)?.lines().count() - 1
            };
            ensure!(
                count == entries,
                "list {format} gave {count} of {entries} entries"
            );
            ms.push(took.as_secs_f64() * 1e3);
        }
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        medians.push(Duration::from_secs_f64(sorted[sorted.len() / 2] / 1e3));
        rows.push((
            format!(
                "`spacefilter list{}` with {entries} entries, to a file (run to exit; median \
                 [range] of {LIST_RUNS})",
                extra.map_or(String::new(), |e| format!(" {e}"))
            ),
            spread(ms),
        ));
    }
    let (rss, peak, mapped) = memory_mib(daemon.pid());
    rows.push((
        "daemon memory after those listings".to_owned(),
        format!("{rss:.0} MiB resident ({mapped:.0} MiB mapped), {peak:.0} MiB peak"),
    ));
    Ok(((medians[0], medians[1]), rows))
}

/// A daemon in a flood lab, with what it takes to measure it under a
/// flood.
struct FloodedDaemon<'a> {
    lab: &'a FloodLab,
    daemon: DaemonProcess,
    counters: ProgramStats,
    /// How long each flood lasts.
    interval: Duration,
}

impl FloodedDaemon<'_> {
    /// Floods the server with `flood`; returns the millions of frames a
    /// second the program dropped, and what the daemon used meanwhile.
    fn flood(&self, flood: &Flood) -> anyhow::Result<(f64, Usage)> {
        let before = self.counters.dropped()?;
        let (sent, usage) =
            Usage::during(self.daemon.pid(), || self.lab.flood(flood, self.interval))?;
        let dropped = self.counters.dropped()? - before;
        Ok((crate::flood::per_second(dropped, sent.elapsed) / 1e6, usage))
    }

    /// The daemon's auto-block entries.
    fn auto_listed(&self) -> anyhow::Result<usize> {
        let entries: Vec<EntryView> =
            serde_json::from_str(&cli_ok(&self.daemon, &["list", "--json"])?)
                .context("reading `list --json`")?;
        Ok(entries.iter().filter(|e| e.list == List::Auto).count())
    }
}

/// The daemon's memory and CPU at idle and while its program drops
/// floods: from a blocked source; from sources over a rate limit, which
/// the program auto-blocks and the daemon, told by events, journals one by
/// one; and from spoofed sources (the fallback on; after the rate-limited
/// flood, as the fallback stays on for a while and would take that
/// flood's new sources too).
fn daemon_under_floods(
    lab: &FloodLab,
    paths: &DaemonPaths,
    interval: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), paths, &[])?;
    let flooded = FloodedDaemon {
        lab,
        counters: ProgramStats::of_program(program_id(&daemon)?)?,
        daemon,
        interval,
    };
    let daemon = &flooded.daemon;
    let _sink = UdpSink::start_on(lab, Host::Server, SERVICE_PORT)?;
    let mut rows = Vec::new();

    let ((), idle) = Usage::during(daemon.pid(), || {
        thread::sleep(interval);
        Ok(())
    })?;
    rows.push((
        format!(
            "daemon at idle, empty lists ({:.0} s)",
            interval.as_secs_f64()
        ),
        idle.show(),
    ));

    cli_ok(
        daemon,
        &["block", &Host::Attacker.subnet(Family::V4).to_string()],
    )?;
    let (dropped, usage) = flooded.flood(&FloodCase::Blocked.flood(0))?;
    rows.push((
        format!("daemon during a flood from a blocked source ({dropped:.2} Mpps dropped)"),
        usage.show(),
    ));

    rows.extend(auto_block_flood(&flooded)?);

    cli_ok(
        daemon,
        &[
            "limit",
            "set",
            "--pps",
            &SOURCE_PPS.to_string(),
            "--fallback-pps",
            &FALLBACK_PPS.to_string(),
        ],
    )?;
    let (dropped, usage) = flooded.flood(&FloodCase::Spoofed.flood(0))?;
    let status = cli_ok(daemon, &["status", "--json"])?;
    let switches = serde_json::from_str::<serde_json::Value>(&status)?["spoof_fallback_switches"]
        .as_u64()
        .unwrap_or(0);
    rows.push((
        format!(
            "daemon during a flood from {SPOOFED_SOURCES} spoofed sources ({dropped:.2} Mpps \
             dropped; fallback switched on {switches} times)"
        ),
        usage.show(),
    ));
    Ok(rows)
}

/// The daemon under a flood from [`LIMITED_SOURCES`] sources, each over
/// its rate limit and auto-blocked after [`BLOCK_AFTER`]: its use during
/// the flood, and until it has journaled (and fsynced) every auto-block,
/// one by one as their events come, and lists them all.
fn auto_block_flood(flooded: &FloodedDaemon<'_>) -> anyhow::Result<Vec<(String, String)>> {
    let daemon = &flooded.daemon;
    cli_ok(
        daemon,
        &[
            "limit",
            "set",
            "--pps",
            &LIMITED_PPS.to_string(),
            "--burst",
            &LIMITED_PPS.to_string(),
            "--block-after",
            BLOCK_AFTER,
            "--block-ttl",
            "10m",
        ],
    )?;
    let over = Flood::new(
        Shape::Udp { port: SERVICE_PORT },
        &[LIMITED_FIRST.into()],
        Host::Server.addr(Family::V4),
    )
    .spread_over(LIMITED_FIRST, LIMITED_SOURCES);
    let started = Instant::now();
    let cpu_before = cpu_seconds(daemon.pid())?;
    let (dropped, usage) = flooded.flood(&over)?;
    let deadline = started + ADOPT_TIMEOUT;
    let mut listed = flooded.auto_listed()?;
    while listed < LIMITED_SOURCES as usize && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        listed = flooded.auto_listed()?;
    }
    let until_listed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.pid())? - cpu_before;
    Ok(vec![
        (
            format!(
                "daemon during a flood from {LIMITED_SOURCES} sources over a {LIMITED_PPS} \
                 packets/s limit, auto-blocked after {BLOCK_AFTER} ({dropped:.2} Mpps dropped)"
            ),
            usage.show(),
        ),
        (
            format!(
                "daemon from that flood's start until it lists its auto-blocks ({listed} of \
                 {LIMITED_SOURCES}, {until_listed:.1} s after the flood began; the program \
                 blocks each source {BLOCK_AFTER} after it goes over)"
            ),
            format!("{:.1} % of one CPU", cpu / until_listed * 100.0),
        ),
    ])
}

/// The control plane, measured on real daemons in a [`FloodLab`]: the
/// time from `spacefilter block` to the first drop with an empty table;
/// a bulk import of `options.import` prefixes through `spacefilter block
/// --file`, the daemon's memory, the block timings again on top of those
/// entries, a restart with them; then, on a fresh daemon, its memory and
/// CPU at idle and under floods.
pub fn control_plane(options: ControlOptions, rng: &mut Rng) -> anyhow::Result<ControlPlane> {
    let ControlOptions {
        import: size,
        repeats,
        interval,
    } = options;
    let lab = FloodLab::new()?;
    let scratch = Scratch::new("bench")?;
    let paths = DaemonPaths::in_dir(&scratch.join("imported"));
    // The links pinned, as on a host with its BPF filesystem: a restart
    // finds the program still filtering.
    let bpffs = BpfFs::mount(&scratch.join("bpf"))?;
    let pin_dir = bpffs.path().join("spacefilter");
    let capacity = (size + 4096).to_string();
    let extra = [
        "--capacity",
        capacity.as_str(),
        "--pin-dir",
        pin_dir.to_str().context("a UTF-8 path")?,
    ];
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &extra)?;
    let first_start = started.elapsed();
    let mut rows = vec![(
        "daemon start, empty (load, attach, socket)".to_owned(),
        format!("{:.2} s", first_start.as_secs_f64()),
    )];
    eprintln!("bench: control plane: timing `block` with an empty table");
    rows.extend(block_timings(&lab, &daemon, repeats)?.rows("empty table", repeats));

    eprintln!("bench: control plane: importing {size} prefixes through the daemon");
    let (import_time, import_rows) = import(&daemon, &scratch, size, rng)?;
    rows.extend(import_rows);
    let after_import = memory_mib(daemon.pid());
    eprintln!("bench: control plane: timing `block` on top of {size} entries");
    let table = format!("on top of {} entries", size + 1);
    rows.extend(block_timings(&lab, &daemon, repeats)?.rows(&table, repeats));
    eprintln!("bench: control plane: listing {} entries", size + 1);
    let (list, list_rows) = list_timings(&daemon, &scratch, size + 1)?;
    rows.extend(list_rows);

    daemon.kill()?;
    let (restart, mut daemon) = respawn(&lab, &paths, &extra)?;
    let (restored_rss, restored_peak, restored_mapped) = memory_mib(daemon.pid());
    let status = cli_ok(&daemon, &["status", "--json"])?;
    ensure!(
        status.contains(&format!("\"block_entries\":{}", size + 1)),
        "after the restart the daemon holds: {}",
        status.trim()
    );
    // And a successor built otherwise (here, room for more sources): it
    // loads a program of its own, fills its maps and takes the link over.
    daemon.kill()?;
    let other = [&extra[..], &["--max-sources", "70000"]].concat();
    let (reload, mut daemon) = respawn(&lab, &paths, &other)?;
    let state_bytes: u64 = std::fs::read_dir(&paths.state_dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    #[expect(clippy::cast_precision_loss, reason = "a size in MiB")]
    let state_mib = state_bytes as f64 / (1024.0 * 1024.0);
    rows.extend([
        (
            format!(
                "restart after kill -9 with {} rules (to answering)",
                size + 1
            ),
            format!("{:.2} s", restart.as_secs_f64()),
        ),
        (
            "the same, a successor with other options (loads its program and takes the link \
             over)"
                .to_owned(),
            format!("{:.2} s", reload.as_secs_f64()),
        ),
        (
            "daemon memory after that restart (peak: of the restart)".to_owned(),
            format!(
                "{restored_rss:.0} MiB resident ({restored_mapped:.0} MiB mapped), \
                 {restored_peak:.0} MiB peak"
            ),
        ),
        ("state on disk".to_owned(), format!("{state_mib:.0} MiB")),
    ]);
    daemon.terminate(crate::daemon::STOP_TIMEOUT)?;
    drop(daemon);
    // The stop left the filter on its pinned link: off, for what follows.
    detach(&lab, &pin_dir)?;
    drop(bpffs);

    eprintln!("bench: control plane: the daemon's CPU and memory, idle and under floods");
    let paths = DaemonPaths::in_dir(&scratch.join("floods"));
    rows.extend(daemon_under_floods(&lab, &paths, interval)?);
    Ok(ControlPlane {
        rows,
        import: (size, import_time),
        list,
        memory: [
            (after_import.0, after_import.1),
            (restored_rss, restored_peak),
        ],
        restart,
    })
}

/// Takes the filter pinned in `pin_dir` off the server's link
/// (`spacefilter detach`).
fn detach(lab: &FloodLab, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Server)])
        .arg(binary())
        .args(["detach", "--pin-dir"])
        .arg(pin_dir)
        .output()?;
    ensure!(out.status.success(), "spacefilter detach: {out:?}");
    Ok(())
}

/// Spawns the daemon on `paths` with `extra` after the last one was
/// killed, and times it from the spawn to its first answer; says where the
/// time went, as the daemon tells it.
fn respawn(
    lab: &FloodLab,
    paths: &DaemonPaths,
    extra: &[&str],
) -> anyhow::Result<(Duration, DaemonProcess)> {
    let started = Instant::now();
    let mut daemon = DaemonProcess::spawn(&lab.ns(Host::Server), paths, extra)?;
    daemon.wait_ready(RESTART_TIMEOUT)?;
    let restart = started.elapsed();
    if let Some(line) = daemon
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("started in"))
    {
        eprintln!(
            "bench: control plane: the restarted daemon: {}",
            line.trim()
        );
    }
    Ok((restart, daemon))
}

/// The control plane's measurements.
pub struct ControlPlane {
    /// What was measured, and the figure, for the report's table.
    pub rows: Vec<(String, String)>,
    /// The bulk import: how many prefixes, and how long it took.
    pub import: (usize, Duration),
    /// Median times of `spacefilter list` of the import.
    pub list: ListTimes,
    /// The daemon's memory (resident, peak; MiB) after the import and
    /// after the restart.
    pub memory: [(f64, f64); 2],
    /// The restart after `kill -9` with the import in the state, from
    /// the spawn to the first answer.
    pub restart: Duration,
}

/// The import target: a million prefixes in under this long.
const IMPORT_TARGET: Duration = Duration::from_secs(10);
/// The restart target: a daemon restarted after `kill -9` with a million
/// rules answers in under this long.
const RESTART_TARGET: Duration = Duration::from_secs(1);
/// The listing target: a million entries listed in under this long.
const LIST_TARGET: Duration = Duration::from_secs(1);
/// The memory targets with a million entries: resident (the lookup
/// tables' mapping included) and peak, MiB.
const RESIDENT_TARGET: f64 = 200.0;
const PEAK_TARGET: f64 = 300.0;

/// The control-plane section of the report.
#[must_use]
pub fn control_report(control: &ControlPlane) -> String {
    let ControlPlane {
        rows,
        import: (size, took),
        list,
        memory,
        restart,
    } = control;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Control plane (a real daemon in a network-namespace lab)\n\n\
         The daemon runs in the flood lab's server namespace, attached to its link. The \
         `block` timings: the attacker streams {STREAM_RATE} datagrams a second to the \
         server; `spacefilter block` (its address) is run as a command, and one loop polls \
         the program's own drop counter (read from the kernel, not through the daemon) and \
         the command, about every 0.1 ms, then `unblock` lets the stream back in. The daemon \
         journals the entry, writes it into the program's map, and answers once the \
         journal's flusher has it on disk (fdatasync), so the first drop comes before the \
         command returns. Daemon CPU is its user and system time (`/proc/PID/stat`, all \
         threads) over the interval, as a share of one CPU; the floods are the harness's \
         generator at its highest rate, dropped by the daemon's program. `spacefilter list` \
         is run with its output to a file, to its exit, five times in each format; daemon \
         memory is `/proc/PID/status` (VmRSS, VmHWM for the peak since the daemon started; \
         mapped: RssFile, the lookup tables the daemon maps, kernel memory counted once).\n"
    );
    let _ = writeln!(out, "| what | measured |");
    let _ = writeln!(out, "|---|---:|");
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    let verdict = if *size < 1_000_000 {
        format!("not measured: this run imported {size} prefixes")
    } else if *took < IMPORT_TARGET {
        format!("{:.2} s, met", took.as_secs_f64())
    } else {
        format!("{:.2} s, MISSED", took.as_secs_f64())
    };
    let _ = writeln!(
        out,
        "\nTarget: a 1M-prefix import in under {} s: {verdict}.",
        IMPORT_TARGET.as_secs()
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let verdict = if *size < 1_000_000 {
        format!("not measured: this run imported {size} prefixes")
    } else {
        format!(
            "{:.2} s, {}",
            restart.as_secs_f64(),
            met(*restart < RESTART_TARGET)
        )
    };
    let _ = writeln!(
        out,
        "\nTarget: a restart after kill -9 with 1M rules, answering in under {} s: {verdict}.",
        RESTART_TARGET.as_secs()
    );
    let verdict = if *size < 1_000_000 {
        format!("not measured: this run imported {size} prefixes")
    } else {
        let slowest = list.0.max(list.1);
        let [(rss, peak), (restored_rss, restored_peak)] = *memory;
        format!(
            "listing {:.2} s (text), {:.2} s (JSON), {}; after the import {rss:.0} MiB \
             resident, {peak:.0} MiB peak; after the restart {restored_rss:.0} MiB resident, \
             {restored_peak:.0} MiB peak: {}",
            list.0.as_secs_f64(),
            list.1.as_secs_f64(),
            met(slowest < LIST_TARGET),
            met(rss.max(restored_rss) <= RESIDENT_TARGET && peak.max(restored_peak) < PEAK_TARGET),
        )
    };
    let _ = writeln!(
        out,
        "\nTargets at 1M entries: `spacefilter list` in under {} s; the daemon at most \
         {RESIDENT_TARGET:.0} MiB resident (the tables' mapping included), under \
         {PEAK_TARGET:.0} MiB at its peak: {verdict}.",
        LIST_TARGET.as_secs()
    );
    out
}
