//! Real traffic through a [`Lab`]: UDP datagrams, TCP exchanges and pings
//! from the clients to the server, counted on the server side.
//!
//! Sockets are created on a thread inside the right namespace (see
//! [`Lab::run_in`]) and used from ordinary threads afterwards. Timeouts are
//! short, so that checking that blocked traffic does *not* arrive is quick.

use std::{
    collections::HashMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Family, Host, Lab};

/// How often background loops look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Per-source counts, shared with a background thread.
type Tally = Arc<Mutex<HashMap<IpAddr, u64>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A background thread that stops and is joined when dropped.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: &str, body: impl FnOnce(&AtomicBool) + Send + 'static) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(&flag))
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the worker has been printed already.
            let _ = thread.join();
        }
    }
}

/// Polls `probe` until it returns `true` or `timeout` passes; returns the
/// last answer.
pub fn wait_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A UDP receiver on a host (the server, usually) that counts the
/// datagrams arriving from each source address. One dual-stack socket
/// takes both families.
pub struct UdpSink {
    port: u16,
    counts: Tally,
    _worker: Worker,
}

/// The sink's receive buffer: a busy service's size. In the 2-core lab the
/// sink's thread can wait a few milliseconds behind the flood's generator
/// and the receive path, and the default buffer (208 KiB, about 200
/// datagrams) then overflows: a loss in the lab, not the filter's.
const SINK_BUFFER: libc::c_int = 4 << 20;

/// Sets `socket`'s receive buffer to `bytes`, past `net.core.rmem_max`
/// (`SO_RCVBUFFORCE`, as root).
fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: the option's value is a C int, passed with its size, for a
    // socket this function borrows.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("an int's size"),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl UdpSink {
    /// Binds `[::]:0` in `host`'s namespace and starts counting.
    pub fn start(lab: &Lab, host: Host) -> anyhow::Result<Self> {
        Self::start_on(lab, host, 0)
    }

    /// Binds `[::]:port` in `host`'s namespace (0: any free port, which
    /// the kernel takes from the ephemeral range) and starts counting.
    pub fn start_on(lab: &Lab, host: Host, port: u16) -> anyhow::Result<Self> {
        Self::start_with(lab, host, port, false)
    }

    /// [`Self::start_on`], answering every datagram with a copy of it
    /// when `echo`: a request/reply service.
    pub fn start_with(lab: &Lab, host: Host, port: u16, echo: bool) -> anyhow::Result<Self> {
        let socket = lab
            .run_in(host, || UdpSocket::bind(("::", port)))?
            .with_context(|| format!("binding the UDP sink to port {port}"))?;
        socket.set_read_timeout(Some(POLL))?;
        set_receive_buffer(&socket, SINK_BUFFER)?;
        let port = socket.local_addr()?.port();
        let counts = Tally::default();
        let tally = Arc::clone(&counts);
        let worker = Worker::spawn("udp sink", move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        *lock(&tally).entry(from.ip().to_canonical()).or_default() += 1;
                        if echo {
                            // A reply that cannot go (no route, a full
                            // buffer) is the client's loss, not the sink's.
                            let _ = socket.send_to(&buf[..len], from);
                        }
                    }
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(err) => panic!("UDP sink: {err}"),
                }
            }
        })?;
        Ok(Self {
            port,
            counts,
            _worker: worker,
        })
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The datagrams received from `addr` so far.
    #[must_use]
    pub fn received_from(&self, addr: IpAddr) -> u64 {
        lock(&self.counts).get(&addr).copied().unwrap_or(0)
    }

    /// Waits until `at_least` datagrams have come from `addr` (or `timeout`
    /// passes) and returns the count.
    #[must_use]
    pub fn wait_for(&self, addr: IpAddr, at_least: u64, timeout: Duration) -> u64 {
        wait_until(timeout, || self.received_from(addr) >= at_least);
        self.received_from(addr)
    }
}

