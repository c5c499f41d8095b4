//! The verifier is part of the contract: the XDP program must load with
//! room to spare under the kernel's limit of a million instructions
//! processed, so that a change that brings it near the wall fails here,
//! with the figure, rather than at a user's load on another kernel.

use spacefilter::{Filter, LoadOptions};
use spacefilter_common::features;
use spacefilter_tests::fixture;

/// The kernel refuses a program whose verification processes more.
const KERNEL_LIMIT: u32 = 1_000_000;
/// What the suite allows on this kernel. Verifiers differ: before 6.4 one
/// that meets a BPF-to-BPF call while tracking precision marks every
/// scalar precise and prunes far less (a program at 583,000 here once
/// passed 1,000,000 on 6.1). With no such call left, 6.1 processes fewer
/// than 6.18 (375,505 against 423,478). `cargo xtask kernels` is the
/// proof on each kernel; this budget catches a change that grows the
/// program's paths by a third.
const BUDGET: u32 = 560_000;

/// Loads the program with the features in `without` off, and returns the
/// instructions the verifier processed.
fn verified_count(without: u32) -> u32 {
    let mut filter = Filter::load(LoadOptions {
        capacity: 1024,
        without,
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
    info.verified_instruction_count()
        .expect("the kernel reports the instructions it verified (5.16+)")
}

#[test]
fn the_program_verifies_well_within_the_kernel_s_limit() {
    spacefilter_tests::require_root();
    let processed = verified_count(0);
    eprintln!("the verifier processed {processed} instructions (limit {KERNEL_LIMIT})");
    assert!(
        processed <= BUDGET,
        "the verifier processed {processed} instructions, over the budget of {BUDGET} \
         (the kernel's limit is {KERNEL_LIMIT}): simplify the paths it walks"
    );
}

/// A feature switched off is a path the verifier never walks: the helpers
/// a kernel lacks are never reached, so the program loads without them.
#[test]
fn features_switched_off_are_not_verified() {
    spacefilter_tests::require_root();
    let all = verified_count(0);
    for (name, bit) in [
        ("tcp-cookies", features::TCP_COOKIES),
        ("frame-heads", features::FRAME_HEADS),
    ] {
        let without = verified_count(bit);
        eprintln!("without {name}: {without} instructions (all features: {all})");
        assert!(
            without < all,
            "without {name} the verifier walked {without} instructions, with it {all}"
        );
    }
}

/// The kernel probes at load find everything the program cannot do without
/// on this kernel (a probe that cannot tell says nothing, so this also
/// shows the probes answer as root).
#[test]
fn this_kernel_meets_the_requirements() {
    spacefilter_tests::require_root();
    assert_eq!(spacefilter::bpf::features::require(), Ok(()));
}
