//! Verified sources (see [`spacefilter_common::Verified`]): how long a
//! proof holds, admissions by the daemon, and counts.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use spacefilter_common::{Verified, VerifySettings, map_names, verified_how};

use super::{ListError, MapSource, absent, take};

/// The verified sources' maps.
pub struct Verifier {
    verified: HashMap<MapData, [u8; 16], Verified>,
    stats: PerCpuArray<MapData, u64>,
    settings: Array<MapData, VerifySettings>,
}

/// The key of an address in `VERIFIED`: IPv4 as an IPv4-mapped IPv6
/// address.
fn key_of(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn name_of(how: u32) -> &'static str {
    verified_how::NAMES
        .iter()
        .find(|(value, _)| *value == how)
        .map_or("other", |(_, name)| name)
}

impl Verifier {
    pub(crate) fn take(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        Ok(Self {
            verified: take(ebpf, map_names::VERIFIED)?,
            stats: take(ebpf, map_names::VERIFY_STATS)?,
            settings: take(ebpf, map_names::VERIFY_SETTINGS)?,
        })
    }

    /// The verified sources' map, for a successor to carry them over.
    pub(super) fn carried(&mut self) -> &mut HashMap<MapData, [u8; 16], Verified> {
        &mut self.verified
    }

    /// Whether the egress program records the host's peers, and how long a
    /// proof holds.
    pub fn configure(&mut self, record: bool, idle_ns: u64) -> Result<(), ListError> {
        let settings = VerifySettings {
            record: u32::from(record),
            reserved: 0,
            idle_ns,
        };
        self.settings
            .set(0, settings, 0)
            .map_err(|source| ListError::Update {
                name: map_names::VERIFY_SETTINGS,
                source,
            })
    }

    /// Verifies `addr` until `until_ns` (monotonic), or longer if a proof
    /// already holds it longer. Returns whether it was verified already,
    /// and until when it is now.
    pub fn admit(
        &mut self,
        addr: IpAddr,
        until_ns: u64,
        now_ns: u64,
    ) -> Result<(bool, u64), ListError> {
        let key = key_of(addr);
        let current = self.verified.get(&key, 0).ok();
        let held = current.is_some_and(|v| v.until_ns > now_ns);
        let until_ns = current
            .filter(|_| held)
            .map_or(until_ns, |v| v.until_ns.max(until_ns));
        let entry = Verified {
            until_ns,
            how: verified_how::ADMITTED,
            #[expect(clippy::cast_possible_truncation, reason = "milliseconds, wrapping")]
            since_ms: (now_ns / 1_000_000) as u32,
        };
        self.verified
            .insert(key, entry, 0)
            .map_err(|source| ListError::Update {
                name: map_names::VERIFIED,
                source,
            })?;
        if !held {
            self.count_admission()?;
        }
        Ok((held, until_ns))
    }

    /// Admissions are counted with the program's proofs, in the slot of
    /// the first CPU.
    fn count_admission(&mut self) -> Result<(), ListError> {
        let index = verified_how::ADMITTED;
        let values = self
            .stats
            .get(&index, 0)
            .map_err(|source| ListError::Read {
                name: map_names::VERIFY_STATS,
                source,
            })?;
        let mut values = values.to_vec();
        if let Some(first) = values.first_mut() {
            *first += 1;
        }
        let values = PerCpuValues::try_from(values).map_err(|source| ListError::Update {
            name: map_names::VERIFY_STATS,
            source: MapError::IoError(source),
        })?;
        self.stats
            .set(index, values, 0)
            .map_err(|source| ListError::Update {
                name: map_names::VERIFY_STATS,
                source,
            })
    }

    /// Forgets `addr`'s verification. Returns whether it was verified.
    pub fn revoke(&mut self, addr: IpAddr, now_ns: u64) -> Result<bool, ListError> {
        let key = key_of(addr);
        let held = self
            .verified
            .get(&key, 0)
            .is_ok_and(|v| v.until_ns > now_ns);
        match self.verified.remove(&key) {
            Ok(()) => Ok(held),
            Err(err) if absent(&err) => Ok(held),
            Err(source) => Err(ListError::Update {
                name: map_names::VERIFIED,
                source,
            }),
        }
    }

    /// Whether `addr` is verified at `now_ns`, and until when.
    #[must_use]
    pub fn lookup(&self, addr: IpAddr, now_ns: u64) -> Option<(u64, &'static str)> {
        self.verified
            .get(&key_of(addr), 0)
            .ok()
            .filter(|v| v.until_ns > now_ns)
            .map(|v| (v.until_ns, name_of(v.how)))
    }

    /// The verified sources at `now_ns`, with their ends and last proofs.
    pub fn sources(&self, now_ns: u64) -> Vec<(IpAddr, u64, &'static str)> {
        self.verified
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.until_ns > now_ns)
            .map(|(key, v)| {
                let addr = Ipv6Addr::from(key);
                let addr = addr.to_ipv4_mapped().map_or(IpAddr::V6(addr), IpAddr::V4);
                (addr, v.until_ns, name_of(v.how))
            })
            .collect()
    }

    /// Sources verified now, by their last proof (a walk over the map).
    #[must_use]
    pub fn now(&self, now_ns: u64) -> BTreeMap<&'static str, u64> {
        let mut now = BTreeMap::new();
        for (_, _, how) in self.sources(now_ns) {
            *now.entry(how).or_default() += 1;
        }
        now
    }

    /// Sources verified anew by each proof since the program was loaded.
    pub fn proven(&self) -> Result<BTreeMap<&'static str, u64>, ListError> {
        proven(&self.stats)
    }

    /// A handle of its own on the map of proofs' counts, for a reader
    /// that does not go through the verifier.
    pub(super) fn proofs(&self) -> Result<PerCpuArray<MapData, u64>, ListError> {
        use std::os::fd::AsFd as _;

        use aya::maps::{IterableMap as _, Map};
        let read = |source| ListError::Read {
            name: map_names::VERIFY_STATS,
            source,
        };
        let fd = self
            .stats
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| read(MapError::IoError(err)))?;
        let data = MapData::from_fd(fd).map_err(read)?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(read)
    }
}

/// Sources verified anew by each proof, from the proofs' counts `stats`.
pub(super) fn proven(
    stats: &PerCpuArray<MapData, u64>,
) -> Result<BTreeMap<&'static str, u64>, ListError> {
    let mut proven = BTreeMap::new();
    for (how, name) in verified_how::NAMES {
        let values = stats.get(&how, 0).map_err(|source| ListError::Read {
            name: map_names::VERIFY_STATS,
            source,
        })?;
        proven.insert(name, values.iter().sum());
    }
    Ok(proven)
}
