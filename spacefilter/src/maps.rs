//! Typed wrappers over the program's maps. Domain types ([`Prefix`],
//! [`List`], [`Reason`]) become kernel keys here and nowhere else.
//!
//! Both lists share one set of lookup tables per address family
//! (`tables.rs`: direct tables for short prefixes, bucket hash tables for
//! long ones); [`Lists`] explains how the allowlist keeps its precedence.
//! Every list entry has a per-CPU hit counter in `RULE_HITS`. The `CONFIG`
//! flags tell the program which tables hold keys, so empty ones cost no
//! lookup.

mod mapped;
mod tables;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use std::sync::atomic::Ordering;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use spacefilter_common::{
    AutoBlock, Bucket, Counter, HeaderRule, Limits, MAX_HEADER_RULES, Match, Reason, STATS_SLOTS,
    Slot, SpoofState, action, lookup, map_names, reflect_bits, stats_index,
};

use self::{
    mapped::Mapped,
    tables::{V4Tables, V6Tables},
};
use crate::prefix::Prefix;

/// The two lists. The allowlist wins over the blocklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum List {
    Allow,
    Block,
    /// Sources the rate limiter blocked for staying over their limit. They
    /// live in the limiter's own map, not in the rule maps.
    Auto,
}

impl List {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Block => "block",
            List::Auto => "auto",
        }
    }
}

