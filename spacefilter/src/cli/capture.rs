//! `capture`: sampled dropped frames into a pcap file.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{Common, Failure, print_json, reply_failure, unexpected};
use crate::{
    api::{Request, Response, capture_reason_problem, client::Client},
    error_chain,
    telemetry::pcap::PcapOut,
};

#[derive(Args)]
pub(super) struct CaptureArgs {
    /// The pcap file to write (created, or replaced once the capture ends).
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

/// `out` with `.partial` added: where a capture is written until it ends.
fn partial_path(out: &std::path::Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

pub(super) fn capture(args: &CaptureArgs) -> Result<(), Failure> {
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
    if let Some(problem) = reason.as_deref().and_then(capture_reason_problem) {
        return Err(Failure::bad_input(problem));
    }
    let mut client = Client::connect(socket)?;
    client.send(Request::Capture {
        reason: reason.clone(),
    })?;
    // Written beside `out` and renamed over it at the end: a capture the
    // daemon refuses leaves a file already there as it was.
    let partial = partial_path(out);
    let mut pcap =
        PcapOut::create(&partial).map_err(|err| Failure::bad_input(error_chain(&err)))?;
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
                // Nothing was captured: leave no file behind.
                let _ = std::fs::remove_file(&partial);
                return Err(reply_failure(kind, message));
            }
            Some(other) => {
                let _ = std::fs::remove_file(&partial);
                return Err(unexpected(&other));
            }
        }
    }
    let written = pcap.written();
    drop(pcap);
    std::fs::rename(&partial, out).map_err(|err| {
        Failure::runtime(format!(
            "moving the capture into place as {}: {err}",
            out.display()
        ))
    })?;
    if !*json {
        eprintln!("wrote {written} dropped frames to {}", out.display());
    }
    Ok(())
}
