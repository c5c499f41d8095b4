//! An established connection under a spoofed ACK or RST flood: does a
//! long transfer keep its pace?
//!
//! A flood of segments without SYN gets past every SYN defence; aimed at a
//! listening port, each one reaches the listener (which answers an ACK
//! with a RST) unless something drops it first. The shield drops those
//! that belong to no socket and carry no valid cookie, as `out_of_state`.
//!
//! The server runs a sink on a listening port; a client in the listener's
//! namespace opens one connection to it (through the shield's cookies when
//! the shield is on) and writes bulk data into it for the whole row, the
//! server counting what its application reads. The transfer runs half its
//! quiet time without a flood, then as long as the quiet time with the
//! harness's flood (65 536 forged sources, the generator unpaced) of bare
//! ACKs or RSTs at the same port, then the other half without; the
//! connection is up before the flood starts. The transfer's frames take the same link and the same receive
//! CPU as the flood (see [`crate::flood`]), as in the SYN table.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use spacefilter::Reason;

use super::{Admission, setup};
use crate::{
    bench::floods::{SPOOFED_FIRST, SPOOFED_SOURCES},
    flood::{CpuTimes, FLOOD_CPU, Flood, FloodLab, Shape},
    netns::{Family, Host},
    shield::accept_xdp_tx,
};

/// The segments of a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Ack,
    Rst,
}

impl Segment {
    pub const ALL: [Segment; 2] = [Segment::Ack, Segment::Rst];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Segment::Ack => "ACK",
            Segment::Rst => "RST",
        }
    }

    fn flood(self, port: u16) -> Flood {
        let shape = match self {
            Segment::Ack => Shape::Ack { port },
            Segment::Rst => Shape::Rst { port },
        };
        Flood::new(
            shape,
            &[IpAddr::V4(SPOOFED_FIRST)],
            Host::Server.addr(Family::V4),
        )
        .spread_over(SPOOFED_FIRST, SPOOFED_SOURCES)
    }
}

/// The defences measured here: none, and the shield.
pub const DEFENCES: [Admission; 2] = [Admission::Kernel, Admission::Shield];

/// One row: a flood of `segment`s against `admission`, with the transfer.
#[derive(Clone, Debug)]
pub struct EstablishedRow {
    pub segment: Segment,
    /// The flood's pace, frames a second; `None` for the generator's top
    /// rate.
    pub paced: Option<u64>,
    pub admission: Admission,
    pub rule: String,
    /// The flood's length.
    pub seconds: f64,
    /// Frames the generator sent.
    pub sent: u64,
    /// Frames the server's link took in, a second (flood and transfer).
    pub arrived_pps: f64,
    /// Frames the server's ring had no room for.
    pub ring_drops: u64,
    /// The receive CPU's softirq time per frame taken in.
    pub receive_ns: f64,
    /// The share of the receive CPU's time that went to making the flood
    /// (its `system` time), and to the receive path (`softirq`).
    pub cpu_generator: f64,
    pub cpu_receive: f64,
    /// For the shield: flood segments dropped as `out_of_state`.
    pub out_of_state: Option<u64>,
    /// The transfer, bits a second at the server's application, without
    /// and with the flood.
    pub quiet_bps: f64,
    pub flooded_bps: f64,
}

impl EstablishedRow {
    /// Flood frames sent, a second.
    #[must_use]
    pub fn sent_pps(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let sent = self.sent as f64;
        sent / self.seconds
    }

    /// The transfer's pace under the flood, against its pace without.
    #[must_use]
    pub fn kept(&self) -> f64 {
        self.flooded_bps / self.quiet_bps
    }

    /// The share of the frames sent that the shield dropped as out of
    /// state.
    #[must_use]
    pub fn dropped_share(&self) -> Option<f64> {
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        self.out_of_state
            .map(|n| n as f64 / self.sent.max(1) as f64)
    }
}

/// How long the transfer runs before it is measured.
const WARM_UP: Duration = Duration::from_millis(500);
/// What the client writes at a time.
const CHUNK: usize = 64 * 1024;

/// The pace of the second pair of rows, frames a second: what the stack
/// takes without a filter while the transfer runs, so that both rows get
/// the same flood.
pub const PACED_PPS: u64 = 250_000;

