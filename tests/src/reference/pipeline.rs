//! The whole pipeline's decision for a sequence of frames under one
//! configuration: the lists, the header rules, the reflection guard, and
//! the SYN guard and per-source rate limiter with their budgets. Written
//! from the policy:
//!
//! 1. Parsing and the lists decide as in [`super::decide`]; a frame that
//!    passes them and is well formed goes on with its [`L4`].
//! 2. Header rules, in order, the first match deciding. A rule matches
//!    when each of its conditions holds: protocol (0: any), destination
//!    and source port ranges (`hi` 0: any; a port condition never holds
//!    for a frame without ports), frame length range, and
//!    `tcp_flags & mask == value` (mask 0: any). Drop → `rule_dropped`,
//!    pass → `rule_passed` (past the guards), limit → `rule_passed` while
//!    the rule's budget lasts, then `rule_limited`. A dry-run rule counts
//!    `would_limit` where it would drop.
//! 3. The shield, on UDP only (no TCP port is shielded): UDP with ports
//!    to a shielded UDP port from a source not verified takes from the
//!    shield's budget for unverified sources; over it → `shielded` while
//!    the shield is on (watching only, it goes on). Within it, and from a
//!    verified source, the frame goes on to the guards.
//! 4. The guards, while any limit flag is set: the reflection guard (UDP
//!    with ports from a reflector port to a service port → `reflection`);
//!    then, for a frame the rate limiter looks at (it is on, or the frame
//!    is a SYN without ACK and the SYN guard is on), its source's budgets.
//!    A source's first such frame makes its budgets, full less this frame,
//!    and is not held back by them (only a SYN by the host's budget). Later
//!    frames: a SYN first answers to its source's SYN budget (while
//!    `syn_pps` is set), then to the host's (while `syn_global_pps` is
//!    set; a verified source's SYNs are not counted there), and takes from its source's only if both allow it (over one:
//!    `syn_limited`); then, while the limiter is on, every frame to its
//!    source's packet budget (while `pps` is set) and byte budget (while
//!    `bps` is set): within both it takes from them, else `rate_limited`.
//!    A dry run counts `would_limit` for any of these.
//!
//! Budgets are counted in whole packets and bytes from their bursts and
//! never refill: the configurations this model takes have rates of 0 or
//! 1 a second (a run takes far less than the second that one packet or
//! byte takes to come back), or bursts of 0 (nothing to refill into) or
//! beyond anything a run spends. Auto-blocks are never due (`block_after`
//! 0 or longer than a run), the spoofed-source fallback is off, and the
//! verified sources stay verified through the run.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use spacefilter::{Prefix, Reason};
use spacefilter_common::{
    HeaderRule, Limits, Shield, limit_flags, reflect_bits, rule_action, rule_flags, shield_flags,
};

use super::{Fragment, L4, network};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Everything the program's maps say, as the model reads it.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub allow: Vec<Prefix>,
    pub block: Vec<Prefix>,
    /// Header rules in order (none with action 0: that ends the list).
    pub rules: Vec<HeaderRule>,
    pub limits: Limits,
    /// The reflector source ports.
    pub reflectors: Vec<u16>,
    /// The service ports, as inclusive ranges.
    pub service: Vec<(u16, u16)>,
    /// Sources verified (admitted) for the whole run.
    pub verified: Vec<IpAddr>,
    pub shield: Shield,
    /// The shielded UDP ports, as inclusive ranges.
    pub shield_udp: Vec<(u16, u16)>,
}

impl Config {
    /// The `REFLECT_PORTS` entry of each port.
    #[must_use]
    pub fn port_bits(&self) -> Vec<u8> {
        let mut bits = vec![0u8; 1 << 16];
        for &port in &self.reflectors {
            bits[usize::from(port)] |= reflect_bits::SOURCE;
        }
        for (ranges, bit) in [
            (&self.service, reflect_bits::SERVICE),
            (&self.shield_udp, reflect_bits::SHIELD_UDP),
        ] {
            for &(lo, hi) in ranges {
                for port in lo..=hi {
                    bits[usize::from(port)] |= bit;
                }
            }
        }
        bits
    }
}

/// A source's budgets, in whole packets and bytes.
#[derive(Clone, Copy, Debug)]
struct SourceBudget {
    packets: u64,
    bytes: u64,
    syns: u64,
}

