//! The rules on headers in the kernel (see `spacefilter-ebpf/src/rules.rs`).

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use spacefilter_common::{Bucket, HeaderRule, MAX_HEADER_RULES, map_names};

use super::{ListError, take};

/// The header rules in the kernel, with their hit counters and budgets.
pub struct HeaderRules {
    rules: Array<MapData, HeaderRule>,
    hits: PerCpuArray<MapData, u64>,
    buckets: Array<MapData, Bucket>,
    cpus: usize,
}

impl HeaderRules {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ListError> {
        Ok(Self {
            rules: take(ebpf, map_names::HEADER_RULES)?,
            hits: take(ebpf, map_names::HEADER_HITS)?,
            buckets: take(ebpf, map_names::HEADER_BUCKETS)?,
            cpus: nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?,
        })
    }

    /// Puts `rules` in force, in order, each with the hit count given.
    /// Slots past the last rule are cleared, which ends the list.
    pub fn set(&mut self, rules: &[(HeaderRule, u64)]) -> Result<(), ListError> {
        let update = |name| move |source| ListError::Update { name, source };
        for index in 0..MAX_HEADER_RULES {
            let (rule, hits) = rules
                .get(index as usize)
                .copied()
                .unwrap_or((HeaderRule::default(), 0));
            let mut per_cpu = vec![0u64; self.cpus];
            per_cpu[0] = hits;
            let per_cpu = PerCpuValues::try_from(per_cpu).map_err(ListError::Cpus)?;
            self.hits
                .set(index, per_cpu, 0)
                .map_err(update(map_names::HEADER_HITS))?;
            self.buckets
                .set(index, Bucket::default(), 0)
                .map_err(update(map_names::HEADER_BUCKETS))?;
            self.rules
                .set(index, rule, 0)
                .map_err(update(map_names::HEADER_RULES))?;
        }
        Ok(())
    }

    /// The packets each rule slot has matched.
    pub fn hits(&self) -> Result<Vec<u64>, ListError> {
        (0..MAX_HEADER_RULES)
            .map(|index| {
                self.hits
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .map_err(|source| ListError::Read {
                        name: map_names::HEADER_HITS,
                        source,
                    })
            })
            .collect()
    }
}
