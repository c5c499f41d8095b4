//! The allow and block lists and the auto-blocks: add, remove, expire
//! (`list` is [`super::listing`]). Every accepted change is journaled
//! before it is put in the maps, and durable before the client hears back.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    AddRequest, Peer, Refusal,
    core::{Core, describe, parse_all},
};
use crate::{
    api::{Changed, Origin},
    error_chain,
    net::{List, Prefix, lockout},
    store::{self, Batch, Meta, Op, now_ms},
};

/// Entries written to the maps between two progress reports.
const INSERT_CHUNK: usize = 16 * 1024;

/// An origin as the store keeps it.
pub(super) fn stored(origin: Origin) -> store::Origin {
    match origin {
        Origin::Manual => store::Origin::Manual,
        Origin::File => store::Origin::File,
        Origin::Config => store::Origin::Config,
        Origin::Auto => store::Origin::Auto,
        Origin::Fleet => store::Origin::Fleet,
        Origin::Crowdsec => store::Origin::Crowdsec,
    }
}

/// Refuses an add to the auto-blocks, or with a comment that is not one
/// short line.
pub(super) fn bad_add(list: List, comment: Option<&str>) -> Result<(), Refusal> {
    if list == List::Auto {
        return Err(Refusal::bad_input(
            "auto entries are made by the rate limiter; block or allow the prefix instead",
        ));
    }
    if let Some(text) = comment
        && (text.len() > 256 || text.contains('\n'))
    {
        return Err(Refusal::bad_input(
            "a comment is one line of at most 256 bytes",
        ));
    }
    Ok(())
}

