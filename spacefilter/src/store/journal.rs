//! The journal: the changes since the snapshot, one JSON line each,
//! appended and fsynced before the daemon answers the client.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader},
    path::Path,
};

use super::{Op, Rules, Settings, StateError, io_err};

/// Applies the journal at `path` to what the snapshot held.
pub(super) fn replay(
    path: &Path,
    rules: &mut Rules,
    settings: &mut Settings,
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
            Ok(op) => {
                op.apply(rules);
                settings.apply(&op);
            }
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
