//! The shield on live traffic: SYN cookies answered at the XDP hook, and
//! the connections the kernel opens from them.
//!
//! The program is loaded and attached to the server as in `netns.rs`; the
//! shield's map and the server namespace's sysctls are set by hand here
//! (the daemon's own handling of them is tested in `daemon.rs`). Real
//! clients in the listener's namespace connect, send and read answers; the
//! counters say which path each handshake took.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use aya::Ebpf;
use spacefilter::{
    AttachMode, Counters, Filter, LoadOptions, Reason,
    api::{ShieldView, StatsView},
    bpf::Shielded,
};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch},
    netns::{Family, Host, Lab},
    packets::{Ext, Packet, TPID_8021Q},
    require_root, shield,
    traffic::{TcpEcho, tcp_exchange, wait_until},
};

const CAPACITY: u32 = 1024;
/// Connections made through the shield in a row.
const CONNECTIONS: u64 = 20;
/// A port nothing listens on in the test's own namespace.
const PORT: u16 = 9;
/// What a bulk transfer moves.
const BYTES: usize = 8 << 20;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TIMEOUT: Duration = Duration::from_secs(3);

/// A lab with spacefilter attached to the server and a TCP echo service
/// there. Fields drop in order: the service, the program, then the lab.
struct Rig {
    echo: TcpEcho,
    filter: Filter,
    _tools: Ebpf,
    lab: Lab,
}

impl Rig {
    fn new() -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let mut filter = Filter::load(LoadOptions {
            capacity: CAPACITY,
            ..LoadOptions::default()
        })
        .expect("loading spacefilter");
        lab.attach(&mut filter, AttachMode::Native)
            .expect("attaching in native mode");
        let echo = TcpEcho::start(&lab, Host::Server).expect("starting the TCP echo service");
        let tools = accept_xdp_tx(&lab);
        shield::host_for_cookies(&lab).expect("setting the server up for cookies");
        Self {
            echo,
            filter,
            _tools: tools,
            lab,
        }
    }

    fn shield(&mut self, ports: &[(u16, u16)], wscale: u32) {
        shield::shield_ports(&mut self.filter, ports, wscale).expect("setting the shield");
    }

    fn counters(&self) -> Counters {
        self.filter.counters().expect("reading the counters")
    }

    fn server(port: u16) -> SocketAddr {
        SocketAddr::new(Host::Server.addr(Family::V4), port)
    }
}

fn accept_xdp_tx(lab: &Lab) -> Ebpf {
    shield::accept_xdp_tx(lab, "floor_pass").expect("an XDP program on the switch's port")
}

/// A sysctl of the server's namespace.
fn sysctl(lab: &Lab, name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    lab.run_in(Host::Server, || std::fs::read_to_string(&path))
        .expect("entering the server")
        .unwrap_or_else(|err| panic!("reading {name}: {err}"))
        .trim()
        .to_owned()
}

fn set_sysctl(lab: &Lab, name: &str, value: &str) {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    lab.run_in(Host::Server, || std::fs::write(&path, value))
        .expect("entering the server")
        .unwrap_or_else(|err| panic!("setting {name}: {err}"));
}

const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";

fn kernel_wscale(lab: &Lab) -> u32 {
    shield::cookie_wscale(lab).expect("the server's TCP settings")
}

