//! Floods from the in-kernel generator through a [`FloodLab`], counted
//! where they arrive: the server's interface counters, its sockets, and
//! spacefilter's own counters.
//!
//! The floods share one CPU ([`spacefilter_tests::flood::FLOOD_CPU`]), so
//! these tests run one at a time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use spacefilter::{AttachMode, Filter, LoadOptions, Reason};
use spacefilter_tests::{
    flood::{CpuTimes, FLOOD_CPU, Flood, FloodLab, Shape, spoofed_sources},
    netns::{Family, Host},
    require_root,
    traffic::{UdpSink, UdpStream, wait_until},
};

/// List capacity: these tests hold one entry.
const CAPACITY: u32 = 1024;
/// The discard port, with nothing listening on it in the lab.
const DISCARD: u16 = 9;
/// The legitimate flow, datagrams a second.
const LEGIT_RATE: u64 = 5_000;
/// How long counters and sockets are given to settle after a flood.
const SETTLE: Duration = Duration::from_secs(2);
/// Frames of the counted flood.
const FRAMES: u64 = 200_000;
/// The paced flood, frames a second.
const RATE: u64 = 100_000;
/// Spoofed sources.
const SOURCES: usize = 256;

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the flood CPU for one test.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A flood lab whose server takes every frame, with no filter.
fn open_lab() -> FloodLab {
    let mut lab = FloodLab::new().expect("building the flood lab");
    lab.accept_without_filter()
        .expect("letting the server take redirected frames");
    lab
}

