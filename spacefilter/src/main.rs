//! The `spacefilter` command: the daemon (`run`) and the client verbs that
//! steer it over its control socket.
#![expect(
    clippy::doc_markdown,
    reason = "doc comments here are clap's help text, read in a terminal, not rendered"
)]

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use spacefilter::{
    AttachMode, List, Prefix, bulk,
    capture::PcapOut,
    client::{Client, ClientError},
    daemon::{self, Settings},
    filter::error_chain,
    iface::IfaceError,
    observe::{DEFAULT_SAMPLE_CAP, DEFAULT_SAMPLE_EVERY, Sampling},
    protocol::{
        Changed, EntryView, ErrorKind, HeaderRuleView, LimitsView, ObserveView, Origin, Request,
        Response, RuleAction, StatsView, StatusView,
    },
};
use spacefilter_common::{DEFAULT_BUCKETS, DEFAULT_CAPACITY, KERNEL_LOG_TARGET};

const DEFAULT_SOCKET: &str = "/run/spacefilter/spacefilter.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/spacefilter";

/// XDP flood filter. `spacefilter run` attaches an XDP program to network
/// interfaces and drops traffic from blocked prefixes in the driver, before
/// the kernel spends anything on it. The other commands steer the running
/// daemon over its control socket.
///
/// Exit status: 0 on success, 2 when the input was refused (a bad prefix, a
/// bad file line, the lockout guard, an interface that is missing or holds
/// another XDP program), 1 when something failed (the daemon is not
/// running, a write failed).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the XDP program, attach it, restore the rules
    /// from the state directory and serve the control socket until SIGINT
    /// or SIGTERM, which detach it and remove the socket.
    Run(RunArgs),
    /// Drop all traffic from these prefixes (IPv4 or IPv6 addresses or
    /// CIDR prefixes). Blocking a prefix that is already blocked sets its
    /// TTL anew (without --ttl it becomes permanent) and its comment, if one
    /// is given.
    Block(AddArgs),
    /// Take prefixes off the blocklist.
    Unblock(RemoveArgs),
    /// Let these prefixes through whatever the blocklist says: the
    /// allowlist always wins.
    Allow(AddArgs),
    /// Take prefixes off the allowlist.
    Unallow(RemoveArgs),
    /// List the entries: prefix, list, origin, time left, packets matched,
    /// comment.
    List(ListArgs),
    /// Show the counters per verdict reason, in packets and bytes; with
    /// --watch, the rates per second, live, until Ctrl-C.
    Stats(StatsArgs),
    /// Show what the daemon is attached to and holds.
    Status(StatusArgs),
    /// Per-source rate limits: a token bucket per source address (IPv6:
    /// per prefix, /64 by default) in packets and bytes per second. Frames
    /// over the limit are dropped (`rate_limited`); a source that stays over
    /// it for --block-after is blocked for --block-ttl (`auto_blocked`,
    /// listed with origin auto). The buckets are shared by all CPUs, so a
    /// source spread over many cores is held to about the limit, not a
    /// multiple of it. Allowlisted and blocked sources never reach the
    /// limiter.
    Limit(LimitArgs),
    /// The reflection guard: drops UDP from well-known reflector ports
    /// (DNS 53, NTP 123, SSDP 1900, memcached 11211, chargen 19, CLDAP 389,
    /// SNMP 161, WS-Discovery 3702, ...) aimed at the host's service ports
    /// (by default every port outside the ephemeral range 32768-60999, where
    /// answers to the host's own queries arrive). On by default.
    Reflect(ReflectArgs),
    /// Rules on headers: protocol, port ranges, TCP flags and frame length,
    /// with the actions drop, pass (past the flood guards) or limit (a
    /// budget of the rule's own). They are tried in order after the lists
    /// and before the flood guards; the first that matches decides. Each
    /// counts the packets it matched; --dry-run rules only count.
    Rule(RuleArgs),
    /// A live view of what is being dropped: drop rates per reason with
    /// their last minute, and the heaviest dropped sources and prefixes
    /// (ranked from the drop samples of the last 5 s), refreshed every
    /// second. q quits. With --json, one snapshot per line instead.
    Top(TopArgs),
    /// Write sampled dropped frames to a pcap file (tcpdump -r, Wireshark):
    /// each frame's first 128 bytes and its length on the wire, as they
    /// are dropped, until --count frames or Ctrl-C.
    Capture(CaptureArgs),
    /// Drop sampling, which feeds `top` and `capture`: one dropped frame in
    /// N, at most a cap a second host-wide, so that sampling costs little
    /// however hard the flood.
    Sample(SampleArgs),
    /// The kernel-side debug log: one line per frame in the daemon's log
    /// (source, length, interface, verdict, what matched). Off by default;
    /// when off it costs the per-packet path nothing but one test. Meant
    /// for a quiet moment: under a flood most lines are lost.
    Debug(DebugArgs),
}

#[derive(Args)]
struct TopArgs {
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Sources and prefixes to show.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// With --json: stop after this many snapshots.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct CaptureArgs {
    /// The pcap file to write (created or truncated).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Only frames dropped for this reason (blocked, rate_limited,
    /// auto_blocked, syn_limited, reflection, spoof_limited, rule_dropped,
    /// rule_limited, malformed).
    #[arg(long)]
    reason: Option<String>,
    /// Stop after this long (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SampleArgs {
    #[command(subcommand)]
    action: SampleCommand,
}

