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
//! ```
//!
//! The daemon answers each request with one [`Response`] line; `add` may
//! send `progress` lines first; `watch` sends a `stats` line and `top` a
//! `top` line every interval, and `capture` a `sample` line per sampled
//! dropped frame, until the client hangs up. A request the daemon cannot read
//! gets an `error` line and the connection stays open for the next one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::maps::List;

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
}

impl Origin {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Manual => "manual",
            Origin::File => "file",
            Origin::Config => "config",
            Origin::Auto => "auto",
        }
    }
}

impl Serialize for List {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(List::Allow),
            "block" => Ok(List::Block),
            "auto" => Ok(List::Auto),
            other => Err(serde::de::Error::custom(format!(
                "unknown list {other:?}; expected \"allow\", \"block\" or \"auto\""
            ))),
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
        )
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
    Error { kind: ErrorKind, message: String },
    Progress { done: u64, total: u64 },
    Changed(Changed),
    Entries { entries: Vec<EntryView> },
    Stats(StatsView),
    Status(StatusView),
    Limits(LimitsView),
    Rules { rules: Vec<HeaderRuleView> },
    Top(TopView),
    Sample(SampleView),
    Observe(ObserveView),
}

/// What a header rule does with the frames it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Drop them (`rule_dropped`).
    Drop,
    /// Let them through, past the flood guards (`rule_passed`).
    Pass,
    /// Let through --pps a second (with --burst), drop the rest
    /// (`rule_limited`).
    Limit,
}

/// A rule on headers. Every condition given must hold; none given matches
/// every frame that reaches the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRuleView {
    /// Given by the daemon.
    #[serde(default)]
    pub id: u32,
    pub action: Option<RuleAction>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 `ICMPv6`).
    #[serde(default)]
    pub proto: Option<u8>,
    /// Inclusive port ranges.
    #[serde(default)]
    pub dst_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub src_ports: Option<(u16, u16)>,
    /// TCP flags: (mask, value), matching `flags & mask == value`.
    #[serde(default)]
    pub tcp_flags: Option<(u8, u8)>,
    /// Frame length in bytes, inclusive.
    #[serde(default)]
    pub length: Option<(u16, u16)>,
    /// The budget of a limit rule.
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub burst: u64,
    /// Count only: what the rule would drop passes (`would_limit`).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub comment: Option<String>,
    /// Packets matched (in listings).
    #[serde(default)]
    pub hits: u64,
}

impl HeaderRuleView {
    /// Why the rule cannot be put in force, if it cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let Some(action) = self.action else {
            return Some("a rule needs an action: drop, pass or limit".into());
        };
        for (name, range) in [
            ("destination port", self.dst_ports),
            ("source port", self.src_ports),
            ("length", self.length),
        ] {
            if let Some((lo, hi)) = range {
                if lo > hi {
                    return Some(format!("the {name} range {lo}-{hi} runs backwards"));
                }
                if hi == 0 {
                    return Some(format!("a {name} of 0 cannot be matched"));
                }
            }
        }
        if action == RuleAction::Limit && (self.pps == 0 || self.burst == 0) {
            return Some("a limit rule needs --pps (and a burst of at least 1)".into());
        }
        if self.pps > 1_000_000_000 || self.burst > 1_000_000_000_000 {
            return Some("rule budgets above 1e9/s (burst 1e12) are not supported".into());
        }
        if (self.dst_ports.is_some() || self.src_ports.is_some())
            && let Some(proto) = self.proto
            && proto != 6
            && proto != 17
        {
            return Some("ports only exist for TCP (6) and UDP (17)".into());
        }
        if self
            .comment
            .as_ref()
            .is_some_and(|c| c.len() > 256 || c.contains('\n'))
        {
            return Some("a comment is one line of at most 256 bytes".into());
        }
        None
    }

    /// Whether the rule has no condition and so matches every frame.
    #[must_use]
    pub fn matches_everything(&self) -> bool {
        self.proto.is_none()
            && self.dst_ports.is_none()
            && self.src_ports.is_none()
            && self.tcp_flags.is_none()
            && self.length.is_none()
    }
}

