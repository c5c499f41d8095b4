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
//!   others only within a small shared budget ([`unverified`]).
//!
//! Kernel: `bpf_skc_lookup_tcp` and `bpf_tcp_check_syncookie` (5.2),
//! `bpf_tcp_gen_syncookie` (5.3), `bpf_tcp_raw_gen_syncookie_ipv4/6`
//! (6.0), `bpf_xdp_adjust_tail` (4.18),
//! `bpf_xdp_load_bytes` (5.18), `bpf_ktime_get_coarse_ns` (5.11, where
//! the kernel has it), `XDP_TX`.
//! SYNs over IPv4 without options and over IPv6 without extension headers
//! are answered here, and other segments in those layouts checked here;
//! TCP in other layouts (IPv4 options, IPv6 extension headers) from an
//! unverified source shares the budget for unverified sources and goes on
//! to the kernel, which answers SYNs with its own cookies
//! (`net.ipv4.tcp_syncookies = 2`, which covers IPv6 too).
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "header fields and frame offsets: small values of known range"
)]

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        tcphdr,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie,
        bpf_tcp_gen_syncookie, bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use spacefilter_common::{
    Reason, Shield, fold_checksum, reflect_bits, shield_flags, shield_watch,
    tokens::burst_holds_a_tick, verified_how,
};

use crate::{
    features,
    limit::take_packet,
    maps::{REFLECT_PORTS, SHIELD, SHIELD_BUDGET, SHIELD_LISTENERS, SHIELD_SCRATCH, SHIELD_WATCH},
    parse::{
        ETH_P_IPV4, IPPROTO_TCP_NUMBER, IPPROTO_UDP_NUMBER, L4, Source, TCP_ACK, TCP_SYN,
        VLAN_TPIDS,
    },
    verdict::Verdict,
    verified::{self, PRESSURE_NS},
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// The IPv4 header the SYN-ACK carries: no options.
const IPV4_LEN: usize = 20;
/// The IPv6 header: no extension headers.
const IPV6_LEN: usize = 40;
const ETH_P_IPV6: u16 = 0x86dd;
/// The shortest Ethernet frame, less its checksum.
const ETH_ZLEN: usize = 60;
/// The SYN-ACK's TCP header: 20 bytes and 20 of options.
const SYNACK_TCP_LEN: usize = 40;
/// The SYN-ACK's window (never scaled): below what the kernel gives the
/// connection it opens from the cookie (about 64 KiB less an MSS), so that
/// the client never sends past it; the kernel's first ACK sets the real
/// one.
const SYNACK_WINDOW: u16 = 29_200;
/// A SYN-ACK without a timestamp: the MSS alone.
const SHORT_TCP_LEN: usize = 24;
/// Room for a SYN's TCP header: 60 bytes at most, and what a length
/// computed as the verifier can follow may reach ([`copy_headers`]).
const HEADER_ROOM: usize = 88;
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
    if shield.flags & (shield_flags::ON | shield_flags::WATCH) == 0 {
        return None;
    }
    let on = shield.flags & shield_flags::ON != 0;
    let bits = *REFLECT_PORTS.get(u32::from(l4.dst_port))?;
    if l4.proto == IPPROTO_UDP_NUMBER {
        if bits & reflect_bits::SHIELD_UDP == 0 {
            return None;
        }
        return unverified(source, shield, on);
    }
    if bits & reflect_bits::SHIELD_TCP == 0 {
        return None;
    }
    if l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        watch(shield, shield_watch::SYNS);
    }
    if !on {
        return None;
    }
    if !features::on(features::TCP_COOKIES) {
        // A kernel without the cookie helpers: TCP is treated as UDP is,
        // and the kernel answers what gets through with its own cookies.
        return unverified(source, shield, on);
    }
    let Some((ip_offset, v6)) = locate(ctx) else {
        // IPv4 with options, IPv6 with extension headers (fragments
        // included): rare in real connections, and a way around the checks
        // below for a flood. Treated as UDP is: a verified source passes,
        // others share the budget for unverified sources, and the kernel
        // answers what gets through (its own cookies, its own state).
        return unverified(source, shield, on);
    };
    if v6 {
        tcp::<IPV6_LEN>(ctx, ip_offset, source, l4.tcp_flags, shield)
    } else {
        tcp::<IPV4_LEN>(ctx, ip_offset, source, l4.tcp_flags, shield)
    }
}