#[test]
fn handshakes_through_cookies() {
    let mut rig = Rig::new();
    let port = rig.echo.port();
    // Positive control: without the shield, the kernel answers.
    tcp_exchange(&rig.lab, Host::Listener, Rig::server(port), TIMEOUT)
        .expect("an exchange without the shield");
    assert_eq!(rig.counters().get(Reason::SynCookie).packets, 0);

    let wscale = kernel_wscale(&rig.lab);
    rig.shield(&[(port, port)], wscale);
    for family in [Family::V4, Family::V6] {
        let server = SocketAddr::new(Host::Server.addr(family), port);
        for i in 0..CONNECTIONS {
            tcp_exchange(&rig.lab, Host::Listener, server, TIMEOUT).unwrap_or_else(|err| {
                panic!(
                    "{family:?}: exchange {i} through the shield: {err:#}; counters {:?}",
                    rig.counters().by_reason
                )
            });
        }
    }
    let counters = rig.counters();
    assert_eq!(
        counters.get(Reason::SynCookie).packets,
        2 * CONNECTIONS,
        "every SYN answered with a cookie: {counters:?}"
    );
    assert_eq!(
        counters.get(Reason::CookieVerified).packets,
        2 * CONNECTIONS,
        "every handshake's ACK verified: {counters:?}"
    );
    // The first cookie's ACK from each address verified it (the rest
    // renewed it).
    assert_eq!(counters.verified.get("cookie"), Some(&2), "{counters:?}");
    for family in [Family::V4, Family::V6] {
        assert!(
            rig.filter
                .verifier_ref()
                .lookup(
                    Host::Listener.addr(family),
                    spacefilter::bpf::monotonic_ns()
                )
                .is_some(),
            "the client is verified ({family:?})"
        );
    }
}

/// A client that opens a connection from a port it used a moment before,
/// to a server that closed the last one first: the server holds that
/// 4-tuple in `TIME_WAIT`, and the kernel lets the new SYN take it over.
/// The shield must leave such a SYN to that socket: answered with a
/// cookie, the client's ACK reaches the old socket, and the connection
/// the client thinks open never is (a NAT gateway's users meet this).
#[test]
fn a_port_used_again_takes_over_the_servers_time_wait() {
    let mut rig = Rig::new();
    let port = rig.echo.port();
    let wscale = kernel_wscale(&rig.lab);
    rig.shield(&[(port, port)], wscale);
    for family in [Family::V4, Family::V6] {
        let server = SocketAddr::new(Host::Server.addr(family), port);
        // The first connection, through a cookie: the server closes first.
        let local = exchange_from(&rig.lab, family, 0, server)
            .unwrap_or_else(|err| panic!("{family:?}: the first exchange: {err:#}"));
        await_sockets(
            &rig.lab,
            Host::Listener,
            &format!("sport = :{local}"),
            false,
        );
        // The positive control of the case: the server holds the 4-tuple.
        await_sockets(
            &rig.lab,
            Host::Server,
            &format!("state time-wait dport = :{local}"),
            true,
        );
        // Another connection from another port, so that the shield knows
        // the port's listener and answers without a socket lookup where it
        // may (the positive control of the path).
        exchange_from(&rig.lab, family, 0, server)
            .unwrap_or_else(|err| panic!("{family:?}: an exchange from another port: {err:#}"));
        exchange_from(&rig.lab, family, local, server).unwrap_or_else(|err| {
            panic!(
                "{family:?}: an exchange from port {local} again: {err:#}; counters {:?}",
                rig.counters().by_reason
            )
        });
    }
}

/// Connects from the listener's address of `family` and `local` port (0:
/// the kernel picks one; else bound with `SO_REUSEADDR`, as a client that
/// keeps its port does), sends a line, reads the echo and the server's
/// close, then closes; returns the local port. Within [`TIMEOUT`] each.
fn exchange_from(lab: &Lab, family: Family, local: u16, to: SocketAddr) -> anyhow::Result<u16> {
    use std::os::fd::OwnedFd;

    use nix::sys::{
        socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
            sockopt,
        },
        time::TimeVal,
    };
    let fd: OwnedFd = lab.run_in(Host::Listener, || {
        let domain = match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        let fd = socket(domain, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        // `connect` gives up after the send timeout.
        let timeout = TimeVal::new(TIMEOUT.as_secs().cast_signed(), 0);
        setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
        let from = SocketAddr::new(Host::Listener.addr(family), local);
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(from),
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(to),
        )?;
        Ok::<_, nix::Error>(fd)
    })??;
    let mut stream = TcpStream::from(fd);
    let local = stream.local_addr()?.port();
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"again\n")?;
    let mut echo = [0u8; 6];
    stream.read_exact(&mut echo)?;
    anyhow::ensure!(&echo == b"again\n", "echoed {echo:?}");
    // The server closes first: wait for its FIN, so that this side ends
    // closed, not in TIME_WAIT.
    let mut rest = [0u8; 1];
    anyhow::ensure!(stream.read(&mut rest)? == 0, "more than the echo came");
    Ok(local)
}

