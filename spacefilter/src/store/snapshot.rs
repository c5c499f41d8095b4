//! The snapshot: every rule and the last settings, replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory).
//!
//! `rules.bin`, in a format of its own, read at every start: a million
//! rules read in a fraction of the time JSON takes, and in half its size.
//! All integers little-endian:
//!
//! ```text
//! magic       16 bytes, "spacefilter snap"
//! version     u32 (FORMAT_VERSION)
//! folded      u64, the last journal segment the snapshot holds
//! settings    u32 length, then JSON: limits, header_rules, shield, admitted
//! metas       u32 count, then each: u32 id, u8 origin, u64 added_at_ms,
//!             u8 flags (1: expires, 2: comment), [u64 expires_at_ms],
//!             [u32 length, UTF-8 comment]
//! rules       u64 count, then each in (list, prefix) order: u8 list
//!             (| 0x80 for IPv6), u8 prefix length, 4 or 16 address bytes,
//!             u32 meta id
//! checksum    u32, CRC-32 of every byte before it
//! ```
//!
//! A snapshot written as JSON (`rules.json`, by spacefilter before this
//! format) is read where there is no `rules.bin`, and replaced by one at
//! the fold that follows the start.

use std::{
    fs::{self, File},
    io::{self, BufRead as _, BufReader, BufWriter, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    FORMAT_VERSION, JSON_SNAPSHOT, JSON_VERSION, Rules, SNAPSHOT, Settings, StateError, io_err,
    records::{Admission, Guards, HeaderRule, Meta, Origin, Shield, Snapshot},
    rules::Builder,
};
use crate::net::{List, Prefix};

const MAGIC: &[u8; 16] = b"spacefilter snap";
/// Bytes read and written at a time.
const BUFFER: usize = 256 << 10;
/// Larger lengths than these are damage, not data: refused before
/// anything is allocated for them.
const SETTINGS_MAX: u32 = 64 << 20;
const COMMENT_MAX: u32 = 1 << 20;

const HAS_EXPIRY: u8 = 1;
const HAS_COMMENT: u8 = 2;
const V6: u8 = 0x80;

/// The settings, as the snapshot carries them.
#[derive(Serialize)]
struct SettingsOut<'a> {
    limits: Option<&'a Guards>,
    header_rules: &'a [HeaderRule],
    shield: Option<&'a Shield>,
    admitted: &'a [Admission],
}

#[derive(Deserialize)]
struct SettingsIn {
    #[serde(default)]
    limits: Option<Guards>,
    #[serde(default)]
    header_rules: Vec<HeaderRule>,
    #[serde(default)]
    shield: Option<Shield>,
    #[serde(default)]
    admitted: Vec<Admission>,
}

/// Reads the snapshot of `dir`: `rules.bin`, else a `rules.json` written
/// before it (to be rewritten as `rules.bin` by the fold after the start:
/// `true` then); its path, and what it holds.
pub(super) fn read_in(dir: &Path) -> (PathBuf, bool, Result<(Rules, Settings, u64), StateError>) {
    let binary = dir.join(SNAPSHOT);
    if binary.exists() {
        // Left by a crash after a fold wrote the first `rules.bin`, which
        // holds all it held.
        let _ = fs::remove_file(dir.join(JSON_SNAPSHOT));
    } else {
        let json = dir.join(JSON_SNAPSHOT);
        if json.exists() {
            let read = read_json(&json);
            return (json, true, read);
        }
    }
    let read = read(&binary);
    (binary, false, read)
}

/// The rules and the settings of the snapshot at `path` (nothing, if there
/// is none yet), and the last journal segment it folds.
fn read(path: &Path) -> Result<(Rules, Settings, u64), StateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok((Rules::new(), Settings::default(), 0));
        }
        Err(err) => return Err(io_err(path, "reading")(err)),
    };
    let len = file
        .metadata()
        .map_err(io_err(path, "reading the size of"))?
        .len();
    let corrupt = |message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        line: 0,
        message,
    };
    let Some(summed) = len.checked_sub(4) else {
        return Err(corrupt(format!("{len} bytes, too short for a snapshot")));
    };
    let mut input = Input {
        inner: BufReader::with_capacity(
            BUFFER,
            Summed {
                inner: file,
                left: summed,
                crc: crc32fast::Hasher::new(),
            },
        ),
        at: 0,
    };
    match input.snapshot() {
        Ok(Parsed::Done(done)) => Ok(*done),
        Ok(Parsed::Version(found)) => Err(StateError::Version {
            path: path.to_path_buf(),
            found,
            reads: FORMAT_VERSION,
        }),
        Err(why) => Err(corrupt(format!("{why} (at byte {})", input.at))),
    }
}

