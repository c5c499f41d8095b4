//! XDP programs for measuring and testing spacefilter, never attached by
//! the daemon:
//! - `floor_drop`, `floor_pass`: the cheapest possible XDP programs, the
//!   floor against which the filter's per-packet cost is compared;
//! - `generator`: redirects every frame to the interface in `GEN_TARGET`.
//!   Run through `BPF_PROG_TEST_RUN` in live-frame mode (kernel 5.18), it
//!   turns one frame into a flood leaving through that interface.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// The ifindex the generator redirects to.
#[map]
static GEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
fn generator(_ctx: XdpContext) -> u32 {
    match GEN_TARGET.get(0) {
        Some(&ifindex) if ifindex != 0 => {
            // SAFETY: bpf_redirect (kernel 4.4 for XDP) only reads its
            // arguments.
            let action = unsafe { bpf_redirect(ifindex, 0) };
            // XDP_REDIRECT, or XDP_ABORTED should the helper ever fail.
            u32::try_from(action).unwrap_or(xdp_action::XDP_ABORTED)
        }
        _ => xdp_action::XDP_ABORTED,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program in which a panic is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
