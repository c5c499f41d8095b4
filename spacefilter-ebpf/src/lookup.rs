//! The list lookup: the packed match ([`lookup::encode`]) of the longest
//! key covering a source address, or 0. The tables' layout, and what the
//! daemon keeps true while it writes them, are described once, in
//! [`spacefilter_common::lookup`]; this is how the program reads them.
//!
//! Every table read here is an array lookup, which the verifier inlines
//! into a bounds check and an address computation: no call, no return
//! through the kernel's return thunk. A kernel hash map or LPM trie lookup
//! is a call into the kernel, which on a machine with return-stack
//! mitigations costs about the floor by itself, and the trie walks about 20
//! nodes at a million keys. Only the tries of crowded blocks are kernel
//! maps; they are read only for a source in such a block. A source in a
//! /24 with no longer keys costs one or two array reads (`V4_T24`, then
//! `V4_T12`); one in a /16 holding no keys (most of the IPv6 address
//! space), one.
//!
//! An IPv6 slot is read as its two halves, and its key through the index
//! the slot gave (an address dependency), so the key is never older than
//! the slot.
//!
//! The verifier walks every path through this code, so it is written for
//! it: the probes are unrolled rather than looped (a loop counter differs
//! on each pass, and the verifier would follow every later instruction once
//! per pass), and values that feed map indices stay unknown to it (a
//! constant on one path and another on the next would keep it from merging
//! the paths).

use core::ptr::read_volatile;

use aya_ebpf::maps::lpm_trie::Key;
use spacefilter_common::{
    flags,
    lookup::{
        self, BUCKET_SLOTS, V4_CROWDED, V4_LONG_MIN, V4_LONG_SHIFT, V6_CROWDED, V6_INDEX, V6_MASKS,
        V6_SPILLED, VALUE_MASK,
    },
};

use crate::maps::{
    CONFIG, V4_BUCKETS, V4_CROWDED as V4_CROWDED_TRIE, V4_T12, V4_T24, V6_BUCKETS,
    V6_CROWDED as V6_CROWDED_TRIE, V6_KEYS, V6_TOP,
};

/// The highest bit set in each byte: which /25 to /32 length of a /24 to
/// probe next. This table and the next are read-only global data
/// (`.rodata`, kernel 5.2), indexed by a byte: no bounds check, no branch.
static TOP_BIT: [u8; 256] = {
    let mut table = [0; 256];
    let mut i = 1;
    while i < 256 {
        let mut bit = 7;
        while i >> bit == 0 {
            bit -= 1;
        }
        table[i] = bit;
        i += 1;
    }
    table
};

/// `v6_longer` probes this many lengths.
const _: () = assert!(lookup::V6_PROBES == 7);

/// The masks that cut an IPv6 address to each length.
static MASKS: [[u64; 2]; 256] = V6_MASKS;

/// What a lookup needs of the [`spacefilter_common::Config`], read once
/// per frame.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    flags: u32,
    v4_mask: u32,
    v6_mask: u32,
    seed: u64,
}

impl Tables {
    /// Reads the config. `CONFIG` always holds its one entry; were it
    /// missing, no table would be read.
    #[inline(always)]
    pub(crate) fn read() -> Self {
        match CONFIG.get_ptr(0) {
            // SAFETY: a map value, valid while the program runs; `flags` is
            // stored in one word by the daemon, the rest never changes once
            // the program is attached.
            Some(config) => unsafe {
                Self {
                    flags: read_volatile(&raw const (*config).flags),
                    v4_mask: (*config).v4_mask,
                    v6_mask: (*config).v6_mask,
                    seed: (*config).seed,
                }
            },
            None => Self {
                flags: 0,
                v4_mask: 0,
                v6_mask: 0,
                seed: 0,
            },
        }
    }
}

/// Word `index % ROW` of a table row of [`lookup::ROW`] words.
///
/// # Safety
/// `row` must point to a map value of `ROW` words.
#[inline(always)]
unsafe fn row_word(row: *const [u32; lookup::ROW], index: u32) -> u32 {
    // SAFETY: the index is below ROW; the daemon stores each word whole.
    unsafe { read_volatile(row.cast::<u32>().add(index as usize % lookup::ROW)) }
}

