//! Verdicts that the lists, the header rules and the guards must agree on,
//! through `BPF_PROG_TEST_RUN` on frames built for the purpose: an
//! auto-block holds before the header rules and with the limiter off; the
//! rest of a datagram whose first fragment was dropped is dropped too; the
//! host's own sources are never auto-blocked; the spoofed-source detector
//! counts a source once however many frames it sends; and a bucket stamped
//! by a CPU whose clock runs ahead never blocks a source at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use spacefilter::{
    Prefix, Reason,
    bpf::{limiter_key_of, monotonic_ns},
};
use spacefilter_common::{
    Bucket, FALLBACK_HOLD_NS, HeaderRule, Limits, SpoofState, TOKEN_SCALE, limit_flags, rule_action,
};
use spacefilter_tests::{
    fixture::{SERVICE, load_reflecting, load_reflection_guard, run, verdict},
    packets::{Ext, Packet},
    reference::{XDP_DROP, XDP_PASS},
};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
const HOUR_NS: u64 = 3_600_000_000_000;

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 3, n))
}

fn source6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 3, n, 0, 0, 0, 1))
}

fn udp(src: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(SERVER),
        IpAddr::V6(_) => IpAddr::V6(SERVER6),
    };
    Packet::ip(src, dst)
        .udp(sport, dport)
        .payload_len(32)
        .build()
        .into_bytes()
}

/// One packet a second, a burst of two; a second over it auto-blocks the
/// source for an hour.
fn strict_limits() -> Limits {
    Limits {
        flags: limit_flags::ENABLED,
        v6_prefix_len: 64,
        pps: 1,
        pps_burst: 2,
        block_after_ns: 1,
        block_ttl_ns: HOUR_NS,
        ..Limits::default()
    }
}

fn pass_rule_for_port(port: u16) -> HeaderRule {
    HeaderRule {
        action: rule_action::PASS,
        proto: 17,
        dport_lo: u32::from(port),
        dport_hi: u32::from(port),
        ..HeaderRule::default()
    }
}

#[test]
fn an_auto_block_holds_before_the_rules_and_with_the_limiter_off() {
    let mut filter = load_reflecting(SERVICE);
    filter.limiter().set(strict_limits()).expect("limits");
    let blocked = source(1);
    let frame = udp(blocked, 40_000, 5000);
    // Two frames within the burst, one over it, then the block.
    let (action, delta) = run(&mut filter, &frame, 5);
    assert_eq!(action, XDP_DROP, "{delta:?}");
    assert_eq!(delta.get(Reason::Passed).packets, 2, "{delta:?}");
    assert_eq!(delta.get(Reason::RateLimited).packets, 1, "{delta:?}");
    assert_eq!(delta.get(Reason::AutoBlocked).packets, 2, "{delta:?}");

    // A rule that lets the port through: the block still holds; another
    // source is let through by it (the positive control).
    filter
        .header_rules()
        .set(&[(pass_rule_for_port(5000), 0)])
        .expect("rules");
    assert_eq!(
        verdict(&mut filter, &frame),
        (XDP_DROP, Reason::AutoBlocked)
    );
    let other = udp(source(2), 40_000, 5000);
    assert_eq!(verdict(&mut filter, &other), (XDP_PASS, Reason::RulePassed));

    // The limiter off: the block still holds until it is lifted.
    filter.limiter().set(Limits::default()).expect("limits off");
    assert_eq!(
        verdict(&mut filter, &frame),
        (XDP_DROP, Reason::AutoBlocked)
    );
    // A block the daemon restores holds the same way.
    let restored = source(3);
    filter
        .limiter()
        .insert_auto(Prefix::host(restored), monotonic_ns() + HOUR_NS)
        .expect("restoring a block");
    let restored_frame = udp(restored, 40_000, 5000);
    assert_eq!(
        verdict(&mut filter, &restored_frame),
        (XDP_DROP, Reason::AutoBlocked)
    );
    // Lifted, both pass the rule again.
    for prefix in [Prefix::host(blocked), Prefix::host(restored)] {
        filter.limiter().remove_auto(prefix).expect("lifting");
    }
    assert_eq!(verdict(&mut filter, &frame), (XDP_PASS, Reason::RulePassed));
    assert_eq!(
        verdict(&mut filter, &restored_frame),
        (XDP_PASS, Reason::RulePassed)
    );
    // An ended block no longer holds (the program reads the coarse clock,
    // up to a tick behind the precise one: ended a second ago).
    filter
        .limiter()
        .insert_auto(Prefix::host(restored), monotonic_ns() - 1_000_000_000)
        .expect("an ended block");
    assert_eq!(
        verdict(&mut filter, &restored_frame),
        (XDP_PASS, Reason::RulePassed)
    );
}

