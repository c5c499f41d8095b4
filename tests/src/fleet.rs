//! A fleet of spacefilter hosts in a fleet lab ([`Lab::fleet`]): a real
//! three-member etcd cluster on the lab's etcd host, and a daemon on each
//! server host that joins, attached to that host's own [`IFACE`] and
//! following the cluster with `--etcd ... --fleet lab`, a UDP sink beside
//! it. The attacker and the listener reach every server; the listener's
//! datagrams are the positive control at each.
//!
//! [`IFACE`]: crate::netns::IFACE

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use spacefilter::{
    fleet::publish::Publisher,
    net::{List, Prefix},
};

use crate::{
    daemon::{CliOutput, DaemonPaths, DaemonProcess, Scratch, cli_in},
    etcd::Cluster,
    netns::{Family, Host, Lab},
    traffic::{self, UdpSink, send_udp, wait_until},
};

/// The fleet's name.
pub const FLEET: &str = "lab";
/// Where its rules are in etcd.
pub const PREFIX: &str = "/spacefilter/lab/";
/// How long a member may take to come up on the fleet's link, or a change
/// to reach a member's maps.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams sent from each client by one probe.
pub const PROBE: u64 = 20;

/// A daemon on one server host of the fleet, and its sink.
pub struct Member {
    pub host: Host,
    pub daemon: DaemonProcess,
    pub sink: UdpSink,
}

impl Member {
    /// The `fleet` link of its `status`.
    #[must_use]
    pub fn link(&self) -> Value {
        let out = self.daemon.cli(&["status", "--json"]);
        let status: Value = serde_json::from_str(out.ok("status")).expect("status JSON");
        status["links"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["kind"] == "fleet").cloned())
            .unwrap_or(Value::Null)
    }

    /// Its entries of origin fleet, as `list/prefix`.
    #[must_use]
    pub fn fleet_entries(&self) -> BTreeSet<String> {
        fleet_entries(&self.daemon)
    }
}

/// The lab, the cluster and the members. Fields drop in order: the
/// daemons first, the cluster, the lab, the files.
pub struct Fleet {
    members: Vec<Member>,
    pub cluster: Cluster,
    pub lab: Lab,
    dir: Scratch,
    /// Daemons started so far, each with a directory of its own.
    started: usize,
}

