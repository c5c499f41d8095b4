//! The daemon's background tasks: expiry and reconciliation timers, and
//! the readers of the program's ring buffers (auto-block events, drop
//! samples, the kernel debug log).

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use spacefilter_common::AutoBlockEvent;

use super::{Handle, Stop};
use crate::bpf::{KernelLog, Sample, limiter_prefix};

/// Drains the kernel-side debug log into the daemon's log (lines only
/// come while `spacefilter debug on`).
pub(super) async fn drain_kernel_log(reader: KernelLog, stop: Stop) {
    when_readable(reader, "the kernel debug log", stop, KernelLog::flush).await;
}

/// Scans of the auto-block map (for events a full ring buffer lost) happen
/// this often; each reads the whole map. The reflection guard's profile is
/// read from the host again as often.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

pub(super) async fn expire_loop(handle: Handle, mut stop: Stop) {
    let mut last_scan = Instant::now();
    loop {
        let wait = handle
            .lock()
            .next_expiry()
            .map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let mut core = handle.lock();
        core.expire();
        if last_scan.elapsed() >= RECONCILE_EVERY {
            core.reconcile_auto();
            if let Err(message) = core.refresh_reflect_profile() {
                log::error!("the reflection guard's profile: {message}");
            }
            last_scan = Instant::now();
        }
        core.report_spoof_fallback();
        core.shield_auto_tick();
    }
}

/// Calls `each` on `source` (a ring buffer, or the reader of one) each
/// time its file descriptor turns readable, until `stop`.
async fn when_readable<T: std::os::fd::AsRawFd>(
    source: T,
    what: &str,
    mut stop: Stop,
    mut each: impl FnMut(&mut T),
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
    loop {
        let mut guard = tokio::select! {
            ready = source.readable_mut() => match ready {
                Ok(guard) => guard,
                Err(err) => {
                    log::error!("{what}: {err}");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        each(guard.get_inner_mut());
        guard.clear_ready();
    }
}

/// Reads auto-block events from the program's ring buffer.
pub(super) async fn auto_block_events(ring: RingBuf<MapData>, handle: Handle, stop: Stop) {
    when_readable(ring, "the auto-block events", stop, |ring| {
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<AutoBlockEvent>() {
                // SAFETY: the program writes whole AutoBlockEvents; the read
                // is unaligned-safe.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AutoBlockEvent>()) };
                events.push(event);
            }
        }
        let blocks: Vec<_> = events
            .iter()
            .map(|e| (limiter_prefix(e.key, e.prefix_len, e.v6 != 0), e.until_ns))
            .collect();
        handle.lock().adopt_autos(&blocks);
    })
    .await;
}

/// Reads drop samples from the program's ring buffer.
pub(super) async fn read_samples(ring: RingBuf<MapData>, handle: Handle, stop: Stop) {
    when_readable(ring, "the drop samples", stop, |ring| {
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(sample) = Sample::decode(&item) {
                batch.push(sample);
            }
        }
        handle.lock().absorb_samples(&batch);
    })
    .await;
}
