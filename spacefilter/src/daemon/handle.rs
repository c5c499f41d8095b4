//! The handle the transports hold: every request a client can make, as a
//! method. Each takes the core's lock for its own length; the lock is a
//! plain mutex, so callers on async threads run these through
//! `spawn_blocking`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use tokio::sync::broadcast;

use super::{
    AddRequest, FleetPort, Listing, MetricsSnapshot, Peer, Refusal,
    core::{Core, Shared},
    memory,
};
use crate::{
    api::{
        AdmitView, Changed, HeaderRuleView, LimitsView, LinkView, ObserveView, Origin, SampleView,
        ShieldView, StatusView, TopView,
    },
    bpf::{CounterReader, Counters},
    net::{List, Prefix},
};

/// A handle on the running daemon's core, a reader of its counters that
/// needs no lock (`stats` and `watch` never wait behind an import), and the
/// last report of each link to an outside source of rules (kept apart from
/// the core: a link reports while an import holds the core's lock).
#[derive(Clone)]
pub struct Handle(
    Shared,
    Option<Arc<CounterReader>>,
    Arc<Mutex<BTreeMap<String, LinkView>>>,
    pub(super) Arc<OnceLock<Arc<dyn FleetPort>>>,
);

impl Handle {
    pub(super) fn new(core: Core) -> Self {
        let counters = match core.filter.counter_reader() {
            Ok(reader) => Some(Arc::new(reader)),
            Err(err) => {
                log::warn!(
                    "reading the counters on their own: {}; they are read under the core's lock",
                    crate::error_chain(&err)
                );
                None
            }
        };
        Self(
            Arc::new(Mutex::new(core)),
            counters,
            Arc::default(),
            Arc::default(),
        )
    }

    /// Locks the core; a panic while it was held leaves the maps and the
    /// rules as they were at the panic, which is still the best state there
    /// is.
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `change` on the core, then waits, with the lock released, until
    /// what it journaled is on disk: the client hears back once the change
    /// is durable, and other requests go on meanwhile (their records share
    /// the flush).
    pub(super) fn changing<T>(
        &self,
        change: impl FnOnce(&mut Core) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let (result, wait) = {
            let mut core = self.lock();
            let before = core.store.last_written();
            let result = change(&mut core);
            let after = core.store.last_written();
            (
                result,
                (after > before).then(|| (core.store.durable(), after)),
            )
        };
        if let Some((durable, seq)) = wait {
            durable.wait(seq).map_err(|why| {
                Refusal::failed(format!(
                    "the change could not be made durable ({why}): it is in force until the daemon \
                     restarts, and lost then; the state directory takes no more changes: fix the \
                     disk, then restart the daemon"
                ))
            })?;
        }
        result
    }