/// The model: a configuration and the budgets spent under it so far.
#[derive(Clone, Debug)]
pub struct Pipeline {
    config: Config,
    port_bits: Vec<u8>,
    /// The verified sources' keys: IPv4 as an IPv4-mapped IPv6 address.
    verified: HashSet<[u8; 16]>,
    /// By bucket key: IPv4 as an IPv4-mapped IPv6 address, IPv6 cut to
    /// `v6_prefix_len`.
    sources: HashMap<[u8; 16], SourceBudget>,
    /// What is left of each limit rule's burst.
    rule_budgets: Vec<u64>,
    /// Frames each rule matched.
    rule_hits: Vec<u64>,
    /// What is left of the host's SYN burst.
    host_syns: u64,
    /// What is left of the shield's burst for unverified UDP.
    shield_budget: u64,
    /// Datagrams whose first fragment was dropped, by source,
    /// identification and protocol: their later fragments go the same way.
    dropped_fragments: HashMap<(IpAddr, u32, u8), Reason>,
}

impl Pipeline {
    /// The model of a program whose maps hold `config` and whose budgets
    /// are all unspent.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            port_bits: config.port_bits(),
            verified: config
                .verified
                .iter()
                .map(|&a| bucket_key(a, 128))
                .collect(),
            sources: HashMap::new(),
            rule_budgets: config.rules.iter().map(|r| r.burst).collect(),
            rule_hits: vec![0; config.rules.len()],
            host_syns: config.limits.syn_global_burst,
            shield_budget: u64::from(config.shield.unverified_burst),
            dropped_fragments: HashMap::new(),
            config,
        }
    }

    /// The frames each header rule has matched so far.
    #[must_use]
    pub fn rule_hits(&self) -> &[u64] {
        &self.rule_hits
    }

    /// The reason for the next frame, spending its budgets.
    pub fn decide(&mut self, frame: &[u8]) -> Reason {
        let network = match network(frame) {
            Ok(network) => network,
            Err(reason) => return reason,
        };
        if self.config.allow.iter().any(|p| p.contains(network.source)) {
            return Reason::Allowlisted;
        }
        if self.config.block.iter().any(|p| p.contains(network.source)) {
            return Reason::Blocked;
        }
        let l4 = match network.transport() {
            Ok(l4) => l4,
            Err(reason) => return reason,
        };
        if let Fragment::Later(id) = l4.fragment
            && let Some(&reason) = self.dropped_fragments.get(&(network.source, id, l4.proto))
        {
            return reason;
        }
        let reason = self.on_headers(network.source, l4, frame.len());
        if let Fragment::First(id) = l4.fragment
            && reason.drops()
        {
            self.dropped_fragments
                .insert((network.source, id, l4.proto), reason);
        }
        reason
    }

    /// The stages that read the transport header.
    fn on_headers(&mut self, source: IpAddr, l4: L4, len: usize) -> Reason {
        if let Some(reason) = self.rules(l4, len) {
            return reason;
        }
        if self.shielded(source, l4) {
            return Reason::Shielded;
        }
        self.guards(source, l4, len as u64)
            .unwrap_or(Reason::Passed)
    }

    /// The first header rule that matches decides.
    fn rules(&mut self, l4: L4, len: usize) -> Option<Reason> {
        let len = u32::try_from(len).expect("frames are small");
        let index = self
            .config
            .rules
            .iter()
            .position(|rule| rule_matches(rule, l4, len))?;
        let rule = self.config.rules[index];
        self.rule_hits[index] += 1;
        let reason = match rule.action {
            rule_action::DROP => Reason::RuleDropped,
            rule_action::LIMIT if !take(&mut self.rule_budgets[index]) => Reason::RuleLimited,
            _ => Reason::RulePassed,
        };
        Some(if rule.flags & rule_flags::DRY_RUN != 0 && reason.drops() {
            Reason::WouldLimit
        } else {
            reason
        })
    }

    /// Whether the shield drops the frame.
    fn shielded(&mut self, source: IpAddr, l4: L4) -> bool {
        let shield = self.config.shield;
        if shield.flags & (shield_flags::ON | shield_flags::WATCH) == 0
            || l4.proto != UDP
            || !l4.ports
            || self.port_bits[usize::from(l4.dst_port)] & reflect_bits::SHIELD_UDP == 0
            || self.verified.contains(&bucket_key(source, 128))
        {
            return false;
        }
        !take(&mut self.shield_budget) && shield.flags & shield_flags::ON != 0
    }

    /// The flood guards' verdict, if any.
    fn guards(&mut self, source: IpAddr, l4: L4, len: u64) -> Option<Reason> {
        let limits = self.config.limits;
        if limits.flags == 0 {
            return None;
        }
        let reason = self.guard_steps(source, l4, len)?;
        Some(if limits.flags & limit_flags::DRY_RUN != 0 {
            Reason::WouldLimit
        } else {
            reason
        })
    }

    fn guard_steps(&mut self, source: IpAddr, l4: L4, len: u64) -> Option<Reason> {
        let limits = self.config.limits;
        if limits.flags & limit_flags::REFLECT != 0 && self.reflected(l4) {
            return Some(Reason::Reflection);
        }
        let syn = limits.flags & limit_flags::SYN != 0
            && l4.proto == TCP
            && l4.ports
            && l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let enabled = limits.flags & limit_flags::ENABLED != 0;
        if !enabled && !syn {
            return None;
        }
        let key = bucket_key(source, limits.v6_prefix_len);
        let verified = self.verified.contains(&bucket_key(source, 128));
        let Some(&budget) = self.sources.get(&key) else {
            // A new source: its budgets, full less this frame.
            self.sources.insert(
                key,
                SourceBudget {
                    packets: limits.pps_burst.saturating_sub(1),
                    bytes: limits.bps_burst.saturating_sub(len),
                    syns: limits.syn_burst.saturating_sub(u64::from(syn)),
                },
            );
            return (syn && !self.host_syn(verified)).then_some(Reason::SynLimited);
        };
        let (budget, reason) = self.known_source(budget, syn, verified, len);
        self.sources.insert(key, budget);
        reason
    }

    /// A known source's frame: the SYN budgets, then the rate limit.
    fn known_source(
        &mut self,
        mut budget: SourceBudget,
        syn: bool,
        verified: bool,
        len: u64,
    ) -> (SourceBudget, Option<Reason>) {
        let limits = self.config.limits;
        if syn {
            // Its own, then the host's; taken from its own only when both
            // allow it.
            if (limits.syn_pps != 0 && budget.syns == 0) || !self.host_syn(verified) {
                return (budget, Some(Reason::SynLimited));
            }
            budget.syns = budget.syns.saturating_sub(1);
        }
        if limits.flags & limit_flags::ENABLED == 0 {
            return (budget, None);
        }
        if (limits.pps != 0 && budget.packets == 0) || (limits.bps != 0 && budget.bytes < len) {
            return (budget, Some(Reason::RateLimited));
        }
        budget.packets = budget.packets.saturating_sub(1);
        budget.bytes = budget.bytes.saturating_sub(len);
        (budget, None)
    }

    /// The host-wide SYN budget (while set): takes a SYN from it, unless
    /// the source is verified.
    fn host_syn(&mut self, verified: bool) -> bool {
        self.config.limits.syn_global_pps == 0 || verified || take(&mut self.host_syns)
    }

    /// UDP with ports from a reflector port to a service port.
    fn reflected(&self, l4: L4) -> bool {
        l4.proto == UDP
            && l4.ports
            && self.port_bits[usize::from(l4.src_port)] & reflect_bits::SOURCE != 0
            && self.port_bits[usize::from(l4.dst_port)] & reflect_bits::SERVICE != 0
    }
}

