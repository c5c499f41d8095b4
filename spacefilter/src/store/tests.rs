//! The store's tests: reopening, damage on disk, the first format, and
//! folding the journal in segments.

use super::*;
use crate::net::List;

fn rule(list: List, prefix: &str, expires_at_ms: Option<u64>) -> Rule {
    Rule {
        list,
        prefix: prefix.parse().unwrap(),
        meta: Meta {
            origin: Origin::Manual,
            comment: Some("c".into()),
            expires_at_ms,
            added_at_ms: 1,
        },
    }
}

#[test]
fn survives_reopen_and_torn_journal() {
    let dir = std::env::temp_dir().join(format!("sf-state-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    {
        let (mut store, mut rules) = Store::open(&dir).unwrap();
        assert!(rules.is_empty());
        let put = Op::Put {
            rules: vec![
                rule(List::Block, "198.18.0.0/24", Some(99)),
                rule(List::Allow, "2001:2::1", None),
            ],
        };
        put.apply(&mut rules);
        store.append(&put, &rules).unwrap();
        let del = Op::Delete {
            list: List::Allow,
            prefixes: vec!["2001:2::1".parse().unwrap()],
        };
        del.apply(&mut rules);
        store.append(&del, &rules).unwrap();
        // A second daemon on the same directory is refused.
        assert!(matches!(Store::open(&dir), Err(StateError::Locked { .. })));
    }
    // A torn record at the end, as a crash would leave it.
    let mut journal = OpenOptions::new()
        .append(true)
        .open(dir.join(JOURNAL))
        .unwrap();
    journal.write_all(b"{\"op\":\"put\",\"rul").unwrap();
    drop(journal);
    let (store, rules) = Store::open(&dir).unwrap();
    assert_eq!(rules.len(), 1);
    let meta = &rules[&(List::Block, "198.18.0.0/24".parse().unwrap())];
    assert_eq!(meta.expires_at_ms, Some(99));
    // The fold under way ends with the store.
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

/// A damaged record in the middle of the journal (bit rot, or a
/// record glued onto a torn one by an older version) is skipped and the
/// good ones around it applied; a snapshot that does not read is set
/// aside and the journal applied alone. The daemon starts either way.
#[test]
fn damage_on_disk_never_stops_a_start() {
    let dir = std::env::temp_dir().join(format!("sf-state-dmg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let put = |prefix: &str| Op::Put {
        rules: vec![rule(List::Block, prefix, None)],
    };
    let mut journal = Vec::new();
    journal.extend(journal::record(&put("198.18.0.1")));
    let mut damaged = journal::record(&put("198.18.0.2"));
    damaged[12] ^= 0x20;
    journal.extend(damaged);
    journal.extend(b"{\"op\":\"put\",\"rul".iter());
    journal.extend(journal::record(&put("198.18.0.3")));
    journal.extend(b"0000".iter());
    fs::write(dir.join(JOURNAL), &journal).unwrap();
    fs::write(dir.join(JSON_SNAPSHOT), b"{\"version\":1,\"rules\":[{\"li").unwrap();
    {
        let (mut store, mut rules) = Store::open(&dir).unwrap();
        let blocked: Vec<String> = rules.keys().map(|(_, p)| p.to_string()).collect();
        assert_eq!(blocked, ["198.18.0.1/32", "198.18.0.3/32"]);
        // The damaged files are kept aside for whoever looks into it.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("rules.json.damaged-")),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("journal.jsonl.damaged-")),
            "{names:?}"
        );
        let more = put("198.18.0.4");
        more.apply(&mut rules);
        store.append(&more, &rules).unwrap();
    }
    let (store, rules) = Store::open(&dir).unwrap();
    assert_eq!(rules.len(), 3);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

/// A state directory written before the store had records of its own
/// (settings as the protocol carried them, header rules with their
/// hits, a journal line setting limits without the later fields, the
/// snapshot in JSON) opens with everything in it, and is written back in
/// this format.
#[test]
fn reads_the_first_format() {
    let dir = std::env::temp_dir().join(format!("sf-state-v1-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(JSON_SNAPSHOT),
        r#"{"version":1,"rules":[{"list":"auto","prefix":"198.18.0.9/32","origin":"auto","comment":"over its rate limit","expires_at_ms":5,"added_at_ms":1}],"limits":{"enabled":true,"dry_run":false,"pps":100,"pps_burst":100,"bps":0,"bps_burst":0,"v6_prefix_len":56,"block_after_ms":0,"block_ttl_ms":0,"syn_pps":0,"syn_burst":0,"syn_global_pps":0,"syn_global_burst":0,"spoof_threshold":0,"fallback_pps":0,"fallback_burst":0,"reflect":false,"reflect_sources":[53],"service_ports":[[0,1023]]},"header_rules":[{"id":3,"action":"limit","proto":17,"dst_ports":[53,53],"src_ports":null,"tcp_flags":null,"length":null,"pps":10,"burst":10,"dry_run":false,"comment":"dns","hits":42}]}"#,
    )
    .unwrap();
    fs::write(
        dir.join(JOURNAL),
        "{\"op\":\"limits\",\"limits\":{\"enabled\":true,\"pps\":7,\"pps_burst\":7}}\n",
    )
    .unwrap();
    {
        let (store, rules) = Store::open(&dir).unwrap();
        let meta = &rules[&(List::Auto, "198.18.0.9".parse().unwrap())];
        assert_eq!(meta.origin, Origin::Auto);
        let limits = store.limits().unwrap();
        assert_eq!((limits.pps, limits.v6_prefix_len), (7, None));
        assert_eq!((limits.reflect, limits.reflect_sources), (None, None));
        let header = &store.header_rules()[0];
        assert_eq!(
            (header.id, header.action, header.dst_ports, header.pps),
            (3, Some(Action::Limit), Some((53, 53)), 10)
        );
    }
    // The compaction at open wrote the snapshot anew, in this format, with
    // the journal's limits; the JSON one is gone, and everything reads
    // back the same.
    let on_disk = names(&dir);
    assert!(on_disk.contains(&SNAPSHOT.to_owned()), "{on_disk:?}");
    assert!(!on_disk.contains(&JSON_SNAPSHOT.to_owned()), "{on_disk:?}");
    let (store, rules) = Store::open(&dir).unwrap();
    let meta = &rules[&(List::Auto, "198.18.0.9".parse().unwrap())];
    assert_eq!(
        (meta.origin, meta.comment.as_deref(), meta.expires_at_ms),
        (Origin::Auto, Some("over its rate limit"), Some(5))
    );
    assert_eq!(store.limits().unwrap().pps, 7);
    assert_eq!(store.header_rules()[0].comment.as_deref(), Some("dns"));
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-state-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Past the size limit the journal is retired and folded in the
/// background; changes made meanwhile go to the new live journal, and a
/// reopen sees every change exactly once, in order.
#[test]
fn the_journal_folds_in_the_background() {
    let dir = fresh_dir("fold");
    let (mut store, mut rules) = Store::open(&dir).unwrap();
    let mut last = 0;
    for i in 0..COMPACT_AFTER_OPS + 10 {
        let prefix = format!("198.18.{}.{}", i / 256, i % 256);
        let put = Op::Put {
            rules: vec![rule(List::Block, &prefix, None)],
        };
        put.apply(&mut rules);
        last = store.append(&put, &rules).unwrap();
        // Every other one is taken off again: a replay of a folded
        // segment after the snapshot would bring them back.
        if i % 2 == 1 {
            let del = Op::Delete {
                list: List::Block,
                prefixes: vec![prefix.parse().unwrap()],
            };
            del.apply(&mut rules);
            last = store.append(&del, &rules).unwrap();
        }
    }
    // Every record is durable once the flusher says so.
    store.durable().wait(last).unwrap();
    assert!(store.folding.is_some(), "no fold was started");
    let expected = rules.clone();
    drop(store);
    // The fold ended with the store: a snapshot that folds segment 1, and
    // the segment gone.
    let on_disk = names(&dir);
    assert!(on_disk.contains(&"rules.bin".to_owned()), "{on_disk:?}");
    assert!(
        !on_disk.iter().any(|n| n.starts_with("journal.1")),
        "{on_disk:?}"
    );
    let (store, reopened) = Store::open(&dir).unwrap();
    assert_eq!(reopened, expected);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

/// A crash in the middle of a fold leaves the old snapshot and a retired
/// segment (replayed, then the live journal); or the new snapshot and the
/// segment it already holds (skipped and deleted: replaying it after the
/// snapshot would bring back what was removed later).
#[test]
fn a_fold_cut_short_by_a_crash_loses_and_revives_nothing() {
    let block = |p: &str| Op::Put {
        rules: vec![rule(List::Block, p, None)],
    };
    let unblock = |p: &str| Op::Delete {
        list: List::Block,
        prefixes: vec![p.parse().unwrap()],
    };
    let records = |ops: &[Op]| ops.iter().flat_map(journal::record).collect::<Vec<u8>>();

    // The old snapshot (folds nothing), segment 1 not yet folded.
    let dir = fresh_dir("fold-before");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(compaction::segment_name(1)),
        records(&[block("198.18.0.1"), block("198.18.0.2")]),
    )
    .unwrap();
    fs::write(dir.join(JOURNAL), records(&[unblock("198.18.0.1")])).unwrap();
    let (store, rules) = Store::open(&dir).unwrap();
    let blocked: Vec<String> = rules.keys().map(|(_, p)| p.to_string()).collect();
    assert_eq!(blocked, ["198.18.0.2/32"]);
    drop(store);
    // Folded at the open: one snapshot, no segments, the same rules.
    assert!(
        !names(&dir).iter().any(|n| n.starts_with("journal.1")),
        "{:?}",
        names(&dir)
    );
    let (store, again) = Store::open(&dir).unwrap();
    assert_eq!(again, rules);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();

    // The new snapshot (folds segment 1, which removed .1 after adding
    // it), and segment 1 still there.
    let dir = fresh_dir("fold-after");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(JSON_SNAPSHOT),
        r#"{"version":1,"folded":1,"rules":[{"list":"block","prefix":"198.18.0.2/32","origin":"manual","comment":null,"expires_at_ms":null,"added_at_ms":1}]}"#,
    )
    .unwrap();
    fs::write(
        dir.join(compaction::segment_name(1)),
        records(&[
            block("198.18.0.1"),
            block("198.18.0.2"),
            unblock("198.18.0.1"),
        ]),
    )
    .unwrap();
    fs::write(dir.join(JOURNAL), records(&[block("198.18.0.3")])).unwrap();
    fs::write(dir.join(JOURNAL_NEXT), b"").unwrap();
    let (store, rules) = Store::open(&dir).unwrap();
    let blocked: Vec<String> = rules.keys().map(|(_, p)| p.to_string()).collect();
    assert_eq!(blocked, ["198.18.0.2/32", "198.18.0.3/32"]);
    // The open retired the live journal as segment 2, past the one the
    // snapshot folds, to fold it in turn.
    assert_eq!(store.next_segment, 3);
    drop(store);
    let on_disk = names(&dir);
    assert!(
        !on_disk.contains(&compaction::segment_name(1)),
        "{on_disk:?}"
    );
    assert!(!on_disk.contains(&JOURNAL_NEXT.to_owned()), "{on_disk:?}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A damaged snapshot in this format is set aside, as a JSON one is, and
/// the daemon starts from the journal; a JSON snapshot left beside a good
/// one (a crash before the fold removed it) is not read.
#[test]
fn a_damaged_snapshot_never_stops_a_start() {
    let dir = fresh_dir("damaged-bin");
    {
        let (mut store, mut rules) = Store::open(&dir).unwrap();
        let put = Op::Put {
            rules: vec![rule(List::Block, "198.18.0.1", None)],
        };
        put.apply(&mut rules);
        store.append(&put, &rules).unwrap();
        store.fold(&rules);
    }
    fs::write(
        dir.join(JSON_SNAPSHOT),
        r#"{"version":1,"rules":[{"list":"block","prefix":"198.18.0.66/32","origin":"manual","added_at_ms":1}]}"#,
    )
    .unwrap();
    {
        let (_store, rules) = Store::open(&dir).unwrap();
        let blocked: Vec<String> = rules.keys().map(|(_, p)| p.to_string()).collect();
        assert_eq!(blocked, ["198.18.0.1/32"]);
    }
    assert!(!names(&dir).contains(&JSON_SNAPSHOT.to_owned()));
    let mut bytes = fs::read(dir.join(SNAPSHOT)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(dir.join(SNAPSHOT), &bytes).unwrap();
    let (store, mut rules) = Store::open(&dir).unwrap();
    assert!(
        names(&dir)
            .iter()
            .any(|n| n.starts_with("rules.bin.damaged-")),
        "{:?}",
        names(&dir)
    );
    // The snapshot's rules are lost with it; the store takes changes.
    assert!(rules.is_empty());
    let mut store = store;
    let put = Op::Put {
        rules: vec![rule(List::Block, "198.18.0.2", None)],
    };
    put.apply(&mut rules);
    store.append(&put, &rules).unwrap();
    drop(store);
    let (store, rules) = Store::open(&dir).unwrap();
    assert_eq!(rules.len(), 1);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}