/// A TCP segment to a shielded port, its IP header (`IP` bytes: IPv4
/// without options, or IPv6 without extension headers) at `ip_offset`: one
/// copy per family, each with its offsets constant.
#[inline(always)]
fn tcp<const IP: usize>(
    ctx: &XdpContext,
    ip_offset: usize,
    source: &Source,
    flags: u8,
    shield: &Shield,
) -> Option<Verdict> {
    if flags & TCP_SYN != 0 && flags & (TCP_ACK | TCP_RST | TCP_FIN) == 0 {
        return syn_cookie::<IP>(ctx, ip_offset, source, shield);
    }
    if flags & TCP_SYN != 0 {
        // A SYN-ACK, or SYN with RST or FIN: never from a client.
        return Some(Reason::OutOfState.into());
    }
    let reason = segment::<IP>(ctx, ip_offset)?;
    if reason == Reason::CookieVerified {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        verified::prove(&verified::key(source), verified_how::COOKIE, now);
    }
    Some(reason.into())
}

/// Counts a frame `shield auto` watches for (see
/// [`spacefilter_common::shield_watch`]), while it does.
#[inline(always)]
fn watch(shield: &Shield, slot: u32) {
    if shield.flags & shield_flags::WATCH == 0 {
        return;
    }
    if let Some(counter) = SHIELD_WATCH.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *counter += 1 };
    }
}

