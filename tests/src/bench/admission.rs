//! Admission under a spoofed SYN flood: can a real client still connect?
//!
//! The harness's SYN flood (TCP SYNs from 65 536 forged sources at its
//! highest rate) aims at the server's listening port while a client in the
//! listener's namespace opens connections to it at a steady rate, each a
//! handshake, a request and its answer (the echo service), given
//! [`CONNECT_TIMEOUT`] to complete. What counts is what the client sees:
//! the share of its connections that completed, and how long they took
//! (a lost SYN costs a retransmit, a second or more).
//!
//! The frames the server sends back leave through the switch's port, which
//! has the tools' `answer_sink`: what goes to a forged source is dropped
//! there, as a wire would carry it away, and the rest goes on to the
//! bridge (a veth takes frames sent with `XDP_TX` only with an XDP program
//! of its own). Every row alike.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use spacefilter::{
    AttachMode, Filter, LoadOptions,
    api::{default_reflectors, default_service_ports},
};

pub mod established;
pub mod storm;

pub use established::{EstablishedRow, Segment, established, established_report};
pub use storm::{storm, storm_report};

use super::floods::{FloodCase, SYN_GLOBAL_PPS, SYN_PPS};
use crate::{
    flood::{CpuTimes, FLOOD_CPU, FloodLab, netns_exec},
    netns::{Family, Host},
    shield::{accept_xdp_tx, cookie_wscale, host_for_cookies, shield_ports},
    traffic::{TcpEcho, tcp_exchange},
};

/// The client's connections a second.
pub const CONNECT_RATE: u64 = 100;
/// How long a connection may take, handshake, request and answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A defence measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// No filter: the kernel's own SYN cookies (`tcp_syncookies=1`).
    Kernel,
    /// spacefilter's SYN guard: a budget per source and for the host.
    SynBudget,
    /// spacefilter's shield: SYN cookies at the XDP hook.
    Shield,
    /// nftables' shared SYN rate limit at netdev ingress.
    Nftables,
    /// iptables' SYNPROXY: SYN cookies in netfilter, before the listener
    /// (see [`synproxy_rules`]).
    Synproxy,
    /// Not a defence: the tools' `cookie_floor`, the least an XDP program
    /// does to answer the flood's SYNs with the kernel's cookies, for the
    /// cost rows only ([`cost_rounds`]).
    CookieFloor,
}

impl Admission {
    pub const ALL: [Admission; 5] = [
        Admission::Kernel,
        Admission::SynBudget,
        Admission::Shield,
        Admission::Nftables,
        Admission::Synproxy,
    ];

    fn filter(self) -> &'static str {
        match self {
            Admission::Kernel => "none (the kernel's SYN cookies)",
            Admission::SynBudget => "spacefilter, SYN guard",
            Admission::Shield => "spacefilter, shield",
            Admission::Nftables => "nftables",
            Admission::Synproxy => "iptables, SYNPROXY",
            Admission::CookieFloor => "XDP cookie floor",
        }
    }

    fn rule(self, port: u16) -> String {
        match self {
            Admission::Kernel => "`net.ipv4.tcp_syncookies=1` (the default)".to_owned(),
            Admission::SynBudget => format!(
                "`spacefilter limit set --syn-pps {SYN_PPS} --syn-global-pps {SYN_GLOBAL_PPS}`"
            ),
            Admission::Shield => format!("`spacefilter shield on --ports tcp/{port}`"),
            Admission::Nftables => {
                format!("`{}`", syn_nft_rule())
            }
            Admission::Synproxy => {
                let mut rule = String::new();
                for args in synproxy_rules(port) {
                    let _ = write!(rule, "`iptables {}`; ", args.join(" "));
                }
                rule.push_str("`net.netfilter.nf_conntrack_tcp_loose=0`");
                rule
            }
            Admission::CookieFloor => "the tools' `cookie_floor`".to_owned(),
        }
    }
}

