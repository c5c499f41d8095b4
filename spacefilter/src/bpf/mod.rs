//! The loaded program and typed wrappers over its maps. Domain types
//! ([`Prefix`], [`List`], [`Reason`](spacefilter_common::Reason)) become
//! kernel keys here and nowhere else.
//!
//! - [`program`]: load, or adopt the running program with its maps,
//!   attach, detach, test runs ([`Filter`]); the egress program that
//!   verifies the host's peers rides along with each attachment.
//! - [`lists`]: the allow and block lists in the lookup tables
//!   ([`tables`]), with a per-CPU hit counter per entry.
//! - [`counters`]: the per-CPU verdict counters.
//! - [`pins`]: where the XDP links are pinned, so the filter outlives the
//!   daemon.
//! - [`features`]: the kernel features the program may use, probed at load.
//! - [`limiter`]: the flood guards' settings, buckets and auto-blocks.
//! - [`rules`]: the rules on headers.
//! - [`sampler`]: interface slots, drop sampling, the debug-log switch.
//! - [`verifier`]: verified sources and the egress program's settings.

mod batch;
mod mapped;
mod tables;

pub mod counters;
pub mod features;
pub mod limiter;
pub mod lists;
pub mod pins;
pub mod program;
pub mod rules;
pub mod sampler;
pub mod verifier;

use aya::{Ebpf, maps::MapError};

pub use self::{
    counters::{CounterReader, Counters, Stats},
    features::{Feature, FeatureOff},
    limiter::{Limiter, Shielded, limiter_key_of, limiter_prefix},
    lists::{Entry, HitSums, Lists},
    pins::{DEFAULT_PIN_DIR, PinDir, egress_pin},
    program::{
        AttachMode, Filter, FilterError, KernelLog, LoadOptions, Staged, TOOLS, pinned_program,
        remove_left_egress,
    },
    rules::HeaderRules,
    sampler::{Observer, Sample, Sampling},
    verifier::Verifier,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("map {name} is missing from the program")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the lists are full ({capacity} entries); raise the capacity or remove entries")]
    Full { capacity: u32 },
    #[error("updating map {name} failed")]
    Update {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading map {name} failed")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot count the CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("{0} header rules given; the program holds {max}", max = spacefilter_common::MAX_HEADER_RULES)]
    TooManyRules(usize),
    #[error("the pinned program's {name} cannot be taken over: {why}")]
    Unadoptable { name: &'static str, why: String },
    #[error("map {name} is not an array")]
    NotArray { name: &'static str },
    #[error("mapping map {name} into memory failed")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a map error says the key was not there (aya reports a delete
/// of a missing key as the syscall's `ENOENT`, a lookup as `KeyNotFound`).
pub(crate) fn absent(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(call) => call.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Where a filter's maps come from: a program being loaded, or the maps
/// of a running program opened by their ids (see [`Filter::adopt`]).
pub(crate) trait MapSource {
    /// The map `name`, taken out (each is taken once).
    fn take_map(&mut self, name: &str) -> Option<aya::maps::Map>;
}

impl MapSource for Ebpf {
    fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        Ebpf::take_map(self, name)
    }
}

impl MapSource for std::collections::BTreeMap<String, aya::maps::Map> {
    fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.remove(name)
    }
}

pub(crate) fn take<T>(ebpf: &mut dyn MapSource, name: &'static str) -> Result<T, ListError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ListError::MissingMap { name })?;
    T::try_from(map).map_err(|source| ListError::MapType { name, source })
}
