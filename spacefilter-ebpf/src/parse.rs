//! The packet parser: a cursor over the frame that bounds-checks every read
//! against `data_end` (as the verifier demands) and, for the layers above
//! the IP header, against the IP packet's own length.
//!
//! Parsing is split in two so that the source address is known before
//! anything after the IP header is read: [`network`] reads Ethernet, VLAN
//! tags and the fixed IP header; [`transport`] walks IPv6 extension headers
//! and checks the TCP/UDP/ICMP header. The verdict pipeline consults the
//! allow and block lists in between, so a blocked source is dropped however
//! odd the rest of its frame is.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use spacefilter_common::Reason;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// `802.1Q` and `802.1ad` (`QinQ`) tags walked. A third tag is malformed: no
/// standard stacks more than two, and no host decodes it.
const MAX_VLAN_TAGS: usize = 2;
/// IPv4's "more fragments" flag, in the byte that starts the flags.
const IP_MF: u8 = 0x20;
/// IPv6 extension headers walked to find the transport header. A chain
/// still going after them is malformed: the header rules and the guards
/// could not see what it carries, while the host would deliver it. The
/// source has been checked by then, so an allowlisted source's frame
/// passes and a blocked one's is dropped as blocked.
const MAX_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// The frame, as the program sees it: the bounds of the packet data.
pub(crate) struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub(crate) fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Length of the frame in bytes.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Copies `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: the N bytes at `offset` lie inside the packet, checked
        // just above; `[u8; N]` has alignment 1.
        Some(unsafe { core::ptr::read((self.start + offset) as *const [u8; N]) })
    }

    /// Copies the frame's first bytes, as many as fit (at most 128), into
    /// `out`; returns how many.
    ///
    /// One `bpf_xdp_load_bytes` (kernel 5.18) copies whatever length the
    /// verifier sees bounded, with the kernel's `memcpy`. A copy made here
    /// would go a byte at a time (LLVM knows no alignment of packet data,
    /// and makes the copy a byte loop), with each length proven against the
    /// packet's end on a branch of its own.
    #[inline(always)]
    pub(crate) fn copy_head(&self, ctx: &XdpContext, out: &mut [u8; 128]) -> usize {
        let len = self.len();
        if len == 0 {
            return 0;
        }
        // 1 to 128, as the verifier must see on the register the helper is
        // given.
        let len = ((len.min(128) - 1) & 127) + 1;
        // SAFETY: the context is the program's; `out` holds 128 bytes, and
        // `len` is at most 128.
        #[expect(clippy::cast_possible_truncation, reason = "at most 128")]
        let loaded = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, out.as_mut_ptr().cast(), len as u32) };
        if loaded == 0 { len } else { 0 }
    }

    /// Copies `N` bytes at `offset` that must lie before `limit` (the end of
    /// the IP packet); a header that does not fit is malformed.
    #[inline(always)]
    fn read_within<const N: usize>(&self, offset: usize, limit: usize) -> Result<[u8; N], Reason> {
        // The packet bound first: checked after the limit, which the IP
        // header already held to the frame, the compiler would drop it as
        // implied, and the verifier needs it.
        let bytes = self.read(offset).ok_or(Reason::Malformed)?;
        if offset + N > limit {
            return Err(Reason::Malformed);
        }
        Ok(bytes)
    }
}

/// The source address that the lists are keyed on, as integers read
/// big-endian (an IPv6 address as its two halves, an IPv4 address in `lo`):
/// a register or two rather than a byte per stack slot. A struct whose
/// fields are always written, not an enum: LLVM may spill an enum's
/// payload on a path where it was never written, and the verifier rejects
/// the read of an uninitialised register.
#[derive(Clone, Copy)]
pub(crate) struct Source {
    pub(crate) v6: bool,
    pub(crate) hi: u64,
    pub(crate) lo: u64,
}

impl Source {
    /// An IPv4 source.
    #[inline(always)]
    pub(crate) const fn v4(addr: u32) -> Self {
        Self {
            v6: false,
            hi: 0,
            lo: addr as u64,
        }
    }

    /// The IPv4 address of an IPv4 source.
    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an IPv4 source keeps it in the low half"
    )]
    pub(crate) const fn v4_addr(&self) -> u32 {
        self.lo as u32
    }
}

/// Where the parse resumes after the list lookups.
#[derive(Clone, Copy)]
pub(crate) struct Transport {
    /// IPv4 protocol, or IPv6 next header.
    proto: u8,
    /// Offset of the header named by `proto`.
    offset: usize,
    /// Offset one past the IP packet (frames may carry Ethernet padding).
    ip_end: usize,
    /// IPv4 fragment with a non-zero offset: it carries no transport header.
    later_fragment: bool,
    /// IPv4: the first fragment of several (offset 0, more to come).
    first_fragment: bool,
    /// IPv4: the datagram's identification.
    fragment_id: u32,
    /// IPv6: extension headers may follow.
    v6: bool,
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

/// Reads the `T` (an integer of 1, 2, 4 or 8 bytes) at packet address
/// `at`, in network byte order as stored, with one load: for the
/// Ethernet type and an IPv6 source's two halves. BPF has no unaligned
/// load, so LLVM splits a multi-byte read of a copied byte array into a
/// load, a shift and an or a byte, with spills: an IPv6 frame's parse and
/// lookup measured 10 to 18 % less with its source read as two words.
/// Lengths and other fields the parse compares stay put together from
/// bytes: the verifier then knows they fit in 16 bits, where a swapped
/// 16-bit load is any 64-bit value to it, and the bounds derived from such
/// a length multiply the states it walks after (IPv4's fields and address
/// read as words cost it a fifth more instructions; these loads, 3 %).
///
/// # Safety
///
/// The caller has checked that the bytes lie in the packet. In memory the
/// address may not be `T`-aligned (drivers place packet data as they
/// will); what decides on BPF is the verifier, which checks alignment
/// against its own model of packet data (starting at `NET_IP_ALIGN`, 2,
/// so that the IP header is 4-aligned, as it is after 0 to 2 VLAN tags)
/// on kernels that enforce it, and the JITs, which load from any address
/// elsewhere: the kernel's own XDP programs in C read their headers the
/// same way.
#[inline(always)]
unsafe fn load<T: Copy>(at: usize) -> T {
    // SAFETY: as the caller promises.
    unsafe { core::ptr::read(at as *const T) }
}

/// Ethernet, VLAN tags and the fixed IP header. `Err` carries the verdict
/// for frames that go no further: not IP, or malformed.
#[inline(always)]
pub(crate) fn network(frame: &Frame) -> Result<(Source, Transport), Reason> {
    if frame.start + ETH_HLEN > frame.end {
        return Err(Reason::Malformed);
    }
    // SAFETY: the Ethernet header lies in the packet, checked above.
    let mut ethertype = u16::from_be(unsafe { load::<u16>(frame.start + 12) });
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if frame.start + offset + 4 > frame.end {
            return Err(Reason::Malformed);
        }
        // SAFETY: the tag lies in the packet, checked just above.
        ethertype = u16::from_be(unsafe { load::<u16>(frame.start + offset + 2) });
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => ipv4(frame, offset),
        ETH_P_IPV6 => ipv6(frame, offset),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::Malformed),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, offset: usize) -> Result<(Source, Transport), Reason> {
    let h: [u8; 20] = frame.read(offset).ok_or(Reason::Malformed)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(be16(h[2], h[3]));
    if header_len < 20 || total_len < header_len || offset + total_len > frame.len() {
        return Err(Reason::Malformed);
    }
    let fragment_offset = be16(h[6] & 0x1f, h[7]);
    Ok((
        Source::v4(u32::from_be_bytes([h[12], h[13], h[14], h[15]])),
        Transport {
            proto: h[9],
            offset: offset + header_len,
            ip_end: offset + total_len,
            later_fragment: fragment_offset != 0,
            first_fragment: fragment_offset == 0 && h[6] & IP_MF != 0,
            fragment_id: u32::from(be16(h[4], h[5])),
            v6: false,
        },
    ))
}

#[inline(always)]
fn ipv6(frame: &Frame, offset: usize) -> Result<(Source, Transport), Reason> {
    let at = frame.start + offset;
    if at + 40 > frame.end {
        return Err(Reason::Malformed);
    }
    // SAFETY: the 40 bytes of the fixed header lie in the packet, checked
    // just above.
    let (version, payload_len, next_header, hi, lo) = unsafe {
        (
            load::<u8>(at),
            be16(load::<u8>(at + 4), load::<u8>(at + 5)),
            load::<u8>(at + 6),
            u64::from_be(load::<u64>(at + 8)),
            u64::from_be(load::<u64>(at + 16)),
        )
    };
    if version >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let ip_end = offset + 40 + usize::from(payload_len);
    if ip_end > frame.len() {
        return Err(Reason::Malformed);
    }
    Ok((
        Source { v6: true, hi, lo },
        Transport {
            proto: next_header,
            offset: offset + 40,
            ip_end,
            later_fragment: false,
            first_fragment: false,
            fragment_id: 0,
            v6: true,
        },
    ))
}

/// What the later stages need of the transport header.
#[derive(Clone, Copy, Default)]
pub(crate) struct L4 {
    /// IPv4 protocol or IPv6 next header after the extension headers.
    pub(crate) proto: u8,
    /// Whether the ports below were read (TCP and UDP, first fragments).
    pub(crate) ports: bool,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    /// TCP flags, 0 for other protocols.
    pub(crate) tcp_flags: u8,
    /// Whether the packet is a fragment ([`fragment`]), and which.
    pub(crate) fragment: u8,
    /// The fragmented datagram's identification (IPv4: 16 bits, IPv6: 32).
    pub(crate) fragment_id: u32,
}

/// [`L4::fragment`]: which part of a fragmented datagram a packet is.
pub(crate) mod fragment {
    /// Not a fragment (or an IPv6 atomic fragment: offset 0, no more).
    pub(crate) const NONE: u8 = 0;
    /// The first fragment: offset 0, more to come; it carries the ports.
    pub(crate) const FIRST: u8 = 1;
    /// A later fragment: no transport header.
    pub(crate) const LATER: u8 = 2;
}

impl L4 {
    const fn other(proto: u8) -> Self {
        Self {
            proto,
            ports: false,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            fragment: fragment::NONE,
            fragment_id: 0,
        }
    }

    /// A later fragment of datagram `id`.
    const fn later_fragment(proto: u8, id: u32) -> Self {
        Self {
            fragment: fragment::LATER,
            fragment_id: id,
            ..Self::other(proto)
        }
    }
}

pub(crate) const IPPROTO_TCP_NUMBER: u8 = IPPROTO_TCP;
pub(crate) const IPPROTO_UDP_NUMBER: u8 = IPPROTO_UDP;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const ETH_P_IPV4: u16 = ETH_P_IP;
pub(crate) const VLAN_TPIDS: [u16; 2] = [ETH_P_8021Q, ETH_P_8021AD];
pub(crate) const TCP_ACK: u8 = 0x10;

/// Everything after the fixed IP header: the IPv6 extension chain and the
/// transport header. `Ok` means the frame is well formed as far as it was
/// walked.
#[inline(always)]
pub(crate) fn transport(frame: &Frame, t: &Transport) -> Result<L4, Reason> {
    let Transport {
        proto,
        offset,
        ip_end,
        later_fragment,
        first_fragment,
        fragment_id,
        v6,
    } = *t;
    if later_fragment {
        return Ok(L4::later_fragment(proto, fragment_id));
    }
    let mut l4 = headers(frame, proto, offset, ip_end, v6)?;
    if first_fragment {
        l4.fragment = fragment::FIRST;
        l4.fragment_id = fragment_id;
    }
    Ok(l4)
}

/// The IPv6 extension chain (if `v6`) and the transport header at
/// `offset`, named by `proto`.
#[inline(always)]
fn headers(
    frame: &Frame,
    mut proto: u8,
    mut offset: usize,
    ip_end: usize,
    v6: bool,
) -> Result<L4, Reason> {
    let mut first_fragment = None;
    if v6 {
        for _ in 0..MAX_EXT_HEADERS {
            match proto {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let e: [u8; 2] = frame.read_within(offset, ip_end)?;
                    proto = e[0];
                    offset += (usize::from(e[1]) + 1) * 8;
                }
                IPPROTO_AH => {
                    let e: [u8; 2] = frame.read_within(offset, ip_end)?;
                    proto = e[0];
                    offset += (usize::from(e[1]) + 2) * 4;
                }
                IPPROTO_FRAGMENT => {
                    let e: [u8; 8] = frame.read_within(offset, ip_end)?;
                    let id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                    if be16(e[2], e[3]) >> 3 != 0 {
                        // A later fragment: no transport header to check.
                        return Ok(L4::later_fragment(e[0], id));
                    }
                    if e[3] & 1 != 0 {
                        first_fragment = Some(id);
                    }
                    proto = e[0];
                    offset += 8;
                }
                _ => break,
            }
            if offset > ip_end {
                return Err(Reason::Malformed);
            }
        }
        // A chain still going after MAX_EXT_HEADERS is malformed; the
        // transport header after exactly MAX_EXT_HEADERS is checked below.
        if matches!(
            proto,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) {
            return Err(Reason::Malformed);
        }
    }
    let mut l4 = match proto {
        IPPROTO_TCP => {
            let h: [u8; 20] = frame.read_within(offset, ip_end)?;
            let data_offset = usize::from(h[12] >> 4) * 4;
            if data_offset < 20 || offset + data_offset > ip_end {
                return Err(Reason::Malformed);
            }
            L4 {
                ports: true,
                src_port: be16(h[0], h[1]),
                dst_port: be16(h[2], h[3]),
                tcp_flags: h[13],
                ..L4::other(proto)
            }
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = frame.read_within(offset, ip_end)?;
            L4 {
                ports: true,
                src_port: be16(h[0], h[1]),
                dst_port: be16(h[2], h[3]),
                ..L4::other(proto)
            }
        }
        IPPROTO_ICMP if !v6 => {
            let _: [u8; 8] = frame.read_within(offset, ip_end)?;
            L4::other(proto)
        }
        IPPROTO_ICMPV6 if v6 => {
            let _: [u8; 8] = frame.read_within(offset, ip_end)?;
            L4::other(proto)
        }
        _ => L4::other(proto),
    };
    if let Some(id) = first_fragment {
        l4.fragment = fragment::FIRST;
        l4.fragment_id = id;
    }
    Ok(l4)
}