/// Runs one row: the transfer alone for half of `quiet`, then with the
/// flood (at `paced` frames a second, or the generator's top rate) for
/// `quiet`, then alone again for the other half.
pub fn established_run(
    segment: Segment,
    admission: Admission,
    paced: Option<u64>,
    quiet: Duration,
) -> anyhow::Result<EstablishedRow> {
    let mut lab = FloodLab::new()?;
    let listener = lab
        .run_in(Host::Server, || TcpListener::bind("0.0.0.0:0"))?
        .context("binding the transfer's sink")?;
    let port = listener.local_addr()?.port();
    let _tools = accept_xdp_tx(&lab, "answer_sink")?;
    let sf = setup(&mut lab, admission, port)
        .with_context(|| format!("setting up {}", admission.filter()))?;
    let target = SocketAddr::new(Host::Server.addr(Family::V4), port);
    let mut client = lab
        .run_in(Host::Listener, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
        })?
        .context("opening the transfer")?;
    let (mut server, _) = listener.accept().context("accepting the transfer")?;
    drop(listener);
    // Timeouts, so that both ends look at the stop flag now and then.
    client.set_write_timeout(Some(Duration::from_millis(100)))?;
    server.set_read_timeout(Some(Duration::from_millis(100)))?;
    let received = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let flood = match paced {
        Some(pps) => segment.flood(port).at_rate(pps),
        None => segment.flood(port),
    };
    let lab = &lab;
    let measured = thread::scope(|scope| -> anyhow::Result<_> {
        let writer = scope.spawn(|| write_until(&mut client, &stop));
        let reader = scope.spawn(|| read_until(&mut server, &stop, &received));
        let measured = (|| -> anyhow::Result<_> {
            // The quiet pace is taken in two halves, before and after the
            // flood, against drift over the row.
            let pace = |window: Duration| -> (u64, Duration) {
                let (bytes, started) = (received.load(Ordering::Relaxed), Instant::now());
                thread::sleep(window);
                (received.load(Ordering::Relaxed) - bytes, started.elapsed())
            };
            thread::sleep(WARM_UP);
            let before = pace(quiet / 2);
            let link_before = lab.server_stats()?;
            let cpu_before = CpuTimes::now()?;
            let dropped_before = out_of_state(sf.as_ref())?;
            let bytes = received.load(Ordering::Relaxed);
            let sent = lab.flood(&flood, quiet)?;
            let flooded = received.load(Ordering::Relaxed) - bytes;
            let cpu = CpuTimes::now()?.since(&cpu_before);
            let link = lab.server_stats()? - link_before;
            let dropped = out_of_state(sf.as_ref())?
                .zip(dropped_before)
                .map(|(after, before)| after - before);
            let after = pace(quiet / 2);
            let quiet = (before.0 + after.0, before.1 + after.1);
            Ok((quiet, (flooded, sent), cpu, link, dropped))
        })();
        stop.store(true, Ordering::Relaxed);
        let wrote = writer.join().expect("the writer does not panic");
        let read = reader.join().expect("the reader does not panic");
        let measured = measured?;
        wrote.context("writing the transfer")?;
        read.context("reading the transfer")?;
        Ok(measured)
    })?;
    let ((quiet_bytes, quiet_time), (flooded_bytes, sent), cpu, link, out_of_state) = measured;
    let seconds = sent.elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok(EstablishedRow {
        segment,
        paced,
        admission,
        rule: admission.rule(port),
        seconds,
        sent: sent.frames,
        arrived_pps: link.rx_packets as f64 / seconds,
        ring_drops: link.rx_dropped,
        receive_ns: cpu.softirq(FLOOD_CPU) * 1e9 / (link.rx_packets.max(1) as f64),
        cpu_generator: cpu.system(FLOOD_CPU) / cpu.total(FLOOD_CPU).max(1e-9),
        cpu_receive: cpu.softirq(FLOOD_CPU) / cpu.total(FLOOD_CPU).max(1e-9),
        out_of_state,
        quiet_bps: quiet_bytes as f64 * 8.0 / quiet_time.as_secs_f64(),
        flooded_bps: flooded_bytes as f64 * 8.0 / seconds,
    })
}

