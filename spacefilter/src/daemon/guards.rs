//! The flood guards: their settings, the auto-blocks the program makes,
//! and the spoofed-source fallback's switches.

use std::{net::Ipv6Addr, time::Duration};

use super::{Peer, Refusal, core::Core};
use crate::{
    api::{LimitsView, ReflectProfile, default_reflectors, default_service_ports},
    bpf::{limiter_prefix, monotonic_ns},
    error_chain,
    net::{
        List, Prefix,
        host_ports::{DEFAULT_EPHEMERAL, HostPorts},
    },
    store::{self, Meta, Op, Rule, now_ms},
};

/// Auto-blocks logged one by one from one batch; the rest are counted.
const LOGGED_AUTO_BLOCKS: usize = 10;

impl Core {
    /// Puts a new rate limit in force and records it.
    pub(super) fn set_limits(
        &mut self,
        limits: LimitsView,
        peer: Peer,
    ) -> Result<LimitsView, Refusal> {
        if let Some(problem) = limits.problem() {
            return Err(Refusal::bad_input(problem));
        }
        // Journal first, then the kernel; a kernel write that fails is
        // undone in the journal too.
        let op = Op::Limits {
            limits: record(&limits),
        };
        self.store
            .append(&op, &self.rules)
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        if let Err(err) = self.filter.limiter().set(limits.kernel()) {
            let _ = self.filter.limiter().set(self.limits.kernel());
            let undo = Op::Limits {
                limits: record(&self.limits),
            };
            if let Err(undo_err) = self.store.append(&undo, &self.rules) {
                log::error!(
                    "journaling the undoing of a failed limit change: {}",
                    error_chain(&undo_err)
                );
            }
            return Err(Refusal::failed(error_chain(&err)));
        }
        let mut limits = LimitsView {
            reflect_profile: None,
            ..limits
        };
        let profile = reflect_profile(&limits.service_ports);
        self.filter
            .limiter()
            .set_port_bits(
                &limits.reflect_sources,
                &profile.service_ports,
                self.shield.marked_ports(),
            )
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        log::info!(
            "flood guards set: {}; reflection guard {}; asked by {peer}",
            limits.guard_lines().join("; "),
            if limits.reflect { "on" } else { "off" }
        );
        limits.reflect_profile = Some(profile);
        self.limits = limits.clone();
        self.refresh_auto_exempt();
        if let Err(message) =
            self.configure_verify(self.shield.enabled, self.shield.verified_idle_secs)
        {
            log::error!("verified sources: {message}");
        }
        Ok(limits)
    }

    /// The guards' settings, with the reflection guard's profile read
    /// from the host again (and put in force if it changed).
    pub(super) fn limits(&mut self) -> LimitsView {
        if let Err(message) = self.refresh_reflect_profile() {
            log::error!("the reflection guard's profile: {message}");
        }
        self.limits.clone()
    }

    /// The service ports in force.
    pub(super) fn service_ports(&self) -> Vec<(u16, u16)> {
        self.limits
            .reflect_profile
            .as_ref()
            .map_or_else(default_service_ports, |p| p.service_ports.clone())
    }

    /// Reads the host's ports again; rewrites the ports whose marks change
    /// (the listening sockets and clients' ports come and go).
    pub(super) fn refresh_reflect_profile(&mut self) -> Result<(), String> {
        let profile = reflect_profile(&self.limits.service_ports);
        if let Some(problem) = &profile.problem {
            log::warn!("the reflection guard's profile: {problem}");
        }
        if self.limits.reflect_profile.as_ref() == Some(&profile) {
            return Ok(());
        }
        self.filter
            .limiter()
            .set_port_bits(
                &self.limits.reflect_sources,
                &profile.service_ports,
                self.shield.marked_ports(),
            )
            .map_err(|err| error_chain(&err))?;
        self.limits.reflect_profile = Some(profile);
        Ok(())
    }

    /// Records auto-blocks the program made (from its events, or found in
    /// its map), so that they are listed, persisted and expired like any
    /// rule: `(prefix, end on the monotonic clock)` each, in one journal
    /// record (one fsync for a whole ring buffer's worth).
    pub(super) fn adopt_autos(&mut self, blocks: &[(Prefix, u64)]) {
        let now_mono = monotonic_ns();
        let now = now_ms();
        let mut rules = Vec::new();
        for &(prefix, until_ns) in blocks {
            if until_ns <= now_mono
                || self.rules.contains_key(&(List::Auto, prefix))
                || rules.iter().any(|r: &Rule| r.prefix == prefix)
            {
                continue;
            }
            if rules.len() < LOGGED_AUTO_BLOCKS {
                log::warn!(
                    "auto-blocked {prefix} for {} (over its rate limit)",
                    humantime::format_duration(Duration::from_secs(
                        (until_ns - now_mono) / 1_000_000_000
                    ))
                );
            }
            rules.push(Rule {
                list: List::Auto,
                prefix,
                meta: Meta {
                    origin: store::Origin::Auto,
                    comment: Some("over its rate limit".to_owned()),
                    expires_at_ms: Some(now + (until_ns - now_mono) / 1_000_000),
                    added_at_ms: now,
                },
            });
        }
        if rules.is_empty() {
            return;
        }
        if rules.len() > LOGGED_AUTO_BLOCKS {
            log::warn!(
                "auto-blocked {} more sources (over their rate limit)",
                rules.len() - LOGGED_AUTO_BLOCKS
            );
        }
        self.auto_blocks += rules.len() as u64;
        if let Some(sink) = &self.auto_sink {
            let told = rules
                .iter()
                .map(|r| {
                    let left = r.meta.expires_at_ms.unwrap_or(now).saturating_sub(now);
                    (r.prefix, Duration::from_millis(left))
                })
                .collect();
            if sink.send(told).is_err() {
                self.auto_sink = None;
            }
        }
        for rule in &rules {
            self.expiry
                .put(rule.list, rule.prefix, rule.meta.expires_at_ms);
        }
        let op = Op::Put { rules };
        op.apply(&mut self.rules);
        if let Err(err) = self.store.append(&op, &self.rules) {
            // Still in force in the program, which expires them itself.
            log::error!("recording auto-blocks: {}", error_chain(&err));
        }
    }

