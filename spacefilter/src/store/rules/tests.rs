//! The rules' map, its shared metas and its serialized form.

use super::*;
use crate::store::Origin;

fn meta(comment: Option<&str>, added_at_ms: u64) -> Meta {
    Meta {
        origin: Origin::File,
        comment: comment.map(str::to_owned),
        expires_at_ms: None,
        added_at_ms,
    }
}

fn key(n: u32) -> (List, Prefix) {
    (
        List::Block,
        Prefix::host(std::net::Ipv4Addr::from(n).into()),
    )
}

/// Each list's count, and the count of rules with a comment, are what a
/// walk of the rules finds.
fn counts_hold(rules: &Rules) {
    for list in [List::Allow, List::Block, List::Auto] {
        let walked = rules.keys().filter(|(l, _)| *l == list).count();
        assert_eq!(rules.count(list), walked, "{}", list.name());
    }
    let commented = rules.values().filter(|m| m.comment.is_some()).count();
    assert_eq!(rules.count_held(|m| m.comment.is_some()), commented);
}

/// The lists' counts follow every way rules come and go: put, insert,
/// put again, remove, a batch, a read snapshot, retain.
#[test]
fn each_list_is_counted_through_every_change() {
    let at = |list, n: u32| (list, key(n).1);
    let mut rules = Rules::new();
    for n in 0..300 {
        let list = [List::Allow, List::Block, List::Auto][(n % 3) as usize];
        rules.put(at(list, n), &meta(None, 1));
        rules.insert(at(list, n), meta(Some("again"), 2));
    }
    counts_hold(&rules);
    assert_eq!(rules.count(List::Auto), 100);
    for n in (0..300).step_by(2) {
        let list = [List::Allow, List::Block, List::Auto][(n % 3) as usize];
        assert!(rules.remove(&at(list, n)).is_some());
        assert!(rules.remove(&at(list, n)).is_none());
    }
    counts_hold(&rules);
    let mut batch = Batch::with_capacity(BATCH_PART * 2);
    for n in 0..u32::try_from(BATCH_PART * 2).unwrap() {
        batch.push(at(List::Allow, n * 2), &meta(None, 3));
    }
    rules.put_batch(&batch);
    counts_hold(&rules);
    let text = serde_json::to_vec(&RulesRef(&rules)).unwrap();
    let read = read_seq(&mut serde_json::Deserializer::from_slice(&text)).unwrap();
    counts_hold(&read);
    assert_eq!(read.count(List::Allow), rules.count(List::Allow));
    rules.retain(|(list, _), _| *list != List::Block);
    counts_hold(&rules);
    assert_eq!(rules.count(List::Block), 0);
}

/// `rules` serialized as a snapshot writes them.
struct RulesRef<'a>(&'a Rules);

impl Serialize for RulesRef<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        write_seq(&self.0, out)
    }
}

#[test]
fn rules_added_together_share_their_meta() {
    let mut rules = Rules::new();
    let shared = meta(Some("bulk"), 1);
    for n in 0..10_000 {
        assert_eq!(rules.put(key(n), &shared), None);
    }
    assert_eq!(rules.metas.slots.len(), 1);
    assert_eq!(rules.metas.slots[0].refs, 10_000);
    // One rule given a meta of its own, then the old one back.
    let own = meta(None, 2);
    assert_eq!(rules.insert(key(7), own.clone()), Some(shared.clone()));
    assert_eq!(rules[&key(7)], own);
    assert_eq!(rules.metas.slots.len(), 2);
    assert_eq!(rules.remove(&key(7)), Some(own));
    // Its slot is free, and taken again by the next new meta.
    assert_eq!(rules.metas.free, [1]);
    rules.insert(key(7), meta(None, 3));
    assert_eq!(rules.metas.slots.len(), 2);
    assert_eq!(rules.get(&key(7)).map(|m| m.added_at_ms), Some(3));
    assert_eq!(rules.get(&key(8)), Some(&shared));
    assert!(rules.get(&(List::Allow, key(8).1)).is_none());
    // Taking every rule out frees every meta.
    rules.retain(|_, _| false);
    assert!(rules.is_empty());
    assert_eq!(rules.metas.free.len(), 2);
    assert!(rules.metas.by_hash.is_empty());
}

#[test]
fn rules_compare_and_iterate_as_a_map_does() {
    let mut rules = Rules::new();
    let mut map = BTreeMap::new();
    for n in (0..5000).rev() {
        let m = meta(None, u64::from(n % 3));
        rules.insert(key(n * 7), m.clone());
        map.insert(key(n * 7), m);
    }
    rules.tidy();
    assert!(rules.iter().eq(map.iter()));
    assert!(rules.keys().eq(map.keys()));
    assert!(rules.values().eq(map.values()));
    let copy = rules.clone();
    assert_eq!(copy, rules);
    rules.remove(&key(7));
    assert_ne!(copy, rules);
    assert_eq!(format!("{:?}", Rules::new()), "{}");
}

