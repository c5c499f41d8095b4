//! The snapshot: every rule and the last settings, replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory).

use std::{
    fs::{self, File},
    io::{self, BufReader, BufWriter},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use super::{
    FORMAT_VERSION, Rules, Settings, StateError, io_err,
    records::{Snapshot, SnapshotOut},
};

/// The rules and the settings of the snapshot at `snapshot_path` (nothing,
/// if there is none yet), and the last journal segment it folds.
pub(super) fn read(snapshot_path: &Path) -> Result<(Rules, Settings, u64), StateError> {
    match File::open(snapshot_path) {
        Ok(file) => {
            let snapshot: Snapshot =
                serde_json::from_reader(BufReader::new(file)).map_err(|err| {
                    StateError::Corrupt {
                        path: snapshot_path.to_path_buf(),
                        line: err.line(),
                        message: err.to_string(),
                    }
                })?;
            if snapshot.version != FORMAT_VERSION {
                return Err(StateError::Version {
                    path: snapshot_path.to_path_buf(),
                    found: snapshot.version,
                });
            }
            Ok((
                snapshot.rules,
                Settings {
                    limits: snapshot.limits,
                    header_rules: snapshot.header_rules,
                    shield: snapshot.shield,
                    admitted: snapshot.admitted,
                },
                snapshot.folded,
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Ok((Rules::new(), Settings::default(), 0))
        }
        Err(err) => Err(io_err(snapshot_path, "reading")(err)),
    }
}

/// Replaces the snapshot `name` in `dir` with `snapshot`, durably.
pub(super) fn write(dir: &Path, name: &str, snapshot: &SnapshotOut<'_>) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = write_tmp(&tmp, snapshot);
    if written.is_err() {
        // A full disk leaves no half-written file behind.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::rename(&tmp, &path).map_err(io_err(&path, "renaming the new snapshot into place"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync"))
}

/// Writes `snapshot` to `tmp`, durably.
fn write_tmp(tmp: &Path, snapshot: &SnapshotOut<'_>) -> Result<(), StateError> {
    {
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err(tmp, "creating"))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer(&mut out, snapshot)
            .map_err(|e| io_err(tmp, "writing")(io::Error::other(e)))?;
        let file = out
            .into_inner()
            .map_err(|e| io_err(tmp, "writing")(e.into_error()))?;
        file.sync_all().map_err(io_err(tmp, "fsync"))?;
    }
    Ok(())
}
