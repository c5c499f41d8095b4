//! Types and constants shared by the XDP program (`spacefilter-ebpf`) and the
//! userspace daemon (`spacefilter`). Every type here is `#[repr(C)]`, `Copy`
//! and free of padding, so that both sides agree on the bytes in a map.
#![no_std]

/// Why a frame got its verdict. The discriminant indexes the `STATS`
/// per-CPU array (within an interface's slot: see [`stats_index`]).
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
    /// Over its source's rate limit: dropped.
    RateLimited = 5,
    /// From a source the rate limiter blocked for staying over its limit:
    /// dropped.
    AutoBlocked = 6,
    /// Would have been rate limited, auto-blocked, SYN limited or taken for
    /// reflection, but the limits are a dry run: passed.
    WouldLimit = 7,
    /// A TCP SYN over its source's SYN budget or the host's: dropped.
    SynLimited = 8,
    /// UDP from a well-known reflector port (DNS, NTP, memcached, ...) to
    /// one of the host's service ports: dropped.
    Reflection = 9,
    /// From a source never seen before, while new sources arrive too fast
    /// to be real (a spoofed-source flood), over the aggregate budget of its
    /// destination port or its source prefix: dropped.
    SpoofLimited = 10,
    /// Matched a header rule whose action is drop: dropped.
    RuleDropped = 11,
    /// Matched a header rule whose action is limit, over its budget:
    /// dropped.
    RuleLimited = 12,
    /// Matched a header rule whose action is pass (or limit, within its
    /// budget): passed, past the flood guards.
    RulePassed = 13,
    /// A TCP SYN to a shielded port, answered by the program itself with a
    /// SYN-ACK carrying a SYN cookie (`XDP_TX`): nothing reaches the host
    /// until the client's ACK proves its address.
    SynCookie = 14,
    /// A TCP ACK to a shielded port carrying a valid SYN cookie: passed,
    /// and the kernel opens the connection from the cookie.
    CookieVerified = 15,
    /// A TCP segment to a shielded port that belongs to no connection the
    /// host knows and carries no valid cookie (ACK, RST, FIN floods):
    /// dropped.
    OutOfState = 16,
    /// UDP to a shielded port from a source not verified, over the
    /// shield's budget for such sources (`--unverified-pps`): dropped.
    Shielded = 17,
}

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 18] = [
        Reason::Passed,
        Reason::Allowlisted,
        Reason::Blocked,
        Reason::Malformed,
        Reason::NotIp,
        Reason::RateLimited,
        Reason::AutoBlocked,
        Reason::WouldLimit,
        Reason::SynLimited,
        Reason::Reflection,
        Reason::SpoofLimited,
        Reason::RuleDropped,
        Reason::RuleLimited,
        Reason::RulePassed,
        Reason::SynCookie,
        Reason::CookieVerified,
        Reason::OutOfState,
        Reason::Shielded,
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
            Reason::RateLimited => "rate_limited",
            Reason::AutoBlocked => "auto_blocked",
            Reason::WouldLimit => "would_limit",
            Reason::SynLimited => "syn_limited",
            Reason::Reflection => "reflection",
            Reason::SpoofLimited => "spoof_limited",
            Reason::RuleDropped => "rule_dropped",
            Reason::RuleLimited => "rule_limited",
            Reason::RulePassed => "rule_passed",
            Reason::SynCookie => "syn_cookie",
            Reason::CookieVerified => "cookie_verified",
            Reason::OutOfState => "out_of_state",
            Reason::Shielded => "shielded",
        }
    }

    /// Whether frames with this reason are dropped.
    #[must_use]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::Blocked
                | Reason::Malformed
                | Reason::RateLimited
                | Reason::AutoBlocked
                | Reason::SynLimited
                | Reason::Reflection
                | Reason::SpoofLimited
                | Reason::RuleDropped
                | Reason::RuleLimited
                | Reason::OutOfState
                | Reason::Shielded
        )
    }

    #[must_use]
    pub const fn from_index(index: u32) -> Option<Reason> {
        match index {
            0 => Some(Reason::Passed),
            1 => Some(Reason::Allowlisted),
            2 => Some(Reason::Blocked),
            3 => Some(Reason::Malformed),
            4 => Some(Reason::NotIp),
            5 => Some(Reason::RateLimited),
            6 => Some(Reason::AutoBlocked),
            7 => Some(Reason::WouldLimit),
            8 => Some(Reason::SynLimited),
            9 => Some(Reason::Reflection),
            10 => Some(Reason::SpoofLimited),
            11 => Some(Reason::RuleDropped),
            12 => Some(Reason::RuleLimited),
            13 => Some(Reason::RulePassed),
            14 => Some(Reason::SynCookie),
            15 => Some(Reason::CookieVerified),
            16 => Some(Reason::OutOfState),
            17 => Some(Reason::Shielded),
            _ => None,
        }
    }
}

/// Size of the `STATS` array: room for reasons added later without changing
/// the map's shape.
pub const STATS_SLOTS: u32 = 32;

/// Packets and bytes, one per reason per CPU in `STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A hit-counter slot in `RULE_HITS`. Slot 0 is never handed out.
pub type Slot = u32;

/// Hit counters per `RULE_HITS` value: slot `s` is lane `s % HIT_LANES` of
/// value `s / HIT_LANES`, eight cache lines of counters. A per-CPU array
/// allocates each value on its own, under a lock: a million values took
/// the kernel most of a second to create, and 137,500 (eight lanes to a
/// value, for a million slots) still a tenth of a second of every start;
/// with 64 lanes, 17,200 take about a hundredth.
pub const HIT_LANES: u32 = 64;

/// The values `RULE_HITS` needs for slots `0..slots`.
#[must_use]
pub const fn hit_values(slots: u32) -> u32 {
    slots.div_ceil(HIT_LANES)
}

/// What a source address matches: a list entry's verdict and the hit
/// counter it is credited to.
///
/// The allow and block lists share one set of lookup tables per address
/// family (see [`lookup`]), so a frame costs one longest-match lookup
/// whatever both lists hold. The allowlist's precedence is settled in
/// userspace when keys are written: a block key that an allow prefix covers
/// is stored with [`action::ALLOW`] and the slot of the longest such allow
/// entry. The longest key matching a source then always carries the right
/// verdict: if any allow entry covers the source, it also covers every
/// longer key that does. In the tables a match is packed into 24 bits
/// ([`lookup::encode`]).
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

