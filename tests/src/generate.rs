//! Random frames for the property tests: proptest strategies for frame
//! recipes, and the frames they make.
//!
//! A recipe ([`FrameSpec`]) is either a well-formed builder frame
//! ([`Shape`]: VLAN tags, 802.1Q, 802.1ad and others; IPv4 with options
//! and fragments; IPv6 with chains of extension headers in any order,
//! fragments among them; TCP with options and any flags, UDP, ICMP,
//! `ICMPv6`, other protocols; ARP and other ethertypes) followed by
//! [`Mutation`]s (cut anywhere or at header boundaries, cut with the IP
//! lengths kept consistent, bit-flipped, overwritten in their length and
//! type fields, extended), or random bytes behind a chosen ethertype.
//! Frames come from a small pool of addresses ([`POOL`]) that rules are
//! built on too, so that they match often. A [`Profile`] holds the weights
//! and sizes each test draws with.

use std::net::IpAddr;

use proptest::{
    prelude::*,
    sample::Index,
    strategy::{BoxedStrategy, Union},
};
use spacefilter::Prefix;

use crate::packets::{Ext, Frame, Layer, Packet, TPID_8021AD, TPID_8021Q, v4, v4_far, v6};

/// The addresses frames come from and rules are built on.
pub const POOL: [IpAddr; 9] = [
    IpAddr::V4(v4(0, 1)),
    IpAddr::V4(v4(0, 2)),
    IpAddr::V4(v4(1, 10)),
    IpAddr::V4(v4_far(255, 254)),
    IpAddr::V6(v6(0, 1)),
    IpAddr::V6(v6(0, 2)),
    IpAddr::V6(v6(1, 10)),
    IpAddr::V6(v6(0xffff, 0xffff)),
    // The first IPv4 address, mapped: the rate limiter keys IPv4 sources so.
    IpAddr::V6(v4(0, 1).to_ipv6_mapped()),
];

/// Ports that rules and reflection profiles name, and the edges of the
/// default profile.
const PORTS: [u16; 24] = [
    0, 1, 17, 19, 22, 53, 80, 111, 123, 137, 161, 389, 443, 1900, 2222, 3702, 5000, 11211, 32767,
    32768, 40000, 60999, 61000, 65535,
];

/// The weights and sizes frames are drawn with.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Frames come from the first `sources` addresses of [`POOL`].
    pub sources: usize,
    /// Weight of built frames against 1 for random bytes.
    pub built: u32,
    /// Weight of IP frames against 1 each for ARP and other ethertypes.
    pub ip: u32,
    /// Weight of untagged frames against 4 for one or two tags and 1 for
    /// three to `most_tags`.
    pub untagged: u32,
    pub most_tags: usize,
    /// Weights of TCP, UDP, ICMP, `ICMPv6` and other protocols.
    pub transports: [u32; 5],
    /// Ports from [`port`] and any TCP flags and options, or else a plain
    /// SYN from 40000 to 443 and UDP from 40000 to 53.
    pub varied_ports: bool,
    /// Weight of IPv6 fragment headers at offset 0 against 1 for later ones.
    pub first_fragments: u32,
    /// Weights of IPv6 extension chains: none, 1-4 headers, 7-9 (around
    /// the walk's limit of 8), and 10 to `longest_chain`.
    pub chains: [u32; 4],
    pub longest_chain: usize,
    /// Payloads are empty or 1 to `payload_end - 1` bytes.
    pub payload_end: usize,
    /// Weights of frames left whole against those given 1 to
    /// `most_mutations` mutations.
    pub whole: u32,
    pub mutated: u32,
    pub most_mutations: usize,
    /// Weights of the mutations `Truncate`, `TruncateIp`, `CutHeader`,
    /// `Shorten`, `FlipBit`, `SetByte`, `Field` and `Append`; 0 leaves one
    /// out.
    pub mutations: [u32; 8],
}

/// A frame's recipe.
#[derive(Clone, Debug)]
pub enum FrameSpec {
    Built(Shape, Vec<Mutation>),
    /// Random bytes behind a chosen ethertype and first IP byte.
    Random {
        ether_type: u16,
        first: Option<u8>,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Ip,
    Arp,
    Other(u16),
}

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// Option words (the data offset less 5).
        options: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp,
    Icmpv6,
    Number(u8),
}

