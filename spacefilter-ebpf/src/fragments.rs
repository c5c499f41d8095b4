//! The rest of a datagram whose first fragment was dropped. Only the first
//! fragment carries the ports, so the rules and guards that look at ports
//! (the reflection guard, port rules, the shield) decide on it alone; the
//! later fragments would go on to reassembly, where they wait for a head
//! that never comes and crowd out real fragments. When a first fragment is
//! dropped, its datagram is remembered; its later fragments are dropped for
//! the same reason. A later fragment that arrives before its first one
//! passes (nothing is known of it yet), as does every fragment of a
//! datagram whose first fragment passed.
//!
//! Kernel: LRU hash maps (4.10).

use spacefilter_common::Reason;

use crate::{
    maps::DROPPED_FRAGMENTS,
    parse::{L4, Source, fragment},
    verdict::Verdict,
};

/// A fragmented datagram: its source, identification and protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Datagram {
    hi: u64,
    lo: u64,
    id: u32,
    /// The protocol, and bit 8 for IPv6 (an IPv4 source and an IPv6
    /// source with the same low bits are different datagrams).
    proto: u32,
}

/// What dropped the first fragment.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Dropped {
    reason: u32,
    detail: u32,
}

#[inline(always)]
fn datagram(source: &Source, l4: &L4) -> Datagram {
    Datagram {
        hi: source.hi,
        lo: source.lo,
        id: l4.fragment_id,
        proto: u32::from(l4.proto) | (u32::from(source.v6) << 8),
    }
}

/// The verdict on a later fragment whose first fragment was dropped.
#[inline(always)]
pub(crate) fn later(source: &Source, l4: &L4) -> Option<Verdict> {
    if l4.fragment != fragment::LATER {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let dropped = unsafe { DROPPED_FRAGMENTS.get(datagram(source, l4)) }?;
    Some(Verdict {
        reason: Reason::from_index(dropped.reason)?,
        detail: dropped.detail,
        resized: false,
    })
}

/// Remembers the datagram of a first fragment that `verdict` drops.
#[inline(always)]
pub(crate) fn first(source: &Source, l4: &L4, verdict: &Verdict) {
    if l4.fragment != fragment::FIRST || verdict.resized || !verdict.reason.drops() {
        return;
    }
    let dropped = Dropped {
        reason: verdict.reason as u32,
        detail: verdict.detail,
    };
    let _ = DROPPED_FRAGMENTS.insert(datagram(source, l4), dropped, 0);
}
