//! The lookup tables that hold both lists in the kernel, laid out as
//! [`spacefilter_common::lookup`] describes (the program's reads are in
//! `spacefilter-ebpf/src/lookup.rs`). [`V4Tables`] and [`V6Tables`] take a
//! key (a prefix and its packed match, see [`spacefilter_common::Match`])
//! and put it where its length says, storing in an order that lets a frame
//! looked up meanwhile see each source's longest match either as it was or
//! as it is:
//!
//! - Direct tables (`V4_T12`, `V4_T24`, `V6_TOP`): writing key P rewrites
//!   P's blocks, except those under a longer key of the same table;
//!   removing P rewrites the same blocks with the match of P's longest
//!   covering key in the table, or none.
//! - Bucket tables: a length's flag is set after the key is in place, and
//!   cleared (when the last key of that length in the block goes) before
//!   the key is taken out. A frame that sees the flag finds the key, or,
//!   once it is gone, the shorter keys that decide without it.
//! - IPv6 keys: a key is written to `V6_KEYS` before its slot; an index
//!   whose slot was cleared is reused only after an RCU grace period
//!   ([`grace_period`]), so no frame still reading the old slot can find a
//!   different key behind it.
//! - Crowded blocks: all the block's longer keys are put in its LPM trie
//!   before its flag is set, and taken out after the flag is cleared,
//!   which happens once they all fit again.
//!
//! The daemon is the only writer, so a read-modify-write of a word is a
//! load and a store.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{LpmTrie, MapData, MapError, lpm_trie::Key},
};
use spacefilter_common::{
    flags,
    lookup::{
        BUCKET_SLOTS, V4_CROWDED, V4_LONG_MIN, V4_LONG_SHIFT, V4_T24_MIN, V6_CROWDED, V6_LONG_MIN,
        V6_PROBES, VALUE_MASK, buckets, fingerprint, v4_hash, v4_key, v4_slot, v6_hash, v6_masks,
    },
    map_names,
};

use super::{ListError, mapped::Mapped, take};

/// The bits of a `width`-bit address below a prefix of `len` bits.
fn host_mask(width: u32, len: u8) -> u128 {
    let host = width - u32::from(len);
    if host == 0 {
        0
    } else {
        u128::MAX >> (128 - host)
    }
}

/// A direct table: one block per value of the address's `index_bits`
/// leading bits, holding the match of the longest of the table's keys (of
/// `min_len` to `index_bits` bits) covering it.
struct Level {
    map: Mapped,
    /// Address bits: 32 or 128.
    width: u32,
    index_bits: u32,
    min_len: u8,
    /// 32-bit words per block, and which of them holds the match.
    stride: usize,
    offset: usize,
    /// The table's keys, by address and length, with their matches.
    keys: BTreeMap<(u128, u8), u32>,
}

impl Level {
    /// The block an address falls in.
    fn block(&self, addr: u128) -> u128 {
        addr >> (self.width - self.index_bits)
    }

    /// Creates or rewrites the key `addr/len`.
    fn write(&mut self, addr: u128, len: u8, value: u32) {
        self.keys.insert((addr, len), value);
        self.fill(addr, len, value);
    }

    /// Removes the key `addr/len`: its blocks take the match of the longest
    /// key of the table covering it.
    fn remove(&mut self, addr: u128, len: u8) {
        if self.keys.remove(&(addr, len)).is_none() {
            return;
        }
        let covering = (self.min_len..len)
            .rev()
            .find_map(|l| {
                let outer = addr & !host_mask(self.width, l);
                self.keys.get(&(outer, l)).copied()
            })
            .unwrap_or(0);
        self.fill(addr, len, covering);
    }

