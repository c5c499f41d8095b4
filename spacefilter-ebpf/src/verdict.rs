//! The verdict pipeline: parse the network layer, then the lists
//! (allowlist, which wins over everything, and blocklist, in one
//! longest-match lookup, see [`lookup`]) → auto-blocks → header rules →
//! the shield (SYN cookies, out-of-state segments) → flood guards → pass;
//! the later fragments of a datagram whose first fragment was dropped go
//! the same way as it ([`fragments`]). Every frame leaves through [`finish`], which records the per-CPU
//! counters of its interface and hands dropped frames to the sampler and,
//! when switched on, every verdict to the debug log ([`crate::observe`]).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use spacefilter_common::{HIT_LANES, IFACE_TABLE, observe_flags, sample_hash, stats_index};
use spacefilter_common::{
    Reason,
    lookup::{ALLOW, MAX_SLOT},
};

use crate::{
    fragments, limit,
    lookup::{self, Tables},
    maps::{IFACE_SLOTS, OBSERVE, RULE_HITS, STATS},
    observe::{self, Exit, exit_flags},
    parse::{self, Frame, L4, Source},
    rules, shield,
};

/// A frame's verdict: why, and what matched (see
/// [`spacefilter_common::DropSample::detail`]).
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) reason: Reason,
    pub(crate) detail: u32,
    /// The frame was resized to answer it: the parse's bounds no longer
    /// hold, so nothing may read it any more.
    pub(crate) resized: bool,
}

impl From<Reason> for Verdict {
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            detail: 0,
            resized: false,
        }
    }
}

#[inline(always)]
pub(crate) fn decide(ctx: &XdpContext) -> u32 {
    let frame = Frame::new(ctx);
    let mut source = None;
    let verdict = match classify(ctx, &frame, &mut source) {
        Ok(verdict) => verdict,
        Err(reason) => reason.into(),
    };
    finish(ctx, &frame, verdict, source.as_ref())
}

/// Decides; `source` is set once the network header has been read.
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    frame: &Frame,
    source_out: &mut Option<Source>,
) -> Result<Verdict, Reason> {
    let (source, transport) = parse::network(frame)?;
    *source_out = Some(source);
    let tables = Tables::read();
    let matched = if source.v6 {
        lookup::v6(source.hi, source.lo, tables)
    } else {
        lookup::v4(source.v4_addr(), tables)
    };
    if matched != 0 {
        let slot = matched & MAX_SLOT;
        if let Some(hits) = RULE_HITS.get_ptr_mut(slot / HIT_LANES) {
            // SAFETY: a per-CPU value, written only by this CPU; the lane
            // is below `HIT_LANES`.
            unsafe { (*hits)[(slot % HIT_LANES) as usize] += 1 };
        }
        return Ok(Verdict {
            reason: if matched & ALLOW != 0 {
                Reason::Allowlisted
            } else {
                Reason::Blocked
            },
            detail: matched & MAX_SLOT,
            resized: false,
        });
    }
    if let Some(reason) = limit::auto_blocked(&source) {
        return Ok(reason.into());
    }
    let l4 = parse::transport(frame, &transport)?;
    if let Some(verdict) = fragments::later(&source, &l4) {
        return Ok(verdict);
    }
    let verdict = on_headers(ctx, frame, &source, &l4);
    fragments::first(&source, &l4, &verdict);
    Ok(verdict)
}

/// The stages that read the transport header: header rules → shield →
/// flood guards → pass.
#[inline(always)]
fn on_headers(ctx: &XdpContext, frame: &Frame, source: &Source, l4: &L4) -> Verdict {
    if let Some(verdict) = rules::check(l4, frame.len() as u64) {
        return verdict;
    }
    if let Some(verdict) = shield::check(ctx, source, l4) {
        return verdict;
    }
    if let Some(reason) = limit::check(source, *l4, frame.len() as u64) {
        return reason.into();
    }
    Reason::Passed.into()
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
    if verdict.resized {
        // The frame was turned into the answer (or spoiled on the way, if
        // the kernel would not resize it as asked): the old bounds are
        // gone, so the observers cannot read it.
        return if reason == Reason::SynCookie {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_DROP
        };
    }
    let drops = reason.drops();
    if let Some(config) = OBSERVE.get(0)
        && config.flags != 0
        // A dropped frame not picked for a sample costs this draw and
        // nothing more, unless every verdict is logged.
        && (config.flags & observe_flags::DEBUG_LOG != 0
            || (drops && sample_hash(seq) <= config.sample_below))
    {
        let mut flags = if drops { exit_flags::DROPS } else { 0 };
        let (mut hi, mut lo) = (0, 0);
        if let Some(source) = source {
            flags |= exit_flags::HAS_SOURCE;
            if source.v6 {
                flags |= exit_flags::V6;
            }
            (hi, lo) = (source.hi, source.lo);
        }
        let exit = Exit {
            reason: reason as u32,
            detail: verdict.detail,
            ifindex,
            flags,
            hi,
            lo,
        };
        observe::spacefilter_observe(ctx.ctx, &raw const exit);
    }
    if drops {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
