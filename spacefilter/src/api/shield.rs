//! The shield's settings, as a client sends them and reads them back, and
//! the verified sources.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// UDP from unverified sources to the shielded UDP ports, a second, unless
/// set: room for new clients' first packets, far below a flood.
pub const DEFAULT_UNVERIFIED_PPS: u32 = 2_000;
/// How long a proof holds a source verified, unless set (the CLI's "10m").
pub const DEFAULT_VERIFIED_IDLE_SECS: u64 = 600;
/// The longest a proof, or an admission, may hold a source verified.
pub const MAX_VERIFIED_SECS: u64 = 7 * 24 * 3600;
/// How long `spacefilter admit` holds a source verified, unless set.
pub const DEFAULT_ADMIT_SECS: u64 = 3600;
/// The largest budget for unverified UDP a second.
pub const MAX_UNVERIFIED_PPS: u32 = 10_000_000;

fn default_unverified_pps() -> u32 {
    DEFAULT_UNVERIFIED_PPS
}

fn default_verified_idle_secs() -> u64 {
    DEFAULT_VERIFIED_IDLE_SECS
}

/// The shield: on its TCP ports, the program answers SYNs with SYN cookies
/// and lets through only segments of connections the host has, or that
/// carry a valid cookie; on its UDP ports, verified sources pass and others
/// share a small budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldView {
    pub enabled: bool,
    /// Inclusive ranges of TCP ports under the shield.
    #[serde(default)]
    pub tcp_ports: Vec<(u16, u16)>,
    /// Inclusive ranges of UDP ports under the shield.
    #[serde(default)]
    pub udp_ports: Vec<(u16, u16)>,
    /// UDP from unverified sources to the shielded UDP ports, packets a
    /// second, all sources together.
    #[serde(default = "default_unverified_pps")]
    pub unverified_pps: u32,
    /// How long a proof holds a source verified.
    #[serde(default = "default_verified_idle_secs")]
    pub verified_idle_secs: u64,
    /// `shield auto`: the shield is armed, and switches itself on and off
    /// by the rate of what it would answer on its ports.
    #[serde(default)]
    pub auto: Option<ShieldAuto>,
    /// In replies: whether the shield is in force now (always, while on;
    /// while the rate says so, in auto), how often auto switched it on,
    /// and the rate it watches (SYNs and UDP from unverified sources to
    /// its ports, a second).
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub auto_switches: u64,
    #[serde(default)]
    pub watched_pps: u64,
    /// What the daemon made of it (in replies only): the MSS and window
    /// scale its SYN-ACKs offer, and the host settings it changed, each
    /// as `name=value (was old)`.
    #[serde(default)]
    pub mss: u16,
    #[serde(default)]
    pub wscale: u8,
    #[serde(default)]
    pub host_settings: Vec<String>,
    /// Why SYN-ACKs offer less than a client asks (timestamps off on the
    /// host: no window scaling or SACK on connections opened by a cookie),
    /// and why sources are not verified by the host's traffic.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The verified sources (in replies only).
    #[serde(default)]
    pub verified: VerifiedView,
}

impl Default for ShieldView {
    fn default() -> Self {
        Self {
            enabled: false,
            tcp_ports: Vec::new(),
            udp_ports: Vec::new(),
            unverified_pps: DEFAULT_UNVERIFIED_PPS,
            verified_idle_secs: DEFAULT_VERIFIED_IDLE_SECS,
            auto: None,
            active: false,
            auto_switches: 0,
            watched_pps: 0,
            mss: 0,
            wscale: 0,
            host_settings: Vec::new(),
            notes: Vec::new(),
            verified: VerifiedView::default(),
        }
    }
}

impl ShieldView {
    /// The settings alone, without what replies add (the state, the
    /// counts, what the host made of them).
    #[must_use]
    pub fn settings(&self) -> Self {
        Self {
            enabled: self.enabled,
            tcp_ports: self.tcp_ports.clone(),
            udp_ports: self.udp_ports.clone(),
            unverified_pps: self.unverified_pps,
            verified_idle_secs: self.verified_idle_secs,
            auto: self.auto,
            ..Self::default()
        }
    }

    /// Why these settings cannot be put in force, if they cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        if self.enabled && self.tcp_ports.is_empty() && self.udp_ports.is_empty() {
            return Some(
                "the shield needs ports: --ports tcp/PORT[-PORT],udp/PORT[-PORT],...".into(),
            );
        }
        for &(lo, hi) in self.tcp_ports.iter().chain(&self.udp_ports) {
            if lo > hi {
                return Some(format!("the port range {lo}-{hi} runs backwards"));
            }
            if hi == 0 {
                return Some("port 0 cannot be shielded".into());
            }
        }
        if self.tcp_ports.len() + self.udp_ports.len() > 64 {
            return Some("at most 64 port ranges can be shielded".into());
        }
        if self.unverified_pps > MAX_UNVERIFIED_PPS {
            return Some(format!(
                "--unverified-pps {} is more than {MAX_UNVERIFIED_PPS}; the budget is for new \
                 clients' first packets, far below a flood",
                self.unverified_pps
            ));
        }
        if let Some(auto) = &self.auto {
            if auto.above_pps == 0 {
                return Some(
                    "--above must be at least 1 (SYNs and unverified datagrams a second)".into(),
                );
            }
            if auto.calm_secs == 0 || auto.calm_secs > 24 * 3600 {
                return Some(format!(
                    "--calm must be 1 s to 1 day, not {} s",
                    auto.calm_secs
                ));
            }
        }
        if self.verified_idle_secs == 0 || self.verified_idle_secs > MAX_VERIFIED_SECS {
            return Some(format!(
                "--verified-idle must be 1 s to 7 days, not {} s",
                self.verified_idle_secs
            ));
        }
        None
    }
}

/// When `shield auto` switches the shield: on when what it would answer on
/// its ports (SYNs, UDP from unverified sources) passes `above_pps`; off
/// after `calm_secs` below half of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldAuto {
    pub above_pps: u64,
    pub calm_secs: u64,
}

/// The verified sources: how many now, by their last proof (`cookie`,
/// `established`, `replied`, `admitted`), and how many each proof verified
/// anew since the program was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedView {
    pub now: u64,
    #[serde(default)]
    pub now_by_proof: BTreeMap<String, u64>,
    #[serde(default)]
    pub proven: BTreeMap<String, u64>,
    /// Why the host's own traffic does not verify its peers, if it does
    /// not (the egress program is missing on some interface).
    #[serde(default)]
    pub egress_problem: Option<String>,
}

/// What `admit` or `admit --revoke` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitView {
    pub addr: IpAddr,
    /// Seconds the source stays verified (0 after a revoke).
    pub verified_for_secs: u64,
    /// Whether it was verified before.
    pub was_verified: bool,
}

/// Why `addr` cannot be admitted, if it cannot: only a single unicast
/// address of a source can be.
#[must_use]
pub fn admit_problem(addr: IpAddr, ttl_secs: u64) -> Option<String> {
    if let IpAddr::V6(v6) = addr
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Some(format!(
            "{addr} is an IPv4-mapped IPv6 address, which no frame carries as its source; \
             admit {v4} instead"
        ));
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Some(format!(
            "{addr} is not a unicast source address; admit the address a client sends from"
        ));
    }
    if let IpAddr::V4(v4) = addr
        && v4.is_broadcast()
    {
        return Some(format!("{addr} is a broadcast address, not a source"));
    }
    if ttl_secs == 0 || ttl_secs > MAX_VERIFIED_SECS {
        return Some(format!("--ttl must be 1 s to 7 days, not {ttl_secs} s"));
    }
    None
}
