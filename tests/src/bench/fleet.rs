//! The fleet, measured on three spacefilter hosts and a real etcd cluster
//! ([`Fleet`]): how soon a block typed on host 1 drops the attacker's
//! datagrams at the farthest of the other two hosts, and how long a host
//! joining a large fleet takes to hold all of its rules.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use spacefilter::{
    Reason,
    api::{Request, Response, client::Client},
    net::{List, Prefix},
};

use super::control::{ProgramStats, program_id, spread};
use crate::{
    daemon::binary,
    fleet::{FLEET, Fleet},
    netns::{Family, Host},
    traffic::{UdpStream, wait_until},
};

/// What the fleet benchmark does.
#[derive(Clone, Copy, Debug)]
pub struct FleetOptions {
    /// Blocks typed on host 1, one after the other.
    pub blocks: usize,
    /// Rules of the fleet a host joins.
    pub join_rules: u32,
    /// Times a host joins it.
    pub joins: usize,
}

/// The attacker's stream to each of hosts 2 and 3, datagrams a second.
const STREAM_RATE: u64 = 4_000;
/// How often each stream tops up: a datagram each time.
const STREAM_TICK: Duration = Duration::from_micros(250);
/// How often the timing loop looks at the command and the counters (a
/// sleep: the actual period is longer, by the timer slack).
const POLL: Duration = Duration::from_micros(200);
/// How long one block may take to reach every host.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the joining host is asked how many rules it holds.
const JOIN_POLL: Duration = Duration::from_millis(50);
/// How long a join may take before the benchmark gives up.
const JOIN_TIMEOUT: Duration = Duration::from_mins(2);
/// The targets of issue #14.
const P50_TARGET: Duration = Duration::from_millis(100);
const P99_TARGET: Duration = Duration::from_secs(1);
const JOIN_TARGET: Duration = Duration::from_secs(5);

/// What one block took, in ms, signed (negative: before the command
/// returned).
struct BlockTiming {
    /// The command on host 1, run to exit.
    command: f64,
    /// From the command's start to the first drop at the later of hosts 2
    /// and 3.
    farthest_from_start: f64,
    /// From its return to the first drop at hosts 2 and 3.
    others: [f64; 2],
}

/// What a join took.
struct JoinTiming {
    /// From the daemon's start to its answering on its socket.
    start: Duration,
    /// From its answering to holding every rule.
    join: Duration,
    /// The daemon's own account of its read of the fleet, from its log.
    logged: Option<Duration>,
}

/// The measurements, for [`fleet_report`].
pub struct FleetRun {
    blocks: Vec<BlockTiming>,
    join_rules: u32,
    joins: Vec<JoinTiming>,
    when: String,
}

/// Runs the fleet benchmark: the blocks on three hosts, then the joins.
pub fn fleet_run(options: FleetOptions) -> anyhow::Result<FleetRun> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fleet = Fleet::new("bench-fleet")?;
    for host in Host::SERVERS {
        fleet.join(host, &["--capacity", "1024"])?;
    }
    eprintln!(
        "bench: fleet: {} blocks typed on host 1, timed to the first drop at hosts 2 and 3",
        options.blocks
    );
    let blocks = block_timings(&fleet, options.blocks)?;
    for host in Host::SERVERS {
        fleet.leave(host);
    }
    fleet.clear()?;
    let joins = join_timings(&mut fleet, options)?;
    Ok(FleetRun {
        blocks,
        join_rules: options.join_rules,
        joins,
        when: format!(
            "load average {} at the start",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    })
}

/// The packets a host's program has dropped as blocked.
fn blocked(stats: &ProgramStats) -> anyhow::Result<u64> {
    stats.packets(|r| r == Reason::Blocked)
}

