//! Every rule in memory, in little of it: by list and prefix, each with
//! its [`Meta`], which rules added together share. A bulk import gives a
//! million rules one `Meta` (origin, comment, expiry, time added): each
//! rule then costs its key and a 4-byte reference, about 25 bytes in a
//! map kept dense ([`repack`]), where a `Meta` of its own took some 75
//! more.
//!
//! [`Rules`] reads and writes like the `BTreeMap<(List, Prefix), Meta>` it
//! replaces: `get`, `insert`, `remove`, `iter` and the like, with the
//! metadata shared behind them.

use std::{
    collections::{BTreeMap, HashMap, HashSet, btree_map, hash_map::DefaultHasher},
    fmt,
    hash::{Hash as _, Hasher as _},
    ops::Index,
};

use serde::{Deserializer, Serialize, Serializer, de};

use super::records::{Meta, Rule, RuleRef};
use crate::net::{List, Prefix, packed::repack};

/// A `Meta` held by one or more rules.
#[derive(Clone)]
struct Shared {
    meta: Meta,
    /// How many rules hold it; 0: the slot is free.
    refs: u32,
}

/// The metadata the rules share, each held once with a count of the rules
/// that hold it; an entry whose last rule goes is freed.
#[derive(Clone, Default)]
struct Metas {
    slots: Vec<Shared>,
    /// The slot of each meta, by its hash (64 bits: a second meta with the
    /// same hash, next to never seen, goes to `collided`).
    by_hash: HashMap<u64, u32>,
    collided: HashMap<Meta, u32>,
    free: Vec<u32>,
    /// The slot interned last: a bulk add interns the same meta again and
    /// again, and finds it here without hashing it.
    last: u32,
}

fn hash_of(meta: &Meta) -> u64 {
    let mut hasher = DefaultHasher::new();
    meta.hash(&mut hasher);
    hasher.finish()
}

impl Metas {
    fn get(&self, id: u32) -> &Meta {
        &self.slots[id as usize].meta
    }

    /// The slot holding `meta`, counted once more; a new one (with a
    /// copy of it) if none does.
    fn intern(&mut self, meta: &Meta) -> u32 {
        let id = self.find(meta).unwrap_or_else(|| self.add(meta.clone()));
        self.hold(id)
    }

    /// [`Metas::intern`], taking `meta` if it is new.
    fn intern_owned(&mut self, meta: Meta) -> u32 {
        let id = self.find(&meta).unwrap_or_else(|| self.add(meta));
        self.hold(id)
    }

    fn hold(&mut self, id: u32) -> u32 {
        self.slots[id as usize].refs += 1;
        self.last = id;
        id
    }

    fn find(&self, meta: &Meta) -> Option<u32> {
        if let Some(last) = self.slots.get(self.last as usize)
            && last.refs > 0
            && last.meta == *meta
        {
            return Some(self.last);
        }
        match self.by_hash.get(&hash_of(meta)) {
            Some(&id) if self.get(id) == meta => Some(id),
            Some(_) => self.collided.get(meta).copied(),
            None => None,
        }
    }

    /// A slot for `meta`, held by no rule yet.
    fn add(&mut self, meta: Meta) -> u32 {
        let hash = hash_of(&meta);
        let id = if let Some(id) = self.free.pop() {
            self.slots[id as usize].meta = meta.clone();
            id
        } else {
            self.slots.push(Shared {
                meta: meta.clone(),
                refs: 0,
            });
            u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 distinct metas")
        };
        if let std::collections::hash_map::Entry::Vacant(entry) = self.by_hash.entry(hash) {
            entry.insert(id);
        } else {
            self.collided.insert(meta, id);
        }
        id
    }