/// A UDP socket in a client's namespace, to send datagrams from.
fn client_udp(lab: &Lab, from: Host, family: Family) -> anyhow::Result<UdpSocket> {
    lab.run_in(from, || {
        UdpSocket::bind(SocketAddr::new(family.unspecified(), 0))
    })?
    .with_context(|| format!("binding a UDP socket in {from}"))
}

/// Sends `count` datagrams from `from` to `to`, `gap` apart, and returns
/// how many the kernel accepted. Counting what arrives is the receiver's
/// business.
pub fn send_udp(
    lab: &Lab,
    from: Host,
    to: SocketAddr,
    count: u64,
    gap: Duration,
) -> anyhow::Result<u64> {
    let family = if to.is_ipv4() { Family::V4 } else { Family::V6 };
    let socket = client_udp(lab, from, family)?;
    let mut sent = 0;
    for seq in 0..count {
        let payload = format!("spacefilter lab datagram {seq} from {from}");
        if socket.send_to(payload.as_bytes(), to).is_ok() {
            sent += 1;
        }
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    Ok(sent)
}

/// A steady UDP stream from a client, in the background, until dropped.
pub struct UdpStream {
    sent: Arc<AtomicU64>,
    _worker: Worker,
}

impl UdpStream {
    /// Sends `rate` datagrams a second from `from` to `to`, in bursts every
    /// 10 ms.
    pub fn start(lab: &Lab, from: Host, to: SocketAddr, rate: u64) -> anyhow::Result<Self> {
        Self::start_every(lab, from, to, rate, Duration::from_millis(10))
    }

    /// [`Self::start`], topping up every `tick` (a sleep, so at least the
    /// scheduler's timer slack): a short tick spreads the datagrams out,
    /// for timing when a stream's frames start being dropped.
    pub fn start_every(
        lab: &Lab,
        from: Host,
        to: SocketAddr,
        rate: u64,
        tick: Duration,
    ) -> anyhow::Result<Self> {
        let family = if to.is_ipv4() { Family::V4 } else { Family::V6 };
        let socket = client_udp(lab, from, family)?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let worker = Worker::spawn(&format!("udp from {from}"), move |stop| {
            let start = Instant::now();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let due = rate.saturating_mul(elapsed_us) / 1_000_000;
                while seq < due {
                    let payload = format!("spacefilter lab datagram {seq} from {from}");
                    if socket.send_to(payload.as_bytes(), to).is_ok() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    seq += 1;
                }
                thread::sleep(tick);
            }
        })?;
        Ok(Self {
            sent,
            _worker: worker,
        })
    }

    /// The datagrams sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the stream and returns how many datagrams it sent in all
    /// (after [`Self::sent`], a burst may still go out before a drop).
    #[must_use]
    pub fn stop(self) -> u64 {
        let Self {
            sent,
            _worker: worker,
        } = self;
        drop(worker);
        sent.load(Ordering::Relaxed)
    }
}

/// A TCP echo service on a host: every connection gets back the first
/// message it sends. Counts the connections accepted from each source.
pub struct TcpEcho {
    port: u16,
    accepted: Tally,
    _worker: Worker,
}

impl TcpEcho {
    /// Listens on `[::]:0` (both families) in `host`'s namespace.
    pub fn start(lab: &Lab, host: Host) -> anyhow::Result<Self> {
        let listener = lab
            .run_in(host, || TcpListener::bind("[::]:0"))?
            .context("binding the TCP echo service")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let accepted = Tally::default();
        let tally = Arc::clone(&accepted);
        let worker = Worker::spawn("tcp echo", move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        *lock(&tally).entry(peer.ip().to_canonical()).or_default() += 1;
                        // A client that misbehaves only fails its own
                        // exchange.
                        let _ = echo_once(stream);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => panic!("TCP echo: {err}"),
                }
            }
        })?;
        Ok(Self {
            port,
            accepted,
            _worker: worker,
        })
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connections accepted from `addr` so far.
    #[must_use]
    pub fn accepted_from(&self, addr: IpAddr) -> u64 {
        lock(&self.accepted).get(&addr).copied().unwrap_or(0)
    }
}

fn echo_once(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    stream.write_all(&buf[..n])
}

