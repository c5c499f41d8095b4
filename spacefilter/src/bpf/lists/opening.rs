//! Opening the lists over a program's maps: maps just made
//! ([`Lists::take`]), or those of a running program, taken over
//! ([`Lists::adopt`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{Map, MapError, PerCpuArray},
    sys::SyscallError,
    util::nr_cpus,
};
use spacefilter_common::{Match, action, map_names};

use super::{Lists, Slots, entries::Entries, family_index, packed};
use crate::{
    bpf::{
        ListError, MapSource,
        mapped::Mapped,
        tables::{Adoption, V4Tables, V6Tables},
    },
    net::{List, Prefix},
};

impl Lists {
    /// Takes the rule maps out of a freshly loaded program, before it is
    /// attached; `capacity` is the size the hit-counter array was created
    /// with, `seed` that of the bucket hashes, `stamp` what the program
    /// was built from ([`Lists::adopt`] compares it).
    pub(crate) fn take(
        ebpf: &mut dyn MapSource,
        capacity: u32,
        seed: u64,
        stamp: u32,
    ) -> Result<Self, ListError> {
        let config = Mapped::take(ebpf, map_names::CONFIG)?;
        let mut lists = Self::open(ebpf, config, capacity, seed)?;
        // `Config`: flags, v4_mask, v6_mask, stamp (32-bit words), seed
        // (the third 64-bit word). Set before the program runs anywhere.
        lists
            .config
            .word32(1)
            .store(lists.v4.mask(), Ordering::Relaxed);
        lists
            .config
            .word32(2)
            .store(lists.v6.mask(), Ordering::Relaxed);
        lists.config.word32(3).store(stamp, Ordering::Relaxed);
        lists.config.word64(2).store(seed, Ordering::Relaxed);
        lists.write_flags();
        Ok(lists)
    }

    /// The `CONFIG` map of `ebpf`, if the program was built from `stamp`
    /// (see [`Lists::take`]).
    pub(in crate::bpf) fn stamped(
        ebpf: &mut dyn MapSource,
        stamp: u32,
    ) -> Result<Mapped, ListError> {
        let config = Mapped::take(ebpf, map_names::CONFIG)?;
        let held = config.word32(3).load(Ordering::Relaxed);
        if held != stamp {
            return Err(ListError::Unadoptable {
                name: map_names::CONFIG,
                why: format!(
                    "it was built from another program or with other options (stamp {held:08x}, \
                     this one {stamp:08x})"
                ),
            });
        }
        Ok(config)
    }

