//! The Debian package and what it ships: built by the same code as `cargo
//! xtask package` (from this build's binary), listed with `dpkg-deb`,
//! unpacked and looked at as an administrator would: the systemd unit
//! checked by `systemd-analyze verify`, the manual pages rendered by
//! `man`, the bash completion asked to complete, the sample config read by
//! the daemon.
//!
//! The tools are Debian's (`cargo xtask setup` installs them); a test
//! that misses one fails, naming it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use spacefilter_tests::daemon::{Scratch, binary};
use xtask::package::{
    self, BINARY, CHANGELOG, COMPLETIONS, CONFIG, COPYRIGHT, Inputs, MAN_DIR, UNIT,
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Runs `cmd`, failing the test if it cannot start (naming the tool).
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|err| {
        panic!(
            "could not run {} ({err}); `cargo xtask setup` installs the tools the tests use",
            cmd.get_program().display()
        )
    })
}

/// Runs `cmd` and returns its standard output; fails the test unless it
/// succeeds.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A package built from this build's binary and unpacked.
struct Built {
    deb: PathBuf,
    version: String,
    /// Where `dpkg-deb -x` unpacked it.
    tree: PathBuf,
    /// A folder for the tests' own files.
    dir: PathBuf,
}

/// The package, built once for the tests of this file (compressing the
/// binary takes most of the time), in cargo's scratch folder for
/// integration tests, emptied first.
fn build() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("emptying the package folder");
        }
        fs::create_dir_all(&dir).expect("a package folder");
        let built = package::build_deb(&Inputs {
            binary: &binary(),
            root: &workspace_root(),
            out_dir: &dir,
        })
        .unwrap_or_else(|err| panic!("building the package: {err:#}"));
        let tree = dir.join("unpacked");
        ok(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&built.deb)
            .arg(&tree));
        Built {
            deb: built.deb,
            version: built.version,
            tree,
            dir,
        }
    })
}

/// The commands `spacefilter --help` lists (but `help`).
fn commands() -> Vec<String> {
    let help = ok(Command::new(binary()).arg("--help"));
    let listed = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section in --help");
    let names: Vec<String> = listed
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() > 15 && names.iter().any(|n| n == "block"),
        "reading --help's commands: {names:?}"
    );
    names
}

#[test]
fn the_package_ships_the_binary_the_unit_the_config_the_pages_and_the_completions() {
    let built = build();
    let name = built
        .deb
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name");
    assert!(
        name.starts_with(&format!("spacefilter_{}_", built.version))
            && built.deb.extension().is_some_and(|e| e == "deb"),
        "{name}"
    );
    let version = ok(Command::new(binary()).arg("--version"));
    assert_eq!(version.trim(), format!("spacefilter {}", built.version));

    // What `dpkg-deb -c` lists: mode, owner, size, date, time, path.
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&built.deb));
    eprintln!("{listing}");
    let entry = |path: &str| -> (String, String, u64) {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        (
            fields[0].to_owned(),
            fields[1].to_owned(),
            fields[2].parse().expect("a size"),
        )
    };
    let (mode, owner, size) = entry(BINARY);
    assert_eq!((mode.as_str(), owner.as_str()), ("-rwxr-xr-x", "root/root"));
    assert!(size > 1 << 20, "the binary is {size} bytes");
    for path in [UNIT, CONFIG, COPYRIGHT, CHANGELOG] {
        let (mode, owner, size) = entry(path);
        assert_eq!(
            (mode.as_str(), owner.as_str()),
            ("-rw-r--r--", "root/root"),
            "{path}"
        );
        assert!(size > 0, "{path} is empty");
    }
    // The changelog's newest entry is of this version.
    let changelog = ok(Command::new("zcat").arg(built.tree.join(CHANGELOG)));
    assert!(
        changelog.starts_with(&format!("spacefilter ({}) ", built.version)),
        "{changelog}"
    );
    for (_, path) in COMPLETIONS {
        assert!(entry(path).2 > 1000, "{path} is nearly empty");
    }
    for page in [
        "spacefilter.8.gz",
        "spacefilter-run.8.gz",
        "spacefilter-block.8.gz",
    ] {
        entry(&format!("{MAN_DIR}/{page}"));
    }
    // The unit and the config are the project's own files.
    for (path, source) in [
        (UNIT, "packaging/spacefilter.service"),
        (CONFIG, "packaging/spacefilter.toml"),
    ] {
        assert_eq!(
            fs::read(built.tree.join(path)).expect("unpacked"),
            fs::read(workspace_root().join(source)).expect("the source"),
            "{path}"
        );
    }
}

