//! `cargo xtask kernels`: runs the XDP program on the kernels distributions
//! ship, in virtual machines. For each kernel it fetches Debian's cloud
//! kernel package (cached under `~/.cache/spacefilter/kernels/`), packs the test binaries,
//! the shared libraries they link and a static busybox into an initramfs,
//! boots the kernel under qemu (KVM when `/dev/kvm` works, plain emulation
//! otherwise) and reads the results from the serial console.
//!
//! Inside the guest the `verifier_budget` test loads the program first and
//! prints how many instructions the verifier processed, or the verifier's
//! refusal; when the program loads, the suites follow: `fixtures`,
//! `guards`, `verdicts` and a bounded `differential` run through
//! `BPF_PROG_TEST_RUN`, and `netns` (live traffic through a block and an
//! unblock on veth pairs in network namespaces).

use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::tasks::{cargo, run_cmd, workspace_root};

/// The test that loads the program and reports the verifier's count.
const LOAD_TEST: &str = "verifier_budget";
/// The suites that run through `BPF_PROG_TEST_RUN` once the program loads.
const SUITES: &[&str] = &["fixtures", "guards", "verdicts", "netns", "differential"];
/// The host's tools the suites run (iproute2's, iputils' ping: busybox's
/// cannot make veth pairs and prints other statistics), copied into the
/// guest at the same paths.
const HOST_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/bridge", "/usr/bin/ping"];
/// Differential cases in a guest: emulated, each takes about 2 s.
const GUEST_FUZZ_CASES: u32 = 48;
/// How long one guest may run before it is stopped.
const GUEST_TIMEOUT: Duration = Duration::from_mins(40);
/// Marks the guest prints around each test binary's output.
const RUN_MARK: &str = "@@kernels run ";
const EXIT_MARK: &str = "@@kernels exit ";
const SKIP_MARK: &str = "@@kernels skip ";
const UNAME_MARK: &str = "@@kernels uname ";

/// A kernel series Debian ships as a cloud image package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Series {
    /// Debian 12's own kernel.
    V6_1,
    /// The newer long-term kernel Debian 12 carries in its updates.
    V6_12,
}

/// The kernels named on the command line.
#[derive(Clone, Debug)]
pub(crate) struct Choice(pub(crate) Vec<Series>);

impl Choice {
    /// `6.1`, `6.12` or `all`.
    pub(crate) fn parse(arg: &str) -> Result<Choice, String> {
        match arg {
            "6.1" => Ok(Choice(vec![Series::V6_1])),
            "6.12" => Ok(Choice(vec![Series::V6_12])),
            "all" => Ok(Choice(vec![Series::V6_1, Series::V6_12])),
            other => Err(format!("unknown kernel {other:?}: choose 6.1, 6.12 or all")),
        }
    }
}

impl Series {
    /// The package name up to the ABI number, and what follows it.
    fn package_pattern(self) -> (&'static str, &'static str) {
        match self {
            Series::V6_1 => ("linux-image-6.1.0-", "-cloud-amd64"),
            Series::V6_12 => ("linux-image-6.12.", "+deb12-cloud-amd64"),
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        })
    }
}

fn step(title: &str) {
    println!("==> {title}");
}

/// What one guest reported.
struct Outcome {
    series: Series,
    release: Option<String>,
    /// Each test binary run: its name, exit status, and the output lines.
    runs: Vec<(String, Option<i32>, Vec<String>)>,
    skipped: Vec<String>,
    seconds: f64,
    finished: bool,
}

