//! The records the state directory holds, in types of its own: the control
//! protocol can change without changing what is on disk, and a file
//! written by an older spacefilter stays readable. A field added later is
//! optional here, and whoever reads the record fills in its default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Batch, Rules};
use crate::net::{List, Prefix};

/// Where an entry came from, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Manual,
    File,
    Config,
    Auto,
    Fleet,
    Crowdsec,
}

/// What the daemon knows of a rule beyond its prefix. (Hashed: rules
/// share equal metas, see [`Rules`].)
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Milliseconds since the Unix epoch; none for a permanent rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub added_at_ms: u64,
}

impl Meta {
    /// Time left before the rule expires, or `None` if it never does.
    #[must_use]
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        self.expires_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
    }
}

/// One rule as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RuleFields")]
pub struct Rule {
    pub list: List,
    pub prefix: Prefix,
    #[serde(flatten)]
    pub meta: Meta,
}

/// A [`Rule`] as read: its fields side by side. (Read through `flatten`,
/// every field of the meta would go through serde's buffered `Content`
/// first, which made reading a snapshot of a million rules take seconds.)
#[derive(Deserialize)]
struct RuleFields {
    list: List,
    prefix: Prefix,
    origin: Origin,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    added_at_ms: u64,
}

impl From<RuleFields> for Rule {
    fn from(fields: RuleFields) -> Self {
        let RuleFields {
            list,
            prefix,
            origin,
            comment,
            expires_at_ms,
            added_at_ms,
        } = fields;
        Rule {
            list,
            prefix,
            meta: Meta {
                origin,
                comment,
                expires_at_ms,
                added_at_ms,
            },
        }
    }
}

/// The flood guards' settings as stored. The fields that came after the
/// first format are optional: absent, they take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    pub enabled: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub pps_burst: u64,
    #[serde(default)]
    pub bps: u64,
    #[serde(default)]
    pub bps_burst: u64,
    #[serde(default)]
    pub v6_prefix_len: Option<u8>,
    #[serde(default)]
    pub block_after_ms: u64,
    #[serde(default)]
    pub block_ttl_ms: u64,
    #[serde(default)]
    pub syn_pps: u64,
    #[serde(default)]
    pub syn_burst: u64,
    #[serde(default)]
    pub syn_global_pps: u64,
    #[serde(default)]
    pub syn_global_burst: u64,
    #[serde(default)]
    pub spoof_threshold: u64,
    #[serde(default)]
    pub fallback_pps: u64,
    #[serde(default)]
    pub fallback_burst: u64,
    #[serde(default)]
    pub reflect: Option<bool>,
    #[serde(default)]
    pub reflect_sources: Option<Vec<u16>>,
    #[serde(default)]
    pub service_ports: Option<Vec<(u16, u16)>>,
}

/// What a header rule does, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Drop,
    Pass,
    Limit,
}

/// A rule on headers as stored (its hit count is the kernel's, and is not
/// kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRule {
    #[serde(default)]
    pub id: u32,
    pub action: Option<Action>,
    #[serde(default)]
    pub proto: Option<u8>,
    #[serde(default)]
    pub dst_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub src_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub tcp_flags: Option<(u8, u8)>,
    #[serde(default)]
    pub length: Option<(u16, u16)>,
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub burst: u64,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub comment: Option<String>,
}

/// The shield as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shield {
    pub enabled: bool,
    #[serde(default)]
    pub tcp_ports: Vec<(u16, u16)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp_ports: Vec<(u16, u16)>,
    /// UDP from unverified sources to the UDP ports, a second (absent:
    /// the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_pps: Option<u32>,
    /// How long a proof holds a source verified (absent: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_idle_secs: Option<u64>,
    /// `shield auto`: the rate that switches it on (SYNs and unverified
    /// datagrams a second) and the calm that switches it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<ShieldAuto>,
    /// The host settings the shield changed, with their values from before
    /// (`net.ipv4.tcp_syncookies` and the like), to be put back when it
    /// is switched off; kept across restarts and crashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saved: Vec<(String, String)>,
}