/// spacefilter, loaded and attached to the server's interface natively.
fn attached_filter(lab: &FloodLab) -> Filter {
    let mut filter = Filter::load(LoadOptions {
        capacity: CAPACITY,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter");
    lab.attach(&mut filter, AttachMode::Native)
        .expect("attaching spacefilter");
    filter
}

fn v4(host: Host) -> IpAddr {
    host.addr(Family::V4)
}

/// Sends `flood`, all `frames` of it, and gives the sink time to hear from
/// every one of `sources`; returns from how many of them it heard, and how
/// many datagrams it received from them.
fn flood_to_sink(
    lab: &FloodLab,
    flood: &Flood,
    sink: &UdpSink,
    sources: &[IpAddr],
    frames: u64,
) -> (usize, u64) {
    let sent = lab.flood(flood, Duration::from_secs(10)).expect("flooding");
    assert_eq!(sent.frames, frames);
    let distinct = || {
        sources
            .iter()
            .filter(|&&src| sink.received_from(src) > 0)
            .count()
    };
    wait_until(SETTLE, || distinct() == sources.len());
    let datagrams = sources.iter().map(|&src| sink.received_from(src)).sum();
    (distinct(), datagrams)
}

/// The generator delivers what it is asked for, all of it seen in the
/// server's counters, and a paced flood keeps its rate.
#[test]
fn generator_delivers_to_the_server() {
    require_root();
    let _serial = serial();
    let lab = open_lab();
    let flood = Flood::new(
        Shape::Udp { port: DISCARD },
        &[v4(Host::Attacker)],
        v4(Host::Server),
    );

    let before = lab.server_stats().unwrap();
    let sent = lab
        .flood(&flood.clone().limit(FRAMES), Duration::from_secs(20))
        .expect("flooding");
    assert_eq!(sent.frames, FRAMES, "the flood stopped early: {sent:?}");
    let arrived = || (lab.server_stats().unwrap() - before).rx_packets;
    wait_until(SETTLE, || arrived() >= FRAMES);
    let stats = lab.server_stats().unwrap() - before;
    assert!(
        stats.rx_packets >= FRAMES * 99 / 100,
        "{FRAMES} frames sent at {:.2} Mpps, the server received {stats:?}",
        sent.pps() / 1e6
    );

    let before = lab.server_stats().unwrap();
    let sent = lab
        .flood(&flood.at_rate(RATE), Duration::from_secs(1))
        .expect("flooding at a rate");
    thread::sleep(Duration::from_millis(100));
    let stats = lab.server_stats().unwrap() - before;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let (rate, wanted) = (
        stats.rx_packets as f64 / sent.elapsed.as_secs_f64(),
        RATE as f64,
    );
    assert!(
        (0.9..1.1).contains(&(rate / wanted)),
        "paced to {RATE} frames a second, the server received {rate:.0} a second ({stats:?})"
    );
}

/// A spoofed flood reaches the server from its many sources: one prebuilt
/// frame per source, cycled through.
#[test]
fn spoofed_sources_arrive() {
    require_root();
    let _serial = serial();
    let lab = open_lab();
    let sink = UdpSink::start(&lab, Host::Server).expect("starting the UDP sink");
    // Off-link sources: the server has no route back, so it never asks
    // for their neighbours.
    let sources = spoofed_sources("198.19.0.0/16".parse().unwrap(), SOURCES, 0x5f00f);
    // Slow enough for the sink's socket buffer: every frame reaches the
    // server at any rate, but the sink thread reads one datagram at a time.
    let per_source = 16;
    let frames = (SOURCES * per_source) as u64;
    let flood = Flood::new(Shape::Udp { port: sink.port() }, &sources, v4(Host::Server))
        .with_burst(u32::try_from(per_source).unwrap())
        .at_rate(10_000)
        .limit(frames);
    let (seen, datagrams) = flood_to_sink(&lab, &flood, &sink, &sources, frames);
    assert!(
        seen >= SOURCES * 95 / 100,
        "the server heard from {seen} of {SOURCES} spoofed sources ({datagrams} of {frames} \
         datagrams)"
    );
    assert!(
        datagrams >= frames * 9 / 10,
        "the server's socket received {datagrams} of {frames} datagrams"
    );
}

/// A flood spread over sources by the generator reaches the server's
/// socket from every one of them: each frame's source is rewritten and
/// its checksums mended, or the stack would drop it.
#[test]
fn spread_flood_arrives_from_every_source() {
    require_root();
    let _serial = serial();
    let lab = open_lab();
    let sink = UdpSink::start(&lab, Host::Server).expect("starting the UDP sink");
    let first = std::net::Ipv4Addr::new(198, 19, 7, 0);
    let count = 1_000_u32;
    let frames = u64::from(count) * 4;
    // Slow enough for the sink's socket buffer, as above.
    let flood = Flood::new(
        Shape::Udp { port: sink.port() },
        &[IpAddr::V4(first)],
        v4(Host::Server),
    )
    .spread_over(first, count)
    .with_burst(64)
    .at_rate(10_000)
    .limit(frames);
    let sources = flood.spread_sources().expect("a spread flood");
    assert_eq!(sources.len(), 1_000);
    let (seen, datagrams) = flood_to_sink(&lab, &flood, &sink, &sources, frames);
    assert_eq!(
        seen,
        sources.len(),
        "the server heard from {seen} of {count} sources ({datagrams} of {frames} datagrams)"
    );
    assert!(
        datagrams >= frames * 9 / 10,
        "the server's socket received {datagrams} of {frames} datagrams"
    );
    // Each source sends its share, 4 frames, and no more; the socket may
    // lose one under load, as the bound on all datagrams above allows.
    let from_first = sink.received_from(IpAddr::V4(first));
    assert!(
        (1..=4).contains(&from_first),
        "each source sends its share of 4: the first sent {from_first}"
    );
}

/// With the attacker's prefix blocked, spacefilter drops a flood from it
/// at the generator's highest rate (it waits for the receiver, see
/// `FloodLab`) while a legitimate flow through the same link keeps its
/// datagrams.
#[test]
fn blocked_flood_is_dropped_and_legit_flow_survives() {
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("building the flood lab");
    let mut filter = attached_filter(&lab);
    filter.block(Host::Attacker.subnet(Family::V4)).unwrap();
    let sink = UdpSink::start(&lab, Host::Server).expect("starting the UDP sink");
    let service = SocketAddr::new(v4(Host::Server), sink.port());
    // The flood aims at the service the legitimate client uses.
    let flood = Flood::new(
        Shape::Udp { port: sink.port() },
        &[v4(Host::Attacker)],
        v4(Host::Server),
    );

    let counters = filter.counters().unwrap();
    let link = lab.server_stats().unwrap();
    let stream = UdpStream::start(&lab, Host::Listener, service, LEGIT_RATE)
        .expect("starting the legitimate flow");
    thread::sleep(Duration::from_millis(200));
    let sent = lab.flood(&flood, Duration::from_secs(2)).expect("flooding");
    thread::sleep(Duration::from_millis(200));
    let legit_sent = stream.stop();
    let legit_received = sink.wait_for(v4(Host::Listener), legit_sent, SETTLE);
    let counters = filter.counters().unwrap().since(&counters);
    let link = lab.server_stats().unwrap() - link;
    let blocked = counters.get(Reason::Blocked).packets;
    let report = format!(
        "flood: {} frames offered at {:.2} Mpps, {blocked} blocked, {} reached the service; \
         legitimate: {legit_received} of {legit_sent} arrived; server eth0: {link:?}; \
         counters: {counters:?}",
        sent.frames,
        sent.pps() / 1e6,
        sink.received_from(v4(Host::Attacker)),
    );
    eprintln!("{report}");
    assert!(
        blocked >= 500_000,
        "too small a flood to tell anything: {report}"
    );
    assert!(
        blocked * 100 >= sent.frames * 99,
        "less than 99 % of the flood was dropped by the filter: {report}"
    );
    assert_eq!(
        sink.received_from(v4(Host::Attacker)),
        0,
        "flood datagrams reached the service: {report}"
    );
    assert!(
        legit_received * 100 > legit_sent * 99,
        "the legitimate flow lost 1 % or more: {report}"
    );
}

/// A flood from 30 000 spoofed sources, each far below the per-source
/// limit: per-source buckets cannot stop it (each source is new, and every
/// new bucket would evict a real one). The fallback engages, at least 99 %
/// of the flood is dropped, and the listener, known before the flood, keeps
/// its own bucket and at least 99 % of its packets.
#[test]
fn spoofed_flood_engages_the_fallback() {
    use spacefilter_common::{Limits, limit_flags};
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("building the flood lab");
    let mut filter = attached_filter(&lab);
    filter
        .limiter()
        .set(Limits {
            flags: limit_flags::ENABLED,
            v6_prefix_len: 64,
            pps: 20_000,
            pps_burst: 20_000,
            spoof_threshold: 50,
            fallback_pps: 200,
            fallback_burst: 200,
            ..Limits::default()
        })
        .expect("limits");
    let sink = UdpSink::start(&lab, Host::Server).expect("starting the UDP sink");
    let service = SocketAddr::new(v4(Host::Server), sink.port());
    let sources = spoofed_sources("198.19.0.0/16".parse().unwrap(), 30_000, 0x5eed);
    // A few frames per source at a time, so that the flood really comes
    // from all of them.
    let flood =
        Flood::new(Shape::Udp { port: sink.port() }, &sources, v4(Host::Server)).with_burst(16);

    let stream = UdpStream::start(&lab, Host::Listener, service, LEGIT_RATE)
        .expect("starting the legitimate flow");
    // The listener is a known source before the flood starts.
    assert!(sink.wait_for(v4(Host::Listener), 100, Duration::from_secs(3)) >= 100);
    let counters = filter.counters().unwrap();
    let sent = lab.flood(&flood, Duration::from_secs(2)).expect("flooding");
    thread::sleep(Duration::from_millis(200));
    let legit_sent = stream.stop();
    let legit_received = sink.wait_for(v4(Host::Listener), legit_sent, SETTLE);
    let counters = filter.counters().unwrap().since(&counters);
    let spoof_limited = counters.get(Reason::SpoofLimited).packets;
    let flood_received: u64 = sources.iter().map(|&s| sink.received_from(s)).sum();
    let state = filter.limiter().spoof_state().expect("spoof state");
    let report = format!(
        "flood: {} frames at {:.2} Mpps from {} sources, {spoof_limited} spoof-limited, \
         {flood_received} reached the service; fallback switches {}; legitimate: \
         {legit_received} of {legit_sent}; counters: {counters:?}",
        sent.frames,
        sent.pps() / 1e6,
        sources.len(),
        state.switches,
    );
    eprintln!("{report}");
    assert!(state.switches >= 1, "the fallback never engaged: {report}");
    assert!(
        spoof_limited >= 200_000,
        "too small a flood to tell anything: {report}"
    );
    assert!(
        spoof_limited * 100 >= sent.frames * 99,
        "less than 99 % of the spoofed flood was dropped: {report}"
    );
    assert!(
        legit_received * 100 >= legit_sent * 99,
        "the legitimate flow lost more than 1 %: {report}"
    );
}

/// Every frame the filter takes is counted under the interface it came in
/// on, from the first: the interface's counter slot is assigned before the
/// program runs there, so that a flood already flowing when the filter
/// attaches has none of its frames counted with the unattributed ones.
#[test]
fn a_filter_attached_under_a_flood_counts_every_frame_under_its_interface() {
    require_root();
    let _serial = serial();
    let lab = FloodLab::new().expect("building the flood lab");
    let mut filter = Filter::load(LoadOptions {
        capacity: CAPACITY,
        ..LoadOptions::default()
    })
    .expect("loading spacefilter");
    filter.block(Host::Attacker.subnet(Family::V4)).unwrap();
    let flood = Flood::new(
        Shape::Udp { port: DISCARD },
        &[v4(Host::Attacker)],
        v4(Host::Server),
    );
    // With no XDP program on the server's end of the link yet, the flood's
    // frames are lost there; the generator's time on its CPU says that it
    // runs.
    let before = CpuTimes::now().unwrap();
    thread::scope(|scope| {
        let flooding = scope.spawn(|| lab.flood(&flood, Duration::from_secs(2)));
        assert!(
            wait_until(Duration::from_secs(2), || {
                CpuTimes::now().unwrap().since(&before).system(FLOOD_CPU) >= 0.1
            }),
            "the flood did not start"
        );
        lab.attach(&mut filter, AttachMode::Native)
            .expect("attaching spacefilter");
        flooding.join().unwrap().expect("flooding");
    });
    let counters = filter.counters().unwrap();
    let total: u64 = counters.by_reason.values().map(|c| c.packets).sum();
    let attributed: u64 = counters
        .by_iface
        .values()
        .flat_map(BTreeMap::values)
        .map(|c| c.packets)
        .sum();
    eprintln!("{total} frames counted, {attributed} of them under the interface");
    // The control: the filter took the flood while it ran.
    let blocked = counters.get(Reason::Blocked).packets;
    assert!(blocked >= 100_000, "only {blocked} frames blocked");
    assert_eq!(
        total - attributed,
        0,
        "of {total} frames, {} were counted with the unattributed ones",
        total - attributed
    );
}
