//! The allow and block lists in the kernel: both share one set of lookup
//! tables per address family ([`super::tables`]: direct tables for short
//! prefixes, bucket hash tables for long ones); [`Lists`] explains how the
//! allowlist keeps its precedence. Every list entry has a per-CPU hit
//! counter in `RULE_HITS`, read in batches ([`super::batch`]) to list
//! them all. The `CONFIG` flags tell the program which tables hold keys,
//! so empty ones cost no lookup.

mod entries;
mod opening;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    sys::SyscallError,
};
use spacefilter_common::{HIT_LANES, Match, Slot, action, hit_values, lookup, map_names};

use self::entries::Entries;
use super::{
    ListError, batch,
    mapped::Mapped,
    tables::{V4Tables, V6Tables},
};
use crate::net::{List, Prefix};

/// One entry of a list, with the packets it has matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub list: List,
    pub prefix: Prefix,
    pub hits: u64,
}

/// The hit counts of the slots handed out, summed over the CPUs, by slot
/// (slot 0 is never used).
pub struct HitSums(Vec<u64>);

impl HitSums {
    /// The hits counted in `slot`.
    #[must_use]
    pub fn of(&self, slot: Slot) -> u64 {
        self.0.get(slot as usize).copied().unwrap_or(0)
    }
}

/// Hit-counter slots: `next` is the first never handed out (slot 0 is
/// never used); `free` holds slots given back.
///
/// A slot handed out again keeps its counter, which shares its per-CPU
/// value with seven others that the program may be bumping: rather than
/// write the value back with one lane zeroed (and lose a neighbour's
/// hits counted meanwhile), the count it had is kept in `bases` and
/// taken off every reading.
struct Slots {
    capacity: u32,
    next: Slot,
    free: Vec<Slot>,
    /// What each slot handed out again had counted before, where not 0.
    bases: HashMap<Slot, u64>,
}

impl Slots {
    /// The hits of `slot` since it was handed out, from its counter's sum.
    fn since_handed_out(&self, slot: Slot, sum: u64) -> u64 {
        sum.saturating_sub(self.bases.get(&slot).copied().unwrap_or(0))
    }
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
    hits: PerCpuArray<MapData, [u64; HIT_LANES as usize]>,
    /// `RULE_HITS` again, for the batched reads aya does not wrap.
    hits_fd: OwnedFd,
    /// Whether the kernel takes batched reads (cleared the first time it
    /// refuses one).
    batch_reads: AtomicBool,
    cpus: usize,
    slots: Slots,
    /// What the lists hold, by list and prefix, with each entry's slot.
    entries: Entries,
    /// How many allow entries there are of each prefix length, per family
    /// (IPv4, IPv6): the lengths to probe for an allow prefix covering a key.
    allow_lens: [BTreeMap<u8, usize>; 2],
}

/// A key's match as the tables store it.
fn packed(value: Match) -> u32 {
    lookup::encode(value.action == action::ALLOW, value.slot)
}

fn family_index(prefix: Prefix) -> usize {
    usize::from(prefix.addr().is_ipv6())
}

impl Lists {
    /// Adds `prefix` to `list`. Returns `false` if it was there already (the
    /// entry and its hit count are left as they are).
    pub fn insert(&mut self, list: List, prefix: Prefix) -> Result<bool, ListError> {
        Ok(self.insert_many(list, &[prefix])? == 1)
    }

