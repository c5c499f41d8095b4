//! The control protocol between the `spacefilter` client verbs and the
//! daemon: JSON lines over a Unix stream socket.
//!
//! Each request is one JSON object on one line, at most
//! [`MAX_REQUEST_BYTES`] long, carrying the protocol version `v`:
//!
//! ```json
//! {"v":1,"cmd":"add","list":"block","prefixes":["198.18.2.0/24"],"ttl_secs":600,"comment":"flood","origin":"manual","force":false}
//! {"v":1,"cmd":"remove","list":"block","prefixes":["198.18.2.0/24"]}
//! {"v":1,"cmd":"list","list":"block"}
//! {"v":1,"cmd":"stats"}
//! {"v":1,"cmd":"watch","interval_ms":1000}
//! {"v":1,"cmd":"status"}
//! {"v":1,"cmd":"top","interval_ms":1000,"limit":10}
//! {"v":1,"cmd":"capture","reason":"blocked"}
//! {"v":1,"cmd":"set_observe","sample_every":100,"sample_cap":1000,"debug_log":false}
//! {"v":1,"cmd":"set_shield","shield":{"enabled":true,"tcp_ports":[[443,443]],"udp_ports":[[443,443]],"unverified_pps":2000}}
//! {"v":1,"cmd":"admit","addr":"198.51.100.7","ttl_secs":3600}
//! {"v":1,"cmd":"revoke","addr":"198.51.100.7"}
//! ```
//!
//! The daemon answers each request with one [`Response`] line; `add` may
//! send `progress` lines first; `watch` sends a `stats` line and `top` a
//! `top` line every interval, and `capture` a `sample` line per sampled
//! dropped frame, until the client hangs up. A request the daemon cannot read
//! gets an `error` line and the connection stays open for the next one.
//!
//! - [`rules`] and [`limits`]: the settings a client sends and reads back;
//! - [`views`]: what the daemon shows (entries, counters, status, top,
//!   samples); [`listing`]: the entries reply, streamed entry by entry;
//! - [`client`]: the client side, used by the CLI verbs.
//!
//! This module knows nothing of the program or its maps: a client builds
//! with it alone.

pub mod client;
pub mod limits;
pub mod listing;
pub mod rules;
pub mod shield;
pub mod views;

use serde::{Deserialize, Serialize};

pub use self::{
    limits::{LimitsView, ReflectProfile, default_reflectors, default_service_ports},
    rules::{HeaderRuleView, RuleAction},
    shield::{AdmitView, ShieldAuto, ShieldView, VerifiedView},
    views::{
        Changed, CounterView, EntryView, FeatureOffView, InterfaceView, LinkView, ObserveView,
        SampleView, StatsView, StatusView, TalkerView, TopView,
    },
};
use crate::net::List;

pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the daemon reads (a million prefixes fit).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Where an entry came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Given on the command line.
    #[default]
    Manual,
    /// Imported from a file.
    File,
    /// Given in the daemon's configuration file.
    Config,
    /// Made by the rate limiter for a source that stayed over its limit.
    Auto,
    /// Written by a member of the etcd fleet this host belongs to.
    Fleet,
    /// A ban decision of the CrowdSec local API this host is a bouncer of.
    Crowdsec,
}

impl Origin {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Manual => "manual",
            Origin::File => "file",
            Origin::Config => "config",
            Origin::Auto => "auto",
            Origin::Fleet => "fleet",
            Origin::Crowdsec => "crowdsec",
        }
    }
}

/// A request with its protocol version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// An `add` request's line, read field by field: what [`Envelope::parse`]
/// tries first (`v` is the envelope's, not read in a fleet-wide change).
#[derive(Deserialize)]
struct AddLine {
    #[serde(default)]
    v: Option<u32>,
    cmd: String,
    list: List,
    prefixes: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    origin: Origin,
    #[serde(default)]
    force: bool,
}

impl AddLine {
    fn request(self) -> Option<Request> {
        (self.cmd == "add").then_some(Request::Add {
            list: self.list,
            prefixes: self.prefixes,
            ttl_secs: self.ttl_secs,
            comment: self.comment,
            origin: self.origin,
            force: self.force,
        })
    }
}