pub(crate) fn run(series: &[Series]) -> Result<()> {
    let binaries = build_tests()?;
    let dir = workspace_root().join("target/kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cache = kernel_cache();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let accel = match kvm_usable() {
        Ok(()) => "kvm",
        Err(why) => {
            println!("kernels: {why}; the guests run under plain emulation (TCG, slower)");
            "tcg"
        }
    };
    let mut outcomes = Vec::new();
    for &s in series {
        let kernel = fetch_kernel(&cache, s)?;
        let initramfs = dir.join(format!("initramfs-{s}.cpio"));
        step("packing the initramfs (busybox, the test binaries, their libraries, veth)");
        let modules = kernel_modules(&kernel)?;
        write_initramfs(&initramfs, &binaries, &modules)?;
        step(&format!("booting {} ({accel})", kernel.display()));
        let console = dir.join(format!("console-{s}.log"));
        outcomes.push(boot(s, &kernel, &initramfs, accel, &console)?);
    }
    println!();
    let mut all_good = true;
    for outcome in &outcomes {
        all_good &= summarise(outcome);
    }
    record_in_benchmarks(&outcomes, accel)?;
    if !all_good {
        bail!("a kernel did not load the program or a suite failed (see above)");
    }
    Ok(())
}

/// Where unpacked kernel packages are kept: outside the work tree, so that
/// a fresh clone (CI's) boots without downloading them again.
fn kernel_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map_or_else(
            || workspace_root().join("target/kernels"),
            |base| base.join("spacefilter/kernels"),
        )
}

/// Builds the test binaries and returns their paths, by name.
fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    step("building the test binaries");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json",
        "--package",
        "spacefilter-tests",
    ]);
    for name in std::iter::once(&LOAD_TEST).chain(SUITES) {
        cmd.args(["--test", name]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let out = cmd
        .output()
        .context("could not start cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for name in std::iter::once(&LOAD_TEST).chain(SUITES) {
        let path = stdout
            .lines()
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")))
            .find_map(|l| json_string(l, "executable"))
            .with_context(|| format!("cargo built no executable for the test {name}"))?;
        found.push(((*name).to_owned(), PathBuf::from(path)));
    }
    Ok(found)
}

/// The string value of `key` in one line of cargo's JSON messages (paths
/// cargo writes have no escapes in them on this project's machines).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

/// Whether KVM can run a stock kernel here. The PVM flavour of KVM (the
/// `kvm_pvm` module, found inside some cloud sandboxes) runs only kernels
/// built as PVM guests: a distribution kernel stops early in its boot.
fn kvm_usable() -> Result<(), &'static str> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm is not usable");
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err(
            "/dev/kvm is PVM (the kvm_pvm module), which boots only PVM guest kernels, not \
             Debian's",
        );
    }
    Ok(())
}

/// The newest package of the series in the apt lists.
fn newest_package(series: Series) -> Result<Option<String>> {
    let (prefix, suffix) = series.package_pattern();
    let pattern = format!(
        "^{}[0-9]+{}$",
        prefix.replace('.', "\\.").replace('+', "\\+"),
        suffix.replace('.', "\\.").replace('+', "\\+")
    );
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("could not run apt-cache (the kernels come from Debian's archive)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name))
}

/// Downloads and unpacks the newest kernel of the series (once), returning
/// the path of its vmlinuz.
fn fetch_kernel(dir: &Path, series: Series) -> Result<PathBuf> {
    let mut package = newest_package(series)?;
    if package.is_none() {
        crate::setup::apt_update()?;
        package = newest_package(series)?;
    }
    let package = package.with_context(|| {
        let (prefix, suffix) = series.package_pattern();
        format!(
            "Debian's package lists have no {prefix}N{suffix} package for kernel {series} \
             (this task expects a Debian 12 host)"
        )
    })?;
    let unpacked = dir.join(&package);
    if let Some(vmlinuz) = find_vmlinuz(&unpacked) {
        println!("kernels: {package} is cached in {}", unpacked.display());
        return Ok(vmlinuz);
    }
    step(&format!("downloading {package}"));
    let download = dir.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&download)
        .args(["download", "-qq", &package]);
    run_cmd(cmd, &format!("apt-get download {package}"))?;
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let partial = dir.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(&partial);
    run_cmd(cmd, &format!("unpacking {}", deb.display()))?;
    fs::rename(&partial, &unpacked)?;
    let _ = fs::remove_dir_all(&download);
    find_vmlinuz(&unpacked).with_context(|| format!("{package} has no boot/vmlinuz-*"))
}

