//! `shield auto`: the shield armed on its ports, switched on when what it
//! would answer there (SYNs, UDP from unverified sources) comes faster
//! than a threshold, and off after a calm period below half of it. Armed,
//! the program counts those frames and the host's peers are verified
//! already, so that the clients who were there before a flood are
//! verified when it begins.

use std::time::{Duration, Instant};

use crate::api::ShieldAuto;

use super::core::Core;

/// What auto watches: the switches so far and the rate.
#[derive(Clone, Debug, Default)]
pub(super) struct Watch {
    /// Times auto switched the shield on since the daemon started.
    pub(super) switches: u64,
    /// SYNs and unverified datagrams a second to the shield's ports, at
    /// the last tick.
    pub(super) rate: u64,
    /// The count and when it was read, at the last tick.
    last: Option<(Instant, u64)>,
    /// Since when the rate has been below half the threshold, while on.
    calm_since: Option<Instant>,
}

impl Core {
    /// Reads the rate auto watches and switches the shield by it; called
    /// about once a second.
    pub(super) fn shield_auto_tick(&mut self) {
        let Some(auto) = self.shield.auto.filter(|_| self.shield.enabled) else {
            return;
        };
        let Ok(count) = self.filter.limiter().shield_watched() else {
            return;
        };
        let now = Instant::now();
        let watch = &mut self.shield.watch;
        // A rate over a second at least: ticks may come closer.
        if watch
            .last
            .is_some_and(|(then, _)| now.duration_since(then) < Duration::from_secs(1))
        {
            return;
        }
        let rate = match watch.last.replace((now, count)) {
            Some((then, before)) => {
                let secs = now.duration_since(then).as_secs_f64();
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "a rate of frames a second"
                )]
                let rate = (count.saturating_sub(before) as f64 / secs) as u64;
                rate
            }
            None => return,
        };
        watch.rate = rate;
        if !self.shield.active {
            if rate > auto.above_pps {
                self.switch_shield(true, rate, auto);
            }
            return;
        }
        if rate * 2 >= auto.above_pps {
            self.shield.watch.calm_since = None;
            return;
        }
        let calm_since = *self.shield.watch.calm_since.get_or_insert(now);
        if now.duration_since(calm_since).as_secs() >= auto.calm_secs {
            self.switch_shield(false, rate, auto);
        }
    }

    /// Puts the shield in force (`on`) or takes it out, as auto decided.
    fn switch_shield(&mut self, on: bool, rate: u64, auto: ShieldAuto) {
        let mut state = self.shield.clone();
        state.active = on;
        state.watch.calm_since = None;
        if on {
            state.watch.switches += 1;
        }
        match self.apply_shield(&mut state) {
            Ok(()) => {
                if on {
                    log::warn!(
                        "shield auto: ON for TCP ports {:?} and UDP ports {:?}: {rate} SYNs and \
                         unverified datagrams a second, over {} (switch {})",
                        state.tcp_ports,
                        state.udp_ports,
                        auto.above_pps,
                        state.watch.switches
                    );
                } else {
                    log::warn!(
                        "shield auto: off after {} s below {} a second (now {rate})",
                        auto.calm_secs,
                        auto.above_pps / 2
                    );
                }
                self.shield = state;
                // The host settings it took or gave back must survive a
                // crash.
                self.journal_shield();
            }
            Err(message) => {
                log::error!(
                    "shield auto: switching {}: {message}",
                    if on { "on" } else { "off" }
                );
                // The program as it was.
                let mut back = self.shield.clone();
                back.saved.clone_from(&state.saved);
                if let Err(message) = self.apply_shield(&mut back) {
                    log::error!("putting the shield back as it was: {message}");
                }
                self.shield = back;
            }
        }
    }
}
