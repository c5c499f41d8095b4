//! Real traffic through the XDP program: a server, a legitimate client (the
//! listener) and an attacker in network namespaces on one bridge, with
//! spacefilter attached to the server's interface. Each test builds its own
//! lab, so they run in parallel.
//!
//! Blocked traffic is checked where it stops: the server's sockets see none
//! of it, and the program's `blocked` counter accounts for every frame.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use spacefilter::{AttachMode, Counters, Filter, List, LoadOptions, Prefix, Reason};
use spacefilter_tests::{
    netns::{Family, Host, IFACE, Lab},
    require_root,
    traffic::{self, TcpEcho, UdpSink},
};

/// List capacity. The default (a million entries) makes every load
/// allocate a million per-CPU hit counters, about 2 s of kernel time; these
/// tests hold a handful of entries.
const CAPACITY: u32 = 1024;
/// UDP datagrams per burst.
const DATAGRAMS: u64 = 50;
/// Between two datagrams: slow enough for every queue on the way.
const GAP: Duration = Duration::from_micros(500);
/// Echo requests per ping run.
const PINGS: u32 = 5;
/// How long traffic that should arrive may take.
const ARRIVAL: Duration = Duration::from_secs(3);
/// How long a blocked TCP connection is given: one SYN's worth.
const BLOCKED_CONNECT: Duration = Duration::from_millis(300);

/// A lab with spacefilter attached to the server and the server's UDP
/// sink and TCP echo service running. Fields drop in order: the services,
/// the program, then the lab.
struct Rig {
    sink: UdpSink,
    echo: TcpEcho,
    filter: Filter,
    lab: Lab,
}

