//! The kernel features the loader found (see
//! [`spacefilter_common::features`]).

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