/// UDP to a shielded port (or TCP in a layout the checks here do not
/// read): a verified source goes on to the flood guards (its own budgets);
/// any other within the shield's budget for unverified sources, which lets
/// a new client reach the host's first reply (and that reply verifies it);
/// the rest is dropped as `shielded`.
#[inline(always)]
fn unverified(source: &Source, shield: &Shield, on: bool) -> Option<Verdict> {
    // The coarse clock where the budget's burst holds a tick (10 ms at
    // most) of its rate, as the flood guards take it (see
    // `limit_flags::COARSE_CLOCK`): a flood of unverified datagrams runs
    // through here.
    let now = if burst_holds_a_tick(
        u64::from(shield.unverified_pps),
        u64::from(shield.unverified_burst),
    ) {
        features::coarse_now()
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
    if verified::holds_under_flood(source, now) {
        return None;
    }
    watch(shield, shield_watch::UNVERIFIED_UDP);
    let bucket = SHIELD_BUDGET.get_ptr_mut(0)?;
    // SAFETY: the array's only value; CPUs race on it (an approximate
    // budget).
    let bucket = unsafe { &mut *bucket };
    let budget = (
        u64::from(shield.unverified_pps),
        u64::from(shield.unverified_burst),
    );
    if take_packet(&mut bucket.packets, &mut bucket.last_ns, budget, now) {
        return None;
    }
    // Over the budget: a flood of unverified datagrams, armed or on. While
    // it lasts, the host's answers verify nobody new (see
    // [`crate::verified::prove`]).
    if now.saturating_sub(bucket.last_over_ns) >= PRESSURE_NS {
        // A new flood: when it began marks who was answered before it.
        bucket.over_since_ns = now;
    }
    bucket.last_over_ns = now;
    on.then(|| Reason::Shielded.into())
}

/// The socket the kernel would give a segment of this 4-tuple: an
/// established one (or one in `TIME_WAIT` or `SYN_RECV`) if there is one, else
/// the listener; null if neither. A non-null result must be released.
#[inline(always)]
fn lookup<const IP: usize>(
    ctx: &XdpContext,
    (ip, th): (usize, usize),
    tuple: &mut bpf_sock_tuple,
) -> *mut bpf_sock {
    // SAFETY: the caller checked that the IP header and the ports are
    // readable (in the packet, or copied into the scratch value).
    let ports = unsafe { core::ptr::read_unaligned(th as *const [u16; 2]) };
    let size = if IP == IPV4_LEN {
        // SAFETY: as above.
        let (saddr, daddr) = unsafe {
            (
                core::ptr::read_unaligned((ip + 12) as *const u32),
                core::ptr::read_unaligned((ip + 16) as *const u32),
            )
        };
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr,
            daddr,
            sport: ports[0],
            dport: ports[1],
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        // SAFETY: as above.
        let (saddr, daddr) = unsafe {
            (
                core::ptr::read_unaligned((ip + 8) as *const [u32; 4]),
                core::ptr::read_unaligned((ip + 24) as *const [u32; 4]),
            )
        };
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr,
            daddr,
            sport: ports[0],
            dport: ports[1],
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    // SAFETY: the tuple is in the scratch value, of the size given; the
    // context is the program's.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            core::ptr::from_mut(tuple),
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// Where the IP header of a frame the parse found well formed starts, and
/// whether it is IPv6: IPv4 without options, or IPv6 with the TCP header
/// right after its own; `None` for others, which the kernel answers
/// itself. Found anew rather than carried from the parse: offsets carried
/// through the header rules and the guards would multiply the states the
/// verifier walks there.
#[inline(always)]
fn locate(ctx: &XdpContext) -> Option<(usize, bool)> {
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
            return (version_ihl == 0x45).then_some((offset + 2, false));
        }
        if ethertype == ETH_P_IPV6 {
            if data + offset + 9 > end {
                return None;
            }
            // SAFETY: checked just above.
            let next_header = unsafe { *((data + offset + 8) as *const u8) };
            return (next_header == IPPROTO_TCP_NUMBER).then_some((offset + 2, true));
        }
        if !VLAN_TPIDS.contains(&ethertype) {
            return None;
        }
        offset += 4;
    }
    None
}

/// The headers of the segment, checked against the packet again (the
/// verifier knows nothing of the parse's offsets): the IP header, the
/// TCP header.
#[inline(always)]
fn headers<const IP: usize>(ctx: &XdpContext, ip_offset: usize) -> Option<(usize, usize)> {
    let ip = ctx.data() + (ip_offset & 0x1f);
    let th = ip + IP;
    if th + 20 > ctx.data_end() {
        return None;
    }
    Some((ip, th))
}

/// A segment without SYN: it passes if the host has its connection, or if
/// it is the ACK of a cookie; else it is out of state.
#[inline(always)]
fn segment<const IP: usize>(ctx: &XdpContext, ip_offset: usize) -> Option<Reason> {
    let (ip, th) = headers::<IP>(ctx, ip_offset)?;
    let scratch = SHIELD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, used only by this CPU while this program
    // runs.
    let sk = lookup::<IP>(ctx, (ip, th), unsafe { &mut (*scratch).tuple });
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
            bpf_tcp_check_syncookie(sk.cast(), ip as *mut _, IP as u32, th as *mut tcphdr, 20)
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
    if len == 0 {
        return Offer::default();
    }
    // Linux's SYN, the common case: MSS, SACK-permitted, timestamp, NOP,
    // window scale, in that order.
    let h = &scratch.header;
    if len == 20
        && [
            h[20], h[21], h[24], h[25], h[26], h[27], h[36], h[37], h[38],
        ] == [2, 4, 4, 2, 8, 10, 1, 3, 3]
    {
        return Offer {
            wscale: Some(h[39]),
            sack: true,
            tsval: Some(u32::from_be_bytes([h[28], h[29], h[30], h[31]])),
        };
    }
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
        let byte = |i: usize| scratch.header.get((20 + i) & mask).copied().unwrap_or(0);
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

/// Where a SYN's headers are read and a socket looked up, per CPU: the
/// stack is too small for them beside the rest of the pipeline. The SYN's
/// headers are copied here first, so that they are read at known
/// alignments: read from the packet, LLVM splits every field into bytes
/// and spills them.
#[repr(C, align(8))]
pub(crate) struct Scratch {
    /// The SYN's IP header, ending where `header` begins (IPv4: the last 20
    /// bytes), so that one copy fills both; see [`Scratch::ip`].
    ip: [u8; IPV6_LEN],
    /// The SYN's TCP header, options included, then zeros up to the 64th
    /// byte after a header with options (see [`copy_headers`]).
    header: [u8; HEADER_ROOM],
    walk: Walk,
    /// The 4-tuple of a socket lookup.
    tuple: bpf_sock_tuple,
}

impl Scratch {
    /// Where the SYN's IP header (`IP` bytes) starts in the value: right
    /// before the TCP header's room. Taken from the whole value, since the
    /// copy into it runs on into `header`.
    const fn ip_at<const IP: usize>() -> usize {
        core::mem::offset_of!(Self, ip) + IPV6_LEN - IP
    }

    /// The SYN's IP header ([`Scratch::ip_at`]), to be written.
    #[inline(always)]
    fn ip<const IP: usize>(scratch: &mut Self) -> *mut u8 {
        // SAFETY: `ip` is IPV6_LEN bytes, IP of them at most; the pointer
        // stays inside the value.
        unsafe {
            core::ptr::from_mut(scratch)
                .cast::<u8>()
                .add(Self::ip_at::<IP>())
        }
    }

    /// The SYN's IP header ([`Scratch::ip_at`]), to be read.
    #[inline(always)]
    fn ip_of<const IP: usize>(&self) -> *const u8 {
        // SAFETY: as in [`Scratch::ip`].
        unsafe {
            core::ptr::from_ref(self)
                .cast::<u8>()
                .add(Self::ip_at::<IP>())
        }
    }
}

/// Answers a SYN with a cookie, or leaves it to the kernel (no listener,
/// or a socket of this 4-tuple already, or no cookie to be had).
///
/// The frame is resized only to write the answer, which is never longer
/// than a SYN that offers what it answers: a SYN from Linux (MSS, SACK,
/// timestamp, window scale) is answered in a frame of its own size.
#[inline(always)]
fn syn_cookie<const IP: usize>(
    ctx: &XdpContext,
    ip_offset: usize,
    source: &Source,
    shield: &Shield,
) -> Option<Verdict> {
    let (_, th) = headers::<IP>(ctx, ip_offset)?;
    // SAFETY: the data offset byte lies in the packet (checked by
    // `headers`).
    let tcp_len = usize::from(unsafe { *((th + 12) as *const u8) } >> 4) * 4;
    let scratch = SHIELD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, used only by this CPU while this program
    // runs.
    let scratch = unsafe { &mut *scratch };
    let len = copy_headers::<IP>(ctx, ip_offset & 0x1f, tcp_len, scratch)?;
    // The tick clock: a listener's freshness and a peer's last proof are
    // matters of seconds.
    let cookie = cookie_for::<IP>(ctx, scratch, (source, len), features::tick_now());
    if cookie < 0 {
        return None;
    }
    let offer = offer(scratch, tcp_len.saturating_sub(20));
    // With a timestamp, 20 bytes of options; without, the MSS alone.
    let long = offer.tsval.is_some() && shield.flags & shield_flags::TIMESTAMPS != 0;
    let answer = (cookie as u32, offer, shield);
    Some(if long {
        turn_around::<IP, true>(ctx, ip_offset & 0x1f, scratch, answer)
    } else {
        turn_around::<IP, false>(ctx, ip_offset & 0x1f, scratch, answer)
    })
}

/// A listener seen on a port by the socket path stands for this long:
/// within it, the port's SYNs get their cookies without a socket lookup.
/// Once a second the socket path runs again, which also keeps the
/// listener's record of having sent cookies fresh (the kernel takes a
/// cookie's ACK only within two minutes of one).
const LISTENER_FRESH_NS: u64 = 1_000_000_000;

/// The kernel's cookie for the SYN whose headers are in the scratch value
/// (`len` bytes of TCP header); negative if there is none (no listener, a
/// socket of this 4-tuple already, or the helper refused).
///
/// Through the listener (`bpf_skc_lookup_tcp`, `bpf_tcp_gen_syncookie`)
/// once a second per port; in between, while the port's listener is known,
/// with `bpf_tcp_raw_gen_syncookie_ipv4/6` (kernel 6.0), which computes the
/// same cookie (the same secret, the client's MSS) without the lookup. A
/// port is one key: with listeners on some of the host's addresses and not
/// others, a SYN to another address may be answered for up to a second,
/// and its ACK then dropped as out of state where the kernel would reset.
///
/// A SYN from a peer the host has had a connection with lately always
/// takes the socket path ([`verified::seen_lately`]): its 4-tuple may have
/// a socket still, most often one in `TIME_WAIT` after the host closed
/// first, which must get the SYN itself (the kernel lets a new connection
/// take that 4-tuple over). Answered with a cookie instead, the client's
/// ACK would reach the old socket, and the connection the client thinks
/// open would never be.
#[inline(always)]
fn cookie_for<const IP: usize>(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    (source, len): (&Source, u32),
    now: u64,
) -> i64 {
    // `now` is the tick clock ([`features::tick_now`]), as are the
    // listeners' stamps and the peers' (see [`verified::seen_lately`]).
    let port = u32::from(u16::from_be_bytes([scratch.header[2], scratch.header[3]]));
    let ip = Scratch::ip::<IP>(scratch);
    let th = scratch.header.as_mut_ptr();
    if let Some(seen) = SHIELD_LISTENERS.get(port)
        && now.saturating_sub(*seen) < LISTENER_FRESH_NS
        && !verified::seen_lately(source, now)
    {
        // SAFETY: the IP header and `len` bytes of TCP header lie in the
        // scratch value (the helpers read their memory wherever it is).
        return unsafe {
            if IP == IPV4_LEN {
                bpf_tcp_raw_gen_syncookie_ipv4(ip.cast(), th.cast(), len)
            } else {
                bpf_tcp_raw_gen_syncookie_ipv6(ip.cast(), th.cast(), len)
            }
        };
    }
    let sk = lookup::<IP>(ctx, (ip as usize, th as usize), &mut scratch.tuple);
    if sk.is_null() {
        return -1;
    }
    // SAFETY: a socket the lookup returned, readable until released.
    let cookie = if unsafe { (*sk).state } == BPF_TCP_LISTEN {
        // SAFETY: the socket is held; the headers are in the scratch
        // value, as above.
        unsafe { bpf_tcp_gen_syncookie(sk.cast(), ip.cast(), IP as u32, th.cast(), len) }
    } else {
        -1
    };
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    if cookie >= 0
        && let Some(seen) = SHIELD_LISTENERS.get_ptr_mut(port)
    {
        // SAFETY: an array value; CPUs race on it, and either's write is
        // right.
        unsafe { *seen = now };
    }
    cookie
}

/// Copies the SYN's IP header and its TCP header (`tcp_len` bytes, as its data
/// offset says) into the scratch value: the IP header ends where the TCP
/// header's room begins ([`Scratch::ip`]), zeros after a TCP header with
/// options; returns the TCP header's length, or `None` if it does not fit the
/// frame. The two common lengths are read a word at a time ([`take`]); any
/// other with one `bpf_xdp_load_bytes` (kernel 5.18), which covers every length
/// a header can have, where in the packet the verifier would want each length
/// proven on a branch of its own.
#[inline(always)]
fn copy_headers<const IP: usize>(
    ctx: &XdpContext,
    ip_offset: usize,
    tcp_len: usize,
    scratch: &mut Scratch,
) -> Option<u32> {
    // The two common shapes, read a word at a time: a SYN without options
    // (a flood's, often) and Linux's (20 bytes of options). A helper call
    // and its copy cost more than the words.
    let (at, end, to) = (
        ctx.data() + ip_offset,
        ctx.data_end(),
        Scratch::ip::<IP>(scratch),
    );
    // The options walk ([`offer`]) reads up to the header's 64th byte:
    // zeros after a header with options. Without options, nothing reads
    // past the header.
    let header = scratch.header.as_mut_ptr();
    let taken = match (IP == IPV6_LEN, tcp_len) {
        (false, 20) => take::<{ IPV4_LEN + 20 }>(at, end, to).then_some(20),
        (true, 20) => take::<{ IPV6_LEN + 20 }>(at, end, to).then_some(20),
        (v6, 40) => {
            // SAFETY: bytes 40 to 64 of the header's room.
            zero_words::<3>(unsafe { header.add(40) });
            let taken = if v6 {
                take::<{ IPV6_LEN + 40 }>(at, end, to)
            } else {
                take::<{ IPV4_LEN + 40 }>(at, end, to)
            };
            taken.then_some(40)
        }
        _ => None,
    };
    if taken.is_some() {
        return taken;
    }
    zero_words::<8>(header);
    // 20 and up, as the verifier must see on the register it is given (a
    // bound checked apart is lost); past 60 only for a data offset below 5,
    // which the cookie helper refuses.
    let len = 20 + (tcp_len.wrapping_sub(20) & 0x3f) as u32;
    // SAFETY: the context is the program's; from the IP header's place,
    // the scratch value holds IP bytes and then 88 of TCP header's room,
    // more than the 83 at most asked for.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            ip_offset as u32,
            Scratch::ip::<IP>(scratch).cast(),
            IP as u32 + len,
        )
    };
    (loaded == 0).then_some(len)
}