/// A fleet-wide `add`'s line, read field by field.
#[derive(Deserialize)]
struct FleetAddLine {
    v: u32,
    cmd: String,
    change: AddLine,
}

impl Envelope {
    /// Reads a request line. An envelope's flattened, tagged request is
    /// read through a buffered copy of the whole line's values, which for
    /// a bulk `add` is a second copy of every prefix: an `add`, fleet-wide
    /// or not, is read straight into its fields instead (any other line,
    /// or an `add` that does not read so, goes the general way, which also
    /// words the errors).
    pub fn parse(line: &[u8]) -> serde_json::Result<Envelope> {
        let head = &line[..line.len().min(64)];
        let fleet_wide = head.windows(14).any(|w| w == br#""cmd":"fleet""#);
        if fleet_wide {
            if let Ok(line) = serde_json::from_slice::<FleetAddLine>(line)
                && line.cmd == "fleet"
                && let Some(change) = line.change.request()
            {
                return Ok(Envelope {
                    v: line.v,
                    request: Request::Fleet {
                        change: Box::new(change),
                    },
                });
            }
        } else if let Ok(add) = serde_json::from_slice::<AddLine>(line)
            && let Some(v) = add.v
            && let Some(request) = add.request()
        {
            return Ok(Envelope { v, request });
        }
        serde_json::from_slice(line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Add prefixes to a list, or update the TTL and comment of prefixes
    /// already there. All or nothing.
    Add {
        list: List,
        prefixes: Vec<String>,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        origin: Origin,
        /// Override the lockout guard.
        #[serde(default)]
        force: bool,
    },
    /// Remove prefixes from a list. All or nothing.
    Remove { list: List, prefixes: Vec<String> },
    /// The entries of one list, or of both.
    List {
        #[serde(default)]
        list: Option<List>,
    },
    /// The counters, once.
    Stats,
    /// The counters and their per-second rates, every `interval_ms`, until
    /// the client hangs up.
    Watch { interval_ms: u64 },
    /// What the daemon is attached to and holds.
    Status,
    /// Replace the per-source rate limit (in force at once).
    SetLimits { limits: LimitsView },
    /// The per-source rate limit in force.
    GetLimits,
    /// Append a rule on headers (it gets the next id).
    RuleAdd {
        rule: HeaderRuleView,
        /// Allow a drop rule with no condition at all.
        #[serde(default)]
        force: bool,
    },
    /// Delete the rule with this id.
    RuleDel { id: u32 },
    /// The rules on headers, in the order they are tried, with their hits.
    RuleList,
    /// The heaviest dropped sources and prefixes and the drop rates by
    /// reason, every `interval_ms`, until the client hangs up.
    Top {
        interval_ms: u64,
        /// Sources and prefixes in each list.
        #[serde(default = "default_top_limit")]
        limit: usize,
    },
    /// Every sampled dropped frame (of one reason, if given) as it comes,
    /// until the client hangs up.
    Capture {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Drop sampling and the kernel-side debug log.
    GetObserve,
    /// Replace the shield's settings (in force at once).
    SetShield { shield: ShieldView },
    /// The shield's settings.
    GetShield,
    /// Verify a source on an application's word, for `ttl_secs`.
    Admit {
        addr: std::net::IpAddr,
        #[serde(default = "default_admit_secs")]
        ttl_secs: u64,
    },
    /// Forget a source's verification, however it was proven.
    Revoke { addr: std::net::IpAddr },
    /// Make a change fleet-wide: on a member of a fleet, `change` (an add
    /// or remove, the limits, a header rule, the shield) is written to the
    /// fleet and the reply comes once this host has applied it from
    /// there; elsewhere it is a change of this host.
    Fleet { change: Box<Request> },
    /// Change drop sampling or the debug log (what is not given stays).
    SetObserve {
        /// One dropped frame in this many is sampled; 0: off.
        #[serde(default)]
        sample_every: Option<u32>,
        /// Samples a second at most, host-wide.
        #[serde(default)]
        sample_cap: Option<u32>,
        #[serde(default)]
        debug_log: Option<bool>,
    },
}

fn default_top_limit() -> usize {
    10
}

fn default_admit_secs() -> u64 {
    shield::DEFAULT_ADMIT_SECS
}

impl Request {
    /// Whether the request changes the rules (and so needs a writer).
    #[must_use]
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Request::Add { .. }
                | Request::Remove { .. }
                | Request::SetLimits { .. }
                | Request::RuleAdd { .. }
                | Request::RuleDel { .. }
                | Request::SetObserve { .. }
                | Request::SetShield { .. }
                | Request::Admit { .. }
                | Request::Revoke { .. }
        ) || matches!(self, Request::Fleet { change } if change.writes())
    }
}

/// What went wrong, for the client's exit code: `bad_input` and `refused`
/// are the caller's to fix (exit 2), the rest are failures (exit 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was not valid: unreadable, unknown, a bad prefix.
    BadInput,
    /// Valid, but refused: the lockout guard, or the peer may not write.
    Refused,
    /// The daemon could not carry it out (a full map, a failed write).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Error {
        kind: ErrorKind,
        message: String,
    },
    Progress {
        done: u64,
        total: u64,
    },
    Changed(Changed),
    Entries {
        entries: Vec<EntryView>,
    },
    Stats(StatsView),
    Status(Box<StatusView>),
    Limits(LimitsView),
    Rules {
        rules: Vec<HeaderRuleView>,
    },
    Top(TopView),
    Sample(SampleView),
    Observe(ObserveView),
    Shield(ShieldView),
    Admitted(AdmitView),
    /// A fleet-wide change of lists: written to the fleet at `revision`,
    /// `count` prefixes, and in force on this host.
    Fleet {
        revision: i64,
        count: u64,
    },
}

