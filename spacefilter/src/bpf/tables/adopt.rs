//! Taking over tables a predecessor wrote (see
//! [`crate::bpf::Lists::adopt`]): the bookkeeping is rebuilt from the keys
//! the state says the tables hold and from what the tables do hold, read
//! once, with no search per key. Where the two differ (a daemon that died
//! between its journal and the kernel, or a slot numbering of its own),
//! the tables are brought in line with the state, each word written once,
//! in the order a write or a removal uses, so that a frame looked up
//! meanwhile sees each source's match as it was or as it is.
//!
//! A slot that cannot be read as a key of its bucket (a table written by
//! another layout) fails the adoption before anything is written: the
//! caller then loads a program afresh.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering,
};

use aya::maps::lpm_trie::Key;
use spacefilter_common::{
    lookup::{
        BUCKET_SLOTS, V4_CROWDED, V4_LONG_MIN, V4_LONG_SHIFT, V4_T24_MIN, V6_CROWDED, V6_INDEX,
        V6_LONG_MIN, V6_PROBES, V6_SPILLED, VALUE_MASK, buckets, fingerprint, v4_key, v4_slot,
    },
    map_names,
};

use super::{
    V4Tables, V6Tables, trie_remove,
    v4::counted,
    v6::{V6_KEY_BYTES, V6_TOP_BYTES, length_list, long_key},
};
use crate::bpf::ListError;
use crate::net::packed::Packed;

/// What an adoption found and changed in one family's tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::bpf) struct Adoption {
    /// Keys found where the state says (the direct tables' keys
    /// included), whatever match they held.
    pub(in crate::bpf) held: usize,
    /// Words rewritten with another match (another hit-counter slot, or
    /// another verdict).
    pub(in crate::bpf) rewritten: usize,
    /// Keys the tables held that the state does not: taken out.
    pub(in crate::bpf) stale: usize,
    /// Keys of the state the tables lacked: written.
    pub(in crate::bpf) missing: usize,
}

/// Why a table cannot be adopted.
fn unreadable(name: &'static str, why: String) -> ListError {
    ListError::Unadoptable { name, why }
}

/// Whether `key` is a `V4_BUCKETS` key ([`v4_key`]): its leading bit
/// marks a length of /25 to /32.
fn is_v4_long_key(key: u64) -> bool {
    63u32
        .checked_sub(key.leading_zeros())
        .is_some_and(|len| (u32::from(V4_LONG_MIN)..=32).contains(&len))
}

/// A key of /25 to /32 the state holds: its bucket key, packed match,
/// address and length.
type Wanted4 = (u64, u32, u32, u8);

impl V4Tables {
    /// Takes over the tables: `keys` (address and length order, no prefix
    /// twice) are every key they should hold, with its packed match.
    pub(in crate::bpf) fn adopt(&mut self, keys: &[(u32, u8, u32)]) -> Result<Adoption, ListError> {
        let found = self.read_buckets()?;
        let mut report = Adoption {
            held: keys.iter().filter(|k| k.1 < V4_LONG_MIN).count(),
            ..Adoption::default()
        };
        let level = |range: std::ops::Range<u8>| {
            keys.iter()
                .filter(move |k| range.contains(&k.1))
                .map(|&(addr, len, value)| (addr.into(), len, value))
        };
        report.rewritten += self.t12.adopt(level(0..V4_T24_MIN));
        report.rewritten += self.t24.adopt(level(V4_T24_MIN..V4_LONG_MIN));
        // The /24s' flags: crowded, and the lengths of their longer keys,
        // in block order.
        let flagged: Vec<(u32, u32)> = (0..1u32 << 24)
            .filter_map(|block| {
                let word = self.t24.map.word32(block as usize).load(Ordering::Relaxed);
                Some((block, word & !VALUE_MASK)).filter(|&(_, bits)| bits != 0)
            })
            .collect();
        self.crowded = flagged
            .iter()
            .filter(|&(_, bits)| bits & V4_CROWDED != 0)
            .map(|&(block, _)| (block, HashMap::new()))
            .collect();
        let mut wanted: Vec<Wanted4> = keys
            .iter()
            .filter(|k| k.1 >= V4_LONG_MIN)
            .map(|&(addr, len, value)| (v4_key(addr, len.into()), value, addr, len))
            .collect();
        wanted.sort_unstable_by_key(|w| w.0);
        let (stale, one_by_one, counts) = self.adopt_long(&wanted, &found, &mut report);
        self.adopt_tries(&wanted)?;
        report.rewritten += self.adopt_flags(&flagged, &counts);
        // The stale keys go after their lengths' flags.
        for &slot in &stale {
            self.buckets.word64(slot).store(0, Ordering::Release);
        }
        report.stale = stale.len();
        self.long_keys = counts.iter().map(|&(_, c)| usize::from(c)).sum();
        self.long = Packed::from_sorted(counts);
        let blocks: Vec<u32> = self.crowded.keys().copied().collect();
        for block in blocks {
            self.settle(block)?;
        }
        report.missing = one_by_one.len();
        for (addr, len, value) in one_by_one {
            self.write(addr, len, value)?;
        }
        Ok(report)
    }

