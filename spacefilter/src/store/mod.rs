//! The daemon's rules on disk: the source of truth that the maps are
//! reconciled to on start.
//!
//! A state directory holds
//! - `rules.json`: a snapshot of every rule, replaced atomically (write a
//!   temporary file, fsync it, rename it over the old one, fsync the
//!   directory);
//! - `journal.jsonl`: the changes since the snapshot, one checksummed
//!   record a line, appended and fsynced before the daemon answers the
//!   client (see [`journal`]);
//! - `lock`: held (flock) by the daemon that owns the directory.
//!
//! On open, the snapshot is loaded, the journal replayed, and both folded
//! into a new snapshot. Nothing on disk can stop the daemon from starting:
//! a last journal line cut short by a crash is dropped (its change was
//! never acknowledged); a damaged record is skipped and the rest applied;
//! a snapshot that does not read is set aside (`rules.json.damaged-<ms>`)
//! and the journal applied alone; a compaction that fails (a full disk)
//! leaves the journal as it is, to be folded in later.
//!
//! A failed append is cut back off the journal, so that a change reported
//! as failed never comes back at the next start and the next record is not
//! glued onto a torn one; when even that fails, the store refuses every
//! later change (saying why) while the filter keeps enforcing.
//!
//! What is stored is in [`records`], types of the store's own.

mod journal;
pub mod records;
mod rules;
mod snapshot;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::fcntl::{Flock, FlockArg};

use self::records::SnapshotOut;
pub use self::{
    records::{
        Action, Admission, Guards, HeaderRule, Meta, Op, Origin, Rule, Settings, Shield, ShieldAuto,
    },
    rules::{Batch, Rules},
};

