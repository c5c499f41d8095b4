//! Random configurations, and the frame profile, for the differential run.
//!
//! Configurations: list entries of every length over a small pool of
//! addresses (the frames' sources), header rules on every field and with
//! every action, the limit flags in every combination with budgets whose
//! outcome does not depend on time (see
//! [`spacefilter_tests::reference::pipeline`]), a reflection profile
//! varied around the default, verified sources, and the shield on a few
//! UDP ports.
//!
//! Frames are drawn by [`spacefilter_tests::generate`] with [`PROFILE`]:
//! 0-2 VLAN tags, sometimes a third; IPv6 chains of 0-24 extension
//! headers; TCP with options and any flags; ports that the rules and the
//! reflection profile name; cut at header boundaries, cut with the IP
//! lengths kept consistent, bit-flipped, or given lying length and type
//! fields.
//!
//! Two corners of policy stay out of the cases, each in one place:
//! auto-blocks are never due ([`limits`]: `block_after` 0 or an hour), and
//! NTP from 123 to 123 is never aimed at a service port
//! ([`BASE_SERVICE`]).

use proptest::prelude::*;
use spacefilter::{Prefix, api::default_reflectors};
use spacefilter_common::{
    HeaderRule, Limits, Shield, limit_flags, rule_action, rule_flags, shield_flags,
};
use spacefilter_tests::{
    generate::{self, FrameSpec, POOL, Profile, port},
    reference::pipeline::Config,
};

/// A burst no run spends.
pub(crate) const AMPLE: u64 = 1 << 30;

/// The service ports of every profile: the default, less NTP's port 123
/// (whether NTP from 123 to 123 is reflection is a matter of policy that
/// the frames here stay out of).
pub(crate) const BASE_SERVICE: [(u16, u16); 3] = [(0, 122), (124, 32767), (61000, 65535)];

/// How the frames are drawn: over ports that the rules and the reflection
/// profile name, with any TCP flags, long payloads and extension chains.
const PROFILE: Profile = Profile {
    sources: POOL.len(),
    built: 12,
    ip: 30,
    untagged: 6,
    most_tags: 3,
    transports: [4, 4, 1, 1, 1],
    varied_ports: true,
    first_fragments: 4,
    chains: [3, 3, 3, 2],
    longest_chain: 24,
    payload_end: 300,
    whole: 3,
    mutated: 2,
    most_mutations: 2,
    mutations: [1, 3, 4, 0, 2, 0, 5, 1],
};

pub(crate) fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    generate::frame_spec(&PROFILE)
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
            let prefix = generate::prefix(POOL[addr], len_choice);
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
