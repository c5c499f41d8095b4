//! The shield: its ports, the program's settings for it (the MSS and the
//! window scale its SYN-ACKs offer, learnt from the host), and the host
//! settings it needs while it is on:
//!
//! - `net.ipv4.tcp_syncookies = 2`: the cookie helper answers only then
//!   (at 1, only while the listener's queue overflows), and the kernel
//!   takes the cookies' ACKs;
//! - `net.ipv4.tcp_timestamps = 2` where it was 1: a cookie carries the
//!   client's window scale and SACK in the SYN-ACK's timestamp, which the
//!   kernel reads back only if it adds no per-connection offset to its
//!   timestamps (at 1 it adds a secret one).
//!
//! The old values are stored with the shield, put back when it is
//! switched off and when the daemon stops, and taken from the store after a
//! crash.

use std::net::IpAddr;

use spacefilter_common::{Shield, limit_flags, shield_flags};

use super::{Peer, Refusal, core::Core};
use crate::{
    api::{
        AdmitView, ShieldAuto, ShieldView, VerifiedView,
        shield::{DEFAULT_UNVERIFIED_PPS, DEFAULT_VERIFIED_IDLE_SECS, admit_problem},
    },
    bpf::{Shielded, monotonic_ns},
    error_chain,
    net::sysctl,
    store::{self, Op},
};

const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";

/// The shield as the daemon holds it.
#[derive(Clone, Debug)]
pub(super) struct ShieldState {
    pub(super) enabled: bool,
    pub(super) tcp_ports: Vec<(u16, u16)>,
    pub(super) udp_ports: Vec<(u16, u16)>,
    pub(super) unverified_pps: u32,
    pub(super) verified_idle_secs: u64,
    /// `shield auto`'s switching rates (none: plainly on).
    pub(super) auto: Option<ShieldAuto>,
    /// In force now: while enabled, always without auto, by the rate
    /// with it.
    pub(super) active: bool,
    /// Auto's state: switches, and the rate it watches.
    pub(super) watch: super::shield_auto::Watch,
    /// Host settings changed, with their old values.
    pub(super) saved: Vec<(String, String)>,
    /// What the program was given.
    pub(super) kernel: Shield,
    /// Limits of the host that cut what SYN-ACKs offer.
    pub(super) notes: Vec<String>,
}

impl Default for ShieldState {
    fn default() -> Self {
        Self {
            enabled: false,
            tcp_ports: Vec::new(),
            udp_ports: Vec::new(),
            unverified_pps: DEFAULT_UNVERIFIED_PPS,
            verified_idle_secs: DEFAULT_VERIFIED_IDLE_SECS,
            auto: None,
            active: false,
            watch: super::shield_auto::Watch::default(),
            saved: Vec::new(),
            kernel: Shield::default(),
            notes: Vec::new(),
        }
    }
}

impl ShieldState {
    pub(super) fn from_record(record: store::Shield) -> Self {
        let store::Shield {
            enabled,
            tcp_ports,
            udp_ports,
            unverified_pps,
            verified_idle_secs,
            auto,
            saved,
        } = record;
        let auto = auto.map(|a| ShieldAuto {
            above_pps: a.above_pps,
            calm_secs: a.calm_secs,
        });
        Self {
            enabled,
            tcp_ports,
            udp_ports,
            unverified_pps: unverified_pps.unwrap_or(DEFAULT_UNVERIFIED_PPS),
            verified_idle_secs: verified_idle_secs.unwrap_or(DEFAULT_VERIFIED_IDLE_SECS),
            // Auto starts armed: the rate switches it on.
            active: enabled && auto.is_none(),
            auto,
            saved,
            ..Self::default()
        }
    }

    fn record(&self) -> store::Shield {
        store::Shield {
            enabled: self.enabled,
            tcp_ports: self.tcp_ports.clone(),
            udp_ports: self.udp_ports.clone(),
            unverified_pps: Some(self.unverified_pps),
            verified_idle_secs: Some(self.verified_idle_secs),
            auto: self.auto.map(|a| store::ShieldAuto {
                above_pps: a.above_pps,
                calm_secs: a.calm_secs,
            }),
            saved: self.saved.clone(),
        }
    }