    /// Counts one rule less on slot `id`, freeing it after the last; the
    /// meta is returned (taken, from its last rule).
    fn release(&mut self, id: u32) -> Meta {
        let slot = &mut self.slots[id as usize];
        slot.refs -= 1;
        if slot.refs > 0 {
            return slot.meta.clone();
        }
        let meta = Meta {
            comment: slot.meta.comment.take(),
            ..slot.meta.clone()
        };
        let hash = hash_of(&meta);
        if self.by_hash.get(&hash) == Some(&id) {
            self.by_hash.remove(&hash);
        } else {
            self.collided.remove(&meta);
        }
        self.free.push(id);
        meta
    }
}

/// Keys added or removed before the map is repacked, at the least.
const TIDY_MIN: usize = 4096;

/// Every rule, by list and prefix.
#[derive(Clone, Default)]
pub struct Rules {
    map: BTreeMap<(List, Prefix), u32>,
    metas: Metas,
    /// Keys added or removed since the map was last repacked.
    changed: usize,
    /// The rules of each list (by [`list_index`]): `status` and a metrics
    /// scrape read them without walking a million keys under the lock.
    per_list: [usize; 3],
}

/// A list's place in [`Rules::per_list`].
fn list_index(list: List) -> usize {
    match list {
        List::Allow => 0,
        List::Block => 1,
        List::Auto => 2,
    }
}

impl Rules {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many rules have a meta `pick` takes: a look at each distinct
    /// meta, not at each rule (a million rules of one import share one).
    #[must_use]
    pub fn count_held(&self, pick: impl Fn(&Meta) -> bool) -> usize {
        self.metas
            .slots
            .iter()
            .filter(|slot| slot.refs > 0 && pick(&slot.meta))
            .map(|slot| slot.refs as usize)
            .sum()
    }

    /// How many rules `list` holds.
    #[must_use]
    pub fn count(&self, list: List) -> usize {
        self.per_list[list_index(list)]
    }

    #[must_use]
    pub fn get(&self, key: &(List, Prefix)) -> Option<&Meta> {
        self.map.get(key).map(|&id| self.metas.get(id))
    }

    #[must_use]
    pub fn contains_key(&self, key: &(List, Prefix)) -> bool {
        self.map.contains_key(key)
    }

    /// Sets the rule `key`; returns its meta before, if it was there.
    pub fn insert(&mut self, key: (List, Prefix), meta: Meta) -> Option<Meta> {
        let id = self.metas.intern_owned(meta);
        self.set(key, id)
    }

    /// [`Rules::insert`] of a borrowed meta, cloned only if no rule holds
    /// one like it yet.
    pub fn put(&mut self, key: (List, Prefix), meta: &Meta) -> Option<Meta> {
        let id = self.metas.intern(meta);
        self.set(key, id)
    }

    fn set(&mut self, key: (List, Prefix), id: u32) -> Option<Meta> {
        let old = self.map.insert(key, id);
        if old.is_none() {
            self.changed += 1;
            self.per_list[list_index(key.0)] += 1;
        }
        old.map(|old| self.metas.release(old))
    }

    /// Takes the rule `key` out; returns its meta, if it was there.
    pub fn remove(&mut self, key: &(List, Prefix)) -> Option<Meta> {
        let id = self.map.remove(key)?;
        self.changed += 1;
        self.per_list[list_index(key.0)] -= 1;
        Some(self.metas.release(id))
    }

