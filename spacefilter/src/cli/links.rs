//! `run`'s options for the outside sources of rules it follows.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::Failure;
use crate::{
    daemon::{Handle, Stop, Transports},
    fleet::{Login, crowdsec, etcd, tls::TlsFiles},
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
    /// PEM CA certificates that vouch for an https:// local API (else the
    /// webpki roots).
    #[arg(long, value_name = "FILE", requires = "crowdsec")]
    crowdsec_cacert: Option<PathBuf>,
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
    /// PEM CA certificates that vouch for the https:// members (etcd's
    /// --trusted-ca-file; else the webpki roots).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    etcd_cacert: Option<PathBuf>,
    /// A PEM client certificate for members that ask for one (etcd's
    /// --client-cert-auth).
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The PEM private key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Log in to etcd as this user (when etcd has authentication on).
    #[arg(long, value_name = "NAME", requires_all = ["etcd", "etcd_password_file"])]
    etcd_user: Option<String>,
    /// A file whose first line is the password of --etcd-user.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
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
        let Self {
            crowdsec,
            crowdsec_key_file,
            crowdsec_interval,
            crowdsec_cacert,
            etcd,
            fleet,
            share_auto_blocks,
            etcd_cacert,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
        } = self;
        let crowdsec = match (crowdsec, crowdsec_key_file) {
            (Some(url), Some(key_file)) => {
                let settings = crowdsec::Settings::new(&url, &key_file, crowdsec_interval);
                Some(match &crowdsec_cacert {
                    Some(cacert) => settings.and_then(|s| s.with_cacert(cacert)),
                    None => settings,
                })
            }
            _ => None,
        }
        .transpose()
        .map_err(Failure::bad_input)?;
        let tls = TlsFiles {
            cacert: etcd_cacert,
            cert: etcd_cert,
            key: etcd_key,
        };
        let etcd = etcd
            .map(|endpoints| {
                let settings =
                    etcd::Settings::new(&endpoints, &fleet, state_dir)?.with_tls(&tls)?;
                Ok::<_, String>(match (etcd_user, etcd_password_file) {
                    (Some(user), Some(file)) => settings.with_login(Login::read(&user, &file)?),
                    _ => settings,
                })
            })
            .transpose()
            .map_err(Failure::bad_input)?
            .map(|settings| etcd::Settings {
                share_auto_blocks,
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