    /// Stores `value` in the blocks of `addr/len` that no longer key of the
    /// table covers.
    fn fill(&self, addr: u128, len: u8, value: u32) {
        let last = addr | host_mask(self.width, len);
        let mut next = self.block(addr);
        let mut covered_to = None;
        // In (address, length) order, a key comes before those inside it:
        // the first key seen of each run is the outermost, whose blocks
        // hold its own match or those of keys inside it.
        for &(inner, inner_len) in self
            .keys
            .range((addr, len + 1)..=(last, u8::MAX))
            .map(|e| e.0)
        {
            if inner_len <= len || covered_to.is_some_and(|end| inner <= end) {
                continue;
            }
            let inner_last = inner | host_mask(self.width, inner_len);
            self.store(next, self.block(inner), value);
            next = self.block(inner_last) + 1;
            covered_to = Some(inner_last);
        }
        self.store(next, self.block(last) + 1, value);
    }

    /// Stores `value` as the match of blocks `from..to`, keeping the other
    /// bits of their words.
    fn store(&self, from: u128, to: u128, value: u32) {
        for block in from..to {
            let word = self
                .map
                .word32(usize::try_from(block).expect("a table block") * self.stride + self.offset);
            let old = word.load(Ordering::Relaxed);
            word.store((old & !VALUE_MASK) | value, Ordering::Release);
        }
    }
}

/// Waits for an RCU grace period: when it returns, every program run that
/// was under way when it was called has ended. XDP programs run inside RCU
/// read-side critical sections, and `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// (kernel 4.3) waits for `synchronize_rcu()`. Kernels with `nohz_full`
/// refuse it; a program run lasts microseconds, so there a pause far longer
/// than any run stands in. (On a one-CPU machine the kernel returns at once:
/// XDP on an interface runs in softirq context, which no task preempts, so
/// nothing is under way then.)
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slots of bucket `bucket`, as word indices.
fn slots(bucket: u32) -> impl Iterator<Item = usize> {
    let first = bucket as usize * BUCKET_SLOTS;
    first..first + BUCKET_SLOTS
}

/// Where a new key goes: the first empty slot of its first bucket, so that
/// most keys are found in the first bucket read, unless that bucket is
/// filling up (6 of 8 slots) and the second is emptier. Filling the first
/// bucket to the brim would leave a few keys in a million with both
/// buckets full at half load (and their blocks crowded); this keeps that
/// to none in simulations at the capacity's full load, with 96 % of keys
/// in their first bucket. Only buckets that `fits` accepts are taken;
/// `None` if neither has room.
fn free_slot(
    table: &Mapped,
    (first, second): (u32, u32),
    fits: impl Fn(u32) -> bool,
) -> Option<usize> {
    let empty = |bucket| slots(bucket).find(|&i| table.word64(i).load(Ordering::Relaxed) == 0);
    let used = |bucket| {
        slots(bucket)
            .filter(|&i| table.word64(i).load(Ordering::Relaxed) != 0)
            .count()
    };
    let order = if used(first) >= 6 && used(second) < used(first) {
        [second, first]
    } else {
        [first, second]
    };
    order
        .into_iter()
        .filter(|&bucket| fits(bucket))
        .find_map(empty)
}

/// The bucket count of a bucket table, less one.
fn bucket_mask(table: &Mapped) -> u32 {
    let buckets = table.len() / (BUCKET_SLOTS * 8);
    debug_assert!(buckets.is_power_of_two());
    u32::try_from(buckets - 1).expect("fewer than 2^32 buckets")
}

fn trie_error(name: &'static str) -> impl FnOnce(MapError) -> ListError {
    move |source| ListError::Update { name, source }
}

/// Takes `key` out of a crowded block's trie; a key that is not there is
/// already where the caller wants it.
fn trie_remove<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    name: &'static str,
    key: &Key<[u8; N]>,
) -> Result<(), ListError> {
    match trie.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(ListError::Update { name, source }),
    }
}

/// The IPv4 tables: `V4_T12` (/0 to /12), `V4_T24` (/13 to /24, and the
/// lengths of longer keys per /24), `V4_BUCKETS` (/25 to /32), and the trie
/// of crowded /24s.
pub(super) struct V4Tables {
    t12: Level,
    t24: Level,
    buckets: Mapped,
    mask: u32,
    seed: u64,
    trie: LpmTrie<MapData, [u8; 4], u32>,
    /// Keys of /25 to /32 per /24 and length: a length's flag is cleared
    /// when its last key goes.
    long: HashMap<(u32, u8), u32>,
    long_keys: usize,
    /// The crowded /24s, each with its keys (by [`v4_key`]) that found no
    /// room in their buckets, and their matches.
    crowded: HashMap<u32, HashMap<u64, u32>>,
}