/// In a dry run, a restored auto-block (its source has no bucket) counts
/// its frames as `would_limit` and lets them through, as an auto-block the
/// limiter made does; another source passes.
#[test]
fn a_restored_auto_block_counts_as_would_limit_in_a_dry_run() {
    let mut filter = load_reflecting(SERVICE);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED | limit_flags::DRY_RUN,
            ..strict_limits()
        })
        .expect("limits");
    let restored = source(20);
    filter
        .limiter()
        .insert_auto(Prefix::host(restored), monotonic_ns() + HOUR_NS)
        .expect("restoring a block");
    let frame = udp(restored, 40_000, 5000);
    assert_eq!(verdict(&mut filter, &frame), (XDP_PASS, Reason::WouldLimit));
    assert_eq!(
        verdict(&mut filter, &udp(source(21), 40_000, 5000)),
        (XDP_PASS, Reason::Passed)
    );
    // Its frames go on counting so, not as a new source's.
    let (_, delta) = run(&mut filter, &frame, 10);
    assert_eq!(delta.get(Reason::WouldLimit).packets, 10, "{delta:?}");
    // The dry run over: the block drops.
    filter.limiter().set(strict_limits()).expect("limits");
    assert_eq!(
        verdict(&mut filter, &frame),
        (XDP_DROP, Reason::AutoBlocked)
    );
}

#[test]
fn the_host_s_own_sources_are_limited_but_never_auto_blocked() {
    let mut filter = load_reflecting(SERVICE);
    filter.limiter().set(strict_limits()).expect("limits");
    let resolver = source(53);
    let resolver6 = source6(53);
    filter
        .limiter()
        .set_exempt(&[limiter_key_of(resolver, 64), limiter_key_of(resolver6, 64)])
        .expect("exemptions");
    for addr in [resolver, resolver6] {
        let (_, delta) = run(&mut filter, &udp(addr, 53, 40_000), 20);
        assert_eq!(delta.get(Reason::Passed).packets, 2, "{addr}: {delta:?}");
        assert_eq!(
            delta.get(Reason::RateLimited).packets,
            18,
            "{addr}: {delta:?}"
        );
        assert_eq!(delta.get(Reason::AutoBlocked).packets, 0, "{addr}");
    }
    // Another address of the same /64 shares the exemption (IPv6 sources
    // are grouped by prefix), another /64 does not.
    let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 3, 53, 0, 0, 0, 9));
    let (_, delta) = run(&mut filter, &udp(neighbour, 53, 40_000), 5);
    assert_eq!(delta.get(Reason::AutoBlocked).packets, 0, "{delta:?}");
    for addr in [source(54), source6(54)] {
        let (_, delta) = run(&mut filter, &udp(addr, 53, 40_000), 20);
        assert_eq!(
            delta.get(Reason::AutoBlocked).packets,
            17,
            "{addr}: {delta:?}"
        );
    }
    // Exemptions are replaced, not added to.
    filter.limiter().set_exempt(&[]).expect("no exemptions");
    filter
        .limiter()
        .remove_auto(Prefix::host(resolver))
        .expect("fresh bucket");
    let (_, delta) = run(&mut filter, &udp(resolver, 53, 40_000), 20);
    assert_eq!(delta.get(Reason::AutoBlocked).packets, 17, "{delta:?}");
}

/// A fragment of a UDP datagram from `sport` to `dport` at `offset`
/// (8-byte units), with identification `id`.
fn fragment(src: IpAddr, (sport, dport): (u16, u16), offset: u16, more: bool, id: u32) -> Vec<u8> {
    let packet = match src {
        IpAddr::V4(_) => Packet::ip(src, IpAddr::V4(SERVER)).fragment(offset, more),
        IpAddr::V6(_) => Packet::ip(src, IpAddr::V6(SERVER6)).ext(Ext::Fragment { offset, more }),
    };
    let frame = packet.udp(sport, dport).payload_len(64).build();
    let l3 = frame.l3().expect("an IP frame");
    match src {
        IpAddr::V4(_) => {
            let id = u16::try_from(id).expect("IPv4 identifications are 16 bits");
            frame.set(l3 + 4, &id.to_be_bytes()).into_bytes()
        }
        IpAddr::V6(_) => frame.set(l3 + 40 + 4, &id.to_be_bytes()).into_bytes(),
    }
}