/// Why `name` cannot be a capture's `--reason`, if it cannot: only the
/// reasons frames are dropped for are sampled.
#[must_use]
pub fn capture_reason_problem(name: &str) -> Option<String> {
    if spacefilter_common::Reason::ALL
        .iter()
        .any(|r| r.drops() && r.name() == name)
    {
        return None;
    }
    let names: Vec<&str> = spacefilter_common::Reason::ALL
        .iter()
        .filter(|r| r.drops())
        .map(|r| r.name())
        .collect();
    Some(format!(
        "{name:?} is not a reason frames are dropped for; expected one of {}",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `add` read field by field is the request the envelope reads;
    /// other lines, and faulty ones, read as they always did.
    #[test]
    fn a_request_line_reads_as_the_envelope_does() {
        let lines = [
            r#"{"v":1,"cmd":"add","list":"block","prefixes":["198.18.2.0/24","2001:2::/48"],"ttl_secs":600,"comment":"flood","origin":"file","force":true}"#,
            r#"{"v":1,"cmd":"add","list":"allow","prefixes":["198.18.2.0/24"],"unknown":[1,2]}"#,
            r#"{"v":2,"cmd":"add","list":"block","prefixes":[]}"#,
            r#"{"v":1,"cmd":"list","list":"block"}"#,
            r#"{"v":1,"cmd":"remove","list":"block","prefixes":["198.18.2.0/24"]}"#,
            r#"{"v":1,"cmd":"fleet","change":{"cmd":"add","list":"block","prefixes":["198.18.2.0/24"],"ttl_secs":60}}"#,
            r#"{"v":1,"cmd":"fleet","change":{"cmd":"remove","list":"block","prefixes":["198.18.2.0/24"]}}"#,
            r#"{"v":1,"cmd":"fleet","change":{"cmd":"set_limits","limits":{"enabled":false}}}"#,
        ];
        for line in lines {
            let parsed = Envelope::parse(line.as_bytes()).unwrap();
            let general: Envelope = serde_json::from_str(line).unwrap();
            assert_eq!(
                (parsed.v, parsed.request),
                (general.v, general.request),
                "{line}"
            );
        }
        for line in [
            r#"{"v":1,"cmd":"add","list":"block"}"#,
            r#"{"v":1,"cmd":"add","list":"nope","prefixes":[]}"#,
            r#"{"cmd":"add","list":"block","prefixes":[]}"#,
            r#"{"v":1,"cmd":"fleet","change":{"cmd":"add","list":"block"}}"#,
        ] {
            let parsed = Envelope::parse(line.as_bytes()).unwrap_err().to_string();
            let general = serde_json::from_str::<Envelope>(line)
                .unwrap_err()
                .to_string();
            assert_eq!(parsed, general, "{line}");
        }
    }
}