    /// Every key in `V4_BUCKETS` with its slot, in key order; writes
    /// nothing, and fails if a slot holds no key of its bucket or a key is
    /// in two slots.
    fn read_buckets(&self) -> Result<Vec<(u64, usize)>, ListError> {
        let mut found: Vec<(u64, usize)> = Vec::new();
        for slot in 0..self.buckets.len() / 8 {
            let word = self.buckets.word64(slot).load(Ordering::Relaxed);
            if word == 0 {
                continue;
            }
            let key = word >> 24;
            let (first, second) = self.candidates(key);
            let bucket = u32::try_from(slot / BUCKET_SLOTS).unwrap_or(u32::MAX);
            if !is_v4_long_key(key) || (bucket != first && bucket != second) {
                return Err(unreadable(
                    map_names::V4_BUCKETS,
                    format!("slot {slot} holds no key of its bucket"),
                ));
            }
            found.push((key, slot));
        }
        found.sort_unstable();
        if found.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(unreadable(
                map_names::V4_BUCKETS,
                "a key is in two slots".to_owned(),
            ));
        }
        Ok(found)
    }

    /// Gives the keys in their buckets (`found`) that the state holds
    /// (`wanted`) their matches, and records the keys of crowded /24s that
    /// wait in the trie. Returns the slots of the stale keys, the keys to
    /// write, and the count of keys in place per /24 and length (`long`).
    #[expect(clippy::type_complexity, reason = "three lists, each named")]
    fn adopt_long(
        &mut self,
        wanted: &[Wanted4],
        found: &[(u64, usize)],
        report: &mut Adoption,
    ) -> (Vec<usize>, Vec<(u32, u8, u32)>, Vec<(u32, u16)>) {
        let (mut stale, mut one_by_one) = (Vec::new(), Vec::new());
        let mut longs: Vec<u32> = Vec::with_capacity(wanted.len());
        let (mut w, mut f) = (wanted.iter().peekable(), found.iter().peekable());
        loop {
            match (w.peek(), f.peek()) {
                (Some(&&(key, value, addr, len)), Some(&&(held, slot))) if key == held => {
                    let word = self.buckets.word64(slot);
                    if word.load(Ordering::Relaxed) != v4_slot(key, value) {
                        word.store(v4_slot(key, value), Ordering::Release);
                        report.rewritten += 1;
                    }
                    report.held += 1;
                    longs.push(Self::long_key(addr >> 8, len));
                    w.next();
                    f.next();
                }
                (Some(&&(key, value, addr, len)), next)
                    if next.is_none_or(|&&(held, _)| key < held) =>
                {
                    if let Some(unplaced) = self.crowded.get_mut(&(addr >> 8)) {
                        // In the trie, waiting for room.
                        unplaced.insert(key, value);
                        longs.push(Self::long_key(addr >> 8, len));
                        report.held += 1;
                    } else {
                        one_by_one.push((addr, len, value));
                    }
                    w.next();
                }
                (_, Some(&&(_, slot))) => {
                    stale.push(slot);
                    f.next();
                }
                (None, None) => break,
                (Some(_), None) => unreachable!("matched above"),
            }
        }
        (stale, one_by_one, counted(longs))
    }

    /// Puts every key of a crowded /24 in the trie with its match, and
    /// takes everything else out. (A key missing from a crowded /24 waits
    /// in the trie: none of them is written one by one.)
    fn adopt_tries(&mut self, wanted: &[Wanted4]) -> Result<(), ListError> {
        let crowded: HashSet<u32> = self.crowded.keys().copied().collect();
        for &(_, value, addr, len) in wanted {
            if crowded.contains(&(addr >> 8)) {
                self.trie_insert(addr, len, value)?;
            }
        }
        let in_trie: Vec<Key<[u8; 4]>> = self.trie.keys().filter_map(Result::ok).collect();
        for key in in_trie {
            let (addr, len) = (u32::from_be_bytes(key.data()), key.prefix_len());
            let kept = crowded.contains(&(addr >> 8))
                && (u32::from(V4_LONG_MIN)..=32).contains(&len)
                && wanted
                    .binary_search_by_key(&v4_key(addr, len), |w| w.0)
                    .is_ok();
            if !kept {
                trie_remove(&mut self.trie, map_names::V4_CROWDED, &key)?;
            }
        }
        Ok(())
    }

    /// Sets the lengths' flags of the /24s where keys are (in place by
    /// now) and clears those where none is left (before the stale keys
    /// go): `flagged` are the /24s' flags as found, `counts` the keys in
    /// place. Returns how many words changed.
    fn adopt_flags(&self, flagged: &[(u32, u32)], counts: &[(u32, u16)]) -> usize {
        let mut wants: Vec<(u32, u32)> = Vec::new();
        for &(long, _) in counts {
            let bit = Self::length_bit(V4_LONG_MIN + (long & 7) as u8);
            match wants.last_mut() {
                Some((block, bits)) if *block == long >> 3 => *bits |= bit,
                _ => wants.push((long >> 3, bit)),
            }
        }
        let lengths = u32::MAX << V4_LONG_SHIFT;
        let mut rewritten = 0;
        let (mut has, mut want) = (flagged.iter().peekable(), wants.iter().peekable());
        loop {
            let (block, had, wanted) = match (has.peek().copied(), want.peek().copied()) {
                (None, None) => break,
                (Some(&(b, had)), Some(&(w, bits))) if b == w => {
                    has.next();
                    want.next();
                    (b, had & lengths, bits)
                }
                (Some(&(b, had)), next) if next.is_none_or(|&(w, _)| b < w) => {
                    has.next();
                    (b, had & lengths, 0)
                }
                (_, Some(&(w, bits))) => {
                    want.next();
                    (w, 0, bits)
                }
                (Some(_), None) => unreachable!("taken above"),
            };
            let word = self.t24.map.word32(block as usize);
            if wanted & !had != 0 {
                word.fetch_or(wanted & !had, Ordering::Release);
                rewritten += 1;
            }
            if had & !wanted != 0 {
                word.fetch_and(!(had & !wanted), Ordering::Release);
                rewritten += 1;
            }
        }
        rewritten
    }
}

