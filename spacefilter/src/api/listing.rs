//! The `entries` reply, streamed. On the wire it is the one line it always
//! was, `{"type":"entries","entries":[...]}`; but the daemon writes it an
//! entry at a time ([`ENTRIES_HEAD`], [`EntryRef::write_json`],
//! [`ENTRIES_TAIL`]), and the client reads it an entry at a time as it
//! arrives ([`read_streamed`]), so that a million entries are never all
//! held as values on either side, and the client prints while the daemon
//! still writes.

use std::{
    borrow::Cow,
    fmt,
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{
    Deserialize, Serialize, Serializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};

use super::{EntryView, Origin, Response};
use crate::net::{List, Prefix};

/// What an `entries` reply starts with, up to its first entry.
pub const ENTRIES_HEAD: &[u8] = b"{\"type\":\"entries\",\"entries\":[";
/// What comes between two entries.
pub const ENTRIES_SEPARATOR: u8 = b',';
/// What an `entries` reply ends with, after its last entry.
pub const ENTRIES_TAIL: &[u8] = b"]}\n";

/// An entry as [`EntryView`] shows it, borrowed: serialized as the view
/// is, field for field.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EntryRef<'a> {
    pub list: List,
    #[serde(serialize_with = "as_text")]
    pub prefix: Prefix,
    pub origin: Origin,
    pub comment: Option<&'a str>,
    pub expires_in_secs: Option<u64>,
    pub hits: u64,
}

fn as_text<S: Serializer>(prefix: &Prefix, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(prefix)
}

impl EntryRef<'_> {
    /// Appends the entry's JSON to `out`: the bytes serde writes for it
    /// (and for its [`EntryView`]), without the formatting machinery, at a
    /// fraction of the cost for a million entries.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"list\":\"");
        out.extend_from_slice(self.list.name().as_bytes());
        out.extend_from_slice(b"\",\"prefix\":\"");
        write_prefix(out, self.prefix);
        out.extend_from_slice(b"\",\"origin\":\"");
        out.extend_from_slice(self.origin.name().as_bytes());
        out.extend_from_slice(b"\",\"comment\":");
        match self.comment {
            Some(text) => serde_json::to_writer(&mut *out, text).expect("a string serializes"),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"expires_in_secs\":");
        match self.expires_in_secs {
            Some(secs) => write_decimal(out, secs),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"hits\":");
        write_decimal(out, self.hits);
        out.push(b'}');
    }
}

/// Appends `n` in decimal.
pub fn write_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal_digits(n, &mut [0; 20]));
}

/// `n` in decimal, written into `digits`.
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &str {
    std::str::from_utf8(decimal_digits(n, digits)).expect("ASCII digits")
}

fn decimal_digits(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(n % 10).expect("a digit");
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// Appends `prefix` as its `Display` writes it, by hand: the formatting
/// machinery costs more than the rest of the entry.
fn write_prefix(out: &mut Vec<u8>, prefix: Prefix) {
    match prefix.addr() {
        IpAddr::V4(addr) => write_v4(out, addr),
        IpAddr::V6(addr) => write_v6(out, addr),
    }
    out.push(b'/');
    write_decimal(out, prefix.len().into());
}

fn write_v4(out: &mut Vec<u8>, addr: Ipv4Addr) {
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        write_decimal(out, octet.into());
    }
}