/// Bits of [`Config::flags`]: which lookup tables hold keys. The program
/// skips the tables that hold none.
pub mod flags {
    /// IPv4 keys of /13 to /32: the /24 table is read.
    pub const V4_T24: u32 = 1 << 0;
    /// IPv4 keys of /0 to /12: the /12 table is read where the /24 table
    /// has no match.
    pub const V4_T12: u32 = 1 << 1;
    /// IPv6 keys of any length: the /16 table is read.
    pub const V6_KEYS: u32 = 1 << 2;
}

/// The single entry of the `CONFIG` array, read once per frame. The daemon
/// writes it through a memory mapping: `flags` with one atomic store; the
/// rest is set before the program is attached and never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`flags`] bits.
    pub flags: u32,
    /// The number of buckets of `V4_BUCKETS`, less one (a power of two
    /// less one: a mask).
    pub v4_mask: u32,
    /// The same for `V6_BUCKETS`.
    pub v6_mask: u32,
    pub reserved: u32,
    /// Seed of the bucket hashes, drawn when the program is loaded, so that
    /// which keys share a bucket cannot be worked out in advance.
    pub seed: u64,
}

/// An entry of `V6_TOP`: what the program learns from the top 16 bits of
/// an IPv6 source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Top {
    /// The lengths of the keys of /17 to /128 inside this /16, longest
    /// first, one per byte from the lowest; 0 ends the list. The top byte
    /// holds flags ([`lookup::V6_CROWDED`]): a /16 with more than
    /// [`lookup::V6_PROBES`] lengths is crowded, and its list is not used.
    /// One word, so that the flags and the list change together.
    pub lengths: u64,
    /// The packed match ([`lookup::encode`]) of the longest key of /0 to
    /// /16 covering this /16, 0 if none does.
    pub value: u32,
    pub reserved: u32,
}

/// An IPv6 key of /17 to /128, in `V6_KEYS`: the address with its host
/// bits cleared, as two big-endian halves read as integers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Key {
    pub hi: u64,
    pub lo: u64,
    pub len: u32,
    /// The packed match ([`lookup::encode`]).
    pub value: u32,
}

#[expect(
    clippy::inline_always,
    reason = "the program calls these per frame: a BPF call costs a return through the kernel's return thunk"
)]
pub mod lookup {
    //! The lookup tables that hold both lists: their layout, shared by the
    //! program (which reads them, `spacefilter-ebpf/src/lookup.rs`) and the
    //! daemon (which writes them, `spacefilter/src/bpf/tables/`). This is
    //! the one description of it; those two files say only how each side reads
    //! or writes.
    //!
    //! # Matches
    //!
    //! A key is a prefix with its [`super::Match`], packed by [`encode`] into
    //! the low bits of a word: the hit-counter slot in the low [`SLOT_BITS`],
    //! [`ALLOW`] above it (clear: block). [`VALUE_MASK`] covers both; 0 there
    //! means no match.
    //!
    //! # Where a key lives, by its length
    //!
    //! - IPv4 /0 to /12: `V4_T12`, one word per /12. IPv4 /13 to /24:
    //!   `V4_T24`, one word per /24 (64 MiB). Each word holds the match of the
    //!   longest key of its table covering its block. Both arrays are rows of
    //!   [`ROW`] words ([`V4_T12_ROWS`], [`V4_T24_ROWS`]).
    //! - IPv4 /25 to /32: the hash table `V4_BUCKETS`. The `V4_T24` word of a
    //!   /24 flags the lengths of the keys inside it: bit [`V4_LONG_SHIFT`] +
    //!   `i` for length [`V4_LONG_MIN`] + `i`; bit 23 is [`V4_CROWDED`].
    //! - IPv6 /0 to /16: `V6_TOP`, one [`super::V6Top`] per /16, whose `value`
    //!   holds the match of the longest such key covering the /16.
    //! - IPv6 /17 to /128: the hash table `V6_BUCKETS`, whose slots point into
    //!   `V6_KEYS` ([`super::V6Key`]: the key in full, and its match). The
    //!   /16's `V6Top::lengths` lists the lengths of the keys inside it,
    //!   longest first (a lookup probes up to [`V6_PROBES`] of them).
    //!
    //! [`super::Config::flags`] says which tables hold keys at all
    //! ([`super::flags`]); the program skips the others.
    //!
    //! # The hash tables
    //!
    //! A power of two buckets ([`buckets_for`]) of [`BUCKET_SLOTS`] slots, one
    //! 64-byte cache line each. A key's hash ([`v4_hash`], [`v6_hash`], seeded
    //! with [`super::Config::seed`]) gives it two buckets ([`buckets`]); it
    //! lives in one of them, mostly the first. A slot is one `u64`, 0 when
    //! empty:
    //!
    //! - IPv4 ([`v4_slot`]): the key ([`v4_key`]: the prefix's bits behind a
    //!   marker bit) above the packed match, so a slot is a key and its match
    //!   in one word.
    //! - IPv6: a key does not fit in a word. The slot holds the key's
    //!   [`fingerprint`] (high half) above its index in `V6_KEYS` (low half;
    //!   index 0 is never used). A bucket never holds two keys with one
    //!   fingerprint, so a lookup reads one candidate per bucket.
    //!
    //! An IPv6 bucket's first slot also carries [`V6_SPILLED`], set while
    //! some key whose first bucket it is lives in its second. A lookup that
    //! misses in a key's first bucket reads the second only if that bit is
    //! set, so a miss costs one cache line for almost every key.
    //!
    //! # A lookup
    //!
    //! The longest key covering a source wins. A lookup probes the hash table
    //! once per length flagged in the source's /24 or /16, longest first (an
    //! IPv4 key's two buckets each time; an IPv6 key's first bucket, and its
    //! second where the first's [`V6_SPILLED`] is set); the first key found
    //! is the longest match.
    //! Without one, the block's own match holds, and for IPv4 without that,
    //! the one of the source's /12 in `V4_T12`.
    //!
    //! # Crowded blocks
    //!
    //! A /24 or /16 whose longer keys do not all fit that scheme (a key whose
    //! buckets are both full; an IPv6 /16 with more than [`V6_PROBES`]
    //! lengths) is crowded ([`V4_CROWDED`] in its word, [`V6_CROWDED`] in its
    //! lengths): its longer keys are also kept in an LPM trie (`V4_CROWDED`,
    //! `V6_CROWDED`), which the program asks instead of the buckets.
    //!
    //! # Reads during writes
    //!
    //! The daemon is the only writer, and writes while frames are looked up; a
    //! lookup sees each source's longest match either as it was or as it is.
    //! Every array here is read with lookups that the verifier inlines (no
    //! call), and written by the daemon through a memory mapping
    //! (`BPF_F_MMAPABLE`, kernel 5.5), one aligned word per store, so that a
    //! block's word, a slot or a field is either old or new, never a mix. A
    //! length (or crowded) flag is set only once the keys it sends lookups to
    //! are in place, and cleared before they go; so is [`V6_SPILLED`],
    //! before the key that spilled is stored in its second bucket and after
    //! the last such key leaves it. An IPv6 key is written to
    //! `V6_KEYS` before the slot that points to it, and an index whose slot
    //! was cleared is reused only after an RCU grace period.

