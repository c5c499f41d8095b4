//! The verdict pipeline: parse the network layer, then the lists
//! (allowlist, which wins over everything, and blocklist, in one
//! longest-match lookup, see [`lookup`]) → header rules → flood guards →
//! pass. Every frame leaves through [`finish`], which records the per-CPU
//! counters of its interface and hands dropped frames to the sampler and,
//! when switched on, every verdict to the debug log ([`crate::observe`]).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use spacefilter_common::{IFACE_TABLE, stats_index};
use spacefilter_common::{
    Reason,
    lookup::{ALLOW, MAX_SLOT},
};

use crate::{
    limit,
    lookup::{self, Tables},
    maps::{IFACE_SLOTS, OBSERVE, RULE_HITS, STATS},
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
        return Ok(Verdict {
            reason: if matched & ALLOW != 0 {
                Reason::Allowlisted
            } else {
                Reason::Blocked
            },
            detail: matched & MAX_SLOT,
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
    // The counter's new value: the sampler's draw.
    let mut seq = 0;
    if let Some(counter) = STATS.get_ptr_mut(stats_index(iface_slot(ifindex), reason as u32)) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame.len() as u64;
            seq = (*counter).packets;
        }
    }
    let drops = reason.drops();
    if let Some(config) = OBSERVE.get(0)
        && config.flags != 0
    {
        observe::verdict(ctx, frame, config, (verdict, ifindex, drops, seq), source);
    }
    if drops {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
