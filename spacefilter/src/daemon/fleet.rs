//! Changes made fleet-wide. On a member of a fleet, a change an
//! administrator asks for (a block, a rule, the limits, the shield) is
//! written to the fleet, and this host applies it the way every member
//! does: from the fleet, through the same path as the others. The daemon
//! knows the fleet only as a [`FleetPort`] that the fleet's link gives it
//! when it joins; without one, a fleet-wide change is a change of this
//! host.
//!
//! Before anything is written, the change is checked here as it would be
//! on this host, so that input that is bad, or that this host's lockout
//! guard refuses, never reaches the other members.

use std::{sync::Arc, time::Duration};

use super::{Handle, Peer, Refusal, core::parse_all};
use crate::{
    api::{HeaderRuleView, LimitsView, Request, Response, RuleAction, ShieldView},
    net::{List, Prefix, lockout},
};

/// How long this host may take to apply what it wrote to the fleet, and
/// how much longer for each [`APPLY_BATCH`] prefixes.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const APPLY_BATCH: usize = 10_000;

/// A change written to the fleet, checked.
#[derive(Clone, Debug)]
pub enum FleetChange {
    Add {
        list: List,
        prefixes: Vec<Prefix>,
        ttl: Option<Duration>,
        comment: Option<String>,
    },
    Remove {
        list: List,
        prefixes: Vec<Prefix>,
    },
    Limits(LimitsView),
    /// Appends a rule to the fleet's rules on headers.
    RuleAdd(HeaderRuleView),
    /// Deletes a rule of the fleet's by its id.
    RuleDel(u32),
    Shield(ShieldView),
}

impl FleetChange {
    /// The change, for the log (a bulk change by its count).
    fn describe(&self) -> String {
        match self {
            FleetChange::Add { list, prefixes, .. } => {
                format!("{} {}", list.name(), super::core::describe(prefixes))
            }
            FleetChange::Remove { list, prefixes } => {
                format!("un{} {}", list.name(), super::core::describe(prefixes))
            }
            FleetChange::Limits(limits) => format!("limits {limits:?}"),
            FleetChange::RuleAdd(rule) => format!("rule {rule:?}"),
            FleetChange::RuleDel(id) => format!("the deletion of rule {id}"),
            FleetChange::Shield(shield) => format!("shield {shield:?}"),
        }
    }
}

/// Why a change did not reach the fleet.
#[derive(Debug)]
pub enum PublishError {
    /// The change cannot be made as asked (a rule id the fleet lacks).
    BadInput(String),
    /// The fleet could not be written.
    Failed(String),
}

/// The fleet as the daemon sees it.
pub trait FleetPort: Send + Sync {
    /// Writes `change`; returns the fleet's revision that holds it.
    fn publish(&self, change: &FleetChange) -> Result<i64, PublishError>;
    /// Waits until this host has applied the fleet up to `revision`;
    /// false if it has not within `timeout`.
    fn wait_applied(&self, revision: i64, timeout: Duration) -> bool;
}

impl Handle {
    /// Makes this host a member of a fleet: fleet-wide changes go there.
    pub fn join_fleet(&self, port: Arc<dyn FleetPort>) {
        let _ = self.3.set(port);
    }

    /// Carries out `request` fleet-wide: on a member, writes it to the
    /// fleet and answers once this host has applied it; elsewhere, as a
    /// change of this host. `None` for a request that is not a change the
    /// fleet shares (the caller serves it as it is).
    #[must_use]
    pub fn share(&self, request: &Request, peer: Peer) -> Option<Result<Response, Refusal>> {
        let port = self.3.get()?;
        let change = match self.checked(request) {
            Ok(Some(change)) => change,
            Ok(None) => return None,
            Err(refusal) => return Some(Err(refusal)),
        };
        let revision = match port.publish(&change) {
            Ok(revision) => revision,
            Err(PublishError::BadInput(why)) => return Some(Err(Refusal::bad_input(why))),
            Err(PublishError::Failed(why)) => {
                return Some(Err(Refusal::failed(format!(
                    "writing to the fleet failed: {why} (`--local` changes this host alone)"
                ))));
            }
        };
        log::info!(
            "{} written to the fleet at revision {revision}, asked by {peer}",
            change.describe()
        );
        let prefixes = match &change {
            FleetChange::Add { prefixes, .. } | FleetChange::Remove { prefixes, .. } => {
                prefixes.len()
            }
            _ => 0,
        };
        let timeout = APPLY_TIMEOUT + Duration::from_secs((prefixes / APPLY_BATCH) as u64);
        if !port.wait_applied(revision, timeout) {
            return Some(Err(Refusal::failed(format!(
                "written to the fleet (revision {revision}), but this host has not applied it \
                 within {timeout:?}: see the fleet link in `spacefilter status` and the \
                 daemon's log"
            ))));
        }
        Some(self.applied(&change, revision))
    }

