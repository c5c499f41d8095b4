//! `reflect on | off | show | set`: the reflection guard's profile.

use clap::{Args, Subcommand};

use super::{
    ChangeArgs, Common, Failure, Scope, StatusArgs,
    limit::{apply_limits, current_limits},
    parse::parse_port_range,
};
use crate::api::client::Client;

#[derive(Args)]
pub(super) struct ReflectArgs {
    #[command(subcommand)]
    action: ReflectAction,
}

#[derive(Subcommand)]
enum ReflectAction {
    /// Switch the reflection guard on (it is on by default).
    On(ChangeArgs),
    /// Switch the reflection guard off.
    Off(ChangeArgs),
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
    /// The host's service ports, as ports and ranges: 443,5000-5100; or
    /// `auto` (the default): the listening UDP ports outside the host's
    /// ephemeral range, read from the host.
    #[arg(long, value_delimiter = ',', value_parser = parse_service_ports)]
    service_ports: Option<Vec<Option<(u16, u16)>>>,
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    common: Common,
}

pub(super) fn reflect(args: ReflectArgs) -> Result<(), Failure> {
    let (socket, json) = match &args.action {
        ReflectAction::Set(ReflectSetArgs { common, .. })
        | ReflectAction::On(ChangeArgs { common, .. })
        | ReflectAction::Off(ChangeArgs { common, .. })
        | ReflectAction::Show(StatusArgs { common }) => (common.socket.clone(), common.json),
    };
    let mut client = Client::connect(&socket)?;
    let mut limits = current_limits(&mut client)?;
    let scope = match args.action {
        ReflectAction::On(ChangeArgs { scope, .. }) => {
            limits.reflect = true;
            scope
        }
        ReflectAction::Off(ChangeArgs { scope, .. }) => {
            limits.reflect = false;
            scope
        }
        ReflectAction::Show(_) => {
            return apply_limits(&mut client, None, Scope { local: true }, json);
        }
        ReflectAction::Set(ReflectSetArgs {
            sources,
            service_ports,
            scope,
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
                limits.service_ports = explicit_ports(&ports)?;
            }
            scope
        }
    };
    apply_limits(&mut client, Some(limits), scope, json)
}

/// A service port or range, or `auto` (`None`).
fn parse_service_ports(s: &str) -> Result<Option<(u16, u16)>, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    parse_port_range(s).map(Some)
}

/// The explicit service ports of `--service-ports` (none for `auto`).
fn explicit_ports(ports: &[Option<(u16, u16)>]) -> Result<Vec<(u16, u16)>, Failure> {
    let explicit: Vec<(u16, u16)> = ports.iter().flatten().copied().collect();
    if explicit.len() != ports.len() && !explicit.is_empty() {
        return Err(Failure::bad_input(
            "--service-ports takes either `auto` or ports and ranges, not both",
        ));
    }
    Ok(explicit)
}
