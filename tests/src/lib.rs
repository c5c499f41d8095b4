//! spacefilter's test harness.
//!
//! The integration tests in `tests/tests/` load the real XDP program into
//! the running kernel: through `BPF_PROG_TEST_RUN` for packet fixtures, and
//! attached to veth pairs between network namespaces for live traffic. Both
//! need root; [`require_root`] makes a test fail (never skip) without it.

pub mod bench;
pub mod crowdsec;
pub mod daemon;
pub mod etcd;
pub mod fixture;
pub mod fleet;
pub mod flood;
pub mod generate;
pub mod netns;
pub mod packets;
pub mod pki;
pub mod reference;
pub mod shield;
pub mod traffic;

/// Fails the calling test, loudly, unless it runs as root. The kernel tests
/// are the point of this suite: without root they cannot run, and a skipped
/// test would read as a passed one.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test loads XDP programs and creates network namespaces, so it must run as root \
         (euid is {euid}); run the suite with `cargo xtask test` as root"
    );
}
