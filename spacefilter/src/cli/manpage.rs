//! `manpage`: the manual pages, generated from the command line's own
//! definitions: `spacefilter.8` and one page per command
//! (`spacefilter-block.8`, `spacefilter-limit-set.8`, ...), in section 8
//! (system administration) beside the daemon's binary in `/usr/sbin`.

use std::{
    fs,
    io::ErrorKind,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, CommandFactory as _};
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

use super::{Cli, Failure};
use crate::{
    config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    daemon::DEFAULT_PIN_DIR,
};

const SECTION: &str = "8";

#[derive(Args)]
pub(super) struct ManpageArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(super) fn manpage(args: &ManpageArgs) -> Result<(), Failure> {
    let ManpageArgs { out } = args;
    if out.exists() && !out.is_dir() {
        return Err(Failure::bad_input(format!(
            "--out {} is not a directory: give the directory the pages go into",
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(|err| {
        let message = format!("creating {}: {err}", out.display());
        if err.kind() == ErrorKind::NotADirectory {
            Failure::bad_input(message)
        } else {
            Failure::runtime(message)
        }
    })?;
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut pages = Vec::new();
    render(&cli, true, &mut pages)
        .map_err(|err| Failure::runtime(format!("rendering the pages: {err}")))?;
    for (name, text) in &pages {
        let path = out.join(name);
        fs::write(&path, text)
            .map_err(|err| Failure::runtime(format!("writing {}: {err}", path.display())))?;
    }
    println!("wrote {} pages to {}", pages.len(), out.display());
    Ok(())
}

/// Renders `cmd`'s page and those of its commands (hidden ones aside).
fn render(
    cmd: &clap::Command,
    top: bool,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> std::io::Result<()> {
    let man = Man::new(cmd.clone())
        .section(SECTION)
        .date(date())
        .source(format!("spacefilter {}", env!("CARGO_PKG_VERSION")))
        .manual("System Manager's Manual");
    let mut text = Vec::new();
    man.render(&mut text)?;
    let mut extra = Roff::default();
    if top {
        files(&mut extra);
    }
    see_also(&mut extra, top);
    extra.to_writer(&mut text)?;
    pages.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render(sub, false, pages)?;
    }
    Ok(())
}

/// The pages' date: `SOURCE_DATE_EPOCH`'s where it is set (a package
/// built twice from one commit gets the same pages), else today's.
fn date() -> String {
    let at = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or_else(SystemTime::now, |secs| {
            UNIX_EPOCH + Duration::from_secs(secs)
        });
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

/// Where the daemon keeps its things, as an administrator looks them up.
fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    let entries = [
        (
            "/etc/spacefilter/spacefilter.toml",
            "The daemon's settings and its allow and block entries, read by run --config \
             (SIGHUP, systemctl reload: the entries again).",
        ),
        (
            DEFAULT_STATE_DIR,
            "The state directory: the journal and snapshot of every rule, restored at start.",
        ),
        (
            DEFAULT_SOCKET,
            "The control socket the commands talk to the daemon through.",
        ),
        (
            DEFAULT_PIN_DIR,
            "The pinned XDP links: the filter stays in force while the daemon is stopped; \
             spacefilter detach takes it off.",
        ),
        (
            "/usr/lib/systemd/system/spacefilter.service",
            "The systemd unit that runs the daemon.",
        ),
    ];
    for (path, what) in entries {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
}

fn see_also(roff: &mut Roff, top: bool) {
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    if !top {
        refs.push(bold("spacefilter"));
        refs.push(roman(format!("({SECTION}), ")));
    }
    for (name, section) in [("systemctl", "1"), ("journalctl", "1"), ("bpftool", "8")] {
        refs.push(bold(name));
        refs.push(roman(format!("({section})")));
        if name != "bpftool" {
            refs.push(roman(", "));
        }
    }
    roff.text(refs);
}
