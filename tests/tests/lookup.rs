//! The lookup tables behind the lists, through the real XDP program with
//! `BPF_PROG_TEST_RUN`: where the tables split keys by length (/12, /24 and
//! /25 for IPv4, /16 and /17 for IPv6), overlapping keys across those
//! splits, removals that must hand a block back to the covering prefix,
//! the allowlist inside the blocklist and the other way round, blocks whose
//! keys do not fit the buckets or are of too many lengths (crowded: their
//! keys go to a trie), and a large random table checked source by source
//! against the reference model, before and after half of it is removed.
//!
//! Every verdict is checked three ways: the XDP action, the reason counter
//! that moved, and the list entry that counted the hit.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{Array, LpmTrie, Map, MapData, MapInfo, lpm_trie::Key},
    programs::loaded_programs,
};
use spacefilter::{
    Filter, List, LoadOptions, Prefix, Reason,
    Reason::{Allowlisted, Blocked, Passed},
};
use spacefilter_common::{
    lookup::{
        BUCKET_SLOTS, V6_SPILLED, buckets, buckets_for, fingerprint, v4_hash, v4_key, v6_hash,
    },
    map_names,
};
use spacefilter_tests::{bench::Rng, packets::Packet, reference, require_root};

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap_or_else(|e| panic!("bad prefix {s}: {e}"))
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// A UDP frame from `src` to a server of the same family.
fn frame(src: IpAddr) -> Vec<u8> {
    let dst: IpAddr = match src {
        IpAddr::V4(_) => Ipv4Addr::new(198, 18, 0, 1).into(),
        IpAddr::V6(_) => Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1).into(),
    };
    Packet::ip(src, dst).udp(40_000, 53).build().into_bytes()
}

/// The program with the lists in force, checked source by source.
struct Lookup {
    filter: Filter,
    allow: Vec<Prefix>,
    block: Vec<Prefix>,
    failures: Vec<String>,
    checked: usize,
}

impl Lookup {
    fn load(options: LoadOptions) -> Self {
        require_root();
        Self {
            filter: Filter::load(options).expect("load the XDP program"),
            allow: Vec::new(),
            block: Vec::new(),
            failures: Vec::new(),
            checked: 0,
        }
    }

    fn allow(&mut self, p: Prefix) {
        assert!(self.filter.allow(p).expect("allow"), "{p} allowed twice");
        self.allow.push(p);
    }

    fn block(&mut self, p: Prefix) {
        assert!(self.filter.block(p).expect("block"), "{p} blocked twice");
        self.block.push(p);
    }

    /// Adds `prefixes` to `list` in one call, in order, as a start
    /// restores the lists.
    fn insert_sorted(&mut self, list: List, prefixes: &mut [Prefix]) {
        prefixes.sort_unstable();
        let added = self
            .filter
            .lists()
            .insert_many(list, prefixes)
            .expect("insert_many");
        assert_eq!(added, prefixes.len());
        match list {
            List::Allow => self.allow.extend_from_slice(prefixes),
            _ => self.block.extend_from_slice(prefixes),
        }
    }

    fn unallow(&mut self, p: Prefix) {
        assert!(self.filter.unallow(p).expect("unallow"), "{p} not allowed");
        self.allow.retain(|&q| q != p);
    }

    fn unblock(&mut self, p: Prefix) {
        assert!(self.filter.unblock(p).expect("unblock"), "{p} not blocked");
        self.block.retain(|&q| q != p);
    }

    /// Replaces the lists.
    fn set(&mut self, allow: &[&str], block: &[&str]) {
        for p in self.allow.clone() {
            self.unallow(p);
        }
        for p in self.block.clone() {
            self.unblock(p);
        }
        for p in allow {
            self.allow(prefix(p));
        }
        for p in block {
            self.block(prefix(p));
        }
    }

    fn hits(&self) -> BTreeMap<(List, Prefix), u64> {
        self.filter
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| ((e.list, e.prefix), e.hits))
            .collect()
    }

    /// Runs a frame from `src` and checks it against the reference model;
    /// `want`, if given, is what the case itself expects (the model must
    /// agree with it).
    fn check(&mut self, what: &str, src: IpAddr, want: Option<(Reason, Option<&str>)>) {
        self.checked += 1;
        let frame = frame(src);
        let reason = reference::decide(&frame, &self.allow, &self.block);
        let hit = reference::decide_hit(&frame, &self.allow, &self.block);
        let mut problems = Vec::new();
        if let Some((want_reason, want_hit)) = want {
            let want_hit = want_hit.map(|p| {
                let list = if want_reason == Allowlisted {
                    List::Allow
                } else {
                    List::Block
                };
                (list, prefix(p))
            });
            if (reason, hit) != (want_reason, want_hit) {
                problems.push(format!(
                    "the reference says {reason:?} {hit:?}, the case {want_reason:?} {want_hit:?}"
                ));
            }
        }
        let before = self.filter.counters().expect("counters");
        let hits = self.hits();
        let (action, _) = self.filter.test_run(&frame, 1).expect("test run");
        let delta = self.filter.counters().expect("counters").since(&before);
        if action != reference::action(reason) {
            problems.push(format!("action {action} for {reason:?}"));
        }
        if delta.get(reason).packets != 1 {
            problems.push(format!("the {} counter did not move", reason.name()));
        }
        for (key, after) in self.hits() {
            let moved = after - hits.get(&key).copied().unwrap_or(0);
            if moved != u64::from(Some(key) == hit) {
                problems.push(format!(
                    "{} {} counted {moved} hits (the hit goes to {hit:?})",
                    key.0.name(),
                    key.1
                ));
            }
        }
        if !problems.is_empty() {
            self.failures.push(format!(
                "{what}: {src} with allow {:?} block {:?}: {}",
                self.allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                self.block
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                problems.join("; ")
            ));
        }
    }

    /// Checks a source with the case's own expectation.
    fn expect(&mut self, what: &str, src: &str, reason: Reason, hit: Option<&str>) {
        self.check(what, addr(src), Some((reason, hit)));
    }

    fn finish(mut self, name: &str) {
        self.set(&[], &[]);
        println!("lookup/{name}: {} sources checked", self.checked);
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
    }
}