#[test]
fn the_package_says_what_it_is_and_needs_and_its_scripts_are_sound() {
    let built = build();
    // The control fields.
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&built.deb));
    eprintln!("{info}");
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} field:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "spacefilter");
    assert_eq!(field("Version"), built.version);
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    for needed in ["libc6 (>= ", "iproute2", "init-system-helpers"] {
        assert!(depends.contains(needed), "Depends: {depends}");
    }
    let installed: u64 = field("Installed-Size").parse().expect("a number");
    let binary_size = fs::metadata(built.tree.join(BINARY))
        .expect("the binary")
        .len();
    assert!(
        installed >= binary_size / 1024,
        "Installed-Size {installed} KiB"
    );
    let conffiles = ok(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&built.deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), format!("/{CONFIG}"));
    // The maintainer scripts: there, executable, and valid sh.
    let control = built.dir.join("control");
    ok(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&built.deb)
        .arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = fs::metadata(&path)
            .unwrap_or_else(|err| panic!("{script}: {err}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
        ok(Command::new("sh").arg("-n").arg(&path));
    }
    // Every file but the conffile has its sum, and the sums hold.
    let sums = fs::read_to_string(control.join("md5sums")).expect("md5sums");
    assert!(sums.contains(&format!("  {BINARY}\n")), "{sums}");
    assert!(!sums.contains("etc/"), "{sums}");
    ok(Command::new("md5sum")
        .args(["--check", "--quiet"])
        .arg(control.join("md5sums"))
        .current_dir(&built.tree));

    // The shipped binary runs, stripped.
    let shipped = built.tree.join(BINARY);
    assert_eq!(
        ok(Command::new(&shipped).arg("--version")).trim(),
        format!("spacefilter {}", built.version)
    );
    let symbols = run(Command::new("nm").arg(&shipped));
    assert!(
        String::from_utf8_lossy(&symbols.stderr).contains("no symbols"),
        "the shipped binary keeps its symbols"
    );
}

#[test]
fn the_manual_pages_render_one_per_command() {
    let built = build();
    let man_dir = built.tree.join(MAN_DIR);
    let mut expected: Vec<String> = commands()
        .iter()
        .map(|c| format!("spacefilter-{c}.8.gz"))
        .collect();
    expected.push("spacefilter.8.gz".to_owned());
    for page in &expected {
        assert!(
            man_dir.join(page).is_file(),
            "no page {page} in {}",
            man_dir.display()
        );
    }
    // Nested commands (limit set, shield on, ...) have theirs too.
    assert!(man_dir.join("spacefilter-limit-set.8.gz").is_file());
    assert!(
        !man_dir.join("spacefilter-manpage.8.gz").exists(),
        "the hidden generator has no page"
    );

    let mut pages: Vec<PathBuf> = fs::read_dir(&man_dir)
        .expect("the man folder")
        .map(|e| e.expect("an entry").path())
        .collect();
    pages.sort();
    for page in &pages {
        let troff = ok(Command::new("gzip").arg("-dc").arg(page));
        let stem = page
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".8.gz"))
            .expect("NAME.8.gz");
        assert!(
            troff
                .lines()
                .any(|l| l.starts_with(&format!(".TH {stem} 8 "))),
            "{}: no title line:\n{troff}",
            page.display()
        );
        // Rendered as `man` shows it, with groff's warnings on.
        let out = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80"));
        let shown = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {}: {}\n{warnings}",
            page.display(),
            out.status
        );
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
            assert!(shown.contains(section), "{stem}: no {section}:\n{shown}");
        }
    }
}

