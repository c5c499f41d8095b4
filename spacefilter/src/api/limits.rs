//! The flood guards' settings, as a client sends them and reads them back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use spacefilter_common::{Limits, limit_flags};

/// The flood guards' settings, as the protocol carries
/// them: the per-source rate limit, the SYN guard and the reflection guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsView {
    /// The per-source rate limit runs.
    pub enabled: bool,
    /// Count what would be dropped (`would_limit`) without dropping.
    #[serde(default)]
    pub dry_run: bool,
    /// Packets per second per source (0: no packet limit), and the burst
    /// above it.
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub pps_burst: u64,
    /// Bytes per second per source (0: no byte limit), and the burst.
    #[serde(default)]
    pub bps: u64,
    #[serde(default)]
    pub bps_burst: u64,
    /// IPv6 sources share a bucket per prefix of this length.
    #[serde(default = "default_v6_prefix_len")]
    pub v6_prefix_len: u8,
    /// Auto-block a source over its limit this long (0: never).
    #[serde(default)]
    pub block_after_ms: u64,
    /// How long an auto-block lasts.
    #[serde(default)]
    pub block_ttl_ms: u64,
    /// TCP SYNs (without ACK) per second per source (0: no SYN budget per
    /// source), and the burst.
    #[serde(default)]
    pub syn_pps: u64,
    #[serde(default)]
    pub syn_burst: u64,
    /// TCP SYNs per second for the whole host (0: none), and the burst.
    #[serde(default)]
    pub syn_global_pps: u64,
    #[serde(default)]
    pub syn_global_burst: u64,
    /// New sources per second that mean a spoofed-source flood (0: never
    /// fall back); then new sources share aggregate budgets per destination
    /// port and per source prefix of `fallback_pps` (and `fallback_burst`).
    #[serde(default)]
    pub spoof_threshold: u64,
    #[serde(default)]
    pub fallback_pps: u64,
    #[serde(default)]
    pub fallback_burst: u64,
    /// The reflection guard: UDP from `reflect_sources` to
    /// `service_ports` is dropped. On by default.
    #[serde(default = "yes")]
    pub reflect: bool,
    #[serde(default = "default_reflectors")]
    pub reflect_sources: Vec<u16>,
    /// The service ports given explicitly, as inclusive ranges (ports
    /// that only clients' sockets hold are spared all the same). Empty,
    /// the default: the profile is read from the host (see
    /// [`ReflectProfile`]).
    #[serde(default)]
    pub service_ports: Vec<(u16, u16)>,
    /// What the profile in force was built from; the daemon fills it in,
    /// and ignores it in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflect_profile: Option<ReflectProfile>,
}

/// The reflection guard's profile as the daemon last read it from the
/// host. UDP from 123 to 123 (symmetric NTP) is never reflection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflectProfile {
    /// The host's ephemeral range, `net.ipv4.ip_local_port_range`.
    pub ephemeral: (u16, u16),
    /// Ports with a listening UDP socket (one without a peer).
    pub listening: Vec<u16>,
    /// Ports held only by client sockets (connected to a peer): exempt
    /// from the explicit service ports, and never listening ones.
    pub clients: Vec<u16>,
    /// The service ports in force, as inclusive ranges: the explicit ones
    /// but the clients', or else the listening ports outside the
    /// ephemeral range.
    pub service_ports: Vec<(u16, u16)>,
    /// Why the host could not be read, if it could not (the profile then
    /// falls back to every port outside Linux's default ephemeral range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn default_v6_prefix_len() -> u8 {
    64
}

fn yes() -> bool {
    true
}

/// Well-known UDP reflectors and amplifiers: QOTD, chargen, DNS, portmap,
/// NTP, `NetBIOS`, SNMP, CLDAP, SSDP, WS-Discovery, memcached.
#[must_use]
pub fn default_reflectors() -> Vec<u16> {
    vec![17, 19, 53, 111, 123, 137, 161, 389, 1900, 3702, 11211]
}

/// The service ports of a host that cannot be read: every port outside
/// Linux's default ephemeral range (32768-60999). Profiles stored before
/// the profile was read from the host hold exactly these.
#[must_use]
pub fn default_service_ports() -> Vec<(u16, u16)> {
    vec![(0, 32767), (61000, 65535)]
}