impl Rig {
    fn new(mode: AttachMode) -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let mut filter = Filter::load(LoadOptions {
            capacity: CAPACITY,
            ..LoadOptions::default()
        })
        .expect("loading spacefilter");
        let used = lab
            .attach(&mut filter, mode)
            .unwrap_or_else(|err| panic!("attaching in {} mode: {err:#}", mode.name()));
        assert_eq!(
            used,
            mode,
            "asked for {} mode, got {} (veth supports native XDP)",
            mode.name(),
            used.name()
        );
        let sink = UdpSink::start(&lab, Host::Server).expect("starting the UDP sink");
        let echo = TcpEcho::start(&lab, Host::Server).expect("starting the TCP echo service");
        Self {
            sink,
            echo,
            filter,
            lab,
        }
    }

    fn counters(&self) -> Counters {
        self.filter.counters().expect("reading the counters")
    }

    fn hits(&self, list: List, prefix: Prefix) -> u64 {
        self.filter
            .entries()
            .expect("reading the entries")
            .into_iter()
            .find(|e| e.list == list && e.prefix == prefix)
            .unwrap_or_else(|| panic!("{prefix} is not on the {} list", list.name()))
            .hits
    }

    /// The server's interface counters and the program's, for failure
    /// messages.
    fn state(&self) -> String {
        format!(
            "server {}\ncounters: {:?}",
            self.lab.link_stats(Host::Server),
            self.counters()
        )
    }

    /// Sends UDP, a TCP exchange and pings from `from` to the server, and
    /// asserts that all of it arrives. Returns the change in the counters.
    fn assert_reaches(&self, from: Host, family: Family) -> Counters {
        let what = format!("{from} → server over {family}");
        let source = from.addr(family);
        let server = Host::Server.addr(family);
        let before = self.counters();
        let received = self.sink.received_from(source);
        let accepted = self.echo.accepted_from(source);

        let sent = traffic::send_udp(
            &self.lab,
            from,
            SocketAddr::new(server, self.sink.port()),
            DATAGRAMS,
            GAP,
        )
        .expect("sending UDP");
        assert_eq!(
            sent, DATAGRAMS,
            "{what}: the sender's kernel refused datagrams"
        );
        let arrived = self.sink.wait_for(source, received + DATAGRAMS, ARRIVAL) - received;
        assert_eq!(
            arrived,
            DATAGRAMS,
            "{what}: UDP datagrams lost\n{}",
            self.state()
        );

        traffic::tcp_exchange(
            &self.lab,
            from,
            SocketAddr::new(server, self.echo.port()),
            ARRIVAL,
        )
        .unwrap_or_else(|err| panic!("{what}: TCP exchange failed: {err:#}\n{}", self.state()));
        assert_eq!(self.echo.accepted_from(source), accepted + 1, "{what}");

        let replies = traffic::ping(&self.lab, from, server, PINGS).expect("running ping");
        assert_eq!(
            replies,
            PINGS,
            "{what}: ping replies lost\n{}",
            self.state()
        );

        let delta = self.counters().since(&before);
        let allowed = self
            .filter
            .entries()
            .expect("reading the entries")
            .iter()
            .any(|e| e.list == List::Allow && e.prefix.contains(source));
        let verdict = if allowed {
            Reason::Allowlisted
        } else {
            Reason::Passed
        };
        assert!(
            delta.get(verdict).packets >= DATAGRAMS + u64::from(PINGS),
            "{what}: expected {DATAGRAMS} datagrams and {PINGS} pings counted as {}, got \
             {delta:?}",
            verdict.name()
        );
        delta
    }

    /// Sends UDP, tries TCP and pings from `from`, and asserts that none of
    /// it reaches the server and that the program counted every frame as
    /// blocked. Returns the change in the counters.
    fn assert_blocked(&self, from: Host, family: Family) -> Counters {
        let what = format!("{from} → server over {family}, blocked");
        let source = from.addr(family);
        let server = Host::Server.addr(family);
        let before = self.counters();
        let received = self.sink.received_from(source);
        let accepted = self.echo.accepted_from(source);

        let sent = traffic::send_udp(
            &self.lab,
            from,
            SocketAddr::new(server, self.sink.port()),
            DATAGRAMS,
            GAP,
        )
        .expect("sending UDP");
        assert_eq!(
            sent, DATAGRAMS,
            "{what}: the sender's kernel refused datagrams"
        );

        let tcp = traffic::tcp_exchange(
            &self.lab,
            from,
            SocketAddr::new(server, self.echo.port()),
            BLOCKED_CONNECT,
        );
        assert!(tcp.is_err(), "{what}: the TCP exchange succeeded");

        let replies = traffic::ping(&self.lab, from, server, PINGS).expect("running ping");
        assert_eq!(replies, 0, "{what}: ping got replies");

        // Every datagram, every echo request and at least one SYN.
        let expected = DATAGRAMS + u64::from(PINGS) + 1;
        traffic::wait_until(ARRIVAL, || {
            self.counters().since(&before).get(Reason::Blocked).packets >= expected
        });
        let delta = self.counters().since(&before);
        assert!(
            delta.get(Reason::Blocked).packets >= expected,
            "{what}: expected at least {expected} frames counted as blocked, got {delta:?}\n{}",
            self.state()
        );
        assert_eq!(
            self.sink.received_from(source),
            received,
            "{what}: blocked datagrams reached the server's socket"
        );
        assert_eq!(
            self.echo.accepted_from(source),
            accepted,
            "{what}: a blocked connection was accepted"
        );
        delta
    }
}

/// Both clients get through; blocking the attacker's subnet stops the
/// attacker only, at the server's XDP hook; unblocking lets it through
/// again.
fn block_and_unblock(mode: AttachMode, family: Family) {
    let mut rig = Rig::new(mode);
    rig.assert_reaches(Host::Listener, family);
    rig.assert_reaches(Host::Attacker, family);

    let prefix = Host::Attacker.subnet(family);
    assert!(rig.filter.block(prefix).expect("blocking"));
    let blocked = rig.assert_blocked(Host::Attacker, family);
    rig.assert_reaches(Host::Listener, family);
    assert!(
        rig.hits(List::Block, prefix) >= blocked.get(Reason::Blocked).packets,
        "the block entry's hits do not account for the blocked frames"
    );

    assert!(rig.filter.unblock(prefix).expect("unblocking"));
    rig.assert_reaches(Host::Attacker, family);
    rig.assert_reaches(Host::Listener, family);
}

#[test]
fn native_ipv4_block_and_unblock() {
    block_and_unblock(AttachMode::Native, Family::V4);
}

#[test]
fn native_ipv6_block_and_unblock() {
    block_and_unblock(AttachMode::Native, Family::V6);
}

