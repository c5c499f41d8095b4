//! `cargo xtask bench`: the per-packet cost of spacefilter against a bare
//! `XDP_DROP`/`XDP_PASS` floor and against xdp-filter, measured in one run
//! on the same frames with `BPF_PROG_TEST_RUN`.
//!
//! Each frame kind is measured over many source addresses (256 frames, the
//! repeat count split between them) so that the lookups do not all hit one
//! cached path, in several rounds, reporting the median and the spread.
//! Every run also checks the verdict: a benchmark that measured the wrong
//! path would be worthless.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf, TestRunOptions,
    programs::{TestRun as _, Xdp, XdpMode},
};
use aya_obj::programs::XdpAttachType;
use spacefilter::{Filter, LoadOptions, Prefix, bpf::TOOLS};

use crate::packets::{Ext, Packet};

pub mod admission;
mod control;
mod fleet;
mod floods;
pub mod observe;

pub use control::{ControlOptions, ControlPlane, control_plane, control_report};
pub use fleet::{FleetOptions, FleetRun, fleet_report, fleet_run};
pub use floods::{FloodCase, FloodFilter, FloodRow, flood_report, flood_run, flood_throughput};

/// XDP actions.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Distinct sources per frame kind.
const SOURCES: usize = 256;

/// A small deterministic generator (xorshift64*), so that every run
/// measures the same tables.
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "taking the low bits on purpose"
    )]
    pub fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
}

/// The block and allow entries of one table size, and the sources of
/// frames that the table blocks.
pub struct Table {
    pub block: Vec<Prefix>,
    pub allow: Vec<Prefix>,
    pub blocked_v4: Vec<Ipv4Addr>,
    pub blocked_v6: Vec<Ipv6Addr>,
}

/// A random IPv4 address outside 198.18.0.0/15 (the clean frames' range)
/// and 100.64.0.0/10 (the allowlist's).
fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let addr = Ipv4Addr::from(rng.next_u32());
        let [a, b, ..] = addr.octets();
        if (1..=223).contains(&a)
            && !(a == 198 && (b & 0xfe) == 18)
            && !(a == 100 && b & 0xc0 == 64)
        {
            return addr;
        }
    }
}

/// A random IPv6 address in `2002::/16`..`3fff::/16` (outside `2001:2::/48`,
/// the clean frames' range, and `fd00::/8`, the allowlist's).
fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    let hi = u128::from(rng.next_u64());
    let lo = u128::from(rng.next_u64());
    let mut addr = (hi << 64) | lo;
    let first = 0x2002 + rng.below(0x3fff - 0x2002);
    addr = (addr & !(0xffff_u128 << 112)) | (u128::from(first) << 112);
    Ipv6Addr::from(addr)
}

/// A host inside `prefix`.
fn host_in(prefix: Prefix, rng: &mut Rng) -> IpAddr {
    match prefix.addr() {
        IpAddr::V4(a) => {
            let host_bits = 32 - u32::from(prefix.len());
            let mask = if host_bits == 0 {
                0
            } else {
                u32::MAX >> (32 - host_bits)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | (rng.next_u32() & mask)))
        }
        IpAddr::V6(a) => {
            let host_bits = 128 - u32::from(prefix.len());
            let mask = if host_bits == 0 {
                0
            } else {
                u128::MAX >> (128 - host_bits)
            };
            let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | (r & mask)))
        }
    }
}