#[derive(Subcommand)]
enum SampleCommand {
    /// Show the sampler's settings and what it sent, capped and lost.
    Show(StatusArgs),
    /// Change the sampler (in force at once; `run`'s settings return at the
    /// next start).
    Set(SampleSetArgs),
    /// Stop sampling.
    Off(StatusArgs),
}

#[derive(Args)]
struct SampleSetArgs {
    /// Sample one dropped frame in N.
    #[arg(long, value_name = "N")]
    every: Option<u32>,
    /// Samples a second at most, host-wide.
    #[arg(long, value_name = "N")]
    cap: Option<u32>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct DebugArgs {
    #[command(subcommand)]
    action: DebugCommand,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Log every verdict.
    On(StatusArgs),
    /// Stop logging.
    Off(StatusArgs),
    /// Whether the debug log is on.
    Show(StatusArgs),
}

#[derive(Args)]
struct RuleArgs {
    #[command(subcommand)]
    action: RuleCommand,
}

#[derive(Subcommand)]
enum RuleCommand {
    /// Append a rule (it is tried after the ones already there).
    Add(Box<RuleAddArgs>),
    /// Delete a rule by its id.
    Del(RuleDelArgs),
    /// List the rules in order, with the packets each matched.
    List(StatusArgs),
}

#[derive(Args)]
struct RuleAddArgs {
    /// What to do with matching frames.
    #[arg(long, value_enum)]
    action: RuleAction,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long, value_parser = parse_proto)]
    proto: Option<u8>,
    /// Destination port or range (e.g. 53, 1000-2000); TCP and UDP only.
    #[arg(long, value_parser = parse_port_range)]
    dport: Option<(u16, u16)>,
    /// Source port or range.
    #[arg(long, value_parser = parse_port_range)]
    sport: Option<(u16, u16)>,
    /// TCP flags that must be set or clear, e.g. SYN,!ACK.
    #[arg(long, value_parser = parse_tcp_flags)]
    tcp_flags: Option<(u8, u8)>,
    /// Frame length in bytes, or a range (e.g. 0-64, 1400-1514).
    #[arg(long, value_parser = parse_port_range)]
    len: Option<(u16, u16)>,
    /// For --action limit: packets per second for all matching frames.
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// For --action limit: the burst (default: one second's worth).
    #[arg(long)]
    burst: Option<u64>,
    /// Count only: what the rule would drop passes, as would_limit.
    #[arg(long)]
    dry_run: bool,
    /// A note shown in `spacefilter rule list`.
    #[arg(long)]
    comment: Option<String>,
    /// Allow a drop rule with no condition (it drops everything).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RuleDelArgs {
    /// The rule's id, from `spacefilter rule list`.
    id: u32,
    #[command(flatten)]
    common: Common,
}

fn parse_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" | "ipv6-icmp" => Ok(58),
        other => other.parse().map_err(|_| {
            format!("{s:?} is not a protocol: use tcp, udp, icmp, icmpv6 or a number 0-255")
        }),
    }
}

fn parse_tcp_flags(s: &str) -> Result<(u8, u8), String> {
    let (mut mask, mut value) = (0u8, 0u8);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (clear, name) = part.strip_prefix('!').map_or((false, part), |n| (true, n));
        let bit = match name.to_ascii_uppercase().as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            _ => {
                return Err(format!(
                    "{name:?} is not a TCP flag: use FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, each optionally with ! for clear"
                ));
            }
        };
        mask |= bit;
        if !clear {
            value |= bit;
        }
    }
    if mask == 0 {
        return Err("name at least one flag, e.g. SYN,!ACK".into());
    }
    Ok((mask, value))
}

#[derive(Args)]
struct LimitArgs {
    #[command(subcommand)]
    action: LimitAction,
}

#[derive(Subcommand)]
enum LimitAction {
    /// Put a per-source limit in force (it replaces the one in force, at
    /// once, without reloading anything).
    Set(Box<LimitSetArgs>),
    /// Switch the per-source limit off.
    Off(StatusArgs),
    /// Show the per-source limit in force.
    Show(StatusArgs),
}