/// One entry of a list, with the packets it has matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub list: List,
    pub prefix: Prefix,
    pub hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("map {name} is missing from the program")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the lists are full ({capacity} entries); raise the capacity or remove entries")]
    Full { capacity: u32 },
    #[error("updating map {name} failed")]
    Update {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading map {name} failed")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot count the CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("map {name} is not an array")]
    NotArray { name: &'static str },
    #[error("mapping map {name} into memory failed")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ListError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ListError::MissingMap { name })?;
    T::try_from(map).map_err(|source| ListError::MapType { name, source })
}

/// Hit-counter slots: `next` is the first never handed out (slot 0 is
/// never used); `free` holds slots given back, whose counters need zeroing
/// before reuse.
struct Slots {
    capacity: u32,
    next: Slot,
    free: Vec<Slot>,
}

/// The allow and block lists in the kernel, with the hit counters of their
/// entries.
///
/// Both lists share the rule maps: a key exists while either list holds its
/// prefix, and its value says which verdict it gives and which entry's hit
/// counter it bumps (see [`spacefilter_common::Match`]). The value of a key
/// `P` is:
/// - `P` on the allowlist: allow, counted on that entry;
/// - else, an allow prefix covering `P`: allow, counted on the longest one;
/// - else: block, counted on the block entry.
///
/// Adding or removing an allow prefix therefore rewrites the block keys it
/// covers.
pub struct Lists {
    v4: V4Tables,
    v6: V6Tables,
    /// `CONFIG`, mapped: its flags are stored in one word.
    config: Mapped,
    hits: PerCpuArray<MapData, u64>,
    cpus: usize,
    slots: Slots,
    /// What the lists hold, by list and prefix, with each entry's slot.
    entries: BTreeMap<(List, Prefix), Slot>,
    /// How many allow entries there are of each prefix length, per family
    /// (IPv4, IPv6): the lengths to probe for an allow prefix covering a key.
    allow_lens: [BTreeMap<u8, usize>; 2],
}

fn family_index(prefix: Prefix) -> usize {
    usize::from(prefix.addr().is_ipv6())
}

impl Lists {
    /// Takes the rule maps out of a freshly loaded program, before it is
    /// attached; `capacity` is the size the hit-counter array was created
    /// with, `seed` that of the bucket hashes.
    pub(crate) fn take(ebpf: &mut Ebpf, capacity: u32, seed: u64) -> Result<Self, ListError> {
        let cpus = nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?;
        let v4 = V4Tables::take(ebpf, seed)?;
        let v6 = V6Tables::take(ebpf, seed)?;
        let config = Mapped::take(ebpf, map_names::CONFIG)?;
        // `Config`: flags, v4_mask, v6_mask, reserved (32-bit words), seed
        // (the third 64-bit word). Set before the program runs anywhere.
        config.word32(1).store(v4.mask(), Ordering::Relaxed);
        config.word32(2).store(v6.mask(), Ordering::Relaxed);
        config.word64(2).store(seed, Ordering::Relaxed);
        let mut lists = Self {
            v4,
            v6,
            config,
            hits: take(ebpf, map_names::RULE_HITS)?,
            cpus,
            slots: Slots {
                capacity,
                next: 1,
                free: Vec::new(),
            },
            entries: BTreeMap::new(),
            allow_lens: [BTreeMap::new(), BTreeMap::new()],
        };
        lists.write_flags();
        Ok(lists)
    }

    /// Adds `prefix` to `list`. Returns `false` if it was there already (the
    /// entry and its hit count are left as they are).
    pub fn insert(&mut self, list: List, prefix: Prefix) -> Result<bool, ListError> {
        Ok(self.insert_many(list, &[prefix])? == 1)
    }

    /// Adds every prefix of `prefixes` to `list`, all or nothing: if one
    /// fails, those added by this call are taken out again. Returns how many
    /// were new.
    pub fn insert_many(&mut self, list: List, prefixes: &[Prefix]) -> Result<usize, ListError> {
        let mut added = Vec::new();
        let mut result = Ok(());
        for &prefix in prefixes {
            if self.entries.contains_key(&(list, prefix)) {
                continue;
            }
            if let Err(err) = self.insert_one(list, prefix) {
                result = Err(err);
                break;
            }
            added.push(prefix);
        }
        if let Err(err) = result {
            for prefix in added {
                let _ = self.remove_one(list, prefix);
            }
            self.write_flags();
            return Err(err);
        }
        self.write_flags();
        Ok(added.len())
    }

    fn insert_one(&mut self, list: List, prefix: Prefix) -> Result<(), ListError> {
        let (slot, reused) = match self.slots.free.pop() {
            Some(slot) => (slot, true),
            None if self.slots.next < self.slots.capacity => {
                self.slots.next += 1;
                (self.slots.next - 1, false)
            }
            None => {
                return Err(ListError::Full {
                    capacity: self.slots.capacity - 1,
                });
            }
        };
        if reused && let Err(err) = self.zero_hits(slot) {
            self.slots.free.push(slot);
            return Err(err);
        }
        let existed = self.key_exists(prefix);
        self.entries.insert((list, prefix), slot);
        if list == List::Allow {
            *self.allow_lens[family_index(prefix)]
                .entry(prefix.len())
                .or_default() += 1;
        }
        let written = self.sync(prefix, existed).and_then(|()| {
            if list == List::Allow {
                self.sync_covered(prefix)
            } else {
                Ok(())
            }
        });
        if let Err(err) = written {
            let _ = self.remove_one(list, prefix);
            return Err(err);
        }
        Ok(())
    }

    fn zero_hits(&mut self, slot: Slot) -> Result<(), ListError> {
        let zeros = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(ListError::Cpus)?;
        self.hits
            .set(slot, zeros, 0)
            .map_err(|source| ListError::Update {
                name: map_names::RULE_HITS,
                source,
            })
    }

    /// Whether either list holds `prefix`, i.e. whether its key exists.
    fn key_exists(&self, prefix: Prefix) -> bool {
        self.entries.contains_key(&(List::Allow, prefix))
            || self.entries.contains_key(&(List::Block, prefix))
    }

    /// The slot of the longest allow entry strictly shorter than `prefix`
    /// that covers it.
    fn covering_allow(&self, prefix: Prefix) -> Option<Slot> {
        self.allow_lens[family_index(prefix)]
            .range(..prefix.len())
            .rev()
            .find_map(|(&len, _)| {
                let shorter = Prefix::truncating(prefix.addr(), len);
                self.entries.get(&(List::Allow, shorter)).copied()
            })
    }

    /// What the key of `prefix` should hold, if it should exist.
    fn desired(&self, prefix: Prefix) -> Option<Match> {
        if let Some(&slot) = self.entries.get(&(List::Allow, prefix)) {
            return Some(Match {
                action: action::ALLOW,
                slot,
            });
        }
        let &block_slot = self.entries.get(&(List::Block, prefix))?;
        Some(match self.covering_allow(prefix) {
            Some(slot) => Match {
                action: action::ALLOW,
                slot,
            },
            None => Match {
                action: action::BLOCK,
                slot: block_slot,
            },
        })
    }

    /// Brings the key of `prefix` in line with the lists; `existed` says
    /// whether the key was in the tables before.
    fn sync(&mut self, prefix: Prefix, existed: bool) -> Result<(), ListError> {
        let len = prefix.len();
        let packed = |m: Match| lookup::encode(m.action == action::ALLOW, m.slot);
        match (self.desired(prefix), prefix.addr()) {
            (Some(value), IpAddr::V4(a)) => self.v4.write(a.into(), len, packed(value)),
            (Some(value), IpAddr::V6(a)) => self.v6.write(a.into(), len, packed(value)),
            (None, _) if !existed => Ok(()),
            (None, IpAddr::V4(a)) => self.v4.delete(a.into(), len),
            (None, IpAddr::V6(a)) => self.v6.delete(a.into(), len),
        }
    }

    /// Rewrites the block keys strictly inside the allow prefix `outer`,
    /// whose verdict depends on it.
    fn sync_covered(&mut self, outer: Prefix) -> Result<(), ListError> {
        let last = match outer.addr() {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                u32::from(a) | (u32::MAX.checked_shr(u32::from(outer.len())).unwrap_or(0)),
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                u128::from(a) | (u128::MAX.checked_shr(u32::from(outer.len())).unwrap_or(0)),
            )),
        };
        let full = if outer.addr().is_ipv4() { 32 } else { 128 };
        let inside: Vec<Prefix> = self
            .entries
            .range((List::Block, outer)..=(List::Block, Prefix::truncating(last, full)))
            .map(|(&(_, p), _)| p)
            .filter(|p| p.len() > outer.len() && outer.contains(p.addr()))
            .collect();
        for prefix in inside {
            self.sync(prefix, true)?;
        }
        Ok(())
    }

    /// Removes `prefix` from `list`. Returns `false` if it was not there.
    pub fn remove(&mut self, list: List, prefix: Prefix) -> Result<bool, ListError> {
        Ok(self.remove_many(list, &[prefix])? == 1)
    }

    /// Removes every prefix of `prefixes` from `list`; returns how many were
    /// there.
    pub fn remove_many(&mut self, list: List, prefixes: &[Prefix]) -> Result<usize, ListError> {
        let mut removed = 0;
        let mut result = Ok(());
        for &prefix in prefixes {
            match self.remove_one(list, prefix) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        self.write_flags();
        result.map(|()| removed)
    }

    fn remove_one(&mut self, list: List, prefix: Prefix) -> Result<bool, ListError> {
        let Some(slot) = self.entries.remove(&(list, prefix)) else {
            return Ok(false);
        };
        self.slots.free.push(slot);
        if list == List::Allow {
            let lens = &mut self.allow_lens[family_index(prefix)];
            if let Some(count) = lens.get_mut(&prefix.len()) {
                *count -= 1;
                if *count == 0 {
                    lens.remove(&prefix.len());
                }
            }
        }
        self.sync(prefix, true)?;
        if list == List::Allow {
            self.sync_covered(prefix)?;
        }
        Ok(true)
    }

    /// Room left for new entries.
    #[must_use]
    pub fn free(&self) -> usize {
        self.slots.free.len() + (self.slots.capacity - self.slots.next) as usize
    }

    /// The hits of the entry `prefix` on `list`, if it is there.
    pub fn hits_of(&self, list: List, prefix: Prefix) -> Result<Option<u64>, ListError> {
        self.entries
            .get(&(list, prefix))
            .map(|&slot| self.hits(slot))
            .transpose()
    }

    /// Whether `prefix` is on `list`.
    #[must_use]
    pub fn contains(&self, list: List, prefix: Prefix) -> bool {
        self.entries.contains_key(&(list, prefix))
    }

    /// The number of entries on `list`.
    #[must_use]
    pub fn len(&self, list: List) -> usize {
        self.entries.keys().filter(|(l, _)| *l == list).count()
    }

    /// Every entry, allowlist first, each list in prefix order, with its
    /// hit count summed over the CPUs.
    pub fn entries(&self) -> Result<Vec<Entry>, ListError> {
        self.entries
            .iter()
            .map(|(&(list, prefix), &slot)| {
                Ok(Entry {
                    list,
                    prefix,
                    hits: self.hits(slot)?,
                })
            })
            .collect()
    }

    fn hits(&self, slot: Slot) -> Result<u64, ListError> {
        let values = self.hits.get(&slot, 0).map_err(|source| ListError::Read {
            name: map_names::RULE_HITS,
            source,
        })?;
        Ok(values.iter().sum())
    }

    /// Stores the config flags, after the tables they announce are
    /// written.
    fn write_flags(&mut self) {
        let flags = self.v4.flags() | self.v6.flags();
        self.config.word32(0).store(flags, Ordering::Release);
    }

    /// How many blocks (IPv4 /24s, IPv6 /16s) are crowded: their longer
    /// keys did not all fit the bucket tables (or, in IPv6, are of more
    /// lengths than a lookup probes), and frames from them are looked up
    /// in a trie, at several times the cost.
    #[must_use]
    pub fn crowded(&self) -> usize {
        self.v4.crowded() + self.v6.crowded()
    }

    /// The entry whose hit counter is `slot` and whose prefix covers
    /// `addr`: what a frame from `addr` matched (the longest such entry is
    /// found first).
    #[must_use]
    pub fn entry_at(&self, addr: IpAddr, slot: Slot) -> Option<(List, Prefix)> {
        let full: u8 = if addr.is_ipv4() { 32 } else { 128 };
        (0..=full).rev().find_map(|len| {
            let prefix = Prefix::truncating(addr, len);
            [List::Allow, List::Block]
                .into_iter()
                .find(|&list| self.entries.get(&(list, prefix)) == Some(&slot))
                .map(|list| (list, prefix))
        })
    }

    /// The distinct prefixes on `list`.
    #[must_use]
    pub fn prefixes(&self, list: List) -> BTreeSet<Prefix> {
        self.entries
            .keys()
            .filter(|(l, _)| *l == list)
            .map(|&(_, p)| p)
            .collect()
    }
}

