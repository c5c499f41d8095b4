//! The real `spacefilter` binary, for end-to-end tests: the daemon run in a
//! lab's server namespace ([`DaemonProcess`]) and the client verbs run as
//! child processes ([`cli`]).
//!
//! The binary is the one cargo built next to the test executable
//! (`target/<profile>/spacefilter`); `cargo xtask test` builds it first, and
//! by hand `cargo build -p spacefilter` does.
//!
//! The daemon runs through `ip netns exec`, which execs it in place: the
//! child's process id is the daemon's, so signals reach it directly. Its
//! standard output and error go to a log file in the daemon's directory,
//! which the guard prints when the test fails. The control socket is a path
//! in the file system, reachable from every network namespace, so the
//! client verbs run in the test's own.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Read as _},
    net::SocketAddr,
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use serde_json::Value;

use crate::{
    netns::{Family, Host, IFACE, Lab},
    traffic::{UdpSink, UdpStream},
};

/// How long a starting daemon may take to answer on its socket: loading
/// the program and allocating its maps takes a second or so.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client verb may run before it is killed and the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The `spacefilter` binary of the same build profile as the running test
/// executable (`target/<profile>/deps/<test>` → `target/<profile>/spacefilter`).
///
/// # Panics
/// If it is not there: it must be built before the tests run.
#[must_use]
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .expect("the test executable lives in a directory");
    let bin = profile_dir.join("spacefilter");
    assert!(
        bin.is_file(),
        "the spacefilter binary is missing at {}: the end-to-end tests run it, so build it first \
         (`cargo build -p spacefilter`, or run the suite with `cargo xtask test`, which does)",
        bin.display()
    );
    bin
}

/// Numbers the scratch directories of this process.
static NEXT_SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<tmp>/spacefilter-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "spacefilter-{tag}-{}-{}",
            std::process::id(),
            NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        // Left over by an earlier process with the same id.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[must_use]
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.fmt(f)
    }
}

/// Where a daemon keeps its things: `<dir>/state`, `<dir>/sock` and
/// `<dir>/daemon.log`. Two daemons with the same paths share their rules.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DaemonPaths {
    #[must_use]
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            state_dir: dir.join("state"),
            socket: dir.join("sock"),
            log: dir.join("daemon.log"),
        }
    }
}

/// What a daemon is started with beyond its arguments.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Variables set in its environment (`NOTIFY_SOCKET`, ...).
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// A command that runs the binary (`setpriv ... --`), inside the
    /// namespace.
    pub wrapper: Vec<std::ffi::OsString>,
}

/// A `spacefilter run` process in a lab's server namespace, attached to
/// its [`IFACE`]. Dropping it stops the daemon (SIGTERM, then SIGKILL);
/// if the test is failing, the daemon's log is printed first.
pub struct DaemonProcess {
    child: Option<Child>,
    paths: DaemonPaths,
    /// The exit status, once reaped.
    status: Option<ExitStatus>,
}

impl DaemonProcess {
    /// Starts the daemon in network namespace `ns` with the paths of
    /// `paths` and the extra arguments `extra` (e.g. `--capacity 1024`,
    /// `--force`), and returns once it answers on its socket.
    pub fn start(ns: &str, paths: &DaemonPaths, extra: &[&str]) -> anyhow::Result<Self> {
        let mut daemon = Self::spawn(ns, paths, extra)?;
        daemon.wait_ready(START_TIMEOUT)?;
        Ok(daemon)
    }

    /// Starts the daemon and returns at once, ready or not: for a daemon
    /// that is expected to refuse to start (see [`Self::wait_exit`]).
    pub fn spawn(ns: &str, paths: &DaemonPaths, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with(ns, paths, extra, &Launch::default())
    }