/// Waits until `ss` in `host`'s namespace lists TCP sockets matching
/// `filter` (`present`) or none.
fn await_sockets(lab: &Lab, host: Host, filter: &str, present: bool) {
    let args: Vec<&str> = ["-Htan"]
        .into_iter()
        .chain(filter.split_whitespace())
        .collect();
    let listed = || {
        let out = lab
            .run_in(host, || {
                std::process::Command::new("ss").args(&args).output()
            })
            .expect("entering the namespace")
            .expect("running ss");
        assert!(out.status.success(), "ss {args:?}: {out:?}");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(
        wait_until(TIMEOUT, || listed() == present),
        "{host}: sockets matching {filter:?} {}",
        if present {
            "never appeared"
        } else {
            "never went"
        }
    );
}

/// A bulk transfer through a connection opened from a cookie: window
/// scaling and SACK come out as the kernel decodes them, or the transfer
/// stalls or corrupts.
#[test]
fn bulk_transfer_through_a_cookie() {
    let mut rig = Rig::new();
    let listener = rig
        .lab
        .run_in(Host::Server, || TcpListener::bind("0.0.0.0:0"))
        .unwrap()
        .expect("binding the bulk listener");
    let port = listener.local_addr().unwrap().port();
    let wscale = kernel_wscale(&rig.lab);
    rig.shield(&[(port, port)], wscale);
    let sender = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepting");
        let info = tcp_info(&stream);
        let chunk: Vec<u8> = (0..65_536usize).map(pattern).collect();
        let mut sent = 0;
        while sent < BYTES {
            stream.write_all(&chunk).expect("sending");
            sent += chunk.len();
        }
        info
    });
    let mut stream = rig
        .lab
        .run_in(Host::Listener, || {
            TcpStream::connect_timeout(&Rig::server(port), TIMEOUT)
        })
        .unwrap()
        .expect("connecting through the shield");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut received = vec![0u8; BYTES];
    stream.read_exact(&mut received).expect("receiving it all");
    let server = sender.join().unwrap();
    let client = tcp_info(&stream);
    // What each side believes of the other must agree: the server scales
    // its window by the factor the SYN-ACK told the client.
    // TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE (linux/tcp.h).
    let all = 0x1 | 0x2 | 0x4;
    assert_eq!(
        server.options & all,
        all,
        "the server's connection: {server:?}"
    );
    assert_eq!(
        client.options & all,
        all,
        "the client's connection: {client:?}"
    );
    assert_eq!(
        (server.rcv_wscale, server.snd_wscale),
        (client.snd_wscale, client.rcv_wscale),
        "the window scales agree (server {server:?}, client {client:?})"
    );
    assert_eq!(
        u32::from(server.rcv_wscale),
        wscale,
        "the kernel picked the scale offered"
    );
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i % 65_536)),
        "the data came through intact"
    );
    let counters = rig.counters();
    assert_eq!(counters.get(Reason::SynCookie).packets, 1, "{counters:?}");
    assert_eq!(
        counters.get(Reason::CookieVerified).packets,
        1,
        "{counters:?}"
    );
}

/// The byte at `i` of the bulk transfer's repeating pattern.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).expect("below 251")
}

/// What `TCP_INFO` says of a connection's options.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    options: u8,
    snd_wscale: u8,
    rcv_wscale: u8,
}

fn tcp_info(stream: &TcpStream) -> Negotiated {
    use std::os::fd::AsRawFd as _;
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most its
    // size, which it is told.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).expect("a small struct");
    // SAFETY: a valid socket and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    Negotiated {
        options: info.tcpi_options,
        snd_wscale: info.tcpi_snd_rcv_wscale & 0x0f,
        rcv_wscale: info.tcpi_snd_rcv_wscale >> 4,
    }
}