#[test]
fn the_main_page_says_where_things_are() {
    let built = build();
    let man_dir = built.tree.join(MAN_DIR);
    // Control: a page with a fault in it does draw a warning.
    let bad = built.dir.join("bad.8");
    fs::write(&bad, ".TH bad 8\n.SH NAME\nbad \\- a page\n.XX undefined\n").expect("writing");
    let out = run(Command::new("man").args(["--warnings", "-l"]).arg(&bad));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning"),
        "man --warnings does not report a fault"
    );
    let top = ok(Command::new("man")
        .arg("-l")
        .arg(man_dir.join("spacefilter.8.gz"))
        .env("MANWIDTH", "80"));
    // The title line read whole: the footer has the date, the version and
    // the page.
    let footer = top.trim_end().lines().last().unwrap_or_default();
    let dated = footer.split_whitespace().any(|w| {
        w.len() == 10
            && w.chars().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            })
    });
    assert!(
        dated && footer.contains(&format!("spacefilter {}", built.version)),
        "the footer: {footer:?}"
    );
    for needed in [
        "FILES",
        "/var/lib/spacefilter",
        "/run/spacefilter/spacefilter.sock",
        "/etc/spacefilter/spacefilter.toml",
        "spacefilter-block(8)",
        "Exit status",
    ] {
        assert!(
            top.contains(needed),
            "spacefilter(8) lacks {needed}:\n{top}"
        );
    }
    let run_page = ok(Command::new("man")
        .arg("-l")
        .arg(man_dir.join("spacefilter-run.8.gz"))
        .env("MANWIDTH", "80"));
    assert!(
        run_page.contains("--pin-dir") && run_page.contains("--config"),
        "{run_page}"
    );
}

#[test]
fn the_completions_know_the_commands() {
    let built = build();
    for (shell, path) in COMPLETIONS {
        let script = fs::read_to_string(built.tree.join(path)).expect("a completion script");
        // (fish names long options without their dashes.)
        for word in ["block", "unblock", "shield", "iface", "pin-dir"] {
            assert!(
                script.contains(word),
                "the {shell} completion does not know {word}"
            );
        }
    }
    // bash, as a shell completes `spacefilter bl<TAB>` and `spacefilter
    // run --mo<TAB>`.
    let script = built.tree.join(COMPLETIONS[0].1);
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            "source '{}'\nCOMP_WORDS=({line})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             _spacefilter spacefilter '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script.display(),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        ok(Command::new("bash").arg("-c").arg(program))
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(complete(&["spacefilter", "bl"]), ["block"]);
    assert_eq!(complete(&["spacefilter", "run", "--mo"]), ["--mode"]);
    // Control: a word no command starts with completes to nothing.
    assert!(complete(&["spacefilter", "zz"]).is_empty());
}

/// The unit with `ExecStart` on the unpacked binary (`verify` checks that it
/// is there and executable), in a folder of its own.
fn unit_for_verify(built: &Built, text: &str, name: &str) -> PathBuf {
    let exec = "ExecStart=/usr/sbin/spacefilter ";
    assert_eq!(text.matches(exec).count(), 1, "one ExecStart on /usr/sbin");
    let rewritten = text.replace(
        exec,
        &format!("ExecStart={} ", built.tree.join(BINARY).display()),
    );
    let dir = built.dir.join(format!("verify-{name}"));
    fs::create_dir_all(&dir).expect("a folder");
    let path = dir.join("spacefilter.service");
    fs::write(&path, rewritten).expect("writing the unit");
    path
}

