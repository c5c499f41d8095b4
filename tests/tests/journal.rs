//! The state directory on a full disk: a tmpfs of a few dozen KiB, filled
//! by the store's own appends. A change that could not be written is
//! reported as failed and never comes back; every acknowledged change
//! does; a fold into a snapshot that cannot be written fails alone and
//! leaves nothing behind; the store opens again, full disk or not.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use spacefilter::{
    List, Prefix,
    store::{Meta, Op, Origin, Rule, Rules, StateError, Store},
};
use spacefilter_tests::require_root;

/// A tmpfs of `size` mounted at a fresh directory; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sf-full-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("running mount");
        assert!(status.success(), "resizing the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A change blocking 64 addresses from `first` on: a record of a few KiB.
fn batch(first: u32) -> Op {
    Op::Put {
        rules: (first..first + 64)
            .map(|n| Rule {
                list: List::Block,
                prefix: Prefix::host(Ipv4Addr::from(0xc612_0000 + n).into()),
                meta: Meta {
                    origin: Origin::Manual,
                    comment: Some("a comment long enough to fill the disk sooner".into()),
                    expires_at_ms: None,
                    added_at_ms: 1,
                },
            })
            .collect(),
    }
}

/// Appends batches until `failures` appends have failed; returns the
/// rules after every acknowledged one.
fn fill(store: &mut Store, mut rules: Rules, first: &mut u32, failures: u32) -> Rules {
    let mut failed = 0;
    while failed < failures {
        let op = batch(*first);
        *first += 64;
        let mut after = rules.clone();
        op.apply(&mut after);
        match store.append(&op, &after) {
            Ok(_) => rules = after,
            Err(StateError::Io { .. }) => failed += 1,
            Err(other) => panic!("an append failed otherwise: {other}"),
        }
        assert!(*first < 64 * 100_000, "the disk never filled");
    }
    assert!(store.poisoned().is_none(), "{:?}", store.poisoned());
    rules
}

#[test]
fn a_full_disk_loses_no_acknowledged_change_and_keeps_no_failed_one() {
    require_root();
    let disk = Tmpfs::new("96k");
    let dir = disk.path().join("state");
    let mut next = 0;
    let expected = {
        let (mut store, rules) = Store::open(&dir).expect("opening the store");
        let mut rules = fill(&mut store, rules, &mut next, 3);
        assert!(rules.len() >= 64, "nothing fitted: {}", rules.len());
        // With room again, the next change lands on a clean journal, not
        // glued onto what a failed one left.
        disk.resize("4m");
        let op = batch(1_000_000);
        op.apply(&mut rules);
        store.append(&op, &rules).expect("an append with room");
        rules
    };
    // Exactly the acknowledged changes, and nothing damaged.
    let (mut store, rules) = Store::open(&dir).expect("opening again");
    assert_eq!(rules, expected);
    let damaged: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("damaged"))
        .collect();
    assert!(damaged.is_empty(), "{damaged:?}");
    // Full again: the store still opens (its fold into a snapshot fails
    // and is left for later, with no half-written file) with exactly the
    // acknowledged changes, twice over.
    disk.resize("384k");
    let expected = fill(&mut store, rules, &mut next, 2);
    drop(store);
    for _ in 0..2 {
        let (store, rules) = Store::open(&dir).expect("opening on a full disk");
        assert_eq!(rules, expected);
        drop(store);
        let names = names(&dir);
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("journal.") && n != "journal.jsonl"),
            "the fold was expected to fail on the full disk, leaving a segment: {names:?}"
        );
    }
    // With room, the next open folds every segment away.
    disk.resize("4m");
    let (store, rules) = Store::open(&dir).expect("opening with room");
    assert_eq!(rules, expected);
    drop(store);
    let names = names(&dir);
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("journal.") && n != "journal.jsonl"),
        "{names:?}"
    );
    let (_store, rules) = Store::open(&dir).expect("opening after the fold");
    assert_eq!(rules, expected);
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