/// SYNPROXY in front of `port`, as its manual page sets it up: SYNs skip
/// connection tracking (raw table) and get their SYN-ACK with a cookie
/// from SYNPROXY; the client's ACK, which conntrack finds `INVALID` (with
/// `nf_conntrack_tcp_loose=0`), is checked against its cookie, and
/// SYNPROXY opens the connection to the listener on the client's behalf;
/// what is left `INVALID` is dropped. `--wscale 7` is the manual's value
/// (SYNPROXY does not rewrite windows; the echo's messages are short
/// enough not to care).
fn synproxy_rules(port: u16) -> [Vec<String>; 3] {
    let port = port.to_string();
    let words = |line: &str| -> Vec<String> {
        line.replace("PORT", &port)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    [
        words("-t raw -A PREROUTING -p tcp --dport PORT --syn -j CT --notrack"),
        words(
            "-A INPUT -p tcp --dport PORT -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY \
             --sack-perm --timestamp --wscale 7 --mss 1460",
        ),
        words("-A INPUT -p tcp --dport PORT -m conntrack --ctstate INVALID -j DROP"),
    ]
}

fn syn_nft_rule() -> String {
    format!(
        "tcp flags & (syn | ack) == syn limit rate over {SYN_GLOBAL_PPS}/second burst \
         {SYN_GLOBAL_PPS} packets counter drop"
    )
}

/// One defence's run.
#[derive(Clone, Debug)]
pub struct AdmissionRow {
    pub admission: Admission,
    pub rule: String,
    pub seconds: f64,
    /// Flood frames the server's link took in, a second.
    pub arrived_pps: f64,
    /// The receive CPU's softirq time per frame taken in.
    pub receive_ns: f64,
    pub tried: u64,
    pub completed: u64,
    /// Milliseconds, over the completed connections.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// For the shield: SYNs answered with a cookie, and handshakes
    /// verified.
    pub cookies: Option<(u64, u64)>,
    /// For SYNPROXY: segments its rule took, and segments the `INVALID`
    /// rule dropped.
    pub synproxy: Option<(u64, u64)>,
    /// In a profiled run: where the receive CPU's time went.
    pub split: Option<Split>,
}

/// Where a profiled run's receive time went, from the kernel's BPF run-time
/// statistics (`BPF_ENABLE_STATS`, kernel 5.8), which are on for that run
/// only: they add two clock reads to every program run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Split {
    /// spacefilter's program, ns a run.
    pub program_ns: f64,
    /// Its runs per flood frame the server's link took in.
    pub program_runs: f64,
    /// The far end's `answer_sink`, ns a run (one run per answer it
    /// took in).
    pub sink_ns: f64,
    /// Its runs per flood frame the server's link took in.
    pub sink_runs: f64,
}

/// A program's run time and run count so far (zero while the statistics
/// are off).
type RunStats = (Duration, u64);

/// The kernel's BPF run-time statistics, on while this lives, and the
/// programs a profiled run reads them of.
struct Profiling {
    _on: std::os::fd::OwnedFd,
    /// The far end's answer sink.
    sink: u32,
    /// spacefilter's program, in the rows that have it.
    program: Option<u32>,
}

impl Profiling {
    fn start(tools: &aya::Ebpf, sf: Option<&mut Filter>) -> anyhow::Result<Profiling> {
        let sink = tools
            .program("answer_sink")
            .context("the tools' answer sink")?
            .info()?
            .id();
        let program = sf.map(Filter::program_id).transpose()?;
        let on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("switching the kernel's BPF run-time statistics on")?;
        Ok(Profiling {
            _on: on,
            sink,
            program,
        })
    }

    /// The sink's statistics and spacefilter's.
    fn read(&self) -> anyhow::Result<(RunStats, RunStats)> {
        let stats = |id: u32| -> anyhow::Result<RunStats> {
            let info = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .with_context(|| format!("no program {id} loaded"))?;
            Ok((info.run_time(), info.run_count()))
        };
        Ok((
            stats(self.sink)?,
            self.program.map_or(Ok((Duration::ZERO, 0)), stats)?,
        ))
    }

    /// What the programs took since `before`, over `frames` taken in.
    fn split(&self, before: (RunStats, RunStats), frames: u64) -> anyhow::Result<Split> {
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        let per_run = |before: RunStats, after: RunStats| {
            let runs = after.1.saturating_sub(before.1);
            let ns = after.0.saturating_sub(before.0).as_secs_f64() * 1e9;
            (ns / runs.max(1) as f64, runs as f64 / frames.max(1) as f64)
        };
        let after = self.read()?;
        let (sink_ns, sink_runs) = per_run(before.0, after.0);
        let (program_ns, program_runs) = per_run(before.1, after.1);
        Ok(Split {
            program_ns,
            program_runs,
            sink_ns,
            sink_runs,
        })
    }
}

