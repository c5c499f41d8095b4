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

use super::{Op, Rule, Rules, Settings, StateError, io_err};

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
    serde_json::from_str(checked(line)?).map_err(|err| err.to_string())
}

/// The JSON of a checksummed record line, once its checksum holds.
fn checked(line: &str) -> Result<&str, String> {
    let (sum, json) = line
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_owned())?;
    let sum = u32::from_str_radix(sum, 16).map_err(|_| format!("bad checksum field {sum:?}"))?;
    if sum != crc32fast::hash(json.as_bytes()) {
        return Err("checksum mismatch".to_owned());
    }
    Ok(json)
}

/// Reads a record line. A checksummed `put` is applied to `rules` as it
/// is read ([`apply_put`]) and gives `None`; any other record gives its op,
/// to apply.
fn read_record(line: &str, rules: &mut Rules) -> Result<Option<Op>, String> {
    if line.starts_with('{') {
        return parse(line).map(Some);
    }
    let json = checked(line)?;
    match apply_put(json, rules) {
        Some(applied) => applied.map(|()| None),
        None => serde_json::from_str(json)
            .map(Some)
            .map_err(|err| err.to_string()),
    }
}

/// How the journal's writer begins and ends a `put` record's JSON.
const PUT_HEAD: &str = r#"{"op":"put","rules":"#;
const PUT_TAIL: &str = "}";

/// Applies the `put` record `json` to `rules` rule by rule, without
/// holding its rules: read as an [`Op`] (an internally tagged enum), the
/// record would go through serde's buffered `Content` whole, and a bulk
/// add of a million rules (a line of some 100 MiB, left unfolded by a
/// crash right after the add) then took several hundred MiB more at the
/// next start. The rules are read twice, once to check that every one
/// reads and once to apply them, so that a record that does not read whole
/// changes nothing. `None`: not a put as the writer lays it out.
fn apply_put(json: &str, rules: &mut Rules) -> Option<Result<(), String>> {
    let array = json.strip_prefix(PUT_HEAD)?.strip_suffix(PUT_TAIL)?;
    Some(each_rule(array, |_| {}).and_then(|_| {
        each_rule(array, |rule| {
            rules.put((rule.list, rule.prefix), &rule.meta);
        })
        .map(drop)
    }))
}

/// Calls `apply` with each rule of the JSON array `array`, read one at a
/// time; returns how many there were.
fn each_rule(array: &str, apply: impl FnMut(Rule)) -> Result<usize, String> {
    use serde::de::DeserializeSeed as _;
    let mut reader = serde_json::Deserializer::from_str(array);
    let count = EachRule(apply)
        .deserialize(&mut reader)
        .map_err(|err| err.to_string())?;
    reader.end().map_err(|err| err.to_string())?;
    Ok(count)
}

/// A sequence of rules, each handed to the function as it is read.
struct EachRule<F>(F);

impl<'de, F: FnMut(Rule)> serde::de::DeserializeSeed<'de> for EachRule<F> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, from: D) -> Result<usize, D::Error> {
        from.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Rule)> serde::de::Visitor<'de> for EachRule<F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of rules")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(rule) = seq.next_element::<Rule>()? {
            (self.0)(rule);
            count += 1;
        }
        Ok(count)
    }
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
        match read_record(text.trim_end(), rules) {
            Ok(op) => {
                if let Some(op) = op {
                    op.apply(rules);
                    settings.apply(&op);
                }
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
    fn a_put_is_applied_as_it_is_read_and_only_whole() {
        let rule = |prefix: &str, comment: Option<&str>| Rule {
            list: List::Block,
            prefix: prefix.parse().unwrap(),
            meta: Meta {
                origin: Origin::File,
                comment: comment.map(str::to_owned),
                expires_at_ms: Some(7),
                added_at_ms: 1,
            },
        };
        let op = Op::Put {
            rules: (0..300u16)
                .map(|i| {
                    rule(
                        &format!("10.0.{}.{}", i / 256, i % 256),
                        (i % 2 == 0).then_some("x"),
                    )
                })
                .collect(),
        };
        let line = String::from_utf8(record(&op)).unwrap();
        let (mut streamed, mut whole) = (Rules::default(), Rules::default());
        assert_eq!(read_record(line.trim_end(), &mut streamed), Ok(None));
        op.apply(&mut whole);
        assert_eq!(streamed, whole);
        assert_eq!(streamed.len(), 300);

        // A rule that does not read (a record no writer of ours makes, with
        // a checksum that holds): nothing of the record is applied.
        let json = serde_json::to_string(&op)
            .unwrap()
            .replacen("\"10.0.1.7", "\"10.0.1.777", 1);
        assert!(json.contains("10.0.1.777"));
        let bad = format!("{:08x} {json}", crc32fast::hash(json.as_bytes()));
        let mut rules = Rules::default();
        assert!(read_record(&bad, &mut rules).is_err());
        assert_eq!(rules.len(), 0);

        // Other records read as ops.
        let limits = Op::Admit {
            addr: "198.18.0.9".parse().unwrap(),
            until_ms: 5,
        };
        let line = String::from_utf8(record(&limits)).unwrap();
        assert_eq!(read_record(line.trim_end(), &mut rules), Ok(Some(limits)));
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
