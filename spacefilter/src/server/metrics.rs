//! The Prometheus endpoint of `spacefilter run --metrics ADDR`: `GET
//! /metrics` answers with the counters read from the program's maps at
//! scrape time, encoded by the prometheus-client crate (`OpenMetrics` text).

use std::{fmt, net::SocketAddr, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use spacefilter_common::Reason;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    api::LinkView,
    daemon::{Handle, MetricsSnapshot as Snapshot, Stop},
};

/// Reads the daemon's state at each scrape.
struct DaemonCollector(Handle);

impl fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Vec<(&str, String)>, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Vec<(&str, String)>, i64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The proofs that verify a source, by name.
fn verified_names() -> impl Iterator<Item = &'static str> {
    spacefilter_common::verified_how::NAMES
        .iter()
        .map(|&(_, name)| name)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for DaemonCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.0.metrics();
        let Some(m) = snapshot else {
            // The maps could not be read: say so, and nothing else.
            return gauge(
                &mut encoder,
                "spacefilter_up",
                "Whether the daemon could read the program's maps.",
                &[(vec![], 0)],
            );
        };
        encode_traffic(&mut encoder, &m)?;
        gauge(
            &mut encoder,
            "spacefilter_entries",
            "Entries per list (auto: the rate limiter's auto-blocks).",
            &m.entries
                .iter()
                .map(|(list, n)| (vec![("list", (*list).to_owned())], signed(*n)))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "spacefilter_rule_hits",
            "Packets each header rule matched.",
            &m.rule_hits
                .iter()
                .map(|(id, hits)| (vec![("rule", id.to_string())], *hits))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "spacefilter_auto_blocks",
            "Sources the rate limiter auto-blocked since the daemon started.",
            &[(vec![], m.auto_blocks)],
        )?;
        gauge(
            &mut encoder,
            "spacefilter_limiter_sources",
            "Sources the rate limiter tracks (its LRU map's occupancy).",
            &[(vec![], signed(m.tracked_sources))],
        )?;
        gauge(
            &mut encoder,
            "spacefilter_limiter_sources_max",
            "Sources the rate limiter can track.",
            &[(vec![], i64::from(m.max_sources))],
        )?;
        gauge(
            &mut encoder,
            "spacefilter_shield_ports",
            "Ports the shield covers, TCP and UDP together: SYNs answered with SYN cookies, \
             segments of no connection dropped, UDP from unverified sources held to a budget \
             (0 while it is off).",
            &[(vec![], signed(m.shielded_ports))],
        )?;
        gauge(
            &mut encoder,
            "spacefilter_shield_active",
            "1 while the shield is in force (on, or switched on by `shield auto`).",
            &[(vec![], i64::from(m.shield_active))],
        )?;
        counter(
            &mut encoder,
            "spacefilter_shield_auto_switches",
            "Times `shield auto` switched the shield on since the daemon started.",
            &[(vec![], m.shield_switches)],
        )?;
        encode_verified(&mut encoder, &m)?;
        gauge(
            &mut encoder,
            "spacefilter_spoof_fallback_active",
            "1 while the spoofed-source fallback is on.",
            &[(vec![], i64::from(m.spoof_active))],
        )?;
        counter(
            &mut encoder,
            "spacefilter_spoof_fallback_switches",
            "Times the spoofed-source fallback was switched on.",
            &[(vec![], m.spoof_switches)],
        )?;
        encode_features(&mut encoder, &m)?;
        encode_links(&mut encoder, &self.0.links())?;
        gauge(
            &mut encoder,
            "spacefilter_uptime_seconds",
            "Seconds since the daemon started.",
            &[(vec![], signed(m.uptime.as_secs()))],
        )?;
        gauge(
            &mut encoder,
            "spacefilter_up",
            "Whether the daemon could read the program's maps.",
            &[(vec![], 1)],
        )
    }
}

/// The verified sources: now, and verified anew.
fn encode_verified(encoder: &mut DescriptorEncoder, m: &Snapshot) -> fmt::Result {
    gauge(
        encoder,
        "spacefilter_verified_sources",
        "Sources verified now, by their last proof: a cookie's ACK, a connection or a \
             reply of the host's, an admission.",
        &verified_names()
            .map(|how| {
                let n = m.verified_now.get(how).copied().unwrap_or(0);
                (vec![("proof", how.to_owned())], signed(n))
            })
            .collect::<Vec<_>>(),
    )?;
    counter(
        encoder,
        "spacefilter_verifications",
        "Sources verified anew, by proof, since the program was loaded.",
        &verified_names()
            .map(|how| {
                let n = m.counters.verified.get(how).copied().unwrap_or(0);
                (vec![("proof", how.to_owned())], n)
            })
            .collect::<Vec<_>>(),
    )
}

