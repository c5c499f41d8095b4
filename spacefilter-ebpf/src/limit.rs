//! The flood guards: the reflection guard (UDP from reflector ports to
//! service ports), the SYN guard (per-source and host-wide SYN budgets),
//! and the per-source rate limiter (a token bucket per source in packets
//! and bytes per second, and auto-blocks for sources that stay over their
//! limit). They run after the lists (an allowlisted or blocked source never
//! reaches them) and cost one array lookup while all are off. Verified
//! sources ([`crate::verified`]) skip the budgets they share with forged
//! ones: the spoofed-source fallback's and the host-wide SYN budget.
//!
//! Kernel: LRU hash maps (4.10), `bpf_ktime_get_ns` (4.1),
//! `bpf_ktime_get_coarse_ns` (5.11, where the kernel has it), ring buffers
//! (5.8).

use core::ops::ControlFlow;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use spacefilter_common::{
    AutoBlock, AutoBlockEvent, Bucket, FALLBACK_HOLD_NS, Limits, Reason, TOKEN_SCALE, limit_flags,
    reflect_bits,
    tokens::{credit_us, refilled},
};

use crate::{
    features,
    maps::{
        AGG_BUCKETS, AUTO_ACTIVE, AUTO_BLOCKED, AUTO_EXEMPT, BUCKETS, EVENTS, LIMITS,
        REFLECT_PORTS, SPOOF_SEEN, SPOOF_SEEN_SLOTS, SPOOF_STATE, SYN_GLOBAL,
    },
    parse::{IPPROTO_TCP_NUMBER, IPPROTO_UDP_NUMBER, L4, Source, TCP_ACK, TCP_SYN},
    verified,
};

/// A second within its limit ends a source's time over it.
const CALM_NS: u64 = 1_000_000_000;

/// The bucket key of a source: IPv4 as an IPv4-mapped IPv6 address, IPv6
/// cut to the aggregation length.
#[inline(always)]
fn key_of(source: &Source, v6_prefix_len: u32) -> ([u8; 16], u32, u32) {
    if !source.v6 {
        return (verified::key(source), 32, 0);
    }
    let len = if v6_prefix_len > 128 {
        128
    } else {
        v6_prefix_len
    };
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&source.hi.to_be_bytes());
    key[8..].copy_from_slice(&source.lo.to_be_bytes());
    for (i, byte) in key.iter_mut().enumerate() {
        #[expect(clippy::cast_possible_truncation, reason = "i < 16")]
        let start = (i as u32) * 8;
        if len <= start {
            *byte = 0;
        } else if len < start + 8 {
            *byte &= 0xffu8 << (8 - (len - start));
        }
    }
    (key, len, 1)
}

/// An auto-block in force for `source`. It is checked right after the
/// lists, before the header rules: an auto-block is a block, listed as
/// one, and neither a pass rule nor the limiter switched off lets its
/// source through. In a dry run, the guards count its frames as
/// `would_limit` instead. One array lookup while no auto-block is in
/// force.
#[inline(always)]
pub(crate) fn auto_blocked(source: &Source) -> Option<Reason> {
    if AUTO_ACTIVE.get(0).is_none_or(|active| *active == 0) {
        return None;
    }
    let limits = LIMITS.get(0)?;
    if limits.flags & limit_flags::DRY_RUN != 0 {
        return None;
    }
    let (key, _, _) = key_of(source, limits.v6_prefix_len);
    let block = AUTO_BLOCKED.get_ptr_mut(key)?;
    // SAFETY: `block` is a map value, valid while this program runs, and
    // its hit count may race with other CPUs (documented as approximate).
    // The coarse clock: every frame of a flood with auto-blocks in force
    // reads it, and a block of seconds may end a tick late.
    unsafe {
        if (*block).until_ns <= features::coarse_now() {
            return None;
        }
        (*block).hits += 1;
    }
    Some(Reason::AutoBlocked)
}

