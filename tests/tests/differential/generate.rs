//! Random configurations and frames for the differential run.
//!
//! Configurations: list entries of every length over a small pool of
//! addresses (the frames' sources), header rules on every field and with
//! every action, the limit flags in every combination with budgets whose
//! outcome does not depend on time (see
//! [`spacefilter_tests::reference::pipeline`]), a reflection profile
//! varied around the default, verified sources, and the shield on a few
//! UDP ports.
//!
//! Frames start well formed (0-2 VLAN tags, sometimes a third, 802.1Q and
//! 802.1ad; IPv4 with options and fragments; IPv6 with chains of 0-24
//! extension headers in any order, fragments among them; TCP with options
//! and any flags, UDP, ICMP, `ICMPv6`, other protocols; ARP and other
//! ethertypes), over ports that the rules and the reflection profile name,
//! and are then cut at header boundaries, cut with the IP lengths kept
//! consistent, bit-flipped, or given lying length and type fields (IPv4
//! total length, IHL, IPv6 payload length, extension header lengths, TCP
//! data offset, ...). A share are random bytes behind a chosen ethertype.
//!
//! Two corners of policy stay out of the cases, each in one place:
//! auto-blocks are never due ([`limits`]: `block_after` 0 or an hour), and
//! NTP from 123 to 123 is never aimed at a service port
//! ([`BASE_SERVICE`]). Two frames in a row share a fragment
//! identification ([`with_fragment_id`]): a later fragment may follow the
//! first fragment of its datagram.

use std::net::IpAddr;

use proptest::{prelude::*, sample::Index};
use spacefilter::{Prefix, api::default_reflectors};
use spacefilter_common::{
    HeaderRule, Limits, Shield, limit_flags, rule_action, rule_flags, shield_flags,
};
use spacefilter_tests::{
    packets::{Ext, Frame, Layer, Packet, TPID_8021AD, TPID_8021Q, v4, v4_far, v6},
    reference::pipeline::Config,
};

