//! The flood guards through `BPF_PROG_TEST_RUN`: the reflection guard and
//! the SYN guard on frames built for the purpose, with exact counter
//! checks. A repeated test run takes microseconds, so token buckets refill
//! by next to nothing during one: the budgets are exact.

use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use spacefilter::Reason;
use spacefilter_common::{Limits, limit_flags};
use spacefilter_tests::{
    fixture::{SERVICE, load_reflecting, load_reflection_guard, run},
    packets::Packet,
    reference::{XDP_DROP, XDP_PASS},
};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 2, n))
}

fn udp(src: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    Packet::ip(src, IpAddr::V4(SERVER))
        .udp(sport, dport)
        .payload_len(32)
        .build()
        .into_bytes()
}

fn syn(src: IpAddr) -> Vec<u8> {
    Packet::ip(src, IpAddr::V4(SERVER))
        .tcp(40_000, 443)
        .build()
        .into_bytes()
}

#[test]
fn reflection_guard_drops_reflector_ports_aimed_at_services() {
    let mut filter = load_reflection_guard(SERVICE);
    let cases = [
        (
            "NTP to a service port",
            123,
            443,
            XDP_DROP,
            Reason::Reflection,
        ),
        (
            "memcached to a service port",
            11211,
            5000,
            XDP_DROP,
            Reason::Reflection,
        ),
        ("DNS to a low port", 53, 53, XDP_DROP, Reason::Reflection),
        (
            "DNS answer to an ephemeral port",
            53,
            40_000,
            XDP_PASS,
            Reason::Passed,
        ),
        (
            "NTP answer to an ephemeral port",
            123,
            60_999,
            XDP_PASS,
            Reason::Passed,
        ),
        ("not a reflector port", 5353, 443, XDP_PASS, Reason::Passed),
        (
            "client traffic to a service",
            40_000,
            443,
            XDP_PASS,
            Reason::Passed,
        ),
    ];
    for (what, sport, dport, action, reason) in cases {
        let (got, delta) = run(&mut filter, &udp(source(9), sport, dport), 1);
        assert_eq!(got, action, "{what}");
        assert_eq!(delta.get(reason).packets, 1, "{what}: {delta:?}");
    }
    // The lists come first: an allowlisted reflector port passes, a
    // blocked source is counted as blocked.
    filter.allow("198.18.2.10".parse().unwrap()).unwrap();
    let (got, delta) = run(&mut filter, &udp(source(10), 123, 443), 1);
    assert_eq!((got, delta.get(Reason::Allowlisted).packets), (XDP_PASS, 1));
    filter.block("198.18.2.11".parse().unwrap()).unwrap();
    let (got, delta) = run(&mut filter, &udp(source(11), 123, 443), 1);
    assert_eq!((got, delta.get(Reason::Blocked).packets), (XDP_DROP, 1));

    // Off: everything passes.
    filter.limiter().set(Limits::default()).expect("limits");
    let (got, delta) = run(&mut filter, &udp(source(9), 123, 443), 1);
    assert_eq!((got, delta.get(Reason::Passed).packets), (XDP_PASS, 1));

    // Dry run: counted, not dropped.
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::REFLECT | limit_flags::DRY_RUN,
            ..Limits::default()
        })
        .expect("limits");
    let (got, delta) = run(&mut filter, &udp(source(9), 123, 443), 1);
    assert_eq!((got, delta.get(Reason::WouldLimit).packets), (XDP_PASS, 1));
}

/// The guards read the coarse clock only while every budget's burst holds
/// a tick of its rate; what was set reads back as it was given.
#[test]
fn the_guards_take_the_coarse_clock_only_where_it_keeps_every_rate() {
    let mut filter = load_reflecting(SERVICE);
    let fits = Limits {
        flags: limit_flags::ENABLED | limit_flags::SYN,
        pps: 20_000,
        pps_burst: 20_000,
        syn_pps: 20,
        syn_burst: 20,
        ..Limits::default()
    };
    let short = Limits {
        pps: 100_000,
        pps_burst: 100,
        ..fits
    };
    for (limits, coarse) in [(fits, true), (short, false), (Limits::default(), false)] {
        filter.limiter().set(limits).expect("limits");
        assert_eq!(
            filter.limiter().coarse_clock().expect("read"),
            coarse,
            "{limits:?}"
        );
        assert_eq!(filter.limiter().get().expect("read"), limits);
    }
    // On the coarse clock, a budget holds as exactly as on the precise one.
    filter
        .limiter()
        .set(Limits {
            pps: 1,
            pps_burst: 5,
            ..fits
        })
        .expect("limits");
    assert!(filter.limiter().coarse_clock().expect("read"));
    let (_, delta) = run(&mut filter, &udp(source(40), 40_000, 5000), 20);
    assert_eq!(
        (
            delta.get(Reason::Passed).packets,
            delta.get(Reason::RateLimited).packets
        ),
        (5, 15),
        "{delta:?}"
    );
}

