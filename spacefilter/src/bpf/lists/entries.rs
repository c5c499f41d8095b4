//! What the lists hold, by list and prefix, with each entry's hit-counter
//! slot, in little memory: a map per list and family, IPv4 keys packed in
//! a `u64` (12 bytes an entry with its slot, against 24 for a `(List,
//! Prefix)` key), each map kept dense ([`Packed`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use spacefilter_common::Slot;

use crate::net::{List, Prefix, packed::Packed};

/// An IPv4 prefix as a key: its address, then its length, so that keys
/// sort as the prefixes do.
fn v4_key(addr: Ipv4Addr, len: u8) -> u64 {
    (u64::from(u32::from(addr)) << 8) | u64::from(len)
}

fn v4_prefix(key: u64) -> Prefix {
    #[expect(clippy::cast_possible_truncation, reason = "the halves of a key")]
    let (addr, len) = ((key >> 8) as u32, key as u8);
    Prefix::truncating(IpAddr::V4(addr.into()), len)
}

/// An IPv6 prefix as a key: address bytes (big-endian, so they sort as
/// the addresses do), then length.
type V6Key = ([u8; 16], u8);

fn v6_prefix((addr, len): V6Key) -> Prefix {
    Prefix::truncating(IpAddr::V6(addr.into()), len)
}

/// The map index of a list: auto-blocks live in the limiter, not here.
fn index(list: List) -> Option<usize> {
    match list {
        List::Allow => Some(0),
        List::Block => Some(1),
        List::Auto => None,
    }
}

const LISTS: [List; 2] = [List::Allow, List::Block];

#[derive(Default)]
pub(super) struct Entries {
    v4: [Packed<u64, Slot>; 2],
    v6: [Packed<V6Key, Slot>; 2],
}

impl Entries {
    pub(super) fn get(&self, list: List, prefix: Prefix) -> Option<Slot> {
        let i = index(list)?;
        match prefix.addr() {
            IpAddr::V4(a) => self.v4[i].get(&v4_key(a, prefix.len())).copied(),
            IpAddr::V6(a) => self.v6[i].get(&(a.octets(), prefix.len())).copied(),
        }
    }

    pub(super) fn contains(&self, list: List, prefix: Prefix) -> bool {
        self.get(list, prefix).is_some()
    }

    /// Records `prefix` on `list` (the allow or block list) with `slot`.
    pub(super) fn insert(&mut self, list: List, prefix: Prefix, slot: Slot) {
        let i = index(list).expect("auto-blocks are not list entries");
        match prefix.addr() {
            IpAddr::V4(a) => self.v4[i].insert(v4_key(a, prefix.len()), slot),
            IpAddr::V6(a) => self.v6[i].insert((a.octets(), prefix.len()), slot),
        };
    }

    /// Records entries of `list` with their slots, in one pass: distinct
    /// prefixes, in order, none of them on `list` yet.
    pub(super) fn fill(&mut self, list: List, entries: impl Iterator<Item = (Prefix, Slot)>) {
        let i = index(list).expect("auto-blocks are not list entries");
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (prefix, slot) in entries {
            match prefix.addr() {
                IpAddr::V4(a) => v4.push((v4_key(a, prefix.len()), slot)),
                IpAddr::V6(a) => v6.push(((a.octets(), prefix.len()), slot)),
            }
        }
        self.v4[i].extend_sorted(v4);
        self.v6[i].extend_sorted(v6);
    }

    pub(super) fn remove(&mut self, list: List, prefix: Prefix) -> Option<Slot> {
        let i = index(list)?;
        match prefix.addr() {
            IpAddr::V4(a) => self.v4[i].remove(&v4_key(a, prefix.len())),
            IpAddr::V6(a) => self.v6[i].remove(&(a.octets(), prefix.len())),
        }
    }

    /// How many entries `list` has.
    pub(super) fn len(&self, list: List) -> usize {
        index(list).map_or(0, |i| self.v4[i].len() + self.v6[i].len())
    }

    /// Every entry, allowlist first, each list in prefix order (IPv4
    /// first, as [`Prefix`] sorts).
    pub(super) fn iter(&self) -> impl Iterator<Item = (List, Prefix, Slot)> + '_ {
        LISTS.into_iter().flat_map(move |list| self.list(list))
    }

    /// The entries of `list`, in prefix order.
    pub(super) fn list(&self, list: List) -> impl Iterator<Item = (List, Prefix, Slot)> + '_ {
        let i = index(list);
        let v4 = i.into_iter().flat_map(move |i| self.v4[i].iter());
        let v6 = i.into_iter().flat_map(move |i| self.v6[i].iter());
        v4.map(move |(&k, &slot)| (list, v4_prefix(k), slot))
            .chain(v6.map(move |(&k, &slot)| (list, v6_prefix(k), slot)))
    }

    /// The block entries strictly inside `outer`.
    pub(super) fn blocks_inside(&self, outer: Prefix) -> Vec<Prefix> {
        let i = index(List::Block).expect("the blocklist has maps");
        let len = outer.len();
        if outer.is_host() {
            return Vec::new();
        }
        match outer.addr() {
            IpAddr::V4(a) => {
                let first = u32::from(a);
                let last = first | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                self.v4[i]
                    .range(v4_key(first.into(), len + 1)..=v4_key(last.into(), 32))
                    .map(|(&k, _)| v4_prefix(k))
                    .filter(|p| p.len() > len)
                    .collect()
            }
            IpAddr::V6(a) => {
                let first = u128::from(a);
                let last = first | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                let (first, last) = (Ipv6Addr::from(first), Ipv6Addr::from(last));
                self.v6[i]
                    .range((first.octets(), len + 1)..=(last.octets(), 128))
                    .map(|(&k, _)| v6_prefix(k))
                    .filter(|p| p.len() > len)
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_as_prefixes_do() {
        let texts = [
            "2001:db8::/32",
            "10.0.0.0/8",
            "10.0.0.0/24",
            "9.255.255.255/32",
            "2001:db8::1/128",
            "::/0",
            "0.0.0.0/0",
        ];
        let mut entries = Entries::default();
        let mut expected = Vec::new();
        for (n, text) in texts.iter().enumerate() {
            let prefix: Prefix = text.parse().unwrap();
            let list = if n % 3 == 0 { List::Allow } else { List::Block };
            entries.insert(list, prefix, u32::try_from(n).unwrap());
            expected.push((list, prefix, u32::try_from(n).unwrap()));
        }
        expected.sort();
        assert_eq!(entries.iter().collect::<Vec<_>>(), expected);
        assert_eq!(entries.len(List::Allow) + entries.len(List::Block), 7);
        assert_eq!(
            entries.get(List::Block, "10.0.0.0/8".parse().unwrap()),
            Some(1)
        );
        assert_eq!(
            entries.get(List::Allow, "10.0.0.0/8".parse().unwrap()),
            None
        );
        assert_eq!(entries.get(List::Auto, "10.0.0.0/8".parse().unwrap()), None);
        let inside: Vec<String> = entries
            .blocks_inside("10.0.0.0/8".parse().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(inside, ["10.0.0.0/24"]);
        let inside = entries.blocks_inside("2001:db8::/32".parse().unwrap());
        assert_eq!(inside, ["2001:db8::1/128".parse().unwrap()]);
        assert_eq!(
            entries.remove(List::Block, "10.0.0.0/24".parse().unwrap()),
            Some(2)
        );
        assert!(
            entries
                .blocks_inside("0.0.0.0/0".parse().unwrap())
                .contains(&"10.0.0.0/8".parse().unwrap())
        );
    }
}