    /// Bits of a packed match that hold the slot.
    pub const SLOT_BITS: u32 = 22;
    /// The highest slot a packed match can hold.
    pub const MAX_SLOT: u32 = (1 << SLOT_BITS) - 1;
    /// The most list entries the tables can number (slot 0 is never used).
    pub const MAX_CAPACITY: u32 = MAX_SLOT;
    /// The bit of a packed match that says allow (clear: block).
    pub const ALLOW: u32 = 1 << SLOT_BITS;
    /// The bits of a word that hold a packed match; 0 there means none.
    pub const VALUE_MASK: u32 = (1 << (SLOT_BITS + 1)) - 1;
    /// In a `V4_T24` word: the /24 is crowded.
    pub const V4_CROWDED: u32 = 1 << 23;

    /// `u32` words per row of `V4_T24` and `V4_T12`: array values are
    /// padded to 8 bytes, so one word per entry would double the table.
    pub const ROW: usize = 16;
    /// Rows of `V4_T24`: one word per /24.
    pub const V4_T24_ROWS: u32 = 1 << 20;
    /// Rows of `V4_T12`: one word per /12.
    pub const V4_T12_ROWS: u32 = 1 << 8;
    const _: () = assert!(V4_T24_ROWS as usize * ROW == 1 << 24);
    const _: () = assert!(V4_T12_ROWS as usize * ROW == 1 << 12);
    /// The shortest IPv4 key held in `V4_T24`; shorter ones go to `V4_T12`.
    pub const V4_T24_MIN: u8 = 13;
    /// The shortest IPv4 key held in `V4_BUCKETS`.
    pub const V4_LONG_MIN: u8 = 25;
    /// In a `V4_T24` word, bit `V4_LONG_SHIFT + i` says that the /24 holds
    /// keys of length `V4_LONG_MIN + i`.
    pub const V4_LONG_SHIFT: u32 = 24;
    /// Entries of `V6_TOP`: one per /16.
    pub const V6_TOP_ENTRIES: u32 = 1 << 16;
    /// The shortest IPv6 key held in `V6_BUCKETS`.
    pub const V6_LONG_MIN: u8 = 17;
    /// The most key lengths (of /17 to /128) under one /16 that a lookup
    /// probes one by one; a /16 with more is crowded. Each probe is code
    /// the verifier walks through, so their number is bounded.
    pub const V6_PROBES: usize = 7;
    /// In [`super::V6Top::lengths`]: the /16 is crowded.
    pub const V6_CROWDED: u64 = 1 << 56;
    /// Keys per bucket: a bucket is one 64-byte cache line.
    pub const BUCKET_SLOTS: usize = 8;
    /// In the first slot of a `V6_BUCKETS` bucket, a bit of the index half
    /// that no index reaches: some key whose first bucket this is lives in
    /// its second. The slot's other bits are a slot as any other (0: empty).
    pub const V6_SPILLED: u64 = V6_INDEX as u64 + 1;
    /// The bits of a `V6_BUCKETS` slot's low half that hold the index.
    pub const V6_INDEX: u32 = u32::MAX >> 1;
    const _: () = assert!(MAX_CAPACITY < V6_INDEX);

    /// Packs a match (action, slot) into the 24 bits the tables hold.
    #[must_use]
    pub const fn encode(allow: bool, slot: u32) -> u32 {
        (slot & MAX_SLOT) | if allow { ALLOW } else { 0 }
    }

    /// Buckets for `capacity` keys: a power of two, with at least two
    /// slots per key. A key goes to one of its two buckets, mostly the
    /// first; at that load both are full for almost no key (whose block is
    /// then crowded).
    #[must_use]
    pub const fn buckets_for(capacity: u32) -> u32 {
        let slots = (capacity as u64) * 2;
        let buckets = slots.div_ceil(BUCKET_SLOTS as u64);
        let buckets = if buckets < 2 { 2 } else { buckets };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "capacity is at most MAX_CAPACITY: a few million buckets"
        )]
        {
            buckets.next_power_of_two() as u32
        }
    }

    /// A 64-bit mixing function (the finaliser of `SplitMix64`): every
    /// input bit affects every output bit.
    #[inline(always)]
    #[must_use]
    pub const fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The key of an IPv4 prefix of /25 to /32 in `V4_BUCKETS`: the prefix's
    /// `len` leading bits behind a marker bit, so that every (address,
    /// length) has its own key in 33 bits.
    #[inline(always)]
    #[must_use]
    pub const fn v4_key(addr: u32, len: u32) -> u64 {
        (1u64 << len) | (addr as u64 >> (32 - len))
    }

    /// A `V4_BUCKETS` slot: the key above the packed match; 0 is empty.
    #[inline(always)]
    #[must_use]
    pub const fn v4_slot(key: u64, value: u32) -> u64 {
        (key << 24) | (value & VALUE_MASK) as u64
    }

    #[inline(always)]
    #[must_use]
    pub const fn v4_hash(key: u64, seed: u64) -> u64 {
        mix(key ^ seed)
    }

    /// The masks that cut an IPv6 address (as its halves) to `len` bits.
    #[must_use]
    pub const fn v6_masks(len: u32) -> [u64; 2] {
        if len == 0 {
            [0, 0]
        } else if len <= 64 {
            [u64::MAX << (64 - len), 0]
        } else {
            [u64::MAX, u64::MAX << (128 - len)]
        }
    }

    /// [`v6_masks`] for every byte (lengths past 128 keep every bit), for
    /// a program to index with a byte and no bounds check.
    pub const V6_MASKS: [[u64; 2]; 256] = {
        let mut masks = [[u64::MAX; 2]; 256];
        let mut len: u32 = 0;
        while len <= 128 {
            masks[len as usize] = v6_masks(len);
            len += 1;
        }
        masks
    };

    /// The bucket hash of an IPv6 key (the cut address's halves and the
    /// length): the low half and the length are spread by odd multipliers
    /// before one mix.
    #[inline(always)]
    #[must_use]
    pub const fn v6_hash(hi: u64, lo: u64, len: u32, seed: u64) -> u64 {
        mix(hi
            ^ seed
            ^ lo.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (len as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
    }

    /// The two candidate buckets of a hash; `mask` is the bucket count
    /// less one.
    #[inline(always)]
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "halves of the hash")]
    pub const fn buckets(hash: u64, mask: u32) -> (u32, u32) {
        (hash as u32 & mask, (hash >> 32) as u32 & mask)
    }

    /// A `V6_BUCKETS` slot holds a 32-bit fingerprint of the key above the
    /// key's index in `V6_KEYS` (never 0); 0 is empty. The fingerprint
    /// spares reading the key of every other slot in the bucket.
    #[inline(always)]
    #[must_use]
    pub const fn fingerprint(hash: u64) -> u32 {
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
    }
}

