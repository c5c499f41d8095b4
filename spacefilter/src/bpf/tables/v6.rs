//! The IPv6 tables: `V6_TOP`, direct by /16; `V6_BUCKETS` with the keys in
//! `V6_KEYS`; `V6_TRIE` for crowded blocks.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering,
};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use spacefilter_common::{
    flags,
    lookup::{
        BUCKET_SLOTS, V6_CROWDED, V6_INDEX, V6_LONG_MIN, V6_PROBES, V6_SPILLED, buckets,
        fingerprint, v6_hash, v6_masks,
    },
    map_names,
};

use super::{Level, bucket_mask, free_slot, grace_period, slots, trie_error, trie_remove};
use crate::{
    bpf::{ListError, MapSource, mapped::Mapped, take},
    net::packed::Packed,
};

/// Indices into `V6_KEYS`: never used yet (`next` up to `size`), free, or
/// retired (their slot is cleared, but a program run may still read them).
pub(super) struct Records {
    pub(super) size: u32,
    pub(super) next: u32,
    pub(super) free: Vec<u32>,
    pub(super) retired: Vec<u32>,
}

impl Records {
    /// Whether [`Records::alloc`] has an index to give.
    fn available(&self) -> bool {
        !self.free.is_empty() || self.next < self.size || !self.retired.is_empty()
    }

    /// How many indices [`Records::alloc`] can give.
    fn room(&self) -> usize {
        self.free.len() + (self.size - self.next) as usize + self.retired.len()
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(index) = self.free.pop() {
            return Some(index);
        }
        if self.next < self.size {
            self.next += 1;
            return Some(self.next - 1);
        }
        if self.retired.is_empty() {
            return None;
        }
        grace_period();
        self.free.append(&mut self.retired);
        self.free.pop()
    }
}

/// The IPv6 tables: `V6_TOP` (/0 to /16, and the lengths of longer keys per
/// /16), `V6_BUCKETS` and `V6_KEYS` (/17 to /128), and the trie of crowded
/// /16s.
pub(in crate::bpf) struct V6Tables {
    pub(super) top: Level,
    pub(super) buckets: Mapped,
    pub(super) mask: u32,
    pub(super) seed: u64,
    pub(super) keys: Mapped,
    pub(super) records: Records,
    pub(super) trie: LpmTrie<MapData, [u8; 16], u32>,
    /// The keys of /17 to /128 with their matches, by [`long_key`]: a
    /// /16's keys are moved into its trie and out again from here.
    pub(super) long: Packed<LongKey, u32>,
    /// How many keys of each length each /16 holds.
    pub(super) lengths: HashMap<u16, BTreeMap<u8, u32>>,
    /// Keys that found no room in their buckets, per /16.
    pub(super) unplaced: HashMap<u16, HashSet<(u128, u8)>>,
    /// The crowded /16s.
    pub(super) crowded: HashSet<u16>,
    /// How many keys live in their second bucket, by their first bucket:
    /// the buckets whose [`V6_SPILLED`] is set.
    pub(super) spilled: HashMap<u32, u32>,
}

/// A key of /17 to /128 in [`V6Tables::long`]: its address's bytes
/// (big-endian, so that keys sort as the addresses do) and its length; 17
/// bytes where a `(u128, u8)` takes 32.
type LongKey = ([u8; 16], u8);

/// A /16's list of lengths in `V6_TOP` from its keys' counts by length:
/// one per byte, the longest in the lowest byte.
pub(super) fn length_list(counts: &BTreeMap<u8, u32>) -> u64 {
    counts
        .keys()
        .fold(0u64, |list, &len| (list << 8) | u64::from(len))
}

pub(super) fn long_key(addr: u128, len: u8) -> LongKey {
    (addr.to_be_bytes(), len)
}

/// Bytes of a `V6Top` and of a `V6Key`.
pub(super) const V6_TOP_BYTES: usize = 16;
pub(super) const V6_KEY_BYTES: usize = 24;