/// What a snapshot holds, or the version it says it has if not this one.
enum Parsed {
    Done(Box<(Rules, Settings, u64)>),
    Version(u32),
}

/// A file read with a CRC-32 of its first `left` bytes.
struct Summed {
    inner: File,
    left: u64,
    crc: crc32fast::Hasher,
}

impl Read for Summed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let summed = usize::try_from(self.left).unwrap_or(usize::MAX).min(n);
        self.crc.update(&buf[..summed]);
        self.left -= summed as u64;
        Ok(n)
    }
}

/// The snapshot as it is read, and where.
struct Input {
    inner: BufReader<Summed>,
    at: u64,
}

impl Input {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        self.inner.read_exact(&mut out).map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                "cut short".to_owned()
            } else {
                err.to_string()
            }
        })?;
        self.at += N as u64;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes().map(u64::from_le_bytes)
    }

    fn vec(&mut self, len: u32, max: u32, what: &str) -> Result<Vec<u8>, String> {
        if len > max {
            return Err(format!("{what} of {len} bytes, more than {max}"));
        }
        let mut out = vec![0; len as usize];
        self.inner
            .read_exact(&mut out)
            .map_err(|_| "cut short".to_owned())?;
        self.at += u64::from(len);
        Ok(out)
    }

    fn snapshot(&mut self) -> Result<Parsed, String> {
        if &self.bytes::<16>()? != MAGIC {
            return Err("not a spacefilter snapshot".to_owned());
        }
        let version = self.u32()?;
        if version != FORMAT_VERSION {
            return Ok(Parsed::Version(version));
        }
        let folded = self.u64()?;
        let len = self.u32()?;
        let json = self.vec(len, SETTINGS_MAX, "settings")?;
        let SettingsIn {
            limits,
            header_rules,
            shield,
            admitted,
        } = serde_json::from_slice(&json).map_err(|err| format!("the settings: {err}"))?;
        let mut built = Builder::default();
        // The file's meta ids, and the ones they have here.
        let mut ids = std::collections::HashMap::new();
        for _ in 0..self.u32()? {
            let id = self.u32()?;
            let meta = self.meta()?;
            ids.insert(id, built.meta(meta));
        }
        // Rules in a row share their meta more often than not.
        let mut last = None;
        for _ in 0..self.u64()? {
            let key = self.key()?;
            let file_id = self.u32()?;
            let id = match last {
                Some((seen, id)) if seen == file_id => id,
                _ => *ids
                    .get(&file_id)
                    .ok_or_else(|| format!("a rule of meta {file_id}, not in the file"))?,
            };
            last = Some((file_id, id));
            built.push(key, id);
        }
        let stated = self.u32()?;
        if self.inner.fill_buf().is_ok_and(|rest| !rest.is_empty()) {
            return Err("bytes after the checksum".to_owned());
        }
        let computed = self.inner.get_ref().crc.clone().finalize();
        if stated != computed {
            return Err(format!(
                "checksum {stated:08x} stated, {computed:08x} computed"
            ));
        }
        Ok(Parsed::Done(Box::new((
            built.finish(),
            Settings {
                limits,
                header_rules,
                shield,
                admitted,
            },
            folded,
        ))))
    }

    fn meta(&mut self) -> Result<Meta, String> {
        let origin = match self.u8()? {
            0 => Origin::Manual,
            1 => Origin::File,
            2 => Origin::Config,
            3 => Origin::Auto,
            4 => Origin::Fleet,
            5 => Origin::Crowdsec,
            other => return Err(format!("origin {other}")),
        };
        let added_at_ms = self.u64()?;
        let flags = self.u8()?;
        let expires_at_ms = if flags & HAS_EXPIRY != 0 {
            Some(self.u64()?)
        } else {
            None
        };
        let comment = if flags & HAS_COMMENT != 0 {
            let len = self.u32()?;
            let bytes = self.vec(len, COMMENT_MAX, "a comment")?;
            Some(String::from_utf8(bytes).map_err(|_| "a comment not in UTF-8".to_owned())?)
        } else {
            None
        };
        Ok(Meta {
            origin,
            comment,
            expires_at_ms,
            added_at_ms,
        })
    }

    fn key(&mut self) -> Result<(List, Prefix), String> {
        let tag = self.u8()?;
        let list = match tag & !V6 {
            0 => List::Allow,
            1 => List::Block,
            2 => List::Auto,
            other => return Err(format!("list {other}")),
        };
        let len = self.u8()?;
        let addr = if tag & V6 != 0 {
            IpAddr::V6(Ipv6Addr::from(self.bytes::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.bytes::<4>()?))
        };
        let max = if addr.is_ipv6() { 128 } else { 32 };
        if len > max {
            return Err(format!("{addr}/{len}"));
        }
        let prefix = Prefix::truncating(addr, len);
        if prefix.addr() != addr {
            return Err(format!("{addr}/{len} has host bits set"));
        }
        Ok((list, prefix))
    }
}

