//! The rate limiter's maps: its settings, the per-source buckets, the
//! spoofed-source detector, the reflection guard's ports and the
//! auto-blocks (see `spacefilter-ebpf/src/limit.rs`).

use std::{
    net::{IpAddr, Ipv6Addr},
    os::fd::AsFd as _,
};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray};
use spacefilter_common::{
    AutoBlock, Bucket, Limits, MAX_AUTO_EXEMPT, Shield, SpoofState, TOKEN_SCALE, limit_flags,
    map_names, reflect_bits, shield_watch,
};

use super::{ListError, MapSource, absent, take};
use crate::net::Prefix;

/// The rate limiter's maps: its settings, the per-source buckets and the
/// auto-blocks (see `spacefilter-ebpf/src/limit.rs`).
pub struct Limiter {
    limits: Array<MapData, Limits>,
    spoof: Array<MapData, SpoofState>,
    reflect_ports: Array<MapData, u8>,
    /// The marks last written to `reflect_ports`, one per port
    /// ([`UNKNOWN`] until written).
    port_bits: Vec<u8>,
    shield: Array<MapData, Shield>,
    shield_watch: PerCpuArray<MapData, u64>,
    buckets: HashMap<MapData, [u8; 16], Bucket>,
    auto: HashMap<MapData, [u8; 16], AutoBlock>,
    auto_active: Array<MapData, u32>,
    exempt: HashMap<MapData, [u8; 16], u8>,
}

/// A map keyed by source (see [`limiter_key`]).
pub(super) type SourceMap<V> = HashMap<MapData, [u8; 16], V>;

/// A port mark no write makes: the port's mark in the map is not known.
const UNKNOWN: u8 = u8::MAX;

/// The port ranges the shield covers, by protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shielded<'a> {
    pub tcp: &'a [(u16, u16)],
    pub udp: &'a [(u16, u16)],
}

