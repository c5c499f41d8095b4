//! The IPv4 tables: `V4_T12` and `V4_T24`, direct; `V4_LONG`, buckets of
//! /25-/32 keys; `V4_TRIE` for crowded blocks.

use std::{collections::HashMap, sync::atomic::Ordering};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use spacefilter_common::{
    flags,
    lookup::{
        V4_CROWDED, V4_LONG_MIN, V4_LONG_SHIFT, V4_T24_MIN, VALUE_MASK, buckets, v4_hash, v4_key,
        v4_slot,
    },
    map_names,
};

use super::{Level, bucket_mask, free_slot, slots, trie_error, trie_remove};
use crate::{
    bpf::{ListError, MapSource, mapped::Mapped, take},
    net::packed::Packed,
};

/// The IPv4 tables: `V4_T12` (/0 to /12), `V4_T24` (/13 to /24, and the
/// lengths of longer keys per /24), `V4_BUCKETS` (/25 to /32), and the trie
/// of crowded /24s.
pub(in crate::bpf) struct V4Tables {
    pub(super) t12: Level,
    pub(super) t24: Level,
    pub(super) buckets: Mapped,
    pub(super) mask: u32,
    pub(super) seed: u64,
    pub(super) trie: LpmTrie<MapData, [u8; 4], u32>,
    /// Keys of /25 to /32 per /24 and length ([`V4Tables::long_key`]): a
    /// length's flag is cleared when its last key goes. (A /24 holds at
    /// most 256 keys of a length.)
    pub(super) long: Packed<u32, u16>,
    pub(super) long_keys: usize,
    /// The crowded /24s, each with its keys (by [`v4_key`]) that found no
    /// room in their buckets, and their matches.
    pub(super) crowded: HashMap<u32, HashMap<u64, u32>>,
}

/// Each distinct key of [`V4Tables::long`] among `longs` (in any order),
/// with how many times it occurs, in key order.
pub(super) fn counted(mut longs: Vec<u32>) -> Vec<(u32, u16)> {
    longs.sort_unstable();
    let mut counts: Vec<(u32, u16)> = Vec::new();
    for long in longs {
        match counts.last_mut() {
            Some((last, count)) if *last == long => *count += 1,
            _ => counts.push((long, 1)),
        }
    }
    counts
}

impl V4Tables {
    pub(in crate::bpf) fn take(ebpf: &mut dyn MapSource, seed: u64) -> Result<Self, ListError> {
        let level = |map, index_bits, min_len| Level {
            map,
            width: 32,
            index_bits,
            min_len,
            stride: 1,
            offset: 0,
            keys: Packed::new(),
        };
        let buckets = Mapped::take(ebpf, map_names::V4_BUCKETS)?;
        let mask = bucket_mask(&buckets);
        Ok(Self {
            t12: level(Mapped::take(ebpf, map_names::V4_T12)?, 12, 0),
            t24: level(Mapped::take(ebpf, map_names::V4_T24)?, 24, V4_T24_MIN),
            buckets,
            mask,
            seed,
            trie: take(ebpf, map_names::V4_CROWDED)?,
            long: Packed::new(),
            long_keys: 0,
            crowded: HashMap::new(),
        })
    }

    /// The bucket count less one, for the config.
    pub(in crate::bpf) fn mask(&self) -> u32 {
        self.mask
    }

    /// Creates or rewrites the key `addr/len` with the packed match `value`.
    pub(in crate::bpf) fn write(
        &mut self,
        addr: u32,
        len: u8,
        value: u32,
    ) -> Result<(), ListError> {
        if len < V4_T24_MIN {
            self.t12.write(addr.into(), len, value);
            return Ok(());
        }
        if len < V4_LONG_MIN {
            self.t24.write(addr.into(), len, value);
            return Ok(());
        }
        let (key, block) = (v4_key(addr, len.into()), addr >> 8);
        let found = self.find(key);
        let unplaced = self.crowded.get(&block);
        let existed = found.is_some() || unplaced.is_some_and(|u| u.contains_key(&key));
        if unplaced.is_some() {
            self.trie_insert(addr, len, value)?;
        }
        if !self.place_found(key, value, found) {
            if let Some(unplaced) = self.crowded.get_mut(&block) {
                unplaced.insert(key, value);
            } else {
                // Every key of the /24, this one too, goes into the trie
                // before the flag sends frames there.
                let mut keys = self.block_keys(block);
                keys.push((addr, len, value));
                for (done, &(addr, len, value)) in keys.iter().enumerate() {
                    if let Err(err) = self.trie_insert(addr, len, value) {
                        // Nothing of a /24 that is not crowded stays in the
                        // trie: a key deleted meanwhile would match there
                        // once it is.
                        for &(addr, len, _) in &keys[..done] {
                            let _ = trie_remove(
                                &mut self.trie,
                                map_names::V4_CROWDED,
                                &Key::new(len.into(), addr.to_be_bytes()),
                            );
                        }
                        return Err(err);
                    }
                }
                self.crowded.insert(block, HashMap::from([(key, value)]));
                self.t24
                    .map
                    .word32(block as usize)
                    .fetch_or(V4_CROWDED, Ordering::Release);
            }
        } else if let Some(unplaced) = self.crowded.get_mut(&block) {
            unplaced.remove(&key);
        }
        if !existed {
            let key = Self::long_key(block, len);
            match self.long.get_mut(&key) {
                Some(count) => *count += 1,
                None => {
                    self.long.insert(key, 1);
                }
            }
            self.long_keys += 1;
        }
        // After the key is in place.
        self.t24
            .map
            .word32(block as usize)
            .fetch_or(Self::length_bit(len), Ordering::Release);
        self.settle(block)
    }

