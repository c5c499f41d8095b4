//! Differential test of the whole pipeline: the XDP program and the
//! userspace reference ([`reference::pipeline`]) must agree, frame by
//! frame, on the XDP action and on the reason each frame is counted
//! under, for random configurations (lists, header rules, limit flags and
//! budgets, reflection profiles, verified sources, the shield on UDP
//! ports) and random or mutated frames (see
//! [`configs`]).
//!
//! A case is one configuration and a batch of frames, run in order: the
//! budgets the earlier frames spend decide the later frames' fate. One
//! program is loaded per test; each case rewrites its maps and empties
//! its budgets. Failures shrink to a minimal configuration and batch and
//! are kept in `differential.regressions`; the `regression_*` tests hold
//! shrunk cases as fixtures.
//!
//! `SPACEFILTER_FUZZ_CASES` sets the number of cases (`cargo xtask fuzz`);
//! the suite runs [`DEFAULT_CASES`].

#[path = "differential/configs.rs"]
mod configs;
#[path = "differential/kernel.rs"]
mod kernel;

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fmt::Write as _,
    time::Instant,
};

use configs::{config, frame_spec};
use kernel::{Kernel, Outcome};
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, FileFailurePersistence, TestCaseError, TestRunner},
};
use spacefilter::Reason;
use spacefilter_common::{HeaderRule, Limits, limit_flags, rule_action};
use spacefilter_tests::{
    generate::{FrameSpec, realise},
    packets::{Ext, Packet, v4, v6},
    reference::pipeline::{Config, Pipeline},
    require_root,
};

/// Cases in the suite's run: about 30 000 frames.
const DEFAULT_CASES: u32 = 256;
/// Frames per case, at most.
const MAX_FRAMES: usize = 256;

/// Tally of a run: frames checked, by reason.
#[derive(Default)]
struct Tally {
    frames: u64,
    by_reason: BTreeMap<Reason, u64>,
}

/// Runs `frames` through the kernel under `config` and compares each with
/// `model`'s decision.
fn check_case(
    kernel: &mut Kernel,
    config: &Config,
    model: &mut Pipeline,
    frames: &[Vec<u8>],
    tally: &mut Tally,
) -> Result<Vec<Reason>, String> {
    kernel.configure(config);
    let mut reasons = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        let reason = model.decide(frame);
        reasons.push(reason);
        let want = Outcome::expected(reason, frame.len());
        let got = kernel.run(frame, reason);
        if got != want {
            return Err(mismatch(i, frame, want, got));
        }
        tally.frames += 1;
        *tally.by_reason.entry(reason).or_default() += 1;
    }
    if !kernel.counts_hold() {
        return Err("a frame was counted under more than one reason".into());
    }
    let hits = kernel.rule_hits(model.rule_hits().len());
    if hits != model.rule_hits() {
        return Err(format!(
            "header rule hits: expected {:?}, got {hits:?}",
            model.rule_hits()
        ));
    }
    Ok(reasons)
}

fn mismatch(index: usize, frame: &[u8], want: Outcome, got: Outcome) -> String {
    let mut hex = String::new();
    for byte in frame {
        let _ = write!(hex, "{byte:02x}");
    }
    format!(
        "frame {index} ({} bytes): expected {want:?}, got {got:?}\n  {hex}",
        frame.len()
    )
}

/// The frames of a case. Two frames in a row share a fragment
/// identification, so that a later fragment now and then follows the first
/// fragment of its datagram (the rest of a datagram whose first fragment
/// was dropped goes the same way); cases never share one.
fn realise_all(specs: &[FrameSpec], next_id: &Cell<u32>) -> Vec<Vec<u8>> {
    let base = next_id.get();
    next_id.set(base.wrapping_add(u32::try_from(specs.len()).expect("a small case") / 2 + 1));
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            realise(
                spec,
                Some(base.wrapping_add(u32::try_from(i / 2).expect("small"))),
            )
        })
        .collect()
}

