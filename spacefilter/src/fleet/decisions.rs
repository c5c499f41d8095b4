//! CrowdSec's decision stream, read and followed: which bans hold on which
//! prefixes, and for how long. Pure bookkeeping; [`super::crowdsec`] talks
//! to the API and to the daemon.
//!
//! Several decisions may ban one prefix (two scenarios, or a manual ban
//! beside an automatic one): the prefix stays blocked while any of them
//! holds, until the last one to expire.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::net::Prefix;

/// The longest comment the daemon takes is 256 bytes; a scenario's name
/// is cut to leave room for the rest.
const SCENARIO_CHARS: usize = 160;

/// One decision as the stream gives it.
#[derive(Clone, Debug, Deserialize)]
struct Decision {
    id: i64,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    scope: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    scenario: String,
    #[serde(default)]
    origin: String,
}

/// One answer of `/v1/decisions/stream`: `new` and `deleted` are null when
/// empty.
#[derive(Debug, Deserialize)]
struct Stream {
    #[serde(default)]
    new: Option<Vec<Decision>>,
    #[serde(default)]
    deleted: Option<Vec<Decision>>,
}

/// A ban to enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ban {
    pub id: i64,
    pub prefix: Prefix,
    pub ttl: Duration,
    pub comment: String,
}

/// What one answer of the stream brings.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub bans: Vec<Ban>,
    /// Decisions gone (deleted, or expired), by id and prefix.
    pub lifted: Vec<(i64, Prefix)>,
    /// Decisions this bouncer does not enforce, and why (logged).
    pub ignored: Vec<String>,
}

/// Reads one answer of the stream.
pub(super) fn read_stream(body: &str) -> Result<Delta, String> {
    let stream: Stream = serde_json::from_str(body)
        .map_err(|err| format!("the decision stream's answer is not what CrowdSec sends: {err}"))?;
    let mut delta = Delta::default();
    for decision in stream.deleted.unwrap_or_default() {
        // A deleted decision lifts whatever this bouncer made of it: its
        // type and duration no longer matter.
        if let Ok(prefix) = target(&decision) {
            delta.lifted.push((decision.id, prefix));
        }
    }
    for decision in stream.new.unwrap_or_default() {
        match ban(&decision) {
            Ok(Some(ban)) => delta.bans.push(ban),
            Ok(None) => {}
            Err(why) => delta.ignored.push(format!(
                "decision {} ({} {} {:?}): {why}",
                decision.id, decision.kind, decision.scope, decision.value
            )),
        }
    }
    Ok(delta)
}

/// The prefix a decision is about, for the scopes an XDP filter can act on.
fn target(decision: &Decision) -> Result<Prefix, String> {
    let scope = decision.scope.to_ascii_lowercase();
    if scope != "ip" && scope != "range" {
        return Err(format!(
            "scope {:?} is not an address or a range",
            decision.scope
        ));
    }
    decision
        .value
        .parse::<Prefix>()
        .map_err(|err| err.to_string())
}

/// The ban a new decision asks for; `None` if it has already run out.
fn ban(decision: &Decision) -> Result<Option<Ban>, String> {
    if !decision.kind.eq_ignore_ascii_case("ban") {
        return Err(format!(
            "type {:?} is not a ban: an XDP filter can only drop",
            decision.kind
        ));
    }
    let prefix = target(decision)?;
    let Some(ttl) = go_duration(&decision.duration)? else {
        return Ok(None);
    };
    if ttl.is_zero() {
        return Ok(None);
    }
    let scenario: String = decision.scenario.chars().take(SCENARIO_CHARS).collect();
    let comment = format!(
        "crowdsec decision {} ({}): {scenario}",
        decision.id, decision.origin
    )
    .replace('\n', " ");
    Ok(Some(Ban {
        id: decision.id,
        prefix,
        ttl,
        comment,
    }))
}

/// Parses a Go duration (`3h59m58.2s`, `-23.2ms`, `1m`); `None` for a
/// negative one (a decision already past).
pub(super) fn go_duration(text: &str) -> Result<Option<Duration>, String> {
    let bad = || format!("{text:?} is not a duration");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Some(Duration::ZERO));
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        secs += number * scale;
        rest = &rest[unit_len..];
    }
    if negative {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| bad())
}

/// What the daemon should hold after a delta: prefixes to block with the
/// time left on their longest decision, and prefixes whose last decision
/// is gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub put: Vec<(Prefix, Duration, String)>,
    pub drop: Vec<Prefix>,
}

/// The decisions in force, by prefix; and the prefixes whose ban is left
/// to a block someone else made (an administrator's, the fleet's), to be
/// applied once that block is gone while a decision still holds.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    held: BTreeMap<Prefix, BTreeMap<i64, (Instant, String)>>,
    deferred: BTreeSet<Prefix>,
}

impl Tracker {
    /// Forgets every decision (before a startup answer, which lists all
    /// the decisions in force).
    pub(super) fn clear(&mut self) {
        self.held.clear();
        self.deferred.clear();
    }