impl V6Tables {
    pub(in crate::bpf) fn take(ebpf: &mut dyn MapSource, seed: u64) -> Result<Self, ListError> {
        let buckets = Mapped::take(ebpf, map_names::V6_BUCKETS)?;
        let mask = bucket_mask(&buckets);
        let keys = Mapped::take(ebpf, map_names::V6_KEYS)?;
        let size = u32::try_from(keys.len() / V6_KEY_BYTES).expect("a map's entries");
        Ok(Self {
            top: Level {
                map: Mapped::take(ebpf, map_names::V6_TOP)?,
                width: 128,
                index_bits: 16,
                min_len: 0,
                stride: V6_TOP_BYTES / 4,
                // `V6Top::value`, after the lengths word.
                offset: 2,
                keys: Packed::new(),
            },
            buckets,
            mask,
            seed,
            keys,
            // Index 0 stays unused: a slot is never 0.
            records: Records {
                size,
                next: 1,
                free: Vec::new(),
                retired: Vec::new(),
            },
            trie: take(ebpf, map_names::V6_CROWDED)?,
            long: Packed::new(),
            lengths: HashMap::new(),
            unplaced: HashMap::new(),
            crowded: HashSet::new(),
            spilled: HashMap::new(),
        })
    }

    /// The bucket count less one, for the config.
    pub(in crate::bpf) fn mask(&self) -> u32 {
        self.mask
    }

    /// Creates or rewrites the key `addr/len` with the packed match `value`.
    /// All or nothing: if a step fails, the key is left as it was (absent,
    /// or with its old match), in the maps and in the bookkeeping.
    pub(in crate::bpf) fn write(
        &mut self,
        addr: u128,
        len: u8,
        value: u32,
    ) -> Result<(), ListError> {
        if len < V6_LONG_MIN {
            self.top.write(addr, len, value);
            return Ok(());
        }
        let old = self.long.get(&long_key(addr, len)).copied();
        let Err(err) = self.write_long(addr, len, value) else {
            return Ok(());
        };
        // `write_long` changes nothing when it fails before its
        // bookkeeping; past it, the key is taken back to what it was (a
        // second failure there leaves the bookkeeping consistent with
        // the maps, and is not the one reported).
        if self.long.get(&long_key(addr, len)).copied() != old {
            match old {
                None => {
                    let _ = self.delete(addr, len);
                }
                Some(old) => {
                    let _ = self.write_long(addr, len, old);
                }
            }
        }
        Err(err)
    }

    /// [`V6Tables::write`] of each of `keys` (no prefix twice; in address
    /// and length order, as a start gives them, costs least), in less
    /// time: `V6_TOP`'s keys in one pass when it is empty
    /// ([`Level::write_new`]); a key of /17 to /128 of a length
    /// its /16 has no key of yet, outside a crowded /16, stored in a free
    /// slot with no search for it, and each /16 settled once all such keys
    /// are in place. The others (a length the /16 holds, which may be the
    /// key itself; a crowded /16; buckets with no room; more keys than
    /// `V6_KEYS` has indices for) go one by one. A failure leaves every key
    /// written so far recorded, for the caller to take out.
    pub(in crate::bpf) fn write_new(&mut self, keys: &[(u128, u8, u32)]) -> Result<(), ListError> {
        self.top
            .write_new(keys.iter().filter(|k| k.1 < V6_LONG_MIN).copied());
        let long = keys.iter().filter(|k| k.1 >= V6_LONG_MIN);
        let mut one_by_one = Vec::new();
        let mut placed = Vec::new();
        let mut failed = None;
        let room = long.clone().count() <= self.records.room();
        for &(addr, len, value) in long {
            let top = Self::top_of(addr);
            let new = room
                && failed.is_none()
                && !self.crowded.contains(&top)
                && !self.lengths.get(&top).is_some_and(|l| l.contains_key(&len));
            if new {
                match self.place_found(Self::key(addr, len), value, None) {
                    Ok(true) => {
                        placed.push((long_key(addr, len), value));
                        continue;
                    }
                    Ok(false) => {}
                    Err(err) => failed = Some(err),
                }
            }
            one_by_one.push((addr, len, value));
        }
        // In order already, which the sort only checks.
        placed.sort_unstable_by_key(|&(key, _)| key);
        let mut tops = Vec::new();
        for &((addr, len), _) in &placed {
            let top = Self::top_of(u128::from_be_bytes(addr));
            *self.lengths.entry(top).or_default().entry(len).or_default() += 1;
            if tops.last() != Some(&top) {
                tops.push(top);
            }
        }
        self.long.extend_sorted(placed);
        if let Some(err) = failed {
            return Err(err);
        }
        // After the keys are in place.
        for top in tops {
            self.settle(top)?;
        }
        for (addr, len, value) in one_by_one {
            self.write(addr, len, value)?;
        }
        Ok(())
    }

