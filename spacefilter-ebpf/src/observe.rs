//! What the admin sees of the per-packet path, when asked for:
//! - a sample of dropped frames, 1 in N on average, through the `SAMPLES`
//!   ring buffer, with a hard per-CPU budget per second so that sampling
//!   cannot become the bottleneck under a flood: whether a frame is picked
//!   is a hash of its counter's value ([`sample_hash`]), so a frame not
//!   picked costs a multiplication, no map lookup and no helper call;
//! - a debug log line per verdict through aya-log.
//!
//! Both are switched in the `OBSERVE` array at runtime; with both off,
//! [`crate::verdict::finish`] skips this module after one test of a word it
//! has in hand.
//!
//! Kernel: ring buffers (5.8), `bpf_ktime_get_ns` (4.x for XDP),
//! `bpf_ktime_get_coarse_ns` (5.11), `bpf_xdp_load_bytes` for a sample's
//! head (5.18).

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use spacefilter_common::{DropSample, KERNEL_LOG_TARGET, Observe, observe_flags, sample_hash};

use crate::{
    maps::{SAMPLE_STATE, SAMPLES},
    parse::{Frame, Source},
    verdict::Verdict,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Samples the frame if it is dropped and picked, and logs the verdict if
/// the debug log is on.
#[inline(always)]
pub(crate) fn verdict(
    ctx: &XdpContext,
    frame: &Frame,
    config: &Observe,
    (verdict, ifindex, drops, seq): (Verdict, u32, bool, u64),
    source: Option<&Source>,
) {
    if drops && config.flags & observe_flags::SAMPLE != 0 {
        sample(ctx, frame, config, (verdict, ifindex, seq));
    }
    if config.flags & observe_flags::DEBUG_LOG != 0 {
        log(ctx, frame, verdict, ifindex, source);
    }
}

#[inline(always)]
fn sample(
    ctx: &XdpContext,
    frame: &Frame,
    config: &Observe,
    (verdict, ifindex, seq): (Verdict, u32, u64),
) {
    // A frame that is not picked costs this draw and nothing more.
    if sample_hash(seq) > config.sample_below {
        return;
    }
    let Some(state) = SAMPLE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU value, used only by this CPU.
    let state = unsafe { &mut *state };
    // With the second's budget spent, the coarse clock (the time of the
    // last tick, no read of the clock source) says whether the second may
    // be over: it is never ahead of the precise clock, so while it reads a
    // time inside the second, the second is not over. Under a flood most
    // frames picked end here; those picked before the first tick of the
    // next second are counted capped too, never sent over the cap.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    if state.in_window >= u64::from(config.cap_per_cpu)
        && unsafe { bpf_ktime_get_coarse_ns() } < state.window_end_ns
    {
        state.capped += 1;
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Budgets run per second of the clock, not per second since the first
    // sample: no clock second ever holds more than the cap.
    if now >= state.window_end_ns {
        state.window_end_ns = (now / NS_PER_SEC + 1) * NS_PER_SEC;
        state.in_window = 0;
    }
    if state.in_window >= u64::from(config.cap_per_cpu) {
        state.capped += 1;
        return;
    }
    let Some(mut entry) = SAMPLES.reserve::<DropSample>(0) else {
        state.lost += 1;
        return;
    };
    let out = entry.as_mut_ptr();
    // SAFETY: the reservation holds one DropSample, ours until submitted.
    unsafe {
        (*out).ts_ns = now;
        (*out).ifindex = ifindex;
        (*out).reason = verdict.reason as u32;
        (*out).detail = verdict.detail;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "frames are far below 4 GiB"
        )]
        {
            (*out).len = frame.len() as u32;
            (*out).cap_len = frame.copy_head(ctx, &mut (*out).data) as u32;
        }
        (*out).reserved = 0;
    }
    entry.submit(0);
    state.in_window += 1;
    state.sent += 1;
}

#[inline(always)]
fn log(ctx: &XdpContext, frame: &Frame, verdict: Verdict, ifindex: u32, source: Option<&Source>) {
    let reason = verdict.reason.name();
    let len = frame.len();
    let detail = verdict.detail;
    match source {
        Some(source) if !source.v6 => debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "{:i} len {} ifindex {}: {} (match {})",
            source.v4_addr(),
            len,
            ifindex,
            reason,
            detail
        ),
        Some(source) => debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "{:i} len {} ifindex {}: {} (match {})",
            ((u128::from(source.hi) << 64) | u128::from(source.lo)).to_be_bytes(),
            len,
            ifindex,
            reason,
            detail
        ),
        None => debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "frame len {} ifindex {}: {}", len, ifindex, reason),
    }
}
