//! The daemon's rules on disk: the source of truth that the maps are
//! reconciled to on start.
//!
//! A state directory holds
//! - `rules.bin`: a snapshot of every rule and the settings, checksummed,
//!   replaced atomically (write a temporary file, fsync it, rename it over
//!   the old one, fsync the directory; see [`snapshot`]); a `rules.json`
//!   left by spacefilter before that format is read in its place and
//!   replaced;
//! - `journal.jsonl`: the changes since the snapshot, one checksummed
//!   record a line (see [`journal`]), made durable before the daemon answers
//!   the client; and `journal.N.jsonl`, older segments a fold into the
//!   snapshot has not finished with (see [`compaction`]);
//! - `lock`: held (flock) by the daemon that owns the directory.
//!
//! Every change is journaled before it is put in the kernel's maps. A
//! record is written under the daemon's lock, and made durable by the
//! journal's flusher with every other record written meanwhile (one
//! `fdatasync` a batch, see [`durable`]); the client hears back once it is.
//!
//! On open, the snapshot is loaded and the journal replayed; the journal is
//! folded into a new snapshot in the background. Nothing on disk can stop
//! the daemon from starting: a last journal line cut short by a crash is
//! dropped (its change was never acknowledged); a damaged record is skipped
//! and the rest applied; a snapshot that does not read is set aside
//! (`rules.bin.damaged-<ms>`) and the journal applied alone; a fold that
//! fails (a full disk) leaves the journal as it is, to be folded later.
//!
//! A failed append is cut back off the journal, so that a change reported
//! as failed never comes back at the next start and the next record is not
//! glued onto a torn one; when even that fails, or a flush fails, the store
//! refuses every later change (saying why) while the filter keeps
//! enforcing.
//!
//! What is stored is in [`records`], types of the store's own.

mod compaction;
mod durable;
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

use self::{compaction::Fold, durable::Flusher};
pub use self::{
    durable::Durable,
    records::{
        Action, Admission, Guards, HeaderRule, Meta, Op, Origin, Rule, Settings, Shield, ShieldAuto,
    },
    rules::{Batch, Rules},
};

