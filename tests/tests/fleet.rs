//! A daemon in a fleet, against a real three-member etcd cluster (Debian's
//! `etcd-server`) in the lab's listener namespace: a rule written under
//! the fleet's prefix drops the attacker's datagrams at XDP, its deletion
//! lets them through, a leased rule expires, the leader's loss changes
//! nothing, and a member cut off from etcd keeps enforcing and, once back,
//! holds exactly the fleet's rules, also when etcd has compacted its
//! history meanwhile.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use spacefilter::{
    api::{Request, Response, client::Client},
    fleet::publish::Publisher,
    net::{List, Prefix},
};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch, binary},
    etcd::Cluster,
    fleet::fleet_entries,
    netns::{Family, Host, Lab, run_in_netns},
    require_root,
    traffic::{UdpSink, attacker_gets_through, send_udp, wait_until},
};

const FLEET: &str = "lab";
const PREFIX: &str = "/spacefilter/lab/";
/// How long a change may take to reach the maps.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams sent from each host by one probe.
const PROBE: u64 = 20;

struct Member {
    daemon: DaemonProcess,
    cluster: Cluster,
    sink: UdpSink,
    lab: Lab,
    _dir: Scratch,
}

impl Member {
    fn start() -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let dir = Scratch::new("fleet").expect("scratch directory");
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir).expect("etcd directory");
        let cluster = Cluster::start(
            &lab.ns(Host::Listener),
            Host::Listener.addr(Family::V4),
            &etcd_dir,
        )
        .expect("starting the etcd cluster");
        let sink = UdpSink::start(&lab, Host::Server).expect("UDP sink");
        // The member joins through its config file's `[fleet]` table, as
        // the packaged service would (the other fleet tests give the same
        // settings as flags).
        let config = dir.join("spacefilter.toml");
        std::fs::write(
            &config,
            format!(
                "capacity = 1024\n\n[fleet]\netcd = \"{}\"\nname = \"{FLEET}\"\n\
                 share_auto_blocks = true\n",
                cluster.endpoints()
            ),
        )
        .expect("writing the config file");
        let daemon = DaemonProcess::start(
            &lab.ns(Host::Server),
            &DaemonPaths::in_dir(&dir.join("daemon")),
            &["--config", &config.display().to_string()],
        )
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
        assert!(
            wait_until(TIMEOUT, || link(&daemon)["up"] == true),
            "the link to etcd comes up: {}",
            link(&daemon)
        );
        Self {
            daemon,
            cluster,
            sink,
            lab,
            _dir: dir,
        }
    }

    /// Runs a verb on the member's host: in the server's namespace, where
    /// etcd is reached as the daemon reaches it.
    fn verb(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(Host::Server)])
            .arg(binary())
            .args(args)
            .arg("--socket")
            .arg(self.daemon.socket())
            .output()
            .expect("running spacefilter");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn verb_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.verb(args);
        assert_eq!(code, 0, "spacefilter {args:?}: {stdout}{stderr}");
        stdout
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        self.cluster
            .etcdctl(args)
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// [`PROBE`] datagrams from the attacker and the listener each: how
    /// many of the attacker's arrived, once all of the listener's did.
    fn attacker_gets_through(&self) -> u64 {
        attacker_gets_through(&self.lab, Host::Server, &self.sink, PROBE, TIMEOUT)
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// The entries of origin fleet, as `list/prefix`.
    fn fleet_entries(&self) -> BTreeSet<String> {
        fleet_entries(&self.daemon)
    }

    /// The fleet's rules in etcd, in the same form.
    fn fleet_keys(&self) -> BTreeSet<String> {
        self.cluster
            .keys(PREFIX)
            .expect("reading the keys")
            .into_iter()
            .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
            .filter(|k| !k.starts_with("settings/"))
            .collect()
    }

    /// One of the fleet's settings as etcd holds it.
    fn setting(&self, name: &str) -> Value {
        let out = self.etcdctl(&[
            "get",
            &format!("{PREFIX}settings/{name}"),
            "--print-value-only",
        ]);
        serde_json::from_str(out.trim()).unwrap_or(Value::Null)
    }

    /// What `spacefilter VERB show --json` (or `rule list`) says here.
    fn shown(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.daemon.cli(&args);
        serde_json::from_str(out.ok("show")).expect("JSON")
    }

    fn wait_in_step(&self, what: &str) {
        let mut last = (BTreeSet::new(), BTreeSet::new());
        let same = wait_until(TIMEOUT, || {
            last = (self.fleet_entries(), self.fleet_keys());
            last.0 == last.1
        });
        assert!(
            same,
            "{what}: the member holds {:?}, the fleet {:?}",
            last.0, last.1
        );
    }
}

