//! Floods for the namespace lab, made in the kernel.
//!
//! A [`Generator`] is the `generator` XDP program of
//! [`TOOLS`](spacefilter::bpf::TOOLS), which redirects every frame to one
//! interface. Run through `BPF_PROG_TEST_RUN` in live-frame mode (kernel
//! 5.18), one call turns one prebuilt frame into `repeat` real frames
//! leaving through that interface: millions a second, where a socket or
//! trafgen manages a few hundred thousand.
//!
//! A call sends one frame, repeated. A [`Flood`] holds one prebuilt frame
//! per source (a few hundred for a spoofed flood) and the generator cycles
//! through them, a burst of each per call, as fast as it goes or paced to a
//! rate. Bursts of a few thousand keep the cost of a call (the kernel sets
//! up a page pool for each) small beside the frames it sends.
//!
//! [`FloodLab`] wires a [`Lab`] for floods:
//!
//! ```text
//!   server eth0  <-------------------- srv (switch) <-- generator
//!   (filter)                            |
//!                                      br0 <-- lis <-- listener (legit)
//! ```
//!
//! The flood enters the server's link at the switch's end of it, the
//! bridge port facing the server, without crossing the bridge: a software
//! bridge forwards well under a million frames a second, and flooding
//! through it would measure the bridge. The legitimate flow comes through
//! the bridge and shares that link with the flood: the server's ring (a
//! veth's peer queues what it receives in a ring of 256 frames, drained by
//! NAPI, as a NIC's receive ring is), and the CPU that drains it.
//!
//! That CPU is [`FLOOD_CPU`]: the generator runs pinned to it, a veth's
//! NAPI runs on the CPU that fed it, and the legitimate flow is steered to
//! it as well (RPS on the switch's listener port). Otherwise the server's
//! NAPI instance migrates to whichever CPU last woke it and two CPUs race
//! to fill one ring, an artefact of veth which no filter can help. So the
//! flood is synchronous: after each batch of 64 frames the CPU that made
//! them runs the server's receive path, and the generator goes exactly as
//! fast as one CPU can both make frames and take them in. A cheaper
//! receive path makes a faster flood; the receiving side's CPU time is the
//! `softirq` time of [`FLOOD_CPU`] (see [`CpuTimes`]), the generator's is
//! its `system` time.
//!
//! Count floods where they arrive ([`link_stats`], the filter's own
//! counters), never by what the generator sent ([`Sent`] is the offered
//! load): a veth drops what its peer's ring cannot take, and it loses
//! redirected frames altogether when its peer has neither an XDP program
//! nor GRO ([`FloodLab::accept_without_filter`]).

use std::{
    net::{IpAddr, Ipv4Addr},
    ops::Deref,
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, TestRunOptions,
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunAttrs, Xdp, XdpMode},
};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use spacefilter::{Prefix, bpf::TOOLS};

use crate::{
    bench::Rng,
    netns::{Host, IFACE, Lab, ip, run_in_netns},
    packets::Packet,
};

/// The CPU that makes floods and takes them in (see the module
/// documentation).
pub const FLOOD_CPU: usize = 0;
/// Frames per batch in live-frame mode: how many the kernel runs the
/// program on before it flushes the redirects (and the CPU runs the
/// receiver's NAPI).
const LIVE_BATCH: u32 = 64;
/// The veth pair in the generator's namespace that the program is parked
/// on (see [`Generator::new`]).
const PARKING: [&str; 2] = ["sfgen0", "sfgen1"];
/// How often a paced flood tops up.
const SLICE: Duration = Duration::from_millis(2);
/// `USER_HZ`: the unit of `/proc/stat` and `/proc/PID/stat`, 100 on every
/// Linux ABI.
pub const USER_HZ: f64 = 100.0;

/// A MAC address written `02:53:46:00:00:01`, as bytes.
fn mac_bytes(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a well-formed MAC address");
    }
    mac
}