    /// [`Self::spawn`], with what `launch` adds: variables in the
    /// daemon's environment, a command that runs it.
    pub fn spawn_with(
        ns: &str,
        paths: &DaemonPaths,
        extra: &[&str],
        launch: &Launch,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = paths.log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Appended to, so that a restarted daemon's log follows the first's.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)
            .with_context(|| format!("opening {}", paths.log.display()))?;
        let err_log = log.try_clone()?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .args(&launch.wrapper)
            .arg(binary())
            .args(["run", "--iface", IFACE, "--state-dir"])
            .arg(&paths.state_dir)
            .arg("--socket")
            .arg(&paths.socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Out of the test's process group: a Ctrl-C meant for the test
            // runner must not kill the daemon before its guard stops it.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Self {
            child: Some(child),
            paths: paths.clone(),
            status: None,
        })
    }

    /// Waits until the socket accepts connections; fails, with the log, if
    /// the daemon exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "the daemon exited ({status}) before answering on {}; its log:\n{}",
                    self.paths.socket.display(),
                    self.log()
                );
            }
            if UnixStream::connect(&self.paths.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer on {} within {timeout:?}; its log:\n{}",
                    self.paths.socket.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    ///
    /// # Panics
    /// If the daemon has been reaped.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    #[must_use]
    pub fn paths(&self) -> &DaemonPaths {
        &self.paths
    }

    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    /// Everything the daemon (and its predecessors on the same log) wrote.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.paths.log)
            .unwrap_or_else(|err| format!("(cannot read {}: {err})", self.paths.log.display()))
    }

    /// The exit status if the daemon has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait().context("waiting for the daemon")? {
            self.status = Some(status);
            self.child = None;
            return Ok(Some(status));
        }
        Ok(None)
    }

    /// Whether the daemon process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not exit within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the daemon (if it still runs).
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to the daemon"))
    }

    /// SIGTERM, and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// SIGKILL: the daemon dies without cleaning up, as in a crash.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Runs a client verb against this daemon's socket: see [`cli`].
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli(&self.paths.socket, args)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- spacefilter daemon log ({}) ---\n{}--- end of the daemon log ---",
                self.paths.log.display(),
                self.log()
            );
        }
        if self.try_wait().ok().flatten().is_some() {
            return;
        }
        if self.terminate(STOP_TIMEOUT).is_err() {
            let _ = self.kill();
        }
    }
}

impl fmt::Debug for DaemonProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonProcess")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("paths", &self.paths)
            .field("status", &self.status)
            .finish()
    }
}

/// Memory of process `pid`, in MiB, from `/proc`: resident, peak
/// resident, and the part of the resident set that is mapped files (for
/// the daemon, mostly the program's lookup tables, which it maps to write
/// them: kernel memory, counted once, whichever process maps it). Zeros
/// for a process that is gone.
#[must_use]
pub fn memory_mib(pid: u32) -> (f64, f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("RssFile:"))
}

/// What a client verb did.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From spawning to exit.
    pub elapsed: Duration,
}

impl CliOutput {
    /// Fails, with both outputs, unless the verb exited with `code`.
    #[expect(
        clippy::must_use_candidate,
        reason = "an assertion first; the returned output is for chaining"
    )]
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit status {code}\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Fails unless the verb succeeded; returns its standard output.
    #[expect(
        clippy::must_use_candidate,
        reason = "an assertion first; the returned output is for those who need it"
    )]
    pub fn ok(&self, what: &str) -> &str {
        self.expect_code(0, what);
        &self.stdout
    }
}

/// Runs `spacefilter <args...> --socket <socket>` in the test's namespace
/// and collects what it printed. A verb that runs past [`CLI_TIMEOUT`] is
/// killed and fails the test.
///
/// # Panics
/// If the binary cannot be started or hangs.
#[must_use]
pub fn cli(socket: &Path, args: &[&str]) -> CliOutput {
    try_cli(socket, args).unwrap_or_else(|err| panic!("{err:#}"))
}

/// [`cli`] for callers that clean up after a failure themselves (the
/// demo): a verb that cannot be started or hangs is an `Err`, not a panic.
/// A verb that runs and fails is an `Ok` with its exit code.
///
/// # Panics
/// If the binary is missing (see [`binary`]).
pub fn try_cli(socket: &Path, args: &[&str]) -> anyhow::Result<CliOutput> {
    let mut command = Command::new(binary());
    command.args(args).arg("--socket").arg(socket);
    run_cli(command)
}