#[test]
fn ipv4_table_boundaries() {
    let mut t = Lookup::load(LoadOptions::default());
    // Each length around the splits: the block's first and last address
    // inside, the addresses just outside.
    for (p, first, last, before, after) in [
        (
            "10.1.2.0/24",
            "10.1.2.0",
            "10.1.2.255",
            "10.1.1.255",
            "10.1.3.0",
        ),
        (
            "10.1.2.128/25",
            "10.1.2.128",
            "10.1.2.255",
            "10.1.2.127",
            "10.1.3.0",
        ),
        (
            "10.1.2.0/23",
            "10.1.2.0",
            "10.1.3.255",
            "10.1.1.255",
            "10.1.4.0",
        ),
        (
            "10.8.0.0/13",
            "10.8.0.0",
            "10.15.255.255",
            "10.7.255.255",
            "10.16.0.0",
        ),
        (
            "10.16.0.0/12",
            "10.16.0.0",
            "10.31.255.255",
            "10.15.255.255",
            "10.32.0.0",
        ),
        (
            "10.1.2.6/31",
            "10.1.2.6",
            "10.1.2.7",
            "10.1.2.5",
            "10.1.2.8",
        ),
        (
            "10.1.2.9/32",
            "10.1.2.9",
            "10.1.2.9",
            "10.1.2.8",
            "10.1.2.10",
        ),
        (
            "0.0.0.0/0",
            "0.0.0.0",
            "255.255.255.255",
            "0.0.0.0",
            "255.255.255.255",
        ),
        (
            "128.0.0.0/1",
            "128.0.0.0",
            "255.255.255.255",
            "127.255.255.255",
            "127.255.255.255",
        ),
    ] {
        t.set(&[], &[p]);
        t.expect(p, first, Blocked, Some(p));
        t.expect(p, last, Blocked, Some(p));
        if !p.ends_with("/0") {
            t.expect(p, before, Passed, None);
            t.expect(p, after, Passed, None);
        }
    }
    // Every length from /25 to /32 in one /24, each with a host inside and
    // the next block outside.
    let base = Ipv4Addr::new(10, 1, 2, 128);
    for len in 25..=32u8 {
        let p = format!("{base}/{len}");
        let size = 1u32 << (32 - len);
        t.set(&[], &[&p]);
        t.expect(&p, "10.1.2.128", Blocked, Some(&p));
        let last = Ipv4Addr::from(u32::from(base) + size - 1);
        t.expect(&p, &last.to_string(), Blocked, Some(&p));
        if len > 25 {
            let next = Ipv4Addr::from(u32::from(base) + size);
            t.expect(&p, &next.to_string(), Passed, None);
        }
        t.expect(&p, "10.1.2.127", Passed, None);
    }
    t.finish("ipv4_table_boundaries");
}

#[test]
fn ipv4_overlaps_and_removals() {
    let mut t = Lookup::load(LoadOptions::default());
    // One key per table, nested: /8 (in the /12 table), /16 and /24 (in
    // the /24 table), /28 and /32 (in the buckets).
    let nest = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.16/28",
        "10.1.2.17/32",
    ];
    t.set(&[], &nest);
    for (src, hit) in [
        ("10.200.0.1", "10.0.0.0/8"),
        ("10.1.200.1", "10.1.0.0/16"),
        ("10.1.2.200", "10.1.2.0/24"),
        ("10.1.2.18", "10.1.2.16/28"),
        ("10.1.2.17", "10.1.2.17/32"),
    ] {
        t.expect("nested blocks", src, Blocked, Some(hit));
    }
    // Taking out each middle key hands its addresses to the next shorter
    // one, in whichever table that is.
    t.unblock(prefix("10.1.2.0/24"));
    t.expect("/24 removed", "10.1.2.200", Blocked, Some("10.1.0.0/16"));
    t.expect("/24 removed", "10.1.2.18", Blocked, Some("10.1.2.16/28"));
    t.unblock(prefix("10.1.0.0/16"));
    t.expect("/16 removed", "10.1.2.200", Blocked, Some("10.0.0.0/8"));
    t.expect("/16 removed", "10.1.200.1", Blocked, Some("10.0.0.0/8"));
    t.unblock(prefix("10.1.2.16/28"));
    t.expect("/28 removed", "10.1.2.18", Blocked, Some("10.0.0.0/8"));
    t.expect("/28 removed", "10.1.2.17", Blocked, Some("10.1.2.17/32"));
    t.unblock(prefix("10.0.0.0/8"));
    t.expect("/8 removed", "10.1.2.18", Passed, None);
    t.expect("/8 removed", "10.1.2.17", Blocked, Some("10.1.2.17/32"));
    // Added again in the other order: shortest last.
    t.set(&[], &[]);
    for p in nest.iter().rev() {
        t.block(prefix(p));
    }
    t.expect("reversed", "10.1.2.200", Blocked, Some("10.1.2.0/24"));
    t.expect("reversed", "10.1.2.18", Blocked, Some("10.1.2.16/28"));
    t.expect("reversed", "10.9.9.9", Blocked, Some("10.0.0.0/8"));
    // A /24 key inside a /20 key inside a /12 key: the /24 table holds
    // both, the /12 table the outer one.
    t.set(&[], &["10.16.0.0/12", "10.17.0.0/20", "10.17.1.0/24"]);
    t.expect("/12 /20 /24", "10.17.1.1", Blocked, Some("10.17.1.0/24"));
    t.expect("/12 /20 /24", "10.17.2.1", Blocked, Some("10.17.0.0/20"));
    t.expect("/12 /20 /24", "10.17.16.1", Blocked, Some("10.16.0.0/12"));
    t.unblock(prefix("10.17.0.0/20"));
    t.expect("/20 removed", "10.17.2.1", Blocked, Some("10.16.0.0/12"));
    t.expect("/20 removed", "10.17.1.1", Blocked, Some("10.17.1.0/24"));
    t.unblock(prefix("10.16.0.0/12"));
    t.expect("/12 removed", "10.17.2.1", Passed, None);
    t.finish("ipv4_overlaps_and_removals");
}

