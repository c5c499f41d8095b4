//! The rules on headers: append, delete, list with their hits.

use spacefilter_common::{HeaderRule, MAX_HEADER_RULES, rule_action, rule_flags};

use super::{Peer, Refusal, core::Core};
use crate::{
    api::{HeaderRuleView, RuleAction},
    error_chain,
    store::{self, Op},
};

impl Core {
    /// Appends a rule on headers; returns every rule.
    pub(super) fn add_rule(
        &mut self,
        mut rule: HeaderRuleView,
        force: bool,
        peer: Peer,
    ) -> Result<Vec<HeaderRuleView>, Refusal> {
        if let Some(problem) = rule.problem() {
            return Err(Refusal::bad_input(problem));
        }
        // TCP flags exist on TCP alone: a rule on them is a TCP rule.
        if rule.tcp_flags.is_some() && rule.proto.is_none() {
            rule.proto = Some(IPPROTO_TCP);
        }
        if self.header_rules.len() >= MAX_HEADER_RULES as usize {
            return Err(Refusal::failed(format!(
                "there are {MAX_HEADER_RULES} rules already, the most the program holds; delete one first"
            )));
        }
        if !force && rule.action == Some(RuleAction::Drop) && rule.matches_everything() {
            return Err(Refusal::refused(
                "refusing a drop rule with no condition: it would drop every frame that is on no list, including your own session; add --force if that is what you want",
            ));
        }
        rule.id = self.header_rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        rule.hits = 0;
        let mut rules = self.header_rules.clone();
        rules.push(rule.clone());
        self.put_rules(rules)?;
        log::info!("rule {} added: {rule:?} asked by {peer}", rule.id);
        self.header_rules()
    }

    /// Deletes the rule `id`; returns every rule left.
    pub(super) fn del_rule(&mut self, id: u32, peer: Peer) -> Result<Vec<HeaderRuleView>, Refusal> {
        if !self.header_rules.iter().any(|r| r.id == id) {
            return Err(Refusal::bad_input(format!(
                "there is no rule {id}; `spacefilter rule list` shows them"
            )));
        }
        let rules = self
            .header_rules
            .iter()
            .filter(|r| r.id != id)
            .cloned()
            .collect();
        self.put_rules(rules)?;
        log::info!("rule {id} deleted asked by {peer}");
        self.header_rules()
    }