/// Bits of [`Limits::flags`].
pub mod limit_flags {
    /// The per-source limiter runs.
    pub const ENABLED: u32 = 1 << 0;
    /// It only counts (`would_limit`): nothing is dropped or auto-blocked.
    pub const DRY_RUN: u32 = 1 << 1;
    /// The SYN guard runs (per-source and host-wide SYN budgets).
    pub const SYN: u32 = 1 << 2;
    /// The reflection guard runs (see `REFLECT_PORTS`).
    pub const REFLECT: u32 = 1 << 3;
    /// The guards read the kernel's coarse clock (a tick's precision)
    /// rather than the precise one, which costs about 40 ns a frame more
    /// on a virtual machine: set by the loader when every budget's burst
    /// holds at least a tick of its rate (see
    /// [`crate::Limits::fits_coarse_clock`]), so that a tick's credit,
    /// arriving at once, is never cut by the burst.
    pub const COARSE_CLOCK: u32 = 1 << 4;
}

/// Bits of the `REFLECT_PORTS` array, indexed by port: the reflection
/// guard's (UDP) and the shield's (TCP).
pub mod reflect_bits {
    /// A well-known reflector: UDP from this source port is suspect.
    pub const SOURCE: u8 = 1 << 0;
    /// One of the host's service ports: reflected floods aimed here are
    /// dropped.
    pub const SERVICE: u8 = 1 << 1;
    /// A shielded TCP port: SYNs get cookies, out-of-state segments are
    /// dropped (see [`crate::Shield`]).
    pub const SHIELD_TCP: u8 = 1 << 2;
    /// A shielded UDP port: verified sources pass, others within the
    /// shield's budget for them (see [`crate::Shield::unverified_pps`]).
    pub const SHIELD_UDP: u8 = 1 << 3;
}

/// The shield's settings: the single entry of the `SHIELD` array. The
/// ports it covers are marked in `REFLECT_PORTS`
/// ([`reflect_bits::SHIELD_TCP`]).
///
/// On a shielded TCP port the program answers a SYN with a SYN-ACK whose
/// sequence number is the kernel's own SYN cookie for it
/// (`bpf_tcp_gen_syncookie`, kernel 5.3, which also marks the listener as
/// having sent cookies, so that the kernel accepts the answer), and lets an
/// ACK through only if it belongs to a connection the host has
/// (`bpf_skc_lookup_tcp`, 5.2) or carries a valid cookie
/// (`bpf_tcp_check_syncookie`, 5.2). The kernel opens the connection from
/// the cookie (`net.ipv4.tcp_syncookies = 2`). The cookie carries the
/// client's MSS; its window scale and SACK ride in the low bits of the
/// SYN-ACK's timestamp, as the kernel encodes them, which is why the
/// timestamps need no random offset (`net.ipv4.tcp_timestamps = 2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shield {
    /// [`shield_flags`].
    pub flags: u32,
    /// The MSS the SYN-ACK offers: the interfaces' MTU less the IPv4 and
    /// TCP headers (IPv6: `mss_v6`).
    pub mss_v4: u32,
    pub mss_v6: u32,
    /// The window scale the SYN-ACK offers: the one the kernel will pick
    /// for the connection (from `net.ipv4.tcp_rmem` and
    /// `net.core.rmem_max`).
    pub wscale: u32,
    /// UDP from sources not verified, to the shielded UDP ports together:
    /// packets a second and the burst (a new QUIC client's first flight
    /// reaches the host within it; the host's reply verifies the client).
    pub unverified_pps: u32,
    pub unverified_burst: u32,
}

/// Bits of [`Shield::flags`].
pub mod shield_flags {
    /// The shield runs.
    pub const ON: u32 = 1 << 0;
    /// The host speaks TCP timestamps: the SYN-ACK may carry them (and with
    /// them window scaling and SACK).
    pub const TIMESTAMPS: u32 = 1 << 1;
    /// The host takes SACK.
    pub const SACK: u32 = 1 << 2;
    /// The host scales windows.
    pub const WSCALE: u32 = 1 << 3;
    /// Count what the shield would answer on its ports (SYNs, UDP from
    /// unverified sources) in `SHIELD_WATCH`, on or not: `shield auto`
    /// switches the shield on and off by this rate.
    pub const WATCH: u32 = 1 << 4;
}

/// Slots of `SHIELD_WATCH` (per CPU): what `shield auto` watches.
pub mod shield_watch {
    /// TCP SYNs to the shield's TCP ports.
    pub const SYNS: u32 = 0;
    /// UDP from unverified sources to the shield's UDP ports (and, while
    /// the shield is on, TCP in layouts it does not read: IPv4 options,
    /// IPv6 extension headers).
    pub const UNVERIFIED_UDP: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// Token amounts are kept in millionths of a packet or byte, so that a
/// refill over microseconds needs no division by the rate.
pub const TOKEN_SCALE: u64 = 1_000_000;

/// The token buckets' arithmetic, shared by the program and its host-side
/// tests: rates are in packets (or bytes) a second, which is tokens a
/// microsecond at [`TOKEN_SCALE`].
#[expect(
    clippy::inline_always,
    reason = "the program inlines every step: a BPF-to-BPF call costs more"
)]
pub mod tokens {
    use super::TOKEN_SCALE;