/// Takes the highest bit set out of the low byte of `bits`.
#[inline(always)]
fn take_top_bit(bits: &mut u32) -> Option<u32> {
    if *bits == 0 {
        return None;
    }
    let bit = u32::from(TOP_BIT[(*bits & 0xff) as usize]);
    *bits ^= 1 << bit;
    Some(bit)
}

/// Takes the lowest byte out of `list`, unless it is 0 (the end).
#[inline(always)]
fn take_byte(list: &mut u64) -> Option<u32> {
    let byte = (*list & 0xff) as u32;
    *list >>= 8;
    (byte != 0).then_some(byte)
}

/// The longest IPv4 key covering `addr`.
#[inline(always)]
pub(crate) fn v4(addr: u32, tables: Tables) -> u32 {
    if tables.flags & flags::V4_T24 != 0
        && let Some(row) = V4_T24.get_ptr(addr >> 12)
    {
        // SAFETY: a V4_T24 value.
        let word = unsafe { row_word(row, addr >> 8) };
        let found = if word & V4_CROWDED == 0 {
            v4_longer(addr, word >> V4_LONG_SHIFT, tables)
        } else {
            V4_CROWDED_TRIE
                .get(Key::new(32, addr.to_be_bytes()))
                .map_or(0, |found| *found & VALUE_MASK)
        };
        if found != 0 {
            return found;
        }
        if word & VALUE_MASK != 0 {
            return word & VALUE_MASK;
        }
    }
    if tables.flags & flags::V4_T12 != 0
        && let Some(row) = V4_T12.get_ptr(addr >> 24)
    {
        // SAFETY: a V4_T12 value.
        return unsafe { row_word(row, addr >> 20) } & VALUE_MASK;
    }
    0
}

/// The longest key of /25 to /32 covering `addr`, probing the lengths
/// flagged in `lengths` (bit `i`: length 25 + i), longest first.
#[inline(always)]
fn v4_longer(addr: u32, lengths: u32, tables: Tables) -> u32 {
    let mut lengths = lengths;
    macro_rules! probe {
        () => {
            if let Some(bit) = take_top_bit(&mut lengths) {
                let key = lookup::v4_key(addr, u32::from(V4_LONG_MIN) + bit);
                let (first, second) =
                    lookup::buckets(lookup::v4_hash(key, tables.seed), tables.v4_mask);
                let found = v4_bucket(first, key);
                if found != 0 {
                    return found;
                }
                let found = v4_bucket(second, key);
                if found != 0 {
                    return found;
                }
            }
        };
    }
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    0
}

/// The match of `key` if bucket `bucket` holds it.
#[inline(always)]
fn v4_bucket(bucket: u32, key: u64) -> u32 {
    let Some(slots) = V4_BUCKETS.get_ptr(bucket) else {
        return 0;
    };
    let slots = slots.cast::<u64>();
    // The slot holding the key, if any (keys are unique); starting from a
    // slot rather than from 0 keeps the result unknown to the verifier.
    // SAFETY: a map value of BUCKET_SLOTS words, each stored whole.
    let mut found = unsafe { read_volatile(slots) };
    for i in 1..BUCKET_SLOTS {
        // SAFETY: as above.
        let slot = unsafe { read_volatile(slots.add(i)) };
        if slot >> 24 == key {
            found = slot;
        }
    }
    if found >> 24 == key {
        #[expect(clippy::cast_possible_truncation, reason = "the low bits")]
        return found as u32 & VALUE_MASK;
    }
    0
}