    /// [`V6Tables::write`] of a key of /17 to /128, without the undo.
    /// The steps that can fail and change nothing come first: the trie
    /// insert (for a crowded /16) and the index the key needs.
    fn write_long(&mut self, addr: u128, len: u8, value: u32) -> Result<(), ListError> {
        let top = Self::top_of(addr);
        let key = Self::key(addr, len);
        let found = self.find(key);
        if found.is_none() && !self.records.available() {
            return Err(ListError::Full {
                capacity: self.records.size - 1,
            });
        }
        let old = self.long.get(&long_key(addr, len)).copied();
        let crowded = self.crowded.contains(&top);
        if crowded {
            self.trie_insert(addr, len, value)?;
        }
        let placed = match self.place_found(key, value, found) {
            Ok(placed) => placed,
            Err(err) => {
                if crowded {
                    let _ = match old {
                        Some(old) => self.trie_insert(addr, len, old),
                        None => trie_remove(
                            &mut self.trie,
                            map_names::V6_CROWDED,
                            &Key::new(len.into(), addr.to_be_bytes()),
                        ),
                    };
                }
                return Err(err);
            }
        };
        self.long.insert(long_key(addr, len), value);
        if !placed {
            self.unplaced.entry(top).or_default().insert((addr, len));
        } else if let Some(unplaced) = self.unplaced.get_mut(&top) {
            unplaced.remove(&(addr, len));
            if unplaced.is_empty() {
                self.unplaced.remove(&top);
            }
        }
        if old.is_none() {
            *self.lengths.entry(top).or_default().entry(len).or_default() += 1;
        }
        // After the key is in place (in its bucket, or in the trie).
        self.settle(top)
    }