/// Types `spacefilter block` (the attacker's address) on host 1 while the
/// attacker streams to hosts 2 and 3, and times the first drop each of
/// their programs counts; then `unblock`, and the streams flow again;
/// `count` times.
fn block_timings(fleet: &Fleet, count: usize) -> anyhow::Result<Vec<BlockTiming>> {
    let attacker = Host::Attacker.addr(Family::V4);
    let others = [fleet.member(Host::Server2), fleet.member(Host::Server3)];
    let mut streams = Vec::new();
    let mut stats = Vec::new();
    for member in others {
        let to = SocketAddr::new(member.host.addr(Family::V4), member.sink.port());
        streams.push(UdpStream::start_every(
            &fleet.lab,
            Host::Attacker,
            to,
            STREAM_RATE,
            STREAM_TICK,
        )?);
        stats.push(ProgramStats::of_program(program_id(&member.daemon)?)?);
    }
    let host1 = fleet.member(Host::Server);
    let mut timings = Vec::with_capacity(count);
    for _ in 0..count {
        for member in others {
            let flowing = member.sink.received_from(attacker);
            ensure!(
                wait_until(Duration::from_secs(3), || member
                    .sink
                    .received_from(attacker)
                    > flowing + 5),
                "the attacker's stream does not reach {}",
                member.host
            );
        }
        let before = stats
            .iter()
            .map(blocked)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &fleet.lab.ns(Host::Server)])
            .arg(binary())
            .args(["block", &attacker.to_string(), "--socket"])
            .arg(host1.daemon.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running spacefilter block")?;
        let mut dropped = [None; 2];
        let mut returned = None;
        while returned.is_none() || dropped.iter().any(Option::is_none) {
            let now = Instant::now();
            for (at, (stats, before)) in dropped.iter_mut().zip(stats.iter().zip(&before)) {
                if at.is_none() && blocked(stats)? > *before {
                    *at = Some(now);
                }
            }
            if returned.is_none()
                && let Some(status) = child.try_wait()?
            {
                ensure!(status.success(), "spacefilter block failed: {status}");
                returned = Some(now);
            }
            if now.duration_since(started) > BLOCK_TIMEOUT {
                let _ = child.kill();
                bail!("the block did not reach every host within {BLOCK_TIMEOUT:?}");
            }
            thread::sleep(POLL);
        }
        let returned = returned.expect("the loop ends once the command has returned");
        let ms = |at: Option<Instant>| {
            let at = at.expect("the loop ends once every host has dropped");
            if at >= returned {
                at.duration_since(returned).as_secs_f64() * 1e3
            } else {
                -returned.duration_since(at).as_secs_f64() * 1e3
            }
        };
        let last = dropped.iter().flatten().max().expect("both hosts dropped");
        timings.push(BlockTiming {
            command: returned.duration_since(started).as_secs_f64() * 1e3,
            farthest_from_start: last.duration_since(started).as_secs_f64() * 1e3,
            others: [ms(dropped[0]), ms(dropped[1])],
        });
        fleet.verb_ok(Host::Server, &["unblock", &attacker.to_string()]);
    }
    Ok(timings)
}

