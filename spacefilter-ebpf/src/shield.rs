//! The shield: admission on shielded ports (see
//! [`spacefilter_common::Shield`]). A forged source never completes a
//! handshake and never receives the host's replies, so nothing from a new
//! source reaches the host until it has proven itself:
//!
//! - on a TCP port, a SYN is answered here with a SYN-ACK whose sequence
//!   number is the kernel's own SYN cookie for it ([`syn_cookie`],
//!   `XDP_TX`);
//! - a segment without SYN passes if it belongs to a connection the host
//!   has (a socket other than the listener), or carries a valid cookie
//!   (`cookie_verified`; the kernel then opens the connection from the
//!   cookie, and the source is verified); anything else is `out_of_state`
//!   (ACK, RST, FIN floods);
//! - on a UDP port, verified sources pass (see [`crate::verified`]), and
//!   others only within a small shared budget ([`unverified_udp`]).
//!
//! Kernel: `bpf_skc_lookup_tcp` and `bpf_tcp_check_syncookie` (5.2),
//! `bpf_tcp_gen_syncookie` (5.3), `bpf_xdp_adjust_tail` (4.18), `XDP_TX`.
//! IPv4 SYNs with a plain 20-byte IP header are answered here; others to a
//! shielded port go on to the kernel, which answers them with its own
//! cookies (`net.ipv4.tcp_syncookies = 2`).
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "header fields and frame offsets: small values of known range"
)]

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, tcphdr,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie,
        bpf_tcp_gen_syncookie, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use spacefilter_common::{Reason, Shield, reflect_bits, shield_flags, verified_how};

use crate::{
    limit::take_packet,
    maps::{REFLECT_PORTS, SHIELD, SHIELD_BUDGET, SHIELD_SCRATCH},
    parse::{
        ETH_P_IPV4, IPPROTO_TCP_NUMBER, IPPROTO_UDP_NUMBER, L4, Source, TCP_ACK, TCP_SYN,
        VLAN_TPIDS,
    },
    verdict::Verdict,
    verified,
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// The IPv4 header the SYN-ACK carries: no options.
const IPV4_LEN: usize = 20;
/// The SYN-ACK's TCP header: 20 bytes and 20 of options.
const SYNACK_TCP_LEN: usize = 40;
/// The SYN-ACK's window (never scaled): below what the kernel gives the
/// connection it opens from the cookie (about 64 KiB less an MSS), so that
/// the client never sends past it; the kernel's first ACK sets the real
/// one.
const SYNACK_WINDOW: u16 = 29_200;
/// A SYN-ACK without a timestamp: the MSS alone.
const SHORT_TCP_LEN: usize = 24;
/// The SYN-ACK's IP packet (at most).
pub(crate) const SYNACK_LEN: usize = IPV4_LEN + SYNACK_TCP_LEN;
/// The kernel's cookie timestamp: its low bits carry the options
/// (`TSBITS` in `net/ipv4/syncookies.c`).
const TS_BITS: u32 = 6;
/// No window scaling, in the timestamp's option bits.
const TS_NO_WSCALE: u32 = 0xf;
const TS_SACK: u32 = 1 << 4;

/// Turned into a SYN-ACK with a cookie, to be sent back (`XDP_TX`).
const ANSWERED: Verdict = Verdict {
    reason: Reason::SynCookie,
    detail: 0,
    resized: true,
};
/// Resized for an answer that could then not be written: dropped.
const SPOILED: Verdict = Verdict {
    reason: Reason::Malformed,
    detail: 0,
    resized: true,
};

/// The shield's verdict on a frame, or `None` to leave it to the flood
/// guards.
#[inline(always)]
pub(crate) fn check(ctx: &XdpContext, source: &Source, l4: &L4) -> Option<Verdict> {
    if !l4.ports || (l4.proto != IPPROTO_TCP_NUMBER && l4.proto != IPPROTO_UDP_NUMBER) {
        return None;
    }
    let shield = SHIELD.get(0)?;
    if shield.flags & shield_flags::ON == 0 {
        return None;
    }
    let bits = *REFLECT_PORTS.get(u32::from(l4.dst_port))?;
    if l4.proto == IPPROTO_UDP_NUMBER {
        if bits & reflect_bits::SHIELD_UDP == 0 {
            return None;
        }
        return unverified_udp(source, shield);
    }
    if bits & reflect_bits::SHIELD_TCP == 0 {
        return None;
    }
    let ip_offset = locate(ctx)?;
    let flags = l4.tcp_flags;
    if flags & TCP_SYN != 0 && flags & (TCP_ACK | TCP_RST | TCP_FIN) == 0 {
        return syn_cookie(ctx, ip_offset, shield);
    }
    if flags & TCP_SYN != 0 {
        // A SYN-ACK, or SYN with RST or FIN: never from a client.
        return Some(Reason::OutOfState.into());
    }
    let reason = segment(ctx, ip_offset)?;
    if reason == Reason::CookieVerified {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        verified::prove(&verified::key(source), verified_how::COOKIE, now);
    }
    Some(reason.into())
}

/// UDP to a shielded port: a verified source goes on to the flood guards
/// (its own budgets); any other within the shield's budget for unverified
/// sources, which lets a new client reach the host's first reply (and that
/// reply verifies it); the rest is dropped as `shielded`.
#[inline(always)]
fn unverified_udp(source: &Source, shield: &Shield) -> Option<Verdict> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if verified::holds(source, now) {
        return None;
    }
    let bucket = SHIELD_BUDGET.get_ptr_mut(0)?;
    // SAFETY: the array's only value; CPUs race on it (an approximate
    // budget).
    let bucket = unsafe { &mut *bucket };
    let budget = (
        u64::from(shield.unverified_pps),
        u64::from(shield.unverified_burst),
    );
    if take_packet(&mut bucket.packets, &mut bucket.last_ns, budget, now) {
        None
    } else {
        Some(Reason::Shielded.into())
    }
}

