//! Flood throughput in the veth harness: each flood shape against each
//! filter that has a rule for it, one [`FloodLab`] a run, with a
//! legitimate flow through the same link. Every count is taken on the
//! server: its interface counters, the filter's own counter, its sockets.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use spacefilter::{
    AttachMode, Filter, LoadOptions,
    api::{default_reflectors, default_service_ports, shield::DEFAULT_UNVERIFIED_PPS},
    bpf::Shielded,
};
use spacefilter_common::{Limits, limit_flags};

use super::sh;
use crate::{
    flood::{CpuTimes, FLOOD_CPU, Flood, FloodLab, LinkStats, Shape, netns_exec},
    netns::{Family, Host, IFACE},
    traffic::{TcpEcho, UdpSink, UdpStream},
};

/// The UDP service that the legitimate client uses and the UDP floods
/// aim at: a fixed port outside the ephemeral range, so that the
/// reflection guard's default profile counts it as a service.
pub(crate) const SERVICE_PORT: u16 = 5000;
/// Where spoofed sources come from: off-link for the server, which has no
/// route back and so never asks for their neighbours. The generator
/// spreads a flood's frames over them, each frame from the next source.
pub(crate) const SPOOFED_FIRST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// The spoofed sources: all of 198.19.0.0/16.
pub(crate) const SPOOFED_SOURCES: u32 = 65_536;
/// The reflectors of the reflection flood: the first of
/// [`SPOOFED_FIRST`]'s range.
pub(crate) const REFLECTORS: u32 = 3_000;

/// The per-source limit of the spoofed flood's row, packets a second (and
/// its burst): above the legitimate flow's rate, so that its source keeps
/// its own bucket and everything it sends.
pub(crate) const SOURCE_PPS: u64 = 20_000;
/// The spoofed-source fallback's aggregate budget, per destination port
/// and per source /24, packets a second (and its burst).
pub(crate) const FALLBACK_PPS: u64 = 1_000;
/// New sources a second that switch the fallback on (the daemon's
/// default).
pub(crate) const SPOOF_THRESHOLD: u64 = 5_000;
/// A low threshold, for the second spacefilter row of the spoofed flood:
/// the sources that get a bucket before the switch keep it, and in this
/// flood, drawn from only 65 536 addresses, they come back many times a
/// second (in a flood from random addresses of the whole IPv4 space, they
/// would hardly come back).
pub(crate) const SPOOF_THRESHOLD_LOW: u64 = 100;
/// The SYN guard: SYNs a second per source, and for the whole host.
pub(crate) const SYN_PPS: u64 = 20;
pub(crate) const SYN_GLOBAL_PPS: u64 = 5_000;

/// A filter measured under a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodFilter {
    /// No filter: the server's stack takes the flood (a bare `XDP_PASS`
    /// program on its interface, see
    /// [`FloodLab::accept_without_filter`]).
    None,
    Spacefilter,
    XdpFilter,
    /// A rule in a netdev ingress chain.
    Nftables,
    /// A rule in the raw table's PREROUTING chain.
    Iptables,
}

impl FloodFilter {
    pub const ALL: [FloodFilter; 5] = [
        FloodFilter::None,
        FloodFilter::Spacefilter,
        FloodFilter::XdpFilter,
        FloodFilter::Nftables,
        FloodFilter::Iptables,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FloodFilter::None => "none",
            FloodFilter::Spacefilter => "spacefilter",
            FloodFilter::XdpFilter => "xdp-filter",
            FloodFilter::Nftables => "nftables",
            FloodFilter::Iptables => "iptables",
        }
    }

    /// Where the filter acts.
    #[must_use]
    pub const fn hook(self) -> &'static str {
        match self {
            FloodFilter::None => "nowhere (the stack delivers it)",
            FloodFilter::Spacefilter | FloodFilter::XdpFilter => "XDP, native",
            FloodFilter::Nftables => "netdev ingress",
            FloodFilter::Iptables => "raw PREROUTING",
        }
    }
}

/// One filter and its rule against one flood shape.
#[derive(Clone, Debug)]
pub struct Setup {
    pub filter: FloodFilter,
    /// The rule, as its own command line (spacefilter's: the daemon's
    /// command that sets the same).
    pub rule: String,
    /// spacefilter's flood guards.
    limits: Limits,
    /// spacefilter's shield on the UDP service's port; the service then
    /// answers every datagram (a request/reply service, whose answers
    /// verify its clients), and the server routes the flood's sources.
    shield: bool,
}

