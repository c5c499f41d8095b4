//! The daemon: owns the program, the maps and the state directory, and
//! carries out what clients ask. Every accepted change is journaled before
//! the client hears back.
//!
//! [`run`] is the composition root: it starts the core ([`start`]), hands
//! a [`Handle`] to the transports it is given (the control socket and the
//! metrics endpoint live in [`crate::server`], which this module does not
//! know), spawns the background [`tasks`], tells a service manager it is
//! ready ([`notify`]), waits for a signal and shuts everything down in
//! order. The core's state is split by concern: [`lists`] and
//! [`listing`], [`guards`], [`header_rules`], [`shield`], [`observability`].

mod core;
mod exempt;
mod expiry;
mod fleet;
mod guards;
mod handle;
mod header_rules;
mod listing;
mod lists;
mod memory;
mod notify;
mod observability;
mod shield;
mod shield_auto;
mod start;
mod tasks;

use std::{path::PathBuf, sync::Arc};

use tokio::{signal::unix::SignalKind, sync::watch, task::JoinHandle};

pub use self::{
    core::{AddRequest, Peer, Refusal},
    fleet::{FleetChange, FleetPort, PublishError},
    handle::Handle,
    listing::Listing,
    observability::{MetricsSnapshot, stats_view},
};
pub use crate::bpf::{
    AttachMode, Counters, DEFAULT_PIN_DIR, Feature, PinDir, Sampling,
    sampler::{DEFAULT_SAMPLE_CAP, DEFAULT_SAMPLE_EVERY},
};
use crate::net::Prefix;

/// The highest sample cap accepted: far beyond what a terminal or a pcap
/// wants, well below what would load the daemon.
pub const MAX_SAMPLE_CAP: u32 = 100_000;

/// What the core needs to start, after merging the config file and the
/// command line (the transports have settings of their own).
#[derive(Clone, Debug)]
pub struct Settings {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub state_dir: PathBuf,
    pub force: bool,
    pub capacity: u32,
    /// Sources the rate limiter tracks at once.
    pub max_sources: u32,
    /// Drop sampling at start (`spacefilter sample` changes it at runtime).
    pub sampling: Sampling,
    /// Kernel features to run without although the kernel has them.
    pub without: Vec<Feature>,
    /// Where the XDP links are pinned, so that the filter outlives the
    /// daemon.
    pub pin_dir: PathBuf,
    /// Entries from the config file, added on start if absent.
    pub allow: Vec<Prefix>,
    pub block: Vec<Prefix>,
    /// Reads the config file's `allow` and `block` entries again, on
    /// SIGHUP (`None`: there is no config file).
    pub reload: Option<Reload>,
}

/// Reads the config file's `allow` and `block` entries again.
#[derive(Clone)]
pub struct Reload(pub Arc<ReadEntries>);

/// What a [`Reload`] calls.
pub type ReadEntries = dyn Fn() -> anyhow::Result<(Vec<Prefix>, Vec<Prefix>)> + Send + Sync;

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reload(the config file)")
    }
}

/// Turns true when the daemon stops; every task watches it.
pub type Stop = watch::Receiver<bool>;

/// The transports serving a running daemon.
pub struct Transports {
    /// Their tasks, which end once [`Stop`] turns true.
    pub tasks: Vec<JoinHandle<()>>,
    /// Runs last, after the program is detached (the control socket's
    /// file goes then, so that whoever waits for it to go finds the
    /// interfaces free).
    pub cleanup: Box<dyn FnOnce() + Send>,
}

/// SIGHUP: reads the config file again and makes its `allow` and `block`
/// entries the entries of origin `config`. Everything else in it (the
/// interfaces, the socket, the sizes) takes a restart.
fn reload_config(reload: Option<&Reload>, handle: &Handle, force: bool) {
    let Some(reload) = reload else {
        log::info!("SIGHUP: no config file to read again (run --config FILE)");
        return;
    };
    match (reload.0)() {
        Ok(entries) => match handle.changing(|core| {
            start::apply_config_entries(core, entries, force)
                .map_err(|err| Refusal::failed(format!("{err:#}")))
        }) {
            Ok(()) => log::info!(
                "SIGHUP: the config file's allow and block entries are in force (its other settings take a restart)"
            ),
            Err(err) => log::error!("SIGHUP: {}; the entries stay as they were", err.message),
        },
        Err(err) => log::error!("SIGHUP: reading the config file: {err:#}; nothing changed"),
    }
}

/// Runs the daemon until SIGINT or SIGTERM (SIGHUP reads the config file
/// again): starts the core, starts the transports that `serve` makes from
/// a handle on it, and on a signal stops them and the background tasks,
/// then detaches.
pub async fn run(
    mut settings: Settings,
    serve: impl FnOnce(Handle, Stop) -> anyhow::Result<Transports>,
) -> anyhow::Result<()> {
    let force = settings.force;
    let reload = settings.reload.take();
    memory::tune();
    let mut core = start::start(settings)?;
    // The restore's buffers are gone: their pages go back.
    memory::release();
    let events = core.filter.take_events();
    let samples = core.filter.take_samples();
    let kernel_log = core.filter.take_kernel_log();
    // What the start journaled (the config file's entries) is on disk
    // before anyone is told the daemon is up.
    let (durable, seq) = (core.store.durable(), core.store.last_written());
    let handle = Handle::new(core);
    if let Ok(Err(why)) = tokio::task::spawn_blocking(move || durable.wait(seq)).await {
        log::error!("the start's changes could not be made durable: {why}");
    }
    let (stop_tx, stop) = watch::channel(false);
    let transports = match serve(handle.clone(), stop.clone()) {
        Ok(transports) => transports,
        Err(err) => {
            handle.shut_down();
            return Err(err);
        }
    };
    let mut background = vec![tokio::spawn(tasks::expire_loop(
        handle.clone(),
        stop.clone(),
    ))];
    if let Some(ring) = events {
        background.push(tokio::spawn(tasks::auto_block_events(
            ring,
            handle.clone(),
            stop.clone(),
        )));
    }
    if let Some(ring) = samples {
        background.push(tokio::spawn(tasks::read_samples(
            ring,
            handle.clone(),
            stop.clone(),
        )));
    }
    if let Some(reader) = kernel_log {
        background.push(tokio::spawn(tasks::drain_kernel_log(reader, stop.clone())));
    }

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    // The program filters with the restored rules and the transports
    // accept clients: only now may a service manager call the start done
    // (and watch over the daemon from then on).
    notify::ready(&tokio::task::block_in_place(|| handle.status()));
    if let Some(every) = notify::watchdog_interval() {
        background.push(tokio::spawn(notify::watchdog(
            handle.clone(),
            every,
            stop.clone(),
        )));
    }
    loop {
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: shutting down");
                break;
            }
            _ = int.recv() => {
                log::info!("SIGINT: shutting down");
                break;
            }
            _ = hup.recv() => {
                notify::reloading();
                let (reload, for_reload) = (reload.clone(), handle.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    reload_config(reload.as_ref(), &for_reload, force);
                })
                .await;
                let for_status = handle.clone();
                if let Ok(status) = tokio::task::spawn_blocking(move || for_status.status()).await {
                    notify::ready(&status);
                }
            }
        }
    }
    notify::stopping(&tokio::task::block_in_place(|| handle.status()));
    let _ = stop_tx.send(true);
    let Transports { tasks, cleanup } = transports;
    for task in tasks.into_iter().chain(background) {
        let _ = task.await;
    }
    handle.shut_down();
    cleanup();
    Ok(())
}