impl AdmissionRow {
    /// The share of the clients' connections that completed.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a share")]
    pub fn share(&self) -> f64 {
        self.completed as f64 / (self.tried.max(1)) as f64
    }

    /// The row in a line of the bench's progress: the flood taken in, its
    /// cost, the clients that completed and their times.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{:<32} flood {:5.2} Mpps in, {:.0} ns/frame; {} of {} ({:.1} %), p50 {:.0} ms, \
             p99 {:.0} ms",
            self.admission.filter(),
            self.arrived_pps / 1e6,
            self.receive_ns,
            self.completed,
            self.tried,
            self.share() * 100.0,
            self.p50_ms,
            self.p99_ms,
        )
    }
}

/// Sets `admission` up on the server of `lab`; returns spacefilter when it
/// is the one, to be kept for the run.
fn setup(lab: &mut FloodLab, admission: Admission, port: u16) -> anyhow::Result<Option<Filter>> {
    let server = lab.ns(Host::Server);
    match admission {
        Admission::Kernel => lab.accept_without_filter()?,
        Admission::Nftables => {
            lab.accept_without_filter()?;
            let rules = format!(
                "add table netdev sfbench; \
                 add chain netdev sfbench ingress {{ type filter hook ingress device eth0 \
                 priority -500; }}; add rule netdev sfbench ingress {}",
                syn_nft_rule()
            );
            netns_exec(&server, &["nft", &rules]).context("adding the nftables rule")?;
        }
        Admission::Synproxy => {
            lab.accept_without_filter()?;
            // SYNPROXY's cookies carry the options in the timestamp.
            for (key, value) in [("ipv4/tcp_syncookies", "1"), ("ipv4/tcp_timestamps", "1")] {
                server_sysctl(lab, key, value)?;
            }
            for rule in synproxy_rules(port) {
                let args: Vec<&str> = std::iter::once("iptables")
                    .chain(rule.iter().map(String::as_str))
                    .collect();
                netns_exec(&server, &args)
                    .with_context(|| format!("adding `{}`", args.join(" ")))?;
            }
            // The rules have loaded conntrack, and with it this setting.
            server_sysctl(lab, "netfilter/nf_conntrack_tcp_loose", "0")?;
        }
        Admission::CookieFloor => lab.attach_tool("cookie_floor")?,
        Admission::SynBudget | Admission::Shield => {
            let mut sf = Filter::load(LoadOptions {
                capacity: 1024,
                ..LoadOptions::default()
            })?;
            lab.attach(&mut sf, AttachMode::Native)?;
            if admission == Admission::SynBudget {
                sf.limiter()
                    .set_reflect_ports(&default_reflectors(), &default_service_ports())?;
                sf.limiter().set(FloodCase::Syn.limits())?;
            } else {
                // As `shield on` does.
                host_for_cookies(lab)?;
                shield_ports(&mut sf, &[(port, port)], cookie_wscale(lab)?)?;
            }
            return Ok(Some(sf));
        }
    }
    Ok(None)
}

/// The packet counts of the SYNPROXY rule and of the `INVALID` rule that
/// drops.
fn synproxy_counts(lab: &FloodLab) -> anyhow::Result<(u64, u64)> {
    let text = netns_exec(&lab.ns(Host::Server), &["iptables", "-nvxL", "INPUT"])?;
    let count = |target: &str| -> anyhow::Result<u64> {
        text.lines()
            .find(|l| l.split_whitespace().nth(2) == Some(target))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {target} rule in {text}"))
    };
    Ok((count("SYNPROXY")?, count("DROP")?))
}

/// The `q` quantile of `times` (sorted), in milliseconds; NaN for none.
fn quantile_ms(times: &[Duration], q: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let index = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
    times[index].as_secs_f64() * 1e3
}

/// Sets `/proc/sys/net/KEY` in the server's namespace.
fn server_sysctl(lab: &FloodLab, key: &str, value: &str) -> anyhow::Result<()> {
    lab.run_in(Host::Server, || {
        std::fs::write(format!("/proc/sys/net/{key}"), value)
    })?
    .with_context(|| format!("setting net.{key} to {value}"))
}

