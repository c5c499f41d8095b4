//! The program's observability maps: interface slots for the per-interface
//! counters, the drop sampler's settings and counters, the debug-log
//! switch; and the decoding of the samples it sends (see
//! `spacefilter-ebpf/src/observe.rs`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    util::nr_cpus,
};
use spacefilter_common::{
    DropSample, IFACE_TABLE, IfaceSlot, MAX_IFACE_SLOTS, Observe, Reason, SAMPLE_BYTES,
    SampleState, map_names, observe_flags,
};

use super::{ListError, MapSource, take};

/// Dropped frames sampled by default: one in this many.
pub const DEFAULT_SAMPLE_EVERY: u32 = 100;
/// Samples a second, host-wide, by default.
pub const DEFAULT_SAMPLE_CAP: u32 = 1_000;

/// How the drop sampler is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// One dropped frame in `every` is sampled; 0: sampling is off.
    pub every: u32,
    /// Samples a second, host-wide, at most (rounded down to a multiple of
    /// the CPUs, at least one per CPU: each CPU has its own share).
    pub cap: u32,
}

/// What became of the frames the sampler picked, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleCounts {
    pub sent: u64,
    /// Not sent: the second's budget was spent.
    pub capped: u64,
    /// Not sent: the ring buffer was full (the daemon reads too slowly).
    pub lost: u64,
}

/// The observability maps.
pub struct Observer {
    config: Array<MapData, Observe>,
    state: PerCpuArray<MapData, SampleState>,
    iface_slots: Array<MapData, IfaceSlot>,
    cpus: u32,
    current: Observe,
    /// Attached interfaces by ifindex, with their slots.
    slots: BTreeMap<u32, u32>,
}

impl Observer {
    pub(crate) fn take(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        let cpus = nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?;
        Ok(Self {
            config: take(ebpf, map_names::OBSERVE)?,
            state: take(ebpf, map_names::SAMPLE_STATE)?,
            iface_slots: take(ebpf, map_names::IFACE_SLOTS)?,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX).max(1),
            current: Observe::default(),
            slots: BTreeMap::new(),
        })
    }

    /// [`Observer::take`] of a running program's maps (see
    /// [`super::Filter::adopt`]): the interfaces keep their counter slots,
    /// and the sampler its settings until they are set again.
    pub(crate) fn adopt(ebpf: &mut dyn MapSource) -> Result<Self, ListError> {
        let mut this = Self::take(ebpf)?;
        let read = |source| ListError::Read {
            name: map_names::IFACE_SLOTS,
            source,
        };
        for entry in 0..IFACE_TABLE {
            let held = this.iface_slots.get(&entry, 0).map_err(read)?;
            if held.ifindex != 0 && held.slot != 0 {
                this.slots.insert(held.ifindex, held.slot);
            }
        }
        this.current = this.config.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::OBSERVE,
            source,
        })?;
        Ok(this)
    }

    /// Takes back the counter slots of interfaces other than `kept`
    /// (ifindices): those a predecessor filtered and this filter does not.
    pub fn release_others(&mut self, kept: &[u32]) -> Result<(), ListError> {
        let others: Vec<u32> = self
            .slots
            .keys()
            .copied()
            .filter(|ifindex| !kept.contains(ifindex))
            .collect();
        others
            .into_iter()
            .try_for_each(|ifindex| self.release(ifindex))
    }

    fn write(&mut self, next: Observe) -> Result<(), ListError> {
        self.config
            .set(0, next, 0)
            .map_err(|source| ListError::Update {
                name: map_names::OBSERVE,
                source,
            })?;
        self.current = next;
        Ok(())
    }

    /// Sets the drop sampler (in force at once).
    pub fn set_sampling(&mut self, sampling: Sampling) -> Result<(), ListError> {
        let Sampling { every, cap } = sampling;
        let mut next = self.current;
        if every == 0 {
            next.flags &= !observe_flags::SAMPLE;
            next.sample_below = 0;
        } else {
            next.flags |= observe_flags::SAMPLE;
            // `sample_hash` spreads evenly over 32 bits: at most this, once
            // in `every`.
            next.sample_below = u32::try_from((1u64 << 32) / u64::from(every) - 1)
                .expect("2^32 / every - 1 fits in 32 bits for every >= 1");
        }
        next.sample_every = every;
        next.cap_per_cpu = (cap / self.cpus).max(1);
        self.write(next)
    }

    /// The sampler as set.
    #[must_use]
    pub fn sampling(&self) -> Sampling {
        let every = if self.current.flags & observe_flags::SAMPLE == 0 {
            0
        } else {
            self.current.sample_every
        };
        Sampling {
            every,
            cap: self.current.cap_per_cpu.saturating_mul(self.cpus),
        }
    }

    /// Switches the kernel-side debug log on or off.
    pub fn set_debug_log(&mut self, on: bool) -> Result<(), ListError> {
        let mut next = self.current;
        if on {
            next.flags |= observe_flags::DEBUG_LOG;
        } else {
            next.flags &= !observe_flags::DEBUG_LOG;
        }
        self.write(next)
    }

    #[must_use]
    pub fn debug_log(&self) -> bool {
        self.current.flags & observe_flags::DEBUG_LOG != 0
    }

    /// The sampler's counters.
    pub fn counts(&self) -> Result<SampleCounts, ListError> {
        let values = self.state.get(&0, 0).map_err(|source| ListError::Read {
            name: map_names::SAMPLE_STATE,
            source,
        })?;
        Ok(values
            .iter()
            .fold(SampleCounts::default(), |acc, s| SampleCounts {
                sent: acc.sent + s.sent,
                capped: acc.capped + s.capped,
                lost: acc.lost + s.lost,
            }))
    }

    /// Gives the interface `ifindex` a counter slot of its own. Returns the
    /// slot, or `None` when every slot is taken or another attached
    /// interface sits on its entry of the table (its frames are then
    /// counted in slot 0 with the unattributed ones).
    pub fn assign(&mut self, ifindex: u32) -> Result<Option<u32>, ListError> {
        if let Some(&slot) = self.slots.get(&ifindex) {
            return Ok(Some(slot));
        }
        let entry = ifindex & (IFACE_TABLE - 1);
        if self
            .slots
            .keys()
            .any(|&other| other & (IFACE_TABLE - 1) == entry)
        {
            return Ok(None);
        }
        let Some(slot) = (1..MAX_IFACE_SLOTS).find(|s| !self.slots.values().any(|v| v == s)) else {
            return Ok(None);
        };
        self.write_slot(entry, IfaceSlot { ifindex, slot })?;
        self.slots.insert(ifindex, slot);
        Ok(Some(slot))
    }

    /// Whether `ifindex` has a slot.
    #[must_use]
    pub fn has_slot(&self, ifindex: u32) -> bool {
        self.slots.contains_key(&ifindex)
    }

    /// Takes back the slot of `ifindex`.
    pub fn release(&mut self, ifindex: u32) -> Result<(), ListError> {
        if self.slots.remove(&ifindex).is_some() {
            self.write_slot(ifindex & (IFACE_TABLE - 1), IfaceSlot::default())?;
        }
        Ok(())
    }

    fn write_slot(&mut self, entry: u32, value: IfaceSlot) -> Result<(), ListError> {
        self.iface_slots
            .set(entry, value, 0)
            .map_err(|source| ListError::Update {
                name: map_names::IFACE_SLOTS,
                source,
            })
    }
}