impl Default for LimitsView {
    /// Everything off but the reflection guard, with its default profile.
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: false,
            pps: 0,
            pps_burst: 0,
            bps: 0,
            bps_burst: 0,
            v6_prefix_len: default_v6_prefix_len(),
            block_after_ms: 0,
            block_ttl_ms: 0,
            syn_pps: 0,
            syn_burst: 0,
            syn_global_pps: 0,
            syn_global_burst: 0,
            spoof_threshold: 0,
            fallback_pps: 0,
            fallback_burst: 0,
            reflect: true,
            reflect_sources: default_reflectors(),
            service_ports: Vec::new(),
            reflect_profile: None,
        }
    }
}

impl LimitsView {
    /// The kernel's form of these settings (the loader adds its own flags,
    /// such as [`limit_flags::COARSE_CLOCK`]).
    #[must_use]
    pub fn kernel(&self) -> Limits {
        let LimitsView {
            enabled,
            dry_run,
            pps,
            pps_burst,
            bps,
            bps_burst,
            v6_prefix_len,
            block_after_ms,
            block_ttl_ms,
            syn_pps,
            syn_burst,
            syn_global_pps,
            syn_global_burst,
            spoof_threshold,
            fallback_pps,
            fallback_burst,
            reflect,
            reflect_sources: _,
            service_ports: _,
            reflect_profile: _,
        } = *self;
        let mut flags = 0;
        if enabled {
            flags |= limit_flags::ENABLED;
        }
        if syn_pps > 0 || syn_global_pps > 0 {
            flags |= limit_flags::SYN;
        }
        if reflect {
            flags |= limit_flags::REFLECT;
        }
        if dry_run && flags != 0 {
            flags |= limit_flags::DRY_RUN;
        }
        Limits {
            flags,
            v6_prefix_len: u32::from(v6_prefix_len),
            pps,
            pps_burst,
            bps,
            bps_burst,
            block_after_ns: block_after_ms.saturating_mul(1_000_000),
            block_ttl_ns: block_ttl_ms.saturating_mul(1_000_000),
            syn_pps,
            syn_burst,
            syn_global_pps,
            syn_global_burst,
            spoof_threshold,
            fallback_pps,
            fallback_burst,
        }
    }

