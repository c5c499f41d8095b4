//! The heaviest dropped sources and prefixes, ranked from the drop samples
//! of the last few seconds (`spacefilter top`).
//!
//! The sampler picks dropped frames at random, one in N, within a budget a
//! second, so a source's share of the samples estimates its share of the
//! drops whatever the budget cut; its rate is that share times the drop
//! rate the counters show.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use spacefilter_common::Reason;

use crate::{api::TalkerView, net::Prefix};

/// The span of samples the ranking covers.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Samples kept at most (a generous sample budget over the window); the
/// oldest go first.
const MAX_KEPT: usize = 250_000;

/// The prefix length sources are grouped by: /24 for IPv4, /64 for IPv6.
const V4_GROUP: u8 = 24;
const V6_GROUP: u8 = 64;

/// One sample, as far as the ranking cares.
struct Noted {
    at: Instant,
    source: IpAddr,
    reason: Reason,
    matched: Option<Arc<str>>,
}

/// Samples of the last [`WINDOW`].
#[derive(Default)]
pub struct Talkers {
    recent: VecDeque<Noted>,
}

/// How one source or prefix fared over the window.
#[derive(Default)]
struct Tally {
    samples: u64,
    reasons: HashMap<Reason, u64>,
    matched: HashMap<Arc<str>, u64>,
}

impl Tally {
    fn add(&mut self, noted: &Noted) {
        self.samples += 1;
        *self.reasons.entry(noted.reason).or_default() += 1;
        if let Some(matched) = &noted.matched {
            *self.matched.entry(matched.clone()).or_default() += 1;
        }
    }
}

/// The most frequent key of a tally map; ties go to the smallest key, so
/// that the choice does not flicker between refreshes.
fn most<K: Ord + Clone>(counts: &HashMap<K, u64>) -> Option<K> {
    counts
        .iter()
        .max_by(|(ka, a), (kb, b)| a.cmp(b).then_with(|| kb.cmp(ka)))
        .map(|(k, _)| k.clone())
}

impl Talkers {
    /// Notes a sampled drop from `source` at `at`.
    pub fn note(&mut self, at: Instant, source: IpAddr, reason: Reason, matched: Option<Arc<str>>) {
        if self.recent.len() == MAX_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(Noted {
            at,
            source,
            reason,
            matched,
        });
    }

    fn trim(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|n| now.saturating_duration_since(n.at) > WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// The `limit` heaviest sources and prefixes over the window ending at
    /// `now`, with rates estimated from `dropped_per_sec`; and the number
    /// of samples they were ranked from.
    pub fn rank(
        &mut self,
        now: Instant,
        limit: usize,
        dropped_per_sec: f64,
    ) -> (u64, Vec<TalkerView>, Vec<TalkerView>) {
        self.trim(now);
        let mut sources: HashMap<IpAddr, Tally> = HashMap::new();
        let mut prefixes: HashMap<Prefix, Tally> = HashMap::new();
        for noted in &self.recent {
            sources.entry(noted.source).or_default().add(noted);
            let group = if noted.source.is_ipv4() {
                V4_GROUP
            } else {
                V6_GROUP
            };
            prefixes
                .entry(Prefix::truncating(noted.source, group))
                .or_default()
                .add(noted);
        }
        let total = self.recent.len() as u64;
        (
            total,
            top(sources, total, limit, dropped_per_sec),
            top(prefixes, total, limit, dropped_per_sec),
        )
    }
}

fn top<K: ToString + Ord>(
    tallies: HashMap<K, Tally>,
    total: u64,
    limit: usize,
    dropped_per_sec: f64,
) -> Vec<TalkerView> {
    let mut ranked: Vec<(K, Tally)> = tallies.into_iter().collect();
    ranked.sort_by(|(ka, a), (kb, b)| b.samples.cmp(&a.samples).then_with(|| ka.cmp(kb)));
    ranked.truncate(limit);
    ranked
        .into_iter()
        .map(|(key, tally)| {
            #[expect(clippy::cast_precision_loss, reason = "sample counts are small")]
            let share = tally.samples as f64 / total.max(1) as f64;
            TalkerView {
                key: key.to_string(),
                share,
                packets_per_sec: share * dropped_per_sec,
                reason: most(&tally.reasons).map_or("", Reason::name).to_owned(),
                matched: most(&tally.matched).map(|m| m.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranks_by_share_and_groups_prefixes() {
        let mut talkers = Talkers::default();
        let now = Instant::now();
        let matched: Arc<str> = "block 198.18.2.0/24".into();
        for _ in 0..6 {
            talkers.note(
                now,
                addr("198.18.2.7"),
                Reason::Blocked,
                Some(matched.clone()),
            );
        }
        for _ in 0..3 {
            talkers.note(now, addr("198.18.2.8"), Reason::Blocked, None);
        }
        talkers.note(now, addr("2001:db8::1"), Reason::RateLimited, None);
        let (samples, sources, prefixes) = talkers.rank(now, 2, 1000.0);
        assert_eq!(samples, 10);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].key, "198.18.2.7");
        assert!((sources[0].share - 0.6).abs() < 1e-9);
        assert!((sources[0].packets_per_sec - 600.0).abs() < 1e-6);
        assert_eq!(sources[0].matched.as_deref(), Some("block 198.18.2.0/24"));
        assert_eq!(sources[1].key, "198.18.2.8");
        assert_eq!(prefixes[0].key, "198.18.2.0/24");
        assert!((prefixes[0].share - 0.9).abs() < 1e-9);
        assert_eq!(prefixes[1].key, "2001:db8::/64");
        assert_eq!(prefixes[1].reason, "rate_limited");
    }

    #[test]
    fn forgets_samples_older_than_the_window() {
        let mut talkers = Talkers::default();
        let start = Instant::now();
        talkers.note(start, addr("198.18.0.1"), Reason::Blocked, None);
        let later = start + WINDOW + Duration::from_millis(1);
        talkers.note(later, addr("198.18.0.2"), Reason::Blocked, None);
        let (samples, sources, _) = talkers.rank(later, 10, 0.0);
        assert_eq!(samples, 1);
        assert_eq!(sources[0].key, "198.18.0.2");
    }
}
