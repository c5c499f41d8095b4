//! `stats` (once, or `--watch`) and `status`.

use std::{collections::BTreeMap, time::Duration};

use clap::Args;

use super::{
    Common, Failure, StatusArgs, lists::format_ttl, print_json, reply_failure, unexpected,
};
use crate::api::{CounterView, Request, Response, StatsView, StatusView, client::Client};

#[derive(Args)]
pub(super) struct StatsArgs {
    /// Keep printing the rates per second until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// How often --watch prints.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    #[command(flatten)]
    common: Common,
}

fn print_counters(title: &str, counters: &BTreeMap<String, CounterView>, rates: bool) {
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

pub(super) fn stats(args: &StatsArgs) -> Result<(), Failure> {
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

pub(super) fn status(args: &StatusArgs) -> Result<(), Failure> {
    let StatusArgs {
        common: Common { socket, json },
    } = args;
    let mut client = Client::connect(socket)?;
    let view: StatusView = match client.call(Request::Status, &mut |_, _| {})? {
        Response::Status(view) => *view,
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
        shield,
        verified,
        state_problem,
        features_off,
        links,
    } = view;
    println!(
        "spacefilter {version} (protocol {protocol}), up {}",
        format_ttl(Some(uptime_secs))
    );
    println!("program id {program_id}");
    for iface in interfaces {
        println!(
            "attached to {} ({} mode{})",
            iface.name,
            iface.mode,
            if iface.pinned {
                ", pinned: stays when the daemon stops"
            } else {
                ""
            }
        );
    }
    println!(
        "allowlist: {allow_entries} entries; blocklist: {block_entries} entries; capacity {capacity} per list"
    );
    println!(
        "rate limiter: {tracked_sources} sources tracked; spoofed-source fallback {} ({spoof_fallback_switches} switches)",
        if spoof_fallback_active { "ON" } else { "off" }
    );
    super::shield::print_shield(&shield.unwrap_or_default());
    super::shield::print_verified(&verified);
    if let Some(problem) = state_problem {
        println!("STATE: changes refused: {problem}");
    }
    for off in features_off {
        println!("feature {} off: {}; {}", off.feature, off.why, off.instead);
    }
    for link in links {
        print_link(&link);
    }
    Ok(())
}

/// One line for a link to an outside source of rules.
fn print_link(link: &crate::api::LinkView) {
    let lag = link.lag_secs.map_or_else(
        || "never reached".to_owned(),
        |s| format!("last reached {s}s ago"),
    );
    println!(
        "link {} {}: {}, revision {}, {} entries, {lag}{}",
        link.kind,
        link.url,
        if link.up { "up" } else { "DOWN" },
        link.revision,
        link.entries,
        link.last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
}
