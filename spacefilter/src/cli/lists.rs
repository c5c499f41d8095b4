//! `block`, `unblock`, `allow`, `unallow` and `list`.

use std::{
    io::{self, BufWriter, IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::{Common, Failure, Scope, print_json, reply_failure, unexpected};
use crate::{
    api::{
        Changed, Origin, Request, Response,
        client::Client,
        listing::{EntryText, Listed, decimal},
    },
    net::{List, Prefix, bulk},
};

#[derive(Args)]
pub(super) struct AddArgs {
    /// Addresses or CIDR prefixes, e.g. 198.18.0.7 198.18.0.0/15 2001:2::/48.
    #[arg(value_name = "PREFIX", required_unless_present = "file")]
    prefixes: Vec<Prefix>,
    /// Read prefixes from a file: one per line, `#` comments, blank lines
    /// (FireHOL .netset/.ipset). All or nothing: one bad line rejects the
    /// file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Remove the entries again after this long (e.g. 90s, 10m, 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// A note shown in `spacefilter list`.
    #[arg(long)]
    comment: Option<String>,
    /// Go past the lockout guard (a /0, or a prefix covering this host's
    /// own addresses or its gateway).
    #[arg(long)]
    force: bool,
    /// On a member of a fleet: change this host only (without it, the
    /// change goes to every member through etcd).
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(super) struct RemoveArgs {
    #[arg(value_name = "PREFIX", required_unless_present = "file")]
    prefixes: Vec<Prefix>,
    /// Read the prefixes to remove from a file (same format as `block --file`).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// On a member of a fleet: change this host only.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(super) struct ListArgs {
    /// Only the blocklist.
    #[arg(long, conflicts_with = "allowed")]
    blocked: bool,
    /// Only the allowlist.
    #[arg(long)]
    allowed: bool,
    #[command(flatten)]
    common: Common,
}

/// The prefixes given on the command line and in `--file`.
fn gather(prefixes: &[Prefix], file: Option<&Path>) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|err| Failure::bad_input(format!("cannot read {}: {err}", path.display())))?;
        let listed = bulk::parse(&text).map_err(|err| {
            Failure::bad_input(format!("{} {err}; nothing was changed", path.display()))
        })?;
        if listed.is_empty() && out.is_empty() {
            return Err(Failure::bad_input(format!(
                "{} holds no prefixes",
                path.display()
            )));
        }
        out.extend(listed.iter().map(ToString::to_string));
    }
    Ok(out)
}

fn report_changed(verb: &str, changed: Changed, json: bool) {
    if json {
        print_json(&changed);
        return;
    }
    let Changed {
        added,
        updated,
        removed,
        unchanged,
    } = changed;
    let mut parts = Vec::new();
    if added > 0 {
        parts.push(format!("{added} added"));
    }
    if updated > 0 {
        parts.push(format!("{updated} updated"));
    }
    if removed > 0 {
        parts.push(format!("{removed} removed"));
    }
    if unchanged > 0 {
        parts.push(format!("{unchanged} not there"));
    }
    println!("{verb}: {}", parts.join(", "));
}