/// The flood guards' verdict on a frame of `len` bytes from `source`, or
/// `None` to pass it on. In order: the reflection guard, then an
/// auto-block in force, the SYN guard and the per-source rate limit (see
/// [`guards`]).
#[inline(always)]
pub(crate) fn check(source: &Source, l4: L4, len: u64) -> Option<Reason> {
    let limits = LIMITS.get(0)?;
    if limits.flags == 0 {
        return None;
    }
    let dry_run = limits.flags & limit_flags::DRY_RUN != 0;
    let ControlFlow::Break(Some(verdict)) = guards(limits, source, l4, len) else {
        return None;
    };
    Some(if dry_run { Reason::WouldLimit } else { verdict })
}

/// What a guard step decided, in the manner of Cilium's `bpf/lib` helpers:
/// a verdict that ends the guards (`Break`: [`limited`] for a reason, or
/// [`PASS`]), or [`NEXT`] to leave the frame to the next step. [`guards`]
/// lists the steps, each followed by `?`.
type Step = ControlFlow<Option<Reason>>;

/// Let the frame through, past the steps after this one.
const PASS: Step = ControlFlow::Break(None);
/// No verdict: the next step decides.
const NEXT: Step = ControlFlow::Continue(());

/// Limit the frame for `reason` (a dry run counts it as `would_limit`).
#[inline(always)]
const fn limited(reason: Reason) -> Step {
    ControlFlow::Break(Some(reason))
}

/// The guards, step by step: the reflection guard; then, for a frame that
/// the SYN guard or the rate limiter looks at, its source's bucket. A
/// source without one goes through [`new_source`]; a known source through
/// its auto-block, a refill, the SYN guard, the rate limit and, over it,
/// an auto-block that is due.
#[inline(always)]
fn guards(limits: &Limits, source: &Source, l4: L4, len: u64) -> Step {
    reflection(limits, l4)?;
    let syn = is_syn(limits, l4);
    if limits.flags & limit_flags::ENABLED == 0 && !syn {
        return PASS;
    }
    let (key, prefix_len, v6) = key_of(source, limits.v6_prefix_len);
    let now = if limits.flags & limit_flags::COARSE_CLOCK != 0 {
        // A tick's precision, which every budget's burst covers (set by
        // the loader), and about 40 ns less than the precise clock on a
        // virtual machine.
        features::coarse_now()
    } else {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    };

    // An LRU hash map (kernel 4.10).
    let Some(bucket) = BUCKETS.get_ptr_mut(key) else {
        return new_source(limits, source, l4, &key, syn, len, now);
    };
    // SAFETY: a map value, valid while this program runs. Updates from
    // several CPUs to one source's bucket race; the limits stay
    // approximately right.
    let bucket = unsafe { &mut *bucket };
    blocked(bucket, now)?;
    refill(bucket, limits, now);
    if syn {
        syn_budgets(bucket, limits, source, now)?;
    }
    within_rate(bucket, limits, len, now)?;
    auto_block_due(bucket, limits, &key, prefix_len, v6, now)?;
    limited(Reason::RateLimited)
}

/// The reflection guard: UDP from a reflector port to a service port.
/// Most frames cost one array lookup (their source port is no
/// reflector's).
#[inline(always)]
fn reflection(limits: &Limits, l4: L4) -> Step {
    if limits.flags & limit_flags::REFLECT != 0
        && l4.proto == IPPROTO_UDP_NUMBER
        && l4.ports
        && reflected(l4.src_port, l4.dst_port)
    {
        return limited(Reason::Reflection);
    }
    NEXT
}

/// Whether the SYN guard looks at the frame: a TCP SYN without ACK while
/// it is on.
#[inline(always)]
fn is_syn(limits: &Limits, l4: L4) -> bool {
    limits.flags & limit_flags::SYN != 0
        && l4.proto == IPPROTO_TCP_NUMBER
        && l4.ports
        && l4.tcp_flags & TCP_SYN != 0
        && l4.tcp_flags & TCP_ACK == 0
}