    /// The TCP and UDP ports the program marks as shielded (none while
    /// off; while armed too, so that it can watch them).
    pub(super) fn marked_ports(&self) -> Shielded<'_> {
        if self.enabled {
            Shielded {
                tcp: &self.tcp_ports,
                udp: &self.udp_ports,
            }
        } else {
            Shielded::default()
        }
    }

    fn view(&self) -> ShieldView {
        ShieldView {
            enabled: self.enabled,
            tcp_ports: self.tcp_ports.clone(),
            udp_ports: self.udp_ports.clone(),
            unverified_pps: self.unverified_pps,
            verified_idle_secs: self.verified_idle_secs,
            auto: self.auto,
            active: self.active,
            auto_switches: self.watch.switches,
            watched_pps: self.watch.rate,
            verified: VerifiedView::default(),
            mss: u16::try_from(self.kernel.mss_v4).unwrap_or(u16::MAX),
            wscale: u8::try_from(self.kernel.wscale).unwrap_or(u8::MAX),
            host_settings: self
                .saved
                .iter()
                .filter_map(|(name, old)| {
                    let now = sysctl::read(name).ok()?;
                    Some(format!("{name}={now} (was {old})"))
                })
                .collect(),
            notes: self.notes.clone(),
        }
    }
}

/// Sets the host settings the shield needs; returns those it changed with
/// their old values, `saved` (from an earlier run) first.
fn take_host(saved: &[(String, String)]) -> std::io::Result<Vec<(String, String)>> {
    let mut out = saved.to_vec();
    for (name, wanted, unless) in [
        (SYNCOOKIES, "2", &["2"][..]),
        (TIMESTAMPS, "2", &["0", "2"]),
    ] {
        let now = sysctl::read(name)?;
        if unless.contains(&now.as_str()) {
            continue;
        }
        sysctl::write(name, wanted)?;
        log::info!("shield: {name} set to {wanted} (was {now})");
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_owned(), now));
        }
    }
    Ok(out)
}

/// Puts back the host settings the shield changed.
fn give_back(saved: &[(String, String)]) {
    for (name, old) in saved {
        match sysctl::write(name, old) {
            Ok(()) => log::info!("shield: {name} put back to {old}"),
            Err(err) => log::error!("shield: putting {name} back to {old}: {err}"),
        }
    }
}

/// The program's settings for the shield, from the host's: what the
/// kernel will do with a connection opened from a cookie.
fn kernel_settings(
    state: &ShieldState,
    ifaces: &[String],
) -> std::io::Result<(Shield, Vec<String>)> {
    let mut notes = Vec::new();
    let on = |name| sysctl::read(name).map(|v| v != "0");
    let mut flags = if state.enabled && state.active {
        shield_flags::ON
    } else {
        0
    };
    if state.enabled && state.auto.is_some() {
        flags |= shield_flags::WATCH;
    }
    if on(TIMESTAMPS)? {
        flags |= shield_flags::TIMESTAMPS;
    } else {
        notes.push(
            "net.ipv4.tcp_timestamps is 0: connections opened from a cookie get no window \
             scaling and no SACK"
                .to_owned(),
        );
    }
    if on("net.ipv4.tcp_sack")? {
        flags |= shield_flags::SACK;
    }
    if on("net.ipv4.tcp_window_scaling")? {
        flags |= shield_flags::WSCALE;
    }
    // The kernel's window scale for a listener with default buffers
    // (tcp_select_initial_window): the largest receive space it may grow
    // to, as a shift above 64 KiB. A listener with SO_RCVBUF, or a route
    // with a window, may pick less.
    let space = sysctl::number("net.ipv4.tcp_rmem", 2)?
        .max(sysctl::number("net.core.rmem_max", 0)?)
        .min(u64::from(u16::MAX) << 14);
    let wscale = space.max(1).ilog2().saturating_sub(15).min(14);
    // The MSS the kernel would offer: the smallest MTU less the headers.
    let mtu = ifaces
        .iter()
        .filter_map(|iface| sysctl::mtu(iface).ok())
        .min()
        .unwrap_or(1500);
    Ok((
        Shield {
            flags,
            mss_v4: mtu.saturating_sub(40).max(536),
            mss_v6: mtu.saturating_sub(60).max(1220),
            wscale,
            unverified_pps: state.unverified_pps,
            // A quarter second's worth: as a flood begins, fewer of its
            // sources are answered before the budget runs over.
            unverified_burst: (state.unverified_pps / 4).max(state.unverified_pps.min(1)),
        },
        notes,
    ))
}