/// [`cli`] run in network namespace `ns` (through `ip netns exec`): for
/// the verbs that reach more than the daemon, such as a fleet member's
/// `block`, which writes to etcd from the host it is typed on.
///
/// # Panics
/// If the binary cannot be started or hangs.
#[must_use]
pub fn cli_in(ns: &str, socket: &Path, args: &[&str]) -> CliOutput {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .arg(binary())
        .args(args)
        .arg("--socket")
        .arg(socket);
    run_cli(command).unwrap_or_else(|err| panic!("{err:#}"))
}

fn run_cli(mut command: Command) -> anyhow::Result<CliOutput> {
    let started = Instant::now();
    let child = spawn_piped(&mut command)?;
    let (code, stdout, stderr) =
        finish(child, CLI_TIMEOUT).with_context(|| format!("{command:?}"))?;
    Ok(CliOutput {
        code,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// Spawns `command` with its standard output and error piped, stdin
/// closed.
pub fn spawn_piped(command: &mut Command) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {command:?}"))
}

/// Reads `child`'s output until it exits; kills it after `timeout`.
fn finish(mut child: Child, timeout: Duration) -> anyhow::Result<(Option<i32>, String, String)> {
    let drain = |pipe: Option<Box<dyn io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            bail!("still running after {timeout:?}; killed\nstdout: {stdout}\nstderr: {stderr}");
        }
        thread::sleep(Duration::from_millis(2));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status.code(), stdout, stderr))
}

/// An XDP program on an interface, as `ip -d link` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    pub id: u64,
    pub name: String,
}

/// The XDP programs attached to the lab server's [`IFACE`].
pub fn xdp_programs(lab: &Lab) -> anyhow::Result<Vec<XdpProgram>> {
    let json = lab.ip(Host::Server, &format!("-j -d link show dev {IFACE}"))?;
    let links: Value =
        serde_json::from_str(&json).with_context(|| format!("reading `ip -j link`: {json}"))?;
    let mut out = Vec::new();
    if let Some(xdp) = links.get(0).and_then(|link| link.get("xdp")) {
        collect_programs(xdp, &mut out);
    }
    Ok(out)
}