/// The addresses frames come from and list entries are built on.
pub(crate) const POOL: [IpAddr; 9] = [
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

/// Ports that rules and the reflection profile name, and the edges of the
/// default profile.
const PORTS: [u16; 24] = [
    0, 1, 17, 19, 22, 53, 80, 111, 123, 137, 161, 389, 443, 1900, 2222, 3702, 5000, 11211, 32767,
    32768, 40000, 60999, 61000, 65535,
];

/// A burst no run spends.
pub(crate) const AMPLE: u64 = 1 << 30;

/// The service ports of every profile: the default, less NTP's port 123
/// (whether NTP from 123 to 123 is reflection is a matter of policy that
/// the frames here stay out of).
pub(crate) const BASE_SERVICE: [(u16, u16); 3] = [(0, 122), (124, 32767), (61000, 65535)];

/// A frame's recipe.
#[derive(Clone, Debug)]
pub(crate) enum FrameSpec {
    Built(Shape, Vec<Mutation>),
    /// Random bytes behind a chosen ethertype and first IP byte.
    Random {
        ether_type: u16,
        first: Option<u8>,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Ip,
    Arp,
    Other(u16),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
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
pub(crate) struct Shape {
    pub(crate) kind: Kind,
    pub(crate) src: usize,
    pub(crate) tags: Vec<u16>,
    pub(crate) transport: Transport,
    /// IPv4 option words.
    pub(crate) options: u8,
    /// IPv4 fragment offset and MF.
    pub(crate) fragment: Option<(u16, bool)>,
    /// IPv6 extension headers.
    pub(crate) exts: Vec<Ext>,
    pub(crate) payload: usize,
    pub(crate) padding: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldValue {
    Set(u16),
    Add(i16),
}

#[derive(Clone, Debug)]
pub(crate) enum Mutation {
    /// Cut anywhere, lengths left lying.
    Truncate(Index),
    /// Cut after the IP header, lengths shrunk to match.
    TruncateIp(Index),
    /// Cut at the start, middle or last byte of a header; with the IP
    /// lengths shrunk to match where the cut is past the IP header.
    CutHeader(Index, bool),
    FlipBit(Index, u8),
    /// Overwrite one of the frame's length or type fields.
    Field(Index, FieldValue),
    Append(Vec<u8>),
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => proptest::sample::select(&PORTS[..]), 1 => any::<u16>()]
}

fn ext() -> impl Strategy<Value = Ext> {
    let offset = prop_oneof![4 => Just(0u16), 1 => 1..0x2000u16];
    prop_oneof![
        (0..4u8).prop_map(|units| Ext::HopByHop { units }),
        (0..4u8).prop_map(|units| Ext::Routing { units }),
        (0..4u8).prop_map(|units| Ext::DestOpts { units }),
        (offset, any::<bool>()).prop_map(|(offset, more)| Ext::Fragment { offset, more }),
        (0..5u8).prop_map(|icv_words| Ext::Auth { icv_words }),
    ]
}

fn transport() -> impl Strategy<Value = Transport> {
    let flags = prop_oneof![
        2 => Just(0x02u8),
        1 => Just(0x12),
        1 => Just(0x10),
        2 => any::<u8>(),
    ];
    let options = prop_oneof![3 => Just(0u8), 1 => 1..=10u8];
    prop_oneof![
        4 => (port(), port(), flags, options).prop_map(|(sport, dport, flags, options)| {
            Transport::Tcp { sport, dport, flags, options }
        }),
        4 => (port(), port()).prop_map(|(sport, dport)| Transport::Udp { sport, dport }),
        1 => Just(Transport::Icmp),
        1 => Just(Transport::Icmpv6),
        1 => any::<u8>().prop_map(Transport::Number),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let kind = prop_oneof![
        30 => Just(Kind::Ip),
        1 => Just(Kind::Arp),
        1 => any::<u16>().prop_map(Kind::Other),
    ];
    let tpid = prop_oneof![6 => Just(TPID_8021Q), 5 => Just(TPID_8021AD), 1 => Just(0x9100)];
    let tags = prop_oneof![
        6 => Just(Vec::new()),
        4 => prop::collection::vec(tpid.clone(), 1..=2),
        1 => prop::collection::vec(tpid, 3..=3),
    ];
    let options = prop_oneof![3 => Just(0u8), 1 => 1..=10u8];
    let fragment = prop::option::weighted(
        0.2,
        (
            prop_oneof![1 => Just(0u16), 2 => 1..0x2000u16],
            any::<bool>(),
        ),
    );
    let exts = prop_oneof![
        3 => Just(Vec::new()),
        3 => prop::collection::vec(ext(), 1..=4),
        // Around the walk's limit of 8.
        3 => prop::collection::vec(ext(), 7..=9),
        2 => prop::collection::vec(ext(), 10..=24),
    ];
    let padding = prop_oneof![3 => Just(0usize), 1 => 1..40usize];
    (
        kind,
        0..POOL.len(),
        tags,
        transport(),
        options,
        fragment,
        exts,
        prop_oneof![Just(0usize), 1..300usize],
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

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        any::<u16>().prop_map(FieldValue::Set),
        (-16i16..=16).prop_map(FieldValue::Add),
    ];
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => any::<Index>().prop_map(Mutation::TruncateIp),
        4 => (any::<Index>(), any::<bool>()).prop_map(|(i, ip)| Mutation::CutHeader(i, ip)),
        2 => (any::<Index>(), 0..8u8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        5 => (any::<Index>(), value).prop_map(|(i, v)| Mutation::Field(i, v)),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

pub(crate) fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(mutation(), 1..=2),
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
        12 => (shape(), mutations).prop_map(|(s, m)| FrameSpec::Built(s, m)),
        1 => (ether_type, first, prop::collection::vec(any::<u8>(), 0..120)).prop_map(
            |(ether_type, first, bytes)| FrameSpec::Random { ether_type, first, bytes }
        ),
    ]
}

/// An inclusive range as a rule holds it (`hi` 0: any).
fn range() -> impl Strategy<Value = (u32, u32)> {
    let ordered = |(a, b): (u16, u16)| (u32::from(a.min(b)), u32::from(a.max(b)));
    prop_oneof![
        5 => Just((0, 0)),
        3 => port().prop_map(|p| (u32::from(p), u32::from(p))),
        3 => (port(), port()).prop_map(ordered),
        1 => (port(), port()).prop_map(|(a, b)| (u32::from(a), u32::from(b))),
    ]
}

fn len_range() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        4 => Just((0, 0)),
        2 => (0..400u32, 0..400u32).prop_map(|(a, b)| (a.min(b), a.max(b))),
        1 => (0..400u32).prop_map(|a| (a, 0)),
    ]
}

/// A token budget whose outcome does not depend on time: `(rate, burst)`.
fn budget(small: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        2 => (Just(0u64), 0..small),
        3 => (Just(1u64), 0..small),
        2 => (1..1_000_000u64, Just(0u64)),
        2 => (1..1_000_000u64, Just(AMPLE)),
    ]
}

fn header_rule() -> impl Strategy<Value = HeaderRule> {
    let proto = prop_oneof![
        4 => Just(0u32),
        3 => Just(6u32),
        3 => Just(17u32),
        1 => Just(1u32),
        1 => Just(58u32),
        1 => any::<u8>().prop_map(u32::from),
    ];
    // A rule on TCP flags is a TCP rule: the command line sets proto 6.
    let flags = prop_oneof![
        3 => Just((0u32, 0u32)),
        2 => (1..=255u32, any::<u8>()).prop_map(|(mask, v)| (mask, mask & u32::from(v))),
        1 => (1..=255u32, any::<u8>()).prop_map(|(mask, v)| (mask, u32::from(v))),
    ];
    (
        (1..=3u32, prop::bool::weighted(0.2), proto, flags),
        (range(), range(), len_range(), budget(6)),
    )
        .prop_map(
            |(
                (action, dry_run, proto, (tcp_mask, tcp_value)),
                (dport, sport, len, (pps, burst)),
            )| {
                HeaderRule {
                    action,
                    flags: if dry_run { rule_flags::DRY_RUN } else { 0 },
                    proto: if tcp_mask == 0 { proto } else { 6 },
                    tcp_mask,
                    tcp_value,
                    dport_lo: dport.0,
                    dport_hi: dport.1,
                    sport_lo: sport.0,
                    sport_hi: sport.1,
                    len_lo: len.0,
                    len_hi: len.1,
                    reserved: 0,
                    pps: if action == rule_action::LIMIT { pps } else { 0 },
                    burst: if action == rule_action::LIMIT {
                        burst
                    } else {
                        0
                    },
                }
            },
        )
}

fn limits() -> impl Strategy<Value = Limits> {
    let flags = prop_oneof![
        2 => Just(0u32),
        2 => Just(limit_flags::REFLECT),
        4 => 0..16u32,
    ];
    let prefix = proptest::sample::select(&[64u32, 128, 48, 56, 0, 200][..]);
    let bytes = prop_oneof![
        2 => (Just(0u64), 0..2000u64),
        3 => (Just(1u64), 0..2000u64),
        1 => (1..1_000_000u64, Just(0u64)),
        2 => (1..1_000_000u64, Just(AMPLE)),
    ];
    let block_after = prop_oneof![Just(0u64), Just(3_600_000_000_000u64)];
    (
        (flags, prefix, budget(6), bytes),
        (budget(6), budget(6), block_after),
    )
        .prop_map(
            |(
                (flags, v6_prefix_len, (pps, pps_burst), (bps, bps_burst)),
                (syn, global, block_after_ns),
            )| {
                Limits {
                    flags,
                    v6_prefix_len,
                    pps,
                    pps_burst,
                    bps,
                    bps_burst,
                    block_after_ns,
                    block_ttl_ns: 600_000_000_000,
                    syn_pps: syn.0,
                    syn_burst: syn.1,
                    syn_global_pps: global.0,
                    syn_global_burst: global.1,
                    spoof_threshold: 0,
                    fallback_pps: 0,
                    fallback_burst: 0,
                }
            },
        )
}

/// List entries: which list, which pool address, and a length choice (a
/// quarter full-length entries, the rest any length).
fn lists() -> impl Strategy<Value = (Vec<Prefix>, Vec<Prefix>)> {
    let entry = (any::<bool>(), 0..POOL.len(), any::<u8>());
    let entries = prop_oneof![
        2 => Just(Vec::new()),
        3 => prop::collection::vec(entry, 1..=4),
    ];
    entries.prop_map(|entries| {
        let (mut allow, mut block) = (Vec::new(), Vec::new());
        for (is_allow, addr, len_choice) in entries {
            let addr = POOL[addr];
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = if len_choice < 64 {
                max
            } else {
                len_choice % (max + 1)
            };
            let prefix = Prefix::truncating(addr, len);
            let list: &mut Vec<Prefix> = if is_allow { &mut allow } else { &mut block };
            if !list.contains(&prefix) {
                list.push(prefix);
            }
        }
        (allow, block)
    })
}

/// The reflection profile: the default reflectors and service ports (less
/// 123 as a service port), with a few more of each.
fn ports() -> impl Strategy<Value = (Vec<u16>, Vec<(u16, u16)>)> {
    let extra_reflectors = prop::collection::vec(port(), 0..=3);
    let extra_service = prop::collection::vec((32768..=60999u16, 0..16u16), 0..=3);
    (extra_reflectors, extra_service).prop_map(|(more, extra)| {
        let mut reflectors = default_reflectors();
        reflectors.extend(more);
        let mut service = BASE_SERVICE.to_vec();
        service.extend(
            extra
                .into_iter()
                .map(|(lo, w)| (lo, lo.saturating_add(w).min(60999))),
        );
        (reflectors, service)
    })
}

/// The shield on UDP ports only: off, watching or on, with a budget for
/// unverified sources whose outcome does not depend on time.
fn shield() -> impl Strategy<Value = (Shield, Vec<(u16, u16)>)> {
    let flags = prop_oneof![
        2 => Just(0u32),
        1 => Just(shield_flags::WATCH),
        2 => Just(shield_flags::ON),
        1 => Just(shield_flags::ON | shield_flags::WATCH),
    ];
    let ports = prop::collection::vec(
        prop_oneof![
            2 => port().prop_map(|p| (p, p)),
            1 => (port(), 0..64u16).prop_map(|(lo, w)| (lo, lo.saturating_add(w))),
        ],
        0..=3,
    );
    (flags, budget(6), ports).prop_map(|(flags, (pps, burst), ports)| {
        let shield = Shield {
            flags,
            unverified_pps: u32::try_from(pps).expect("small"),
            unverified_burst: u32::try_from(burst).expect("small"),
            ..Shield::default()
        };
        (shield, ports)
    })
}

pub(crate) fn config() -> impl Strategy<Value = Config> {
    let rules = prop_oneof![
        1 => Just(Vec::new()),
        4 => prop::collection::vec(header_rule(), 1..=6),
        1 => prop::collection::vec(header_rule(), 7..=32),
    ];
    let verified = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(proptest::sample::select(&POOL[..]), 1..=3),
    ];
    (lists(), rules, limits(), ports(), verified, shield()).prop_map(
        |((allow, block), rules, limits, (reflectors, service), verified, (shield, shield_udp))| {
            Config {
                allow,
                block,
                rules,
                limits,
                reflectors,
                service,
                verified,
                shield,
                shield_udp,
            }
        },
    )
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
/// headers) the value `id`: frames given the same one from the same source
/// and protocol are fragments of one datagram.
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
        Mutation::FlipBit(..) => frame,
    }
}

/// The frame's bytes; `id` is its fragment identification.
#[must_use]
pub(crate) fn realise(spec: &FrameSpec, id: u32) -> Vec<u8> {
    match spec {
        FrameSpec::Built(shape, mutations) => mutations
            .iter()
            .fold(with_fragment_id(build(shape), id), mutate)
            .into_bytes(),
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
