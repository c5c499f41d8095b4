//! The daemon's state: the loaded program, the rules and the store, behind
//! one lock; and what a request carries in (who asked) and out (a refusal).
//! Its methods are split by concern: [`super::lists`], [`super::guards`],
//! [`super::header_rules`], [`super::observability`].

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{expiry::Expiry, shield::ShieldState};
use crate::{
    api::{ErrorKind, HeaderRuleView, LimitsView, Origin},
    bpf::Filter,
    error_chain,
    net::{List, Prefix},
    store::{Rules, Store},
    telemetry::sampling::Samples,
};

/// A refusal or failure to report to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    pub(super) fn bad_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadInput,
            message: message.into(),
        }
    }
    pub(super) fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Refused,
            message: message.into(),
        }
    }
    pub(super) fn failed(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }
}

/// Who asked, for the log.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {} pid {pid}", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// An add request, parsed.
pub struct AddRequest {
    pub list: List,
    pub prefixes: Vec<String>,
    pub ttl: Option<Duration>,
    pub comment: Option<String>,
    pub origin: Origin,
    pub force: bool,
    /// Entries someone else holds (another origin) stay theirs: left out,
    /// and counted as unchanged. Checked under the lock that the add takes,
    /// so an administrator's change cannot land between the check and
    /// the add (a source of rules: the fleet, CrowdSec).
    pub keep_others: bool,
}

/// The daemon's state, behind one lock.
pub(super) struct Core {
    pub(super) filter: Filter,
    pub(super) rules: Rules,
    /// When the rules with a TTL expire.
    pub(super) expiry: Expiry,
    pub(super) store: Store,
    pub(super) limits: LimitsView,
    /// Switches to the spoofed-source fallback logged so far.
    pub(super) spoof_switches: u64,
    /// The rules on headers, in the order they are tried.
    pub(super) header_rules: Vec<HeaderRuleView>,
    pub(super) ifaces: Vec<String>,
    pub(super) started: Instant,
    pub(super) capacity: u32,
    pub(super) max_sources: u32,
    pub(super) program_id: u32,
    pub(super) samples: Samples,
    /// Auto-blocks the daemon learnt of since it started.
    pub(super) auto_blocks: u64,
    pub(super) shield: ShieldState,
    /// The bucket keys of the sources never auto-blocked, as last put in
    /// the program.
    pub(super) auto_exempt: Vec<[u8; 16]>,
    /// Where new auto-blocks are told, (prefix, time left) each, if
    /// anyone listens (a fleet they are shared with).
    pub(super) auto_sink: Option<std::sync::mpsc::Sender<Vec<(Prefix, Duration)>>>,
}

pub(super) type Shared = Arc<Mutex<Core>>;

/// The prefixes of a request, parsed; the first bad one refuses them all.
pub(super) fn parse_all(prefixes: &[String]) -> Result<Vec<Prefix>, Refusal> {
    if prefixes.is_empty() {
        return Err(Refusal::bad_input("no prefixes given"));
    }
    prefixes
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<Prefix>().map_err(|err| {
                if prefixes.len() == 1 {
                    Refusal::bad_input(err.to_string())
                } else {
                    Refusal::bad_input(format!("entry {}: {err}", i + 1))
                }
            })
        })
        .collect()
}

/// A short description of `prefixes`, for the log.
pub(super) fn describe(prefixes: &[Prefix]) -> String {
    match prefixes {
        [one] => one.to_string(),
        [first, ..] => format!("{} prefixes ({first}, ...)", prefixes.len()),
        [] => "nothing".to_owned(),
    }
}

impl Core {
    /// Detaches from the interfaces whose links are not pinned, and leaves
    /// the others filtered. Returns whether any was left.
    pub(super) fn leave_pinned(&mut self) -> bool {
        let ifaces: Vec<String> = self.filter.attached().map(|(i, _)| i.to_owned()).collect();
        let mut left = false;
        for iface in ifaces {
            if self.filter.pinned(&iface) {
                log::info!(
                    "left the filter on {iface}: its link is pinned; the next `spacefilter run` \
                     takes it over with no gap, `spacefilter detach` takes it off"
                );
                if self.filter.leave_egress(&iface) {
                    log::info!(
                        "left the egress program on {iface} as a clsact filter (no TCX links): \
                         the host's traffic goes on verifying its peers; the next start \
                         replaces it"
                    );
                }
                left = true;
            } else {
                match self.filter.detach(&iface) {
                    Ok(()) => log::info!("detached from {iface}"),
                    Err(err) => log::error!("{}", error_chain(&err)),
                }
            }
        }
        left
    }
}