const SNAPSHOT: &str = "rules.bin";
/// The snapshot as spacefilter wrote it before `rules.bin`: read where
/// there is no `rules.bin`, removed once one is written.
const JSON_SNAPSHOT: &str = "rules.json";
const JOURNAL: &str = "journal.jsonl";
/// The new live journal while it is made, before it takes the name.
const JOURNAL_NEXT: &str = "journal.jsonl.next";
const LOCK: &str = "lock";
/// The snapshot's format; journal records carry none, and are read by
/// the same version that wrote the snapshot they follow.
pub(super) const FORMAT_VERSION: u32 = 2;
/// The format of a snapshot written as JSON (`rules.json`).
pub(super) const JSON_VERSION: u32 = 1;
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
    #[error(
        "{path} has format version {found}; this spacefilter reads version {reads}, and does not overwrite what it cannot read: run the spacefilter that wrote it, or move the state directory aside"
    )]
    Version {
        path: PathBuf,
        found: u32,
        reads: u32,
    },
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
    /// The number the live journal gets when it is retired.
    next_segment: u64,
    /// The fold into a snapshot under way, if one is.
    folding: Option<Fold>,
    flusher: Flusher,
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

        let (snapshot_path, json, read) = snapshot::read_in(dir);
        let (mut rules, mut settings, folded) = match read {
            Err(StateError::Corrupt { message, .. }) => {
                let aside = set_aside(&snapshot_path)?;
                log::error!(
                    "{}: the snapshot does not read ({message}); set aside as {}; starting from the journal alone",
                    snapshot_path.display(),
                    aside.display()
                );
                (Rules::new(), Settings::default(), 0)
            }
            other => other?,
        };
        // Segments the snapshot folds were left by a crash before the fold
        // deleted them; a new live journal by a crash before it took the
        // name.
        if let Err(err) = compaction::remove_folded(dir, folded) {
            log::warn!(
                "removing journal segments the snapshot holds: {}; they are skipped",
                crate::error_chain(&err)
            );
        }
        let _ = fs::remove_file(dir.join(JOURNAL_NEXT));
        let (folded_segments, retired): (Vec<_>, Vec<_>) = compaction::retired(dir)?
            .into_iter()
            .partition(|&(n, _)| n <= folded);
        let mut applied = 0;
        for (_, path) in &retired {
            applied += replay(path, &mut rules, &mut settings)?.applied;
        }
        let journal_path = dir.join(JOURNAL);
        let replayed = replay(&journal_path, &mut rules, &mut settings)?;
        applied += replayed.applied;

        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&journal_path)
            .map_err(io_err(&journal_path, "opening"))?;
        tighten(&journal_path, 0o600);
        let mut journal_len = journal
            .metadata()
            .map_err(io_err(&journal_path, "reading the size of"))?
            .len();
        if replayed.torn_tail {
            // Cut the torn line off now: the next record must start a line.
            journal_len -= torn_tail_len(&journal_path)?;
            journal
                .set_len(journal_len)
                .and_then(|()| journal.sync_data())
                .map_err(io_err(&journal_path, "cutting the torn record off"))?;
        }
        let live = journal
            .try_clone()
            .map_err(io_err(&journal_path, "opening"))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            journal_ops: replayed.applied,
            journal_len,
            compact_at_len: COMPACT_AFTER_BYTES,
            poisoned: None,
            settings,
            next_segment: retired
                .iter()
                .chain(&folded_segments)
                .map(|&(n, _)| n)
                .max()
                .unwrap_or(0)
                .max(folded)
                + 1,
            folding: None,
            flusher: Flusher::start(dir, live, journal_len),
            _lock: lock,
        };
        if applied > 0 || !retired.is_empty() || json {
            store.fold(&rules);
        }
        Ok((store, rules))
    }

    /// Why the store takes no more changes, if it does not.
    #[must_use]
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.clone().or_else(|| self.flusher.failed())
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

    /// The number of the last record written: [`Durable::wait`] on it
    /// returns once every change so far is on disk.
    #[must_use]
    pub fn last_written(&self) -> u64 {
        self.flusher.last_written()
    }

    /// A wait for records to be durable, to hold without the daemon's lock.
    #[must_use]
    pub fn durable(&self) -> Durable {
        self.flusher.durable()
    }

    /// Appends `op` to the journal, for the flusher to make durable;
    /// returns its number. On failure the record is cut back off, so that
    /// the change never comes back. The rules after `op` (`rules`) are
    /// folded into a new snapshot, in the background, when the journal has
    /// grown enough.
    pub fn append(&mut self, op: &Op, rules: &Rules) -> Result<u64, StateError> {
        let path = self.dir.join(JOURNAL);
        if let Some(reason) = self.poisoned() {
            return Err(StateError::Poisoned {
                path: self.dir.clone(),
                reason,
            });
        }
        let (journal, len) = (&self.journal, self.journal_len);
        let mut new_len = len;
        let written = self.flusher.written(|| {
            // Streamed into the file, never held whole (see
            // `journal::write_record`).
            let mut out = BufWriter::with_capacity(JOURNAL_BUFFER, journal);
            let written = journal::write_record(op, &mut out).and_then(|n| {
                out.flush()?;
                Ok(n)
            });
            // What a failed write left in the buffer is dropped, not
            // written.
            let _ = out.into_parts();
            new_len = len + written?;
            Ok::<_, io::Error>(new_len)
        });
        let seq = match written {
            Ok(seq) => seq,
            Err(err) => {
                self.cut_back(self.journal_len);
                return Err(io_err(&path, "appending")(err));
            }
        };
        self.journal_len = new_len;
        self.journal_ops += 1;
        self.settings.apply(op);
        if self.journal_ops >= COMPACT_AFTER_OPS || self.journal_len >= self.compact_at_len {
            self.fold(rules);
        }
        Ok(seq)
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
            Ok(()) => {
                self.journal_len = len;
                self.flusher.cut_back(len);
            }
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

    /// Retires the live journal and folds everything up to it (`rules`,
    /// and the settings) into a new snapshot, in the background; does
    /// nothing while a fold is under way (the next change tries again).
    fn fold(&mut self, rules: &Rules) {
        if self.folding.as_ref().is_some_and(|f| !f.is_finished()) {
            return;
        }
        if let Some(done) = self.folding.take() {
            done.join();
        }
        if let Err(err) = self.retire() {
            // Tried again after as many changes, or bytes, again.
            self.journal_ops = 0;
            self.compact_at_len = self.journal_len + COMPACT_AFTER_BYTES;
            log::warn!(
                "starting a new journal segment failed ({}); going on with the journal as it is",
                crate::error_chain(&err)
            );
            return;
        }
        let now = now_ms();
        let mut settings = self.settings.clone();
        settings.admitted.retain(|a| a.until_ms > now);
        self.folding = Some(Fold::start(
            &self.dir,
            self.next_segment - 1,
            rules.clone(),
            settings,
        ));
    }

    /// Renames the live journal to the next segment's name and starts a new
    /// one.
    fn retire(&mut self) -> Result<(), StateError> {
        let live = self.dir.join(JOURNAL);
        let retired = self.dir.join(compaction::segment_name(self.next_segment));
        let fresh = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(self.dir.join(JOURNAL_NEXT))
            .map_err(io_err(&self.dir.join(JOURNAL_NEXT), "creating"))?;
        let flushed = fresh
            .try_clone()
            .map_err(io_err(&self.dir.join(JOURNAL_NEXT), "opening"));
        let renamed = flushed.and_then(|flushed| {
            fs::rename(&live, &retired).map_err(io_err(&live, "retiring"))?;
            Ok(flushed)
        });
        let flushed = match renamed {
            Ok(flushed) => flushed,
            Err(err) => {
                let _ = fs::remove_file(self.dir.join(JOURNAL_NEXT));
                return Err(err);
            }
        };
        if let Err(err) = fs::rename(self.dir.join(JOURNAL_NEXT), &live) {
            // The old journal goes back: the records keep a live journal.
            if let Err(back) = fs::rename(&retired, &live) {
                self.poisoned = Some(format!(
                    "{} could not be put back after a failed rotation: {back}",
                    live.display()
                ));
            }
            let _ = fs::remove_file(self.dir.join(JOURNAL_NEXT));
            return Err(io_err(&live, "starting a new journal")(err));
        }
        let old = std::mem::replace(&mut self.journal, fresh);
        self.flusher.rotated(old, flushed);
        self.next_segment += 1;
        self.journal_len = 0;
        self.journal_ops = 0;
        self.compact_at_len = COMPACT_AFTER_BYTES;
        Ok(())
    }
}

impl Drop for Store {
    /// Lets a fold under way finish; the flusher then flushes what is
    /// written.
    fn drop(&mut self) {
        if let Some(fold) = self.folding.take() {
            fold.join();
        }
    }
}

/// Replays the journal segment at `path`, keeping a copy of it aside when
/// it has damaged records.
fn replay(
    path: &Path,
    rules: &mut Rules,
    settings: &mut Settings,
) -> Result<journal::Replayed, StateError> {
    let replayed = journal::replay(path, rules, settings)?;
    if !replayed.damaged.is_empty() {
        let copy = aside_name(path);
        match fs::copy(path, &copy) {
            Ok(_) => log::error!(
                "{}: {} damaged records skipped (lines {:?}); the journal as it was is kept as {}",
                path.display(),
                replayed.damaged.len(),
                replayed.damaged,
                copy.display()
            ),
            Err(err) => log::error!(
                "{}: {} damaged records skipped (lines {:?}); keeping a copy failed: {err}",
                path.display(),
                replayed.damaged.len(),
                replayed.damaged
            ),
        }
    }
    Ok(replayed)
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
mod tests;