#[test]
fn skb_ipv4_block_and_unblock() {
    block_and_unblock(AttachMode::Skb, Family::V4);
}

#[test]
fn skb_ipv6_block_and_unblock() {
    block_and_unblock(AttachMode::Skb, Family::V6);
}

/// An allowlisted address inside a blocked subnet passes; taking it off
/// the allowlist blocks it again.
#[test]
fn allowlisted_address_inside_blocked_subnet_passes() {
    let mut rig = Rig::new(AttachMode::Native);
    for family in Family::ALL {
        let subnet = Host::Attacker.subnet(family);
        let host = Host::Attacker.host_prefix(family);
        assert!(rig.filter.block(subnet).expect("blocking"));
        assert!(rig.filter.allow(host).expect("allowing"));

        let delta = rig.assert_reaches(Host::Attacker, family);
        assert_eq!(delta.get(Reason::Blocked).packets, 0, "{family}: {delta:?}");
        assert!(rig.hits(List::Allow, host) >= DATAGRAMS + u64::from(PINGS));
        assert_eq!(rig.hits(List::Block, subnet), 0, "{family}");

        assert!(rig.filter.unallow(host).expect("unallowing"));
        rig.assert_blocked(Host::Attacker, family);
        assert!(rig.filter.unblock(subnet).expect("unblocking"));
    }
}

/// With the attacker blocked and every neighbour cache flushed, the
/// listener still resolves the server (ARP, NDP) and gets through.
fn neighbour_discovery_while_blocked(mode: AttachMode) {
    let mut rig = Rig::new(mode);
    for family in Family::ALL {
        assert!(
            rig.filter
                .block(Host::Attacker.subnet(family))
                .expect("blocking")
        );
    }
    rig.lab.flush_neighbours().expect("flushing neighbours");
    let before = rig.counters();
    for family in Family::ALL {
        rig.assert_reaches(Host::Listener, family);
    }
    let delta = rig.counters().since(&before);
    assert!(
        delta.get(Reason::NotIp).packets >= 1,
        "no ARP frame went through the program: {delta:?}"
    );
    let neighbours = rig
        .lab
        .ip(Host::Server, &format!("neigh show dev {IFACE}"))
        .expect("listing the server's neighbours");
    for family in Family::ALL {
        let listener = Host::Listener.addr(family).to_string();
        assert!(
            neighbours.lines().any(
                |l| l.starts_with(&format!("{listener} ")) && l.contains(&Host::Listener.mac())
            ),
            "the server has not learned {listener}:\n{neighbours}"
        );
    }
}

#[test]
fn native_neighbour_discovery_while_attacker_blocked() {
    neighbour_discovery_while_blocked(AttachMode::Native);
}

#[test]
fn skb_neighbour_discovery_while_attacker_blocked() {
    neighbour_discovery_while_blocked(AttachMode::Skb);
}

/// The harness itself: the namespaces exist with their settings while the
/// lab lives, and are gone once it is closed.
#[test]
fn lab_builds_and_cleans_up() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 4, "{namespaces:?}");
    let sysctl = |ns: &str, key: &str| {
        let output = Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(Path::new("/proc/sys").join(key))
            .output()
            .expect("running ip netns exec");
        assert!(output.status.success(), "{ns}: reading {key}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    for host in Host::ALL {
        let ns = lab.ns(host);
        assert_eq!(sysctl(&ns, "net/ipv6/conf/eth0/accept_dad"), "0", "{host}");
        // The closure runs in the host's namespace: its eth0 is there.
        let seen = lab
            .run_in(host, || {
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
            })
            .expect("entering the namespace")
            .expect("reading the sysctl");
        assert_eq!(seen.trim(), "0", "{host}");
        let addrs = lab
            .ip(host, "-br addr show dev eth0")
            .expect("listing addresses");
        for family in Family::ALL {
            assert!(
                addrs.contains(&host.addr(family).to_string()),
                "{host}: {addrs}"
            );
        }
    }
    assert_eq!(
        sysctl(&lab.switch_ns(), "net/ipv6/conf/br0/disable_ipv6"),
        "1"
    );

    lab.close().expect("closing the lab");
    for ns in namespaces {
        assert!(
            !Path::new("/var/run/netns").join(&ns).exists(),
            "{ns} is still there"
        );
    }
}
