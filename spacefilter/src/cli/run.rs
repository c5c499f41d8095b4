//! `run`: the daemon, in the foreground.

use std::{io::Write as _, os::fd::AsFd as _, path::PathBuf};

use clap::Args;

use spacefilter_common::KERNEL_LOG_TARGET;

use super::Failure;
use crate::{
    config, daemon,
    net::iface::IfaceError,
    server::{self, control::UnknownGroup},
};

/// The daemon's settings on the command line, and its config file.
#[derive(Args)]
pub(super) struct RunArgs {
    /// A TOML file with any of: interfaces, mode, state_dir, socket,
    /// socket_group, capacity, max_sources, metrics, sample_every, sample_cap, without,
    /// pin_dir, allow, block; and the tables [fleet] (etcd, name,
    /// share_auto_blocks, cacert, cert, key, user, password_file) and
    /// [crowdsec] (url, key_file, interval, cacert). The command line wins
    /// where both speak; a link it names (--etcd, --crowdsec) takes none of
    /// its options from the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: config::CommandLine,
    #[command(flatten)]
    links: Box<super::links::LinkArgs>,
}

pub(super) fn run(args: RunArgs) -> Result<(), Failure> {
    init_logger();
    let RunArgs {
        config,
        settings,
        links,
    } = args;
    let bad = |err: config::ConfigError| Failure::bad_input(err.to_string());
    let mut file = match &config {
        Some(path) => config::ConfigFile::load(path).map_err(bad)?,
        None => config::ConfigFile::default(),
    };
    let links = (*links).with_file(file.fleet.take(), file.crowdsec.take())?;
    let config::RunSettings { mut daemon, server } = config::merge(settings, file).map_err(bad)?;
    let links = links.check(&daemon.state_dir)?;
    if let Some(path) = config.clone() {
        daemon.reload = Some(daemon::Reload(std::sync::Arc::new(move || {
            let file = config::ConfigFile::load(&path)?;
            Ok((file.allow, file.block))
        })));
    }
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
        .block_on(daemon::run(daemon, |handle, stop| {
            let mut transports = plan.start(handle.clone(), stop.clone())?;
            links.start(&handle, &stop, &mut transports);
            Ok(transports)
        }))
        .map_err(refusal)
}

fn init_logger() {
    let mut builder = env_logger::Builder::new();
    // The kernel's debug lines come at debug level, and only while
    // `spacefilter debug on`: let them through whatever RUST_LOG says
    // about the rest (RUST_LOG=spacefilter::kernel=off silences them).
    builder
        .filter_level(log::LevelFilter::Info)
        .filter_module(KERNEL_LOG_TARGET, log::LevelFilter::Debug)
        .parse_env(env_logger::Env::default());
    if stderr_is_journal() {
        // Each line opens with its syslog priority, which journald takes
        // off and files the line under (`journalctl -p warning` finds the
        // warnings); journald stamps the time itself.
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            let text = record.args().to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            writeln!(
                buf,
                "<{priority}>[{:<5} {}] {first}",
                record.level(),
                record.target()
            )?;
            // journald makes an entry of each line: each gets the priority.
            for line in lines {
                writeln!(buf, "<{priority}>{line}")?;
            }
            Ok(())
        });
    }
    builder.init();
}

/// Whether standard error is the stream systemd connected to journald:
/// `JOURNAL_STREAM` names its device and inode (`DEV:INODE`), which stay
/// in the environment of children whose standard error went elsewhere, so
/// they are compared with standard error's own.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr().as_fd())
        .is_ok_and(|stat| stat.st_dev == dev && stat.st_ino == ino)
}
