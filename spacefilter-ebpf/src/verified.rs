//! Verified sources (see [`spacefilter_common::Verified`]): read by the
//! guards and the shield, proven by a cookie's ACK here and by the host's
//! own traffic in [`crate::egress`].
//!
//! Kernel: LRU hash maps (4.10), per-CPU arrays (4.6).

use spacefilter_common::{Verified, shield_flags, verified_how};

use crate::{
    features,
    maps::{
        PEERS_SEEN, PEERS_SEEN_BITS, SHIELD, SHIELD_BUDGET, VERIFIED, VERIFY_SETTINGS, VERIFY_STATS,
    },
    parse::Source,
};

/// A proof renews a verification only when it would move its end by more
/// than this: the host's traffic to a busy peer costs a map write a second
/// at most.
const RENEW_NS: u64 = 1_000_000_000;

/// The `VERIFIED` key of an address: IPv4 as an IPv4-mapped IPv6 address,
/// IPv6 whole. Built from two words: an array literal with zeros becomes a
/// call to the byte-by-byte `memset` on BPF.
#[inline(always)]
pub(crate) fn key(source: &Source) -> [u8; 16] {
    let (hi, lo) = if source.v6 {
        (source.hi, source.lo)
    } else {
        (0, 0x0000_ffff_0000_0000 | u64::from(source.v4_addr()))
    };
    // SAFETY: two words are sixteen bytes, in memory's order: each word
    // is stored big-endian.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([hi.to_be(), lo.to_be()]) }
}

/// How long after the host last proved a TCP peer real a SYN from it may
/// meet a socket of its 4-tuple, in units of 2^30 ns (about 137 s): more
/// than the minute a connection the host closed first stays in
/// `TIME_WAIT` (`TCP_TIMEWAIT_LEN`), its last segment's proof (at most a
/// second stale, see [`RENEW_NS`]), a stamp's rounding and a tick of the
/// clock.
const SEEN_UNITS: i16 = 128;

/// A [`PEERS_SEEN`] stamp: `now`, read from the tick clock
/// ([`crate::features::tick_now`]), in units of 2^30 ns, odd (0 is a slot
/// never written). It wraps every 19 hours: a slot last stamped a
/// multiple of that ago reads as recent, which costs a SYN from its
/// sources the socket path, nothing more.
#[inline(always)]
fn seen_stamp(now: u64) -> u16 {
    #[expect(clippy::cast_possible_truncation, reason = "a wrapping stamp")]
    let stamp = (now >> 30) as u16 | 1;
    stamp
}

/// The [`PEERS_SEEN`] slot of a [`VERIFIED`] key: the top bits of its
/// hash.
#[inline(always)]
fn seen_slot(key: &[u8; 16]) -> usize {
    // SAFETY: sixteen bytes are two words.
    let [hi, lo] = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(*key) };
    ((hi ^ lo.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PEERS_SEEN_BITS))
        as usize
}

/// Whether the host proved `source` a real TCP peer lately (within
/// [`SEEN_UNITS`] of `now`, read from the tick clock), or a source sharing its
/// slot: a SYN from it may belong to a 4-tuple the host still has a socket of,
/// which only the shield's socket path sees (a connection the host closed first
/// stays in `TIME_WAIT` for a minute, and a client that picks the same port
/// again must reach that socket, not get a cookie). A forged flood's sources
/// are never proven; those that share a real peer's slot take the slower path,
/// and nothing else.
///
/// The stamps are one value of 8 KiB, which a flood keeps in the nearest
/// cache: a slot for each of 65 536 addresses (512 KiB as an array map's
/// entries) cost a cache miss on every forged SYN, a tenth of the receive
/// CPU's time. The price of the small table is its sharing: with N peers
/// proven within the horizon, about N / 4096 of a flood's SYNs take the
/// socket path.
#[inline(always)]
pub(crate) fn seen_lately(source: &Source, now: u64) -> bool {
    let Some(stamps) = PEERS_SEEN.get(0) else {
        return true;
    };
    let Some(&stamp) = stamps.get(seen_slot(&key(source))) else {
        return true;
    };
    // Signed: another CPU may have stamped it with a clock read a moment
    // after this one's.
    #[expect(clippy::cast_possible_wrap, reason = "a wrapping difference, signed")]
    let lately = stamp != 0 && (seen_stamp(now).wrapping_sub(stamp) as i16) < SEEN_UNITS;
    lately
}