    /// Ticks of the coarse clock in a second, at the longest tick a budget
    /// must ride out (10 ms: `HZ` = 100; Debian's kernels tick every 4 ms).
    pub const COARSE_TICKS_PER_SEC: u64 = 100;

    /// Whether a budget of `rate` a second keeps its rate on the coarse
    /// clock: its `burst` holds a tick's worth of the rate, which a refill
    /// credits at once (a burst that cannot hold it loses the rest). No
    /// 128-bit arithmetic: the program calls it too.
    #[inline(always)]
    #[must_use]
    pub fn burst_holds_a_tick(rate: u64, burst: u64) -> bool {
        burst >= rate.div_ceil(COARSE_TICKS_PER_SEC)
    }

    /// A refill never credits more than this much idle time: it keeps the
    /// token arithmetic far from overflow, and a full bucket is full
    /// anyway.
    pub const MAX_IDLE_US: u64 = 10_000_000;

    /// The whole microseconds to credit a bucket last refilled at
    /// `*last_ns`, moving `*last_ns` to the moment credited up to: the
    /// remainder under a microsecond is kept for the next refill (moving to
    /// `now` would lose it, up to half the rate of a bucket hit every
    /// microsecond or two). After an idle time past [`MAX_IDLE_US`], that
    /// much, and `*last_ns` moves to `now`.
    #[inline(always)]
    pub fn credit_us(last_ns: &mut u64, now: u64) -> u64 {
        let gap_ns = now.saturating_sub(*last_ns);
        // Most frames of a busy source find less than a microsecond to
        // credit (on the coarse clock, none until the next tick): no
        // division for them, which the program's instruction set has only
        // as a divide (tens of cycles).
        if gap_ns < 1000 {
            return 0;
        }
        let elapsed_us = gap_ns / 1000;
        if elapsed_us > MAX_IDLE_US {
            *last_ns = now;
            return MAX_IDLE_US;
        }
        *last_ns += elapsed_us * 1000;
        elapsed_us
    }

    /// `tokens` plus `idle_us` of `rate`, up to `burst` whole tokens.
    #[inline(always)]
    #[must_use]
    pub fn refilled(tokens: u64, idle_us: u64, rate: u64, burst: u64) -> u64 {
        let cap = burst * TOKEN_SCALE;
        let refilled = tokens + idle_us * rate;
        if refilled > cap { cap } else { refilled }
    }

    /// One packet-counting token bucket: refills `tokens` at `rate` a
    /// second up to `burst` packets, then takes one packet; `false` if none
    /// is left. A bucket never used (`last_ns` 0) starts full.
    #[inline(always)]
    pub fn take_packet(
        tokens: &mut u64,
        last_ns: &mut u64,
        (rate, burst): (u64, u64),
        now: u64,
    ) -> bool {
        if *last_ns == 0 {
            *last_ns = now;
            *tokens = burst * TOKEN_SCALE;
        }
        let idle_us = credit_us(last_ns, now);
        if idle_us > 0 {
            *tokens = refilled(*tokens, idle_us, rate, burst);
        }
        if *tokens < TOKEN_SCALE {
            return false;
        }
        *tokens -= TOKEN_SCALE;
        true
    }

    #[cfg(test)]
    mod tests {
        use super::super::Limits;

        #[test]
        fn the_coarse_clock_only_where_every_burst_holds_a_tick() {
            let limits = Limits {
                pps: 20_000,
                pps_burst: 20_000,
                syn_pps: 20,
                syn_burst: 20,
                ..Limits::default()
            };
            assert!(limits.fits_coarse_clock());
            assert!(Limits::default().fits_coarse_clock(), "no budget at all");
            let blocking = Limits {
                block_after_ns: 100_000_000,
                ..limits
            };
            assert!(blocking.fits_coarse_clock(), "an auto-block after 100 ms");
            // 100 packets of burst at 10 000 a second: 10 ms, just a tick.
            let tick = Limits {
                pps: 10_000,
                pps_burst: 100,
                ..Limits::default()
            };
            assert!(tick.fits_coarse_clock());
            for short in [
                Limits {
                    pps: 10_001,
                    pps_burst: 100,
                    ..Limits::default()
                },
                Limits {
                    bps: 1_000_000_000,
                    bps_burst: 1500,
                    ..Limits::default()
                },
                Limits {
                    syn_global_pps: 5000,
                    syn_global_burst: 10,
                    ..Limits::default()
                },
                Limits {
                    fallback_pps: 1_000_000,
                    fallback_burst: 9_999,
                    ..Limits::default()
                },
                Limits {
                    block_after_ns: 99_999_999,
                    ..Limits::default()
                },
            ] {
                assert!(!short.fits_coarse_clock(), "{short:?}");
            }
        }

        use super::*;

        /// Hits `hits` times, `gap_ns` apart, at `rate` with a burst of
        /// four; how many were let through.
        fn passes(rate: u64, gap_ns: u64, hits: u64) -> u64 {
            let (mut tokens, mut last_ns) = (0, 0);
            let start = 1_000_000_000;
            (0..hits)
                .filter(|i| take_packet(&mut tokens, &mut last_ns, (rate, 4), start + i * gap_ns))
                .count() as u64
        }

        #[test]
        fn a_bucket_hit_every_microsecond_or_two_gets_its_whole_rate() {
            // 1.5 µs apart for one second, at 400 000 a second: crediting
            // whole microseconds and dropping the rest would give a third
            // less.
            for (gap_ns, rate) in [(1_500, 400_000), (1_100, 500_000), (700, 900_000)] {
                let hits = 1_000_000_000 / gap_ns;
                let got = passes(rate, gap_ns, hits);
                assert!(
                    got >= rate - rate / 1000 && got <= rate + 5,
                    "{gap_ns} ns apart at {rate}/s: {got} let through"
                );
            }
        }

        #[test]
        fn a_long_idle_time_fills_the_bucket_once() {
            let (mut tokens, mut last_ns) = (0, 0);
            let start = 1_000_000_000;
            assert!(take_packet(&mut tokens, &mut last_ns, (10, 3), start));
            // A day later: a full burst, no more.
            let later = start + 86_400_000_000_000;
            let got = (0..10)
                .filter(|_| take_packet(&mut tokens, &mut last_ns, (10, 3), later))
                .count();
            assert_eq!(got, 3);
            assert_eq!(last_ns, later);
        }
    }
}

