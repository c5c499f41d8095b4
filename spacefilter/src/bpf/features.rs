//! Which kernel features the program may use: each is probed before the
//! program is loaded (the helpers it calls, through a tiny test program the
//! verifier accepts or refuses), and the answer is written into the
//! program's read-only global [`FEATURES_GLOBAL`]. A feature the kernel
//! lacks, or that the admin switched off (`run --without FEATURE`), is off:
//! the verifier skips its paths, the filter works without it, and the
//! daemon says so in its log and in `status`.

use std::sync::OnceLock;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};
use serde::{Deserialize, Serialize};
use spacefilter_common::features;

/// A feature the program can do without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// SYN cookies at XDP and the out-of-state check on shielded TCP ports.
    TcpCookies,
    /// The first bytes of sampled frames.
    FrameHeads,
    /// The coarse clock for capped samples.
    CoarseClock,
    /// The egress program on a pinned TCX link.
    TcxLinks,
}

/// The kernel that brought TCX links (`BPF_LINK_TYPE_TCX`).
const TCX_SINCE: (u8, u8) = (6, 6);

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::TcpCookies,
        Feature::FrameHeads,
        Feature::CoarseClock,
        Feature::TcxLinks,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Feature::TcpCookies => "tcp-cookies",
            Feature::FrameHeads => "frame-heads",
            Feature::CoarseClock => "coarse-clock",
            Feature::TcxLinks => "tcx-links",
        }
    }

    /// Its bit in the program's `FEATURES`.
    #[must_use]
    pub const fn bit(self) -> u32 {
        match self {
            Feature::TcpCookies => features::TCP_COOKIES,
            Feature::FrameHeads => features::FRAME_HEADS,
            Feature::CoarseClock => features::COARSE_CLOCK,
            Feature::TcxLinks => features::TCX_LINKS,
        }
    }

    /// The helpers it calls from XDP, with the kernel that brought each.
    fn helpers(self) -> &'static [(BpfHelper, &'static str, &'static str)] {
        match self {
            Feature::TcpCookies => &[
                (
                    BpfHelper::BPF_FUNC_skc_lookup_tcp,
                    "bpf_skc_lookup_tcp",
                    "5.2",
                ),
                (
                    BpfHelper::BPF_FUNC_tcp_check_syncookie,
                    "bpf_tcp_check_syncookie",
                    "5.2",
                ),
                (
                    BpfHelper::BPF_FUNC_tcp_gen_syncookie,
                    "bpf_tcp_gen_syncookie",
                    "5.3",
                ),
                (
                    BpfHelper::BPF_FUNC_xdp_load_bytes,
                    "bpf_xdp_load_bytes",
                    "5.18",
                ),
                (
                    BpfHelper::BPF_FUNC_tcp_raw_gen_syncookie_ipv4,
                    "bpf_tcp_raw_gen_syncookie_ipv4",
                    "6.0",
                ),
                (
                    BpfHelper::BPF_FUNC_tcp_raw_gen_syncookie_ipv6,
                    "bpf_tcp_raw_gen_syncookie_ipv6",
                    "6.0",
                ),
            ],
            Feature::FrameHeads => &[(
                BpfHelper::BPF_FUNC_xdp_load_bytes,
                "bpf_xdp_load_bytes",
                "5.18",
            )],
            Feature::CoarseClock => &[(
                BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
                "bpf_ktime_get_coarse_ns",
                "5.11",
            )],
            // Not a helper: the kernel's version says (see `probe`).
            Feature::TcxLinks => &[],
        }
    }

    /// What the filter does instead, while it is off.
    #[must_use]
    pub const fn instead(self) -> &'static str {
        match self {
            Feature::TcpCookies => {
                "the shield treats TCP as it treats UDP (verified sources pass, others share \
                 the budget for unverified sources) and the kernel answers SYNs with its own \
                 cookies; the SYN budgets hold"
            }
            Feature::FrameHeads => "drop samples carry the verdict and length, no bytes",
            Feature::CoarseClock => "capped samples read the precise clock",
            Feature::TcxLinks => {
                "the egress program is a clsact filter, which cannot be pinned: it is left \
                 on the interface when the daemon stops, and the next start replaces it"
            }
        }
    }
}

/// A feature that is off, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureOff {
    pub feature: Feature,
    pub why: String,
    /// What the filter does instead.
    pub instead: String,
}

/// The [`features`] bits of `list`.
#[must_use]
pub fn bits_of(list: &[Feature]) -> u32 {
    list.iter().fold(0, |acc, f| acc | f.bit())
}