/// Runs one defence: the flood for `duration`, the client throughout.
/// With `profile`, the kernel's BPF run-time statistics are on for the
/// run, and the row says where the receive time went ([`Split`]).
pub fn admission_run(
    admission: Admission,
    duration: Duration,
    profile: bool,
) -> anyhow::Result<AdmissionRow> {
    let mut lab = FloodLab::new()?;
    let echo = TcpEcho::start(&lab, Host::Server)?;
    let port = echo.port();
    let tools = accept_xdp_tx(&lab, "answer_sink")?;
    let mut sf = setup(&mut lab, admission, port)
        .with_context(|| format!("setting up {}", admission.filter()))?;
    let profiling = if profile {
        Some(Profiling::start(&tools, sf.as_mut())?)
    } else {
        None
    };
    let flood = FloodCase::Syn.flood(port).restoring();
    let target = SocketAddr::new(Host::Server.addr(Family::V4), port);
    let results: Mutex<Vec<Option<Duration>>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let lab = &lab;
    let (sent, cpu, link, split) = thread::scope(|scope| -> anyhow::Result<_> {
        scope.spawn(|| {
            let gap = Duration::from_nanos(1_000_000_000 / CONNECT_RATE);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let results = &results;
                scope.spawn(move || {
                    let started = Instant::now();
                    let ok = tcp_exchange(lab, Host::Listener, target, CONNECT_TIMEOUT).is_ok();
                    let took = started.elapsed();
                    results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(ok.then_some(took));
                });
                next += gap;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let stats_before = profiling.as_ref().map(Profiling::read).transpose()?;
        let link_before = lab.server_stats()?;
        let cpu_before = CpuTimes::now()?;
        let sent = lab.flood(&flood, duration);
        stop.store(true, Ordering::Relaxed);
        let sent = sent?;
        let cpu = CpuTimes::now()?.since(&cpu_before);
        let link = lab.server_stats()? - link_before;
        let split = match (&profiling, stats_before) {
            (Some(profiling), Some(before)) => Some(profiling.split(before, link.rx_packets)?),
            _ => None,
        };
        Ok((sent, cpu, link, split))
    })?;
    drop(profiling);
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut times: Vec<Duration> = results.iter().filter_map(|r| *r).collect();
    times.sort_unstable();
    let cookies = match &sf {
        Some(sf) if admission == Admission::Shield => {
            let counters = sf.counters()?;
            Some((
                counters.get(spacefilter::Reason::SynCookie).packets,
                counters.get(spacefilter::Reason::CookieVerified).packets,
            ))
        }
        _ => None,
    };
    let synproxy = if admission == Admission::Synproxy {
        Some(synproxy_counts(lab)?)
    } else {
        None
    };
    let seconds = sent.elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let row = AdmissionRow {
        admission,
        rule: admission.rule(port),
        seconds,
        arrived_pps: link.rx_packets as f64 / seconds,
        receive_ns: cpu.softirq(FLOOD_CPU) * 1e9 / (link.rx_packets.max(1) as f64),
        tried: results.len() as u64,
        completed: times.len() as u64,
        p50_ms: quantile_ms(&times, 0.5),
        p99_ms: quantile_ms(&times, 0.99),
        cookies,
        synproxy,
        split,
    };
    drop((echo, tools));
    Ok(row)
}

/// The shield's own cost per frame through `BPF_PROG_TEST_RUN`, in a
/// namespace with a listener: one run per call (a run turns the frame into
/// its answer, so repeats would measure something else), the median of
/// `calls` calls; the bare-drop floor measured the same way.
pub fn shield_costs(calls: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
    use crate::packets::Packet;
    let lab = crate::netns::Lab::new()?;
    host_for_cookies(&lab)?;
    let listener = lab.run_in(Host::Server, || std::net::TcpListener::bind("0.0.0.0:0"))??;
    let port = listener.local_addr()?.port();
    let mut sf = Filter::load(LoadOptions {
        capacity: 1024,
        ..LoadOptions::default()
    })?;
    // Attached somewhere (a parked veth): a program attached nowhere has
    // its dispatcher rebuilt on every run.
    let parking = super::Parking::new("h")?;
    sf.attach(&parking.name, AttachMode::Native)?;
    shield_ports(&mut sf, &[(port, port)], cookie_wscale(&lab)?)?;
    let (client, server) = (
        Host::Listener.addr(Family::V4),
        Host::Server.addr(Family::V4),
    );
    let segment = |dport: u16, set: &dyn Fn(&mut etherparse::TcpHeader)| {
        let mut h = etherparse::TcpHeader::new(40_000, dport, 0x1234_5678, 64240);
        set(&mut h);
        Packet::ip(client, server)
            .tcp_header(h)
            .build()
            .into_bytes()
    };
    let linux_syn = segment(port, &|h| {
        h.syn = true;
        let _ = h.set_options(&[
            etherparse::TcpOptionElement::MaximumSegmentSize(1460),
            etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
            etherparse::TcpOptionElement::Timestamp(1, 0),
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::WindowScale(7),
        ]);
    });
    let cases: [(&'static str, Vec<u8>); 4] = [
        ("SYN from Linux, answered with a cookie", linux_syn),
        (
            "SYN without options, answered with a cookie",
            segment(port, &|h| h.syn = true),
        ),
        ("stray ACK, out of state", segment(port, &|h| h.ack = true)),
        (
            "SYN to a port not shielded",
            segment(port + 1, &|h| h.syn = true),
        ),
    ];
    let floors = super::Floors::load()?;
    let mut floor = floors.runner(super::XDP_DROP)?;
    let median = |run: &mut dyn FnMut() -> anyhow::Result<Duration>| -> anyhow::Result<f64> {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            samples.push(run()?.as_secs_f64() * 1e9);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    };
    let mut rows = vec![(
        "bare XDP_DROP (the floor)",
        median(&mut || Ok(floor(&cases[2].1, 1)?.1))?,
    )];
    for (name, frame) in &cases {
        let cost = lab.run_in(Host::Server, || {
            median(&mut || Ok(sf.test_run(frame, 1)?.1))
        })??;
        rows.push((name, cost));
    }
    drop((listener, sf, parking));
    Ok(rows)
}

/// Everything the admission section measures, from one run.
#[derive(Clone, Debug, Default)]
pub struct Admitted {
    /// The client against the SYN flood, each defence.
    pub syn: Vec<AdmissionRow>,
    /// A transfer under ACK and RST floods.
    pub established: Vec<EstablishedRow>,
    /// The join storm during the SYN flood.
    pub storm: Vec<AdmissionRow>,
    /// The shield against the SYN flood again, profiled (see [`Split`]).
    pub profiled: Option<AdmissionRow>,
    /// More rows of the shield, the cookie floor and nftables, one after
    /// the other (see [`COST_ROUNDS`]).
    pub cost_rounds: Vec<CostRound>,
}

/// Rounds of rows, the shield's, the cookie floor's and nftables', run one
/// after the other after the table's, for the cost target: on a shared
/// machine, rows a minute apart can differ by half, every filter alike;
/// the median ratio of several rounds taken close together holds still
/// where one pair of rows does not.
pub const COST_ROUNDS: usize = 4;

/// One round of cost rows against the SYN flood: each one's receive ns a
/// frame.
#[derive(Clone, Copy, Debug)]
pub struct CostRound {
    /// The shield.
    pub shield: f64,
    /// The tools' `cookie_floor`: answering the flood's SYNs with the
    /// kernel's cookies and nothing else, on the same harness (the
    /// kernel's cookie, veth's receive and transmit, the far end's sink).
    pub floor: f64,
    /// nftables' shared SYN rate limit, the target's yardstick.
    pub nft: f64,
}

impl CostRound {
    /// The shield's receive ns a frame over nftables'.
    #[must_use]
    pub fn ratio(&self) -> f64 {
        ratio((self.shield, self.nft))
    }

    /// The floor's, over nftables'.
    #[must_use]
    pub fn floor_ratio(&self) -> f64 {
        ratio((self.floor, self.nft))
    }

    /// The shield's receive ns a frame above the floor's.
    #[must_use]
    pub fn above_floor(&self) -> f64 {
        self.shield - self.floor
    }
}

/// The medians of cost rounds: the shield's ratio, the floor's, and the
/// shield's ns above the floor.
#[derive(Clone, Copy, Debug)]
pub struct CostMedians {
    pub ratio: f64,
    pub floor_ratio: f64,
    pub above_floor: f64,
}

/// The medians of `rounds`; `None` without any.
#[must_use]
pub fn cost_medians(rounds: &[CostRound]) -> Option<CostMedians> {
    Some(CostMedians {
        ratio: median(rounds.iter().map(CostRound::ratio))?,
        floor_ratio: median(rounds.iter().map(CostRound::floor_ratio))?,
        above_floor: median(rounds.iter().map(CostRound::above_floor))?,
    })
}

/// Every defence in turn against the SYN flood, `duration` each; then the
/// transfer under ACK and RST floods (`duration` quiet, as long flooded),
/// then the join storm.
pub fn admission(duration: Duration) -> anyhow::Result<Admitted> {
    let mut rows = Vec::new();
    for admission in Admission::ALL {
        let row = admission_run(admission, duration, false)
            .with_context(|| format!("admission with {}", admission.filter()))?;
        eprintln!("bench: admission, {}", row.summary());
        rows.push(row);
    }
    let cost_rounds = cost_rounds(duration, COST_ROUNDS)?;
    let profiled =
        admission_run(Admission::Shield, duration, true).context("the shield, profiled")?;
    eprintln!("bench: admission, profiled: {}", profiled.summary());
    Ok(Admitted {
        cost_rounds,
        profiled: Some(profiled),
        syn: rows,
        established: established(duration)?,
        storm: storm()?,
    })
}

/// `rounds` rounds of rows against the SYN flood, the shield's, the cookie
/// floor's and nftables', one after the other, `duration` each. Also the
/// bench's part `cost`, for working on the shield's cost: printed, not
/// written.
pub fn cost_rounds(duration: Duration, rounds: usize) -> anyhow::Result<Vec<CostRound>> {
    let mut out = Vec::new();
    for round in 1..=rounds {
        let mut ns = [0.0; 3];
        for (admission, ns) in [
            Admission::Shield,
            Admission::CookieFloor,
            Admission::Nftables,
        ]
        .into_iter()
        .zip(&mut ns)
        {
            let row = admission_run(admission, duration, false).with_context(|| {
                format!("admission with {}, cost round {round}", admission.filter())
            })?;
            eprintln!("bench: admission, cost round {round}: {}", row.summary());
            *ns = row.receive_ns;
        }
        let [shield, floor, nft] = ns;
        let row = CostRound { shield, floor, nft };
        eprintln!(
            "bench: cost round {round}: the shield {shield:.0} ns a frame, the cookie floor \
             {floor:.0}, nftables {nft:.0}: {:.2} × (the floor {:.2} ×)",
            row.ratio(),
            row.floor_ratio()
        );
        out.push(row);
    }
    Ok(out)
}

/// A pair's ratio: the shield's receive ns a frame over nftables'.
fn ratio((shield, nft): (f64, f64)) -> f64 {
    shield / nft.max(1e-9)
}

/// The median of `values`; `None` without any.
#[must_use]
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[mid]),
        _ => Some(f64::midpoint(values[mid - 1], values[mid])),
    }
}