fn collect_programs(value: &Value, out: &mut Vec<XdpProgram>) {
    match value {
        Value::Object(map) => {
            if let Some(prog) = map.get("prog")
                && let Some(id) = prog.get("id").and_then(Value::as_u64)
            {
                let name = prog
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                let program = XdpProgram { id, name };
                if !out.contains(&program) {
                    out.push(program);
                }
            }
            for (key, v) in map {
                if key != "prog" {
                    collect_programs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_programs(v, out)),
        _ => {}
    }
}

/// The name of the program in [`occupier_object`].
pub const OCCUPIER_NAME: &str = "sf_occupier";

/// An ELF64 section header.
#[derive(Default)]
struct SectionHeader {
    name: u32,
    kind: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

impl SectionHeader {
    const PROGBITS: u32 = 1;
    const SYMTAB: u32 = 2;
    const STRTAB: u32 = 3;
    const WRITE: u64 = 1;
    const ALLOC: u64 = 2;
    const EXECINSTR: u64 = 4;

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // sh_addr
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.link.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.align.to_le_bytes());
        out.extend_from_slice(&self.entsize.to_le_bytes());
    }
}

/// The header of a relocatable BPF ELF64 object whose section headers
/// start at `shoff`.
fn elf_header(shoff: u64, shnum: u16, shstrndx: u16) -> Vec<u8> {
    const ET_REL: u16 = 1;
    const EM_BPF: u16 = 247;
    let mut header = Vec::with_capacity(64);
    // Magic, 64-bit, little-endian, ELF version 1, System V ABI.
    header.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    header.extend_from_slice(&ET_REL.to_le_bytes());
    header.extend_from_slice(&EM_BPF.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes()); // e_version
    header.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    header.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
    header.extend_from_slice(&shoff.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    header.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    header.extend_from_slice(&0u16.to_le_bytes()); // e_phentsize
    header.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
    header.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    header.extend_from_slice(&shnum.to_le_bytes());
    header.extend_from_slice(&shstrndx.to_le_bytes());
    header
}

/// A minimal BPF object file (ELF, relocatable) holding one XDP program,
/// [`OCCUPIER_NAME`], that passes every frame: "another XDP program" for
/// tests of what the daemon does when it finds one. Written by hand
/// because the tools object that cargo builds uses legacy map definitions,
/// which `bpftool`'s libbpf no longer reads.
#[must_use]
pub fn occupier_object() -> Vec<u8> {
    // r0 = XDP_PASS (2); exit
    const CODE: [u8; 16] = [
        0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];

    // One string table for the section and the symbol names.
    let mut strtab = vec![0u8];
    let mut name = |s: &str| {
        let offset = u32::try_from(strtab.len()).expect("a small table");
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        offset
    };
    let names = [
        name("xdp"),
        name("license"),
        name(".symtab"),
        name(".strtab"),
    ];
    let func = name(OCCUPIER_NAME);

    // The null symbol, then the program: global, a function, in section 1.
    let mut symtab = vec![0u8; 24];
    symtab.extend_from_slice(&func.to_le_bytes());
    symtab.extend_from_slice(&[0x12, 0]); // STB_GLOBAL << 4 | STT_FUNC; st_other
    symtab.extend_from_slice(&1u16.to_le_bytes());
    symtab.extend_from_slice(&0u64.to_le_bytes());
    symtab.extend_from_slice(&(CODE.len() as u64).to_le_bytes());

    // The header, the section contents (8-aligned), the section headers.
    let mut body = vec![0u8; 64];
    let mut place = |data: &[u8]| {
        body.resize(body.len().next_multiple_of(8), 0);
        let offset = body.len() as u64;
        body.extend_from_slice(data);
        (offset, data.len() as u64)
    };
    let placed = [
        place(&CODE),
        place(b"GPL\0"),
        place(&symtab),
        place(&strtab),
    ];
    let kinds = [
        (
            SectionHeader::PROGBITS,
            SectionHeader::ALLOC | SectionHeader::EXECINSTR,
            8,
        ),
        (
            SectionHeader::PROGBITS,
            SectionHeader::ALLOC | SectionHeader::WRITE,
            1,
        ),
        (SectionHeader::SYMTAB, 0, 8),
        (SectionHeader::STRTAB, 0, 1),
    ];
    let mut sections = vec![SectionHeader::default()];
    for ((name, (offset, size)), (kind, flags, align)) in names.into_iter().zip(placed).zip(kinds) {
        sections.push(SectionHeader {
            name,
            kind,
            flags,
            offset,
            size,
            align,
            ..SectionHeader::default()
        });
    }
    // .symtab: its names are in section 4, its first global symbol is 1.
    sections[3].link = 4;
    sections[3].info = 1;
    sections[3].entsize = 24;

    body.resize(body.len().next_multiple_of(8), 0);
    let shoff = body.len() as u64;
    for section in &sections {
        section.write(&mut body);
    }
    let shnum = u16::try_from(sections.len()).expect("five sections");
    body[..64].copy_from_slice(&elf_header(shoff, shnum, 4));
    body
}

/// Attaches [`occupier_object`]'s program to the lab server's [`IFACE`]
/// in driver mode the old way, by netlink (not a `bpf_link`), as
/// `ip link set dev IFACE xdp ...` would: loaded and pinned with
/// `bpftool`, attached with `ip`, then unpinned (the attachment keeps it
/// alive). Returns its id.
pub fn attach_occupier(lab: &Lab, scratch: &Scratch) -> anyhow::Result<u64> {
    let object = scratch.join("occupier.o");
    fs::write(&object, occupier_object())
        .with_context(|| format!("writing {}", object.display()))?;
    let pin = Path::new("/sys/fs/bpf").join(format!(
        "spacefilter-test-occupier-{}-{}",
        std::process::id(),
        NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    let output = Command::new("bpftool")
        .args(["prog", "load"])
        .arg(&object)
        .arg(&pin)
        .args(["type", "xdp"])
        .output()
        .context("running bpftool (is it installed? `cargo xtask setup` installs it)")?;
    ensure!(
        output.status.success(),
        "bpftool prog load failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Not `ip -n`: it remounts /sys in a mount namespace of its own, where
    // the pin is not to be seen. A child of a thread in the server's
    // network namespace is in it too, and keeps the test's mounts.
    let attached = lab.run_in(Host::Server, || {
        Command::new("ip")
            .args(["link", "set", "dev", IFACE, "xdpdrv", "pinned"])
            .arg(&pin)
            .output()
    });
    let _ = fs::remove_file(&pin);
    let output = attached?.context("running ip")?;
    ensure!(
        output.status.success(),
        "attaching the pinned program with ip failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let programs = xdp_programs(lab)?;
    programs
        .iter()
        .find(|p| p.name == OCCUPIER_NAME)
        .map(|p| p.id)
        .with_context(|| format!("{OCCUPIER_NAME} is not on {IFACE} after attaching: {programs:?}"))
}

/// A daemon in the lab's server namespace, steered with the real CLI, and
/// a UDP sink beside it for streams from the lab's other hosts. Fields
/// drop in order: the daemon, the lab, the sink, the daemon's directory.
pub struct SinkLab {
    pub daemon: DaemonProcess,
    pub lab: Lab,
    pub sink: UdpSink,
    _dir: Scratch,
}

impl SinkLab {
    /// Builds a lab and starts the daemon in it, with its files in a
    /// scratch directory named for `tag` and tables of 1024 entries; fails
    /// the test unless it runs as root.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        Self::in_lab(Lab::new().expect("building the lab"), tag)
    }

    /// Starts the daemon in `lab`, as [`Self::new`] does.
    #[must_use]
    pub fn in_lab(lab: Lab, tag: &str) -> Self {
        let dir = Scratch::new(tag).expect("scratch directory");
        let daemon = DaemonProcess::start(
            &lab.ns(Host::Server),
            &DaemonPaths::in_dir(dir.path()),
            &["--capacity", "1024"],
        )
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
        let sink = UdpSink::start(&lab, Host::Server).expect("UDP sink");
        Self {
            daemon,
            lab,
            sink,
            _dir: dir,
        }
    }

    /// A stream of `rate` datagrams a second from `from` to the sink.
    #[must_use]
    pub fn stream(&self, from: Host, rate: u64) -> UdpStream {
        let to = SocketAddr::new(Host::Server.addr(Family::V4), self.sink.port());
        UdpStream::start(&self.lab, from, to, rate).expect("UDP stream")
    }

    /// The packets `stats` shows counted under `reason`.
    #[must_use]
    pub fn counter(&self, reason: &str) -> u64 {
        let out = self.daemon.cli(&["stats", "--json"]);
        let stats: Value = serde_json::from_str(out.ok("stats")).expect("stats JSON");
        stats["reasons"][reason]["packets"].as_u64().unwrap_or(0)
    }

    /// The entries `list` shows.
    #[must_use]
    pub fn entries(&self) -> Vec<Value> {
        let out = self.daemon.cli(&["list", "--json"]);
        serde_json::from_str::<Vec<Value>>(out.ok("list")).expect("list JSON")
    }

    /// The datagrams the sink has had from `host`.
    #[must_use]
    pub fn received(&self, host: Host) -> u64 {
        self.sink.received_from(host.addr(Family::V4))
    }
}

/// A BPF filesystem mounted for one test, in the host's mount namespace
/// (the daemon's `ip netns exec` sees it: only /sys is remounted there),
/// unmounted when dropped. Pins in it outlive the daemon, as under
/// /sys/fs/bpf on a real host.
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    /// Mounts one at `path` (created).
    pub fn mount(path: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        nix::mount::mount(
            Some("bpf"),
            path,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a BPF filesystem at {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The daemon's metrics page at `127.0.0.1:port`, read from inside the
/// server's namespace (where the daemon listens).
#[must_use]
pub fn metrics_page(lab: &Lab, port: u16) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Server)])
        .args(["curl", "--silent", "--show-error"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
