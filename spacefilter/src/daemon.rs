//! The daemon: owns the program, the maps and the state directory, and
//! carries out what clients ask over the control socket. Every accepted
//! change is journaled before the client hears back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use spacefilter_common::{
    AutoBlockEvent, HeaderRule, Limits, MAX_HEADER_RULES, Reason, limit_flags, rule_action,
    rule_flags,
};
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    control,
    filter::{AttachMode, Filter, KernelLog, LoadOptions, error_chain},
    guard, iface,
    maps::{Counters, List, limiter_prefix, monotonic_ns},
    observe::{Sample, Sampling},
    prefix::Prefix,
    protocol::{
        Changed, CounterView, EntryView, ErrorKind, HeaderRuleView, InterfaceView, LimitsView,
        ObserveView, Origin, RuleAction, SampleView, StatsView, StatusView, TopView,
    },
    sampling::{self, Samples},
    state::{Meta, Op, Rule, Rules, StateError, Store, now_ms},
};

/// Everything `spacefilter run` needs, after merging the config file and
/// the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The group that may read over the socket (`None`: root only).
    pub socket_group: Option<String>,
    pub force: bool,
    pub capacity: u32,
    /// Sources the rate limiter tracks at once.
    pub max_sources: u32,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Drop sampling at start (`spacefilter sample` changes it at runtime).
    pub sampling: Sampling,
    /// Entries from the config file, added on start if absent.
    pub allow: Vec<Prefix>,
    pub block: Vec<Prefix>,
}

/// A refusal or failure to report to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    fn bad_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadInput,
            message: message.into(),
        }
    }
    fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Refused,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Self {
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
}

/// The daemon's state, behind one lock.
pub struct Core {
    filter: Filter,
    rules: Rules,
    store: Store,
    limits: LimitsView,
    /// Switches to the spoofed-source fallback logged so far.
    spoof_switches: u64,
    /// The rules on headers, in the order they are tried.
    header_rules: Vec<HeaderRuleView>,
    ifaces: Vec<String>,
    started: Instant,
    capacity: u32,
    max_sources: u32,
    program_id: u32,
    samples: Samples,
    /// Auto-blocks the daemon learnt of since it started.
    auto_blocks: u64,
}

pub type Shared = Arc<Mutex<Core>>;

/// Locks the core; a panic while it was held leaves the maps and the rules
/// as they were at the panic, which is still the best state there is.
pub fn lock(core: &Shared) -> MutexGuard<'_, Core> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The highest sample cap accepted: far beyond what a terminal or a pcap
/// wants, well below what would load the daemon.
pub const MAX_SAMPLE_CAP: u32 = 100_000;

/// Entries written to the maps between two progress reports.
const INSERT_CHUNK: usize = 16 * 1024;

