//! XDP programs for measuring and testing spacefilter, never attached by
//! the daemon:
//! - `floor_drop`, `floor_pass`: the cheapest possible XDP programs, the
//!   floor against which the filter's per-packet cost is compared;
//! - `answer_sink`: drops what is sent to the lab's forged sources;
//! - `cookie_floor`: the least an XDP program does to answer a SYN with
//!   the kernel's cookie, the floor against which the shield's cost of
//!   answering is compared;
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
    helpers::{bpf_redirect, bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use spacefilter_common::fold_checksum;

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

/// The least an XDP program does to answer a SYN with the kernel's SYN
/// cookie: an untagged IPv4 SYN without IP or TCP options (the flood's)
/// is turned around in place into a SYN-ACK carrying the cookie of
/// `bpf_tcp_raw_gen_syncookie_ipv4` (kernel 6.0) and an MSS option (the
/// shield's short answer), checksums and all, and sent back with
/// `XDP_TX`. No lists, no listener, no counters, no other shape: the floor
/// of answering a flood's SYNs at the XDP hook, on the same frames, against
/// which the shield's cost is read. Every other frame passes (a real
/// client's SYN, with options, goes on to the kernel).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature #[xdp] requires"
)]
fn cookie_floor(ctx: XdpContext) -> u32 {
    turn_syn(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The SYN-ACK's length after the Ethernet header: IPv4, then TCP with
/// the MSS option.
const FLOOR_ANSWER: u8 = 44;

/// `cookie_floor`'s answer, if the frame is a SYN of its shape.
///
/// The frame is resized to the SYN-ACK's length (4 bytes more than a SYN
/// without options, unless Ethernet padding made room), as the shield
/// does; the IP and TCP headers are written a 32-bit word at a time and
/// the MAC addresses swapped as 16-bit words, as the shield does: the
/// frame starts 2-aligned and its IP header 4-aligned, as the kernel lays
/// packets out.
#[inline(always)]
fn turn_syn(ctx: &XdpContext) -> Option<u32> {
    const TCP_SYN: u8 = 0x02;
    const SYN_ACK_RST_FIN: u8 = 0x17;
    const SYN_LEN: usize = ETH_HLEN + IPV4_HLEN + 20;
    let answer_len = ETH_HLEN + usize::from(FLOOR_ANSWER);
    let start = ctx.data();
    let len = ctx.data_end() - start;
    if start + SYN_LEN > ctx.data_end() {
        return None;
    }
    let bytes = start as *const u8;
    let ip = (start + ETH_HLEN) as *mut u32;
    let th = (start + ETH_HLEN + IPV4_HLEN) as *mut u32;
    // SAFETY: every byte read lies in the first 54 bytes of the frame,
    // checked just above; the helper reads the IP header and 20 bytes of
    // TCP header there.
    let (cookie, src, dst, ports, seq) = unsafe {
        let l3 = bytes.add(ETH_HLEN);
        let l4 = bytes.add(ETH_HLEN + IPV4_HLEN);
        if get16(bytes.add(12).cast_mut()) != 0x0800
            || *l3 != 0x45
            || *l3.add(9) != IPPROTO_TCP
            || get16(l3.add(6).cast_mut()) & 0x3fff != 0
            || *l4.add(12) != 0x50
            || *l4.add(13) & SYN_ACK_RST_FIN != TCP_SYN
        {
            return None;
        }
        let cookie = bpf_tcp_raw_gen_syncookie_ipv4(ip.cast(), th.cast(), 20);
        if cookie < 0 {
            return None;
        }
        (cookie, *ip.add(3), *ip.add(4), *th, *th.add(1))
    };
    if len < answer_len {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "4 bytes at most"
        )]
        let grow = (answer_len - len) as i32;
        // SAFETY: the context is the program's; the packet pointers are
        // taken anew below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, grow) } != 0 {
            return Some(xdp_action::XDP_DROP);
        }
    }
    let start = ctx.data();
    if start + answer_len > ctx.data_end() {
        return Some(xdp_action::XDP_DROP);
    }
    let ip = (start + ETH_HLEN) as *mut u32;
    let th = (start + ETH_HLEN + IPV4_HLEN) as *mut u32;
    let word = u32::from_ne_bytes;
    let mut head = [
        word([0x45, 0, 0, FLOOR_ANSWER]),
        word([0, 0, 0x40, 0]),
        word([64, IPPROTO_TCP, 0, 0]),
        dst,
        src,
    ];
    head[2] |= u32::from(!fold_checksum(head.iter().map(|w| u64::from(*w)).sum())) << 16;
    #[expect(
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation,
        reason = "the helper's halves"
    )]
    let (cookie, mss) = (cookie as u32, (cookie >> 32) as u16);
    let [mss_hi, mss_lo] = mss.to_be_bytes();
    let mut tcp = [
        // The ports swapped: network order, halves of a native word.
        ports.rotate_left(16),
        cookie.to_be(),
        u32::from_be(seq).wrapping_add(1).to_be(),
        // Data offset 6 words, SYN and ACK, window 65535.
        word([0x60, 0x12, 0xff, 0xff]),
        0,
        word([2, 4, mss_hi, mss_lo]),
    ];
    let pseudo = u64::from(dst) + u64::from(src) + u64::from(word([0, IPPROTO_TCP, 0, 24]));
    tcp[4] = u32::from(!fold_checksum(
        pseudo + tcp.iter().map(|w| u64::from(*w)).sum::<u64>(),
    ));
    // SAFETY: the answer's 58 bytes lie in the frame, checked just above.
    unsafe {
        for (i, w) in head.into_iter().enumerate() {
            core::ptr::write_volatile(ip.add(i), w);
        }
        for (i, w) in tcp.into_iter().enumerate() {
            core::ptr::write_volatile(th.add(i), w);
        }
        let macs = start as *mut [u16; 6];
        let m = core::ptr::read(macs);
        core::ptr::write(macs, [m[3], m[4], m[5], m[0], m[1], m[2]]);
    }
    Some(xdp_action::XDP_TX)
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