/// Writes bulk data into `stream` until `stop`.
fn write_until(stream: &mut TcpStream, stop: &AtomicBool) -> io::Result<()> {
    let chunk = vec![0x5a_u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match stream.write(&chunk) {
            Ok(_) => {}
            Err(err) if is_timeout(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads `stream` until `stop` (or its end), counting the bytes.
fn read_until(stream: &mut TcpStream, stop: &AtomicBool, received: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0_u8; 4 * CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(err) if is_timeout(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The filter's count of `out_of_state` drops, if spacefilter is loaded.
fn out_of_state(sf: Option<&spacefilter::Filter>) -> anyhow::Result<Option<u64>> {
    Ok(match sf {
        Some(sf) => Some(sf.counters()?.get(Reason::OutOfState).packets),
        None => None,
    })
}

/// Every flood against every defence, at the top rate and paced to
/// [`PACED_PPS`], `quiet` (and as long flooded) each.
pub fn established(quiet: Duration) -> anyhow::Result<Vec<EstablishedRow>> {
    let mut rows = Vec::new();
    for paced in [None, Some(PACED_PPS)] {
        for segment in Segment::ALL {
            for admission in DEFENCES {
                let row = established_run(segment, admission, paced, quiet).with_context(|| {
                    format!(
                        "a transfer under {} with {}",
                        flood_name(segment, paced),
                        admission.filter()
                    )
                })?;
                eprintln!(
                    "bench: established, {:<24} {:<32} {:5.2} Mpps sent, {:5.2} Mpps in, \
                     {:.0} ns/frame, CPU {:.0} % generator {:.0} % receive; out of state {}; \
                     transfer {:.0} Mbit/s quiet, {:.0} Mbit/s flooded ({:.1} %)",
                    flood_name(segment, paced),
                    admission.filter(),
                    row.sent_pps() / 1e6,
                    row.arrived_pps / 1e6,
                    row.receive_ns,
                    row.cpu_generator * 100.0,
                    row.cpu_receive * 100.0,
                    row.dropped_share()
                        .map_or("-".to_owned(), |s| format!("{:.2} %", s * 100.0)),
                    row.quiet_bps / 1e6,
                    row.flooded_bps / 1e6,
                    row.kept() * 100.0,
                );
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// "ACK flood, top rate", "RST flood, 0.25 Mpps".
fn flood_name(segment: Segment, paced: Option<u64>) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    match paced {
        Some(pps) => format!("{} flood, {:.2} Mpps", segment.name(), pps as f64 / 1e6),
        None => format!("{} flood, top rate", segment.name()),
    }
}

/// The subsection of the admission report.
#[must_use]
pub fn established_report(rows: &[EstablishedRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "### An established transfer under spoofed ACK and RST floods\n"
    );
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let paced = PACED_PPS as f64 / 1e6;
    let _ = writeln!(
        out,
        "The harness's flood of bare ACKs, or of RSTs, from 65536 forged sources \
         (198.19.0.0/16) at a listening port of the server, as fast as the generator goes \
         (*top rate*) and paced to {paced:.2} Mpps, while one connection from the client to \
         that port carries bulk data for the whole row (opened before the flood; through the \
         shield's cookies when it is on). *Transfer* is what the server's application read: \
         *quiet* over {:.0} s without the flood (half before it, half after), *flooded* over \
         the {:.0} s of the flood, in the same lab. *Out of state* is the share of the frames \
         the generator sent that the shield dropped as `out_of_state`. *Link in* and *receive \
         ns/frame* count every frame the server's link took in, the transfer's too. *CPU* is \
         how the receive CPU spent the flood: making it (the generator, `system`) and taking \
         frames in (`softirq`, the flood's and the transfer's).\n",
        rows[0].seconds, rows[0].seconds
    );
    let _ = writeln!(
        out,
        "The transfer's frames are taken in by that same CPU, as the harness makes every \
         flood: at the top rate the generator goes as fast as the receive path lets it, so a \
         cheaper drop makes a faster flood, and the generator's own time comes out of the \
         transfer's share whatever the filter. A wire would not charge the server for making \
         the flood; the paced rows give both defences the same flood. Where the *CPU* \
         column gives the generator a few per cent, the receive path took the CPU and the \
         flood hardly ran: such a row is no measure of the stack under a flood.\n"
    );
    let _ = writeln!(
        out,
        "| flood | defence | sent (Mpps) | link in (Mpps) | ring drops | receive ns/frame | \
         CPU: generator, receive | out of state | transfer, quiet | transfer, flooded | kept |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {:.0} | {:.0} %, {:.0} % | {} | {:.0} Mbit/s | \
             {:.0} Mbit/s | {:.1} % |",
            flood_name(row.segment, row.paced),
            row.admission.filter(),
            row.sent_pps() / 1e6,
            row.arrived_pps / 1e6,
            row.ring_drops,
            row.receive_ns,
            row.cpu_generator * 100.0,
            row.cpu_receive * 100.0,
            row.out_of_state.map_or("-".to_owned(), |n| format!(
                "{:.2} % ({n} of {})",
                row.dropped_share().unwrap_or(f64::NAN) * 100.0,
                row.sent
            )),
            row.quiet_bps / 1e6,
            row.flooded_bps / 1e6,
            row.kept() * 100.0,
        );
    }
    let _ = writeln!(out);
    for row in rows.iter().filter(|r| r.admission == Admission::Shield) {
        let share = row.dropped_share().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "Targets, {} with the shield: at least 99 % of the flood dropped as \
             `out_of_state`: {:.2} %, {}; the transfer within 10 % of its pace without the \
             flood: {:.1} %, {}.",
            flood_name(row.segment, row.paced),
            share * 100.0,
            if share >= 0.99 { "met" } else { "not met" },
            row.kept() * 100.0,
            if row.kept() >= 0.9 { "met" } else { "not met" },
        );
    }
    out.push('\n');
    out
}
