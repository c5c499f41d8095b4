//! The fleet's keys in etcd: `/spacefilter/<fleet>/<list>/<prefix>`, with
//! a JSON value (the comment; the member, for a shared auto-block) and
//! the lease that times the rule out.

use serde::Deserialize;
use serde_json::Value;

use super::gateway::b64_decode;
use crate::net::{List, Prefix};

/// One rule as the fleet holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FleetRule {
    pub(super) list: List,
    pub(super) prefix: Prefix,
    pub(super) comment: Option<String>,
    pub(super) lease: i64,
    /// The member that wrote it for itself (a shared auto-block).
    pub(super) member: Option<String>,
}

/// A key as the gateway writes it (base64), with its value and lease.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Kv {
    #[serde(default)]
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
    #[serde(default)]
    lease: Option<String>,
}

/// Reads a key and its value; `None` for a key that is not a rule (logged).
pub(super) fn rule_of(kv: &Kv, prefix: &str) -> Option<FleetRule> {
    let key = String::from_utf8(b64_decode(&kv.key)?).ok()?;
    let rest = key.strip_prefix(prefix)?;
    let (list, text) = rest.split_once('/')?;
    let list = match list {
        "block" => List::Block,
        "allow" => List::Allow,
        _ => return None,
    };
    let Ok(parsed) = text.parse::<Prefix>() else {
        log::warn!("fleet: key {key:?} does not name a prefix; ignored");
        return None;
    };
    let value: Value = b64_decode(&kv.value)
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or(Value::Null);
    Some(FleetRule {
        list,
        prefix: parsed,
        comment: value["comment"]
            .as_str()
            .map(|c| c.chars().take(200).collect()),
        lease: kv
            .lease
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
        member: value["member"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::gateway::b64_encode;

    #[test]
    fn keys_are_read() {
        let kv = Kv {
            key: b64_encode(b"/spacefilter/edge/block/198.18.2.0/24"),
            value: b64_encode(br#"{"comment":"flood"}"#),
            lease: Some("7".into()),
        };
        let rule = rule_of(&kv, "/spacefilter/edge/").unwrap();
        assert_eq!(rule.list, List::Block);
        assert_eq!(rule.prefix, "198.18.2.0/24".parse().unwrap());
        assert_eq!(rule.comment.as_deref(), Some("flood"));
        assert_eq!(rule.lease, 7);
        let other = Kv {
            key: b64_encode(b"/spacefilter/edge/shield"),
            ..Kv::default()
        };
        assert!(rule_of(&other, "/spacefilter/edge/").is_none());
    }
}