/// A dropped frame as the sampler sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub reason: Reason,
    /// See [`DropSample::detail`].
    pub detail: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// Its first bytes (at most [`SAMPLE_BYTES`]).
    pub data: Vec<u8>,
}

impl Sample {
    /// Decodes a ring-buffer record; `None` if it is not a whole sample.
    #[must_use]
    pub fn decode(record: &[u8]) -> Option<Sample> {
        if record.len() < size_of::<DropSample>() {
            return None;
        }
        // SAFETY: the record holds a whole DropSample (checked above), which
        // is plain data; the read is unaligned-safe.
        let raw = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<DropSample>()) };
        let cap_len = (raw.cap_len as usize).min(SAMPLE_BYTES);
        Some(Sample {
            ts_ns: raw.ts_ns,
            ifindex: raw.ifindex,
            reason: Reason::from_index(raw.reason)?,
            detail: raw.detail,
            len: raw.len,
            data: raw.data[..cap_len].to_vec(),
        })
    }

    /// The frame's source address, if its headers are in the captured
    /// bytes (Ethernet, VLAN tags, IPv4 or IPv6).
    #[must_use]
    pub fn source(&self) -> Option<IpAddr> {
        use etherparse::{LaxNetSlice, LaxSlicedPacket};
        match LaxSlicedPacket::from_ethernet(&self.data).ok()?.net? {
            LaxNetSlice::Ipv4(ip) => Some(IpAddr::V4(Ipv4Addr::from(ip.header().source()))),
            LaxNetSlice::Ipv6(ip) => Some(IpAddr::V6(Ipv6Addr::from(ip.header().source()))),
            LaxNetSlice::Arp(_) => None,
        }
    }
}
