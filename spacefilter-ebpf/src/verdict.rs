//! The verdict pipeline: parse the network layer, then allowlist (wins over
//! everything) → blocklist → transport checks → pass. Every frame leaves
//! through [`finish`], which records the per-CPU counters.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use spacefilter_common::{Reason, Slot, flags};

use crate::{
    maps::{
        ALLOW_V4, ALLOW_V4_EXACT, ALLOW_V6, ALLOW_V6_EXACT, BLOCK_V4, BLOCK_V4_EXACT, BLOCK_V6,
        BLOCK_V6_EXACT, CONFIG, RULE_HITS, STATS,
    },
    parse::{self, Frame, Source},
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
    let listed = match source {
        Source::V4(addr) => listed(
            &addr,
            flags,
            [
                (
                    &ALLOW_V4_EXACT,
                    &ALLOW_V4,
                    flags::ALLOW_V4_EXACT,
                    flags::ALLOW_V4_PREFIX,
                ),
                (
                    &BLOCK_V4_EXACT,
                    &BLOCK_V4,
                    flags::BLOCK_V4_EXACT,
                    flags::BLOCK_V4_PREFIX,
                ),
            ],
        ),
        Source::V6(addr) => listed(
            &addr,
            flags,
            [
                (
                    &ALLOW_V6_EXACT,
                    &ALLOW_V6,
                    flags::ALLOW_V6_EXACT,
                    flags::ALLOW_V6_PREFIX,
                ),
                (
                    &BLOCK_V6_EXACT,
                    &BLOCK_V6,
                    flags::BLOCK_V6_EXACT,
                    flags::BLOCK_V6_PREFIX,
                ),
            ],
        ),
    };
    if let Some(reason) = listed {
        return Ok(reason);
    }
    parse::transport(frame, &transport)?;
    Ok(Reason::Passed)
}

/// One list: its exact-match map, its prefix trie, and their config bits.
type List<const N: usize> = (
    &'static HashMap<[u8; N], Slot>,
    &'static LpmTrie<[u8; N], Slot>,
    u32,
    u32,
);

/// Looks the source up in the allowlist, then the blocklist, and counts a
/// hit on the entry that matched.
#[inline(always)]
fn listed<const N: usize>(addr: &[u8; N], flags: u32, lists: [List<N>; 2]) -> Option<Reason> {
    let [allow, block] = lists;
    if lookup(addr, flags, allow) {
        return Some(Reason::Allowlisted);
    }
    if lookup(addr, flags, block) {
        return Some(Reason::Blocked);
    }
    None
}

#[inline(always)]
fn lookup<const N: usize>(addr: &[u8; N], flags: u32, list: List<N>) -> bool {
    let (exact, trie, exact_bit, prefix_bit) = list;
    let mut slot = None;
    if flags & exact_bit != 0 {
        // SAFETY: the value is copied out at once; entries are never
        // updated in place.
        slot = unsafe { exact.get(addr) }.copied();
    }
    if slot.is_none() && flags & prefix_bit != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "N is 4 or 16")]
        let key = Key::new((N * 8) as u32, *addr);
        slot = trie.get(&key).copied();
    }
    match slot {
        Some(slot) => {
            if let Some(hits) = RULE_HITS.get_ptr_mut(slot) {
                // SAFETY: a per-CPU slot, written only by this CPU.
                unsafe { *hits += 1 };
            }
            true
        }
        None => false,
    }
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
