//! `run`: the daemon, in the foreground.

use std::path::PathBuf;

use clap::Args;

use spacefilter_common::KERNEL_LOG_TARGET;

use super::Failure;
use crate::{
    config, daemon,
    daemon::AttachMode,
    net::iface::IfaceError,
    server::{self, control::UnknownGroup},
};

#[derive(Args)]
pub(super) struct RunArgs {
    /// Interface to attach to; repeat for several (one program, shared
    /// lists and counters).
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,
    /// auto: native (driver) mode, falling back to skb mode with a warning;
    /// native: driver mode or fail; skb: generic mode.
    #[arg(long, value_enum)]
    mode: Option<AttachMode>,
    /// Where the rules are kept across restarts.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The control socket to create (mode 0660, owned by root).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Give the socket to this group: its members may read (stats, list,
    /// status, top, capture) but not change anything.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// A TOML file with any of: interfaces, mode, state_dir, socket,
    /// socket_group, capacity, max_sources, metrics, sample_every, sample_cap, allow,
    /// block. The command line wins where both speak.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Replace another XDP program found on an interface, and let the
    /// config file's entries past the lockout guard.
    #[arg(long)]
    force: bool,
    /// Entries each list can hold; each costs 8 bytes per CPU for its hit
    /// counter, whether used or not.
    #[arg(long)]
    capacity: Option<u32>,
    /// Sources the rate limiter tracks at once (its LRU map; the least
    /// recently seen are forgotten first), and auto-blocks it can hold.
    #[arg(long)]
    max_sources: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9977). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Let --metrics listen on an address other than loopback.
    #[arg(long)]
    metrics_public: bool,
    /// Sample one dropped frame in N for `spacefilter top` and `capture`
    /// (0: no sampling). `spacefilter sample` changes it at runtime.
    #[arg(long, value_name = "N")]
    sample_every: Option<u32>,
    /// Samples a second at most, host-wide, whatever the flood (each CPU
    /// gets an equal share).
    #[arg(long, value_name = "N")]
    sample_cap: Option<u32>,
}

pub(super) fn run(args: RunArgs) -> Result<(), Failure> {
    // The kernel's debug lines come at debug level, and only while
    // `spacefilter debug on`: let them through whatever RUST_LOG says
    // about the rest (RUST_LOG=spacefilter::kernel=off silences them).
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module(KERNEL_LOG_TARGET, log::LevelFilter::Debug)
        .parse_env(env_logger::Env::default())
        .init();
    let RunArgs {
        ifaces,
        mode,
        state_dir,
        socket,
        socket_group,
        config,
        force,
        capacity,
        max_sources,
        metrics,
        metrics_public,
        sample_every,
        sample_cap,
    } = args;
    let bad = |err: config::ConfigError| Failure::bad_input(err.to_string());
    let file = match &config {
        Some(path) => config::ConfigFile::load(path).map_err(bad)?,
        None => config::ConfigFile::default(),
    };
    let command_line = config::CommandLine {
        ifaces,
        mode,
        state_dir,
        socket,
        socket_group,
        force,
        capacity,
        max_sources,
        metrics,
        metrics_public,
        sample_every,
        sample_cap,
    };
    let config::RunSettings { daemon, server } = config::merge(command_line, file).map_err(bad)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| Failure::runtime(format!("starting the runtime: {err}")))?;
    let refusal = |err: anyhow::Error| {
        // An interface that does not exist, or holds another program
        // without --force, or a socket group that does not exist, is the
        // caller's to fix.
        let refused = matches!(
            err.downcast_ref::<IfaceError>(),
            Some(IfaceError::NoSuchInterface { .. } | IfaceError::Occupied { .. })
        ) || err.downcast_ref::<UnknownGroup>().is_some();
        let message = format!("{err:#}");
        if refused {
            Failure::bad_input(message)
        } else {
            Failure::runtime(message)
        }
    };
    let plan = server::Plan::new(server).map_err(refusal)?;
    runtime
        .block_on(daemon::run(daemon, |handle, stop| plan.start(handle, stop)))
        .map_err(refusal)
}
