//! A join storm during the SYN flood: many new clients at once, each from
//! an address of its own, while forged SYNs pour in.
//!
//! [`STORM_CLIENTS`] addresses from [`STORM_PREFIX`] are added to the
//! client's interface in its namespace (each a `/32`), and the server
//! reaches them through a route via the client's own address: the prefix
//! is inside the lab's on-link `/16`, but a longer route wins, so the
//! server resolves one neighbour and not thousands (the kernel's neighbour
//! table is shared by every namespace, 1024 entries before it overflows).
//! Each client opens one connection from its own address, a handshake, a
//! request and its answer, the starts spread evenly over [`STORM_SPREAD`];
//! each gets [`CONNECT_TIMEOUT`]. The server answers each connection on a
//! thread of its own, from a listener with a backlog of
//! [`STORM_BACKLOG`], as a server expecting a crowd would.
//!
//! The harness's SYN flood (65 536 forged sources, its top rate) aims at
//! the same port from [`FLOOD_LEAD`] before the first client until the
//! last one is done or out of time, the server's answers to forged sources
//! dropped on the far end of its link, as in the SYN table.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use nix::sys::{
    socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, connect, listen, setsockopt,
        socket, sockopt,
    },
    time::TimeVal,
};

use super::{Admission, AdmissionRow, CONNECT_TIMEOUT, quantile_ms, setup};
use crate::{
    bench::floods::FloodCase,
    flood::{CpuTimes, FLOOD_CPU, FloodLab},
    netns::{Family, Host, IFACE, enter_netns},
    shield::accept_xdp_tx,
};

/// New clients in the storm.
pub const STORM_CLIENTS: usize = 2000;
/// The time over which they start.
pub const STORM_SPREAD: Duration = Duration::from_secs(2);
/// The clients' addresses: 198.18.16.0/21, inside the lab's 198.18.0.0/16,
/// addresses ending in `.0` or `.255` left out.
pub const STORM_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 16, 0), 21);
/// The server's listen backlog (the kernel caps it at `somaxconn`, 4096
/// by default).
pub const STORM_BACKLOG: i32 = 4096;
/// How long the flood runs before the first client.
pub const FLOOD_LEAD: Duration = Duration::from_millis(500);
/// The stack of each client's and each server connection's thread.
const STACK: usize = 64 * 1024;

/// The defences measured here.
pub const DEFENCES: [Admission; 3] = [Admission::Kernel, Admission::SynBudget, Admission::Shield];

/// The clients' addresses.
#[must_use]
pub fn storm_addresses() -> Vec<Ipv4Addr> {
    let (first, len) = STORM_PREFIX;
    (0..1_u32 << (32 - len))
        .map(|i| Ipv4Addr::from(u32::from(first) + i))
        .filter(|a| !matches!(a.octets()[3], 0 | 255))
        .take(STORM_CLIENTS)
        .collect()
}

/// Gives the client's interface `addresses` (in one `ip -batch`) and the
/// server a route to them via the client.
fn add_clients(lab: &FloodLab, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut batch = String::new();
    for a in addresses {
        let _ = writeln!(batch, "addr add {a}/32 dev {IFACE}");
    }
    let path = std::env::temp_dir().join(format!("{}-storm.ip", lab.id()));
    std::fs::write(&path, batch).with_context(|| format!("writing {}", path.display()))?;
    let ns = lab.ns(Host::Listener);
    let output = std::process::Command::new("ip")
        .args(["-n", &ns, "-batch"])
        .arg(&path)
        .process_group(0)
        .output()
        .context("running ip -batch");
    let _ = std::fs::remove_file(&path);
    let output = output?;
    ensure!(
        output.status.success(),
        "adding the storm's addresses: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let (first, len) = STORM_PREFIX;
    lab.ip(
        Host::Server,
        &format!(
            "route add {first}/{len} via {} dev {IFACE}",
            Host::Listener.addr(Family::V4)
        ),
    )?;
    Ok(())
}

/// A listener with a backlog of [`STORM_BACKLOG`] on a free port of the
/// server.
fn storm_listener(lab: &FloodLab) -> anyhow::Result<TcpListener> {
    lab.run_in(Host::Server, || -> anyhow::Result<TcpListener> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        )?;
        listen(&fd, Backlog::new(STORM_BACKLOG)?)?;
        Ok(TcpListener::from(fd))
    })?
    .context("opening the storm's listener")
}

/// Answers every connection on `listener` with its first message, each on
/// a thread of its own, until `stop`.
fn serve(listener: &TcpListener, stop: &AtomicBool) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                thread::Builder::new().stack_size(STACK).spawn(move || {
                    let mut buf = [0_u8; 256];
                    // A client that fails only fails its own exchange.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
                    if let Ok(n) = stream.read(&mut buf) {
                        let _ = stream.write_all(&buf[..n]);
                    }
                })?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("accepting a client"),
        }
    }
    Ok(())
}

/// One client: from `from` to `to`, a handshake, a request and its
/// answer, within `timeout`. Runs on a thread inside the client's
/// namespace.
fn join(from: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    // A blocking connect gives up after the send timeout.
    #[expect(clippy::cast_possible_truncation, reason = "a few seconds")]
    let micros = timeout.as_micros() as i64;
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::new(micros / 1_000_000, micros % 1_000_000),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).context("connecting")?;
    let mut stream = TcpStream::from(fd);
    let left = timeout
        .checked_sub(started.elapsed())
        .context("out of time")?;
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    let message = format!("hello from {from}\n");
    stream.write_all(message.as_bytes())?;
    let mut echo = vec![0_u8; message.len()];
    stream.read_exact(&mut echo)?;
    ensure!(echo == message.as_bytes(), "a wrong echo");
    Ok(())
}

