//! What the tests and the benchmark need around the shield: a way for the
//! server's answers to leave a veth, and the window scale the kernel picks
//! for a connection opened from a cookie.

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use spacefilter::{
    Filter,
    bpf::{Shielded, TOOLS},
};
use spacefilter_common::{Shield, shield_flags};

use crate::netns::{Host, Lab, run_in_netns};

/// Attaches the tools' program `name` (`floor_pass`, or `answer_sink`,
/// which drops what goes to the flood lab's forged sources) to the
/// switch's port towards the server, kept while the returned object lives:
/// a veth takes the frames its peer sends with `XDP_TX` only with an XDP
/// program of its own (a NIC needs nothing of the kind).
pub fn accept_xdp_tx(lab: &Lab, name: &str) -> anyhow::Result<Ebpf> {
    let mut tools = Ebpf::load(TOOLS).context("loading the measuring tools")?;
    let program: &mut Xdp = tools
        .program_mut(name)
        .with_context(|| format!("the tools have no program {name}"))?
        .try_into()?;
    program.load()?;
    run_in_netns(&lab.switch_ns(), || program.attach("srv", XdpMode::Driver))?
        .with_context(|| format!("attaching {name} to the switch's port"))?;
    Ok(tools)
}

/// The window scale the kernel gives a connection it opens from a cookie
/// in the server's namespace, with its sysctls (`tcp_select_initial_window`;
/// the daemon computes it the same way).
pub fn cookie_wscale(lab: &Lab) -> anyhow::Result<u32> {
    let read = |path: &str| -> anyhow::Result<u64> {
        let text = lab.run_in(Host::Server, || std::fs::read_to_string(path))??;
        text.split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("reading {path}"))
    };
    let space = read("/proc/sys/net/ipv4/tcp_rmem")?
        .max(read("/proc/sys/net/core/rmem_max")?)
        .min(u64::from(u16::MAX) << 14);
    Ok(space.ilog2().saturating_sub(15).min(14))
}

/// Sets the server's namespace up as `spacefilter shield on` does: the
/// kernel takes the cookies' ACKs (`tcp_syncookies=2`) and reads their
/// options from the timestamp (`tcp_timestamps=2`, no offsets).
pub fn host_for_cookies(lab: &Lab) -> anyhow::Result<()> {
    for (key, value) in [("tcp_syncookies", "2"), ("tcp_timestamps", "2")] {
        lab.run_in(Host::Server, || {
            std::fs::write(format!("/proc/sys/net/ipv4/{key}"), value)
        })?
        .with_context(|| format!("setting {key}"))?;
    }
    Ok(())
}

/// Puts the shield on `ports` in `filter`'s maps, as the daemon does for a
/// host that speaks timestamps, SACK and window scaling, offering `wscale`.
pub fn shield_ports(filter: &mut Filter, ports: &[(u16, u16)], wscale: u32) -> anyhow::Result<()> {
    shield_with(
        filter,
        Shielded {
            tcp: ports,
            udp: &[],
        },
        wscale,
        0,
    )
}

/// Puts the shield on TCP and UDP ports in `filter`'s maps, as
/// [`shield_ports`], with a budget of `unverified_pps` for UDP from
/// unverified sources; proofs hold sources verified for 10 minutes.
pub fn shield_with(
    filter: &mut Filter,
    ports: Shielded<'_>,
    wscale: u32,
    unverified_pps: u32,
) -> anyhow::Result<()> {
    let limiter = filter.limiter();
    limiter.set_port_bits(&[], &[], ports)?;
    limiter.set_shield(Shield {
        flags: shield_flags::ON
            | shield_flags::TIMESTAMPS
            | shield_flags::SACK
            | shield_flags::WSCALE,
        mss_v4: 1460,
        mss_v6: 1440,
        wscale,
        unverified_pps,
        // As the daemon sets it: a quarter second's worth.
        unverified_burst: (unverified_pps / 4).max(unverified_pps.min(1)),
    })?;
    filter.verifier().configure(true, 600_000_000_000)?;
    Ok(())
}

/// Runs `frame` once through `filter`; returns the verdict and the one
/// reason counted.
pub fn verdict_of(filter: &mut Filter, frame: &[u8]) -> (u32, spacefilter::Reason) {
    let before = filter.counters().expect("counters");
    let (action, _) = filter.test_run(frame, 1).expect("test run");
    let after = filter.counters().expect("counters").since(&before);
    let reason = spacefilter::Reason::ALL
        .into_iter()
        .find(|r| after.get(*r).packets == 1)
        .expect("one counter moved");
    (action, reason)
}
