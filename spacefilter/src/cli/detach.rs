//! `detach`: takes the filter off interfaces where a stopped daemon left
//! it (its XDP links pinned, see [`crate::bpf::pins`]).

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use clap::Args;

use super::Failure;
use crate::{
    config::{ConfigFile, DEFAULT_SOCKET},
    daemon::{DEFAULT_PIN_DIR, PinDir},
};

#[derive(Args)]
pub(super) struct DetachArgs {
    /// The interface to take the filter off (repeatable); all of this
    /// network namespace's when none is given.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,
    /// The directory the daemon pinned its links in (`run --pin-dir`;
    /// default /sys/fs/bpf/spacefilter, or the config file's `pin_dir`).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// The daemon's control socket: a daemon answering there keeps the
    /// program on until it stops (default /run/spacefilter/spacefilter.sock,
    /// or the config file's `socket`).
    #[arg(long, env = "SPACEFILTER_SOCKET")]
    socket: Option<PathBuf>,
    /// The daemon's config file (`run --config`): its `pin_dir` and
    /// `socket`, where the command line does not name them.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(super) fn detach(args: &DetachArgs) -> Result<(), Failure> {
    let DetachArgs {
        ifaces,
        pin_dir,
        socket,
        config,
    } = args;
    let file = match config {
        Some(path) => ConfigFile::load(path)
            .map_err(|why| Failure::bad_input(format!("{why}; nothing was changed")))?,
        None => ConfigFile::default(),
    };
    let pin_dir = pin_dir
        .clone()
        .or(file.pin_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    let socket = socket
        .clone()
        .or(file.socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    if !pin_dir.exists() {
        // Nothing was ever pinned there: nothing to take off, and no folder
        // to create for it.
        if let Some(iface) = ifaces.first() {
            return Err(Failure::bad_input(format!(
                "{iface} has no filter pinned in {}: the folder does not exist; nothing was \
                 changed",
                pin_dir.display()
            )));
        }
        println!("no filter pinned in {}", pin_dir.display());
        return Ok(());
    }
    let pins = PinDir::open(&pin_dir)
        .map_err(|why| Failure::bad_input(format!("no pinned filter to take off: {why}")))?;
    let pinned = pins.pinned();
    let chosen: Vec<&(String, PathBuf)> =
        if ifaces.is_empty() {
            pinned.iter().collect()
        } else {
            let mut chosen = Vec::new();
            for iface in ifaces {
                let found = pinned.iter().find(|(name, _)| name == iface).ok_or_else(|| {
                Failure::bad_input(format!(
                    "{iface} has no filter pinned in {} (pinned here: {}); nothing was changed",
                    pins.dir().display(),
                    names(&pinned)
                ))
            })?;
                chosen.push(found);
            }
            chosen
        };
    let daemon_runs = UnixStream::connect(&socket).is_ok();
    if chosen.is_empty() {
        println!(
            "no filter pinned in {} for this network namespace",
            pins.dir().display()
        );
        if !daemon_runs {
            remove_if_empty(pins.dir());
        }
        return Ok(());
    }
    for (iface, pin) in chosen {
        std::fs::remove_file(pin).map_err(|err| {
            Failure::runtime(format!("{iface}: removing {}: {err}", pin.display()))
        })?;
        let egress = crate::bpf::egress_pin(pin);
        if let Err(err) = std::fs::remove_file(&egress)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Failure::runtime(format!(
                "{iface}: removing {}: {err}",
                egress.display()
            )));
        }
        if daemon_runs {
            println!("{iface}: unpinned; the running daemon keeps the filter on until it stops");
        } else {
            // Without TCX links (before 6.6) the egress program is a
            // clsact filter, left on by the stopped daemon.
            crate::bpf::remove_left_egress(iface)
                .map_err(|why| Failure::runtime(format!("{iface}: {why}")))?;
            println!("detached from {iface}");
        }
    }
    if !daemon_runs {
        remove_if_empty(pins.dir());
    }
    Ok(())
}

/// Removes the pin folder once nothing is pinned in it (no other network
/// namespace's links either), so that removing the package leaves no
/// folder behind wherever `pin_dir` pointed. A daemon that starts later
/// creates it again.
fn remove_if_empty(dir: &Path) {
    let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty && let Err(err) = std::fs::remove_dir(dir) {
        eprintln!("leaving {}: {err}", dir.display());
    }
}

fn names(pinned: &[(String, PathBuf)]) -> String {
    if pinned.is_empty() {
        "none".to_owned()
    } else {
        pinned
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
