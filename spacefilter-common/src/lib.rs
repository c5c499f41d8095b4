//! Types and constants shared by the XDP program (`spacefilter-ebpf`) and the
//! userspace daemon (`spacefilter`). Every type here is `#[repr(C)]`, `Copy`
//! and free of padding, so that both sides agree on the bytes in a map.
#![no_std]

/// Why a frame got its verdict. The discriminant indexes the `STATS`
/// per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An IP frame from a source on no list: passed.
    Passed = 0,
    /// The source matched the allowlist: passed, whatever else matches.
    Allowlisted = 1,
    /// The source matched the blocklist: dropped.
    Blocked = 2,
    /// A truncated or inconsistent IP frame: dropped.
    Malformed = 3,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = 4,
}

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 5] = [
        Reason::Passed,
        Reason::Allowlisted,
        Reason::Blocked,
        Reason::Malformed,
        Reason::NotIp,
    ];

    /// The name used in listings, logs and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::Allowlisted => "allowlisted",
            Reason::Blocked => "blocked",
            Reason::Malformed => "malformed",
            Reason::NotIp => "not_ip",
        }
    }

    /// Whether frames with this reason are dropped.
    #[must_use]
    pub const fn drops(self) -> bool {
        matches!(self, Reason::Blocked | Reason::Malformed)
    }

    #[must_use]
    pub const fn from_index(index: u32) -> Option<Reason> {
        match index {
            0 => Some(Reason::Passed),
            1 => Some(Reason::Allowlisted),
            2 => Some(Reason::Blocked),
            3 => Some(Reason::Malformed),
            4 => Some(Reason::NotIp),
            _ => None,
        }
    }
}

/// Size of the `STATS` array: room for reasons added later without changing
/// the map's shape.
pub const STATS_SLOTS: u32 = 16;

/// Packets and bytes, one per reason per CPU in `STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A hit-counter slot in `RULE_HITS`. Slot 0 is never handed out.
pub type Slot = u32;

/// What a source address matches: the value of every key in the rule maps.
///
/// The allow and block lists share one exact-match map and one LPM trie per
/// address family, so a frame costs at most two lookups whatever both
/// lists hold. The allowlist's precedence is settled in userspace when keys
/// are written: a block key that an allow prefix covers is stored with
/// [`action::ALLOW`] and the slot of the longest such allow entry. The
/// longest key matching a source then always carries the right verdict: if
/// any allow entry covers the source, it also covers every longer key that
/// does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// [`action::ALLOW`] or [`action::BLOCK`].
    pub action: u32,
    /// The hit counter of the list entry the match is credited to.
    pub slot: Slot,
}

/// Values of [`Match::action`].
pub mod action {
    pub const ALLOW: u32 = 1;
    pub const BLOCK: u32 = 2;
}

/// Default capacity of the rule maps and of the hit-counter array. The
/// per-CPU hit counters are allocated up front (8 bytes per entry per CPU,
/// and loading time grows with them), so the daemon's `--capacity` raises
/// this only where the lists really need more.
pub const DEFAULT_CAPACITY: u32 = 1 << 18;

/// Bits of [`Config::flags`]: which rule maps hold keys. The program skips
/// the lookups of an empty map.
pub mod flags {
    pub const V4_EXACT: u32 = 1 << 0;
    pub const V4_PREFIX: u32 = 1 << 1;
    pub const V6_EXACT: u32 = 1 << 2;
    pub const V6_PREFIX: u32 = 1 << 3;
}

/// The single entry of the `CONFIG` array, read once per frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`flags`] bits.
    pub flags: u32,
    pub reserved: u32,
}

/// Names of the maps in the object file, shared so that userspace asks for
/// exactly what the program declares.
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const RULES_V4_EXACT: &str = "RULES_V4_EXACT";
    pub const RULES_V4: &str = "RULES_V4";
    pub const RULES_V6_EXACT: &str = "RULES_V6_EXACT";
    pub const RULES_V6: &str = "RULES_V6";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "spacefilter";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these types are `#[repr(C)]`, made only of `u32`/`u64`, with no
    // padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Match {}
}