/// A source without a bucket: a new one, or one whose bucket was evicted
/// (an auto-block in `AUTO_BLOCKED` was enforced before, by
/// [`auto_blocked`]). In order: the spoofed-source fallback, a new bucket,
/// the host-wide SYN budget (which a SYN let through by the fallback's budgets
/// answers to as well). Its own budgets do not hold the frame back: its
/// bucket starts full, less this frame.
#[inline(always)]
fn new_source(
    limits: &Limits,
    source: &Source,
    l4: L4,
    key: &[u8; 16],
    syn: bool,
    len: u64,
    now: u64,
) -> Step {
    let fallback = spoofed(limits, source, l4, now);
    if fallback == PASS {
        // Within the aggregate budgets: a SYN still answers to the host's.
        if syn {
            host_syn_budget(limits, source, now)?;
        }
        return PASS;
    }
    fallback?;
    first_bucket(limits, key, syn, len, now);
    if syn {
        host_syn_budget(limits, source, now)?;
    }
    PASS
}

/// The spoofed-source fallback, for a source without a bucket. While it is
/// on (a spoofed-source flood), such a source gets no bucket (it would
/// push a real one out of the LRU map): the aggregate budgets of its
/// destination port and its source prefix decide. A verified source is
/// not suspect: it goes on to a bucket of its own.
#[inline(always)]
fn spoofed(limits: &Limits, source: &Source, l4: L4, now: u64) -> Step {
    if !spoof_fallback(limits, source, now) || verified::holds(source, now) {
        return NEXT;
    }
    if aggregate_allowed(limits, source, l4, now) {
        PASS
    } else {
        limited(Reason::SpoofLimited)
    }
}

/// A new source's bucket: full, less this frame.
#[inline(always)]
fn first_bucket(limits: &Limits, key: &[u8; 16], syn: bool, len: u64, now: u64) {
    let fresh = Bucket {
        packets: (limits.pps_burst * TOKEN_SCALE).saturating_sub(TOKEN_SCALE),
        bytes: (limits.bps_burst * TOKEN_SCALE).saturating_sub(len * TOKEN_SCALE),
        last_ns: now,
        over_since_ns: 0,
        last_over_ns: 0,
        syns: (limits.syn_burst * TOKEN_SCALE).saturating_sub(if syn { TOKEN_SCALE } else { 0 }),
        blocked_until_ns: 0,
        blocked_hits: 0,
    };
    let _ = BUCKETS.insert(key, fresh, 0);
}

/// A known source's auto-block, kept in its bucket (and enforced by
/// [`auto_blocked`] while `AUTO_BLOCKED` holds it too).
#[inline(always)]
fn blocked(bucket: &mut Bucket, now: u64) -> Step {
    if bucket.blocked_until_ns > now {
        bucket.blocked_hits += 1;
        return limited(Reason::AutoBlocked);
    }
    NEXT
}

/// The SYN guard for a known source: its own SYN budget, then the
/// host's; the SYN is taken from its own only when both allow it.
#[inline(always)]
fn syn_budgets(bucket: &mut Bucket, limits: &Limits, source: &Source, now: u64) -> Step {
    if limits.syn_pps != 0 && bucket.syns < TOKEN_SCALE {
        return limited(Reason::SynLimited);
    }
    host_syn_budget(limits, source, now)?;
    bucket.syns = bucket.syns.saturating_sub(TOKEN_SCALE);
    NEXT
}

/// The host-wide SYN budget: takes one SYN from it. A verified source's
/// SYNs are not counted against it: a flood of forged SYNs that spends it
/// does not shut out a client that has proven itself.
#[inline(always)]
fn host_syn_budget(limits: &Limits, source: &Source, now: u64) -> Step {
    if limits.syn_global_pps == 0 || verified::holds(source, now) || global_syn_allowed(limits, now)
    {
        NEXT
    } else {
        limited(Reason::SynLimited)
    }
}