    /// Every rule, in (list, prefix) order.
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.map.iter(),
            metas: &self.metas,
        }
    }

    /// Every rule in (list, prefix) order, with the id of its meta (see
    /// [`Rules::held_metas`]).
    pub(super) fn iter_ids(&self) -> impl ExactSizeIterator<Item = (&(List, Prefix), u32)> + '_ {
        self.map.iter().map(|(key, &id)| (key, id))
    }

    /// The metas rules hold, with their ids.
    pub(super) fn held_metas(&self) -> impl Iterator<Item = (u32, &Meta)> + '_ {
        (0..)
            .zip(&self.metas.slots)
            .filter(|(_, slot)| slot.refs > 0)
            .map(|(id, slot)| (id, &slot.meta))
    }

    #[must_use = "an iterator does nothing unless drawn"]
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &(List, Prefix)> + '_ {
        self.map.keys()
    }

    #[must_use = "an iterator does nothing unless drawn"]
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Meta> + '_ {
        self.map.values().map(|&id| self.metas.get(id))
    }

    /// Keeps the rules `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&(List, Prefix), &Meta) -> bool) {
        let Self {
            map,
            metas,
            changed,
            per_list,
        } = self;
        map.retain(|key, &mut id| {
            let kept = keep(key, metas.get(id));
            if !kept {
                metas.release(id);
                *changed += 1;
                per_list[list_index(key.0)] -= 1;
            }
            kept
        });
        self.tidy();
    }

    /// Repacks the map once a quarter of it has changed since it last
    /// was: after a bulk change, which leaves its nodes about half full.
    pub fn tidy(&mut self) {
        if self.changed >= TIDY_MIN && self.changed * 4 >= self.map.len() {
            repack(&mut self.map);
            self.changed = 0;
        }
    }
}

/// The rules in (list, prefix) order, with their metas.
pub struct Iter<'a> {
    inner: btree_map::Iter<'a, (List, Prefix), u32>,
    metas: &'a Metas,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a (List, Prefix), &'a Meta);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|(key, &id)| (key, self.metas.get(id)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Rules {
    type Item = (&'a (List, Prefix), &'a Meta);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Index<&(List, Prefix)> for Rules {
    type Output = Meta;

    fn index(&self, key: &(List, Prefix)) -> &Meta {
        self.get(key).expect("no rule with this key")
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Rules {}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Rules put together (a bulk add), held compactly: each key with the
/// index of its meta among the few distinct ones, where a `Vec<Rule>`
/// holds a `Meta` per rule (24 bytes a rule against 80). Serialized as the
/// list of [`Rule`]s it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    keys: Vec<((List, Prefix), u32)>,
    metas: Vec<Meta>,
    index: HashMap<Meta, u32>,
}

impl Batch {
    #[must_use]
    pub fn with_capacity(rules: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rules),
            ..Self::default()
        }
    }

    /// Adds the rule `key` with `meta` (copied if the batch holds no
    /// meta like it yet).
    pub fn push(&mut self, key: (List, Prefix), meta: &Meta) {
        let last = self.metas.len().checked_sub(1);
        let at = match last {
            Some(i) if self.metas[i] == *meta => i,
            _ => {
                if let Some(&at) = self.index.get(meta) {
                    at as usize
                } else {
                    self.metas.push(meta.clone());
                    let at = self.metas.len() - 1;
                    let id = u32::try_from(at).expect("fewer than 2^32 metas");
                    self.index.insert(meta.clone(), id);
                    at
                }
            }
        };
        self.keys
            .push((key, u32::try_from(at).expect("fewer than 2^32 metas")));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The rules, in the order they were pushed.
    #[must_use = "an iterator does nothing unless drawn"]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ((List, Prefix), &Meta)> + '_ {
        self.keys
            .iter()
            .map(|&(key, at)| (key, &self.metas[at as usize]))
    }
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_seq(
            self.iter()
                .map(|((list, prefix), meta)| RuleRef { list, prefix, meta }),
        )
    }
}

/// Rules of a batch built into a map of their own at a time.
const BATCH_PART: usize = 64 * 1024;