fn parse_all(prefixes: &[String]) -> Result<Vec<Prefix>, Refusal> {
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

fn describe(prefixes: &[Prefix]) -> String {
    match prefixes {
        [one] => one.to_string(),
        [first, ..] => format!("{} prefixes ({first}, ...)", prefixes.len()),
        [] => "nothing".to_owned(),
    }
}

impl Core {
    /// Adds or updates entries, all or nothing. `progress` is called with
    /// (done, total) as kernel entries are written.
    pub fn add(
        &mut self,
        req: AddRequest,
        peer: Peer,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Changed, Refusal> {
        let AddRequest {
            list,
            prefixes,
            ttl,
            comment,
            origin,
            force,
        } = req;
        if list == List::Auto {
            return Err(Refusal::bad_input(
                "auto entries are made by the rate limiter; block or allow the prefix instead",
            ));
        }
        let prefixes = parse_all(&prefixes)?;
        if let Some(text) = &comment
            && (text.len() > 256 || text.contains('\n'))
        {
            return Err(Refusal::bad_input(
                "a comment is one line of at most 256 bytes",
            ));
        }
        if !force {
            let protected = guard::protected_addresses(&self.ifaces);
            if let Some(why) = prefixes
                .iter()
                .find_map(|&p| guard::objection(list, p, &protected))
            {
                return Err(Refusal::refused(why));
            }
        }
        let now = now_ms();
        let expires_at_ms =
            ttl.map(|ttl| now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
        let new: Vec<Prefix> = prefixes
            .iter()
            .copied()
            .filter(|p| !self.rules.contains_key(&(list, *p)))
            .collect();
        if new.len() > self.filter.lists().free() {
            return Err(Refusal::failed(format!(
                "{} new entries do not fit: room is left for {} (capacity {}); remove entries or restart with a larger --capacity",
                new.len(),
                self.filter.lists().free(),
                self.capacity
            )));
        }
        let total = new.len() as u64;
        let mut done = 0;
        for chunk in new.chunks(INSERT_CHUNK) {
            if let Err(err) = self.filter.lists().insert_many(list, chunk) {
                let _ = self.filter.lists().remove_many(list, &new[..done]);
                return Err(Refusal::failed(error_chain(&err)));
            }
            done += chunk.len();
            progress(done as u64, total);
        }
        self.commit_put(
            list,
            &prefixes,
            &new,
            comment.as_ref(),
            origin,
            expires_at_ms,
            now,
        )?;
        let changed = Changed {
            added: total,
            updated: prefixes.len() as u64 - total,
            removed: 0,
            unchanged: 0,
        };
        log::info!(
            "{} {} ({} new, {} updated{}{}, origin {}) asked by {peer}",
            list.name(),
            describe(&prefixes),
            changed.added,
            changed.updated,
            ttl.map(|t| format!(", ttl {}", humantime::format_duration(t)))
                .unwrap_or_default(),
            comment
                .as_deref()
                .map(|c| format!(", comment {c:?}"))
                .unwrap_or_default(),
            origin.name(),
        );
        Ok(changed)
    }

    /// Records added or updated rules in memory and on disk; if the disk
    /// write fails, undoes both that and the kernel entries in `new`, so
    /// that what the kernel enforces is what the disk says.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all parts of one rule"
    )]
    fn commit_put(
        &mut self,
        list: List,
        prefixes: &[Prefix],
        new: &[Prefix],
        comment: Option<&String>,
        origin: Origin,
        expires_at_ms: Option<u64>,
        now: u64,
    ) -> Result<(), Refusal> {
        let put: Vec<Rule> = prefixes
            .iter()
            .map(|&prefix| {
                let existing = self.rules.get(&(list, prefix));
                Rule {
                    list,
                    prefix,
                    meta: Meta {
                        origin,
                        // A repeated add keeps the comment unless it brings one.
                        comment: comment
                            .cloned()
                            .or_else(|| existing.and_then(|m| m.comment.clone())),
                        expires_at_ms,
                        added_at_ms: existing.map_or(now, |m| m.added_at_ms),
                    },
                }
            })
            .collect();
        let previous: Vec<Option<Meta>> = put
            .iter()
            .map(|r| self.rules.get(&(r.list, r.prefix)).cloned())
            .collect();
        let op = Op::Put { rules: put };
        op.apply(&mut self.rules);
        if let Err(err) = self.store.append(&op, &self.rules) {
            for (&prefix, before) in prefixes.iter().zip(previous) {
                match before {
                    Some(meta) => self.rules.insert((list, prefix), meta),
                    None => self.rules.remove(&(list, prefix)),
                };
            }
            let _ = self.filter.lists().remove_many(list, new);
            return Err(Refusal::failed(error_chain(&err)));
        }
        Ok(())
    }

    /// Removes entries; prefixes that are not there are counted as
    /// unchanged.
    pub fn remove(
        &mut self,
        list: List,
        prefixes: &[String],
        peer: Peer,
    ) -> Result<Changed, Refusal> {
        let prefixes = parse_all(prefixes)?;
        // Unblocking also lifts the rate limiter's auto-blocks.
        let lists: &[List] = match list {
            List::Block => &[List::Block, List::Auto],
            other => &[other],
        };
        let mut removed = BTreeSet::new();
        for &list in lists {
            let present: Vec<Prefix> = prefixes
                .iter()
                .copied()
                .filter(|p| self.rules.contains_key(&(list, *p)))
                .collect();
            if !present.is_empty() {
                self.delete(list, &present, &format!("asked by {peer}"))?;
                removed.extend(present);
            }
        }
        Ok(Changed {
            removed: removed.len() as u64,
            unchanged: (prefixes.len() - removed.len()) as u64,
            ..Changed::default()
        })
    }

    /// Takes `prefixes` (all present) off `list`: journal first, then the
    /// maps, so that a crash in between re-applies the removal on restart.
    fn delete(&mut self, list: List, prefixes: &[Prefix], why: &str) -> Result<(), Refusal> {
        let op = Op::Delete {
            list,
            prefixes: prefixes.to_vec(),
        };
        let removed: Vec<(Prefix, Meta)> = prefixes
            .iter()
            .filter_map(|&p| self.rules.remove(&(list, p)).map(|meta| (p, meta)))
            .collect();
        if let Err(err) = self.store.append(&op, &self.rules) {
            for (prefix, meta) in removed {
                self.rules.insert((list, prefix), meta);
            }
            return Err(Refusal::failed(error_chain(&err)));
        }
        if list == List::Auto {
            for &prefix in prefixes {
                self.filter
                    .limiter()
                    .remove_auto(prefix)
                    .map_err(|err| Refusal::failed(error_chain(&err)))?;
            }
        } else {
            self.filter
                .lists()
                .remove_many(list, prefixes)
                .map_err(|err| Refusal::failed(error_chain(&err)))?;
        }
        log::info!("un{} {} {why}", list.name(), describe(prefixes));
        Ok(())
    }

    /// Removes every entry whose TTL has run out.
    pub fn expire(&mut self) {
        let now = now_ms();
        let mut due: BTreeMap<List, Vec<Prefix>> = BTreeMap::new();
        for (&(list, prefix), meta) in &self.rules {
            if meta.expires_at_ms.is_some_and(|at| at <= now) {
                due.entry(list).or_default().push(prefix);
            }
        }
        for (list, prefixes) in due {
            if let Err(err) = self.delete(list, &prefixes, "(expired)") {
                log::error!("expiring {} entries failed: {}", list.name(), err.message);
            }
        }
    }

    /// The time until the next entry expires.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = now_ms();
        self.rules.values().filter_map(|m| m.remaining(now)).min()
    }

    pub fn entries(&mut self, only: Option<List>) -> Result<Vec<EntryView>, Refusal> {
        let now = now_ms();
        let entries = self
            .rules
            .iter()
            .filter(|((list, _), _)| only.is_none_or(|l| l == *list))
            .map(|(&(list, prefix), meta)| (list, prefix, meta.clone()))
            .collect::<Vec<_>>();
        entries
            .into_iter()
            .map(|(list, prefix, meta)| {
                let hits = if list == List::Auto {
                    self.filter.limiter().auto_hits(prefix)
                } else {
                    self.filter
                        .lists()
                        .hits_of(list, prefix)
                        .map_err(|err| Refusal::failed(error_chain(&err)))?
                        .unwrap_or(0)
                };
                Ok(EntryView {
                    list,
                    prefix: prefix.to_string(),
                    origin: meta.origin,
                    comment: meta.comment.clone(),
                    expires_in_secs: meta.remaining(now).map(|d| d.as_secs()),
                    hits,
                })
            })
            .collect()
    }

    pub fn counters(&self) -> Result<Counters, Refusal> {
        self.filter
            .counters()
            .map_err(|err| Refusal::failed(error_chain(&err)))
    }

    pub fn status(&mut self) -> StatusView {
        let interfaces = self
            .filter
            .attached()
            .map(|(name, mode)| InterfaceView {
                name: name.to_owned(),
                mode: mode.name().to_owned(),
            })
            .collect();
        let count = |list| self.rules.keys().filter(|(l, _)| *l == list).count() as u64;
        let spoof = self.filter.limiter().spoof_state().unwrap_or_default();
        let tracked_sources = self.filter.limiter().tracked_sources() as u64;
        StatusView {
            tracked_sources,
            spoof_fallback_active: spoof.active_until_ns > monotonic_ns(),
            spoof_fallback_switches: spoof.switches,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: crate::protocol::PROTOCOL_VERSION,
            uptime_secs: self.started.elapsed().as_secs(),
            program_id: self.program_id,
            interfaces,
            allow_entries: count(List::Allow),
            block_entries: count(List::Block),
            capacity: self.capacity,
        }
    }

    /// Puts a new rate limit in force and records it.
    pub fn set_limits(&mut self, limits: LimitsView, peer: Peer) -> Result<LimitsView, Refusal> {
        if let Some(problem) = limits.problem() {
            return Err(Refusal::bad_input(problem));
        }
        self.filter
            .limiter()
            .set(kernel_limits(&limits))
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        let op = Op::Limits {
            limits: limits.clone(),
        };
        if let Err(err) = self.store.append(&op, &self.rules) {
            let _ = self.filter.limiter().set(kernel_limits(&self.limits));
            return Err(Refusal::failed(error_chain(&err)));
        }
        if limits.reflect_sources != self.limits.reflect_sources
            || limits.service_ports != self.limits.service_ports
        {
            self.filter
                .limiter()
                .set_reflect_ports(&limits.reflect_sources, &limits.service_ports)
                .map_err(|err| Refusal::failed(error_chain(&err)))?;
        }
        log::info!("flood guards set to {limits:?} asked by {peer}");
        self.limits = limits.clone();
        Ok(limits)
    }

    #[must_use]
    pub fn limits(&self) -> LimitsView {
        self.limits.clone()
    }

    /// Records an auto-block the program made (from its event, or found in
    /// its map), so that it is listed, persisted and expired like any rule.
    pub fn adopt_auto(&mut self, prefix: Prefix, until_ns: u64) {
        let now_mono = monotonic_ns();
        if until_ns <= now_mono || self.rules.contains_key(&(List::Auto, prefix)) {
            return;
        }
        let now = now_ms();
        let meta = Meta {
            origin: Origin::Auto,
            comment: Some("over its rate limit".to_owned()),
            expires_at_ms: Some(now + (until_ns - now_mono) / 1_000_000),
            added_at_ms: now,
        };
        let op = Op::Put {
            rules: vec![Rule {
                list: List::Auto,
                prefix,
                meta,
            }],
        };
        op.apply(&mut self.rules);
        self.auto_blocks += 1;
        if let Err(err) = self.store.append(&op, &self.rules) {
            log::error!(
                "recording the auto-block of {prefix}: {}",
                error_chain(&err)
            );
        }
        log::warn!(
            "auto-blocked {prefix} for {} (over its rate limit)",
            humantime::format_duration(Duration::from_secs((until_ns - now_mono) / 1_000_000_000))
        );
    }

    /// Adopts auto-blocks in the program's map that no event announced (a
    /// full ring buffer drops events, never blocks).
    pub fn reconcile_auto(&mut self) {
        let v6_prefix_len = u32::from(self.limits.v6_prefix_len);
        for (key, block) in self.filter.limiter().auto_blocks() {
            let v6 = Ipv6Addr::from(key).to_ipv4_mapped().is_none();
            let prefix = limiter_prefix(key, v6_prefix_len, v6);
            self.adopt_auto(prefix, block.until_ns);
        }
    }

    /// Appends a rule on headers; returns every rule.
    pub fn add_rule(
        &mut self,
        mut rule: HeaderRuleView,
        force: bool,
        peer: Peer,
    ) -> Result<Vec<HeaderRuleView>, Refusal> {
        if let Some(problem) = rule.problem() {
            return Err(Refusal::bad_input(problem));
        }
        if self.header_rules.len() >= MAX_HEADER_RULES as usize {
            return Err(Refusal::failed(format!(
                "there are {MAX_HEADER_RULES} rules already, the most the program holds; delete one first"
            )));
        }
        if !force && rule.action == Some(RuleAction::Drop) && rule.matches_everything() {
            return Err(Refusal::refused(
                "refusing a drop rule with no condition: it would drop every frame that is on no list, including your own session; add --force if that is what you want",
            ));
        }
        rule.id = self.header_rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        rule.hits = 0;
        let mut rules = self.header_rules.clone();
        rules.push(rule.clone());
        self.put_rules(rules)?;
        log::info!("rule {} added: {rule:?} asked by {peer}", rule.id);
        self.header_rules()
    }

    /// Deletes the rule `id`; returns every rule left.
    pub fn del_rule(&mut self, id: u32, peer: Peer) -> Result<Vec<HeaderRuleView>, Refusal> {
        if !self.header_rules.iter().any(|r| r.id == id) {
            return Err(Refusal::bad_input(format!(
                "there is no rule {id}; `spacefilter rule list` shows them"
            )));
        }
        let rules = self
            .header_rules
            .iter()
            .filter(|r| r.id != id)
            .cloned()
            .collect();
        self.put_rules(rules)?;
        log::info!("rule {id} deleted asked by {peer}");
        self.header_rules()
    }

    /// Journals `rules` and puts them in the program, each keeping its
    /// hit count.
    fn put_rules(&mut self, rules: Vec<HeaderRuleView>) -> Result<(), Refusal> {
        let failed = |err: &(dyn std::error::Error + 'static)| Refusal::failed(error_chain(err));
        let hits = self.filter.header_rules().hits().map_err(|e| failed(&e))?;
        let hits_of = |id: u32| {
            self.header_rules
                .iter()
                .position(|r| r.id == id)
                .and_then(|i| hits.get(i).copied())
                .unwrap_or(0)
        };
        let kernel: Vec<_> = rules
            .iter()
            .map(|r| (kernel_rule(r), hits_of(r.id)))
            .collect();
        self.store
            .append(
                &Op::HeaderRules {
                    rules: rules.clone(),
                },
                &self.rules,
            )
            .map_err(|e| failed(&e))?;
        self.filter
            .header_rules()
            .set(&kernel)
            .map_err(|e| failed(&e))?;
        self.header_rules = rules;
        Ok(())
    }

    /// The rules on headers with their hits.
    pub fn header_rules(&mut self) -> Result<Vec<HeaderRuleView>, Refusal> {
        let hits = self
            .filter
            .header_rules()
            .hits()
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        Ok(self
            .header_rules
            .iter()
            .zip(hits)
            .map(|(rule, hits)| HeaderRuleView {
                hits,
                ..rule.clone()
            })
            .collect())
    }

    /// What a metrics scrape shows; `None` if the maps cannot be read.
    pub fn metrics(&mut self) -> Option<crate::metrics::Snapshot> {
        let counters = self.filter.counters().ok()?;
        let count = |list| self.rules.keys().filter(|(l, _)| *l == list).count() as u64;
        let entries = [List::Allow, List::Block, List::Auto]
            .map(|list| (list.name(), count(list)))
            .to_vec();
        let hits = self.filter.header_rules().hits().ok()?;
        let rule_hits = self
            .header_rules
            .iter()
            .zip(hits)
            .map(|(rule, hits)| (rule.id, hits))
            .collect();
        let spoof = self.filter.limiter().spoof_state().ok()?;
        Some(crate::metrics::Snapshot {
            counters,
            entries,
            rule_hits,
            tracked_sources: self.filter.limiter().tracked_sources() as u64,
            max_sources: self.max_sources,
            spoof_active: spoof.active_until_ns > monotonic_ns(),
            spoof_switches: spoof.switches,
            uptime: self.started.elapsed(),
            samples: self.observe(),
            auto_blocks: self.auto_blocks,
        })
    }

    /// Logs each switch to the spoofed-source fallback.
    pub fn report_spoof_fallback(&mut self) {
        let Ok(state) = self.filter.limiter().spoof_state() else {
            return;
        };
        if state.switches > self.spoof_switches {
            log::warn!(
                "spoofed-source flood: new sources arrive faster than {}/s; new sources now share \
                 aggregate budgets of {}/s per destination port and per source prefix \
                 (switch {} since start)",
                self.limits.spoof_threshold,
                self.limits.fallback_pps,
                state.switches
            );
            self.spoof_switches = state.switches;
        }
    }

    /// Drop sampling and the debug log, as set, with the sampler's counts.
    pub fn observe(&mut self) -> ObserveView {
        let observer = self.filter.observer();
        let Sampling { every, cap } = observer.sampling();
        let counts = observer.counts().unwrap_or_default();
        ObserveView {
            sample_every: every,
            sample_cap: cap,
            debug_log: observer.debug_log(),
            samples_sent: counts.sent,
            samples_capped: counts.capped,
            samples_lost: counts.lost,
        }
    }

    /// Changes drop sampling or the debug log (in force at once; the
    /// settings of `spacefilter run` come back at the next start).
    pub fn set_observe(
        &mut self,
        (every, cap, debug_log): (Option<u32>, Option<u32>, Option<bool>),
        peer: Peer,
    ) -> Result<ObserveView, Refusal> {
        if cap.is_some_and(|cap| cap == 0 || cap > MAX_SAMPLE_CAP) {
            return Err(Refusal::bad_input(format!(
                "a sample cap must be 1 to {MAX_SAMPLE_CAP} a second; to stop sampling, use \
                 `spacefilter sample off`"
            )));
        }
        let observer = self.filter.observer();
        let current = observer.sampling();
        let next = Sampling {
            every: every.unwrap_or(current.every),
            cap: cap.unwrap_or(current.cap),
        };
        if next != current {
            observer
                .set_sampling(next)
                .map_err(|err| Refusal::failed(error_chain(&err)))?;
            log::info!(
                "{peer}: drop sampling {}",
                if next.every == 0 {
                    "off".to_owned()
                } else {
                    format!("1 in {}, at most {}/s", next.every, observer.sampling().cap)
                }
            );
        }
        if let Some(on) = debug_log
            && on != observer.debug_log()
        {
            observer
                .set_debug_log(on)
                .map_err(|err| Refusal::failed(error_chain(&err)))?;
            log::info!("{peer}: kernel debug log {}", if on { "on" } else { "off" });
        }
        Ok(self.observe())
    }

    /// Takes in samples from the program's ring buffer.
    pub fn absorb_samples(&mut self, batch: &[Sample]) {
        for sample in batch {
            let filter = &self.filter;
            let header_rules = &self.header_rules;
            self.samples
                .absorb(sample, |ifindex, source, reason, detail| {
                    let iface = filter
                        .iface_name(ifindex)
                        .map_or_else(|| format!("ifindex {ifindex}"), str::to_owned);
                    let matched = match reason {
                        Reason::Blocked => source
                            .and_then(|addr| filter.lists_ref().entry_at(addr, detail))
                            .map(|(list, prefix)| format!("{} {prefix}", list.name())),
                        Reason::RuleDropped | Reason::RuleLimited => detail
                            .checked_sub(1)
                            .and_then(|index| header_rules.get(index as usize))
                            .map(|rule| format!("rule {}", rule.id)),
                        _ => None,
                    };
                    (iface, matched)
                });
        }
    }

    /// A feed of described samples, for a capture client.
    #[must_use]
    pub fn subscribe_samples(&self) -> tokio::sync::broadcast::Receiver<Arc<SampleView>> {
        self.samples.subscribe()
    }

    /// A `top` snapshot: `rates` are the counters' change over `elapsed`.
    pub fn top(&mut self, limit: usize, rates: &Counters, elapsed: Duration) -> TopView {
        let secs = elapsed.as_secs_f64().max(1e-3);
        #[expect(clippy::cast_precision_loss, reason = "rates need no 53-bit precision")]
        let per_sec = |packets: u64| packets as f64 / secs;
        let drops_per_sec = Reason::ALL
            .iter()
            .filter(|r| r.drops())
            .map(|&r| (r.name().to_owned(), per_sec(rates.get(r).packets)))
            .collect();
        let dropped_per_sec = per_sec(rates.dropped());
        let passed_per_sec = per_sec(
            Reason::ALL
                .iter()
                .filter(|r| !r.drops())
                .map(|&r| rates.get(r).packets)
                .sum(),
        );
        let (samples, sources, prefixes) =
            self.samples
                .talkers
                .rank(Instant::now(), limit, dropped_per_sec);
        TopView {
            at_ms: now_ms(),
            drops_per_sec,
            dropped_per_sec,
            passed_per_sec,
            window_secs: crate::talkers::WINDOW.as_secs(),
            samples,
            sources,
            prefixes,
            observe: self.observe(),
        }
    }

    /// The ring buffer of auto-block events, for the reader task.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.filter.take_events()
    }

    fn detach_all(&mut self) {
        let ifaces: Vec<String> = self.filter.attached().map(|(i, _)| i.to_owned()).collect();
        for iface in ifaces {
            match self.filter.detach(&iface) {
                Ok(()) => log::info!("detached from {iface}"),
                Err(err) => log::error!("{}", error_chain(&err)),
            }
        }
    }
}

