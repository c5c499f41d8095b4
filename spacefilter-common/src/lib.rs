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
}

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 14] = [
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
}

/// Bits of the `REFLECT_PORTS` array, indexed by UDP port.
pub mod reflect_bits {
    /// A well-known reflector: UDP from this source port is suspect.
    pub const SOURCE: u8 = 1 << 0;
    /// One of the host's service ports: reflected floods aimed here are
    /// dropped.
    pub const SERVICE: u8 = 1 << 1;
}

/// Token amounts are kept in millionths of a packet or byte, so that a
/// refill over microseconds needs no division by the rate.
pub const TOKEN_SCALE: u64 = 1_000_000;

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

/// Header rules the program holds; it tries them in order, first match
/// wins.
pub const MAX_HEADER_RULES: u32 = 32;

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

/// Default size of the `BUCKETS` LRU map.
pub const DEFAULT_BUCKETS: u32 = 65_536;

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
    pub reserved: u32,
}

/// The `log` target of the program's debug log lines (aya-log).
pub const KERNEL_LOG_TARGET: &str = "spacefilter::kernel";

/// Bytes of each sampled frame copied into its [`DropSample`].
pub const SAMPLE_BYTES: usize = 128;

/// A dropped frame, sent through the `SAMPLES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropSample {
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) when it was dropped.
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

/// Per CPU, in `SAMPLE_STATE`: the sampler's countdown and budget, and
/// what became of the frames it picked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleState {
    /// Dropped frames until the next pick (0 or 1: the next one). After a
    /// pick it is drawn anew, uniformly from 1 to 2N - 1 (N on average),
    /// so that the picks follow no pattern a flood could fall in step with.
    pub countdown: u64,
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
    pub const RULES_V4_EXACT: &str = "RULES_V4_EXACT";
    pub const RULES_V4: &str = "RULES_V4";
    pub const RULES_V6_EXACT: &str = "RULES_V6_EXACT";
    pub const RULES_V6: &str = "RULES_V6";
    pub const LIMITS: &str = "LIMITS";
    pub const BUCKETS: &str = "BUCKETS";
    pub const AUTO_BLOCKED: &str = "AUTO_BLOCKED";
    pub const EVENTS: &str = "EVENTS";
    pub const SYN_GLOBAL: &str = "SYN_GLOBAL";
    pub const REFLECT_PORTS: &str = "REFLECT_PORTS";
    pub const SPOOF_STATE: &str = "SPOOF_STATE";
    pub const AGG_BUCKETS: &str = "AGG_BUCKETS";
    pub const HEADER_RULES: &str = "HEADER_RULES";
    pub const HEADER_HITS: &str = "HEADER_HITS";
    pub const HEADER_BUCKETS: &str = "HEADER_BUCKETS";
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    pub const OBSERVE: &str = "OBSERVE";
    pub const SAMPLES: &str = "SAMPLES";
    pub const SAMPLE_STATE: &str = "SAMPLE_STATE";
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
}
