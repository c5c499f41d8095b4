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

use std::{sync::atomic::Ordering, time::Duration};

use aya::maps::{LpmTrie, MapData, MapError, lpm_trie::Key};
use spacefilter_common::lookup::{BUCKET_SLOTS, VALUE_MASK};

mod adopt;
mod v4;
mod v6;

pub(in crate::bpf) use self::{adopt::Adoption, v4::V4Tables, v6::V6Tables};
use super::{ListError, mapped::Mapped};
use crate::net::packed::Packed;

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
    /// The table's keys, by address and length ([`Level::key`]), with
    /// their matches.
    keys: Packed<u64, u32>,
}

impl Level {
    /// The block an address falls in.
    fn block(&self, addr: u128) -> u128 {
        addr >> (self.width - self.index_bits)
    }

    /// `addr/len` as a key of [`Level::keys`]: its block, then its length.
    /// A key is no longer than the index, so its block is its whole
    /// address, and keys sort by (address, length) as the prefixes do,
    /// in 8 bytes rather than the 32 of a `(u128, u8)`.
    fn key(&self, addr: u128, len: u8) -> u64 {
        let block = u64::try_from(self.block(addr)).expect("an index of at most 24 bits");
        (block << 8) | u64::from(len)
    }

    /// The address and length of a key of [`Level::keys`].
    fn prefix(&self, key: u64) -> (u128, u8) {
        #[expect(clippy::cast_possible_truncation, reason = "the low byte")]
        let len = key as u8;
        (u128::from(key >> 8) << (self.width - self.index_bits), len)
    }

    /// Creates or rewrites the key `addr/len`.
    fn write(&mut self, addr: u128, len: u8, value: u32) {
        self.keys.insert(self.key(addr, len), value);
        self.fill(addr, len, value);
    }

    /// [`Level::write`] of each of `keys`, no key twice, with the keys
    /// recorded in one pass. Into an empty table each key's blocks are
    /// stored in (address, length) order, before those of the keys inside
    /// it; into a table with keys, each new key's blocks that no longer key
    /// covers, as one write stores them.
    fn write_new(&mut self, keys: impl Iterator<Item = (u128, u8, u32)>) {
        let mut keys: Vec<(u64, u32)> = keys
            .map(|(addr, len, value)| (self.key(addr, len), value))
            .collect();
        // In order already, which the sort only checks.
        keys.sort_unstable_by_key(|&(key, _)| key);
        if self.keys.is_empty() {
            for &(key, value) in &keys {
                let (addr, len) = self.prefix(key);
                let last = addr | host_mask(self.width, len);
                self.store(self.block(addr), self.block(last) + 1, value);
            }
            self.keys.extend_sorted(keys);
            return;
        }
        // Keys the table holds take their new values; the others join it.
        let mut joining = Vec::with_capacity(keys.len());
        for &(key, value) in &keys {
            match self.keys.get_mut(&key) {
                Some(old) => *old = value,
                None => joining.push((key, value)),
            }
        }
        self.keys.extend_sorted(joining);
        for (key, value) in keys {
            let (addr, len) = self.prefix(key);
            self.fill(addr, len, value);
        }
    }

    /// Takes over a table a predecessor wrote (see [`super::Lists::adopt`]):
    /// records `keys` (no key twice), then stores in every block whose
    /// match differs the match of the longest of them covering it, or
    /// none: each block is written at most once, to its final match.
    /// Returns how many blocks were rewritten.
    fn adopt(&mut self, keys: impl Iterator<Item = (u128, u8, u32)>) -> usize {
        let mut keys: Vec<(u64, u32)> = keys
            .map(|(addr, len, value)| (self.key(addr, len), value))
            .collect();
        keys.sort_unstable_by_key(|&(key, _)| key);
        let blocks = 1u128 << self.index_bits;
        // The keys covering the block, innermost last, with their last
        // blocks: nested, so the innermost ends first.
        let mut open: Vec<(u128, u32)> = Vec::new();
        let mut next = keys.iter().peekable();
        let mut rewritten = 0;
        let mut block = 0;
        while block < blocks {
            while open.last().is_some_and(|&(last, _)| last < block) {
                open.pop();
            }
            while let Some(&&(key, value)) = next.peek() {
                let (addr, len) = self.prefix(key);
                if self.block(addr) != block {
                    break;
                }
                open.push((self.block(addr | host_mask(self.width, len)), value));
                next.next();
            }
            let value = open.last().map_or(0, |&(_, value)| value);
            let mut until = open.last().map_or(blocks, |&(last, _)| last + 1);
            if let Some(&&(key, _)) = next.peek() {
                until = until.min(self.block(self.prefix(key).0));
            }
            for at in block..until {
                let word = self.map.word32(
                    usize::try_from(at).expect("a table block") * self.stride + self.offset,
                );
                let old = word.load(Ordering::Relaxed);
                if old & VALUE_MASK != value {
                    word.store((old & !VALUE_MASK) | value, Ordering::Release);
                    rewritten += 1;
                }
            }
            block = until;
        }
        self.keys = Packed::from_sorted(keys);
        rewritten
    }

    /// Removes the key `addr/len`: its blocks take the match of the longest
    /// key of the table covering it.
    fn remove(&mut self, addr: u128, len: u8) {
        if self.keys.remove(&self.key(addr, len)).is_none() {
            return;
        }
        let covering = (self.min_len..len)
            .rev()
            .find_map(|l| {
                let outer = addr & !host_mask(self.width, l);
                self.keys.get(&self.key(outer, l)).copied()
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
        for (inner, inner_len) in self
            .keys
            .range(self.key(addr, len + 1)..=self.key(last, u8::MAX))
            .map(|e| self.prefix(*e.0))
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
/// `None` if neither has room. `flag` is a bit of a slot that is no part of
/// its key ([`spacefilter_common::lookup::V6_SPILLED`]), or 0.
fn free_slot(
    table: &Mapped,
    (first, second): (u32, u32),
    flag: u64,
    fits: impl Fn(u32) -> bool,
) -> Option<usize> {
    let holds = |i| table.word64(i).load(Ordering::Relaxed) & !flag != 0;
    let empty = |bucket| slots(bucket).find(|&i| !holds(i));
    let used = |bucket| slots(bucket).filter(|&i| holds(i)).count();
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
        Ok(()) => Ok(()),
        Err(err) if super::absent(&err) => Ok(()),
        Err(source) => Err(ListError::Update { name, source }),
    }
}