/// Packets and bytes by reason and interface, and the sampler.
fn encode_traffic(encoder: &mut DescriptorEncoder, m: &Snapshot) -> fmt::Result {
    let by_iface = |f: fn(&spacefilter_common::Counter) -> u64| {
        let mut values = Vec::new();
        for &reason in &Reason::ALL {
            let mut attributed = 0;
            for (iface, counters) in &m.counters.by_iface {
                let value = counters.get(&reason).map_or(0, f);
                attributed += value;
                values.push((
                    vec![
                        ("reason", reason.name().to_owned()),
                        ("iface", iface.clone()),
                    ],
                    value,
                ));
            }
            // Frames from interfaces without a counter slot of their
            // own (more than the program has slots for).
            let other = f(&m.counters.get(reason)).saturating_sub(attributed);
            if other > 0 {
                values.push((
                    vec![
                        ("reason", reason.name().to_owned()),
                        ("iface", "other".into()),
                    ],
                    other,
                ));
            }
        }
        values
    };
    counter(
        encoder,
        "spacefilter_packets",
        "Packets by verdict reason and interface.",
        &by_iface(|c| c.packets),
    )?;
    counter(
        encoder,
        "spacefilter_bytes",
        "Bytes by verdict reason and interface.",
        &by_iface(|c| c.bytes),
    )?;
    counter(
        encoder,
        "spacefilter_samples",
        "Dropped frames the sampler picked, by outcome: sent to the daemon, over the \
             per-second cap, or lost to a full ring buffer.",
        &[
            (vec![("outcome", "sent".to_owned())], m.samples.samples_sent),
            (
                vec![("outcome", "capped".to_owned())],
                m.samples.samples_capped,
            ),
            (vec![("outcome", "lost".to_owned())], m.samples.samples_lost),
        ],
    )?;
    gauge(
        encoder,
        "spacefilter_sample_every",
        "One dropped frame in this many is sampled; 0: sampling is off.",
        &[(vec![], i64::from(m.samples.sample_every))],
    )?;
    gauge(
        encoder,
        "spacefilter_kernel_debug_log",
        "1 while the kernel-side debug log is on.",
        &[(vec![], i64::from(m.samples.debug_log))],
    )?;
    Ok(())
}

/// Whether `addr` may serve metrics without `--metrics-public`.
#[must_use]
pub fn is_private(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, daemon: Handle, mut stop: Stop) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DaemonCollector(daemon)));
    let registry = std::sync::Arc::new(registry);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        if let Err(err) = answer(stream, &registry).await {
                            log::debug!("metrics: {err}");
                        }
                    });
                }
                Err(err) => {
                    log::warn!("metrics accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Reads one request (its head, at most 8 KiB, within 5 s) and answers
/// it; the connection closes after the answer.
async fn answer(mut stream: TcpStream, registry: &std::sync::Arc<Registry>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let request_line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut words = request_line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            // The collector takes the daemon's lock: off the runtime's
            // worker.
            let registry = std::sync::Arc::clone(registry);
            let encoded = tokio::task::spawn_blocking(move || {
                let mut body = String::new();
                encode(&mut body, &registry).map(|()| body)
            })
            .await;
            match encoded {
                Ok(Ok(body)) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Ok(Err(_)) | Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".to_owned(),
                ),
            }
        }
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Each kernel feature: 1 if the program uses it, 0 if it runs without.
fn encode_features(encoder: &mut DescriptorEncoder, m: &Snapshot) -> fmt::Result {
    gauge(
        encoder,
        "spacefilter_kernel_feature",
        "1 for each kernel feature the program uses, 0 for one it runs without (the kernel \
         lacks it, or `run --without`; `spacefilter status` says why).",
        &m.features
            .iter()
            .map(|(name, on)| (vec![("feature", (*name).to_owned())], i64::from(*on)))
            .collect::<Vec<_>>(),
    )
}

/// The links to outside sources of rules (CrowdSec, the fleet), by kind.
fn encode_links(encoder: &mut DescriptorEncoder, links: &[LinkView]) -> fmt::Result {
    let by_kind = |f: fn(&LinkView) -> Option<i64>| {
        links
            .iter()
            .filter_map(|l| Some((vec![("kind", l.kind.clone())], f(l)?)))
            .collect::<Vec<_>>()
    };
    gauge(
        encoder,
        "spacefilter_link_up",
        "1 while the last exchange with an outside source of rules worked; 0 while it fails \
         (the rules from it stay in force).",
        &by_kind(|l| Some(i64::from(l.up))),
    )?;
    gauge(
        encoder,
        "spacefilter_link_lag_seconds",
        "Seconds since the last exchange with an outside source of rules that worked.",
        &by_kind(|l| l.lag_secs.map(signed)),
    )?;
    gauge(
        encoder,
        "spacefilter_link_revision",
        "How far the source's history has been applied: the etcd revision, or CrowdSec polls \
         that worked.",
        &by_kind(|l| Some(signed(l.revision))),
    )?;
    gauge(
        encoder,
        "spacefilter_link_entries",
        "Entries held from an outside source of rules.",
        &by_kind(|l| Some(signed(l.entries))),
    )
}
