//! The settings of `spacefilter run`: its TOML file (`--config`), merged
//! with the command line, which wins where both speak, and checked before
//! anything is loaded.
#![expect(
    clippy::doc_markdown,
    reason = "doc comments on the command line are clap's help text, read in a terminal"
)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use spacefilter_common::{DEFAULT_BUCKETS, DEFAULT_CAPACITY, lookup::MAX_CAPACITY};

use crate::{
    daemon::{
        self, AttachMode, DEFAULT_PIN_DIR, DEFAULT_SAMPLE_CAP, DEFAULT_SAMPLE_EVERY, Feature,
        MAX_SAMPLE_CAP, Sampling,
    },
    net::Prefix,
    server::{self, metrics::is_private},
};

/// Where the daemon keeps its rules unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/spacefilter";
/// Where the daemon's control socket is unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/spacefilter/spacefilter.sock";

/// Settings that cannot work, naming what to change: the caller's to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// The config file of `spacefilter run --config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub mode: Option<AttachMode>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub capacity: Option<u32>,
    pub max_sources: Option<u32>,
    pub metrics: Option<SocketAddr>,
    pub sample_every: Option<u32>,
    pub sample_cap: Option<u32>,
    /// Kernel features to run without, as `run --without` says.
    #[serde(default)]
    pub without: Vec<Feature>,
    pub pin_dir: Option<PathBuf>,
    #[serde(default)]
    pub allow: Vec<Prefix>,
    #[serde(default)]
    pub block: Vec<Prefix>,
    /// The fleet to join (`run --etcd` and the options after it).
    pub fleet: Option<FleetFile>,
    /// The CrowdSec local API to follow (`run --crowdsec` and its options).
    pub crowdsec: Option<CrowdsecFile>,
}

/// The `[fleet]` table: `run --etcd`'s options, named without the
/// `etcd-` in front.
#[derive(Clone, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The etcd members' client URLs, comma-separated (`--etcd`).
    pub etcd: String,
    /// The fleet's name (`--fleet`, default `default`).
    pub name: Option<String>,
    #[serde(default)]
    pub share_auto_blocks: bool,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The `[crowdsec]` table: `run --crowdsec`'s options.
#[derive(Clone, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecFile {
    /// The local API's URL (`--crowdsec`).
    pub url: String,
    /// The bouncer's key file (`--crowdsec-key-file`).
    pub key_file: PathBuf,
    /// Between two polls, as `--crowdsec-interval` takes it ("10s").
    pub interval: Option<String>,
    pub cacert: Option<PathBuf>,
}

impl FleetFile {
    /// Refuses a table whose options need one another, as the command
    /// line's do.
    pub fn check(&self) -> Result<(), ConfigError> {
        let needs = [
            (self.cert.is_some(), self.key.is_none(), "cert needs key"),
            (self.key.is_some(), self.cert.is_none(), "key needs cert"),
            (
                self.user.is_some(),
                self.password_file.is_none(),
                "user needs password_file",
            ),
            (
                self.password_file.is_some(),
                self.user.is_none(),
                "password_file needs user",
            ),
        ];
        match needs.iter().find(|(given, missing, _)| *given && *missing) {
            Some((_, _, what)) => Err(bad(format!("config [fleet]: {what}"))),
            None => Ok(()),
        }
    }
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| bad(format!("cannot read config {}: {err}", path.display())))?;
        toml::from_str(&text).map_err(|err| bad(format!("config {}: {err}", path.display())))
    }
}