/// An IPv6 address as `Ipv6Addr`'s `Display` writes it (RFC 5952: hex
/// groups without leading zeros, the first longest run of two or more
/// zero groups as `::`; an IPv4-mapped address as `::ffff:a.b.c.d`).
fn write_v6(out: &mut Vec<u8>, addr: Ipv6Addr) {
    if let Some(v4) = addr.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        return write_v4(out, v4);
    }
    let groups = addr.segments();
    let (mut zeros, mut run) = ((0, 0), (0, 0));
    for (i, &group) in groups.iter().enumerate() {
        if group == 0 {
            run = if run.1 == 0 {
                (i, 1)
            } else {
                (run.0, run.1 + 1)
            };
            if run.1 > zeros.1 {
                zeros = run;
            }
        } else {
            run = (0, 0);
        }
    }
    let hex = |out: &mut Vec<u8>, groups: &[u16]| {
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            let digits = group.to_be_bytes();
            let nibbles = [
                digits[0] >> 4,
                digits[0] & 15,
                digits[1] >> 4,
                digits[1] & 15,
            ];
            let first = nibbles.iter().position(|&n| n != 0).unwrap_or(3);
            out.extend(
                nibbles[first..]
                    .iter()
                    .map(|&n| b"0123456789abcdef"[usize::from(n)]),
            );
        }
    };
    if zeros.1 > 1 {
        hex(out, &groups[..zeros.0]);
        out.extend_from_slice(b"::");
        hex(out, &groups[zeros.0 + zeros.1..]);
    } else {
        hex(out, &groups);
    }
}

impl From<EntryRef<'_>> for EntryView {
    fn from(e: EntryRef<'_>) -> Self {
        EntryView {
            list: e.list,
            prefix: e.prefix.to_string(),
            origin: e.origin,
            comment: e.comment.map(str::to_owned),
            expires_in_secs: e.expires_in_secs,
            hits: e.hits,
        }
    }
}

/// An entry as the client reads it from a reply: [`EntryView`], with its
/// text borrowed from the reply where it can be. Serialized as the view
/// is.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryText<'a> {
    pub list: List,
    #[serde(borrow)]
    pub prefix: Cow<'a, str>,
    pub origin: Origin,
    #[serde(default, borrow)]
    pub comment: Option<Cow<'a, str>>,
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    pub hits: u64,
}

/// A handler of the entries of a listing, one at a time: each entry, and
/// its JSON when that is byte for byte what serde writes for the entry
/// (the daemon's own form: a client that prints JSON copies it).
pub type EachEntry<'a> = dyn FnMut(&EntryText<'_>, Option<&[u8]>) -> io::Result<()> + 'a;

/// What a listing reply held.
#[derive(Debug)]
pub enum Listed {
    /// Entries, with how many (each handed on).
    Entries(u64),
    /// Another reply (an error, say).
    Other(Box<Response>),
    /// The handler failed on an entry; the rest were not read.
    Stopped(io::Error),
}

/// Why a listing reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the reply: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection in the middle of the reply")]
    Closed,
    #[error("{0}")]
    Garbled(String),
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 << 10;

/// Reads the reply to a `list` request from `input` (after `pending`, what
/// was read of it already), handing each entry to `each` as soon as it has
/// arrived. A reply that is not an `entries` reply is read whole.
pub fn read_streamed(
    input: &mut impl Read,
    pending: Vec<u8>,
    each: &mut EachEntry<'_>,
) -> Result<Listed, ReadError> {
    let mut reader = Chunks::new(input, pending);
    while reader.rest().len() < ENTRIES_HEAD.len() && !reader.rest().contains(&b'\n') {
        reader.more()?;
    }
    if !reader.rest().starts_with(ENTRIES_HEAD) {
        let line = reader.rest_of_line()?;
        return read_reply(&line, each).map_err(|err| ReadError::Garbled(err.to_string()));
    }
    reader.at = ENTRIES_HEAD.len();
    let mut count = 0;
    loop {
        match reader.next_byte()? {
            b'{' => {
                let (entry, len, canonical) = loop {
                    match parse_entry(reader.rest()) {
                        Ok(Some(parsed)) => break parsed,
                        Ok(None) => reader.more()?,
                        Err(err) => {
                            return Err(ReadError::Garbled(format!("entry {}: {err}", count + 1)));
                        }
                    }
                };
                let json = canonical.then(|| &reader.rest()[..len]);
                if let Err(err) = each(&entry, json) {
                    return Ok(Listed::Stopped(err));
                }
                count += 1;
                reader.at += len;
                match reader.next_byte()? {
                    ENTRIES_SEPARATOR => reader.at += 1,
                    b']' => break,
                    other => return Err(garbled(other)),
                }
            }
            b']' if count == 0 => break,
            other => return Err(garbled(other)),
        }
    }
    // The rest of the reply (`}` and the newline) holds no entries.
    reader.rest_of_line()?;
    Ok(Listed::Entries(count))
}