/// The shapes of flood measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodCase {
    /// 60-byte UDP frames to the service from the attacker's address,
    /// whose prefix every filter blocks.
    Blocked,
    /// 60-byte UDP frames to the service, each from the next of 65 536
    /// sources: each source far below any per-source limit.
    Spoofed,
    /// TCP SYNs to a listening port, each from the next of 65 536 sources.
    Syn,
    /// Answers of DNS, NTP and memcached amplifiers (512 to 1400 bytes of
    /// payload) from 3000 sources, aimed at the UDP service.
    Reflection,
}

impl FloodCase {
    pub const ALL: [FloodCase; 4] = [
        FloodCase::Blocked,
        FloodCase::Spoofed,
        FloodCase::Syn,
        FloodCase::Reflection,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FloodCase::Blocked => "blocked source",
            FloodCase::Spoofed => "spoofed sources",
            FloodCase::Syn => "SYN flood",
            FloodCase::Reflection => "UDP reflection",
        }
    }

    /// What the flood is, for the report.
    #[must_use]
    pub fn description(self) -> String {
        let spoofed = format!(
            "each frame from the next of {SPOOFED_SOURCES} source addresses ({SPOOFED_FIRST}/16; \
             the generator rewrites each frame's source and mends its checksums), so that each \
             source sends a few dozen frames a second"
        );
        match self {
            FloodCase::Blocked => format!(
                "60-byte UDP frames from the attacker's address ({}) to the UDP service (port \
                 {SERVICE_PORT}) that the legitimate client uses; each filter drops the \
                 attacker's prefix ({}; xdp-filter takes addresses only: the attacker's \
                 address).",
                Host::Attacker.addr(Family::V4),
                Host::Attacker.subnet(Family::V4)
            ),
            FloodCase::Spoofed => format!(
                "60-byte UDP frames to the UDP service, {spoofed}: far below any per-source \
                 limit. spacefilter's per-source limit ({SOURCE_PPS} packets a second) comes \
                 with its spoofed-source fallback: past {SPOOF_THRESHOLD} new sources a second \
                 (the daemon's default), sources without a bucket get none and share an \
                 aggregate budget of {FALLBACK_PPS} packets a second per destination port and \
                 per source /24, while sources that have a bucket keep it — the legitimate \
                 client, and the sources seen before the switch (`spacefilter limit set --pps \
                 {SOURCE_PPS} --fallback-pps {FALLBACK_PPS}`). nftables and iptables get the \
                 same per-source limit (a dynamic set, `hashlimit`); neither has a fallback for \
                 new sources, and a limit on the service port as a whole would hold the \
                 legitimate flow to it along with the flood. The second spacefilter row lowers \
                 the threshold to {SPOOF_THRESHOLD_LOW}: the flood's addresses are few, so the \
                 sources that got a bucket before the switch come back many times a second and \
                 pass within their limits, where in a flood from random addresses of the whole \
                 IPv4 space they would hardly come back. The third adds the shield on the \
                 service's port at its defaults, and the service answers every datagram (a \
                 request/reply service; the server routes the flood's addresses, so its answers \
                 to them leave as they would on the Internet): the legitimate client, answered \
                 before the flood, is verified and passes; unverified sources share \
                 {DEFAULT_UNVERIFIED_PPS} datagrams a second, and while they run over it the \
                 service's answers verify nobody new."
            ),
            FloodCase::Syn => format!(
                "TCP SYNs (60-byte frames) to a listening TCP port, {spoofed}. spacefilter's SYN \
                 guard holds each source to {SYN_PPS} SYNs a second and the host to \
                 {SYN_GLOBAL_PPS} (`spacefilter limit set --syn-pps {SYN_PPS} --syn-global-pps \
                 {SYN_GLOBAL_PPS}`); nftables and iptables get the host-wide budget, which is \
                 the one that holds spoofed sources. The legitimate flow is the UDP one, as in \
                 the other floods: what the SYN flood costs it is the receive path's share of \
                 the CPU."
            ),
            FloodCase::Reflection => format!(
                "answers from {REFLECTORS} reflectors ({SPOOFED_FIRST} on), from the ports of \
                 DNS (53, 512 bytes of payload), NTP (123, 440 bytes) and memcached (11211, \
                 1400 bytes) in turn, aimed at the UDP service (port {SERVICE_PORT}). \
                 spacefilter's reflection guard (on by default) drops UDP from well-known \
                 reflector ports ({}) to the host's service ports (all but the ephemeral range \
                 32768-60999, where answers to the host's own queries arrive); nftables and \
                 iptables get the same rule. xdp-filter's nearest rule drops UDP from those \
                 source ports whatever the destination, the host's own DNS and NTP answers \
                 too.",
                reflector_list(", ")
            ),
        }
    }

    /// The flood; SYNs go to `tcp_port`.
    #[must_use]
    pub fn flood(self, tcp_port: u16) -> Flood {
        let server = Host::Server.addr(Family::V4);
        let spoofed = IpAddr::V4(SPOOFED_FIRST);
        match self {
            FloodCase::Blocked => Flood::new(
                Shape::Udp { port: SERVICE_PORT },
                &[Host::Attacker.addr(Family::V4)],
                server,
            ),
            FloodCase::Spoofed => Flood::new(Shape::Udp { port: SERVICE_PORT }, &[spoofed], server)
                .spread_over(SPOOFED_FIRST, SPOOFED_SOURCES),
            FloodCase::Syn => Flood::new(Shape::Syn { port: tcp_port }, &[spoofed], server)
                .spread_over(SPOOFED_FIRST, SPOOFED_SOURCES),
            // One frame for each reflector service.
            FloodCase::Reflection => Flood::new(
                Shape::Reflection { port: SERVICE_PORT },
                &[spoofed; crate::flood::REFLECTORS.len()],
                server,
            )
            .spread_over(SPOOFED_FIRST, REFLECTORS),
        }
    }

    /// Whether the flood's datagrams can be counted at the UDP service.
    const fn reaches_service(self) -> bool {
        !matches!(self, FloodCase::Syn)
    }

    /// The filters measured against this flood, each with its rule: no
    /// filter, spacefilter (against the spoofed flood twice: with the
    /// daemon's default threshold and a low one), and the peers that have
    /// an equivalent rule ([`Self::unmatched`] says why the others have
    /// none).
    #[must_use]
    pub fn setups(self) -> Vec<Setup> {
        let setup = |filter, rule: String| Setup {
            filter,
            rule,
            limits: self.limits(),
            shield: false,
        };
        let mut setups = vec![setup(FloodFilter::None, "-".to_owned())];
        match self {
            FloodCase::Blocked => setups.push(setup(
                FloodFilter::Spacefilter,
                format!("`spacefilter block {}`", Host::Attacker.subnet(Family::V4)),
            )),
            FloodCase::Spoofed => {
                let rule = format!(
                    "`spacefilter limit set --pps {SOURCE_PPS} --fallback-pps {FALLBACK_PPS}`"
                );
                setups.push(setup(FloodFilter::Spacefilter, rule.clone()));
                setups.push(Setup {
                    filter: FloodFilter::Spacefilter,
                    rule: format!(
                        "{} --spoof-threshold {SPOOF_THRESHOLD_LOW}`",
                        rule.trim_end_matches('`')
                    ),
                    limits: Limits {
                        spoof_threshold: SPOOF_THRESHOLD_LOW,
                        ..self.limits()
                    },
                    shield: false,
                });
                setups.push(Setup {
                    filter: FloodFilter::Spacefilter,
                    rule: format!(
                        "{rule}; `spacefilter shield on --ports udp/{SERVICE_PORT}` (the \
                         service answers every datagram)"
                    ),
                    limits: self.limits(),
                    shield: true,
                });
            }
            FloodCase::Syn => setups.push(setup(
                FloodFilter::Spacefilter,
                format!(
                    "`spacefilter limit set --syn-pps {SYN_PPS} --syn-global-pps \
                     {SYN_GLOBAL_PPS}`"
                ),
            )),
            FloodCase::Reflection => setups.push(setup(
                FloodFilter::Spacefilter,
                "reflection guard, default profile".to_owned(),
            )),
        }
        match self {
            FloodCase::Blocked => setups.push(setup(
                FloodFilter::XdpFilter,
                format!(
                    "`xdp-filter ip --mode src {}`",
                    Host::Attacker.addr(Family::V4)
                ),
            )),
            FloodCase::Reflection => setups.push(setup(
                FloodFilter::XdpFilter,
                format!(
                    "`xdp-filter port --mode src --proto udp P` for each P in {}",
                    reflector_list(",")
                ),
            )),
            FloodCase::Spoofed | FloodCase::Syn => {}
        }
        setups.push(setup(
            FloodFilter::Nftables,
            format!("`{}`", self.nft_rule()),
        ));
        setups.push(setup(
            FloodFilter::Iptables,
            format!(
                "`iptables -t raw -A PREROUTING {}`",
                self.iptables_rule().join(" ")
            ),
        ));
        setups
    }

    /// The filters with no rule equivalent to the others' against this
    /// flood, and why.
    #[must_use]
    pub fn unmatched(self) -> Vec<(FloodFilter, &'static str)> {
        match self {
            FloodCase::Spoofed | FloodCase::Syn => vec![(
                FloodFilter::XdpFilter,
                "xdp-filter matches exact addresses and ports and has no rate limit: against \
                 spoofed sources its only rule would drop all of the service's traffic",
            )],
            FloodCase::Blocked | FloodCase::Reflection => Vec::new(),
        }
    }

    /// The rule of the netdev ingress chain (with a `counter`, which the
    /// run reads).
    fn nft_rule(self) -> String {
        match self {
            FloodCase::Blocked => {
                format!(
                    "ip saddr {} counter drop",
                    Host::Attacker.subnet(Family::V4)
                )
            }
            FloodCase::Spoofed => format!(
                "update @sources {{ ip saddr limit rate over {SOURCE_PPS}/second burst \
                 {SOURCE_PPS} packets }} counter drop"
            ),
            FloodCase::Syn => format!(
                "tcp flags & (syn | ack) == syn limit rate over {SYN_GLOBAL_PPS}/second burst \
                 {SYN_GLOBAL_PPS} packets counter drop"
            ),
            FloodCase::Reflection => format!(
                "udp sport {{ {} }} udp dport != 32768-60999 counter drop",
                reflector_list(", ")
            ),
        }
    }

    /// The arguments of the raw PREROUTING rule, after `-A PREROUTING`.
    fn iptables_rule(self) -> Vec<String> {
        let words = match self {
            FloodCase::Blocked => format!("-s {} -j DROP", Host::Attacker.subnet(Family::V4)),
            FloodCase::Spoofed => format!(
                "-m hashlimit --hashlimit-above {SOURCE_PPS}/sec --hashlimit-burst {SOURCE_PPS} \
                 --hashlimit-mode srcip --hashlimit-name sfsrc --hashlimit-htable-size 65536 \
                 --hashlimit-htable-max 65536 -j DROP"
            ),
            FloodCase::Syn => format!(
                "-p tcp --syn -m hashlimit --hashlimit-above {SYN_GLOBAL_PPS}/sec \
                 --hashlimit-burst {SYN_GLOBAL_PPS} --hashlimit-name sfsyn -j DROP"
            ),
            FloodCase::Reflection => format!(
                "-p udp -m multiport --sports {} -m multiport ! --dports 32768:60999 -j DROP",
                reflector_list(",")
            ),
        };
        words.split_whitespace().map(str::to_owned).collect()
    }

    /// spacefilter's flood guards for this flood.
    pub(crate) fn limits(self) -> Limits {
        match self {
            FloodCase::Blocked => Limits::default(),
            FloodCase::Spoofed => Limits {
                flags: limit_flags::ENABLED,
                v6_prefix_len: 64,
                pps: SOURCE_PPS,
                pps_burst: SOURCE_PPS,
                spoof_threshold: SPOOF_THRESHOLD,
                fallback_pps: FALLBACK_PPS,
                fallback_burst: FALLBACK_PPS,
                ..Limits::default()
            },
            FloodCase::Syn => Limits {
                flags: limit_flags::SYN,
                v6_prefix_len: 64,
                syn_pps: SYN_PPS,
                syn_burst: SYN_PPS,
                syn_global_pps: SYN_GLOBAL_PPS,
                syn_global_burst: SYN_GLOBAL_PPS,
                ..Limits::default()
            },
            FloodCase::Reflection => Limits {
                flags: limit_flags::REFLECT,
                ..Limits::default()
            },
        }
    }
}

