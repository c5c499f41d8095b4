//! The program under test: loaded once, configured through its maps for
//! each case, and run frame by frame with `BPF_PROG_TEST_RUN`.
//!
//! The lists, rules and limits go in through the filter's own handles.
//! The maps it does not hand out (the verdict counters, the per-source
//! buckets, the host's SYN budget, the port bits) are opened by id from
//! the loaded program: the counters are read one reason at a time (a
//! frame costs two system calls), the budgets are refilled between cases,
//! and only the port bits that change are written.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use spacefilter::{Filter, Prefix, Reason, bpf::monotonic_ns};
use spacefilter_common::{Bucket, Counter, map_names, stats_index};
use spacefilter_tests::{
    fixture,
    reference::{XDP_DROP, XDP_PASS, pipeline::Config},
};

/// How long an admitted source stays verified: past any run.
const VERIFIED_FOR_NS: u64 = 3_600_000_000_000;

/// What the program did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The XDP action; `None` if the kernel refused to run the frame
    /// (shorter than an Ethernet header).
    pub(crate) action: Option<u32>,
    /// The reason the frame was counted under, if exactly one counter
    /// moved, by one packet and the frame's bytes.
    pub(crate) counted: Option<Reason>,
}

impl Outcome {
    /// What the program should have done for a frame of `len` bytes with
    /// this reason.
    #[must_use]
    pub(crate) fn expected(reason: Reason, len: usize) -> Self {
        if len < 14 {
            return Self {
                action: None,
                counted: None,
            };
        }
        Self {
            action: Some(if reason.drops() { XDP_DROP } else { XDP_PASS }),
            counted: Some(reason),
        }
    }
}

pub(crate) struct Kernel {
    filter: Filter,
    stats: PerCpuArray<MapData, Counter>,
    buckets: HashMap<MapData, [u8; 16], Bucket>,
    syn_global: Array<MapData, Bucket>,
    shield_budget: Array<MapData, Bucket>,
    reflect_ports: Array<MapData, u8>,
    /// Datagrams whose first fragment was dropped (source, identification,
    /// protocol), emptied with each case.
    dropped_frags: HashMap<MapData, [u8; 24], [u8; 8]>,
    /// What `REFLECT_PORTS` holds.
    port_bits: Vec<u8>,
    /// The list entries in force.
    lists: (Vec<Prefix>, Vec<Prefix>),
    /// The sources admitted.
    verified: Vec<IpAddr>,
    /// The counters of slot 0 (test runs), per reason, as last read.
    counts: Vec<Counter>,
}

/// The map called `name` among the program's.
fn open(ids: &[u32], name: &str) -> MapData {
    ids.iter()
        .map(|&id| MapData::from_id(id).expect("open a map of the program"))
        .find(|map| {
            map.info()
                .expect("map info")
                .name_as_str()
                .is_some_and(|n| n == name)
        })
        .unwrap_or_else(|| panic!("the program has no map {name}"))
}

impl Kernel {
    /// Loads the program with empty maps.
    pub(crate) fn load() -> Self {
        let mut filter = fixture::load();
        let info = fixture::program_info(&mut filter);
        let ids = info.map_ids().expect("map ids").expect("map ids");
        let stats =
            PerCpuArray::try_from(Map::PerCpuArray(open(&ids, map_names::STATS))).expect("STATS");
        let buckets =
            HashMap::try_from(Map::LruHashMap(open(&ids, map_names::BUCKETS))).expect("BUCKETS");
        let syn_global =
            Array::try_from(Map::Array(open(&ids, map_names::SYN_GLOBAL))).expect("SYN_GLOBAL");
        let shield_budget = Array::try_from(Map::Array(open(&ids, map_names::SHIELD_BUDGET)))
            .expect("SHIELD_BUDGET");
        let reflect_ports = Array::try_from(Map::Array(open(&ids, map_names::REFLECT_PORTS)))
            .expect("REFLECT_PORTS");
        let dropped_frags =
            HashMap::try_from(Map::LruHashMap(open(&ids, map_names::DROPPED_FRAGS)))
                .expect("DROPPED_FRAGS");
        let mut kernel = Self {
            filter,
            stats,
            buckets,
            syn_global,
            shield_budget,
            reflect_ports,
            dropped_frags,
            port_bits: vec![0; 1 << 16],
            lists: (Vec::new(), Vec::new()),
            verified: Vec::new(),
            counts: Vec::new(),
        };
        kernel.counts = kernel.read_counts();
        kernel
    }