/// The modules of the unpacked kernel the tests need that it does not build
/// in (veth, for the tests that make veth pairs), uncompressed for
/// busybox's `insmod`, by file name.
/// The modules the suites need where the kernel has them as modules, by
/// config symbol, in load order: veth pairs, and the lab's bridge.
const MODULES: &[(&str, &str)] = &[
    ("VETH", "drivers/net/veth.ko"),
    ("LLC", "net/llc/llc.ko"),
    ("STP", "net/802/stp.ko"),
    ("BRIDGE", "net/bridge/bridge.ko"),
];

/// The contents of module `base` (`.ko`, or compressed `.ko.xz`,
/// `.ko.zst`), unpacked; `None` if the kernel has no such file.
fn module_bytes(base: &Path) -> Result<Option<Vec<u8>>> {
    for (suffix, decompress) in [("", None), (".xz", Some("xz")), (".zst", Some("zstd"))] {
        let path = PathBuf::from(format!("{}{suffix}", base.display()));
        if !path.exists() {
            continue;
        }
        let bytes = match decompress {
            None => fs::read(&path)?,
            Some(tool) => {
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&path)
                    .output()
                    .with_context(|| {
                        format!("could not run {tool} to unpack {}", path.display())
                    })?;
                if !out.status.success() {
                    bail!("{tool} -dc {} failed", path.display());
                }
                out.stdout
            }
        };
        return Ok(Some(bytes));
    }
    Ok(None)
}

fn kernel_modules(vmlinuz: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let unpacked = vmlinuz
        .parent()
        .and_then(Path::parent)
        .context("the kernel's package tree")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("the kernel's file is not named vmlinuz-RELEASE")?;
    let config = fs::read_to_string(unpacked.join(format!("boot/config-{release}")))
        .with_context(|| format!("reading the config of kernel {release}"))?;
    let mut modules = Vec::new();
    for (order, (symbol, path)) in MODULES.iter().enumerate() {
        if config.lines().any(|l| l == format!("CONFIG_{symbol}=y")) {
            continue;
        }
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(path);
        let base = unpacked.join(format!("lib/modules/{release}/kernel/{path}"));
        match module_bytes(&base)? {
            // Numbered: the guest loads them in this order.
            Some(bytes) => modules.push((format!("{order}-{name}"), bytes)),
            None => println!(
                "kernels: kernel {release} has no {name} (CONFIG_{symbol}); the tests that \
                 need it will fail"
            ),
        }
    }
    Ok(modules)
}

fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    fs::read_dir(unpacked.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The guest's `/init`: mounts what the tests use, runs the load test and,
/// when the program loaded, the suites; then powers the guest off.
fn init_script() -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n\
         export RUST_BACKTRACE=0 HOME=/tmp\n\
         mkdir -p /proc /sys /dev /tmp /run /var\n\
         ln -s /run /var/run\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n\
         mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         for m in /modules/*.ko; do [ -e \"$m\" ] && insmod \"$m\"; done\n\
         ip link set lo up\n\
         cd /tmp\n",
    );
    let _ = writeln!(script, "export SPACEFILTER_FUZZ_CASES={GUEST_FUZZ_CASES}");
    let _ = writeln!(script, "echo \"{UNAME_MARK}$(uname -r)\"");
    // The load test's output goes to the console and to a file the script
    // reads to decide whether the suites can run.
    let _ = write!(
        script,
        "echo '{RUN_MARK}{LOAD_TEST}'\n\
         {{ /tests/{LOAD_TEST} --nocapture 2>&1; echo $? > /tmp/load.status; }} | tee /tmp/load.log\n\
         echo \"{EXIT_MARK}{LOAD_TEST} $(cat /tmp/load.status)\"\n"
    );
    script.push_str("if grep -q 'the verifier processed' /tmp/load.log; then\n");
    for suite in SUITES {
        let _ = write!(
            script,
            "  echo '{RUN_MARK}{suite}'\n  /tests/{suite} 2>&1\n  echo \"{EXIT_MARK}{suite} $?\"\n"
        );
    }
    script.push_str("else\n");
    for suite in SUITES {
        let _ = writeln!(script, "  echo '{SKIP_MARK}{suite}'");
    }
    script.push_str("fi\nsync\nreboot -f\n");
    script
}

/// Writes the initramfs: a newc cpio archive holding busybox, `/init`, the
/// test binaries under `/tests`, the shared libraries they load (at the
/// paths the dynamic loader looks for them) and kernel modules under
/// `/modules`.
fn write_initramfs(
    path: &Path,
    binaries: &[(String, PathBuf)],
    modules: &[(String, Vec<u8>)],
) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let busybox_bytes = fs::read(busybox).unwrap_or_default();
    if busybox_bytes.is_empty() || has_interpreter(&busybox_bytes) {
        bail!(
            "the guests need a statically linked /bin/busybox (Debian's busybox-static; \
             `cargo xtask setup` installs it when busybox is missing)"
        );
    }
    let mut archive = Cpio::default();
    archive.file("bin/busybox", &busybox_bytes, 0o755);
    archive.file("init", init_script().as_bytes(), 0o755);
    for (name, bytes) in modules {
        archive.file(&format!("modules/{name}"), bytes, 0o644);
    }
    let mut libraries = BTreeSet::new();
    // They go first on the guest's PATH.
    for tool in HOST_TOOLS {
        let path = Path::new(tool);
        let bytes = fs::read(path)
            .with_context(|| format!("reading {tool} (`cargo xtask setup` installs it)"))?;
        archive.file(tool.trim_start_matches('/'), &bytes, 0o755);
        libraries.extend(shared_libraries(path)?);
    }
    for (name, binary) in binaries {
        archive.file(
            &format!("tests/{name}"),
            &without_debug_info(binary)?,
            0o755,
        );
        libraries.extend(shared_libraries(binary)?);
    }
    for library in &libraries {
        let inside = library.to_str().context("a library path is not UTF-8")?;
        archive.file(
            inside.trim_start_matches('/'),
            &fs::read(library).with_context(|| format!("reading {}", library.display()))?,
            0o755,
        );
    }
    let bytes = archive.finish();
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The contents of `binary` without its debug sections: a tenth of the
/// size, so the guest's initramfs unpacks quickly.
fn without_debug_info(binary: &Path) -> Result<Vec<u8>> {
    let stripped = std::env::temp_dir().join(format!(
        "spacefilter-kernels-{}-{}",
        std::process::id(),
        binary
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("binary")
    ));
    let mut cmd = Command::new("strip");
    cmd.arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(binary);
    run_cmd(cmd, &format!("strip --strip-debug {}", binary.display()))?;
    let bytes = fs::read(&stripped).with_context(|| format!("reading {}", stripped.display()))?;
    let _ = fs::remove_file(&stripped);
    Ok(bytes)
}

/// Whether a 64-bit ELF file names a dynamic loader (a `PT_INTERP` program
/// header): a statically linked program has none.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        usize::try_from(phoff + i * phentsize)
            .ok()
            .and_then(|at| read(at, 4))
            == Some(u64::from(PT_INTERP))
    })
}

/// The shared libraries `binary` loads, its interpreter included, as `ldd`
/// lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("could not run ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=> ") {
                Some((_, rest)) => rest,
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A newc-format cpio archive, built in memory.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(size).expect("files under 4 GiB"),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).expect("short names"),
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if name.is_empty() || !self.dirs.insert(name.to_owned()) {
            return;
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.header(name, 0o040_755, 0);
    }

    fn file(&mut self, name: &str, contents: &[u8], perm: u32) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.header(name, 0o100_000 | perm, contents.len());
        self.bytes.extend_from_slice(contents);
        self.pad();
    }

    fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        self.bytes
    }
}

/// Boots the kernel with the initramfs, passing the serial console through
/// to this terminal and to the file `console`, and collecting the guest's
/// reports.
fn boot(
    series: Series,
    kernel: &Path,
    initramfs: &Path,
    accel: &str,
    console: &Path,
) -> Result<Outcome> {
    let mut log =
        fs::File::create(console).with_context(|| format!("creating {}", console.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", &format!("q35,accel={accel}")]);
    if accel == "kvm" {
        cmd.args(["-cpu", "host"]);
    } else {
        cmd.args(["-cpu", "max"]);
    }
    cmd.args(["-smp", "2", "-m", "4096", "-nographic", "-no-reboot"])
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("could not start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut outcome = Outcome {
        series,
        release: None,
        runs: Vec::new(),
        skipped: Vec::new(),
        seconds: 0.0,
        finished: false,
    };
    let mut stdout = std::io::stdout();
    loop {
        let left = GUEST_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(stdout, "[{series}] {line}");
                let _ = writeln!(log, "{line}");
                record(&mut outcome, &line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                println!(
                    "kernels: the {series} guest ran past {} minutes; stopping it",
                    GUEST_TIMEOUT.as_secs() / 60
                );
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

fn record(outcome: &mut Outcome, line: &str) {
    // The firmware's terminal escapes can precede a mark on its line.
    let line = [UNAME_MARK, RUN_MARK, EXIT_MARK, SKIP_MARK]
        .iter()
        .find_map(|mark| line.find(mark))
        .map_or(line, |at| &line[at..]);
    if let Some(release) = line.strip_prefix(UNAME_MARK) {
        outcome.release = Some(release.trim().to_owned());
    } else if let Some(name) = line.strip_prefix(RUN_MARK) {
        outcome
            .runs
            .push((name.trim().to_owned(), None, Vec::new()));
    } else if let Some(rest) = line.strip_prefix(EXIT_MARK) {
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap_or_default();
        let status = words.next().and_then(|s| s.parse().ok());
        if let Some(run) = outcome.runs.iter_mut().rev().find(|r| r.0 == name) {
            run.1 = status;
        }
        if name == SUITES[SUITES.len() - 1] {
            outcome.finished = true;
        }
    } else if let Some(name) = line.strip_prefix(SKIP_MARK) {
        outcome.skipped.push(name.trim().to_owned());
        outcome.finished = true;
    } else if let Some(run) = outcome.runs.last_mut()
        && run.1.is_none()
    {
        run.2.push(line.to_owned());
    }
}

/// Prints the summary of one kernel; true when everything passed.
fn summarise(outcome: &Outcome) -> bool {
    let Outcome {
        series,
        release,
        runs,
        skipped,
        seconds,
        finished,
    } = outcome;
    println!(
        "==== kernel {series} ({}): boot and run took {seconds:.0} s; console in \
         target/kernels/console-{series}.log",
        release.as_deref().unwrap_or("did not report its release")
    );
    let mut good = *finished;
    if !finished {
        println!("  the guest stopped before it finished (see its console above)");
    }
    for (name, status, lines) in runs {
        let passed = *status == Some(0);
        good &= passed;
        let result = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("test result:"))
            .map_or("", String::as_str);
        println!(
            "  {name}: {} {result}",
            match status {
                Some(0) => "passed".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "did not finish".to_owned(),
            }
        );
        if name == LOAD_TEST {
            if let Some(count) = lines.iter().find(|l| l.contains("the verifier processed")) {
                println!("    {}", count.trim());
            } else {
                println!("    the program did not load; the last lines of the test's output:");
                let tail: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
                for line in &tail[tail.len().saturating_sub(40)..] {
                    println!("    | {line}");
                }
            }
        }
    }
    for name in skipped {
        println!("  {name}: skipped (the program did not load)");
    }
    good && skipped.is_empty()
}

/// The heading of BENCHMARKS.md's section of per-kernel results; `cargo
/// xtask bench` keeps the section when it rewrites the file.
const SECTION: &str = "## Kernels";

/// One table row: the kernel, what the verifier processed, each suite's
/// result, the guest's time.
fn table_row(outcome: &Outcome, accel: &str) -> String {
    let Outcome {
        series,
        release,
        runs,
        skipped,
        seconds,
        ..
    } = outcome;
    let mut row = format!(
        "| {series} | {} | ",
        release.as_deref().unwrap_or("(no release reported)")
    );
    let count = runs
        .iter()
        .find(|r| r.0 == LOAD_TEST)
        .and_then(|r| r.2.iter().find_map(|l| l.split("processed ").nth(1)))
        .and_then(|rest| rest.split_whitespace().next())
        .map_or_else(|| "refused".to_owned(), str::to_owned);
    let _ = write!(row, "{count} |");
    for suite in SUITES {
        let cell = if skipped.iter().any(|s| s == suite) {
            "skipped".to_owned()
        } else if let Some((_, status, lines)) = runs.iter().find(|r| r.0 == *suite) {
            let counts = lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix("test result: "))
                .map(|r| {
                    let r = r.trim_start_matches("ok.").trim_start_matches("FAILED.");
                    r.split(';')
                        .take(2)
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            match status {
                Some(0) => counts,
                Some(_) => format!("FAILED: {counts}"),
                None => "did not finish".to_owned(),
            }
        } else {
            "not run".to_owned()
        };
        let _ = write!(row, " {cell} |");
    }
    let _ = write!(row, " {seconds:.0} s ({accel}) |");
    row
}

/// Puts this run's rows into BENCHMARKS.md's per-kernel table, keeping
/// the rows of kernels not run this time.
fn record_in_benchmarks(outcomes: &[Outcome], accel: &str) -> Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let (before, section, after) = match text.find(&format!("\n{SECTION}\n")) {
        Some(at) => {
            let start = at + 1;
            let end = text[start + SECTION.len()..]
                .find("\n## ")
                .map_or(text.len(), |e| start + SECTION.len() + e + 1);
            (&text[..start], &text[start..end], &text[end..])
        }
        None => (text.as_str(), "", ""),
    };
    let mut rows: Vec<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| 6") || l.starts_with("| 5"))
        .map(|l| {
            let key = l.split('|').nth(1).unwrap_or_default().trim().to_owned();
            (key, l.to_owned())
        })
        .collect();
    for outcome in outcomes {
        let key = outcome.series.to_string();
        let row = table_row(outcome, accel);
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = row,
            None => rows.push((key, row)),
        }
    }
    let mut out = String::from(before);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{SECTION}\n\n\
         `cargo xtask kernels`: Debian's cloud kernels booted under qemu, the \
         program loaded and the suites run inside (`netns` with live traffic on \
         veth pairs; `differential` a bounded run of {GUEST_FUZZ_CASES} cases). \
         The verifier's count is the instructions it processed (the kernel's \
         limit is 1,000,000); the time is the guest's, boot included.\n"
    );
    let mut header = String::from("| kernel | release | verifier |");
    let mut rule = String::from("|---|---|---:|");
    for suite in SUITES {
        let _ = write!(header, " {suite} |");
        rule.push_str("---|");
    }
    header.push_str(" time |");
    rule.push_str("---:|");
    let _ = writeln!(out, "{header}\n{rule}");
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, row) in rows {
        let _ = writeln!(out, "{row}");
    }
    if !after.is_empty() {
        out.push('\n');
        out.push_str(after);
    }
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("kernels: the results are in BENCHMARKS.md ({SECTION})");
    Ok(())
}