/// The "Admission" section of the report, with the shield's own costs.
#[must_use]
pub fn admission_report(admitted: &Admitted, costs: &[(&str, f64)]) -> String {
    let Admitted {
        syn: rows,
        established,
        storm,
        profiled,
        cost_rounds,
    } = admitted;
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(out, "## Admission under a spoofed SYN flood\n");
    let _ = writeln!(
        out,
        "The harness's SYN flood (TCP SYNs from 65536 forged sources, 198.19.0.0/16, at its \
         highest rate) at the server's listening port, {:.0} s per row, while a real client \
         opens {CONNECT_RATE} connections a second to that port, each a handshake, a request \
         and its answer, given {} s. *Completed* is the share of its connections that got \
         their answer; the times are over those. *Receive ns/frame* is the receive CPU's \
         softirq time per flood frame taken in (the shield's includes building and sending \
         each SYN-ACK). The server's answers to forged sources (the kernel's SYN-ACKs, \
         or the shield's, sent with `XDP_TX`) are dropped on the far end of its link, as a \
         wire would carry them away; the rest crosses the bridge. Every row alike.\n",
        rows[0].seconds,
        CONNECT_TIMEOUT.as_secs()
    );
    let _ = writeln!(
        out,
        "| defence | rule | flood in (Mpps) | receive ns/frame | completed | p50 | p99 |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.1} % ({} of {}) | {:.0} ms | {:.0} ms |",
            row.admission.filter(),
            row.rule,
            row.arrived_pps / 1e6,
            row.receive_ns,
            row.share() * 100.0,
            row.completed,
            row.tried,
            row.p50_ms,
            row.p99_ms,
        );
    }
    if let Some((cookies, verified)) = rows.iter().find_map(|r| r.cookies) {
        let _ = writeln!(
            out,
            "\nThe shield answered {cookies} SYNs with cookies and verified {verified} \
             handshakes (the client's)."
        );
    }
    if let Some((taken, dropped)) = rows.iter().find_map(|r| r.synproxy) {
        let _ = writeln!(
            out,
            "\nSYNPROXY's rule took {taken} segments (the SYNs, answered with cookies, and the \
             client's ACKs); the `INVALID` rule dropped {dropped}."
        );
    }
    let shield = rows.iter().find(|r| r.admission == Admission::Shield);
    let nft = rows.iter().find(|r| r.admission == Admission::Nftables);
    if let Some(shield) = shield {
        let _ = writeln!(
            out,
            "\nTargets: at least 99 % of the client's connections complete with the shield, \
             p99 within 1 s: {:.1} %, p99 {:.0} ms, {}.",
            shield.share() * 100.0,
            shield.p99_ms,
            if shield.share() >= 0.99 && shield.p99_ms <= 1000.0 {
                "met"
            } else {
                "not met"
            }
        );
        if let Some(nft) = nft {
            out.push_str(&cost_target(
                (shield.receive_ns, nft.receive_ns),
                cost_rounds,
            ));
        }
    }
    if let Some(row) = profiled {
        out.push_str(&split_report(row));
    }
    out.push_str(&costs_report(costs));
    out.push('\n');
    out.push_str(&storm_report(storm));
    out.push_str(&established_report(established));
    out
}