fn garbled(byte: u8) -> ReadError {
    ReadError::Garbled(format!(
        "unexpected {:?} in the list of entries",
        char::from(byte)
    ))
}

/// The bytes of a reply, read a chunk at a time: `buf[at..end]` is read
/// from the socket, not parsed yet (`buf` past `end` is room for more).
struct Chunks<'r, R> {
    input: &'r mut R,
    buf: Vec<u8>,
    at: usize,
    end: usize,
}

impl<R: Read> Chunks<'_, R> {
    fn new(input: &mut R, pending: Vec<u8>) -> Chunks<'_, R> {
        let end = pending.len();
        Chunks {
            input,
            buf: pending,
            at: 0,
            end,
        }
    }

    /// What is read and not parsed yet.
    fn rest(&self) -> &[u8] {
        &self.buf[self.at..self.end]
    }

    /// Reads more, moving what is not parsed yet to the front first.
    fn more(&mut self) -> Result<(), ReadError> {
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        if self.buf.len() - self.end < READ_CHUNK / 2 {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        let n = loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// The next byte not parsed yet, past white space.
    fn next_byte(&mut self) -> Result<u8, ReadError> {
        loop {
            if let Some(skip) = self.rest().iter().position(|b| !b.is_ascii_whitespace()) {
                self.at += skip;
                return Ok(self.buf[self.at]);
            }
            self.at = self.end;
            self.more()?;
        }
    }

    /// Everything from `at` to the end of the line.
    fn rest_of_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(end) = self.rest().iter().position(|&b| b == b'\n') {
                return Ok(self.rest()[..end].to_vec());
            }
            self.more()?;
        }
    }
}