    /// [`V4Tables::write`] of each of `keys` (no prefix twice; in address
    /// and length order, as a start gives them, costs least), in less
    /// time: the direct tables' keys in one pass when a table is empty
    /// ([`Level::write_new`]); a key of /25 to
    /// /32 of a length its /24 has no key of yet, outside a crowded /24,
    /// stored in its bucket with no search for it, its length counted and
    /// flagged once all such keys are in place. The others (a length the
    /// /24 holds, which may be the key itself; a crowded /24; buckets with
    /// no room) go one by one after them. A failure leaves every key
    /// written so far recorded, for the caller to take out.
    pub(in crate::bpf) fn write_new(&mut self, keys: &[(u32, u8, u32)]) -> Result<(), ListError> {
        let level = |range: std::ops::Range<u8>| {
            keys.iter()
                .filter(move |k| range.contains(&k.1))
                .map(|&(addr, len, value)| (addr.into(), len, value))
        };
        self.t12.write_new(level(0..V4_T24_MIN));
        self.t24.write_new(level(V4_T24_MIN..V4_LONG_MIN));
        let mut one_by_one = Vec::new();
        let mut placed = Vec::new();
        for &(addr, len, value) in keys.iter().filter(|k| k.1 >= V4_LONG_MIN) {
            let (key, block) = (v4_key(addr, len.into()), addr >> 8);
            let long = Self::long_key(block, len);
            let slot = if self.long.contains_key(&long) || self.crowded.contains_key(&block) {
                None
            } else {
                free_slot(&self.buckets, self.candidates(key), 0, |_| true)
            };
            match slot {
                Some(slot) => {
                    self.buckets
                        .word64(slot)
                        .store(v4_slot(key, value), Ordering::Release);
                    placed.push(long);
                }
                None => one_by_one.push((addr, len, value)),
            }
        }
        self.long_keys += placed.len();
        let counts = counted(placed);
        // After the keys are in place.
        for &(long, _) in &counts {
            let len = V4_LONG_MIN + (long & 7) as u8;
            self.t24
                .map
                .word32((long >> 3) as usize)
                .fetch_or(Self::length_bit(len), Ordering::Release);
        }
        self.long.extend_sorted(counts);
        for (addr, len, value) in one_by_one {
            self.write(addr, len, value)?;
        }
        Ok(())
    }

    /// Removes the key `addr/len`.
    pub(in crate::bpf) fn delete(&mut self, addr: u32, len: u8) -> Result<(), ListError> {
        if len < V4_T24_MIN {
            self.t12.remove(addr.into(), len);
            return Ok(());
        }
        if len < V4_LONG_MIN {
            self.t24.remove(addr.into(), len);
            return Ok(());
        }
        let (key, block) = (v4_key(addr, len.into()), addr >> 8);
        let slot = self.find(key);
        let unplaced = self.crowded.get(&block);
        if slot.is_none() && !unplaced.is_some_and(|u| u.contains_key(&key)) {
            return Ok(());
        }
        let count = self
            .long
            .get_mut(&Self::long_key(block, len))
            .expect("counted when written");
        *count -= 1;
        if *count == 0 {
            self.long.remove(&Self::long_key(block, len));
            // Before the key goes.
            self.t24
                .map
                .word32(block as usize)
                .fetch_and(!Self::length_bit(len), Ordering::Release);
        }
        self.long_keys -= 1;
        if self.crowded.contains_key(&block) {
            trie_remove(
                &mut self.trie,
                map_names::V4_CROWDED,
                &Key::new(len.into(), addr.to_be_bytes()),
            )?;
        }
        match slot {
            Some(slot) => self.buckets.word64(slot).store(0, Ordering::Release),
            None => {
                if let Some(unplaced) = self.crowded.get_mut(&block) {
                    unplaced.remove(&key);
                }
            }
        }
        self.settle(block)
    }

