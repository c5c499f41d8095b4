//! Typed wrappers over the program's maps. Domain types ([`Prefix`],
//! [`List`], [`Reason`]) become kernel keys here and nowhere else.
//!
//! Each list is two maps per address family: a hash map for full-length
//! entries (/32, /128) in front of an LPM trie for shorter prefixes. Every
//! entry's value is the slot of its per-CPU hit counter in `RULE_HITS`. The
//! `CONFIG` flags tell the program which maps hold entries, so empty ones
//! cost no lookup.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    util::nr_cpus,
};
use spacefilter_common::{Config, Counter, Reason, STATS_SLOTS, Slot, flags, map_names};

use crate::prefix::Prefix;

/// The two lists. The allowlist wins over the blocklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum List {
    Allow,
    Block,
}

impl List {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Block => "block",
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
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ListError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ListError::MissingMap { name })?;
    T::try_from(map).map_err(|source| ListError::MapType { name, source })
}

/// The exact-match map and the prefix trie of one list and address family.
struct FamilyMaps<const N: usize> {
    exact_name: &'static str,
    prefix_name: &'static str,
    exact: HashMap<MapData, [u8; N], Slot>,
    prefix: LpmTrie<MapData, [u8; N], Slot>,
    exact_flag: u32,
    prefix_flag: u32,
}

