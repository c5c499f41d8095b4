//! When entries expire: a heap of (expiry, entry), so that finding the
//! next expiry and the entries due costs the entries due, not a scan of a
//! million rules every second.
//!
//! The heap is told of every rule put with a TTL and never of removals:
//! an item whose rule is gone, or now expires at another time, is stale
//! and skipped when it comes up. It is rebuilt from the rules when stale
//! items outnumber them.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::{
    net::{List, Prefix},
    store::Rules,
};

#[derive(Default)]
pub(super) struct Expiry {
    heap: BinaryHeap<Reverse<(u64, List, Prefix)>>,
}

impl Expiry {
    /// The heap of every rule in `rules` that expires.
    pub(super) fn of(rules: &Rules) -> Self {
        Self {
            heap: rules
                .iter()
                .filter_map(|(&(list, prefix), meta)| {
                    meta.expires_at_ms.map(|at| Reverse((at, list, prefix)))
                })
                .collect(),
        }
    }

    /// `list`'s `prefix` was put (or put back) to expire at `at`.
    pub(super) fn put(&mut self, list: List, prefix: Prefix, at: Option<u64>) {
        if let Some(at) = at {
            self.heap.push(Reverse((at, list, prefix)));
        }
    }

    /// When the next entry expires (or a stale item comes up, which only
    /// wakes the expiry early), in milliseconds since the epoch.
    pub(super) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes out the entries of `rules` due at `now`.
    pub(super) fn due(&mut self, rules: &Rules, now: u64) -> Vec<(List, Prefix)> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, list, prefix))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if rules
                .get(&(list, prefix))
                .is_some_and(|meta| meta.expires_at_ms == Some(at))
            {
                due.push((list, prefix));
            }
        }
        if self.heap.len() > 2 * rules.len() + 1024 {
            *self = Self::of(rules);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Meta, Origin};

    fn meta(expires_at_ms: Option<u64>) -> Meta {
        Meta {
            origin: Origin::Manual,
            comment: None,
            expires_at_ms,
            added_at_ms: 0,
        }
    }

    #[test]
    fn only_live_rules_come_due_once() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let mut rules = Rules::new();
        rules.insert((List::Block, p("198.18.0.1")), meta(Some(10)));
        rules.insert((List::Block, p("198.18.0.2")), meta(None));
        rules.insert((List::Allow, p("198.18.0.3")), meta(Some(30)));
        let mut expiry = Expiry::of(&rules);
        assert_eq!(expiry.next(), Some(10));
        // .1 is put again for later: its first item is stale.
        rules.insert((List::Block, p("198.18.0.1")), meta(Some(40)));
        expiry.put(List::Block, p("198.18.0.1"), Some(40));
        // .3 is removed: its item is stale.
        rules.remove(&(List::Allow, p("198.18.0.3")));
        assert!(expiry.due(&rules, 35).is_empty());
        assert_eq!(expiry.next(), Some(40));
        assert_eq!(expiry.due(&rules, 40), [(List::Block, p("198.18.0.1"))]);
        assert_eq!(expiry.next(), None);
    }
}