/// The reflection guard's default reflector ports, joined by `sep`.
fn reflector_list(sep: &str) -> String {
    default_reflectors()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// What one filter did under one flood. Counts cover the flood's own
/// interval (the legitimate flow's: what it sent during the flood, and
/// what of that arrived).
#[derive(Clone, Debug)]
pub struct FloodRow {
    pub case: FloodCase,
    pub filter: FloodFilter,
    /// The rule the filter was given.
    pub rule: String,
    /// The flood's duration.
    pub seconds: f64,
    /// Frames the generator sent (the offered load).
    pub offered: u64,
    /// Frames the server's interface took into its ring.
    pub arrived: u64,
    /// Frames lost because the server's ring was full.
    pub ring_drops: u64,
    /// Frames the filter dropped, by its own counter (the veth's XDP drop
    /// counter for xdp-filter).
    pub dropped: Option<u64>,
    /// Flood datagrams that reached the service's socket (none counted for
    /// a SYN flood).
    pub at_service: Option<u64>,
    /// The legitimate flow's rate, datagrams a second.
    pub legit_rate: u64,
    pub legit_sent: u64,
    pub legit_received: u64,
    /// CPU time over the flood's interval.
    pub cpu: CpuTimes,
    /// Which `iptables` this was (`legacy` or `nf_tables`).
    pub variant: Option<String>,
}

impl FloodRow {
    /// Dropped frames a second.
    #[must_use]
    pub fn dropped_pps(&self) -> Option<f64> {
        self.dropped.map(|d| self.rate(d))
    }

    /// `count` a second over the flood.
    #[must_use]
    pub fn rate(&self, count: u64) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let count = count as f64;
        count / self.seconds.max(1e-9)
    }

    /// The share of the legitimate flow that arrived.
    #[must_use]
    pub fn legit_share(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        let share = self.legit_received as f64 / self.legit_sent.max(1) as f64;
        share
    }

    /// Receive-side CPU (softirq on the flood CPU) per frame taken in, ns.
    #[must_use]
    pub fn receive_ns_per_frame(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a cost")]
        let frames = self.arrived.max(1) as f64;
        self.cpu.softirq(FLOOD_CPU) * 1e9 / frames
    }

    /// The filter's name, with the iptables variant.
    fn filter_name(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{} ({variant})", self.filter.name()),
            None => self.filter.name().to_owned(),
        }
    }
}

