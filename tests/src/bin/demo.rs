//! `cargo xtask demo`: spacefilter on a virtual network, with real traffic.
//!
//! Builds a lab of network namespaces (a server, a legitimate client and
//! an attacker on one bridge), attaches spacefilter to the server's
//! interface, shows both clients' traffic arriving, blocks the attacker's
//! subnet and shows its traffic stop at the XDP hook while the legitimate
//! client's carries on. Then prints the filter's counters and entries and
//! removes the lab, also on failure and on Ctrl-C (SIGINT) or SIGTERM.
//! Needs root.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};
use spacefilter::{AttachMode, Counters, Filter, LoadOptions, Reason};
use spacefilter_tests::{
    netns::{Family, Host, IFACE, Lab},
    traffic::{self, UdpSink, UdpStream},
};

/// Set once SIGINT or SIGTERM arrives.
static STOP: AtomicBool = AtomicBool::new(false);

/// Datagrams per second from each client.
const LISTENER_RATE: u64 = 200;
const ATTACKER_RATE: u64 = 2000;
/// Seconds of traffic before and after the block.
const BEFORE_SECS: u32 = 5;
const AFTER_SECS: u32 = 7;
/// Echo requests per ping.
const PINGS: u32 = 3;

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
        eprintln!("the demo creates network namespaces and loads an XDP program: run it as root");
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

