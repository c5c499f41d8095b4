//! `shield on | off | show`: SYN cookies and out-of-state drops on a live
//! event's TCP ports, verified sources first on its UDP ports; and
//! `admit`, an application's word for a source.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Subcommand};

use super::{
    ChangeArgs, Common, Failure, Scope, StatusArgs, lists::format_ttl, print_json, reply_failure,
    unexpected,
};
use crate::api::{
    AdmitView, Request, Response, ShieldAuto, ShieldView, VerifiedView,
    client::Client,
    shield::{DEFAULT_UNVERIFIED_PPS, admit_problem},
};

#[derive(Args)]
pub(super) struct ShieldArgs {
    #[command(subcommand)]
    action: ShieldAction,
}

#[derive(Subcommand)]
enum ShieldAction {
    /// Shield these ports (it replaces the ports shielded so far).
    On(ShieldOnArgs),
    /// Arm the shield on these ports: it switches itself on when SYNs and
    /// UDP from unverified sources to them come faster than --above a
    /// second, and off after --calm below half of that. Armed, the host's
    /// peers are verified already, so that the clients who were there
    /// before a flood are let through from its first second.
    Auto(ShieldAutoArgs),
    /// Stop shielding, and put back the host settings the shield changed.
    Off(ChangeArgs),
    /// Show the shield: its ports, what its SYN-ACKs offer, the host
    /// settings it changed, the verified sources.
    Show(StatusArgs),
}

