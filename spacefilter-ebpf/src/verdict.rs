//! The verdict pipeline: parse the network layer, then the rule maps
//! (allowlist, which wins over everything, and blocklist, in one lookup per
//! map) → header rules → flood guards → pass. Every frame leaves through
//! [`finish`], which records the per-CPU counters of its interface and
//! hands dropped frames to the sampler and, when switched on, every
//! verdict to the debug log ([`crate::observe`]).

use aya_ebpf::{
    bindings::xdp_action,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use spacefilter_common::{IFACE_TABLE, Match, Reason, action, flags, stats_index};

use crate::{
    limit,
    maps::{
        CONFIG, IFACE_SLOTS, OBSERVE, RULE_HITS, RULES_V4, RULES_V4_EXACT, RULES_V6,
        RULES_V6_EXACT, STATS,
    },
    observe,
    parse::{self, Frame, Source},
    rules,
};

/// A frame's verdict: why, and what matched (see
/// [`spacefilter_common::DropSample::detail`]).
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) reason: Reason,
    pub(crate) detail: u32,
}

impl From<Reason> for Verdict {
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        Self { reason, detail: 0 }
    }
}

#[inline(always)]
pub(crate) fn decide(ctx: &XdpContext) -> u32 {
    let frame = Frame::new(ctx);
    let mut source = None;
    let verdict = match classify(&frame, &mut source) {
        Ok(verdict) => verdict,
        Err(reason) => reason.into(),
    };
    finish(ctx, &frame, verdict, source.as_ref())
}

/// Decides; `source` is set once the network header has been read.
#[inline(always)]
fn classify(frame: &Frame, source_out: &mut Option<Source>) -> Result<Verdict, Reason> {
    let (source, transport) = parse::network(frame)?;
    *source_out = Some(source);
    // A missing config entry cannot happen (arrays always hold their
    // entries); if it did, looking everything up is the safe default.
    let flags = CONFIG.get(0).map_or(u32::MAX, |config| config.flags);
    let matched = match source {
        Source::V4(addr) => lookup(
            &addr,
            flags,
            (
                &RULES_V4_EXACT,
                &RULES_V4,
                flags::V4_EXACT,
                flags::V4_PREFIX,
            ),
        ),
        Source::V6(addr) => lookup(
            &addr,
            flags,
            (
                &RULES_V6_EXACT,
                &RULES_V6,
                flags::V6_EXACT,
                flags::V6_PREFIX,
            ),
        ),
    };
    if let Some(matched) = matched {
        if let Some(hits) = RULE_HITS.get_ptr_mut(matched.slot) {
            // SAFETY: a per-CPU slot, written only by this CPU.
            unsafe { *hits += 1 };
        }
        return Ok(Verdict {
            reason: if matched.action == action::ALLOW {
                Reason::Allowlisted
            } else {
                Reason::Blocked
            },
            detail: matched.slot,
        });
    }
    let l4 = parse::transport(frame, &transport)?;
    if let Some(verdict) = rules::check(&l4, frame.len() as u64) {
        return Ok(verdict);
    }
    if let Some(reason) = limit::check(&source, l4, frame.len() as u64) {
        return Ok(reason.into());
    }
    Ok(Reason::Passed.into())
}

/// The rule maps of one address family, and their config bits.
type Rules<const N: usize> = (
    &'static HashMap<[u8; N], Match>,
    &'static LpmTrie<[u8; N], Match>,
    u32,
    u32,
);

/// The longest key matching the source: the exact map first (a full-length
/// key is the longest there can be), then the trie.
#[inline(always)]
fn lookup<const N: usize>(addr: &[u8; N], flags: u32, rules: Rules<N>) -> Option<Match> {
    let (exact, trie, exact_bit, prefix_bit) = rules;
    if flags & exact_bit != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(matched) = unsafe { exact.get(addr) } {
            return Some(*matched);
        }
    }
    if flags & prefix_bit != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "N is 4 or 16")]
        let key = Key::new((N * 8) as u32, *addr);
        return trie.get(&key).copied();
    }
    None
}

/// The `STATS` slot of the interface the frame arrived on: an array
/// lookup (inlined by the verifier), 0 for an interface without a slot.
#[inline(always)]
fn iface_slot(ifindex: u32) -> u32 {
    match IFACE_SLOTS.get(ifindex & (IFACE_TABLE - 1)) {
        Some(entry) if entry.ifindex == ifindex => entry.slot,
        _ => 0,
    }
}

/// The single exit: count the frame under its interface and reason, let
/// the observers see it, and turn the reason into an XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, frame: &Frame, verdict: Verdict, source: Option<&Source>) -> u32 {
    // SAFETY: `ctx.ctx` is the xdp_md the kernel passed in.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let reason = verdict.reason;
    if let Some(counter) = STATS.get_ptr_mut(stats_index(iface_slot(ifindex), reason as u32)) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame.len() as u64;
        }
    }
    let drops = reason.drops();
    if let Some(config) = OBSERVE.get(0)
        && config.flags != 0
    {
        observe::verdict(ctx, frame, config, (verdict, ifindex, drops), source);
    }
    if drops {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