/// When `shield auto` switches the shield.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldAuto {
    pub above_pps: u64,
    pub calm_secs: u64,
}

/// One change, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Add or replace these rules.
    Put { rules: Vec<Rule> },
    /// Add or replace these rules: a bulk `Put`, held compactly. On disk
    /// it is the `put` of its rules, and reads back as one.
    #[serde(rename = "put", skip_deserializing)]
    PutBatch { rules: Batch },
    /// Remove these prefixes from a list.
    Delete { list: List, prefixes: Vec<Prefix> },
    /// Replace the flood guards' settings.
    Limits { limits: Guards },
    /// Replace the rules on headers.
    HeaderRules { rules: Vec<HeaderRule> },
    /// Replace the shield's settings.
    Shield { shield: Shield },
    /// Verify a source on an application's word until `until_ms`
    /// (milliseconds since the Unix epoch); 0 revokes it.
    Admit {
        addr: std::net::IpAddr,
        until_ms: u64,
    },
}

impl Op {
    /// Applies a `Put` or a `Delete` to `rules` (the other ops hold no
    /// rules).
    pub fn apply(&self, rules: &mut Rules) {
        match self {
            Op::Put { rules: put } => {
                for rule in put {
                    rules.put((rule.list, rule.prefix), &rule.meta);
                }
            }
            Op::PutBatch { rules: batch } => rules.put_batch(batch),
            Op::Delete { list, prefixes } => {
                for prefix in prefixes {
                    rules.remove(&(*list, *prefix));
                }
            }
            Op::Limits { .. } | Op::HeaderRules { .. } | Op::Shield { .. } | Op::Admit { .. } => {}
        }
        rules.tidy();
    }
}

/// A source verified on an application's word (`spacefilter admit`), as
/// stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub addr: std::net::IpAddr,
    /// Milliseconds since the Unix epoch.
    pub until_ms: u64,
}

/// What the store holds besides the rules: the settings last set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The flood guards' settings.
    pub limits: Option<Guards>,
    /// The rules on headers.
    pub header_rules: Vec<HeaderRule>,
    /// The shield.
    pub shield: Option<Shield>,
    /// Sources admitted and not yet expired.
    pub admitted: Vec<Admission>,
}

impl Settings {
    /// Takes in an op that sets a setting (the others change rules).
    /// Expired admissions go on the way.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Limits { limits } => self.limits = Some(limits.clone()),
            Op::HeaderRules { rules } => self.header_rules.clone_from(rules),
            Op::Shield { shield } => self.shield = Some(shield.clone()),
            &Op::Admit { addr, until_ms } => {
                let now = super::now_ms();
                self.admitted.retain(|a| a.addr != addr && a.until_ms > now);
                if until_ms > now {
                    self.admitted.push(Admission { addr, until_ms });
                }
            }
            Op::Put { .. } | Op::PutBatch { .. } | Op::Delete { .. } => {}
        }
    }
}

/// Every rule, and the last settings, as of one moment: a snapshot written
/// as JSON (`rules.json`, before `rules.bin`), as read. The rules go into a
/// [`Rules`] as they are parsed, with no list of them all in between.
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) version: u32,
    /// The journal segments this snapshot holds: every one numbered up to
    /// this (0: none but the live journal, which a snapshot without the
    /// field folded too).
    #[serde(default)]
    pub(super) folded: u64,
    #[serde(deserialize_with = "super::rules::read_seq")]
    pub(super) rules: Rules,
    #[serde(default)]
    pub(super) limits: Option<Guards>,
    #[serde(default)]
    pub(super) header_rules: Vec<HeaderRule>,
    #[serde(default)]
    pub(super) shield: Option<Shield>,
    #[serde(default)]
    pub(super) admitted: Vec<Admission>,
}

/// A [`Rule`] borrowed, serialized as the rule is.
#[derive(Serialize)]
pub(super) struct RuleRef<'a> {
    pub(super) list: List,
    pub(super) prefix: Prefix,
    #[serde(flatten)]
    pub(super) meta: &'a Meta,
}
