//! What the daemon shows: the results of changes, entries, counters,
//! status, `top` snapshots and drop samples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Origin;
use crate::net::List;

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
    /// Sources verified anew since the program was loaded, by proof
    /// (`cookie`, `established`, `replied`, `admitted`).
    #[serde(default)]
    pub verified: BTreeMap<String, u64>,
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
    /// `spacefilter capture` clients reading the samples now.
    #[serde(default)]
    pub capture_clients: u64,
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
    /// SYNs the shield answered with SYN cookies a second, and sources
    /// verified anew a second, over the last interval.
    #[serde(default)]
    pub cookies_per_sec: f64,
    #[serde(default)]
    pub verified_per_sec: f64,
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
    /// Its XDP link is pinned: the filter stays when the daemon stops.
    #[serde(default)]
    pub pinned: bool,
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
    /// The shield, when it is on.
    #[serde(default)]
    pub shield: Option<super::ShieldView>,
    /// The verified sources.
    #[serde(default)]
    pub verified: super::VerifiedView,
    /// Why the state directory takes no more changes, if it does not (the
    /// filter keeps enforcing what it has).
    #[serde(default)]
    pub state_problem: Option<String>,
    /// The kernel features the program runs without.
    #[serde(default)]
    pub features_off: Vec<FeatureOffView>,
    /// The outside sources of rules this daemon follows (a CrowdSec local
    /// API, an etcd fleet), each with the state of its link.
    #[serde(default)]
    pub links: Vec<LinkView>,
}

/// The state of a link to an outside source of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// What it is: `crowdsec` or `fleet`.
    pub kind: String,
    /// The fleet's name, for a fleet.
    #[serde(default)]
    pub name: String,
    /// Where it is (the URL, or the etcd endpoints).
    pub url: String,
    /// Whether the last exchange worked.
    pub up: bool,
    /// Seconds since the last exchange that worked; none if none has.
    #[serde(default)]
    pub lag_secs: Option<u64>,
    /// How far the source's history has been applied (the etcd revision,
    /// or the count of CrowdSec polls that worked).
    #[serde(default)]
    pub revision: u64,
    /// Entries this daemon holds from the source.
    #[serde(default)]
    pub entries: u64,
    /// Why the last exchange failed, while it does.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A kernel feature the program runs without.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureOffView {
    /// Its name, as `run --without` takes it.
    pub feature: String,
    /// The kernel lacks a helper (named), or `--without` said so.
    pub why: String,
    /// What the filter does instead.
    pub instead: String,
}