impl Fleet {
    /// Builds a fleet lab and starts the cluster on its etcd host; no
    /// member yet (see [`Self::join`]). Its files are in a scratch
    /// directory named for `tag`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let lab = Lab::fleet().context("building the fleet lab")?;
        let dir = Scratch::new(tag)?;
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir)?;
        let cluster = Cluster::start(&lab.ns(Host::Etcd), Host::Etcd.addr(Family::V4), &etcd_dir)
            .context("starting the etcd cluster")?;
        Ok(Self {
            members: Vec::new(),
            cluster,
            lab,
            dir,
            started: 0,
        })
    }

    /// Starts a daemon on server `host`, with a state of its own (empty)
    /// and the arguments `extra` besides the fleet's; returns once it
    /// answers on its socket, and its link is up.
    pub fn join(&mut self, host: Host, extra: &[&str]) -> anyhow::Result<&Member> {
        self.spawn(host, extra)?;
        let member = self.member(host);
        let up = wait_until(TIMEOUT, || member.link()["up"] == true);
        ensure!(up, "{host}: the link to etcd comes up: {}", member.link());
        Ok(member)
    }

    /// [`Self::join`], without waiting for the link: returns once the
    /// daemon answers on its socket.
    pub fn spawn(&mut self, host: Host, extra: &[&str]) -> anyhow::Result<&Member> {
        ensure!(host.is_server(), "{host} is not a server host");
        self.leave(host);
        let endpoints = self.cluster.endpoints();
        let mut args = vec!["--etcd", &endpoints, "--fleet", FLEET];
        args.extend_from_slice(extra);
        let paths = DaemonPaths::in_dir(&self.dir.join(format!("{host}-{}", self.started)));
        self.started += 1;
        let daemon = DaemonProcess::start(&self.lab.ns(host), &paths, &args)
            .with_context(|| format!("starting the daemon on {host}"))?;
        let sink = UdpSink::start(&self.lab, host)?;
        self.members.push(Member { host, daemon, sink });
        Ok(self.member(host))
    }

    /// Stops the daemon on `host`, if one runs.
    pub fn leave(&mut self, host: Host) {
        self.members.retain(|m| m.host != host);
    }

    /// The member on `host`.
    ///
    /// # Panics
    /// If no daemon runs there.
    #[must_use]
    pub fn member(&self, host: Host) -> &Member {
        self.members
            .iter()
            .find(|m| m.host == host)
            .unwrap_or_else(|| panic!("no member on {host}"))
    }

    /// Runs `spacefilter args...` on `host` against its daemon's socket,
    /// in its namespace: a verb typed there, which reaches etcd as the
    /// daemon does.
    #[must_use]
    pub fn verb(&self, host: Host, args: &[&str]) -> CliOutput {
        cli_in(&self.lab.ns(host), self.member(host).daemon.socket(), args)
    }

    /// [`Self::verb`], which must succeed; its standard output.
    #[expect(
        clippy::must_use_candidate,
        reason = "an assertion first; the output is for those who need it"
    )]
    pub fn verb_ok(&self, host: Host, args: &[&str]) -> String {
        let out = self.verb(host, args);
        out.ok(&format!("spacefilter {args:?} on {host}"));
        out.stdout
    }

    /// Sends [`PROBE`] datagrams from the attacker to `host`'s sink, then
    /// as many from the listener, and waits for all of the listener's (the
    /// positive control); returns how many of the attacker's arrived.
    pub fn attacker_gets_through(&self, host: Host) -> anyhow::Result<u64> {
        traffic::attacker_gets_through(&self.lab, host, &self.member(host).sink, PROBE, TIMEOUT)
    }

    /// Sends `count` datagrams from the attacker to `host`'s sink, `gap`
    /// apart (a stream over a rate limit).
    pub fn attacker_sends(&self, host: Host, count: u64, gap: Duration) -> anyhow::Result<u64> {
        let to = SocketAddr::new(host.addr(Family::V4), self.member(host).sink.port());
        send_udp(&self.lab, Host::Attacker, to, count, gap)
    }

    /// The fleet's rules in etcd, as `list/prefix`.
    pub fn fleet_keys(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .cluster
            .keys(PREFIX)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
            .collect())
    }

    /// Waits until every member holds exactly the fleet's rules.
    pub fn wait_in_step(&self, what: &str) -> anyhow::Result<()> {
        for member in &self.members {
            let mut last = (BTreeSet::new(), BTreeSet::new());
            let mut failed = None;
            let same = wait_until(TIMEOUT, || match self.fleet_keys() {
                Ok(keys) => {
                    last = (member.fleet_entries(), keys);
                    last.0 == last.1
                }
                Err(err) => {
                    failed = Some(err);
                    true
                }
            });
            if let Some(err) = failed {
                return Err(err.context("reading the fleet's keys"));
            }
            ensure!(
                same,
                "{what}: {} holds {:?}, the fleet {:?}",
                member.host,
                last.0,
                last.1
            );
        }
        Ok(())
    }

    /// Writes rules to the fleet as a verb would, from the etcd host;
    /// returns the revision they were written at.
    pub fn publish(
        &self,
        list: List,
        prefixes: &[Prefix],
        comment: Option<&str>,
    ) -> anyhow::Result<i64> {
        let publisher =
            Publisher::new(&self.cluster.endpoints(), FLEET).map_err(anyhow::Error::msg)?;
        self.lab
            .run_in(Host::Etcd, || publisher.put(list, prefixes, None, comment))?
            .map_err(anyhow::Error::msg)
    }

    /// Deletes every rule of the fleet.
    pub fn clear(&self) -> anyhow::Result<()> {
        self.cluster.etcdctl(&["del", "--prefix", PREFIX])?;
        Ok(())
    }
}

/// `daemon`'s entries of origin fleet, as `list/prefix`.
#[must_use]
pub fn fleet_entries(daemon: &DaemonProcess) -> BTreeSet<String> {
    let out = daemon.cli(&["list", "--json"]);
    serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .into_iter()
        .filter(|e| e["origin"] == "fleet")
        .map(|e| {
            format!(
                "{}/{}",
                e["list"].as_str().unwrap_or("?"),
                e["prefix"].as_str().unwrap_or("?")
            )
        })
        .collect()
}
