//! The SYN-ACK the shield builds, read back from `BPF_PROG_TEST_RUN` in a
//! namespace with a listener, for IPv4 and IPv6, tagged and untagged:
//! `XDP_TX`, addresses and ports swapped, the tag kept, the acknowledgement
//! of the SYN, checksums right, and the options the SYN asked for: all of
//! them for a SYN from Linux (in a frame of the SYN's own size), the MSS
//! alone for a SYN without options (as floods send). Then the client's
//! ACK: with the cookie the kernel's own check takes it, with another it
//! is out of state. The first SYN to the port is answered through the
//! listener and the rest, within the second, through the raw cookie
//! helpers: the kernel takes both paths' cookies. Last, the bench's
//! cookie floor (the tools' `cookie_floor`) answers a flood's SYN as the
//! shield does, with a cookie the kernel takes, and passes anything else.

use std::net::{IpAddr, TcpListener};

use etherparse::{NetSlice, SlicedPacket, TcpOptionElement as O, TcpSlice, TransportSlice};
use spacefilter::{Filter, LoadOptions, Reason};
use spacefilter_tests::{
    netns::{Family, Host, Lab},
    packets::{Packet, TPID_8021Q},
    require_root, shield,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// The window scale the shield is told the host picks.
const WSCALE: u32 = 7;

/// The options a SYN carries, as the systems that send them order them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// MSS, SACK-permitted, timestamp, NOP, window scale.
    Linux,
    /// MSS, NOP, window scale, NOP, NOP, timestamp, SACK-permitted, end.
    MacOs,
    /// No options, as floods send.
    Bare,
}

/// A SYN from `client` to `server`'s `port` with the options of `layout`.
fn syn(client: IpAddr, server: IpAddr, port: u16, layout: Layout, vlan: bool) -> (Vec<u8>, u32) {
    let seq = 0x1111_2222 + layout as u32;
    let mut h = etherparse::TcpHeader::new(40_001 + layout as u16, port, seq, 64240);
    h.syn = true;
    match layout {
        Layout::Linux => h.set_options(&[
            O::MaximumSegmentSize(1460),
            O::SelectiveAcknowledgementPermitted,
            O::Timestamp(0x0102_0304, 0),
            O::Noop,
            O::WindowScale(7),
        ]),
        Layout::MacOs => h.set_options(&[
            O::MaximumSegmentSize(1460),
            O::Noop,
            O::WindowScale(7),
            O::Noop,
            O::Noop,
            O::Timestamp(0x0102_0304, 0),
            O::SelectiveAcknowledgementPermitted,
        ]),
        Layout::Bare => Ok(()),
    }
    .expect("options fit");
    let packet = Packet::ip(client, server);
    let packet = if vlan {
        packet.tag(TPID_8021Q, 7)
    } else {
        packet
    };
    (packet.tcp_header(h).build().into_bytes(), seq)
}

