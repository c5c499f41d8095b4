//! `run`'s options for the outside sources of rules it follows.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::Failure;
use crate::{
    daemon::{Handle, Stop, Transports},
    fleet::{crowdsec, etcd},
};

#[derive(Args)]
pub(super) struct LinkArgs {
    /// Run as a CrowdSec bouncer: block what the local API at this URL bans
    /// (IPs and ranges, for the decision's duration, origin crowdsec).
    #[arg(long, value_name = "URL", requires = "crowdsec_key_file")]
    crowdsec: Option<String>,
    /// A file holding the bouncer's key (`cscli bouncers add NAME`).
    #[arg(long, value_name = "PATH", requires = "crowdsec")]
    crowdsec_key_file: Option<PathBuf>,
    /// Between two polls of the decision stream.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    crowdsec_interval: Duration,
    /// Join a fleet: follow the rules kept in this etcd cluster (its
    /// members' client URLs, comma-separated) as entries of origin fleet.
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// The fleet's name: its rules are the keys under /spacefilter/NAME/.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
        requires = "etcd"
    )]
    fleet: String,
    /// Write this host's auto-blocks to the fleet, as timed blocks every
    /// member applies (without it, they stay on this host).
    #[arg(long, requires = "etcd")]
    share_auto_blocks: bool,
}

/// The links to start beside the transports, checked before the daemon
/// loads anything.
pub(super) struct Links {
    crowdsec: Option<crowdsec::Settings>,
    etcd: Option<etcd::Settings>,
}

impl LinkArgs {
    /// Checks the options; `state_dir` keeps the fleet's last revision.
    pub(super) fn check(self, state_dir: &Path) -> Result<Links, Failure> {
        let crowdsec = match (self.crowdsec, self.crowdsec_key_file) {
            (Some(url), Some(key_file)) => Some(
                crowdsec::Settings::new(&url, &key_file, self.crowdsec_interval)
                    .map_err(Failure::bad_input)?,
            ),
            _ => None,
        };
        let etcd = self
            .etcd
            .map(|endpoints| etcd::Settings::new(&endpoints, &self.fleet, state_dir))
            .transpose()
            .map_err(Failure::bad_input)?
            .map(|settings| etcd::Settings {
                share_auto_blocks: self.share_auto_blocks,
                ..settings
            });
        Ok(Links { crowdsec, etcd })
    }
}

impl Links {
    /// Starts the links' tasks among the transports'.
    pub(super) fn start(self, handle: &Handle, stop: &Stop, transports: &mut Transports) {
        if let Some(settings) = self.crowdsec {
            transports.tasks.push(tokio::spawn(crowdsec::follow(
                settings,
                handle.clone(),
                stop.clone(),
            )));
        }
        if let Some(settings) = self.etcd {
            transports.tasks.push(tokio::spawn(etcd::follow(
                settings,
                handle.clone(),
                stop.clone(),
            )));
        }
    }
}
