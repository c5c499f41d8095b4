//! `cargo xtask demo`: the spacefilter daemon and its command-line client
//! on a virtual network, with real traffic.
//!
//! Builds a lab of network namespaces (a server, a legitimate client and
//! an attacker on one bridge) and starts the real daemon, `spacefilter
//! run`, in the server's namespace. Then it works the way an administrator
//! does, with the real client verbs on the daemon's control socket:
//! `status`, `block`, `stats`, `list`, and a temporary `allow --ttl`. Both
//! clients send UDP over IPv4 and IPv6 all along; a table shows, second by
//! second, what reaches the server's socket and what the XDP program
//! dropped. Then a live event: new listeners join a TCP port while a SYN
//! flood from forged sources hits it, first with the SYN budget and then
//! with the shield. At the end the filter outlives the daemon: stopped with
//! SIGTERM, the daemon leaves its pinned program enforcing; started again,
//! it takes the program over; `spacefilter detach` takes it off. The lab is
//! removed at the end, also on failure and on Ctrl-C (SIGINT) or SIGTERM.
//!
//! Needs root, and the `spacefilter` binary next to this one: `cargo xtask
//! demo` builds both.

use std::{
    ffi::c_int,
    io::Write as _,
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

#[path = "demo/outlive.rs"]
mod outlive;

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use spacefilter::{Reason, api::StatsView};
use spacefilter_tests::{
    bench::FloodCase,
    daemon::{self, BpfFs, DaemonPaths, DaemonProcess, START_TIMEOUT, STOP_TIMEOUT, Scratch},
    flood::Generator,
    netns::{Family, Host, IFACE, Lab, run_in_netns},
    shield::accept_xdp_tx,
    traffic::{self, TcpEcho, UdpSink, UdpStream},
};

/// Set once SIGINT or SIGTERM arrives.
static STOP: AtomicBool = AtomicBool::new(false);

/// Datagrams per second from each client, per address family.
const LISTENER_RATE: u64 = 200;
const ATTACKER_RATE: u64 = 2000;
/// Seconds of traffic before the block, while blocked, and while the
/// temporary exception lasts and after.
const BEFORE_SECS: u32 = 4;
const BLOCKED_SECS: u32 = 5;
const EXCEPTION_SECS: u32 = 5;
/// The exception's time to live, as `allow --ttl` takes it.
const EXCEPTION_TTL: &str = "3s";
/// Echo requests per ping.
const PINGS: u32 = 3;
/// Where the CLI looks for the socket without `--socket`.
const DEFAULT_SOCKET: &str = "/run/spacefilter/spacefilter.sock";

/// The four UDP streams, as the table's columns show them.
const SOURCES: [(Host, Family); 4] = [
    (Host::Listener, Family::V4),
    (Host::Listener, Family::V6),
    (Host::Attacker, Family::V4),
    (Host::Attacker, Family::V6),
];

/// The demo was stopped by a signal.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "the demo creates network namespaces and runs the spacefilter daemon: run it as root"
        );
        return ExitCode::FAILURE;
    }
    if let Err(err) = catch_signals() {
        eprintln!("demo: {err:#}");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("demo interrupted");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("demo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signal that set [`STOP`], for the message.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set once the stop has been announced.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: c_int) {
    // Only atomics here: they are async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into [`STOP`], which the demo checks between
/// its steps and while it waits; it then unwinds normally and its guards
/// stop the daemon and remove the lab. Repeats (`timeout` signals both the
/// process and its group, an impatient user presses Ctrl-C twice) change
/// nothing: the clean-up is under way.
///
/// A handler, not a blocked mask and a thread in `sigwait`: children
/// inherit the signal mask, and a daemon started with SIGTERM blocked
/// would never see its stop signal. A handler goes back to the default in
/// an exec'd child. The children run in process groups of their own, so a
/// Ctrl-C reaches the demo alone.
fn catch_signals() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler touches nothing but atomics.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("catching {signal}"))?;
    }
    Ok(())
}