#[derive(Args)]
struct LimitSetArgs {
    /// Packets per second allowed per source.
    #[arg(long)]
    pps: Option<u64>,
    /// Packets a source may send at once above --pps (default: one
    /// second's worth).
    #[arg(long)]
    burst: Option<u64>,
    /// Bytes per second allowed per source.
    #[arg(long)]
    bps: Option<u64>,
    /// Bytes a source may send at once above --bps (default: one second's
    /// worth).
    #[arg(long)]
    byte_burst: Option<u64>,
    /// IPv6 sources share one bucket per prefix of this length.
    #[arg(long, default_value_t = 64)]
    v6_prefix: u8,
    /// Block a source that stays over its limit this long (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    block_after: Option<Duration>,
    /// How long an auto-block lasts.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    block_ttl: Duration,
    /// TCP SYNs (without ACK) per second allowed per source.
    #[arg(long)]
    syn_pps: Option<u64>,
    /// SYNs a source may send at once above --syn-pps (default: one
    /// second's worth).
    #[arg(long)]
    syn_burst: Option<u64>,
    /// TCP SYNs per second allowed for the whole host, all sources
    /// together: established connections keep working while a SYN flood
    /// is cut to this budget.
    #[arg(long)]
    syn_global_pps: Option<u64>,
    /// SYNs the host takes at once above --syn-global-pps.
    #[arg(long)]
    syn_global_burst: Option<u64>,
    /// New sources per second that mean a spoofed-source flood, with the
    /// per-source limit on (0: never). Per-source buckets cannot hold
    /// random sources (each evicts another from the LRU map), so new
    /// sources then share aggregate budgets instead, per destination port
    /// and per source prefix (/24, /48); known sources keep their own.
    #[arg(long, default_value_t = 5000)]
    spoof_threshold: u64,
    /// The aggregate budget in packets per second (default: 10 × --pps, or
    /// 10000).
    #[arg(long)]
    fallback_pps: Option<u64>,
    /// Its burst (default: one second's worth).
    #[arg(long)]
    fallback_burst: Option<u64>,
    /// Count what the guards would drop (`would_limit`) without dropping
    /// or blocking anything: try a limit during a live event without risk.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ReflectArgs {
    #[command(subcommand)]
    action: ReflectAction,
}

#[derive(Subcommand)]
enum ReflectAction {
    /// Switch the reflection guard on (it is on by default).
    On(StatusArgs),
    /// Switch the reflection guard off.
    Off(StatusArgs),
    /// Show the reflection guard's profile.
    Show(StatusArgs),
    /// Edit the profile: which UDP source ports are reflectors, and which
    /// of the host's ports are services.
    Set(ReflectSetArgs),
}

#[derive(Args)]
struct ReflectSetArgs {
    /// Reflector source ports, e.g. 53,123,11211.
    #[arg(long, value_delimiter = ',')]
    sources: Option<Vec<u16>>,
    /// The host's service ports, as ports and ranges: 443,5000-5100.
    #[arg(long, value_delimiter = ',', value_parser = parse_port_range)]
    service_ports: Option<Vec<(u16, u16)>>,
    #[command(flatten)]
    common: Common,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port or a range of ports such as 5000-5100");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!("{s:?}: the range runs backwards"));
    }
    Ok((lo, hi))
}

#[derive(Args)]
struct Common {
    /// The daemon's control socket.
    #[arg(long, env = "SPACEFILTER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
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

#[derive(Args)]
struct AddArgs {
    /// Addresses or CIDR prefixes, e.g. 198.18.0.7 198.18.0.0/15 2001:2::/48.
    #[arg(value_name = "PREFIX", required_unless_present = "file")]
    prefixes: Vec<Prefix>,
    /// Read prefixes from a file: one per line, `#` comments, blank lines
    /// (FireHOL .netset/.ipset). All or nothing: one bad line rejects the
    /// file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Remove the entries again after this long (e.g. 90s, 10m, 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// A note shown in `spacefilter list`.
    #[arg(long)]
    comment: Option<String>,
    /// Go past the lockout guard (a /0, or a prefix covering this host's
    /// own addresses or its gateway).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RemoveArgs {
    #[arg(value_name = "PREFIX", required_unless_present = "file")]
    prefixes: Vec<Prefix>,
    /// Read the prefixes to remove from a file (same format as `block --file`).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ListArgs {
    /// Only the blocklist.
    #[arg(long, conflicts_with = "allowed")]
    blocked: bool,
    /// Only the allowlist.
    #[arg(long)]
    allowed: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct StatsArgs {
    /// Keep printing the rates per second until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// How often --watch prints.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
}

/// The config file of `spacefilter run --config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    interfaces: Vec<String>,
    mode: Option<AttachMode>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    capacity: Option<u32>,
    max_sources: Option<u32>,
    metrics: Option<std::net::SocketAddr>,
    sample_every: Option<u32>,
    sample_cap: Option<u32>,
    #[serde(default)]
    allow: Vec<Prefix>,
    #[serde(default)]
    block: Vec<Prefix>,
}

/// A failure with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn bad_input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure::runtime(error_chain(&err))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Block(args) => add(List::Block, args),
        Command::Allow(args) => add(List::Allow, args),
        Command::Unblock(args) => remove(List::Block, args),
        Command::Unallow(args) => remove(List::Allow, args),
        Command::List(args) => list(&args),
        Command::Stats(args) => stats(&args),
        Command::Status(args) => status(&args),
        Command::Limit(args) => limit(&args),
        Command::Reflect(args) => reflect(args),
        Command::Rule(args) => rule(args),
        Command::Top(args) => top(&args),
        Command::Capture(args) => capture(&args),
        Command::Sample(args) => sample(args),
        Command::Debug(args) => debug(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("spacefilter: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: RunArgs) -> Result<(), Failure> {
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
    let file = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                Failure::bad_input(format!("cannot read config {}: {err}", path.display()))
            })?;
            toml::from_str::<ConfigFile>(&text)
                .map_err(|err| Failure::bad_input(format!("config {}: {err}", path.display())))?
        }
        None => ConfigFile::default(),
    };
    let settings = Settings {
        ifaces: if ifaces.is_empty() {
            file.interfaces
        } else {
            ifaces
        },
        mode: mode.or(file.mode).unwrap_or_default(),
        state_dir: state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        socket: socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        socket_group: socket_group.or(file.socket_group),
        force,
        capacity: capacity.or(file.capacity).unwrap_or(DEFAULT_CAPACITY),
        max_sources: max_sources.or(file.max_sources).unwrap_or(DEFAULT_BUCKETS),
        metrics: metrics.or(file.metrics),
        sampling: Sampling {
            every: sample_every
                .or(file.sample_every)
                .unwrap_or(DEFAULT_SAMPLE_EVERY),
            cap: sample_cap.or(file.sample_cap).unwrap_or(DEFAULT_SAMPLE_CAP),
        },
        allow: file.allow,
        block: file.block,
    };
    check_settings(&settings, metrics_public)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| Failure::runtime(format!("starting the runtime: {err}")))?;
    runtime.block_on(daemon::run(settings)).map_err(|err| {
        // An interface that does not exist, or holds another program
        // without --force, is the caller's to fix.
        let refused = matches!(
            err.downcast_ref::<IfaceError>(),
            Some(IfaceError::NoSuchInterface { .. } | IfaceError::Occupied { .. })
        ) || err
            .downcast_ref::<spacefilter::control::UnknownGroup>()
            .is_some();
        let message = format!("{err:#}");
        if refused {
            Failure::bad_input(message)
        } else {
            Failure::runtime(message)
        }
    })
}