impl Table {
    /// `size` block entries in a realistic mix: 80 % IPv4 (60 % /32, 25 %
    /// /24, 10 % /16-/23, 5 % /25-/31), 20 % IPv6 (50 % /128, 30 % /64,
    /// 20 % /48); with any entries, 1000 allowlist entries as well.
    #[must_use]
    pub fn generate(size: usize, rng: &mut Rng) -> Table {
        let mut block = BTreeSet::new();
        while block.len() < size {
            let roll = rng.below(100);
            let prefix = if rng.below(100) < 80 {
                let len: u8 = match roll {
                    0..60 => 32,
                    60..85 => 24,
                    85..95 => 16 + u8::try_from(rng.below(8)).expect("small"),
                    _ => 25 + u8::try_from(rng.below(7)).expect("small"),
                };
                Prefix::truncating(IpAddr::V4(random_v4(rng)), len)
            } else {
                let len: u8 = match roll {
                    0..50 => 128,
                    50..80 => 64,
                    _ => 48,
                };
                Prefix::truncating(IpAddr::V6(random_v6(rng)), len)
            };
            block.insert(prefix);
        }
        let block: Vec<Prefix> = block.into_iter().collect();
        let mut allow = BTreeSet::new();
        while size > 0 && allow.len() < 1000 {
            let prefix = if rng.below(2) == 0 {
                let a = Ipv4Addr::from(0x6440_0000 | (rng.next_u32() & 0x003f_ffff));
                Prefix::truncating(IpAddr::V4(a), if rng.below(2) == 0 { 32 } else { 24 })
            } else {
                let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                let a = Ipv6Addr::from((0xfd_u128 << 120) | (r >> 8));
                Prefix::truncating(IpAddr::V6(a), if rng.below(2) == 0 { 128 } else { 64 })
            };
            allow.insert(prefix);
        }
        let mut table = Table {
            blocked_v4: Vec::new(),
            blocked_v6: Vec::new(),
            allow: allow.into_iter().collect(),
            block,
        };
        let (v4, v6): (Vec<Prefix>, Vec<Prefix>) =
            table.block.iter().partition(|p| p.addr().is_ipv4());
        for _ in 0..SOURCES {
            if !v4.is_empty() {
                let prefix = v4[usize::try_from(rng.below(v4.len() as u64)).expect("fits")];
                if let IpAddr::V4(a) = host_in(prefix, rng) {
                    table.blocked_v4.push(a);
                }
            }
            if !v6.is_empty() {
                let prefix = v6[usize::try_from(rng.below(v6.len() as u64)).expect("fits")];
                if let IpAddr::V6(a) = host_in(prefix, rng) {
                    table.blocked_v6.push(a);
                }
            }
        }
        table
    }
}

/// A kind of frame measured: how to build it from a source, whether its
/// sources are blocked ones, and whether they are over a rate limit.
#[derive(Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub blocked: bool,
    /// Clean sources, each over its per-source rate limit: the limiter is
    /// on ([`Kind::limits`]) and drops the frame.
    pub limited: bool,
    pub v6: bool,
    build: fn(IpAddr) -> Packet,
}

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

fn udp(src: IpAddr) -> Packet {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(SERVER_V4),
        IpAddr::V6(_) => IpAddr::V6(SERVER_V6),
    };
    Packet::ip(src, dst).udp(40_000, 5_000).payload_len(18)
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "clean IPv4 UDP",
        blocked: false,
        limited: false,
        v6: false,
        build: udp,
    },
    Kind {
        name: "clean IPv6 UDP",
        blocked: false,
        limited: false,
        v6: true,
        build: udp,
    },
    Kind {
        name: "blocked IPv4 UDP",
        blocked: true,
        limited: false,
        v6: false,
        build: udp,
    },
    Kind {
        name: "blocked IPv6 UDP",
        blocked: true,
        limited: false,
        v6: true,
        build: udp,
    },
    Kind {
        name: "clean IPv4 UDP, QinQ",
        blocked: false,
        limited: false,
        v6: false,
        build: |src| udp(src).qinq(100, 200),
    },
    Kind {
        name: "blocked IPv4 UDP, QinQ",
        blocked: true,
        limited: false,
        v6: false,
        build: |src| udp(src).qinq(100, 200),
    },
    Kind {
        name: "clean IPv6 UDP, 3 ext headers",
        blocked: false,
        limited: false,
        v6: true,
        build: |src| udp(src).exts([Ext::HOP_BY_HOP, Ext::DEST_OPTS, Ext::ROUTING]),
    },
    Kind {
        name: "clean IPv4 TCP SYN",
        blocked: false,
        limited: false,
        v6: false,
        build: |src| {
            let dst = IpAddr::V4(SERVER_V4);
            Packet::ip(src, dst).tcp(40_000, 443)
        },
    },
    Kind {
        name: "rate-limited IPv4 UDP",
        blocked: false,
        limited: true,
        v6: false,
        build: udp,
    },
];