/// The packets of the first counter in `nft -j` output.
fn nft_counter(json: &serde_json::Value) -> Option<u64> {
    match json {
        serde_json::Value::Object(map) => map
            .get("counter")
            .and_then(|c| c.get("packets"))
            .and_then(serde_json::Value::as_u64)
            .or_else(|| map.values().find_map(nft_counter)),
        serde_json::Value::Array(items) => items.iter().find_map(nft_counter),
        _ => None,
    }
}

/// Sets `setup`'s filter up on the server of `lab` against `case`;
/// returns spacefilter itself when it is the one, to be kept for the run.
fn flood_filter_setup(
    lab: &mut FloodLab,
    case: FloodCase,
    setup: &Setup,
) -> anyhow::Result<Option<Filter>> {
    let server = lab.ns(Host::Server);
    match setup.filter {
        FloodFilter::None => lab.accept_without_filter()?,
        FloodFilter::Spacefilter => {
            let mut sf = Filter::load(LoadOptions {
                capacity: 1024,
                ..LoadOptions::default()
            })?;
            lab.attach(&mut sf, AttachMode::Native)?;
            sf.limiter()
                .set_reflect_ports(&default_reflectors(), &default_service_ports())?;
            sf.limiter().set(setup.limits)?;
            if setup.shield {
                crate::shield::shield_with(
                    &mut sf,
                    Shielded {
                        tcp: &[],
                        udp: &[(SERVICE_PORT, SERVICE_PORT)],
                    },
                    0,
                    DEFAULT_UNVERIFIED_PPS,
                )?;
                // The service answers the flood's sources too, as it would
                // on the Internet: the answers leave through the link.
                lab.ip(
                    Host::Server,
                    &format!(
                        "route add 198.19.0.0/16 via {}",
                        Host::Attacker.addr(Family::V4)
                    ),
                )?;
            }
            if case == FloodCase::Blocked {
                sf.block(Host::Attacker.subnet(Family::V4))?;
            }
            return Ok(Some(sf));
        }
        FloodFilter::XdpFilter => {
            // `ip netns exec` gives the command a /sys of its own, without
            // bpffs: mount one for xdp-filter's pinned maps, in the same
            // command. Without libxdp's dispatcher the program is attached
            // directly and keeps its maps when that mount goes away with
            // the command.
            let mut script = format!(
                "mount -t bpf bpf /sys/fs/bpf && \
                 xdp-filter load --mode native --features all {IFACE}"
            );
            match case {
                FloodCase::Blocked => {
                    let _ = write!(
                        script,
                        " && xdp-filter ip --mode src {}",
                        Host::Attacker.addr(Family::V4)
                    );
                }
                FloodCase::Reflection => {
                    for port in default_reflectors() {
                        let _ = write!(script, " && xdp-filter port --mode src --proto udp {port}");
                    }
                }
                FloodCase::Spoofed | FloodCase::Syn => {
                    anyhow::bail!("xdp-filter has no rule against {}", case.name())
                }
            }
            netns_exec(
                &server,
                &["env", "LIBXDP_SKIP_DISPATCHER=1", "sh", "-c", &script],
            )
            .context("loading xdp-filter on the server")?;
        }
        FloodFilter::Nftables => {
            lab.accept_without_filter()?;
            let set = if case == FloodCase::Spoofed {
                // The dynamic set of the per-source meter, as large as
                // spacefilter's table of sources.
                "add set netdev sfbench sources { type ipv4_addr; size 65536; \
                 flags dynamic,timeout; timeout 10s; }; "
            } else {
                ""
            };
            let rules = format!(
                "add table netdev sfbench; \
                 add chain netdev sfbench ingress {{ type filter hook ingress device {IFACE} \
                 priority -500; }}; {set}\
                 add rule netdev sfbench ingress {}",
                case.nft_rule()
            );
            netns_exec(&server, &["nft", &rules]).context("adding the nftables rule")?;
        }
        FloodFilter::Iptables => {
            lab.accept_without_filter()?;
            let rule = case.iptables_rule();
            let args: Vec<&str> = ["iptables", "-t", "raw", "-A", "PREROUTING"]
                .into_iter()
                .chain(rule.iter().map(String::as_str))
                .collect();
            netns_exec(&server, &args).context("adding the iptables rule")?;
        }
    }
    Ok(None)
}