/// The entry at the start of `bytes`, its length, and whether it is
/// written exactly as serde writes it; `None` if it has not all arrived
/// yet.
fn parse_entry(bytes: &[u8]) -> serde_json::Result<Option<(EntryText<'_>, usize, bool)>> {
    if let Some((entry, len)) = quick_entry(bytes) {
        return Ok(Some((entry, len, true)));
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<EntryText<'_>>();
    match stream.next() {
        Some(Ok(entry)) => Ok(Some((entry, stream.byte_offset(), false))),
        Some(Err(err)) if err.is_eof() => Ok(None),
        Some(Err(err)) => Err(err),
        None => Ok(None),
    }
}

/// The entry at the start of `bytes` if it is written as the daemon
/// writes it ([`EntryRef::write_json`]: its fields in order, no escapes in
/// its strings, numbers without leading zeros), read without the general
/// parser, which takes most of a client's time on a long listing; `None`
/// for anything else (an entry written otherwise, or cut short), which the
/// general parser reads. What it reads is thus written exactly as serde
/// writes the entry back.
fn quick_entry(bytes: &[u8]) -> Option<(EntryText<'_>, usize)> {
    let mut at = 0;
    let expect = |text: &[u8], at: &mut usize| -> Option<()> {
        bytes.get(*at..*at + text.len()).filter(|b| *b == text)?;
        *at += text.len();
        Some(())
    };
    // A string with nothing to unescape: up to its closing quote.
    let string = |at: &mut usize| -> Option<&str> {
        let rest = bytes.get(*at..)?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        (rest[len] == b'"').then_some(())?;
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        *at += len + 1;
        Some(text)
    };
    let number = |at: &mut usize| -> Option<u64> {
        let rest = bytes.get(*at..)?;
        let len = rest.iter().position(|b| !b.is_ascii_digit())?;
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        let n = std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?;
        *at += len;
        Some(n)
    };
    let null = |at: &mut usize| -> bool {
        let is = bytes.get(*at..*at + 4) == Some(b"null");
        if is {
            *at += 4;
        }
        is
    };
    expect(b"{\"list\":\"", &mut at)?;
    let list = match string(&mut at)? {
        "allow" => List::Allow,
        "block" => List::Block,
        "auto" => List::Auto,
        _ => return None,
    };
    expect(b",\"prefix\":\"", &mut at)?;
    let prefix = string(&mut at)?;
    expect(b",\"origin\":\"", &mut at)?;
    let origin = match string(&mut at)? {
        "manual" => Origin::Manual,
        "file" => Origin::File,
        "config" => Origin::Config,
        "auto" => Origin::Auto,
        _ => return None,
    };
    expect(b",\"comment\":", &mut at)?;
    let comment = if null(&mut at) {
        None
    } else {
        expect(b"\"", &mut at)?;
        Some(Cow::Borrowed(string(&mut at)?))
    };
    expect(b",\"expires_in_secs\":", &mut at)?;
    let expires_in_secs = if null(&mut at) {
        None
    } else {
        Some(number(&mut at)?)
    };
    expect(b",\"hits\":", &mut at)?;
    let hits = number(&mut at)?;
    expect(b"}", &mut at)?;
    let entry = EntryText {
        list,
        prefix: Cow::Borrowed(prefix),
        origin,
        comment,
        expires_in_secs,
        hits,
    };
    Some((entry, at))
}

/// Reads a whole reply line to a `list` request, handing each entry to
/// `each` as it is parsed.
pub fn read_reply(line: &[u8], each: &mut EachEntry<'_>) -> Result<Listed, serde_json::Error> {
    let mut reply = Reply { each, failed: None };
    let parts = match (&mut reply).deserialize(&mut serde_json::Deserializer::from_slice(line)) {
        Ok(parts) => parts,
        Err(_) if reply.failed.is_some() => {
            return Ok(Listed::Stopped(reply.failed.take().expect("checked")));
        }
        Err(err) => return Err(err),
    };
    match parts {
        Parts {
            kind: Some(kind),
            entries: Some(n),
            ..
        } if kind == "entries" => Ok(Listed::Entries(n)),
        Parts { kind, mut rest, .. } => {
            if let Some(kind) = kind {
                rest.insert("type".to_owned(), serde_json::Value::String(kind));
            }
            serde_json::from_value(serde_json::Value::Object(rest))
                .map(|r| Listed::Other(Box::new(r)))
        }
    }
}

/// The parse of a reply line: entries go to `each` as they come.
struct Reply<'e, 'a> {
    each: &'e mut EachEntry<'a>,
    /// What `each` failed with, if it did.
    failed: Option<io::Error>,
}

/// A reply's members: its type, how many entries it held (if it held
/// any), and any others, for a reply that is not a listing.
#[derive(Default)]
struct Parts {
    kind: Option<String>,
    entries: Option<u64>,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl<'de> DeserializeSeed<'de> for &mut Reply<'_, '_> {
    type Value = Parts;

    fn deserialize<D: de::Deserializer<'de>>(self, input: D) -> Result<Parts, D::Error> {
        input.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Reply<'_, '_> {
    type Value = Parts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reply object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut parts = Parts::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => parts.kind = Some(map.next_value()?),
                "entries" => parts.entries = Some(map.next_value_seed(Entries(&mut *self))?),
                _ => {
                    parts.rest.insert(key, map.next_value()?);
                }
            }
        }
        Ok(parts)
    }
}

/// The `entries` array, each entry handed on as it is parsed.
struct Entries<'r, 'e, 'a>(&'r mut Reply<'e, 'a>);

impl<'de> DeserializeSeed<'de> for Entries<'_, '_, '_> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, input: D) -> Result<u64, D::Error> {
        input.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_, '_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(entry) = seq.next_element::<EntryText<'de>>()? {
            if let Err(err) = (self.0.each)(&entry, None) {
                self.0.failed = Some(err);
                return Err(de::Error::custom("the listing was stopped"));
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
