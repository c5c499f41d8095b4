//! `run`'s options for the outside sources of rules it follows.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::Failure;
use crate::{
    config::{CrowdsecFile, FleetFile},
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
    /// Between two polls of the decision stream [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, requires = "crowdsec")]
    crowdsec_interval: Option<Duration>,
    /// PEM CA certificates that vouch for an https:// local API (else the
    /// webpki roots).
    #[arg(long, value_name = "FILE", requires = "crowdsec")]
    crowdsec_cacert: Option<PathBuf>,
    /// Join a fleet: follow the rules kept in this etcd cluster (its
    /// members' client URLs, comma-separated) as entries of origin fleet.
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// The fleet's name: its rules are the keys under /spacefilter/NAME/
    /// [default: default].
    #[arg(long, value_name = "NAME", requires = "etcd")]
    fleet: Option<String>,
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
    /// Whether the fleet's options came from the config's `[fleet]` table
    /// (its errors then name the table's keys, not the flags).
    #[arg(skip)]
    fleet_from_file: bool,
    /// Whether CrowdSec's options came from the config's `[crowdsec]` table.
    #[arg(skip)]
    crowdsec_from_file: bool,
}

/// The flags of the fleet's link, longest first, with the `[fleet]` keys
/// that stand for them.
const FLEET_KEYS: &[(&str, &str)] = &[
    ("--etcd-password-file", "password_file"),
    ("--share-auto-blocks", "share_auto_blocks"),
    ("--etcd-cacert", "cacert"),
    ("--etcd-cert", "cert"),
    ("--etcd-key", "key"),
    ("--etcd-user", "user"),
    ("--fleet", "name"),
    ("--etcd", "etcd"),
];

/// The flags of the CrowdSec link, longest first, with their `[crowdsec]`
/// keys.
const CROWDSEC_KEYS: &[(&str, &str)] = &[
    ("--crowdsec-interval", "interval"),
    ("--crowdsec-key-file", "key_file"),
    ("--crowdsec-cacert", "cacert"),
    ("--crowdsec", "url"),
];

/// An error about a link's options, in the words the admin wrote them in:
/// the flags' names, or the config table's keys.
fn in_their_terms(message: String, from_file: bool, table: &str, keys: &[(&str, &str)]) -> String {
    if !from_file {
        return message;
    }
    let message = keys
        .iter()
        .fold(message, |text, (flag, key)| text.replace(flag, key));
    format!("config [{table}]: {message}")
}

/// The links to start beside the transports, checked before the daemon
/// loads anything.
pub(super) struct Links {
    crowdsec: Option<crowdsec::Settings>,
    etcd: Option<etcd::Settings>,
}

/// Between two polls of CrowdSec's decision stream, unless told.
const CROWDSEC_INTERVAL: Duration = Duration::from_secs(10);

impl LinkArgs {
    /// Takes the config file's `[fleet]` and `[crowdsec]` tables for the
    /// links the command line does not name. A link named on the command
    /// line takes all its options from there: the file's table for it is
    /// not read (and a line in the log says so).
    pub(super) fn with_file(
        mut self,
        fleet_file: Option<FleetFile>,
        crowdsec_file: Option<CrowdsecFile>,
    ) -> Result<Self, Failure> {
        if let Some(file) = fleet_file {
            if self.etcd.is_some() {
                log::info!("--etcd is given: the config's [fleet] table is not read");
            } else {
                file.check()
                    .map_err(|err| Failure::bad_input(err.to_string()))?;
                self.etcd = Some(file.etcd);
                self.fleet = file.name;
                self.share_auto_blocks = file.share_auto_blocks;
                self.etcd_cacert = file.cacert;
                self.etcd_cert = file.cert;
                self.etcd_key = file.key;
                self.etcd_user = file.user;
                self.etcd_password_file = file.password_file;
                self.fleet_from_file = true;
            }
        }
        if let Some(file) = crowdsec_file {
            if self.crowdsec.is_some() {
                log::info!("--crowdsec is given: the config's [crowdsec] table is not read");
            } else {
                self.crowdsec_interval = file
                    .interval
                    .map(|text| {
                        humantime::parse_duration(&text).map_err(|err| {
                            Failure::bad_input(format!(
                                "config [crowdsec]: interval {text:?}: {err} (e.g. \"10s\")"
                            ))
                        })
                    })
                    .transpose()?;
                self.crowdsec = Some(file.url);
                self.crowdsec_key_file = Some(file.key_file);
                self.crowdsec_cacert = file.cacert;
                self.crowdsec_from_file = true;
            }
        }
        Ok(self)
    }

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
            fleet_from_file,
            crowdsec_from_file,
        } = self;
        let crowdsec = match (crowdsec, crowdsec_key_file) {
            (Some(url), Some(key_file)) => {
                let settings = crowdsec::Settings::new(
                    &url,
                    &key_file,
                    crowdsec_interval.unwrap_or(CROWDSEC_INTERVAL),
                );
                Some(match &crowdsec_cacert {
                    Some(cacert) => settings.and_then(|s| s.with_cacert(cacert)),
                    None => settings,
                })
            }
            _ => None,
        }
        .transpose()
        .map_err(|err| {
            Failure::bad_input(in_their_terms(
                err,
                crowdsec_from_file,
                "crowdsec",
                CROWDSEC_KEYS,
            ))
        })?;
        let tls = TlsFiles {
            cacert: etcd_cacert,
            cert: etcd_cert,
            key: etcd_key,
        };
        let etcd = etcd
            .map(|endpoints| {
                let fleet = fleet.as_deref().unwrap_or("default");
                let settings = etcd::Settings::new(&endpoints, fleet, state_dir)?.with_tls(&tls)?;
                Ok::<_, String>(match (etcd_user, etcd_password_file) {
                    (Some(user), Some(file)) => settings.with_login(Login::read(&user, &file)?),
                    _ => settings,
                })
            })
            .transpose()
            .map_err(|err| {
                Failure::bad_input(in_their_terms(err, fleet_from_file, "fleet", FLEET_KEYS))
            })?
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
