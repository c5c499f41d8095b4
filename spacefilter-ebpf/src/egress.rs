//! The egress program: return routability. Attached at TC egress of each
//! interface the XDP program filters, it records the peers the host sends
//! to as verified sources ([`crate::verified`]): a forged source never
//! receives the host's traffic, so a peer the host talks to on a
//! connection, or answers over UDP, is real.
//!
//! Not every frame the host sends proves its peer. A SYN-ACK goes to
//! whoever sent a SYN (the kernel's own cookies answer forged SYNs), and a
//! reset to whoever sent a stray segment: neither counts. Every other TCP
//! segment belongs to a connection the peer took part in (a connection
//! from a cookie needs the peer's ACK of it). A UDP datagram counts: the
//! host sends it to a peer it chose or answers one that wrote first, which
//! a forged source can make it do only through the shield's small budget
//! for unverified sources; such a source is on probation at first, and
//! while unverified datagrams come faster than that budget (a flood), an
//! answer verifies nobody new ([`verified::prove`]).
//!
//! The program only reads: it always lets the frame go (`TC_ACT_UNSPEC`,
//! which with TCX is `TCX_NEXT`).
//!
//! Kernel: `BPF_PROG_TYPE_SCHED_CLS` with direct action on a `clsact`
//! qdisc (4.5), or TCX links (6.6); `bpf_ktime_get_coarse_ns` (5.11, where
//! the kernel has it; else `bpf_ktime_get_ns`, 4.1).

use aya_ebpf::programs::TcContext;
use spacefilter_common::verified_how;

use crate::{
    features,
    maps::VERIFY_SETTINGS,
    parse::{ETH_P_IPV4, IPPROTO_TCP_NUMBER, IPPROTO_UDP_NUMBER, Source, VLAN_TPIDS},
    verified,
};

const ETH_P_IPV6: u16 = 0x86dd;
/// Let the frame go on: the next program, or the qdisc's default.
const TC_ACT_UNSPEC: i32 = -1;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

#[inline(always)]
pub(crate) fn record(ctx: &TcContext) -> i32 {
    if VERIFY_SETTINGS.get(0).is_some_and(|s| s.record != 0)
        && let Some((peer, how)) = peer(ctx)
    {
        // The coarse clock: every frame the host sends reads it, and a
        // proof of seconds may start a tick early.
        verified::prove(&verified::key(&peer), how, features::coarse_now());
    }
    TC_ACT_UNSPEC
}

/// Reads `N` bytes at `offset` of the frame, if they lie in it.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let at = ctx.data() + offset;
    if at + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the N bytes lie in the frame, checked just above.
    Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
}

/// The frame's destination, if the frame proves it real, and the proof.
#[inline(always)]
fn peer(ctx: &TcContext) -> Option<(Source, u32)> {
    let mut offset = 12;
    let mut ethertype = 0;
    // Up to two VLAN tags (a device that offloads tagging keeps them out
    // of the frame).
    for _ in 0..3 {
        ethertype = u16::from_be_bytes(read::<2>(ctx, offset)?);
        offset += 2;
        if !VLAN_TPIDS.contains(&ethertype) {
            break;
        }
        offset += 2;
    }
    let (peer, proto, l4) = match ethertype {
        ETH_P_IPV4 => {
            let ip = read::<20>(ctx, offset)?;
            if ip[0] >> 4 != 4 || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                // Not IPv4, or a later fragment: no transport header.
                return None;
            }
            let addr = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
            (
                Source::v4(addr),
                ip[9],
                offset + usize::from(ip[0] & 0x0f) * 4,
            )
        }
        ETH_P_IPV6 => {
            let ip = read::<40>(ctx, offset)?;
            let mut hi = [0u8; 8];
            hi.copy_from_slice(&ip[24..32]);
            let mut lo = [0u8; 8];
            lo.copy_from_slice(&ip[32..40]);
            let peer = Source {
                v6: true,
                hi: u64::from_be_bytes(hi),
                lo: u64::from_be_bytes(lo),
            };
            // The transport header right after the fixed header only: the
            // host's own traffic carries no extension headers to skip.
            (peer, ip[6], offset + 40)
        }
        _ => return None,
    };
    match proto {
        IPPROTO_UDP_NUMBER => Some((peer, verified_how::REPLIED)),
        IPPROTO_TCP_NUMBER => {
            let flags = read::<1>(ctx, (l4 & 0x7f) + 13)?[0];
            (flags & (TCP_SYN | TCP_RST) == 0).then_some((peer, verified_how::ESTABLISHED))
        }
        _ => None,
    }
}
