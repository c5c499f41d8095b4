//! The daemon's rules on disk: the source of truth that the maps are
//! reconciled to on start.
//!
//! A state directory holds
//! - `rules.json`: a snapshot of every rule, replaced atomically (write a
//!   temporary file, fsync it, rename it over the old one, fsync the
//!   directory);
//! - `journal.jsonl`: the changes since the snapshot, one JSON line each,
//!   appended and fsynced before the daemon answers the client;
//! - `lock`: held (flock) by the daemon that owns the directory.
//!
//! On open, the snapshot is loaded, the journal replayed, and both folded
//! into a new snapshot. A last journal line cut short by a crash is
//! ignored: its change was never acknowledged.
//!
//! What is stored is in [`records`], types of the store's own.

mod journal;
pub mod records;
mod snapshot;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::fcntl::{Flock, FlockArg};

use self::records::Snapshot;
pub use self::records::{
    Action, Admission, Guards, HeaderRule, Meta, Op, Origin, Rule, Rules, Settings, Shield,
    ShieldAuto,
};

const SNAPSHOT: &str = "rules.json";
const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
/// The snapshot's format; journal records carry none, and are read by
/// the same version that wrote the snapshot they follow.
pub(super) const FORMAT_VERSION: u32 = 1;
/// Fold the journal into the snapshot once it holds this many changes.
const COMPACT_AFTER_OPS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {path} is in use by another spacefilter daemon (its lock is held); stop it or pick another --state-dir"
    )]
    Locked { path: PathBuf },
    #[error("{path}: {action} failed")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}, line {line}: not a valid record ({message}); the state is damaged: move the file aside to start without it"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} has format version {found}; this spacefilter reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

pub(super) fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        path,
        action,
        source,
    }
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The open state directory.
pub struct Store {
    dir: PathBuf,
    journal: File,
    journal_ops: usize,
    /// The settings last set, kept here since they are no rules.
    settings: Settings,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the state directory, takes its lock, and
    /// returns the rules it holds.
    pub fn open(dir: &Path) -> Result<(Store, Rules), StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join(LOCK);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening the lock"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StateError::Locked {
                path: dir.to_path_buf(),
            }
        })?;

        let (mut rules, mut settings) = snapshot::read(&dir.join(SNAPSHOT))?;
        let journal_path = dir.join(JOURNAL);
        journal::replay(&journal_path, &mut rules, &mut settings)?;

        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_err(&journal_path, "opening"))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            journal_ops: 0,
            settings,
            _lock: lock,
        };
        store.compact(&rules)?;
        Ok((store, rules))
    }

    /// The rate limit last set.
    #[must_use]
    pub fn limits(&self) -> Option<Guards> {
        self.settings.limits.clone()
    }

    /// The rules on headers last set.
    #[must_use]
    pub fn header_rules(&self) -> Vec<HeaderRule> {
        self.settings.header_rules.clone()
    }

    /// The shield last set.
    #[must_use]
    pub fn shield(&self) -> Option<Shield> {
        self.settings.shield.clone()
    }

    /// The sources admitted, with when each admission ends.
    #[must_use]
    pub fn admitted(&self) -> Vec<Admission> {
        self.settings.admitted.clone()
    }

    /// Appends `op` to the journal and makes it durable.
    pub fn append(&mut self, op: &Op, rules: &Rules) -> Result<(), StateError> {
        let path = self.dir.join(JOURNAL);
        let mut line = serde_json::to_vec(op).expect("ops always serialize");
        line.push(b'\n');
        self.journal
            .write_all(&line)
            .map_err(io_err(&path, "appending"))?;
        self.journal.sync_data().map_err(io_err(&path, "fsync"))?;
        self.journal_ops += 1;
        self.settings.apply(op);
        if self.journal_ops >= COMPACT_AFTER_OPS {
            self.compact(rules)?;
        }
        Ok(())
    }

    /// Writes every rule to a new snapshot and empties the journal.
    pub fn compact(&mut self, rules: &Rules) -> Result<(), StateError> {
        snapshot::write(
            &self.dir,
            SNAPSHOT,
            &Snapshot {
                version: FORMAT_VERSION,
                rules: rules
                    .iter()
                    .map(|(&(list, prefix), meta)| Rule {
                        list,
                        prefix,
                        meta: meta.clone(),
                    })
                    .collect(),
                limits: self.settings.limits.clone(),
                header_rules: self.settings.header_rules.clone(),
                shield: self.settings.shield.clone(),
                admitted: {
                    let now = now_ms();
                    let mut admitted = self.settings.admitted.clone();
                    admitted.retain(|a| a.until_ms > now);
                    admitted
                },
            },
        )?;
        self.journal
            .set_len(0)
            .map_err(io_err(&self.dir.join(JOURNAL), "truncating"))?;
        self.journal
            .sync_all()
            .map_err(io_err(&self.dir.join(JOURNAL), "fsync"))?;
        self.journal_ops = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        let (_store, rules) = Store::open(&dir).unwrap();
        assert_eq!(rules.len(), 1);
        let meta = &rules[&(List::Block, "198.18.0.0/24".parse().unwrap())];
        assert_eq!(meta.expires_at_ms, Some(99));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A state directory written before the store had records of its own
    /// (settings as the protocol carried them, header rules with their
    /// hits, a journal line setting limits without the later fields) opens
    /// with everything in it, and is written back in the same shape.
    #[test]
    fn reads_the_first_format() {
        let dir = std::env::temp_dir().join(format!("sf-state-v1-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(SNAPSHOT),
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
        // The compaction at open wrote the journal's limits into the
        // snapshot; they read back the same.
        let (store, _) = Store::open(&dir).unwrap();
        assert_eq!(store.limits().unwrap().pps, 7);
        assert_eq!(store.header_rules()[0].comment.as_deref(), Some("dns"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