fn cases() -> u32 {
    std::env::var("SPACEFILTER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

#[test]
fn program_matches_pipeline_reference() {
    require_root();
    let cases = cases();
    let kernel = RefCell::new(Kernel::load());
    let tally = RefCell::new(Tally::default());
    let next_id = Cell::new(1u32);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        ..RunnerConfig::default()
    });
    let started = Instant::now();
    let strategy = (
        config(),
        prop::collection::vec(frame_spec(), 1..=MAX_FRAMES),
    );
    let result = runner.run(&strategy, |(config, specs)| {
        let frames = realise_all(&specs, &next_id);
        let mut model = Pipeline::new(config.clone());
        check_case(
            &mut kernel.borrow_mut(),
            &config,
            &mut model,
            &frames,
            &mut tally.borrow_mut(),
        )
        .map(drop)
        .map_err(TestCaseError::fail)
    });
    let elapsed = started.elapsed();
    let tally = tally.borrow();
    let by_reason: Vec<String> = tally
        .by_reason
        .iter()
        .map(|(reason, n)| format!("{} {n}", reason.name()))
        .collect();
    println!(
        "differential: {cases} cases, {} frames checked in {:.1} s ({})",
        tally.frames,
        elapsed.as_secs_f64(),
        by_reason.join(", ")
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}

fn rule(action: u32) -> HeaderRule {
    HeaderRule {
        action,
        ..HeaderRule::default()
    }
}

/// A UDP frame to port 53 from 198.18.0.1.
fn dns_query() -> Vec<u8> {
    Packet::ipv4(v4(0, 1), v4(0, 2))
        .udp(40_000, 53)
        .payload_len(20)
        .build()
        .into_bytes()
}

/// Positive controls: a reference that decides differently from the
/// program is caught, whether the actions differ or only the reasons.
#[test]
fn a_wrong_reference_is_caught() {
    require_root();
    let mut kernel = Kernel::load();
    let drop_dns = Config {
        rules: vec![HeaderRule {
            proto: 17,
            dport_lo: 53,
            dport_hi: 53,
            ..rule(rule_action::DROP)
        }],
        ..Config::default()
    };
    let frames = vec![dns_query()];
    let mut tally = Tally::default();
    // The same configuration on both sides agrees.
    let mut model = Pipeline::new(drop_dns.clone());
    check_case(&mut kernel, &drop_dns, &mut model, &frames, &mut tally).expect("agreement");

    // The model passes what the program drops.
    let pass_dns = Config {
        rules: vec![HeaderRule {
            action: rule_action::PASS,
            ..drop_dns.rules[0]
        }],
        ..Config::default()
    };
    let mut model = Pipeline::new(pass_dns);
    let err = check_case(&mut kernel, &drop_dns, &mut model, &frames, &mut tally)
        .expect_err("a different action is caught");
    assert!(
        err.contains("RulePassed") && err.contains("RuleDropped"),
        "{err}"
    );

    // Both drop, for different reasons.
    let blocked = Config {
        block: vec!["198.18.0.1/32".parse().expect("a prefix")],
        ..Config::default()
    };
    let mut model = Pipeline::new(blocked);
    let err = check_case(&mut kernel, &drop_dns, &mut model, &frames, &mut tally)
        .expect_err("a different reason is caught");
    assert!(
        err.contains("Blocked") && err.contains("RuleDropped"),
        "{err}"
    );

    // A budget spent differently: the model's limit rule has a burst of
    // one, the program's two.
    let limit = |burst| Config {
        rules: vec![HeaderRule {
            burst,
            ..rule(rule_action::LIMIT)
        }],
        ..Config::default()
    };
    let frames = vec![dns_query(), dns_query()];
    let mut model = Pipeline::new(limit(1));
    let err = check_case(&mut kernel, &limit(2), &mut model, &frames, &mut tally)
        .expect_err("a budget spent differently is caught");
    assert!(err.starts_with("frame 1 "), "{err}");

    // And the guards: the model's reflection guard is off.
    let reflect = |flags| Config {
        limits: Limits {
            flags,
            ..Limits::default()
        },
        reflectors: vec![53],
        service: vec![(0, 32767)],
        ..Config::default()
    };
    let reply = Packet::ipv4(v4(0, 1), v4(0, 2))
        .udp(53, 5000)
        .build()
        .into_bytes();
    let mut model = Pipeline::new(reflect(limit_flags::SYN));
    let err = check_case(
        &mut kernel,
        &reflect(limit_flags::REFLECT),
        &mut model,
        &[reply],
        &mut tally,
    )
    .expect_err("a guard's verdict is caught");
    assert!(err.contains("Reflection"), "{err}");
}

/// Runs `frames` under `config` on a fresh program; both sides must agree.
/// Returns the reasons.
fn agreed(config: &Config, frames: &[Vec<u8>]) -> Vec<Reason> {
    require_root();
    let mut kernel = Kernel::load();
    let mut model = Pipeline::new(config.clone());
    check_case(
        &mut kernel,
        config,
        &mut model,
        frames,
        &mut Tally::default(),
    )
    .unwrap_or_else(|err| panic!("{err}"))
}

/// A port condition never holds for a later fragment, which has no ports.
#[test]
fn regression_port_rules_skip_later_fragments() {
    let config = Config {
        rules: vec![HeaderRule {
            proto: 17,
            sport_hi: 1,
            ..rule(rule_action::DROP)
        }],
        ..Config::default()
    };
    let first = Packet::ipv4(v4(0, 1), v4(0, 2)).udp(0, 0);
    let frames = [first.clone(), first.fragment(1, false)].map(|p| p.build().into_bytes());
    assert_eq!(
        agreed(&config, &frames),
        [Reason::RuleDropped, Reason::Passed]
    );
}

/// IPv6 sources share a bucket per `v6_prefix_len`: two /64s of one /48
/// spend one byte budget.
#[test]
fn regression_v6_sources_share_a_bucket_per_prefix() {
    let config = Config {
        limits: Limits {
            flags: limit_flags::ENABLED,
            v6_prefix_len: 48,
            bps: 1,
            bps_burst: 100,
            ..Limits::default()
        },
        ..Config::default()
    };
    let frames = [v6(0, 1), v6(1, 10)].map(|src| {
        Packet::ipv6(src, v6(0, 2))
            .udp(40_000, 443)
            .build()
            .into_bytes()
    });
    assert_eq!(
        agreed(&config, &frames),
        [Reason::Passed, Reason::RateLimited]
    );
}

/// The host's SYN budget holds a new source's SYN (its own budget does
/// not) and a known source's; SYN is any flags byte with SYN and no ACK.
#[test]
fn regression_host_syn_budget_holds_new_and_known_sources() {
    let config = Config {
        limits: Limits {
            flags: limit_flags::SYN,
            syn_global_pps: 1,
            syn_global_burst: 1,
            ..Limits::default()
        },
        ..Config::default()
    };
    let syn = |flags: u8| {
        let mut header = etherparse::TcpHeader::new(40_000, 443, 1, 64240);
        header.syn = true;
        header.urg = flags & 0x20 != 0;
        header.cwr = flags & 0x80 != 0;
        header.ack = flags & 0x10 != 0;
        Packet::ipv4(v4(0, 1), v4(0, 2))
            .tcp_header(header)
            .build()
            .into_bytes()
    };
    let frames = [syn(0xa2), syn(0x02), syn(0x12)];
    assert_eq!(
        agreed(&config, &frames),
        [Reason::Passed, Reason::SynLimited, Reason::Passed]
    );
}

/// Eight extension headers are walked to the transport header; a ninth
/// makes the frame malformed.
#[test]
fn regression_ext_chains_longer_than_eight_are_malformed() {
    let config = Config {
        rules: vec![HeaderRule {
            proto: 6,
            dport_lo: 2222,
            dport_hi: 2222,
            ..rule(rule_action::DROP)
        }],
        ..Config::default()
    };
    let frames = [8, 9].map(|n| {
        Packet::ipv6(v6(0, 1), v6(0, 2))
            .exts(std::iter::repeat_n(Ext::DEST_OPTS, n))
            .tcp(40_000, 2222)
            .build()
            .into_bytes()
    });
    assert_eq!(
        agreed(&config, &frames),
        [Reason::RuleDropped, Reason::Malformed]
    );
}

/// A verified source's SYNs are not counted against the host's SYN
/// budget; the IPv4-mapped IPv6 form of a verified IPv4 address is the
/// same source there.
#[test]
fn regression_verified_sources_skip_the_host_syn_budget() {
    let config = Config {
        limits: Limits {
            flags: limit_flags::SYN,
            syn_global_pps: 1,
            syn_global_burst: 0,
            ..Limits::default()
        },
        verified: vec![v4(0, 1).into()],
        ..Config::default()
    };
    let syn =
        |src: std::net::IpAddr, dst| Packet::ip(src, dst).tcp(40_000, 443).build().into_bytes();
    let frames = [
        syn(v4(0, 1).into(), v4(0, 2).into()),
        syn(v4(0, 1).to_ipv6_mapped().into(), v6(0, 2).into()),
        syn(v4(0, 3).into(), v4(0, 2).into()),
    ];
    assert_eq!(
        agreed(&config, &frames),
        [Reason::Passed, Reason::Passed, Reason::SynLimited]
    );
}