/// The sources the limiter tracks (one bucket each) are counted whole: in
/// batches where the kernel reads them so, across several batches here.
#[test]
fn every_tracked_source_is_counted() {
    let mut filter = load_reflecting(SERVICE);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED,
            v6_prefix_len: 64,
            pps: 100,
            pps_burst: 100,
            ..Limits::default()
        })
        .expect("limits");
    assert_eq!(filter.limiter().tracked_sources(), 0);
    let sources = 10_000u32;
    for n in 0..sources {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        let (_, delta) = run(&mut filter, &udp(src, 40_000, 5000), 1);
        assert_eq!(delta.get(Reason::Passed).packets, 1, "{src}");
    }
    assert_eq!(filter.limiter().tracked_sources(), sources as usize);
}

#[test]
fn syn_budget_per_source() {
    let mut filter = load_reflecting(SERVICE);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::SYN,
            syn_pps: 1,
            syn_burst: 5,
            ..Limits::default()
        })
        .expect("limits");
    let (action, delta) = run(&mut filter, &syn(source(1)), 100);
    assert_eq!(action, XDP_DROP);
    assert_eq!(delta.get(Reason::Passed).packets, 5, "{delta:?}");
    assert_eq!(delta.get(Reason::SynLimited).packets, 95, "{delta:?}");
    // Another source has its own budget.
    let (_, delta) = run(&mut filter, &syn(source(2)), 10);
    assert_eq!(delta.get(Reason::Passed).packets, 5, "{delta:?}");
    // Established traffic (ACK set) from the SYN-limited source still
    // passes, and so does its UDP.
    let ack = {
        let mut header = etherparse::TcpHeader::new(40_000, 443, 7, 64_240);
        header.ack = true;
        Packet::ip(source(1), IpAddr::V4(SERVER))
            .tcp_header(header)
            .build()
            .into_bytes()
    };
    let (_, delta) = run(&mut filter, &ack, 50);
    assert_eq!(delta.get(Reason::Passed).packets, 50, "{delta:?}");
    let (_, delta) = run(&mut filter, &udp(source(1), 40_000, 443), 50);
    assert_eq!(delta.get(Reason::Passed).packets, 50, "{delta:?}");
}

#[test]
fn syn_budget_for_the_host() {
    let mut filter = load_reflecting(SERVICE);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::SYN,
            syn_global_pps: 1,
            syn_global_burst: 12,
            ..Limits::default()
        })
        .expect("limits");
    let mut passed = 0;
    for n in 1..=5 {
        let (_, delta) = run(&mut filter, &syn(source(n)), 10);
        passed += delta.get(Reason::Passed).packets;
        assert_eq!(
            delta.get(Reason::Passed).packets + delta.get(Reason::SynLimited).packets,
            10
        );
    }
    assert_eq!(passed, 12, "the host took more SYNs than its burst");
}

#[test]
fn spoofed_sources_fall_back_to_aggregate_budgets() {
    let mut filter = load_reflecting(SERVICE);
    // Attached, test runs skip the XDP dispatcher's rebuild: thousands of
    // single runs stay fast.
    let parking = spacefilter_tests::bench::Parking::new("g").expect("veth");
    filter
        .attach(&parking.name, spacefilter::AttachMode::Native)
        .expect("attach");
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED,
            v6_prefix_len: 64,
            pps: 1000,
            pps_burst: 1000,
            spoof_threshold: 1000,
            fallback_pps: 1,
            fallback_burst: 50,
            ..Limits::default()
        })
        .expect("limits");
    // The detector's window held open for the whole test (it starts in a
    // minute), however slowly a busy machine runs it.
    filter
        .limiter()
        .set_spoof_state(spacefilter_common::SpoofState {
            window_ns: spacefilter::bpf::monotonic_ns() + 60_000_000_000,
            ..spacefilter_common::SpoofState::default()
        })
        .expect("spoof state");
    let known = source(1);
    let (_, delta) = run(&mut filter, &udp(known, 40_000, 5000), 1);
    assert_eq!(delta.get(Reason::Passed).packets, 1);

    // 1600 sources never seen before, spread over many /24s so that the
    // per-prefix budgets do not bind: the destination port's does.
    let mut spoof_limited = 0;
    let mut passed = 0;
    for n in 0..1600u32 {
        let [_, _, c, d] = (n * 7919 + 3).to_be_bytes();
        let src = IpAddr::V4(Ipv4Addr::new(198, 19, c, d));
        let (_, delta) = run(&mut filter, &udp(src, 40_000, 5000), 1);
        spoof_limited += delta.get(Reason::SpoofLimited).packets;
        passed += delta.get(Reason::Passed).packets;
    }
    // The first thousand new sources get buckets; past the threshold the
    // fallback takes over and the port's budget (a burst of 50) holds.
    assert!(
        (1000..=1060).contains(&passed),
        "passed {passed}, spoof-limited {spoof_limited}"
    );
    // The parking veth is a live interface: a stray frame of its own (IPv6
    // neighbour discovery, say) may be counted too.
    assert!((1600..1610).contains(&(passed + spoof_limited)));
    let state = filter.limiter().spoof_state().expect("state");
    assert_eq!(state.switches, 1);
    // A source known before the flood keeps its own bucket.
    let (_, delta) = run(&mut filter, &udp(known, 40_000, 5000), 10);
    assert!(
        (10..15).contains(&delta.get(Reason::Passed).packets),
        "{delta:?}"
    );
    assert_eq!(delta.get(Reason::SpoofLimited).packets, 0, "{delta:?}");
    filter.detach(&parking.name).expect("detach");
}