    /// What this host holds after a fleet-wide change, as the reply.
    fn applied(&self, change: &FleetChange, revision: i64) -> Result<Response, Refusal> {
        match change {
            FleetChange::Add { list, prefixes, .. } => {
                if let Some(missing) = prefixes
                    .iter()
                    .find(|&&p| self.held_as(*list, p, crate::api::Origin::Fleet).is_none())
                {
                    return Err(Refusal::failed(format!(
                        "written to the fleet (revision {revision}), but {missing} is not on this \
                         host's {} list: see the daemon's log",
                        list.name()
                    )));
                }
                Ok(Response::Fleet {
                    revision,
                    count: prefixes.len() as u64,
                })
            }
            FleetChange::Remove { prefixes, .. } => Ok(Response::Fleet {
                revision,
                count: prefixes.len() as u64,
            }),
            FleetChange::Limits(_) => Ok(Response::Limits(self.limits())),
            FleetChange::RuleAdd(_) | FleetChange::RuleDel(_) => {
                self.header_rules().map(|rules| Response::Rules { rules })
            }
            FleetChange::Shield(_) => Ok(Response::Shield(self.shield())),
        }
    }

    /// The change `request` makes, checked as this host would check it.
    fn checked(&self, request: &Request) -> Result<Option<FleetChange>, Refusal> {
        Ok(Some(match request {
            Request::Add {
                list,
                prefixes,
                ttl_secs,
                comment,
                force,
                ..
            } => {
                if *force {
                    return Err(Refusal::bad_input(
                        "--force overrides this host's lockout guard only: add --local, or leave --force out",
                    ));
                }
                super::lists::bad_add(*list, comment.as_deref())?;
                let prefixes = parse_all(prefixes)?;
                let protected = lockout::protected_addresses(&self.lock().ifaces);
                if let Some(why) = prefixes
                    .iter()
                    .find_map(|&p| lockout::objection(*list, p, &protected))
                {
                    return Err(Refusal::refused(format!(
                        "{why}; nothing was written to the fleet"
                    )));
                }
                FleetChange::Add {
                    list: *list,
                    prefixes,
                    ttl: ttl_secs.map(Duration::from_secs),
                    comment: comment.clone(),
                }
            }
            Request::Remove { list, prefixes } => FleetChange::Remove {
                list: *list,
                prefixes: parse_all(prefixes)?,
            },
            Request::SetLimits { limits } => {
                if let Some(problem) = limits.problem() {
                    return Err(Refusal::bad_input(problem));
                }
                FleetChange::Limits(LimitsView {
                    reflect_profile: None,
                    ..limits.clone()
                })
            }
            Request::RuleAdd { rule, force } => {
                if let Some(problem) = rule.problem() {
                    return Err(Refusal::bad_input(problem));
                }
                if !force && rule.action == Some(RuleAction::Drop) && rule.matches_everything() {
                    return Err(Refusal::refused(
                        "refusing a drop rule with no condition: it would drop every frame that is on no list, including your own session; add --force if that is what you want",
                    ));
                }
                let mut rule = rule.clone();
                if rule.tcp_flags.is_some() && rule.proto.is_none() {
                    rule.proto = Some(super::header_rules::IPPROTO_TCP);
                }
                rule.hits = 0;
                FleetChange::RuleAdd(rule)
            }
            Request::RuleDel { id } => FleetChange::RuleDel(*id),
            Request::SetShield { shield } => {
                if let Some(problem) = shield.problem() {
                    return Err(Refusal::bad_input(problem));
                }
                FleetChange::Shield(shield.settings())
            }
            _ => return Ok(None),
        }))
    }
}
