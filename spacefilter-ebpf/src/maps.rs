//! The maps the program shares with userspace. Names and value types come
//! from `spacefilter-common`; the userspace wrappers live in
//! `spacefilter::maps`.
//!
//! The allow and block lists share the lookup tables below (see
//! [`spacefilter_common::Match`] for how the allowlist keeps its precedence,
//! [`spacefilter_common::lookup`] for the tables' shapes and
//! [`crate::lookup`] for how they are read). The tables are arrays that the
//! daemon writes through a memory mapping (`BPF_F_MMAPABLE`, kernel 5.5),
//! so the program reads them with inlined array lookups; userspace sizes
//! the bucket tables for its capacity at load time. Only the tries of
//! crowded blocks, empty unless a block outgrows the tables, are kernel
//! maps that the program calls into.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use spacefilter_common::{
    AutoBlock, Bucket, Config, Counter, DEFAULT_BUCKETS, DEFAULT_CAPACITY, DEFAULT_VERIFIED,
    HEADER_RULE_SETS, HIT_LANES, HeaderRule, IFACE_TABLE, IfaceSlot, Limits, MAX_HEADER_RULES,
    MAX_IFACE_SLOTS, Observe, STATS_SLOTS, SampleState, Shield, SpoofState, V6Key, V6Top, Verified,
    VerifySettings, hit_values,
    lookup::{BUCKET_SLOTS, ROW, V4_T12_ROWS, V4_T24_ROWS, V6_TOP_ENTRIES, buckets_for},
    shield_watch, verified_how,
};

/// Slots of [`SPOOF_SEEN`] (a power of two).
pub(crate) const SPOOF_SEEN_SLOTS: u32 = 65_536;
/// Bits of an address's hash that pick its [`PEERS_SEEN`] slot.
pub(crate) const PEERS_SEEN_BITS: u32 = 12;
/// Slots of [`PEERS_SEEN`].
pub(crate) const PEERS_SEEN_SLOTS: usize = 1 << PEERS_SEEN_BITS;

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, BPF_F_MMAPABLE);

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

/// The size of `SAMPLES`, in bytes: some 1,560 samples.
pub(crate) const SAMPLES_BYTES: u32 = 256 * 1024;

/// Sampled dropped frames for the daemon (`spacefilter capture`, `top`).
#[map]
pub(crate) static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_BYTES, 0);

/// The sampler's per-second budget and outcome counters, per CPU.
#[map]
pub(crate) static SAMPLE_STATE: PerCpuArray<SampleState> = PerCpuArray::with_max_entries(1, 0);

/// Hit counter of each list entry, per CPU: slot `s` is lane
/// `s % HIT_LANES` of value `s / HIT_LANES`.
#[map]
pub(crate) static RULE_HITS: PerCpuArray<[u64; HIT_LANES as usize]> =
    PerCpuArray::with_max_entries(hit_values(DEFAULT_CAPACITY), 0);

/// IPv4 keys of /13 to /24: one word per /24 with the longest such key
/// covering it, and the lengths of /25 to /32 keys inside it (64 MiB).
#[map]
pub(crate) static V4_T24: Array<[u32; ROW]> = Array::with_max_entries(V4_T24_ROWS, BPF_F_MMAPABLE);

/// IPv4 keys of /0 to /12: one word per /12.
#[map]
pub(crate) static V4_T12: Array<[u32; ROW]> = Array::with_max_entries(V4_T12_ROWS, BPF_F_MMAPABLE);

/// IPv4 keys of /25 to /32: a hash table of buckets of slots.
#[map]
pub(crate) static V4_BUCKETS: Array<[u64; BUCKET_SLOTS]> =
    Array::with_max_entries(buckets_for(DEFAULT_CAPACITY), BPF_F_MMAPABLE);

/// The IPv4 keys of /25 to /32 of crowded /24s (see
/// [`spacefilter_common::lookup`]), with their packed matches. LPM tries:
/// kernel 4.11.
#[map]
pub(crate) static V4_CROWDED: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// IPv6: one entry per /16 with the longest key of /0 to /16 covering it
/// and the lengths of longer keys inside it.
#[map]
pub(crate) static V6_TOP: Array<V6Top> = Array::with_max_entries(V6_TOP_ENTRIES, BPF_F_MMAPABLE);

/// IPv6 keys of /17 to /128: a hash table of buckets of slots, each
/// pointing into `V6_KEYS`.
#[map]
pub(crate) static V6_BUCKETS: Array<[u64; BUCKET_SLOTS]> =
    Array::with_max_entries(buckets_for(DEFAULT_CAPACITY), BPF_F_MMAPABLE);

/// The IPv6 keys that `V6_BUCKETS` points to.
#[map]
pub(crate) static V6_KEYS: Array<V6Key> =
    Array::with_max_entries(DEFAULT_CAPACITY + 1, BPF_F_MMAPABLE);

/// The IPv6 keys of /17 to /128 of crowded /16s, with their packed
/// matches.
#[map]
pub(crate) static V6_CROWDED: LpmTrie<[u8; 16], u32> =
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

/// Nonzero while `AUTO_BLOCKED` may hold a block in force: set by the
/// program when it blocks and by the daemon when it restores a block,
/// cleared by the daemon when the map is empty. While it is zero, frames
/// skip the auto-block lookup.
#[map]
pub(crate) static AUTO_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Sources never auto-blocked (bucket keys): the host's own addresses, its
/// gateways and its resolvers, which a flood forged from them would
/// otherwise cut the host off from. Over their limit, their frames are
/// still dropped. A hash map (kernel 3.19).
#[map]
pub(crate) static AUTO_EXEMPT: HashMap<[u8; 16], u8> =
    HashMap::with_max_entries(spacefilter_common::MAX_AUTO_EXEMPT, 0);

