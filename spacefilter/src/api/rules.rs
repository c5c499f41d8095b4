//! Rules on headers, as a client sends them and the daemon lists them.

use serde::{Deserialize, Serialize};

/// The shortest frame the header rules see: an Ethernet header and an
/// IPv4 header without options.
const MIN_IP_FRAME: u16 = 14 + 20;

/// What a header rule does with the frames it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Drop them (`rule_dropped`).
    Drop,
    /// Let them through, past the flood guards (`rule_passed`).
    Pass,
    /// Let through --pps a second (with --burst), drop the rest
    /// (`rule_limited`).
    Limit,
}

/// A rule on headers. Every condition given must hold; none given matches
/// every frame that reaches the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRuleView {
    /// Given by the daemon.
    #[serde(default)]
    pub id: u32,
    pub action: Option<RuleAction>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 `ICMPv6`).
    #[serde(default)]
    pub proto: Option<u8>,
    /// Inclusive port ranges.
    #[serde(default)]
    pub dst_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub src_ports: Option<(u16, u16)>,
    /// TCP flags: (mask, value), matching `flags & mask == value`.
    #[serde(default)]
    pub tcp_flags: Option<(u8, u8)>,
    /// Frame length in bytes, inclusive.
    #[serde(default)]
    pub length: Option<(u16, u16)>,
    /// The budget of a limit rule.
    #[serde(default)]
    pub pps: u64,
    #[serde(default)]
    pub burst: u64,
    /// Count only: what the rule would drop passes (`would_limit`).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub comment: Option<String>,
    /// Packets matched (in listings).
    #[serde(default)]
    pub hits: u64,
}

impl HeaderRuleView {
    /// Why the rule cannot be put in force, if it cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let Some(action) = self.action else {
            return Some("a rule needs an action: drop, pass or limit".into());
        };
        for (name, range) in [
            ("destination port", self.dst_ports),
            ("source port", self.src_ports),
            ("length", self.length),
        ] {
            if let Some((lo, hi)) = range {
                if lo > hi {
                    return Some(format!("the {name} range {lo}-{hi} runs backwards"));
                }
                if hi == 0 {
                    return Some(format!("a {name} of 0 cannot be matched"));
                }
            }
        }
        if let Some((_, hi)) = self.length
            && hi < MIN_IP_FRAME
        {
            return Some(format!(
                "a length range up to {hi} can never match: the shortest IP frame is \
                 {MIN_IP_FRAME} bytes (Ethernet and IPv4 headers)"
            ));
        }
        if let Some((mask, value)) = self.tcp_flags
            && value & !mask != 0
        {
            return Some(format!(
                "TCP flags {value:#04x} under the mask {mask:#04x} can never match: a flag \
                 asked set must be in the mask"
            ));
        }
        if action == RuleAction::Limit && (self.pps == 0 || self.burst == 0) {
            return Some("a limit rule needs --pps (and a burst of at least 1)".into());
        }
        if self.pps > 1_000_000_000 || self.burst > 1_000_000_000_000 {
            return Some("rule budgets above 1e9/s (burst 1e12) are not supported".into());
        }
        if (self.dst_ports.is_some() || self.src_ports.is_some())
            && let Some(proto) = self.proto
            && proto != 6
            && proto != 17
        {
            return Some("ports only exist for TCP (6) and UDP (17)".into());
        }
        if self.tcp_flags.is_some()
            && let Some(proto) = self.proto
            && proto != 6
        {
            return Some(format!(
                "--tcp-flags can only match TCP, and the rule is for protocol {proto}: use \
                 --proto tcp, or leave --proto out (a rule on TCP flags is a TCP rule)"
            ));
        }
        if self
            .comment
            .as_ref()
            .is_some_and(|c| c.len() > 256 || c.contains('\n'))
        {
            return Some("a comment is one line of at most 256 bytes".into());
        }
        None
    }

    /// Whether the rule has no condition and so matches every frame.
    #[must_use]
    pub fn matches_everything(&self) -> bool {
        self.proto.is_none()
            && self.dst_ports.is_none()
            && self.src_ports.is_none()
            && self.tcp_flags.is_none()
            && self.length.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderRuleView, RuleAction};

    /// Conditions no frame can meet are refused, beside their controls.
    #[test]
    fn rules_that_can_never_match_are_refused() {
        let rule = |tcp_flags, length| HeaderRuleView {
            action: Some(RuleAction::Drop),
            tcp_flags,
            length,
            ..HeaderRuleView::default()
        };
        assert_eq!(rule(Some((0x12, 0x02)), None).problem(), None, "SYN,!ACK");
        assert_eq!(rule(None, Some((34, 64))).problem(), None);
        for never in [rule(Some((0x02, 0x12)), None), rule(None, Some((0, 33)))] {
            let problem = never.problem().unwrap_or_default();
            assert!(problem.contains("can never match"), "{never:?}: {problem}");
        }
    }
}