impl Core {
    /// Adds or updates entries, all or nothing. `progress` is called with
    /// (done, total) as kernel entries are written.
    pub(super) fn add(
        &mut self,
        req: AddRequest,
        peer: Peer,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Changed, Refusal> {
        let AddRequest {
            list,
            prefixes,
            ttl,
            comment,
            origin,
            force,
            keep_others,
        } = req;
        bad_add(list, comment.as_deref())?;
        let prefixes = {
            // The request's text goes once it is parsed: for a bulk add, a
            // string per prefix, tens of MiB.
            let texts = prefixes;
            parse_all(&texts)?
        };
        let asked = prefixes.len();
        let prefixes = if keep_others {
            self.not_others(list, prefixes, origin)
        } else {
            prefixes
        };
        let kept = (asked - prefixes.len()) as u64;
        if prefixes.is_empty() {
            return Ok(Changed {
                unchanged: kept,
                ..Changed::default()
            });
        }
        if !force {
            let protected = lockout::protected_addresses(&self.ifaces);
            if let Some(why) = prefixes
                .iter()
                .find_map(|&p| lockout::objection(list, p, &protected))
            {
                return Err(Refusal::refused(why));
            }
        }
        let now = now_ms();
        let expires_at_ms =
            ttl.map(|ttl| now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
        let is_new = |p: &Prefix| !self.rules.contains_key(&(list, *p));
        // An import of prefixes all new (the usual bulk add) needs no second
        // list of them.
        let new: Cow<'_, [Prefix]> = if prefixes.iter().all(is_new) {
            Cow::Borrowed(&prefixes)
        } else {
            Cow::Owned(prefixes.iter().copied().filter(is_new).collect())
        };
        if new.len() > self.filter.lists().free() {
            return Err(Refusal::failed(format!(
                "{} new entries do not fit: room is left for {} (capacity {}); remove entries or restart with a larger --capacity",
                new.len(),
                self.filter.lists().free(),
                self.capacity
            )));
        }
        let total = new.len() as u64;
        // Journal first, then the kernel: a crash in between is put right by
        // the next start, which loads the maps from the journal.
        let previous = self.commit_put(
            list,
            &prefixes,
            &new,
            comment.as_ref(),
            origin,
            expires_at_ms,
            now,
        )?;
        let mut done = 0;
        for chunk in new.chunks(INSERT_CHUNK) {
            if let Err(err) = self.filter.lists().insert_many(list, chunk) {
                let _ = self.filter.lists().remove_many(list, &new[..done]);
                self.undo_put(list, &new, previous);
                return Err(Refusal::failed(error_chain(&err)));
            }
            done += chunk.len();
            progress(done as u64, total);
        }
        let changed = Changed {
            added: total,
            updated: prefixes.len() as u64 - total,
            removed: 0,
            unchanged: kept,
        };
        log::info!(
            "{} {} ({} new, {} updated{}{}, origin {}) asked by {peer}",
            list.name(),
            describe(&prefixes),
            changed.added,
            changed.updated,
            ttl.map(|t| format!(", ttl {}", humantime::format_duration(t)))
                .unwrap_or_default(),
            comment
                .as_deref()
                .map(|c| format!(", comment {c:?}"))
                .unwrap_or_default(),
            origin.name(),
        );
        Ok(changed)
    }

    /// Records added or updated rules (`new` among them were not there) in
    /// memory and in the journal; returns the others as they were (for
    /// [`Self::undo_put`]). If the journal write fails, memory is left as it
    /// was.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all parts of one rule"
    )]
    fn commit_put(
        &mut self,
        list: List,
        prefixes: &[Prefix],
        new: &[Prefix],
        comment: Option<&String>,
        origin: Origin,
        expires_at_ms: Option<u64>,
        now: u64,
    ) -> Result<Batch, Refusal> {
        let fresh = Meta {
            origin: stored(origin),
            comment: comment.cloned(),
            expires_at_ms,
            added_at_ms: now,
        };
        // Held compactly: the rules share their few distinct metas.
        let mut put = Batch::with_capacity(prefixes.len());
        // The rules that were there, as they were.
        let mut previous = Batch::default();
        for &prefix in prefixes {
            let key = (list, prefix);
            match self.rules.get(&key) {
                None => put.push(key, &fresh),
                Some(existing) => {
                    let meta = Meta {
                        // A repeated add keeps the comment unless it brings one.
                        comment: comment.cloned().or_else(|| existing.comment.clone()),
                        added_at_ms: existing.added_at_ms,
                        ..fresh.clone()
                    };
                    put.push(key, &meta);
                    previous.push(key, existing);
                }
            }
        }
        let op = Op::PutBatch { rules: put };
        op.apply(&mut self.rules);
        if let Err(err) = self.store.append(&op, &self.rules) {
            for &prefix in new {
                self.rules.remove(&(list, prefix));
            }
            Op::PutBatch { rules: previous }.apply(&mut self.rules);
            return Err(Refusal::failed(error_chain(&err)));
        }
        for &prefix in prefixes {
            self.expiry.put(list, prefix, expires_at_ms);
        }
        Ok(previous)
    }

    /// Puts the rules of a journaled put whose kernel write failed back as
    /// they were (`new` were not there, `previous` were): in memory, and in
    /// the journal (records that undo it, so that the next start does not
    /// bring the put back).
    fn undo_put(&mut self, list: List, new: &[Prefix], previous: Batch) {
        for &prefix in new {
            self.rules.remove(&(list, prefix));
        }
        for ((list, prefix), meta) in previous.iter() {
            self.expiry.put(list, prefix, meta.expires_at_ms);
        }
        let mut undo = Vec::new();
        if !new.is_empty() {
            undo.push(Op::Delete {
                list,
                prefixes: new.to_vec(),
            });
        }
        if !previous.is_empty() {
            undo.push(Op::PutBatch { rules: previous });
        }
        for op in undo {
            op.apply(&mut self.rules);
            if let Err(err) = self.store.append(&op, &self.rules) {
                log::error!(
                    "journaling the undoing of a failed {} write: {}; the next start may bring \
                     the failed entries back",
                    list.name(),
                    error_chain(&err)
                );
            }
        }
    }

    /// Removes entries; prefixes that are not there are counted as
    /// unchanged.
    pub(super) fn remove(
        &mut self,
        list: List,
        prefixes: &[String],
        peer: Peer,
    ) -> Result<Changed, Refusal> {
        let prefixes = parse_all(prefixes)?;
        // Unblocking also lifts the rate limiter's auto-blocks.
        let lists: &[List] = match list {
            List::Block => &[List::Block, List::Auto],
            other => &[other],
        };
        let mut removed = BTreeSet::new();
        for &list in lists {
            let present: Vec<Prefix> = prefixes
                .iter()
                .copied()
                .filter(|p| self.rules.contains_key(&(list, *p)))
                .collect();
            if !present.is_empty() {
                self.delete(list, &present, &format!("asked by {peer}"))?;
                removed.extend(present);
            }
        }
        Ok(Changed {
            removed: removed.len() as u64,
            unchanged: (prefixes.len() - removed.len()) as u64,
            ..Changed::default()
        })
    }

    /// Those of `prefixes` that are not on `list` with another origin than
    /// `origin` (see [`AddRequest::keep_others`]).
    fn not_others(&self, list: List, prefixes: Vec<Prefix>, origin: Origin) -> Vec<Prefix> {
        let mine = stored(origin);
        prefixes
            .into_iter()
            .filter(|p| {
                self.rules
                    .get(&(list, *p))
                    .is_none_or(|meta| meta.origin == mine)
            })
            .collect()
    }

    /// Removes those of `prefixes` that are on `list` with `origin` (and
    /// only from `list`); others are counted as unchanged. A source of
    /// rules lifts what it made and nothing someone else holds, checked
    /// under the same lock.
    pub(super) fn remove_own(
        &mut self,
        list: List,
        prefixes: &[Prefix],
        origin: Origin,
        peer: Peer,
    ) -> Result<Changed, Refusal> {
        let mine = stored(origin);
        let present: Vec<Prefix> = prefixes
            .iter()
            .copied()
            .filter(|p| {
                self.rules
                    .get(&(list, *p))
                    .is_some_and(|meta| meta.origin == mine)
            })
            .collect();
        if !present.is_empty() {
            self.delete(list, &present, &format!("asked by {peer}"))?;
        }
        Ok(Changed {
            removed: present.len() as u64,
            unchanged: (prefixes.len() - present.len()) as u64,
            ..Changed::default()
        })
    }

    /// Takes `prefixes` (all present) off `list`: journal first, then the
    /// maps, so that a crash in between re-applies the removal on restart.
    fn delete(&mut self, list: List, prefixes: &[Prefix], why: &str) -> Result<(), Refusal> {
        let op = Op::Delete {
            list,
            prefixes: prefixes.to_vec(),
        };
        let removed: Vec<(Prefix, Meta)> = prefixes
            .iter()
            .filter_map(|&p| self.rules.remove(&(list, p)).map(|meta| (p, meta)))
            .collect();
        if let Err(err) = self.store.append(&op, &self.rules) {
            for (prefix, meta) in removed {
                self.expiry.put(list, prefix, meta.expires_at_ms);
                self.rules.insert((list, prefix), meta);
            }
            return Err(Refusal::failed(error_chain(&err)));
        }
        if list == List::Auto {
            for &prefix in prefixes {
                self.filter
                    .limiter()
                    .remove_auto(prefix)
                    .map_err(|err| Refusal::failed(error_chain(&err)))?;
            }
        } else {
            self.filter
                .lists()
                .remove_many(list, prefixes)
                .map_err(|err| Refusal::failed(error_chain(&err)))?;
        }
        log::info!("un{} {} {why}", list.name(), describe(prefixes));
        Ok(())
    }

    /// Takes off `list` the entries the config file put there (origin
    /// `config`) that it no longer lists: `keep`.
    pub(super) fn drop_stale_config(&mut self, list: List, keep: &[Prefix]) -> Result<(), Refusal> {
        let stale: Vec<Prefix> = self
            .rules
            .iter()
            .filter(|((l, p), meta)| {
                *l == list && meta.origin == store::Origin::Config && !keep.contains(p)
            })
            .map(|(&(_, p), _)| p)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.delete(list, &stale, "(no longer in the config file)")
    }

    /// Removes every entry whose TTL has run out.
    pub(super) fn expire(&mut self) {
        let mut due: BTreeMap<List, Vec<Prefix>> = BTreeMap::new();
        for (list, prefix) in self.expiry.due(&self.rules, now_ms()) {
            due.entry(list).or_default().push(prefix);
        }
        for (list, prefixes) in due {
            if let Err(err) = self.delete(list, &prefixes, "(expired)") {
                log::error!("expiring {} entries failed: {}", list.name(), err.message);
                // Tried again at the next tick.
                for prefix in prefixes {
                    let at = self
                        .rules
                        .get(&(list, prefix))
                        .and_then(|m| m.expires_at_ms);
                    self.expiry.put(list, prefix, at);
                }
            }
        }
    }

    /// The time until the next entry expires.
    #[must_use]
    pub(super) fn next_expiry(&self) -> Option<Duration> {
        self.expiry
            .next()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
    }
}