/// `systemd-analyze verify` on `unit`, finding the package's manual pages
/// (the unit's Documentation=); its exit status and what it printed.
fn verify(built: &Built, unit: &Path) -> (bool, String) {
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("MANPATH", built.tree.join("usr/share/man"))
        .env("SYSTEMD_LOG_COLOR", "0"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let built = build();
    let text = fs::read_to_string(built.tree.join(UNIT)).expect("the unit");
    let unit = unit_for_verify(built, &text, "shipped");
    let (ok_status, said) = verify(built, &unit);
    assert!(
        ok_status && said.trim().is_empty(),
        "systemd-analyze verify on the shipped unit:\n{said}"
    );
    // What the unit promises, as systemd reads it.
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=spacefilter",
        "RuntimeDirectory=spacefilter",
        "CapabilityBoundingSet=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "the unit has no {line}"
        );
    }
    let security = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let exposure = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for spacefilter.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{security}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    // 0 is locked down, 10 is unprotected; a service that loads BPF
    // programs and owns interfaces keeps some capabilities.
    assert!(exposure <= 5.0, "exposure {exposure}:\n{security}");

    // Controls: verify does read what it is given. A misspelt setting
    // and a missing binary are each reported.
    let typo = unit_for_verify(
        built,
        &text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
        "typo",
    );
    let (_, said) = verify(built, &typo);
    assert!(said.contains("ProtectSytem"), "{said}");
    let missing = unit_for_verify(built, &text, "missing");
    let shipped = built.tree.join(BINARY).display().to_string();
    let unit_text = fs::read_to_string(&missing).expect("the unit");
    fs::write(
        &missing,
        unit_text.replace(&shipped, &format!("{shipped}-missing")),
    )
    .expect("writing the unit");
    let (status, said) = verify(built, &missing);
    assert!(!status && said.contains("not executable"), "{said}");
}

#[test]
fn the_sample_config_reads_and_the_daemon_asks_for_an_interface() {
    let config = workspace_root().join("packaging/spacefilter.toml");
    let text = fs::read_to_string(&config).expect("the sample config");
    spacefilter::config::ConfigFile::load(&config)
        .unwrap_or_else(|err| panic!("the sample config: {err}"));
    // Each example in its comments, taken in, reads too: a top-level
    // setting alone, a table's settings (below its `# [table]` line)
    // together.
    let dir = Scratch::new("sample-config").expect("a scratch directory");
    let mut examples: Vec<String> = Vec::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        let Some(line) = line.strip_prefix("# ") else {
            table = None;
            continue;
        };
        if line.starts_with('[') && line.ends_with(']') {
            examples.push(format!("{line}\n"));
            table = Some(line.to_owned());
            continue;
        }
        let setting = line
            .split_once(" = ")
            .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        match (&table, setting) {
            (Some(_), true) => {
                let last = examples.last_mut().expect("the table's header");
                last.push_str(line);
                last.push('\n');
            }
            (None, true) => examples.push(line.to_owned()),
            _ => {}
        }
    }
    assert!(examples.len() >= 8, "examples found: {examples:?}");
    for table in ["[fleet]", "[crowdsec]"] {
        assert!(
            examples
                .iter()
                .any(|e| e.starts_with(table) && e.lines().count() > 2),
            "an example of {table}: {examples:?}"
        );
    }
    for example in &examples {
        let path = dir.join("example.toml");
        fs::write(&path, example).expect("writing");
        spacefilter::config::ConfigFile::load(&path)
            .unwrap_or_else(|err| panic!("the example {example:?}: {err}"));
    }

    // As installed, it names no interface: the daemon refuses to start,
    // saying what to do, with the exit status of a refusal (2).
    let out = run(Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("sock")));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("no interface to attach to"), "{said}");
    assert!(!dir.join("state").exists(), "nothing was set up");
}

#[test]
fn the_generators_refuse_bad_input() {
    let out = run(Command::new(binary()).args(["completions", "tcsh"]));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("tcsh") && said.contains("bash"), "{said}");

    let dir = Scratch::new("manpage").expect("a scratch directory");
    let file = dir.join("a-file");
    fs::write(&file, "").expect("writing");
    let out = run(Command::new(binary()).args(["manpage", "--out"]).arg(&file));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("is not a directory"), "{said}");

    // And write where they are told.
    let out_dir = dir.join("pages");
    ok(Command::new(binary())
        .args(["manpage", "--out"])
        .arg(&out_dir));
    assert!(out_dir.join("spacefilter.8").is_file());
}