/// A `V6_BUCKETS` slot read back: where, the key's index in `V6_KEYS`, and
/// the key.
struct Held {
    slot: usize,
    index: u32,
    addr: u128,
    len: u8,
    /// The key's first bucket, if it lives in its second.
    spilled_from: Option<u32>,
}

impl V6Tables {
    /// Takes over the tables: `keys` (address and length order, no prefix
    /// twice) are every key they should hold, with its packed match.
    pub(in crate::bpf) fn adopt(
        &mut self,
        keys: &[(u128, u8, u32)],
    ) -> Result<Adoption, ListError> {
        let found = self.read_slots()?;
        let mut report = Adoption {
            held: keys.iter().filter(|k| k.1 < V6_LONG_MIN).count(),
            rewritten: self
                .top
                .adopt(keys.iter().filter(|k| k.1 < V6_LONG_MIN).copied()),
            ..Adoption::default()
        };
        let mut listed = Vec::new();
        self.crowded = HashSet::new();
        for top in 0..=u16::MAX {
            let word = self.top_word(top);
            if word & V6_CROWDED != 0 {
                self.crowded.insert(top);
            }
            if word != 0 {
                listed.push(top);
            }
        }
        let wanted: Vec<(u128, u8, u32)> = keys
            .iter()
            .filter(|k| k.1 >= V6_LONG_MIN)
            .copied()
            .collect();
        let (stale, one_by_one) = self.adopt_long(&wanted, found, &mut report);
        // Spilled bits: set where a key lives in its second bucket (they
        // are, unless the tables were torn), cleared after the stale keys
        // go.
        for &first in self.spilled.keys() {
            let word = self.buckets.word64(first as usize * BUCKET_SLOTS);
            if word.load(Ordering::Relaxed) & V6_SPILLED == 0 {
                word.fetch_or(V6_SPILLED, Ordering::Release);
                report.rewritten += 1;
            }
        }
        self.adopt_tries()?;
        // Each /16's list of lengths from its keys, before the stale keys
        // leave their slots.
        listed.extend(self.lengths.keys().copied());
        listed.extend(self.crowded.iter().copied());
        listed.sort_unstable();
        listed.dedup();
        report.rewritten += self.adopt_tops(listed)?;
        for held in &stale {
            let word = self.buckets.word64(held.slot);
            word.store(word.load(Ordering::Relaxed) & V6_SPILLED, Ordering::Release);
            self.records.retired.push(held.index);
        }
        report.stale = stale.len();
        for bucket in 0..=self.mask {
            let word = self.buckets.word64(bucket as usize * BUCKET_SLOTS);
            if word.load(Ordering::Relaxed) & V6_SPILLED != 0 && !self.spilled.contains_key(&bucket)
            {
                word.fetch_and(!V6_SPILLED, Ordering::Release);
            }
        }
        report.missing = one_by_one.len();
        for (addr, len, value) in one_by_one {
            self.write(addr, len, value)?;
        }
        Ok(report)
    }