/// A well-formed frame to start from.
#[derive(Clone, Debug)]
pub struct Shape {
    pub kind: Kind,
    /// The source: an index into [`POOL`].
    pub src: usize,
    pub tags: Vec<u16>,
    pub transport: Transport,
    /// IPv4 option words.
    pub options: u8,
    /// IPv4 fragment offset and MF.
    pub fragment: Option<(u16, bool)>,
    /// IPv6 extension headers.
    pub exts: Vec<Ext>,
    pub payload: usize,
    pub padding: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum FieldValue {
    Set(u16),
    Add(i16),
}

#[derive(Clone, Debug)]
pub enum Mutation {
    /// Cut anywhere, lengths left lying.
    Truncate(Index),
    /// Cut after the IP header, lengths shrunk to match.
    TruncateIp(Index),
    /// Cut at the start, middle or last byte of a header; with the IP
    /// lengths shrunk to match where the cut is past the IP header.
    CutHeader(Index, bool),
    /// Cut `n` bytes off the end, with the IP lengths shrunk to match if
    /// that leaves the IP header whole.
    Shorten(u8),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrite one of the frame's length or type fields.
    Field(Index, FieldValue),
    Append(Vec<u8>),
}

/// A port: one of those rules and profiles name, or any.
pub fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => proptest::sample::select(&PORTS[..]), 1 => any::<u16>()]
}

fn ext(profile: &Profile) -> impl Strategy<Value = Ext> + use<> {
    let offset = prop_oneof![profile.first_fragments => Just(0u16), 1 => 1..0x2000u16];
    prop_oneof![
        (0..4u8).prop_map(|units| Ext::HopByHop { units }),
        (0..4u8).prop_map(|units| Ext::Routing { units }),
        (0..4u8).prop_map(|units| Ext::DestOpts { units }),
        (offset, any::<bool>()).prop_map(|(offset, more)| Ext::Fragment { offset, more }),
        (0..5u8).prop_map(|icv_words| Ext::Auth { icv_words }),
    ]
}

fn transport(profile: &Profile) -> impl Strategy<Value = Transport> + use<> {
    let (tcp, udp) = if profile.varied_ports {
        let flags = prop_oneof![
            2 => Just(0x02u8),
            1 => Just(0x12),
            1 => Just(0x10),
            2 => any::<u8>(),
        ];
        let options = prop_oneof![3 => Just(0u8), 1 => 1..=10u8];
        let tcp = (port(), port(), flags, options).prop_map(|(sport, dport, flags, options)| {
            Transport::Tcp {
                sport,
                dport,
                flags,
                options,
            }
        });
        let udp = (port(), port()).prop_map(|(sport, dport)| Transport::Udp { sport, dport });
        (tcp.boxed(), udp.boxed())
    } else {
        let tcp = Transport::Tcp {
            sport: 40000,
            dport: 443,
            flags: 0x02,
            options: 0,
        };
        let udp = Transport::Udp {
            sport: 40000,
            dport: 53,
        };
        (Just(tcp).boxed(), Just(udp).boxed())
    };
    let [w_tcp, w_udp, w_icmp, w_icmpv6, w_number] = profile.transports;
    prop_oneof![
        w_tcp => tcp,
        w_udp => udp,
        w_icmp => Just(Transport::Icmp),
        w_icmpv6 => Just(Transport::Icmpv6),
        w_number => any::<u8>().prop_map(Transport::Number),
    ]
}

fn shape(profile: &Profile) -> impl Strategy<Value = Shape> + use<> {
    let kind = prop_oneof![
        profile.ip => Just(Kind::Ip),
        1 => Just(Kind::Arp),
        1 => any::<u16>().prop_map(Kind::Other),
    ];
    let tpid = prop_oneof![6 => Just(TPID_8021Q), 5 => Just(TPID_8021AD), 1 => Just(0x9100)];
    let tags = prop_oneof![
        profile.untagged => Just(Vec::new()),
        4 => prop::collection::vec(tpid.clone(), 1..=2),
        1 => prop::collection::vec(tpid, 3..=profile.most_tags),
    ];
    let options = prop_oneof![3 => Just(0u8), 1 => 1..=10u8];
    let fragment = prop::option::weighted(
        0.2,
        (
            prop_oneof![1 => Just(0u16), 2 => 1..0x2000u16],
            any::<bool>(),
        ),
    );
    let [none, short, near_limit, long] = profile.chains;
    let exts = prop_oneof![
        none => Just(Vec::new()),
        short => prop::collection::vec(ext(profile), 1..=4),
        near_limit => prop::collection::vec(ext(profile), 7..=9),
        long => prop::collection::vec(ext(profile), 10..=profile.longest_chain),
    ];
    let padding = prop_oneof![3 => Just(0usize), 1 => 1..40usize];
    (
        kind,
        0..profile.sources,
        tags,
        transport(profile),
        options,
        fragment,
        exts,
        prop_oneof![Just(0usize), 1..profile.payload_end],
        padding,
    )
        .prop_map(
            |(kind, src, tags, transport, options, fragment, exts, payload, padding)| Shape {
                kind,
                src,
                tags,
                transport,
                options,
                fragment,
                exts,
                payload,
                padding,
            },
        )
}