/// What each frame of a flood is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// UDP datagrams with an 18-byte payload (60-byte IPv4 frames) to
    /// `port`, from a source port that varies with the source.
    Udp { port: u16 },
    /// TCP SYNs to `port`, from a source port that varies with the source.
    Syn { port: u16 },
    /// Bare TCP ACKs to `port` (no payload, made-up sequence and
    /// acknowledgement numbers), as a flood aimed past SYN defences sends:
    /// segments of no connection, from a source port that varies with the
    /// source.
    Ack { port: u16 },
    /// TCP RSTs (without ACK) to `port`, made up the same way.
    Rst { port: u16 },
    /// Answers of the amplifiers that reflection attacks abuse, aimed at
    /// `port` (a service of the victim's, where no answer is expected),
    /// each source one service in turn: DNS (from port 53, 512 bytes of
    /// payload), NTP (123, 440 bytes, as a `monlist` answer) and memcached
    /// (11211, 1400 bytes).
    Reflection { port: u16 },
}

/// The reflection services: source port and payload size.
pub const REFLECTORS: [(u16, usize); 3] = [(53, 512), (123, 440), (11_211, 1_400)];

/// A flood: the frames to cycle through, how many copies of each one call
/// sends, the pace, when to stop, and the sources the generator spreads
/// the frames over.
#[derive(Clone, Debug)]
pub struct Flood {
    frames: Vec<Vec<u8>>,
    burst: u32,
    rate: Option<u64>,
    total: Option<u64>,
    spread: Option<(Ipv4Addr, u32)>,
    /// Write each frame's head back before it leaves (see
    /// [`Flood::restoring`]).
    restore: bool,
}

impl Flood {
    /// Copies of each frame per call, by default.
    pub const BURST: u32 = 4096;

    /// Frames of `shape` from each of `sources` to `dst`, addressed as the
    /// lab's attacker addresses the server: from [`Host::Attacker`]'s MAC
    /// address to [`Host::Server`]'s.
    ///
    /// # Panics
    /// If `sources` is empty or mixes families with `dst`.
    #[must_use]
    pub fn new(shape: Shape, sources: &[IpAddr], dst: IpAddr) -> Flood {
        assert!(!sources.is_empty(), "a flood needs a source");
        let eth_dst = mac_bytes(&Host::Server.mac());
        let eth_src = mac_bytes(&Host::Attacker.mac());
        let frames = sources
            .iter()
            .enumerate()
            .map(|(i, &src)| {
                let low = u16::try_from(i % 20_000).expect("fits");
                let packet = Packet::ip(src, dst);
                let packet = match shape {
                    Shape::Udp { port } => packet.udp(40_000 + low, port).payload_len(18),
                    Shape::Syn { port } => packet.tcp(20_000 + low, port),
                    Shape::Ack { port } | Shape::Rst { port } => {
                        let mut header =
                            etherparse::TcpHeader::new(20_000 + low, port, 0x5eed_0001, 64240);
                        let rst = matches!(shape, Shape::Rst { .. });
                        header.rst = rst;
                        header.ack = !rst;
                        header.acknowledgment_number = if rst { 0 } else { 0x0bad_5eed };
                        packet.tcp_header(header)
                    }
                    Shape::Reflection { port } => {
                        let (from, size) = REFLECTORS[i % REFLECTORS.len()];
                        packet.udp(from, port).payload_len(size)
                    }
                };
                let mut bytes = packet.build().into_bytes();
                bytes[..6].copy_from_slice(&eth_dst);
                bytes[6..12].copy_from_slice(&eth_src);
                bytes
            })
            .collect();
        Flood::from_frames(frames)
    }

    /// A flood of these frames, as they are.
    ///
    /// # Panics
    /// If `frames` is empty.
    #[must_use]
    pub fn from_frames(frames: Vec<Vec<u8>>) -> Flood {
        assert!(!frames.is_empty(), "a flood needs a frame");
        Flood {
            frames,
            burst: Self::BURST,
            rate: None,
            total: None,
            spread: None,
            restore: false,
        }
    }