#[derive(Args)]
struct ShieldOnArgs {
    /// The ports, as protocol/port or protocol/first-last, comma-separated:
    /// tcp/443,udp/443,tcp/8000-8080.
    #[arg(long, value_delimiter = ',', value_parser = parse_shielded_port, required = true)]
    ports: Vec<(Proto, u16, u16)>,
    /// UDP from sources not verified yet, to the shielded UDP ports
    /// together, packets a second: room for new clients' first packets
    /// (the host's reply verifies them), far below a flood.
    #[arg(long, default_value_t = DEFAULT_UNVERIFIED_PPS)]
    unverified_pps: u32,
    /// How long a proof (a cookie's ACK, the host's traffic to the source)
    /// holds a source verified after the last one.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    verified_idle: Duration,
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ShieldAutoArgs {
    #[command(flatten)]
    on: ShieldOnArgs,
    /// Switch on above this many SYNs and unverified datagrams a second
    /// to the ports.
    #[arg(long, default_value_t = 5_000)]
    above: u64,
    /// Switch off after this long below half of --above.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    calm: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// A shielded port or range: `tcp/443`, `udp/443`, `tcp/8000-8080`.
fn parse_shielded_port(s: &str) -> Result<(Proto, u16, u16), String> {
    let Some((proto, ports)) = s.split_once('/') else {
        return Err(format!(
            "{s:?}: name the protocol, as in tcp/443, udp/443 or tcp/8000-8080"
        ));
    };
    let proto = if proto.eq_ignore_ascii_case("tcp") {
        Proto::Tcp
    } else if proto.eq_ignore_ascii_case("udp") {
        Proto::Udp
    } else {
        return Err(format!(
            "{s:?}: the shield covers TCP ports (SYN cookies and connection state) and UDP \
             ports (verified sources first); {proto} is not supported"
        ));
    };
    let range = super::parse::parse_port_range(ports)?;
    if range.1 == 0 {
        return Err(format!("{s:?}: port 0 cannot be shielded"));
    }
    Ok((proto, range.0, range.1))
}

/// The shield a `shield on` (or `auto`) asks for.
fn requested(args: ShieldOnArgs, auto: Option<ShieldAuto>) -> Result<(Request, Common), Failure> {
    let ShieldOnArgs {
        ports,
        unverified_pps,
        verified_idle,
        scope,
        common,
    } = args;
    let of = |wanted| {
        ports
            .iter()
            .filter(|(proto, _, _)| *proto == wanted)
            .map(|&(_, lo, hi)| (lo, hi))
            .collect()
    };
    let shield = ShieldView {
        enabled: true,
        tcp_ports: of(Proto::Tcp),
        udp_ports: of(Proto::Udp),
        unverified_pps,
        verified_idle_secs: verified_idle.as_secs(),
        auto,
        ..ShieldView::default()
    };
    if let Some(problem) = shield.problem() {
        return Err(Failure::bad_input(problem));
    }
    Ok((scope.request(Request::SetShield { shield }), common))
}

pub(super) fn shield(args: ShieldArgs) -> Result<(), Failure> {
    let (request, common) = match args.action {
        ShieldAction::On(on) => requested(on, None)?,
        ShieldAction::Auto(ShieldAutoArgs { on, above, calm }) => requested(
            on,
            Some(ShieldAuto {
                above_pps: above,
                calm_secs: calm.as_secs(),
            }),
        )?,
        ShieldAction::Off(ChangeArgs { scope, common }) => (
            scope.request(Request::SetShield {
                shield: ShieldView::default(),
            }),
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
        print_verified(&view.verified);
    }
    Ok(())
}

fn ranges(proto: &str, ports: &[(u16, u16)]) -> impl Iterator<Item = String> {
    ports.iter().map(move |&(lo, hi)| {
        if lo == hi {
            format!("{proto}/{lo}")
        } else {
            format!("{proto}/{lo}-{hi}")
        }
    })
}

/// The shield in a few lines.
pub(super) fn print_shield(view: &ShieldView) {
    if !view.enabled {
        println!("shield: off");
        return;
    }
    let ports: Vec<String> = ranges("tcp", &view.tcp_ports)
        .chain(ranges("udp", &view.udp_ports))
        .collect();
    match view.auto {
        None => println!("shield: on for {}", ports.join(",")),
        Some(auto) => {
            println!(
                "shield: auto for {}: {} ({} SYNs and unverified datagrams a second; on above \
                 {}, off after {} below {}); switched on {} times",
                ports.join(","),
                if view.active { "ON" } else { "armed" },
                view.watched_pps,
                auto.above_pps,
                format_ttl(Some(auto.calm_secs)),
                auto.above_pps / 2,
                view.auto_switches
            );
        }
    }
    if !view.tcp_ports.is_empty() {
        println!(
            "  TCP: SYNs answered with SYN cookies (MSS {}, window scale {}), segments of no \
             connection dropped",
            view.mss, view.wscale
        );
    }
    if !view.udp_ports.is_empty() {
        println!(
            "  UDP: verified sources pass; others {} packets/s together, the rest dropped",
            view.unverified_pps
        );
    }
    println!(
        "  a proof holds a source verified for {}",
        format_ttl(Some(view.verified_idle_secs))
    );
    for setting in &view.host_settings {
        println!("  host setting {setting}");
    }
    for note in &view.notes {
        println!("  note: {note}");
    }
}

/// The verified sources in a line.
pub(super) fn print_verified(view: &VerifiedView) {
    let by = |counts: &std::collections::BTreeMap<String, u64>| {
        let parts: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(how, n)| format!("{how} {n}"))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    println!(
        "verified sources: {} now{}; {} verified since the program was loaded{}",
        view.now,
        by(&view.now_by_proof),
        view.proven.values().sum::<u64>(),
        by(&view.proven)
    );
    if let Some(problem) = &view.egress_problem {
        println!("  note: {problem}: only cookies and `admit` verify sources");
    }
}

#[derive(Args)]
pub(super) struct AdmitArgs {
    /// The source address (IPv4 or IPv6) to verify.
    addr: IpAddr,
    /// How long it stays verified (unless its traffic keeps it verified
    /// longer).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h",
          conflicts_with = "revoke")]
    ttl: Duration,
    /// Forget the address's verification instead, however it was proven.
    #[arg(long)]
    revoke: bool,
    #[command(flatten)]
    common: Common,
}

/// `admit ADDR [--ttl D] | admit --revoke ADDR`.
pub(super) fn admit(args: AdmitArgs) -> Result<(), Failure> {
    let AdmitArgs {
        addr,
        ttl,
        revoke,
        common,
    } = args;
    if let Some(problem) = admit_problem(addr, if revoke { 1 } else { ttl.as_secs() }) {
        return Err(Failure::bad_input(problem));
    }
    let request = if revoke {
        Request::Revoke { addr }
    } else {
        Request::Admit {
            addr,
            ttl_secs: ttl.as_secs(),
        }
    };
    let mut client = Client::connect(&common.socket)?;
    let view: AdmitView = match client.call(request, &mut |_, _| {})? {
        Response::Admitted(view) => view,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if common.json {
        print_json(&view);
    } else if revoke {
        println!(
            "{}: {}",
            view.addr,
            if view.was_verified {
                "no longer verified"
            } else {
                "was not verified"
            }
        );
    } else {
        println!(
            "{}: verified for {}{}",
            view.addr,
            format_ttl(Some(view.verified_for_secs)),
            if view.was_verified {
                " (it was verified already)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
