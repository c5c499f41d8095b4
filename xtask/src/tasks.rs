//! The tasks that run after setup.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, failing with `what` if it does not succeed.
pub(crate) fn run_cmd(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {}", cmd.get_program().display()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn step(title: &str) {
    println!("==> {title}");
}

pub(crate) fn build() -> Result<()> {
    step("cargo build --workspace");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--workspace",
        "--exclude",
        "spacefilter-ebpf",
        "--all-targets",
    ]);
    run_cmd(cmd, "build")
}

pub(crate) fn test(args: &[String]) -> Result<()> {
    step("cargo fmt --check");
    let mut cmd = cargo();
    cmd.args(["fmt", "--all", "--", "--check"]);
    run_cmd(cmd, "formatting check (run `cargo fmt --all`)")?;

    step("cargo clippy (warnings denied)");
    let mut cmd = cargo();
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        "spacefilter-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run_cmd(cmd, "clippy")?;
    // The XDP program builds for the BPF target with the nightly toolchain.
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "spacefilter-ebpf",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .args(["--", "-D", "warnings"]);
    run_cmd(cmd, "clippy (XDP program)")?;

    // The end-to-end tests run the daemon binary itself.
    step("cargo build (the daemon binary the end-to-end tests run)");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "spacefilter", "--bin", "spacefilter"]);
    run_cmd(cmd, "build")?;

    step("cargo test (fixtures through BPF_PROG_TEST_RUN, property test, netns and daemon tests)");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "spacefilter-ebpf", "--"])
        .args(args)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    // Pass the output through, adding up the per-binary results for one
    // closing line over the whole suite.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!();
    println!("whole suite: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

pub(crate) fn demo() -> Result<()> {
    step("building the demo and the spacefilter binary it runs");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "spacefilter-tests", "--bin", "demo"]);
    run_cmd(cmd, "build")?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "spacefilter", "--bin", "spacefilter"]);
    run_cmd(cmd, "build")?;
    let demo = workspace_root().join("target/debug/demo");
    step("running the demo (Ctrl-C stops it and cleans up)");
    // Replace this process: Ctrl-C then reaches the demo alone, which
    // removes its lab before exiting.
    let err = Command::new(&demo).current_dir(workspace_root()).exec();
    Err(err).with_context(|| format!("could not start {}", demo.display()))
}

pub(crate) fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    // The control-plane part runs the daemon: the `spacefilter` binary
    // next to the benchmark's (see `spacefilter_tests::daemon::binary`).
    step("building the benchmark and the daemon (release)");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--package",
        "spacefilter-tests",
        "--bin",
        "bench",
        "--package",
        "spacefilter",
        "--bin",
        "spacefilter",
    ]);
    run_cmd(cmd, "build")?;
    step(
        "benchmarking (per-packet cost, control plane with the daemon, floods in the veth \
         harness, the fleet on three hosts)",
    );
    let mut cmd = Command::new(workspace_root().join("target/release/bench"));
    cmd.current_dir(workspace_root())
        .args(["--out", "BENCHMARKS.md"]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(parts) = only {
        cmd.args(["--only", parts]);
    }
    run_cmd(cmd, "bench")
}

pub(crate) fn fuzz(cases: u32) -> Result<()> {
    step(&format!(
        "differential fuzzing: {cases} cases (configurations with up to 256 frames each), release build"
    ));
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "spacefilter-tests",
        "--test",
        "differential",
        "--",
        "--exact",
        "program_matches_pipeline_reference",
        "--nocapture",
    ])
    .env("SPACEFILTER_FUZZ_CASES", cases.to_string());
    run_cmd(cmd, "differential fuzzing")
}

pub(crate) fn package() -> Result<()> {
    step("cargo build --release (the binary the package ships)");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--package",
        "spacefilter",
        "--bin",
        "spacefilter",
    ]);
    run_cmd(cmd, "build")?;
    step("the Debian package");
    let root = workspace_root();
    let out_dir = root.join("target/debian");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let package = xtask::package::build_deb(&xtask::package::Inputs {
        binary: &root.join("target/release/spacefilter"),
        root: &root,
        out_dir: &out_dir,
    })?;
    println!("{}", package.deb.display());
    Ok(())
}