    /// Adds or updates entries, all or nothing; `progress` hears (done,
    /// total) as kernel entries are written.
    pub fn add(
        &self,
        req: AddRequest,
        peer: Peer,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Changed, Refusal> {
        let bulk = req.prefixes.len() >= memory::BULK;
        // The request's text is parsed and let go before the first entries
        // are written: at the first progress report its pages go back (a
        // string per prefix, tens of MiB, which the maps' nodes would not
        // reuse), and the rest's at the end.
        let mut parsed = bulk;
        let changed = self.changing(|core| {
            core.add(req, peer, &mut |done, total| {
                if std::mem::take(&mut parsed) {
                    memory::release();
                }
                progress(done, total);
            })
        });
        if bulk {
            memory::release();
        }
        changed
    }

    /// Removes those of `prefixes` that are on `list` with `origin`, in one
    /// locked step (see [`super::AddRequest::keep_others`]).
    pub fn remove_own(
        &self,
        list: List,
        prefixes: &[Prefix],
        origin: Origin,
        peer: Peer,
    ) -> Result<Changed, Refusal> {
        self.changing(|core| core.remove_own(list, prefixes, origin, peer))
    }

    pub fn remove(&self, list: List, prefixes: &[String], peer: Peer) -> Result<Changed, Refusal> {
        let changed = self.changing(|core| core.remove(list, prefixes, peer));
        if prefixes.len() >= memory::BULK {
            memory::release();
        }
        changed
    }

    /// Whether `prefix` is on `list`: `None` if it is not, `Some(true)` if
    /// with `origin`, `Some(false)` with another (a source of rules leaves
    /// alone what someone else made, without listing every entry).
    #[must_use]
    pub fn held_as(&self, list: List, prefix: Prefix, origin: Origin) -> Option<bool> {
        self.lock()
            .rules
            .get(&(list, prefix))
            .map(|meta| meta.origin == super::lists::stored(origin))
    }

    /// Who holds those of `prefixes` that are on `list`: each one's
    /// origin (a source of rules finds out what is whose without listing
    /// every entry).
    #[must_use]
    pub fn origins(&self, list: List, prefixes: &[Prefix]) -> BTreeMap<Prefix, Origin> {
        let core = self.lock();
        prefixes
            .iter()
            .filter_map(|&prefix| {
                let meta = core.rules.get(&(list, prefix))?;
                Some((prefix, super::listing::shown(meta.origin)))
            })
            .collect()
    }

    /// The prefixes on `list` with `origin`.
    #[must_use]
    pub fn prefixes_of(&self, list: List, origin: Origin) -> Vec<Prefix> {
        let origin = super::lists::stored(origin);
        self.lock()
            .rules
            .iter()
            .filter(|(key, meta)| key.0 == list && meta.origin == origin)
            .map(|(key, _)| key.1)
            .collect()
    }

    /// How many entries have `origin` (a link's count, without listing
    /// every entry).
    #[must_use]
    pub fn count_of(&self, origin: Origin) -> u64 {
        let origin = super::lists::stored(origin);
        self.lock().rules.count_held(|meta| meta.origin == origin) as u64
    }

    /// The entries of one list, or of all, as of now.
    pub fn entries(&self, only: Option<List>) -> Result<Listing, Refusal> {
        self.lock().listing(only)
    }

    pub fn counters(&self) -> Result<Counters, Refusal> {
        match &self.1 {
            Some(reader) => reader
                .read()
                .map_err(|err| Refusal::failed(crate::error_chain(&err))),
            None => self.lock().counters(),
        }
    }

    #[must_use]
    pub fn status(&self) -> StatusView {
        let mut view = self.lock().status();
        view.links = self.links();
        view
    }

    /// Records the state of a link to an outside source of rules, under
    /// its kind (one link of each kind).
    pub fn report_link(&self, link: LinkView) {
        self.2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(link.kind.clone(), link);
    }

    /// The links' last reports.
    #[must_use]
    pub fn links(&self) -> Vec<LinkView> {
        self.2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub fn set_limits(&self, limits: LimitsView, peer: Peer) -> Result<LimitsView, Refusal> {
        self.changing(|core| core.set_limits(limits, peer))
    }

    #[must_use]
    pub fn limits(&self) -> LimitsView {
        self.lock().limits()
    }

    pub fn add_rule(
        &self,
        rule: HeaderRuleView,
        force: bool,
        peer: Peer,
    ) -> Result<Vec<HeaderRuleView>, Refusal> {
        self.changing(|core| core.add_rule(rule, force, peer))
    }

    /// Makes the rules on headers `rules`, ids kept (a fleet's list);
    /// returns whether they changed.
    pub fn replace_rules(&self, rules: Vec<HeaderRuleView>, peer: Peer) -> Result<bool, Refusal> {
        self.changing(|core| core.replace_rules(rules, peer))
    }

    /// Hears of every auto-block from now on: (prefix, time left), a batch
    /// at a time.
    #[must_use]
    pub fn auto_blocks(&self) -> std::sync::mpsc::Receiver<Vec<(Prefix, Duration)>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.lock().auto_sink = Some(tx);
        rx
    }

    pub fn del_rule(&self, id: u32, peer: Peer) -> Result<Vec<HeaderRuleView>, Refusal> {
        self.changing(|core| core.del_rule(id, peer))
    }

    pub fn header_rules(&self) -> Result<Vec<HeaderRuleView>, Refusal> {
        self.lock().header_rules()
    }

    #[must_use]
    pub fn observe(&self) -> ObserveView {
        self.lock().observe()
    }

    pub fn set_observe(
        &self,
        change: (Option<u32>, Option<u32>, Option<bool>),
        peer: Peer,
    ) -> Result<ObserveView, Refusal> {
        self.lock().set_observe(change, peer)
    }

    /// A `top` snapshot: `rates` are the counters' change over `elapsed`.
    #[must_use]
    pub fn top(&self, limit: usize, rates: &Counters, elapsed: Duration) -> TopView {
        self.lock().top(limit, rates, elapsed)
    }

    /// A feed of described samples, and the sampling rate in force (0:
    /// sampling is off).
    #[must_use]
    pub fn subscribe_samples(&self) -> (broadcast::Receiver<Arc<SampleView>>, u32) {
        let mut core = self.lock();
        (core.subscribe_samples(), core.observe().sample_every)
    }

    /// What a metrics scrape shows; `None` if the maps cannot be read.
    #[must_use]
    pub fn metrics(&self) -> Option<MetricsSnapshot> {
        self.lock().metrics()
    }

    pub fn set_shield(&self, shield: ShieldView, peer: Peer) -> Result<ShieldView, Refusal> {
        self.changing(|core| core.set_shield(shield, peer))
    }

    #[must_use]
    pub fn shield(&self) -> ShieldView {
        self.lock().shield()
    }

    /// Verifies `addr` on an application's word for `ttl_secs`.
    pub fn admit(&self, addr: IpAddr, ttl_secs: u64, peer: Peer) -> Result<AdmitView, Refusal> {
        self.changing(|core| core.admit(addr, ttl_secs, peer))
    }

    /// Forgets `addr`'s verification.
    pub fn revoke(&self, addr: IpAddr, peer: Peer) -> Result<AdmitView, Refusal> {
        self.changing(|core| core.revoke(addr, peer))
    }

    /// Leaves the filter on the interfaces whose links are pinned (the
    /// next daemon takes them over; the host keeps the settings the shield
    /// needs meanwhile), detaches it from the others, and puts back the
    /// host settings when none is left filtered.
    pub(super) fn shut_down(&self) {
        let mut core = self.lock();
        if core.leave_pinned() {
            return;
        }
        core.release_host();
    }
}
