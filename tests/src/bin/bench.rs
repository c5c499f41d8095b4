//! `cargo xtask bench`: measures spacefilter's per-packet cost against the
//! bare floors and xdp-filter, prints the table and rewrites BENCHMARKS.md.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use spacefilter_common::Limits;
use spacefilter_tests::{
    bench::{
        ControlOptions, FleetOptions, FleetRun, Floors, KINDS, Parking, Rng, Row, Runner, Table,
        XdpFilter,
        admission::{
            Admitted, admission, admission_report, cost_medians, cost_rounds, shield_costs,
        },
        control_plane, fleet_report, fleet_run, flood_throughput, guard_costs, guard_report,
        load_filter, machine, measure_each,
        observe::{observe_costs, observe_report},
        report, write_report,
    },
    require_root,
};

/// Sizes at which xdp-filter is compared: it holds exact addresses in maps
/// of a fixed size, so it cannot take the larger tables.
const XDP_FILTER_MAX: usize = 1_000;
/// Rounds of rows the part `cost` runs: enough for a median that moves
/// less than the changes worked on.
const COST_PART_ROUNDS: usize = 8;
/// The legitimate flow during the floods, datagrams a second.
const FLOOD_LEGIT_RATE: u64 = 10_000;

/// The parts of the benchmark, in the order they run.
const PARTS: [&str; 9] = [
    "packets",
    "control",
    "floods",
    "admission",
    "shield",
    "cost",
    "guards",
    "observe",
    "fleet",
];

/// The command line.
struct Args {
    out: PathBuf,
    quick: bool,
    /// The parts to run; all when `None`.
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut parsed = Args {
            out: PathBuf::from("BENCHMARKS.md"),
            quick: false,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--out" => parsed.out = args.next().context("--out needs a path")?.into(),
                "--quick" => parsed.quick = true,
                "--only" => {
                    let parts: Vec<String> = args
                        .next()
                        .context("--only needs a list of parts")?
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    if let Some(bad) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                        anyhow::bail!("unknown part {bad:?}; the parts are {}", PARTS.join(", "));
                    }
                    parsed.only = Some(parts);
                }
                other => anyhow::bail!(
                    "unknown argument {other:?}; expected --out PATH, --quick or --only \
                     PART,... (of {})",
                    PARTS.join(", ")
                ),
            }
        }
        Ok(parsed)
    }
}