impl Kind {
    /// The kind's frames: one per source, from the table's blocked sources
    /// or from the clean ranges.
    pub fn frames(&self, table: &Table, rng: &mut Rng) -> Vec<Vec<u8>> {
        let sources: Vec<IpAddr> = match (self.blocked, self.v6) {
            (true, false) => table.blocked_v4.iter().map(|&a| IpAddr::V4(a)).collect(),
            (true, true) => table.blocked_v6.iter().map(|&a| IpAddr::V6(a)).collect(),
            (false, false) => (0..SOURCES)
                .map(|_| {
                    let r = rng.next_u32();
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (r & 0x0001_ffff)))
                })
                .collect(),
            (false, true) => (0..SOURCES)
                .map(|_| {
                    let r = u128::from(rng.next_u64());
                    IpAddr::V6(Ipv6Addr::from(
                        (0x2001_0002_0000_u128 << 80) | (r & ((1 << 80) - 1)),
                    ))
                })
                .collect(),
        };
        sources
            .into_iter()
            .map(|src| (self.build)(src).build().into_bytes())
            .collect()
    }

    #[must_use]
    pub fn expected(&self) -> u32 {
        if self.blocked || self.limited {
            XDP_DROP
        } else {
            XDP_PASS
        }
    }

    /// The flood guards while this kind is measured: all off, or for a
    /// rate-limited kind the per-source limit alone, at one packet a
    /// second (every source is over it after its first frame; no
    /// auto-block, so each frame goes through its bucket).
    #[must_use]
    pub fn limits(&self) -> spacefilter_common::Limits {
        if self.limited {
            over_limit(spacefilter_common::limit_flags::ENABLED)
        } else {
            spacefilter_common::Limits::default()
        }
    }

    /// Whether xdp-filter has a rule for this kind: it has no rate limit.
    #[must_use]
    pub fn xdp_filter_equivalent(&self) -> bool {
        !self.limited
    }

    /// The target against the floor at 1M entries: a blocked frame ≤ 2×,
    /// a frame through the whole pipeline (clean, or dropped by the rate
    /// limit at its end) ≤ 3×.
    #[must_use]
    pub fn floor_target(&self) -> f64 {
        if self.blocked { 2.0 } else { 3.0 }
    }
}

/// One test run: the frame and the repeat count in, the XDP action and the
/// mean time per run out.
pub type RunResult = anyhow::Result<(u32, Duration)>;

/// A program run over a frame, `repeat` times: its verdict and the mean
/// time of a run.
pub type Runner<'a> = &'a mut dyn FnMut(&[u8], u32) -> RunResult;