fn mutation(profile: &Profile) -> impl Strategy<Value = Mutation> + use<> {
    let value = prop_oneof![
        any::<u16>().prop_map(FieldValue::Set),
        (-16i16..=16).prop_map(FieldValue::Add),
    ];
    let arms: [BoxedStrategy<Mutation>; 8] = [
        any::<Index>().prop_map(Mutation::Truncate).boxed(),
        any::<Index>().prop_map(Mutation::TruncateIp).boxed(),
        (any::<Index>(), any::<bool>())
            .prop_map(|(i, ip)| Mutation::CutHeader(i, ip))
            .boxed(),
        (1..=32u8).prop_map(Mutation::Shorten).boxed(),
        (any::<Index>(), 0..8u8)
            .prop_map(|(i, bit)| Mutation::FlipBit(i, bit))
            .boxed(),
        (any::<Index>(), any::<u8>())
            .prop_map(|(i, b)| Mutation::SetByte(i, b))
            .boxed(),
        (any::<Index>(), value)
            .prop_map(|(i, v)| Mutation::Field(i, v))
            .boxed(),
        prop::collection::vec(any::<u8>(), 1..16)
            .prop_map(Mutation::Append)
            .boxed(),
    ];
    Union::new_weighted(
        profile
            .mutations
            .into_iter()
            .zip(arms)
            .filter(|&(weight, _)| weight > 0)
            .collect(),
    )
}

/// Frame recipes drawn with `profile`.
pub fn frame_spec(profile: &Profile) -> impl Strategy<Value = FrameSpec> + use<> {
    let mutations = prop_oneof![
        profile.whole => Just(Vec::new()),
        profile.mutated => prop::collection::vec(mutation(profile), 1..=profile.most_mutations),
    ];
    let ether_type = prop_oneof![
        3 => Just(0x0800u16),
        3 => Just(0x86dd),
        1 => Just(TPID_8021Q),
        1 => Just(TPID_8021AD),
        1 => any::<u16>(),
    ];
    let first = prop::option::weighted(
        0.7,
        prop_oneof![Just(0x45u8), Just(0x60), (0x40..=0x4fu8), any::<u8>()],
    );
    prop_oneof![
        profile.built => (shape(profile), mutations).prop_map(|(s, m)| FrameSpec::Built(s, m)),
        1 => (ether_type, first, prop::collection::vec(any::<u8>(), 0..120)).prop_map(
            |(ether_type, first, bytes)| FrameSpec::Random { ether_type, first, bytes }
        ),
    ]
}

/// A prefix of `addr` from a length choice: a quarter full-length, the
/// rest any length.
#[must_use]
pub fn prefix(addr: IpAddr, len_choice: u8) -> Prefix {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len_choice < 64 {
        max
    } else {
        len_choice % (max + 1)
    };
    Prefix::truncating(addr, len)
}

fn build(shape: &Shape) -> Frame {
    let src = POOL[shape.src];
    let dst = if src.is_ipv4() { POOL[1] } else { POOL[5] };
    #[expect(clippy::cast_possible_truncation, reason = "wraps on purpose")]
    let payload: Vec<u8> = (0..shape.payload).map(|i| (i * 7) as u8).collect();
    let mut packet = match shape.kind {
        Kind::Ip => Packet::ip(src, dst),
        Kind::Arp => Packet::arp(v4(1, 10), v4(0, 1)),
        Kind::Other(ether_type) => Packet::ethertype(ether_type, &payload),
    };
    for (id, &tpid) in (1u16..).zip(&shape.tags) {
        packet = packet.tag(tpid, id);
    }
    if let Kind::Ip = shape.kind {
        packet = with_transport(packet, shape.transport);
        if src.is_ipv4() {
            let mut options = vec![1u8; 4 * usize::from(shape.options)];
            if let Some(last) = options.last_mut() {
                *last = 0;
            }
            packet = packet.ipv4_options(&options);
            if let Some((offset, more)) = shape.fragment {
                packet = packet.fragment(offset, more);
            }
        } else {
            packet = packet.exts(shape.exts.iter().copied());
        }
        packet = packet.payload(&payload);
    }
    packet.padding(shape.padding).build()
}