/// Connects from `from` to `to`, sends a line and reads the echo, all
/// within about `timeout`. `Err` says what failed.
pub fn tcp_exchange(
    lab: &Lab,
    from: Host,
    to: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut stream = lab
        .run_in(from, || TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("connecting from {from} to {to}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let message = format!("hello from {from}\n");
    stream
        .write_all(message.as_bytes())
        .with_context(|| format!("sending to {to}"))?;
    let mut echo = vec![0u8; message.len()];
    stream
        .read_exact(&mut echo)
        .with_context(|| format!("reading the echo from {to}"))?;
    if echo != message.as_bytes() {
        bail!(
            "{to} echoed {:?} instead of {message:?}",
            String::from_utf8_lossy(&echo)
        );
    }
    Ok(())
}

/// A client's join, from the calling thread's namespace: connects to
/// `to`, sends a line and reads its echo, all within about `timeout`.
pub fn tcp_join(to: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let message = b"joining\n";
    stream.write_all(message)?;
    let mut echo = [0u8; 8];
    stream.read_exact(&mut echo)?;
    if &echo != message {
        return Err(io::Error::other("a wrong echo"));
    }
    Ok(())
}

/// Pings `to` from `from`, `count` echo requests 10 ms apart, waiting at
/// most a second for each reply, and returns how many replies came back.
/// Uses the real `ping` through `ip netns exec`.
pub fn ping(lab: &Lab, from: Host, to: IpAddr, count: u32) -> anyhow::Result<u32> {
    let ns = lab.ns(from);
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &ns, "ping", "-n", "-q"])
        .args(["-c", &count.to_string(), "-i", "0.01", "-W", "1"])
        .arg(to.to_string())
        // Out of the caller's process group, so that a Ctrl-C reaches the
        // caller only, which then cleans up in order.
        .process_group(0);
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Exit status 1 means "no reply", which is an answer; anything else
    // is an error.
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_received(&stdout).with_context(|| format!("reading the output of {command:?}: {stdout}"))
}

/// The `N received` of ping's summary line.
fn parse_received(summary: &str) -> Option<u32> {
    let line = summary.lines().find(|l| l.contains("transmitted"))?;
    line.split(',').find_map(|part| {
        part.trim()
            .strip_suffix("received")
            .and_then(|n| n.trim().parse().ok())
    })
}

/// Sends `probe` datagrams from the attacker to `sink` on `server`, then as
/// many from the listener, and waits up to `timeout` for all of the
/// listener's (the positive control); returns how many of the attacker's
/// arrived.
pub fn attacker_gets_through(
    lab: &Lab,
    server: Host,
    sink: &UdpSink,
    probe: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let to = SocketAddr::new(server.addr(Family::V4), sink.port());
    let (attacker, listener) = (
        Host::Attacker.addr(Family::V4),
        Host::Listener.addr(Family::V4),
    );
    let (a0, l0) = (sink.received_from(attacker), sink.received_from(listener));
    let gap = Duration::from_millis(1);
    send_udp(lab, Host::Attacker, to, probe, gap).context("the attacker sends")?;
    send_udp(lab, Host::Listener, to, probe, gap).context("the listener sends")?;
    let got = sink.wait_for(listener, l0 + probe, timeout) - l0;
    anyhow::ensure!(
        got == probe,
        "{server}: {got} of the listener's {probe} datagrams arrived (the positive control)"
    );
    Ok(sink.received_from(attacker) - a0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ping_summaries() {
        let ok = "PING 198.18.0.1 (198.18.0.1) 56(84) bytes of data.\n\n--- 198.18.0.1 ping \
                  statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 41ms\n";
        assert_eq!(parse_received(ok), Some(5));
        let none = "--- 2001:2::1 ping statistics ---\n3 packets transmitted, 0 received, 100% \
                    packet loss, time 21ms\n";
        assert_eq!(parse_received(none), Some(0));
        let errors = "4 packets transmitted, 1 received, +3 errors, 75% packet loss, time 3ms\n";
        assert_eq!(parse_received(errors), Some(1));
        assert_eq!(parse_received("garbage"), None);
    }
}