    fn count(&self, reason: Reason) -> Counter {
        let values = self
            .stats
            .get(&stats_index(0, reason as u32), 0)
            .expect("read STATS");
        values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        })
    }

    fn read_counts(&self) -> Vec<Counter> {
        Reason::ALL.iter().map(|&r| self.count(r)).collect()
    }

    /// Puts `config` in force, with every budget unspent.
    pub(crate) fn configure(&mut self, config: &Config) {
        let (allow, block) = std::mem::take(&mut self.lists);
        for p in allow {
            self.filter.unallow(p).expect("unallow");
        }
        for p in block {
            self.filter.unblock(p).expect("unblock");
        }
        for &p in &config.allow {
            self.filter.allow(p).expect("allow");
        }
        for &p in &config.block {
            self.filter.block(p).expect("block");
        }
        self.lists = (config.allow.clone(), config.block.clone());
        let now = monotonic_ns();
        for addr in std::mem::take(&mut self.verified) {
            // An IPv4 source and its IPv4-mapped IPv6 form share one entry:
            // revoke it once (revoking an absent entry fails).
            if self.filter.verifier_ref().lookup(addr, now).is_some() {
                self.filter.verifier().revoke(addr, now).expect("revoke");
            }
        }
        for &addr in &config.verified {
            self.filter
                .verifier()
                .admit(addr, now + VERIFIED_FOR_NS, now)
                .expect("admit");
        }
        self.verified.clone_from(&config.verified);
        // Emptied first: a rule equal to one of the previous case's would
        // carry its budget and hits over (as an admin's edit does).
        self.filter
            .header_rules()
            .set(&[])
            .expect("no header rules");
        let rules: Vec<_> = config.rules.iter().map(|&r| (r, 0)).collect();
        self.filter
            .header_rules()
            .set(&rules)
            .expect("header rules");
        self.filter.limiter().set(config.limits).expect("limits");
        self.filter
            .limiter()
            .set_shield(config.shield)
            .expect("shield");
        for (port, bits) in config.port_bits().into_iter().enumerate() {
            if self.port_bits[port] != bits {
                let index = u32::try_from(port).expect("a port");
                self.reflect_ports
                    .set(index, bits, 0)
                    .expect("REFLECT_PORTS");
                self.port_bits[port] = bits;
            }
        }
        let keys: Vec<_> = self.buckets.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.buckets.remove(&key).expect("empty BUCKETS");
        }
        let keys: Vec<_> = self.dropped_frags.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.dropped_frags
                .remove(&key)
                .expect("empty DROPPED_FRAGS");
        }
        self.syn_global
            .set(0, Bucket::default(), 0)
            .expect("SYN_GLOBAL");
        self.shield_budget
            .set(0, Bucket::default(), 0)
            .expect("SHIELD_BUDGET");
        self.counts = self.read_counts();
    }

    /// Runs `frame` once; `expected` is the reason whose counter is read
    /// first (all are read if it did not move as it should).
    pub(crate) fn run(&mut self, frame: &[u8], expected: Reason) -> Outcome {
        let action = self
            .filter
            .test_run(frame, 1)
            .ok()
            .map(|(action, _)| action);
        let len = frame.len() as u64;
        let index = expected as usize;
        let now = self.count(expected);
        let before = self.counts[index];
        if now.packets == before.packets + 1 && now.bytes == before.bytes + len {
            self.counts[index] = now;
            return Outcome {
                action,
                counted: Some(expected),
            };
        }
        let counts = self.read_counts();
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .zip(counts.iter().zip(&self.counts))
            .filter(|(_, (now, before))| now != before)
            .map(|(&reason, _)| reason)
            .collect();
        let counted = match moved[..] {
            [reason] => {
                let (now, before) = (counts[reason as usize], self.counts[reason as usize]);
                (now.packets == before.packets + 1 && now.bytes == before.bytes + len)
                    .then_some(reason)
            }
            _ => None,
        };
        self.counts = counts;
        Outcome { action, counted }
    }

    /// The frames each of the first `n` header rules matched.
    pub(crate) fn rule_hits(&mut self, n: usize) -> Vec<u64> {
        let mut hits = self.filter.header_rules().hits().expect("rule hits");
        hits.truncate(n);
        hits
    }

    /// Whether every counter holds what the runs so far counted: no frame
    /// was counted twice.
    pub(crate) fn counts_hold(&self) -> bool {
        self.read_counts() == self.counts
    }
}