/// The kernel's form of a rate limit.
fn kernel_limits(view: &LimitsView) -> Limits {
    let LimitsView {
        enabled,
        dry_run,
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
        reflect,
        reflect_sources: _,
        service_ports: _,
    } = *view;
    let mut flags = 0;
    if enabled {
        flags |= limit_flags::ENABLED;
    }
    if syn_pps > 0 || syn_global_pps > 0 {
        flags |= limit_flags::SYN;
    }
    if reflect {
        flags |= limit_flags::REFLECT;
    }
    if dry_run && flags != 0 {
        flags |= limit_flags::DRY_RUN;
    }
    Limits {
        flags,
        v6_prefix_len: u32::from(v6_prefix_len),
        pps,
        pps_burst,
        bps,
        bps_burst,
        block_after_ns: block_after_ms.saturating_mul(1_000_000),
        block_ttl_ns: block_ttl_ms.saturating_mul(1_000_000),
        syn_pps,
        syn_burst,
        syn_global_pps,
        syn_global_burst,
        spoof_threshold,
        fallback_pps,
        fallback_burst,
    }
}

/// The kernel's form of a header rule.
fn kernel_rule(view: &HeaderRuleView) -> HeaderRule {
    let range = |r: Option<(u16, u16)>| r.map_or((0, 0), |(lo, hi)| (u32::from(lo), u32::from(hi)));
    let (dport_lo, dport_hi) = range(view.dst_ports);
    let (sport_lo, sport_hi) = range(view.src_ports);
    let (len_lo, len_hi) = range(view.length);
    let (tcp_mask, tcp_value) = view
        .tcp_flags
        .map_or((0, 0), |(mask, value)| (u32::from(mask), u32::from(value)));
    HeaderRule {
        action: match view.action {
            Some(RuleAction::Drop) => rule_action::DROP,
            Some(RuleAction::Pass) => rule_action::PASS,
            Some(RuleAction::Limit) => rule_action::LIMIT,
            None => 0,
        },
        flags: if view.dry_run { rule_flags::DRY_RUN } else { 0 },
        proto: view.proto.map_or(0, u32::from),
        tcp_mask,
        tcp_value,
        dport_lo,
        dport_hi,
        sport_lo,
        sport_hi,
        len_lo,
        len_hi,
        reserved: 0,
        pps: view.pps,
        burst: view.burst,
    }
}

