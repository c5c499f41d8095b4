//! `cargo xtask setup`: makes a fresh machine able to build, test and demo
//! spacefilter. Every step checks first and does nothing when its thing is
//! already there, so every other task runs it.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::tasks::run_cmd;

/// The bpf-linker release that links against LLVM 21-23.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the tests, the demo and the benchmarks use, with the Debian
/// package that brings each.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("tcpdump", "tcpdump"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("xdp-filter", "xdp-tools"),
    ("curl", "curl"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    // The service's tests: the unit checked, the daemon run with the
    // unit's capabilities only, the manual pages rendered.
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("man", "man-db"),
    // The fleet's tests run an etcd cluster of their own.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
];

fn say(msg: &str) {
    println!("setup: {msg}");
}

pub(crate) fn run() -> Result<()> {
    check_root()?;
    check_kernel()?;
    put_cargo_bin_on_path();
    system_tools()?;
    crowdsec()?;
    rust_toolchains()?;
    bpf_linker()?;
    mount_bpffs()?;
    say("ready");
    Ok(())
}

fn check_root() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        bail!(
            "spacefilter's setup, tests and demo load XDP programs and create network namespaces, \
             which needs root (running as uid {euid}); run again as root, e.g. with sudo"
        );
    }
    Ok(())
}

