//! The spacefilter XDP program.
//!
//! Every frame goes through [`parse`](parse) (Ethernet, up to two VLAN tags,
//! IPv4/IPv6 with options and extension headers, TCP/UDP/ICMP) and then the
//! verdict pipeline in [`verdict`]: allowlist → blocklist → header rules →
//! shield → flood guards → pass. Beside it, a TC egress program
//! ([`egress`]) records the peers the host sends to as verified sources. Every exit goes through [`verdict::finish`], which
//! records the per-CPU counters and feeds [`observe`] (drop sampling, debug
//! log).
//!
//! Kernel requirements: XDP with native mode on the driver (veth since 4.19),
//! memory-mappable arrays (`BPF_F_MMAPABLE`, 5.5), per-CPU arrays (4.6),
//! bounded loops (5.3), ring buffers (5.8), read-only global data the
//! verifier reads (frozen maps, 5.2), global functions with a pointer
//! argument (5.12, [`observe`]). The helpers of the features in
//! [`features`] (the shield's `bpf_xdp_load_bytes`, 5.18, and
//! `bpf_tcp_raw_gen_syncookie_ipv4/6`, 6.0) are used only where the loader
//! found them. Debian 12's 6.1 and later load it (`cargo xtask kernels`).
#![no_std]
#![no_main]
// No calls to memset or memcpy: LLVM would otherwise merge a struct's zero
// fields into a memset call (a BPF-to-BPF call to compiler_builtins), and
// before 6.4 the verifier's precision tracking cannot look back across a
// call, so it marks every scalar precise and prunes far less.
#![no_builtins]
#![expect(
    clippy::inline_always,
    reason = "BPF-to-BPF calls cost more than inlining, and a call boundary would hide packet bounds from the verifier"
)]

mod egress;
mod features;
mod fragments;
mod limit;
mod lookup;
mod maps;
mod observe;
mod parse;
mod rules;
mod shield;
mod verdict;
mod verified;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Entry point: parse, decide, count. Every frame, however malformed, gets
/// a verdict of its own (pass or drop); the program never aborts. Inlined
/// into the section's entry function: a call would cost every frame a
/// return through the kernel's return thunk.
#[xdp]
#[inline(always)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature #[xdp] requires"
)]
pub(crate) fn spacefilter(ctx: XdpContext) -> u32 {
    verdict::decide(&ctx)
}

/// Return routability: records the peers the host sends to as verified
/// sources (see [`egress`]). Attached at TC egress beside the XDP program.
#[classifier]
#[inline(always)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature #[classifier] requires"
)]
pub(crate) fn spacefilter_egress(ctx: TcContext) -> i32 {
    egress::record(&ctx)
}

#[cfg(not(test))]
unsafe extern "C" {
    /// Defined nowhere, on purpose: see [`panic`].
    fn spacefilter_panic_is_reachable() -> !;
}

/// A panic the optimiser cannot prove unreachable (an index it cannot
/// bound, say) leaves a call to this handler in the object, and the handler
/// calls a function that no object defines. bpf-linker keeps the undefined
/// symbol; the userspace crate's `build.rs` refuses an object that names
/// it, and the kernel would refuse such a program too (its handler ends in
/// a call that aya cannot relocate). Ending the handler in
/// `unreachable_unchecked` instead would let LLVM delete the reachable
/// panic's whole path as undefined behaviour, unseen by the verifier.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: never runs: an object that still calls it does not link.
    unsafe { spacefilter_panic_is_reachable() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