    /// Adds every prefix of `prefixes` to `list`, all or nothing: if one
    /// fails, those added by this call are taken out again. Returns how many
    /// were new.
    pub fn insert_many(&mut self, list: List, prefixes: &[Prefix]) -> Result<usize, ListError> {
        // An allow entry rewrites the block keys inside it, from the allow
        // entries recorded (the longest covering each): allow entries go
        // in together only while no block entry needs that.
        if prefixes.len() > 1 && (list != List::Allow || self.entries.len(List::Block) == 0) {
            if prefixes.is_sorted_by(|a, b| a < b) && self.entries.len(list) == 0 {
                return self.fill(list, prefixes);
            }
            let mut new: Vec<Prefix> = prefixes
                .iter()
                .copied()
                .filter(|&prefix| !self.entries.contains(list, prefix))
                .collect();
            new.sort_unstable();
            new.dedup();
            return self.fill(list, &new);
        }
        let mut added = Vec::new();
        let mut result = Ok(());
        for &prefix in prefixes {
            if self.entries.contains(list, prefix) {
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

    /// [`Lists::insert_many`] of distinct prefixes in order, none of them
    /// on `list` (a start restoring the lists, an import): the keys'
    /// matches worked out, then written per family in one call
    /// ([`V4Tables::write_new`]), and the entries recorded in one pass
    /// rather than each looked up and inserted. No key written meanwhile
    /// depends on the entries of `list` (see the caller).
    fn fill(&mut self, list: List, prefixes: &[Prefix]) -> Result<usize, ListError> {
        let mut slots = Vec::with_capacity(prefixes.len());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let mut result = Ok(());
        for &prefix in prefixes {
            let slot = match self.take_slot() {
                Ok(slot) => slot,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            slots.push(slot);
            let packed = packed(self.entry_match(list, prefix, slot));
            match prefix.addr() {
                IpAddr::V4(a) => v4.push((a.into(), prefix.len(), packed)),
                IpAddr::V6(a) => v6.push((a.into(), prefix.len(), packed)),
            }
        }
        self.entries
            .fill(list, prefixes.iter().copied().zip(slots.iter().copied()));
        let result = result
            .and_then(|()| self.v4.write_new(&v4))
            .and_then(|()| self.v6.write_new(&v6));
        if let Err(err) = result {
            // Every entry recorded comes out again, with its key if it
            // was written.
            for &prefix in &prefixes[..slots.len()] {
                let _ = self.remove_one(list, prefix);
            }
            self.write_flags();
            return Err(err);
        }
        self.write_flags();
        Ok(prefixes.len())
    }

    fn insert_one(&mut self, list: List, prefix: Prefix) -> Result<(), ListError> {
        let slot = self.take_slot()?;
        self.entries.insert(list, prefix, slot);
        if let Err(err) = self.write_entry(list, prefix, slot) {
            let _ = self.remove_one(list, prefix);
            return Err(err);
        }
        Ok(())
    }

    /// A hit-counter slot for a new entry.
    fn take_slot(&mut self) -> Result<Slot, ListError> {
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
        if reused {
            match self.counter(slot) {
                Ok(0) => {
                    self.slots.bases.remove(&slot);
                }
                Ok(base) => {
                    self.slots.bases.insert(slot, base);
                }
                Err(err) => {
                    self.slots.free.push(slot);
                    return Err(err);
                }
            }
        }
        Ok(slot)
    }

    /// Writes the key of the new entry `prefix` on `list`, counted in
    /// `slot` (whether or not the entry is recorded yet), and for an allow
    /// entry the block keys inside it.
    fn write_entry(&mut self, list: List, prefix: Prefix, slot: Slot) -> Result<(), ListError> {
        let value = self.entry_match(list, prefix, slot);
        self.write_key(prefix, value)?;
        if list == List::Allow {
            self.sync_covered(prefix)?;
        }
        Ok(())
    }

    /// What the key of the new entry `prefix` on `list`, counted in
    /// `slot`, holds (an allow entry's length is counted).
    fn entry_match(&mut self, list: List, prefix: Prefix, slot: Slot) -> Match {
        // The other list's entry of the same prefix, if any (an allow
        // entry decides the key's match): the one lookup needed besides
        // the covering allow entries.
        let other = match list {
            List::Allow => self.entries.get(List::Block, prefix),
            _ => self.entries.get(List::Allow, prefix),
        };
        let allowed = |slot| Match {
            action: action::ALLOW,
            slot,
        };
        match (list, other) {
            (List::Allow, _) => {
                *self.allow_lens[family_index(prefix)]
                    .entry(prefix.len())
                    .or_default() += 1;
                allowed(slot)
            }
            (_, Some(slot)) => allowed(slot),
            (_, None) => self.covering_allow(prefix).map_or(
                Match {
                    action: action::BLOCK,
                    slot,
                },
                allowed,
            ),
        }
    }

    /// The slot of the longest allow entry strictly shorter than `prefix`
    /// that covers it.
    fn covering_allow(&self, prefix: Prefix) -> Option<Slot> {
        self.allow_lens[family_index(prefix)]
            .range(..prefix.len())
            .rev()
            .find_map(|(&len, _)| {
                let shorter = Prefix::truncating(prefix.addr(), len);
                self.entries.get(List::Allow, shorter)
            })
    }

    /// What the key of `prefix` should hold, if it should exist.
    fn desired(&self, prefix: Prefix) -> Option<Match> {
        if let Some(slot) = self.entries.get(List::Allow, prefix) {
            return Some(Match {
                action: action::ALLOW,
                slot,
            });
        }
        let block_slot = self.entries.get(List::Block, prefix)?;
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
        match (self.desired(prefix), prefix.addr()) {
            (Some(value), _) => self.write_key(prefix, value),
            (None, _) if !existed => Ok(()),
            (None, IpAddr::V4(a)) => self.v4.delete(a.into(), len),
            (None, IpAddr::V6(a)) => self.v6.delete(a.into(), len),
        }
    }

    /// Creates or rewrites the key of `prefix` with `value`.
    fn write_key(&mut self, prefix: Prefix, value: Match) -> Result<(), ListError> {
        let packed = packed(value);
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.write(a.into(), prefix.len(), packed),
            IpAddr::V6(a) => self.v6.write(a.into(), prefix.len(), packed),
        }
    }

    /// Rewrites the block keys strictly inside the allow prefix `outer`,
    /// whose verdict depends on it.
    fn sync_covered(&mut self, outer: Prefix) -> Result<(), ListError> {
        for prefix in self.entries.blocks_inside(outer) {
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
        let Some(slot) = self.entries.remove(list, prefix) else {
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
            .get(list, prefix)
            .map(|slot| self.hits(slot))
            .transpose()
    }

    /// Whether `prefix` is on `list`.
    #[must_use]
    pub fn contains(&self, list: List, prefix: Prefix) -> bool {
        self.entries.contains(list, prefix)
    }

    /// The number of entries on `list`.
    #[must_use]
    pub fn len(&self, list: List) -> usize {
        self.entries.len(list)
    }

    /// Every entry, allowlist first, each list in prefix order, with its
    /// hit count summed over the CPUs.
    pub fn entries(&self) -> Result<Vec<Entry>, ListError> {
        Ok(self
            .counted()?
            .map(|(list, prefix, hits)| Entry { list, prefix, hits })
            .collect())
    }

    /// Every entry as [`Lists::entries`] gives them, without collecting
    /// them: the hit counters are read first, all at once, and each entry
    /// is made as the iterator is drawn.
    pub fn counted(&self) -> Result<impl Iterator<Item = (List, Prefix, u64)> + '_, ListError> {
        let sums = self.hit_sums()?;
        Ok(self
            .slots()
            .map(move |(list, prefix, slot)| (list, prefix, sums.of(slot))))
    }

    /// Every entry with its hit-counter slot, in the order of
    /// [`Lists::entries`].
    pub fn slots(&self) -> impl Iterator<Item = (List, Prefix, Slot)> + '_ {
        self.entries.iter()
    }

    /// The hit count of every slot handed out, summed over the CPUs. Read
    /// in batches when the kernel has them.
    pub fn hit_sums(&self) -> Result<HitSums, ListError> {
        // Whole values, from value 0 (slot 0's, never handed out) to the
        // last slot handed out's.
        let lanes = HIT_LANES as usize;
        let mut sums = vec![0; hit_values(self.slots.next) as usize * lanes];
        let mut read = false;
        if self.batch_reads.load(Ordering::Relaxed) {
            match self.read_in_parts(&mut sums) {
                Ok(()) => read = true,
                Err(err) if batch::unsupported(&err) => {
                    log::info!(
                        "the kernel refuses batched map reads ({err}; they need Linux 5.6): \
                         reading the hit counters one by one"
                    );
                    self.batch_reads.store(false, Ordering::Relaxed);
                }
                Err(io_error) => {
                    return Err(ListError::Read {
                        name: map_names::RULE_HITS,
                        source: MapError::SyscallError(SyscallError {
                            call: "bpf_map_lookup_batch",
                            io_error,
                        }),
                    });
                }
            }
        }
        if !read {
            for (value, part) in (0..).zip(sums.chunks_mut(lanes)) {
                part.copy_from_slice(&self.value_sums(value)?);
            }
        }
        for (&slot, &base) in &self.slots.bases {
            if let Some(sum) = sums.get_mut(slot as usize) {
                *sum = sum.saturating_sub(base);
            }
        }
        sums.truncate(self.slots.next as usize);
        Ok(HitSums(sums))
    }

    /// Reads `sums` (lane `l` of value `v` at `v * HIT_LANES + l`) in
    /// batches, a part per CPU at once: the kernel copies each value's
    /// per-CPU copies for a few hundred nanoseconds.
    fn read_in_parts(&self, sums: &mut [u64]) -> std::io::Result<()> {
        const PART_MIN: usize = 4 * 1024;
        let lanes = HIT_LANES as usize;
        let values = sums.len() / lanes;
        let parts = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(values / PART_MIN)
            .max(1);
        let per_part = values.div_ceil(parts).max(1);
        let fd = self.hits_fd.as_fd();
        std::thread::scope(|scope| {
            let reads: Vec<_> = sums
                .chunks_mut(per_part * lanes)
                .enumerate()
                .map(|(i, part)| {
                    let first = u32::try_from(i * per_part).expect("a value index");
                    scope.spawn(move || batch::sum_per_cpu(fd, self.cpus, lanes, first, part))
                })
                .collect();
            reads
                .into_iter()
                .try_for_each(|read| read.join().expect("reading hit counters"))
        })
    }

    /// Reads the hit counters one entry at a time from now on, as on a
    /// kernel without batched reads: for tests of that path.
    pub fn read_hits_one_by_one(&self) {
        self.batch_reads.store(false, Ordering::Relaxed);
    }

    /// The hits of the entry holding `slot`.
    fn hits(&self, slot: Slot) -> Result<u64, ListError> {
        Ok(self.slots.since_handed_out(slot, self.counter(slot)?))
    }

    /// What the counter of `slot` holds, summed over the CPUs.
    fn counter(&self, slot: Slot) -> Result<u64, ListError> {
        Ok(self.value_sums(slot / HIT_LANES)?[(slot % HIT_LANES) as usize])
    }

    /// The counters of `RULE_HITS` value `value`, each summed over the
    /// CPUs.
    fn value_sums(&self, value: u32) -> Result<[u64; HIT_LANES as usize], ListError> {
        let per_cpu = self.hits.get(&value, 0).map_err(|source| ListError::Read {
            name: map_names::RULE_HITS,
            source,
        })?;
        let mut sums = [0; HIT_LANES as usize];
        for lanes in per_cpu.iter() {
            for (sum, count) in sums.iter_mut().zip(lanes) {
                *sum += count;
            }
        }
        Ok(sums)
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
                .find(|&list| self.entries.get(list, prefix) == Some(slot))
                .map(|list| (list, prefix))
        })
    }

    /// The distinct prefixes on `list`.
    #[must_use]
    pub fn prefixes(&self, list: List) -> BTreeSet<Prefix> {
        self.entries.list(list).map(|(_, p, _)| p).collect()
    }
}