/// The cost target's line: the ratio of the table's pair of rows, and of
/// the rounds after them, the median of all deciding; then the cookie
/// floor's rows of those rounds, and the shield's cost above the floor.
fn cost_target(table: (f64, f64), rounds: &[CostRound]) -> String {
    let median_all =
        median(std::iter::once(ratio(table)).chain(rounds.iter().map(CostRound::ratio)))
            .unwrap_or_else(|| ratio(table));
    let mut out = format!(
        "The shield's receive cost a frame at most 0.5 × nftables': {:.2} ×",
        ratio(table)
    );
    if !rounds.is_empty() {
        let listed: Vec<String> = rounds
            .iter()
            .map(|round| {
                format!(
                    "{:.0} against {:.0} ns ({:.2} ×)",
                    round.shield,
                    round.nft,
                    round.ratio()
                )
            })
            .collect();
        let _ = write!(
            out,
            " in the table; in {} more rounds of rows, the shield's, the cookie floor's and \
             nftables', one after the other: {}; the median of the {} pairs, {median_all:.2} ×",
            rounds.len(),
            listed.join(", "),
            rounds.len() + 1,
        );
    }
    let _ = writeln!(
        out,
        ", {}.",
        if median_all <= 0.5 { "met" } else { "not met" }
    );
    if let Some(CostMedians {
        floor_ratio: floor,
        above_floor: above,
        ..
    }) = cost_medians(rounds)
    {
        let listed: Vec<String> = rounds
            .iter()
            .map(|round| format!("{:.0} ns ({:.2} ×)", round.floor, round.floor_ratio()))
            .collect();
        let _ = writeln!(
            out,
            "\nThe floor under that figure: the tools' `cookie_floor`, the least an XDP \
             program does to answer the flood's SYNs with the kernel's cookies (the SYN read, \
             `bpf_tcp_raw_gen_syncookie_ipv4`, the SYN-ACK written in place with its \
             checksums, `XDP_TX`; no lists, listener, peers or counters), on the same \
             harness, took {} a frame in those rounds, median {floor:.2} × nftables'. The \
             kernel's cookie, veth's receive of the SYN and transmit of the answer, and the \
             far end's receive of it are in the floor as in the shield. The shield's own \
             work above the floor (its row less the floor's, round by round): median \
             {above:.0} ns a frame.",
            listed.join(", "),
        );
    }
    out
}

