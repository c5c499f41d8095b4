//! Steps 6 to 8 of the demo: the filter outlives the daemon. Stopped, the
//! daemon leaves its pinned program enforcing; started again, it takes the
//! program over with no gap; `spacefilter detach` takes it off on purpose.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use spacefilter_tests::{
    daemon::{self, DaemonPaths, DaemonProcess, STOP_TIMEOUT},
    netns::{Family, Host, IFACE, Lab},
    traffic::{UdpSink, UdpStream, wait_until},
};

use super::{ATTACKER_RATE, LISTENER_RATE, check_stop, launch, pause_until, sf, show};

/// How long the datagrams are counted while no daemon runs.
const ALONE_SECS: u64 = 3;
/// How long the attacker's datagrams may take to arrive once the filter
/// is off.
const ARRIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The datagrams that reached the server from the listener and from the
/// attacker (IPv4 streams of their own, beside the steps).
struct Arrivals {
    sink: UdpSink,
    _streams: Vec<UdpStream>,
}

impl Arrivals {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let sink = UdpSink::start(lab, Host::Server)?;
        let to = SocketAddr::new(Host::Server.addr(Family::V4), sink.port());
        let streams = [
            (Host::Listener, LISTENER_RATE),
            (Host::Attacker, ATTACKER_RATE),
        ]
        .into_iter()
        .map(|(host, rate)| UdpStream::start(lab, host, to, rate))
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            sink,
            _streams: streams,
        })
    }

    /// From the listener, from the attacker.
    fn now(&self) -> [u64; 2] {
        [Host::Listener, Host::Attacker].map(|host| self.sink.received_from(host.addr(Family::V4)))
    }
}

/// Steps 6 to 8; `daemon` is the running daemon, and then the one that
/// took the filter over.
pub(super) fn outlive(
    lab: &Lab,
    daemon: &mut DaemonProcess,
    paths: &DaemonPaths,
    pin_dir: &Path,
) -> anyhow::Result<()> {
    let arrivals = Arrivals::start(lab)?;
    stop(daemon, "6. Stop the daemon, as `systemctl stop` would")?;
    println!();
    println!("   Its log, from start to stop:");
    println!();
    for line in daemon.log().lines() {
        println!("   | {line}");
    }
    println!();
    let program = daemon::xdp_programs(lab)?;
    ensure!(
        !program.is_empty(),
        "the stop took the XDP program off server:{IFACE}; the daemon's log:\n{}",
        daemon.log()
    );
    println!(
        "   server:{IFACE} keeps its XDP program ({}): the link is pinned, so the filter",
        program
            .iter()
            .map(|p| format!("{} id {}", p.name, p.id))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("   enforces with no daemon running (a crash or `kill -9` leaves it the same).");
    println!(
        "   Both clients send UDP over IPv4; for {ALONE_SECS} s with no daemon, the server received:"
    );
    let before = arrivals.now();
    pause_until(Instant::now() + Duration::from_secs(ALONE_SECS))?;
    let after = arrivals.now();
    let [listener, attacker] = [after[0] - before[0], after[1] - before[1]];
    println!("   from the listener {listener} datagrams, from the attacker {attacker}.");
    ensure!(
        attacker == 0,
        "{attacker} of the blocked attacker's datagrams arrived while no daemon ran"
    );
    ensure!(listener > 0, "the listener's datagrams stopped too");
    println!("   The CLI finds no daemon:");
    println!();
    let out = show(daemon.socket(), &["status"])?;
    ensure!(
        out.code == Some(1),
        "`spacefilter status` after the stop: expected exit status 1, got {:?}",
        out.code
    );
    println!("   (exit status 1)");
    println!();

    check_stop()?;
    println!("7. Start it again: it takes the pinned program over, and the filter is never off:");
    println!();
    // The new daemon appends to the same log file.
    let earlier = daemon.log().len();
    let (next, took) = launch(lab, paths, pin_dir)?;
    *daemon = next;
    println!(
        "   It answered after {:.1} s. From its log:",
        took.as_secs_f64()
    );
    println!();
    let log = daemon.log().get(earlier..).unwrap_or_default().to_owned();
    let took_over = log.lines().filter(|line| {
        line.contains("took over") || line.contains("carried over") || line.contains("started in")
    });
    for line in took_over {
        println!("   | {line}");
    }
    ensure!(
        log.contains("took over"),
        "the new daemon did not take the pinned link over; its log:\n{log}"
    );
    println!();
    sf(daemon.socket(), &["status"])?;

    stop(
        daemon,
        "8. Take the filter off on purpose: stop the daemon, then `spacefilter detach`",
    )?;
    println!("   With no daemon answering, `detach` takes the pinned link off:");
    println!();
    detach(lab, pin_dir)?;
    ensure!(
        daemon::xdp_programs(lab)?.is_empty(),
        "`spacefilter detach` left an XDP program on server:{IFACE}"
    );
    let before = arrivals.now();
    let arrived = wait_until(ARRIVE_TIMEOUT, || arrivals.now()[1] > before[1]);
    ensure!(
        arrived,
        "the attacker's datagrams did not arrive within {ARRIVE_TIMEOUT:?} of the detach"
    );
    println!(
        "   server:{IFACE} has no XDP program any more, and the attacker's datagrams arrive again:"
    );
    println!("   the pinned program was what dropped them. The rules stay in the state directory");
    println!("   for the next start.");
    Ok(())
}

/// SIGTERM, as `systemctl stop` sends it, under the heading `step`.
fn stop(daemon: &mut DaemonProcess, step: &str) -> anyhow::Result<()> {
    check_stop()?;
    println!("{step}:");
    println!();
    println!("   $ kill -TERM {}", daemon.pid());
    let started = Instant::now();
    let status = daemon.terminate(STOP_TIMEOUT)?;
    ensure!(
        status.success(),
        "the daemon exited with {status}; its log:\n{}",
        daemon.log()
    );
    ensure!(
        !daemon.socket().exists(),
        "the socket {} is still there",
        daemon.socket().display()
    );
    println!(
        "   It exited (status 0) after {:.1} s and removed its socket.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `spacefilter detach` in the server's namespace, as the package's
/// removal script would, and shows what it printed.
fn detach(lab: &Lab, pin_dir: &Path) -> anyhow::Result<()> {
    check_stop()?;
    let ns = lab.ns(Host::Server);
    println!(
        "   $ ip netns exec {ns} spacefilter detach --pin-dir {}",
        pin_dir.display()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(daemon::binary())
        .arg("detach")
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()
        .context("running spacefilter detach")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines().chain(stderr.lines()) {
        println!("   {line}");
    }
    ensure!(
        out.status.success(),
        "spacefilter detach failed ({})",
        out.status
    );
    println!();
    Ok(())
}