    /// Every frame leaves with its first 64 bytes as built, whatever a
    /// receiver that answers with `XDP_TX` left in its page (in live-frame
    /// mode pages come back for later frames): for floods at a filter that
    /// turns frames into answers. It costs the generator a copy a frame.
    #[must_use]
    pub fn restoring(mut self) -> Flood {
        self.restore = true;
        self
    }

    /// Every frame from the next of `count` source addresses from `first`
    /// on, in turn: the generator rewrites each IPv4 frame's source (and
    /// mends its checksums) as it sends it, so one call sends a flood from
    /// thousands of sources. Frames that are not IPv4 leave as built.
    ///
    /// # Panics
    /// If `count` is 0.
    #[must_use]
    pub fn spread_over(mut self, first: Ipv4Addr, count: u32) -> Flood {
        assert!(count > 0, "a spread over no source");
        self.spread = Some((first, count));
        self
    }

    /// The sources the frames are spread over, if they are.
    #[must_use]
    pub fn spread_sources(&self) -> Option<Vec<IpAddr>> {
        let (first, count) = self.spread?;
        Some(
            (0..count)
                .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(first).wrapping_add(i))))
                .collect(),
        )
    }

    /// Paced to `pps` frames a second (by default the generator sends as
    /// fast as it can).
    #[must_use]
    pub fn at_rate(mut self, pps: u64) -> Flood {
        self.rate = Some(pps);
        self
    }

    /// `burst` copies of each frame per call (the last call of a paced
    /// slice may send fewer).
    ///
    /// # Panics
    /// If `burst` is 0.
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Flood {
        assert!(burst > 0, "a burst of no frame");
        self.burst = burst;
        self
    }

    /// Stops after `frames` frames (or when the run's time is up).
    #[must_use]
    pub fn limit(mut self, frames: u64) -> Flood {
        self.total = Some(frames);
        self
    }

    #[must_use]
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    #[must_use]
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }
}

/// `count` distinct random addresses inside `prefix`, to spoof sources
/// with; IPv4 addresses ending in `.0` or `.255` left out. The same ones
/// for the same seed.
///
/// # Panics
/// If `prefix` is too small for `count` such addresses.
#[must_use]
pub fn spoofed_sources(prefix: Prefix, count: usize, seed: u64) -> Vec<IpAddr> {
    let host_bits = match prefix.addr() {
        IpAddr::V4(_) => 32 - u32::from(prefix.len()),
        IpAddr::V6(_) => 128 - u32::from(prefix.len()),
    };
    assert!(
        host_bits >= 64 || (count as u128) < (1_u128 << host_bits) / 2,
        "{prefix} is too small for {count} sources"
    );
    let mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    let mut rng = Rng::new(seed);
    let mut taken = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let random = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) & mask;
        let addr = match prefix.addr() {
            IpAddr::V4(a) => {
                let host = u32::try_from(random).expect("masked to at most 32 bits");
                IpAddr::V4((u32::from(a) | host).into())
            }
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) | random).into()),
        };
        let edge = matches!(addr, IpAddr::V4(a) if matches!(a.octets()[3], 0 | 255));
        if !edge && taken.insert(addr) {
            out.push(addr);
        }
    }
    out
}

/// What a generator run sent, by its own account: the offered load, not
/// what arrived.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the program ran on (each redirected, or lost trying).
    pub frames: u64,
    /// `BPF_PROG_TEST_RUN` calls.
    pub calls: u64,
    /// From the first call to the end of the last.
    pub elapsed: Duration,
}

impl Sent {
    /// Frames a second.
    #[must_use]
    pub fn pps(&self) -> f64 {
        per_second(self.frames, self.elapsed)
    }
}

/// `count` per `elapsed`, a second.
#[must_use]
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let count = count as f64;
    count / elapsed.as_secs_f64().max(1e-9)
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the generator to CPU {cpu}"))
}

