//! `rule add | del | list`: rules on headers.

use clap::{Args, Subcommand};

use super::{
    Common, Failure, Scope, StatusArgs,
    parse::{parse_port_range, parse_proto, parse_tcp_flags},
    print_json, reply_failure, unexpected,
};
use crate::api::{HeaderRuleView, Request, Response, RuleAction, client::Client};

/// What a rule does with the frames it matches.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Action {
    /// Drop them (`rule_dropped`).
    Drop,
    /// Let them through, past the flood guards (`rule_passed`).
    Pass,
    /// Let through --pps a second (with --burst), drop the rest
    /// (`rule_limited`).
    Limit,
}

impl From<Action> for RuleAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Drop => RuleAction::Drop,
            Action::Pass => RuleAction::Pass,
            Action::Limit => RuleAction::Limit,
        }
    }
}

#[derive(Args)]
pub(super) struct RuleArgs {
    #[command(subcommand)]
    action: RuleCommand,
}

#[derive(Subcommand)]
enum RuleCommand {
    /// Append a rule (it is tried after the ones already there).
    Add(Box<RuleAddArgs>),
    /// Delete a rule by its id.
    Del(RuleDelArgs),
    /// List the rules in order, with the packets each matched.
    List(StatusArgs),
}

#[derive(Args)]
struct RuleAddArgs {
    /// What to do with matching frames.
    #[arg(long, value_enum)]
    action: Action,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long, value_parser = parse_proto)]
    proto: Option<u8>,
    /// Destination port or range (e.g. 53, 1000-2000); TCP and UDP only.
    #[arg(long, value_parser = parse_port_range)]
    dport: Option<(u16, u16)>,
    /// Source port or range.
    #[arg(long, value_parser = parse_port_range)]
    sport: Option<(u16, u16)>,
    /// TCP flags that must be set or clear, e.g. SYN,!ACK.
    #[arg(long, value_parser = parse_tcp_flags)]
    tcp_flags: Option<(u8, u8)>,
    /// Frame length in bytes, or a range (e.g. 0-64, 1400-1514).
    #[arg(long, value_parser = parse_port_range)]
    len: Option<(u16, u16)>,
    /// For --action limit: packets per second for all matching frames.
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// For --action limit: the burst (default: one second's worth).
    #[arg(long)]
    burst: Option<u64>,
    /// Count only: what the rule would drop passes, as would_limit.
    #[arg(long)]
    dry_run: bool,
    /// A note shown in `spacefilter rule list`.
    #[arg(long)]
    comment: Option<String>,
    /// Allow a drop rule with no condition (it drops everything).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RuleDelArgs {
    /// The rule's id, from `spacefilter rule list`.
    id: u32,
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    common: Common,
}

pub(super) fn rule(args: RuleArgs) -> Result<(), Failure> {
    let (request, common) = match args.action {
        RuleCommand::Add(add) => {
            let RuleAddArgs {
                action,
                proto,
                dport,
                sport,
                tcp_flags,
                len,
                pps,
                burst,
                dry_run,
                comment,
                force,
                scope,
                common,
            } = *add;
            let rule = HeaderRuleView {
                action: Some(action.into()),
                proto,
                dst_ports: dport,
                src_ports: sport,
                tcp_flags,
                length: len,
                pps,
                burst: burst.unwrap_or(pps),
                dry_run,
                comment,
                ..HeaderRuleView::default()
            };
            if let Some(problem) = rule.problem() {
                return Err(Failure::bad_input(problem));
            }
            (scope.request(Request::RuleAdd { rule, force }), common)
        }
        RuleCommand::Del(RuleDelArgs { id, scope, common }) => {
            (scope.request(Request::RuleDel { id }), common)
        }
        RuleCommand::List(StatusArgs { common }) => (Request::RuleList, common),
    };
    let mut client = Client::connect(&common.socket)?;
    let rules = match client.call(request, &mut |_, _| {})? {
        Response::Rules { rules } => rules,
        Response::Error { kind, message } => return Err(reply_failure(kind, message)),
        other => return Err(unexpected(&other)),
    };
    if common.json {
        print_json(&rules);
        return Ok(());
    }
    println!(
        "{:>3} {:<6} {:<7} {:<12} {:<12} {:<10} {:<10} {:>14}  COMMENT",
        "ID", "ACTION", "PROTO", "DPORT", "SPORT", "TCP", "LENGTH", "HITS"
    );
    let range = |r: Option<(u16, u16)>| match r {
        None => "any".to_owned(),
        Some((lo, hi)) if lo == hi => lo.to_string(),
        Some((lo, hi)) => format!("{lo}-{hi}"),
    };
    for r in &rules {
        let action = match r.action {
            Some(RuleAction::Drop) => "drop".to_owned(),
            Some(RuleAction::Pass) => "pass".to_owned(),
            Some(RuleAction::Limit) => format!("limit {}/s", r.pps),
            None => "?".to_owned(),
        };
        let proto = match r.proto {
            None => "any".to_owned(),
            Some(6) => "tcp".to_owned(),
            Some(17) => "udp".to_owned(),
            Some(1) => "icmp".to_owned(),
            Some(58) => "icmpv6".to_owned(),
            Some(n) => n.to_string(),
        };
        let tcp = r.tcp_flags.map_or("any".to_owned(), |(mask, value)| {
            format!("{value:#04x}/{mask:#04x}")
        });
        println!(
            "{:>3} {:<6} {:<7} {:<12} {:<12} {:<10} {:<10} {:>14}  {}{}",
            r.id,
            action,
            proto,
            range(r.dst_ports),
            range(r.src_ports),
            tcp,
            range(r.length),
            r.hits,
            if r.dry_run { "[dry run] " } else { "" },
            r.comment.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