fn link(daemon: &DaemonProcess) -> Value {
    let out = daemon.cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(out.ok("status")).expect("status JSON");
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["kind"] == "fleet").cloned())
        .unwrap_or(Value::Null)
}

fn key(list: &str, prefix: &str) -> String {
    format!("{PREFIX}{list}/{prefix}")
}

#[test]
fn a_fleet_member_follows_etcd() {
    let mut m = Member::start();
    rules_come_and_go(&m);
    the_verbs_write_to_the_fleet(&m);
    settings_are_shared(&m);
    the_leader_can_go(&mut m);
    cut_off_and_back(&m);
    auto_blocks_are_shared(&m);
}

/// The limits, the rules on headers and the shield set on a member go to
/// the fleet; what the fleet holds is put in force; `--local` stays here.
fn settings_are_shared(m: &Member) {
    m.verb_ok(&["limit", "set", "--pps", "1000"]);
    assert_eq!(m.setting("limits")["pps"], 1000, "the limits are in etcd");
    assert_eq!(
        m.shown(&["limit", "show"])["pps"],
        1000,
        "and in force here"
    );
    let mut limits = m.setting("limits");
    limits["pps"] = 2000.into();
    m.etcdctl(&[
        "put",
        &format!("{PREFIX}settings/limits"),
        &limits.to_string(),
    ]);
    assert!(
        wait_until(TIMEOUT, || m.shown(&["limit", "show"])["pps"] == 2000),
        "the fleet's limits are put in force: {}",
        m.shown(&["limit", "show"])
    );
    m.verb_ok(&["limit", "set", "--local", "--pps", "500"]);
    assert_eq!(m.shown(&["limit", "show"])["pps"], 500, "--local here");
    assert_eq!(
        m.setting("limits")["pps"],
        2000,
        "--local leaves the fleet's"
    );
    m.verb_ok(&["limit", "off"]);
    assert_eq!(m.setting("limits")["enabled"], false);
    assert_eq!(m.shown(&["limit", "show"])["enabled"], false);

    // Rules: appended and deleted in the fleet's list, ids kept.
    m.verb_ok(&[
        "rule", "add", "--action", "drop", "--proto", "udp", "--dport", "9",
    ]);
    m.verb_ok(&[
        "rule", "add", "--action", "drop", "--proto", "tcp", "--dport", "9",
    ]);
    let ids = |rules: &Value| -> Vec<u64> {
        rules
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["id"].as_u64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&m.setting("rules")), [1, 2], "{}", m.setting("rules"));
    m.verb_ok(&["rule", "del", "1"]);
    assert_eq!(ids(&m.setting("rules")), [2], "{}", m.setting("rules"));
    assert_eq!(ids(&m.shown(&["rule", "list"])), [2], "in force here");
    let (code, _, stderr) = m.verb(&["rule", "del", "7"]);
    assert_eq!(code, 2, "a rule the fleet lacks: {stderr}");
    assert_eq!(ids(&m.setting("rules")), [2], "nothing changed");
    m.etcdctl(&["put", &format!("{PREFIX}settings/rules"), "[]"]);
    assert!(
        wait_until(TIMEOUT, || ids(&m.shown(&["rule", "list"])).is_empty()),
        "the fleet's empty list is put in force"
    );
    // Bad input never reaches the fleet.
    let (code, _, stderr) = m.verb(&[
        "rule",
        "add",
        "--action",
        "drop",
        "--proto",
        "udp",
        "--tcp-flags",
        "SYN",
    ]);
    assert_eq!(code, 2, "a TCP-flags rule on UDP: {stderr}");
    assert_eq!(
        m.setting("rules"),
        serde_json::json!([]),
        "nothing was written"
    );

    // The shield, on and off.
    m.verb_ok(&["shield", "on", "--ports", "tcp/8443"]);
    assert_eq!(m.setting("shield")["enabled"], true);
    assert_eq!(m.shown(&["shield", "show"])["enabled"], true);
    m.verb_ok(&["shield", "off"]);
    assert_eq!(m.setting("shield")["enabled"], false);
    assert_eq!(m.shown(&["shield", "show"])["enabled"], false);
}