impl<const N: usize> FamilyMaps<N> {
    fn take(
        ebpf: &mut Ebpf,
        (exact_name, exact_flag): (&'static str, u32),
        (prefix_name, prefix_flag): (&'static str, u32),
    ) -> Result<Self, ListError> {
        Ok(Self {
            exact_name,
            prefix_name,
            exact: take(ebpf, exact_name)?,
            prefix: take(ebpf, prefix_name)?,
            exact_flag,
            prefix_flag,
        })
    }

    fn insert(&mut self, addr: [u8; N], len: u8, slot: Slot) -> Result<(), ListError> {
        if usize::from(len) == N * 8 {
            self.exact
                .insert(addr, slot, 0)
                .map_err(|source| ListError::Update {
                    name: self.exact_name,
                    source,
                })
        } else {
            self.prefix
                .insert(&Key::new(u32::from(len), addr), slot, 0)
                .map_err(|source| ListError::Update {
                    name: self.prefix_name,
                    source,
                })
        }
    }

    fn remove(&mut self, addr: [u8; N], len: u8) -> Result<(), ListError> {
        let (name, result) = if usize::from(len) == N * 8 {
            (self.exact_name, self.exact.remove(&addr))
        } else {
            (
                self.prefix_name,
                self.prefix.remove(&Key::new(u32::from(len), addr)),
            )
        };
        match result {
            // Already gone from the map: what the caller wanted.
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ListError::Update { name, source }),
        }
    }

    /// The flag bit for an entry of this length.
    fn flag(&self, len: u8) -> u32 {
        if usize::from(len) == N * 8 {
            self.exact_flag
        } else {
            self.prefix_flag
        }
    }
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
pub struct Lists {
    allow_v4: FamilyMaps<4>,
    allow_v6: FamilyMaps<16>,
    block_v4: FamilyMaps<4>,
    block_v6: FamilyMaps<16>,
    config: Array<MapData, Config>,
    hits: PerCpuArray<MapData, u64>,
    cpus: usize,
    slots: Slots,
    /// What the maps hold, by list and prefix, with each entry's slot.
    entries: BTreeMap<(List, Prefix), Slot>,
    /// How many entries each flag bit stands for.
    flag_counts: BTreeMap<u32, usize>,
}

impl Lists {
    /// Takes the list maps out of a freshly loaded program; `capacity` is
    /// the size the hit-counter array was created with.
    pub(crate) fn take(ebpf: &mut Ebpf, capacity: u32) -> Result<Self, ListError> {
        use map_names as n;
        let cpus = nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?;
        let mut lists = Self {
            allow_v4: FamilyMaps::take(
                ebpf,
                (n::ALLOW_V4_EXACT, flags::ALLOW_V4_EXACT),
                (n::ALLOW_V4, flags::ALLOW_V4_PREFIX),
            )?,
            allow_v6: FamilyMaps::take(
                ebpf,
                (n::ALLOW_V6_EXACT, flags::ALLOW_V6_EXACT),
                (n::ALLOW_V6, flags::ALLOW_V6_PREFIX),
            )?,
            block_v4: FamilyMaps::take(
                ebpf,
                (n::BLOCK_V4_EXACT, flags::BLOCK_V4_EXACT),
                (n::BLOCK_V4, flags::BLOCK_V4_PREFIX),
            )?,
            block_v6: FamilyMaps::take(
                ebpf,
                (n::BLOCK_V6_EXACT, flags::BLOCK_V6_EXACT),
                (n::BLOCK_V6, flags::BLOCK_V6_PREFIX),
            )?,
            config: take(ebpf, n::CONFIG)?,
            hits: take(ebpf, n::RULE_HITS)?,
            cpus,
            slots: Slots {
                capacity,
                next: 1,
                free: Vec::new(),
            },
            entries: BTreeMap::new(),
            flag_counts: BTreeMap::new(),
        };
        lists.write_flags()?;
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
            self.write_flags()?;
            return Err(err);
        }
        self.write_flags()?;
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
        if let Err(err) = self.install(list, prefix, slot, reused) {
            self.slots.free.push(slot);
            return Err(err);
        }
        self.entries.insert((list, prefix), slot);
        let flag = self.flag(list, prefix);
        *self.flag_counts.entry(flag).or_default() += 1;
        Ok(())
    }

    /// Writes the entry to its map. A reused slot still holds its last
    /// owner's hits and is zeroed first; a fresh one is zero already.
    fn install(
        &mut self,
        list: List,
        prefix: Prefix,
        slot: Slot,
        reused: bool,
    ) -> Result<(), ListError> {
        if reused {
            let zeros = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(ListError::Cpus)?;
            self.hits
                .set(slot, zeros, 0)
                .map_err(|source| ListError::Update {
                    name: map_names::RULE_HITS,
                    source,
                })?;
        }
        let len = prefix.len();
        match (list, prefix.addr()) {
            (List::Allow, IpAddr::V4(a)) => self.allow_v4.insert(a.octets(), len, slot),
            (List::Allow, IpAddr::V6(a)) => self.allow_v6.insert(a.octets(), len, slot),
            (List::Block, IpAddr::V4(a)) => self.block_v4.insert(a.octets(), len, slot),
            (List::Block, IpAddr::V6(a)) => self.block_v6.insert(a.octets(), len, slot),
        }
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
        self.write_flags()?;
        result.map(|()| removed)
    }

    fn remove_one(&mut self, list: List, prefix: Prefix) -> Result<bool, ListError> {
        let Some(&slot) = self.entries.get(&(list, prefix)) else {
            return Ok(false);
        };
        let len = prefix.len();
        match (list, prefix.addr()) {
            (List::Allow, IpAddr::V4(a)) => self.allow_v4.remove(a.octets(), len),
            (List::Allow, IpAddr::V6(a)) => self.allow_v6.remove(a.octets(), len),
            (List::Block, IpAddr::V4(a)) => self.block_v4.remove(a.octets(), len),
            (List::Block, IpAddr::V6(a)) => self.block_v6.remove(a.octets(), len),
        }?;
        self.entries.remove(&(list, prefix));
        self.slots.free.push(slot);
        let flag = self.flag(list, prefix);
        if let Some(count) = self.flag_counts.get_mut(&flag) {
            *count -= 1;
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

    fn flag(&self, list: List, prefix: Prefix) -> u32 {
        let len = prefix.len();
        match (list, prefix.addr()) {
            (List::Allow, IpAddr::V4(_)) => self.allow_v4.flag(len),
            (List::Allow, IpAddr::V6(_)) => self.allow_v6.flag(len),
            (List::Block, IpAddr::V4(_)) => self.block_v4.flag(len),
            (List::Block, IpAddr::V6(_)) => self.block_v6.flag(len),
        }
    }

    fn write_flags(&mut self) -> Result<(), ListError> {
        let flags = self
            .flag_counts
            .iter()
            .filter(|&(_, &count)| count > 0)
            .fold(0, |acc, (&flag, _)| acc | flag);
        self.config
            .set(0, Config { flags, reserved: 0 }, 0)
            .map_err(|source| ListError::Update {
                name: map_names::CONFIG,
                source,
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
    pub by_reason: BTreeMap<Reason, Counter>,
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

    /// The change from `earlier` to `self`.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
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

    pub fn read(&self) -> Result<Counters, ListError> {
        let mut by_reason = BTreeMap::new();
        for reason in Reason::ALL {
            let values = self
                .map
                .get(&(reason as u32), 0)
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
        Ok(Counters { by_reason })
    }
}
