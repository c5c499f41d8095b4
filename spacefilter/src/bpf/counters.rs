//! The per-CPU verdict counters, per reason and per interface slot.

use std::{collections::BTreeMap, sync::Arc};

use aya::maps::{MapData, PerCpuArray};
use spacefilter_common::{Counter, Reason, STATS_SLOTS, map_names, stats_index};

use super::{ListError, MapSource, take};

/// Packets and bytes per reason, summed over the CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// All interfaces together.
    pub by_reason: BTreeMap<Reason, Counter>,
    /// Per attached interface, by name.
    pub by_iface: BTreeMap<String, BTreeMap<Reason, Counter>>,
    /// Sources verified anew, by proof (see [`super::Verifier`]).
    pub verified: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// The counter of one reason (zero if nothing was counted).
    #[must_use]
    pub fn get(&self, reason: Reason) -> Counter {
        self.by_reason.get(&reason).copied().unwrap_or_default()
    }

    /// Packets dropped, whatever the reason.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.by_reason
            .iter()
            .filter(|(r, _)| r.drops())
            .map(|(_, c)| c.packets)
            .sum()
    }

    /// The change from `earlier` to `self` (all interfaces together).
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            by_iface: BTreeMap::new(),
            by_reason: self
                .by_reason
                .iter()
                .map(|(&reason, now)| {
                    let before = earlier.get(reason);
                    (
                        reason,
                        Counter {
                            packets: now.packets.saturating_sub(before.packets),
                            bytes: now.bytes.saturating_sub(before.bytes),
                        },
                    )
                })
                .collect(),
            verified: self
                .verified
                .iter()
                .map(|(&how, &now)| {
                    let before = earlier.verified.get(how).copied().unwrap_or(0);
                    (how, now.saturating_sub(before))
                })
                .collect(),
        }
    }
}

/// The per-CPU verdict counters.
pub struct Stats {
    map: PerCpuArray<MapData, Counter>,
}

impl Stats {
    pub(crate) fn take(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        Ok(Self {
            map: take(ebpf, map_names::STATS)?,
        })
    }

    /// The counters of one interface slot, summed over the CPUs.
    fn read_slot(&self, slot: u32) -> Result<BTreeMap<Reason, Counter>, ListError> {
        let mut by_reason = BTreeMap::new();
        for reason in Reason::ALL {
            let values = self
                .map
                .get(&stats_index(slot, reason as u32), 0)
                .map_err(|source| ListError::Read {
                    name: map_names::STATS,
                    source,
                })?;
            let total = values.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            by_reason.insert(reason, total);
        }
        debug_assert!(Reason::ALL.len() <= STATS_SLOTS as usize);
        Ok(by_reason)
    }

    /// The counters: slot 0 (frames from interfaces without a slot, and
    /// test runs) and every slot in `ifaces` (name and slot), per interface
    /// and together. Slots of interfaces no longer attached are not read.
    pub fn read(&self, ifaces: &[(String, u32)]) -> Result<Counters, ListError> {
        let mut by_reason = self.read_slot(0)?;
        let mut by_iface = BTreeMap::new();
        for (name, slot) in ifaces {
            let counters = self.read_slot(*slot)?;
            for (reason, counter) in &counters {
                let total = by_reason.entry(*reason).or_default();
                total.packets += counter.packets;
                total.bytes += counter.bytes;
            }
            by_iface.insert(name.clone(), counters);
        }
        Ok(Counters {
            by_reason,
            by_iface,
            verified: BTreeMap::new(),
        })
    }
}

/// Reads the counters without the daemon's lock: handles on the counter
/// maps, and the interface slots as attached when it was made.
pub struct CounterReader {
    pub(super) stats: Arc<Stats>,
    pub(super) proofs: PerCpuArray<MapData, u64>,
    pub(super) ifaces: Vec<(String, u32)>,
}

impl CounterReader {
    /// The verdict counters, summed over the CPUs, in all and per attached
    /// interface, with the proofs' counts.
    pub fn read(&self) -> Result<Counters, ListError> {
        let mut counters = self.stats.read(&self.ifaces)?;
        counters.verified = super::verifier::proven(&self.proofs)?;
        Ok(counters)
    }
}
