//! Ordered maps that stay dense as they grow.
//!
//! A `BTreeMap` allocates every node for 11 entries, and one filled by
//! inserts holds fewer: keys inserted in order (a sorted import) leave each
//! node a little over half full, random ones about two thirds. At a million
//! entries that slack is tens of MiB. [`repack`] rebuilds a map with full
//! nodes in one pass, freeing the old nodes as it goes; [`Packed`] does it
//! whenever its map has grown by a quarter since the last time, which
//! costs a few passes over the map in all while it grows to any size.

use std::{collections::BTreeMap, ops::Deref};

/// Rebuilds `map` with every node full (the last ones of each level may
/// hold a few less).
pub fn repack<K: Ord, V>(map: &mut BTreeMap<K, V>) {
    // `append` into a map that is not empty merges both into a new tree,
    // pushing entries in order and filling each node before the next.
    let Some((key, value)) = map.pop_first() else {
        return;
    };
    let mut dense = BTreeMap::from([(key, value)]);
    dense.append(map);
    *map = dense;
}

/// Entries a map must have gained since its last repacking before it is
/// repacked again: under this, the slack is small in absolute terms.
const REPACK_MIN: usize = 4096;

/// A `BTreeMap` repacked ([`repack`]) once it has gained a quarter more
/// entries since it last was. Reads go through [`Deref`]; writes through
/// its own methods, which count.
#[derive(Clone, Debug)]
pub struct Packed<K, V> {
    map: BTreeMap<K, V>,
    /// Entries added since the last repacking.
    grown: usize,
}

impl<K, V> Default for Packed<K, V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            grown: 0,
        }
    }
}

impl<K: Ord, V> Packed<K, V> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The map of `entries`, in key order with no key twice, built in one
    /// pass with full nodes.
    #[must_use]
    pub fn from_sorted(entries: Vec<(K, V)>) -> Self {
        debug_assert!(entries.is_sorted_by(|a, b| a.0 < b.0));
        Self {
            map: entries.into_iter().collect(),
            grown: 0,
        }
    }

    /// Adds `entries`, in key order, none of whose keys the map holds: in
    /// one pass that leaves every node full, unless they are few beside
    /// the map (a pass costs the whole map), which takes them one by one.
    pub fn extend_sorted(&mut self, entries: Vec<(K, V)>) {
        debug_assert!(entries.is_sorted_by(|a, b| a.0 < b.0));
        if entries.len() * 8 < self.map.len() {
            for (key, value) in entries {
                self.insert(key, value);
            }
            return;
        }
        let mut added: BTreeMap<K, V> = entries.into_iter().collect();
        // `append` merges into a new tree, as `repack` does.
        self.map.append(&mut added);
        self.grown = 0;
    }

    /// Inserts `value` under `key`, returning the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.map.insert(key, value);
        if old.is_none() {
            self.grown += 1;
            if self.grown >= REPACK_MIN && self.grown * 4 >= self.map.len() {
                self.repack();
            }
        }
        old
    }

    /// Removes `key`, returning its value. (Removals leave each node at
    /// least about half full, which the next growth repacks.)
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// The value under `key`, to change in place.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Rebuilds the map with full nodes now.
    pub fn repack(&mut self) {
        repack(&mut self.map);
        self.grown = 0;
    }
}

impl<K, V> Deref for Packed<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacking_keeps_every_entry_in_order() {
        let mut map: BTreeMap<u32, u32> = (0..10_000).rev().map(|k| (k * 3, k)).collect();
        repack(&mut map);
        assert_eq!(map.len(), 10_000);
        assert!(
            map.iter()
                .map(|(&k, &v)| (k, v))
                .eq((0..10_000).map(|k| (k * 3, k)))
        );
        let mut one = BTreeMap::from([(1, 'a')]);
        repack(&mut one);
        assert_eq!(one, BTreeMap::from([(1, 'a')]));
        let mut none: BTreeMap<u8, u8> = BTreeMap::new();
        repack(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn a_packed_map_repacks_as_it_grows() {
        let mut map = Packed::new();
        for k in 0..20_000u32 {
            assert_eq!(map.insert(k, k), None);
        }
        // Repacked at 4096, 5120, ... entries: the last time was within a
        // quarter of the end.
        assert!(map.grown * 4 < map.len(), "{}", map.grown);
        assert_eq!(map.insert(7, 8), Some(7));
        assert_eq!(map.remove(&7), Some(8));
        assert_eq!(map.len(), 19_999);
        *map.get_mut(&8).unwrap() += 5;
        assert_eq!(map.get(&8), Some(&13));
    }

    #[test]
    fn sorted_entries_join_a_map_in_order() {
        let mut map = Packed::new();
        map.extend_sorted((0..5000u32).map(|k| (k * 2, k)).collect());
        assert_eq!(map.len(), 5000);
        map.extend_sorted((0..5000u32).map(|k| (k * 2 + 1, k)).collect());
        assert_eq!(map.grown, 0);
        assert!(map.iter().map(|(&k, _)| k).eq(0..10_000));
        assert_eq!(map.get(&7), Some(&3));
        // A few beside many go in one by one, and count as growth.
        map.extend_sorted((0..100u32).map(|k| (20_000 + k, k)).collect());
        assert_eq!(map.grown, 100);
        assert_eq!(map.len(), 10_100);
        assert_eq!(map.get(&20_099), Some(&99));
    }
}