/// The socket the kernel would give a segment of this 4-tuple: an
/// established one (or one in `TIME_WAIT` or `SYN_RECV`) if there is one, else
/// the listener; null if neither. A non-null result must be released.
#[inline(always)]
fn lookup(ctx: &XdpContext, ip: usize) -> *mut bpf_sock {
    // SAFETY: the caller checked that the IPv4 header and the ports lie
    // inside the packet.
    let (saddr, daddr, ports) = unsafe {
        (
            core::ptr::read_unaligned((ip + 12) as *const u32),
            core::ptr::read_unaligned((ip + 16) as *const u32),
            core::ptr::read_unaligned((ip + IPV4_LEN) as *const [u16; 2]),
        )
    };
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr,
                daddr,
                sport: ports[0],
                dport: ports[1],
            },
        },
    };
    // SAFETY: the tuple is a local of the size given; the context is the
    // program's.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &raw mut tuple,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// Where the IPv4 header of a frame the parse found well formed starts,
/// if it has no options; `None` for IPv6 and for IPv4 with options, which
/// the kernel answers itself. Found anew rather than carried from the
/// parse: offsets carried through the header rules and the guards would
/// multiply the states the verifier walks there.
#[inline(always)]
fn locate(ctx: &XdpContext) -> Option<usize> {
    let data = ctx.data();
    let end = ctx.data_end();
    let mut offset = 12;
    for _ in 0..3 {
        if data + offset + 2 > end {
            return None;
        }
        // SAFETY: the two bytes lie in the packet, checked just above.
        let ethertype =
            u16::from_be(unsafe { core::ptr::read_unaligned((data + offset) as *const u16) });
        if ethertype == ETH_P_IPV4 {
            if data + offset + 3 > end {
                return None;
            }
            // SAFETY: checked just above.
            let version_ihl = unsafe { *((data + offset + 2) as *const u8) };
            return (version_ihl == 0x45).then_some(offset + 2);
        }
        if !VLAN_TPIDS.contains(&ethertype) {
            return None;
        }
        offset += 4;
    }
    None
}

/// The headers of the segment, checked against the packet again (the
/// verifier knows nothing of the parse's offsets): the IPv4 header, the
/// TCP header.
#[inline(always)]
fn headers(ctx: &XdpContext, ip_offset: usize) -> Option<(usize, usize)> {
    let ip = ctx.data() + (ip_offset & 0x1f);
    let th = ip + IPV4_LEN;
    if th + 20 > ctx.data_end() {
        return None;
    }
    Some((ip, th))
}

/// A segment without SYN: it passes if the host has its connection, or if
/// it is the ACK of a cookie; else it is out of state.
#[inline(always)]
fn segment(ctx: &XdpContext, ip_offset: usize) -> Option<Reason> {
    let (ip, th) = headers(ctx, ip_offset)?;
    let sk = lookup(ctx, ip);
    if sk.is_null() {
        return Some(Reason::OutOfState);
    }
    // SAFETY: a socket the lookup returned, readable until released.
    let state = unsafe { (*sk).state };
    let verdict = if state == BPF_TCP_LISTEN {
        // Only the listener: the segment must carry a cookie. The helper
        // reads the fixed TCP header only (its options do not count).
        // SAFETY: the socket is held; both headers lie in the packet
        // (checked by `headers`).
        let valid = unsafe {
            bpf_tcp_check_syncookie(
                sk.cast(),
                ip as *mut _,
                IPV4_LEN as u32,
                th as *mut tcphdr,
                20,
            )
        };
        if valid == 0 {
            Some(Reason::CookieVerified)
        } else {
            Some(Reason::OutOfState)
        }
    } else {
        None
    };
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    verdict
}