/// The filter's own count of dropped frames so far.
fn flood_filter_dropped(
    lab: &FloodLab,
    filter: FloodFilter,
    sf: Option<&Filter>,
    link: &LinkStats,
) -> anyhow::Result<Option<u64>> {
    let server = lab.ns(Host::Server);
    Ok(match filter {
        FloodFilter::None => None,
        FloodFilter::Spacefilter => {
            let sf = sf.context("spacefilter is not loaded")?;
            Some(sf.counters()?.dropped())
        }
        FloodFilter::XdpFilter => Some(link.xdp_drops),
        FloodFilter::Nftables => {
            let json = netns_exec(
                &server,
                &["nft", "-j", "list", "chain", "netdev", "sfbench", "ingress"],
            )?;
            let value: serde_json::Value = serde_json::from_str(&json)?;
            Some(nft_counter(&value).with_context(|| format!("no counter in {json}"))?)
        }
        FloodFilter::Iptables => {
            let text = netns_exec(&server, &["iptables", "-t", "raw", "-nvxL", "PREROUTING"])?;
            let rule = text
                .lines()
                .find(|l| l.contains("DROP"))
                .with_context(|| format!("no DROP rule in {text}"))?;
            Some(
                rule.split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("reading {rule}"))?,
            )
        }
    })
}

