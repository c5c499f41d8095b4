//! Property test: the XDP program agrees with the userspace reference model
//! on thousands of random and mutated frames under random rule sets.
//!
//! Frames start as well-formed builder frames of every kind (IPv4 with
//! options and fragments, IPv6 with extension chains, TCP/UDP/ICMP/ICMPv6,
//! other protocols, 0-4 VLAN tags, ARP, other ethertypes), and are then cut,
//! cut with the IP length shrunk to match, bit-flipped, overwritten in
//! their length and type fields, or extended; a share are random bytes
//! behind a chosen ethertype. Rules are random prefixes of every length,
//! allow and block, over a small pool of addresses that the frames' sources
//! come from, so that they match often.
//!
//! For each frame the program must return the reference's action (never
//! `XDP_ABORTED`), count exactly one packet and the frame's bytes under the
//! reference's reason, and count a hit on exactly the entry the reference
//! names. One program is loaded for the whole run; rules are reset between
//! cases. `PROPTEST_CASES` overrides the number of cases.

use std::{cell::RefCell, collections::BTreeMap, net::IpAddr};

use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner},
};
use spacefilter::{Filter, List, LoadOptions, Prefix, Reason};
use spacefilter_tests::{
    packets::{Ext, Frame, Packet, TPID_8021AD, TPID_8021Q, v4, v4_far, v6},
    reference, require_root,
};

const DEFAULT_CASES: u32 = 8192;