/// The per-source rate limit: a frame within it takes its tokens and
/// passes (as does every frame while the limiter is off); a frame over it
/// extends the source's time over its limit and goes on to
/// [`auto_block_due`].
#[inline(always)]
fn within_rate(bucket: &mut Bucket, limits: &Limits, len: u64, now: u64) -> Step {
    if limits.flags & limit_flags::ENABLED == 0 {
        return PASS;
    }
    let cost = len * TOKEN_SCALE;
    let over = (limits.pps != 0 && bucket.packets < TOKEN_SCALE)
        || (limits.bps != 0 && bucket.bytes < cost);
    if !over {
        bucket.packets = bucket.packets.saturating_sub(TOKEN_SCALE);
        bucket.bytes = bucket.bytes.saturating_sub(cost);
        return PASS;
    }
    if bucket.over_since_ns == 0 || now.saturating_sub(bucket.last_over_ns) > CALM_NS {
        bucket.over_since_ns = now;
    }
    bucket.last_over_ns = now;
    NEXT
}

/// Auto-blocks a source over its limit for `block_after_ns` (not in a dry
/// run, and never a source in `AUTO_EXEMPT`): in its bucket, in
/// `AUTO_BLOCKED` and through an event.
#[inline(always)]
fn auto_block_due(
    bucket: &mut Bucket,
    limits: &Limits,
    key: &[u8; 16],
    prefix_len: u32,
    v6: u32,
    now: u64,
) -> Step {
    if limits.flags & limit_flags::DRY_RUN == 0
        && limits.block_after_ns != 0
        && now.saturating_sub(bucket.over_since_ns) >= limits.block_after_ns
        // SAFETY: only whether the key is present is read.
        && unsafe { AUTO_EXEMPT.get(key) }.is_none()
    {
        bucket.blocked_until_ns = now + limits.block_ttl_ns;
        bucket.blocked_hits += 1;
        auto_block(key, prefix_len, v6, bucket.blocked_until_ns);
        bucket.over_since_ns = 0;
        return limited(Reason::AutoBlocked);
    }
    NEXT
}

/// Counts a new source and says whether the spoofed-source fallback is on
/// (switching it on when new sources come faster than the threshold). A
/// source is counted once a window, however many frames it sends while it
/// has no bucket: otherwise, after a flood, a few ordinary newcomers (who
/// get no bucket while the fallback is on) would keep it on by themselves.
#[inline(always)]
fn spoof_fallback(limits: &Limits, source: &Source, now: u64) -> bool {
    if limits.spoof_threshold == 0 || limits.flags & limit_flags::ENABLED == 0 {
        return false;
    }
    let Some(state) = SPOOF_STATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the array's only value; CPUs race on it (approximate counts).
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.window_ns) >= 1_000_000_000 {
        state.window_ns = now;
        state.new_sources = 0;
    }
    if first_in_window(source, state.window_ns) {
        state.new_sources += 1;
    }
    if state.new_sources > limits.spoof_threshold {
        if state.active_until_ns <= now {
            state.switches += 1;
        }
        state.active_until_ns = now + FALLBACK_HOLD_NS;
    }
    state.active_until_ns > now
}

/// Whether `source` is the first in its `SPOOF_SEEN` slot in the window
/// that began at `window_ns`; marks it seen. Sources that share a slot
/// count once (an undercount of about one in 65 536 per source in the
/// window).
#[inline(always)]
fn first_in_window(source: &Source, window_ns: u64) -> bool {
    let hash = (source.hi ^ source.lo.rotate_left(32) ^ u64::from(source.v6))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let slot = (hash >> 32) as u32 & (SPOOF_SEEN_SLOTS - 1);
    // A window's stamp: its start in µs, never 0 (a slot never used).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a stamp, compared for equality"
    )]
    let stamp = (window_ns / 1000) as u32 | 1;
    let Some(seen) = SPOOF_SEEN.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: an array value; CPUs race on it (approximate counts).
    unsafe {
        if *seen == stamp {
            return false;
        }
        *seen = stamp;
    }
    true
}