    /// The lengths word of `top`'s entry in `V6_TOP`.
    fn top_word(&self, top: u16) -> u64 {
        self.top
            .map
            .word64(usize::from(top) * V6_TOP_BYTES / 8)
            .load(Ordering::Relaxed)
    }

    /// Gives the keys in their slots (`found`) that the state holds
    /// (`wanted`) their matches, records the keys of crowded /16s that wait
    /// in the trie, and rebuilds `long`, `lengths`, `spilled` and the
    /// indices in use. Returns the stale keys and the keys to write.
    fn adopt_long(
        &mut self,
        wanted: &[(u128, u8, u32)],
        found: Vec<Held>,
        report: &mut Adoption,
    ) -> (Vec<Held>, Vec<(u128, u8, u32)>) {
        let (mut stale, mut one_by_one) = (Vec::new(), Vec::new());
        let mut long = Vec::with_capacity(wanted.len());
        let mut used = Vec::with_capacity(found.len());
        self.spilled = HashMap::new();
        self.unplaced = HashMap::new();
        let (mut w, mut f) = (wanted.iter().peekable(), found.into_iter().peekable());
        loop {
            match (w.peek(), f.peek()) {
                (Some(&&(addr, len, value)), Some(held))
                    if (addr, len) == (held.addr, held.len) =>
                {
                    let word = self.keys.word32(held.index as usize * V6_KEY_BYTES / 4 + 5);
                    if word.load(Ordering::Relaxed) != value {
                        word.store(value, Ordering::Release);
                        report.rewritten += 1;
                    }
                    if let Some(first) = held.spilled_from {
                        *self.spilled.entry(first).or_default() += 1;
                    }
                    used.push(held.index);
                    long.push((long_key(addr, len), value));
                    report.held += 1;
                    w.next();
                    f.next();
                }
                (Some(&&(addr, len, value)), next)
                    if next.is_none_or(|held| (addr, len) < (held.addr, held.len)) =>
                {
                    let top = Self::top_of(addr);
                    if self.crowded.contains(&top) {
                        self.unplaced.entry(top).or_default().insert((addr, len));
                        long.push((long_key(addr, len), value));
                        report.held += 1;
                    } else {
                        one_by_one.push((addr, len, value));
                    }
                    w.next();
                }
                (_, Some(_)) => stale.extend(f.next()),
                (None, None) => break,
                (Some(_), None) => unreachable!("matched above"),
            }
        }
        self.long = Packed::from_sorted(long);
        // A /16's keys are next to each other in `long`.
        self.lengths = HashMap::new();
        let mut counting: Option<(u16, BTreeMap<u8, u32>)> = None;
        for (&(addr, len), _) in self.long.iter() {
            let top = Self::top_of(u128::from_be_bytes(addr));
            match &mut counting {
                Some((at, counts)) if *at == top => *counts.entry(len).or_default() += 1,
                _ => {
                    self.lengths.extend(counting.take());
                    counting = Some((top, BTreeMap::from([(len, 1)])));
                }
            }
        }
        self.lengths.extend(counting);
        // The indices in use; those below the highest found (the stale
        // keys' included, retired as their slots are cleared) that are not
        // may still be read by a run of a lookup: reused only after a
        // grace period.
        used.extend(stale.iter().map(|held| held.index));
        used.sort_unstable();
        self.records.next = used.last().map_or(1, |&last| last + 1);
        self.records.free = Vec::new();
        self.records.retired = (1..self.records.next)
            .filter(|index| used.binary_search(index).is_err())
            .collect();
        (stale, one_by_one)
    }