    /// The lists over the maps of `ebpf` and `config`, with no entries.
    fn open(
        ebpf: &mut dyn MapSource,
        config: Mapped,
        capacity: u32,
        seed: u64,
    ) -> Result<Self, ListError> {
        let cpus = nr_cpus().map_err(|(_, err)| ListError::Cpus(err))?;
        let v4 = V4Tables::take(ebpf, seed)?;
        let v6 = V6Tables::take(ebpf, seed)?;
        let name = map_names::RULE_HITS;
        let map = ebpf.take_map(name).ok_or(ListError::MissingMap { name })?;
        let Map::PerCpuArray(data) = &map else {
            return Err(ListError::NotArray { name });
        };
        let hits_fd =
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| ListError::Read {
                    name,
                    source: MapError::SyscallError(SyscallError {
                        call: "dup",
                        io_error,
                    }),
                })?;
        let hits =
            PerCpuArray::try_from(map).map_err(|source| ListError::MapType { name, source })?;
        Ok(Self {
            v4,
            v6,
            config,
            hits,
            hits_fd,
            batch_reads: AtomicBool::new(true),
            cpus,
            slots: Slots {
                capacity,
                next: 1,
                free: Vec::new(),
                bases: HashMap::new(),
            },
            entries: Entries::default(),
            allow_lens: [BTreeMap::new(), BTreeMap::new()],
        })
    }

    /// Takes over the lists of a running program (see
    /// [`super::Filter::adopt`]) built from `stamp`: `allow` and `block`
    /// (each in order, no prefix twice) are what the state says they hold.
    /// The entries get hit-counter slots afresh, in order, and the tables
    /// are read and brought in line with them ([`V4Tables::adopt`]), with
    /// no frame seeing a key half written; hit counts start again from 0.
    /// Fails, having written nothing, if the program was built from
    /// something else; fails too if a family's tables cannot be read back
    /// (the other family's may be in line with the state by then, which
    /// leaves the program's verdicts the state's or its own).
    pub(in crate::bpf) fn adopt(
        ebpf: &mut dyn MapSource,
        capacity: u32,
        stamp: u32,
        allow: &[Prefix],
        block: &[Prefix],
    ) -> Result<(Self, [Adoption; 2]), ListError> {
        let config = Self::stamped(ebpf, stamp)?;
        let seed = config.word64(2).load(Ordering::Relaxed);
        let mut lists = Self::open(ebpf, config, capacity, seed)?;
        if lists.config.word32(1).load(Ordering::Relaxed) != lists.v4.mask()
            || lists.config.word32(2).load(Ordering::Relaxed) != lists.v6.mask()
        {
            return Err(ListError::Unadoptable {
                name: map_names::CONFIG,
                why: "its bucket masks are not its tables'".to_owned(),
            });
        }
        if allow.len() + block.len() >= capacity as usize {
            return Err(ListError::Full {
                capacity: capacity - 1,
            });
        }
        for (list, prefixes) in [(List::Allow, allow), (List::Block, block)] {
            let first = lists.slots.next;
            lists.slots.next += u32::try_from(prefixes.len()).expect("fewer than the capacity");
            lists
                .entries
                .fill(list, prefixes.iter().copied().zip(first..));
            if list == List::Allow {
                for prefix in prefixes {
                    *lists.allow_lens[family_index(*prefix)]
                        .entry(prefix.len())
                        .or_default() += 1;
                }
            }
        }
        // Each key's match, from one walk of both lists in order (the
        // slots above: the allowlist's first): an allow entry allows; a
        // block entry is allowed by the longest allow entry covering it,
        // if there is one.
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let first_block = 1 + u32::try_from(allow.len()).expect("fewer than the capacity");
        let mut a = allow.iter().copied().zip(1..).peekable();
        let mut b = block.iter().copied().zip(first_block..).peekable();
        let allowed = |slot| Match {
            action: action::ALLOW,
            slot,
        };
        loop {
            let (prefix, value) = match (a.peek().copied(), b.peek().copied()) {
                (Some((on_allow, slot)), next) if next.is_none_or(|(p, _)| on_allow <= p) => {
                    if next.is_some_and(|(p, _)| p == on_allow) {
                        b.next();
                    }
                    a.next();
                    (on_allow, allowed(slot))
                }
                (_, Some((blocked, slot))) => {
                    b.next();
                    let value = lists.covering_allow(blocked).map_or(
                        Match {
                            action: action::BLOCK,
                            slot,
                        },
                        allowed,
                    );
                    (blocked, value)
                }
                (None, None) => break,
                (Some(_), None) => unreachable!("an allow entry with no block entry after it"),
            };
            match prefix.addr() {
                IpAddr::V4(addr) => v4.push((addr.into(), prefix.len(), packed(value))),
                IpAddr::V6(addr) => v6.push((addr.into(), prefix.len(), packed(value))),
            }
        }
        // Every counter holding a count now is a base: the entries count
        // from 0, and a slot handed out later starts from what it holds.
        let handed_out = lists.slots.next;
        lists.slots.next = capacity;
        let sums = lists.hit_sums()?;
        lists.slots.next = handed_out;
        lists.slots.bases = (1..capacity)
            .filter_map(|slot| Some(slot).zip(Some(sums.of(slot)).filter(|&n| n > 0)))
            .collect();
        // The families apart, at once.
        let (v4_tables, v6_tables) = (&mut lists.v4, &mut lists.v6);
        let (a4, a6) = std::thread::scope(|scope| {
            let a4 = scope.spawn(|| v4_tables.adopt(&v4));
            let a6 = v6_tables.adopt(&v6);
            (a4.join().expect("adopting the IPv4 tables"), a6)
        });
        let adopted = [a4?, a6?];
        lists.write_flags();
        Ok((lists, adopted))
    }
}
