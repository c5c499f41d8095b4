//! The `spacefilter` command.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use spacefilter::{AttachMode, Filter, LoadOptions, Prefix, Reason};

/// XDP flood filter: drops traffic from blocked prefixes at the driver,
/// before the kernel spends anything on it.
#[derive(Parser)]
#[command(version, about)]
enum Command {
    /// Attach the filter to interfaces and keep it there until Ctrl-C,
    /// printing the counters every interval.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interface to attach to (repeat for several: one program, shared lists).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// native: driver mode only; skb: generic mode; auto: native, falling
    /// back to skb with a warning.
    #[arg(long, value_enum, default_value_t)]
    mode: AttachMode,
    /// Prefix to block (an address or CIDR, IPv4 or IPv6; repeatable).
    #[arg(long = "block")]
    block: Vec<Prefix>,
    /// Prefix to allow: it passes whatever the blocklist says (repeatable).
    #[arg(long = "allow")]
    allow: Vec<Prefix>,
    /// How often to print the counters.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 1s, 10m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Command::parse() {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        ifaces,
        mode,
        block,
        allow,
        interval,
    } = args;
    let mut filter = Filter::load(LoadOptions::default()).context("loading spacefilter")?;
    for prefix in allow {
        filter.allow(prefix)?;
    }
    for prefix in block {
        filter.block(prefix)?;
    }
    for iface in &ifaces {
        let used = filter.attach(iface, mode)?;
        log::info!("attached to {iface} in {} mode", used.name());
    }
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let counters = filter.counters()?;
                let line = Reason::ALL
                    .iter()
                    .map(|&r| format!("{}={}", r.name(), counters.get(r).packets))
                    .collect::<Vec<_>>()
                    .join(" ");
                println!("{line}");
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for iface in ifaces {
        filter.detach(&iface)?;
    }
    Ok(())
}