/// Blocks SIGINT and SIGTERM in every thread (threads inherit the mask, so
/// this comes before any other thread starts) and turns them into
/// [`STOP`] on a thread of their own. The demo then unwinds normally and
/// its guards remove the lab. Child processes start with a clear mask.
fn catch_signals() -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT and SIGTERM")?;
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            while let Ok(signal) = signals.wait() {
                // Repeats (`timeout` signals both the process and its group)
                // change nothing: the clean-up is under way.
                if !STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("\n{signal}: stopping, removing the lab");
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Sleeps for `duration`, or less if a signal arrives.
fn pause(duration: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn check_stop() -> anyhow::Result<()> {
    pause(Duration::ZERO)
}

fn run() -> anyhow::Result<()> {
    println!("spacefilter demo: an XDP flood filter on a virtual network");
    println!("==========================================================");
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
        (Host::Server, "runs spacefilter on its eth0"),
        (Host::Listener, "legitimate client"),
        (Host::Attacker, "flood source, alone in 198.18.2.0/24"),
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

    let result = demo(&lab);

    let names = lab.namespaces();
    match lab.close() {
        Ok(()) => println!("\nCleaned up: removed namespaces {}.", names.join(", ")),
        Err(err) => eprintln!("\nclean-up failed: {err:#}"),
    }
    result
}

fn demo(lab: &Lab) -> anyhow::Result<()> {
    check_stop()?;
    print!("Loading spacefilter ... ");
    flush();
    let mut filter = Filter::load(LoadOptions::default()).context("loading spacefilter")?;
    println!("loaded (program id {}).", filter.program_id()?);
    check_stop()?;
    print!("Attaching it to server:{IFACE}, mode auto ... ");
    flush();
    let mode = lab.attach(&mut filter, AttachMode::Auto)?;
    println!(
        "attached in {} mode{}.",
        mode.name(),
        match mode {
            AttachMode::Native => " (in the driver, before the kernel allocates a socket buffer)",
            _ => " (generic XDP: the driver has no native support)",
        }
    );
    println!();

    let sink = UdpSink::start(lab, Host::Server)?;
    let target = SocketAddr::new(Host::Server.addr(Family::V4), sink.port());
    let listener = UdpStream::start(lab, Host::Listener, target, LISTENER_RATE)?;
    let attacker = UdpStream::start(lab, Host::Attacker, target, ATTACKER_RATE)?;
    let mut monitor = Monitor::new(&filter, &sink)?;

    println!("1. No rules yet. Both clients send UDP to {target}:");
    println!(
        "   the listener {LISTENER_RATE} datagrams/s, the attacker {ATTACKER_RATE} datagrams/s."
    );
    println!("   Per second: datagrams that reached the server's socket, and XDP verdicts.");
    println!();
    Monitor::header();
    monitor.watch(&filter, BEFORE_SECS)?;
    pings(lab)?;

    println!();
    println!("2. Blocking the attacker's subnets:");
    println!();
    let before_block = sink.received_from(Host::Attacker.addr(Family::V4));
    for family in Family::ALL {
        let prefix = Host::Attacker.subnet(family);
        println!("   > block {prefix}");
        filter.block(prefix)?;
    }
    println!();
    monitor.rebase(&filter)?;
    Monitor::header();
    monitor.watch(&filter, AFTER_SECS)?;
    pings(lab)?;

    println!();
    println!("3. Totals.");
    summary(&listener, &attacker, &sink, before_block);
    drop((listener, attacker));
    println!();
    print_counters(&filter.counters()?);
    println!();
    print_entries(&filter)?;
    println!();
    lab.detach(&mut filter)?;
    println!("Detached spacefilter from server:{IFACE}.");
    Ok(())
}

fn flush() {
    // A progress message that does not show is harmless.
    let _ = std::io::stdout().flush();
}

/// Per-second rows: datagrams received from each client, and the
/// program's verdicts.
struct Monitor<'a> {
    sink: &'a UdpSink,
    second: u32,
    counters: Counters,
    from_listener: u64,
    from_attacker: u64,
}

impl<'a> Monitor<'a> {
    fn new(filter: &Filter, sink: &'a UdpSink) -> anyhow::Result<Self> {
        Ok(Self {
            sink,
            second: 0,
            counters: filter.counters()?,
            from_listener: 0,
            from_attacker: 0,
        })
    }

    fn header() {
        println!(
            "   {:>4}   {:>13}  {:>13}   {:>11}  {:>11}",
            "time", "from listener", "from attacker", "XDP passed", "XDP blocked"
        );
    }

    /// Starts the next row's counts from now.
    fn rebase(&mut self, filter: &Filter) -> anyhow::Result<()> {
        self.counters = filter.counters()?;
        self.from_listener = self.sink.received_from(Host::Listener.addr(Family::V4));
        self.from_attacker = self.sink.received_from(Host::Attacker.addr(Family::V4));
        Ok(())
    }

    fn watch(&mut self, filter: &Filter, seconds: u32) -> anyhow::Result<()> {
        for _ in 0..seconds {
            pause(Duration::from_secs(1))?;
            self.second += 1;
            let counters = filter.counters()?;
            let delta = counters.since(&self.counters);
            self.counters = counters;
            let listener = self.sink.received_from(Host::Listener.addr(Family::V4));
            let attacker = self.sink.received_from(Host::Attacker.addr(Family::V4));
            println!(
                "   {:>3}s   {:>13}  {:>13}   {:>11}  {:>11}",
                self.second,
                listener - self.from_listener,
                attacker - self.from_attacker,
                delta.get(Reason::Passed).packets,
                delta.get(Reason::Blocked).packets,
            );
            (self.from_listener, self.from_attacker) = (listener, attacker);
        }
        Ok(())
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
    println!();
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

fn summary(listener: &UdpStream, attacker: &UdpStream, sink: &UdpSink, before_block: u64) {
    println!();
    for (host, stream) in [(Host::Listener, listener), (Host::Attacker, attacker)] {
        let received = sink.received_from(host.addr(Family::V4));
        print!(
            "   {:<8} sent {:>6} UDP datagrams, the server received {:>6}",
            host.name(),
            stream.sent(),
            received,
        );
        if host == Host::Attacker {
            print!(", {} of them after the block", received - before_block);
        }
        println!();
    }
}

fn print_counters(counters: &Counters) {
    println!("   Filter counters since load (every frame on server:{IFACE}):");
    println!();
    println!(
        "   {:<12} {:>10} {:>12}  verdict",
        "reason", "packets", "bytes"
    );
    for reason in Reason::ALL {
        let counter = counters.get(reason);
        println!(
            "   {:<12} {:>10} {:>12}  {}",
            reason.name(),
            counter.packets,
            counter.bytes,
            if reason.drops() { "drop" } else { "pass" }
        );
    }
}

fn print_entries(filter: &Filter) -> anyhow::Result<()> {
    let entries = filter.entries()?;
    println!("   Entries, with the frames each one matched:");
    println!();
    println!("   {:<6} {:<18} {:>10}", "list", "prefix", "hits");
    for entry in entries {
        println!(
            "   {:<6} {:<18} {:>10}",
            entry.list.name(),
            entry.prefix.to_string(),
            entry.hits
        );
    }
    Ok(())
}
