//! Reading every key under a prefix through etcd's JSON gateway a page at
//! a time, every page at the revision of the first (a consistent view),
//! each sent on as it comes, so that it is applied while the next is read:
//! writing the JSON is where etcd's gateway spends most of its time.

use std::{
    io::Read as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    gateway::{b64_decode, b64_encode, range_end},
    keys::Kv,
};

/// Keys per page: a page costs etcd a walk of its index over the rest of
/// the range, so pages much smaller than this add up.
const PAGE: usize = 10_000;

/// What `/v3/kv/range` answers.
#[derive(Debug, Deserialize)]
struct Answer {
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
    /// Whether keys past the limit are left.
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Deserialize)]
struct Header {
    revision: String,
}

/// Reads the keys under `prefix`, posting each range request with `post`,
/// and sends each page on to `pages`; returns the revision read at and the
/// keys read. Stops early, with an error, when `quit` is set or no one
/// takes the pages any more.
pub(super) fn read(
    post: &dyn Fn(&Value) -> Result<ureq::Response, String>,
    prefix: &str,
    quit: &AtomicBool,
    pages: &SyncSender<Vec<Kv>>,
) -> Result<(i64, usize), String> {
    let mut request = json!({
        "key": b64_encode(prefix.as_bytes()),
        "range_end": range_end(prefix),
        "limit": PAGE.to_string(),
    });
    let (mut revision, mut read) = (0, 0);
    loop {
        if quit.load(Ordering::Relaxed) {
            return Err("stopping".to_owned());
        }
        let mut body = Vec::new();
        post(&request)?
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|err| format!("reading the fleet: {err}"))?;
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|err| format!("reading the fleet: {err}"))?;
        if revision == 0 {
            revision = answer.header.revision.parse().unwrap_or(0);
            request["revision"] = revision.to_string().into();
        }
        read += answer.kvs.len();
        // The next page starts just after this one's last key.
        let next = answer
            .kvs
            .last()
            .and_then(|kv| b64_decode(&kv.key))
            .map(|mut key| {
                key.push(0);
                b64_encode(&key)
            });
        if pages.send(answer.kvs).is_err() {
            return Err("stopping".to_owned());
        }
        match next {
            Some(next) if answer.more => request["key"] = next.into(),
            _ => return Ok((revision, read)),
        }
    }
}
