//! What the daemon shows of itself: status, counters, the metrics
//! snapshot, drop sampling and the debug log, samples and `top`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use spacefilter_common::{Counter, Reason};

use super::{MAX_SAMPLE_CAP, Peer, Refusal, core::Core};
use crate::{
    api::{
        CounterView, FeatureOffView, InterfaceView, ObserveView, PROTOCOL_VERSION, SampleView,
        StatsView, StatusView, TopView,
    },
    bpf::{Counters, Feature, Sample, Sampling, monotonic_ns},
    error_chain,
    net::List,
    store::now_ms,
    telemetry::talkers,
};

/// What one scrape shows.
pub struct MetricsSnapshot {
    pub counters: Counters,
    pub entries: Vec<(&'static str, u64)>,
    pub rule_hits: Vec<(u32, u64)>,
    pub tracked_sources: u64,
    pub max_sources: u32,
    pub spoof_active: bool,
    /// TCP and UDP ports the shield covers (none while it is off).
    pub shielded_ports: u64,
    /// Verified sources now, by their last proof.
    pub verified_now: BTreeMap<&'static str, u64>,
    /// Whether the shield is in force, and how often `shield auto`
    /// switched it on.
    pub shield_active: bool,
    pub shield_switches: u64,
    pub spoof_switches: u64,
    pub uptime: Duration,
    pub samples: ObserveView,
    pub auto_blocks: u64,
    /// Each kernel feature, and whether the program uses it.
    pub features: Vec<(&'static str, bool)>,
}

impl Core {
    pub(super) fn counters(&self) -> Result<Counters, Refusal> {
        self.filter
            .counters()
            .map_err(|err| Refusal::failed(error_chain(&err)))
    }

    pub(super) fn status(&mut self) -> StatusView {
        let interfaces = self
            .filter
            .attached()
            .map(|(name, mode)| InterfaceView {
                name: name.to_owned(),
                mode: mode.name().to_owned(),
                pinned: self.filter.pinned(name),
            })
            .collect();
        let count = |list| self.rules.count(list) as u64;
        let spoof = self.filter.limiter().spoof_state().unwrap_or_default();
        let tracked_sources = self.filter.limiter().tracked_sources() as u64;
        StatusView {
            tracked_sources,
            spoof_fallback_active: spoof.active_until_ns > monotonic_ns(),
            spoof_fallback_switches: spoof.switches,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            uptime_secs: self.started.elapsed().as_secs(),
            program_id: self.program_id,
            interfaces,
            allow_entries: count(List::Allow),
            block_entries: count(List::Block),
            capacity: self.capacity,
            shield: self.shield.enabled.then(|| self.shield_view()),
            verified: self.verified_view(),
            state_problem: self.store.poisoned(),
            features_off: self
                .filter
                .features_off()
                .iter()
                .map(|off| FeatureOffView {
                    feature: off.feature.name().to_owned(),
                    why: off.why.clone(),
                    instead: off.instead.clone(),
                })
                .collect(),
            // Filled in by the handle, which holds the links' reports.
            links: Vec::new(),
        }
    }

    /// What a metrics scrape shows; `None` if the maps cannot be read.
    pub(super) fn metrics(&mut self) -> Option<MetricsSnapshot> {
        let counters = self.filter.counters().ok()?;
        let count = |list| self.rules.count(list) as u64;
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
        Some(MetricsSnapshot {
            counters,
            entries,
            rule_hits,
            tracked_sources: self.filter.limiter().tracked_sources() as u64,
            max_sources: self.max_sources,
            spoof_active: spoof.active_until_ns > monotonic_ns(),
            shielded_ports: {
                let ports = self.shield.marked_ports();
                ports
                    .tcp
                    .iter()
                    .chain(ports.udp)
                    .map(|&(lo, hi)| u64::from(hi - lo) + 1)
                    .sum()
            },
            verified_now: self.filter.verifier_ref().now(monotonic_ns()),
            shield_active: self.shield.enabled && self.shield.active,
            shield_switches: self.shield.watch.switches,
            spoof_switches: spoof.switches,
            uptime: self.started.elapsed(),
            samples: self.observe(),
            auto_blocks: self.auto_blocks,
            features: Feature::ALL
                .iter()
                .map(|f| {
                    let off = self.filter.features_off().iter().any(|o| o.feature == *f);
                    (f.name(), !off)
                })
                .collect(),
        })
    }

    /// Drop sampling and the debug log, as set, with the sampler's counts.
    pub(super) fn observe(&mut self) -> ObserveView {
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
            capture_clients: u64::try_from(self.samples.capture_clients()).unwrap_or(u64::MAX),
        }
    }

    /// Changes drop sampling or the debug log (in force at once; the
    /// settings of `spacefilter run` come back at the next start).
    pub(super) fn set_observe(
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
    pub(super) fn absorb_samples(&mut self, batch: &[Sample]) {
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
    pub(super) fn subscribe_samples(&self) -> tokio::sync::broadcast::Receiver<Arc<SampleView>> {
        self.samples.subscribe()
    }

    /// A `top` snapshot: `rates` are the counters' change over `elapsed`.
    pub(super) fn top(&mut self, limit: usize, rates: &Counters, elapsed: Duration) -> TopView {
        let secs = elapsed.as_secs_f64().max(1e-3);
        #[expect(clippy::cast_precision_loss, reason = "rates need no 53-bit precision")]
        let per_sec = |packets: u64| packets as f64 / secs;
        let drops_per_sec = Reason::ALL
            .iter()
            .filter(|r| r.drops())
            .map(|&r| (r.name().to_owned(), per_sec(rates.get(r).packets)))
            .collect();
        let dropped_per_sec = per_sec(rates.dropped());
        // SYNs answered with a cookie went back, not up to the host.
        let passed_per_sec = per_sec(
            Reason::ALL
                .iter()
                .filter(|r| !r.drops() && **r != Reason::SynCookie)
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
            cookies_per_sec: per_sec(rates.get(Reason::SynCookie).packets),
            verified_per_sec: per_sec(rates.verified.values().sum()),
            window_secs: talkers::WINDOW.as_secs(),
            samples,
            sources,
            prefixes,
            observe: self.observe(),
        }
    }
}

/// Counters as the protocol shows them; with `earlier` and the time
/// between, per-second rates too.
#[must_use]
pub fn stats_view(now: &Counters, earlier: Option<(&Counters, Duration)>) -> StatsView {
    let secs = earlier.map(|(_, elapsed)| elapsed.as_secs_f64().max(1e-3));
    let views = |counters: &BTreeMap<Reason, Counter>,
                 before: Option<&BTreeMap<Reason, Counter>>| {
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
        verified: now
            .verified
            .iter()
            .map(|(&how, &count)| (how.to_owned(), count))
            .collect(),
    }
}