#[test]
fn allow_and_block_inside_each_other() {
    let mut t = Lookup::load(LoadOptions::default());
    for (allow, block, inside, outside) in [
        // Allow inside block, in every table.
        ("10.1.2.0/24", "10.1.0.0/16", "10.1.2.9", "10.1.3.9"),
        ("10.1.2.16/28", "10.1.2.0/24", "10.1.2.17", "10.1.2.33"),
        ("10.1.2.17/32", "10.1.2.16/28", "10.1.2.17", "10.1.2.18"),
        ("10.1.0.0/16", "10.0.0.0/8", "10.1.9.9", "10.2.9.9"),
        (
            "2001:2:0:1::/64",
            "2001:2::/48",
            "2001:2:0:1::9",
            "2001:2:0:2::9",
        ),
        ("2001:2::/32", "2001::/16", "2001:2::9", "2001:3::9"),
        ("2001:2::9/128", "2001:2::/120", "2001:2::9", "2001:2::8"),
    ] {
        t.set(&[allow], &[block]);
        t.expect("allow in block", inside, Allowlisted, Some(allow));
        t.expect("allow in block", outside, Blocked, Some(block));
        // Block inside allow: the allowlist wins, and its entry counts.
        t.set(&[block], &[allow]);
        t.expect("block in allow", inside, Allowlisted, Some(block));
        t.expect("block in allow", outside, Allowlisted, Some(block));
        // The allow entry goes: the inner block key is a block again.
        t.unallow(prefix(block));
        t.expect("allow removed", inside, Blocked, Some(allow));
        t.expect("allow removed", outside, Passed, None);
    }
    // An allow prefix over several block keys of all tables, then taken
    // away and put back.
    t.set(
        &[],
        &[
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "10.1.2.200/32",
        ],
    );
    t.allow(prefix("10.1.2.0/24"));
    for src in ["10.1.2.1", "10.1.2.130", "10.1.2.200"] {
        t.expect("allow over blocks", src, Allowlisted, Some("10.1.2.0/24"));
    }
    t.expect(
        "allow over blocks",
        "10.1.3.1",
        Blocked,
        Some("10.1.0.0/16"),
    );
    t.unallow(prefix("10.1.2.0/24"));
    t.expect("allow gone", "10.1.2.1", Blocked, Some("10.1.2.0/24"));
    t.expect("allow gone", "10.1.2.130", Blocked, Some("10.1.2.128/25"));
    t.expect("allow gone", "10.1.2.200", Blocked, Some("10.1.2.200/32"));
    t.finish("allow_and_block_inside_each_other");
}

