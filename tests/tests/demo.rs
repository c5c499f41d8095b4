//! `cargo xtask demo`, the first command the README gives a new user, run
//! whole: its lab, the real daemon, its traffic and its checks (each step
//! fails the demo when what it shows did not happen: the block that lets
//! an attacker's datagram through, joins that fail under the shield, a
//! stop that takes the filter off, a detach that leaves it on).
//!
//! Needs root, and the `spacefilter` binary beside the demo's (`cargo
//! xtask test` builds it first).

use std::process::Command;

#[test]
fn the_demo_runs_through_every_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "1. Start the daemon",
        "2. No rules yet",
        "3. Block the attacker's prefixes",
        "4. An exception",
        "5. A live event",
        "6. Stop the daemon",
        "7. Start it again",
        "8. Take the filter off on purpose",
    ] {
        assert!(stdout.contains(step), "no step {step:?} in:\n{stdout}");
    }
    // With no daemon running, the pinned program still dropped every
    // datagram of the blocked attacker, and detach took it off.
    assert!(
        stdout.contains("from the attacker 0."),
        "the filter did not hold with no daemon:\n{stdout}"
    );
    assert!(
        stdout.contains("the attacker's datagrams arrive again"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Cleaned up: removed namespaces"),
        "the lab was not removed:\n{stdout}\n{stderr}"
    );
}
