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
//! Kernel: ring buffers (5.8), `bpf_ktime_get_coarse_ns` (5.11; else
//! `bpf_ktime_get_ns`), `bpf_xdp_load_bytes` for a sample's head (5.18).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, xdp_md},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use spacefilter_common::{DropSample, KERNEL_LOG_TARGET, Observe, Reason, observe_flags};

use crate::{
    features,
    maps::{OBSERVE, SAMPLE_STATE, SAMPLES, SAMPLES_BYTES},
    parse::{Frame, Source},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// What [`spacefilter_observe`] is told of a frame's exit: a global
/// function takes at most five arguments, and pointers only to sized
/// memory.
#[repr(C)]
pub(crate) struct Exit {
    pub(crate) reason: u32,
    pub(crate) detail: u32,
    pub(crate) ifindex: u32,
    /// [`exit_flags`].
    pub(crate) flags: u32,
    pub(crate) hi: u64,
    pub(crate) lo: u64,
}

pub(crate) mod exit_flags {
    pub(crate) const DROPS: u32 = 1;
    pub(crate) const HAS_SOURCE: u32 = 2;
    pub(crate) const V6: u32 = 4;
}

/// Samples the frame if it is dropped and picked, and logs the verdict if
/// the debug log is on.
///
/// A global function (BTF linkage global, kernel 5.6; a pointer argument
/// to sized memory, 5.12): the verifier checks it once, on its own, with
/// whatever its arguments may hold, rather than once for every state in
/// which a frame reaches [`crate::verdict::finish`]. Its return value is
/// always 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn spacefilter_observe(ctx: *mut xdp_md, exit: *const Exit) -> u32 {
    // SAFETY: the caller passes its context and an `Exit` on its stack;
    // the verifier makes a global function check for null itself.
    let Some(exit) = (unsafe { exit.as_ref() }) else {
        return 0;
    };
    let Some(config) = OBSERVE.get(0) else {
        return 0;
    };
    let ctx = XdpContext::new(ctx);
    let frame = Frame::new(&ctx);
    if exit.flags & exit_flags::DROPS != 0 && config.flags & observe_flags::SAMPLE != 0 {
        sample(&ctx, &frame, config, exit);
    }
    if config.flags & observe_flags::DEBUG_LOG != 0 {
        log(&ctx, &frame, exit);
    }
    0
}

#[inline(always)]
fn sample(ctx: &XdpContext, frame: &Frame, config: &Observe, exit: &Exit) {
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
    if state.in_window >= u64::from(config.cap_per_cpu)
        && features::coarse_now() < state.window_end_ns
    {
        state.capped += 1;
        return;
    }
    // The coarse clock (a tick's precision, 4 ms on Debian's kernels): a
    // sample's time is when its tick began, and a sample stands for a
    // hundred or a thousand drops around it anyway; the precise clock
    // costs about 40 ns a read on a virtual machine.
    let now = features::coarse_now();
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
        (*out).ifindex = exit.ifindex;
        (*out).reason = exit.reason;
        (*out).detail = exit.detail;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "frames are far below 4 GiB"
        )]
        {
            (*out).len = frame.len() as u32;
            (*out).cap_len = if features::on(features::FRAME_HEADS) {
                frame.copy_head(ctx, &mut (*out).data) as u32
            } else {
                0
            };
        }
        (*out).reserved = 0;
    }
    entry.submit(wakeup());
    state.in_window += 1;
    state.sent += 1;
}

/// Unread samples wake the daemon once they fill this much of the ring:
/// half of it, some 780 samples.
const WAKE_AT_BYTES: u64 = SAMPLES_BYTES as u64 / 2;

/// A sample's room in the ring: the kernel's 8-byte record header, and the
/// sample rounded up to 8 bytes.
const RECORD_BYTES: u64 = (8 + size_of::<DropSample>() as u64).next_multiple_of(8);

/// How a sample is submitted: without waking the daemon, which reads the
/// ring on a timer of its own (`daemon::tasks::SAMPLES_READ_EVERY`),
/// except for the sample whose record takes the unread samples past
/// [`WAKE_AT_BYTES`] (the unread bytes count the reserved records, this
/// one's included). A wakeup is an `irq_work` that interrupts this CPU,
/// and the ring's default wakes the reader at every sample that finds the
/// ring empty: under a flood at the sampler's cap, a wakeup of the daemon
/// for almost every sample, and in `test_run` on a virtual machine a fifth
/// to a third of a sent sample's cost. Two CPUs reserving at once may both step past
/// the mark; the timer reads the ring then.
///
/// Kernel: `bpf_ringbuf_query` and the submit flags (5.8).
#[inline(always)]
fn wakeup() -> u64 {
    let unread = SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA));
    if (WAKE_AT_BYTES..WAKE_AT_BYTES + RECORD_BYTES).contains(&unread) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// The width of a reason's name in the debug log: the longest, padded.
const NAME_WIDTH: usize = 16;

/// The reasons' names by index, padded with spaces to one width. A name
/// taken from this table by index is one path for the verifier; a `match`
/// on the reason would have it walk the log's formatting once per name
/// (a few hundred thousand instructions more).
static REASON_NAMES: [[u8; NAME_WIDTH]; 32] = reason_names();

const fn reason_names() -> [[u8; NAME_WIDTH]; 32] {
    let mut table = [[b' '; NAME_WIDTH]; 32];
    let mut i = 0;
    while i < table.len() {
        #[expect(clippy::cast_possible_truncation, reason = "below 32")]
        let name = match Reason::from_index(i as u32) {
            Some(reason) => reason.name().as_bytes(),
            None => b"unknown",
        };
        assert!(
            name.len() <= NAME_WIDTH,
            "a reason's name outgrew NAME_WIDTH"
        );
        let mut j = 0;
        while j < name.len() {
            table[i][j] = name[j];
            j += 1;
        }
        i += 1;
    }
    table
}

/// One line per verdict; the reason comes last, so that its padding is
/// trailing space.
#[inline(always)]
fn log(ctx: &XdpContext, frame: &Frame, exit: &Exit) {
    let name = &REASON_NAMES[(exit.reason & 31) as usize];
    // SAFETY: the table holds ASCII names and spaces.
    let reason = unsafe { core::str::from_utf8_unchecked(name) };
    let len = frame.len();
    let (ifindex, detail) = (exit.ifindex, exit.detail);
    let source = Source {
        v6: exit.flags & exit_flags::V6 != 0,
        hi: exit.hi,
        lo: exit.lo,
    };
    if exit.flags & exit_flags::HAS_SOURCE == 0 {
        debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "frame len {} ifindex {}: {}", len, ifindex, reason);
    } else if !source.v6 {
        debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "{:i} len {} ifindex {} (match {}): {}",
            source.v4_addr(),
            len,
            ifindex,
            detail,
            reason
        );
    } else {
        debug!(
            ctx,
            target: KERNEL_LOG_TARGET,
            "{:i} len {} ifindex {} (match {}): {}",
            ((u128::from(source.hi) << 64) | u128::from(source.lo)).to_be_bytes(),
            len,
            ifindex,
            detail,
            reason
        );
    }
}