#[test]
fn ipv6_table_boundaries() {
    let mut t = Lookup::load(LoadOptions::default());
    for (p, inside, outside) in [
        ("2001::/16", "2001:ffff::1", "2002::1"),
        ("2001:8000::/17", "2001:8000::1", "2001:7fff::1"),
        ("2001:2::/48", "2001:2:0:ffff::1", "2001:2:1::1"),
        ("2001:2::/64", "2001:2::ffff:1", "2001:2:0:1::1"),
        ("2001:2::80/121", "2001:2::ff", "2001:2::7f"),
        ("2001:2::9/128", "2001:2::9", "2001:2::8"),
        ("::/0", "ffff::1", "ffff::1"),
        (
            "8000::/1",
            "8000::",
            "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ),
        ("2001:2::/65", "2001:2::1", "2001:2::8000:0:0:0"),
    ] {
        t.set(&[], &[p]);
        t.expect(p, inside, Blocked, Some(p));
        if !p.ends_with("/0") {
            t.expect(p, outside, Passed, None);
        }
    }
    // Nested across the split, removed from the middle out.
    t.set(
        &[],
        &[
            "2000::/8",
            "2001::/16",
            "2001:2::/32",
            "2001:2::/64",
            "2001:2::1/128",
        ],
    );
    t.expect("nested", "2001:2::1", Blocked, Some("2001:2::1/128"));
    t.expect("nested", "2001:2::2", Blocked, Some("2001:2::/64"));
    t.expect("nested", "2001:2:1::2", Blocked, Some("2001:2::/32"));
    t.expect("nested", "2001:3::2", Blocked, Some("2001::/16"));
    t.expect("nested", "2002::2", Blocked, Some("2000::/8"));
    t.unblock(prefix("2001:2::/64"));
    t.expect("/64 removed", "2001:2::2", Blocked, Some("2001:2::/32"));
    t.unblock(prefix("2001::/16"));
    t.expect("/16 removed", "2001:3::2", Blocked, Some("2000::/8"));
    t.unblock(prefix("2001:2::/32"));
    t.expect("/32 removed", "2001:2::2", Blocked, Some("2000::/8"));
    t.expect("/32 removed", "2001:2::1", Blocked, Some("2001:2::1/128"));
    t.finish("ipv6_table_boundaries");
}

#[test]
fn ipv6_many_lengths_in_one_16() {
    let mut t = Lookup::load(LoadOptions::default());
    // Ten lengths under 2001::/16, more than a lookup probes one by one:
    // the /16 is crowded and its keys are looked up in the trie.
    let nest = [
        "2001:8000::/17",
        "2001:8000::/20",
        "2001:8000::/24",
        "2001:8000::/32",
        "2001:8000::/40",
        "2001:8000::/48",
        "2001:8000::/56",
        "2001:8000::/64",
        "2001:8000::/96",
        "2001:8000::1/128",
    ];
    let sources = [
        ("2001:8000::1", "2001:8000::1/128"),
        ("2001:8000::2", "2001:8000::/96"),
        ("2001:8000::1:0:0", "2001:8000::/64"),
        ("2001:8000:0:1::", "2001:8000::/56"),
        ("2001:8000:0:100::", "2001:8000::/48"),
        ("2001:8000:1::", "2001:8000::/40"),
        ("2001:8000:100::", "2001:8000::/32"),
        ("2001:8001::", "2001:8000::/24"),
        ("2001:8100::", "2001:8000::/20"),
        ("2001:9000::", "2001:8000::/17"),
    ];
    t.set(&[], &nest);
    assert_eq!(t.filter.lists().crowded(), 1, "2001::/16 is crowded");
    for (src, hit) in sources {
        t.expect("crowded", src, Blocked, Some(hit));
    }
    t.expect("crowded", "2001:7fff::", Passed, None);
    // An allow entry inside the crowded /16, and a /16 key over it.
    t.allow(prefix("2001:8000::/64"));
    t.block(prefix("2001::/16"));
    t.expect(
        "crowded, allow",
        "2001:8000::1",
        Allowlisted,
        Some("2001:8000::/64"),
    );
    t.expect(
        "crowded, allow",
        "2001:8000:0:1::",
        Blocked,
        Some("2001:8000::/56"),
    );
    t.expect("crowded, /16", "2001:7fff::", Blocked, Some("2001::/16"));
    t.unallow(prefix("2001:8000::/64"));
    t.unblock(prefix("2001::/16"));
    // Down to seven lengths: the /16 is looked up in the buckets again.
    for p in ["2001:8000::/20", "2001:8000::/40", "2001:8000::/96"] {
        t.unblock(prefix(p));
    }
    assert_eq!(t.filter.lists().crowded(), 0, "2001::/16 is not crowded");
    for (src, _) in sources {
        t.check("uncrowded", addr(src), None);
    }
    // And up again.
    t.block(prefix("2001:8000::/40"));
    t.block(prefix("2001:8000::/96"));
    for (src, _) in sources {
        t.check("crowded again", addr(src), None);
    }
    t.finish("ipv6_many_lengths_in_one_16");
}

/// IPv4 /32 keys whose both buckets are one of the first two, under
/// `seed` in a table for `capacity` entries.
fn colliding_v4(seed: u64, capacity: u32, count: usize, rng: &mut Rng) -> Vec<Ipv4Addr> {
    let mask = buckets_for(capacity) - 1;
    let mut found = Vec::new();
    while found.len() < count {
        // Spread over a few /24s, so that several blocks crowd.
        let a = Ipv4Addr::new(10, 9, u8::try_from(rng.below(4)).expect("small"), 0);
        let a = Ipv4Addr::from(u32::from(a) | rng.next_u32() & 0xff);
        let (first, second) = buckets(v4_hash(v4_key(a.into(), 32), seed), mask);
        if first < 2 && second < 2 && !found.contains(&a) {
            found.push(a);
        }
    }
    found
}

#[test]
fn ipv4_keys_with_full_buckets() {
    const SEED: u64 = 0x5eed;
    const CAPACITY: u32 = 64;
    let mut t = Lookup::load(LoadOptions {
        capacity: CAPACITY,
        hash_seed: Some(SEED),
        ..LoadOptions::default()
    });
    let mut rng = Rng::new(7);
    // Two buckets of 8 slots, 24 keys: at least 8 find no room, and their
    // /24s are crowded.
    let keys = colliding_v4(SEED, CAPACITY, 24, &mut rng);
    t.block(prefix("10.9.0.0/22"));
    for (i, a) in keys.iter().enumerate() {
        let p = Prefix::host((*a).into());
        if i % 3 == 0 {
            t.allow(p);
        } else {
            t.block(p);
        }
    }
    let check_all = |t: &mut Lookup, what: &str| {
        for a in &keys {
            t.check(what, (*a).into(), None);
            let next = Ipv4Addr::from(u32::from(*a) ^ 1);
            t.check(what, next.into(), None);
        }
    };
    assert!(t.filter.lists().crowded() > 0, "some /24s are crowded");
    check_all(&mut t, "full buckets");
    // A /28 over some of them, in a crowded /24.
    let over = Prefix::truncating(keys[0].into(), 28);
    t.block(over);
    check_all(&mut t, "full buckets, /28");
    // Keys go one by one: the blocks empty and leave the trie.
    for (i, a) in keys.iter().enumerate() {
        let p = Prefix::host((*a).into());
        if i % 3 == 0 {
            t.unallow(p);
        } else {
            t.unblock(p);
        }
        t.check("emptying", (*a).into(), None);
        if i % 5 == 0 {
            check_all(&mut t, "emptying");
        }
    }
    t.unblock(over);
    assert_eq!(t.filter.lists().crowded(), 0, "no block is crowded");
    check_all(&mut t, "emptied");
    t.finish("ipv4_keys_with_full_buckets");
}

#[test]
fn ipv6_keys_with_full_buckets() {
    const SEED: u64 = 0xbeef;
    const CAPACITY: u32 = 64;
    let mut t = Lookup::load(LoadOptions {
        capacity: CAPACITY,
        hash_seed: Some(SEED),
        ..LoadOptions::default()
    });
    let mask = buckets_for(CAPACITY) - 1;
    let mut rng = Rng::new(11);
    // /64s in two /16s whose both buckets are the first two: some find no
    // room (or their fingerprint taken), and their /16s are crowded.
    let mut keys = Vec::new();
    while keys.len() < 24 {
        let top = 0x2000 + u128::from(rng.below(2));
        let hi = (top << 48) | u128::from(rng.next_u64() >> 16);
        let a = hi << 64;
        #[expect(clippy::cast_possible_truncation, reason = "the halves")]
        let hash = v6_hash((a >> 64) as u64, a as u64, 64, SEED);
        let (first, second) = buckets(hash, mask);
        if first < 2 && second < 2 {
            keys.push(Ipv6Addr::from(a));
        }
    }
    t.block(prefix("2000::/15"));
    for (i, a) in keys.iter().enumerate() {
        let p = Prefix::truncating((*a).into(), 64);
        if i % 3 == 0 {
            t.allow(p);
        } else {
            t.block(p);
        }
    }
    let check_all = |t: &mut Lookup, what: &str| {
        for a in &keys {
            t.check(what, (*a).into(), None);
            t.check(what, Ipv6Addr::from(u128::from(*a) | 0xff).into(), None);
            t.check(
                what,
                Ipv6Addr::from(u128::from(*a) ^ (1 << 64)).into(),
                None,
            );
        }
    };
    assert!(t.filter.lists().crowded() > 0, "some /16s are crowded");
    check_all(&mut t, "full buckets");
    for (i, a) in keys.iter().enumerate() {
        let p = Prefix::truncating((*a).into(), 64);
        if i % 3 == 0 {
            t.unallow(p);
        } else {
            t.unblock(p);
        }
        if i % 4 == 0 {
            check_all(&mut t, "emptying");
        }
    }
    assert_eq!(t.filter.lists().crowded(), 0, "no block is crowded");
    check_all(&mut t, "emptied");
    t.finish("ipv6_keys_with_full_buckets");
}

/// The map `name` of the loaded program, opened by its id.
fn program_map(filter: &mut Filter, name: &str) -> MapData {
    let id = filter.program_id().expect("program id");
    let program = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("the program is loaded");
    let map = program
        .map_ids()
        .expect("map ids")
        .expect("the kernel lists the program's maps")
        .into_iter()
        .find(|&m| MapInfo::from_id(m).is_ok_and(|info| info.name_as_str() == Some(name)))
        .unwrap_or_else(|| panic!("the program has a map {name}"));
    MapData::from_id(map).expect("open the map")
}

/// A /64 under `2003::/16` (its address and bucket hash) whose first bucket
/// is `bucket` and whose second is another.
fn v6_key_in(bucket: u32, mask: u32, seed: u64, rng: &mut Rng) -> (Ipv6Addr, u64) {
    loop {
        let hi = (0x2003 << 48) | (rng.next_u64() >> 16);
        let hash = v6_hash(hi, 0, 64, seed);
        let (first, second) = buckets(hash, mask);
        if first == bucket && second != bucket {
            return (Ipv6Addr::from(u128::from(hi) << 64), hash);
        }
    }
}

#[test]
fn ipv6_spilled_bit() {
    const SEED: u64 = 0x5eed;
    const CAPACITY: u32 = 64;
    const BUCKET: u32 = 5;
    let mut t = Lookup::load(LoadOptions {
        capacity: CAPACITY,
        hash_seed: Some(SEED),
        ..LoadOptions::default()
    });
    let buckets_map: Array<MapData, [u64; BUCKET_SLOTS]> = Array::try_from(Map::Array(
        program_map(&mut t.filter, map_names::V6_BUCKETS),
    ))
    .expect("V6_BUCKETS is an array");
    let mask = buckets_for(CAPACITY) - 1;
    let mut rng = Rng::new(5);
    // Eleven /64s whose first bucket is BUCKET, with distinct fingerprints:
    // nine to block, two never blocked.
    let mut keys: Vec<(Ipv6Addr, u64)> = Vec::new();
    while keys.len() < 11 {
        let key = v6_key_in(BUCKET, mask, SEED, &mut rng);
        if keys
            .iter()
            .all(|&(_, h)| fingerprint(h) != fingerprint(key.1))
        {
            keys.push(key);
        }
    }
    let never = keys.pop().expect("eleven keys");
    let p64 = |a: Ipv6Addr| Prefix::truncating(a.into(), 64);
    let slot_words = |bucket: u32| buckets_map.get(&bucket, 0).expect("read a bucket");
    let spilled = || slot_words(BUCKET)[0] & V6_SPILLED != 0;
    // Which of `keys` live in their second bucket.
    let in_second = |keys: &[(Ipv6Addr, u64)]| -> Vec<Ipv6Addr> {
        keys.iter()
            .filter(|&&(_, hash)| {
                let (_, second) = buckets(hash, mask);
                slot_words(second)
                    .iter()
                    .any(|&w| w & !V6_SPILLED != 0 && w >> 32 == u64::from(fingerprint(hash)))
            })
            .map(|&(a, _)| a)
            .collect()
    };
    let check_all = |t: &mut Lookup, what: &str, keys: &[(Ipv6Addr, u64)]| {
        for &(a, _) in keys.iter().chain([&never]) {
            t.check(what, a.into(), None);
            t.check(what, Ipv6Addr::from(u128::from(a) | 0xff).into(), None);
        }
    };

    // Six keys fill the first bucket to the threshold; none spills.
    for &(a, _) in &keys[..6] {
        t.block(p64(a));
    }
    assert!(
        in_second(&keys[..6]).is_empty(),
        "six keys fit their first bucket"
    );
    assert!(!spilled(), "no key spilled: the bit is clear");
    check_all(&mut t, "first bucket only", &keys[..6]);
    // Two more go to their second buckets: the bit is set, and they are
    // found there.
    for &(a, _) in &keys[6..8] {
        t.block(p64(a));
    }
    let second = in_second(&keys[..8]);
    assert_eq!(second.len(), 2, "two keys live in their second bucket");
    assert!(spilled(), "keys spilled: the bit is set");
    check_all(&mut t, "two keys spilled", &keys[..8]);
    // A key of the first bucket leaves: its slot is emptied, the bit stays.
    let stays = keys[..8]
        .iter()
        .find(|(a, _)| !second.contains(a))
        .map(|&(a, _)| a)
        .expect("a key in the first bucket");
    t.unblock(p64(stays));
    assert!(spilled(), "the spilled keys are still there");
    check_all(&mut t, "a first-bucket key removed", &keys[..8]);
    // A new key takes the slot freed, the first slot, which keeps the bit,
    // and is found there.
    t.block(p64(keys[8].0));
    assert!(
        in_second(&keys[8..9]).is_empty(),
        "the new key is in its first bucket"
    );
    assert!(
        slot_words(BUCKET)[0] & !V6_SPILLED != 0,
        "the new key is in the first slot"
    );
    assert!(spilled(), "the bit survives the slot's rewrite");
    check_all(&mut t, "first slot reused", &keys[..10]);
    // One spilled key leaves: the bit stays for the other.
    t.unblock(p64(second[0]));
    assert!(spilled(), "one key still spilled");
    check_all(&mut t, "one spilled key removed", &keys[..10]);
    // The last leaves: the bit is cleared, and misses end in the first
    // bucket while every key left is still found.
    t.unblock(p64(second[1]));
    let left: Vec<_> = keys[..9]
        .iter()
        .copied()
        .filter(|(a, _)| !second.contains(a) && *a != stays)
        .collect();
    assert!(
        in_second(&left).is_empty(),
        "no key left in a second bucket"
    );
    assert!(!spilled(), "no key spilled: the bit is cleared");
    check_all(&mut t, "no key spilled", &keys[..10]);
    t.finish("ipv6_spilled_bit");
}

#[test]
fn ipv6_failed_write_changes_nothing() {
    const CAPACITY: u32 = 64;
    let mut t = Lookup::load(LoadOptions {
        capacity: CAPACITY,
        ..LoadOptions::default()
    });
    // Eight lengths under 2004::/16, side by side: the /16 is crowded,
    // and its keys are in its trie.
    let keys = [
        "2004:1::/32",
        "2004:2::/40",
        "2004:3::/48",
        "2004:4::/56",
        "2004:5::/64",
        "2004:6::/80",
        "2004:7::/96",
        "2004:8::1/128",
    ];
    for p in keys {
        t.block(prefix(p));
    }
    assert_eq!(t.filter.lists().crowded(), 1, "2004::/16 is crowded");
    // The trie is filled to its last entry, with keys of a /16 no list
    // holds (the program never reads them).
    let mut trie: LpmTrie<MapData, [u8; 16], u32> = LpmTrie::try_from(Map::LpmTrie(program_map(
        &mut t.filter,
        map_names::V6_CROWDED,
    )))
    .expect("V6_CROWDED is a trie");
    let junk = |i: u32| Key::new(128, (0x2005_u128 << 112 | u128::from(i)).to_be_bytes());
    let mut filled = 0;
    while trie.insert(&junk(filled), 0, 0).is_ok() {
        filled += 1;
        assert!(filled <= CAPACITY, "the trie holds at most {CAPACITY} keys");
    }
    assert!(filled > 0, "the trie took keys before it was full");
    // A key of a new length under the crowded /16 needs a trie entry: the
    // write fails, and leaves the lists and the tables as they were.
    let failing = prefix("2004:9::/112");
    assert!(
        t.filter.block(failing).is_err(),
        "a block needing a trie entry fails while the trie is full"
    );
    assert!(
        !t.filter.lists().contains(List::Block, failing),
        "the failed block is not listed"
    );
    t.expect("after a failed write", "2004:9::1", Passed, None);
    for (src, hit) in [
        ("2004:1::1", "2004:1::/32"),
        ("2004:5::1", "2004:5::/64"),
        ("2004:8::1", "2004:8::1/128"),
    ] {
        t.expect("after a failed write", src, Blocked, Some(hit));
    }
    // With room in the trie again, the same block succeeds.
    for i in 0..filled {
        trie.remove(&junk(i)).expect("remove a junk key");
    }
    t.block(failing);
    t.expect(
        "after room is made",
        "2004:9::1",
        Blocked,
        Some("2004:9::/112"),
    );
    for p in keys {
        t.unblock(prefix(p));
    }
    assert_eq!(t.filter.lists().crowded(), 0, "2004::/16 is not crowded");
    t.expect("emptied", "2004:9::1", Blocked, Some("2004:9::/112"));
    t.expect("emptied", "2004:1::1", Passed, None);
    t.finish("ipv6_failed_write_changes_nothing");
}

/// A random prefix of the mix the tables see: hosts and networks of every
/// length, clustered so that they nest.
/// With `any_length`, IPv6 keys take any length, and so many under each of
/// their /16s that these are crowded; else a few lengths, which the
/// buckets hold.
fn random_prefix(rng: &mut Rng, v6: bool, any_length: bool) -> Prefix {
    if v6 {
        let len = match rng.below(10) {
            0..4 => 128,
            4..6 => 64,
            6 => 48,
            7 if any_length => u8::try_from(17 + rng.below(111)).expect("small"),
            7 => [32, 40, 56][usize::try_from(rng.below(3)).expect("small")],
            _ => u8::try_from(rng.below(17)).expect("small"),
        };
        // A few /16s and /32s, so that keys meet.
        let top = 0x2001_0000_u128 + u128::from(rng.below(4)) * 0x1_0001;
        let a =
            (top << 96) | (u128::from(rng.below(16)) << 80) | (u128::from(rng.next_u64()) & 0xffff);
        Prefix::truncating(IpAddr::V6(a.into()), len)
    } else {
        let len = match rng.below(10) {
            0..4 => 32,
            4..6 => 24,
            6 => u8::try_from(25 + rng.below(7)).expect("small"),
            7 => u8::try_from(13 + rng.below(11)).expect("small"),
            _ => u8::try_from(rng.below(13)).expect("small"),
        };
        let a = 0x0a00_0000
            | (u32::try_from(rng.below(4)).expect("small") << 16)
            | (u32::try_from(rng.below(8)).expect("small") << 8)
            | (rng.next_u32() & 0xff);
        Prefix::truncating(IpAddr::V4(a.into()), len)
    }
}

/// A source near the keys: inside some, outside others.
fn random_source(rng: &mut Rng, keys: &[Prefix]) -> IpAddr {
    let p = keys[usize::try_from(rng.below(keys.len() as u64)).expect("fits")];
    match p.addr() {
        IpAddr::V4(a) => {
            let host = 32 - u32::from(p.len()).max(24);
            IpAddr::V4((u32::from(a) ^ (rng.next_u32() & ((1 << host) - 1).max(1))).into())
        }
        IpAddr::V6(a) => {
            let flip = u128::from(rng.next_u64()) & 0xffff_ffff;
            IpAddr::V6((u128::from(a) ^ flip).into())
        }
    }
}

/// The bytes of the array map `name` of the loaded program, read through
/// a mapping of it (a table of 2^24 words read one syscall a word would
/// take minutes).
fn table_bytes(filter: &mut Filter, name: &str) -> Vec<u8> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = program_map(filter, name);
    let info = map.info().expect("map info");
    // Array values are laid out 8-byte aligned.
    let len = info.max_entries() as usize * (info.value_size() as usize).next_multiple_of(8);
    // SAFETY: a read-only shared mapping of a mappable array map, of its
    // size, unmapped before it is returned.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "map {name}");
        let bytes = std::slice::from_raw_parts(at.cast::<u8>(), len).to_vec();
        libc::munmap(at, len);
        bytes
    }
}