/// Takes one packet from the aggregate budgets of the frame's destination
/// port and of its source prefix (/24 for IPv4, /48 for IPv6).
#[inline(always)]
fn aggregate_allowed(limits: &Limits, source: &Source, l4: L4, now: u64) -> bool {
    let dst_port = if l4.ports { l4.dst_port } else { 0 };
    let mut port_key = [0u8; 20];
    port_key[0] = 1;
    port_key[2..4].copy_from_slice(&dst_port.to_be_bytes());
    let mut prefix_key = [0u8; 20];
    prefix_key[0] = 2;
    if source.v6 {
        prefix_key[4..10].copy_from_slice(&source.hi.to_be_bytes()[..6]);
    } else {
        prefix_key[4..7].copy_from_slice(&source.v4_addr().to_be_bytes()[..3]);
    }
    take_aggregate(&port_key, limits, now) && take_aggregate(&prefix_key, limits, now)
}

#[inline(always)]
fn take_aggregate(key: &[u8; 20], limits: &Limits, now: u64) -> bool {
    let cap = limits.fallback_burst * TOKEN_SCALE;
    let Some(bucket) = AGG_BUCKETS.get_ptr_mut(key) else {
        let fresh = Bucket {
            packets: cap.saturating_sub(TOKEN_SCALE),
            last_ns: now,
            ..Bucket::default()
        };
        let _ = AGG_BUCKETS.insert(key, fresh, 0);
        return cap >= TOKEN_SCALE;
    };
    // SAFETY: a map value; CPUs race on it (approximate budget).
    let bucket = unsafe { &mut *bucket };
    take_packet(
        &mut bucket.packets,
        &mut bucket.last_ns,
        (limits.fallback_pps, limits.fallback_burst),
        now,
    )
}

pub(crate) use spacefilter_common::tokens::take_packet;

/// NTP's port: from it to itself is symmetric NTP (peers polling each
/// other), not a reflected answer.
const NTP_PORT: u16 = 123;

/// UDP from a reflector port to a service port, but for symmetric NTP.
#[inline(always)]
fn reflected(src_port: u16, dst_port: u16) -> bool {
    let source = REFLECT_PORTS
        .get(u32::from(src_port))
        .is_some_and(|bits| bits & reflect_bits::SOURCE != 0);
    source
        && !(src_port == NTP_PORT && dst_port == NTP_PORT)
        && REFLECT_PORTS
            .get(u32::from(dst_port))
            .is_some_and(|bits| bits & reflect_bits::SERVICE != 0)
}

/// Takes one SYN from the host-wide budget; `false` if it is spent.
#[inline(always)]
fn global_syn_allowed(limits: &Limits, now: u64) -> bool {
    if limits.syn_global_pps == 0 {
        return true;
    }
    let Some(bucket) = SYN_GLOBAL.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the array's only value; CPUs race on it (documented).
    let bucket = unsafe { &mut *bucket };
    take_packet(
        &mut bucket.syns,
        &mut bucket.last_ns,
        (limits.syn_global_pps, limits.syn_global_burst),
        now,
    )
}

/// Refills a source's buckets (packets, bytes, SYNs) for the time since
/// the last refill.
#[inline(always)]
fn refill(bucket: &mut Bucket, limits: &Limits, now: u64) {
    let idle_us = credit_us(&mut bucket.last_ns, now);
    if idle_us == 0 {
        return;
    }
    bucket.packets = refilled(bucket.packets, idle_us, limits.pps, limits.pps_burst);
    bucket.bytes = refilled(bucket.bytes, idle_us, limits.bps, limits.bps_burst);
    bucket.syns = refilled(bucket.syns, idle_us, limits.syn_pps, limits.syn_burst);
}

#[inline(always)]
fn auto_block(key: &[u8; 16], prefix_len: u32, v6: u32, until_ns: u64) {
    let _ = AUTO_BLOCKED.insert(key, AutoBlock { until_ns, hits: 0 }, 0);
    if let Some(active) = AUTO_ACTIVE.get_ptr_mut(0) {
        // SAFETY: the array's only value; set after the block is in the
        // map, so the daemon never clears it with a block in force.
        unsafe { *active = 1 };
    }
    let event = AutoBlockEvent {
        key: *key,
        until_ns,
        prefix_len,
        v6,
    };
    // A full ring buffer loses the event, not the block: the daemon finds
    // the block when it scans the map.
    let _ = EVENTS.output::<AutoBlockEvent>(&event, 0);
}
