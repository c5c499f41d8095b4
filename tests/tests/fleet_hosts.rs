//! Three spacefilter hosts in one fleet: a real three-member etcd cluster
//! on the lab's etcd host, and a daemon on each of three server hosts,
//! attached to its own interface. A verb typed on host 1 writes to etcd,
//! and the attacker's datagrams are dropped at XDP on all three hosts, or
//! let through again, while the listener's arrive at each (the positive
//! control); a timed block expires everywhere.

use std::time::Duration;

use serde_json::Value;
use spacefilter_tests::{
    fleet::{Fleet, PROBE, TIMEOUT},
    netns::{Family, Host},
    require_root,
    traffic::wait_until,
};

/// The three members, their links up, the attacker through at each; each
/// daemon also gets `extra`.
fn three_hosts_with(extra: &[&str]) -> Fleet {
    require_root();
    let mut fleet = Fleet::new("fleet-hosts").expect("the fleet lab and its cluster");
    let mut args = vec!["--capacity", "1024"];
    args.extend_from_slice(extra);
    for host in Host::SERVERS {
        fleet
            .join(host, &args)
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
    for host in Host::SERVERS {
        assert_eq!(through(&fleet, host), PROBE, "{host}: before any rule");
    }
    fleet
}

fn three_hosts() -> Fleet {
    three_hosts_with(&[])
}

fn through(fleet: &Fleet, host: Host) -> u64 {
    fleet
        .attacker_gets_through(host)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// Waits until `host` holds the attacker's block as a fleet entry, or
/// holds none when `held` is false.
fn wait_held(fleet: &Fleet, host: Host, held: bool, within: Duration) {
    let entry = format!("block/{}", Host::Attacker.host_prefix(Family::V4));
    let member = fleet.member(host);
    assert!(
        wait_until(within, || member.fleet_entries().contains(&entry) == held),
        "{host}: the fleet's block of the attacker {}: {:?}",
        if held { "arrives" } else { "goes" },
        member.fleet_entries()
    );
}

/// The attacker's entry as `host` lists it.
fn entry(fleet: &Fleet, host: Host) -> Value {
    let prefix = Host::Attacker.host_prefix(Family::V4).to_string();
    let out = fleet.member(host).daemon.cli(&["list", "--json"]);
    serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .into_iter()
        .find(|e| e["prefix"] == prefix.as_str())
        .unwrap_or_else(|| panic!("{host} does not list {prefix}: {}", out.stdout))
}

#[test]
fn a_block_typed_on_host_1_holds_on_all_three() {
    let fleet = three_hosts();
    let attacker = Host::Attacker.addr(Family::V4).to_string();

    let out = fleet.verb_ok(
        Host::Server,
        &["block", &attacker, "--comment", "typed on 1"],
    );
    assert!(out.contains("written to the fleet"), "{out}");
    // The verb returns once host 1 holds it; the others follow the same
    // watch.
    assert_eq!(
        through(&fleet, Host::Server),
        0,
        "blocked at once on host 1"
    );
    for host in [Host::Server2, Host::Server3] {
        wait_held(&fleet, host, true, TIMEOUT);
        assert_eq!(through(&fleet, host), 0, "{host}: blocked by the fleet");
        let entry = entry(&fleet, host);
        assert_eq!(
            entry["comment"], "typed on 1",
            "{host}: the comment came along"
        );
        assert_eq!(entry["origin"], "fleet", "{host}: {entry}");
    }
    fleet
        .wait_in_step("a block typed on host 1")
        .unwrap_or_else(|err| panic!("{err:#}"));

    fleet.verb_ok(Host::Server, &["unblock", &attacker]);
    assert_eq!(
        through(&fleet, Host::Server),
        PROBE,
        "through at once on host 1"
    );
    for host in [Host::Server2, Host::Server3] {
        wait_held(&fleet, host, false, TIMEOUT);
        assert_eq!(
            through(&fleet, host),
            PROBE,
            "{host}: through after unblock"
        );
    }
    fleet
        .wait_in_step("unblocked on host 1")
        .unwrap_or_else(|err| panic!("{err:#}"));
}

#[test]
fn a_timed_block_expires_on_every_host() {
    let fleet = three_hosts();
    let attacker = Host::Attacker.addr(Family::V4).to_string();
    fleet.verb_ok(Host::Server, &["block", &attacker, "--ttl", "3s"]);
    for host in Host::SERVERS {
        wait_held(&fleet, host, true, TIMEOUT);
        let entry = entry(&fleet, host);
        let left = entry["expires_in_secs"].as_u64();
        assert!(
            left.is_some_and(|secs| secs <= 3),
            "{host}: a timed entry, as long as the lease: {entry}"
        );
        assert_eq!(
            through(&fleet, host),
            0,
            "{host}: blocked while the lease lasts"
        );
    }
    for host in Host::SERVERS {
        wait_held(&fleet, host, false, Duration::from_secs(10));
        assert_eq!(
            through(&fleet, host),
            PROBE,
            "{host}: through once it expired"
        );
    }
    // etcd drops the lease's key on its own clock.
    fleet
        .wait_in_step("the lease ran out in etcd too")
        .unwrap_or_else(|err| panic!("{err:#}"));
}

/// What `spacefilter ARGS --json` prints on `host`.
fn shown(fleet: &Fleet, host: Host, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = fleet.member(host).daemon.cli(&args);
    serde_json::from_str(out.ok("show")).expect("JSON")
}

/// The limits set on host 1 and a rule added on host 2 are in force on
/// every host; an auto-block made on host 2 (`--share-auto-blocks`) drops
/// the attacker at hosts 1 and 3 too, while host 2 keeps it as its own.
#[test]
fn settings_and_auto_blocks_reach_every_host() {
    let fleet = three_hosts_with(&["--share-auto-blocks"]);
    fleet.verb_ok(
        Host::Server,
        &[
            "limit",
            "set",
            "--pps",
            "200",
            "--burst",
            "50",
            "--block-after",
            "1s",
            "--block-ttl",
            "60s",
        ],
    );
    for host in Host::SERVERS {
        assert!(
            wait_until(TIMEOUT, || shown(&fleet, host, &["limit", "show"])["pps"]
                == 200),
            "{host}: the fleet's limits: {}",
            shown(&fleet, host, &["limit", "show"])
        );
    }
    fleet.verb_ok(
        Host::Server2,
        &[
            "rule", "add", "--action", "drop", "--proto", "udp", "--dport", "9",
        ],
    );
    for host in Host::SERVERS {
        assert!(
            wait_until(
                TIMEOUT,
                || shown(&fleet, host, &["rule", "list"])[0]["dst_ports"]
                    == serde_json::json!([9, 9])
            ),
            "{host}: the fleet's rule: {}",
            shown(&fleet, host, &["rule", "list"])
        );
    }

    // The attacker runs over its limit at host 2 alone.
    fleet
        .attacker_sends(Host::Server2, 4000, Duration::from_micros(500))
        .unwrap_or_else(|err| panic!("{err:#}"));
    for host in [Host::Server, Host::Server3] {
        wait_held(&fleet, host, true, TIMEOUT);
        assert_eq!(
            through(&fleet, host),
            0,
            "{host}: blocked by host 2's auto-block"
        );
    }
    let own = entry(&fleet, Host::Server2);
    assert_eq!(
        own["origin"], "auto",
        "host 2 keeps its own auto-block: {own}"
    );
    assert!(
        !fleet
            .member(Host::Server2)
            .fleet_entries()
            .iter()
            .any(|e| e.ends_with(&Host::Attacker.host_prefix(Family::V4).to_string())),
        "and not again as the fleet's"
    );
}
