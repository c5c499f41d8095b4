//! The verdict pipeline: parse the network layer, then the rule maps
//! (allowlist, which wins over everything, and blocklist, in one lookup per
//! map) → transport checks → pass. Every frame leaves
//! through [`finish`], which records the per-CPU counters.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use spacefilter_common::{Match, Reason, action, flags};

use crate::{
    limit,
    maps::{CONFIG, RULE_HITS, RULES_V4, RULES_V4_EXACT, RULES_V6, RULES_V6_EXACT, STATS},
    parse::{self, Frame, Source},
    rules,
};

#[inline(always)]
pub(crate) fn decide(ctx: &XdpContext) -> u32 {
    let frame = Frame::new(ctx);
    let reason = match classify(&frame) {
        Ok(reason) | Err(reason) => reason,
    };
    finish(&frame, reason)
}

#[inline(always)]
fn classify(frame: &Frame) -> Result<Reason, Reason> {
    let (source, transport) = parse::network(frame)?;
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
        return Ok(if matched.action == action::ALLOW {
            Reason::Allowlisted
        } else {
            Reason::Blocked
        });
    }
    let l4 = parse::transport(frame, &transport)?;
    if let Some(reason) = rules::check(&l4, frame.len() as u64) {
        return Ok(reason);
    }
    if let Some(reason) = limit::check(&source, l4, frame.len() as u64) {
        return Ok(reason);
    }
    Ok(Reason::Passed)
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

/// The single exit: count the frame under its reason and turn the reason
/// into an XDP action.
#[inline(always)]
fn finish(frame: &Frame, reason: Reason) -> u32 {
    if let Some(counter) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame.len() as u64;
        }
    }
    if reason.drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