/// Counters as the protocol shows them; with `earlier` and the time
/// between, per-second rates too.
#[must_use]
pub fn stats_view(now: &Counters, earlier: Option<(&Counters, Duration)>) -> StatsView {
    let secs = earlier.map(|(_, elapsed)| elapsed.as_secs_f64().max(1e-3));
    let views = |counters: &BTreeMap<Reason, spacefilter_common::Counter>,
                 before: Option<&BTreeMap<Reason, spacefilter_common::Counter>>| {
        counters
            .iter()
            .map(|(reason, counter)| {
                let mut view = CounterView {
                    packets: counter.packets,
                    bytes: counter.bytes,
                    ..CounterView::default()
                };
                if let (Some(secs), Some(before)) = (secs, before) {
                    let before = before.get(reason).copied().unwrap_or_default();
                    #[expect(
                        clippy::cast_precision_loss,
                        reason = "rates need no 53-bit precision"
                    )]
                    {
                        view.packets_per_sec =
                            counter.packets.saturating_sub(before.packets) as f64 / secs;
                        view.bytes_per_sec =
                            counter.bytes.saturating_sub(before.bytes) as f64 / secs;
                    }
                }
                (reason.name().to_owned(), view)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let empty = BTreeMap::new();
    StatsView {
        at_ms: now_ms(),
        reasons: views(&now.by_reason, earlier.map(|(c, _)| &c.by_reason)),
        interfaces: now
            .by_iface
            .iter()
            .map(|(iface, counters)| {
                let before = earlier.map(|(c, _)| c.by_iface.get(iface).unwrap_or(&empty));
                (iface.clone(), views(counters, before))
            })
            .collect(),
    }
}

/// Puts the rules and the rate limit from the state directory into the
/// freshly loaded program; returns the rate limit.
fn restore(
    filter: &mut Filter,
    rules: &Rules,
    store: &Store,
    now: u64,
) -> anyhow::Result<LimitsView> {
    for list in [List::Allow, List::Block] {
        let prefixes: Vec<Prefix> = rules
            .keys()
            .filter(|(l, _)| *l == list)
            .map(|&(_, p)| p)
            .collect();
        filter
            .lists()
            .insert_many(list, &prefixes)
            .with_context(|| format!("restoring the {}list", list.name()))?;
    }
    let limits = store.limits().unwrap_or_default();
    filter
        .limiter()
        .set_reflect_ports(&limits.reflect_sources, &limits.service_ports)
        .context("setting the reflection guard's ports")?;
    filter
        .limiter()
        .set(kernel_limits(&limits))
        .context("restoring the flood guards")?;
    let mono = monotonic_ns();
    for (&(list, prefix), meta) in rules {
        if list == List::Auto
            && let Some(left) = meta.remaining(now)
        {
            let left_ns = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
            filter
                .limiter()
                .insert_auto(prefix, mono.saturating_add(left_ns))
                .context("restoring auto-blocks")?;
        }
    }
    Ok(limits)
}

/// Adds the config file's entries that the state does not hold yet.
fn add_config_entries(
    core: &mut Core,
    (allow, block): (Vec<Prefix>, Vec<Prefix>),
    force: bool,
) -> anyhow::Result<()> {
    let system = Peer {
        uid: nix::unistd::geteuid().as_raw(),
        pid: Some(std::process::id().cast_signed()),
    };
    for (list, prefixes) in [(List::Allow, allow), (List::Block, block)] {
        let missing: Vec<String> = prefixes
            .iter()
            .filter(|p| !core.rules.contains_key(&(list, **p)))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            continue;
        }
        core.add(
            AddRequest {
                list,
                prefixes: missing,
                ttl: None,
                comment: None,
                origin: Origin::Config,
                force,
            },
            system,
            &mut |_, _| {},
        )
        .map_err(|r| anyhow::anyhow!("config {}list: {}", list.name(), r.message))?;
    }
    Ok(())
}