/// What the command line says (`None`, or empty: not given).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CommandLine {
    /// Interface to attach to; repeat for several (one program, shared
    /// lists and counters).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// auto: native (driver) mode, falling back to skb mode with a warning;
    /// native: driver mode or fail; skb: generic mode.
    #[arg(long, value_enum)]
    pub mode: Option<AttachMode>,
    /// Where the rules are kept across restarts.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The control socket to create (mode 0660, owned by root).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Give the socket to this group: its members may read (stats, list,
    /// status, top, capture) but not change anything.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Replace another XDP program found on an interface, and let the
    /// config file's entries past the lockout guard.
    #[arg(long)]
    pub force: bool,
    /// Entries each list can hold; each costs 8 bytes per CPU for its hit
    /// counter, whether used or not.
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Sources the rate limiter tracks at once (its LRU map; the least
    /// recently seen are forgotten first), and auto-blocks it can hold.
    #[arg(long)]
    pub max_sources: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9977). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Let --metrics listen on an address other than loopback.
    #[arg(long)]
    pub metrics_public: bool,
    /// Sample one dropped frame in N for `spacefilter top` and `capture`
    /// (0: no sampling). `spacefilter sample` changes it at runtime.
    #[arg(long, value_name = "N")]
    pub sample_every: Option<u32>,
    /// Samples a second at most, host-wide, whatever the flood (each CPU
    /// gets an equal share).
    #[arg(long, value_name = "N")]
    pub sample_cap: Option<u32>,
    /// Run without a kernel feature although the kernel has it (repeat
    /// for several); one the kernel lacks is off anyway. `status` lists
    /// what is off and why.
    #[arg(long, value_enum, value_name = "FEATURE")]
    pub without: Vec<Feature>,
    /// Pin each interface's XDP link in this directory on a BPF filesystem
    /// (default /sys/fs/bpf/spacefilter): the filter stays on through a
    /// crash, a stop or an upgrade, and the next daemon takes it over with
    /// no gap. `spacefilter detach` takes it off.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// The merged settings: the daemon's core and its transports.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub daemon: daemon::Settings,
    pub server: server::Settings,
}

/// Merges the command line over the file (defaults where neither speaks),
/// and refuses settings that cannot work.
pub fn merge(cli: CommandLine, file: ConfigFile) -> Result<RunSettings, ConfigError> {
    let CommandLine {
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
        without,
        pin_dir,
    } = cli;
    let settings = RunSettings {
        daemon: daemon::Settings {
            ifaces: if ifaces.is_empty() {
                file.interfaces
            } else {
                ifaces
            },
            mode: mode.or(file.mode).unwrap_or_default(),
            state_dir: state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            force,
            capacity: capacity.or(file.capacity).unwrap_or(DEFAULT_CAPACITY),
            max_sources: max_sources.or(file.max_sources).unwrap_or(DEFAULT_BUCKETS),
            sampling: Sampling {
                every: sample_every
                    .or(file.sample_every)
                    .unwrap_or(DEFAULT_SAMPLE_EVERY),
                cap: sample_cap.or(file.sample_cap).unwrap_or(DEFAULT_SAMPLE_CAP),
            },
            without: if without.is_empty() {
                file.without
            } else {
                without
            },
            pin_dir: pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            allow: file.allow,
            block: file.block,
            reload: None,
        },
        server: server::Settings {
            socket: socket
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            socket_group: socket_group.or(file.socket_group),
            metrics: metrics.or(file.metrics),
        },
    };
    check(&settings, metrics_public)?;
    Ok(settings)
}

/// Refuses settings that cannot work, naming what to change.
fn check(settings: &RunSettings, metrics_public: bool) -> Result<(), ConfigError> {
    let RunSettings { daemon, server } = settings;
    if daemon.ifaces.is_empty() {
        return Err(bad(
            "no interface to attach to: give --iface IFACE (repeatable) or `interfaces` in --config",
        ));
    }
    if daemon.capacity == 0 {
        return Err(bad("--capacity must be at least 1"));
    }
    if daemon.capacity > MAX_CAPACITY {
        return Err(bad(format!("--capacity can be at most {MAX_CAPACITY}")));
    }
    if let Some(addr) = server.metrics
        && !metrics_public
        && !is_private(&addr)
    {
        return Err(bad(format!(
            "refusing to serve metrics on {addr}, which is not a loopback address: anyone who \
             reaches it would see the filter's counters; add --metrics-public if that is meant"
        )));
    }
    if daemon.sampling.cap == 0 || daemon.sampling.cap > MAX_SAMPLE_CAP {
        return Err(bad(format!(
            "--sample-cap must be 1 to {MAX_SAMPLE_CAP}; to sample nothing, use --sample-every 0"
        )));
    }
    if daemon.max_sources < 16 {
        return Err(bad("--max-sources must be at least 16"));
    }
    Ok(())
}