/// Runs the storm against `admission`.
pub fn storm_run(admission: Admission) -> anyhow::Result<AdmissionRow> {
    let mut lab = FloodLab::new()?;
    let addresses = storm_addresses();
    add_clients(&lab, &addresses)?;
    let listener = storm_listener(&lab)?;
    let port = listener.local_addr()?.port();
    let _tools = accept_xdp_tx(&lab, "answer_sink")?;
    let _sf = setup(&mut lab, admission, port)
        .with_context(|| format!("setting up {}", admission.filter()))?;
    let flood = FloodCase::Syn.flood(port).restoring();
    let std::net::IpAddr::V4(server_addr) = Host::Server.addr(Family::V4) else {
        unreachable!("an IPv4 address")
    };
    let target = SocketAddrV4::new(server_addr, port);
    let client_ns = lab.ns(Host::Listener);
    let results: Mutex<Vec<Option<Duration>>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let duration = FLOOD_LEAD + STORM_SPREAD + CONNECT_TIMEOUT + Duration::from_millis(500);
    let lab = &lab;
    let (sent, cpu, link) = thread::scope(|scope| -> anyhow::Result<_> {
        let server = scope.spawn(|| serve(&listener, &stop));
        let storm = scope.spawn(|| -> anyhow::Result<()> {
            thread::sleep(FLOOD_LEAD);
            let start = Instant::now();
            let count = u32::try_from(addresses.len()).expect("a few thousand");
            let mut clients = Vec::with_capacity(addresses.len());
            for (i, &from) in (0..count).zip(&addresses) {
                thread::sleep(
                    (start + STORM_SPREAD * i / count).saturating_duration_since(Instant::now()),
                );
                let (results, client_ns) = (&results, &client_ns);
                clients.push(
                    thread::Builder::new()
                        .stack_size(STACK)
                        .spawn_scoped(scope, move || {
                            let started = Instant::now();
                            let ok = enter_netns(client_ns)
                                .and_then(|()| join(from, target, CONNECT_TIMEOUT))
                                .is_ok();
                            let took = started.elapsed();
                            results
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(ok.then_some(took));
                        })
                        .context("starting a client")?,
                );
            }
            for client in clients {
                client.join().expect("a client does not panic");
            }
            Ok(())
        });
        let link_before = lab.server_stats()?;
        let cpu_before = CpuTimes::now()?;
        let sent = lab.flood(&flood, duration);
        let cpu = CpuTimes::now()?.since(&cpu_before);
        let link = lab.server_stats()? - link_before;
        let stormed = storm.join().expect("the storm does not panic");
        stop.store(true, Ordering::Relaxed);
        let answered = server.join().expect("the server does not panic");
        stormed?;
        answered?;
        Ok((sent?, cpu, link))
    })?;
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut times: Vec<Duration> = results.iter().filter_map(|r| *r).collect();
    times.sort_unstable();
    let seconds = sent.elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok(AdmissionRow {
        admission,
        rule: admission.rule(port),
        seconds,
        arrived_pps: link.rx_packets as f64 / seconds,
        receive_ns: cpu.softirq(FLOOD_CPU) * 1e9 / (link.rx_packets.max(1) as f64),
        tried: results.len() as u64,
        completed: times.len() as u64,
        p50_ms: quantile_ms(&times, 0.5),
        p99_ms: quantile_ms(&times, 0.99),
        cookies: None,
        synproxy: None,
        split: None,
    })
}

/// The storm against every defence in turn.
pub fn storm() -> anyhow::Result<Vec<AdmissionRow>> {
    let mut rows = Vec::new();
    for admission in DEFENCES {
        let row = storm_run(admission)
            .with_context(|| format!("a join storm with {}", admission.filter()))?;
        eprintln!("bench: join storm, {}", row.summary());
        rows.push(row);
    }
    Ok(rows)
}

/// The subsection of the admission report.
#[must_use]
pub fn storm_report(rows: &[AdmissionRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let (first, len) = STORM_PREFIX;
    let _ = writeln!(out, "### A join storm during the SYN flood\n");
    let _ = writeln!(
        out,
        "{STORM_CLIENTS} new clients, each from an address of its own ({first}/{len}, on the \
         client's interface; the server routes them via the client), start one connection each \
         to the server's listening port, evenly over {} s, each a handshake, a request and its \
         answer, given {} s; the server answers each on a thread of its own, from a listen \
         backlog of {STORM_BACKLOG}. The SYN flood of the table above aims at the same port \
         from {:.1} s before the first client to the end ({:.1} s). Columns as in the SYN \
         table.\n",
        STORM_SPREAD.as_secs(),
        CONNECT_TIMEOUT.as_secs(),
        FLOOD_LEAD.as_secs_f64(),
        rows[0].seconds,
    );
    let _ = writeln!(
        out,
        "| defence | flood in (Mpps) | receive ns/frame | completed | p50 | p99 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.0} | {:.1} % ({} of {}) | {:.0} ms | {:.0} ms |",
            row.admission.filter(),
            row.arrived_pps / 1e6,
            row.receive_ns,
            row.share() * 100.0,
            row.completed,
            row.tried,
            row.p50_ms,
            row.p99_ms,
        );
    }
    if let Some(shield) = rows.iter().find(|r| r.admission == Admission::Shield) {
        let _ = writeln!(
            out,
            "\nTarget: at least 99 % of the storm's clients admitted with the shield: {:.1} % \
             (p50 {:.0} ms, p99 {:.0} ms), {}.",
            shield.share() * 100.0,
            shield.p50_ms,
            shield.p99_ms,
            if shield.share() >= 0.99 {
                "met"
            } else {
                "not met"
            }
        );
    }
    out.push('\n');
    out
}