#[test]
fn the_rest_of_a_datagram_whose_first_fragment_was_dropped_is_dropped() {
    let mut filter = load_reflection_guard(SERVICE);
    filter
        .header_rules()
        .set(&[(
            HeaderRule {
                action: rule_action::DROP,
                proto: 17,
                dport_lo: 7777,
                dport_hi: 7777,
                ..HeaderRule::default()
            },
            0,
        )])
        .expect("rules");
    for src in [source(20), source6(20)] {
        // An amplified NTP answer aimed at a service port, in fragments.
        let ntp = (123, 443);
        assert_eq!(
            verdict(&mut filter, &fragment(src, ntp, 0, true, 0x4242)),
            (XDP_DROP, Reason::Reflection),
            "{src}"
        );
        for (offset, more) in [(9, true), (18, false)] {
            assert_eq!(
                verdict(&mut filter, &fragment(src, ntp, offset, more, 0x4242)),
                (XDP_DROP, Reason::Reflection),
                "{src}: the fragment at {offset}"
            );
        }
        // Another datagram's later fragment, and the fragments of a
        // datagram whose first fragment passed, pass.
        assert_eq!(
            verdict(&mut filter, &fragment(src, ntp, 9, false, 0x4243)),
            (XDP_PASS, Reason::Passed),
            "{src}"
        );
        let client = (40_000, 443);
        assert_eq!(
            verdict(&mut filter, &fragment(src, client, 0, true, 0x4244)),
            (XDP_PASS, Reason::Passed),
            "{src}"
        );
        assert_eq!(
            verdict(&mut filter, &fragment(src, client, 9, false, 0x4244)),
            (XDP_PASS, Reason::Passed),
            "{src}"
        );
        // Another source's fragment with the same identification passes.
        let other = match src {
            IpAddr::V4(_) => source(21),
            IpAddr::V6(_) => source6(21),
        };
        assert_eq!(
            verdict(&mut filter, &fragment(other, ntp, 9, false, 0x4242)),
            (XDP_PASS, Reason::Passed),
            "{other}"
        );
        // A header rule's drop carries over the same way.
        let ruled = (40_000, 7777);
        assert_eq!(
            verdict(&mut filter, &fragment(src, ruled, 0, true, 0x4245)),
            (XDP_DROP, Reason::RuleDropped),
            "{src}"
        );
        assert_eq!(
            verdict(&mut filter, &fragment(src, ruled, 9, false, 0x4245)),
            (XDP_DROP, Reason::RuleDropped),
            "{src}"
        );
    }
}

#[test]
fn the_spoofed_source_detector_counts_a_source_once() {
    let mut filter = load_reflecting(SERVICE);
    let threshold = 10;
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED,
            pps: 1_000_000,
            pps_burst: 1_000_000,
            spoof_threshold: threshold,
            fallback_pps: 1_000_000,
            fallback_burst: 1_000_000,
            ..Limits::default()
        })
        .expect("limits");
    // The fallback on, as a flood leaves it, ending soon: the window has
    // just begun.
    let now = monotonic_ns();
    let ends = now + FALLBACK_HOLD_NS / 2;
    filter
        .limiter()
        .set_spoof_state(SpoofState {
            window_ns: now,
            new_sources: 0,
            active_until_ns: ends,
            switches: 1,
        })
        .expect("spoof state");
    // One newcomer sends many frames, none with a bucket while the
    // fallback is on: it is one new source, and the fallback is not held
    // on by it.
    let (_, delta) = run(&mut filter, &udp(source(30), 40_000, 5000), 50);
    assert_eq!(delta.get(Reason::Passed).packets, 50, "{delta:?}");
    let state = filter.limiter().spoof_state().expect("spoof state");
    assert_eq!(state.new_sources, 1, "{state:?}");
    assert_eq!(state.active_until_ns, ends, "{state:?}");
    // Many distinct sources are counted one by one, and hold it on.
    for n in 0..20u8 {
        run(&mut filter, &udp(source(100 + n), 40_000, 5000), 1);
    }
    let state = filter.limiter().spoof_state().expect("spoof state");
    assert_eq!(state.new_sources, 21, "{state:?}");
    assert!(state.active_until_ns > ends, "{state:?}");
}

#[test]
fn a_bucket_stamped_ahead_of_this_cpu_s_clock_does_not_block_at_once() {
    let mut filter = load_reflecting(SERVICE);
    let block_after_ns = 5_000_000_000;
    filter
        .limiter()
        .set(Limits {
            block_after_ns,
            ..strict_limits()
        })
        .expect("limits");
    let now = monotonic_ns();
    let spent = |over_since_ns, last_over_ns| Bucket {
        packets: 0,
        last_ns: now,
        over_since_ns,
        last_over_ns,
        syns: TOKEN_SCALE,
        ..Bucket::default()
    };
    // Another CPU, its clock a little ahead, stamped the source's first
    // frame over the limit: this frame is over the limit, not a reason to
    // block the source for the whole TTL.
    let ahead = source(40);
    filter
        .limiter()
        .set_bucket(
            Prefix::host(ahead),
            spent(now + 2_000_000_000, now + 2_000_000_000),
        )
        .expect("bucket");
    assert_eq!(
        verdict(&mut filter, &udp(ahead, 40_000, 5000)),
        (XDP_DROP, Reason::RateLimited)
    );
    // Over the limit for longer than block_after: blocked (the control).
    let long_over = source(41);
    filter
        .limiter()
        .set_bucket(
            Prefix::host(long_over),
            spent(now - block_after_ns - 1_000_000_000, now - 100_000_000),
        )
        .expect("bucket");
    assert_eq!(
        verdict(&mut filter, &udp(long_over, 40_000, 5000)),
        (XDP_DROP, Reason::AutoBlocked)
    );
}
