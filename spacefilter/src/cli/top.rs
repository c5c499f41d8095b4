//! `top`: the live view of what is dropped ([`super::screen`]), or its
//! snapshots as JSON.

use std::{io::IsTerminal as _, time::Duration};

use clap::Args;

use super::{Common, Failure, print_json, reply_failure, screen, unexpected};
use crate::{
    api::{Request, Response, client::Client},
    error_chain,
};

#[derive(Args)]
pub(super) struct TopArgs {
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Sources and prefixes to show.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// With --json: stop after this many snapshots.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

pub(super) fn top(args: &TopArgs) -> Result<(), Failure> {
    let TopArgs {
        interval,
        limit,
        count,
        common: Common { socket, json },
    } = args;
    if *limit == 0 {
        return Err(Failure::bad_input("--limit must be at least 1"));
    }
    let mut client = Client::connect(socket)?;
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    client.send(Request::Top {
        interval_ms,
        limit: *limit,
    })?;
    if !*json {
        if !std::io::stdout().is_terminal() {
            return Err(Failure::bad_input(
                "top draws on a terminal; use --json to print snapshots to a pipe or file",
            ));
        }
        return screen::run(&mut client).map_err(|err| Failure::runtime(error_chain(&err)));
    }
    let mut printed = 0;
    // The first snapshot has no rates yet (they need two readings).
    let mut first = true;
    while count.is_none_or(|n| printed < n) {
        match client.recv()? {
            Response::Top(view) => {
                if !first {
                    print_json(&view);
                    printed += 1;
                }
                first = false;
            }
            Response::Error { kind, message } => return Err(reply_failure(kind, message)),
            other => return Err(unexpected(&other)),
        }
    }
    Ok(())
}
