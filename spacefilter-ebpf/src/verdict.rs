//! The verdict pipeline: parse the network layer, then the lists
//! (allowlist, which wins over everything, and blocklist, in one
//! longest-match lookup, see [`lookup`]) → transport checks → pass. Every
//! frame leaves through [`finish`], which records the per-CPU counters.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use spacefilter_common::{
    Reason,
    lookup::{ALLOW, MAX_SLOT},
};

use crate::{
    limit,
    lookup::{self, Tables},
    maps::{RULE_HITS, STATS},
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
    let tables = Tables::read();
    let matched = match source {
        Source::V4(addr) => lookup::v4(addr, tables),
        Source::V6(hi, lo) => lookup::v6(hi, lo, tables),
    };
    if matched != 0 {
        if let Some(hits) = RULE_HITS.get_ptr_mut(matched & MAX_SLOT) {
            // SAFETY: a per-CPU slot, written only by this CPU.
            unsafe { *hits += 1 };
        }
        return Ok(if matched & ALLOW != 0 {
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
