//! `limit set | off | show`: the per-source rate limit, the SYN guard and
//! the spoofed-source fallback.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{
    ChangeArgs, Common, Failure, Scope, StatusArgs, print_json, reply_failure, unexpected,
};
use crate::api::{LimitsView, ReflectProfile, Request, Response, client::Client};

#[derive(Args)]
pub(super) struct LimitArgs {
    #[command(subcommand)]
    action: LimitAction,
}

#[derive(Subcommand)]
enum LimitAction {
    /// Put a per-source limit in force (it replaces the one in force, at
    /// once, without reloading anything).
    Set(Box<LimitSetArgs>),
    /// Switch the per-source limit off.
    Off(ChangeArgs),
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
    scope: Scope,
    #[command(flatten)]
    common: Common,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The guards' settings in force.
pub(super) fn current_limits(client: &mut Client) -> Result<LimitsView, Failure> {
    match client.call(Request::GetLimits, &mut |_, _| {})? {
        Response::Limits(view) => Ok(view),
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// Sends new settings (or none, to show them) and prints what is in force.
pub(super) fn apply_limits(
    client: &mut Client,
    limits: Option<LimitsView>,
    scope: Scope,
    json: bool,
) -> Result<(), Failure> {
    let view = match limits {
        None => current_limits(client)?,
        Some(limits) => {
            if let Some(problem) = limits.problem() {
                return Err(Failure::bad_input(problem));
            }
            match client.call(scope.request(Request::SetLimits { limits }), &mut |_, _| {})? {
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

pub(super) fn limit(args: &LimitArgs) -> Result<(), Failure> {
    let (socket, json) = match &args.action {
        LimitAction::Set(set) => (set.common.socket.clone(), set.common.json),
        LimitAction::Off(ChangeArgs { common, .. }) | LimitAction::Show(StatusArgs { common }) => {
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
                scope,
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
            // Ten times the per-source rate, within what the daemon takes.
            let fallback = fallback_pps
                .unwrap_or_else(|| pps.map_or(10_000, |p| p.saturating_mul(10).min(1_000_000_000)));
            limits.fallback_pps = fallback;
            limits.fallback_burst = fallback_burst.unwrap_or(fallback);
            if !limits.enabled && limits.syn_pps == 0 && limits.syn_global_pps == 0 {
                return Err(Failure::bad_input(
                    "give a rate: --pps, --bps, --syn-pps or --syn-global-pps",
                ));
            }
            apply_limits(&mut client, Some(limits), scope, json)
        }
        LimitAction::Off(ChangeArgs { scope, .. }) => {
            limits.enabled = false;
            limits.dry_run = false;
            limits.syn_pps = 0;
            limits.syn_global_pps = 0;
            apply_limits(&mut client, Some(limits), *scope, json)
        }
        LimitAction::Show(_) => apply_limits(&mut client, None, Scope { local: true }, json),
    }
}

fn print_limits(view: &LimitsView) {
    for line in view.guard_lines() {
        println!("{line}");
    }
    print_reflection(
        view.reflect,
        &view.reflect_sources,
        &view.service_ports,
        view.reflect_profile.as_ref(),
    );
}

/// Ports and inclusive ranges as `53,5000-5100` (`none` for none).
fn port_list(ranges: impl IntoIterator<Item = (u16, u16)>) -> String {
    let parts: Vec<String> = ranges
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(",")
    }
}

/// The reflection guard's lines: what it drops, and what the profile was
/// built from.
fn print_reflection(
    on: bool,
    sources: &[u16],
    explicit: &[(u16, u16)],
    profile: Option<&ReflectProfile>,
) {
    let singles = |ports: &[u16]| port_list(ports.iter().map(|&p| (p, p)));
    let in_force = profile.map_or_else(
        || port_list(explicit.iter().copied()),
        |p| port_list(p.service_ports.iter().copied()),
    );
    println!(
        "reflection guard: {}; UDP from ports {} to service ports {in_force} (never 123 to 123, symmetric NTP)",
        if on { "on" } else { "off" },
        singles(sources),
    );
    let Some(profile) = profile else {
        return;
    };
    let (lo, hi) = profile.ephemeral;
    if explicit.is_empty() {
        println!(
            "  built from: the listening UDP ports outside the ephemeral range {lo}-{hi} (net.ipv4.ip_local_port_range)"
        );
    } else {
        println!(
            "  built from: --service-ports {} set explicitly (`reflect set --service-ports auto` reads them from the host); ephemeral range {lo}-{hi}",
            port_list(explicit.iter().copied())
        );
    }
    println!("  listening UDP ports: {}", singles(&profile.listening));
    println!(
        "  client ports exempted (UDP sockets connected to a peer): {}",
        singles(&profile.clients)
    );
    if let Some(problem) = &profile.problem {
        println!("  could not read the host: {problem}; Linux's default ephemeral range assumed");
    }
}