/// Stamps the [`PEERS_SEEN`] slot of `key` at `now`, unless it already
/// holds that stamp: a write every two seconds per slot at most.
#[inline(always)]
fn stamp_seen(key: &[u8; 16], now: u64) {
    let stamp = seen_stamp(now);
    let Some(stamps) = PEERS_SEEN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the array's only value; CPUs race on its slots, and
    // either's write is right.
    if let Some(seen) = unsafe { (*stamps).get_mut(seen_slot(key)) }
        && *seen != stamp
    {
        *seen = stamp;
    }
}

/// Whether `source` is verified at `now`.
#[inline(always)]
pub(crate) fn holds(source: &Source, now: u64) -> bool {
    // SAFETY: a map value, read once.
    unsafe { VERIFIED.get(key(source)) }.is_some_and(|v| v.until_ns > now)
}

/// Whether `source` is verified at `now` for the shield's budget for
/// unverified UDP: as [`holds`], except that a source first answered over
/// UDP as the current flood of unverified datagrams began (within
/// [`FLOOD_EDGE_MS`] before it, or after) is not. The service answered it
/// out of that budget's burst, which the flood spends before the budget
/// runs over and [`prove`] stops verifying anyone new; verified, each of
/// those forged sources would pass unbudgeted for its probation.
#[inline(always)]
pub(crate) fn holds_under_flood(source: &Source, now: u64) -> bool {
    // SAFETY: a map value, read once.
    let Some(entry) = (unsafe { VERIFIED.get(key(source)) }) else {
        return false;
    };
    if entry.until_ns <= now {
        return false;
    }
    !on_probation(entry, now)
        || !under_pressure(now).is_some_and(|began| of_the_flood(began, entry.since_ms))
}

/// Whether `entry`, still verified at `now`, may be on probation: verified
/// by a UDP answer for no longer than a probation from now. A settled
/// entry ends later (it is renewed for the full idle time), except in the
/// last seconds before it lapses unused.
#[inline(always)]
fn on_probation(entry: &Verified, now: u64) -> bool {
    entry.how == verified_how::REPLIED && entry.until_ns <= now + PROBATION_NS
}

/// Whether a source first answered at `since_ms` was answered as the
/// flood that began at `began` (monotonic ns) did: within
/// [`FLOOD_EDGE_MS`] before it, or after. A signed difference: another CPU
/// may have stamped the entry with a clock read a moment after this one's.
#[inline(always)]
fn of_the_flood(began: u64, since_ms: u32) -> bool {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "milliseconds, wrapping; a signed difference"
    )]
    let before = ((began / 1_000_000) as u32).wrapping_sub(since_ms) as i32;
    before < FLOOD_EDGE_MS.cast_signed()
}

/// How long after the shield's budget for unverified UDP last ran over the
/// host's answers still verify nobody new.
pub(crate) const PRESSURE_NS: u64 = 2_000_000_000;

/// Answers to a source first answered less than this long before a flood
/// began count as the flood's: the budget's burst is spent within it.
const FLOOD_EDGE_MS: u32 = 100;

/// When the current flood of unverified datagrams began (monotonic ns), if
/// UDP from unverified sources to the shield's ports comes faster than its
/// budget, now or within [`PRESSURE_NS`]. A service that answers any
/// datagram would answer the flood's forged sources within the budget:
/// while the flood lasts, an answer verifies nobody new.
#[inline(always)]
pub(crate) fn under_pressure(now: u64) -> Option<u64> {
    let armed = SHIELD
        .get(0)
        .is_some_and(|s| s.flags & (shield_flags::ON | shield_flags::WATCH) != 0);
    if !armed {
        return None;
    }
    let budget = SHIELD_BUDGET.get(0)?;
    // Saturating: another CPU may stamp it with a clock read a moment after
    // this one's.
    (budget.last_over_ns != 0 && now.saturating_sub(budget.last_over_ns) < PRESSURE_NS)
        .then_some(budget.over_since_ns)
}