/// Claims the interfaces, opens the state directory, loads the program,
/// restores the rules, adds the config file's entries and attaches.
fn start(settings: Settings) -> anyhow::Result<Core> {
    let Settings {
        ifaces,
        mode,
        state_dir,
        socket: _,
        socket_group: _,
        force,
        capacity,
        max_sources,
        metrics: _,
        sampling,
        allow,
        block,
    } = settings;
    for iface in &ifaces {
        iface::claim(iface, force)?;
    }
    let (store, mut rules) = Store::open(&state_dir)
        .map_err(|err: StateError| anyhow::anyhow!("{}", error_chain(&err)))?;
    let now = now_ms();
    rules.retain(|_, meta| meta.expires_at_ms.is_none_or(|at| at > now));

    let mut filter = Filter::load(LoadOptions {
        capacity,
        buckets: max_sources,
        hash_seed: None,
    })
    .context("loading the XDP program")?;
    filter
        .observer()
        .set_sampling(sampling)
        .context("setting up drop sampling")?;
    let limits = restore(&mut filter, &rules, &store, now)?;
    let header_rules = store.header_rules();
    filter
        .header_rules()
        .set(
            &header_rules
                .iter()
                .map(|r| (kernel_rule(r), 0))
                .collect::<Vec<_>>(),
        )
        .context("restoring the header rules")?;
    log::info!(
        "restored {} rules from {}",
        rules.len(),
        state_dir.display()
    );
    let program_id = filter.program_id().unwrap_or(0);
    let mut core = Core {
        filter,
        rules,
        store,
        limits,
        spoof_switches: 0,
        header_rules,
        ifaces: ifaces.clone(),
        started: Instant::now(),
        capacity,
        max_sources,
        program_id,
        samples: Samples::default(),
        auto_blocks: 0,
    };
    add_config_entries(&mut core, (allow, block), force)?;
    for iface in &ifaces {
        match core.filter.attach(iface, mode) {
            Ok(used) => {
                if mode == AttachMode::Auto && used == AttachMode::Skb {
                    log::warn!("{iface}: the driver has no native XDP; attached in skb mode");
                }
                log::info!("attached to {iface} in {} mode", used.name());
            }
            Err(err) => {
                core.detach_all();
                return Err(anyhow::anyhow!("{}", error_chain(&err)));
            }
        }
    }
    Ok(core)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let socket = settings.socket.clone();
    let group = settings
        .socket_group
        .as_deref()
        .map(control::group_id)
        .transpose()?;
    let metrics_addr = settings.metrics;
    let core = start(settings)?;
    let listener = control::bind(&socket, group)?;
    log::info!("listening on {}", socket.display());
    let core: Shared = Arc::new(Mutex::new(core));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(control::serve(listener, core.clone(), stop_rx.clone()));
    let metrics = match metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            log::info!("serving Prometheus metrics on http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                core.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let events = lock(&core).take_events();
    let auto =
        events.map(|ring| tokio::spawn(auto_block_events(ring, core.clone(), stop_rx.clone())));
    let samples = lock(&core).filter.take_samples();
    let samples =
        samples.map(|ring| tokio::spawn(sampling::read(ring, core.clone(), stop_rx.clone())));
    let kernel_log = lock(&core).filter.take_kernel_log();
    let kernel_log =
        kernel_log.map(|reader| tokio::spawn(drain_kernel_log(reader, stop_rx.clone())));
    let expiry = tokio::spawn(expire_loop(core.clone(), stop_rx));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = expiry.await;
    for task in [auto, samples, kernel_log].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    lock(&core).detach_all();
    if let Err(err) = std::fs::remove_file(&socket) {
        log::warn!("removing {}: {err}", socket.display());
    }
    Ok(())
}

/// Drains the kernel-side debug log into the daemon's log (lines only
/// come while `spacefilter debug on`).
async fn drain_kernel_log(reader: KernelLog, stop: watch::Receiver<bool>) {
    when_readable(reader, "the kernel debug log", stop, KernelLog::flush).await;
}

/// Scans of the auto-block map (for events a full ring buffer lost) happen
/// this often; each reads the whole map.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

async fn expire_loop(core: Shared, mut stop: watch::Receiver<bool>) {
    let mut last_scan = Instant::now();
    loop {
        let wait = lock(&core)
            .next_expiry()
            .map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let mut core = lock(&core);
        core.expire();
        if last_scan.elapsed() >= RECONCILE_EVERY {
            core.reconcile_auto();
            last_scan = Instant::now();
        }
        core.report_spoof_fallback();
    }
}

/// Calls `each` on `source` (a ring buffer, or the reader of one) each
/// time its file descriptor turns readable, until `stop`.
pub(crate) async fn when_readable<T: std::os::fd::AsRawFd>(
    source: T,
    what: &str,
    mut stop: watch::Receiver<bool>,
    mut each: impl FnMut(&mut T),
) {
    // SAFETY: the source owns its file descriptor, which stays open and the
    // same for as long as the AsyncFd holds the source.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(source, tokio::io::Interest::READABLE)
    };
    let mut source = match registered {
        Ok(fd) => fd,
        Err(err) => {
            log::error!("watching {what}: {err}");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            ready = source.readable_mut() => match ready {
                Ok(guard) => guard,
                Err(err) => {
                    log::error!("{what}: {err}");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        each(guard.get_inner_mut());
        guard.clear_ready();
    }
}

/// Reads auto-block events from the program's ring buffer.
async fn auto_block_events(ring: RingBuf<MapData>, core: Shared, stop: watch::Receiver<bool>) {
    when_readable(ring, "the auto-block events", stop, |ring| {
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<AutoBlockEvent>() {
                // SAFETY: the program writes whole AutoBlockEvents; the read
                // is unaligned-safe.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AutoBlockEvent>()) };
                events.push(event);
            }
        }
        let mut core = lock(&core);
        for event in events {
            let prefix = limiter_prefix(event.key, event.prefix_len, event.v6 != 0);
            core.adopt_auto(prefix, event.until_ns);
        }
    })
    .await;
}