/// Median and spread of the mean ns/packet over the rounds.
#[derive(Clone, Copy, Debug)]
pub struct Measure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Measure {
    fn of(mut samples: Vec<f64>) -> Measure {
        samples.sort_by(f64::total_cmp);
        Measure {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

/// Runs `run` over `frames`, `repeat` runs in all per round, and checks
/// every verdict against `expected`.
pub fn measure(
    run: &mut dyn FnMut(&[u8], u32) -> RunResult,
    frames: &[Vec<u8>],
    repeat: u32,
    rounds: usize,
    expected: u32,
) -> anyhow::Result<Measure> {
    let mut measured = measure_each(&mut [run], frames, repeat, rounds, expected)?;
    Ok(measured.remove(0))
}

/// As [`measure`], for several programs on the same frames, taken in turn
/// round by round: a machine whose speed drifts (a shared one does, by
/// half from one minute to the next) then drifts under all of them alike,
/// and their ratios hold where their times do not.
pub fn measure_each(
    runs: &mut [Runner<'_>],
    frames: &[Vec<u8>],
    repeat: u32,
    rounds: usize,
    expected: u32,
) -> anyhow::Result<Vec<Measure>> {
    let per_frame = (repeat / u32::try_from(frames.len()).expect("few frames")).max(1);
    let mut samples = vec![Vec::with_capacity(rounds); runs.len()];
    for _ in 0..rounds {
        for (run, samples) in runs.iter_mut().zip(&mut samples) {
            let mut total_ns = 0.0;
            for frame in frames {
                let (action, mean) = run(frame, per_frame)?;
                ensure!(
                    action == expected,
                    "verdict {action}, expected {expected}: the benchmark would measure the wrong \
                     path"
                );
                total_ns += mean.as_secs_f64() * 1e9;
            }
            #[expect(clippy::cast_precision_loss, reason = "a few hundred frames")]
            samples.push(total_ns / frames.len() as f64);
        }
    }
    Ok(samples.into_iter().map(Measure::of).collect())
}

/// A veth pair in the root namespace that a measured program is attached
/// to, deleted on drop. `BPF_PROG_TEST_RUN` of an XDP program that is not
/// attached anywhere re-generates the kernel's XDP dispatcher on every call
/// (milliseconds each); attached, the program is already in it.
pub struct Parking {
    pub name: String,
}

impl Parking {
    /// A pair named `sfb<pid><tag>` and `sfb<pid><tag>p`: the process id
    /// tells [`Self::sweep`] whose it is. `tag` is a letter or two.
    pub fn new(tag: &str) -> anyhow::Result<Parking> {
        let name = format!("sfb{}{tag}", std::process::id());
        let peer = format!("{name}p");
        let _ = sh("ip", &["link", "del", &name]);
        sh(
            "ip",
            &["link", "add", &name, "type", "veth", "peer", "name", &peer],
        )?;
        let parking = Parking { name };
        sh("ip", &["link", "set", &parking.name, "up"])?;
        sh("ip", &["link", "set", &peer, "up"])?;
        Ok(parking)
    }

    /// Removes what an earlier run that was killed left behind: pairs and
    /// pins whose process is gone. Those of live processes stay — another
    /// benchmark may be running on the machine, and a program test-run
    /// while attached nowhere costs milliseconds a call.
    pub fn sweep() {
        if let Ok(links) = sh("ip", &["-o", "link", "show"]) {
            for line in links.lines() {
                if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next())
                    && Self::orphaned(name)
                    && !name.ends_with('p')
                {
                    let _ = sh("ip", &["link", "del", name]);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
            for entry in entries.flatten() {
                if Self::orphaned(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Whether `name` is a parking pair's (or its pin's) whose process is
    /// gone.
    fn orphaned(name: &str) -> bool {
        let Some(rest) = name.strip_prefix("sfb") else {
            return false;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !digits.is_empty() && !Path::new("/proc").join(&digits).exists()
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.name]);
    }
}

/// The bare floors: `floor_drop` and `floor_pass`.
pub struct Floors {
    ebpf: Ebpf,
    _parked: Vec<Parking>,
}

impl Floors {
    pub fn load() -> anyhow::Result<Floors> {
        let mut ebpf = Ebpf::load(TOOLS).context("loading the floor programs")?;
        let mut parked = Vec::new();
        for (name, tag) in [("floor_drop", "d"), ("floor_pass", "a")] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            program.load()?;
            let parking = Parking::new(tag)?;
            program.attach(&parking.name, XdpMode::Driver)?;
            parked.push(parking);
        }
        Ok(Floors {
            ebpf,
            _parked: parked,
        })
    }

    pub fn runner(&self, verdict: u32) -> anyhow::Result<impl FnMut(&[u8], u32) -> RunResult + '_> {
        let name = if verdict == XDP_DROP {
            "floor_drop"
        } else {
            "floor_pass"
        };
        let program: &Xdp = self.ebpf.program(name).context("loaded")?.try_into()?;
        Ok(move |frame: &[u8], repeat| run_xdp(program, frame, repeat))
    }
}

fn run_xdp(program: &Xdp, frame: &[u8], repeat: u32) -> RunResult {
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    })?;
    Ok((result.return_value, result.duration))
}

/// xdp-filter from xdp-tools, loaded on a veth pair of its own (in the
/// root namespace: xdp-filter keeps its maps pinned in bpffs, which `ip
/// netns exec` hides) with all its features, and its program pinned so
/// that it can be test-run.
pub struct XdpFilter {
    parking: Parking,
    pin: String,
    program: Option<Xdp>,
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl XdpFilter {
    /// Loads xdp-filter blocking exactly `sources` (it holds addresses, not
    /// prefixes).
    pub fn load(sources: &[IpAddr]) -> anyhow::Result<XdpFilter> {
        let parking = Parking::new("x")?;
        let mut this = XdpFilter {
            pin: format!("/sys/fs/bpf/{}-prog", parking.name),
            parking,
            program: None,
        };
        let iface = this.parking.name.clone();
        sh(
            "xdp-filter",
            &["load", "--mode", "native", "--features", "all", &iface],
        )?;
        for addr in sources {
            sh("xdp-filter", &["ip", "--mode", "src", &addr.to_string()])?;
        }
        let json = sh("ip", &["-j", "-d", "link", "show", "dev", &iface])?;
        let id = json
            .split("\"id\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|id| id.parse::<u32>().ok())
            .context("xdp-filter's program id not found")?;
        let _ = std::fs::remove_file(&this.pin);
        sh(
            "bpftool",
            &["prog", "pin", "id", &id.to_string(), &this.pin],
        )?;
        this.program = Some(Xdp::from_pin(&this.pin, XdpAttachType::Interface)?);
        Ok(this)
    }

    pub fn runner(&self) -> impl FnMut(&[u8], u32) -> RunResult + '_ {
        move |frame, repeat| {
            run_xdp(
                self.program.as_ref().context("xdp-filter not loaded")?,
                frame,
                repeat,
            )
        }
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = sh("xdp-filter", &["unload", &self.parking.name]);
        let _ = std::fs::remove_file(&self.pin);
    }
}

/// One measured row.
pub struct Row {
    pub kind: &'static str,
    pub entries: usize,
    pub floor: Measure,
    pub spacefilter: Measure,
    pub xdp_filter: Option<Measure>,
    /// The most spacefilter may cost at 1M entries, × floor.
    pub floor_target: f64,
}

/// Loads spacefilter with `table` and attaches it to a parking veth;
/// returns the filter, the veth, and how long the entries took to write.
pub fn load_filter(table: &Table) -> anyhow::Result<(Filter, Parking, Duration)> {
    let capacity = u32::try_from(table.block.len() + table.allow.len() + 1024)?.max(1 << 12);
    let mut filter = Filter::load(LoadOptions {
        capacity,
        ..LoadOptions::default()
    })?;
    let start = Instant::now();
    let lists = filter.lists();
    lists.insert_many(spacefilter::List::Allow, &table.allow)?;
    for chunk in table.block.chunks(64 * 1024) {
        lists.insert_many(spacefilter::List::Block, chunk)?;
    }
    let took = start.elapsed();
    let parking = Parking::new("s")?;
    filter.attach(&parking.name, spacefilter::AttachMode::Native)?;
    Ok((filter, parking, took))
}

/// Where the run happened.
#[must_use]
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = sh("uname", &["-r"]).unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// The report, as Markdown.
#[must_use]
pub fn report(
    rows: &[Row],
    control: Option<&ControlPlane>,
    flood: &[FloodRow],
    machine: &str,
    date: &str,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench` on {date}, on {machine}. Figures vary from run to run \
         on a shared machine; compare the ratios, which are taken within one run on the same \
         frames.\n"
    );
    if !rows.is_empty() {
        out.push_str(&packet_report(rows));
    }
    if let Some(control) = control {
        out.push_str(&control_report(control));
    }
    out.push_str(&flood_report(flood));
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// The per-packet section of the report, with its targets.
fn packet_report(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Per-packet cost (`BPF_PROG_TEST_RUN`)\n");
    let _ = writeln!(
        out,
        "Each cell is the median ns per packet over the rounds (min-max in brackets), each round \
         {SOURCES} frames with distinct sources; the floor, spacefilter and xdp-filter are \
         measured in turn, round by round. *floor* is a bare program returning the same \
         verdict (`XDP_DROP` for blocked and rate-limited frames, `XDP_PASS` for clean ones); \
         xdp-filter holds exact addresses only (the blocked sources), so it is compared at the \
         sizes it supports. With entries, the allowlist holds 1000 entries too. The \
         rate-limited frames come from clean sources, each over its per-source limit (the \
         limiter on, one packet a second, nothing else): the whole pipeline, then a drop by the \
         source's bucket; xdp-filter has no rate limit, so it has no cell there.\n"
    );
    let _ = writeln!(
        out,
        "| frame | entries | floor | spacefilter | × floor | xdp-filter | spacefilter / xdp-filter |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let ratio = row.spacefilter.median / row.floor.median;
        let (xf, vs) = match row.xdp_filter {
            Some(m) => (
                format!("{:.1} [{:.1}-{:.1}]", m.median, m.min, m.max),
                format!("{:.2}", row.spacefilter.median / m.median),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} [{:.1}-{:.1}] | {ratio:.2} | {xf} | {vs} |",
            row.kind,
            row.entries,
            row.floor.median,
            row.spacefilter.median,
            row.spacefilter.min,
            row.spacefilter.max
        );
    }
    let _ = writeln!(out, "\n## Targets\n");
    if !rows.iter().any(|r| r.entries == 1_000_000) {
        let _ = writeln!(
            out,
            "- against the floor at 1M entries: not measured (this run stopped short of 1M \
             entries)"
        );
    }
    for row in rows.iter().filter(|r| r.entries == 1_000_000) {
        let ratio = row.spacefilter.median / row.floor.median;
        let limit = row.floor_target;
        let _ = writeln!(
            out,
            "- {} at 1M entries: {ratio:.2} × floor (target ≤ {limit}×): {}",
            row.kind,
            if ratio <= limit { "met" } else { "MISSED" }
        );
    }
    for row in rows
        .iter()
        .filter(|r| r.xdp_filter.is_some() && r.entries > 0)
    {
        let m = row.xdp_filter.expect("filtered");
        let ratio = row.spacefilter.median / m.median;
        let _ = writeln!(
            out,
            "- {} at {} entries: {ratio:.2} × xdp-filter (target ≤ 0.5×): {}",
            row.kind,
            row.entries,
            if ratio <= 0.5 { "met" } else { "MISSED" }
        );
    }
    out
}

/// The heading of the per-kernel section `cargo xtask kernels` writes
/// (see `xtask/src/kernels.rs`): kept when the report is rewritten.
const KERNELS_SECTION: &str = "\n## Kernels\n";

/// Writes `text` to `path`, followed by the per-kernel section of the file
/// there, if it has one. With `merge` (a run of some parts), the file keeps
/// its preamble and every section the run did not write (or wrote empty),
/// in its order; the run's sections replace theirs.
pub fn write_report(path: &Path, text: &str, merge: bool) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    if merge && !old.is_empty() {
        let merged = merge_sections(&old, text);
        return std::fs::write(path, merged).with_context(|| format!("writing {}", path.display()));
    }
    let mut text = text.to_owned();
    if let Some(at) = old.find(KERNELS_SECTION) {
        let rest = &old[at + KERNELS_SECTION.len()..];
        let end = rest
            .find("\n## ")
            .map_or(old.len(), |e| at + KERNELS_SECTION.len() + e + 1);
        text.push_str(&old[at..end]);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A report cut at its `## ` headings: the preamble, then each section
/// (its heading line, and the text up to the next heading).
fn sections(text: &str) -> (&str, Vec<(&str, &str)>) {
    let mut starts: Vec<usize> = text.match_indices("\n## ").map(|(i, _)| i + 1).collect();
    if text.starts_with("## ") {
        starts.insert(0, 0);
    }
    let preamble = &text[..starts.first().copied().unwrap_or(text.len())];
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let section = &text[start..end];
        let heading = section.lines().next().unwrap_or_default();
        out.push((heading, section));
    }
    (preamble, out)
}

/// The notes section's heading.
const NOTES: &str = "## Notes";

/// The notes of a partial run added to the full run's: the full run's
/// notes on parts that did not run stay, a note the new run repeats is
/// kept once, and the last partial run's line gives way to the new one.
fn merge_notes(old: &str, new: &str) -> String {
    let partial = |line: &str| line.starts_with("- a partial run");
    let note_lines = |section: &'_ str| -> Vec<String> {
        section
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut lines: Vec<String> = note_lines(old)
        .into_iter()
        .filter(|l| !partial(l))
        .collect();
    for line in note_lines(new) {
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    let mut out = format!("{NOTES}\n\n");
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// `old` with the sections of `new` that hold more than their heading in
/// place of its own (new ones at the end); a partial run's notes are added
/// to the notes there ([`merge_notes`]).
fn merge_sections(old: &str, new: &str) -> String {
    // A heading marked by hand (`†`: re-measured apart) is the same one.
    let same = |a: &str, b: &str| {
        let bare = |h: &str| h.trim_end_matches([' ', '†', '‡']).to_owned();
        bare(a) == bare(b)
    };
    let (preamble, old) = sections(old);
    let (_, new) = sections(new);
    let written: Vec<(&str, &str)> = new
        .into_iter()
        .filter(|(heading, section)| !section[heading.len()..].trim().is_empty())
        .collect();
    let mut out = preamble.to_owned();
    for (heading, section) in &old {
        let replaced = written.iter().find(|(h, _)| same(h, heading));
        match replaced {
            Some((_, new_notes)) if same(heading, NOTES) => {
                out.push_str(&merge_notes(section, new_notes));
            }
            Some((_, section)) => out.push_str(section),
            None => out.push_str(section),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    for (heading, section) in &written {
        if !old.iter().any(|(h, _)| same(h, heading)) {
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(section);
        }
    }
    out
}

/// The cost of one flood-guard stage.
pub struct GuardRow {
    pub stage: &'static str,
    pub floor: Measure,
    pub cost: Measure,
}

/// Limits whose budgets nothing in a benchmark reaches.
fn open_limits(flags: u32) -> spacefilter_common::Limits {
    spacefilter_common::Limits {
        flags,
        v6_prefix_len: 64,
        pps: 1_000_000_000,
        pps_burst: 1_000_000_000,
        bps: 100_000_000_000,
        bps_burst: 1_000_000_000_000,
        syn_pps: 1_000_000_000,
        syn_burst: 1_000_000_000,
        syn_global_pps: 1_000_000_000,
        syn_global_burst: 1_000_000_000,
        spoof_threshold: 1_000_000_000,
        fallback_pps: 1_000,
        fallback_burst: 1_000,
        ..spacefilter_common::Limits::default()
    }
}

/// [`open_limits`], but every source over its packet budget of one a
/// second after its first frame.
fn over_limit(flags: u32) -> spacefilter_common::Limits {
    spacefilter_common::Limits {
        pps: 1,
        pps_burst: 1,
        ..open_limits(flags)
    }
}

/// One stage of the guard-cost table.
struct Stage {
    name: &'static str,
    limits: spacefilter_common::Limits,
    rules: bool,
    syn: bool,
    expected: u32,
}

fn stages() -> [Stage; 7] {
    use spacefilter_common::{Limits, limit_flags as f};
    let all = f::ENABLED | f::SYN | f::REFLECT;
    let stage = |name, limits, rules, syn, expected| Stage {
        name,
        limits,
        rules,
        syn,
        expected,
    };
    [
        stage(
            "guards off (lists empty)",
            Limits::default(),
            false,
            false,
            XDP_PASS,
        ),
        stage(
            "+ reflection guard",
            open_limits(f::REFLECT),
            false,
            false,
            XDP_PASS,
        ),
        stage(
            "+ per-source rate limit, within it",
            open_limits(f::REFLECT | f::ENABLED),
            false,
            false,
            XDP_PASS,
        ),
        stage(
            "+ 8 header rules, none matching",
            open_limits(all),
            true,
            false,
            XDP_PASS,
        ),
        stage(
            "TCP SYN, SYN guard on, within budget",
            open_limits(all),
            true,
            true,
            XDP_PASS,
        ),
        stage(
            "rate-limited source (over its limit)",
            over_limit(all),
            true,
            false,
            XDP_DROP,
        ),
        stage(
            "TCP SYN over its source's SYN budget",
            Limits {
                syn_pps: 1,
                syn_burst: 1,
                ..open_limits(all)
            },
            true,
            true,
            XDP_DROP,
        ),
    ]
}

/// The per-packet cost of the flood guards and header rules, on clean
/// IPv4 frames (and SYNs) from many sources, with empty lists, stage by
/// stage.
pub fn guard_costs(
    floors: &Floors,
    rng: &mut Rng,
    (rounds, repeat): (usize, u32),
) -> anyhow::Result<Vec<GuardRow>> {
    use spacefilter::api::{default_reflectors, default_service_ports};
    use spacefilter_common::{HeaderRule, rule_action};

    let table = Table::generate(0, rng);
    let (mut filter, _parking, _) = load_filter(&table)?;
    filter
        .limiter()
        .set_reflect_ports(&default_reflectors(), &default_service_ports())?;
    let udp = KINDS[0].frames(&table, rng);
    let syn = KINDS[7].frames(&table, rng);
    // Rules that look at every frame and match none.
    let rules: Vec<(HeaderRule, u64)> = (0..8_u32)
        .map(|i| {
            let rule = HeaderRule {
                action: rule_action::DROP,
                proto: 17,
                dport_lo: 100 + i,
                dport_hi: 100 + i,
                ..HeaderRule::default()
            };
            (rule, 0)
        })
        .collect();
    let mut rows = Vec::new();
    for stage in stages() {
        let Stage {
            name,
            limits,
            rules: with_rules,
            syn: is_syn,
            expected,
        } = stage;
        let frames = if is_syn { &syn } else { &udp };
        filter.limiter().set(limits)?;
        filter
            .header_rules()
            .set(if with_rules { &rules } else { &[] })?;
        let [floor, cost]: [Measure; 2] = measure_each(
            &mut [&mut floors.runner(expected)?, &mut |frame, repeat| {
                Ok(filter.test_run(frame, repeat)?)
            }],
            frames,
            repeat,
            rounds,
            expected,
        )?
        .try_into()
        .expect("two measures");
        eprintln!(
            "bench: guards: {name:<40} floor {:6.1} ns  spacefilter {:6.1} ns",
            floor.median, cost.median
        );
        rows.push(GuardRow {
            stage: name,
            floor,
            cost,
        });
    }
    Ok(rows)
}

/// The guard-cost section of the report.
#[must_use]
pub fn guard_report(rows: &[GuardRow]) -> String {
    cost_table(
        "Cost of the flood guards and header rules",
        &format!(
            "Clean IPv4 UDP (or TCP SYN where said) from {SOURCES} sources, no list entries; each \
             stage adds to the ones above it (`BPF_PROG_TEST_RUN`, median ns per packet, min-max \
             in brackets)."
        ),
        "stage",
        rows,
    )
}

/// A report section of per-packet costs next to their floor, one row per
/// setting.
#[must_use]
pub fn cost_table(title: &str, intro: &str, first_column: &str, rows: &[GuardRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(
        out,
        "{intro} The floor and spacefilter are measured in turn, round by round.\n"
    );
    let _ = writeln!(out, "| {first_column} | floor | spacefilter | × floor |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} [{:.1}-{:.1}] | {:.2} |",
            row.stage,
            row.floor.median,
            row.cost.median,
            row.cost.min,
            row.cost.max,
            row.cost.median / row.floor.median
        );
    }
    out
}

#[cfg(test)]
mod report_tests {
    use super::merge_sections;

    #[test]
    fn a_run_of_some_parts_replaces_only_their_sections() {
        let old = "# B\n\nfull run\n\n## One\n\nold one\n\n## Notes\n\nold notes\n\n## Two †\n\nold two\n\n## Kernels\n\nk\n";
        let new = "# B\n\npartial run\n\n## Notes\n\n## Two\n\nnew two\n\n## Three\n\nnew three\n";
        assert_eq!(
            merge_sections(old, new),
            "# B\n\nfull run\n\n## One\n\nold one\n\n## Notes\n\nold notes\n\n## Two\n\nnew two\n\n## Kernels\n\nk\n\n## Three\n\nnew three\n"
        );
    }

    #[test]
    fn a_partial_run_adds_its_notes_to_the_full_run_s() {
        let old = "# B\n\n## Notes\n\n- writing 1000 entries took 0.00 s\n- a partial run: guards only\n\n## Kernels\n\nk\n";
        let new = "# B\n\n## Notes\n\n- a partial run: control only\n- writing 1000 entries took 0.00 s\n- restart: 1.3 s\n";
        assert_eq!(
            merge_sections(old, new),
            "# B\n\n## Notes\n\n- writing 1000 entries took 0.00 s\n- a partial run: control only\n- restart: 1.3 s\n\n## Kernels\n\nk\n"
        );
    }
}
