//! `sample show | set | off` (drop sampling) and `debug on | off | show`
//! (the kernel-side debug log).

use std::path::Path;

use clap::{Args, Subcommand};

use super::{Common, Failure, StatusArgs, print_json, reply_failure, unexpected};
use crate::api::{ObserveView, Request, Response, client::Client};

#[derive(Args)]
pub(super) struct SampleArgs {
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
pub(super) struct DebugArgs {
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
        capture_clients,
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
    println!("capture clients reading them: {capture_clients}");
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

pub(super) fn sample(args: SampleArgs) -> Result<(), Failure> {
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

pub(super) fn debug(args: DebugArgs) -> Result<(), Failure> {
    let (common, request) = match args.action {
        DebugCommand::On(StatusArgs { common }) => (common, set_observe(None, None, Some(true))),
        DebugCommand::Off(StatusArgs { common }) => (common, set_observe(None, None, Some(false))),
        DebugCommand::Show(StatusArgs { common }) => (common, Request::GetObserve),
    };
    observe_call(&common.socket, request, common.json)
}