/// Writes the SYN-ACK's IP and TCP headers, with their checksums, at `out`
/// (the packet, where the SYN's IP header was: IPv4's 20 bytes of IP
/// header or IPv6's 40, then the TCP header, 40 bytes if `LONG`, else 24),
/// from the SYN's headers copied into the scratch value.
///
/// Built a 32-bit word at a time, each word in memory's byte order, summed
/// for the checksums as it is made, and stored once, in the packet: bytes
/// written one by one and read back as words would make every read wait
/// for the writes under it to reach the cache (a store that cannot be
/// forwarded to the load).
#[inline(always)]
fn synack<const IP: usize, const LONG: bool>(
    scratch: &Scratch,
    (cookie, offer, shield): Answer,
    out: *mut u32,
) {
    let tcp_len = if LONG { SYNACK_TCP_LEN } else { SHORT_TCP_LEN };
    let ip = Words(scratch.ip_of::<IP>().cast());
    let syn = Words(scratch.header.as_ptr().cast());
    // The IP header, the addresses swapped; and the pseudo-header's sum of
    // the addresses.
    let (pseudo, mss) = if IP == IPV4_LEN {
        let [len_hi, len_lo] = ((IPV4_LEN + tcp_len) as u16).to_be_bytes();
        // No options, DF, TTL 64; the SYN's destination, then its source.
        let mut header = [
            word([0x45, 0, len_hi, len_lo]),
            word([0, 0, 0x40, 0]),
            word([64, IPPROTO_TCP_NUMBER, 0, 0]),
            ip.get(4),
            ip.get(3),
        ];
        let [sum_a, sum_b] = (!fold_checksum(sum(&header))).to_ne_bytes();
        header[2] = word([64, IPPROTO_TCP_NUMBER, sum_a, sum_b]);
        put_words(out, &header);
        (u64::from(header[3]) + u64::from(header[4]), shield.mss_v4)
    } else {
        let [len_hi, len_lo] = (tcp_len as u16).to_be_bytes();
        // No flow label, hop limit 64; the SYN's destination, then its
        // source.
        let header = [
            word([0x60, 0, 0, 0]),
            word([len_hi, len_lo, IPPROTO_TCP_NUMBER, 64]),
            ip.get(6),
            ip.get(7),
            ip.get(8),
            ip.get(9),
            ip.get(2),
            ip.get(3),
            ip.get(4),
            ip.get(5),
        ];
        put_words(out, &header);
        (sum(&header[2..]), shield.mss_v6)
    };
    // The protocol and the length, as a word of the sum in memory's byte
    // order.
    let proto_len = (u16::from(IPPROTO_TCP_NUMBER) + tcp_len as u16).to_be_bytes();
    let pseudo = pseudo + u64::from(u16::from_ne_bytes(proto_len));
    let seq = u32::from_be(syn.get(1));
    let [window_hi, window_lo] = SYNACK_WINDOW.to_be_bytes();
    // TCP: the ports swapped (the halves of the SYN's first word), the
    // cookie as sequence number. Options: MSS; then, with a timestamp,
    // SACK-permitted (or NOPs), the timestamp, the window scale (or NOPs).
    // Without a timestamp to carry them, the kernel cannot learn of window
    // scaling or SACK from the cookie, so neither is offered (and the
    // zeros past the short header add nothing to the sum).
    let mut tcp = [
        syn.get(0).rotate_left(16),
        cookie.to_be(),
        seq.wrapping_add(1).to_be(),
        word([
            ((tcp_len / 4) as u8) << 4,
            TCP_SYN | TCP_ACK,
            window_hi,
            window_lo,
        ]),
        0,
        (0x0204_0000 | (mss & 0xffff)).to_be(),
        0,
        0,
        0,
        0,
    ];
    if let (Some(tsecr), true) = (offer.tsval, LONG) {
        let sack = offer.sack && shield.flags & shield_flags::SACK != 0;
        let wscale = match offer.wscale {
            Some(w) if shield.flags & shield_flags::WSCALE != 0 => Some(w.min(14)),
            _ => None,
        };
        tcp[6] = (if sack { 0x0402_080a_u32 } else { 0x0101_080a }).to_be();
        // The coarse clock, read only for an answer that carries a
        // timestamp: the kernel's TCP clock is the monotonic one, and the
        // timestamp keeps 64 ms steps (see [`timestamp`]).
        tcp[7] = timestamp(wscale, sack, features::coarse_now()).to_be();
        tcp[8] = tsecr.to_be();
        tcp[9] = (if wscale.is_some() {
            0x0103_0300 | (shield.wscale & 0xff)
        } else {
            0x0101_0101
        })
        .to_be();
    }
    let [sum_a, sum_b] = (!fold_checksum(pseudo + sum(&tcp))).to_ne_bytes();
    tcp[4] = word([sum_a, sum_b, 0, 0]);
    // SAFETY: the caller's packet holds IP bytes of IP header and then
    // `tcp_len` of TCP header at `out`; IP is a multiple of 4.
    let out = unsafe { out.add(IP / 4) };
    if LONG {
        put_words(out, &tcp);
    } else {
        put_words(out, &[tcp[0], tcp[1], tcp[2], tcp[3], tcp[4], tcp[5]]);
    }
}