    /// Makes the rules on headers the fleet's `rules`, each keeping its
    /// id; returns whether they changed (the same list is left alone,
    /// with its budgets).
    pub(super) fn replace_rules(
        &mut self,
        rules: Vec<HeaderRuleView>,
        peer: Peer,
    ) -> Result<bool, Refusal> {
        if rules.len() > MAX_HEADER_RULES as usize {
            return Err(Refusal::bad_input(format!(
                "{} rules, more than the {MAX_HEADER_RULES} the program holds",
                rules.len()
            )));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut rules = rules;
        for rule in &mut rules {
            if let Some(problem) = rule.problem() {
                return Err(Refusal::bad_input(format!("rule {}: {problem}", rule.id)));
            }
            if rule.id == 0 || !ids.insert(rule.id) {
                return Err(Refusal::bad_input(format!(
                    "rule id {} is missing or given twice",
                    rule.id
                )));
            }
            if rule.tcp_flags.is_some() && rule.proto.is_none() {
                rule.proto = Some(IPPROTO_TCP);
            }
            rule.hits = 0;
        }
        let held: Vec<HeaderRuleView> = self
            .header_rules
            .iter()
            .map(|r| HeaderRuleView {
                hits: 0,
                ..r.clone()
            })
            .collect();
        if held == rules {
            return Ok(false);
        }
        let count = rules.len();
        self.put_rules(rules)?;
        log::info!("rules on headers replaced by {count} rules, asked by {peer}");
        Ok(true)
    }

    /// Journals `rules` and puts them in the program, each keeping its
    /// hit count.
    fn put_rules(&mut self, rules: Vec<HeaderRuleView>) -> Result<(), Refusal> {
        let failed = |err: &(dyn std::error::Error + 'static)| Refusal::failed(error_chain(err));
        let hits = self.filter.header_rules().hits().map_err(|e| failed(&e))?;
        let hits_of = |id: u32| {
            self.header_rules
                .iter()
                .position(|r| r.id == id)
                .and_then(|i| hits.get(i).copied())
                .unwrap_or(0)
        };
        let kernel: Vec<_> = rules
            .iter()
            .map(|r| (kernel_rule(r), hits_of(r.id)))
            .collect();
        self.store
            .append(
                &Op::HeaderRules {
                    rules: rules.iter().map(record).collect(),
                },
                &self.rules,
            )
            .map_err(|e| failed(&e))?;
        self.filter
            .header_rules()
            .set(&kernel)
            .map_err(|e| failed(&e))?;
        self.header_rules = rules;
        Ok(())
    }

    /// The rules on headers with their hits.
    pub(super) fn header_rules(&mut self) -> Result<Vec<HeaderRuleView>, Refusal> {
        let hits = self
            .filter
            .header_rules()
            .hits()
            .map_err(|err| Refusal::failed(error_chain(&err)))?;
        Ok(self
            .header_rules
            .iter()
            .zip(hits)
            .map(|(rule, hits)| HeaderRuleView {
                hits,
                ..rule.clone()
            })
            .collect())
    }
}

/// The kernel's form of a header rule.
/// The protocol number of TCP.
pub(super) const IPPROTO_TCP: u8 = 6;

pub(super) fn kernel_rule(view: &HeaderRuleView) -> HeaderRule {
    let range = |r: Option<(u16, u16)>| r.map_or((0, 0), |(lo, hi)| (u32::from(lo), u32::from(hi)));
    let (dport_lo, dport_hi) = range(view.dst_ports);
    let (sport_lo, sport_hi) = range(view.src_ports);
    let (len_lo, len_hi) = range(view.length);
    let (tcp_mask, tcp_value) = view
        .tcp_flags
        .map_or((0, 0), |(mask, value)| (u32::from(mask), u32::from(value)));
    HeaderRule {
        action: match view.action {
            Some(RuleAction::Drop) => rule_action::DROP,
            Some(RuleAction::Pass) => rule_action::PASS,
            Some(RuleAction::Limit) => rule_action::LIMIT,
            None => 0,
        },
        flags: if view.dry_run { rule_flags::DRY_RUN } else { 0 },
        // TCP flags exist on TCP alone (a rule stored before this was said
        // would otherwise match other protocols, whose flags read as 0).
        proto: match (view.proto, view.tcp_flags) {
            (Some(proto), _) => u32::from(proto),
            (None, Some(_)) => u32::from(IPPROTO_TCP),
            (None, None) => 0,
        },
        tcp_mask,
        tcp_value,
        dport_lo,
        dport_hi,
        sport_lo,
        sport_hi,
        len_lo,
        len_hi,
        reserved: 0,
        pps: view.pps,
        burst: view.burst,
    }
}

/// A rule as the store keeps it (without its hits, which are the
/// kernel's).
fn record(view: &HeaderRuleView) -> store::HeaderRule {
    let HeaderRuleView {
        id,
        action,
        proto,
        dst_ports,
        src_ports,
        tcp_flags,
        length,
        pps,
        burst,
        dry_run,
        ref comment,
        hits: _,
    } = *view;
    store::HeaderRule {
        id,
        action: action.map(|action| match action {
            RuleAction::Drop => store::Action::Drop,
            RuleAction::Pass => store::Action::Pass,
            RuleAction::Limit => store::Action::Limit,
        }),
        proto,
        dst_ports,
        src_ports,
        tcp_flags,
        length,
        pps,
        burst,
        dry_run,
        comment: comment.clone(),
    }
}

/// A stored rule as the protocol shows it, with no hits yet.
pub(super) fn view(stored: store::HeaderRule) -> HeaderRuleView {
    let store::HeaderRule {
        id,
        action,
        proto,
        dst_ports,
        src_ports,
        tcp_flags,
        length,
        pps,
        burst,
        dry_run,
        comment,
    } = stored;
    HeaderRuleView {
        id,
        action: action.map(|action| match action {
            store::Action::Drop => RuleAction::Drop,
            store::Action::Pass => RuleAction::Pass,
            store::Action::Limit => RuleAction::Limit,
        }),
        proto,
        dst_ports,
        src_ports,
        tcp_flags,
        length,
        pps,
        burst,
        dry_run,
        comment,
        hits: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule stored with TCP flags and no protocol (accepted before such
    /// a rule became a TCP rule) matches TCP alone in the program.
    #[test]
    fn a_stored_tcp_flags_rule_is_a_tcp_rule() {
        let view = HeaderRuleView {
            action: Some(RuleAction::Drop),
            tcp_flags: Some((0x10, 0)),
            dst_ports: Some((443, 443)),
            ..HeaderRuleView::default()
        };
        assert_eq!(kernel_rule(&view).proto, u32::from(IPPROTO_TCP));
        let udp = HeaderRuleView {
            proto: Some(17),
            tcp_flags: None,
            ..view
        };
        assert_eq!(kernel_rule(&udp).proto, 17);
    }
}