/// Reads a snapshot written as JSON (before `rules.bin`).
fn read_json(path: &Path) -> Result<(Rules, Settings, u64), StateError> {
    match File::open(path) {
        Ok(file) => {
            let snapshot: Snapshot =
                serde_json::from_reader(BufReader::new(file)).map_err(|err| {
                    StateError::Corrupt {
                        path: path.to_path_buf(),
                        line: err.line(),
                        message: err.to_string(),
                    }
                })?;
            if snapshot.version != JSON_VERSION {
                return Err(StateError::Version {
                    path: path.to_path_buf(),
                    found: snapshot.version,
                    reads: JSON_VERSION,
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
        Err(err) => Err(io_err(path, "reading")(err)),
    }
}

/// Replaces the snapshot `name` in `dir` with `rules` and `settings`,
/// folding every journal segment up to `folded`, durably.
pub(super) fn write(
    dir: &Path,
    name: &str,
    (rules, settings, folded): (&Rules, &Settings, u64),
) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = write_tmp(&tmp, rules, settings, folded);
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

/// A writer that sums what goes through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot to `tmp`, durably.
fn write_tmp(
    tmp: &Path,
    rules: &Rules,
    settings: &Settings,
    folded: u64,
) -> Result<(), StateError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err(tmp, "creating"))?;
    let mut out = BufWriter::with_capacity(
        BUFFER,
        Summing {
            inner: file,
            crc: crc32fast::Hasher::new(),
        },
    );
    encode(&mut out, rules, settings, folded).map_err(io_err(tmp, "writing"))?;
    let Summing {
        inner: mut file,
        crc,
    } = out
        .into_inner()
        .map_err(|e| io_err(tmp, "writing")(e.into_error()))?;
    file.write_all(&crc.finalize().to_le_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(tmp, "writing"))
}

/// Everything before the checksum.
fn encode(out: &mut impl Write, rules: &Rules, settings: &Settings, folded: u64) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&folded.to_le_bytes())?;
    let json = serde_json::to_vec(&SettingsOut {
        limits: settings.limits.as_ref(),
        header_rules: &settings.header_rules,
        shield: settings.shield.as_ref(),
        admitted: &settings.admitted,
    })
    .map_err(io::Error::other)?;
    out.write_all(&len32(json.len())?.to_le_bytes())?;
    out.write_all(&json)?;
    let metas: Vec<(u32, &Meta)> = rules.held_metas().collect();
    out.write_all(&len32(metas.len())?.to_le_bytes())?;
    for (id, meta) in metas {
        let origin: u8 = match meta.origin {
            Origin::Manual => 0,
            Origin::File => 1,
            Origin::Config => 2,
            Origin::Auto => 3,
            Origin::Fleet => 4,
            Origin::Crowdsec => 5,
        };
        let mut flags = 0;
        if meta.expires_at_ms.is_some() {
            flags |= HAS_EXPIRY;
        }
        if meta.comment.is_some() {
            flags |= HAS_COMMENT;
        }
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&[origin])?;
        out.write_all(&meta.added_at_ms.to_le_bytes())?;
        out.write_all(&[flags])?;
        if let Some(at) = meta.expires_at_ms {
            out.write_all(&at.to_le_bytes())?;
        }
        if let Some(comment) = &meta.comment {
            out.write_all(&len32(comment.len())?.to_le_bytes())?;
            out.write_all(comment.as_bytes())?;
        }
    }
    let keys = rules.iter_ids();
    out.write_all(&(keys.len() as u64).to_le_bytes())?;
    for (&(list, prefix), id) in keys {
        let list: u8 = match list {
            List::Allow => 0,
            List::Block => 1,
            List::Auto => 2,
        };
        match prefix.addr() {
            IpAddr::V4(addr) => {
                out.write_all(&[list, prefix.len()])?;
                out.write_all(&addr.octets())?;
            }
            IpAddr::V6(addr) => {
                out.write_all(&[list | V6, prefix.len()])?;
                out.write_all(&addr.octets())?;
            }
        }
        out.write_all(&id.to_le_bytes())?;
    }
    Ok(())
}

fn len32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::other(format!("{len} is too long for the snapshot")))
}

#[cfg(test)]
mod tests;