/// During a spoofed-source flood, the fallback's budgets let a new
/// source's frame through, but a SYN still answers to the host-wide SYN
/// budget: a SYN flood from forged sources cannot pass by being new.
#[test]
fn the_fallback_keeps_the_host_syn_budget() {
    let mut filter = load_reflecting(SERVICE);
    let started = Instant::now();
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED | limit_flags::SYN,
            v6_prefix_len: 64,
            pps: 1000,
            pps_burst: 1000,
            spoof_threshold: 10,
            fallback_pps: 1,
            fallback_burst: 100_000,
            syn_global_pps: 1,
            syn_global_burst: 5,
            ..Limits::default()
        })
        .expect("limits");
    let mut passed = 0;
    let mut syn_limited = 0;
    for n in 0..200u32 {
        let [_, _, c, d] = (n * 7919 + 3).to_be_bytes();
        let src = IpAddr::V4(Ipv4Addr::new(198, 19, c, d));
        let (_, delta) = run(&mut filter, &syn(src), 1);
        passed += delta.get(Reason::Passed).packets;
        syn_limited += delta.get(Reason::SynLimited).packets;
    }
    assert!(
        filter.limiter().spoof_state().expect("state").switches >= 1,
        "the fallback switched on"
    );
    // The host's budget is a burst of 5 and one more a second: a slow
    // machine (an emulated guest) may earn a token or two during the loop.
    let earned = started.elapsed().as_secs() + 1;
    assert!(
        (5..=5 + earned).contains(&passed),
        "the host took its SYN burst and no more: {passed} passed in {:?}, {syn_limited} SYN-limited",
        started.elapsed()
    );
    assert_eq!(passed + syn_limited, 200, "every SYN was counted once");
    // Positive control: other frames from new sources pass on the
    // fallback's budgets.
    let (action, delta) = run(
        &mut filter,
        &udp(IpAddr::V4(Ipv4Addr::new(198, 20, 0, 1)), 40_000, 5000),
        1,
    );
    assert_eq!(action, XDP_PASS, "{delta:?}");
}

fn header_rule(action: u32) -> spacefilter_common::HeaderRule {
    spacefilter_common::HeaderRule {
        action,
        ..spacefilter_common::HeaderRule::default()
    }
}