fn main() -> anyhow::Result<()> {
    require_root();
    let Args { out, quick, only } = Args::parse()?;
    let some_parts = only.is_some();
    // A report of some parts only is for working on them: it says so.
    let runs = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    let (sizes, rounds, repeat): (&[usize], usize, u32) = if quick {
        (&[0, 1_000], 3, 200_000)
    } else {
        (&[0, 1_000, 100_000, 1_000_000], 5, 1_000_000)
    };
    Parking::sweep();
    let floors = Floors::load()?;
    let mut rng = Rng::new(0x5eed_f00d);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if let Some(parts) = &only {
        notes.push(format!("a partial run: {} only", parts.join(", ")));
    }
    if runs("packets") {
        for &size in sizes {
            measure_size(
                size,
                &floors,
                &mut rng,
                (rounds, repeat),
                &mut rows,
                &mut notes,
            )?;
        }
    }
    let control = if runs("control") {
        let control_options = ControlOptions {
            import: if quick { 10_000 } else { 1_000_000 },
            repeats: 20,
            interval: Duration::from_secs(if quick { 2 } else { 5 }),
        };
        let control = control_plane(control_options, &mut rng)?;
        for (what, value) in &control.rows {
            eprintln!("bench: {what}: {value}");
        }
        Some(control)
    } else {
        None
    };
    let flood = if runs("floods") {
        let flood_seconds = if quick { 2 } else { 5 };
        eprintln!(
            "bench: flood throughput: {flood_seconds} s floods into the veth harness, one filter \
             at a time"
        );
        flood_throughput(Duration::from_secs(flood_seconds), FLOOD_LEGIT_RATE)?
    } else {
        Vec::new()
    };
    let admitted = admission_part(runs("admission"), runs("shield"), quick)?;
    // Only when asked for: a full run's admission part has pairs of its own.
    if only.as_ref().is_some_and(|o| o.iter().any(|p| p == "cost")) {
        cost_part(quick)?;
    }
    let guards = if runs("guards") {
        eprintln!("bench: the flood guards, stage by stage");
        guard_costs(&floors, &mut rng, (rounds, repeat))?
    } else {
        Vec::new()
    };
    let watching = if runs("observe") {
        eprintln!("bench: the cost of drop sampling and the debug log");
        Some(observe_costs(&floors, &mut rng, (rounds, repeat))?)
    } else {
        None
    };
    let fleet = runs("fleet").then(|| fleet_part(quick)).transpose()?;
    if only
        .as_ref()
        .is_some_and(|parts| parts.iter().all(|p| p == "shield" || p == "cost"))
    {
        // The shield's program costs, or its receive cost against
        // nftables', alone, printed above: nothing to write.
        return Ok(());
    }
    let date = today()?;
    let mut text = report(&rows, control.as_ref(), &flood, &machine(), &date, &notes);
    text.push_str(&admission_report(&admitted.0, &admitted.1));
    text.push_str(&guard_report(&guards));
    if let Some(watching) = &watching {
        text.push_str(&observe_report(watching));
    }
    if let Some(fleet) = &fleet {
        text.push_str(&fleet_report(fleet, &machine(), &date));
    }
    print!("{text}");
    write_report(&out, &text, some_parts)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

/// The admission part (the floods and the shield's costs), or the shield's
/// costs alone; nothing if neither runs.
fn admission_part(
    admission_runs: bool,
    shield_runs: bool,
    quick: bool,
) -> anyhow::Result<(Admitted, Vec<(&'static str, f64)>)> {
    if !admission_runs && !shield_runs {
        return Ok((Admitted::default(), Vec::new()));
    }
    eprintln!("bench: the shield's program through BPF_PROG_TEST_RUN");
    let costs = shield_costs(if quick { 500 } else { 5000 })?;
    for (name, ns) in &costs {
        eprintln!("bench: shield, {name}: {ns:.0} ns");
    }
    if !admission_runs {
        // The shield's program alone, for working on it: printed, and
        // reported only with the admission rows.
        return Ok((Admitted::default(), costs));
    }
    let seconds = if quick { 2 } else { 5 };
    eprintln!("bench: admission under a spoofed SYN flood, {seconds} s a defence");
    Ok((admission(Duration::from_secs(seconds))?, costs))
}

/// The part `cost`: rounds of the shield's, the cookie floor's and
/// nftables' rows against the SYN flood, with their median ratios;
/// printed.
fn cost_part(quick: bool) -> anyhow::Result<()> {
    let rounds = if quick { 3 } else { COST_PART_ROUNDS };
    eprintln!(
        "bench: the shield's receive cost against the cookie floor's and nftables', {rounds} \
         rounds of rows against the SYN flood"
    );
    let rounds = cost_rounds(Duration::from_secs(5), rounds)?;
    if let Some(m) = cost_medians(&rounds) {
        eprintln!(
            "bench: the medians of the {} rounds: the shield {:.2} × nftables', the cookie \
             floor {:.2} ×; the shield {:.0} ns a frame above the floor",
            rounds.len(),
            m.ratio,
            m.floor_ratio,
            m.above_floor
        );
    }
    Ok(())
}

/// The day, as `date -u +%Y-%m-%d` says it.
fn today() -> anyhow::Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The fleet on three hosts: blocks typed on one, timed to the others,
/// and a host joining a large fleet.
fn fleet_part(quick: bool) -> anyhow::Result<FleetRun> {
    eprintln!("bench: the fleet, on three hosts and a real etcd cluster");
    fleet_run(FleetOptions {
        blocks: if quick { 20 } else { 100 },
        join_rules: if quick { 10_000 } else { 100_000 },
        joins: 3,
    })
}

/// Measures every frame kind with a table of `size` block entries.
fn measure_size(
    size: usize,
    floors: &Floors,
    rng: &mut Rng,
    (rounds, repeat): (usize, u32),
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let table = Table::generate(size, rng);
    let (mut filter, _parking, took) = load_filter(&table)?;
    eprintln!(
        "bench: {size} block entries (+{} allow) written in {:.2} s",
        table.allow.len(),
        took.as_secs_f64()
    );
    if size > 0 {
        notes.push(format!(
            "writing {} block and {} allow entries straight into the maps took {:.2} s",
            table.block.len(),
            table.allow.len(),
            took.as_secs_f64()
        ));
    }
    let xdp_filter = if size <= XDP_FILTER_MAX {
        let mut sources: Vec<IpAddr> = table
            .blocked_v4
            .iter()
            .map(|&a| IpAddr::V4(a))
            .chain(table.blocked_v6.iter().map(|&a| IpAddr::V6(a)))
            .collect();
        sources.sort_unstable();
        sources.dedup();
        let started = Instant::now();
        let loaded = XdpFilter::load(&sources).context("loading xdp-filter")?;
        eprintln!(
            "bench: xdp-filter loaded with {} addresses in {:.1} s",
            sources.len(),
            started.elapsed().as_secs_f64()
        );
        Some(loaded)
    } else {
        None
    };
    for kind in KINDS {
        if kind.blocked && size == 0 {
            continue;
        }
        let frames = kind.frames(&table, rng);
        let expected = kind.expected();
        // The floor, spacefilter and xdp-filter in turn, round by round.
        filter.limiter().set(kind.limits())?;
        let mut floor_run = floors.runner(expected)?;
        let mut spacefilter_run = |frame: &[u8], repeat| Ok(filter.test_run(frame, repeat)?);
        let mut xdp_filter_run = xdp_filter
            .as_ref()
            .filter(|_| kind.xdp_filter_equivalent())
            .map(XdpFilter::runner);
        let mut runs: Vec<Runner<'_>> = vec![&mut floor_run, &mut spacefilter_run];
        if let Some(run) = xdp_filter_run.as_mut() {
            runs.push(run);
        }
        let measured = measure_each(&mut runs, &frames, repeat, rounds, expected);
        drop(runs);
        filter.limiter().set(Limits::default())?;
        let mut measured = measured?.into_iter();
        let floor = measured.next().expect("the floor");
        let spacefilter = measured.next().expect("spacefilter");
        let xdp_filter = measured.next();
        eprintln!(
            "bench: {:<32} {size:>8}: floor {:6.1} ns  spacefilter {:6.1} ns  xdp-filter {}",
            kind.name,
            floor.median,
            spacefilter.median,
            xdp_filter.map_or("-".to_owned(), |m| format!("{:.1} ns", m.median))
        );
        rows.push(Row {
            kind: kind.name,
            entries: size,
            floor,
            spacefilter,
            xdp_filter,
            floor_target: kind.floor_target(),
        });
    }
    Ok(())
}
