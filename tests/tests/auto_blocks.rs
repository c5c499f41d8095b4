//! Auto-blocks end to end: a real daemon in the lab's server namespace,
//! steered with the real CLI, real UDP floods from the lab's hosts. An
//! auto-block holds like a block (past a pass rule, with the limiter off)
//! for as long as `list` shows it; the host's resolvers are never
//! auto-blocked, however hard a flood forged from them runs.

use std::{fs, ops::Deref, path::PathBuf, time::Duration};

use spacefilter_tests::{
    daemon::SinkLab,
    netns::{Family, Host, Lab},
    require_root,
    traffic::wait_until,
};

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` shows the
/// daemon as `/etc/resolv.conf`; removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn new(ns: &str, nameserver: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        fs::create_dir_all(&dir).expect("creating /etc/netns/NS");
        fs::write(
            dir.join("resolv.conf"),
            format!("# spacefilter test\nnameserver {nameserver}\n"),
        )
        .expect("writing resolv.conf");
        Self(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The shared lab, with the attacker's address as the server's resolver.
struct Setup {
    lab: SinkLab,
    _resolv: NetnsResolvConf,
}

impl Deref for Setup {
    type Target = SinkLab;

    fn deref(&self) -> &SinkLab {
        &self.lab
    }
}

impl Setup {
    fn new() -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let resolv = NetnsResolvConf::new(
            &lab.ns(Host::Server),
            &Host::Attacker.addr(Family::V4).to_string(),
        );
        Self {
            lab: SinkLab::in_lab(lab, "auto"),
            _resolv: resolv,
        }
    }

    fn auto_blocked(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|e| e["list"] == "auto")
            .filter_map(|e| e["prefix"].as_str().map(str::to_owned))
            .collect()
    }

    /// Whether `host`'s stream stays cut off for a while: nothing of it
    /// arrives between two reads of the sink around a stats round trip.
    fn cut_off(&self, host: Host) -> bool {
        let before = self.received(host);
        let seen = self.counter("auto_blocked");
        wait_until(Duration::from_secs(2), || {
            self.counter("auto_blocked") > seen + 200
        }) && self.received(host) == before
    }
}

#[test]
fn an_auto_block_holds_past_rules_and_the_limiter_off_and_spares_the_resolver() {
    let s = Setup::new();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .daemon
            .log()
            .contains("never auto-blocked")),
        "the daemon did not report what it never auto-blocks:\n{}",
        s.daemon.log()
    );
    s.daemon
        .cli(&[
            "limit",
            "set",
            "--pps",
            "200",
            "--burst",
            "50",
            "--block-after",
            "1s",
            "--block-ttl",
            "1h",
        ])
        .ok("limit set");
    // Both run far over the limit: the listener is auto-blocked (the
    // positive control), the resolver only limited.
    let _listener = s.stream(Host::Listener, 2000);
    let _resolver = s.stream(Host::Attacker, 2000);
    let listener = Host::Listener.addr(Family::V4).to_string();
    assert!(
        wait_until(Duration::from_secs(8), || s
            .auto_blocked()
            .contains(&format!("{listener}/32"))),
        "the listener was not auto-blocked: {:?}\n{}",
        s.auto_blocked(),
        s.daemon.log()
    );
    assert!(s.cut_off(Host::Listener), "the auto-block does not hold");
    // The resolver has been over its limit for longer: it is limited,
    // never blocked.
    let limited = s.counter("rate_limited");
    assert!(
        wait_until(Duration::from_secs(3), || s.counter("rate_limited")
            > limited + 1000),
        "the resolver's flood is not limited"
    );
    let resolver_arrived = s.received(Host::Attacker);
    assert!(
        wait_until(Duration::from_secs(3), || s.received(Host::Attacker)
            > resolver_arrived + 100),
        "the resolver gets nothing through its limit"
    );
    assert_eq!(s.auto_blocked(), vec![format!("{listener}/32")]);

    // A rule that passes the service's port, then the limiter off: the
    // auto-block holds, and is still listed.
    let port = s.sink.port().to_string();
    s.daemon
        .cli(&[
            "rule", "add", "--action", "pass", "--proto", "udp", "--dport", &port,
        ])
        .ok("rule add");
    assert!(
        s.cut_off(Host::Listener),
        "a pass rule lifts the auto-block"
    );
    s.daemon.cli(&["limit", "off"]).ok("limit off");
    assert!(s.cut_off(Host::Listener), "limit off lifts the auto-block");
    assert_eq!(s.auto_blocked(), vec![format!("{listener}/32")]);
    // The resolver, no longer limited, gets everything through the rule.
    let passed = s.counter("rule_passed");
    assert!(
        wait_until(Duration::from_secs(3), || s.counter("rule_passed")
            > passed + 1000),
        "the pass rule lets nothing through"
    );

    // Lifted by hand, the listener's stream comes back.
    s.daemon
        .cli(&["unblock", &format!("{listener}/32")])
        .ok("unblock");
    let before = s.received(Host::Listener);
    assert!(
        wait_until(Duration::from_secs(3), || s.received(Host::Listener)
            > before + 100),
        "the listener stays cut off after its auto-block was lifted"
    );
}
