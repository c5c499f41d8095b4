//! The maps the program shares with userspace. Names and value types come
//! from `spacefilter-common`; the userspace wrappers live in
//! `spacefilter::maps`.
//!
//! The allow and block lists share the rule maps (see
//! [`spacefilter_common::Match`] for how the allowlist keeps its
//! precedence). Full-length keys (/32, /128) live in hash maps in front of
//! the LPM tries: blocking one address costs one hash lookup, and the tries
//! stay small. All rule maps are created with `BPF_F_NO_PREALLOC`
//! (mandatory for LPM tries), so empty ones cost no memory. Userspace
//! resizes them at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use spacefilter_common::{
    AutoBlock, Bucket, Config, Counter, DEFAULT_BUCKETS, DEFAULT_CAPACITY, HeaderRule, IFACE_TABLE,
    IfaceSlot, Limits, MAX_HEADER_RULES, MAX_IFACE_SLOTS, Match, Observe, STATS_SLOTS, SampleState,
    SpoofState,
};

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Packets and bytes per interface slot and
/// [`spacefilter_common::Reason`], per CPU (see
/// [`spacefilter_common::stats_index`]).
#[map]
pub(crate) static STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(MAX_IFACE_SLOTS * STATS_SLOTS, 0);

/// The `STATS` slot of each attached interface, at `ifindex % IFACE_TABLE`.
/// An array, so that the lookup is inlined: no hash on the per-packet path.
#[map]
pub(crate) static IFACE_SLOTS: Array<IfaceSlot> = Array::with_max_entries(IFACE_TABLE, 0);

/// Drop sampling and debug logging (see [`spacefilter_common::Observe`]).
#[map]
pub(crate) static OBSERVE: Array<Observe> = Array::with_max_entries(1, 0);

/// Sampled dropped frames for the daemon (`spacefilter capture`, `top`).
#[map]
pub(crate) static SAMPLES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The sampler's per-second budget and outcome counters, per CPU.
#[map]
pub(crate) static SAMPLE_STATE: PerCpuArray<SampleState> = PerCpuArray::with_max_entries(1, 0);

/// Hit counter of each list entry, per CPU, indexed by the entry's slot.
#[map]
pub(crate) static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DEFAULT_CAPACITY, 0);

/// Both lists, IPv4: full-length keys (/32) here...
#[map]
pub(crate) static RULES_V4_EXACT: HashMap<[u8; 4], Match> =
    HashMap::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);
/// ...and shorter prefixes here.
#[map]
pub(crate) static RULES_V4: LpmTrie<[u8; 4], Match> =
    LpmTrie::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);
/// Both lists, IPv6: /128 keys.
#[map]
pub(crate) static RULES_V6_EXACT: HashMap<[u8; 16], Match> =
    HashMap::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);
/// Both lists, IPv6: shorter prefixes.
#[map]
pub(crate) static RULES_V6: LpmTrie<[u8; 16], Match> =
    LpmTrie::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// The per-source rate limit (see [`spacefilter_common::Limits`]).
#[map]
pub(crate) static LIMITS: Array<Limits> = Array::with_max_entries(1, 0);

/// One token bucket per source, least recently used evicted first.
#[map]
pub(crate) static BUCKETS: LruHashMap<[u8; 16], Bucket> =
    LruHashMap::with_max_entries(DEFAULT_BUCKETS, 0);

/// Sources the limiter blocked, with when the block ends.
#[map]
pub(crate) static AUTO_BLOCKED: LruHashMap<[u8; 16], AutoBlock> =
    LruHashMap::with_max_entries(DEFAULT_BUCKETS, 0);

/// Auto-block events for the daemon (ring buffers: kernel 5.8).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// The host-wide SYN budget (one bucket; CPUs race on it).
#[map]
pub(crate) static SYN_GLOBAL: Array<Bucket> = Array::with_max_entries(1, 0);

/// [`spacefilter_common::reflect_bits`] per UDP port.
#[map]
pub(crate) static REFLECT_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

/// The spoofed-source detector.
#[map]
pub(crate) static SPOOF_STATE: Array<SpoofState> = Array::with_max_entries(1, 0);

/// Aggregate budgets during a spoofed-source flood: key byte 0 is the kind
/// (1: destination port in bytes 2-3; 2: source prefix in bytes 4-19).
#[map]
pub(crate) static AGG_BUCKETS: LruHashMap<[u8; 20], Bucket> =
    LruHashMap::with_max_entries(16_384, 0);

/// Rules on headers, tried in order (see
/// [`spacefilter_common::HeaderRule`]).
#[map]
pub(crate) static HEADER_RULES: Array<HeaderRule> = Array::with_max_entries(MAX_HEADER_RULES, 0);

/// Packets each header rule matched, per CPU.
#[map]
pub(crate) static HEADER_HITS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_HEADER_RULES, 0);

/// The budget of each limit rule (CPUs race on it).
#[map]
pub(crate) static HEADER_BUCKETS: Array<Bucket> = Array::with_max_entries(MAX_HEADER_RULES, 0);