/// What the client's SYN offers.
#[derive(Clone, Copy, Default)]
struct Offer {
    wscale: Option<u8>,
    sack: bool,
    tsval: Option<u32>,
}

/// What the client's SYN offers, from its options (at most 40 bytes, then
/// zeros; `len` of them are options).
///
/// The walk keeps its position and findings in the scratch value, read and
/// written through volatile accesses: registers would carry a different
/// range at each step, and the verifier would walk every combination of
/// them; from memory, every step starts from the same state. Every index
/// is masked into the buffer where it is used (the mask read through a
/// volatile load, so that LLVM cannot drop it), which the verifier can
/// follow where it cannot follow a bound checked in another register.
#[inline(always)]
fn offer(scratch: &mut Scratch, len: usize) -> Offer {
    // SAFETY: reading a local constant.
    let mask = unsafe { core::ptr::read_volatile(&63usize) };
    let walk = &raw mut scratch.walk;
    // SAFETY: `walk` points into the scratch value, which this CPU alone
    // uses while the program runs.
    unsafe { core::ptr::write_volatile(walk, Walk::default()) };
    // Real SYNs carry at most eight options, NOPs included.
    for _ in 0..12 {
        // SAFETY: as above.
        let mut w = unsafe { core::ptr::read_volatile(walk) };
        let at = w.at as usize;
        if at >= len || at >= 40 {
            break;
        }
        let byte = |i: usize| scratch.options.get(i & mask).copied().unwrap_or(0);
        let kind = byte(at);
        if kind == 0 {
            break;
        }
        let size = if kind == 1 {
            1
        } else {
            usize::from(byte(at + 1))
        };
        if size == 0 || (kind != 1 && size < 2) {
            break;
        }
        match (kind, size) {
            (3, 3) => w.wscale = 0x100 | u32::from(byte(at + 2)),
            (4, 2) => w.sack = 1,
            (8, 10) => {
                w.tsval =
                    u32::from_be_bytes([byte(at + 2), byte(at + 3), byte(at + 4), byte(at + 5)]);
                w.timestamps = 1;
            }
            _ => {}
        }
        w.at = (at + size) as u32;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(walk, w) };
    }
    // SAFETY: as above.
    let w = unsafe { core::ptr::read_volatile(walk) };
    Offer {
        #[expect(clippy::cast_possible_truncation, reason = "the option's byte")]
        wscale: (w.wscale & 0x100 != 0).then_some(w.wscale as u8),
        sack: w.sack != 0,
        tsval: (w.timestamps != 0).then_some(w.tsval),
    }
}

/// The walk through a SYN's options, kept in memory (see [`offer`]).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Walk {
    at: u32,
    /// 0x100 | the window scale, if offered.
    wscale: u32,
    sack: u32,
    timestamps: u32,
    tsval: u32,
}

/// Where a SYN-ACK is built, per CPU: the stack is too small for it beside
/// the rest of the pipeline.
#[repr(C)]
pub(crate) struct Scratch {
    answer: [u8; SYNACK_LEN],
    options: [u8; 64],
    walk: Walk,
}

/// Answers a SYN with a cookie, or leaves it to the kernel (no listener,
/// or a socket of this 4-tuple already, or no cookie to be had).
///
/// The cookie helper wants the whole TCP header, options included, and the
/// verifier wants it to lie in the packet for a length it knows: one
/// branch per length a header can have ([`cookie_for`]). The frame is
/// resized only to write the answer, which is never longer than a SYN that
/// offers what it answers: a SYN from Linux (MSS, SACK, timestamp, window
/// scale) is answered in a frame of its own size.
#[inline(always)]
fn syn_cookie(ctx: &XdpContext, ip_offset: usize, shield: &Shield) -> Option<Verdict> {
    let (ip, th) = headers(ctx, ip_offset)?;
    let scratch = SHIELD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, used only by this CPU while this program
    // runs.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the data offset byte lies in the packet (checked by
    // `headers`).
    let tcp_len = usize::from(unsafe { *((th + 12) as *const u8) } >> 4) * 4;
    let sk = lookup(ctx, ip);
    if sk.is_null() {
        return None;
    }
    // SAFETY: a socket the lookup returned, readable until released.
    let cookie = if unsafe { (*sk).state } == BPF_TCP_LISTEN {
        cookie_for(ctx, sk, ip, th, tcp_len, &mut scratch.options)
    } else {
        -1
    };
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    if cookie < 0 {
        return None;
    }
    let offer = offer(scratch, tcp_len.saturating_sub(20));
    let (ip, th) = headers(ctx, ip_offset)?;
    let long = synack(
        ctx,
        ip,
        th,
        cookie as u32,
        offer,
        shield,
        &mut scratch.answer,
    )?;
    Some(turn_around(ctx, ip_offset & 0x1f, &scratch.answer, long))
}