/// What a SYN-ACK answers with: the cookie, what the SYN offered, the
/// shield's settings.
type Answer<'a> = (u32, Offer, &'a Shield);

/// 32-bit words of the scratch value, read at 4-aligned offsets.
#[derive(Clone, Copy)]
struct Words(*const u32);

impl Words {
    /// Word `i`, as its bytes lie in memory.
    #[inline(always)]
    fn get(self, i: usize) -> u32 {
        // SAFETY: the callers read words of the buffers they made this
        // from (the IP header: 5 or 10 words, `header`: 22), 4-aligned in
        // the 8-aligned scratch value. Volatile, so that LLVM reads a word and does not
        // split it into bytes.
        unsafe { core::ptr::read_volatile(self.0.add(i)) }
    }
}

/// The word whose bytes in memory are `bytes`.
#[inline(always)]
fn word(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// Writes `words` at `to`, a word at a time.
#[inline(always)]
fn put_words<const N: usize>(to: *mut u32, words: &[u32; N]) {
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the caller's packet holds N words at `to` (see
        // [`turn_around`]).
        unsafe { core::ptr::write_volatile(to.add(i), *w) };
    }
}

/// The one's-complement sum of `words` (each as its bytes lie in memory),
/// unfolded. Summed here: `bpf_csum_diff` (4.6) would cost a helper call
/// and a `csum_partial` for a few words.
#[inline(always)]
fn sum(words: &[u32]) -> u64 {
    words.iter().map(|w| u64::from(*w)).sum()
}