/// The flood guards' settings, as the protocol and the state file carry
/// them: the per-source rate limit, the SYN guard and the reflection guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsView {
    /// The per-source rate limit runs.
    pub enabled: bool,
    /// Count what would be dropped (`would_limit`) without dropping.
    #[serde(default)]
    pub dry_run: bool,
    /// Packets per second per source (0: no packet limit), and the burst
    /// above it.
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub pps_burst: u64,
    /// Bytes per second per source (0: no byte limit), and the burst.
    #[serde(default)]
    pub bps: u64,
    #[serde(default)]
    pub bps_burst: u64,
    /// IPv6 sources share a bucket per prefix of this length.
    #[serde(default = "default_v6_prefix_len")]
    pub v6_prefix_len: u8,
    /// Auto-block a source over its limit this long (0: never).
    #[serde(default)]
    pub block_after_ms: u64,
    /// How long an auto-block lasts.
    #[serde(default)]
    pub block_ttl_ms: u64,
    /// TCP SYNs (without ACK) per second per source (0: no SYN budget per
    /// source), and the burst.
    #[serde(default)]
    pub syn_pps: u64,
    #[serde(default)]
    pub syn_burst: u64,
    /// TCP SYNs per second for the whole host (0: none), and the burst.
    #[serde(default)]
    pub syn_global_pps: u64,
    #[serde(default)]
    pub syn_global_burst: u64,
    /// New sources per second that mean a spoofed-source flood (0: never
    /// fall back); then new sources share aggregate budgets per destination
    /// port and per source prefix of `fallback_pps` (and `fallback_burst`).
    #[serde(default)]
    pub spoof_threshold: u64,
    #[serde(default)]
    pub fallback_pps: u64,
    #[serde(default)]
    pub fallback_burst: u64,
    /// The reflection guard: UDP from `reflect_sources` to
    /// `service_ports` is dropped. On by default.
    #[serde(default = "yes")]
    pub reflect: bool,
    #[serde(default = "default_reflectors")]
    pub reflect_sources: Vec<u16>,
    /// Inclusive ranges; by default every port outside Linux's default
    /// ephemeral range (32768-60999), where answers to the host's own
    /// queries (its DNS lookups, say) arrive.
    #[serde(default = "default_service_ports")]
    pub service_ports: Vec<(u16, u16)>,
}

fn default_v6_prefix_len() -> u8 {
    64
}

fn yes() -> bool {
    true
}

/// Well-known UDP reflectors and amplifiers: QOTD, chargen, DNS, portmap,
/// NTP, `NetBIOS`, SNMP, CLDAP, SSDP, WS-Discovery, memcached.
#[must_use]
pub fn default_reflectors() -> Vec<u16> {
    vec![17, 19, 53, 111, 123, 137, 161, 389, 1900, 3702, 11211]
}

#[must_use]
pub fn default_service_ports() -> Vec<(u16, u16)> {
    vec![(0, 32767), (61000, 65535)]
}

impl Default for LimitsView {
    /// Everything off but the reflection guard, with its default profile.
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: false,
            pps: 0,
            pps_burst: 0,
            bps: 0,
            bps_burst: 0,
            v6_prefix_len: default_v6_prefix_len(),
            block_after_ms: 0,
            block_ttl_ms: 0,
            syn_pps: 0,
            syn_burst: 0,
            syn_global_pps: 0,
            syn_global_burst: 0,
            spoof_threshold: 0,
            fallback_pps: 0,
            fallback_burst: 0,
            reflect: true,
            reflect_sources: default_reflectors(),
            service_ports: default_service_ports(),
        }
    }
}

impl LimitsView {
    /// Why these limits cannot be put in force, if they cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let Self {
            enabled,
            dry_run: _,
            pps,
            pps_burst,
            bps,
            bps_burst,
            v6_prefix_len,
            block_after_ms,
            block_ttl_ms,
            syn_pps,
            syn_burst,
            syn_global_pps,
            syn_global_burst,
            spoof_threshold,
            fallback_pps,
            fallback_burst,
            reflect: _,
            reflect_sources: _,
            ref service_ports,
        } = *self;
        if spoof_threshold > 0 && (fallback_pps == 0 || fallback_burst == 0) {
            return Some("the spoofed-source fallback needs a budget (--fallback-pps)".into());
        }
        if fallback_pps > 1_000_000_000 || fallback_burst > 1_000_000_000_000 {
            return Some("fallback budgets above 1e9/s (burst 1e12) are not supported".into());
        }
        if service_ports.iter().any(|(lo, hi)| lo > hi) {
            return Some("a service port range runs backwards".into());
        }
        if syn_pps > 1_000_000_000 || syn_global_pps > 1_000_000_000 {
            return Some("SYN rates above 1e9 per second are not supported".into());
        }
        if (syn_pps > 0 && syn_burst == 0) || (syn_global_pps > 0 && syn_global_burst == 0) {
            return Some("a SYN burst must be at least 1".into());
        }
        if syn_burst > 1_000_000_000_000 || syn_global_burst > 1_000_000_000_000 {
            return Some("bursts above 1e12 are not supported".into());
        }
        if !enabled {
            return None;
        }
        if pps == 0 && bps == 0 {
            return Some("a limit needs a packet rate (--pps) or a byte rate (--bps)".into());
        }
        if pps > 1_000_000_000 || bps > 100_000_000_000 {
            return Some("rates above 1e9 packets/s or 1e11 bytes/s are not supported".into());
        }
        if (pps > 0 && pps_burst == 0) || (bps > 0 && bps_burst == 0) {
            return Some("a burst must be at least 1".into());
        }
        if pps_burst > 1_000_000_000_000 || bps_burst > 1_000_000_000_000 {
            return Some("bursts above 1e12 are not supported".into());
        }
        if v6_prefix_len > 128 {
            return Some(format!("--v6-prefix {v6_prefix_len} is longer than 128"));
        }
        if block_after_ms > 0 && block_ttl_ms == 0 {
            return Some("auto-blocking (--block-after) needs --block-ttl".into());
        }
        None
    }
}