/// The longest IPv6 key covering `hi:lo` (the address's halves).
#[inline(always)]
pub(crate) fn v6(hi: u64, lo: u64, tables: Tables) -> u32 {
    if tables.flags & flags::V6_KEYS == 0 {
        return 0;
    }
    let Some(top) = V6_TOP.get_ptr((hi >> 48) as u32) else {
        return 0;
    };
    // SAFETY: a map value; the daemon stores each field whole.
    let (lengths, value) = unsafe {
        (
            read_volatile(&raw const (*top).lengths),
            read_volatile(&raw const (*top).value),
        )
    };
    let found = if lengths & V6_CROWDED == 0 {
        v6_longer(hi, lo, lengths, tables)
    } else {
        let mut addr = [0; 16];
        addr[..8].copy_from_slice(&hi.to_be_bytes());
        addr[8..].copy_from_slice(&lo.to_be_bytes());
        V6_CROWDED_TRIE
            .get(Key::new(128, addr))
            .map_or(0, |found| *found & VALUE_MASK)
    };
    if found != 0 {
        return found;
    }
    value & VALUE_MASK
}

/// The longest key of /17 to /128 covering `hi:lo`, probing the lengths
/// in the list `lengths` (one per byte, longest first, 0 ends it).
#[inline(always)]
fn v6_longer(hi: u64, lo: u64, lengths: u64, tables: Tables) -> u32 {
    let mut lengths = lengths;
    macro_rules! probe {
        () => {
            if let Some(len) = take_byte(&mut lengths) {
                let [hi_mask, lo_mask] = MASKS[(len & 0xff) as usize];
                let (hi, lo) = (hi & hi_mask, lo & lo_mask);
                let hash = lookup::v6_hash(hi, lo, len, tables.seed);
                let mark = lookup::fingerprint(hash);
                let (first, second) = lookup::buckets(hash, tables.v6_mask);
                let (found, spilled) = v6_bucket(first, mark, [hi, lo], len);
                if found != 0 {
                    return found;
                }
                // Without the first bucket's spilled bit no key of it is in
                // its second: the miss ends at one cache line.
                if spilled {
                    let (found, _) = v6_bucket(second, mark, [hi, lo], len);
                    if found != 0 {
                        return found;
                    }
                }
            }
        };
    }
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    probe!();
    0
}

/// The match of the key `[hi, lo]/len` (with fingerprint `mark`) if bucket
/// `bucket` holds it (else 0), and whether the bucket's [`V6_SPILLED`] bit
/// is set.
#[inline(always)]
fn v6_bucket(bucket: u32, mark: u32, [hi, lo]: [u64; 2], len: u32) -> (u32, bool) {
    let Some(slots) = V6_BUCKETS.get_ptr(bucket) else {
        return (0, false);
    };
    // A slot as two words: the key's index (low half), its fingerprint
    // (high half). Read apart, the two may come from different keys if the
    // slot is rewritten meanwhile; the index then leads to a key that is
    // compared in full, and that is not reused before a grace period:
    // that key, or none, which is the table as it was or as it is.
    let words = slots.cast::<u32>();
    // The daemon never puts two keys with one fingerprint in a bucket, so
    // at most one slot can hold this key: the last with its fingerprint,
    // else the first slot, which then holds another key or none.
    // SAFETY: a map value of BUCKET_SLOTS slots of two words, each slot
    // stored whole.
    let (mut found, mut candidate) = unsafe { (read_volatile(words.add(1)), read_volatile(words)) };
    let spilled = u64::from(candidate) & V6_SPILLED != 0;
    for i in 1..BUCKET_SLOTS {
        // SAFETY: as above.
        let slot_mark = unsafe { read_volatile(words.add(2 * i + 1)) };
        if slot_mark == mark {
            found = slot_mark;
            // SAFETY: as above.
            candidate = unsafe { read_volatile(words.add(2 * i)) };
        }
    }
    if found != mark {
        return (0, spilled);
    }
    let Some(key) = V6_KEYS.get_ptr(candidate & V6_INDEX) else {
        return (0, spilled);
    };
    // SAFETY: a map value. The key fields were written before the slot
    // that led here, the value is stored whole.
    unsafe {
        if (*key).hi == hi && (*key).lo == lo && (*key).len == len {
            return (read_volatile(&raw const (*key).value) & VALUE_MASK, spilled);
        }
    }
    (0, spilled)
}