#[test]
fn header_rules_first_match_decides_and_counts() {
    use spacefilter_common::rule_action::{DROP, LIMIT, PASS};
    let mut filter = load_reflecting(SERVICE);
    let rules = [
        // 0: drop UDP to port 53.
        spacefilter_common::HeaderRule {
            proto: 17,
            dport_lo: 53,
            dport_hi: 53,
            ..header_rule(DROP)
        },
        // 1: pass TCP to 22, past the SYN guard.
        spacefilter_common::HeaderRule {
            proto: 6,
            dport_lo: 22,
            dport_hi: 22,
            ..header_rule(PASS)
        },
        // 2: limit SYN-without-ACK to 443 to a burst of 3.
        spacefilter_common::HeaderRule {
            proto: 6,
            dport_lo: 443,
            dport_hi: 443,
            tcp_mask: 0x12,
            tcp_value: 0x02,
            pps: 1,
            burst: 3,
            ..header_rule(LIMIT)
        },
        // 3: dry-run drop of big UDP frames.
        spacefilter_common::HeaderRule {
            proto: 17,
            len_lo: 1000,
            len_hi: 1514,
            flags: spacefilter_common::rule_flags::DRY_RUN,
            ..header_rule(DROP)
        },
    ];
    filter
        .header_rules()
        .set(&rules.map(|r| (r, 0)))
        .expect("rules");
    // The SYN guard would drop every SYN: rule 1 lets port 22 past it.
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::SYN,
            syn_global_pps: 1,
            syn_global_burst: 1,
            ..Limits::default()
        })
        .expect("limits");

    let (action, delta) = run(&mut filter, &udp(source(1), 40_000, 53), 7);
    assert_eq!(
        (action, delta.get(Reason::RuleDropped).packets),
        (XDP_DROP, 7)
    );
    let ssh = Packet::ip(source(1), IpAddr::V4(SERVER))
        .tcp(40_000, 22)
        .build()
        .into_bytes();
    let (action, delta) = run(&mut filter, &ssh, 5);
    assert_eq!(
        (action, delta.get(Reason::RulePassed).packets),
        (XDP_PASS, 5)
    );
    let (_, delta) = run(&mut filter, &syn(source(2)), 10);
    assert_eq!(delta.get(Reason::RulePassed).packets, 3, "{delta:?}");
    assert_eq!(delta.get(Reason::RuleLimited).packets, 7, "{delta:?}");
    let big = Packet::ip(source(3), IpAddr::V4(SERVER))
        .udp(40_000, 9000)
        .payload_len(1200)
        .build()
        .into_bytes();
    let (action, delta) = run(&mut filter, &big, 4);
    assert_eq!(
        (action, delta.get(Reason::WouldLimit).packets),
        (XDP_PASS, 4)
    );
    // No rule matches: on to the guards and the verdict of old.
    let (action, delta) = run(&mut filter, &udp(source(4), 40_000, 9000), 1);
    assert_eq!((action, delta.get(Reason::Passed).packets), (XDP_PASS, 1));

    let hits = filter.header_rules().hits().expect("hits");
    assert_eq!(&hits[..5], &[7, 5, 10, 4, 0]);
    // Rewriting the rules keeps the hit counts given.
    filter.header_rules().set(&[(rules[1], 5)]).expect("rules");
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[5, 0]);
    let (action, _) = run(&mut filter, &udp(source(1), 40_000, 53), 1);
    assert_eq!(action, XDP_PASS, "the deleted drop rule still drops");
}

/// A burst of auto-blocks (a flood from thousands of sources, each going
/// over its limit within the same few milliseconds) fits the program's
/// event ring whole: every block reaches the daemon as it happens, none is
/// left for the reconciliation ten seconds later.
#[test]
fn a_burst_of_auto_blocks_fits_the_event_ring() {
    const SOURCES: u32 = 3000;
    const BLOCK_AFTER: Duration = Duration::from_millis(2);
    const COARSE_TICK: Duration = Duration::from_millis(10);
    let mut filter = load_reflecting(SERVICE);
    let mut events = filter.take_events().expect("the auto-block event ring");
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED,
            v6_prefix_len: 64,
            pps: 1,
            pps_burst: 1,
            block_after_ns: u64::try_from(BLOCK_AFTER.as_nanos()).unwrap(),
            block_ttl_ns: 60_000_000_000,
            ..Limits::default()
        })
        .expect("limits");
    let frames: Vec<Vec<u8>> = (0..SOURCES)
        .map(|n| udp(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), 40_000, 5000))
        .collect();
    let counters = filter.counters().expect("counters");
    // A few hundred sources at a time, so that none calms down (a second
    // without going over) between going over and its next frame, however
    // slow the machine.
    for chunk in frames.chunks(250) {
        // Each source over its limit: its burst, then frames over it; one
        // run a call (a call of several runs takes milliseconds here, the
        // kernel's test-run timer).
        let over = Instant::now();
        for frame in chunk {
            for _ in 0..3 {
                filter.test_run(frame, 1).expect("test run");
            }
        }
        // Still over once `BLOCK_AFTER` has passed since each went over, on
        // the coarse clock the auto-block check reads (a tick, at most 10
        // ms, more): each is blocked by its next frame.
        thread::sleep((BLOCK_AFTER + COARSE_TICK).saturating_sub(over.elapsed()));
        for frame in chunk {
            filter.test_run(frame, 1).expect("test run");
        }
    }
    let seen = filter.counters().expect("counters").since(&counters);
    assert_eq!(seen.get(Reason::Passed).packets, u64::from(SOURCES));
    let blocked = filter.limiter().auto_blocks().len();
    let mut delivered = 0;
    while events.next().is_some() {
        delivered += 1;
    }
    assert_eq!(blocked, SOURCES as usize, "sources auto-blocked");
    assert_eq!(delivered, SOURCES, "auto-block events delivered");
}