/// The keys of the trie `name` of the loaded program, with their values.
fn trie_keys<const N: usize>(filter: &mut Filter, name: &str) -> BTreeSet<(u32, [u8; N], u32)> {
    let trie: LpmTrie<MapData, [u8; N], u32> =
        LpmTrie::try_from(Map::LpmTrie(program_map(filter, name))).expect("a trie");
    trie.iter()
        .map(|entry| {
            let (key, value) = entry.expect("read the trie");
            (key.prefix_len(), key.data(), value)
        })
        .collect()
}

/// A list put in whole, as a start restores it, leaves every table the
/// same word for word as its keys added one at a time in the same order:
/// on top of allow entries in the direct tables, with blocks crowded by
/// their lengths and by keys whose buckets are full. Then both decide as
/// the reference does, and empty again.
#[test]
fn a_list_put_in_whole_is_its_keys_added_one_by_one() {
    const SEED: u64 = 0xf111_5eed;
    let options = LoadOptions {
        capacity: 2048,
        hash_seed: Some(SEED),
        ..LoadOptions::default()
    };
    let mask = buckets_for(options.capacity) - 1;
    let mut rng = Rng::new(0xf111);
    let mut keys = BTreeSet::new();
    while keys.len() < 1500 {
        let v6 = rng.below(3) == 0;
        keys.insert(random_prefix(&mut rng, v6, true));
    }
    // Keys of both families whose both buckets are the first two: those
    // past 16 find no room.
    let (mut v4, mut v6) = (0, 0);
    while v4 < 24 || v6 < 24 {
        let a = 0x0b00_0000 | (rng.next_u32() & 0x00ff_ffff);
        let (first, second) = buckets(v4_hash(v4_key(a, 32), SEED), mask);
        if v4 < 24 && first < 2 && second < 2 && keys.insert(Prefix::host(Ipv4Addr::from(a).into()))
        {
            v4 += 1;
        }
        let hi = (0x2005 << 48) | (rng.next_u64() >> 16);
        let (first, second) = buckets(v6_hash(hi, 0, 64, SEED), mask);
        let p = Prefix::truncating(Ipv6Addr::from(u128::from(hi) << 64).into(), 64);
        if v6 < 24 && first < 2 && second < 2 && keys.insert(p) {
            v6 += 1;
        }
    }
    let keys: Vec<Prefix> = keys.into_iter().collect();
    // Allow entries of the direct tables' lengths first, over some of the
    // keys: the blocklist then goes into tables that hold keys.
    let allowed = [
        "10.0.0.0/13",
        "10.2.0.0/16",
        "10.3.0.0/24",
        "8.0.0.0/8",
        "2001::/16",
    ];
    let mut whole = Lookup::load(options);
    let mut one = Lookup::load(options);
    for p in allowed {
        whole.allow(prefix(p));
        one.allow(prefix(p));
    }
    let keys: Vec<Prefix> = keys
        .into_iter()
        .filter(|p| !allowed.contains(&p.to_string().as_str()))
        .collect();
    whole.insert_sorted(List::Block, &mut keys.clone());
    for &p in &keys {
        one.block(p);
    }
    assert!(
        whole.filter.lists().crowded() >= 2,
        "blocks of both families are crowded"
    );
    for name in [
        map_names::V4_T12,
        map_names::V4_T24,
        map_names::V4_BUCKETS,
        map_names::V6_TOP,
        map_names::V6_BUCKETS,
        map_names::V6_KEYS,
    ] {
        assert!(
            table_bytes(&mut whole.filter, name) == table_bytes(&mut one.filter, name),
            "{name} differs"
        );
    }
    assert_eq!(
        trie_keys::<4>(&mut whole.filter, map_names::V4_CROWDED),
        trie_keys::<4>(&mut one.filter, map_names::V4_CROWDED)
    );
    let crowded = trie_keys::<16>(&mut whole.filter, map_names::V6_CROWDED);
    assert!(!crowded.is_empty(), "IPv6 keys are in the trie");
    assert_eq!(
        crowded,
        trie_keys::<16>(&mut one.filter, map_names::V6_CROWDED)
    );
    for _ in 0..1500 {
        let src = random_source(&mut rng, &keys);
        whole.check("put in whole", src, None);
        one.check("added one by one", src, None);
    }
    whole.finish("a list put in whole");
    one.finish("its keys added one by one");
}