/// What an `add` or `remove` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// New entries.
    pub added: u64,
    /// Entries that were there and got a new TTL or comment.
    pub updated: u64,
    /// Entries removed.
    pub removed: u64,
    /// Prefixes that needed no change (already absent on remove).
    pub unchanged: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub list: List,
    pub prefix: String,
    pub origin: Origin,
    #[serde(default)]
    pub comment: Option<String>,
    /// Seconds until the entry expires; none for a permanent entry.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Packets the entry has matched.
    pub hits: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
    /// Per second over the last interval (`watch` only).
    #[serde(default)]
    pub packets_per_sec: f64,
    #[serde(default)]
    pub bytes_per_sec: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// Milliseconds since the Unix epoch when the counters were read.
    pub at_ms: u64,
    /// By reason name (`passed`, `blocked`, ...), all interfaces together.
    pub reasons: BTreeMap<String, CounterView>,
    /// The same per attached interface, by interface name.
    #[serde(default)]
    pub interfaces: BTreeMap<String, BTreeMap<String, CounterView>>,
}

/// Drop sampling and the debug log, as set, with what the sampler did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserveView {
    /// One dropped frame in this many is sampled; 0: sampling is off.
    pub sample_every: u32,
    /// Samples a second at most, host-wide (each CPU gets an equal
    /// share).
    pub sample_cap: u32,
    pub debug_log: bool,
    /// Samples sent since the program was loaded.
    pub samples_sent: u64,
    /// Frames picked but not sent because the second's budget was spent.
    pub samples_capped: u64,
    /// Frames picked but not sent because the ring buffer was full.
    pub samples_lost: u64,
}

/// A sampled dropped frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleView {
    /// When it was dropped, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// The same instant on the kernel's clock (`CLOCK_MONOTONIC`, ns), by
    /// which the sampler counts its budget a second.
    pub mono_ns: u64,
    /// The interface it arrived on (its ifindex if not attached).
    pub iface: String,
    pub reason: String,
    /// What it matched: a list entry (`block 198.18.2.0/24`) or a header
    /// rule (`rule 3`).
    #[serde(default)]
    pub matched: Option<String>,
    /// Its source address, if its headers were captured.
    #[serde(default)]
    pub source: Option<String>,
    /// Its length on the wire.
    pub len: u32,
    /// Its first bytes, in hex.
    pub data: String,
}

/// A source or a prefix among the heaviest dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TalkerView {
    /// An address, or a prefix (/24 for IPv4, /64 for IPv6).
    pub key: String,
    /// Its share of the samples over the window.
    pub share: f64,
    /// Its estimated drop rate: its share times the drop rate.
    pub packets_per_sec: f64,
    /// The reason most of its samples were dropped for.
    pub reason: String,
    /// What its samples matched most often, if anything.
    #[serde(default)]
    pub matched: Option<String>,
}

/// A `top` snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopView {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Drops per second by reason over the last interval (dropping reasons
    /// only).
    pub drops_per_sec: BTreeMap<String, f64>,
    /// All drops per second over the last interval.
    pub dropped_per_sec: f64,
    /// Packets per second that passed, over the last interval.
    pub passed_per_sec: f64,
    /// Seconds of samples the talkers are ranked over.
    pub window_secs: u64,
    /// Samples in that window.
    pub samples: u64,
    pub sources: Vec<TalkerView>,
    pub prefixes: Vec<TalkerView>,
    pub observe: ObserveView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    pub mode: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub protocol: u32,
    pub uptime_secs: u64,
    pub program_id: u32,
    pub interfaces: Vec<InterfaceView>,
    pub allow_entries: u64,
    pub block_entries: u64,
    pub capacity: u32,
    /// Sources the rate limiter tracks.
    #[serde(default)]
    pub tracked_sources: u64,
    /// Whether the spoofed-source fallback is on now, and how often it
    /// was switched on.
    #[serde(default)]
    pub spoof_fallback_active: bool,
    #[serde(default)]
    pub spoof_fallback_switches: u64,
}