/// The `generator` program, loaded and aimed at one interface of one
/// network namespace.
pub struct Generator {
    ebpf: Ebpf,
    /// `GEN_SPREAD`: the sources a flood's frames are spread over.
    spread: Mutex<Array<MapData, [u32; 2]>>,
    /// `GEN_HEAD`: the first bytes to write back into every frame.
    head: Mutex<Array<MapData, [u8; 68]>>,
    ns: String,
    target: String,
    cpu: Option<usize>,
}

impl Generator {
    /// Loads the generator and aims it at `target`, an interface of
    /// namespace `ns`: frames leave through `target` towards its peer.
    ///
    /// The program is attached to a veth pair of its own in `ns`
    /// ([`PARKING`], down, so nothing arrives on it): the kernel
    /// regenerates its XDP dispatcher on every test run of a program that
    /// is attached nowhere, milliseconds each. It goes with the namespace.
    pub fn new(ns: &str, target: &str) -> anyhow::Result<Generator> {
        let mut ebpf = Ebpf::load(TOOLS).context("loading the measuring tools")?;
        let ifindex = run_in_netns(ns, || nix::net::if_::if_nametoindex(target))?
            .with_context(|| format!("no interface {target} in {ns}"))?;
        let mut targets: Array<_, u32> = Array::try_from(
            ebpf.map_mut("GEN_TARGET")
                .context("the tools have no map GEN_TARGET")?,
        )?;
        targets.set(0, ifindex, 0)?;
        let spread = Array::try_from(
            ebpf.take_map("GEN_SPREAD")
                .context("the tools have no map GEN_SPREAD")?,
        )?;
        let head = Array::try_from(
            ebpf.take_map("GEN_HEAD")
                .context("the tools have no map GEN_HEAD")?,
        )?;
        let program: &mut Xdp = ebpf
            .program_mut("generator")
            .context("the tools have no program generator")?
            .try_into()?;
        program.load().context("loading the generator")?;
        let [park, peer] = PARKING;
        ip([
            "-n", ns, "link", "add", park, "type", "veth", "peer", "name", peer,
        ])?;
        run_in_netns(ns, || program.attach(park, XdpMode::Driver))?
            .with_context(|| format!("parking the generator on {park} in {ns}"))?;
        Ok(Generator {
            ebpf,
            spread: Mutex::new(spread),
            head: Mutex::new(head),
            ns: ns.to_owned(),
            target: target.to_owned(),
            cpu: None,
        })
    }

