//! Folding the journal into the snapshot, off the write path.
//!
//! When the live journal has grown enough, it is retired under a numbered
//! name (`journal.N.jsonl`, a rename) and a new one started, both while the
//! daemon's lock is held, so that segment N ends exactly where the rules in
//! memory stand. A thread of its own then writes those rules as the new
//! snapshot, which says it folds every segment up to N (`folded`), and
//! deletes those segments. Nothing waits for it: changes go on into the new
//! live journal meanwhile. A crash or a full disk at any point leaves either
//! the old snapshot with every segment after it, or the new one; a start
//! replays the snapshot, then the segments it has not folded in order, then
//! the live journal.

use std::{
    fs,
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use super::{JSON_SNAPSHOT, Rules, SNAPSHOT, Settings, StateError, io_err, snapshot};

const PREFIX: &str = "journal.";
const SUFFIX: &str = ".jsonl";

/// The name of retired segment `n`.
pub(super) fn segment_name(n: u64) -> String {
    format!("{PREFIX}{n}{SUFFIX}")
}

/// The retired segments in `dir`, oldest first.
pub(super) fn retired(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "listing"))? {
        let entry = entry.map_err(io_err(dir, "listing"))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((n, entry.path()));
    }
    found.sort_unstable();
    Ok(found)
}

/// Deletes the retired segments up to `folded` (the snapshot holds them).
pub(super) fn remove_folded(dir: &Path, folded: u64) -> Result<(), StateError> {
    for (n, path) in retired(dir)? {
        if n <= folded {
            fs::remove_file(&path).map_err(io_err(&path, "removing a folded segment"))?;
        }
    }
    Ok(())
}

/// A fold running on its own thread.
pub(super) struct Fold {
    thread: JoinHandle<()>,
}

impl Fold {
    /// Writes `rules` and `settings` as the snapshot in `dir` that folds
    /// every segment up to `folded`, then deletes those segments. A failure
    /// is logged: the segments stay, to be folded by the next fold.
    pub(super) fn start(dir: &Path, folded: u64, rules: Rules, settings: Settings) -> Self {
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("journal-fold".into())
            .spawn(move || {
                let count = rules.len();
                let began = std::time::Instant::now();
                let done = snapshot::write(&dir, SNAPSHOT, (&rules, &settings, folded))
                    .and_then(|()| {
                        drop(rules);
                        // A snapshot written as JSON before this format is
                        // held by the new one; a removal lost to a crash
                        // leaves it beside the new one, which wins.
                        let _ = fs::remove_file(dir.join(JSON_SNAPSHOT));
                        remove_folded(&dir, folded)
                    });
                match done {
                    Ok(()) => log::debug!(
                        "journal folded into a new snapshot ({count} rules) in {:.2?}",
                        began.elapsed()
                    ),
                    Err(err) => log::warn!(
                        "folding the journal into a new snapshot failed ({}); the journal is kept as it is, to be folded later",
                        crate::error_chain(&err)
                    ),
                }
            })
            .expect("spawning the journal's folder");
        Self { thread }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the fold to end.
    pub(super) fn join(self) {
        let _ = self.thread.join();
    }
}
