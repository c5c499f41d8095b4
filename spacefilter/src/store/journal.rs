//! The journal: the changes since the snapshot, one record a line,
//! appended and fsynced before the daemon answers the client.
//!
//! A record is the CRC-32 of its JSON (eight hex digits), a space, and the
//! JSON of its [`Op`]. Records written before checksums (a line that
//! starts with `{`) are read as they are.
//!
//! Replay never refuses to start: a cut-off last line (a crash while
//! appending) was never acknowledged and is dropped; a damaged record
//! anywhere else (a bad checksum, JSON that does not read) is skipped with
//! a log line naming it, and every good record before and after it is
//! applied. The daemon keeps a copy of a journal with damaged records
//! beside it before the journal is folded into the snapshot.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Write},
    path::Path,
};

use super::{Op, Rules, Settings, StateError, io_err};

/// A record: checksum, space, JSON, newline.
#[cfg(test)]
pub(super) fn record(op: &Op) -> Vec<u8> {
    let mut line = Vec::new();
    write_record(op, &mut line).expect("a Vec takes every write");
    line
}

/// Writes the record of `op` to `out`; returns its length. The JSON is
/// serialized twice, once into the checksum and once into `out`, rather
/// than held whole: a bulk add's record is some 100 bytes a rule, a
/// hundred MiB for a million.
pub(super) fn write_record(op: &Op, out: &mut impl Write) -> io::Result<u64> {
    let mut summed = Checksummed {
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    serde_json::to_writer(&mut summed, op).expect("ops always serialize");
    write!(out, "{:08x} ", summed.crc.finalize())?;
    serde_json::to_writer(&mut *out, op)?;
    out.write_all(b"\n")?;
    Ok(summed.len + 10)
}

/// A writer that keeps only the checksum and the length of what it is
/// given.
struct Checksummed {
    crc: crc32fast::Hasher,
    len: u64,
}

impl Write for Checksummed {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The op a record line carries, or why it is damaged.
fn parse(line: &str) -> Result<Op, String> {
    if line.starts_with('{') {
        return serde_json::from_str(line).map_err(|err| err.to_string());
    }
    let (sum, json) = line
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_owned())?;
    let sum = u32::from_str_radix(sum, 16).map_err(|_| format!("bad checksum field {sum:?}"))?;
    if sum != crc32fast::hash(json.as_bytes()) {
        return Err("checksum mismatch".to_owned());
    }
    serde_json::from_str(json).map_err(|err| err.to_string())
}

/// The record a damaged line ends with, if a whole one follows the
/// damage: an older version appended after a failed write without cutting
/// the torn record back, gluing the next record onto it.
fn salvage(line: &str) -> Option<Op> {
    let bytes = line.as_bytes();
    (1..bytes.len()).find_map(|i| {
        let checksummed = i + 9 < bytes.len()
            && bytes[i..i + 8].iter().all(u8::is_ascii_hexdigit)
            && bytes[i + 8] == b' '
            && bytes[i + 9] == b'{';
        let legacy = line[i..].starts_with("{\"op\"");
        if checksummed || legacy {
            parse(&line[i..]).ok()
        } else {
            None
        }
    })
}

/// What a replay found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Records applied.
    pub(super) applied: usize,
    /// Line numbers of damaged records, skipped.
    pub(super) damaged: Vec<usize>,
    /// Whether a cut-off last line was dropped.
    pub(super) torn_tail: bool,
}

/// Applies the journal at `path` to what the snapshot held.
pub(super) fn replay(
    path: &Path,
    rules: &mut Rules,
    settings: &mut Settings,
) -> Result<Replayed, StateError> {
    let mut replayed = Replayed::default();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(replayed),
        Err(err) => return Err(io_err(path, "reading")(err)),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err(path, "reading"))?;
        if n == 0 {
            return Ok(replayed);
        }
        number += 1;
        let complete = line.ends_with(b"\n");
        let text = String::from_utf8_lossy(&line);
        match parse(text.trim_end()) {
            Ok(op) => {
                op.apply(rules);
                settings.apply(&op);
                replayed.applied += 1;
            }
            // A crash while appending leaves a cut-off last line; the change
            // it carried was never acknowledged.
            Err(_) if !complete => {
                log::warn!(
                    "{}: dropping an incomplete last record (line {number}): its change was never acknowledged",
                    path.display()
                );
                replayed.torn_tail = true;
            }
            Err(why) => {
                replayed.damaged.push(number);
                if let Some(op) = salvage(text.trim_end()) {
                    log::error!(
                        "{}: line {number} is damaged ({why}); applying the whole record at its end, and every good record around it",
                        path.display()
                    );
                    op.apply(rules);
                    settings.apply(&op);
                    replayed.applied += 1;
                } else {
                    log::error!(
                        "{}: line {number} is damaged ({why}); skipping it and keeping every good record around it",
                        path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        net::List,
        store::{Meta, Origin, Rule},
    };

    fn put(prefix: &str) -> Op {
        Op::Put {
            rules: vec![Rule {
                list: List::Block,
                prefix: prefix.parse().unwrap(),
                meta: Meta {
                    origin: Origin::Manual,
                    comment: None,
                    expires_at_ms: None,
                    added_at_ms: 1,
                },
            }],
        }
    }

    #[test]
    fn records_carry_a_checksum_that_is_checked() {
        let line = String::from_utf8(record(&put("198.18.0.1"))).unwrap();
        assert!(line.ends_with('\n'));
        assert!(parse(line.trim_end()).is_ok());
        // One character changed in the JSON: refused.
        let bad = line.trim_end().replacen("198.18.0.1", "198.18.0.7", 1);
        assert_eq!(parse(&bad).unwrap_err(), "checksum mismatch");
        // A record from before checksums reads as it is.
        let legacy = serde_json::to_string(&put("198.18.0.2")).unwrap();
        assert!(parse(&legacy).is_ok());
        assert!(parse("zz {}").is_err());
    }

    #[test]
    fn a_record_glued_onto_a_torn_one_is_salvaged() {
        let whole = String::from_utf8(record(&put("198.18.0.3"))).unwrap();
        let glued = format!("0badc0de {{\"op\":\"put\",\"rul{}", whole.trim_end());
        assert!(parse(&glued).is_err());
        assert!(salvage(&glued).is_some());
        let legacy = serde_json::to_string(&put("198.18.0.4")).unwrap();
        assert!(salvage(&format!("{{\"op\":\"pu{legacy}")).is_some());
        assert!(salvage("{\"op\":\"put\",\"rul").is_none());
    }
}