/// The kernel's cookie for the SYN at `th` (`tcp_len` bytes of header, as
/// its data offset says), through the listener `sk`, with the header's
/// options copied into `options` (zeros after them); negative if there is
/// none (the helper refused, or the header does not fit the frame).
#[inline(always)]
fn cookie_for(
    ctx: &XdpContext,
    sk: *mut bpf_sock,
    ip: usize,
    th: usize,
    tcp_len: usize,
    options: &mut [u8; 64],
) -> i64 {
    *options = [0; 64];
    macro_rules! lengths {
        ($($n:literal)*) => {
            match tcp_len {
                $($n => {
                    if th + $n > ctx.data_end() {
                        return -1;
                    }
                    // SAFETY: the header's $n bytes lie in the packet,
                    // checked just above.
                    let copied = unsafe {
                        core::ptr::read_unaligned((th + 20) as *const [u8; $n - 20])
                    };
                    options[..$n - 20].copy_from_slice(&copied);
                    // SAFETY: the socket is held; the IPv4 header and the
                    // $n bytes of TCP header lie in the packet.
                    unsafe {
                        bpf_tcp_gen_syncookie(
                            sk.cast(),
                            ip as *mut _,
                            IPV4_LEN as u32,
                            th as *mut tcphdr,
                            $n,
                        )
                    }
                })*
                _ => -1,
            }
        };
    }
    lengths!(20 24 28 32 36 40 44 48 52 56 60)
}

/// The SYN-ACK's IPv4 and TCP headers, with their checksums.
#[inline(always)]
fn synack(
    ctx: &XdpContext,
    ip: usize,
    th: usize,
    cookie: u32,
    offer: Offer,
    shield: &Shield,
    out: &mut [u8; SYNACK_LEN],
) -> Option<bool> {
    if th + 20 > ctx.data_end() {
        return None;
    }
    // SAFETY: the IPv4 header and the fixed TCP header lie in the packet.
    let (saddr, daddr, sport, dport, seq) = unsafe {
        (
            core::ptr::read_unaligned((ip + 12) as *const [u8; 4]),
            core::ptr::read_unaligned((ip + 16) as *const [u8; 4]),
            core::ptr::read_unaligned(th as *const [u8; 2]),
            core::ptr::read_unaligned((th + 2) as *const [u8; 2]),
            u32::from_be(core::ptr::read_unaligned((th + 4) as *const u32)),
        )
    };
    let timestamps = shield.flags & shield_flags::TIMESTAMPS != 0;
    // With a timestamp, 20 bytes of options; without, the MSS alone.
    let long = offer.tsval.is_some() && timestamps;
    let tcp_len = if long { SYNACK_TCP_LEN } else { SHORT_TCP_LEN };
    out.fill(0);
    // IPv4: no options, DF, TTL 64, the addresses swapped.
    out[0] = 0x45;
    out[2..4].copy_from_slice(&((IPV4_LEN + tcp_len) as u16).to_be_bytes());
    out[6] = 0x40;
    out[8] = 64;
    out[9] = IPPROTO_TCP_NUMBER;
    out[12..16].copy_from_slice(&daddr);
    out[16..20].copy_from_slice(&saddr);
    let ip_sum = fold(sum(&out[..IPV4_LEN]));
    out[10..12].copy_from_slice(&(!ip_sum).to_be_bytes());
    // TCP: the ports swapped, the cookie as sequence number.
    let t = &mut out[IPV4_LEN..];
    t[0..2].copy_from_slice(&dport);
    t[2..4].copy_from_slice(&sport);
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = TCP_SYN | TCP_ACK;
    t[14..16].copy_from_slice(&SYNACK_WINDOW.to_be_bytes());
    // Options: MSS; then, with a timestamp, SACK-permitted (or NOPs), the
    // timestamp, the window scale (or NOPs). Without a timestamp to carry
    // them, the kernel cannot learn of window scaling or SACK from the
    // cookie, so neither is offered.
    let o = &mut t[20..];
    o.fill(1);
    o[0] = 2;
    o[1] = 4;
    o[2..4].copy_from_slice(&(shield.mss_v4 as u16).to_be_bytes());
    if let (Some(tsecr), true) = (offer.tsval, long) {
        let sack = offer.sack && shield.flags & shield_flags::SACK != 0;
        let wscale = match offer.wscale {
            Some(w) if shield.flags & shield_flags::WSCALE != 0 => Some(w.min(14)),
            _ => None,
        };
        if sack {
            o[4] = 4;
            o[5] = 2;
        }
        o[6] = 8;
        o[7] = 10;
        o[8..12].copy_from_slice(&timestamp(wscale, sack).to_be_bytes());
        o[12..16].copy_from_slice(&tsecr.to_be_bytes());
        if wscale.is_some() {
            o[17] = 3;
            o[18] = 3;
            o[19] = shield.wscale as u8;
        }
    }
    // The pseudo-header: addresses, protocol, TCP length. The bytes past a
    // short header are zeros, which add nothing.
    let pseudo = sum(&out[12..20]) + u32::from(IPPROTO_TCP_NUMBER) + tcp_len as u32;
    if !long {
        out[IPV4_LEN + SHORT_TCP_LEN..].fill(0);
    }
    let tcp_sum = fold(pseudo + sum(&out[IPV4_LEN..]));
    out[IPV4_LEN + 16..IPV4_LEN + 18].copy_from_slice(&(!tcp_sum).to_be_bytes());
    Some(long)
}

