//! The command line: one file per verb group, each parsing its arguments,
//! asking the daemon through [`crate::api::client`] and printing the
//! answer as a table or as JSON. `run` starts the daemon itself.
#![expect(
    clippy::doc_markdown,
    reason = "doc comments here are clap's help text, read in a terminal, not rendered"
)]

mod capture;
mod completions;
mod detach;
mod limit;
mod links;
mod lists;
mod manpage;
mod parse;
mod reflect;
mod rule;
mod run;
mod sample;
mod screen;
mod shield;
mod stats;
mod top;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use self::{
    capture::CaptureArgs,
    limit::LimitArgs,
    lists::{AddArgs, ListArgs, RemoveArgs},
    reflect::ReflectArgs,
    rule::RuleArgs,
    run::RunArgs,
    sample::{DebugArgs, SampleArgs},
    shield::{AdmitArgs, ShieldArgs},
    stats::StatsArgs,
    top::TopArgs,
};
use crate::{
    api::{ErrorKind, Response, client::ClientError},
    config::DEFAULT_SOCKET,
    error_chain,
    net::List,
};

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
    /// or SIGTERM. Each interface's XDP link is pinned (--pin-dir): the
    /// filter stays on when the daemon stops or crashes, and the next
    /// daemon takes it over with no gap.
    Run(RunArgs),
    /// Take the filter off interfaces where a stopped daemon left it
    /// pinned.
    Detach(detach::DetachArgs),
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
    /// The shield, for a live event's ports under a flood from forged
    /// sources. On TCP ports the program answers SYNs itself with SYN
    /// cookies, so that nothing from a new source reaches the host before
    /// it completes a handshake, and drops segments that belong to no
    /// connection (ACK, RST, FIN floods); established connections are not
    /// touched. On UDP ports verified sources pass (a source the host has
    /// answered, or that completed a handshake, or was admitted), and
    /// others share a small budget, enough for a new client's first
    /// packets.
    Shield(ShieldArgs),
    /// Verify a source on an application's word (a login service that
    /// knows its listeners): it skips the budgets shared with forged
    /// sources (the shield's for unverified UDP, the spoofed-source
    /// fallback's, the host-wide SYN budget) for --ttl. Its own per-source
    /// budgets still hold.
    Admit(AdmitArgs),
    /// Print a completion script for a shell, generated from these
    /// commands: e.g. `spacefilter completions bash >
    /// /etc/bash_completion.d/spacefilter` (the Debian package installs
    /// them for bash, zsh and fish).
    Completions(completions::CompletionsArgs),
    /// Write the manual pages into a directory: spacefilter.8 and one
    /// page per command (the Debian package installs them).
    #[command(hide = true)]
    Manpage(manpage::ManpageArgs),
}

/// What every client verb takes.
#[derive(Args)]
pub(super) struct Common {
    /// The daemon's control socket.
    #[arg(long, env = "SPACEFILTER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(super) socket: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

/// Where a change goes.
#[derive(Args, Clone, Copy)]
pub(super) struct Scope {
    /// On a member of a fleet: change this host only (without it, the
    /// change goes to every member through etcd).
    #[arg(long)]
    pub(super) local: bool,
}

impl Scope {
    /// `change`, made fleet-wide unless `--local` (on a host in no fleet,
    /// the daemon makes it on this host either way).
    pub(super) fn request(self, change: crate::api::Request) -> crate::api::Request {
        if self.local {
            change
        } else {
            crate::api::Request::Fleet {
                change: Box::new(change),
            }
        }
    }
}

/// The arguments of a verb that changes something and takes nothing else.
#[derive(Args)]
pub(super) struct ChangeArgs {
    #[command(flatten)]
    pub(super) scope: Scope,
    #[command(flatten)]
    pub(super) common: Common,
}

/// The arguments of a verb that takes nothing but the common ones.
#[derive(Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) common: Common,
}

/// A failure with its exit status.
pub(super) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(super) fn bad_input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    pub(super) fn runtime(message: impl Into<String>) -> Self {
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

/// Parses the command line, runs the verb, and gives its exit status.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Detach(args) => detach::detach(&args),
        Command::Block(args) => lists::add(List::Block, args),
        Command::Allow(args) => lists::add(List::Allow, args),
        Command::Unblock(args) => lists::remove(List::Block, args),
        Command::Unallow(args) => lists::remove(List::Allow, args),
        Command::List(args) => lists::list(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Status(args) => stats::status(&args),
        Command::Limit(args) => limit::limit(&args),
        Command::Reflect(args) => reflect::reflect(args),
        Command::Rule(args) => rule::rule(args),
        Command::Top(args) => top::top(&args),
        Command::Capture(args) => capture::capture(&args),
        Command::Sample(args) => sample::sample(args),
        Command::Debug(args) => sample::debug(args),
        Command::Shield(args) => shield::shield(args),
        Command::Admit(args) => shield::admit(args),
        Command::Completions(args) => completions::completions(&args),
        Command::Manpage(args) => manpage::manpage(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("spacefilter: {message}");
            ExitCode::from(code)
        }
    }
}

/// The failure a refusal from the daemon stands for.
pub(super) fn reply_failure(kind: ErrorKind, message: String) -> Failure {
    match kind {
        ErrorKind::BadInput | ErrorKind::Refused => Failure::bad_input(message),
        ErrorKind::Failed => Failure::runtime(message),
    }
}

pub(super) fn unexpected(response: &Response) -> Failure {
    Failure::runtime(format!("unexpected reply from the daemon: {response:?}"))
}

pub(super) fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("serializable"));
}