/// Where the shield's receive time went, from its profiled run: shares,
/// since a run of its own on a shared machine differs from the table's.
fn split_report(row: &AdmissionRow) -> String {
    let Some(split) = row.split else {
        return String::new();
    };
    let program = split.program_ns * split.program_runs;
    let sink = split.sink_ns * split.sink_runs;
    let rest = row.receive_ns - program - sink;
    let share = |ns: f64| ns / row.receive_ns.max(1e-9) * 100.0;
    format!(
        "\nWhere the shield's receive time goes, from a run of its own with the kernel's BPF \
         run-time statistics on (`BPF_ENABLE_STATS`, which adds two clock reads to every \
         program run): {:.2} Mpps in, {:.0} ns of receive CPU a frame. spacefilter's program \
         took {:.0} % of it ({:.0} ns a run, {:.2} runs a frame); the far end's sink that \
         takes the SYN-ACKs {:.0} % ({:.0} ns a run, {:.2} runs a frame); the rest, {:.0} %, \
         is veth's receive of the SYN and its transmit of the answer. On a NIC the answer goes \
         to the transmit ring of the port it came in on, and the far end's part is another \
         machine's.\n",
        row.arrived_pps / 1e6,
        row.receive_ns,
        share(program),
        split.program_ns,
        split.program_runs,
        share(sink),
        split.sink_ns,
        split.sink_runs,
        share(rest),
    )
}