    /// The [`flags`] of the tables that hold keys.
    pub(in crate::bpf) fn flags(&self) -> u32 {
        let mut bits = 0;
        if !self.t24.keys.is_empty() || self.long_keys > 0 {
            bits |= flags::V4_T24;
        }
        if !self.t12.keys.is_empty() {
            bits |= flags::V4_T12;
        }
        bits
    }

    /// How many /24s are crowded.
    pub(in crate::bpf) fn crowded(&self) -> usize {
        self.crowded.len()
    }

    /// The /24 `block` and a length of /25 to /32 as a key of
    /// [`V4Tables::long`]: 24 and 3 bits, sorted as the pairs are.
    pub(super) fn long_key(block: u32, len: u8) -> u32 {
        (block << 3) | u32::from(len - V4_LONG_MIN)
    }

    /// The flag of keys of `len` bits in a `V4_T24` word.
    pub(super) fn length_bit(len: u8) -> u32 {
        1 << (V4_LONG_SHIFT + u32::from(len - V4_LONG_MIN))
    }

    /// If the /24 `block` is crowded, moves its keys that now find room
    /// into their buckets, and once all have, sends frames back to the
    /// buckets and empties its trie.
    pub(super) fn settle(&mut self, block: u32) -> Result<(), ListError> {
        let Some(unplaced) = self.crowded.remove(&block) else {
            return Ok(());
        };
        let left: HashMap<u64, u32> = unplaced
            .into_iter()
            .filter(|&(key, value)| !self.place(key, value))
            .collect();
        if !left.is_empty() {
            self.crowded.insert(block, left);
            return Ok(());
        }
        self.t24
            .map
            .word32(block as usize)
            .fetch_and(!V4_CROWDED, Ordering::Release);
        for (addr, len, _) in self.block_keys(block) {
            trie_remove(
                &mut self.trie,
                map_names::V4_CROWDED,
                &Key::new(len.into(), addr.to_be_bytes()),
            )?;
        }
        Ok(())
    }

    /// The keys of /25 to /32 of the /24 `block` that are in the buckets
    /// or waiting for room, with their matches.
    fn block_keys(&self, block: u32) -> Vec<(u32, u8, u32)> {
        let unplaced = self.crowded.get(&block);
        let mut keys = Vec::new();
        for len in V4_LONG_MIN..=32 {
            if !self.long.contains_key(&Self::long_key(block, len)) {
                continue;
            }
            for host in 0..1u32 << (len - 24) {
                let addr = (block << 8) | (host << (32 - len));
                let key = v4_key(addr, len.into());
                let value = match self.find(key) {
                    #[expect(clippy::cast_possible_truncation, reason = "the low bits")]
                    Some(slot) => {
                        Some(self.buckets.word64(slot).load(Ordering::Relaxed) as u32 & VALUE_MASK)
                    }
                    None => unplaced.and_then(|u| u.get(&key).copied()),
                };
                if let Some(value) = value {
                    keys.push((addr, len, value));
                }
            }
        }
        keys
    }

    pub(super) fn trie_insert(&mut self, addr: u32, len: u8, value: u32) -> Result<(), ListError> {
        self.trie
            .insert(&Key::new(len.into(), addr.to_be_bytes()), value, 0)
            .map_err(trie_error(map_names::V4_CROWDED))
    }

    pub(super) fn candidates(&self, key: u64) -> (u32, u32) {
        buckets(v4_hash(key, self.seed), self.mask)
    }

    /// The slot holding `key`.
    fn find(&self, key: u64) -> Option<usize> {
        let (first, second) = self.candidates(key);
        slots(first)
            .chain(slots(second))
            .find(|&i| self.buckets.word64(i).load(Ordering::Relaxed) >> 24 == key)
    }

    /// Stores `key` with `value` in its slot, or in a free one; `false` if
    /// both its buckets are full.
    fn place(&mut self, key: u64, value: u32) -> bool {
        self.place_found(key, value, self.find(key))
    }

    /// [`V4Tables::place`] of a key `find` gave `found` for.
    fn place_found(&mut self, key: u64, value: u32, found: Option<usize>) -> bool {
        let slot = found.or_else(|| free_slot(&self.buckets, self.candidates(key), 0, |_| true));
        if let Some(slot) = slot {
            self.buckets
                .word64(slot)
                .store(v4_slot(key, value), Ordering::Release);
        }
        slot.is_some()
    }
}