/// Probes the kernel for each feature's helpers, and switches off those
/// it lacks and those in `without` ([`features`] bits). Returns the
/// `FEATURES` bits and what is off.
#[must_use]
pub fn probe(without: u32) -> (u32, Vec<FeatureOff>) {
    // The kernel's answers do not change while this process runs: each
    // helper is probed once, however many times the program is loaded.
    static MISSING: OnceLock<Vec<BpfHelper>> = OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        let mut missing = Vec::new();
        for (helper, name, _) in Feature::ALL.iter().flat_map(|f| f.helpers()) {
            if missing.contains(helper) {
                continue;
            }
            match is_helper_supported(ProgramType::Xdp, *helper) {
                Ok(true) => {}
                Ok(false) => missing.push(*helper),
                // A probe refused before the verifier saw it (no
                // CAP_NET_ADMIN or CAP_BPF) says nothing of the kernel:
                // the program's own load reports what is wrong.
                Err(err) => log::debug!("probing {name}: {err}; taken as present"),
            }
        }
        missing
    });
    // A kernel whose version cannot be read is taken to have TCX links: an
    // attach that fails then says why.
    let tcx = KernelVersion::current().map_or(true, |version| {
        version >= KernelVersion::new(TCX_SINCE.0, TCX_SINCE.1, 0)
    });
    probe_with(without, &|helper| !missing.contains(&helper), tcx)
}

fn probe_with(without: u32, has: &dyn Fn(BpfHelper) -> bool, tcx: bool) -> (u32, Vec<FeatureOff>) {
    let mut bits = 0;
    let mut off = Vec::new();
    for feature in Feature::ALL {
        let why = if without & feature.bit() != 0 {
            Some("switched off by `run --without`".to_owned())
        } else if feature == Feature::TcxLinks && !tcx {
            Some(format!(
                "the kernel lacks TCX links (Linux {}.{} and later have them)",
                TCX_SINCE.0, TCX_SINCE.1
            ))
        } else {
            feature
                .helpers()
                .iter()
                .find(|(helper, _, _)| !has(*helper))
                .map(|(_, name, since)| {
                    format!("the kernel lacks {name} (Linux {since} and later have it)")
                })
        };
        match why {
            Some(why) => off.push(FeatureOff {
                feature,
                why,
                instead: feature.instead().to_owned(),
            }),
            None => bits |= feature.bit(),
        }
    }
    (bits, off)
}

/// The kernel's tick (`1 s / HZ`) in nanoseconds, for the program's clock
/// read without a helper call (see `TICK_NS_GLOBAL`); `None` where it
/// cannot be learnt, and the program then reads the coarse clock (a helper
/// call, a few percent of the receive CPU under a SYN flood). From the
/// kernel's configuration (`/boot/config-RELEASE`) where it is installed,
/// else counted: `jiffies` in `/proc/timer_list` over 100 ms of the
/// monotonic clock, rounded to the nearest HZ that x86-64 and arm64 kernels
/// are built with. Learnt once per process, and logged.
#[must_use]
pub fn tick_ns() -> Option<u64> {
    static TICK: OnceLock<Option<u64>> = OnceLock::new();
    *TICK.get_or_init(|| {
        let hz = configured_hz()
            .map(|hz| (hz, "the kernel's configuration"))
            .or_else(|| counted_hz().map(|hz| (hz, "jiffies counted in /proc/timer_list")));
        let Some((hz, from)) = hz else {
            log::warn!(
                "the kernel's tick length is unknown (no CONFIG_HZ in /boot, and \
                 /proc/timer_list unreadable or unclear): the shield reads the coarse clock for \
                 each SYN it answers"
            );
            return None;
        };
        log::info!("the kernel's tick: HZ {hz} ({from})");
        Some(1_000_000_000 / hz)
    })
}

/// `CONFIG_HZ` from `/boot/config-RELEASE`, if there.
fn configured_hz() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    hz_in_config(&config)
}

fn hz_in_config(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
        .filter(|hz| (10..=10_000).contains(hz))
}

/// HZ counted: `jiffies` over 100 ms of the monotonic clock, both read from
/// `/proc/timer_list` (root only).
fn counted_hz() -> Option<u64> {
    let first = timer_list_clocks()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let second = timer_list_clocks()?;
    hz_from_counts(first, second)
}

/// The monotonic clock (`now at N nsecs`) and `jiffies` (the first
/// `jiffies: N` line), as `/proc/timer_list` shows them.
fn timer_list_clocks() -> Option<(u64, u64)> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/timer_list").ok()?;
    let mut now = None;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.ok()?;
        if let Some(rest) = line.strip_prefix("now at ") {
            now = rest.strip_suffix(" nsecs")?.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("jiffies: ") {
            return Some((now?, rest.trim().parse().ok()?));
        }
    }
    None
}

/// The HZ (100, 250, 300 or 1000) within 10 % of the rate `jiffies` moved
/// at between two readings of (monotonic ns, jiffies), if any.
fn hz_from_counts((ns0, j0): (u64, u64), (ns1, j1): (u64, u64)) -> Option<u64> {
    let (ns, ticks) = (ns1.checked_sub(ns0)?, j1.checked_sub(j0)?);
    if ns < 50_000_000 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = ticks as f64 * 1e9 / ns as f64;
    [100_u64, 250, 300, 1000].into_iter().find(|&hz| {
        #[expect(clippy::cast_precision_loss, reason = "a small number")]
        let hz = hz as f64;
        (rate - hz).abs() <= hz * 0.1
    })
}