/// Takes one from a budget; `false` if it is spent.
fn take(budget: &mut u64) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    true
}

/// An inclusive range, `hi` 0 meaning any.
fn in_range(value: u32, lo: u32, hi: u32) -> bool {
    hi == 0 || (lo..=hi).contains(&value)
}

/// Whether every condition of `rule` holds for a frame of `len` bytes.
#[must_use]
pub fn rule_matches(rule: &HeaderRule, l4: L4, len: u32) -> bool {
    let HeaderRule {
        action: _,
        flags: _,
        proto,
        tcp_mask,
        tcp_value,
        dport_lo,
        dport_hi,
        sport_lo,
        sport_hi,
        len_lo,
        len_hi,
        reserved: _,
        pps: _,
        burst: _,
    } = *rule;
    (proto == 0 || proto == u32::from(l4.proto))
        && (l4.ports || (dport_hi == 0 && sport_hi == 0))
        && in_range(u32::from(l4.dst_port), dport_lo, dport_hi)
        && in_range(u32::from(l4.src_port), sport_lo, sport_hi)
        && in_range(len, len_lo, len_hi)
        && (tcp_mask == 0 || u32::from(l4.tcp_flags) & tcp_mask == tcp_value)
}

/// The rate limiter's key for `source`.
#[must_use]
pub fn bucket_key(source: IpAddr, v6_prefix_len: u32) -> [u8; 16] {
    match source {
        IpAddr::V4(addr) => addr.to_ipv6_mapped().octets(),
        IpAddr::V6(addr) => {
            let len = u8::try_from(v6_prefix_len.min(128)).expect("at most 128");
            match Prefix::truncating(IpAddr::V6(addr), len).addr() {
                IpAddr::V6(cut) => cut.octets(),
                IpAddr::V4(_) => unreachable!("an IPv6 prefix"),
            }
        }
    }
}
