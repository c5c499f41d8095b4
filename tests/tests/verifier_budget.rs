//! The verifier is part of the contract: the XDP program must load with
//! room to spare under the kernel's limit of a million instructions
//! processed, so that a change that brings it near the wall fails here,
//! with the figure, rather than at a user's load on another kernel.

use spacefilter::{Filter, LoadOptions};
use spacefilter_tests::fixture;

/// The kernel refuses a program whose verification processes more.
const KERNEL_LIMIT: u32 = 1_000_000;
/// What the suite allows: headroom for kernels whose verifier explores more
/// states than this one's.
const BUDGET: u32 = 850_000;

#[test]
fn the_program_verifies_well_within_the_kernel_s_limit() {
    spacefilter_tests::require_root();
    let mut filter = Filter::load(LoadOptions {
        capacity: 1024,
        ..LoadOptions::default()
    })
    .unwrap_or_else(|err| {
        // The whole chain: the innermost error carries the verifier's log.
        let mut message = format!("loading spacefilter: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str("\ncaused by: ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        panic!("{message}")
    });
    let info = fixture::program_info(&mut filter);
    let processed = info
        .verified_instruction_count()
        .expect("the kernel reports the instructions it verified (5.16+)");
    eprintln!("the verifier processed {processed} instructions (limit {KERNEL_LIMIT})");
    assert!(
        processed <= BUDGET,
        "the verifier processed {processed} instructions, over the budget of {BUDGET} \
         (the kernel's limit is {KERNEL_LIMIT}): simplify the paths it walks"
    );
}