impl Rules {
    /// Puts every rule of `batch`, a later one of a key over an earlier.
    /// A batch that is large against the map goes in a part at a time,
    /// each built into a dense map of its own and merged in
    /// ([`BTreeMap::append`] builds the merge with full nodes, freeing the
    /// old ones as it goes), rather than inserted rule by rule into nodes
    /// left half full; a part at a time, so that what it takes besides the
    /// map is one part.
    pub fn put_batch(&mut self, batch: &Batch) {
        if batch.len() < TIDY_MIN || batch.len() * 4 < self.map.len() {
            for (key, meta) in batch.iter() {
                self.put(key, meta);
            }
            return;
        }
        let Self {
            map,
            metas,
            changed,
            per_list,
        } = self;
        for part in batch.keys.chunks(BATCH_PART) {
            // By key, the last of each kept.
            let mut fresh: BTreeMap<(List, Prefix), u32> = part.iter().copied().collect();
            let (Some((&first, _)), Some((&last, _))) =
                (fresh.first_key_value(), fresh.last_key_value())
            else {
                continue;
            };
            let mut old = map.range(first..=last).peekable();
            for (key, at) in &mut fresh {
                *at = metas.intern(&batch.metas[*at as usize]);
                while old.next_if(|(k, _)| *k < key).is_some() {}
                if let Some((_, &replaced)) = old.next_if(|(k, _)| *k == key) {
                    metas.release(replaced);
                } else {
                    *changed += 1;
                    per_list[list_index(key.0)] += 1;
                }
            }
            map.append(&mut fresh);
        }
    }
}

/// Serializes `rules` as the list of [`Rule`]s a snapshot written as JSON
/// holds, one by one.
#[cfg(test)]
#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "the signature serde's `serialize_with` calls"
)]
pub(super) fn write_seq<S: Serializer>(rules: &&Rules, out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(
        rules
            .iter()
            .map(|(&(list, prefix), meta)| RuleRef { list, prefix, meta }),
    )
}

/// Reads a snapshot's list of [`Rule`]s into [`Rules`], one by one.
pub(super) fn read_seq<'de, D: Deserializer<'de>>(input: D) -> Result<Rules, D::Error> {
    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Rules;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of rules")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Rules, A::Error> {
            let mut built = Builder::default();
            while let Some(rule) = seq.next_element::<Rule>()? {
                let id = built.meta(rule.meta);
                built.push((rule.list, rule.prefix), id);
            }
            Ok(built.finish())
        }
    }

    input.deserialize_seq(Visitor)
}

/// Builds [`Rules`] from a snapshot's rules, which come in key order:
/// gathered, then built into the map in one pass, in full nodes, rather
/// than each inserted by a search from the root. Rules out of order (a
/// hand-edited file) are put one by one from the first such.
#[derive(Default)]
pub(super) struct Builder {
    rules: Rules,
    part: Vec<((List, Prefix), u32)>,
    out_of_order: bool,
}

impl Builder {
    /// The id of `meta`, for [`Builder::push`]: the one it already has if
    /// an equal meta came before.
    pub(super) fn meta(&mut self, meta: Meta) -> u32 {
        let metas = &mut self.rules.metas;
        metas.find(&meta).unwrap_or_else(|| metas.add(meta))
    }

    /// Puts the rule `key`, holding the meta `id` ([`Builder::meta`]); a
    /// later rule of a key over an earlier.
    pub(super) fn push(&mut self, key: (List, Prefix), id: u32) {
        let rules = &mut self.rules;
        rules.metas.hold(id);
        if !self.out_of_order {
            if self.part.last().is_none_or(|(last, _)| *last < key) {
                rules.per_list[list_index(key.0)] += 1;
                self.part.push((key, id));
                return;
            }
            self.build_part();
            self.out_of_order = true;
        }
        self.rules.set(key, id);
    }

    /// Builds the rules gathered in order into the map (empty until then).
    fn build_part(&mut self) {
        let part = std::mem::take(&mut self.part);
        self.rules.map = part.into_iter().collect();
    }

    /// The rules; a meta no rule holds is let go.
    pub(super) fn finish(mut self) -> Rules {
        if !self.out_of_order {
            self.build_part();
        }
        let rules = &mut self.rules;
        let metas = &mut rules.metas;
        let free: HashSet<u32> = metas.free.iter().copied().collect();
        let unheld: Vec<u32> = (0..)
            .zip(&metas.slots)
            .filter(|(id, slot)| slot.refs == 0 && !free.contains(id))
            .map(|(id, _)| id)
            .collect();
        for id in unheld {
            metas.hold(id);
            metas.release(id);
        }
        rules.tidy();
        self.rules
    }
}

#[cfg(test)]
mod tests;