    /// Puts every key of a crowded /16 in the trie with its match, and
    /// takes everything else out.
    fn adopt_tries(&mut self) -> Result<(), ListError> {
        let crowded_keys: Vec<(u128, u8, u32)> = self
            .crowded
            .iter()
            .flat_map(|&top| self.keys_under(top).collect::<Vec<_>>())
            .collect();
        for (addr, len, value) in crowded_keys {
            self.trie_insert(addr, len, value)?;
        }
        let in_trie: Vec<Key<[u8; 16]>> = self.trie.keys().filter_map(Result::ok).collect();
        for key in in_trie {
            let addr = u128::from_be_bytes(key.data());
            let kept = self.crowded.contains(&Self::top_of(addr))
                && u8::try_from(key.prefix_len())
                    .is_ok_and(|len| self.long.contains_key(&long_key(addr, len)));
            if !kept {
                trie_remove(&mut self.trie, map_names::V6_CROWDED, &key)?;
            }
        }
        Ok(())
    }

    /// Settles each of `tops` (in order, no /16 twice) whose entry in
    /// `V6_TOP` is not yet what its keys make it; returns how many changed.
    fn adopt_tops(&mut self, tops: Vec<u16>) -> Result<usize, ListError> {
        let mut rewritten = 0;
        for top in tops {
            let before = self.top_word(top);
            // A /16 neither crowded nor waiting, whose list is its keys'
            // lengths already, is as `settle` would leave it.
            let list = match self.lengths.get(&top) {
                None => Some(0),
                Some(counts) if counts.len() <= V6_PROBES => Some(length_list(counts)),
                Some(_) => None,
            };
            if list == Some(before)
                && !self.crowded.contains(&top)
                && !self.unplaced.contains_key(&top)
            {
                continue;
            }
            self.settle(top)?;
            if self.top_word(top) != before {
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }

    /// Every key in `V6_BUCKETS`, read back through `V6_KEYS`, in address
    /// and length order; writes nothing, and fails if a slot holds no key
    /// of its bucket, an index twice, or a key is in two slots.
    fn read_slots(&self) -> Result<Vec<Held>, ListError> {
        // The slots in use first, then their keys in index order: the
        // indices were handed out in address order, so `V6_KEYS` is read
        // in one sweep rather than a cache miss a key.
        let mut in_use: Vec<(u32, u32, usize)> = Vec::new();
        for slot in 0..self.buckets.len() / 8 {
            let word = self.buckets.word64(slot).load(Ordering::Relaxed) & !V6_SPILLED;
            if word != 0 {
                #[expect(clippy::cast_possible_truncation, reason = "the halves")]
                in_use.push((word as u32 & V6_INDEX, (word >> 32) as u32, slot));
            }
        }
        in_use.sort_unstable();
        let mut found = Vec::with_capacity(in_use.len());
        let mut last = 0;
        for (index, mark, slot) in in_use {
            let bad = |why: &str| unreadable(map_names::V6_BUCKETS, format!("slot {slot}: {why}"));
            if index == 0 || index >= self.records.size || index == last {
                return Err(bad("an index out of range, or used twice"));
            }
            last = index;
            let base = index as usize * V6_KEY_BYTES;
            let hi = self.keys.word64(base / 8).load(Ordering::Relaxed);
            let lo = self.keys.word64(base / 8 + 1).load(Ordering::Relaxed);
            let len = self.keys.word32(base / 4 + 4).load(Ordering::Relaxed);
            let len = u8::try_from(len)
                .ok()
                .filter(|len| (V6_LONG_MIN..=128).contains(len))
                .ok_or_else(|| bad("a key of no length a bucket holds"))?;
            let addr = (u128::from(hi) << 64) | u128::from(lo);
            let key = Self::key(addr, len);
            let hash = self.hash(key);
            let (first, second) = buckets(hash, self.mask);
            let bucket = u32::try_from(slot / BUCKET_SLOTS).unwrap_or(u32::MAX);
            if key != [hi, lo, len.into()]
                || fingerprint(hash) != mark
                || (bucket != first && bucket != second)
            {
                return Err(bad("a key that does not belong there"));
            }
            found.push(Held {
                slot,
                index,
                addr,
                len,
                spilled_from: (bucket != first).then_some(first),
            });
        }
        found.sort_unstable_by_key(|h| (h.addr, h.len));
        if found
            .windows(2)
            .any(|w| (w[0].addr, w[0].len) == (w[1].addr, w[1].len))
        {
            return Err(unreadable(
                map_names::V6_BUCKETS,
                "a key is in two slots".to_owned(),
            ));
        }
        Ok(found)
    }
}