/// Packets and bytes per reason, summed over the CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// All interfaces together.
    pub by_reason: BTreeMap<Reason, Counter>,
    /// Per attached interface, by name.
    pub by_iface: BTreeMap<String, BTreeMap<Reason, Counter>>,
}

impl Counters {
    /// The counter of one reason (zero if nothing was counted).
    #[must_use]
    pub fn get(&self, reason: Reason) -> Counter {
        self.by_reason.get(&reason).copied().unwrap_or_default()
    }

    /// Packets dropped, whatever the reason.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.by_reason
            .iter()
            .filter(|(r, _)| r.drops())
            .map(|(_, c)| c.packets)
            .sum()
    }

    /// The change from `earlier` to `self` (all interfaces together).
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            by_iface: BTreeMap::new(),
            by_reason: self
                .by_reason
                .iter()
                .map(|(&reason, now)| {
                    let before = earlier.get(reason);
                    (
                        reason,
                        Counter {
                            packets: now.packets.saturating_sub(before.packets),
                            bytes: now.bytes.saturating_sub(before.bytes),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The per-CPU verdict counters.
pub struct Stats {
    map: PerCpuArray<MapData, Counter>,
}

impl Stats {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ListError> {
        Ok(Self {
            map: take(ebpf, map_names::STATS)?,
        })
    }

    /// The counters of one interface slot, summed over the CPUs.
    fn read_slot(&self, slot: u32) -> Result<BTreeMap<Reason, Counter>, ListError> {
        let mut by_reason = BTreeMap::new();
        for reason in Reason::ALL {
            let values = self
                .map
                .get(&stats_index(slot, reason as u32), 0)
                .map_err(|source| ListError::Read {
                    name: map_names::STATS,
                    source,
                })?;
            let total = values.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            by_reason.insert(reason, total);
        }
        debug_assert!(Reason::ALL.len() <= STATS_SLOTS as usize);
        Ok(by_reason)
    }

    /// The counters: slot 0 (frames from interfaces without a slot, and
    /// test runs) and every slot in `ifaces` (name and slot), per interface
    /// and together. Slots of interfaces no longer attached are not read.
    pub fn read(&self, ifaces: &[(String, u32)]) -> Result<Counters, ListError> {
        let mut by_reason = self.read_slot(0)?;
        let mut by_iface = BTreeMap::new();
        for (name, slot) in ifaces {
            let counters = self.read_slot(*slot)?;
            for (reason, counter) in &counters {
                let total = by_reason.entry(*reason).or_default();
                total.packets += counter.packets;
                total.bytes += counter.bytes;
            }
            by_iface.insert(name.clone(), counters);
        }
        Ok(Counters {
            by_reason,
            by_iface,
        })
    }
}

/// The rate limiter's maps: its settings, the per-source buckets and the
/// auto-blocks (see `spacefilter-ebpf/src/limit.rs`).
pub struct Limiter {
    limits: Array<MapData, Limits>,
    spoof: Array<MapData, SpoofState>,
    reflect_ports: Array<MapData, u8>,
    buckets: HashMap<MapData, [u8; 16], Bucket>,
    auto: HashMap<MapData, [u8; 16], AutoBlock>,
}

/// The bucket key of a source prefix: IPv4 as an IPv4-mapped IPv6 address
/// (always /32), IPv6 as the prefix's first address.
fn limiter_key(prefix: Prefix) -> [u8; 16] {
    match prefix.addr() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The prefix that a bucket key with `prefix_len` (IPv6) stands for.
#[must_use]
pub fn limiter_prefix(key: [u8; 16], prefix_len: u32, v6: bool) -> Prefix {
    let addr = Ipv6Addr::from(key);
    match (v6, addr.to_ipv4_mapped()) {
        (false, Some(v4)) => Prefix::host(IpAddr::V4(v4)),
        _ => Prefix::truncating(
            IpAddr::V6(addr),
            u8::try_from(prefix_len.min(128)).unwrap_or(128),
        ),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

impl Limiter {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ListError> {
        Ok(Self {
            limits: take(ebpf, map_names::LIMITS)?,
            spoof: take(ebpf, map_names::SPOOF_STATE)?,
            reflect_ports: take(ebpf, map_names::REFLECT_PORTS)?,
            buckets: take(ebpf, map_names::BUCKETS)?,
            auto: take(ebpf, map_names::AUTO_BLOCKED)?,
        })
    }

    /// Puts new limits in force at once, without reloading the program.
    pub fn set(&mut self, limits: Limits) -> Result<(), ListError> {
        self.limits
            .set(0, limits, 0)
            .map_err(|source| ListError::Update {
                name: map_names::LIMITS,
                source,
            })
    }

    /// Marks the reflector source ports and the service ports for the
    /// reflection guard (every UDP port is rewritten: 65536 updates).
    pub fn set_reflect_ports(
        &mut self,
        sources: &[u16],
        service: &[(u16, u16)],
    ) -> Result<(), ListError> {
        for port in 0..=u16::MAX {
            let mut bits = 0;
            if sources.contains(&port) {
                bits |= reflect_bits::SOURCE;
            }
            if service.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)) {
                bits |= reflect_bits::SERVICE;
            }
            self.reflect_ports
                .set(u32::from(port), bits, 0)
                .map_err(|source| ListError::Update {
                    name: map_names::REFLECT_PORTS,
                    source,
                })?;
        }
        Ok(())
    }

    pub fn get(&self) -> Result<Limits, ListError> {
        self.limits.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::LIMITS,
            source,
        })
    }

    /// Blocks `prefix` in the limiter until `until_ns` (monotonic), as the
    /// program does by itself; used to restore auto-blocks on start.
    pub fn insert_auto(&mut self, prefix: Prefix, until_ns: u64) -> Result<(), ListError> {
        self.auto
            .insert(limiter_key(prefix), AutoBlock { until_ns, hits: 0 }, 0)
            .map_err(|source| ListError::Update {
                name: map_names::AUTO_BLOCKED,
                source,
            })
    }

    /// Lifts the auto-block of `prefix`, and forgets its bucket so that it
    /// starts afresh.
    pub fn remove_auto(&mut self, prefix: Prefix) -> Result<(), ListError> {
        let key = limiter_key(prefix);
        let _ = self.buckets.remove(&key);
        match self.auto.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ListError::Update {
                name: map_names::AUTO_BLOCKED,
                source,
            }),
        }
    }

    /// Packets dropped under the auto-block of `prefix` (counted in its
    /// bucket while it has one, in the auto-block map otherwise).
    #[must_use]
    pub fn auto_hits(&self, prefix: Prefix) -> u64 {
        let key = limiter_key(prefix);
        let in_map = self.auto.get(&key, 0).map_or(0, |block| block.hits);
        let in_bucket = self.buckets.get(&key, 0).map_or(0, |b| b.blocked_hits);
        in_map + in_bucket
    }

    /// Every auto-block in force, with its bucket key and end.
    pub fn auto_blocks(&self) -> Vec<([u8; 16], AutoBlock)> {
        self.auto.iter().filter_map(Result::ok).collect()
    }

    /// The spoofed-source detector's state.
    pub fn spoof_state(&self) -> Result<SpoofState, ListError> {
        self.spoof.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::SPOOF_STATE,
            source,
        })
    }

    /// How many sources have a bucket.
    #[must_use]
    pub fn tracked_sources(&self) -> usize {
        self.buckets.keys().flatten().count()
    }
}