const SNAPSHOT: &str = "rules.json";
const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
/// The snapshot's format; journal records carry none, and are read by
/// the same version that wrote the snapshot they follow.
pub(super) const FORMAT_VERSION: u32 = 1;
/// Fold the journal into the snapshot once it holds this many changes...
const COMPACT_AFTER_OPS: usize = 4096;
/// ... or this many bytes.
const COMPACT_AFTER_BYTES: u64 = 8 << 20;
/// Bytes of a record written to the journal at a time.
const JOURNAL_BUFFER: usize = 256 << 10;

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
    #[error(
        "the state directory {path} takes no more changes: a failed write could not be undone ({reason}); the filter keeps enforcing what it has; free space or fix the disk, then restart the daemon"
    )]
    Poisoned { path: PathBuf, reason: String },
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
    /// The journal's length up to its last good record.
    journal_len: u64,
    /// The journal's length at which it is folded into a snapshot next
    /// (further out after a compaction failed).
    compact_at_len: u64,
    /// Why the store takes no more changes, once a failed append could not
    /// be cut back off the journal.
    poisoned: Option<String>,
    /// The settings last set, kept here since they are no rules.
    settings: Settings,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the state directory, takes its lock, and
    /// returns the rules it holds.
    pub fn open(dir: &Path) -> Result<(Store, Rules), StateError> {
        // The allowlist and the comments are for root alone.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        tighten(dir, 0o700);
        let lock_path = dir.join(LOCK);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening the lock"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StateError::Locked {
                path: dir.to_path_buf(),
            }
        })?;

        let snapshot_path = dir.join(SNAPSHOT);
        let (mut rules, mut settings) = match snapshot::read(&snapshot_path) {
            Err(StateError::Corrupt { message, .. }) => {
                let aside = set_aside(&snapshot_path)?;
                log::error!(
                    "{}: the snapshot does not read ({message}); set aside as {}; starting from the journal alone",
                    snapshot_path.display(),
                    aside.display()
                );
                (Rules::new(), Settings::default())
            }
            other => other?,
        };
        let journal_path = dir.join(JOURNAL);
        let replayed = journal::replay(&journal_path, &mut rules, &mut settings)?;
        if !replayed.damaged.is_empty() {
            let copy = aside_name(&journal_path);
            match fs::copy(&journal_path, &copy) {
                Ok(_) => log::error!(
                    "{}: {} damaged records skipped (lines {:?}); the journal as it was is kept as {}",
                    journal_path.display(),
                    replayed.damaged.len(),
                    replayed.damaged,
                    copy.display()
                ),
                Err(err) => log::error!(
                    "{}: {} damaged records skipped (lines {:?}); keeping a copy failed: {err}",
                    journal_path.display(),
                    replayed.damaged.len(),
                    replayed.damaged
                ),
            }
        }

        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&journal_path)
            .map_err(io_err(&journal_path, "opening"))?;
        tighten(&journal_path, 0o600);
        let journal_len = journal
            .metadata()
            .map_err(io_err(&journal_path, "reading the size of"))?
            .len();
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            journal_ops: replayed.applied,
            journal_len,
            compact_at_len: COMPACT_AFTER_BYTES,
            poisoned: None,
            settings,
            _lock: lock,
        };
        if replayed.torn_tail {
            // Cut the torn line off now: the next record must start a line.
            store.cut_back(journal_len - torn_tail_len(&journal_path)?);
        }
        if let Err(err) = store.compact(&rules) {
            log::warn!(
                "folding the journal into a new snapshot failed ({}); going on with the journal as it is",
                crate::error_chain(&err)
            );
        }
        Ok((store, rules))
    }

    /// Why the store takes no more changes, if it does not.
    #[must_use]
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
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

    /// Appends `op` to the journal and makes it durable. On failure the
    /// record is cut back off, so that the change never comes back; the
    /// rules after `op` (`rules`) are folded into a new snapshot when the
    /// journal has grown enough, and a failure there fails nothing: the
    /// change is in the journal.
    pub fn append(&mut self, op: &Op, rules: &Rules) -> Result<(), StateError> {
        let path = self.dir.join(JOURNAL);
        if let Some(reason) = &self.poisoned {
            return Err(StateError::Poisoned {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        let written = {
            // Streamed into the file, never held whole (see
            // `journal::write_record`).
            let mut out = BufWriter::with_capacity(JOURNAL_BUFFER, &self.journal);
            let written = journal::write_record(op, &mut out).and_then(|len| {
                out.flush()?;
                Ok(len)
            });
            // What a failed write left in the buffer is dropped, not
            // written.
            let _ = out.into_parts();
            written
        }
        .map_err(io_err(&path, "appending"))
        .and_then(|len| {
            self.journal
                .sync_data()
                .map_err(io_err(&path, "fsync"))
                .map(|()| len)
        });
        let len = match written {
            Ok(len) => len,
            Err(err) => {
                self.cut_back(self.journal_len);
                return Err(err);
            }
        };
        self.journal_len += len;
        self.journal_ops += 1;
        self.settings.apply(op);
        if (self.journal_ops >= COMPACT_AFTER_OPS || self.journal_len >= self.compact_at_len)
            && let Err(err) = self.compact(rules)
        {
            // Tried again after as many changes, or bytes, again.
            self.journal_ops = 0;
            self.compact_at_len = self.journal_len + COMPACT_AFTER_BYTES;
            log::warn!(
                "folding the journal into a new snapshot failed ({}); the change is in the journal",
                crate::error_chain(&err)
            );
        }
        Ok(())
    }

    /// Cuts the journal back to `len` bytes (its last good record) and
    /// makes that durable; poisons the store if it cannot.
    fn cut_back(&mut self, len: u64) {
        let path = self.dir.join(JOURNAL);
        let cut = self
            .journal
            .set_len(len)
            .and_then(|()| self.journal.sync_data());
        match cut {
            Ok(()) => self.journal_len = len,
            Err(err) => {
                log::error!(
                    "{}: cutting a failed record back off failed ({err}); taking no more changes",
                    path.display()
                );
                self.poisoned = Some(format!(
                    "cutting a failed record off {}: {err}",
                    path.display()
                ));
            }
        }
    }

    /// Writes every rule to a new snapshot and empties the journal.
    pub fn compact(&mut self, rules: &Rules) -> Result<(), StateError> {
        let now = now_ms();
        let admitted: Vec<Admission> = self
            .settings
            .admitted
            .iter()
            .filter(|a| a.until_ms > now)
            .copied()
            .collect();
        snapshot::write(
            &self.dir,
            SNAPSHOT,
            &SnapshotOut {
                version: FORMAT_VERSION,
                rules,
                limits: self.settings.limits.as_ref(),
                header_rules: &self.settings.header_rules,
                shield: self.settings.shield.as_ref(),
                admitted: &admitted,
            },
        )?;
        self.journal
            .set_len(0)
            .map_err(io_err(&self.dir.join(JOURNAL), "truncating"))?;
        self.journal_len = 0;
        self.compact_at_len = COMPACT_AFTER_BYTES;
        self.journal
            .sync_all()
            .map_err(io_err(&self.dir.join(JOURNAL), "fsync"))?;
        self.journal_ops = 0;
        Ok(())
    }
}

/// Takes group and other permissions off `path` (a state directory or
/// journal an older version made readable to all): to `mode`.
fn tighten(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            Ok(()) => log::info!("{}: mode set to {mode:o}", path.display()),
            Err(err) => log::warn!("{}: setting mode {mode:o}: {err}", path.display()),
        }
    }
}

/// `path` with `.damaged-<ms since the epoch>` added.
fn aside_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{}", now_ms()));
    PathBuf::from(name)
}

/// Renames `path` aside ([`aside_name`]); returns where it went.
fn set_aside(path: &Path) -> Result<PathBuf, StateError> {
    let aside = aside_name(path);
    fs::rename(path, &aside).map_err(io_err(path, "setting the damaged file aside"))?;
    Ok(aside)
}

/// The length of the journal's last line, which has no newline.
fn torn_tail_len(path: &Path) -> Result<u64, StateError> {
    let bytes = fs::read(path).map_err(io_err(path, "reading"))?;
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok((bytes.len() - start) as u64)
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
        fs::write(dir.join(SNAPSHOT), b"{\"version\":1,\"rules\":[{\"li").unwrap();
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
        let (_store, rules) = Store::open(&dir).unwrap();
        assert_eq!(rules.len(), 3);
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
