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

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    maps::List,
    prefix::Prefix,
    protocol::{HeaderRuleView, LimitsView, Origin},
};

const SNAPSHOT: &str = "rules.json";
const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
const FORMAT_VERSION: u32 = 1;
/// Fold the journal into the snapshot once it holds this many changes.
const COMPACT_AFTER_OPS: usize = 4096;

/// What the daemon knows of a rule beyond its prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Milliseconds since the Unix epoch; none for a permanent rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub added_at_ms: u64,
}

impl Meta {
    /// Time left before the rule expires, or `None` if it never does.
    #[must_use]
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        self.expires_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
    }
}

/// One rule as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub list: List,
    pub prefix: Prefix,
    #[serde(flatten)]
    pub meta: Meta,
}

pub type Rules = BTreeMap<(List, Prefix), Meta>;

/// One change, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Add or replace these rules.
    Put { rules: Vec<Rule> },
    /// Remove these prefixes from a list.
    Delete { list: List, prefixes: Vec<Prefix> },
    /// Replace the rate limit.
    Limits { limits: LimitsView },
    /// Replace the rules on headers.
    HeaderRules { rules: Vec<HeaderRuleView> },
}

impl Op {
    pub fn apply(&self, rules: &mut Rules) {
        match self {
            Op::Put { rules: put } => {
                for rule in put {
                    rules.insert((rule.list, rule.prefix), rule.meta.clone());
                }
            }
            Op::Delete { list, prefixes } => {
                for prefix in prefixes {
                    rules.remove(&(*list, *prefix));
                }
            }
            Op::Limits { .. } | Op::HeaderRules { .. } => {}
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    header_rules: Vec<HeaderRuleView>,
}

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

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError {
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
    /// The rate limit last set, kept here since it is no rule.
    limits: Option<LimitsView>,
    /// The rules on headers last set.
    header_rules: Vec<HeaderRuleView>,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the state directory, takes its lock, and
    /// returns the rules it holds.
    pub fn open(dir: &Path) -> Result<(Store, Rules), StateError> {
        let mut limits = None;
        let mut header_rules = Vec::new();
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

        let mut rules = Rules::new();
        let snapshot_path = dir.join(SNAPSHOT);
        match File::open(&snapshot_path) {
            Ok(file) => {
                let snapshot: Snapshot =
                    serde_json::from_reader(BufReader::new(file)).map_err(|err| {
                        StateError::Corrupt {
                            path: snapshot_path.clone(),
                            line: err.line(),
                            message: err.to_string(),
                        }
                    })?;
                if snapshot.version != FORMAT_VERSION {
                    return Err(StateError::Version {
                        path: snapshot_path,
                        found: snapshot.version,
                    });
                }
                for rule in snapshot.rules {
                    rules.insert((rule.list, rule.prefix), rule.meta);
                }
                limits = snapshot.limits;
                header_rules = snapshot.header_rules;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&snapshot_path, "reading")(err)),
        }

        let journal_path = dir.join(JOURNAL);
        replay(&journal_path, &mut rules, &mut limits, &mut header_rules)?;

        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_err(&journal_path, "opening"))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            journal_ops: 0,
            limits,
            header_rules,
            _lock: lock,
        };
        store.compact(&rules)?;
        Ok((store, rules))
    }

    /// The rate limit last set.
    #[must_use]
    pub fn limits(&self) -> Option<LimitsView> {
        self.limits.clone()
    }

    /// The rules on headers last set.
    #[must_use]
    pub fn header_rules(&self) -> Vec<HeaderRuleView> {
        self.header_rules.clone()
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
        match op {
            Op::Limits { limits } => self.limits = Some(limits.clone()),
            Op::HeaderRules { rules } => self.header_rules.clone_from(rules),
            Op::Put { .. } | Op::Delete { .. } => {}
        }
        if self.journal_ops >= COMPACT_AFTER_OPS {
            self.compact(rules)?;
        }
        Ok(())
    }

    /// Writes every rule to a new snapshot and empties the journal.
    pub fn compact(&mut self, rules: &Rules) -> Result<(), StateError> {
        let path = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        {
            let file = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
            let mut out = BufWriter::new(file);
            let snapshot = Snapshot {
                version: FORMAT_VERSION,
                rules: rules
                    .iter()
                    .map(|(&(list, prefix), meta)| Rule {
                        list,
                        prefix,
                        meta: meta.clone(),
                    })
                    .collect(),
                limits: self.limits.clone(),
                header_rules: self.header_rules.clone(),
            };
            serde_json::to_writer(&mut out, &snapshot)
                .map_err(|e| io_err(&tmp, "writing")(io::Error::other(e)))?;
            let file = out
                .into_inner()
                .map_err(|e| io_err(&tmp, "writing")(e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path, "renaming the new snapshot into place"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir, "fsync"))?;
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

fn replay(
    path: &Path,
    rules: &mut Rules,
    limits: &mut Option<LimitsView>,
    header_rules: &mut Vec<HeaderRuleView>,
) -> Result<(), StateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_err(path, "reading")(err)),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(io_err(path, "reading"))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Op>(line.trim_end()) {
            Ok(Op::Limits { limits: set }) => *limits = Some(set),
            Ok(Op::HeaderRules { rules: set }) => *header_rules = set,
            Ok(op) => op.apply(rules),
            // A crash while appending leaves a cut-off last line; the change
            // it carried was never acknowledged.
            Err(_) if !complete => {
                log::warn!(
                    "{}: ignoring an incomplete last record (line {number})",
                    path.display()
                );
                return Ok(());
            }
            Err(err) => {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    line: number,
                    message: err.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
