//! `list`: every entry with its hits, as of one moment. Gathered under the
//! core's lock in a compact form (32 bytes an entry, the metadata that
//! entries share held once), and shown entry by entry after the lock is
//! released, while the transport writes the reply out.
//!
//! The hit counters of the allow and block entries are read all at once
//! ([`crate::bpf::Lists::counted`]) and matched to the rules in one pass:
//! both are in (list, prefix) order.

use std::{collections::HashMap, time::Instant};

use super::{Refusal, core::Core, memory};
use crate::{
    api::{EntryView, Origin, listing::EntryRef},
    error_chain,
    net::{List, Prefix},
    store::{Meta, now_ms},
};

/// An entry, with where to find its metadata.
struct Row {
    list: List,
    prefix: Prefix,
    /// Index into [`Listing::metas`].
    meta: u32,
    hits: u64,
}

/// Metadata as shown.
struct Shown {
    origin: Origin,
    comment: Option<Box<str>>,
    expires_in_secs: Option<u64>,
}

/// The entries of a `list` request, in (list, prefix) order.
pub struct Listing {
    rows: Vec<Row>,
    metas: Vec<Shown>,
}

impl Listing {
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every entry, borrowed.
    #[must_use]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EntryRef<'_>> + '_ {
        self.rows.iter().map(|row| {
            let meta = &self.metas[row.meta as usize];
            EntryRef {
                list: row.list,
                prefix: row.prefix,
                origin: meta.origin,
                comment: meta.comment.as_deref(),
                expires_in_secs: meta.expires_in_secs,
                hits: row.hits,
            }
        })
    }

    /// Every entry, as views.
    #[must_use]
    pub fn views(&self) -> Vec<EntryView> {
        self.iter().map(EntryView::from).collect()
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        if self.rows.len() >= memory::BULK {
            self.rows = Vec::new();
            self.metas = Vec::new();
            memory::release();
        }
    }
}

/// A stored origin as the protocol shows it.
pub(super) fn shown(origin: crate::store::Origin) -> Origin {
    match origin {
        crate::store::Origin::Manual => Origin::Manual,
        crate::store::Origin::File => Origin::File,
        crate::store::Origin::Config => Origin::Config,
        crate::store::Origin::Auto => Origin::Auto,
        crate::store::Origin::Fleet => Origin::Fleet,
        crate::store::Origin::Crowdsec => Origin::Crowdsec,
    }
}

impl Core {
    /// The entries of `only`, or of every list.
    pub(super) fn listing(&self, only: Option<List>) -> Result<Listing, Refusal> {
        let lists = self.filter.lists_ref();
        let failed = |err: &crate::bpf::ListError| Refusal::failed(error_chain(err));
        // The hit counters are read (a system call per few thousand
        // entries, a third of a second for a million) on a second thread
        // while this one walks the rules.
        let started = Instant::now();
        let (mut listing, sums) = std::thread::scope(|scope| {
            let sums = (only != Some(List::Auto)).then(|| {
                scope.spawn(|| {
                    let sums = lists.hit_sums();
                    (sums, started.elapsed())
                })
            });
            let listing = self.walk(only);
            let sums = sums.map(|reading| reading.join().expect("reading the hit counters"));
            (listing, sums)
        });
        let sums = match sums {
            Some((sums, took)) => {
                log::debug!("hit counters read in {took:?}");
                Some(sums.map_err(|e| failed(&e))?)
            }
            None => None,
        };
        if let Some(sums) = sums {
            for row in &mut listing.rows {
                if row.list != List::Auto {
                    row.hits = sums.of(u32::try_from(row.hits).expect("a slot, see `walk`"));
                }
            }
        }
        log::debug!(
            "{} entries gathered for a listing in {:?}",
            listing.len(),
            started.elapsed()
        );
        Ok(listing)
    }

    /// The rows of the entries of `only`, or of every list, the hits of an
    /// allow or block entry yet to be read: its `hits` holds its slot.
    fn walk(&self, only: Option<List>) -> Listing {
        let now = now_ms();
        let wanted = |list: List| only.is_none_or(|l| l == list);
        let lists = self.filter.lists_ref();
        let mut slots = lists.slots();
        let mut next = slots.next();
        let mut rows = Vec::with_capacity(only.map_or(self.rules.len(), |l| self.rules.count(l)));
        let mut metas = Vec::new();
        // Rules that share a meta share the one `Meta` value: its address
        // finds the index it was given.
        let mut index: HashMap<*const Meta, u32> = HashMap::new();
        let mut last: Option<(*const Meta, u32)> = None;
        for (&(list, prefix), meta) in &self.rules {
            if !wanted(list) {
                continue;
            }
            let hits = if list == List::Auto {
                self.filter.limiter_ref().auto_hits(prefix)
            } else {
                // Both run in (list, prefix) order: skip to this rule's
                // entry, which a rule on the allow or block list has.
                while let Some((l, p, _)) = next
                    && (l, p) < (list, prefix)
                {
                    next = slots.next();
                }
                match next {
                    Some((l, p, slot)) if (l, p) == (list, prefix) => slot.into(),
                    // Slot 0 counts nothing.
                    _ => 0,
                }
            };
            let address: *const Meta = meta;
            let meta = match last {
                Some((at, i)) if at == address => i,
                _ => {
                    let i = *index.entry(address).or_insert_with(|| {
                        metas.push(Shown {
                            origin: shown(meta.origin),
                            comment: meta.comment.as_deref().map(Box::from),
                            expires_in_secs: meta.remaining(now).map(|d| d.as_secs()),
                        });
                        u32::try_from(metas.len() - 1).expect("fewer than 2^32 metas")
                    });
                    last = Some((address, i));
                    i
                }
            };
            rows.push(Row {
                list,
                prefix,
                meta,
                hits,
            });
        }
        Listing { rows, metas }
    }
}
