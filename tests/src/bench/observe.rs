//! The per-packet cost of watching an attack: drop sampling in each of its
//! outcomes, and the kernel debug log, on blocked IPv4 frames from many
//! sources.

use aya::maps::{MapData, RingBuf};
use spacefilter::bpf::{KernelLog, Sampling};

use super::{
    Floors, GuardRow, KINDS, Measure, Rng, Table, XDP_DROP as DROP, load_filter, measure_each,
};

/// Runs each frame this many times per call where every run leaves a
/// record behind: fewer than the ring buffers hold, so that draining them
/// between calls (outside the kernel's timing) keeps every record.
const RECORDS_PER_CALL: u32 = 400;

/// How the sampler and the log are set for one row.
struct Setting {
    name: &'static str,
    sampling: Sampling,
    debug_log: bool,
    /// Whether every run leaves a record to drain.
    records: bool,
}

fn settings() -> [Setting; 5] {
    let setting = |name, every, cap, debug_log, records| Setting {
        name,
        sampling: Sampling { every, cap },
        debug_log,
        records,
    };
    [
        setting("sampling off, debug log off", 0, 1, false, false),
        setting(
            "sampling 1 in 100, cap 1000/s (the defaults)",
            100,
            1_000,
            false,
            false,
        ),
        setting(
            "every drop sampled, over the cap (picked, not sent)",
            1,
            1,
            false,
            false,
        ),
        setting(
            "every drop sampled and sent (128 bytes copied)",
            1,
            u32::MAX,
            false,
            true,
        ),
        setting("debug log on, a line per frame", 0, 1, true, true),
    ]
}

fn drain(samples: &mut RingBuf<MapData>, log: Option<&mut KernelLog>) {
    while samples.next().is_some() {}
    if let Some(log) = log {
        log.flush();
    }
}

/// The rows of the observability cost table.
pub fn observe_costs(
    floors: &Floors,
    rng: &mut Rng,
    (rounds, repeat): (usize, u32),
) -> anyhow::Result<Vec<GuardRow>> {
    let table = Table::generate(1_000, rng);
    let (mut filter, _parking, _) = load_filter(&table)?;
    let kind = KINDS
        .iter()
        .find(|k| k.blocked && !k.v6 && k.name == "blocked IPv4 UDP")
        .expect("the blocked IPv4 kind");
    let frames = kind.frames(&table, rng);
    let mut samples = filter
        .take_samples()
        .ok_or_else(|| anyhow::anyhow!("the program has no sample ring buffer"))?;
    let mut log = filter.take_kernel_log();
    let record_repeat = RECORDS_PER_CALL * u32::try_from(frames.len())?;
    let mut rows = Vec::new();
    for Setting {
        name,
        sampling,
        debug_log,
        records,
    } in settings()
    {
        filter.observer().set_sampling(sampling)?;
        filter.observer().set_debug_log(debug_log)?;
        drain(&mut samples, log.as_mut());
        let repeat = if records { record_repeat } else { repeat };
        let [floor, cost]: [Measure; 2] = measure_each(
            &mut [&mut floors.runner(DROP)?, &mut |frame, repeat| {
                let run = filter.test_run(frame, repeat)?;
                drain(&mut samples, log.as_mut());
                Ok(run)
            }],
            &frames,
            repeat,
            rounds,
            DROP,
        )?
        .try_into()
        .expect("two measures");
        let counts = filter.observer().counts()?;
        eprintln!(
            "bench: observe: {name:<60} floor {:6.1} ns  spacefilter {:6.1} ns  (samples sent \
             {}, capped {}, lost {})",
            floor.median, cost.median, counts.sent, counts.capped, counts.lost
        );
        rows.push(GuardRow {
            stage: name,
            floor,
            cost,
        });
    }
    filter.observer().set_debug_log(false)?;
    Ok(rows)
}

/// The observability section of the report.
#[must_use]
pub fn observe_report(rows: &[GuardRow]) -> String {
    super::cost_table(
        "Cost of watching: drop sampling and the debug log",
        &format!(
            "Blocked IPv4 UDP from {} sources, 1000 list entries (`BPF_PROG_TEST_RUN`, median ns \
             per packet, min-max in brackets). Where every run leaves a record, the ring buffers \
             are drained between test runs, outside the kernel's timing.",
            super::SOURCES
        ),
        "setting",
        rows,
    )
}