/// The header rules in the kernel, with their hit counters and budgets.
pub struct HeaderRules {
    rules: Array<MapData, HeaderRule>,
    hits: PerCpuArray<MapData, u64>,
    buckets: Array<MapData, Bucket>,
    cpus: usize,
}

impl HeaderRules {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ListError> {
        Ok(Self {
            rules: take(ebpf, map_names::HEADER_RULES)?,
            hits: take(ebpf, map_names::HEADER_HITS)?,
            buckets: take(ebpf, map_names::HEADER_BUCKETS)?,
            cpus: nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?,
        })
    }

    /// Puts `rules` in force, in order, each with the hit count given.
    /// Slots past the last rule are cleared, which ends the list.
    pub fn set(&mut self, rules: &[(HeaderRule, u64)]) -> Result<(), ListError> {
        let update = |name| move |source| ListError::Update { name, source };
        for index in 0..MAX_HEADER_RULES {
            let (rule, hits) = rules
                .get(index as usize)
                .copied()
                .unwrap_or((HeaderRule::default(), 0));
            let mut per_cpu = vec![0u64; self.cpus];
            per_cpu[0] = hits;
            let per_cpu = PerCpuValues::try_from(per_cpu).map_err(ListError::Cpus)?;
            self.hits
                .set(index, per_cpu, 0)
                .map_err(update(map_names::HEADER_HITS))?;
            self.buckets
                .set(index, Bucket::default(), 0)
                .map_err(update(map_names::HEADER_BUCKETS))?;
            self.rules
                .set(index, rule, 0)
                .map_err(update(map_names::HEADER_RULES))?;
        }
        Ok(())
    }

    /// The packets each rule slot has matched.
    pub fn hits(&self) -> Result<Vec<u64>, ListError> {
        (0..MAX_HEADER_RULES)
            .map(|index| {
                self.hits
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .map_err(|source| ListError::Read {
                        name: map_names::HEADER_HITS,
                        source,
                    })
            })
            .collect()
    }
}
