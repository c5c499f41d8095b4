//! The snapshot's format: what is written reads back the same, and
//! damage anywhere in it is found, never read as rules.

use std::path::PathBuf;

use super::*;
use crate::store::records::Rule;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-snapshot-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rules of every list and family, with metas shared and not, comments
/// and expiries or none; settings set.
fn sample() -> (Rules, Settings) {
    let meta = |origin, comment: Option<&str>, expires_at_ms, added_at_ms| Meta {
        origin,
        comment: comment.map(str::to_owned),
        expires_at_ms,
        added_at_ms,
    };
    let shared = meta(Origin::File, Some("imported: feed ✓"), None, 5);
    let mut rules = Rules::new();
    for i in 0..3000_u32 {
        let prefix = if i % 2 == 0 {
            format!("{}.{}.{}.0/24", 10 + i / 65536, (i / 256) % 256, i % 256)
        } else {
            format!("2001:db8:{i:x}::/48")
        };
        rules.insert((List::Block, prefix.parse().unwrap()), shared.clone());
    }
    let each = [
        (
            List::Allow,
            "192.0.2.1",
            meta(Origin::Manual, None, None, 1),
        ),
        (
            List::Allow,
            "2001:db8::1",
            meta(Origin::Config, Some(""), None, 2),
        ),
        (
            List::Auto,
            "198.51.100.7",
            meta(Origin::Auto, Some("over its rate"), Some(99), 3),
        ),
        (
            List::Block,
            "0.0.0.0/0",
            meta(Origin::Fleet, None, Some(u64::MAX), 4),
        ),
        (
            List::Block,
            "::/0",
            meta(Origin::Crowdsec, Some("ban"), Some(7), u64::MAX),
        ),
    ];
    for (list, prefix, meta) in each {
        rules.insert((list, prefix.parse().unwrap()), meta);
    }
    let settings = Settings {
        limits: Some(Guards {
            enabled: true,
            pps: 100,
            ..Guards::default()
        }),
        ..Settings::default()
    };
    (rules, settings)
}

fn rule_list(rules: &Rules) -> Vec<Rule> {
    rules
        .iter()
        .map(|(&(list, prefix), meta)| Rule {
            list,
            prefix,
            meta: meta.clone(),
        })
        .collect()
}

#[test]
fn what_is_written_reads_back_the_same() {
    let dir = dir("roundtrip");
    let (rules, settings) = sample();
    write(&dir, "rules.bin", (&rules, &settings, 7)).unwrap();
    let (read_rules, read_settings, folded) = read(&dir.join("rules.bin")).unwrap();
    assert_eq!(rule_list(&read_rules), rule_list(&rules));
    assert_eq!(read_rules.count(List::Block), rules.count(List::Block));
    assert_eq!(read_settings, settings);
    assert_eq!(folded, 7);
    // No temporary file left.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["rules.bin"]);
    // Nothing at all: no rules, no settings.
    write(&dir, "empty.bin", (&Rules::new(), &Settings::default(), 0)).unwrap();
    let (none, no_settings, zero) = read(&dir.join("empty.bin")).unwrap();
    assert!(none.is_empty());
    assert_eq!((no_settings, zero), (Settings::default(), 0));
    // No file: nothing yet.
    let (none, _, _) = read(&dir.join("absent.bin")).unwrap();
    assert!(none.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

/// Every byte flipped, and the file cut at every length, is refused as
/// damaged (the checksum, or the structure before it): never read as
/// other rules, never a panic.
#[test]
fn damage_anywhere_is_found() {
    let dir = dir("damage");
    let mut rules = Rules::new();
    for (list, prefix, comment) in [
        (List::Block, "198.18.0.0/15", Some("a")),
        (List::Allow, "2001:db8::/32", None),
    ] {
        rules.insert(
            (list, prefix.parse().unwrap()),
            Meta {
                origin: Origin::Manual,
                comment: comment.map(str::to_owned),
                expires_at_ms: Some(9),
                added_at_ms: 1,
            },
        );
    }
    write(&dir, "rules.bin", (&rules, &Settings::default(), 3)).unwrap();
    let good = fs::read(dir.join("rules.bin")).unwrap();
    // The control: the file as written reads.
    assert_eq!(read(&dir.join("rules.bin")).unwrap().0.len(), 2);
    let path = dir.join("damaged.bin");
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        match read(&path) {
            Err(StateError::Corrupt { .. }) => {}
            // The version's bytes: another version, refused as such.
            Err(StateError::Version { found, .. }) if (16..20).contains(&at) => {
                assert_ne!(found, FORMAT_VERSION);
            }
            other => panic!("byte {at} flipped: {:?}", other.map(|r| r.0.len())),
        }
    }
    for len in 0..good.len() {
        fs::write(&path, &good[..len]).unwrap();
        assert!(
            matches!(read(&path), Err(StateError::Corrupt { .. })),
            "cut at {len}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
    // A JSON snapshot under the new name is not one.
    fs::write(&path, br#"{"version":1,"rules":[]}"#).unwrap();
    assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

/// A length that damage made huge is refused before anything is
/// allocated for it.
#[test]
fn a_damaged_length_allocates_nothing() {
    let dir = dir("length");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&0_u64.to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let path = dir.join("rules.bin");
    fs::write(&path, &bytes).unwrap();
    match read(&path) {
        Err(StateError::Corrupt { message, .. }) => {
            assert!(
                message.contains("settings of 4294967295 bytes"),
                "{message}"
            );
        }
        other => panic!("{:?}", other.map(|r| r.0.len())),
    }
    fs::remove_dir_all(&dir).unwrap();
}
