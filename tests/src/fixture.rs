//! The XDP program loaded for `BPF_PROG_TEST_RUN`, and frames run through
//! it with the counters they move.

use aya::programs::ProgramInfo;
use spacefilter::{Counters, Filter, LoadOptions, Reason, api::default_reflectors};
use spacefilter_common::{Limits, limit_flags};

use crate::require_root;

/// The default profile's service ports: below the ephemeral range and
/// above it.
pub const SERVICE: &[(u16, u16)] = &[(0, 32767), (61000, 65535)];

/// Loads the program with tables of 1024 entries; fails the test unless
/// it runs as root.
#[must_use]
pub fn load() -> Filter {
    require_root();
    Filter::load(LoadOptions {
        capacity: 1024,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter")
}

/// Loads the program as [`load`] does, with the default reflectors and
/// `service` as the host's service ports.
#[must_use]
pub fn load_reflecting(service: &[(u16, u16)]) -> Filter {
    let mut filter = load();
    filter
        .limiter()
        .set_reflect_ports(&default_reflectors(), service)
        .expect("reflection ports");
    filter
}

/// Loads the program as [`load_reflecting`] does, with the reflection
/// guard on and the other limits off.
#[must_use]
pub fn load_reflection_guard(service: &[(u16, u16)]) -> Filter {
    let mut filter = load_reflecting(service);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::REFLECT,
            ..Limits::default()
        })
        .expect("limits");
    filter
}

/// Runs `frame` `repeat` times; returns the last action and the change of
/// every counter.
pub fn run(filter: &mut Filter, frame: &[u8], repeat: u32) -> (u32, Counters) {
    let before = filter.counters().expect("counters");
    let (action, _) = filter.test_run(frame, repeat).expect("test run");
    (action, filter.counters().expect("counters").since(&before))
}

/// A frame's action and the one reason it was counted under.
pub fn verdict(filter: &mut Filter, frame: &[u8]) -> (u32, Reason) {
    let (action, delta) = run(filter, frame, 1);
    let reasons: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|&r| delta.get(r).packets > 0)
        .collect();
    assert_eq!(reasons.len(), 1, "one reason per frame: {reasons:?}");
    (action, reasons[0])
}

/// What the kernel reports of `filter`'s loaded program.
pub fn program_info(filter: &mut Filter) -> ProgramInfo {
    let id = filter.program_id().expect("a program id");
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("the program is loaded")
}