/// Loads a random table of 1500 keys, checks 1500 sources near them, takes
/// half the keys away in random order and checks again (the hit counters
/// read in batches, then one by one).
/// How [`random_table`] puts its keys in.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// One at a time, allow and block entries mixed.
    OneByOne,
    /// Each list in one sorted call, the allowlist first (into empty
    /// lists, as a start restores them).
    AllowFirst,
    /// Each list in one sorted call, the blocklist first (the allowlist
    /// then goes in on top of block entries).
    BlockFirst,
    /// The allowlist in one sorted call, then the blocklist in parts of
    /// 100 in no order, as an import goes into lists that hold entries.
    InParts,
}

fn random_table(any_length: bool, seed: u64, fill: Fill) -> Lookup {
    let mut t = Lookup::load(LoadOptions {
        capacity: 4096,
        ..LoadOptions::default()
    });
    let mut rng = Rng::new(seed);
    let mut keys = Vec::new();
    while keys.len() < 1500 {
        let v6 = rng.below(3) == 0;
        let p = random_prefix(&mut rng, v6, any_length);
        if !keys.contains(&p) {
            keys.push(p);
        }
    }
    let (mut allow, mut block): (Vec<_>, Vec<_>) =
        keys.iter().enumerate().partition(|(i, _)| i % 7 == 0);
    let mut allow: Vec<Prefix> = allow.drain(..).map(|(_, &p)| p).collect();
    let mut block: Vec<Prefix> = block.drain(..).map(|(_, &p)| p).collect();
    match fill {
        Fill::OneByOne => {
            for (i, &p) in keys.iter().enumerate() {
                if i % 7 == 0 {
                    t.allow(p);
                } else {
                    t.block(p);
                }
            }
        }
        Fill::AllowFirst => {
            t.insert_sorted(List::Allow, &mut allow);
            t.insert_sorted(List::Block, &mut block);
        }
        Fill::BlockFirst => {
            t.insert_sorted(List::Block, &mut block);
            t.insert_sorted(List::Allow, &mut allow);
        }
        Fill::InParts => {
            t.insert_sorted(List::Allow, &mut allow);
            for part in block.chunks(100) {
                let added = t
                    .filter
                    .lists()
                    .insert_many(List::Block, part)
                    .expect("insert_many");
                assert_eq!(added, part.len());
                t.block.extend_from_slice(part);
            }
        }
    }
    assert_eq!(
        t.filter.lists().crowded() > 0,
        any_length,
        "crowded blocks with IPv6 keys of any length, and only then"
    );
    for _ in 0..1500 {
        let src = random_source(&mut rng, &keys);
        t.check("random table", src, None);
    }
    // The hit counters, read in batches so far, read the same one entry at
    // a time (as on a kernel without batched reads, Linux before 5.6),
    // which the checks from here on use.
    let batched = t.hits();
    assert!(
        batched.values().filter(|&&h| h > 0).count() > 50,
        "few hits"
    );
    t.filter.lists_ref().read_hits_one_by_one();
    assert_eq!(t.hits(), batched);
    // Half of the keys go, in random order; the rest must still decide.
    let mut gone = 0;
    for &p in &keys {
        if rng.below(2) == 0 {
            if t.allow.contains(&p) {
                t.unallow(p);
            } else {
                t.unblock(p);
            }
            gone += 1;
        }
    }
    assert!(gone > 500, "half the keys removed");
    for _ in 0..1500 {
        let src = random_source(&mut rng, &keys);
        t.check("half removed", src, None);
    }
    t
}

