//! The requests that stream until the client hangs up: `watch` (counters
//! and rates), `top` (the heaviest dropped sources) and `capture` (every
//! sampled dropped frame).

use std::{
    io::ErrorKind as IoErrorKind,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::broadcast,
};

use super::control::{error, send};
use crate::{
    api::{ErrorKind, Request, Response, capture_reason_problem},
    daemon::{Counters, Handle, Stop, stats_view},
};

/// Serves a request that streams until the client hangs up.
pub(super) async fn serve(
    request: Request,
    read: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    daemon: &Handle,
    stop: Stop,
) {
    match request {
        Request::Watch { interval_ms } => {
            every(read, write, daemon, interval_ms, stop, |_, now, before| {
                Response::Stats(stats_view(now, before))
            })
            .await;
        }
        Request::Top { interval_ms, limit } => {
            let limit = limit.clamp(1, 1000);
            every(
                read,
                write,
                daemon,
                interval_ms,
                stop,
                |daemon, now, before| {
                    let (rates, elapsed) = match before {
                        Some((before, elapsed)) => (now.since(before), elapsed),
                        None => (Counters::default(), Duration::from_secs(1)),
                    };
                    Response::Top(daemon.top(limit, &rates, elapsed))
                },
            )
            .await;
        }
        Request::Capture { reason } => capture(read, write, daemon, reason, stop).await,
        _ => unreachable!("only streaming requests come here"),
    }
}

/// Whether the client hung up (or sent something: a stream takes no more
/// requests), after `read` returned `n`.
fn hung_up(n: &std::io::Result<usize>) -> bool {
    matches!(n, Ok(0) | Err(_))
}

/// Sends `make(daemon, counters, previous)` every `interval_ms` until the
/// client hangs up or the daemon stops; `previous` is the counters of the
/// last line and the time since.
async fn every(
    read: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    daemon: &Handle,
    interval_ms: u64,
    mut stop: Stop,
    mut make: impl FnMut(&Handle, &Counters, Option<(&Counters, Duration)>) -> Response,
) {
    let interval = Duration::from_millis(interval_ms.clamp(100, 3_600_000));
    let mut ticker = tokio::time::interval(interval);
    // A stalled daemon must not burst out ticks back to back afterwards:
    // each line's rates should cover about one interval.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = None;
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            n = read.read(&mut scratch) => {
                if hung_up(&n) {
                    return;
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        let shared = daemon.clone();
        let counters = match tokio::task::spawn_blocking(move || shared.counters()).await {
            Ok(Ok(counters)) => counters,
            Ok(Err(refusal)) => {
                let _ = send(write, &refusal.into()).await;
                return;
            }
            Err(_) => return,
        };
        let now = Instant::now();
        // `make` may take the daemon's lock: off the runtime's worker.
        let response = tokio::task::block_in_place(|| {
            make(
                daemon,
                &counters,
                previous
                    .as_ref()
                    .map(|(c, at): &(_, Instant)| (c, now - *at)),
            )
        });
        if let Err(err) = send(write, &response).await {
            if err.kind() != IoErrorKind::BrokenPipe {
                log::debug!("stream: {err}");
            }
            return;
        }
        previous = Some((counters, now));
    }
}

/// Streams every sampled dropped frame (of `reason`, if given) until the
/// client hangs up or the daemon stops.
async fn capture(
    read: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    daemon: &Handle,
    reason: Option<String>,
    mut stop: Stop,
) {
    if let Some(message) = reason.as_deref().and_then(capture_reason_problem) {
        let _ = send(write, &error(ErrorKind::BadInput, message)).await;
        return;
    }
    let (mut feed, every) = tokio::task::block_in_place(|| daemon.subscribe_samples());
    if every == 0 {
        let message = "drop sampling is off, so there is nothing to capture; turn it on with \
                       `spacefilter sample set --every N`";
        let _ = send(write, &error(ErrorKind::Refused, message)).await;
        return;
    }
    let mut scratch = [0u8; 512];
    loop {
        let sample = tokio::select! {
            received = feed.recv() => match received {
                Ok(sample) => sample,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    log::warn!("capture client fell behind; {missed} samples skipped");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            n = read.read(&mut scratch) => {
                if hung_up(&n) {
                    return;
                }
                continue;
            }
            _ = stop.changed() => return,
        };
        if reason.as_ref().is_some_and(|r| *r != sample.reason) {
            continue;
        }
        if send(write, &Response::Sample((*sample).clone()))
            .await
            .is_err()
        {
            return;
        }
    }
}
