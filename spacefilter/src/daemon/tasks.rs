//! The daemon's background tasks: expiry and reconciliation timers, and
//! the readers of the program's ring buffers (auto-block events, drop
//! samples, the kernel debug log).
//!
//! The core's lock is a plain mutex, held for as long as a request takes:
//! these tasks take it on the blocking pool ([`on_core`]), never on the
//! runtime's workers, so that a long import cannot stall the accept loop or
//! the signal handlers.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use spacefilter_common::AutoBlockEvent;

use super::{Handle, Stop, core::Core};
use crate::bpf::{KernelLog, Sample, limiter_prefix};

/// Runs `f` on the core from the blocking pool.
async fn on_core<R: Send + 'static>(
    handle: &Handle,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Option<R> {
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || f(&mut handle.lock()))
        .await
        .ok()
}

/// Scans of the auto-block map (for events a full ring buffer lost) happen
/// this often; each reads the whole map. The reflection guard's profile is
/// read from the host again as often.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

pub(super) async fn expire_loop(handle: Handle, mut stop: Stop) {
    let mut last_scan = Instant::now();
    loop {
        let wait = on_core(&handle, |core| core.next_expiry())
            .await
            .flatten()
            .map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let scan = last_scan.elapsed() >= RECONCILE_EVERY;
        if scan {
            last_scan = Instant::now();
        }
        on_core(&handle, move |core| {
            core.expire();
            if scan {
                core.reconcile_auto();
                if let Err(message) = core.refresh_reflect_profile() {
                    log::error!("the reflection guard's profile: {message}");
                }
            }
            core.report_spoof_fallback();
            core.shield_auto_tick();
        })
        .await;
    }
}

/// The program submits drop samples without waking their reader until
/// half of the ring is unread (`observe.rs`, `WAKE_AT_BYTES`): the
/// daemon reads the ring this often besides, so that a sample reaches
/// `top` and the metrics within this time.
const SAMPLES_READ_EVERY: Duration = Duration::from_millis(100);

/// Calls `read` on `source` (a ring buffer, or the reader of one) each
/// time its file descriptor turns readable, and every `every` if given
/// (for a producer that does not always wake its reader), and hands what
/// it read to `deliver`, until `stop`.
async fn when_readable<T: std::os::fd::AsRawFd, B, F: Future<Output = ()>>(
    source: T,
    what: &str,
    every: Option<Duration>,
    mut stop: Stop,
    mut read: impl FnMut(&mut T) -> B,
    mut deliver: impl FnMut(B) -> F,
) {
    // SAFETY: the source owns its file descriptor, which stays open and the
    // same for as long as the AsyncFd holds the source.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(source, tokio::io::Interest::READABLE)
    };
    let mut source = match registered {
        Ok(fd) => fd,
        Err(err) => {
            log::error!("watching {what}: {err}");
            return;
        }
    };
    let mut timer = every.map(|every| {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    loop {
        let tick = async {
            match timer.as_mut() {
                Some(timer) => {
                    timer.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let batch = tokio::select! {
            ready = source.readable_mut() => match ready {
                Ok(mut guard) => {
                    let batch = read(guard.get_inner_mut());
                    guard.clear_ready();
                    batch
                }
                Err(err) => {
                    log::error!("{what}: {err}");
                    return;
                }
            },
            () = tick => read(source.get_mut()),
            _ = stop.changed() => return,
        };
        deliver(batch).await;
    }
}

/// Drains the kernel-side debug log into the daemon's log (lines only
/// come while `spacefilter debug on`).
pub(super) async fn drain_kernel_log(reader: KernelLog, stop: Stop) {
    when_readable(
        reader,
        "the kernel debug log",
        None,
        stop,
        KernelLog::flush,
        |()| async {},
    )
    .await;
}

/// Reads auto-block events from the program's ring buffer; each read's
/// events are adopted (and journaled) together.
pub(super) async fn auto_block_events(ring: RingBuf<MapData>, handle: Handle, stop: Stop) {
    let read = |ring: &mut RingBuf<MapData>| {
        let mut blocks = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<AutoBlockEvent>() {
                // SAFETY: the program writes whole AutoBlockEvents; the read
                // is unaligned-safe.
                let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AutoBlockEvent>()) };
                blocks.push((limiter_prefix(e.key, e.prefix_len, e.v6 != 0), e.until_ns));
            }
        }
        blocks
    };
    let deliver = |blocks: Vec<_>| {
        let handle = handle.clone();
        async move {
            if !blocks.is_empty() {
                on_core(&handle, move |core| core.adopt_autos(&blocks)).await;
            }
        }
    };
    when_readable(ring, "the auto-block events", None, stop, read, deliver).await;
}

/// Reads drop samples from the program's ring buffer, when woken and every
/// [`SAMPLES_READ_EVERY`].
pub(super) async fn read_samples(ring: RingBuf<MapData>, handle: Handle, stop: Stop) {
    let read = |ring: &mut RingBuf<MapData>| {
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(sample) = Sample::decode(&item) {
                batch.push(sample);
            }
        }
        batch
    };
    let deliver = |batch: Vec<Sample>| {
        let handle = handle.clone();
        async move {
            if !batch.is_empty() {
                on_core(&handle, move |core| core.absorb_samples(&batch)).await;
            }
        }
    };
    when_readable(
        ring,
        "the drop samples",
        Some(SAMPLES_READ_EVERY),
        stop,
        read,
        deliver,
    )
    .await;
}