#[test]
fn synack_fixtures() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    shield::host_for_cookies(&lab).expect("setting the server up for cookies");
    let listener = lab
        .run_in(Host::Server, || TcpListener::bind("[::]:0"))
        .unwrap()
        .expect("a listener in the server's namespace, both families");
    let port = listener.local_addr().unwrap().port();
    let mut filter = Filter::load(LoadOptions {
        capacity: 1024,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter");
    shield::shield_ports(&mut filter, &[(port, port)], WSCALE).expect("setting the shield");
    for family in [Family::V4, Family::V6] {
        let client = Host::Listener.addr(family);
        let server = Host::Server.addr(family);
        for vlan in [false, true] {
            for layout in [Layout::Linux, Layout::MacOs, Layout::Bare] {
                let full = layout != Layout::Bare;
                let case = format!("{family:?}, tagged {vlan}, {layout:?}");
                let (frame, seq) = syn(client, server, port, layout, vlan);
                let mut out = vec![0u8; 256];
                let (action, len) = lab
                    .run_in(Host::Server, || filter.test_run_out(&frame, &mut out))
                    .expect("entering the server")
                    .expect("test run");
                assert_eq!(action, XDP_TX, "{case}: answered");
                let answer = &out[..len];
                assert_eq!(
                    answer[12..14] == TPID_8021Q.to_be_bytes(),
                    vlan,
                    "{case}: the tag kept"
                );
                if layout == Layout::Linux {
                    assert_eq!(len, frame.len(), "{case}: in a frame of the SYN's size");
                }
                let (tcp, options) =
                    check_synack(&frame, answer, (client, server, port), (layout, seq), &case);
                let mss = if family == Family::V4 { 1460 } else { 1440 };
                check_options(&options, full, mss);
                check_cookie_ack(&lab, &mut filter, (client, server, port), &tcp, seq, vlan);
            }
        }
    }
    check_cookie_floor(&lab, &mut filter, port);
    drop(listener);
}

/// The tools' `cookie_floor`, the bench's floor under the shield's cost:
/// a SYN without options, as floods send, in a frame of its own size or
/// padded to the Ethernet minimum, gets a SYN-ACK built right, with a
/// cookie the kernel's check takes (through the shield's check of the
/// ACK: the listener has sent cookies by now); a SYN with options, an ACK
/// and a tagged SYN pass.
fn check_cookie_floor(lab: &Lab, filter: &mut Filter, port: u16) {
    let mut tools = aya::Ebpf::load(spacefilter::bpf::TOOLS).expect("loading the tools");
    let floor: &mut aya::programs::Xdp = tools
        .program_mut("cookie_floor")
        .expect("the tools' cookie_floor")
        .try_into()
        .expect("an XDP program");
    floor.load().expect("loading cookie_floor");
    let (client, server) = (
        Host::Listener.addr(Family::V4),
        Host::Server.addr(Family::V4),
    );
    let floor: &aya::programs::Xdp = floor;
    let run = |frame: &[u8], out: &mut [u8]| {
        use aya::programs::TestRun as _;
        let result = floor
            .test_run(aya::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(out),
                ..Default::default()
            })
            .expect("test run");
        (result.return_value, result.data_size_out as usize)
    };
    let (bare, seq) = syn(client, server, port, Layout::Bare, false);
    let mut padded = bare.clone();
    padded.resize(60, 0);
    for (case, frame) in [("bare SYN", &bare), ("bare SYN, padded", &padded)] {
        let mut out = vec![0u8; 256];
        let (action, len) = run(frame, &mut out);
        assert_eq!(action, XDP_TX, "{case}: answered");
        assert_eq!(len, frame.len().max(58), "{case}: the answer's frame");
        let (tcp, options) = check_synack(
            frame,
            &out[..len],
            (client, server, port),
            (Layout::Bare, seq),
            case,
        );
        // Without an MSS option, the kernel's cookie carries its least.
        check_options(&options, false, 536);
        check_cookie_ack(lab, filter, (client, server, port), &tcp, seq, false);
    }
    for (case, frame) in [
        (
            "SYN from Linux",
            syn(client, server, port, Layout::Linux, false).0,
        ),
        (
            "tagged SYN",
            syn(client, server, port, Layout::Bare, true).0,
        ),
    ] {
        let mut out = vec![0u8; 256];
        let (action, len) = run(&frame, &mut out);
        assert_eq!(
            (action, &out[..len]),
            (XDP_PASS, &frame[..]),
            "{case}: passed as it came"
        );
    }
}

/// The SYN-ACK `answer` to `frame`, a SYN of `layout` numbered `seq` from
/// `client` to `server`'s `port`: the MAC addresses, IP addresses and ports
/// swapped, the checksums right, SYN and ACK set, the SYN acknowledged.
/// Returns its TCP header and its options.
fn check_synack<'a>(
    frame: &[u8],
    answer: &'a [u8],
    (client, server, port): (IpAddr, IpAddr, u16),
    (layout, seq): (Layout, u32),
    case: &str,
) -> (TcpSlice<'a>, Vec<O>) {
    assert_eq!(answer[..6], frame[6..12], "{case}: to the sender's MAC");
    assert_eq!(answer[6..12], frame[..6], "{case}: from ours");
    let SlicedPacket { net, transport, .. } = SlicedPacket::from_ethernet(answer).expect("a frame");
    let Some(TransportSlice::Tcp(tcp)) = transport else {
        panic!("{case}: a TCP answer: {transport:?}");
    };
    check_addresses(net.as_ref(), &tcp, (server, client), case);
    assert!(tcp.syn() && tcp.ack() && !tcp.rst() && !tcp.fin(), "{case}");
    assert_eq!(tcp.destination_port(), 40_001 + layout as u16, "{case}");
    assert_eq!(tcp.source_port(), port, "{case}");
    assert_eq!(tcp.acknowledgment_number(), seq + 1, "{case}");
    let options = tcp
        .options_iterator()
        .map(|o| o.expect("an option"))
        .collect();
    (tcp, options)
}