/// The shield's own costs, as a table.
fn costs_report(costs: &[(&str, f64)]) -> String {
    let mut out = String::new();
    if costs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nThe shield's program alone, through `BPF_PROG_TEST_RUN` in a namespace with a \
         listener, one run per call (median; the answer is built but not sent):\n"
    );
    let _ = writeln!(out, "| frame | ns |\n|---|---:|");
    for (name, ns) in costs {
        let _ = writeln!(out, "| {name} | {ns:.0} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{CostRound, cost_target};

    /// Rounds of the shield's and nftables' ns, the floor 40 ns below the
    /// shield's.
    fn rounds(pairs: &[(f64, f64)]) -> Vec<CostRound> {
        pairs
            .iter()
            .map(|&(shield, nft)| CostRound {
                shield,
                floor: shield - 40.0,
                nft,
            })
            .collect()
    }

    #[test]
    fn the_cost_target_takes_the_median_of_every_pair() {
        // The table's pair alone decides without more rounds.
        assert!(cost_target((300.0, 600.0), &[]).ends_with("0.50 ×, met.\n"));
        assert!(cost_target((310.0, 600.0), &[]).ends_with("0.52 ×, not met.\n"));
        // With rounds: the median of 0.60 (the table's), 0.45, 0.48 and
        // 0.56 is 0.52; of 0.60, 0.45, 0.48, 0.50 and 0.40, 0.48.
        let line = cost_target(
            (360.0, 600.0),
            &rounds(&[(270.0, 600.0), (288.0, 600.0), (336.0, 600.0)]),
        );
        assert!(line.contains("0.60 × in the table"), "{line}");
        assert!(
            line.contains("median of the 4 pairs, 0.52 ×, not met."),
            "{line}"
        );
        // The floor's ratios: 0.38, 0.41 and 0.49; 40 ns below the shield.
        assert!(
            line.contains(
                "230 ns (0.38 ×), 248 ns (0.41 ×), 296 ns (0.49 ×) a frame in those rounds, \
                 median 0.41 × nftables'"
            ),
            "{line}"
        );
        assert!(line.contains("median 40 ns a frame."), "{line}");
        let line = cost_target(
            (360.0, 600.0),
            &rounds(&[
                (270.0, 600.0),
                (288.0, 600.0),
                (300.0, 600.0),
                (240.0, 600.0),
            ]),
        );
        assert!(
            line.contains("median of the 5 pairs, 0.48 ×, met."),
            "{line}"
        );
    }
}
