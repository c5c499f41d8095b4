//! This host as a member of its fleet: what the daemon writes fleet-wide
//! goes to etcd through [`Member`], which then waits for the watch to bring
//! it back; and, with `run --share-auto-blocks`, this host's auto-blocks go
//! to the fleet as timed blocks.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    sync::{Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{etcd::Settings, publish::Publisher};
use crate::{
    api::HeaderRuleView,
    daemon::{FleetChange, FleetPort, Handle, PublishError},
    net::{List, Prefix},
};

/// Tries of a read-modify-write of the fleet's rules that others keep
/// changing meanwhile.
const SWAP_TRIES: usize = 8;
/// How long auto-blocks are gathered before they are written together.
const AUTO_GATHER: Duration = Duration::from_millis(200);

/// This host in its fleet.
pub(super) struct Member {
    publisher: Publisher,
    handle: Handle,
    /// The fleet's revision this host has applied.
    applied: Mutex<i64>,
    progress: Condvar,
    /// Names this host in what it writes for itself (its shared
    /// auto-blocks), so that its own watch leaves them to it.
    pub(super) id: String,
}

impl Member {
    pub(super) fn new(publisher: Publisher, handle: Handle, id: String) -> Self {
        Self {
            publisher,
            handle,
            applied: Mutex::new(0),
            progress: Condvar::new(),
            id,
        }
    }

    /// Records that this host has applied the fleet up to `revision`.
    pub(super) fn progressed(&self, revision: i64) {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *applied = (*applied).max(revision);
        self.progress.notify_all();
    }

    /// Appends `rule` to the fleet's rules, or deletes the rule `id`, as a
    /// swap that starts over if another member changed them meanwhile.
    /// The first rule a fleet gets joins this host's rules.
    fn edit_rules(
        &self,
        add: Option<&HeaderRuleView>,
        del: Option<u32>,
    ) -> Result<i64, PublishError> {
        let failed = PublishError::Failed;
        for _ in 0..SWAP_TRIES {
            let (seen, value) = self.publisher.setting("rules").map_err(failed)?;
            let mut rules: Vec<HeaderRuleView> = match value {
                Some(value) => serde_json::from_value(value)
                    .map_err(|err| failed(format!("the fleet's rules: {err}")))?,
                None => self.handle.header_rules().map_err(|r| failed(r.message))?,
            };
            for rule in &mut rules {
                rule.hits = 0;
            }
            if let Some(rule) = add {
                if rules.len() >= spacefilter_common::MAX_HEADER_RULES as usize {
                    return Err(PublishError::BadInput(format!(
                        "the fleet has {} rules already, the most the program holds; delete one first",
                        rules.len()
                    )));
                }
                let id = rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
                rules.push(HeaderRuleView { id, ..rule.clone() });
            }
            if let Some(id) = del {
                let before = rules.len();
                rules.retain(|r| r.id != id);
                if rules.len() == before {
                    return Err(PublishError::BadInput(format!(
                        "the fleet has no rule {id}; `spacefilter rule list` shows them"
                    )));
                }
            }
            let value = serde_json::to_value(&rules).map_err(|err| failed(err.to_string()))?;
            if let Some(revision) = self
                .publisher
                .swap_setting("rules", seen, &value)
                .map_err(failed)?
            {
                return Ok(revision);
            }
        }
        Err(failed(
            "the fleet's rules kept changing under this change; try again".to_owned(),
        ))
    }

    /// Writes this host's auto-blocks to the fleet as they come, until the
    /// daemon goes.
    pub(super) fn share_auto_blocks(&self, blocks: &mpsc::Receiver<Vec<(Prefix, Duration)>>) {
        while let Ok(first) = blocks.recv() {
            let deadline = Instant::now() + AUTO_GATHER;
            let mut gathered = first;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match blocks.recv_timeout(left) {
                    Ok(more) => gathered.extend(more),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            // One lease for the blocks of each length, in whole seconds.
            let mut by_ttl: BTreeMap<u64, Vec<Prefix>> = BTreeMap::new();
            for (prefix, left) in gathered {
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                if secs > 0 {
                    by_ttl.entry(secs).or_default().push(prefix);
                }
            }
            let value = json!({
                "comment": format!("auto-blocked on {}: over its rate limit", self.id),
                "auto": true,
                "member": self.id,
            });
            for (secs, prefixes) in by_ttl {
                match self.publisher.put_valued(
                    List::Block,
                    &prefixes,
                    Some(Duration::from_secs(secs)),
                    &value,
                ) {
                    Ok(_) => {
                        log::info!("fleet: {} auto-blocks shared for {secs} s", prefixes.len());
                    }
                    Err(why) => log::warn!(
                        "fleet: sharing {} auto-blocks: {why}; they hold on this host",
                        prefixes.len()
                    ),
                }
            }
        }
    }
}

impl FleetPort for Member {
    fn publish(&self, change: &FleetChange) -> Result<i64, PublishError> {
        let failed = PublishError::Failed;
        let setting = |name: &str, value: Result<Value, serde_json::Error>| {
            let value = value.map_err(|err| failed(err.to_string()))?;
            self.publisher.put_setting(name, &value).map_err(failed)
        };
        match change {
            FleetChange::Add {
                list,
                prefixes,
                ttl,
                comment,
            } => self
                .publisher
                .put(*list, prefixes, *ttl, comment.as_deref())
                .map_err(failed),
            FleetChange::Remove { list, prefixes } => {
                self.publisher.delete(*list, prefixes).map_err(failed)
            }
            FleetChange::Limits(limits) => setting("limits", serde_json::to_value(limits)),
            FleetChange::Shield(shield) => setting("shield", serde_json::to_value(shield)),
            FleetChange::RuleAdd(rule) => self.edit_rules(Some(rule), None),
            FleetChange::RuleDel(id) => self.edit_rules(None, Some(*id)),
        }
    }

    fn wait_applied(&self, revision: i64, timeout: Duration) -> bool {
        let applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (applied, _) = self
            .progress
            .wait_timeout_while(applied, timeout, |applied| *applied < revision)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *applied >= revision
    }
}

/// The name this host goes by in its fleet: its hostname and a random
/// tag, kept in the state directory (hosts of a lab share a hostname).
pub(super) fn member_id(settings: &Settings) -> String {
    let path = settings.revision_file.with_file_name("fleet-member");
    if let Ok(id) = fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return id.trim().to_owned();
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut tag = [0u8; 4];
    if let Err(err) = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut tag)) {
        log::warn!("fleet: reading /dev/urandom: {err}");
    }
    let id = format!("{host}-{}", u32::from_le_bytes(tag));
    if let Err(err) = fs::write(&path, format!("{id}\n")) {
        log::warn!(
            "fleet: keeping this member's name in {}: {err}",
            path.display()
        );
    }
    id
}
