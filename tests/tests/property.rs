//! Property test: the XDP program agrees with the userspace reference model
//! on thousands of random and mutated frames under random rule sets.
//!
//! Frames ([`spacefilter_tests::generate`]) start as well-formed builder
//! frames of every kind (IPv4 with options and fragments, IPv6 with
//! extension chains, TCP/UDP/ICMP/ICMPv6, other protocols, 0-4 VLAN tags,
//! ARP, other ethertypes), and are then cut, cut with the IP length shrunk
//! to match, bit-flipped, overwritten in their length and type fields, or
//! extended; a share are random bytes behind a chosen ethertype. Rules are
//! random prefixes of every length, allow and block, over a small pool of
//! addresses that the frames' sources come from, so that they match often.
//!
//! For each frame the program must return the reference's action (never
//! `XDP_ABORTED`), count exactly one packet and the frame's bytes under the
//! reference's reason, and count a hit on exactly the entry the reference
//! names. One program is loaded for the whole run; rules are reset between
//! cases. `PROPTEST_CASES` overrides the number of cases.

use std::{cell::RefCell, collections::BTreeMap, net::IpAddr};

use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner},
};
use spacefilter::{Filter, List, LoadOptions, Prefix, Reason};
use spacefilter_tests::{
    generate::{self, FrameSpec, POOL, Profile, frame_spec},
    reference, require_root,
};

const DEFAULT_CASES: u32 = 8192;

/// How the frames are drawn: short payloads, fixed ports, every mutation.
const PROFILE: Profile = Profile {
    sources: SOURCES,
    built: 5,
    ip: 20,
    untagged: 5,
    most_tags: 4,
    transports: [3, 3, 2, 2, 2],
    varied_ports: false,
    first_fragments: 5,
    chains: [3, 4, 3, 1],
    longest_chain: 12,
    payload_end: 48,
    whole: 1,
    mutated: 3,
    most_mutations: 3,
    mutations: [2, 3, 3, 2, 2, 1, 4, 1],
};

/// Frames come from the first `SOURCES` addresses of the pool (the IPv4
/// and IPv6 ones, not the mapped one).
const SOURCES: usize = 8;

/// A rule: which list, which address (`SOURCES` means the frame's own
/// source), and a length choice.
type RuleSpec = (bool, usize, u8);

fn rules() -> impl Strategy<Value = Vec<RuleSpec>> {
    prop::collection::vec((any::<bool>(), 0..=SOURCES, any::<u8>()), 0..=6)
}

/// The frame and the source address rules may target.
fn realise(spec: &FrameSpec) -> (Vec<u8>, IpAddr) {
    let frame = generate::realise(spec, None);
    let src = match spec {
        FrameSpec::Built(shape, _) => POOL[shape.src],
        FrameSpec::Random { .. } => reference::network(&frame).map_or(POOL[0], |n| n.source),
    };
    (frame, src)
}

fn rule_prefixes(specs: &[RuleSpec], frame_src: IpAddr) -> (Vec<Prefix>, Vec<Prefix>) {
    let (mut allow, mut block) = (Vec::new(), Vec::new());
    for &(is_allow, addr, len_choice) in specs {
        let addr = if addr < SOURCES {
            POOL[addr]
        } else {
            frame_src
        };
        let prefix = generate::prefix(addr, len_choice);
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
    let result = runner.run(&(frame_spec(&PROFILE), rules()), |(spec, specs)| {
        let (frame, src) = realise(&spec);
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