/// With `--share-auto-blocks`, an auto-block goes to the fleet as a timed
/// block that the other members apply; this host keeps it as its own.
fn auto_blocks_are_shared(m: &Member) {
    m.etcdctl(&["del", "--prefix", &format!("{PREFIX}block/")]);
    m.wait_in_step("the fleet's blocks deleted");
    assert_eq!(m.attacker_gets_through(), PROBE, "before the flood");
    m.verb_ok(&[
        "limit",
        "set",
        "--pps",
        "200",
        "--burst",
        "50",
        "--block-after",
        "1s",
        "--block-ttl",
        "30s",
    ]);
    let to = SocketAddr::new(Host::Server.addr(Family::V4), m.sink.port());
    send_udp(&m.lab, Host::Attacker, to, 4000, Duration::from_micros(500)).expect("attacker sends");
    let attacker = format!("block/{}/32", Host::Attacker.addr(Family::V4));
    assert!(
        wait_until(TIMEOUT, || m.fleet_keys().contains(&attacker)),
        "the auto-block is shared: {:?}",
        m.fleet_keys()
    );
    let value = m.etcdctl(&["get", &format!("{PREFIX}{attacker}"), "--print-value-only"]);
    assert!(value.contains(r#""auto":true"#), "{value}");
    let lease = m.etcdctl(&["get", &format!("{PREFIX}{attacker}"), "-w", "json"]);
    assert!(lease.contains("\"lease\""), "a timed block: {lease}");
    assert!(
        !m.fleet_entries().contains(&attacker),
        "this host holds it as its own auto-block, not again as the fleet's: {:?}",
        m.fleet_entries()
    );
    m.verb_ok(&["limit", "off"]);
}

/// A block, deleted; a leased block, expired.
fn rules_come_and_go(m: &Member) {
    assert_eq!(m.attacker_gets_through(), PROBE, "before any rule");
    m.etcdctl(&[
        "put",
        &key("block", "198.18.2.66/32"),
        r#"{"comment":"flood"}"#,
    ]);
    m.wait_in_step("a block written");
    assert_eq!(m.attacker_gets_through(), 0, "blocked by the fleet");
    m.etcdctl(&["del", &key("block", "198.18.2.66/32")]);
    m.wait_in_step("a block deleted");
    assert_eq!(m.attacker_gets_through(), PROBE, "through after the delete");

    let granted = m.etcdctl(&["lease", "grant", "3"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("etcdctl prints the lease's id")
        .to_owned();
    m.etcdctl(&[
        "put",
        "--lease",
        &lease,
        &key("block", "198.18.2.0/24"),
        "{}",
    ]);
    m.wait_in_step("a leased block written");
    let out = m.daemon.cli(&["list", "--json"]);
    let entries: Vec<Value> = serde_json::from_str(out.ok("list")).expect("list JSON");
    let leased = entries
        .iter()
        .find(|e| e["prefix"] == "198.18.2.0/24")
        .expect("listed");
    let left = leased["expires_in_secs"].as_u64().expect("a timed entry");
    assert!(left <= 3, "as long as the lease: {leased}");
    assert_eq!(
        m.attacker_gets_through(),
        0,
        "blocked while the lease lasts"
    );
    assert!(
        wait_until(Duration::from_secs(10), || m.fleet_entries().is_empty()),
        "the leased block expires: {:?}",
        m.fleet_entries()
    );
    assert_eq!(m.attacker_gets_through(), PROBE, "through once it expired");
    // etcd drops the lease's key on its own clock.
    m.wait_in_step("the lease ran out in etcd too");
}

/// `block` and `unblock` on a member go through etcd; `--local` does not.
fn the_verbs_write_to_the_fleet(m: &Member) {
    m.verb_ok(&["block", "198.18.2.66", "--comment", "typed here"]);
    assert!(
        m.fleet_keys().contains("block/198.18.2.66/32"),
        "the block is in etcd once the verb returns: {:?}",
        m.fleet_keys()
    );
    assert!(
        m.fleet_entries().contains("block/198.18.2.66/32"),
        "and in force here, with origin fleet, once the verb returns"
    );
    assert_eq!(m.attacker_gets_through(), 0, "blocked through the fleet");
    m.verb_ok(&["unblock", "198.18.2.66"]);
    assert!(
        m.fleet_keys().is_empty(),
        "the key is gone from etcd: {:?}",
        m.fleet_keys()
    );
    assert!(
        m.fleet_entries().is_empty(),
        "and the entry from this host: {:?}",
        m.fleet_entries()
    );
    assert_eq!(m.attacker_gets_through(), PROBE, "through after unblock");
    let out = m.verb_ok(&["unblock", "198.18.2.99"]);
    assert!(out.contains("unblock"), "a prefix the fleet lacks: {out}");

    m.verb_ok(&["block", "--local", "203.0.113.60"]);
    assert!(
        m.fleet_keys().is_empty(),
        "--local writes nothing to etcd: {:?}",
        m.fleet_keys()
    );
    let out = m.daemon.cli(&["list", "--json"]);
    assert!(
        out.ok("list")
            .contains(r#""prefix":"203.0.113.60/32","origin":"manual""#),
        "the local block is this host's: {}",
        out.stdout
    );
    m.verb_ok(&["unblock", "--local", "203.0.113.60"]);
    let (code, _, stderr) = m.verb(&["block", "--force", "203.0.113.61"]);
    assert_eq!(
        code, 2,
        "--force on a fleet member without --local: {stderr}"
    );
    assert!(
        stderr.contains("--local"),
        "the error says what to do: {stderr}"
    );
}

/// The leader is killed: rules keep coming.
fn the_leader_can_go(m: &mut Member) {
    let leader = m.cluster.leader().expect("a leader");
    m.cluster.kill(leader);
    let started = Instant::now();
    // A write during the election times out, as it would for any client:
    // written again until the new leader takes it.
    assert!(
        wait_until(Duration::from_secs(10), || m
            .cluster
            .etcdctl(&["put", &key("block", "198.18.2.66/32"), "{}"])
            .is_ok()),
        "the cluster takes writes again after the leader's loss"
    );
    m.wait_in_step("a block written after the leader's loss");
    assert_eq!(
        m.attacker_gets_through(),
        0,
        "blocked after the leader's loss"
    );
    eprintln!(
        "a block reached the member {:?} after the leader was killed",
        started.elapsed()
    );
}

/// Runs `iptables` in the server's namespace.
fn iptables(m: &Member, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", &m.lab.ns(Host::Server), "iptables"])
        .args(args)
        .status()
        .expect("running iptables");
    assert!(status.success(), "iptables {args:?}");
}

/// The member is cut off from etcd while the fleet changes and etcd
/// compacts its history: it keeps enforcing what it had, says the link is
/// down, and within 5 s of coming back holds exactly the fleet's rules.
fn cut_off_and_back(m: &Member) {
    let etcd = Host::Listener.addr(Family::V4).to_string();
    let cut = [
        ["OUTPUT", "-d", etcd.as_str()],
        ["INPUT", "-s", etcd.as_str()],
    ];
    for [chain, dir, addr] in &cut {
        iptables(m, &["-I", chain, "-p", "tcp", dir, addr, "-j", "DROP"]);
    }
    assert!(
        wait_until(Duration::from_secs(15), || link(&m.daemon)["up"] == false),
        "the link goes down: {}",
        link(&m.daemon)
    );
    m.etcdctl(&["put", &key("block", "203.0.113.7/32"), "{}"]);
    m.etcdctl(&["put", &key("allow", "203.0.113.8/32"), "{}"]);
    m.etcdctl(&["put", &key("block", "203.0.113.9/32"), "{}"]);
    m.etcdctl(&["del", &key("block", "203.0.113.9/32")]);
    let revision = m.cluster.revision().expect("the revision");
    m.etcdctl(&["compact", &revision.to_string()]);
    assert_eq!(m.attacker_gets_through(), 0, "still enforced while cut off");
    assert!(
        !m.fleet_entries().contains("block/203.0.113.7/32"),
        "nothing came while cut off (the cut is real)"
    );
    for [chain, dir, addr] in &cut {
        iptables(m, &["-D", chain, "-p", "tcp", dir, addr, "-j", "DROP"]);
    }
    let back = Instant::now();
    m.wait_in_step("back after a compaction");
    eprintln!("caught up {:?} after the link came back", back.elapsed());
    assert!(
        wait_until(TIMEOUT, || link(&m.daemon)["up"] == true),
        "the link comes back up"
    );
    assert!(
        m.daemon.log().contains("compacted"),
        "the member read the whole fleet again after the compaction"
    );
}

/// From a write's return to the rule being in this member's maps (the
/// daemon lists an entry once its map write is done), over 100 blocks
/// written one after the other from another host of the lab.
#[test]
fn a_block_reaches_a_member_within_a_second() {
    let m = Member::start();
    let publisher =
        Publisher::new(&m.cluster.endpoints(), FLEET).expect("a publisher for the fleet");
    let mut client = Client::connect(m.daemon.socket()).expect("the control socket");
    let mut took = Vec::new();
    for i in 0..100u8 {
        let prefix: Prefix = format!("203.0.113.{i}").parse().expect("a prefix");
        run_in_netns(&m.lab.ns(Host::Listener), || {
            publisher.put(List::Block, &[prefix], None, None)
        })
        .expect("entering the listener's namespace")
        .expect("writing to the fleet");
        let written = Instant::now();
        let wanted = prefix.to_string();
        let arrived = wait_until(TIMEOUT, || {
            match client
                .call(
                    Request::List {
                        list: Some(List::Block),
                    },
                    &mut |_, _| {},
                )
                .expect("list")
            {
                Response::Entries { entries } => entries.iter().any(|e| e.prefix == wanted),
                other => panic!("unexpected answer {other:?}"),
            }
        });
        assert!(arrived, "{prefix} never reached the member");
        took.push(written.elapsed());
    }
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() * 99 / 100]);
    eprintln!(
        "propagation over {} blocks: p50 {p50:?}, p99 {p99:?}, max {:?}",
        took.len(),
        took[took.len() - 1]
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?} is over a second");
}

/// A member that comes back to a fleet of 100 000 rules without its last
/// revision (so it reads the whole fleet, in pages) ends holding exactly
/// the fleet's rules: what it held of the fleet that is gone is removed,
/// what is new arrives, and a rule of its own stays. How long the join
/// takes is measured by `bench --only fleet`, not here.
#[test]
fn a_joining_member_takes_a_large_fleet() {
    const RULES: u32 = 100_000;
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("fleet-join").expect("scratch directory");
    let etcd_dir = dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir).expect("etcd directory");
    let cluster = Cluster::start(
        &lab.ns(Host::Listener),
        Host::Listener.addr(Family::V4),
        &etcd_dir,
    )
    .expect("starting the etcd cluster");
    let publisher = Publisher::new(&cluster.endpoints(), FLEET).expect("a publisher");
    let publish = |prefixes: &[Prefix]| {
        run_in_netns(&lab.ns(Host::Listener), || {
            publisher.put(List::Block, prefixes, None, Some("fleet-wide"))
        })
        .expect("entering the listener's namespace")
        .expect("writing the fleet")
    };
    let paths = DaemonPaths::in_dir(&dir.join("daemon"));
    let endpoints = cluster.endpoints();
    let args = [
        "--capacity",
        "262144",
        "--etcd",
        &endpoints,
        "--fleet",
        FLEET,
    ];
    let fleet_keys = || -> BTreeSet<String> {
        cluster
            .keys(PREFIX)
            .expect("reading the keys")
            .into_iter()
            .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
            .collect()
    };

    // A first life: ten rules of the fleet, and one of the host's own.
    let old: Vec<Prefix> = (1..=10u8)
        .map(|i| format!("192.0.2.{i}").parse().expect("a prefix"))
        .collect();
    publish(&old);
    let mut daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"));
    assert!(
        wait_until(TIMEOUT, || fleet_entries(&daemon) == fleet_keys()),
        "the first rules arrive: {:?}",
        fleet_entries(&daemon)
    );
    daemon
        .cli(&["block", "--local", "203.0.113.9"])
        .ok("block --local");
    daemon.terminate(STOP_TIMEOUT).expect("stopping the daemon");
    std::fs::remove_file(paths.state_dir.join("fleet-revision")).expect("forgetting the revision");

    // Meanwhile half of them go, and 100 000 come.
    for prefix in &old[..5] {
        cluster
            .etcdctl(&["del", &key("block", &prefix.to_string())])
            .expect("deleting a rule");
    }
    let prefixes: Vec<Prefix> = (0..RULES)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            format!("10.{a}.{b}.{c}").parse().expect("a prefix")
        })
        .collect();
    publish(&prefixes);
    let daemon = DaemonProcess::start(&lab.ns(Host::Server), &paths, &args)
        .unwrap_or_else(|err| panic!("restarting the daemon: {err:#}"));
    let done = format!("{} rules read and applied", RULES + 5);
    assert!(
        wait_until(Duration::from_mins(1), || daemon.log().contains(&done)),
        "the member read the whole fleet again"
    );
    let held = fleet_entries(&daemon);
    let wanted = fleet_keys();
    assert_eq!(held.len(), wanted.len(), "as many rules as the fleet has");
    assert!(held == wanted, "the member holds exactly the fleet's rules");
    assert!(
        !held.contains("block/192.0.2.1/32") && held.contains("block/192.0.2.10/32"),
        "the rules gone from the fleet are gone, the others stay"
    );
    let out = daemon.cli(&["list", "--json"]);
    assert!(
        out.ok("list")
            .contains(r#""prefix":"203.0.113.9/32","origin":"manual""#),
        "the host's own rule stays"
    );
}
