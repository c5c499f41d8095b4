//! A userspace model of the XDP program's decision, written from the
//! policy rather than from the program, to check the program against.
//!
//! Fields are extracted with etherparse's header slices. Where etherparse
//! is stricter or laxer than the policy, the policy wins and the field is
//! read raw; each such place says so.
//!
//! The policy, in order:
//! 1. Ethernet (14 bytes), then up to two VLAN tags (802.1Q or 802.1ad). A
//!    truncated tag, or a third tag, is malformed. Not IPv4 or IPv6: not IP.
//! 2. The fixed IP header must be there and consistent with the frame
//!    (which may be longer: Ethernet padding); else malformed.
//! 3. The source address: on the allowlist → allowlisted; else on the
//!    blocklist → blocked. Nothing after the fixed IP header matters then.
//! 4. Otherwise, within the IP packet: IPv4 later fragments pass; IPv6
//!    walks up to 8 extension headers (a later fragment passes, a chain
//!    still going after 8 is malformed); TCP, UDP, ICMP (in IPv4) and
//!    `ICMPv6` (in IPv6) headers must fit. Anything that does not fit is
//!    malformed.
//!
//! [`pipeline`] goes on from there: header rules, the reflection guard and
//! the SYN guard and rate limiter in the states where they do not depend
//! on time.

pub mod pipeline;

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv6Header, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeader,
    TcpHeaderSlice, UdpHeaderSlice, ip_number,
};
use spacefilter::{List, Prefix, Reason};

/// VLAN tags walked; a third is malformed.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked; a longer chain is malformed.
pub const MAX_EXT_HEADERS: usize = 8;

/// What the stages after the lists see of the transport header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4 {
    /// IPv4 protocol, or IPv6 next header after the extension headers (of
    /// a later fragment: the fragment header's next header).
    pub proto: u8,
    /// Whether the ports were read: TCP and UDP, not in later fragments.
    pub ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
    /// The TCP header's flags byte (CWR and ECE included); 0 for other
    /// protocols.
    pub tcp_flags: u8,
    /// Which part of a fragmented datagram the packet is.
    pub fragment: Fragment,
}

/// Which part of a fragmented datagram a packet is, with the datagram's
/// identification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment (or an IPv6 atomic fragment: offset 0, no more).
    #[default]
    None,
    /// Offset 0, more to come: it carries the ports.
    First(u32),
    /// A non-zero offset.
    Later(u32),
}

impl L4 {
    fn other(proto: IpNumber) -> Self {
        Self {
            proto: proto.0,
            ..Self::default()
        }
    }
}

/// The network layer of an IP frame: its source and what follows the fixed
/// IP header.
#[derive(Clone, Copy, Debug)]
pub struct Network<'a> {
    pub source: IpAddr,
    upper: Upper<'a>,
}

#[derive(Clone, Copy, Debug)]
enum Upper<'a> {
    V4 {
        protocol: IpNumber,
        /// A fragment with a non-zero offset.
        later_fragment: bool,
        /// Offset 0 with more fragments to come.
        first_fragment: bool,
        identification: u16,
        /// From the end of the header (options included) to the end of the
        /// IP packet.
        data: &'a [u8],
    },
    V6 {
        next_header: IpNumber,
        /// From the end of the fixed header to the end of the IP packet.
        data: &'a [u8],
    },
}

/// The decision for `frame` with these lists.
#[must_use]
pub fn decide(frame: &[u8], allow: &[Prefix], block: &[Prefix]) -> Reason {
    let network = match network(frame) {
        Ok(network) => network,
        Err(reason) => return reason,
    };
    if allow.iter().any(|p| p.contains(network.source)) {
        return Reason::Allowlisted;
    }
    if block.iter().any(|p| p.contains(network.source)) {
        return Reason::Blocked;
    }
    match network.transport() {
        Ok(_) => Reason::Passed,
        Err(reason) => reason,
    }
}

/// The XDP action the program returns for `reason`.
#[must_use]
pub fn action(reason: Reason) -> u32 {
    if reason.drops() { XDP_DROP } else { XDP_PASS }
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The list entry that counts the hit when `source` matches `list`: the
/// longest prefix containing it.
#[must_use]
pub fn hit_entry(source: IpAddr, prefixes: &[Prefix]) -> Option<Prefix> {
    prefixes
        .iter()
        .filter(|p| p.contains(source))
        .max_by_key(|p| p.len())
        .copied()
}

/// The entry that counts a hit for `frame`, if its verdict came from a list.
#[must_use]
pub fn decide_hit(frame: &[u8], allow: &[Prefix], block: &[Prefix]) -> Option<(List, Prefix)> {
    let source = network(frame).ok()?.source;
    if let Some(p) = hit_entry(source, allow) {
        return Some((List::Allow, p));
    }
    hit_entry(source, block).map(|p| (List::Block, p))
}

impl Network<'_> {
    /// The IPv6 extension chain and the transport header, for a source on
    /// no list: what the header rules and the guards see, or malformed.
    pub fn transport(&self) -> Result<L4, Reason> {
        transport(self.upper)
    }
}