    /// Runs the floods on `cpu` (by default wherever the scheduler likes).
    pub fn pin(&mut self, cpu: Option<usize>) {
        self.cpu = cpu;
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program("generator")
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// The namespace and the interface the frames leave through.
    #[must_use]
    pub fn target(&self) -> (&str, &str) {
        (&self.ns, &self.target)
    }

    /// Sends `repeat` copies of `frame`. The calling thread must be in the
    /// generator's namespace: the kernel resolves the target's ifindex
    /// there.
    fn send(&self, frame: &[u8], repeat: u32, restore: bool) -> anyhow::Result<()> {
        if restore {
            let mut head = [0u8; 68];
            head[0] = 1;
            let n = frame.len().min(64);
            head[4..4 + n].copy_from_slice(&frame[..n]);
            self.head
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set(0, head, 0)
                .context("setting the generator's frame head")?;
        }
        // In live-frame mode the kernel reports no verdict (the return
        // value is always 0): what arrives is the only evidence.
        self.program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
                ..Default::default()
            })
            .context("a live-frame test run of the generator")?;
        Ok(())
    }

    /// Sends `flood` for `duration` (or until its limit), from a thread
    /// inside the generator's namespace; blocks until done.
    pub fn run(&self, flood: &Flood, duration: Duration) -> anyhow::Result<Sent> {
        let mut spread = self.spread.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, count) = flood.spread.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        spread
            .set(0, [u32::from(first), count], 0)
            .context("setting the generator's sources")?;
        let sent = run_in_netns(&self.ns, || self.run_here(flood, duration))?;
        spread
            .set(0, [0, 0], 0)
            .context("clearing the generator's sources")?;
        if flood.restore {
            self.head
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set(0, [0; 68], 0)
                .context("clearing the generator's frame head")?;
        }
        sent
    }

    /// [`Self::run`], once inside the namespace.
    fn run_here(&self, flood: &Flood, duration: Duration) -> anyhow::Result<Sent> {
        if let Some(cpu) = self.cpu {
            pin_thread(cpu)?;
        }
        let total = flood.total.unwrap_or(u64::MAX);
        let mut sent = Sent::default();
        let mut next = 0;
        let start = Instant::now();
        while sent.frames < total && start.elapsed() < duration {
            let due = match flood.rate {
                None => total,
                Some(rate) => {
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_precision_loss,
                        reason = "a frame count"
                    )]
                    let due = (rate as f64 * start.elapsed().as_secs_f64()) as u64;
                    due.min(total)
                }
            };
            let mut owed = due.saturating_sub(sent.frames);
            // Unpaced, one burst at a time, so that the clock is looked at.
            if flood.rate.is_none() {
                owed = owed.min(u64::from(flood.burst));
            }
            while owed > 0 {
                let burst =
                    u32::try_from(owed.min(u64::from(flood.burst))).expect("at most a burst");
                self.send(&flood.frames[next], burst, flood.restore)?;
                next = (next + 1) % flood.frames.len();
                sent.frames += u64::from(burst);
                sent.calls += 1;
                owed -= u64::from(burst);
            }
            if flood.rate.is_some() {
                thread::sleep(SLICE);
            }
        }
        sent.elapsed = start.elapsed();
        Ok(sent)
    }
}

/// Runs `ip netns exec <ns> <args...>` (a mount namespace of its own with
/// the namespace's `/sys`) and returns its standard output.
pub fn netns_exec(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    ip(["netns", "exec", ns].iter().chain(args))
}

/// Interface counters, from `ip -s link` and the veth's `ethtool -S`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received: on a veth with NAPI, every frame its ring took,
    /// whatever the XDP program then did with it.
    pub rx_packets: u64,
    /// On a veth: frames its peer could not put in the full ring, and
    /// frames lost on the way up.
    pub rx_dropped: u64,
    /// Frames an XDP program on the interface dropped (veth's
    /// `rx_queue_*_xdp_drops`).
    pub xdp_drops: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl std::ops::Sub for LinkStats {
    type Output = LinkStats;
    fn sub(self, earlier: LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            xdp_drops: self.xdp_drops.saturating_sub(earlier.xdp_drops),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
        }
    }
}

/// The counters of interface `iface` in namespace `ns`.
pub fn link_stats(ns: &str, iface: &str) -> anyhow::Result<LinkStats> {
    let json = ip(["-n", ns, "-j", "-s", "link", "show", "dev", iface])?;
    let value: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("reading `ip -j -s link`: {json}"))?;
    let stats = &value[0]["stats64"];
    let field = |dir: &str, name: &str| {
        stats[dir][name]
            .as_u64()
            .with_context(|| format!("no {dir} {name} in `ip -j -s link`: {json}"))
    };
    let ethtool = netns_exec(ns, &["ethtool", "-S", iface])?;
    let xdp_drops = ethtool
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(name, _)| name.starts_with("rx_queue_") && name.ends_with("_xdp_drops"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum();
    Ok(LinkStats {
        rx_packets: field("rx", "packets")?,
        rx_dropped: field("rx", "dropped")?,
        xdp_drops,
        tx_packets: field("tx", "packets")?,
        tx_dropped: field("tx", "dropped")?,
    })
}

/// Time each CPU spent in each state, from `/proc/stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Per CPU: user, nice, system, idle, iowait, irq, softirq, steal, in
    /// `USER_HZ` ticks.
    cpus: Vec<[u64; 8]>,
}

