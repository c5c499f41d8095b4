//! Writing to the fleet: what `spacefilter block` and its kin do on a
//! member of a fleet (unless `--local`). The rules go to etcd, and every
//! member, this one included, applies them when its watch sees them, so a
//! rule is in force on this host by the same path as on the others.
//!
//! A timed rule gets a lease of its TTL: etcd deletes its keys when the
//! lease runs out, and every member removes them then. Many prefixes go in
//! transactions of [`TXN_OPS`] keys (etcd's default limit).

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    client::Client,
    etcd::Settings,
    gateway::{b64_decode, b64_encode, int},
};
use crate::net::{List, Prefix};

/// Keys written per transaction.
const TXN_OPS: usize = 128;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the fleet's etcd cluster.
pub struct Publisher {
    client: Client,
    settings: Settings,
}

impl Publisher {
    /// For the fleet `name` at `endpoints` (comma-separated), as the
    /// daemon's `status` shows its link: no TLS options, no login.
    pub fn new(endpoints: &str, name: &str) -> Result<Self, String> {
        Ok(Self::from_settings(Settings::new(
            endpoints,
            name,
            std::path::Path::new("/"),
        )?))
    }

    /// For the fleet of `settings`, with its TLS and login.
    #[must_use]
    pub fn from_settings(settings: Settings) -> Self {
        let client = Client::new(
            &settings,
            ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT),
        );
        Self { client, settings }
    }

    /// Posts to the first member that answers.
    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.client.post(path, body)
    }

    fn key(&self, list: List, prefix: Prefix) -> String {
        format!("{}{}/{prefix}", self.settings.prefix(), list.name())
    }

    /// Writes rules; returns the revision they were written at.
    pub fn put(
        &self,
        list: List,
        prefixes: &[Prefix],
        ttl: Option<Duration>,
        comment: Option<&str>,
    ) -> Result<i64, String> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        self.put_valued(
            list,
            prefixes,
            ttl,
            &json!({"comment": comment, "host": host}),
        )
    }

    /// Writes rules, each with `value`; returns the revision they were
    /// written at.
    pub(super) fn put_valued(
        &self,
        list: List,
        prefixes: &[Prefix],
        ttl: Option<Duration>,
        value: &Value,
    ) -> Result<i64, String> {
        let lease = match ttl {
            Some(ttl) => {
                let granted = self.post(
                    "/v3/lease/grant",
                    &json!({"TTL": ttl.as_secs().max(1).to_string()}),
                )?;
                int(&granted["ID"])
            }
            None => 0,
        };
        let value = b64_encode(value.to_string().as_bytes());
        let mut revision = 0;
        for chunk in prefixes.chunks(TXN_OPS) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|&p| {
                    json!({"request_put": {
                        "key": b64_encode(self.key(list, p).as_bytes()),
                        "value": value,
                        "lease": lease.to_string(),
                    }})
                })
                .collect();
            let answer = self.post("/v3/kv/txn", &json!({"success": ops}))?;
            revision = int(&answer["header"]["revision"]);
        }
        Ok(revision)
    }

    /// Deletes rules; returns the revision they were deleted at.
    /// 0 if none of them was there: etcd then writes nothing, and its
    /// revision may have moved on by keys of others.
    pub fn delete(&self, list: List, prefixes: &[Prefix]) -> Result<i64, String> {
        let mut revision = 0;
        for chunk in prefixes.chunks(TXN_OPS) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|&p| {
                    json!({"request_delete_range": {
                        "key": b64_encode(self.key(list, p).as_bytes()),
                    }})
                })
                .collect();
            let answer = self.post("/v3/kv/txn", &json!({"success": ops}))?;
            let deleted = answer["responses"].as_array().is_some_and(|responses| {
                responses
                    .iter()
                    .any(|r| int(&r["response_delete_range"]["deleted"]) > 0)
            });
            if deleted {
                revision = int(&answer["header"]["revision"]);
            }
        }
        Ok(revision)
    }

    /// The key of one of the fleet's settings.
    pub(super) fn setting_key(&self, name: &str) -> String {
        format!("{}{SETTINGS}/{name}", self.settings.prefix())
    }

    /// Writes one of the fleet's settings; returns the revision.
    pub(super) fn put_setting(&self, name: &str, value: &Value) -> Result<i64, String> {
        let answer = self.post(
            "/v3/kv/put",
            &json!({
                "key": b64_encode(self.setting_key(name).as_bytes()),
                "value": b64_encode(value.to_string().as_bytes()),
            }),
        )?;
        Ok(int(&answer["header"]["revision"]))
    }

    /// One of the fleet's settings and the revision it was last changed
    /// at (0 and `None` if the fleet has none).
    pub(super) fn setting(&self, name: &str) -> Result<(i64, Option<Value>), String> {
        let answer = self.post(
            "/v3/kv/range",
            &json!({"key": b64_encode(self.setting_key(name).as_bytes())}),
        )?;
        let Some(kv) = answer["kvs"].as_array().and_then(|kvs| kvs.first()) else {
            return Ok((0, None));
        };
        let value = kv["value"]
            .as_str()
            .and_then(b64_decode)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| format!("the fleet's {name} are not JSON"))?;
        Ok((int(&kv["mod_revision"]), Some(value)))
    }

    /// Writes one of the fleet's settings if it is still as it was at
    /// `seen` (its revision, 0 for none); `None` if it changed meanwhile.
    pub(super) fn swap_setting(
        &self,
        name: &str,
        seen: i64,
        value: &Value,
    ) -> Result<Option<i64>, String> {
        let key = b64_encode(self.setting_key(name).as_bytes());
        let answer = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{
                    "key": key,
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": seen.to_string(),
                }],
                "success": [{"request_put": {
                    "key": key,
                    "value": b64_encode(value.to_string().as_bytes()),
                }}],
            }),
        )?;
        Ok((answer["succeeded"] == true).then(|| int(&answer["header"]["revision"])))
    }
}

/// Where the fleet's settings are, under its prefix: `limits`, `rules`
/// and `shield`, each a JSON value.
pub(super) const SETTINGS: &str = "settings";