/// The bucket key of a source prefix: IPv4 as an IPv4-mapped IPv6 address
/// (always /32), IPv6 as the prefix's first address.
fn limiter_key(prefix: Prefix) -> [u8; 16] {
    match prefix.addr() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The bucket key of source address `addr` when IPv6 sources are grouped
/// by `v6_prefix_len`.
#[must_use]
pub fn limiter_key_of(addr: IpAddr, v6_prefix_len: u8) -> [u8; 16] {
    match addr {
        IpAddr::V4(_) => limiter_key(Prefix::host(addr)),
        IpAddr::V6(_) => limiter_key(Prefix::truncating(addr, v6_prefix_len.min(128))),
    }
}

/// The prefix that a bucket key with `prefix_len` (IPv6) stands for.
#[must_use]
pub fn limiter_prefix(key: [u8; 16], prefix_len: u32, v6: bool) -> Prefix {
    let addr = Ipv6Addr::from(key);
    match (v6, addr.to_ipv4_mapped()) {
        (false, Some(v4)) => Prefix::host(IpAddr::V4(v4)),
        _ => Prefix::truncating(
            IpAddr::V6(addr),
            u8::try_from(prefix_len.min(128)).unwrap_or(128),
        ),
    }
}

impl Limiter {
    pub(crate) fn take(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        Ok(Self {
            limits: take(ebpf, map_names::LIMITS)?,
            spoof: take(ebpf, map_names::SPOOF_STATE)?,
            reflect_ports: take(ebpf, map_names::REFLECT_PORTS)?,
            port_bits: vec![UNKNOWN; 1 << 16],
            shield: take(ebpf, map_names::SHIELD)?,
            shield_watch: take(ebpf, map_names::SHIELD_WATCH)?,
            buckets: take(ebpf, map_names::BUCKETS)?,
            auto: take(ebpf, map_names::AUTO_BLOCKED)?,
            auto_active: take(ebpf, map_names::AUTO_ACTIVE)?,
            exempt: take(ebpf, map_names::AUTO_EXEMPT)?,
        })
    }

    /// The maps a successor carries over from its predecessor's program
    /// (see [`super::Filter::attach_pinned`]): the sources' token buckets
    /// and the auto-blocks.
    pub(super) fn carried(&mut self) -> (&mut SourceMap<Bucket>, &mut SourceMap<AutoBlock>) {
        (&mut self.buckets, &mut self.auto)
    }

    /// Puts new limits in force at once, without reloading the program.
    /// Writes the guards' settings; with the coarse clock where every
    /// budget fits it (see [`limit_flags::COARSE_CLOCK`]).
    pub fn set(&mut self, mut limits: Limits) -> Result<(), ListError> {
        limits.flags &= !limit_flags::COARSE_CLOCK;
        if limits.flags != 0 && limits.fits_coarse_clock() {
            limits.flags |= limit_flags::COARSE_CLOCK;
        }
        self.limits
            .set(0, limits, 0)
            .map_err(|source| ListError::Update {
                name: map_names::LIMITS,
                source,
            })
    }

    /// Marks the reflector source ports and the service ports for the
    /// reflection guard, and no shielded port.
    pub fn set_reflect_ports(
        &mut self,
        sources: &[u16],
        service: &[(u16, u16)],
    ) -> Result<(), ListError> {
        self.set_port_bits(sources, service, Shielded::default())
    }

    /// Marks the reflector source ports and the service ports for the
    /// reflection guard, and the TCP and UDP ports the shield covers. Only
    /// the ports whose marks change are written (the first time, all
    /// 65536).
    pub fn set_port_bits(
        &mut self,
        sources: &[u16],
        service: &[(u16, u16)],
        shielded: Shielded<'_>,
    ) -> Result<(), ListError> {
        let within =
            |ranges: &[(u16, u16)], port| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port));
        for port in 0..=u16::MAX {
            let mut bits = 0;
            if sources.contains(&port) {
                bits |= reflect_bits::SOURCE;
            }
            if within(service, port) {
                bits |= reflect_bits::SERVICE;
            }
            if within(shielded.tcp, port) {
                bits |= reflect_bits::SHIELD_TCP;
            }
            if within(shielded.udp, port) {
                bits |= reflect_bits::SHIELD_UDP;
            }
            let index = usize::from(port);
            if self.port_bits[index] == bits {
                continue;
            }
            // Unknown until the write succeeds.
            self.port_bits[index] = UNKNOWN;
            self.reflect_ports
                .set(u32::from(port), bits, 0)
                .map_err(|source| ListError::Update {
                    name: map_names::REFLECT_PORTS,
                    source,
                })?;
            self.port_bits[index] = bits;
        }
        Ok(())
    }

    /// Puts the shield's settings in force (its ports: [`Self::set_port_bits`]).
    pub fn set_shield(&mut self, shield: Shield) -> Result<(), ListError> {
        self.shield
            .set(0, shield, 0)
            .map_err(|source| ListError::Update {
                name: map_names::SHIELD,
                source,
            })
    }

    /// What the shield watched on its ports since the program was loaded:
    /// SYNs and UDP from unverified sources (see
    /// [`spacefilter_common::shield_watch`]).
    pub fn shield_watched(&self) -> Result<u64, ListError> {
        let mut total = 0;
        for slot in 0..shield_watch::SLOTS {
            let values = self
                .shield_watch
                .get(&slot, 0)
                .map_err(|source| ListError::Read {
                    name: map_names::SHIELD_WATCH,
                    source,
                })?;
            total += values.iter().sum::<u64>();
        }
        Ok(total)
    }

    /// The guards' settings, as [`Self::set`] was given them.
    pub fn get(&self) -> Result<Limits, ListError> {
        let mut limits = self.written()?;
        limits.flags &= !limit_flags::COARSE_CLOCK;
        Ok(limits)
    }

    /// Whether the guards read the coarse clock (see
    /// [`limit_flags::COARSE_CLOCK`]).
    pub fn coarse_clock(&self) -> Result<bool, ListError> {
        Ok(self.written()?.flags & limit_flags::COARSE_CLOCK != 0)
    }

    /// The settings as the program reads them, the loader's flags included.
    fn written(&self) -> Result<Limits, ListError> {
        self.limits.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::LIMITS,
            source,
        })
    }

    /// Blocks `prefix` in the limiter until `until_ns` (monotonic), as the
    /// program does by itself; used to restore auto-blocks on start. The
    /// block goes into the source's bucket too (a full one, if it has
    /// none), as the program puts it: the guards then find it where they
    /// look first, and in a dry run count its frames as `would_limit`.
    pub fn insert_auto(&mut self, prefix: Prefix, until_ns: u64) -> Result<(), ListError> {
        let key = limiter_key(prefix);
        self.auto
            .insert(key, AutoBlock { until_ns, hits: 0 }, 0)
            .map_err(|source| ListError::Update {
                name: map_names::AUTO_BLOCKED,
                source,
            })?;
        self.set_auto_active(1)?;
        let bucket = if let Ok(mut bucket) = self.buckets.get(&key, 0) {
            bucket.blocked_until_ns = until_ns;
            bucket
        } else {
            let limits = self.limits.get(&0, 0).unwrap_or_default();
            Bucket {
                packets: limits.pps_burst.saturating_mul(TOKEN_SCALE),
                bytes: limits.bps_burst.saturating_mul(TOKEN_SCALE),
                syns: limits.syn_burst.saturating_mul(TOKEN_SCALE),
                last_ns: super::monotonic_ns(),
                blocked_until_ns: until_ns,
                ..Bucket::default()
            }
        };
        self.buckets
            .insert(key, bucket, 0)
            .map_err(|source| ListError::Update {
                name: map_names::BUCKETS,
                source,
            })
    }

    /// Tells the program whether `AUTO_BLOCKED` holds a block (frames skip
    /// the auto-block lookup while it does not). Cleared first and set
    /// again if a block is found afterwards: the program sets it after each
    /// block it adds, so a block added meanwhile is never left unenforced.
    pub fn settle_auto_active(&mut self) -> Result<(), ListError> {
        if self.auto.keys().next().is_some() {
            return self.set_auto_active(1);
        }
        self.set_auto_active(0)?;
        if self.auto.keys().next().is_some() {
            self.set_auto_active(1)?;
        }
        Ok(())
    }

    fn set_auto_active(&mut self, value: u32) -> Result<(), ListError> {
        self.auto_active
            .set(0, value, 0)
            .map_err(|source| ListError::Update {
                name: map_names::AUTO_ACTIVE,
                source,
            })
    }

    /// Makes `keys` (bucket keys: see [`limiter_key_of`]) the sources never
    /// auto-blocked, in place of the previous ones; past the map's
    /// capacity ([`MAX_AUTO_EXEMPT`]), the first ones.
    pub fn set_exempt(&mut self, keys: &[[u8; 16]]) -> Result<(), ListError> {
        let keys = &keys[..keys.len().min(MAX_AUTO_EXEMPT as usize)];
        let stale: Vec<[u8; 16]> = self
            .exempt
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !keys.contains(key))
            .collect();
        for key in &stale {
            match self.exempt.remove(key) {
                Ok(()) => {}
                Err(err) if absent(&err) => {}
                Err(source) => {
                    return Err(ListError::Update {
                        name: map_names::AUTO_EXEMPT,
                        source,
                    });
                }
            }
        }
        for key in keys {
            self.exempt
                .insert(key, 1, 0)
                .map_err(|source| ListError::Update {
                    name: map_names::AUTO_EXEMPT,
                    source,
                })?;
        }
        Ok(())
    }

    /// Lifts the auto-block of `prefix`, and forgets its bucket so that it
    /// starts afresh.
    pub fn remove_auto(&mut self, prefix: Prefix) -> Result<(), ListError> {
        let key = limiter_key(prefix);
        let _ = self.buckets.remove(&key);
        match self.auto.remove(&key) {
            Ok(()) => {}
            Err(err) if absent(&err) => {}
            Err(source) => {
                return Err(ListError::Update {
                    name: map_names::AUTO_BLOCKED,
                    source,
                });
            }
        }
        self.settle_auto_active()
    }

    /// Forgets auto-blocks whose time is up at `now_ns` (monotonic) that
    /// nothing else removes: those the daemon never adopted.
    pub fn forget_ended_auto(&mut self, now_ns: u64) -> Result<(), ListError> {
        let ended: Vec<[u8; 16]> = self
            .auto
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, block)| block.until_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        for key in &ended {
            let _ = self.auto.remove(key);
        }
        self.settle_auto_active()
    }

    /// Packets dropped under the auto-block of `prefix` (counted in its
    /// bucket while it has one, in the auto-block map otherwise).
    #[must_use]
    pub fn auto_hits(&self, prefix: Prefix) -> u64 {
        let key = limiter_key(prefix);
        let in_map = self.auto.get(&key, 0).map_or(0, |block| block.hits);
        let in_bucket = self.buckets.get(&key, 0).map_or(0, |b| b.blocked_hits);
        in_map + in_bucket
    }

    /// Every auto-block in force, with its bucket key and end.
    pub fn auto_blocks(&self) -> Vec<([u8; 16], AutoBlock)> {
        self.auto.iter().filter_map(Result::ok).collect()
    }

    /// Gives `prefix` (a source, as the limiter groups them) the bucket
    /// `bucket`, as if the program had left it so: for fixtures that start
    /// from a given state.
    pub fn set_bucket(&mut self, prefix: Prefix, bucket: Bucket) -> Result<(), ListError> {
        self.buckets
            .insert(limiter_key(prefix), bucket, 0)
            .map_err(|source| ListError::Update {
                name: map_names::BUCKETS,
                source,
            })
    }

    /// The bucket of `prefix`, if it has one.
    #[must_use]
    pub fn bucket(&self, prefix: Prefix) -> Option<Bucket> {
        self.buckets.get(&limiter_key(prefix), 0).ok()
    }

    /// Puts the spoofed-source detector in state `state`: for fixtures
    /// that start from a given state.
    pub fn set_spoof_state(&mut self, state: SpoofState) -> Result<(), ListError> {
        self.spoof
            .set(0, state, 0)
            .map_err(|source| ListError::Update {
                name: map_names::SPOOF_STATE,
                source,
            })
    }

    /// The spoofed-source detector's state.
    pub fn spoof_state(&self) -> Result<SpoofState, ListError> {
        self.spoof.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::SPOOF_STATE,
            source,
        })
    }

    /// How many sources have a bucket: read in batches where the kernel
    /// can (`status` during a flood from many sources), else key by key.
    #[must_use]
    pub fn tracked_sources(&self) -> usize {
        let fd = self.buckets.map().fd().as_fd();
        match super::batch::count_hash(fd, 16, size_of::<Bucket>()) {
            Ok(count) => count,
            Err(err) => {
                if !super::batch::unsupported(&err) {
                    log::debug!("counting the sources' buckets in batches: {err}");
                }
                self.buckets.keys().flatten().count()
            }
        }
    }
}
