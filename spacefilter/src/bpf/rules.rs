//! The rules on headers in the kernel (see `spacefilter-ebpf/src/rules.rs`).
//!
//! The program holds two rule sets and reads the one `HEADER_ACTIVE` names
//! (with whether it holds any rule, `HEADER_SET_HOLDS_RULES`).
//! An edit writes the complete new list into the other set, then switches
//! with one write: a frame sees the old list or the new one, never a mix.
//! A rule that is in both lists keeps its budget and its hit count.

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use spacefilter_common::{Bucket, HEADER_SET_HOLDS_RULES, HeaderRule, MAX_HEADER_RULES, map_names};

use super::{ListError, MapSource, take};

/// The header rules in the kernel, with their hit counters and budgets.
pub struct HeaderRules {
    rules: Array<MapData, HeaderRule>,
    hits: PerCpuArray<MapData, u64>,
    buckets: Array<MapData, Bucket>,
    active: Array<MapData, u32>,
    cpus: usize,
    /// The set in force (0 or 1).
    set: u32,
    /// The rules of the set in force, in order.
    current: Vec<HeaderRule>,
    /// Per rule in force, the hits it counted in the sets before this one
    /// (or was given); its slot's counters hold the rest.
    carried: Vec<u64>,
    /// The set written by [`Self::stage`] and not switched in yet, with
    /// each rule's carried hits and the rule in force it continues.
    staged: Option<Staged>,
}

struct Staged {
    rules: Vec<HeaderRule>,
    hits: Vec<u64>,
    from: Vec<Option<usize>>,
}

/// The first slot of rule set `set`.
const fn base(set: u32) -> u32 {
    set * MAX_HEADER_RULES
}

impl HeaderRules {
    pub(crate) fn take(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        let mut this = Self {
            rules: take(ebpf, map_names::HEADER_RULES)?,
            hits: take(ebpf, map_names::HEADER_HITS)?,
            buckets: take(ebpf, map_names::HEADER_BUCKETS)?,
            active: take(ebpf, map_names::HEADER_ACTIVE)?,
            cpus: nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?,
            set: 0,
            current: Vec::new(),
            carried: Vec::new(),
            staged: None,
        };
        let read = |name| move |source| ListError::Read { name, source };
        this.set = this
            .active
            .get(&0, 0)
            .map_err(read(map_names::HEADER_ACTIVE))?
            & 1;
        for index in 0..MAX_HEADER_RULES {
            let rule = this
                .rules
                .get(&(base(this.set) + index), 0)
                .map_err(read(map_names::HEADER_RULES))?;
            if rule.action == 0 {
                break;
            }
            this.current.push(rule);
        }
        this.carried = vec![0; this.current.len()];
        Ok(this)
    }

    /// Puts `rules` in force, in order, at once: [`Self::stage`], then
    /// [`Self::switch`]. A rule also in force now (the same in every field)
    /// keeps its budget and its hits; another starts with a full budget
    /// and the hit count given.
    pub fn set(&mut self, rules: &[(HeaderRule, u64)]) -> Result<(), ListError> {
        self.stage(rules)?;
        self.switch()
    }

    /// Writes `rules` into the set not in force (slots past the last rule
    /// cleared, which ends the list); frames keep seeing the rules in
    /// force until [`Self::switch`].
    pub fn stage(&mut self, rules: &[(HeaderRule, u64)]) -> Result<(), ListError> {
        let update = |name| move |source| ListError::Update { name, source };
        if rules.len() > MAX_HEADER_RULES as usize {
            return Err(ListError::TooManyRules(rules.len()));
        }
        self.staged = None;
        // Each new rule continues the first unclaimed equal rule in force.
        let mut claimed = vec![false; self.current.len()];
        let from: Vec<Option<usize>> = rules
            .iter()
            .map(|(rule, _)| {
                let old =
                    (0..self.current.len()).find(|&j| !claimed[j] && self.current[j] == *rule)?;
                claimed[old] = true;
                Some(old)
            })
            .collect();
        let next = self.set ^ 1;
        for index in 0..MAX_HEADER_RULES {
            let slot = base(next) + index;
            let rule = rules
                .get(index as usize)
                .map_or_else(HeaderRule::default, |&(rule, _)| rule);
            let bucket = match from.get(index as usize).copied().flatten() {
                Some(old) => self
                    .buckets
                    .get(
                        &(base(self.set)
                            + u32::try_from(old).map_err(|_| ListError::TooManyRules(old))?),
                        0,
                    )
                    .map_err(|source| ListError::Read {
                        name: map_names::HEADER_BUCKETS,
                        source,
                    })?,
                None => Bucket::default(),
            };
            let zeros = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(ListError::Cpus)?;
            self.hits
                .set(slot, zeros, 0)
                .map_err(update(map_names::HEADER_HITS))?;
            self.buckets
                .set(slot, bucket, 0)
                .map_err(update(map_names::HEADER_BUCKETS))?;
            self.rules
                .set(slot, rule, 0)
                .map_err(update(map_names::HEADER_RULES))?;
        }
        self.staged = Some(Staged {
            rules: rules.iter().map(|&(rule, _)| rule).collect(),
            hits: rules.iter().map(|&(_, hits)| hits).collect(),
            from,
        });
        Ok(())
    }

    /// Switches the set [`Self::stage`] wrote in, with one write; a rule
    /// that continues one of the old set takes its hits along, counted up
    /// to the switch. Nothing staged: nothing to do.
    pub fn switch(&mut self) -> Result<(), ListError> {
        let Some(Staged { rules, hits, from }) = self.staged.take() else {
            return Ok(());
        };
        let next = self.set ^ 1;
        let holds = if rules.is_empty() {
            0
        } else {
            HEADER_SET_HOLDS_RULES
        };
        self.active
            .set(0, next | holds, 0)
            .map_err(|source| ListError::Update {
                name: map_names::HEADER_ACTIVE,
                source,
            })?;
        let old = self.kernel_hits(self.set)?;
        self.carried = from
            .iter()
            .zip(hits)
            .map(|(from, given)| {
                from.map_or(given, |j| {
                    self.carried.get(j).copied().unwrap_or(0) + old.get(j).copied().unwrap_or(0)
                })
            })
            .collect();
        self.set = next;
        self.current = rules;
        Ok(())
    }

    /// The packets each slot of `set` has counted in the kernel.
    fn kernel_hits(&self, set: u32) -> Result<Vec<u64>, ListError> {
        (0..MAX_HEADER_RULES)
            .map(|index| {
                self.hits
                    .get(&(base(set) + index), 0)
                    .map(|values| values.iter().sum())
                    .map_err(|source| ListError::Read {
                        name: map_names::HEADER_HITS,
                        source,
                    })
            })
            .collect()
    }

    /// The packets each rule in force has matched, by position (every
    /// position up to [`MAX_HEADER_RULES`]).
    pub fn hits(&self) -> Result<Vec<u64>, ListError> {
        let mut hits = self.kernel_hits(self.set)?;
        for (hits, carried) in hits.iter_mut().zip(&self.carried) {
            *hits += carried;
        }
        Ok(hits)
    }
}