fn check_kernel() -> Result<()> {
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!(
            "this kernel has no BPF file system (/sys/fs/bpf is missing): it was built without \
             CONFIG_BPF_SYSCALL, and spacefilter cannot run on it"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        say("warning: /sys/kernel/btf/vmlinux is missing (kernel without BTF); continuing");
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`; make sure the
/// builds this process starts can find it.
fn put_cargo_bin_on_path() {
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if !env::split_paths(&path).any(|p| p == bin) {
        let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
            .expect("PATH entries joinable");
        // SAFETY: xtask is single-threaded at this point.
        unsafe { env::set_var("PATH", joined) };
    }
}

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Refreshes the package lists from Debian's mirror.
pub(crate) fn apt_update() -> Result<()> {
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run_cmd(
        update,
        "apt-get update (is the Debian package mirror reachable?)",
    )
}

fn apt_install(packages: &[&str]) -> Result<()> {
    say(&format!(
        "installing {} from Debian's packages",
        packages.join(" ")
    ));
    apt_update()?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(
        install,
        &format!(
            "apt-get install {} (is the Debian package mirror reachable?)",
            packages.join(" ")
        ),
    )
}

fn system_tools() -> Result<()> {
    // And what `cargo xtask package` runs.
    let mut missing: Vec<&str> = SYSTEM_TOOLS
        .iter()
        .chain(&xtask::package::TOOLS)
        .filter(|(command, _)| !have(command))
        .map(|&(_, package)| package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        say(
            "system tools present (iproute2, ping, tcpdump, ethtool, bpftool, xdp-tools, nftables, iptables, qemu, busybox, systemd, man-db, dpkg-dev, etcd)",
        );
        return Ok(());
    }
    apt_install(&missing)
}

/// CrowdSec, for the bouncer's tests: they run a local API of their own
/// (own configuration, database and port, in a lab namespace), so the
/// host's service is switched off. Debian's package registers with
/// CrowdSec's central API on install unless its credentials file already
/// has something in it (README.Debian): a placeholder keeps the install
/// offline.
fn crowdsec() -> Result<()> {
    if have("cscli") && have("crowdsec") {
        say("crowdsec present");
        return host_services_off();
    }
    let capi = Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if fs::metadata(capi).map_or(true, |m| m.len() == 0) {
        fs::create_dir_all("/etc/crowdsec")?;
        fs::write(
            capi,
            "# Central API registration skipped: this host runs CrowdSec for spacefilter's tests
",
        )
        .with_context(|| format!("writing {}", capi.display()))?;
    }
    apt_install(&["crowdsec"])?;
    host_services_off()
}

/// The services Debian's crowdsec and etcd-server packages start: the tests
/// run instances of their own, so the host's are switched off.
fn host_services_off() -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(());
    }
    for service in ["crowdsec.service", "etcd.service"] {
        let enabled = Command::new("systemctl")
            .args(["is-enabled", "--quiet", service])
            .status()
            .is_ok_and(|s| s.success());
        if enabled {
            let mut disable = Command::new("systemctl");
            disable.args(["disable", "--now", service]);
            run_cmd(disable, &format!("systemctl disable --now {service}"))?;
        }
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_toolchains() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is not installed: the XDP program is built with rustup's nightly toolchain",
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("installing the nightly toolchain (builds the XDP program)");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        run_cmd(cmd, "rustup toolchain install nightly")?;
    }
    components("nightly", &["rust-src", "clippy"])?;
    // The toolchain that builds everything else: whatever rustup has active
    // here (the workspace pins none).
    let active = output(Command::new("rustup").args(["show", "active-toolchain"]))
        .and_then(|out| out.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "stable".to_owned());
    components(&active, &["clippy", "rustfmt"])
}

/// Adds the rustup components of `toolchain` that are missing.
fn components(toolchain: &str, wanted: &[&str]) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .unwrap_or_default();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        say(&format!(
            "{toolchain} components present ({})",
            wanted.join(", ")
        ));
        return Ok(());
    }
    say(&format!(
        "adding {} to the {toolchain} toolchain",
        missing.join(", ")
    ));
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "--toolchain", toolchain])
        .args(&missing);
    run_cmd(cmd, &format!("rustup component add {}", missing.join(" ")))
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        say(&format!("{} present", version.trim()));
        return Ok(());
    }
    // bpf-linker must link the LLVM of the nightly toolchain (or a newer
    // one). The nightly toolchain ships its LLVM as a shared library: link
    // against that, which needs nothing from outside. Failing that, use
    // Debian's LLVM 22.
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "--locked", "--no-default-features"]);
    if let Some((major, prefix)) = nightly_llvm()? {
        say(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {major}"
        ));
        cmd.args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix);
    } else {
        apt_install(&["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"])?;
        say(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22"
        ));
        let path = env::var_os("PATH").unwrap_or_default();
        let path = env::join_paths(
            std::iter::once(PathBuf::from("/usr/lib/llvm-22/bin")).chain(env::split_paths(&path)),
        )?;
        cmd.args(["--features", "llvm-22"]).env("PATH", path);
    }
    cmd.arg(format!("bpf-linker@{BPF_LINKER_VERSION}"));
    run_cmd(cmd, "cargo install bpf-linker (is crates.io reachable?)")?;
    let version = output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run")?;
    say(&format!("{} installed", version.trim()));
    Ok(())
}

/// The nightly toolchain's LLVM major version and a prefix folder whose
/// `lib/` holds its shared library under the names bpf-linker's build looks
/// for. The folder is kept for good: bpf-linker loads the library through
/// it at run time.
fn nightly_llvm() -> Result<Option<(u32, PathBuf)>> {
    let Some(verbose) = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
    else {
        return Ok(None);
    };
    let Some(major) = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.trim().parse::<u32>().ok())
    else {
        return Ok(None);
    };
    if !(21..=23).contains(&major) {
        return Ok(None);
    }
    let Some(sysroot) =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
    else {
        return Ok(None);
    };
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let Some(library) = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
    else {
        return Ok(None);
    };
    let prefix = cargo_home().join("spacefilter-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = library.file_name().expect("a file").to_owned();
    for name in [PathBuf::from("libLLVM.so"), PathBuf::from(soname)] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&library, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(Some((major, prefix)))
}

fn mount_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        say("bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    say("mounting bpffs at /sys/fs/bpf");
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "bpf", "bpf", "/sys/fs/bpf"]);
    run_cmd(cmd, "mount -t bpf bpf /sys/fs/bpf")
}