impl CpuTimes {
    const SYSTEM: usize = 2;
    const IDLE: usize = 3;
    const IOWAIT: usize = 4;
    const SOFTIRQ: usize = 6;
    const STEAL: usize = 7;

    /// The counters now.
    pub fn now() -> anyhow::Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let mut cpus = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            if name == "cpu" || !name.starts_with("cpu") {
                continue;
            }
            let index: usize = name[3..]
                .parse()
                .with_context(|| format!("reading /proc/stat: {line}"))?;
            let mut ticks = [0u64; 8];
            for (slot, word) in ticks.iter_mut().zip(words) {
                *slot = word
                    .parse()
                    .with_context(|| format!("reading /proc/stat: {line}"))?;
            }
            if cpus.len() <= index {
                cpus.resize(index + 1, [0; 8]);
            }
            cpus[index] = ticks;
        }
        Ok(CpuTimes { cpus })
    }

    /// The time spent from `earlier` to `self`.
    #[must_use]
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            cpus: self
                .cpus
                .iter()
                .zip(&earlier.cpus)
                .map(|(now, then)| std::array::from_fn(|i| now[i].saturating_sub(then[i])))
                .collect(),
        }
    }

    fn seconds(ticks: u64) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "tick counts")]
        let ticks = ticks as f64;
        ticks / USER_HZ
    }

    fn field(&self, cpu: usize, index: usize) -> f64 {
        Self::seconds(self.cpus.get(cpu).map_or(0, |c| c[index]))
    }

    /// How many CPUs `/proc/stat` lists.
    #[must_use]
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Seconds `cpu` spent serving softirqs (in interrupt context or in
    /// `ksoftirqd`): the receive path of a veth, XDP program included.
    #[must_use]
    pub fn softirq(&self, cpu: usize) -> f64 {
        self.field(cpu, Self::SOFTIRQ)
    }

    /// Seconds `cpu` spent in the kernel for processes: the generator's
    /// test runs, sends from sockets.
    #[must_use]
    pub fn system(&self, cpu: usize) -> f64 {
        self.field(cpu, Self::SYSTEM)
    }

    /// Seconds `cpu` was busy, whatever with.
    #[must_use]
    pub fn busy(&self, cpu: usize) -> f64 {
        self.total(cpu)
            - self.field(cpu, Self::IDLE)
            - self.field(cpu, Self::IOWAIT)
            - self.field(cpu, Self::STEAL)
    }

    /// Seconds counted on `cpu` in all.
    #[must_use]
    pub fn total(&self, cpu: usize) -> f64 {
        Self::seconds(self.cpus.get(cpu).map_or(0, |c| c.iter().sum()))
    }
}

/// A [`Lab`] wired for floods (see the module documentation): the
/// generator aimed at the server's link from the switch's end, pinned to
/// [`FLOOD_CPU`], with the legitimate flow steered to that CPU too.
/// Dropping it deletes the lab, as [`Lab`] does; it dereferences to the
/// [`Lab`] for everything else.
pub struct FloodLab {
    generator: Generator,
    pass: Option<Ebpf>,
    lab: Lab,
}

impl FloodLab {
    pub fn new() -> anyhow::Result<FloodLab> {
        let lab = Lab::new()?;
        let switch = lab.switch_ns();
        let mask = format!("{:x}", 1_u64 << FLOOD_CPU);
        for host in [Host::Listener, Host::Attacker] {
            let script = format!(
                "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                host.switch_port()
            );
            netns_exec(&switch, &["sh", "-c", &script])
                .context("steering the clients' frames to the flood CPU (RPS)")?;
        }
        let mut generator = Generator::new(&switch, Host::Server.switch_port())?;
        generator.pin(Some(FLOOD_CPU));
        Ok(FloodLab {
            generator,
            pass: None,
            lab,
        })
    }