/// Zeroes `WORDS` 8-byte words at `at` (8-aligned) with word stores: on
/// BPF, `[0; N]` and `fill` become calls to compiler-builtins' `memset`,
/// which stores a byte at a time.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the callers' buffers are 8-aligned: offsets of 8 in the 8-aligned scratch value"
)]
fn zero_words<const WORDS: usize>(at: *mut u8) {
    for i in 0..WORDS {
        // SAFETY: the caller's buffer holds WORDS aligned words at `at`;
        // volatile, so that LLVM does not make a `memset` of them again.
        unsafe { core::ptr::write_volatile(at.add(8 * i).cast::<u64>(), 0) };
    }
}

/// The SYN-ACK's timestamp as the kernel's cookie path makes it
/// (`cookie_init_timestamp`): its clock in milliseconds (the monotonic
/// clock, which the kernel's TCP clock reads; `now` may come from the
/// coarse clock, which is never ahead of it), the low bits replaced by the
/// client's window scale and SACK, and never ahead of the clock.
#[inline(always)]
fn timestamp(wscale: Option<u8>, sack: bool, now: u64) -> u32 {
    let now = (now / 1_000_000) as u32;
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

/// Resizes the frame to the Ethernet header (and VLAN tags) at its start
/// and the SYN-ACK after them (`IP` bytes of IP header, then the TCP
/// header, long if `LONG`, else short), writes the SYN-ACK there
/// ([`synack`]), and swaps the MAC addresses: the frame goes back out
/// where it came in.
#[inline(always)]
fn turn_around<const IP: usize, const LONG: bool>(
    ctx: &XdpContext,
    ip_offset: usize,
    scratch: &Scratch,
    answer: Answer,
) -> Verdict {
    let ip_len = IP + if LONG { SYNACK_TCP_LEN } else { SHORT_TCP_LEN };
    // Tags make the IP header start at 14, 18 or 22.
    let ip_offset = ip_offset & 0x1f;
    let len = ctx.data_end() - ctx.data();
    // A frame of the Ethernet minimum or less is not shrunk: a shorter
    // answer would be padded back to the minimum on the wire, and the
    // bytes past its IP length are padding to the receiver (a flood's
    // SYNs, without options, come in such frames).
    let wanted = (ip_offset + ip_len).max(len.min(ETH_ZLEN));
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
    let at = start + ip_offset;
    if start + 12 > end || at + ip_len > end {
        return SPOILED;
    }
    // SAFETY: the MAC addresses lie in the packet, checked just above;
    // read and written as 16-bit words (the frame starts 2-aligned, as
    // the kernel lays packets out), where a copy of bytes is a load and a
    // store for each.
    unsafe {
        let macs = core::ptr::read(start as *const [u16; 6]);
        core::ptr::write(
            start as *mut [u16; 6],
            [macs[3], macs[4], macs[5], macs[0], macs[1], macs[2]],
        );
    }
    // `at` is the IP header, 4-aligned as the kernel lays packets out (the
    // Ethernet header and its tags start `NET_IP_ALIGN`, 2 bytes, into a
    // word, and the verifier checks packet accesses on that assumption
    // where alignment is strict); where a driver's frames start elsewhere,
    // the stores are unaligned, which x86-64 and arm64 take as they are.
    synack::<IP, LONG>(scratch, answer, at as *mut u32);
    ANSWERED
}

/// Copies the `N` bytes (a multiple of 4) of the packet at `at` to `to`
/// (4-aligned in the scratch value), if they lie before `end`: a 32-bit
/// word at a time, as [`synack`] writes the answer (and on the same
/// alignment).
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the packet's IP header (see `turn_around`) and the scratch value's"
)]
fn take<const N: usize>(at: usize, end: usize, to: *mut u8) -> bool {
    if at + N > end {
        return false;
    }
    let from = at as *const u32;
    let to = to.cast::<u32>();
    for i in 0..N / 4 {
        // SAFETY: the N bytes lie in the packet, checked just above, and
        // the scratch value holds them at `to`; volatile, so that LLVM does
        // not make a byte-wise `memcpy` of the loop.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read(from.add(i))) };
    }
    true
}
