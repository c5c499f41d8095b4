//! `shield on | off | show`: SYN cookies and out-of-state drops on a live
//! event's TCP ports.

use clap::{Args, Subcommand};

use super::{Common, Failure, StatusArgs, print_json, reply_failure, unexpected};
use crate::api::{Request, Response, ShieldView, client::Client};

#[derive(Args)]
pub(super) struct ShieldArgs {
    #[command(subcommand)]
    action: ShieldAction,
}

#[derive(Subcommand)]
enum ShieldAction {
    /// Shield these ports (it replaces the ports shielded so far).
    On(ShieldOnArgs),
    /// Stop shielding, and put back the host settings the shield changed.
    Off(StatusArgs),
    /// Show the shield: its ports, what its SYN-ACKs offer, the host
    /// settings it changed.
    Show(StatusArgs),
}

#[derive(Args)]
struct ShieldOnArgs {
    /// The ports, as protocol/port or protocol/first-last, comma-separated:
    /// tcp/443,tcp/8000-8080.
    #[arg(long, value_delimiter = ',', value_parser = parse_shielded_port, required = true)]
    ports: Vec<(u16, u16)>,
    #[command(flatten)]
    common: Common,
}

/// A shielded port or range: `tcp/443`, `tcp/8000-8080`.
fn parse_shielded_port(s: &str) -> Result<(u16, u16), String> {
    let Some((proto, ports)) = s.split_once('/') else {
        return Err(format!(
            "{s:?}: name the protocol, as in tcp/443 or tcp/8000-8080"
        ));
    };
    if !proto.eq_ignore_ascii_case("tcp") {
        return Err(format!(
            "{s:?}: the shield covers TCP ports (SYN cookies and connection state); \
             {proto} is not supported"
        ));
    }
    let range = super::parse::parse_port_range(ports)?;
    if range.1 == 0 {
        return Err(format!("{s:?}: port 0 cannot be shielded"));
    }
    Ok(range)
}

pub(super) fn shield(args: ShieldArgs) -> Result<(), Failure> {
    let (request, common) = match args.action {
        ShieldAction::On(ShieldOnArgs { ports, common }) => {
            let shield = ShieldView {
                enabled: true,
                tcp_ports: ports,
                ..ShieldView::default()
            };
            if let Some(problem) = shield.problem() {
                return Err(Failure::bad_input(problem));
            }
            (Request::SetShield { shield }, common)
        }
        ShieldAction::Off(StatusArgs { common }) => (
            Request::SetShield {
                shield: ShieldView::default(),
            },
            common,
        ),
        ShieldAction::Show(StatusArgs { common }) => (Request::GetShield, common),
    };
    let mut client = Client::connect(&common.socket)?;
    let view = match client.call(request, &mut |_, _| {})? {
        Response::Shield(view) => view,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if common.json {
        print_json(&view);
    } else {
        print_shield(&view);
    }
    Ok(())
}

/// The shield in a few lines.
pub(super) fn print_shield(view: &ShieldView) {
    if !view.enabled {
        println!("shield: off");
        return;
    }
    let ports: Vec<String> = view
        .tcp_ports
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                format!("tcp/{lo}")
            } else {
                format!("tcp/{lo}-{hi}")
            }
        })
        .collect();
    println!(
        "shield: on for {}: SYNs answered with SYN cookies (MSS {}, window scale {}), \
         segments of no connection dropped",
        ports.join(","),
        view.mss,
        view.wscale
    );
    for setting in &view.host_settings {
        println!("  host setting {setting}");
    }
    for note in &view.notes {
        println!("  note: {note}");
    }
}