    /// Removes the key `addr/len`. The one step that can fail before the
    /// key is gone (taking it out of a crowded /16's trie) comes first.
    pub(in crate::bpf) fn delete(&mut self, addr: u128, len: u8) -> Result<(), ListError> {
        if len < V6_LONG_MIN {
            self.top.remove(addr, len);
            return Ok(());
        }
        if !self.long.contains_key(&long_key(addr, len)) {
            return Ok(());
        }
        let top = Self::top_of(addr);
        let crowded = self.crowded.contains(&top);
        if crowded {
            // Frames look in the trie: the key leaves it first.
            trie_remove(
                &mut self.trie,
                map_names::V6_CROWDED,
                &Key::new(len.into(), addr.to_be_bytes()),
            )?;
        }
        self.long.remove(&long_key(addr, len));
        if let Some(counts) = self.lengths.get_mut(&top) {
            if let Some(count) = counts.get_mut(&len) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&len);
                }
            }
            if counts.is_empty() {
                self.lengths.remove(&top);
            }
        }
        if crowded {
            self.take_out(addr, len);
            self.settle(top)
        } else {
            // Frames probe the listed lengths: the list changes first.
            let settled = self.settle(top);
            self.take_out(addr, len);
            settled
        }
    }

    /// The [`flags`] of the tables that hold keys.
    pub(in crate::bpf) fn flags(&self) -> u32 {
        if !self.top.keys.is_empty() || !self.long.is_empty() {
            flags::V6_KEYS
        } else {
            0
        }
    }

    /// How many /16s are crowded.
    pub(in crate::bpf) fn crowded(&self) -> usize {
        self.crowded.len()
    }

    /// Takes `addr/len` out of its bucket, or out of the keys waiting for
    /// room.
    fn take_out(&mut self, addr: u128, len: u8) {
        let top = Self::top_of(addr);
        let key = Self::key(addr, len);
        if let Some((slot, index)) = self.find(key) {
            let word = self.buckets.word64(slot);
            word.store(word.load(Ordering::Relaxed) & V6_SPILLED, Ordering::Release);
            self.records.retired.push(index);
            let (first, _) = buckets(self.hash(key), self.mask);
            if slot / BUCKET_SLOTS != first as usize {
                self.unspill(first);
            }
        } else if let Some(unplaced) = self.unplaced.get_mut(&top) {
            unplaced.remove(&(addr, len));
            if unplaced.is_empty() {
                self.unplaced.remove(&top);
            }
        }
    }

    /// Brings the /16 `top`'s entry in line with its keys. Keys waiting
    /// for room are tried again. A /16 whose keys all fit, with few enough
    /// lengths, has its list of lengths; else it is crowded, with all its
    /// keys put in the trie before the flag is stored, and taken out after
    /// it is cleared.
    pub(super) fn settle(&mut self, top: u16) -> Result<(), ListError> {
        if let Some(waiting) = self.unplaced.remove(&top) {
            let mut left = HashSet::new();
            let mut failed = None;
            for (addr, len) in waiting {
                if failed.is_none()
                    && let Some(&value) = self.long.get(&long_key(addr, len))
                {
                    match self.place(Self::key(addr, len), value) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(err) => failed = Some(err),
                    }
                }
                left.insert((addr, len));
            }
            if !left.is_empty() {
                self.unplaced.insert(top, left);
            }
            if let Some(err) = failed {
                return Err(err);
            }
        }
        let lengths = self.lengths.get(&top);
        let crowd = lengths.is_some_and(|counts| counts.len() > V6_PROBES)
            || self.unplaced.contains_key(&top);
        let word = usize::from(top) * V6_TOP_BYTES / 8;
        match (crowd, self.crowded.contains(&top)) {
            (true, true) => {}
            (true, false) => {
                let inside: Vec<_> = self.keys_under(top).collect();
                for (i, &(addr, len, value)) in inside.iter().enumerate() {
                    if let Err(err) = self.trie_insert(addr, len, value) {
                        // The /16 stays as it was: what went into the trie
                        // leaves it, lest a later crowding find it there.
                        for &(addr, len, _) in &inside[..i] {
                            let _ = trie_remove(
                                &mut self.trie,
                                map_names::V6_CROWDED,
                                &Key::new(len.into(), addr.to_be_bytes()),
                            );
                        }
                        return Err(err);
                    }
                }
                self.crowded.insert(top);
                self.top
                    .map
                    .word64(word)
                    .store(V6_CROWDED, Ordering::Release);
            }
            (false, was_crowded) => {
                let list = lengths.map_or(0, length_list);
                self.top.map.word64(word).store(list, Ordering::Release);
                if was_crowded {
                    self.crowded.remove(&top);
                    let inside: Vec<_> = self.keys_under(top).collect();
                    for (addr, len, _) in inside {
                        trie_remove(
                            &mut self.trie,
                            map_names::V6_CROWDED,
                            &Key::new(len.into(), addr.to_be_bytes()),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The keys of /17 to /128 under the /16 `top`.
    pub(super) fn keys_under(&self, top: u16) -> impl Iterator<Item = (u128, u8, u32)> + '_ {
        let first = u128::from(top) << 112;
        let last = first | (u128::MAX >> 16);
        self.long
            .range(long_key(first, 0)..=long_key(last, u8::MAX))
            .map(|(&(addr, len), &value)| (u128::from_be_bytes(addr), len, value))
    }

    pub(super) fn trie_insert(&mut self, addr: u128, len: u8, value: u32) -> Result<(), ListError> {
        self.trie
            .insert(&Key::new(len.into(), addr.to_be_bytes()), value, 0)
            .map_err(trie_error(map_names::V6_CROWDED))
    }

    /// The key of `addr/len` as the program computes it: (high half, low
    /// half, length).
    pub(super) fn key(addr: u128, len: u8) -> [u64; 3] {
        let [hi_mask, lo_mask] = v6_masks(len.into());
        #[expect(clippy::cast_possible_truncation, reason = "the halves")]
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        [hi & hi_mask, lo & lo_mask, len.into()]
    }

    pub(super) fn top_of(addr: u128) -> u16 {
        (addr >> 112) as u16
    }

    pub(super) fn hash(&self, [hi, lo, len]: [u64; 3]) -> u64 {
        #[expect(clippy::cast_possible_truncation, reason = "a length")]
        v6_hash(hi, lo, len as u32, self.seed)
    }

    /// Whether `V6_KEYS[index]` holds `key`.
    fn holds(&self, index: u32, [hi, lo, len]: [u64; 3]) -> bool {
        let base = index as usize * V6_KEY_BYTES;
        self.keys.word64(base / 8).load(Ordering::Relaxed) == hi
            && self.keys.word64(base / 8 + 1).load(Ordering::Relaxed) == lo
            && u64::from(self.keys.word32(base / 4 + 4).load(Ordering::Relaxed)) == len
    }

    /// The slot holding `key`, and the key's index in `V6_KEYS`.
    fn find(&self, key: [u64; 3]) -> Option<(usize, u32)> {
        let hash = self.hash(key);
        let mark = fingerprint(hash);
        let (first, second) = buckets(hash, self.mask);
        slots(first).chain(slots(second)).find_map(|slot| {
            let word = self.buckets.word64(slot).load(Ordering::Relaxed);
            #[expect(clippy::cast_possible_truncation, reason = "the halves")]
            let (found_mark, index) = ((word >> 32) as u32, word as u32 & V6_INDEX);
            (word & !V6_SPILLED != 0 && found_mark == mark && self.holds(index, key))
                .then_some((slot, index))
        })
    }

    /// Whether a slot of `bucket` holds a key with the fingerprint `mark`.
    fn marked(&self, bucket: u32, mark: u32) -> bool {
        slots(bucket).any(|slot| {
            let word = self.buckets.word64(slot).load(Ordering::Relaxed);
            word & !V6_SPILLED != 0 && word >> 32 == u64::from(mark)
        })
    }

    /// Stores `key` with `value` in its slot's key, or in a free slot;
    /// `false` if neither bucket has room for it.
    fn place(&mut self, key: [u64; 3], value: u32) -> Result<bool, ListError> {
        self.place_found(key, value, self.find(key))
    }

    /// [`V6Tables::place`] of a key `find` gave `found` for.
    fn place_found(
        &mut self,
        key: [u64; 3],
        value: u32,
        found: Option<(usize, u32)>,
    ) -> Result<bool, ListError> {
        if let Some((_, index)) = found {
            self.keys
                .word32(index as usize * V6_KEY_BYTES / 4 + 5)
                .store(value, Ordering::Release);
            return Ok(true);
        }
        let hash = self.hash(key);
        let mark = fingerprint(hash);
        let (first, second) = buckets(hash, self.mask);
        // The program reads one candidate slot per bucket: a bucket holds
        // at most one key per fingerprint.
        let Some(slot) = free_slot(&self.buckets, (first, second), V6_SPILLED, |bucket| {
            !self.marked(bucket, mark)
        }) else {
            return Ok(false);
        };
        let index = self.records.alloc().ok_or(ListError::Full {
            capacity: self.records.size - 1,
        })?;
        let [hi, lo, len] = key;
        let base = index as usize * V6_KEY_BYTES;
        self.keys.word64(base / 8).store(hi, Ordering::Relaxed);
        self.keys.word64(base / 8 + 1).store(lo, Ordering::Relaxed);
        #[expect(clippy::cast_possible_truncation, reason = "a length")]
        self.keys
            .word32(base / 4 + 4)
            .store(len as u32, Ordering::Relaxed);
        self.keys
            .word32(base / 4 + 5)
            .store(value, Ordering::Relaxed);
        if slot / BUCKET_SLOTS != first as usize {
            // Before the key is in its second bucket, which a lookup reads
            // only once it sees the bit.
            self.spill(first);
        }
        // Publishes the key: the program reads it through this slot (whose
        // spilled bit, in a first slot, stays).
        let word = self.buckets.word64(slot);
        let spilled = word.load(Ordering::Relaxed) & V6_SPILLED;
        word.store(
            spilled | (u64::from(mark) << 32) | u64::from(index),
            Ordering::Release,
        );
        Ok(true)
    }

    /// Counts a key stored in its second bucket, setting the spilled bit
    /// of its first bucket `first` for the first such key.
    fn spill(&mut self, first: u32) {
        let count = self.spilled.entry(first).or_default();
        *count += 1;
        if *count == 1 {
            let word = self.buckets.word64(first as usize * BUCKET_SLOTS);
            word.store(word.load(Ordering::Relaxed) | V6_SPILLED, Ordering::Release);
        }
    }

    /// Counts a key taken out of its second bucket, clearing the spilled
    /// bit of its first bucket `first` after the last such key.
    fn unspill(&mut self, first: u32) {
        let Some(count) = self.spilled.get_mut(&first) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.spilled.remove(&first);
            let word = self.buckets.word64(first as usize * BUCKET_SLOTS);
            word.store(
                word.load(Ordering::Relaxed) & !V6_SPILLED,
                Ordering::Release,
            );
        }
    }
}
