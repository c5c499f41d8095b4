//! A real etcd cluster (Debian's `etcd-server`), of three members unless
//! told otherwise, in a lab namespace, each member with its own data
//! directory under a scratch directory and its own ports on the namespace's
//! address; `etcdctl` runs against it in the same namespace. Nothing of the
//! host's etcd is used. The members may serve `https://` and ask for
//! client certificates ([`Options::tls`]).

use std::{
    fs::{self, File},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::{pki::Pki, traffic::wait_until};

/// How long the cluster may take to elect a leader and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member's client and peer ports.
const PORTS: [(u16, u16); 3] = [(2379, 2380), (12379, 12380), (22379, 22380)];

/// How the cluster is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many members (at most three).
    pub members: usize,
    /// Serve the clients over TLS with the server certificate of this
    /// PKI, and take only clients with a certificate its CA signed
    /// (`--client-cert-auth`); `etcdctl` uses its client certificate.
    pub tls: Option<Pki>,
    /// More arguments for every member (`--auth-token-ttl=2`, ...).
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            members: PORTS.len(),
            tls: None,
            args: Vec::new(),
        }
    }
}

/// A running cluster; its members are killed when dropped (their logs
/// printed first if the test is failing).
pub struct Cluster {
    ns: String,
    addr: IpAddr,
    dir: PathBuf,
    members: Vec<Option<Child>>,
    tls: Option<Pki>,
    /// `etcdctl --user`, once authentication is on.
    user: Option<String>,
}

impl Cluster {
    /// Starts three members in network namespace `ns`, on `addr`, with
    /// their data under `dir`; returns once every one answers.
    pub fn start(ns: &str, addr: IpAddr, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, dir, &Options::default())
    }

    /// Starts the members `options` says, as [`Self::start`] does.
    pub fn start_with(
        ns: &str,
        addr: IpAddr,
        dir: &Path,
        options: &Options,
    ) -> anyhow::Result<Self> {
        for command in ["etcd", "etcdctl"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {command}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{command} is missing: the fleet tests run a real etcd cluster; install it with \
                 `cargo xtask setup` (Debian's etcd-server and etcd-client)"
            );
        }
        let mut cluster = Self {
            ns: ns.to_owned(),
            addr,
            dir: dir.to_owned(),
            members: Vec::new(),
            tls: options.tls.clone(),
            user: None,
        };
        let ports = &PORTS[..options.members];
        let scheme = cluster.scheme();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{addr}:{peer}"))
            .collect();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = File::create(dir.join(format!("m{i}.log")))?;
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, "etcd"]);
            if let Some(pki) = &options.tls {
                command
                    .arg(format!("--cert-file={}", pki.server_cert.display()))
                    .arg(format!("--key-file={}", pki.server_key.display()))
                    .arg(format!("--trusted-ca-file={}", pki.ca.display()))
                    .arg("--client-cert-auth");
            }
            let child = command
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={scheme}://{addr}:{client}"))
                .arg(format!(
                    "--advertise-client-urls={scheme}://{addr}:{client}"
                ))
                .arg(format!("--listen-peer-urls=http://{addr}:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://{addr}:{peer}"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .args([
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=spacefilter-tests",
                    // A lost leader is replaced within a second.
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                ])
                .args(&options.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting etcd")?;
            cluster.members.push(Some(child));
        }
        let healthy = wait_until(START_TIMEOUT, || {
            cluster.etcdctl(&["endpoint", "health"]).is_ok()
        });
        ensure!(
            healthy,
            "the etcd cluster did not answer within {START_TIMEOUT:?}:\n{}",
            cluster.logs()
        );
        Ok(cluster)
    }

    /// The members' client URLs, comma-separated, as `--etcd` takes them.
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.endpoints_of(&(0..self.members.len()).collect::<Vec<_>>())
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn endpoints_of(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("{}://{}:{}", self.scheme(), self.addr, PORTS[i].0))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members still running.
    fn alive(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_some())
            .collect()
    }

    /// Runs `etcdctl` as `user` (`NAME:PASSWORD`) from now on: once
    /// authentication is on, etcd answers no one else.
    pub fn log_in(&mut self, user: &str) {
        self.user = Some(user.to_owned());
    }

    /// Runs `etcdctl` against the running members; its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns, "etcdctl"])
            .arg(format!("--endpoints={}", self.endpoints_of(&self.alive())))
            .args(["--command-timeout=5s"]);
        if let Some(pki) = &self.tls {
            command
                .arg(format!("--cacert={}", pki.ca.display()))
                .arg(format!("--cert={}", pki.client_cert.display()))
                .arg(format!("--key={}", pki.client_key.display()));
        }
        if let Some(user) = &self.user {
            command.arg(format!("--user={user}"));
        }
        let out = command
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl")?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The member that leads now.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
        let statuses: Vec<Value> = serde_json::from_str(&out)?;
        let alive = self.alive();
        for (at, status) in statuses.iter().enumerate() {
            let s = &status["Status"];
            if s["header"]["member_id"] == s["leader"] {
                return Ok(alive[at]);
            }
        }
        anyhow::bail!("no leader among {out}")
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The current revision.
    pub fn revision(&self) -> anyhow::Result<u64> {
        let out = self.etcdctl(&["get", "/", "-w", "json"])?;
        let answer: Value = serde_json::from_str(&out)?;
        answer["header"]["revision"]
            .as_u64()
            .context("a revision in etcdctl's answer")
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--keys-only"])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// How many lines of the members' logs hold `words`.
    #[must_use]
    pub fn log_lines_with(&self, words: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(words)).count()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members.len() {
            out.push_str("--- etcd m");
            out.push_str(&i.to_string());
            out.push_str(" ---\n");
            out.push_str(
                &fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default(),
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            let logs = self.logs();
            // The tail is what matters.
            let tail = logs
                .get(logs.len().saturating_sub(20_000)..)
                .unwrap_or(&logs);
            eprintln!("{tail}--- end of the etcd logs ---");
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
