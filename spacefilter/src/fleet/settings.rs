//! The fleet's settings: its limits, its rules on headers and its shield,
//! each one JSON value under `<prefix>settings/`, put in force on every
//! member as they change. A setting a member already holds is left alone
//! (the rules keep their budgets); one deleted from the fleet stays as it
//! is on each member.

use serde_json::Value;

use super::{etcd::peer, gateway::b64_decode, keys::Kv, publish::SETTINGS};
use crate::{
    api::{HeaderRuleView, LimitsView, ShieldView},
    daemon::Handle,
};

/// Reads one of the fleet's settings: its name, and its value (`None`
/// when it is unreadable, which is logged).
pub(super) fn read(kv: &Kv, prefix: &str) -> Option<(String, Option<Value>)> {
    let key = String::from_utf8(b64_decode(&kv.key)?).ok()?;
    let name = key
        .strip_prefix(prefix)?
        .strip_prefix(SETTINGS)?
        .strip_prefix('/')?;
    let value = b64_decode(&kv.value).and_then(|v| serde_json::from_slice(&v).ok());
    if value.is_none() && !kv.value.is_empty() {
        log::warn!("fleet: the fleet's {name} at {key:?} are not JSON; left as they are");
    }
    Some((name.to_owned(), value))
}

/// Puts one of the fleet's settings in force here, if it differs from
/// what this host holds.
pub(super) fn apply(handle: &Handle, fleet: &str, name: &str, value: Option<Value>) {
    let Some(value) = value else {
        return;
    };
    let result = match name {
        "limits" => serde_json::from_value::<LimitsView>(value)
            .map_err(|err| err.to_string())
            .and_then(|limits| {
                let held = LimitsView {
                    reflect_profile: None,
                    ..handle.limits()
                };
                if held == limits {
                    return Ok(false);
                }
                handle
                    .set_limits(limits, peer())
                    .map(|_| true)
                    .map_err(|r| r.message)
            }),
        "shield" => serde_json::from_value::<ShieldView>(value)
            .map_err(|err| err.to_string())
            .and_then(|shield| {
                let shield = shield.settings();
                let held = handle.shield().settings();
                // Off is off, whatever ports it kept.
                if held == shield || !(held.enabled || shield.enabled) {
                    return Ok(false);
                }
                handle
                    .set_shield(shield, peer())
                    .map(|_| true)
                    .map_err(|r| r.message)
            }),
        "rules" => serde_json::from_value::<Vec<HeaderRuleView>>(value)
            .map_err(|err| err.to_string())
            .and_then(|rules| handle.replace_rules(rules, peer()).map_err(|r| r.message)),
        other => {
            log::warn!("fleet: unknown setting {other:?}; ignored");
            return;
        }
    };
    match result {
        Ok(true) => log::info!("fleet {fleet}: the fleet's {name} put in force here"),
        Ok(false) => {}
        Err(why) => log::warn!("fleet: the fleet's {name}: {why}; this host keeps its own"),
    }
}