/// Refuses settings that cannot work, naming what to change.
fn check_settings(settings: &Settings, metrics_public: bool) -> Result<(), Failure> {
    if settings.ifaces.is_empty() {
        return Err(Failure::bad_input(
            "no interface to attach to: give --iface IFACE (repeatable) or `interfaces` in --config",
        ));
    }
    if settings.capacity == 0 {
        return Err(Failure::bad_input("--capacity must be at least 1"));
    }
    if settings.capacity > spacefilter_common::lookup::MAX_CAPACITY {
        return Err(Failure::bad_input(format!(
            "--capacity can be at most {}",
            spacefilter_common::lookup::MAX_CAPACITY
        )));
    }
    if let Some(addr) = settings.metrics
        && !metrics_public
        && !spacefilter::metrics::is_private(&addr)
    {
        return Err(Failure::bad_input(format!(
            "refusing to serve metrics on {addr}, which is not a loopback address: anyone who \
             reaches it would see the filter's counters; add --metrics-public if that is meant"
        )));
    }
    if settings.sampling.cap == 0 || settings.sampling.cap > daemon::MAX_SAMPLE_CAP {
        return Err(Failure::bad_input(format!(
            "--sample-cap must be 1 to {}; to sample nothing, use --sample-every 0",
            daemon::MAX_SAMPLE_CAP
        )));
    }
    if settings.max_sources < 16 {
        return Err(Failure::bad_input("--max-sources must be at least 16"));
    }
    Ok(())
}

/// The prefixes given on the command line and in `--file`.
fn gather(prefixes: &[Prefix], file: Option<&Path>) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|err| Failure::bad_input(format!("cannot read {}: {err}", path.display())))?;
        let listed = bulk::parse(&text).map_err(|err| {
            Failure::bad_input(format!("{} {err}; nothing was changed", path.display()))
        })?;
        if listed.is_empty() && out.is_empty() {
            return Err(Failure::bad_input(format!(
                "{} holds no prefixes",
                path.display()
            )));
        }
        out.extend(listed.iter().map(ToString::to_string));
    }
    Ok(out)
}

fn reply_failure(kind: ErrorKind, message: String) -> Failure {
    match kind {
        ErrorKind::BadInput | ErrorKind::Refused => Failure::bad_input(message),
        ErrorKind::Failed => Failure::runtime(message),
    }
}

fn unexpected(response: &Response) -> Failure {
    Failure::runtime(format!("unexpected reply from the daemon: {response:?}"))
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("serializable"));
}

fn report_changed(verb: &str, changed: Changed, json: bool) {
    if json {
        print_json(&changed);
        return;
    }
    let Changed {
        added,
        updated,
        removed,
        unchanged,
    } = changed;
    let mut parts = Vec::new();
    if added > 0 {
        parts.push(format!("{added} added"));
    }
    if updated > 0 {
        parts.push(format!("{updated} updated"));
    }
    if removed > 0 {
        parts.push(format!("{removed} removed"));
    }
    if unchanged > 0 {
        parts.push(format!("{unchanged} not there"));
    }
    println!("{verb}: {}", parts.join(", "));
}

