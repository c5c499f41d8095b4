//! The daemon's side of drop sampling: samples read from the program's
//! ring buffer are described (interface, what matched, source), fed to the
//! [`Talkers`] ranking behind `spacefilter top`, and fanned out to every
//! `spacefilter capture` client. The daemon reads the ring buffer and
//! hands the samples in.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use spacefilter_common::Reason;
use tokio::sync::broadcast;

use super::talkers::Talkers;
use crate::{
    api::SampleView,
    bpf::{Sample, monotonic_ns},
};

/// Samples a capture client may fall behind by before it misses some.
const CAPTURE_BACKLOG: usize = 8_192;

/// What the daemon does with samples.
pub struct Samples {
    pub talkers: Talkers,
    captures: broadcast::Sender<Arc<SampleView>>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            talkers: Talkers::default(),
            captures: broadcast::channel(CAPTURE_BACKLOG).0,
        }
    }
}

/// Microseconds since the Unix epoch of a `CLOCK_MONOTONIC` time, and the
/// `Instant` it corresponds to.
fn when(ts_ns: u64) -> (u64, Instant) {
    let mono_now = monotonic_ns();
    let age = std::time::Duration::from_nanos(mono_now.saturating_sub(ts_ns));
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(age);
    let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    (u64::try_from(wall.as_micros()).unwrap_or(u64::MAX), at)
}

impl Samples {
    /// A new capture client's feed.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SampleView>> {
        self.captures.subscribe()
    }

    /// How many capture clients are reading samples now.
    #[must_use]
    pub fn capture_clients(&self) -> usize {
        self.captures.receiver_count()
    }

    /// Takes in one sample; `describe` names its interface and what it
    /// matched, from its ifindex, its source and its detail.
    pub fn absorb(
        &mut self,
        sample: &Sample,
        describe: impl FnOnce(u32, Option<IpAddr>, Reason, u32) -> (String, Option<String>),
    ) {
        let source = sample.source();
        let (at_us, at) = when(sample.ts_ns);
        let (iface, matched) = describe(sample.ifindex, source, sample.reason, sample.detail);
        let matched: Option<Arc<str>> = matched.map(Into::into);
        if let Some(source) = source {
            self.talkers
                .note(at, source, sample.reason, matched.clone());
        }
        if self.captures.receiver_count() > 0 {
            // Nobody listening is no error: the send fails only then.
            let _ = self.captures.send(Arc::new(SampleView {
                at_us,
                mono_ns: sample.ts_ns,
                iface,
                reason: sample.reason.name().to_owned(),
                matched: matched.map(|m| m.to_string()),
                source: source.map(|s| s.to_string()),
                len: sample.len,
                data: hex::encode(&sample.data),
            }));
        }
    }
}