/// The addresses frames come from and rules are built on.
const POOL: [IpAddr; 8] = [
    IpAddr::V4(v4(0, 1)),
    IpAddr::V4(v4(0, 2)),
    IpAddr::V4(v4(1, 10)),
    IpAddr::V4(v4_far(255, 254)),
    IpAddr::V6(v6(0, 1)),
    IpAddr::V6(v6(0, 2)),
    IpAddr::V6(v6(1, 10)),
    IpAddr::V6(v6(0xffff, 0xffff)),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ip,
    Arp,
    Other(u16),
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

/// A well-formed frame to start from.
#[derive(Clone, Debug)]
struct Shape {
    kind: Kind,
    src: usize,
    tags: Vec<u16>,
    transport: Transport,
    /// IPv4 option words.
    options: u8,
    /// IPv4 fragment offset and MF.
    fragment: Option<(u16, bool)>,
    /// IPv6 extension headers.
    exts: Vec<Ext>,
    payload: usize,
    padding: usize,
}

#[derive(Clone, Copy, Debug)]
enum FieldValue {
    Set(u16),
    Add(i16),
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Cut anywhere, lengths left lying.
    Truncate(Index),
    /// Cut after the IP header, lengths shrunk to match.
    TruncateIp(Index),
    /// Cut `n` bytes off the end, with the IP lengths shrunk to match if
    /// that leaves the IP header whole.
    Shorten(u8),
    /// Cut at the start, middle or last byte of a header; with the IP
    /// lengths shrunk to match where the cut is past the IP header.
    CutHeader(Index, bool),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrite one of the frame's length or type fields.
    Field(Index, FieldValue),
    Append(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Source {
    Built(Shape, Vec<Mutation>),
    /// Random bytes behind a chosen ethertype and first IP byte.
    Random {
        ether_type: u16,
        first: Option<u8>,
        bytes: Vec<u8>,
    },
}

/// A rule: which list, which address (`POOL.len()` means the frame's own
/// source), and a length choice.
type RuleSpec = (bool, usize, u8);

fn ext() -> impl Strategy<Value = Ext> {
    let offset = prop_oneof![5 => Just(0u16), 1 => 1..0x2000u16];
    prop_oneof![
        (0..4u8).prop_map(|units| Ext::HopByHop { units }),
        (0..4u8).prop_map(|units| Ext::Routing { units }),
        (0..4u8).prop_map(|units| Ext::DestOpts { units }),
        (offset, any::<bool>()).prop_map(|(offset, more)| Ext::Fragment { offset, more }),
        (0..5u8).prop_map(|icv_words| Ext::Auth { icv_words }),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let kind = prop_oneof![
        20 => Just(Kind::Ip),
        1 => Just(Kind::Arp),
        1 => any::<u16>().prop_map(Kind::Other),
    ];
    let tpid = prop_oneof![6 => Just(TPID_8021Q), 5 => Just(TPID_8021AD), 1 => Just(0x9100)];
    let tags = prop_oneof![
        5 => Just(Vec::new()),
        4 => prop::collection::vec(tpid.clone(), 1..=2),
        1 => prop::collection::vec(tpid, 3..=4),
    ];
    let transport = prop_oneof![
        3 => Just(Transport::Tcp),
        3 => Just(Transport::Udp),
        2 => Just(Transport::Icmp),
        2 => Just(Transport::Icmpv6),
        2 => any::<u8>().prop_map(Transport::Number),
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
        4 => prop::collection::vec(ext(), 1..=4),
        // Around the walk's limit of 8.
        3 => prop::collection::vec(ext(), 7..=9),
        1 => prop::collection::vec(ext(), 10..=12),
    ];
    let padding = prop_oneof![3 => Just(0usize), 1 => 1..40usize];
    (
        kind,
        0..POOL.len(),
        tags,
        transport,
        options,
        fragment,
        exts,
        prop_oneof![Just(0usize), 1..48usize],
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
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => any::<Index>().prop_map(Mutation::TruncateIp),
        3 => (any::<Index>(), any::<bool>()).prop_map(|(i, ip)| Mutation::CutHeader(i, ip)),
        2 => (1..=32u8).prop_map(Mutation::Shorten),
        2 => (any::<Index>(), 0..8u8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        4 => (any::<Index>(), value).prop_map(|(i, v)| Mutation::Field(i, v)),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn source() -> impl Strategy<Value = Source> {
    let mutations = prop_oneof![
        1 => Just(Vec::new()),
        3 => prop::collection::vec(mutation(), 1..=3),
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
        5 => (shape(), mutations).prop_map(|(s, m)| Source::Built(s, m)),
        1 => (ether_type, first, prop::collection::vec(any::<u8>(), 0..120)).prop_map(
            |(ether_type, first, bytes)| Source::Random { ether_type, first, bytes }
        ),
    ]
}

fn rules() -> impl Strategy<Value = Vec<RuleSpec>> {
    prop::collection::vec((any::<bool>(), 0..=POOL.len(), any::<u8>()), 0..=6)
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
        packet = match shape.transport {
            Transport::Tcp => packet.tcp(40000, 443),
            Transport::Udp => packet.udp(40000, 53),
            Transport::Icmp => packet.icmp_echo(),
            Transport::Icmpv6 => packet.icmpv6_echo(),
            Transport::Number(n) => packet.protocol(n),
        };
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

/// The frame and the source address rules may target.
fn realise(source: &Source) -> (Vec<u8>, IpAddr) {
    match source {
        Source::Built(shape, mutations) => {
            let frame = mutations.iter().fold(build(shape), mutate);
            (frame.into_bytes(), POOL[shape.src])
        }
        Source::Random {
            ether_type,
            first,
            bytes,
        } => {
            let mut frame = Packet::ethertype(*ether_type, &[]).build().into_bytes();
            frame.extend_from_slice(bytes);
            if let (Some(first), Some(byte)) = (first, frame.get_mut(14)) {
                *byte = *first;
            }
            let src = reference::network(&frame).map_or(POOL[0], |n| n.source);
            (frame, src)
        }
    }
}

fn rule_prefixes(specs: &[RuleSpec], frame_src: IpAddr) -> (Vec<Prefix>, Vec<Prefix>) {
    let (mut allow, mut block) = (Vec::new(), Vec::new());
    for &(is_allow, addr, len_choice) in specs {
        let addr = POOL.get(addr).copied().unwrap_or(frame_src);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        // A quarter full-length entries, the rest any length.
        let len = if len_choice < 64 {
            max
        } else {
            len_choice % (max + 1)
        };
        let prefix = Prefix::truncating(addr, len);
        let list = if is_allow { &mut allow } else { &mut block };
        if !list.contains(&prefix) {
            list.push(prefix);
        }
    }
    (allow, block)
}

fn reset(filter: &mut Filter) {
    for entry in filter.entries().expect("entries") {
        match entry.list {
            List::Allow => filter.unallow(entry.prefix),
            // The filter's lists hold no auto entries (the daemon's do).
            List::Block | List::Auto => filter.unblock(entry.prefix),
        }
        .expect("remove a rule");
    }
}

fn hits(filter: &Filter) -> BTreeMap<(List, Prefix), u64> {
    filter
        .entries()
        .expect("entries")
        .into_iter()
        .map(|e| ((e.list, e.prefix), e.hits))
        .collect()
}

fn check(
    filter: &mut Filter,
    frame: &[u8],
    allow: &[Prefix],
    block: &[Prefix],
) -> Result<Reason, TestCaseError> {
    reset(filter);
    // The order rules arrive in must not matter: allow prefixes rewrite the
    // block keys they cover whenever they come and go.
    if frame.len().is_multiple_of(2) {
        for &p in allow {
            filter.allow(p).expect("allow");
        }
        for &p in block {
            filter.block(p).expect("block");
        }
    } else {
        for &p in block {
            filter.block(p).expect("block");
        }
        for &p in allow {
            filter.allow(p).expect("allow");
        }
    }
    let reason = run_and_compare(filter, frame, allow, block)?;
    if allow.is_empty() {
        return Ok(reason);
    }
    // Taking the allowlist away leaves the blocklist alone in force.
    for &p in allow {
        filter.unallow(p).expect("unallow");
    }
    run_and_compare(filter, frame, &[], block)
}

/// Runs `frame` once and compares verdict, counters and hits with the
/// reference decision for the rules in force.
fn run_and_compare(
    filter: &mut Filter,
    frame: &[u8],
    allow: &[Prefix],
    block: &[Prefix],
) -> Result<Reason, TestCaseError> {
    let expected = reference::decide(frame, allow, block);
    let expected_hit = reference::decide_hit(frame, allow, block)
        .filter(|_| matches!(expected, Reason::Allowlisted | Reason::Blocked));
    let counters = filter.counters().expect("counters");
    let hits_before = hits(filter);
    let result = filter.test_run(frame, 1);
    let delta = filter.counters().expect("counters").since(&counters);
    if frame.len() < 14 {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        prop_assert_eq!(expected, Reason::Malformed);
        prop_assert!(
            result.is_err(),
            "the kernel ran a {}-byte frame",
            frame.len()
        );
        prop_assert!(delta.by_reason.values().all(|c| c.packets == 0));
        return Ok(expected);
    }
    let (action, _) = result.expect("test run");
    prop_assert_ne!(action, reference::XDP_ABORTED, "aborted");
    prop_assert_eq!(
        action,
        reference::action(expected),
        "action for reference reason {:?}",
        expected
    );
    for reason in Reason::ALL {
        let got = delta.get(reason);
        let want = if reason == expected {
            (1, frame.len() as u64)
        } else {
            (0, 0)
        };
        prop_assert_eq!(
            (got.packets, got.bytes),
            want,
            "{} counter (reference reason {:?})",
            reason.name(),
            expected
        );
    }
    for (key, after) in hits(filter) {
        let moved = after - hits_before.get(&key).copied().unwrap_or(0);
        let want = u64::from(Some(key) == expected_hit);
        prop_assert_eq!(moved, want, "hits of {:?} {}", key.0, key.1);
    }
    Ok(expected)
}

#[test]
fn program_matches_reference() {
    require_root();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let filter = RefCell::new(Filter::load(LoadOptions::default()).expect("load the XDP program"));
    let tally = RefCell::new(BTreeMap::<Reason, usize>::new());
    let runs = RefCell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        ..Config::default()
    });
    let result = runner.run(&(source(), rules()), |(source, specs)| {
        let (frame, src) = realise(&source);
        let (allow, block) = rule_prefixes(&specs, src);
        let reason = check(&mut filter.borrow_mut(), &frame, &allow, &block)?;
        *runs.borrow_mut() += 1;
        *tally.borrow_mut().entry(reason).or_default() += 1;
        Ok(())
    });
    reset(&mut filter.borrow_mut());
    let tally: Vec<String> = tally
        .borrow()
        .iter()
        .map(|(reason, n)| format!("{} {n}", reason.name()))
        .collect();
    println!(
        "property: {cases} cases, {} frames through the program ({})",
        runs.borrow(),
        tally.join(", ")
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}