/// The per-source rate limit: the single entry of the `LIMITS` array.
///
/// Each source (an IPv4 address; IPv6 aggregated to `v6_prefix_len`) has a
/// token bucket in the `BUCKETS` LRU map, shared by all CPUs (updates race,
/// so the limit is approximate under a flood spread over many cores, never
/// a multiple of it). A zero rate means no limit of that kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// [`limit_flags`] bits.
    pub flags: u32,
    /// IPv6 sources share a bucket per prefix of this length (default 64).
    pub v6_prefix_len: u32,
    /// Packets per second, and the burst allowed above it.
    pub pps: u64,
    pub pps_burst: u64,
    /// Bytes per second, and the burst allowed above it.
    pub bps: u64,
    pub bps_burst: u64,
    /// A source over its limit this long (with no second of calm in
    /// between) is auto-blocked; 0: never.
    pub block_after_ns: u64,
    /// How long an auto-block lasts.
    pub block_ttl_ns: u64,
    /// TCP SYNs (without ACK) per second per source, and the burst.
    pub syn_pps: u64,
    pub syn_burst: u64,
    /// TCP SYNs per second for the whole host, and the burst.
    pub syn_global_pps: u64,
    pub syn_global_burst: u64,
    /// New sources per second that mean a spoofed-source flood (0: never
    /// switch). While it lasts, sources without a bucket get none (so the
    /// LRU map keeps the real ones) and share aggregate budgets instead.
    pub spoof_threshold: u64,
    /// The aggregate budget, per destination port and per source prefix
    /// (/24, /48), in packets per second, and its burst.
    pub fallback_pps: u64,
    pub fallback_burst: u64,
}

impl Limits {
    /// The longest tick of the coarse clock a budget must ride out: 10 ms
    /// (`HZ` = 100; Debian's kernels tick every 4 ms).
    pub const COARSE_TICK_US: u64 = 1_000_000 / tokens::COARSE_TICKS_PER_SEC;

    /// Whether the guards keep their settings on the coarse clock: every
    /// budget in force has a burst that holds a tick's worth of its rate
    /// (a budget credited in steps of a tick would otherwise lose what the
    /// burst cannot hold), and the time over a limit before an auto-block
    /// is none or at least ten ticks (a tick late at most a tenth).
    #[must_use]
    pub fn fits_coarse_clock(&self) -> bool {
        if self.block_after_ns != 0 && self.block_after_ns < 10 * Self::COARSE_TICK_US * 1000 {
            return false;
        }
        let fits = tokens::burst_holds_a_tick;
        fits(self.pps, self.pps_burst)
            && fits(self.bps, self.bps_burst)
            && fits(self.syn_pps, self.syn_burst)
            && fits(self.syn_global_pps, self.syn_global_burst)
            && fits(self.fallback_pps, self.fallback_burst)
    }
}

/// Header rules the program holds; it tries them in order, first match
/// wins.
pub const MAX_HEADER_RULES: u32 = 32;

/// Rule sets in `HEADER_RULES`, `HEADER_HITS` and `HEADER_BUCKETS`, each
/// of [`MAX_HEADER_RULES`] slots: the one in force (`HEADER_ACTIVE`) and
/// the one the next edit is written into before a single write of
/// `HEADER_ACTIVE` switches every frame over to it.
pub const HEADER_RULE_SETS: u32 = 2;

/// In `HEADER_ACTIVE`'s word, beside the index of the set in force (bit
/// 0): the set holds at least one rule. Without it, a frame leaves the
/// header rules' stage after that one read.
pub const HEADER_SET_HOLDS_RULES: u32 = 1 << 1;

/// Values of [`HeaderRule::action`]; 0 marks the end of the rules.
pub mod rule_action {
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const LIMIT: u32 = 3;
}

/// Bits of [`HeaderRule::flags`].
pub mod rule_flags {
    /// Count only (`would_limit` for drop and over-limit frames).
    pub const DRY_RUN: u32 = 1 << 0;
}

/// A rule on headers, in the `HEADER_RULES` array. Every condition holds
/// for a match; a zero range (lo = hi = 0 with `hi` 0) means any. Port
/// conditions never match a frame without ports (another protocol, a
/// later fragment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderRule {
    /// [`rule_action`]; 0: no rule (the list ends here).
    pub action: u32,
    /// [`rule_flags`].
    pub flags: u32,
    /// IP protocol number; 0: any.
    pub proto: u32,
    /// TCP flags: `flags & mask == value`; mask 0: any.
    pub tcp_mask: u32,
    pub tcp_value: u32,
    /// Inclusive ranges; `hi` 0: any.
    pub dport_lo: u32,
    pub dport_hi: u32,
    pub sport_lo: u32,
    pub sport_hi: u32,
    /// Frame length in bytes, inclusive; `hi` 0: any.
    pub len_lo: u32,
    pub len_hi: u32,
    pub reserved: u32,
    /// For [`rule_action::LIMIT`]: the rule's own budget (shared by every
    /// frame it matches), packets per second and burst.
    pub pps: u64,
    pub burst: u64,
}

/// How long the spoofed-source fallback lasts after the new-source rate
/// last went over its threshold.
pub const FALLBACK_HOLD_NS: u64 = 10_000_000_000;

/// The spoofed-source detector: the single entry of `SPOOF_STATE` (CPUs
/// race on it; counts are approximate).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoofState {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// New sources seen in it.
    pub new_sources: u64,
    /// The fallback is on until then.
    pub active_until_ns: u64,
    /// Times the fallback was switched on.
    pub switches: u64,
}

/// One source's token bucket, in `BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens, in millionths of a packet.
    pub packets: u64,
    /// Tokens, in millionths of a byte.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
    /// When the source went over its limit, 0 if it is within it.
    pub over_since_ns: u64,
    /// When it last went over.
    pub last_over_ns: u64,
    /// SYN tokens, in millionths of a SYN.
    pub syns: u64,
    /// The source is auto-blocked until then: checked here first, so that
    /// a known source costs one lookup (`AUTO_BLOCKED` keeps the block too,
    /// for sources whose bucket was evicted, and for the daemon).
    pub blocked_until_ns: u64,
    /// Packets dropped under that block, counted here.
    pub blocked_hits: u64,
}