fn add(list: List, args: AddArgs) -> Result<(), Failure> {
    let AddArgs {
        prefixes,
        file,
        ttl,
        comment,
        force,
        common: Common { socket, json },
    } = args;
    let origin = if file.is_some() {
        Origin::File
    } else {
        Origin::Manual
    };
    let prefixes = gather(&prefixes, file.as_deref())?;
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(Failure::bad_input("--ttl must be longer than zero"));
    }
    let mut client = Client::connect(&socket)?;
    let bar = indicatif::ProgressBar::new(0);
    if !std::io::stderr().is_terminal() || json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template"),
    );
    bar.set_message(format!("{}ing", list.name()));
    let response = client.call(
        Request::Add {
            list,
            prefixes,
            ttl_secs: ttl.map(|t| t.as_secs().max(1)),
            comment,
            origin,
            force,
        },
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    match response {
        Response::Changed(changed) => {
            report_changed(list.name(), changed, json);
            Ok(())
        }
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

fn remove(list: List, args: RemoveArgs) -> Result<(), Failure> {
    let RemoveArgs {
        prefixes,
        file,
        common: Common { socket, json },
    } = args;
    let prefixes = gather(&prefixes, file.as_deref())?;
    let mut client = Client::connect(&socket)?;
    match client.call(Request::Remove { list, prefixes }, &mut |_, _| {})? {
        Response::Changed(changed) => {
            report_changed(&format!("un{}", list.name()), changed, json);
            Ok(())
        }
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

fn format_ttl(secs: Option<u64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

fn list(args: &ListArgs) -> Result<(), Failure> {
    let ListArgs {
        blocked,
        allowed,
        common: Common { socket, json },
    } = args;
    let only = match (blocked, allowed) {
        (true, _) => Some(List::Block),
        (_, true) => Some(List::Allow),
        _ => None,
    };
    let mut client = Client::connect(socket)?;
    let entries: Vec<EntryView> = match client.call(Request::List { list: only }, &mut |_, _| {})? {
        Response::Entries { entries } => entries,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if *json {
        print_json(&entries);
        return Ok(());
    }
    println!(
        "{:<43} {:<6} {:<7} {:>12} {:>14}  COMMENT",
        "PREFIX", "LIST", "ORIGIN", "TTL", "HITS"
    );
    for e in &entries {
        println!(
            "{:<43} {:<6} {:<7} {:>12} {:>14}  {}",
            e.prefix,
            e.list.name(),
            e.origin.name(),
            format_ttl(e.expires_in_secs),
            e.hits,
            e.comment.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn print_counters(
    title: &str,
    counters: &std::collections::BTreeMap<String, spacefilter::protocol::CounterView>,
    rates: bool,
) {
    println!(
        "{title:<14} {:>16} {:>18}{}",
        "PACKETS",
        "BYTES",
        if rates {
            "        PKT/S        BIT/S"
        } else {
            ""
        }
    );
    for (reason, c) in counters {
        if rates {
            println!(
                "{:<14} {:>16} {:>18} {:>12.0} {:>12.0}",
                reason,
                c.packets,
                c.bytes,
                c.packets_per_sec,
                c.bytes_per_sec * 8.0
            );
        } else {
            println!("{:<14} {:>16} {:>18}", reason, c.packets, c.bytes);
        }
    }
}

/// The counters of all interfaces together; then, with more than one
/// interface attached, each interface's.
fn print_stats(view: &StatsView, rates: bool) {
    print_counters("REASON", &view.reasons, rates);
    if view.interfaces.len() > 1 {
        for (iface, counters) in &view.interfaces {
            println!();
            print_counters(&format!("[{iface}]"), counters, rates);
        }
    }
}

fn stats(args: &StatsArgs) -> Result<(), Failure> {
    let StatsArgs {
        watch,
        interval,
        common: Common { socket, json },
    } = args;
    let mut client = Client::connect(socket)?;
    if !watch {
        return match client.call(Request::Stats, &mut |_, _| {})? {
            Response::Stats(view) => {
                if *json {
                    print_json(&view);
                } else {
                    print_stats(&view, false);
                }
                Ok(())
            }
            Response::Error { kind, message } => Err(reply_failure(kind, message)),
            other => Err(unexpected(&other)),
        };
    }
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    client.send(Request::Watch { interval_ms })?;
    let mut first = true;
    loop {
        match client.recv()? {
            Response::Stats(view) => {
                if *json {
                    print_json(&view);
                } else if !first {
                    println!();
                    print_stats(&view, true);
                }
                first = false;
            }
            Response::Error { kind, message } => return Err(reply_failure(kind, message)),
            other => return Err(unexpected(&other)),
        }
    }
}

fn status(args: &StatusArgs) -> Result<(), Failure> {
    let StatusArgs {
        common: Common { socket, json },
    } = args;
    let mut client = Client::connect(socket)?;
    let view: StatusView = match client.call(Request::Status, &mut |_, _| {})? {
        Response::Status(view) => view,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if *json {
        print_json(&view);
        return Ok(());
    }
    let StatusView {
        version,
        protocol,
        uptime_secs,
        program_id,
        interfaces,
        allow_entries,
        block_entries,
        capacity,
        tracked_sources,
        spoof_fallback_active,
        spoof_fallback_switches,
    } = view;
    println!(
        "spacefilter {version} (protocol {protocol}), up {}",
        format_ttl(Some(uptime_secs))
    );
    println!("program id {program_id}");
    for iface in interfaces {
        println!("attached to {} ({} mode)", iface.name, iface.mode);
    }
    println!(
        "allowlist: {allow_entries} entries; blocklist: {block_entries} entries; capacity {capacity} per list"
    );
    println!(
        "rate limiter: {tracked_sources} sources tracked; spoofed-source fallback {} ({spoof_fallback_switches} switches)",
        if spoof_fallback_active { "ON" } else { "off" }
    );
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The guards' settings in force.
fn current_limits(client: &mut Client) -> Result<LimitsView, Failure> {
    match client.call(Request::GetLimits, &mut |_, _| {})? {
        Response::Limits(view) => Ok(view),
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// Sends new settings (or none, to show them) and prints what is in force.
fn apply_limits(
    client: &mut Client,
    limits: Option<LimitsView>,
    json: bool,
) -> Result<(), Failure> {
    let view = match limits {
        None => current_limits(client)?,
        Some(limits) => {
            if let Some(problem) = limits.problem() {
                return Err(Failure::bad_input(problem));
            }
            match client.call(Request::SetLimits { limits }, &mut |_, _| {})? {
                Response::Limits(view) => view,
                Response::Error { kind, message } => return Err(reply_failure(kind, message)),
                other => return Err(unexpected(&other)),
            }
        }
    };
    if json {
        print_json(&view);
    } else {
        print_limits(&view);
    }
    Ok(())
}

fn limit(args: &LimitArgs) -> Result<(), Failure> {
    let (socket, json) = match &args.action {
        LimitAction::Set(set) => (set.common.socket.clone(), set.common.json),
        LimitAction::Off(StatusArgs { common }) | LimitAction::Show(StatusArgs { common }) => {
            (common.socket.clone(), common.json)
        }
    };
    let mut client = Client::connect(&socket)?;
    let mut limits = current_limits(&mut client)?;
    match &args.action {
        LimitAction::Set(set) => {
            let &LimitSetArgs {
                pps,
                burst,
                bps,
                byte_burst,
                v6_prefix,
                block_after,
                block_ttl,
                syn_pps,
                syn_burst,
                syn_global_pps,
                syn_global_burst,
                spoof_threshold,
                fallback_pps,
                fallback_burst,
                dry_run,
                common: _,
            } = set.as_ref();
            limits.enabled = pps.is_some() || bps.is_some();
            limits.dry_run = dry_run;
            limits.pps = pps.unwrap_or(0);
            limits.pps_burst = burst.or(pps).unwrap_or(0);
            limits.bps = bps.unwrap_or(0);
            limits.bps_burst = byte_burst.or(bps).unwrap_or(0);
            limits.v6_prefix_len = v6_prefix;
            limits.block_after_ms = block_after.map_or(0, millis);
            limits.block_ttl_ms = millis(block_ttl);
            limits.syn_pps = syn_pps.unwrap_or(0);
            limits.syn_burst = syn_burst.or(syn_pps).unwrap_or(0);
            limits.syn_global_pps = syn_global_pps.unwrap_or(0);
            limits.syn_global_burst = syn_global_burst.or(syn_global_pps).unwrap_or(0);
            limits.spoof_threshold = if limits.enabled { spoof_threshold } else { 0 };
            let fallback = fallback_pps.unwrap_or_else(|| pps.map_or(10_000, |p| p * 10));
            limits.fallback_pps = fallback;
            limits.fallback_burst = fallback_burst.unwrap_or(fallback);
            if !limits.enabled && limits.syn_pps == 0 && limits.syn_global_pps == 0 {
                return Err(Failure::bad_input(
                    "give a rate: --pps, --bps, --syn-pps or --syn-global-pps",
                ));
            }
            apply_limits(&mut client, Some(limits), json)
        }
        LimitAction::Off(_) => {
            limits.enabled = false;
            limits.dry_run = false;
            limits.syn_pps = 0;
            limits.syn_global_pps = 0;
            apply_limits(&mut client, Some(limits), json)
        }
        LimitAction::Show(_) => apply_limits(&mut client, None, json),
    }
}

fn reflect(args: ReflectArgs) -> Result<(), Failure> {
    let (socket, json) = match &args.action {
        ReflectAction::Set(ReflectSetArgs { common, .. })
        | ReflectAction::On(StatusArgs { common })
        | ReflectAction::Off(StatusArgs { common })
        | ReflectAction::Show(StatusArgs { common }) => (common.socket.clone(), common.json),
    };
    let mut client = Client::connect(&socket)?;
    let mut limits = current_limits(&mut client)?;
    match args.action {
        ReflectAction::On(_) => limits.reflect = true,
        ReflectAction::Off(_) => limits.reflect = false,
        ReflectAction::Show(_) => return apply_limits(&mut client, None, json),
        ReflectAction::Set(ReflectSetArgs {
            sources,
            service_ports,
            common: _,
        }) => {
            if sources.is_none() && service_ports.is_none() {
                return Err(Failure::bad_input(
                    "give --sources, --service-ports or both",
                ));
            }
            if let Some(sources) = sources {
                limits.reflect_sources = sources;
            }
            if let Some(ports) = service_ports {
                limits.service_ports = ports;
            }
        }
    }
    apply_limits(&mut client, Some(limits), json)
}

fn print_limits(view: &LimitsView) {
    let LimitsView {
        enabled,
        dry_run,
        pps,
        pps_burst,
        bps,
        bps_burst,
        v6_prefix_len,
        block_after_ms,
        block_ttl_ms,
        syn_pps,
        syn_burst,
        syn_global_pps,
        syn_global_burst,
        spoof_threshold,
        fallback_pps,
        fallback_burst,
        reflect,
        ref reflect_sources,
        ref service_ports,
    } = *view;
    if dry_run {
        println!("DRY RUN: the guards count (would_limit) and drop nothing");
    }
    if enabled {
        let mut parts = Vec::new();
        if pps > 0 {
            parts.push(format!("{pps} packets/s (burst {pps_burst})"));
        }
        if bps > 0 {
            parts.push(format!("{bps} bytes/s (burst {bps_burst})"));
        }
        println!(
            "per-source limit: {}; IPv6 per /{v6_prefix_len}",
            parts.join(", ")
        );
        if block_after_ms > 0 {
            println!(
                "auto-block after {} over the limit, for {}",
                humantime::format_duration(Duration::from_millis(block_after_ms)),
                humantime::format_duration(Duration::from_millis(block_ttl_ms))
            );
        } else {
            println!("no auto-block");
        }
        if spoof_threshold > 0 {
            println!(
                "spoofed-source fallback above {spoof_threshold} new sources/s: {fallback_pps} packets/s (burst {fallback_burst}) per destination port and per source prefix"
            );
        }
    } else {
        println!("per-source limit: off");
    }
    match (syn_pps, syn_global_pps) {
        (0, 0) => println!("SYN guard: off"),
        _ => println!(
            "SYN guard: {} per source (burst {syn_burst}), {} for the host (burst {syn_global_burst})",
            if syn_pps > 0 {
                format!("{syn_pps}/s")
            } else {
                "no limit".into()
            },
            if syn_global_pps > 0 {
                format!("{syn_global_pps}/s")
            } else {
                "no limit".into()
            },
        ),
    }
    let ports: Vec<String> = reflect_sources.iter().map(ToString::to_string).collect();
    let services: Vec<String> = service_ports
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    println!(
        "reflection guard: {}; UDP from ports {} to service ports {}",
        if reflect { "on" } else { "off" },
        ports.join(","),
        services.join(",")
    );
}

fn rule(args: RuleArgs) -> Result<(), Failure> {
    let (request, common) = match args.action {
        RuleCommand::Add(add) => {
            let RuleAddArgs {
                action,
                proto,
                dport,
                sport,
                tcp_flags,
                len,
                pps,
                burst,
                dry_run,
                comment,
                force,
                common,
            } = *add;
            let rule = HeaderRuleView {
                action: Some(action),
                proto,
                dst_ports: dport,
                src_ports: sport,
                tcp_flags,
                length: len,
                pps,
                burst: burst.unwrap_or(pps),
                dry_run,
                comment,
                ..HeaderRuleView::default()
            };
            if let Some(problem) = rule.problem() {
                return Err(Failure::bad_input(problem));
            }
            (Request::RuleAdd { rule, force }, common)
        }
        RuleCommand::Del(RuleDelArgs { id, common }) => (Request::RuleDel { id }, common),
        RuleCommand::List(StatusArgs { common }) => (Request::RuleList, common),
    };
    let mut client = Client::connect(&common.socket)?;
    let rules = match client.call(request, &mut |_, _| {})? {
        Response::Rules { rules } => rules,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if common.json {
        print_json(&rules);
        return Ok(());
    }
    println!(
        "{:>3} {:<6} {:<7} {:<12} {:<12} {:<10} {:<10} {:>14}  COMMENT",
        "ID", "ACTION", "PROTO", "DPORT", "SPORT", "TCP", "LENGTH", "HITS"
    );
    let range = |r: Option<(u16, u16)>| match r {
        None => "any".to_owned(),
        Some((lo, hi)) if lo == hi => lo.to_string(),
        Some((lo, hi)) => format!("{lo}-{hi}"),
    };
    for r in &rules {
        let action = match r.action {
            Some(RuleAction::Drop) => "drop".to_owned(),
            Some(RuleAction::Pass) => "pass".to_owned(),
            Some(RuleAction::Limit) => format!("limit {}/s", r.pps),
            None => "?".to_owned(),
        };
        let proto = match r.proto {
            None => "any".to_owned(),
            Some(6) => "tcp".to_owned(),
            Some(17) => "udp".to_owned(),
            Some(1) => "icmp".to_owned(),
            Some(58) => "icmpv6".to_owned(),
            Some(n) => n.to_string(),
        };
        let tcp = r.tcp_flags.map_or("any".to_owned(), |(mask, value)| {
            format!("{value:#04x}/{mask:#04x}")
        });
        println!(
            "{:>3} {:<6} {:<7} {:<12} {:<12} {:<10} {:<10} {:>14}  {}{}",
            r.id,
            action,
            proto,
            range(r.dst_ports),
            range(r.src_ports),
            tcp,
            range(r.length),
            r.hits,
            if r.dry_run { "[dry run] " } else { "" },
            r.comment.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn top(args: &TopArgs) -> Result<(), Failure> {
    let TopArgs {
        interval,
        limit,
        count,
        common: Common { socket, json },
    } = args;
    if *limit == 0 {
        return Err(Failure::bad_input("--limit must be at least 1"));
    }
    let mut client = Client::connect(socket)?;
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    client.send(Request::Top {
        interval_ms,
        limit: *limit,
    })?;
    if !*json {
        if !std::io::stdout().is_terminal() {
            return Err(Failure::bad_input(
                "top draws on a terminal; use --json to print snapshots to a pipe or file",
            ));
        }
        return spacefilter::top::run(&mut client)
            .map_err(|err| Failure::runtime(error_chain(&err)));
    }
    let mut printed = 0;
    // The first snapshot has no rates yet (they need two readings).
    let mut first = true;
    while count.is_none_or(|n| printed < n) {
        match client.recv()? {
            Response::Top(view) => {
                if !first {
                    print_json(&view);
                    printed += 1;
                }
                first = false;
            }
            Response::Error { kind, message } => return Err(reply_failure(kind, message)),
            other => return Err(unexpected(&other)),
        }
    }
    Ok(())
}

/// Set by SIGINT and SIGTERM in the verbs that stream until stopped.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: std::ffi::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set [`STOP`] instead of killing the process.
fn stop_on_signals() -> Result<(), Failure> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }
            .map_err(|err| Failure::runtime(format!("installing a {signal} handler: {err}")))?;
    }
    Ok(())
}

fn capture(args: &CaptureArgs) -> Result<(), Failure> {
    let CaptureArgs {
        out,
        count,
        reason,
        duration,
        common: Common { socket, json },
    } = args;
    if *count == Some(0) {
        return Err(Failure::bad_input("--count must be at least 1"));
    }
    let mut client = Client::connect(socket)?;
    client.send(Request::Capture {
        reason: reason.clone(),
    })?;
    let mut pcap = PcapOut::create(out).map_err(|err| Failure::bad_input(error_chain(&err)))?;
    stop_on_signals()?;
    let started = std::time::Instant::now();
    let tick = Duration::from_millis(200);
    while count.is_none_or(|n| pcap.written() < n)
        && duration.is_none_or(|d| started.elapsed() < d)
        && !STOP.load(std::sync::atomic::Ordering::SeqCst)
    {
        match client.recv_within(Some(tick))? {
            None => {}
            Some(Response::Sample(sample)) => {
                pcap.write(&sample)
                    .map_err(|err| Failure::runtime(error_chain(&err)))?;
                if *json {
                    print_json(&sample);
                }
            }
            Some(Response::Error { kind, message }) => {
                // Nothing was captured: leave no empty file behind.
                let _ = std::fs::remove_file(out);
                return Err(reply_failure(kind, message));
            }
            Some(other) => return Err(unexpected(&other)),
        }
    }
    if !*json {
        eprintln!(
            "wrote {} dropped frames to {}",
            pcap.written(),
            out.display()
        );
    }
    Ok(())
}

fn print_observe(view: &ObserveView, json: bool) {
    if json {
        print_json(view);
        return;
    }
    let ObserveView {
        sample_every,
        sample_cap,
        debug_log,
        samples_sent,
        samples_capped,
        samples_lost,
    } = *view;
    if sample_every == 0 {
        println!("drop sampling: off");
    } else {
        println!("drop sampling: 1 in {sample_every}, at most {sample_cap}/s");
    }
    println!(
        "samples: {samples_sent} sent, {samples_capped} over the cap, {samples_lost} lost (ring \
         buffer full)"
    );
    println!("kernel debug log: {}", if debug_log { "on" } else { "off" });
}

fn observe_call(socket: &Path, request: Request, json: bool) -> Result<(), Failure> {
    let mut client = Client::connect(socket)?;
    match client.call(request, &mut |_, _| {})? {
        Response::Observe(view) => {
            print_observe(&view, json);
            Ok(())
        }
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

fn set_observe(
    sample_every: Option<u32>,
    sample_cap: Option<u32>,
    debug_log: Option<bool>,
) -> Request {
    Request::SetObserve {
        sample_every,
        sample_cap,
        debug_log,
    }
}

fn sample(args: SampleArgs) -> Result<(), Failure> {
    match args.action {
        SampleCommand::Show(StatusArgs {
            common: Common { socket, json },
        }) => observe_call(&socket, Request::GetObserve, json),
        SampleCommand::Off(StatusArgs {
            common: Common { socket, json },
        }) => observe_call(&socket, set_observe(Some(0), None, None), json),
        SampleCommand::Set(SampleSetArgs {
            every,
            cap,
            common: Common { socket, json },
        }) => {
            if every.is_none() && cap.is_none() {
                return Err(Failure::bad_input(
                    "nothing to set: give --every N and/or --cap N (or `spacefilter sample off`)",
                ));
            }
            if every == Some(0) {
                return Err(Failure::bad_input(
                    "--every must be at least 1; to stop sampling, use `spacefilter sample off`",
                ));
            }
            observe_call(&socket, set_observe(every, cap, None), json)
        }
    }
}

fn debug(args: DebugArgs) -> Result<(), Failure> {
    let (common, request) = match args.action {
        DebugCommand::On(StatusArgs { common }) => (common, set_observe(None, None, Some(true))),
        DebugCommand::Off(StatusArgs { common }) => (common, set_observe(None, None, Some(false))),
        DebugCommand::Show(StatusArgs { common }) => (common, Request::GetObserve),
    };
    observe_call(&common.socket, request, common.json)
}
