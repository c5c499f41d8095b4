//! Verified sources (see [`spacefilter_common::Verified`]): read by the
//! guards and the shield, proven by a cookie's ACK here and by the host's
//! own traffic in [`crate::egress`].
//!
//! Kernel: LRU hash maps (4.10), per-CPU arrays (4.6).

use spacefilter_common::Verified;

use crate::{
    maps::{VERIFIED, VERIFY_SETTINGS, VERIFY_STATS},
    parse::Source,
};

/// A proof renews a verification only when it would move its end by more
/// than this: the host's traffic to a busy peer costs a map write a second
/// at most.
const RENEW_NS: u64 = 1_000_000_000;

/// The `VERIFIED` key of an address: IPv4 as an IPv4-mapped IPv6 address,
/// IPv6 whole.
#[inline(always)]
pub(crate) fn key(source: &Source) -> [u8; 16] {
    if source.v6 {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&source.hi.to_be_bytes());
        key[8..].copy_from_slice(&source.lo.to_be_bytes());
        key
    } else {
        let a = source.v4_addr().to_be_bytes();
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }
}

/// Whether `source` is verified at `now`.
#[inline(always)]
pub(crate) fn holds(source: &Source, now: u64) -> bool {
    // SAFETY: a map value, read once.
    unsafe { VERIFIED.get(key(source)) }.is_some_and(|v| v.until_ns > now)
}

/// Records a proof (a [`spacefilter_common::verified_how`] value) that the
/// source of `key` is real: it stays verified for the settings' idle time
/// from `now`, or longer if it already was. Counts the sources verified
/// anew.
#[inline(always)]
pub(crate) fn prove(key: &[u8; 16], how: u32, now: u64) {
    let Some(settings) = VERIFY_SETTINGS.get(0) else {
        return;
    };
    let until_ns = now + settings.idle_ns;
    if let Some(entry) = VERIFIED.get_ptr_mut(key) {
        // SAFETY: a map value, valid while this program runs; CPUs race on
        // it, and either's write is right.
        let entry = unsafe { &mut *entry };
        let lapsed = entry.until_ns <= now;
        if lapsed || until_ns > entry.until_ns + RENEW_NS {
            entry.until_ns = until_ns;
            entry.how = how;
        }
        if lapsed {
            count(how);
        }
        return;
    }
    let entry = Verified {
        until_ns,
        how,
        reserved: 0,
    };
    if VERIFIED.insert(key, entry, 0).is_ok() {
        count(how);
    }
}

#[inline(always)]
fn count(how: u32) {
    if let Some(counter) = VERIFY_STATS.get_ptr_mut(how) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *counter += 1 };
    }
}
