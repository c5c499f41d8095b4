//! Group commit: records are written to the journal under the daemon's
//! lock (a write to the page cache), and made durable by one thread that
//! calls `fdatasync` for every record written since its last call. Whoever
//! needs a change durable before answering waits for its sequence number
//! with no lock held, so a slow disk stalls the clients that wrote, never
//! the daemon's other work, and a burst of changes costs one flush.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
};

/// What the flusher and the writers share.
#[derive(Default)]
struct State {
    /// Records written so far (the sequence number of the last one).
    written: u64,
    /// Records made durable so far.
    synced: u64,
    /// The live journal segment, as the flusher syncs it.
    live: Option<File>,
    /// The live segment's length once every record in it is durable.
    live_synced_len: u64,
    /// The live segment's length after the last record written.
    live_written_len: u64,
    /// Segments made live so far: a flush that began on an older one
    /// says nothing of the live one's length.
    live_gen: u64,
    /// Segments retired from the live journal whose last records may not
    /// be durable yet; synced (then closed) before the records after them.
    retired: Vec<File>,
    /// A segment was created or renamed: the directory is synced too.
    dir_dirty: bool,
    /// Why nothing more can be made durable.
    failed: Option<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when there is something to flush, and when a flush ends.
    changed: Condvar,
    dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The journal's flusher.
pub(super) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A wait for a sequence number to be durable, held without any lock.
#[derive(Clone)]
pub struct Durable {
    shared: Arc<Shared>,
}

impl Flusher {
    /// Starts the flusher for the live segment `live` (a handle on the same
    /// open file the writers append to), `len` bytes long and durable.
    pub(super) fn start(dir: &Path, live: File, len: u64) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                live: Some(live),
                live_synced_len: len,
                live_written_len: len,
                ..State::default()
            }),
            changed: Condvar::new(),
            dir: dir.to_path_buf(),
        });
        let thread = std::thread::Builder::new()
            .name("journal-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&shared)
            })
            .expect("spawning the journal's flusher");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Why records can no longer be made durable, if they cannot.
    pub(super) fn failed(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    /// Runs `write` (which appends one record to the live segment and
    /// returns its new length) unless the flusher has failed, and hands the
    /// record to the flusher; returns its sequence number. The state is
    /// locked meanwhile, so that a failed flush's cut-back and a write
    /// never interleave.
    pub(super) fn written<E>(&self, write: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        let mut state = self.shared.lock();
        let len = write()?;
        state.written += 1;
        state.live_written_len = len;
        self.shared.changed.notify_all();
        Ok(state.written)
    }

    /// The live segment was retired as `retired` (a handle on it) and
    /// `live` started, empty.
    pub(super) fn rotated(&self, retired: File, live: File) {
        let mut state = self.shared.lock();
        state.retired.push(retired);
        state.live = Some(live);
        state.live_synced_len = 0;
        state.live_written_len = 0;
        state.live_gen += 1;
        state.dir_dirty = true;
        self.shared.changed.notify_all();
    }

    /// The live segment was cut back to `len` bytes (its last good
    /// record), durably.
    pub(super) fn cut_back(&self, len: u64) {
        let mut state = self.shared.lock();
        state.live_written_len = len;
        state.live_synced_len = state.live_synced_len.min(len);
    }

    /// The number of the last record written.
    pub(super) fn last_written(&self) -> u64 {
        self.shared.lock().written
    }

    pub(super) fn durable(&self) -> Durable {
        Durable {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Durable {
    /// Waits until record `seq` and every one before it is durable.
    pub fn wait(&self, seq: u64) -> Result<(), String> {
        let mut state = self.shared.lock();
        loop {
            if state.synced >= seq {
                return Ok(());
            }
            if let Some(why) = &state.failed {
                return Err(why.clone());
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Flusher {
    /// Flushes what is written, then stops.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(shared: &Shared) {
    loop {
        let (target, target_len, generation, live, retired, dir_dirty) = {
            let mut state = shared.lock();
            while state.failed.is_none()
                && state.written == state.synced
                && state.retired.is_empty()
                && !state.dir_dirty
                && !state.stop
            {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.failed.is_some()
                || (state.stop
                    && state.written == state.synced
                    && state.retired.is_empty()
                    && !state.dir_dirty)
            {
                return;
            }
            let live = state.live.as_ref().map(File::try_clone);
            (
                state.written,
                state.live_written_len,
                state.live_gen,
                live,
                std::mem::take(&mut state.retired),
                std::mem::take(&mut state.dir_dirty),
            )
        };
        // Older segments first: a record is durable only with every record
        // before it.
        let mut result: Result<(), String> = Ok(());
        for file in &retired {
            if let Err(err) = file.sync_data() {
                result = Err(format!("fsync of a retired journal segment: {err}"));
                break;
            }
        }
        if result.is_ok()
            && dir_dirty
            && let Err(err) = File::open(&shared.dir).and_then(|d| d.sync_all())
        {
            result = Err(format!("fsync of {}: {err}", shared.dir.display()));
        }
        if result.is_ok()
            && let Some(live) = live
        {
            result = live
                .and_then(|f| f.sync_data())
                .map_err(|err| format!("fsync of the journal: {err}"));
        }
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                state.synced = target;
                if state.live_gen == generation {
                    state.live_synced_len = target_len;
                }
            }
            Err(why) => {
                // After a failed fsync the kernel may have dropped the pages:
                // what was written since the last good flush may or may not
                // be on disk. Cut it off, so that a change reported as failed
                // does not come back at the next start, and take no more.
                log::error!(
                    "{why}; changes since the last good flush are reported failed and the state directory takes no more"
                );
                if let Some(live) = &state.live {
                    let _ = live
                        .set_len(state.live_synced_len)
                        .and_then(|()| live.sync_data());
                }
                state.failed = Some(why);
            }
        }
        shared.changed.notify_all();
    }
}