/// What the program cannot do without, with the kernel that brought it.
const REQUIRED: [(Requirement, &str, &str); 4] = [
    (
        Requirement::Program(ProgramType::Xdp),
        "XDP programs",
        "4.8",
    ),
    (Requirement::Map(MapType::LpmTrie), "LPM-trie maps", "4.11"),
    (Requirement::Map(MapType::LruHash), "LRU hash maps", "4.10"),
    (Requirement::Map(MapType::RingBuf), "ring buffers", "5.8"),
];

#[derive(Clone, Copy)]
enum Requirement {
    Program(ProgramType),
    Map(MapType),
}

/// Checks that the kernel has what the program cannot do without, and
/// names the first thing it lacks. A probe that cannot tell (not root, a
/// kernel that refuses probes) says nothing: the load then reports its own
/// error.
pub fn require() -> Result<(), String> {
    // Probed once per process, as [`probe`] does.
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            require_with(&|requirement| match requirement {
                Requirement::Program(kind) => is_program_supported(kind).ok(),
                Requirement::Map(kind) => is_map_supported(kind).ok(),
            })
        })
        .clone()
}

fn require_with(has: &dyn Fn(Requirement) -> Option<bool>) -> Result<(), String> {
    for (requirement, what, since) in REQUIRED {
        if has(requirement) == Some(false) {
            return Err(format!(
                "this kernel has no {what} (Linux {since} and later have them); spacefilter needs \
                 Linux 5.12 or later with BPF and XDP (Debian 12's 6.1 and 6.12 are tested)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_ring_buffers_is_refused_by_name() {
        let err = require_with(&|r| Some(!matches!(r, Requirement::Map(MapType::RingBuf))))
            .expect_err("refused");
        assert!(err.contains("ring buffers") && err.contains("5.8"), "{err}");
        // A probe that cannot tell refuses nothing.
        assert_eq!(require_with(&|_| None), Ok(()));
        assert_eq!(require_with(&|_| Some(true)), Ok(()));
    }

    #[test]
    fn the_tick_comes_from_the_config_or_from_counted_jiffies() {
        assert_eq!(
            hz_in_config("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_in_config("CONFIG_HZ_PERIODIC=y\n"), None);
        assert_eq!(hz_in_config("CONFIG_HZ=0\n"), None);
        // Over 100 ms: 25 ticks at 250, give or take one, and so on.
        let at = (11_586_445_750_485, 4_297_788_843);
        for (ticks, hz) in [(24, 250), (26, 250), (31, 300), (101, 1000), (9, 100)] {
            let later = (at.0 + 100_000_000, at.1 + ticks);
            assert_eq!(hz_from_counts(at, later), Some(hz), "{ticks} ticks");
        }
        // Between the values kernels are built with, too short, or
        // backwards: unknown.
        assert_eq!(hz_from_counts(at, (at.0 + 100_000_000, at.1 + 60)), None);
        assert_eq!(hz_from_counts(at, (at.0 + 1_000_000, at.1 + 1)), None);
        assert_eq!(hz_from_counts(at, (at.0 - 1, at.1 + 25)), None);
    }

    #[test]
    fn every_feature_has_its_own_bit_and_together_they_are_all() {
        let bits = Feature::ALL.iter().fold(0, |acc, f| {
            assert_eq!(acc & f.bit(), 0, "{} shares a bit", f.name());
            acc | f.bit()
        });
        assert_eq!(bits, features::ALL);
    }

    #[test]
    fn a_missing_helper_switches_off_only_the_features_that_call_it() {
        let (bits, off) = probe_with(
            0,
            &|helper| helper != BpfHelper::BPF_FUNC_tcp_raw_gen_syncookie_ipv6,
            true,
        );
        assert_eq!(
            bits,
            features::FRAME_HEADS | features::COARSE_CLOCK | features::TCX_LINKS
        );
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].feature, Feature::TcpCookies);
        assert!(
            off[0].why.contains("bpf_tcp_raw_gen_syncookie_ipv6") && off[0].why.contains("6.0"),
            "{}",
            off[0].why
        );
        // bpf_xdp_load_bytes gone takes both features that use it.
        let (bits, off) = probe_with(
            0,
            &|helper| helper != BpfHelper::BPF_FUNC_xdp_load_bytes,
            true,
        );
        assert_eq!(bits, features::COARSE_CLOCK | features::TCX_LINKS);
        assert_eq!(off.len(), 2);
    }

    #[test]
    fn a_kernel_before_6_6_has_no_tcx_links() {
        let (bits, off) = probe_with(0, &|_| true, false);
        assert_eq!(bits, features::ALL & !features::TCX_LINKS);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].feature, Feature::TcxLinks);
        assert!(off[0].why.contains("6.6"), "{}", off[0].why);
    }

    #[test]
    fn without_switches_a_feature_off_on_a_kernel_that_has_it() {
        let (bits, off) = probe_with(bits_of(&[Feature::CoarseClock]), &|_| true, true);
        assert_eq!(
            bits,
            features::TCP_COOKIES | features::FRAME_HEADS | features::TCX_LINKS
        );
        assert_eq!(off[0].feature, Feature::CoarseClock);
        assert!(off[0].why.contains("--without"), "{}", off[0].why);
    }
}