fn with_transport(packet: Packet, transport: Transport) -> Packet {
    match transport {
        Transport::Tcp {
            sport,
            dport,
            flags,
            options,
        } => {
            let mut header = etherparse::TcpHeader::new(sport, dport, 0x5eed_0001, 64240);
            // NOP options: any count of words is valid.
            header
                .set_options_raw(&vec![1u8; 4 * usize::from(options)])
                .expect("at most 40 bytes of options");
            header.fin = flags & 0x01 != 0;
            header.syn = flags & 0x02 != 0;
            header.rst = flags & 0x04 != 0;
            header.psh = flags & 0x08 != 0;
            header.ack = flags & 0x10 != 0;
            header.urg = flags & 0x20 != 0;
            header.ece = flags & 0x40 != 0;
            header.cwr = flags & 0x80 != 0;
            packet.tcp_header(header)
        }
        Transport::Udp { sport, dport } => packet.udp(sport, dport),
        Transport::Icmp => packet.icmp_echo(),
        Transport::Icmpv6 => packet.icmpv6_echo(),
        Transport::Number(n) => packet.protocol(n),
    }
}

/// Gives the frame's fragment identification (IPv4, and IPv6 fragment
/// headers) the value `id`.
fn with_fragment_id(mut frame: Frame, id: u32) -> Frame {
    if let Some(range) = frame.layer(Layer::Ipv4) {
        let bytes = u16::try_from(id & 0xffff).expect("masked").to_be_bytes();
        frame = frame.set(range.start + 4, &bytes).with_ipv4_checksum();
    }
    let ext_ranges: Vec<_> = frame
        .layers()
        .iter()
        .filter(|(layer, range)| *layer == Layer::Ext(44) && range.len() == 8)
        .map(|(_, range)| range.start)
        .collect();
    for start in ext_ranges {
        frame = frame.set(start + 4, &id.to_be_bytes());
    }
    frame
}

fn mutate(frame: Frame, mutation: &Mutation) -> Frame {
    let len = frame.len();
    match mutation {
        Mutation::Truncate(i) => {
            let at = i.index(len + 1);
            frame.truncated(at)
        }
        Mutation::TruncateIp(i) => match frame.ip_header_end() {
            Some(end) => {
                let at = end + i.index(len - end + 1);
                frame.truncated_ip(at)
            }
            None => frame,
        },
        Mutation::Shorten(n) => {
            let at = len.saturating_sub(usize::from(*n));
            match frame.ip_header_end() {
                Some(end) if at >= end => frame.truncated_ip(at),
                _ => frame.truncated(at),
            }
        }
        Mutation::CutHeader(i, consistent) => {
            let cuts = frame.cuts();
            if cuts.is_empty() {
                return frame;
            }
            let (_, at) = cuts[i.index(cuts.len())];
            match frame.ip_header_end() {
                Some(end) if *consistent && at >= end => frame.truncated_ip(at),
                _ => frame.truncated(at),
            }
        }
        Mutation::FlipBit(i, bit) if len > 0 => {
            let at = i.index(len);
            let byte = frame.bytes()[at] ^ (1 << bit);
            frame.set(at, &[byte])
        }
        Mutation::SetByte(i, byte) if len > 0 => {
            let at = i.index(len);
            frame.set(at, &[*byte])
        }
        Mutation::Field(i, value) => {
            let fields: Vec<_> = frame
                .fields()
                .into_iter()
                .filter(|&(at, width)| at + width <= len)
                .collect();
            if fields.is_empty() {
                return frame;
            }
            let (at, width) = fields[i.index(fields.len())];
            let current = if width == 1 {
                u16::from(frame.bytes()[at])
            } else {
                u16::from_be_bytes([frame.bytes()[at], frame.bytes()[at + 1]])
            };
            let new = match *value {
                FieldValue::Set(v) => v,
                FieldValue::Add(d) => current.wrapping_add_signed(d),
            };
            if width == 1 {
                frame.set(at, &new.to_be_bytes()[1..])
            } else {
                frame.set(at, &new.to_be_bytes())
            }
        }
        Mutation::Append(bytes) => frame.padded(bytes),
        Mutation::FlipBit(..) | Mutation::SetByte(..) => frame,
    }
}

/// The frame's bytes. A built frame is given the fragment identification
/// `fragment_id`, where there is one, before it is mutated: frames given
/// the same one from the same source and protocol are fragments of one
/// datagram.
#[must_use]
pub fn realise(spec: &FrameSpec, fragment_id: Option<u32>) -> Vec<u8> {
    match spec {
        FrameSpec::Built(shape, mutations) => {
            let frame = build(shape);
            let frame = match fragment_id {
                Some(id) => with_fragment_id(frame, id),
                None => frame,
            };
            mutations.iter().fold(frame, mutate).into_bytes()
        }
        FrameSpec::Random {
            ether_type,
            first,
            bytes,
        } => {
            let mut frame = Packet::ethertype(*ether_type, &[]).build().into_bytes();
            frame.extend_from_slice(bytes);
            if let (Some(first), Some(byte)) = (first, frame.get_mut(14)) {
                *byte = *first;
            }
            frame
        }
    }
}
