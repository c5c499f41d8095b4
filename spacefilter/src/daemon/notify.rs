//! The service manager's view of the daemon (systemd's `Type=notify`,
//! `sd_notify(3)`): `READY=1` once the program is loaded, the rules from
//! the state directory are in its maps and the transports are serving;
//! `RELOADING=1` and `READY=1` around a SIGHUP; `STOPPING=1` when a stop
//! begins; `WATCHDOG=1` while the daemon can still take its core's lock.
//! Where `NOTIFY_SOCKET` is unset (not started by systemd), every call
//! does nothing.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sd_notify::NotifyState;

use super::{Handle, Stop};
use crate::api::StatusView;

/// Set once a notification could not be sent: the failure is logged once,
/// not at every watchdog tick.
static FAILED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states)
        && !FAILED.swap(true, Ordering::Relaxed)
    {
        log::warn!("telling the service manager ({states:?}): {err}");
    }
}

/// The daemon serves: the program filters with the restored rules and
/// clients can connect.
pub(super) fn ready(status: &StatusView) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(status)),
    ]);
}

/// A SIGHUP is being handled; [`ready`] follows.
pub(super) fn reloading() {
    // systemd (253 and later) wants the clock beside RELOADING=1, to tell
    // this reload from an earlier one; older versions ignore it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The daemon is stopping; the filter stays where its links are pinned.
pub(super) fn stopping(status: &StatusView) {
    let pinned: Vec<&str> = status
        .interfaces
        .iter()
        .filter(|i| i.pinned)
        .map(|i| i.name.as_str())
        .collect();
    let line = if pinned.is_empty() {
        "stopping; the filter comes off with the daemon (no link pinned)".to_owned()
    } else {
        format!(
            "stopping; the filter stays in force on {} (pinned)",
            pinned.join(", ")
        )
    };
    send(&[NotifyState::Stopping, NotifyState::Status(&line)]);
}

/// What `systemctl status` shows beside the unit: where the filter is on
/// and what it holds.
fn status_line(status: &StatusView) -> String {
    let StatusView {
        interfaces,
        allow_entries,
        block_entries,
        state_problem,
        features_off,
        ..
    } = status;
    let on: Vec<String> = interfaces
        .iter()
        .map(|i| {
            let pinned = if i.pinned { ", pinned" } else { "" };
            format!("{} ({}{pinned})", i.name, i.mode)
        })
        .collect();
    let mut line = format!(
        "filtering on {}; {allow_entries} allowed and {block_entries} blocked prefixes",
        on.join(", ")
    );
    if !features_off.is_empty() {
        let names: Vec<&str> = features_off.iter().map(|f| f.feature.as_str()).collect();
        let _ = write!(line, "; running without {}", names.join(", "));
    }
    if let Some(problem) = state_problem {
        let _ = write!(line, "; the state directory takes no changes: {problem}");
    }
    line
}

/// How often to tell the service manager the daemon lives: half its
/// watchdog timeout, as `sd_watchdog_enabled(3)` advises; `None` when the
/// watchdog is off (or meant for another process).
pub(super) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| (timeout / 2).max(Duration::from_millis(1)))
}

/// Sends `WATCHDOG=1` every `every` for as long as the runtime turns and
/// the core's lock can be taken: a daemon stuck under its lock, or whose
/// runtime no longer runs tasks, stops sending, and the service manager
/// kills and restarts it (the pinned filter enforcing throughout).
pub(super) async fn watchdog(handle: Handle, every: Duration, mut stop: Stop) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        // The lock is a plain mutex: wait for it off the runtime's threads.
        let core = handle.clone();
        tokio::select! {
            taken = tokio::task::spawn_blocking(move || drop(core.lock())) => {
                if taken.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
        send(&[NotifyState::Watchdog]);
    }
}
