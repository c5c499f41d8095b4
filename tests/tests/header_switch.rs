//! Editing the header rules through `BPF_PROG_TEST_RUN`: a new list is
//! switched in whole, and the rules that stay keep their budgets and hits.

use std::net::{IpAddr, Ipv4Addr};

use spacefilter::{Filter, Reason};
use spacefilter_common::{
    HeaderRule,
    rule_action::{DROP, LIMIT, PASS},
};
use spacefilter_tests::{
    fixture::load,
    packets::Packet,
    reference::{XDP_DROP, XDP_PASS},
};

fn udp_to(dport: u16) -> Vec<u8> {
    Packet::ip(
        IpAddr::V4(Ipv4Addr::new(198, 18, 2, 9)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    )
    .udp(40_000, dport)
    .payload_len(32)
    .build()
    .into_bytes()
}

/// A UDP rule on destination port `port`.
fn rule(action: u32, port: u32) -> HeaderRule {
    HeaderRule {
        action,
        proto: 17,
        dport_lo: port,
        dport_hi: port,
        ..HeaderRule::default()
    }
}

/// Runs `frame` `repeat` times: the last action, and how many frames
/// were counted for `reason`.
fn run(filter: &mut Filter, frame: &[u8], repeat: u32, reason: Reason) -> (u32, u64) {
    let before = filter.counters().expect("counters");
    let (action, _) = filter.test_run(frame, repeat).expect("test run");
    let delta = filter.counters().expect("counters").since(&before);
    (action, delta.get(reason).packets)
}

#[test]
fn a_limit_rules_budget_and_hits_survive_an_unrelated_edit() {
    let mut filter = load();
    // A burst of 3 that refills one packet a second: a test run takes
    // microseconds, so the budget is exact.
    let limit = HeaderRule {
        pps: 1,
        burst: 3,
        ..rule(LIMIT, 5000)
    };
    filter.header_rules().set(&[(limit, 0)]).expect("rules");
    let frame = udp_to(5000);
    assert_eq!(run(&mut filter, &frame, 3, Reason::RulePassed).1, 3);
    assert_eq!(
        run(&mut filter, &frame, 1, Reason::RuleLimited),
        (XDP_DROP, 1)
    );

    // Another rule goes in before it: the limit rule moves a slot down,
    // its budget (spent) and hits (4) with it.
    filter
        .header_rules()
        .set(&[(rule(DROP, 9999), 0), (limit, 0)])
        .expect("rules");
    assert_eq!(
        run(&mut filter, &frame, 1, Reason::RuleLimited),
        (XDP_DROP, 1),
        "the edit refilled the limit rule's budget"
    );
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[0, 5]);
    // The other rule works (and counts) from the switch on.
    assert_eq!(
        run(&mut filter, &udp_to(9999), 2, Reason::RuleDropped),
        (XDP_DROP, 2)
    );
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[2, 5]);

    // A changed limit rule is a new rule: a full budget, no hits.
    let wider = HeaderRule { burst: 4, ..limit };
    filter.header_rules().set(&[(wider, 0)]).expect("rules");
    assert_eq!(
        run(&mut filter, &frame, 4, Reason::RulePassed),
        (XDP_PASS, 4)
    );
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[4, 0]);
}

#[test]
fn frames_see_the_old_list_until_the_new_one_is_switched_in() {
    let mut filter = load();
    let old = [(rule(PASS, 5000), 0), (rule(DROP, 6000), 0)];
    filter.header_rules().set(&old).expect("rules");
    // The new list drops 5000 and no longer 6000; written, not switched.
    let new = [(rule(DROP, 5000), 0), (rule(DROP, 7000), 0)];
    filter.header_rules().stage(&new).expect("staged");
    assert_eq!(
        run(&mut filter, &udp_to(5000), 3, Reason::RulePassed),
        (XDP_PASS, 3)
    );
    assert_eq!(
        run(&mut filter, &udp_to(6000), 2, Reason::RuleDropped),
        (XDP_DROP, 2)
    );
    assert_eq!(
        run(&mut filter, &udp_to(7000), 1, Reason::Passed),
        (XDP_PASS, 1)
    );
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[3, 2]);

    filter.header_rules().switch().expect("switch");
    assert_eq!(
        run(&mut filter, &udp_to(5000), 1, Reason::RuleDropped),
        (XDP_DROP, 1)
    );
    assert_eq!(
        run(&mut filter, &udp_to(6000), 1, Reason::Passed),
        (XDP_PASS, 1)
    );
    assert_eq!(
        run(&mut filter, &udp_to(7000), 1, Reason::RuleDropped),
        (XDP_DROP, 1)
    );
    assert_eq!(&filter.header_rules().hits().expect("hits")[..2], &[1, 1]);
}
