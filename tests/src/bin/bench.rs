//! `cargo xtask bench`: measures spacefilter's per-packet cost against the
//! bare floors and xdp-filter, prints the table and rewrites BENCHMARKS.md.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use spacefilter_tests::{
    bench::{
        Floors, KINDS, Parking, Rng, Row, Table, XdpFilter, control_plane, flood_throughput,
        guard_costs, guard_report, load_filter, machine, measure,
        observe::{observe_costs, observe_report},
        report, write_report,
    },
    require_root,
};

/// Sizes at which xdp-filter is compared: it holds exact addresses in maps
/// of a fixed size, so it cannot take the larger tables.
const XDP_FILTER_MAX: usize = 1_000;
/// The legitimate flow during the floods, datagrams a second.
const FLOOD_LEGIT_RATE: u64 = 10_000;

fn main() -> anyhow::Result<()> {
    require_root();
    let mut out = PathBuf::from("BENCHMARKS.md");
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--quick" => quick = true,
            other => anyhow::bail!("unknown argument {other:?}; expected --out PATH or --quick"),
        }
    }
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
    let import_size = if quick { 10_000 } else { 1_000_000 };
    eprintln!("bench: control plane: importing {import_size} prefixes through the daemon");
    let control = control_plane(import_size, &mut rng)?;
    for (what, value) in &control {
        eprintln!("bench: {what}: {value}");
    }
    let flood_seconds = if quick { 2 } else { 5 };
    eprintln!(
        "bench: flood throughput: {flood_seconds} s floods into the veth harness, one filter at \
         a time"
    );
    let flood = flood_throughput(Duration::from_secs(flood_seconds), FLOOD_LEGIT_RATE)?;
    eprintln!("bench: the flood guards, stage by stage");
    let guards = guard_costs(&floors, &mut rng, (rounds, repeat))?;
    eprintln!("bench: the cost of drop sampling and the debug log");
    let watching = observe_costs(&floors, &mut rng, (rounds, repeat))?;
    let date = String::from_utf8(
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()?
            .stdout,
    )?;
    let mut text = report(&rows, &control, &flood, &machine(), date.trim(), &notes);
    text.push_str(&guard_report(&guards));
    text.push_str(&observe_report(&watching));
    print!("{text}");
    write_report(&out, &text)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
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
        let floor = measure(
            &mut floors.runner(expected)?,
            &frames,
            repeat,
            rounds,
            expected,
        )?;
        let spacefilter = measure(
            &mut |frame, repeat| Ok(filter.test_run(frame, repeat)?),
            &frames,
            repeat,
            rounds,
            expected,
        )?;
        let xdp_filter = match &xdp_filter {
            Some(xf) => Some(measure(
                &mut xf.runner(),
                &frames,
                repeat,
                rounds,
                expected,
            )?),
            None => None,
        };
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
            blocked: kind.blocked,
        });
    }
    Ok(())
}