    /// Marks `prefixes` as maybe held by someone else (an add left them):
    /// the next [`Self::settle`] looks at them again.
    pub(super) fn defer(&mut self, prefixes: impl IntoIterator<Item = Prefix>) {
        self.deferred
            .extend(prefixes.into_iter().filter(|p| self.held.contains_key(p)));
    }

    /// The prefixes whose ban waits on someone else's block.
    pub(super) fn deferred(&self) -> impl Iterator<Item = &Prefix> + '_ {
        self.deferred.iter()
    }

    /// Settles `plan` against the blocks others hold (`theirs`): a ban
    /// that waited on a block now gone joins the plan with the time left
    /// on its longest decision (returned, to be logged), and a ban of the
    /// plan on a prefix someone else holds waits from now on.
    pub(super) fn settle(
        &mut self,
        plan: &mut Plan,
        theirs: impl Fn(&Prefix) -> bool,
        now: Instant,
    ) -> Vec<Prefix> {
        let planned: BTreeSet<Prefix> = plan
            .put
            .iter()
            .map(|(prefix, _, _)| *prefix)
            .chain(plan.drop.iter().copied())
            .collect();
        let mut resumed = Vec::new();
        for prefix in std::mem::take(&mut self.deferred) {
            if planned.contains(&prefix) {
                continue;
            }
            if theirs(&prefix) {
                self.deferred.insert(prefix);
                continue;
            }
            match self.longest(&prefix, now) {
                Some((left, comment)) => {
                    plan.put.push((prefix, left, comment));
                    resumed.push(prefix);
                }
                // Its decisions ran out meanwhile: nothing to apply.
                None => {
                    self.held.remove(&prefix);
                }
            }
        }
        for (prefix, _, _) in &plan.put {
            if theirs(prefix) {
                self.deferred.insert(*prefix);
            }
        }
        resumed
    }

    /// The time left on `prefix`'s longest decision in force, and its
    /// comment.
    fn longest(&self, prefix: &Prefix, now: Instant) -> Option<(Duration, String)> {
        self.held
            .get(prefix)?
            .values()
            .filter(|(until, _)| *until > now)
            .max_by_key(|(until, _)| *until)
            .map(|(until, comment)| (*until - now, comment.clone()))
    }

    #[must_use]
    pub(super) fn holds(&self, prefix: &Prefix) -> bool {
        self.held.contains_key(prefix)
    }

    /// Takes in a delta at `now`; returns what changes in the daemon.
    pub(super) fn apply(&mut self, delta: &Delta, now: Instant) -> Plan {
        let mut touched = BTreeSet::new();
        let mut plan = Plan::default();
        for (id, prefix) in &delta.lifted {
            if let Some(ids) = self.held.get_mut(prefix)
                && ids.remove(id).is_some()
            {
                touched.insert(*prefix);
            }
        }
        for ban in &delta.bans {
            self.held
                .entry(ban.prefix)
                .or_default()
                .insert(ban.id, (now + ban.ttl, ban.comment.clone()));
            touched.insert(ban.prefix);
        }
        for prefix in touched {
            let ids = self
                .held
                .get_mut(&prefix)
                .expect("touched prefixes are held");
            // Decisions run out on their own: the daemon expires their
            // entries at the same time.
            ids.retain(|_, (until, _)| *until > now);
            if let Some((until, comment)) = ids.values().max_by_key(|(until, _)| *until) {
                plan.put.push((prefix, *until - now, comment.clone()));
            } else {
                self.held.remove(&prefix);
                self.deferred.remove(&prefix);
                plan.drop.push(prefix);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn go_durations() {
        let secs = |t: &str| go_duration(t).unwrap().unwrap().as_secs_f64();
        assert!((secs("3h59m58.2s") - 14398.2).abs() < 1e-6);
        assert!((secs("58.992516826s") - 58.992_516_826).abs() < 1e-9);
        assert!((secs("1m") - 60.0).abs() < 1e-9);
        assert!((secs("250ms") - 0.25).abs() < 1e-9);
        assert!((secs("1h0m0s") - 3600.0).abs() < 1e-9);
        assert_eq!(go_duration("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(go_duration("-23.235158ms").unwrap(), None);
        for bad in ["", "5", "5x", "h", "1.2.3s", "-"] {
            assert!(go_duration(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_stream_is_read() {
        let body = r#"{"deleted":[{"duration":"-23ms","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"198.18.2.7"}],
            "new":[{"duration":"1h59m58.7s","id":2,"origin":"cscli","scenario":"manual 'ban' from 'test'","scope":"Range","type":"ban","value":"198.18.3.0/24"},
                   {"duration":"3h","id":3,"origin":"cscli","scenario":"s","scope":"Ip","type":"captcha","value":"198.18.2.9"},
                   {"duration":"3h","id":4,"origin":"cscli","scenario":"s","scope":"Country","type":"ban","value":"FR"},
                   {"duration":"-1s","id":5,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"2001:db8::1"}]}"#;
        let delta = read_stream(body).unwrap();
        assert_eq!(delta.lifted, vec![(1, p("198.18.2.7/32"))]);
        assert_eq!(delta.bans.len(), 1);
        assert_eq!(delta.bans[0].prefix, p("198.18.3.0/24"));
        assert_eq!(delta.bans[0].ttl.as_secs(), 7198);
        assert!(
            delta.bans[0]
                .comment
                .starts_with("crowdsec decision 2 (cscli)")
        );
        assert_eq!(delta.ignored.len(), 2, "{:?}", delta.ignored);
        assert_eq!(
            read_stream(r#"{"deleted":null,"new":null}"#).unwrap(),
            Delta::default()
        );
        assert!(read_stream("<html>").is_err());
    }

    #[test]
    fn a_prefix_stays_blocked_while_any_decision_holds() {
        let now = Instant::now();
        let ban = |id, ttl| Ban {
            id,
            prefix: p("198.18.2.7"),
            ttl: Duration::from_secs(ttl),
            comment: format!("d{id}"),
        };
        let mut tracker = Tracker::default();
        let plan = tracker.apply(
            &Delta {
                bans: vec![ban(1, 60), ban(2, 600)],
                ..Delta::default()
            },
            now,
        );
        assert_eq!(
            plan.put,
            vec![(p("198.18.2.7"), Duration::from_mins(10), "d2".into())]
        );
        // The longer one goes: the shorter one still holds.
        let plan = tracker.apply(
            &Delta {
                lifted: vec![(2, p("198.18.2.7"))],
                ..Delta::default()
            },
            now,
        );
        assert_eq!(
            plan.put,
            vec![(p("198.18.2.7"), Duration::from_mins(1), "d1".into())]
        );
        assert!(plan.drop.is_empty());
        // An unknown id lifts nothing.
        let plan = tracker.apply(
            &Delta {
                lifted: vec![(9, p("198.18.2.7"))],
                ..Delta::default()
            },
            now,
        );
        assert_eq!(plan, Plan::default());
        let plan = tracker.apply(
            &Delta {
                lifted: vec![(1, p("198.18.2.7"))],
                ..Delta::default()
            },
            now,
        );
        assert_eq!(plan.drop, vec![p("198.18.2.7")]);
        assert!(!tracker.holds(&p("198.18.2.7")));
    }

    #[test]
    fn a_ban_left_to_another_block_applies_once_that_block_is_gone() {
        let now = Instant::now();
        let ban = |id, prefix: &str, ttl| Ban {
            id,
            prefix: p(prefix),
            ttl: Duration::from_secs(ttl),
            comment: format!("d{id}"),
        };
        let mut tracker = Tracker::default();
        let mut plan = tracker.apply(
            &Delta {
                bans: vec![ban(1, "198.18.2.7", 60), ban(2, "198.18.2.8", 60)],
                ..Delta::default()
            },
            now,
        );
        // 198.18.2.7 is an administrator's.
        let admin = p("198.18.2.7");
        assert!(tracker.settle(&mut plan, |x| *x == admin, now).is_empty());
        assert_eq!(tracker.deferred().copied().collect::<Vec<_>>(), vec![admin]);
        // Still theirs at the next poll: nothing to do.
        let mut plan = Plan::default();
        let later = now + Duration::from_secs(10);
        assert!(tracker.settle(&mut plan, |x| *x == admin, later).is_empty());
        assert_eq!(plan, Plan::default());
        // Their block is gone: the ban applies, with the time left on it.
        let mut plan = Plan::default();
        assert_eq!(tracker.settle(&mut plan, |_| false, later), vec![admin]);
        assert_eq!(
            plan.put,
            vec![(admin, Duration::from_secs(50), "d1".into())]
        );
        assert_eq!(tracker.deferred().count(), 0);
        // A deferred ban whose decision ran out is forgotten.
        let mut plan = tracker.apply(
            &Delta {
                bans: vec![ban(3, "198.18.2.9", 5)],
                ..Delta::default()
            },
            now,
        );
        tracker.settle(&mut plan, |_| true, now);
        let mut plan = Plan::default();
        assert!(tracker.settle(&mut plan, |_| false, later).is_empty());
        assert_eq!(plan, Plan::default());
        assert!(!tracker.holds(&p("198.18.2.9")));
        // A deferred ban whose decision is deleted is no longer deferred.
        let mut plan = tracker.apply(
            &Delta {
                bans: vec![ban(4, "198.18.2.10", 60)],
                ..Delta::default()
            },
            now,
        );
        tracker.settle(&mut plan, |_| true, now);
        let mut plan = tracker.apply(
            &Delta {
                lifted: vec![(4, p("198.18.2.10"))],
                ..Delta::default()
            },
            now,
        );
        assert_eq!(plan.drop, vec![p("198.18.2.10")]);
        assert!(tracker.settle(&mut plan, |_| false, now).is_empty());
        assert_eq!(tracker.deferred().count(), 0);
    }
}