fn is_vlan(ether_type: EtherType) -> bool {
    matches!(
        ether_type,
        EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING
    )
}

/// Ethernet, VLAN tags and the fixed IP header. `Err` is the final reason
/// for frames that go no further.
pub fn network(frame: &[u8]) -> Result<Network<'_>, Reason> {
    let (eth, mut rest) = Ethernet2Header::from_slice(frame).map_err(|_| Reason::Malformed)?;
    let mut ether_type = eth.ether_type;
    let mut tags = 0;
    while is_vlan(ether_type) {
        if tags == MAX_VLAN_TAGS {
            return Err(Reason::Malformed);
        }
        // etherparse's tag is the 4 bytes after the TPID: TCI and the
        // ethertype that follows.
        let (tag, after) = SingleVlanHeader::from_slice(rest).map_err(|_| Reason::Malformed)?;
        ether_type = tag.ether_type;
        rest = after;
        tags += 1;
    }
    match ether_type {
        EtherType::IPV4 => ipv4(rest),
        EtherType::IPV6 => ipv6(rest),
        _ => Err(Reason::NotIp),
    }
}

/// `packet` runs from the IPv4 header to the end of the frame.
fn ipv4(packet: &[u8]) -> Result<Network<'_>, Reason> {
    // etherparse checks the 20 bytes, the version, IHL >= 5 and that the
    // options fit in the frame. The last is implied by the policy's length
    // rules below, so it adds no verdict of its own.
    let header = Ipv4HeaderSlice::from_slice(packet).map_err(|_| Reason::Malformed)?;
    let header_len = header.slice().len();
    // etherparse's header slice does not check the total length; the
    // policy: at least the header, at most the frame.
    let total_len = usize::from(header.total_len());
    if total_len < header_len || total_len > packet.len() {
        return Err(Reason::Malformed);
    }
    Ok(Network {
        source: header.source_addr().into(),
        upper: Upper::V4 {
            protocol: header.protocol(),
            later_fragment: header.fragments_offset().value() != 0,
            first_fragment: header.fragments_offset().value() == 0 && header.more_fragments(),
            identification: header.identification(),
            data: &packet[header_len..total_len],
        },
    })
}

/// `packet` runs from the IPv6 header to the end of the frame.
fn ipv6(packet: &[u8]) -> Result<Network<'_>, Reason> {
    // etherparse checks the 40 bytes and the version.
    let header = Ipv6HeaderSlice::from_slice(packet).map_err(|_| Reason::Malformed)?;
    let end = Ipv6Header::LEN + usize::from(header.payload_length());
    let data = packet.get(Ipv6Header::LEN..end).ok_or(Reason::Malformed)?;
    Ok(Network {
        source: header.source_addr().into(),
        upper: Upper::V6 {
            next_header: header.next_header(),
            data,
        },
    })
}

fn is_ext(number: IpNumber) -> bool {
    matches!(
        number,
        ip_number::IPV6_HOP_BY_HOP
            | ip_number::IPV6_ROUTE
            | ip_number::IPV6_DEST_OPTIONS
            | ip_number::IPV6_FRAG
            | ip_number::AUTH
    )
}

/// Everything after the fixed IP header, for a source on no list. Every
/// slice here ends where the IP packet ends, so a header that runs past it
/// fails to parse.
fn transport(upper: Upper<'_>) -> Result<L4, Reason> {
    match upper {
        Upper::V4 {
            protocol,
            later_fragment: true,
            identification,
            ..
        } => Ok(L4 {
            fragment: Fragment::Later(u32::from(identification)),
            ..L4::other(protocol)
        }),
        Upper::V4 {
            protocol,
            data,
            first_fragment,
            identification,
            ..
        } => {
            let mut l4 = l4(protocol, data, false)?;
            if first_fragment {
                l4.fragment = Fragment::First(u32::from(identification));
            }
            Ok(l4)
        }
        Upper::V6 {
            mut next_header,
            mut data,
        } => {
            let mut first = None;
            for _ in 0..MAX_EXT_HEADERS {
                match next_header {
                    ip_number::IPV6_HOP_BY_HOP
                    | ip_number::IPV6_ROUTE
                    | ip_number::IPV6_DEST_OPTIONS => {
                        // Needs 8 bytes, then (len + 1) * 8: the policy's
                        // "2 bytes readable, then the advanced offset
                        // within the packet" fails on exactly the same
                        // slices, as every such header is at least 8 bytes.
                        let ext = Ipv6RawExtHeaderSlice::from_slice(data)
                            .map_err(|_| Reason::Malformed)?;
                        next_header = ext.next_header();
                        data = &data[ext.slice().len()..];
                    }
                    ip_number::IPV6_FRAG => {
                        let frag = Ipv6FragmentHeaderSlice::from_slice(data)
                            .map_err(|_| Reason::Malformed)?;
                        if frag.fragment_offset().value() != 0 {
                            return Ok(L4 {
                                fragment: Fragment::Later(frag.identification()),
                                ..L4::other(frag.next_header())
                            });
                        }
                        if frag.more_fragments() {
                            first = Some(frag.identification());
                        }
                        next_header = frag.next_header();
                        data = &data[frag.slice().len()..];
                    }
                    ip_number::AUTH => {
                        // Raw: etherparse's IpAuthHeaderSlice wants 12
                        // bytes and rejects a payload length of 0, which
                        // the policy takes as an 8-byte header.
                        let [next, len, ..] = *data else {
                            return Err(Reason::Malformed);
                        };
                        let size = (usize::from(len) + 2) * 4;
                        data = data.get(size..).ok_or(Reason::Malformed)?;
                        next_header = IpNumber(next);
                    }
                    _ => break,
                }
            }
            if is_ext(next_header) {
                // Still going after MAX_EXT_HEADERS: malformed.
                return Err(Reason::Malformed);
            }
            let mut l4 = l4(next_header, data, true)?;
            if let Some(id) = first {
                l4.fragment = Fragment::First(id);
            }
            Ok(l4)
        }
    }
}