#[test]
fn random_tables_match_the_reference() {
    random_table(false, 0x10c0_c0de, Fill::OneByOne).finish("random_tables_match_the_reference");
}

#[test]
fn random_crowded_tables_match_the_reference() {
    random_table(true, 0xc0de_10c0, Fill::OneByOne)
        .finish("random_crowded_tables_match_the_reference");
}

/// Each list put in with one call, as a start restores them (into empty
/// lists, in order, which records the entries in one pass), in either
/// order, or the blocklist in parts in no order on top of the allowlist:
/// the same verdicts and hits as the reference's.
#[test]
fn random_tables_put_in_whole_match_the_reference() {
    random_table(true, 0xb10c_f11e, Fill::AllowFirst).finish("allow first, crowded");
    random_table(false, 0x5eed_0b11, Fill::BlockFirst).finish("block first");
    random_table(true, 0x9a27_5eed, Fill::InParts).finish("in parts, crowded");
}

/// A hit counter handed to a new entry starts from 0, and the counters
/// that share its per-CPU value with it (`HIT_LANES` slots to a value) keep
/// theirs, read in batches or one by one.
#[test]
fn a_slot_handed_out_again_starts_from_zero_and_its_neighbours_keep_counting() {
    require_root();
    let mut filter = Filter::load(LoadOptions::default()).expect("load the XDP program");
    let (a, b, c) = (addr("198.18.1.1"), addr("198.18.1.2"), addr("198.18.1.3"));
    let hosts = |ip: IpAddr| Prefix::truncating(ip, 32);
    let hit = |filter: &mut Filter, ip: IpAddr, times: u32| {
        let (action, _) = filter.test_run(&frame(ip), times).expect("test run");
        assert_eq!(action, reference::action(Blocked), "{ip}");
    };
    let hits = |filter: &Filter| -> BTreeMap<Prefix, u64> {
        filter
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| (e.prefix, e.hits))
            .collect()
    };
    assert!(filter.block(hosts(a)).expect("block a"));
    assert!(filter.block(hosts(b)).expect("block b"));
    hit(&mut filter, a, 3);
    hit(&mut filter, b, 2);
    assert_eq!(
        hits(&filter),
        BTreeMap::from([(hosts(a), 3), (hosts(b), 2)])
    );

    // `c` takes `a`'s slot: none of `a`'s hits show on it.
    assert!(filter.unblock(hosts(a)).expect("unblock a"));
    assert!(filter.block(hosts(c)).expect("block c"));
    assert_eq!(
        hits(&filter),
        BTreeMap::from([(hosts(b), 2), (hosts(c), 0)])
    );
    hit(&mut filter, c, 1);
    hit(&mut filter, b, 4);
    let expected = BTreeMap::from([(hosts(b), 6), (hosts(c), 1)]);
    assert_eq!(hits(&filter), expected);
    assert_eq!(
        filter
            .lists_ref()
            .hits_of(List::Block, hosts(c))
            .expect("hits"),
        Some(1)
    );
    filter.lists_ref().read_hits_one_by_one();
    assert_eq!(hits(&filter), expected);
}