/// The answer's addresses (swapped) and its checksums.
fn check_addresses(
    net: Option<&NetSlice<'_>>,
    tcp: &TcpSlice<'_>,
    (from, to): (IpAddr, IpAddr),
    case: &str,
) {
    match net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(IpAddr::from(h.source_addr()), from, "{case}");
            assert_eq!(IpAddr::from(h.destination_addr()), to, "{case}");
            let header = h.to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "{case}: the IP checksum"
            );
            assert_eq!(
                tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
                tcp.checksum(),
                "{case}: the TCP checksum"
            );
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            assert_eq!(IpAddr::from(h.source_addr()), from, "{case}");
            assert_eq!(IpAddr::from(h.destination_addr()), to, "{case}");
            assert_eq!(h.hop_limit(), 64, "{case}");
            assert_eq!(
                usize::from(h.payload_length()),
                tcp.slice().len(),
                "{case}: the payload length"
            );
            assert_eq!(
                tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap(),
                tcp.checksum(),
                "{case}: the TCP checksum"
            );
        }
        other => panic!("{case}: an IP answer: {other:?}"),
    }
}

/// The client's ACK of the SYN-ACK `answer`: with its cookie it passes,
/// and the kernel's check takes it; with another (its hash bits changed)
/// it is out of state. The cookie's low bits only pick an MSS out of a
/// table of four, so a number one off can still pass: the changed bits
/// are the hash's.
fn check_cookie_ack(
    lab: &Lab,
    filter: &mut Filter,
    (client, server, port): (IpAddr, IpAddr, u16),
    answer: &TcpSlice<'_>,
    seq: u32,
    vlan: bool,
) {
    let cookie = answer.sequence_number();
    let sport = answer.destination_port();
    for (ack_number, expected) in [
        (
            (cookie ^ 0x0055_5500).wrapping_add(1),
            (XDP_DROP, Reason::OutOfState),
        ),
        (cookie.wrapping_add(1), (XDP_PASS, Reason::CookieVerified)),
    ] {
        let mut h = etherparse::TcpHeader::new(sport, port, seq.wrapping_add(1), 64240);
        h.ack = true;
        h.acknowledgment_number = ack_number;
        let packet = Packet::ip(client, server);
        let packet = if vlan {
            packet.tag(TPID_8021Q, 7)
        } else {
            packet
        };
        let ack = packet.tcp_header(h).build().into_bytes();
        let verdict = lab
            .run_in(Host::Server, || shield::verdict_of(filter, &ack))
            .expect("entering the server");
        assert_eq!(
            verdict, expected,
            "{client}: an ACK of {ack_number:#x} (cookie {cookie:#x})"
        );
    }
}

/// The options of the SYN-ACK: the MSS; with the client's timestamp, SACK,
/// the window scale and the timestamp carrying them as the kernel encodes
/// them.
fn check_options(options: &[O], long: bool, mss: u16) {
    assert!(options.contains(&O::MaximumSegmentSize(mss)), "{options:?}");
    if !long {
        assert_eq!(options.len(), 1, "the MSS alone: {options:?}");
        return;
    }
    assert!(options.contains(&O::SelectiveAcknowledgementPermitted));
    assert!(options.contains(&O::WindowScale(7)));
    let (tsval, tsecr) = options
        .iter()
        .find_map(|o| match o {
            O::Timestamp(val, ecr) => Some((*val, *ecr)),
            _ => None,
        })
        .expect("a timestamp");
    assert_eq!(tsecr, 0x0102_0304, "the client's timestamp echoed");
    assert_eq!(
        tsval & 0x3f,
        7 | 0x10,
        "the client's window scale and SACK, as the kernel encodes them"
    );
}
