//! The kernel features the loader found (see
//! [`spacefilter_common::features`]).

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use spacefilter_common::features;
pub(crate) use spacefilter_common::features::{COARSE_CLOCK, FRAME_HEADS, TCP_COOKIES};

/// Set by the loader before the program is loaded. A read-only global: the
/// verifier reads its value from the frozen map (kernel 5.2) and skips the
/// paths of the features that are off, with the helpers they call.
#[unsafe(no_mangle)]
static FEATURES: u32 = features::ALL;

/// Whether `feature` (a [`features`] bit) is on.
#[inline(always)]
pub(crate) fn on(feature: u32) -> bool {
    // SAFETY: a plain read of a static; volatile, so that the compiler
    // reads the value the loader wrote rather than the one above.
    unsafe { core::ptr::read_volatile(&raw const FEATURES) & feature != 0 }
}

/// The coarse clock (`bpf_ktime_get_coarse_ns`, kernel 5.11: the monotonic
/// clock as of the last tick, never ahead of the precise one, and read
/// without the time stamp counter, which costs tens of nanoseconds in a
/// virtual machine) where the kernel has it, else the precise one
/// (`bpf_ktime_get_ns`).
#[inline(always)]
pub(crate) fn coarse_now() -> u64 {
    if on(COARSE_CLOCK) {
        // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}