/// Sleeps until `deadline`, or less if a signal arrives.
fn pause_until(deadline: Instant) -> anyhow::Result<()> {
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Fails with [`Interrupted`] once a signal has come, saying so the first
/// time.
fn check_stop() -> anyhow::Result<()> {
    if !STOP.load(Ordering::SeqCst) {
        return Ok(());
    }
    if !ANNOUNCED.swap(true, Ordering::SeqCst) {
        let signal = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
            .map_or_else(|_| "a signal".to_owned(), |s| s.to_string());
        eprintln!("\n{signal}: stopping the daemon, removing the lab");
    }
    Err(Interrupted.into())
}

fn flush() {
    // A progress message that does not show is harmless.
    let _ = std::io::stdout().flush();
}

fn run() -> anyhow::Result<()> {
    // binary() panics without it; say how to get it instead.
    let beside = std::env::current_exe()
        .context("locating the demo executable")?
        .with_file_name("spacefilter");
    ensure!(
        beside.is_file(),
        "the spacefilter binary is missing at {}: build it with `cargo build -p spacefilter` \
         (`cargo xtask demo` does)",
        beside.display()
    );

    println!("spacefilter demo: the daemon and its CLI on a virtual network");
    println!("==============================================================");
    println!();
    print!("Building the lab ... ");
    flush();
    let lab = Lab::new()?;
    println!("done. Three hosts on one Linux bridge, each in its own network namespace:");
    println!();
    println!(
        "  {:<9} {:<13} {:<15} {:<16} role",
        "host", "namespace", "IPv4", "IPv6"
    );
    for (host, role) in [
        (Host::Server, "runs the spacefilter daemon on its eth0"),
        (Host::Listener, "legitimate client"),
        (
            Host::Attacker,
            "flood source, alone in 198.18.2.0/24 and 2001:2:0:2::/64",
        ),
    ] {
        println!(
            "  {:<9} {:<13} {:<15} {:<16} {role}",
            host.name(),
            lab.ns(host),
            host.addr(Family::V4).to_string(),
            host.addr(Family::V6).to_string()
        );
    }
    println!("  (switch: namespace {}, bridge br0)", lab.switch_ns());
    println!();

    let result = Scratch::new("demo").and_then(|dir| demo(&lab, &dir));

    let names = lab.namespaces();
    match lab.close() {
        Ok(()) => println!("\nCleaned up: removed namespaces {}.", names.join(", ")),
        Err(err) => eprintln!("\nclean-up failed: {err:#}"),
    }
    result
}

/// Starts the daemon, runs the demo against it and stops it again, also
/// when the demo fails or is interrupted.
fn demo(lab: &Lab, dir: &Scratch) -> anyhow::Result<()> {
    let paths = DaemonPaths::in_dir(dir.path());
    // Dropped last: unmounting it releases whatever is still pinned.
    let bpffs = BpfFs::mount(&dir.path().join("bpf"))?;
    let pin_dir = bpffs.path().join("spacefilter");
    let mut daemon = start_daemon(lab, &paths, &pin_dir)?;
    let result =
        steer(lab, &daemon).and_then(|()| outlive::outlive(lab, &mut daemon, &paths, &pin_dir));
    match &result {
        Ok(()) => {}
        Err(err) => {
            if !err.is::<Interrupted>() {
                eprintln!(
                    "--- the daemon's log ({}) ---\n{}--- end of the log ---",
                    paths.log.display(),
                    daemon.log()
                );
            }
            abandon(&mut daemon);
        }
    }
    result
}

/// Stops the daemon after a failure or a signal, saying so.
fn abandon(daemon: &mut DaemonProcess) {
    if !daemon.is_running() {
        return;
    }
    eprint!("Stopping the daemon (SIGTERM) ... ");
    match daemon.terminate(STOP_TIMEOUT) {
        Ok(status) => eprintln!("{status}."),
        // Dropping the guard kills it.
        Err(err) => eprintln!("{err:#}"),
    }
}

/// Starts `spacefilter run` in the server's namespace and waits until it
/// answers on its socket (or a signal comes).
fn start_daemon(lab: &Lab, paths: &DaemonPaths, pin_dir: &Path) -> anyhow::Result<DaemonProcess> {
    check_stop()?;
    println!("1. Start the daemon on the server, in its namespace, as a service unit would:");
    println!();
    let (daemon, took) = launch(lab, paths, pin_dir)?;
    println!(
        "   Running as pid {}, logging to {}.",
        daemon.pid(),
        paths.log.display()
    );
    println!(
        "   It loaded the XDP program, attached it and answered on its socket after {:.1} s.",
        took.as_secs_f64()
    );
    println!(
        "   Its link to eth0 is pinned in {} (a BPF filesystem the demo mounted:",
        pin_dir.display()
    );
    println!("   `ip netns exec` hides the host's /sys/fs/bpf, the default --pin-dir).");
    println!();
    println!(
        "   The commands below are {} with `--socket {}` added",
        daemon::binary().display(),
        paths.socket.display()
    );
    println!("   (without it they use {DEFAULT_SOCKET}). They run in the demo's own namespace:");
    println!("   the socket is a file, reachable from any.");
    println!();
    sf(&paths.socket, &["status"])?;
    Ok(daemon)
}

/// Prints the command line, starts `spacefilter run` in the server's
/// namespace and waits until it answers on its socket (or a signal
/// comes); returns it with the time it took.
fn launch(
    lab: &Lab,
    paths: &DaemonPaths,
    pin_dir: &Path,
) -> anyhow::Result<(DaemonProcess, Duration)> {
    let ns = lab.ns(Host::Server);
    let pin_dir = pin_dir
        .to_str()
        .context("the pin folder's path is not UTF-8")?;
    println!(
        "   $ ip netns exec {ns} spacefilter run --iface {IFACE} --state-dir {} --socket {} \\",
        paths.state_dir.display(),
        paths.socket.display()
    );
    println!("       --pin-dir {pin_dir}");
    flush();
    let started = Instant::now();
    let mut daemon = DaemonProcess::spawn(&ns, paths, &["--pin-dir", pin_dir])?;
    loop {
        if let Err(err) = check_stop() {
            abandon(&mut daemon);
            return Err(err);
        }
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "the daemon exited ({status}) before answering on {}; its log:\n{}",
                paths.socket.display(),
                daemon.log()
            );
        }
        if UnixStream::connect(&paths.socket).is_ok() {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "the daemon did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                paths.socket.display(),
                daemon.log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((daemon, started.elapsed()))
}

/// What the administrator does once the daemon runs.
fn steer(lab: &Lab, daemon: &DaemonProcess) -> anyhow::Result<()> {
    let socket = daemon.socket();
    let sink = UdpSink::start(lab, Host::Server)?;
    let port = sink.port();
    let _streams = SOURCES
        .iter()
        .map(|&(host, family)| {
            let rate = if host == Host::Attacker {
                ATTACKER_RATE
            } else {
                LISTENER_RATE
            };
            let target = SocketAddr::new(Host::Server.addr(family), port);
            UdpStream::start(lab, host, target, rate)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let monitor = Monitor::new(socket, &sink);

    println!(
        "2. No rules yet. Both clients send UDP to the server's port {port}, over IPv4 and IPv6:"
    );
    println!(
        "   the listener {LISTENER_RATE} datagrams/s per family, the attacker {ATTACKER_RATE}."
    );
    println!(
        "   Per second: the datagrams that reached the server's socket from each client, and the"
    );
    println!("   XDP program's verdicts on server:{IFACE} (read with `spacefilter stats --json`).");
    println!();
    monitor.table(BEFORE_SECS)?;
    pings(lab)?;
    println!();

    let block = [
        Host::Attacker.subnet(Family::V4).to_string(),
        Host::Attacker.subnet(Family::V6).to_string(),
    ];
    println!("3. Block the attacker's prefixes:");
    println!();
    sf(
        socket,
        &["block", &block[0], &block[1], "--comment", "flood source"],
    )?;
    let blocked = monitor.table(BLOCKED_SECS)?;
    pings(lab)?;
    println!();
    // The first row may hold datagrams that were queued on the socket
    // when the block came.
    let late: u64 = blocked
        .rows
        .iter()
        .skip(1)
        .map(|row| row.received[2] + row.received[3])
        .sum();
    let listener: u64 = blocked
        .rows
        .iter()
        .map(|row| row.received[0] + row.received[1])
        .sum();
    ensure!(
        late == 0,
        "{late} of the attacker's datagrams reached the server while it was blocked"
    );
    ensure!(listener > 0, "the listener's traffic stopped too");
    println!(
        "   The attacker's flood stops at the XDP hook: {} frames dropped in {BLOCKED_SECS} s,",
        blocked.dropped
    );
    println!(
        "   none reached the server's socket; the listener's kept arriving ({listener} datagrams)."
    );
    println!("   What the daemon counts, and which entry matched how often:");
    println!();
    sf(socket, &["stats"])?;
    sf(socket, &["list"])?;
    show_capture(daemon)?;

    println!(
        "4. An exception: the allowlist always wins over the blocklist, and any entry can expire."
    );
    println!(
        "   Let the attacker's IPv4 address through for {EXCEPTION_TTL}; its IPv6 stays blocked."
    );
    println!();
    let exception = Host::Attacker.host_prefix(Family::V4).to_string();
    sf(
        socket,
        &[
            "allow",
            &exception,
            "--ttl",
            EXCEPTION_TTL,
            "--comment",
            "vetted, for a moment",
        ],
    )?;
    monitor.table(EXCEPTION_SECS)?;
    println!("   The allow entry expired and is gone; the block holds again:");
    println!();
    sf(socket, &["list"])?;
    live_event(lab, socket)
}

/// New clients a second during the live event, and how long each may
/// take (handshake, request, answer).
const JOINS_PER_SEC: u64 = 50;
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The forged SYN flood's rate, and how long each half of the event runs.
const SYN_FLOOD_PPS: u64 = 200_000;
const EVENT_SECS: u32 = 5;

/// Step 5: a live event's TCP port under a SYN flood from 65 536 forged
/// sources while new listeners join, first with the SYN budget (which
/// cannot tell them from the flood), then with the shield (which answers
/// the flood's SYNs itself with SYN cookies and lets in every client that
/// completes a handshake).
fn live_event(lab: &Lab, socket: &Path) -> anyhow::Result<()> {
    check_stop()?;
    let echo = TcpEcho::start(lab, Host::Server)?;
    let port = echo.port();
    let _sink = accept_xdp_tx(lab, "answer_sink")?;
    let generator = Generator::new(&lab.switch_ns(), Host::Server.switch_port())?;
    let flood = FloodCase::Syn
        .flood(port)
        .restoring()
        .at_rate(SYN_FLOOD_PPS);
    println!(
        "5. A live event: new listeners join the server's TCP port {port} ({JOINS_PER_SEC} a second, each"
    );
    println!(
        "   a handshake, a request and its answer) while a SYN flood of {} kpps from 65 536 forged",
        SYN_FLOOD_PPS / 1000
    );
    println!("   sources hits the same port. First the SYN budget, which cannot tell them apart:");
    println!();
    sf(
        socket,
        &[
            "limit",
            "set",
            "--syn-pps",
            "20",
            "--syn-global-pps",
            "5000",
        ],
    )?;
    let joins = Joins::start(lab, SocketAddr::new(Host::Server.addr(Family::V4), port));
    let stop_flood = AtomicBool::new(false);
    thread::scope(|scope| -> anyhow::Result<()> {
        let flooding = scope.spawn(|| {
            while !stop_flood.load(Ordering::Relaxed) {
                generator.run(&flood, Duration::from_millis(500))?;
            }
            anyhow::Ok(())
        });
        let result = (|| {
            joins.table(socket, 0, EVENT_SECS)?;
            println!("   Then the shield on that port:");
            println!();
            sf(socket, &["shield", "on", "--ports", &format!("tcp/{port}")])?;
            joins.table(socket, 1, EVENT_SECS)
        })();
        stop_flood.store(true, Ordering::Relaxed);
        let flooded = flooding.join().expect("the flood thread panicked");
        result.and(flooded)
    })?;
    let [budget, shield] = joins.stop();
    ensure!(
        shield.completed * 100 >= shield.started * 95,
        "with the shield on, {} of {} joins completed",
        shield.completed,
        shield.started
    );
    println!(
        "   Joins started with the SYN budget: {} of {} completed; with the shield: {} of {}.",
        budget.completed, budget.started, shield.completed, shield.started
    );
    println!(
        "   The program answered the flood's SYNs itself with SYN cookies (`syn_cookie`), and the"
    );
    println!(
        "   clients' ACKs carried their cookies back (`cookie_ok`): each proved its address, and"
    );
    println!("   the kernel opened its connection from the cookie.");
    println!();
    sf(socket, &["shield", "show"])?;
    sf(socket, &["shield", "off"])?;
    sf(socket, &["limit", "off"])?;
    Ok(())
}

/// Clients joining the live event: one new connection every
/// 1/[`JOINS_PER_SEC`] s, each on a thread of its own, counted by the
/// phase of the event it started in, when it starts and when it completes.
struct Joins {
    /// Per phase: joins started and joins completed.
    counts: Arc<[[AtomicU64; 2]; 2]>,
    /// Joins completed in all, as they complete.
    completed: Arc<AtomicU64>,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    worker: Option<thread::JoinHandle<Vec<thread::JoinHandle<()>>>>,
}

/// Joins started in a phase, and how many of them completed.
struct JoinCount {
    started: u64,
    completed: u64,
}

impl Joins {
    fn start(lab: &Lab, to: SocketAddr) -> Self {
        let counts: Arc<[[AtomicU64; 2]; 2]> = Arc::default();
        let completed = Arc::new(AtomicU64::new(0));
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = lab.ns(Host::Listener);
        let (counts_, completed_, phase_, halt) = (
            Arc::clone(&counts),
            Arc::clone(&completed),
            Arc::clone(&phase),
            Arc::clone(&stop),
        );
        let worker = thread::spawn(move || {
            let gap = Duration::from_micros(1_000_000 / JOINS_PER_SEC);
            let mut next = Instant::now();
            let mut joins = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                next += gap;
                thread::sleep(next.saturating_duration_since(Instant::now()));
                let phase = phase_.load(Ordering::Relaxed).min(1);
                counts_[phase][0].fetch_add(1, Ordering::Relaxed);
                let (counts, completed, ns) =
                    (Arc::clone(&counts_), Arc::clone(&completed_), ns.clone());
                joins.push(thread::spawn(move || {
                    let joined = run_in_netns(&ns, || traffic::tcp_join(to, JOIN_TIMEOUT));
                    if matches!(joined, Ok(Ok(()))) {
                        counts[phase][1].fetch_add(1, Ordering::Relaxed);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            joins
        });
        Self {
            counts,
            completed,
            phase,
            stop,
            worker: Some(worker),
        }
    }

    /// Prints `seconds` rows, one a second, for `phase` of the event:
    /// joins started and completed, and the program's verdicts on the port.
    fn table(&self, socket: &Path, phase: usize, seconds: u32) -> anyhow::Result<()> {
        self.phase.store(phase, Ordering::Relaxed);
        println!(
            "   {:>4}   {:>7} {:>9}   {:>10} {:>11} {:>11}",
            "time", "joins", "completed", "syn_cookie", "syn_limited", "cookie_ok"
        );
        let counts = |view: &StatsView| {
            [
                Reason::SynCookie,
                Reason::SynLimited,
                Reason::CookieVerified,
            ]
            .map(|r| view.reasons.get(r.name()).map_or(0, |c| c.packets))
        };
        let joins = || {
            (
                self.counts[phase][0].load(Ordering::Relaxed),
                self.completed.load(Ordering::Relaxed),
            )
        };
        let mut last = (joins(), counts(&stats(socket)?));
        let begin = Instant::now();
        for n in 1..=seconds {
            pause_until(begin + Duration::from_secs(n.into()))?;
            let now = (joins(), counts(&stats(socket)?));
            println!(
                "   {:>3}s   {:>7} {:>9}   {:>10} {:>11} {:>11}",
                n,
                now.0.0 - last.0.0,
                now.0.1 - last.0.1,
                now.1[0] - last.1[0],
                now.1[1] - last.1[1],
                now.1[2] - last.1[2],
            );
            last = now;
        }
        println!();
        Ok(())
    }

    /// Stops starting joins, waits for those on their way, and returns
    /// each phase's count.
    fn stop(mut self) -> [JoinCount; 2] {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            for join in worker.join().expect("the join thread panicked") {
                let _ = join.join();
            }
        }
        [0, 1].map(|phase| JoinCount {
            started: self.counts[phase][0].load(Ordering::Relaxed),
            completed: self.counts[phase][1].load(Ordering::Relaxed),
        })
    }
}

/// Captures a few sampled dropped frames to a pcap file and shows them as
/// tcpdump reads them.
fn show_capture(daemon: &DaemonProcess) -> anyhow::Result<()> {
    let pcap = daemon.paths().state_dir.with_file_name("dropped.pcap");
    let path = pcap.to_string_lossy().into_owned();
    println!(
        "   What is dropped, in a sample of the drops (1 in 100 by default), as tcpdump sees it:"
    );
    println!();
    sf(
        daemon.socket(),
        &["capture", "--out", &path, "--count", "5"],
    )?;
    println!("   $ tcpdump -nn -r {path}");
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", &path])
        .output()
        .context("running tcpdump")?;
    ensure!(
        out.status.success(),
        "tcpdump could not read {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    println!();
    Ok(())
}

/// Prints `$ spacefilter <args>`, runs it against the daemon's socket and
/// prints what it printed, as a terminal would show it.
fn show(socket: &Path, args: &[&str]) -> anyhow::Result<daemon::CliOutput> {
    check_stop()?;
    println!("   $ spacefilter {}", shell_words(args));
    let out = daemon::try_cli(socket, args)?;
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        println!("   {line}");
    }
    Ok(out)
}

/// [`show`], for a command that must succeed; a blank line after it.
fn sf(socket: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = show(socket, args)?;
    ensure!(
        out.code == Some(0),
        "`spacefilter {}` failed (exit status {:?})",
        shell_words(args),
        out.code
    );
    println!();
    Ok(())
}

/// `args` as one would type them in a shell.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
            if plain {
                (*arg).to_owned()
            } else {
                let mut quoted = String::from('"');
                for c in arg.chars() {
                    if "\"\\$`".contains(c) {
                        quoted.push('\\');
                    }
                    quoted.push(c);
                }
                quoted.push('"');
                quoted
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon's counters, through `spacefilter stats --json`.
fn stats(socket: &Path) -> anyhow::Result<StatsView> {
    let out = daemon::try_cli(socket, &["stats", "--json"])?;
    ensure!(
        out.code == Some(0),
        "`spacefilter stats --json` failed ({:?}): {}",
        out.code,
        out.stderr.trim()
    );
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("reading `spacefilter stats --json`: {}", out.stdout))
}

/// Frames the program passed (allowlisted ones too) and dropped, so far.
fn verdicts(view: &StatsView) -> (u64, u64) {
    let (mut passed, mut dropped) = (0, 0);
    for reason in Reason::ALL {
        let packets = view.reasons.get(reason.name()).map_or(0, |c| c.packets);
        if reason.drops() {
            dropped += packets;
        } else {
            passed += packets;
        }
    }
    (passed, dropped)
}

/// One second of the table.
struct Row {
    /// Datagrams received from each of [`SOURCES`].
    received: [u64; 4],
}

/// What one table showed.
struct Table {
    rows: Vec<Row>,
    /// Frames the program dropped over the whole table.
    dropped: u64,
}

/// Per-second rows: the datagrams received from each client and family,
/// and the program's verdicts.
struct Monitor<'a> {
    socket: &'a Path,
    sink: &'a UdpSink,
    /// When the traffic started: the rows' time column counts from it.
    start: Instant,
}

impl<'a> Monitor<'a> {
    fn new(socket: &'a Path, sink: &'a UdpSink) -> Self {
        Self {
            socket,
            sink,
            start: Instant::now(),
        }
    }

    fn received(&self) -> [u64; 4] {
        SOURCES.map(|(host, family)| self.sink.received_from(host.addr(family)))
    }

    /// Prints the header and `seconds` rows, one a second from now.
    fn table(&self, seconds: u32) -> anyhow::Result<Table> {
        let groups = format!(
            "   {:>4}   {:^13}   {:^13}   {:^17}",
            "", "from listener", "from attacker", "XDP verdicts"
        );
        println!("{}", groups.trim_end());
        println!(
            "   {:>4}   {:>6} {:>6}   {:>6} {:>6}   {:>8} {:>8}",
            "time", "IPv4", "IPv6", "IPv4", "IPv6", "passed", "dropped"
        );
        let mut last_verdicts = verdicts(&stats(self.socket)?);
        let mut last_received = self.received();
        let first = last_verdicts.1;
        let begin = Instant::now();
        let mut rows = Vec::new();
        for n in 1..=seconds {
            pause_until(begin + Duration::from_secs(n.into()))?;
            let received = self.received();
            let now = verdicts(&stats(self.socket)?);
            let delta: [u64; 4] = std::array::from_fn(|i| received[i] - last_received[i]);
            println!(
                "   {:>3}s   {:>6} {:>6}   {:>6} {:>6}   {:>8} {:>8}",
                self.start.elapsed().as_secs_f64().round(),
                delta[0],
                delta[1],
                delta[2],
                delta[3],
                now.0 - last_verdicts.0,
                now.1 - last_verdicts.1,
            );
            rows.push(Row { received: delta });
            (last_received, last_verdicts) = (received, now);
        }
        println!();
        Ok(Table {
            rows,
            dropped: last_verdicts.1 - first,
        })
    }
}

/// Pings the server from both clients over both families, all at once.
fn pings(lab: &Lab) -> anyhow::Result<()> {
    check_stop()?;
    let results = thread::scope(|scope| {
        let runs: Vec<_> = [Host::Listener, Host::Attacker]
            .into_iter()
            .flat_map(|host| Family::ALL.map(|family| (host, family)))
            .map(|(host, family)| {
                let handle =
                    scope.spawn(move || traffic::ping(lab, host, Host::Server.addr(family), PINGS));
                (host, family, handle)
            })
            .collect();
        runs.into_iter()
            .map(|(host, family, handle)| {
                let replies = handle.join().expect("the ping thread panicked");
                (host, family, replies)
            })
            .collect::<Vec<_>>()
    });
    for (host, family, replies) in results {
        let replies = replies?;
        println!(
            "   ping {:<15} from {:<8}: {replies}/{PINGS} replies",
            Host::Server.addr(family).to_string(),
            host.name(),
        );
    }
    Ok(())
}
