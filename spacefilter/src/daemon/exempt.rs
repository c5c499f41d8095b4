//! The sources never auto-blocked (see
//! [`lockout::auto_block_exempt`]): put in the program at start, when the
//! guards' settings change (IPv6 sources are grouped by their prefix
//! length) and at each reconciliation, since addresses, gateways and
//! resolvers change while the daemon runs.

use std::fs;

use super::core::Core;
use crate::{bpf::limiter_key_of, error_chain, net::lockout};

/// Where the host's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl Core {
    /// Puts the current exemptions from auto-blocks in force, if they
    /// changed.
    pub(super) fn refresh_auto_exempt(&mut self) {
        let conf = fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let exempt = lockout::auto_block_exempt(&self.ifaces, &conf);
        let mut keys: Vec<[u8; 16]> = exempt
            .iter()
            .map(|p| limiter_key_of(p.addr, self.limits.v6_prefix_len))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys == self.auto_exempt {
            return;
        }
        match self.filter.limiter().set_exempt(&keys) {
            Ok(()) => {
                let named: Vec<String> = exempt
                    .iter()
                    .map(|p| format!("{} ({})", p.addr, p.what))
                    .collect();
                log::info!("never auto-blocked: {}", named.join(", "));
                self.auto_exempt = keys;
            }
            Err(err) => log::error!(
                "exempting this host's addresses, gateways and resolvers from auto-blocks: {}",
                error_chain(&err)
            ),
        }
    }
}