/// Writes `join_rules` rules to the fleet, then starts a daemon on host 3
/// with an empty state, `joins` times, and times each until it holds them
/// all.
fn join_timings(fleet: &mut Fleet, options: FleetOptions) -> anyhow::Result<Vec<JoinTiming>> {
    let prefixes: Vec<Prefix> = (0..options.join_rules)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            format!("10.{a}.{b}.{c}").parse().expect("a prefix")
        })
        .collect();
    let started = Instant::now();
    fleet.publish(List::Block, &prefixes, Some("fleet-wide"))?;
    eprintln!(
        "bench: fleet: {} rules written to etcd in {:.1} s",
        prefixes.len(),
        started.elapsed().as_secs_f64()
    );
    let capacity = (options.join_rules + 16 * 1024).to_string();
    let mut joins = Vec::new();
    for _ in 0..options.joins {
        let started = Instant::now();
        let member = fleet.spawn(Host::Server3, &["--capacity", &capacity])?;
        let answering = Instant::now();
        let mut client = Client::connect(member.daemon.socket())?;
        let mut held = 0;
        let mut all = || -> anyhow::Result<bool> {
            held = match client.call(Request::Status, &mut |_, _| {})? {
                Response::Status(view) => view.block_entries,
                other => bail!("unexpected answer {other:?}"),
            };
            Ok(held == u64::from(options.join_rules))
        };
        while !all()? {
            ensure!(
                answering.elapsed() < JOIN_TIMEOUT,
                "the joining host holds {held} of {} rules after {JOIN_TIMEOUT:?}",
                options.join_rules
            );
            thread::sleep(JOIN_POLL);
        }
        let join = answering.elapsed();
        let read = format!("{} rules read and applied", options.join_rules);
        wait_until(Duration::from_secs(10), || {
            member.daemon.log().contains(&read)
        });
        let logged = member
            .daemon
            .log()
            .lines()
            .find(|l| l.contains(&read))
            .and_then(|l| l.split(" in ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(debug_duration);
        eprintln!(
            "bench: fleet: {} rules held {:.2} s after the joining daemon answered (its log: \
             {logged:?})",
            options.join_rules,
            join.as_secs_f64()
        );
        joins.push(JoinTiming {
            start: answering.duration_since(started),
            join,
            logged,
        });
        fleet.leave(Host::Server3);
    }
    Ok(joins)
}

/// A duration as `{:?}` writes it (`2.5s`, `812.3ms`).
fn debug_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = text.strip_suffix("µs") {
        (us, 1e-6)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

/// The `n`th percentile of sorted `values`, by nearest rank: the 99th of
/// 100 values is the second highest.
fn percentile(sorted: &[f64], n: usize) -> f64 {
    sorted[(sorted.len() * n).div_ceil(100).clamp(1, sorted.len()) - 1]
}

/// The rows on the blocks, and the farthest host's p50 and p99 in ms.
fn block_rows(blocks: &[BlockTiming]) -> (Vec<(String, String)>, f64, f64) {
    let n = blocks.len();
    let sorted = |pick: &dyn Fn(&BlockTiming) -> f64| {
        let mut values: Vec<f64> = blocks.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let farthest = sorted(&|b| b.others[0].max(b.others[1]));
    let nearest = sorted(&|b| b.others[0].min(b.others[1]));
    let command = sorted(&|b| b.command);
    let from_start = sorted(&|b| b.farthest_from_start);
    let ms = |v: f64| format!("{v:.1} ms");
    let both = |values: &[f64]| {
        format!(
            "{}, {}",
            ms(percentile(values, 50)),
            ms(percentile(values, 99))
        )
    };
    let (p50, p99) = (percentile(&farthest, 50), percentile(&farthest, 99));
    let rows = vec![
        (
            format!("`block` on host 1 returns → first drop at the farthest host, p50 of {n}"),
            ms(p50),
        ),
        ("the same, p99".to_owned(), ms(p99)),
        ("the same, max".to_owned(), ms(farthest[n - 1])),
        (
            "`block` on host 1 starts → first drop at the farthest host, p50 and p99".to_owned(),
            both(&from_start),
        ),
        (
            "`block` on host 1 returns → first drop at the nearer of hosts 2 and 3, p50 and p99 \
             (negative: the drop came first)"
                .to_owned(),
            both(&nearest),
        ),
        (
            "`spacefilter block` on host 1 run to exit (written to etcd, applied on host 1), \
             p50 and p99"
                .to_owned(),
            both(&command),
        ),
    ];
    (rows, p50, p99)
}

/// The rows on the joins, and the slowest join in ms.
fn join_rows(run: &FleetRun) -> (Vec<(String, String)>, f64) {
    let joins = run.joins.len();
    let join_ms: Vec<f64> = run
        .joins
        .iter()
        .map(|j| j.join.as_secs_f64() * 1e3)
        .collect();
    let start_ms: Vec<f64> = run
        .joins
        .iter()
        .map(|j| j.start.as_secs_f64() * 1e3)
        .collect();
    let slowest = join_ms.iter().copied().fold(0.0, f64::max);
    let logged: Vec<f64> = run
        .joins
        .iter()
        .filter_map(|j| j.logged)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let rows = vec![
        (
            format!(
                "a host joining a fleet of {}: from its daemon answering on its socket to \
                 holding every rule (median [range] of {joins})",
                run.join_rules
            ),
            spread(join_ms),
        ),
        (
            "the same join by the daemon's own count (its log: from its first request to etcd \
             to the whole fleet read and applied)"
                .to_owned(),
            spread(logged),
        ),
        (
            "the joining daemon's start, before it answers (load, attach, socket)".to_owned(),
            spread(start_ms),
        ),
    ];
    (rows, slowest)
}

/// The fleet section of the report.
#[must_use]
pub fn fleet_report(run: &FleetRun, machine: &str, date: &str) -> String {
    let mut out = String::new();
    if run.blocks.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n## Fleet propagation (three hosts and a real etcd cluster)\n\n\
         Written by the benchmark's fleet part (`bench --only fleet`; `cargo xtask bench` \
         runs every part) on {date}, on {machine} ({}). A fleet \
         lab: a three-member etcd 3.4 cluster (Debian's `etcd-server`) on a host of its own, \
         and three hosts each running a daemon with `--etcd` on all three members and \
         `--fleet {FLEET}`, attached to its own interface; all on one bridge. The attacker \
         streams {STREAM_RATE} datagrams a second to each of hosts 2 and 3. `spacefilter \
         block` (the attacker's address) is typed on host 1 (run in its namespace against its \
         socket: it writes the rule to etcd and returns once host 1 has applied it from its \
         watch), and one loop polls the command and the drop counters of hosts 2 and 3, read \
         from the kernel (each program's own counter, not through its daemon), about every \
         0.3 ms: the first dropped packet at each host, to within the stream's 0.25 ms \
         between datagrams. The farthest host is the later of the two to drop. Then \
         `unblock`, and the streams flow again; {} times. The join: {} rules are written to \
         etcd, then a daemon with an empty state starts on host 3 and is asked every {} ms \
         how many rules it holds.\n",
        run.when,
        run.blocks.len(),
        run.join_rules,
        JOIN_POLL.as_millis()
    );
    let (mut rows, p50, p99) = block_rows(&run.blocks);
    let (more, slowest) = join_rows(run);
    rows.extend(more);
    let _ = writeln!(out, "| what | measured |");
    let _ = writeln!(out, "|---|---:|");
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let join = if run.join_rules < 100_000 {
        format!("not measured (this run joined {} rules)", run.join_rules)
    } else {
        format!(
            "{:.2} s at the slowest of {}, {}",
            slowest / 1e3,
            run.joins.len(),
            verdict(slowest < JOIN_TARGET.as_secs_f64() * 1e3)
        )
    };
    let _ = writeln!(
        out,
        "\nTargets (issue #14): at the farthest host, p50 under {} ms and p99 under {} s: \
         {p50:.1} ms and {p99:.1} ms, {}; a join of 100000 rules in under {} s: {join}.",
        P50_TARGET.as_millis(),
        P99_TARGET.as_secs(),
        verdict(p50 < P50_TARGET.as_secs_f64() * 1e3 && p99 < P99_TARGET.as_secs_f64() * 1e3),
        JOIN_TARGET.as_secs(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let rank = |values: &[f64], n| percentile(values, n).to_string();
        assert_eq!(rank(&values, 50), "50");
        assert_eq!(rank(&values, 99), "99");
        assert_eq!(rank(&values[..3], 99), "3");
        assert_eq!(rank(&values[..1], 50), "1");
    }

    #[test]
    fn reads_debug_durations() {
        for d in [
            Duration::from_millis(2500),
            Duration::from_micros(812_300),
            Duration::from_nanos(4_500),
        ] {
            let read = debug_duration(&format!("{d:?}")).expect("a duration");
            assert!(read.abs_diff(d) < Duration::from_micros(1), "{d:?}");
        }
        assert_eq!(debug_duration("soon"), None);
    }
}