/// An auto-block, in `AUTO_BLOCKED`, keyed like `BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlock {
    /// `bpf_ktime_get_ns` at which it ends: the program lets the source
    /// through again by itself, even while no daemon runs.
    pub until_ns: u64,
    /// Packets dropped since (approximate: updates from CPUs race).
    pub hits: u64,
}

/// Sent through the `EVENTS` ring buffer when a source is auto-blocked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlockEvent {
    /// The bucket key: an IPv4-mapped IPv6 address, or an IPv6 prefix.
    pub key: [u8; 16],
    pub until_ns: u64,
    /// 32 for IPv4, the aggregation length for IPv6.
    pub prefix_len: u32,
    /// 1 for IPv6.
    pub v6: u32,
}

/// Capacity of the `AUTO_EXEMPT` map: sources never auto-blocked.
pub const MAX_AUTO_EXEMPT: u32 = 1024;

/// Default size of the `BUCKETS` LRU map.
pub const DEFAULT_BUCKETS: u32 = 65_536;

/// How many verified sources the program remembers (`VERIFIED`); the least
/// recently used are forgotten first.
pub const DEFAULT_VERIFIED: u32 = 131_072;

/// Interface slots of the `STATS` array: slot 0 counts frames that arrive
/// on an interface without a slot of its own (or through
/// `BPF_PROG_TEST_RUN`); attached interfaces get slots 1 and up.
pub const MAX_IFACE_SLOTS: u32 = 16;

/// Size of the `IFACE_SLOTS` array, which the program indexes with
/// `ifindex % IFACE_TABLE` (a power of two).
pub const IFACE_TABLE: u32 = 1024;

/// An entry of `IFACE_SLOTS`: the interface it belongs to (so that another
/// ifindex landing on the same entry is not mistaken for it) and its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub slot: u32,
}

/// The index in `STATS` of `reason` on interface slot `slot`.
#[must_use]
pub const fn stats_index(slot: u32, reason: u32) -> u32 {
    slot * STATS_SLOTS + reason
}

/// Kernel features the program uses only when the loader says the kernel
/// has them: bits of the read-only global `FEATURES`, set at load time.
/// The verifier knows its value (a frozen read-only map, kernel 5.2) and
/// never walks the paths of a feature that is off, so a helper the kernel
/// lacks does not stop the program from loading.
pub mod features {
    /// SYN cookies at XDP and the out-of-state check on shielded TCP
    /// ports: `bpf_skc_lookup_tcp`, `bpf_tcp_check_syncookie` (5.2),
    /// `bpf_tcp_gen_syncookie` (5.3), `bpf_tcp_raw_gen_syncookie_ipv4/6`
    /// (6.0), `bpf_xdp_load_bytes` (5.18). Off, the shield treats TCP as
    /// it treats UDP, and the kernel answers SYNs with its own cookies.
    pub const TCP_COOKIES: u32 = 1 << 0;
    /// The first bytes of sampled frames (`bpf_xdp_load_bytes`, 5.18).
    /// Off, samples carry the verdict and length with no bytes.
    pub const FRAME_HEADS: u32 = 1 << 1;
    /// The coarse clock for capped samples and the shield's SYN-ACKs
    /// (`bpf_ktime_get_coarse_ns`, 5.11). Off, the precise clock.
    pub const COARSE_CLOCK: u32 = 1 << 2;
    /// The egress program on a TCX link (kernel 6.6), pinned like the XDP
    /// link. Read by the daemon only: off, the egress program is a
    /// `clsact` filter, left in place when the daemon stops and replaced
    /// at its next start.
    pub const TCX_LINKS: u32 = 1 << 3;
    /// Every feature.
    pub const ALL: u32 = TCP_COOKIES | FRAME_HEADS | COARSE_CLOCK | TCX_LINKS;
}

/// The name of the program's read-only global holding [`features`] bits.
pub const FEATURES_GLOBAL: &str = "FEATURES";

/// The name of the program's read-only global holding the length of the
/// kernel's tick (`1 s / HZ`) in nanoseconds, 0 where the loader could not
/// learn it: the program multiplies `jiffies` by it for a clock it reads
/// without a helper call.
pub const TICK_NS_GLOBAL: &str = "TICK_NS";

/// Bits of [`Observe::flags`].
pub mod observe_flags {
    /// Dropped frames are sampled into the `SAMPLES` ring buffer.
    pub const SAMPLE: u32 = 1 << 0;
    /// Every verdict is logged through aya-log (`AYA_LOGS`).
    pub const DEBUG_LOG: u32 = 1 << 1;
}

/// The single entry of the `OBSERVE` array: drop sampling and debug
/// logging, switched at runtime.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observe {
    /// [`observe_flags`] bits.
    pub flags: u32,
    /// One dropped frame in this many is sampled, on average (at least 1
    /// while [`observe_flags::SAMPLE`] is set).
    pub sample_every: u32,
    /// Samples each CPU may send per second (of `bpf_ktime_get_ns`); the
    /// daemon sets it to the host-wide cap divided by the CPUs.
    pub cap_per_cpu: u32,
    /// A dropped frame is picked when [`sample_hash`] of its counter's new
    /// value is at most this: `2^32 / sample_every - 1`.
    pub sample_below: u32,
}

/// The sampler's draw for the `n`-th frame a counter counted: the high
/// half of `n` times 2^64/φ (Fibonacci hashing). Consecutive `n` give an
/// evenly spread sequence that follows no period, so 1 in N is picked from
/// every frame of a pattern that repeats, whatever its period; and it costs
/// a multiplication, not a helper call.
#[must_use]
pub const fn sample_hash(n: u64) -> u32 {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// Folds a sum of 32-bit words (summed into 64 bits, in whatever byte
/// order they were read) into their 16-bit ones' complement sum, in that
/// same order: an Internet checksum is its complement. The program sums
/// the SYN-ACKs it writes this way, as the bench's cookie floor does.
#[must_use]
#[inline]
pub const fn fold_checksum(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    folded
}

/// The `log` target of the program's debug log lines (aya-log).
pub const KERNEL_LOG_TARGET: &str = "spacefilter::kernel";

/// Bytes of each sampled frame copied into its [`DropSample`].
pub const SAMPLE_BYTES: usize = 128;

/// A dropped frame, sent through the `SAMPLES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropSample {
    /// When it was dropped (`CLOCK_MONOTONIC`), to the kernel's tick: the
    /// coarse clock where the kernel has it.
    pub ts_ns: u64,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// Its [`Reason`].
    pub reason: u32,
    /// What matched: for `blocked` the list entry's hit-counter slot, for
    /// `rule_dropped` and `rule_limited` the header rule's index + 1; else
    /// 0.
    pub detail: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// How many of its first bytes are in `data`.
    pub cap_len: u32,
    pub reserved: u32,
    pub data: [u8; SAMPLE_BYTES],
}