    /// The per-source limit, its auto-block, the spoofed-source fallback
    /// and the SYN guard, one line each, as `limit show` prints them (the
    /// reflection guard's lines are its own).
    #[must_use]
    pub fn guard_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.dry_run {
            lines.push("DRY RUN: the guards count (would_limit) and drop nothing".to_owned());
        }
        if self.enabled {
            let mut parts = Vec::new();
            if self.pps > 0 {
                parts.push(format!("{} packets/s (burst {})", self.pps, self.pps_burst));
            }
            if self.bps > 0 {
                parts.push(format!("{} bytes/s (burst {})", self.bps, self.bps_burst));
            }
            lines.push(format!(
                "per-source limit: {}; IPv6 per /{}",
                parts.join(", "),
                self.v6_prefix_len
            ));
            let span = |ms: u64| humantime::format_duration(Duration::from_millis(ms));
            lines.push(if self.block_after_ms > 0 {
                format!(
                    "auto-block after {} over the limit, for {}",
                    span(self.block_after_ms),
                    span(self.block_ttl_ms)
                )
            } else {
                "no auto-block".to_owned()
            });
            if self.spoof_threshold > 0 {
                lines.push(format!(
                    "spoofed-source fallback above {} new sources/s: {} packets/s (burst {}) per destination port and per source prefix",
                    self.spoof_threshold, self.fallback_pps, self.fallback_burst
                ));
            }
        } else {
            lines.push("per-source limit: off".to_owned());
        }
        let rate = |pps: u64| {
            if pps > 0 {
                format!("{pps}/s")
            } else {
                "no limit".to_owned()
            }
        };
        lines.push(match (self.syn_pps, self.syn_global_pps) {
            (0, 0) => "SYN guard: off".to_owned(),
            (per_source, host) => format!(
                "SYN guard: {} per source (burst {}), {} for the host (burst {})",
                rate(per_source),
                self.syn_burst,
                rate(host),
                self.syn_global_burst,
            ),
        });
        if let Some(clock) = self.clock() {
            lines.push(clock.to_owned());
        }
        lines
    }

    /// Which clock the per-source limit and the SYN guard read, as the
    /// loader chooses it ([`Limits::fits_coarse_clock`]), if either runs.
    #[must_use]
    pub fn clock(&self) -> Option<&'static str> {
        let kernel = self.kernel();
        if kernel.flags & (limit_flags::ENABLED | limit_flags::SYN) == 0 {
            return None;
        }
        Some(if kernel.fits_coarse_clock() {
            "clock: the kernel's coarse clock (every budget's burst holds 10 ms of its rate)"
        } else {
            "clock: the precise clock, about 40 ns a frame more on a virtual machine (a budget's \
             burst holds less than 10 ms of its rate, or --block-after is under 100 ms)"
        })
    }

    /// Why these limits cannot be put in force, if they cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let Self {
            enabled,
            dry_run: _,
            pps,
            pps_burst,
            bps,
            bps_burst,
            v6_prefix_len,
            block_after_ms,
            block_ttl_ms,
            syn_pps,
            syn_burst,
            syn_global_pps,
            syn_global_burst,
            spoof_threshold,
            fallback_pps,
            fallback_burst,
            reflect: _,
            reflect_sources: _,
            ref service_ports,
            reflect_profile: _,
        } = *self;
        if spoof_threshold > 0 && (fallback_pps == 0 || fallback_burst == 0) {
            return Some("the spoofed-source fallback needs a budget (--fallback-pps)".into());
        }
        if fallback_pps > 1_000_000_000 || fallback_burst > 1_000_000_000_000 {
            return Some("fallback budgets above 1e9/s (burst 1e12) are not supported".into());
        }
        if service_ports.iter().any(|(lo, hi)| lo > hi) {
            return Some("a service port range runs backwards".into());
        }
        if syn_pps > 1_000_000_000 || syn_global_pps > 1_000_000_000 {
            return Some("SYN rates above 1e9 per second are not supported".into());
        }
        if (syn_pps > 0 && syn_burst == 0) || (syn_global_pps > 0 && syn_global_burst == 0) {
            return Some("a SYN burst must be at least 1".into());
        }
        if syn_burst > 1_000_000_000_000 || syn_global_burst > 1_000_000_000_000 {
            return Some("bursts above 1e12 are not supported".into());
        }
        if !enabled {
            return None;
        }
        if pps == 0 && bps == 0 {
            return Some("a limit needs a packet rate (--pps) or a byte rate (--bps)".into());
        }
        if pps > 1_000_000_000 || bps > 100_000_000_000 {
            return Some("rates above 1e9 packets/s or 1e11 bytes/s are not supported".into());
        }
        if (pps > 0 && pps_burst == 0) || (bps > 0 && bps_burst == 0) {
            return Some("a burst must be at least 1".into());
        }
        if pps_burst > 1_000_000_000_000 || bps_burst > 1_000_000_000_000 {
            return Some("bursts above 1e12 are not supported".into());
        }
        if v6_prefix_len > 128 {
            return Some(format!("--v6-prefix {v6_prefix_len} is longer than 128"));
        }
        if block_after_ms > 0 && block_ttl_ms == 0 {
            return Some("auto-blocking (--block-after) needs --block-ttl".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::LimitsView;

    /// `limit show` names the clock the loader picks: none while neither
    /// the per-source limit nor the SYN guard runs; the coarse one while
    /// every burst holds a tick; the precise one for a short burst or a
    /// short `--block-after`.
    #[test]
    fn the_clock_shown_is_the_one_the_loader_picks() {
        let clock = |view: LimitsView| view.clock().map(|c| c.split(',').next().unwrap_or(c));
        assert_eq!(clock(LimitsView::default()), None);
        let limit = |pps, pps_burst, block_after_ms| LimitsView {
            enabled: true,
            pps,
            pps_burst,
            block_after_ms,
            block_ttl_ms: 60_000,
            ..LimitsView::default()
        };
        let coarse =
            Some("clock: the kernel's coarse clock (every budget's burst holds 10 ms of its rate)");
        let precise = Some("clock: the precise clock");
        assert_eq!(clock(limit(1_000, 1_000, 0)), coarse);
        assert_eq!(clock(limit(100_000, 1_000, 0)), coarse);
        assert_eq!(clock(limit(100_000, 999, 0)), precise);
        assert_eq!(clock(limit(1_000, 1_000, 100)), coarse);
        assert_eq!(clock(limit(1_000, 1_000, 99)), precise);
        let syn = LimitsView {
            syn_pps: 20,
            syn_burst: 20,
            syn_global_pps: 5000,
            syn_global_burst: 5000,
            ..LimitsView::default()
        };
        assert_eq!(clock(syn.clone()), coarse);
        assert_eq!(
            clock(LimitsView {
                syn_global_burst: 49,
                ..syn
            }),
            precise
        );
    }
}