/// The transport header at the start of `data` (which ends with the IP
/// packet) must fit.
fn l4(protocol: IpNumber, data: &[u8], v6: bool) -> Result<L4, Reason> {
    match protocol {
        // 20 bytes, data offset at least 5 and the options within the
        // packet: what etherparse checks.
        ip_number::TCP => {
            let tcp = TcpHeaderSlice::from_slice(data).map_err(|_| Reason::Malformed)?;
            Ok(L4 {
                proto: protocol.0,
                ports: true,
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                tcp_flags: tcp.slice()[13],
                fragment: Fragment::None,
            })
        }
        ip_number::UDP => {
            let udp = UdpHeaderSlice::from_slice(data).map_err(|_| Reason::Malformed)?;
            Ok(L4 {
                proto: protocol.0,
                ports: true,
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
                tcp_flags: 0,
                fragment: Fragment::None,
            })
        }
        // Raw lengths: etherparse's ICMP slices also check type-specific
        // lengths (ICMPv4 timestamps) and a maximum (ICMPv6), which the
        // policy does not.
        ip_number::ICMP if !v6 && data.len() < Icmpv4Header::MIN_LEN => Err(Reason::Malformed),
        ip_number::IPV6_ICMP if v6 && data.len() < Icmpv6Header::MIN_LEN => Err(Reason::Malformed),
        _ => Ok(L4::other(protocol)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{Ext, Packet, v4, v6};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn decides_the_basics() {
        let tcp4 = Packet::ipv4(v4(0, 1), v4(0, 2)).tcp(1, 2).build();
        assert_eq!(decide(tcp4.bytes(), &[], &[]), Reason::Passed);
        assert_eq!(
            decide(tcp4.bytes(), &[], &[p("198.18.0.0/24")]),
            Reason::Blocked
        );
        assert_eq!(
            decide(tcp4.bytes(), &[p("198.18.0.1")], &[p("198.18.0.0/24")]),
            Reason::Allowlisted
        );
        assert_eq!(decide(&tcp4.bytes()[..13], &[], &[]), Reason::Malformed);
        let short = tcp4.clone().truncated_ip(14 + 20 + 19);
        assert_eq!(decide(short.bytes(), &[], &[]), Reason::Malformed);
        assert_eq!(
            decide(short.bytes(), &[], &[p("198.18.0.1")]),
            Reason::Blocked
        );
        let arp = Packet::arp(v4(0, 1), v4(0, 2)).build();
        assert_eq!(decide(arp.bytes(), &[], &[p("0.0.0.0/0")]), Reason::NotIp);
    }

    #[test]
    fn ext_chain_limit() {
        let chain = |n: usize| {
            Packet::ipv6(v6(0, 1), v6(0, 2))
                .exts(std::iter::repeat_n(Ext::DEST_OPTS, n))
                .tcp(1, 2)
                .build()
        };
        for n in 0..=8 {
            // A short TCP header is found and judged behind up to 8.
            let frame = chain(n);
            let cut = frame.len() - 1;
            let frame = frame.truncated_ip(cut);
            assert_eq!(decide(frame.bytes(), &[], &[]), Reason::Malformed, "{n}");
        }
        for n in [9, 12] {
            // Longer chains are malformed, whole or cut.
            let frame = chain(n);
            assert_eq!(decide(frame.bytes(), &[], &[]), Reason::Malformed, "{n}");
            let cut = frame.len() - 1;
            assert_eq!(
                decide(frame.truncated_ip(cut).bytes(), &[], &[]),
                Reason::Malformed,
                "{n} cut"
            );
        }
    }

    #[test]
    fn hit_entry_prefers_the_longest() {
        let src: IpAddr = v4(0, 1).into();
        let list = [p("0.0.0.0/0"), p("198.18.0.1"), p("198.18.0.0/24")];
        assert_eq!(hit_entry(src, &list), Some(p("198.18.0.1")));
        assert_eq!(hit_entry(src, &list[..1]), Some(p("0.0.0.0/0")));
        assert_eq!(hit_entry(v6(0, 1).into(), &list), None);
    }
}