    #[must_use]
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    #[must_use]
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// Attaches a bare `XDP_PASS` program to the server's [`IFACE`], for
    /// runs without an XDP filter: a veth takes redirected frames only
    /// with an XDP program attached (or GRO on), and with the program the
    /// legitimate flow goes through the same ring as the flood, as it does
    /// with an XDP filter. It costs a few ns a frame.
    pub fn accept_without_filter(&mut self) -> anyhow::Result<()> {
        self.attach_tool("floor_pass")
    }

    /// Attaches the tools' XDP program `name` to the server's link, in
    /// place of a filter, for as long as the lab lives.
    pub fn attach_tool(&mut self, name: &str) -> anyhow::Result<()> {
        let mut ebpf = Ebpf::load(TOOLS).context("loading the measuring tools")?;
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("the tools have no program {name}"))?
            .try_into()?;
        program.load()?;
        self.lab
            .run_in(Host::Server, || program.attach(IFACE, XdpMode::Driver))?
            .with_context(|| format!("attaching the tools' {name} to the server"))?;
        self.pass = Some(ebpf);
        Ok(())
    }

    /// Sends `flood` into the server's link for `duration` (or until its
    /// limit); blocks until done.
    pub fn flood(&self, flood: &Flood, duration: Duration) -> anyhow::Result<Sent> {
        self.generator.run(flood, duration)
    }

    /// The counters of the server's [`IFACE`].
    pub fn server_stats(&self) -> anyhow::Result<LinkStats> {
        link_stats(&self.lab.ns(Host::Server), IFACE)
    }
}

impl Deref for FloodLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    fn parse(frame: &[u8]) -> (IpAddr, Option<TransportSlice<'_>>) {
        let sliced = SlicedPacket::from_ethernet(frame).expect("a well-formed frame");
        let src = match sliced.net {
            Some(NetSlice::Ipv4(ip)) => IpAddr::V4(ip.header().source_addr()),
            Some(NetSlice::Ipv6(ip)) => IpAddr::V6(ip.header().source_addr()),
            _ => panic!("not IP"),
        };
        (src, sliced.transport)
    }

    #[test]
    fn shapes() {
        let dst = Host::Server.addr(crate::netns::Family::V4);
        let sources = spoofed_sources("198.19.0.0/16".parse().unwrap(), 300, 7);
        assert_eq!(sources.len(), 300);
        let unique: std::collections::BTreeSet<_> = sources.iter().collect();
        assert_eq!(unique.len(), 300);
        assert!(
            sources
                .iter()
                .all(|a| "198.19.0.0/16".parse::<Prefix>().unwrap().contains(*a))
        );

        let syn = Flood::new(Shape::Syn { port: 443 }, &sources, dst);
        assert_eq!(syn.frames().len(), 300);
        for (frame, &src) in syn.frames().iter().zip(&sources) {
            assert_eq!(frame[..6], mac_bytes(&Host::Server.mac()));
            assert_eq!(frame[6..12], mac_bytes(&Host::Attacker.mac()));
            let (from, transport) = parse(frame);
            assert_eq!(from, src);
            let Some(TransportSlice::Tcp(tcp)) = transport else {
                panic!("not TCP")
            };
            assert!(tcp.syn() && !tcp.ack());
            assert_eq!(tcp.destination_port(), 443);
        }

        let reflection = Flood::new(Shape::Reflection { port: 5000 }, &sources[..6], dst);
        let ports: Vec<(u16, usize)> = reflection
            .frames()
            .iter()
            .map(|frame| match parse(frame).1 {
                Some(TransportSlice::Udp(udp)) => {
                    assert_eq!(udp.destination_port(), 5000);
                    (udp.source_port(), udp.payload().len())
                }
                _ => panic!("not UDP"),
            })
            .collect();
        assert_eq!(ports, [REFLECTORS, REFLECTORS].concat());

        let v6 = spoofed_sources("2001:2:0:2::/64".parse().unwrap(), 10, 1);
        let udp = Flood::new(
            Shape::Udp { port: 9 },
            &v6,
            Host::Server.addr(crate::netns::Family::V6),
        );
        assert_eq!(parse(&udp.frames()[3]).0, v6[3]);
    }
}