/// The snapshot's rules, written from [`Rules`] and read back into
/// them, are the list of [`Rule`]s they always were.
#[test]
fn rules_serialize_as_a_list_of_rules() {
    let mut rules = Rules::new();
    let mut list = Vec::new();
    for (n, comment) in [(3, Some("a \"quoted\" note")), (1, None), (2, None)] {
        let m = Meta {
            expires_at_ms: Some(n * 1000),
            ..meta(comment, n)
        };
        rules.insert(key(u32::try_from(n).unwrap()), m.clone());
        list.push(Rule {
            list: List::Block,
            prefix: key(u32::try_from(n).unwrap()).1,
            meta: m,
        });
    }
    list.sort_by_key(|r| (r.list, r.prefix));
    let mut written = Vec::new();
    write_seq(&&rules, &mut serde_json::Serializer::new(&mut written)).unwrap();
    assert_eq!(written, serde_json::to_vec(&list).unwrap());
    let read = read_seq(&mut serde_json::Deserializer::from_slice(&written)).unwrap();
    assert_eq!(read, rules);
}

/// A list out of order, or with a prefix twice (as no snapshot is
/// written, but a hand-edited one may be), reads as the same rules
/// put one by one, the last of a twice-listed prefix winning; a list
/// in order, as written, is built in one pass into a map equal to it.
#[test]
fn rules_read_in_any_order_as_put_one_by_one() {
    let rule = |n: u32, at: u64| Rule {
        list: List::Block,
        prefix: key(n).1,
        meta: meta(None, at),
    };
    // Enough in order for several parts, then one out of order, then a
    // prefix listed twice.
    let mut long: Vec<Rule> = (0..140_000)
        .map(|n| rule(n * 2 + 10, u64::from(n % 3)))
        .collect();
    long.extend([rule(5, 1), rule(7, 2), rule(7, 3), rule(1_000_000, 1)]);
    for listed in [
        vec![rule(1, 1), rule(2, 1), rule(3, 2)],
        vec![rule(3, 2), rule(1, 1), rule(2, 1)],
        vec![rule(1, 1), rule(2, 1), rule(2, 7), rule(3, 2)],
        long,
    ] {
        let mut one_by_one = Rules::new();
        for r in &listed {
            one_by_one.insert((r.list, r.prefix), r.meta.clone());
        }
        let text = serde_json::to_vec(&listed).unwrap();
        let read = read_seq(&mut serde_json::Deserializer::from_slice(&text)).unwrap();
        assert_eq!(read, one_by_one);
        assert!(read.iter().eq(one_by_one.iter()));
        counts_hold(&read);
        // Every meta held as often as rules hold it.
        let held: u32 = read.metas.slots.iter().map(|s| s.refs).sum();
        assert_eq!(held as usize, read.len());
    }
}

/// A batch is journaled as the `put` of its rules, reads back as one,
/// and puts into [`Rules`] what that `put` does, in bulk or not.
#[test]
fn a_batch_is_the_put_of_its_rules() {
    use crate::store::{Op, Rule};

    let shared = meta(None, 5);
    for (size, before) in [
        (3, 0),
        (TIDY_MIN * 2, 100),
        (TIDY_MIN * 2, TIDY_MIN * 4),
        (BATCH_PART * 2 + 10, BATCH_PART),
    ] {
        let mut batch = Batch::with_capacity(size);
        let mut rules = Vec::new();
        for n in 0..size {
            let n = u32::try_from(n).unwrap();
            // Every tenth rule has a meta of its own; the last key
            // comes twice, the second time with another meta.
            let m = if n % 10 == 0 {
                meta(None, n.into())
            } else {
                shared.clone()
            };
            batch.push(key(n * 3), &m);
            rules.push(Rule {
                list: List::Block,
                prefix: key(n * 3).1,
                meta: m,
            });
        }
        let last = u32::try_from(size - 1).unwrap() * 3;
        batch.push(key(last), &meta(Some("again"), 9));
        rules.push(Rule {
            list: List::Block,
            prefix: key(last).1,
            meta: meta(Some("again"), 9),
        });
        let batched = Op::PutBatch { rules: batch };
        let plain = Op::Put { rules };
        let json = serde_json::to_string(&batched).unwrap();
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), plain);
        // On top of rules that are there already, some of them put
        // again.
        let mut one = Rules::new();
        for n in 0..before {
            one.put(key(u32::try_from(n).unwrap() * 2), &meta(Some("old"), 1));
        }
        let mut other = one.clone();
        batched.apply(&mut one);
        plain.apply(&mut other);
        assert_eq!(one, other, "{size} on {before}");
        counts_hold(&one);
        counts_hold(&other);
        // Each meta is counted once per rule that holds it.
        let held: u32 = one.metas.slots.iter().map(|s| s.refs).sum();
        assert_eq!(held as usize, one.len());
        one.retain(|_, _| false);
        assert!(one.metas.slots.iter().all(|s| s.refs == 0));
    }
}
