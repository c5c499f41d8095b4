//! `detach`: takes the filter off interfaces where a stopped daemon left
//! it (its XDP links pinned, see [`crate::bpf::pins`]).

use std::{os::unix::net::UnixStream, path::PathBuf};

use clap::Args;

use super::Failure;
use crate::{
    config::DEFAULT_SOCKET,
    daemon::{DEFAULT_PIN_DIR, PinDir},
};

#[derive(Args)]
pub(super) struct DetachArgs {
    /// The interface to take the filter off (repeatable); all of this
    /// network namespace's when none is given.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,
    /// The directory the daemon pinned its links in (`run --pin-dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The daemon's control socket: a daemon answering there keeps the
    /// program on until it stops.
    #[arg(long, env = "SPACEFILTER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub(super) fn detach(args: &DetachArgs) -> Result<(), Failure> {
    let DetachArgs {
        ifaces,
        pin_dir,
        socket,
    } = args;
    let pins = PinDir::open(pin_dir)
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
    if chosen.is_empty() {
        println!(
            "no filter pinned in {} for this network namespace",
            pins.dir().display()
        );
        return Ok(());
    }
    let daemon_runs = UnixStream::connect(socket).is_ok();
    for (iface, pin) in chosen {
        std::fs::remove_file(pin).map_err(|err| {
            Failure::runtime(format!("{iface}: removing {}: {err}", pin.display()))
        })?;
        if daemon_runs {
            println!("{iface}: unpinned; the running daemon keeps the filter on until it stops");
        } else {
            println!("detached from {iface}");
        }
    }
    Ok(())
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