impl V4Tables {
    pub(super) fn take(ebpf: &mut Ebpf, seed: u64) -> Result<Self, ListError> {
        let level = |map, index_bits, min_len| Level {
            map,
            width: 32,
            index_bits,
            min_len,
            stride: 1,
            offset: 0,
            keys: BTreeMap::new(),
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
            long: HashMap::new(),
            long_keys: 0,
            crowded: HashMap::new(),
        })
    }

    /// The bucket count less one, for the config.
    pub(super) fn mask(&self) -> u32 {
        self.mask
    }

    /// Creates or rewrites the key `addr/len` with the packed match `value`.
    pub(super) fn write(&mut self, addr: u32, len: u8, value: u32) -> Result<(), ListError> {
        if len < V4_T24_MIN {
            self.t12.write(addr.into(), len, value);
            return Ok(());
        }
        if len < V4_LONG_MIN {
            self.t24.write(addr.into(), len, value);
            return Ok(());
        }
        let (key, block) = (v4_key(addr, len.into()), addr >> 8);
        let unplaced = self.crowded.get(&block);
        let existed = self.find(key).is_some() || unplaced.is_some_and(|u| u.contains_key(&key));
        if self.crowded.contains_key(&block) {
            self.trie_insert(addr, len, value)?;
        }
        if !self.place(key, value) {
            if let Some(unplaced) = self.crowded.get_mut(&block) {
                unplaced.insert(key, value);
            } else {
                // Every key of the /24, this one too, goes into the trie
                // before the flag sends frames there.
                let mut keys = self.block_keys(block);
                keys.push((addr, len, value));
                for (addr, len, value) in keys {
                    self.trie_insert(addr, len, value)?;
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
            *self.long.entry((block, len)).or_default() += 1;
            self.long_keys += 1;
        }
        // After the key is in place.
        self.t24
            .map
            .word32(block as usize)
            .fetch_or(Self::length_bit(len), Ordering::Release);
        self.settle(block)
    }

    /// Removes the key `addr/len`.
    pub(super) fn delete(&mut self, addr: u32, len: u8) -> Result<(), ListError> {
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
            .get_mut(&(block, len))
            .expect("counted when written");
        *count -= 1;
        if *count == 0 {
            self.long.remove(&(block, len));
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
    pub(super) fn flags(&self) -> u32 {
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
    pub(super) fn crowded(&self) -> usize {
        self.crowded.len()
    }

    /// The flag of keys of `len` bits in a `V4_T24` word.
    fn length_bit(len: u8) -> u32 {
        1 << (V4_LONG_SHIFT + u32::from(len - V4_LONG_MIN))
    }

    /// If the /24 `block` is crowded, moves its keys that now find room
    /// into their buckets, and once all have, sends frames back to the
    /// buckets and empties its trie.
    fn settle(&mut self, block: u32) -> Result<(), ListError> {
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
            if !self.long.contains_key(&(block, len)) {
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

    fn trie_insert(&mut self, addr: u32, len: u8, value: u32) -> Result<(), ListError> {
        self.trie
            .insert(&Key::new(len.into(), addr.to_be_bytes()), value, 0)
            .map_err(trie_error(map_names::V4_CROWDED))
    }

    fn candidates(&self, key: u64) -> (u32, u32) {
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
        let slot = self
            .find(key)
            .or_else(|| free_slot(&self.buckets, self.candidates(key), |_| true));
        if let Some(slot) = slot {
            self.buckets
                .word64(slot)
                .store(v4_slot(key, value), Ordering::Release);
        }
        slot.is_some()
    }
}

/// Indices into `V6_KEYS`: never used yet (`next` up to `size`), free, or
/// retired (their slot is cleared, but a program run may still read them).
struct Records {
    size: u32,
    next: u32,
    free: Vec<u32>,
    retired: Vec<u32>,
}

impl Records {
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
pub(super) struct V6Tables {
    top: Level,
    buckets: Mapped,
    mask: u32,
    seed: u64,
    keys: Mapped,
    records: Records,
    trie: LpmTrie<MapData, [u8; 16], u32>,
    /// The keys of /17 to /128 with their matches: a /16's keys are moved
    /// into its trie and out again from here.
    long: BTreeMap<(u128, u8), u32>,
    /// How many keys of each length each /16 holds.
    lengths: HashMap<u16, BTreeMap<u8, u32>>,
    /// Keys that found no room in their buckets, per /16.
    unplaced: HashMap<u16, HashSet<(u128, u8)>>,
    /// The crowded /16s.
    crowded: HashSet<u16>,
}

/// Bytes of a `V6Top` and of a `V6Key`.
const V6_TOP_BYTES: usize = 16;
const V6_KEY_BYTES: usize = 24;

impl V6Tables {
    pub(super) fn take(ebpf: &mut Ebpf, seed: u64) -> Result<Self, ListError> {
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
                keys: BTreeMap::new(),
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
            long: BTreeMap::new(),
            lengths: HashMap::new(),
            unplaced: HashMap::new(),
            crowded: HashSet::new(),
        })
    }

    /// The bucket count less one, for the config.
    pub(super) fn mask(&self) -> u32 {
        self.mask
    }

    /// Creates or rewrites the key `addr/len` with the packed match `value`.
    pub(super) fn write(&mut self, addr: u128, len: u8, value: u32) -> Result<(), ListError> {
        if len < V6_LONG_MIN {
            self.top.write(addr, len, value);
            return Ok(());
        }
        let top = Self::top_of(addr);
        let existed = self.long.insert((addr, len), value).is_some();
        if self.crowded.contains(&top) {
            self.trie_insert(addr, len, value)?;
        }
        let placed = self.place(Self::key(addr, len), value)?;
        let unplaced = self.unplaced.entry(top).or_default();
        if placed {
            unplaced.remove(&(addr, len));
        } else {
            unplaced.insert((addr, len));
        }
        if unplaced.is_empty() {
            self.unplaced.remove(&top);
        }
        if !existed {
            *self.lengths.entry(top).or_default().entry(len).or_default() += 1;
        }
        // After the key is in place (in its bucket, or in the trie).
        self.settle(top)
    }

    /// Removes the key `addr/len`.
    pub(super) fn delete(&mut self, addr: u128, len: u8) -> Result<(), ListError> {
        if len < V6_LONG_MIN {
            self.top.remove(addr, len);
            return Ok(());
        }
        if self.long.remove(&(addr, len)).is_none() {
            return Ok(());
        }
        let top = Self::top_of(addr);
        let counts = self.lengths.get_mut(&top).expect("counted when written");
        let count = counts.get_mut(&len).expect("counted when written");
        *count -= 1;
        if *count == 0 {
            counts.remove(&len);
            if counts.is_empty() {
                self.lengths.remove(&top);
            }
        }
        if self.crowded.contains(&top) {
            // Frames look in the trie: the key leaves it first.
            trie_remove(
                &mut self.trie,
                map_names::V6_CROWDED,
                &Key::new(len.into(), addr.to_be_bytes()),
            )?;
            self.take_out(addr, len);
            self.settle(top)
        } else {
            // Frames probe the listed lengths: the list changes first.
            self.settle(top)?;
            self.take_out(addr, len);
            Ok(())
        }
    }

    /// The [`flags`] of the tables that hold keys.
    pub(super) fn flags(&self) -> u32 {
        if !self.top.keys.is_empty() || !self.long.is_empty() {
            flags::V6_KEYS
        } else {
            0
        }
    }

    /// How many /16s are crowded.
    pub(super) fn crowded(&self) -> usize {
        self.crowded.len()
    }

    /// Takes `addr/len` out of its bucket, or out of the keys waiting for
    /// room.
    fn take_out(&mut self, addr: u128, len: u8) {
        let top = Self::top_of(addr);
        if let Some((slot, index)) = self.find(Self::key(addr, len)) {
            self.buckets.word64(slot).store(0, Ordering::Release);
            self.records.retired.push(index);
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
    fn settle(&mut self, top: u16) -> Result<(), ListError> {
        if let Some(waiting) = self.unplaced.remove(&top) {
            let mut left = HashSet::new();
            for (addr, len) in waiting {
                let value = self.long[&(addr, len)];
                if !self.place(Self::key(addr, len), value)? {
                    left.insert((addr, len));
                }
            }
            if !left.is_empty() {
                self.unplaced.insert(top, left);
            }
        }
        let lengths: Vec<u8> = self
            .lengths
            .get(&top)
            .map(|counts| counts.keys().rev().copied().collect())
            .unwrap_or_default();
        let crowd = lengths.len() > V6_PROBES || self.unplaced.contains_key(&top);
        let word = usize::from(top) * V6_TOP_BYTES / 8;
        match (crowd, self.crowded.contains(&top)) {
            (true, true) => {}
            (true, false) => {
                let inside: Vec<_> = self.keys_under(top).collect();
                for (addr, len, value) in inside {
                    self.trie_insert(addr, len, value)?;
                }
                self.crowded.insert(top);
                self.top
                    .map
                    .word64(word)
                    .store(V6_CROWDED, Ordering::Release);
            }
            (false, was_crowded) => {
                let list = lengths
                    .iter()
                    .rev()
                    .fold(0u64, |list, &len| (list << 8) | u64::from(len));
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
    fn keys_under(&self, top: u16) -> impl Iterator<Item = (u128, u8, u32)> + '_ {
        let first = u128::from(top) << 112;
        let last = first | (u128::MAX >> 16);
        self.long
            .range((first, 0)..=(last, u8::MAX))
            .map(|(&(addr, len), &value)| (addr, len, value))
    }

    fn trie_insert(&mut self, addr: u128, len: u8, value: u32) -> Result<(), ListError> {
        self.trie
            .insert(&Key::new(len.into(), addr.to_be_bytes()), value, 0)
            .map_err(trie_error(map_names::V6_CROWDED))
    }

    /// The key of `addr/len` as the program computes it: (high half, low
    /// half, length).
    fn key(addr: u128, len: u8) -> [u64; 3] {
        let [hi_mask, lo_mask] = v6_masks(len.into());
        #[expect(clippy::cast_possible_truncation, reason = "the halves")]
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        [hi & hi_mask, lo & lo_mask, len.into()]
    }

    fn top_of(addr: u128) -> u16 {
        (addr >> 112) as u16
    }

    fn hash(&self, [hi, lo, len]: [u64; 3]) -> u64 {
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
            let (found_mark, index) = ((word >> 32) as u32, word as u32);
            (word != 0 && found_mark == mark && self.holds(index, key)).then_some((slot, index))
        })
    }

    /// Whether a slot of `bucket` holds a key with the fingerprint `mark`.
    fn marked(&self, bucket: u32, mark: u32) -> bool {
        slots(bucket).any(|slot| {
            let word = self.buckets.word64(slot).load(Ordering::Relaxed);
            word != 0 && word >> 32 == u64::from(mark)
        })
    }

    /// Stores `key` with `value` in its slot's key, or in a free slot;
    /// `false` if neither bucket has room for it.
    fn place(&mut self, key: [u64; 3], value: u32) -> Result<bool, ListError> {
        if let Some((_, index)) = self.find(key) {
            self.keys
                .word32(index as usize * V6_KEY_BYTES / 4 + 5)
                .store(value, Ordering::Release);
            return Ok(true);
        }
        let hash = self.hash(key);
        let mark = fingerprint(hash);
        // The program reads one candidate slot per bucket: a bucket holds
        // at most one key per fingerprint.
        let Some(slot) = free_slot(&self.buckets, buckets(hash, self.mask), |bucket| {
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
        // Publishes the key: the program reads it through this slot.
        self.buckets.word64(slot).store(
            (u64::from(mark) << 32) | u64::from(index),
            Ordering::Release,
        );
        Ok(true)
    }
}