/// Per CPU, in `SAMPLE_STATE`: the sampler's budget, and what became of
/// the frames it picked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleState {
    /// The end of the clock second the budget is counted in.
    pub window_end_ns: u64,
    /// Samples sent in that second.
    pub in_window: u64,
    /// Samples sent, in all.
    pub sent: u64,
    /// Frames picked but not sent: the second's budget was spent.
    pub capped: u64,
    /// Frames picked but not sent: the ring buffer was full.
    pub lost: u64,
}

/// Names of the maps in the object file, shared so that userspace asks for
/// exactly what the program declares.
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const V4_T24: &str = "V4_T24";
    pub const V4_T12: &str = "V4_T12";
    pub const V4_BUCKETS: &str = "V4_BUCKETS";
    pub const V4_CROWDED: &str = "V4_CROWDED";
    pub const V6_TOP: &str = "V6_TOP";
    pub const V6_BUCKETS: &str = "V6_BUCKETS";
    pub const V6_KEYS: &str = "V6_KEYS";
    pub const V6_CROWDED: &str = "V6_CROWDED";
    pub const LIMITS: &str = "LIMITS";
    pub const BUCKETS: &str = "BUCKETS";
    pub const AUTO_BLOCKED: &str = "AUTO_BLOCKED";
    pub const AUTO_ACTIVE: &str = "AUTO_ACTIVE";
    pub const AUTO_EXEMPT: &str = "AUTO_EXEMPT";
    pub const SPOOF_SEEN: &str = "SPOOF_SEEN";
    pub const DROPPED_FRAGS: &str = "DROPPED_FRAGS";
    pub const EVENTS: &str = "EVENTS";
    pub const SYN_GLOBAL: &str = "SYN_GLOBAL";
    pub const REFLECT_PORTS: &str = "REFLECT_PORTS";
    pub const SHIELD: &str = "SHIELD";
    pub const SPOOF_STATE: &str = "SPOOF_STATE";
    pub const AGG_BUCKETS: &str = "AGG_BUCKETS";
    pub const HEADER_RULES: &str = "HEADER_RULES";
    pub const HEADER_HITS: &str = "HEADER_HITS";
    pub const HEADER_BUCKETS: &str = "HEADER_BUCKETS";
    pub const HEADER_ACTIVE: &str = "HEADER_ACTIVE";
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    pub const OBSERVE: &str = "OBSERVE";
    pub const SAMPLES: &str = "SAMPLES";
    pub const SAMPLE_STATE: &str = "SAMPLE_STATE";
    pub const VERIFIED: &str = "VERIFIED";
    pub const VERIFY_STATS: &str = "VERIFY_STATS";
    pub const VERIFY_SETTINGS: &str = "VERIFY_SETTINGS";
    pub const SHIELD_BUDGET: &str = "SHIELD_BUDGET";
    pub const SHIELD_WATCH: &str = "SHIELD_WATCH";
}

/// Name of the TC egress program that verifies the host's peers.
pub const EGRESS_PROGRAM_NAME: &str = "spacefilter_egress";

/// A verified source: a value of the `VERIFIED` map, keyed by the source's
/// address (IPv4 as an IPv4-mapped IPv6 address, IPv6 whole).
///
/// A source is verified while `until_ns` (monotonic clock) lies ahead. A
/// forged source never completes a handshake and never receives the host's
/// replies, so what verifies a source is proof that it does: the ACK of a
/// SYN cookie, a TCP segment the host sends it on a connection, a UDP
/// datagram the host sends it (the TC egress program), or the word of an
/// application (`spacefilter admit`). Each proof, and each later segment or
/// datagram the host sends, holds it verified for
/// [`VerifySettings::idle_ns`]; an admission for as long as it was given; a
/// UDP answer for a probation of seconds at first, and not at all while a
/// flood of unverified datagrams runs over the shield's budget.
/// Verified sources skip the spoofed-source fallback's shared budgets, the
/// host-wide SYN budget and the shield's budget for unverified UDP; their
/// own per-source budgets still hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub until_ns: u64,
    /// The last proof ([`verified_how`]).
    pub how: u32,
    /// When the source was verified anew: the monotonic clock in
    /// milliseconds, wrapping (a UDP answer's probation is timed from it).
    pub since_ms: u32,
}

/// What verified a source ([`Verified::how`], and the index into
/// `VERIFY_STATS`, which counts the sources each proof verified anew, per
/// CPU).
pub mod verified_how {
    /// The ACK of a SYN cookie the shield sent.
    pub const COOKIE: u32 = 1;
    /// A TCP segment the host sent it on a connection (not a SYN-ACK, not a
    /// reset: those go to forged sources too).
    pub const ESTABLISHED: u32 = 2;
    /// A UDP datagram the host sent it.
    pub const REPLIED: u32 = 3;
    /// `spacefilter admit`.
    pub const ADMITTED: u32 = 4;
    /// Slots of `VERIFY_STATS`.
    pub const SLOTS: u32 = 8;
    /// The names, by value.
    pub const NAMES: [(u32, &str); 4] = [
        (COOKIE, "cookie"),
        (ESTABLISHED, "established"),
        (REPLIED, "replied"),
        (ADMITTED, "admitted"),
    ];
}

/// How verification works: the single entry of `VERIFY_SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifySettings {
    /// Whether the egress program records the host's peers (while
    /// anything that reads the verified sources is on).
    pub record: u32,
    /// Zero (keeps the value free of padding).
    pub reserved: u32,
    /// How long a proof holds a source verified.
    pub idle_ns: u64,
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "spacefilter";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these types are `#[repr(C)]`, made only of `u32`/`u64`, with no
    // padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Verified {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VerifySettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Match {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V6Top {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Limits {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AutoBlock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpoofState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HeaderRule {}
    // SAFETY: as above (the key is 16 bytes, the rest 8-byte aligned).
    unsafe impl aya::Pod for super::AutoBlockEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Observe {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Shield {}
}
