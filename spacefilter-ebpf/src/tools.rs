//! XDP programs for measuring and testing spacefilter, never attached by
//! the daemon:
//! - `floor_drop`, `floor_pass`: the cheapest possible XDP programs, the
//!   floor against which the filter's per-packet cost is compared;
//! - `answer_sink`: drops what is sent to the lab's forged sources;
//! - `generator`: redirects every frame to the interface in `GEN_TARGET`.
//!   Run through `BPF_PROG_TEST_RUN` in live-frame mode (kernel 5.18), it
//!   turns one frame into a flood leaving through that interface. With
//!   `GEN_SPREAD` set, it gives each IPv4 frame the next of a range of
//!   source addresses: a spoofed-source flood from one frame.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "a call boundary would hide packet bounds from the verifier"
)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// The ifindex the generator redirects to.
#[map]
static GEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// `[first, count]`: with `count` not 0, the generator's n-th IPv4 frame
/// leaves from source address `first + n % count` (host byte order).
#[map]
static GEN_SPREAD: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// Frames the generator has spread, per CPU: `n` above.
#[map]
static GEN_SPREAD_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// With its first word not 0, the frame's first bytes as they were sent
/// (`[1, bytes...]`), written back into every frame before it leaves: in
/// live-frame mode a frame's page comes back for later frames with
/// whatever the receiver left in it, and a receiver that answers with
/// `XDP_TX` rewrites the frame.
#[map]
static GEN_HEAD: Array<[u8; 68]> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Offsets of the checksums in the TCP and UDP headers.
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

#[xdp]
fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops IPv4 frames to 198.19.0.0/16, the lab's forged sources, and
/// passes the rest: on the link's far end, it stands for the wire that
/// carries a server's answers to forged sources away, to vanish.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature #[xdp] requires"
)]
fn answer_sink(ctx: XdpContext) -> u32 {
    let (Some(ethertype), Some(dst)) = (at(&ctx, 12, 2), at(&ctx, ETH_HLEN + 16, 2)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: both pointers come from `at`, which checked their bytes.
    let forged = unsafe { get16(ethertype) == 0x0800 && *dst == 198 && *dst.add(1) == 19 };
    if forged {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// `bytes` bytes at `offset` of the frame, or `None` if it is shorter.
#[inline(always)]
fn at(ctx: &XdpContext, offset: usize, bytes: usize) -> Option<*mut u8> {
    if ctx.data() + offset + bytes > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut u8)
}

/// Reads the big-endian `u16` at `p`.
///
/// # Safety
/// `p` and `p + 1` must lie inside the frame.
#[inline(always)]
unsafe fn get16(p: *mut u8) -> u16 {
    // SAFETY: the caller's promise.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

/// Writes `v` big-endian at `p`.
///
/// # Safety
/// `p` and `p + 1` must lie inside the frame.
#[inline(always)]
unsafe fn put16(p: *mut u8, v: u16) {
    let [hi, lo] = v.to_be_bytes();
    // SAFETY: the caller's promise.
    unsafe {
        *p = hi;
        *p.add(1) = lo;
    }
}

/// The Internet checksum `sum` once a 32-bit field it covers changes from
/// `old` to `new` (RFC 1624: HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn checksum_update(sum: u16, old: u32, new: u32) -> u16 {
    #[expect(clippy::cast_possible_truncation, reason = "16-bit halves")]
    let halves = |v: u32| [(v >> 16) as u16, v as u16];
    let mut acc = u32::from(!sum);
    for half in halves(old) {
        acc += u32::from(!half);
    }
    for half in halves(new) {
        acc += u32::from(half);
    }
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = acc as u16;
    !folded
}

/// Gives an untagged IPv4 frame (header without options) the next source
/// address of `GEN_SPREAD`, and mends the IPv4 and the TCP or UDP
/// checksum, so that the receiver's stack takes the frame as sent. Frames
/// of any other shape leave as they are. The frame's page may come back
/// for a later frame with this address in it, so the checksums are
/// updated from the frame's current address, whatever it is.
#[inline(always)]
fn spread(ctx: &XdpContext) -> Option<()> {
    let &[first, count] = GEN_SPREAD.get(0)?;
    if count == 0 {
        return None;
    }
    let next = GEN_SPREAD_NEXT.get_ptr_mut(0)?;
    let ip = at(ctx, ETH_HLEN, IPV4_HLEN)?;
    let ethertype = at(ctx, 12, 2)?;
    // SAFETY: every pointer comes from `at`, which checked that its bytes
    // lie inside the frame; `next` is this CPU's value of a map, valid
    // while the program runs.
    unsafe {
        if get16(ethertype) != 0x0800 || *ip != 0x45 {
            return None;
        }
        let n = *next;
        *next = n.wrapping_add(1);
        let new = first.wrapping_add(n % count);
        let src = ip.add(12);
        let old = u32::from_be_bytes([*src, *src.add(1), *src.add(2), *src.add(3)]);
        for (i, byte) in new.to_be_bytes().into_iter().enumerate() {
            *src.add(i) = byte;
        }
        put16(ip.add(10), checksum_update(get16(ip.add(10)), old, new));
        let l4 = ETH_HLEN + IPV4_HLEN;
        match *ip.add(9) {
            IPPROTO_TCP => {
                let sum = at(ctx, l4 + TCP_CSUM, 2)?;
                put16(sum, checksum_update(get16(sum), old, new));
            }
            IPPROTO_UDP => {
                let sum = at(ctx, l4 + UDP_CSUM, 2)?;
                let before = get16(sum);
                // 0: sent without a checksum.
                if before != 0 {
                    let after = checksum_update(before, old, new);
                    put16(sum, if after == 0 { 0xffff } else { after });
                }
            }
            _ => {}
        }
    }
    Some(())
}

/// Writes [`GEN_HEAD`] back over the frame's first 64 bytes (54, the
/// headers of a TCP segment, for a shorter frame).
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let head = GEN_HEAD.get(0)?;
    if head[0] == 0 {
        return None;
    }
    if let Some(at) = at(ctx, 0, 64) {
        // SAFETY: the 64 bytes lie in the frame (`at` checked).
        unsafe { core::ptr::copy_nonoverlapping(head.as_ptr().add(4), at, 64) };
    } else if let Some(at) = at(ctx, 0, 54) {
        // SAFETY: as above, 54 bytes.
        unsafe { core::ptr::copy_nonoverlapping(head.as_ptr().add(4), at, 54) };
    }
    Some(())
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature #[xdp] requires"
)]
fn generator(ctx: XdpContext) -> u32 {
    restore(&ctx);
    spread(&ctx);
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
