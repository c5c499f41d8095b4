//! `block`, `allow` and their removals on a member of a fleet: the change
//! goes to the fleet's etcd cluster, and the verb returns once this host's
//! daemon has applied it from its watch (every member applies it the same
//! way). `--local` keeps a change on this host only.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::{Failure, print_json, reply_failure, unexpected};
use crate::{
    api::{EntryView, Origin, Request, Response, client::Client},
    fleet::publish::Publisher,
    net::{List, Prefix},
};

/// How long this host may take to apply what was written to the fleet.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet the daemon belongs to, as its `status` shows the link.
pub(super) fn fleet_of(client: &mut Client) -> Result<Option<Publisher>, Failure> {
    let status = match client.call(Request::Status, &mut |_, _| {})? {
        Response::Status(view) => *view,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    status
        .links
        .iter()
        .find(|l| l.kind == "fleet")
        .map(|l| Publisher::new(&l.url, &l.name).map_err(Failure::runtime))
        .transpose()
}

fn entries(client: &mut Client, list: List) -> Result<Vec<EntryView>, Failure> {
    match client.call(Request::List { list: Some(list) }, &mut |_, _| {})? {
        Response::Entries { entries } => Ok(entries),
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// Waits until `done` holds of this host's entries of `list`.
fn wait_applied(
    client: &mut Client,
    list: List,
    mut done: impl FnMut(&[EntryView]) -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        if done(&entries(client, list)?) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "written to the fleet, but this host has not applied it within {APPLY_TIMEOUT:?}: \
                 see the fleet link in `spacefilter status` and the daemon's log (the lockout \
                 guard may have refused it here)"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn parse(prefixes: &[String]) -> Result<Vec<Prefix>, Failure> {
    prefixes
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|err| Failure::bad_input(format!("{err}")))
        })
        .collect()
}

fn report(verb: &str, count: usize, revision: i64, json: bool) {
    if json {
        print_json(&serde_json::json!({"fleet": count, "revision": revision}));
    } else {
        println!(
            "{verb}: {count} written to the fleet (etcd revision {revision}) and in force here"
        );
    }
}

/// Adds to the fleet.
pub(super) fn add(
    client: &mut Client,
    fleet: &Publisher,
    list: List,
    prefixes: &[String],
    ttl: Option<Duration>,
    comment: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let prefixes = parse(prefixes)?;
    let revision = fleet.put(list, &prefixes, ttl, comment).map_err(|why| {
        Failure::runtime(format!("writing to the fleet: {why}; nothing was changed"))
    })?;
    let wanted: BTreeSet<String> = prefixes.iter().map(ToString::to_string).collect();
    wait_applied(client, list, |held| {
        let there: BTreeSet<&str> = held.iter().map(|e| e.prefix.as_str()).collect();
        wanted.iter().all(|p| there.contains(p.as_str()))
    })?;
    report(list.name(), prefixes.len(), revision, json);
    Ok(())
}

/// Removes from the fleet.
pub(super) fn remove(
    client: &mut Client,
    fleet: &Publisher,
    list: List,
    prefixes: &[String],
    json: bool,
) -> Result<(), Failure> {
    let prefixes = parse(prefixes)?;
    let revision = fleet
        .delete(list, &prefixes)
        .map_err(|why| Failure::runtime(format!("deleting from the fleet: {why}")))?;
    let gone: BTreeSet<String> = prefixes.iter().map(ToString::to_string).collect();
    wait_applied(client, list, |held| {
        !held
            .iter()
            .any(|e| e.origin == Origin::Fleet && gone.contains(&e.prefix))
    })?;
    report(
        &format!("un{}", list.name()),
        prefixes.len(),
        revision,
        json,
    );
    Ok(())
}