/// The lists of a state that differs from `t`'s tables: a fifth of the
/// block entries gone (`outer`'s kept) and the second key of each of
/// `pairs`, new entries of every length, and allow entries over some of
/// the block entries. Returns the lists and the entries gone.
fn a_state_apart(
    t: &Lookup,
    rng: &mut Rng,
    outer: [&str; 2],
    pairs: [(&str, &str); 2],
) -> (Vec<Prefix>, Vec<Prefix>, Vec<Prefix>) {
    // The state: a fifth of the block entries gone, new entries of every
    // length, and allow entries over some of the block entries.
    let mut allow: BTreeSet<Prefix> = t.allow.iter().copied().collect();
    let mut block: BTreeSet<Prefix> = t.block.iter().copied().collect();
    let mut gone: Vec<Prefix> = t.block.iter().copied().step_by(5).collect();
    gone.retain(|p| !outer.contains(&p.to_string().as_str()));
    for p in &gone {
        block.remove(p);
    }
    for (_, dropped) in pairs {
        allow.remove(&prefix(dropped));
        gone.push(prefix(dropped));
    }
    while block.len() < t.block.len() + 200 {
        let v6 = rng.below(3) == 0;
        let p = random_prefix(rng, v6, true);
        if !allow.contains(&p) {
            block.insert(p);
        }
    }
    for p in t.block.iter().skip(2).step_by(11).take(40) {
        allow.insert(*p);
        let wider = Prefix::truncating(p.addr(), p.len().saturating_sub(4));
        if !block.contains(&wider) {
            allow.insert(wider);
        }
    }
    let (allow, block): (Vec<Prefix>, Vec<Prefix>) =
        (allow.into_iter().collect(), block.into_iter().collect());
    (allow, block, gone)
}

/// A second filter adopts the first's running program, as a restart does,
/// with lists that differ from what its tables hold: the entries the state
/// lacks (a removal journaled and not yet applied) leave the tables, those
/// the tables lack (an add journaled and not yet written) join them, allow
/// entries added over block entries rewrite their verdicts, and every
/// other key keeps its place. The tables were written by a history of
/// single changes with crowded blocks: placements no fill from the state
/// would give. The adopted program then decides and counts hits as the
/// reference does, takes further changes, and empties. A program built
/// with other options is refused, changing nothing.
#[test]
fn a_running_program_is_adopted_and_brought_in_line_with_the_state() {
    let options = LoadOptions {
        capacity: 4096,
        ..LoadOptions::default()
    };
    let mut t = random_table(true, 0xad09_7ed0, Fill::OneByOne);
    let mut rng = Rng::new(0xad09);
    // Pairs of allow keys that share their block and length, inside block
    // entries: the state keeps the first of each, so the second's length
    // stays listed for its block, and a frame that still found it would
    // pass where it must be dropped.
    let pairs = [
        ("198.51.100.7/32", "198.51.100.9/32"),
        ("2c0f:db8:1::/48", "2c0f:db8:2::/48"),
    ];
    let outer = ["198.51.0.0/16", "2c0f::/16"];
    for p in outer {
        t.block(prefix(p));
    }
    for (kept, dropped) in pairs {
        t.allow(prefix(kept));
        t.allow(prefix(dropped));
    }
    let held: Vec<Prefix> = t.allow.iter().chain(&t.block).copied().collect();
    let (allow, block, gone) = a_state_apart(&t, &mut rng, outer, pairs);
    let id = t.filter.program_id().expect("program id");

    // Control: a program built with other options is not adopted, and is
    // left as it was.
    let other = LoadOptions {
        capacity: 2048,
        ..options
    };
    let refused = Filter::adopt(id, other, &allow, &block)
        .err()
        .expect("refused");
    assert!(
        spacefilter::error_chain(&refused).contains("with other options"),
        "{}",
        spacefilter::error_chain(&refused)
    );
    for _ in 0..300 {
        let src = random_source(&mut rng, &held);
        t.check("after a refused adoption", src, None);
    }

    let (mut adopted, found) = Filter::adopt(id, options, &allow, &block).expect("adopt");
    println!("adopted: {found:?}");
    assert!(found.stale >= gone.len() / 2, "{found:?}");
    assert!(found.missing >= 100, "{found:?}");
    assert!(found.held > 500, "{found:?}");
    assert!(found.rewritten > 0, "{found:?}");
    assert_eq!(
        adopted.program_id().ok(),
        Some(id),
        "the running program, not another"
    );
    drop(std::mem::replace(&mut t.filter, adopted));
    (t.allow, t.block) = (allow, block);
    let near: Vec<Prefix> = held
        .iter()
        .chain(&t.allow)
        .chain(&t.block)
        .copied()
        .collect();
    for (kept, dropped) in pairs {
        t.check("adopted: a kept key", prefix(kept).addr(), None);
        t.check("adopted: a stale key", prefix(dropped).addr(), None);
    }
    for _ in 0..2000 {
        let src = random_source(&mut rng, &near);
        t.check("adopted", src, None);
    }
    // Changes after the adoption: half the entries go, new ones come.
    for p in t.block.clone().into_iter().step_by(2) {
        t.unblock(p);
    }
    for p in t.allow.clone().into_iter().step_by(3) {
        t.unallow(p);
    }
    let mut added = 0;
    while added < 200 {
        let v6 = rng.below(3) == 0;
        let p = random_prefix(&mut rng, v6, true);
        if !t.block.contains(&p) && !t.allow.contains(&p) {
            t.block(p);
            added += 1;
        }
    }
    for _ in 0..2000 {
        let src = random_source(&mut rng, &near);
        t.check("changed after the adoption", src, None);
    }
    t.finish("a running program adopted");
}