/// How long a UDP answer alone holds a source verified until it is
/// settled: answered again after this long (see [`prove`]).
const PROBATION_MS: u32 = 2_000;
const PROBATION_NS: u64 = PROBATION_MS as u64 * 1_000_000;

/// Records a proof (a [`spacefilter_common::verified_how`] value) that the
/// source of `key` is real: it stays verified for the settings' idle time
/// from `now`, or longer if it already was. Counts the sources verified
/// anew. A TCP proof (a connection, a cookie's ACK) also stamps the
/// peer's slot for [`seen_lately`].
///
/// A UDP answer (`REPLIED`) is the weakest proof: a service that answers
/// any datagram answers forged sources too, within the shield's budget for
/// them. Such a source is on probation at first: verified for
/// [`PROBATION_NS`], and for the full idle time once answered again after
/// that. While unverified datagrams come faster than the budget
/// ([`under_pressure`]), an answer verifies nobody new; the sources
/// answered before the flood began stay verified (on probation, to be
/// settled as usual), and a forged source first answered as the flood
/// began (within [`FLOOD_EDGE_MS`] of it) counts as unverified for the
/// shield's budget while the flood lasts ([`holds_under_flood`]) and lapses
/// within seconds.
#[inline(always)]
pub(crate) fn prove(key: &[u8; 16], how: u32, now: u64) {
    let Some(settings) = VERIFY_SETTINGS.get(0) else {
        return;
    };
    if how == verified_how::ESTABLISHED || how == verified_how::COOKIE {
        stamp_seen(key, features::tick_now());
    }
    let full = now + settings.idle_ns;
    #[expect(clippy::cast_possible_truncation, reason = "milliseconds, wrapping")]
    let now_ms = (now / 1_000_000) as u32;
    let replied = how == verified_how::REPLIED;
    let pressure = if replied { under_pressure(now) } else { None };
    if let Some(entry) = VERIFIED.get_ptr_mut(key) {
        // SAFETY: a map value, valid while this program runs; CPUs race on
        // it, and either's write is right.
        let entry = unsafe { &mut *entry };
        if entry.until_ns > now {
            // Signed differences: another CPU may have stamped the entry
            // with a clock read a moment after this one's. Past the
            // probation by a whole millisecond: an entry never renewed has
            // ended by then (in nanoseconds), so only a source answered
            // again and again through its probation settles. (Answers in
            // one tick of the coarse clock share a time: at `>=`, a tick
            // read in the probation's last millisecond would settle every
            // source first answered in the same tick, a flood's too.)
            #[expect(clippy::cast_possible_wrap, reason = "wrapping differences, signed")]
            let settled = !replied
                || !on_probation(entry, now)
                || now_ms.wrapping_sub(entry.since_ms) as i32 > PROBATION_MS as i32;
            let of_the_flood = pressure.is_some_and(|began| of_the_flood(began, entry.since_ms));
            let until_ns = if settled {
                full
            } else if of_the_flood {
                // First answered as the flood began: no more than the
                // probation it has.
                return;
            } else {
                now + PROBATION_NS.min(settings.idle_ns)
            };
            if until_ns > entry.until_ns + RENEW_NS {
                entry.until_ns = until_ns;
                entry.how = how;
            }
            return;
        }
        if pressure.is_some() {
            return;
        }
        *entry = fresh(how, now, full, settings.idle_ns, now_ms);
        count(how);
        return;
    }
    if pressure.is_some() {
        return;
    }
    if VERIFIED
        .insert(key, fresh(how, now, full, settings.idle_ns, now_ms), 0)
        .is_ok()
    {
        count(how);
    }
}

/// A source verified anew at `now`: for the full idle time, or on
/// probation for a UDP answer.
#[inline(always)]
fn fresh(how: u32, now: u64, full: u64, idle_ns: u64, now_ms: u32) -> Verified {
    Verified {
        until_ns: if how == verified_how::REPLIED {
            now + PROBATION_NS.min(idle_ns)
        } else {
            full
        },
        how,
        since_ms: now_ms,
    }
}

#[inline(always)]
fn count(how: u32) {
    if let Some(counter) = VERIFY_STATS.get_ptr_mut(how) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *counter += 1 };
    }
}