/// Datagrams whose first fragment was dropped (see [`crate::fragments`]).
#[map]
pub(crate) static DROPPED_FRAGS: LruHashMap<crate::fragments::Datagram, crate::fragments::Dropped> =
    LruHashMap::with_max_entries(8_192, 0);

/// When each slot of the spoofed-source detector last counted a new
/// source (see `limit::spoof_fallback`): a source is counted once per
/// window, however many frames it sends without a bucket.
#[map]
pub(crate) static SPOOF_SEEN: Array<u32> = Array::with_max_entries(SPOOF_SEEN_SLOTS, 0);

/// Auto-block events for the daemon (ring buffers: kernel 5.8): room for
/// 6553 of them (40 bytes each with the ring's header), so that a flood
/// from thousands of sources, which go over their limits within the same
/// milliseconds, has each of its blocks reach the daemon as it happens.
/// (An event the ring cannot take is found by the daemon's reconciliation
/// of the auto-block map, every 10 s.)
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The host-wide SYN budget (one bucket; CPUs race on it).
#[map]
pub(crate) static SYN_GLOBAL: Array<Bucket> = Array::with_max_entries(1, 0);

/// [`spacefilter_common::reflect_bits`] per port.
#[map]
pub(crate) static REFLECT_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

/// The shield's settings (see [`spacefilter_common::Shield`]).
#[map]
pub(crate) static SHIELD: Array<Shield> = Array::with_max_entries(1, 0);

/// Where the shield builds a SYN-ACK, per CPU (per-CPU arrays: 4.6).
#[map]
pub(crate) static SHIELD_SCRATCH: PerCpuArray<crate::shield::Scratch> =
    PerCpuArray::with_max_entries(1, 0);

/// The spoofed-source detector.
#[map]
pub(crate) static SPOOF_STATE: Array<SpoofState> = Array::with_max_entries(1, 0);

/// Aggregate budgets during a spoofed-source flood: key byte 0 is the kind
/// (1: destination port in bytes 2-3; 2: source prefix in bytes 4-19).
#[map]
pub(crate) static AGG_BUCKETS: LruHashMap<[u8; 20], Bucket> =
    LruHashMap::with_max_entries(16_384, 0);

/// Rules on headers, tried in order (see
/// [`spacefilter_common::HeaderRule`]): [`HEADER_RULE_SETS`] sets of
/// [`MAX_HEADER_RULES`] slots, set `n` from slot `n * MAX_HEADER_RULES`.
#[map]
pub(crate) static HEADER_RULES: Array<HeaderRule> =
    Array::with_max_entries(MAX_HEADER_RULES * HEADER_RULE_SETS, 0);

/// Packets each header rule matched, per CPU, by slot of `HEADER_RULES`.
#[map]
pub(crate) static HEADER_HITS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_HEADER_RULES * HEADER_RULE_SETS, 0);

/// The budget of each limit rule (CPUs race on it), by slot of
/// `HEADER_RULES`.
#[map]
pub(crate) static HEADER_BUCKETS: Array<Bucket> =
    Array::with_max_entries(MAX_HEADER_RULES * HEADER_RULE_SETS, 0);

/// The rule set in force (0 or 1): written last, in one update, once the
/// other set holds a complete new list.
#[map]
pub(crate) static HEADER_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Verified sources (see [`spacefilter_common::Verified`]), least recently
/// used forgotten first. Only proofs insert here (a cookie's ACK, the
/// host's own traffic, the daemon), never a frame from an unproven source,
/// so a flood of forged sources cannot push real ones out.
#[map]
pub(crate) static VERIFIED: LruHashMap<[u8; 16], Verified> =
    LruHashMap::with_max_entries(DEFAULT_VERIFIED, 0);

/// Sources verified anew, per CPU, by proof ([`verified_how`]).
#[map]
pub(crate) static VERIFY_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(verified_how::SLOTS, 0);

/// How long a proof holds (see [`spacefilter_common::VerifySettings`]).
#[map]
pub(crate) static VERIFY_SETTINGS: Array<VerifySettings> = Array::with_max_entries(1, 0);

/// When the shield last found a listener on each port through the
/// socket path (the tick clock, `features::tick_now`; see
/// `shield::cookie_for`).
#[map]
pub(crate) static SHIELD_LISTENERS: Array<u64> = Array::with_max_entries(65_536, 0);

/// When the host last proved a TCP peer real, in [`PEERS_SEEN_SLOTS`]
/// slots of the peer's address (see `verified::seen_lately`), one value:
/// a SYN from such a peer may meet a socket of its 4-tuple (in
/// `TIME_WAIT`, most often), which only the shield's socket path sees.
#[map]
pub(crate) static PEERS_SEEN: Array<[u16; PEERS_SEEN_SLOTS]> = Array::with_max_entries(1, 0);

/// What the shield watches on its ports, per CPU (see
/// [`spacefilter_common::shield_watch`]).
#[map]
pub(crate) static SHIELD_WATCH: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(shield_watch::SLOTS, 0);

/// The shield's budget for UDP from unverified sources (CPUs race on it).
#[map]
pub(crate) static SHIELD_BUDGET: Array<Bucket> = Array::with_max_entries(1, 0);
