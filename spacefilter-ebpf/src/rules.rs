//! Rules on headers: protocol, port ranges, TCP flags and frame length,
//! with the actions drop, pass, or limit (a budget of the rule's own). They
//! run after the lists and before the flood guards; the first rule that
//! matches decides, and a pass rule lets its frames past the guards. An
//! edit is written into the set of rules not in force and switched in with
//! one write (see [`spacefilter_common::HEADER_RULE_SETS`]).
//!
//! Kernel: bounded loops (5.3); `bpf_ktime_get_coarse_ns` (5.11, where the
//! kernel has it).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use spacefilter_common::{
    HEADER_SET_HOLDS_RULES, HeaderRule, MAX_HEADER_RULES, Reason, rule_action, rule_flags,
    tokens::burst_holds_a_tick,
};

use crate::{
    features,
    limit::take_packet,
    maps::{HEADER_ACTIVE, HEADER_BUCKETS, HEADER_HITS, HEADER_RULES},
    parse::L4,
    verdict::Verdict,
};

#[inline(always)]
fn in_range(value: u32, lo: u32, hi: u32) -> bool {
    hi == 0 || (value >= lo && value <= hi)
}

#[inline(always)]
fn matches(rule: &HeaderRule, l4: &L4, len: u32) -> bool {
    if rule.proto != 0 && rule.proto != u32::from(l4.proto) {
        return false;
    }
    if (rule.dport_hi != 0 || rule.sport_hi != 0) && !l4.ports {
        return false;
    }
    in_range(u32::from(l4.dst_port), rule.dport_lo, rule.dport_hi)
        && in_range(u32::from(l4.src_port), rule.sport_lo, rule.sport_hi)
        && in_range(len, rule.len_lo, rule.len_hi)
        && (rule.tcp_mask == 0 || (u32::from(l4.tcp_flags) & rule.tcp_mask) == rule.tcp_value)
}

/// The verdict of the first header rule that matches, if any; its detail
/// is the rule's index + 1. The rules come from the set in force when the
/// frame arrives: a frame sees one whole list, old or new.
#[inline(always)]
pub(crate) fn check(l4: &L4, len: u64) -> Option<Verdict> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "frames are far below 4 GiB"
    )]
    let len32 = len as u32;
    let active = HEADER_ACTIVE.get(0).copied().unwrap_or(0);
    if active & HEADER_SET_HOLDS_RULES == 0 {
        return None;
    }
    // The set without a branch: two paths here would double the
    // verifier's work on everything after.
    let base = (active & 1) * MAX_HEADER_RULES;
    for index in 0..MAX_HEADER_RULES {
        let slot = base + index;
        let rule = HEADER_RULES.get(slot)?;
        if rule.action == 0 {
            return None;
        }
        if !matches(rule, l4, len32) {
            continue;
        }
        if let Some(hits) = HEADER_HITS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot, written only by this CPU.
            unsafe { *hits += 1 };
        }
        let dry_run = rule.flags & rule_flags::DRY_RUN != 0;
        let verdict = match rule.action {
            rule_action::DROP => Reason::RuleDropped,
            rule_action::LIMIT if !within_budget(slot, rule) => Reason::RuleLimited,
            _ => Reason::RulePassed,
        };
        return Some(Verdict {
            reason: if dry_run && verdict.drops() {
                Reason::WouldLimit
            } else {
                verdict
            },
            detail: index + 1,
            resized: false,
        });
    }
    None
}

/// Takes one packet from the budget of the limit rule in `slot`.
#[inline(always)]
fn within_budget(slot: u32, rule: &HeaderRule) -> bool {
    let Some(bucket) = HEADER_BUCKETS.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: an array value; CPUs race on it (the budget is approximate).
    let bucket = unsafe { &mut *bucket };
    // The coarse clock where the burst holds a tick (10 ms at most) of the
    // rate, as the flood guards take it (see `limit_flags::COARSE_CLOCK`):
    // a flood a limit rule holds runs through here.
    let now = if burst_holds_a_tick(rule.pps, rule.burst) {
        features::coarse_now()
    } else {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
    take_packet(
        &mut bucket.packets,
        &mut bucket.last_ns,
        (rule.pps, rule.burst),
        now,
    )
}