pub(super) fn add(list: List, args: AddArgs) -> Result<(), Failure> {
    let AddArgs {
        prefixes,
        file,
        ttl,
        comment,
        force,
        local,
        common: Common { socket, json },
    } = args;
    let origin = if file.is_some() {
        Origin::File
    } else {
        Origin::Manual
    };
    let prefixes = gather(&prefixes, file.as_deref())?;
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(Failure::bad_input("--ttl must be longer than zero"));
    }
    let mut client = Client::connect(&socket)?;
    let bar = indicatif::ProgressBar::new(0);
    if !io::stderr().is_terminal() || json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template"),
    );
    bar.set_message(format!("{}ing", list.name()));
    let response = client.call(
        Scope { local }.request(Request::Add {
            list,
            prefixes,
            ttl_secs: ttl.map(|t| t.as_secs().max(1)),
            comment,
            origin,
            force,
        }),
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    match response {
        Response::Changed(changed) => {
            report_changed(list.name(), changed, json);
            Ok(())
        }
        Response::Fleet { revision, count } => {
            report_fleet(list.name(), count, revision, json);
            Ok(())
        }
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// What a change written to the fleet did.
fn report_fleet(verb: &str, count: u64, revision: i64, json: bool) {
    if json {
        print_json(&serde_json::json!({"fleet": count, "revision": revision}));
    } else {
        println!(
            "{verb}: {count} written to the fleet (etcd revision {revision}) and in force here"
        );
    }
}

pub(super) fn remove(list: List, args: RemoveArgs) -> Result<(), Failure> {
    let RemoveArgs {
        prefixes,
        file,
        local,
        common: Common { socket, json },
    } = args;
    let prefixes = gather(&prefixes, file.as_deref())?;
    let mut client = Client::connect(&socket)?;
    let request = Scope { local }.request(Request::Remove { list, prefixes });
    match client.call(request, &mut |_, _| {})? {
        Response::Changed(changed) => {
            report_changed(&format!("un{}", list.name()), changed, json);
            Ok(())
        }
        Response::Fleet { revision, count } => {
            report_fleet(&format!("un{}", list.name()), count, revision, json);
            Ok(())
        }
        Response::Error { kind, message } => Err(reply_failure(kind, message)),
        other => Err(unexpected(&other)),
    }
}

pub(super) fn format_ttl(secs: Option<u64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

pub(super) fn list(args: &ListArgs) -> Result<(), Failure> {
    let ListArgs {
        blocked,
        allowed,
        common: Common { socket, json },
    } = args;
    let only = match (blocked, allowed) {
        (true, _) => Some(List::Block),
        (_, true) => Some(List::Allow),
        _ => None,
    };
    let json = *json;
    let mut client = Client::connect(socket)?;
    // Entries are printed as they arrive, through one buffer: a million
    // of them are neither held nor written a line per system call.
    let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
    let mut started = false;
    let start = |out: &mut BufWriter<_>| -> io::Result<()> {
        if json {
            out.write_all(b"[")
        } else {
            writeln!(
                out,
                "{:<43} {:<6} {:<7} {:>12} {:>14}  COMMENT",
                "PREFIX", "LIST", "ORIGIN", "TTL", "HITS"
            )
        }
    };
    let mut line = Vec::with_capacity(256);
    let listed = client.list(only, &mut |e, written| {
        if !started {
            start(&mut out)?;
        } else if json {
            out.write_all(b",")?;
        }
        started = true;
        if json {
            match written {
                // What serde would write for it, already.
                Some(bytes) => out.write_all(bytes)?,
                None => serde_json::to_writer(&mut out, e)?,
            }
        } else {
            text_line(&mut line, e);
            out.write_all(&line)?;
        }
        Ok(())
    })?;
    let written = match listed {
        Listed::Entries(_) => (|| {
            if !started {
                start(&mut out)?;
            }
            if json {
                out.write_all(b"]\n")?;
            }
            out.flush()
        })(),
        Listed::Stopped(err) => Err(err),
        Listed::Other(reply) => {
            return Err(match *reply {
                Response::Error { kind, message } => reply_failure(kind, message),
                other => unexpected(&other),
            });
        }
    };
    match written {
        // Whoever reads the listing (`| head`) has had enough.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(Failure::runtime(format!("writing the listing: {err}"))),
        Ok(()) => Ok(()),
    }
}

/// The table line of `e` into `line`: what
/// `"{:<43} {:<6} {:<7} {:>12} {:>14}  {}"` prints, without the
/// formatting machinery (which pads a character at a time).
fn text_line(line: &mut Vec<u8>, e: &EntryText<'_>) {
    fn padded(line: &mut Vec<u8>, text: &str, width: usize, right: bool) {
        let chars = if text.is_ascii() {
            text.len()
        } else {
            text.chars().count()
        };
        let pad = width.saturating_sub(chars);
        if right {
            line.resize(line.len() + pad, b' ');
        }
        line.extend_from_slice(text.as_bytes());
        if !right {
            line.resize(line.len() + pad, b' ');
        }
    }
    line.clear();
    padded(line, &e.prefix, 43, false);
    line.push(b' ');
    padded(line, e.list.name(), 6, false);
    line.push(b' ');
    padded(line, e.origin.name(), 7, false);
    line.push(b' ');
    match e.expires_in_secs {
        None => padded(line, "-", 12, true),
        secs => padded(line, &format_ttl(secs), 12, true),
    }
    line.push(b' ');
    padded(line, decimal(e.hits, &mut [0; 20]), 14, true);
    line.extend_from_slice(b"  ");
    line.extend_from_slice(e.comment.as_deref().unwrap_or("").as_bytes());
    line.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn a_table_line_is_what_the_format_string_prints() {
        for (prefix, comment, ttl, hits) in [
            ("198.18.0.0/24", None, None, 0),
            (
                "2001:db8:1234:5678:9abc:def0:1234:5678/128",
                Some("é note"),
                Some(90),
                17,
            ),
            (
                "a-prefix-longer-than-the-column-of-forty-three",
                Some(""),
                Some(0),
                u64::MAX,
            ),
        ] {
            let e = EntryText {
                list: List::Block,
                prefix: Cow::Borrowed(prefix),
                origin: Origin::File,
                comment: comment.map(Cow::Borrowed),
                expires_in_secs: ttl,
                hits,
            };
            let mut line = Vec::new();
            text_line(&mut line, &e);
            let expected = format!(
                "{:<43} {:<6} {:<7} {:>12} {:>14}  {}\n",
                prefix,
                "block",
                "file",
                format_ttl(ttl),
                hits,
                comment.unwrap_or("")
            );
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }
}