impl Core {
    /// Puts the shield in force: host settings, the program's settings,
    /// its ports. Used at start and on a change.
    pub(super) fn apply_shield(&mut self, state: &mut ShieldState) -> Result<(), String> {
        // SYN cookies need the host's settings (while in force); UDP ports
        // alone do not.
        let cookies = state.enabled && state.active && !state.tcp_ports.is_empty();
        if cookies {
            state.saved = take_host(&state.saved).map_err(|err| {
                format!("setting the host up for SYN cookies (as root, in this namespace): {err}")
            })?;
        }
        let (kernel, notes) = kernel_settings(state, &self.ifaces)
            .map_err(|err| format!("reading the host's TCP settings: {err}"))?;
        state.kernel = kernel;
        state.notes = notes;
        let service_ports = self.service_ports();
        self.filter
            .limiter()
            .set_port_bits(
                &self.limits.reflect_sources,
                &service_ports,
                state.marked_ports(),
            )
            .map_err(|err| error_chain(&err))?;
        self.filter
            .limiter()
            .set_shield(kernel)
            .map_err(|err| error_chain(&err))?;
        // Armed, the host's peers are verified already, before a flood.
        self.configure_verify(state.enabled, state.verified_idle_secs)?;
        if !cookies && !state.saved.is_empty() {
            give_back(&state.saved);
            state.saved.clear();
        }
        Ok(())
    }

    /// Changes the shield and records it.
    pub(super) fn set_shield(
        &mut self,
        view: ShieldView,
        peer: Peer,
    ) -> Result<ShieldView, Refusal> {
        if let Some(problem) = view.problem() {
            return Err(Refusal::bad_input(problem));
        }
        let before = self.shield.clone();
        let mut state = if view.enabled {
            // A change of settings keeps auto's state and count.
            let active =
                view.auto.is_none() || (before.enabled && before.auto.is_some() && before.active);
            ShieldState {
                enabled: true,
                tcp_ports: view.tcp_ports,
                udp_ports: view.udp_ports,
                unverified_pps: view.unverified_pps,
                verified_idle_secs: view.verified_idle_secs,
                auto: view.auto,
                active,
                watch: before.watch.clone(),
                saved: before.saved.clone(),
                ..ShieldState::default()
            }
        } else {
            // Off keeps the ports and budgets, for `shield show`.
            ShieldState {
                enabled: false,
                active: false,
                kernel: Shield::default(),
                notes: Vec::new(),
                ..before.clone()
            }
        };
        if let Err(message) = self.apply_shield(&mut state) {
            self.roll_back(before, &state);
            return Err(Refusal::failed(message));
        }
        let op = Op::Shield {
            shield: state.record(),
        };
        if let Err(err) = self.store.append(&op, &self.rules) {
            self.roll_back(before, &state);
            return Err(Refusal::failed(error_chain(&err)));
        }
        log::info!(
            "shield {} asked by {peer}",
            if state.enabled {
                format!(
                    "{} for TCP ports {:?} and UDP ports {:?} (unverified UDP {}/s, proofs \
                     hold {} s)",
                    state.auto.map_or_else(
                        || "on".to_owned(),
                        |a| format!(
                            "auto (on above {}/s, off after {} s calm)",
                            a.above_pps, a.calm_secs
                        )
                    ),
                    state.tcp_ports,
                    state.udp_ports,
                    state.unverified_pps,
                    state.verified_idle_secs
                )
            } else {
                "off".to_owned()
            }
        );
        self.shield = state;
        Ok(self.shield_view())
    }

    /// Puts the shield back as it was `before` a change that failed half
    /// way; `tried` holds the host settings the change took, which go
    /// back with the rest if the shield was off.
    fn roll_back(&mut self, before: ShieldState, tried: &ShieldState) {
        let mut back = before;
        back.saved.clone_from(&tried.saved);
        if let Err(message) = self.apply_shield(&mut back) {
            log::error!("putting the shield back as it was: {message}");
        }
        self.shield = back;
    }

    #[must_use]
    pub(super) fn shield(&self) -> ShieldView {
        self.shield_view()
    }

    /// The shield, with the verified sources.
    pub(super) fn shield_view(&self) -> ShieldView {
        let mut view = self.shield.view();
        view.verified = self.verified_view();
        view
    }

    /// The verified sources: counts by proof, now and since the program
    /// was loaded.
    pub(super) fn verified_view(&self) -> VerifiedView {
        let verifier = self.filter.verifier_ref();
        let now_by_proof: std::collections::BTreeMap<String, u64> = verifier
            .now(monotonic_ns())
            .into_iter()
            .map(|(how, count)| (how.to_owned(), count))
            .collect();
        VerifiedView {
            now: now_by_proof.values().sum(),
            now_by_proof,
            proven: verifier
                .proven()
                .unwrap_or_default()
                .into_iter()
                .map(|(how, count)| (how.to_owned(), count))
                .collect(),
            egress_problem: self.filter.egress_problem(),
        }
    }