/// Sets the shield on `ports` in `filter`'s maps (as the daemon would,
/// with the default window scale of 6.1's sysctls).
fn shield_on(filter: &mut Filter, ports: &[(u16, u16)]) {
    shield::shield_ports(filter, ports, 7).expect("setting the shield");
}

/// Sets a segment's flags.
type SetFlags = fn(&mut etherparse::TcpHeader);

/// A TCP segment from a client to the server's `port` with these flags.
fn segment(
    port: u16,
    set: impl FnOnce(&mut etherparse::TcpHeader),
    (family, vlan): (Family, bool),
) -> Vec<u8> {
    let mut header = etherparse::TcpHeader::new(40_000, port, 0x1234_5678, 64240);
    set(&mut header);
    let packet = Packet::ip(Host::Listener.addr(family), Host::Server.addr(family));
    let packet = if vlan {
        packet.tag(TPID_8021Q, 7)
    } else {
        packet
    };
    packet.tcp_header(header).build().into_bytes()
}

/// Segments that belong to no connection are dropped on a shielded port,
/// tagged or not, and pass where the shield is off; a SYN with no listener
/// to answer for is left to the kernel. (`BPF_PROG_TEST_RUN` runs in this
/// process's namespace, where nothing listens on the ports used.)
#[test]
fn out_of_state_segments_are_dropped() {
    require_root();
    let mut filter = Filter::load(LoadOptions {
        capacity: CAPACITY,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter");
    let ack = |family| {
        segment(
            PORT,
            |h| {
                h.ack = true;
                h.acknowledgment_number = 0x0bad_c0de;
            },
            (family, false),
        )
    };
    let run = shield::verdict_of;
    // Positive control: the shield off, a stray ACK passes.
    for family in [Family::V4, Family::V6] {
        assert_eq!(run(&mut filter, &ack(family)), (XDP_PASS, Reason::Passed));
    }

    shield_on(&mut filter, &[(PORT, PORT)]);
    let cases: [(&str, SetFlags, (u32, Reason)); 5] = [
        (
            "a stray ACK",
            |h| h.ack = true,
            (XDP_DROP, Reason::OutOfState),
        ),
        (
            "a stray RST",
            |h| h.rst = true,
            (XDP_DROP, Reason::OutOfState),
        ),
        (
            "a stray FIN",
            |h| {
                h.fin = true;
                h.ack = true;
            },
            (XDP_DROP, Reason::OutOfState),
        ),
        (
            "a SYN-ACK",
            |h| {
                h.syn = true;
                h.ack = true;
            },
            (XDP_DROP, Reason::OutOfState),
        ),
        (
            "a SYN nobody listens for (left to the kernel)",
            |h| h.syn = true,
            (XDP_PASS, Reason::Passed),
        ),
    ];
    for family in [Family::V4, Family::V6] {
        for vlan in [false, true] {
            for (what, set, expected) in cases {
                let frame = segment(PORT, set, (family, vlan));
                assert_eq!(
                    run(&mut filter, &frame),
                    expected,
                    "{what} ({family:?}, tagged: {vlan})"
                );
            }
        }
    }
    // Other ports are not the shield's.
    for family in [Family::V4, Family::V6] {
        let other = segment(
            PORT + 1,
            |h| {
                h.ack = true;
            },
            (family, false),
        );
        assert_eq!(run(&mut filter, &other), (XDP_PASS, Reason::Passed));
    }
}

/// TCP in a layout the shield's checks do not read (IPv4 options, IPv6
/// extension headers) is no way around them: from an unverified source it
/// shares the budget for unverified sources, and past it is dropped as
/// `shielded`; from a verified source it passes.
#[test]
fn odd_layouts_share_the_budget_for_unverified_sources() {
    require_root();
    let mut filter = Filter::load(LoadOptions {
        capacity: CAPACITY,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter");
    let ack = |family: Family, odd: bool| {
        let mut header = etherparse::TcpHeader::new(40_000, PORT, 0x1234_5678, 64240);
        header.ack = true;
        header.acknowledgment_number = 0x0bad_c0de;
        let packet = Packet::ip(Host::Listener.addr(family), Host::Server.addr(family));
        let packet = match (odd, family) {
            (false, _) => packet,
            // Record route, empty, and end of options.
            (true, Family::V4) => packet.ipv4_options(&[7, 3, 4, 0]),
            (true, Family::V6) => packet.ext(Ext::DEST_OPTS),
        };
        packet.tcp_header(header).build().into_bytes()
    };
    // A budget of 40 a second: a burst of 10.
    shield::shield_with(
        &mut filter,
        Shielded {
            tcp: &[(PORT, PORT)],
            udp: &[],
        },
        7,
        40,
    )
    .expect("setting the shield");
    for family in [Family::V4, Family::V6] {
        // The positive control: the plain layout is checked and dropped.
        assert_eq!(
            shield::verdict_of(&mut filter, &ack(family, false)),
            (XDP_DROP, Reason::OutOfState),
            "{family:?}"
        );
    }
    let before = filter.counters().expect("counters");
    let started = std::time::Instant::now();
    for family in [Family::V4, Family::V6] {
        filter.test_run(&ack(family, true), 15).expect("test run");
    }
    // The budget refills at 40 a second while the runs go on: on a busy
    // machine, where they take tens of milliseconds, a token or two more.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a few tokens"
    )]
    let refilled = (started.elapsed().as_secs_f64() * 40.0).ceil() as u64;
    let delta = filter.counters().expect("counters").since(&before);
    let passed = delta.get(Reason::Passed).packets;
    assert!(
        (10..=11 + refilled).contains(&passed),
        "{refilled} tokens refilled meanwhile: {delta:?}"
    );
    assert_eq!(
        delta.get(Reason::Shielded).packets,
        30 - passed,
        "{delta:?}"
    );
    // Verified, the client's segments pass whatever their layout.
    let now = spacefilter::bpf::monotonic_ns();
    for family in [Family::V4, Family::V6] {
        filter
            .verifier()
            .admit(Host::Listener.addr(family), now + 3_600_000_000_000, now)
            .expect("admitting the client");
        assert_eq!(
            shield::verdict_of(&mut filter, &ack(family, true)),
            (XDP_PASS, Reason::Passed),
            "{family:?}"
        );
    }
}

/// The daemon's shield as an admin uses it: `shield on` sets the host up
/// and real clients connect through cookies; bad input changes nothing;
/// the shield and the host settings' old values survive a restart and a
/// `kill -9`, and `shield off` and a clean stop put the host back.
#[test]
fn daemon_shield_end_to_end() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let _tools = accept_xdp_tx(&lab);
    let echo = TcpEcho::start(&lab, Host::Server).expect("starting the TCP echo service");
    let port = echo.port();
    // The host as a distribution ships it.
    set_sysctl(&lab, SYNCOOKIES, "1");
    set_sysctl(&lab, TIMESTAMPS, "1");
    let dir = Scratch::new("shield").expect("a scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let start = || {
        DaemonProcess::start(
            &lab.ns(Host::Server),
            &paths,
            &["--capacity", "1024", "--metrics", "127.0.0.1:9978"],
        )
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"))
    };
    let mut daemon = start();
    let show = |daemon: &DaemonProcess| -> ShieldView {
        let out = daemon.cli(&["shield", "show", "--json"]);
        serde_json::from_str(out.ok("shield show")).expect("shield show --json")
    };
    let exchanges = |what: &str| {
        for i in 0..CONNECTIONS {
            tcp_exchange(&lab, Host::Listener, Rig::server(port), TIMEOUT)
                .unwrap_or_else(|err| panic!("{what}: exchange {i}: {err:#}"));
        }
    };
    let cookies = |daemon: &DaemonProcess| -> (u64, u64) {
        let out = daemon.cli(&["stats", "--json"]);
        let stats: StatsView = serde_json::from_str(out.ok("stats")).expect("stats --json");
        let packets = |reason: &str| stats.reasons.get(reason).map_or(0, |c| c.packets);
        (packets("syn_cookie"), packets("cookie_verified"))
    };

    assert!(!show(&daemon).enabled, "off by default");
    exchanges("before the shield");
    assert_eq!(cookies(&daemon), (0, 0), "no cookies before the shield");

    let spec = format!("tcp/{port}");
    daemon
        .cli(&["shield", "on", "--ports", &spec])
        .ok("shield on");
    assert_eq!(sysctl(&lab, SYNCOOKIES), "2");
    assert_eq!(sysctl(&lab, TIMESTAMPS), "2");
    let view = show(&daemon);
    assert!(view.enabled);
    assert_eq!(view.tcp_ports, [(port, port)]);
    assert_eq!(view.host_settings.len(), 2, "{view:?}");
    exchanges("through the shield");
    assert_eq!(cookies(&daemon), (CONNECTIONS, CONNECTIONS));
    assert_eq!(
        shielded_ports_metric(&lab),
        1,
        "the metrics show the shield"
    );
    let status = daemon.cli(&["status"]);
    assert!(
        status
            .ok("status")
            .contains(&format!("shield: on for tcp/{port}")),
        "status shows the shield: {}",
        status.stdout
    );

    // Bad input: a clear error, exit 2, nothing changed.
    refuses_bad_input(&daemon, port);
    assert_eq!(show(&daemon).tcp_ports, [(port, port)], "unchanged");

    // A clean stop puts the host back; a start takes the shield up again.
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    assert_eq!(sysctl(&lab, SYNCOOKIES), "1", "put back at stop");
    assert_eq!(sysctl(&lab, TIMESTAMPS), "1", "put back at stop");
    daemon = start();
    assert!(show(&daemon).enabled, "the shield survives a restart");
    assert_eq!(sysctl(&lab, SYNCOOKIES), "2");
    exchanges("after a restart");
    assert_eq!(cookies(&daemon), (CONNECTIONS, CONNECTIONS));

    // After a crash the host keeps the shield's settings, and the store
    // keeps their old values.
    daemon.kill().expect("kill -9");
    assert_eq!(sysctl(&lab, SYNCOOKIES), "2", "a crash puts nothing back");
    daemon = start();
    daemon.cli(&["shield", "off"]).ok("shield off");
    assert_eq!(
        sysctl(&lab, SYNCOOKIES),
        "1",
        "the values from before the crash"
    );
    assert_eq!(sysctl(&lab, TIMESTAMPS), "1");
    assert!(!show(&daemon).enabled);
    assert_eq!(shielded_ports_metric(&lab), 0, "the metrics show it off");
    exchanges("after the shield");
    assert_eq!(cookies(&daemon), (0, 0), "no cookies once off");
    daemon.terminate(STOP_TIMEOUT).expect("stopping");
    drop(echo);
}

/// Bad input to `shield on`: exit 2 with a message naming what was wrong.
fn refuses_bad_input(daemon: &DaemonProcess, port: u16) {
    let tcp = format!("tcp/{port}");
    for bad in [
        &["shield", "on", "--ports", "sctp/53"][..],
        &["shield", "on", "--ports", "443"],
        &["shield", "on", "--ports", "tcp/0"],
        &["shield", "on", "--ports", "udp/9-1"],
        &["shield", "on", "--ports", &tcp, "--verified-idle", "0s"],
        &[
            "shield",
            "on",
            "--ports",
            &tcp,
            "--unverified-pps",
            "99999999",
        ],
    ] {
        let out = daemon.cli(bad);
        out.expect_code(2, &format!("{bad:?}"));
        assert!(
            out.stderr.contains("tcp")
                || out.stderr.contains("port")
                || out.stderr.contains("verified"),
            "{}",
            out.stderr
        );
    }
}

/// `spacefilter_shield_ports` from the daemon's metrics endpoint.
fn shielded_ports_metric(lab: &Lab) -> u64 {
    let text = spacefilter_tests::daemon::metrics_page(lab, 9978);
    text.lines()
        .find_map(|l| l.strip_prefix("spacefilter_shield_ports "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no spacefilter_shield_ports in {text}"))
}
