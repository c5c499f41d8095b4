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
    etcd::Settings,
    gateway::{b64_encode, int, json_of},
};
use crate::net::{List, Prefix};

/// Keys written per transaction.
const TXN_OPS: usize = 128;

/// A client of the fleet's etcd cluster.
pub struct Publisher {
    agent: ureq::Agent,
    settings: Settings,
}

impl Publisher {
    /// For the fleet `name` at `endpoints` (comma-separated), as the
    /// daemon's `status` shows its link.
    pub fn new(endpoints: &str, name: &str) -> Result<Self, String> {
        let settings = Settings::new(endpoints, name, std::path::Path::new("/"))?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        Ok(Self { agent, settings })
    }

    /// Posts to the first member that answers.
    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut last = String::new();
        for endpoint in &self.settings.endpoints {
            match self
                .agent
                .post(&format!("{endpoint}{path}"))
                .set("Content-Type", "application/json")
                .send_string(&body.to_string())
            {
                Ok(response) => return json_of(response),
                Err(err) => last = format!("{endpoint}: {err}"),
            }
        }
        Err(last)
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
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let value = json!({"comment": comment, "host": host}).to_string();
        let value = b64_encode(value.as_bytes());
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
            revision = int(&answer["header"]["revision"]);
        }
        Ok(revision)
    }
}