    /// Whether the egress program records the host's peers (while the
    /// shield or a flood guard that reads verified sources is on), and how
    /// long a proof holds.
    pub(super) fn configure_verify(
        &mut self,
        shield_on: bool,
        idle_secs: u64,
    ) -> Result<(), String> {
        // The guards that read verified sources: the spoofed-source
        // fallback (with the rate limiter) and the host-wide SYN budget. The
        // reflection guard alone does not, and the egress program then
        // costs the host's traffic nothing but a test.
        let limits = self.limits.kernel();
        let record = shield_on
            || limits.flags & limit_flags::ENABLED != 0
            || (limits.flags & limit_flags::SYN != 0 && limits.syn_global_pps != 0);
        self.filter
            .verifier()
            .configure(record, idle_secs.saturating_mul(1_000_000_000))
            .map_err(|err| error_chain(&err))
    }

    /// Verifies `addr` on an application's word for `ttl_secs`.
    pub(super) fn admit(
        &mut self,
        addr: IpAddr,
        ttl_secs: u64,
        peer: Peer,
    ) -> Result<AdmitView, Refusal> {
        if let Some(problem) = admit_problem(addr, ttl_secs) {
            return Err(Refusal::bad_input(problem));
        }
        let now = monotonic_ns();
        // A longer verification in force is kept.
        let until = now
            .saturating_add(ttl_secs.saturating_mul(1_000_000_000))
            .max(
                self.filter
                    .verifier_ref()
                    .lookup(addr, now)
                    .map_or(0, |(until, _)| until),
            );
        let left_ms = until.saturating_sub(now) / 1_000_000;
        // Journal first, then the kernel.
        let stored_before = self
            .store
            .admitted()
            .into_iter()
            .find(|a| a.addr == addr)
            .map_or(0, |a| a.until_ms);
        let op = Op::Admit {
            addr,
            until_ms: store::now_ms().saturating_add(left_ms),
        };
        self.store
            .append(&op, &self.rules)
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        let (was_verified, until) = match self.filter.verifier().admit(addr, until, now) {
            Ok(admitted) => admitted,
            Err(err) => {
                let undo = Op::Admit {
                    addr,
                    until_ms: stored_before,
                };
                if let Err(undo_err) = self.store.append(&undo, &self.rules) {
                    log::error!(
                        "journaling the undoing of a failed admission: {}",
                        error_chain(&undo_err)
                    );
                }
                return Err(Refusal::failed(error_chain(&err)));
            }
        };
        let left_ms = until.saturating_sub(now) / 1_000_000;
        log::info!("{addr} admitted for {ttl_secs} s, asked by {peer}");
        Ok(AdmitView {
            addr,
            verified_for_secs: left_ms / 1000,
            was_verified,
        })
    }

    /// Puts the stored admissions back in force, at start.
    pub(super) fn restore_admissions(&mut self) {
        let now_ms = store::now_ms();
        let now = monotonic_ns();
        for admission in self.store.admitted() {
            let left_ns = admission
                .until_ms
                .saturating_sub(now_ms)
                .saturating_mul(1_000_000);
            if left_ns == 0 {
                continue;
            }
            if let Err(err) =
                self.filter
                    .verifier()
                    .admit(admission.addr, now.saturating_add(left_ns), now)
            {
                log::error!(
                    "restoring the admission of {}: {}",
                    admission.addr,
                    error_chain(&err)
                );
            }
        }
    }

    /// Forgets `addr`'s verification.
    pub(super) fn revoke(&mut self, addr: IpAddr, peer: Peer) -> Result<AdmitView, Refusal> {
        if let Some(problem) = admit_problem(addr, 1) {
            return Err(Refusal::bad_input(problem));
        }
        let op = Op::Admit { addr, until_ms: 0 };
        self.store
            .append(&op, &self.rules)
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        let was_verified = self
            .filter
            .verifier()
            .revoke(addr, monotonic_ns())
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        log::info!("{addr}'s verification revoked, asked by {peer}");
        Ok(AdmitView {
            addr,
            verified_for_secs: 0,
            was_verified,
        })
    }

    /// Journals the shield as it is (logged if the write fails: the
    /// settings are in force all the same).
    pub(super) fn journal_shield(&mut self) {
        let op = Op::Shield {
            shield: self.shield.record(),
        };
        if let Err(err) = self.store.append(&op, &self.rules) {
            log::error!("recording the shield: {}", error_chain(&err));
        }
    }

    /// Puts back the host settings the shield changed, when the program
    /// goes (they come back at the next start).
    pub(super) fn release_host(&mut self) {
        give_back(&self.shield.saved);
    }
}
