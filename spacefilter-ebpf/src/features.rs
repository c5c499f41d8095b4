//! The kernel features the loader found (see
//! [`spacefilter_common::features`]).

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use spacefilter_common::features;
pub(crate) use spacefilter_common::features::{COARSE_CLOCK, FRAME_HEADS, TCP_COOKIES};

/// Set by the loader before the program is loaded. A read-only global: the
/// verifier reads its value from the frozen map (kernel 5.2) and skips the
/// paths of the features that are off, with the helpers they call.
#[unsafe(no_mangle)]
static FEATURES: u32 = features::ALL;

/// The length of the kernel's tick (`1 s / HZ`) in nanoseconds, set by the
/// loader (see [`spacefilter_common::TICK_NS_GLOBAL`]); 0 where it could
/// not learn it. Read-only, like [`FEATURES`]: the verifier skips the
/// path of [`tick_now`] not taken.
#[unsafe(no_mangle)]
static TICK_NS: u64 = 0;

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

/// A clock of a tick's precision, in nanoseconds, read without a helper
/// call: `jiffies` (`bpf_jiffies64`, kernel 5.5, which the verifier turns
/// into a load of the kernel's variable on 64-bit JITs) times the tick's
/// length. Its epoch is not the monotonic clock's: its readings are
/// compared only with each other (the shield's listeners, the peers the
/// host proved real, see [`crate::verified::seen_lately`]). Where the
/// loader could not learn the tick's length, the coarse clock, a helper
/// call: under a SYN flood, a few percent of the receive CPU.
#[inline(always)]
pub(crate) fn tick_now() -> u64 {
    // SAFETY: a plain read of a static; volatile, as in [`on`].
    let tick_ns = unsafe { core::ptr::read_volatile(&raw const TICK_NS) };
    if tick_ns == 0 {
        return coarse_now();
    }
    // SAFETY: bpf_jiffies64 has no preconditions.
    unsafe { bpf_jiffies64() }.wrapping_mul(tick_ns)
}
