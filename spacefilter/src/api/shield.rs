//! The shield's settings, as a client sends them and reads them back.

use serde::{Deserialize, Serialize};

/// The shield: on its ports, the program answers SYNs with SYN cookies and
/// lets through only segments of connections the host has, or that carry
/// a valid cookie.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldView {
    pub enabled: bool,
    /// Inclusive ranges of TCP ports under the shield.
    #[serde(default)]
    pub tcp_ports: Vec<(u16, u16)>,
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
    /// host: no window scaling or SACK on connections opened by a cookie).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl ShieldView {
    /// Why these settings cannot be put in force, if they cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        if self.enabled && self.tcp_ports.is_empty() {
            return Some("the shield needs ports: --ports tcp/PORT[-PORT],...".into());
        }
        for &(lo, hi) in &self.tcp_ports {
            if lo > hi {
                return Some(format!("the port range {lo}-{hi} runs backwards"));
            }
            if hi == 0 {
                return Some("port 0 cannot be shielded".into());
            }
        }
        if self.tcp_ports.len() > 64 {
            return Some("at most 64 port ranges can be shielded".into());
        }
        None
    }
}