    /// Adopts auto-blocks in the program's map that no event announced (a
    /// full ring buffer drops events, never blocks); forgets ended blocks
    /// that no rule's expiry removes, and refreshes the sources never
    /// auto-blocked.
    pub(super) fn reconcile_auto(&mut self) {
        let v6_prefix_len = u32::from(self.limits.v6_prefix_len);
        let blocks: Vec<(Prefix, u64)> = self
            .filter
            .limiter()
            .auto_blocks()
            .into_iter()
            .map(|(key, block)| {
                let v6 = Ipv6Addr::from(key).to_ipv4_mapped().is_none();
                (limiter_prefix(key, v6_prefix_len, v6), block.until_ns)
            })
            .collect();
        self.adopt_autos(&blocks);
        if let Err(err) = self.filter.limiter().forget_ended_auto(monotonic_ns()) {
            log::error!("forgetting ended auto-blocks: {}", error_chain(&err));
        }
        self.refresh_auto_exempt();
    }

    /// Logs each switch to the spoofed-source fallback.
    pub(super) fn report_spoof_fallback(&mut self) {
        let Ok(state) = self.filter.limiter().spoof_state() else {
            return;
        };
        if state.switches > self.spoof_switches {
            log::warn!(
                "spoofed-source flood: new sources arrive faster than {}/s; new sources now share \
                 aggregate budgets of {}/s per destination port and per source prefix \
                 (switch {} since start)",
                self.limits.spoof_threshold,
                self.limits.fallback_pps,
                state.switches
            );
            self.spoof_switches = state.switches;
        }
    }
}

/// The guards' settings as the store keeps them.
fn record(view: &LimitsView) -> store::Guards {
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
        ref reflect_sources,
        ref service_ports,
        reflect_profile: _,
    } = *view;
    store::Guards {
        enabled,
        dry_run,
        pps,
        pps_burst,
        bps,
        bps_burst,
        v6_prefix_len: Some(v6_prefix_len),
        block_after_ms,
        block_ttl_ms,
        syn_pps,
        syn_burst,
        syn_global_pps,
        syn_global_burst,
        spoof_threshold,
        fallback_pps,
        fallback_burst,
        reflect: Some(reflect),
        reflect_sources: Some(reflect_sources.clone()),
        service_ports: Some(service_ports.clone()),
    }
}

/// Stored settings as the protocol shows them; what an older file lacks
/// takes its default.
pub(super) fn view(stored: store::Guards) -> LimitsView {
    let store::Guards {
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
        reflect_sources,
        service_ports,
    } = stored;
    let defaults = LimitsView::default();
    LimitsView {
        enabled,
        dry_run,
        pps,
        pps_burst,
        bps,
        bps_burst,
        v6_prefix_len: v6_prefix_len.unwrap_or(defaults.v6_prefix_len),
        block_after_ms,
        block_ttl_ms,
        syn_pps,
        syn_burst,
        syn_global_pps,
        syn_global_burst,
        spoof_threshold,
        fallback_pps,
        fallback_burst,
        reflect: reflect.unwrap_or(defaults.reflect),
        reflect_sources: reflect_sources.unwrap_or_else(default_reflectors),
        // Settings stored before the profile was read from the host hold
        // the old fixed default: they take the host's profile now.
        service_ports: service_ports
            .filter(|ports| *ports != default_service_ports())
            .unwrap_or_default(),
        reflect_profile: None,
    }
}

/// The reflection guard's profile for `explicit` service ports (none: read
/// from the host). A host that cannot be read gets Linux's default
/// ephemeral range, with its problem said.
pub(super) fn reflect_profile(explicit: &[(u16, u16)]) -> ReflectProfile {
    match HostPorts::read() {
        Ok(host) => ReflectProfile {
            ephemeral: host.ephemeral,
            listening: host.listening.iter().copied().collect(),
            clients: host.clients.iter().copied().collect(),
            service_ports: host.service_ports(explicit),
            problem: None,
        },
        Err(err) => ReflectProfile {
            ephemeral: DEFAULT_EPHEMERAL,
            listening: Vec::new(),
            clients: Vec::new(),
            service_ports: if explicit.is_empty() {
                default_service_ports()
            } else {
                explicit.to_vec()
            },
            problem: Some(format!("reading the host's UDP ports: {err}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings stored with the old fixed service ports take the host's
    /// profile; explicit ones stay; a round trip keeps them.
    #[test]
    fn stored_service_ports_of_old_are_read_from_the_host() {
        let stored = |ports: Vec<(u16, u16)>| store::Guards {
            service_ports: Some(ports),
            ..store::Guards::default()
        };
        assert!(
            view(stored(default_service_ports()))
                .service_ports
                .is_empty()
        );
        assert!(view(store::Guards::default()).service_ports.is_empty());
        let explicit = view(stored(vec![(443, 443)]));
        assert_eq!(explicit.service_ports, [(443, 443)]);
        assert_eq!(view(record(&explicit)).service_ports, [(443, 443)]);
    }
}