/// What `stream` has sent and `sink` has received from `from`, at a moment
/// when everything sent has arrived (the stream sends in bursts, and the
/// sink catches up in between); as they are if that takes over a second.
fn caught_up(stream: &UdpStream, sink: &UdpSink, from: IpAddr) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let sent = stream.sent();
        let received = sink.received_from(from);
        if received >= sent || std::time::Instant::now() > deadline {
            return (sent, received);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Floods the server of a fresh [`FloodLab`] with `case` for `duration`
/// at the generator's highest rate, while a legitimate flow of
/// `legit_rate` datagrams a second reaches the UDP service through the
/// same link, with `setup`'s filter and rule against the flood.
pub fn flood_run(
    case: FloodCase,
    setup: &Setup,
    duration: Duration,
    legit_rate: u64,
) -> anyhow::Result<FloodRow> {
    let filter = setup.filter;
    let mut lab = FloodLab::new()?;
    let sink = UdpSink::start_with(&lab, Host::Server, SERVICE_PORT, setup.shield)?;
    // A SYN flood aims at a listening port, where the stack answers each
    // SYN (with a SYN cookie once its queue is full).
    let echo = match case {
        FloodCase::Syn => Some(TcpEcho::start(&lab, Host::Server)?),
        _ => None,
    };
    let sf = flood_filter_setup(&mut lab, case, setup)
        .with_context(|| format!("setting up {}", filter.name()))?;
    let server = Host::Server.addr(Family::V4);
    let listener = Host::Listener.addr(Family::V4);
    let service = SocketAddr::new(server, SERVICE_PORT);
    let flood = case.flood(echo.as_ref().map_or(0, TcpEcho::port));
    let sources = flood
        .spread_sources()
        .unwrap_or_else(|| vec![Host::Attacker.addr(Family::V4)]);
    let at_service = || -> u64 { sources.iter().map(|&src| sink.received_from(src)).sum() };
    let settle = Duration::from_millis(300);

    let stream = UdpStream::start(&lab, Host::Listener, service, legit_rate)?;
    std::thread::sleep(settle);
    let link_before = lab.server_stats()?;
    let dropped_before = flood_filter_dropped(&lab, filter, sf.as_ref(), &link_before)?;
    let at_service_before = at_service();
    // The legitimate flow is counted over the flood alone: from a moment
    // when all it sent has arrived to the flood's end, when it stops.
    let (legit_sent_before, legit_received_before) = caught_up(&stream, &sink, listener);
    let cpu_before = CpuTimes::now()?;
    let sent = lab.flood(&flood, duration)?;
    let cpu = CpuTimes::now()?.since(&cpu_before);
    let legit_sent = stream.stop() - legit_sent_before;
    let link_after = lab.server_stats()?;
    let dropped_after = flood_filter_dropped(&lab, filter, sf.as_ref(), &link_after)?;
    let at_service_after = at_service();
    let legit_received = sink.wait_for(
        listener,
        legit_received_before + legit_sent,
        Duration::from_secs(2),
    ) - legit_received_before;
    let link = link_after - link_before;
    let variant = (filter == FloodFilter::Iptables)
        .then(|| sh("iptables", &["--version"]).ok())
        .flatten()
        .and_then(|v| {
            let v = v.trim();
            Some(v[v.find('(')? + 1..v.find(')')?].to_owned())
        });
    Ok(FloodRow {
        case,
        filter,
        rule: setup.rule.clone(),
        seconds: sent.elapsed.as_secs_f64(),
        offered: sent.frames,
        arrived: link.rx_packets,
        ring_drops: link.rx_dropped,
        dropped: dropped_after.zip(dropped_before).map(|(a, b)| a - b),
        at_service: case
            .reaches_service()
            .then(|| at_service_after - at_service_before),
        legit_rate,
        legit_sent,
        legit_received,
        cpu,
        variant,
    })
}

/// [`flood_run`] for every flood shape and every filter with a rule
/// against it, in turn.
pub fn flood_throughput(duration: Duration, legit_rate: u64) -> anyhow::Result<Vec<FloodRow>> {
    let mut rows = Vec::new();
    for case in FloodCase::ALL {
        for setup in case.setups() {
            let row = flood_run(case, &setup, duration, legit_rate)
                .with_context(|| format!("{} with {}", case.name(), setup.filter.name()))?;
            eprintln!(
                "bench: flood, {:<15} {:<12} into the server {:5.2} Mpps, dropped {}, \
                 legitimate {:.2} %, receive CPU {:.0} % ({:.0} ns/frame)",
                case.name(),
                setup.filter.name(),
                row.rate(row.arrived) / 1e6,
                row.dropped_pps()
                    .map_or("-".to_owned(), |p| format!("{:.2} Mpps", p / 1e6)),
                row.legit_share() * 100.0,
                row.cpu.softirq(FLOOD_CPU) / row.seconds * 100.0,
                row.receive_ns_per_frame(),
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The "Flood throughput" section of the report.
#[must_use]
pub fn flood_report(rows: &[FloodRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let seconds = rows.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let legit_rate = rows[0].legit_rate;
    let _ = writeln!(
        out,
        "\n## Flood throughput (veth harness)\n\n\
         The harness's generator (`generator` in `spacefilter-ebpf/src/tools.rs`, run in \
         live-frame mode by `BPF_PROG_TEST_RUN`) floods the server's link at its highest rate \
         for {seconds:.0} s, while a legitimate client sends {legit_rate} datagrams a second \
         to the server's UDP service (port {SERVICE_PORT}) through the lab's bridge and the \
         same link. Each flood shape below is run against each filter that has a rule for it, \
         and without a filter. Every count is taken on the server: its interface counters, \
         the filter's own counter, its sockets; the legitimate flow's share is of what it sent \
         while the flood ran.\n\n\
         How to read it: the generator runs pinned to CPU {FLOOD_CPU}, and so does the \
         server's receive path — a veth runs its peer's NAPI on the CPU that fed it, right \
         after each batch of 64 frames, and the legitimate flow is steered there too (RPS on \
         the bridge port), as one NIC queue's interrupts go to one CPU. The flood is thus as \
         fast as one CPU can both make frames and take them in: a cheaper receive path makes a \
         faster flood, so the rate at which a filter drops is its capacity on that CPU, shared \
         with the generator. *Receive CPU* is CPU {FLOOD_CPU}'s softirq time over the flood \
         (the veth's NAPI: the XDP program, and for frames passed, the stack up to the nft or \
         iptables hook or the socket); the rest of that CPU is the generator (system time). \
         *ns/frame* divides that softirq time by the frames the server took in. *Dropped by \
         the filter* is the filter's own count of what it dropped, legitimate frames \
         included had it dropped any; *flood at the service* counts the flood's datagrams \
         that reached the service's socket."
    );
    for case in FloodCase::ALL {
        let case_rows: Vec<&FloodRow> = rows.iter().filter(|r| r.case == case).collect();
        if case_rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {}\n\n{}\n", case.name(), case.description());
        let _ = writeln!(
            out,
            "| filter | at | rule | into the server (Mpps) | dropped by the filter (Mpps) | \
             flood at the service (/s) | legitimate flow arrived | receive CPU (softirq, CPU \
             {FLOOD_CPU}) | receive ns/frame | generator CPU (system, CPU {FLOOD_CPU}) |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in &case_rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {} | {:.2} % ({} of {}) | {:.0} % | {:.0} | \
                 {:.0} % |",
                row.filter_name(),
                row.filter.hook(),
                row.rule,
                row.rate(row.arrived) / 1e6,
                row.dropped_pps()
                    .map_or("-".to_owned(), |p| format!("{:.2}", p / 1e6)),
                row.at_service
                    .map_or("-".to_owned(), |n| format!("{:.0}", row.rate(n))),
                row.legit_share() * 100.0,
                row.legit_received,
                row.legit_sent,
                row.cpu.softirq(FLOOD_CPU) / row.seconds * 100.0,
                row.receive_ns_per_frame(),
                row.cpu.system(FLOOD_CPU) / row.seconds * 100.0,
            );
        }
        for (filter, why) in case.unmatched() {
            let _ = writeln!(out, "\nNo row for {}: {why}.", filter.name());
        }
        flood_targets(&case_rows, &mut out);
    }
    let ring_drops: u64 = rows.iter().map(|r| r.ring_drops).sum();
    let _ = writeln!(
        out,
        "\n### Reading the flood tables\n\n\
         Frames lost at the server's full ring over all runs: {ring_drops}. The legitimate \
         flow shares that ring, so a receive path that fell behind would show there and in \
         the legitimate share; with the flood made on the receiving CPU it seldom falls \
         behind, and the filters differ in how much flood the CPU gets through and at what \
         cost. Where a flood passes the filter to the service, it fills the service's socket \
         buffer: that is where the legitimate flow is lost. The other CPU runs the legitimate \
         client, the server's socket reader and whatever else the machine runs; it is not \
         counted.\n\n\
         Not used, and why: with the generator on one CPU and the server's NAPI on the other \
         (threaded NAPI, pinned), the receive side falls behind whatever the filter — even a \
         bare `XDP_DROP` program left 8-17 % of the flood to overflow the 256-frame ring, as \
         the generator refills it in bursts faster than the NAPI thread wakes and drains it — \
         and the legitimate flow, queued behind a ring the generator keeps full, kept anywhere \
         from 16 % to 90 % from run to run with spacefilter. That setup measures veth, not \
         filters."
    );
    out
}

/// The flood target for one flood shape, and where the others stand
/// against spacefilter.
fn flood_targets(rows: &[&FloodRow], out: &mut String) {
    let by = |f: FloodFilter| rows.iter().copied().find(|r| r.filter == f);
    let ours: Vec<&FloodRow> = rows
        .iter()
        .copied()
        .filter(|r| r.filter == FloodFilter::Spacefilter)
        .collect();
    let Some(&sf) = ours.first() else {
        return;
    };
    for row in &ours {
        let share = row.legit_share();
        let with = if ours.len() > 1 {
            format!("spacefilter ({})", row.rule)
        } else {
            "spacefilter".to_owned()
        };
        let _ = writeln!(
            out,
            "\nTarget: under the harness's maximum flood ({}) the legitimate flow keeps ≥ 99 % \
             with {with}: {:.2} %, {}.",
            row.case.name(),
            share * 100.0,
            if share >= 0.99 { "met" } else { "MISSED" }
        );
    }
    if ours.len() > 1 {
        let _ = writeln!(out, "\nAgainst the first spacefilter row:");
    }
    for other in [
        FloodFilter::XdpFilter,
        FloodFilter::Nftables,
        FloodFilter::Iptables,
        FloodFilter::None,
    ] {
        let Some(row) = by(other) else {
            continue;
        };
        let what = match (row.dropped_pps(), sf.dropped_pps()) {
            (Some(pps), Some(sf_pps)) => format!(
                "drops {:.2} Mpps ({:.2} × spacefilter's rate)",
                pps / 1e6,
                pps / sf_pps.max(1.0)
            ),
            _ => format!("takes in {:.2} Mpps", row.rate(row.arrived) / 1e6),
        };
        let reaching = row
            .at_service
            .map(|n| {
                format!(
                    ", {:.0} flood datagrams a second reaching the service",
                    row.rate(n)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- {}: {what}{reaching}, at {:.0} ns of receive CPU a frame against spacefilter's \
             {:.0}; the legitimate flow keeps {:.2} %.",
            other.name(),
            row.receive_ns_per_frame(),
            sf.receive_ns_per_frame(),
            row.legit_share() * 100.0
        );
    }
}