/// The SYN-ACK's timestamp as the kernel's cookie path makes it
/// (`cookie_init_timestamp`): its clock in milliseconds (the monotonic
/// clock of `bpf_ktime_get_ns`, which the kernel's TCP clock reads), the
/// low bits replaced by the client's window scale and SACK, and never
/// ahead of the clock.
#[inline(always)]
fn timestamp(wscale: Option<u8>, sack: bool) -> u32 {
    // SAFETY: no preconditions.
    let now = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let mut options = wscale.map_or(TS_NO_WSCALE, u32::from);
    if sack {
        options |= TS_SACK;
    }
    let mask = (1 << TS_BITS) - 1;
    let ts = (now & !mask) | options;
    if ts > now {
        ts.wrapping_sub(1 << TS_BITS)
    } else {
        ts
    }
}

/// Sums big-endian 16-bit words (the one's-complement sum, unfolded).
#[inline(always)]
fn sum(bytes: &[u8]) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i + 1 < bytes.len() {
        total += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    total
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Resizes the frame to the Ethernet header (and VLAN tags) at its start
/// and `answer` after them, writes `answer`, and swaps the MAC addresses:
/// the frame goes back out where it came in.
#[inline(always)]
fn turn_around(
    ctx: &XdpContext,
    ip_offset: usize,
    answer: &[u8; SYNACK_LEN],
    long: bool,
) -> Verdict {
    let ip_len = if long {
        SYNACK_LEN
    } else {
        IPV4_LEN + SHORT_TCP_LEN
    };
    // Tags make the IP header start at 14, 18 or 22.
    let ip_offset = ip_offset & 0x1f;
    let len = ctx.data_end() - ctx.data();
    let wanted = ip_offset + ip_len;
    let delta = wanted as i64 - len as i64;
    if delta != 0 {
        // SAFETY: the context is the program's; every packet pointer is
        // taken anew below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
            // Refused: the frame is as it was, but the verifier holds its
            // bounds for gone all the same.
            return SPOILED;
        }
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + 12 > end || start + ip_offset + ip_len > end {
        return SPOILED;
    }
    // SAFETY: the MAC addresses lie in the packet, checked just above.
    unsafe {
        let macs = core::ptr::read_unaligned(start as *const [u8; 12]);
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        core::ptr::write_unaligned(start as *mut [u8; 12], swapped);
    }
    let at = start + ip_offset;
    if long {
        if at + SYNACK_LEN > end {
            return SPOILED;
        }
        // SAFETY: the answer's bytes lie in the packet, checked just above.
        unsafe { core::ptr::write_unaligned(at as *mut [u8; SYNACK_LEN], *answer) };
    } else {
        const SHORT: usize = IPV4_LEN + SHORT_TCP_LEN;
        if at + SHORT > end {
            return SPOILED;
        }
        let mut short = [0u8; SHORT];
        short.copy_from_slice(&answer[..SHORT]);
        // SAFETY: the answer's bytes lie in the packet, checked just above.
        unsafe { core::ptr::write_unaligned(at as *mut [u8; SHORT], short) };
    }
    ANSWERED
}
