//! A network lab made of namespaces, for tests and the demo that need real
//! traffic through the XDP program.
//!
//! ```text
//!   server (spacefilter on eth0)   listener (legit client)   attacker
//!     198.18.0.1/16                  198.18.1.10/16            198.18.2.66/16
//!     2001:2::1/48                   2001:2:0:1::10/48         2001:2:0:2::66/48
//!        eth0                           eth0                      eth0
//!         |                              |                         |
//!        srv ------------- br0 (switch namespace) ----------------atk
//!                           |
//!                          lis
//! ```
//!
//! A fleet lab ([`Lab::fleet`]) has two more server hosts on the same
//! bridge, `server2` (`198.18.3.2`, `2001:2:0:3::2`) and `server3`
//! (`198.18.4.3`, `2001:2:0:4::3`), each with its own `eth0` for a daemon
//! of its own, and an `etcd` host (`198.18.5.20`, `2001:2:0:5::20`) for
//! the cluster they share.
//!
//! Every host sits on one on-link subnet per family, so no routing is
//! involved; the attacker alone is in `198.18.2.0/24` and
//! `2001:2:0:2::/64` ([`Host::subnet`]). The addresses come from the
//! benchmarking ranges (RFC 2544, RFC 5180) and exist only inside the lab's
//! namespaces.
//!
//! The attacker has permanent neighbour entries for the servers, as a flood
//! source would: it never needs the server's answers to neighbour
//! discovery, so while it is blocked its frames keep reaching the server's
//! XDP hook (an IPv6 attacker would otherwise go silent as soon as its
//! neighbour entry expired, its solicitations being blocked too).
//!
//! [`Lab`] is a guard: dropping it deletes the namespaces it made, and with
//! them the veths and the bridge, also when a test panics. Names hold the
//! process id and a counter, so labs in parallel tests do not collide, and
//! a lab left behind by a killed process is removed by the next one.

use std::{
    fmt,
    fs::{self, File},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::sched::{CloneFlags, setns};
use spacefilter::{AttachMode, Filter, Prefix};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Every lab namespace name starts with this.
const NAME_PREFIX: &str = "sf";
/// The hosts' interface towards the switch, in each host's namespace.
pub const IFACE: &str = "eth0";
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The unspecified address, to bind to.
    #[must_use]
    pub const fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hosts of a lab: the first three in every lab, the others in a
/// fleet lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// Runs spacefilter on [`IFACE`] and the services the clients reach.
    Server,
    /// The legitimate client.
    Listener,
    /// The client to block.
    Attacker,
    /// A second server, in a fleet lab.
    Server2,
    /// A third server, in a fleet lab.
    Server3,
    /// Runs the fleet's etcd cluster, in a fleet lab.
    Etcd,
}

impl Host {
    /// The hosts of every lab.
    pub const ALL: [Host; 3] = [Host::Server, Host::Listener, Host::Attacker];
    /// The hosts of a fleet lab.
    pub const FLEET: [Host; 6] = [
        Host::Server,
        Host::Listener,
        Host::Attacker,
        Host::Server2,
        Host::Server3,
        Host::Etcd,
    ];
    /// The server hosts of a fleet lab, each with an [`IFACE`] of its own.
    pub const SERVERS: [Host; 3] = [Host::Server, Host::Server2, Host::Server3];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Host::Server => "server",
            Host::Listener => "listener",
            Host::Attacker => "attacker",
            Host::Server2 => "server2",
            Host::Server3 => "server3",
            Host::Etcd => "etcd",
        }
    }

    /// Whether spacefilter runs on this host (in the tests that start it).
    #[must_use]
    pub const fn is_server(self) -> bool {
        matches!(self, Host::Server | Host::Server2 | Host::Server3)
    }

    /// The short tag used in namespace names and as the name of the
    /// host's port on the bridge.
    const fn tag(self) -> &'static str {
        match self {
            Host::Server => "srv",
            Host::Listener => "lis",
            Host::Attacker => "atk",
            Host::Server2 => "srv2",
            Host::Server3 => "srv3",
            Host::Etcd => "etcd",
        }
    }

    /// The host's port on the bridge, in the switch's namespace: the peer
    /// of the host's [`IFACE`].
    #[must_use]
    pub const fn switch_port(self) -> &'static str {
        self.tag()
    }

    /// The host's subnet number: the third IPv4 octet and the fourth IPv6
    /// group.
    const fn net(self) -> u8 {
        match self {
            Host::Server => 0,
            Host::Listener => 1,
            Host::Attacker => 2,
            Host::Server2 => 3,
            Host::Server3 => 4,
            Host::Etcd => 5,
        }
    }

    /// The last IPv6 group (and MAC byte), whose hex digits read as decimal
    /// make the last IPv4 octet.
    const fn host_part(self) -> u8 {
        match self {
            Host::Server => 0x01,
            Host::Listener => 0x10,
            Host::Attacker => 0x66,
            Host::Server2 => 0x02,
            Host::Server3 => 0x03,
            Host::Etcd => 0x20,
        }
    }

    /// The host's address: `198.18.0.1`, `198.18.1.10`, `198.18.2.66`, or
    /// `2001:2::1`, `2001:2:0:1::10`, `2001:2:0:2::66` (and in a fleet lab
    /// `198.18.3.2`, `198.18.4.3`, `198.18.5.20`, or `2001:2:0:3::2`,
    /// `2001:2:0:4::3`, `2001:2:0:5::20`).
    #[must_use]
    pub fn addr(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => {
                let part = self.host_part();
                let host = (part >> 4) * 10 + (part & 0xf);
                IpAddr::V4(Ipv4Addr::new(198, 18, self.net(), host))
            }
            Family::V6 => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                2,
                0,
                u16::from(self.net()),
                0,
                0,
                0,
                u16::from(self.host_part()),
            )),
        }
    }

    /// The address with the on-link prefix length configured on
    /// [`IFACE`]: `/16` or `/48`, shared by all the hosts.
    fn addr_with_len(self, family: Family) -> String {
        let len = match family {
            Family::V4 => 16,
            Family::V6 => 48,
        };
        format!("{}/{len}", self.addr(family))
    }

    /// A prefix that holds this host's address and no other host's:
    /// `198.18.2.0/24` or `2001:2:0:2::/64` for the attacker.
    #[must_use]
    pub fn subnet(self, family: Family) -> Prefix {
        let len = match family {
            Family::V4 => 24,
            Family::V6 => 64,
        };
        Prefix::truncating(self.addr(family), len)
    }

    /// The host's own address as a `/32` or `/128` prefix.
    #[must_use]
    pub fn host_prefix(self, family: Family) -> Prefix {
        Prefix::host(self.addr(family))
    }

    /// A fixed, locally administered MAC address for [`IFACE`], so that
    /// captures read easily.
    #[must_use]
    pub fn mac(self) -> String {
        format!("02:53:46:00:00:{:02x}", self.host_part())
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `f` on a new thread that has entered the network namespace `ns`
/// (a name under `/var/run/netns`), and returns its result. Sockets that
/// `f` creates belong to that namespace for their whole life, whichever
/// thread uses them later. A panic in `f` is passed on to the caller.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(scope, || {
                enter_netns(ns)?;
                Ok(f())
            })
            .context("spawning a thread")?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread (only it) into the network namespace `ns`.
/// Meant for threads made for the purpose: the thread stays there.
pub fn enter_netns(ns: &str) -> anyhow::Result<()> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {ns}"))?;
    Ok(())
}

/// Runs `ip` with `args` and returns its standard output. The child gets a
/// process group of its own, so that a Ctrl-C meant for the caller cannot
/// interrupt the lab's set-up or clean-up half way.
pub fn ip<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new("ip");
    command.args(args).process_group(0);
    let output = command
        .output()
        .with_context(|| format!("running {command:?} (is iproute2 installed?)"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Splits a command line written as one string.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Serializes `ip netns add`: the first one in a boot makes
/// `/var/run/netns` a shared mount, which is racy between processes that
/// start at once.
static NETNS_ADD: Mutex<()> = Mutex::new(());
/// Numbers the labs of this process.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The network namespaces of one lab, deleted when dropped.
pub struct Lab {
    id: String,
    /// The hosts on the bridge.
    hosts: Vec<Host>,
    /// The namespaces made so far, in order of creation.
    namespaces: Vec<String>,
}

impl Lab {
    /// Builds the lab: four namespaces (the switch and [`Host::ALL`]), the
    /// bridge, the veths, the addresses; returns once every interface is
    /// up and every address usable.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_hosts(&Host::ALL)
    }

    /// Builds a fleet lab: the hosts of [`Host::FLEET`], three servers
    /// among them, on one bridge.
    pub fn fleet() -> anyhow::Result<Self> {
        Self::with_hosts(&Host::FLEET)
    }

    fn with_hosts(hosts: &[Host]) -> anyhow::Result<Self> {
        remove_stale_labs();
        let id = format!(
            "{NAME_PREFIX}{:x}-{:x}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        // Interface names are limited to 15 bytes; namespace names are
        // not, but short names are easier to type in `ip netns exec`.
        ensure!(id.len() + 4 <= 15, "lab id {id} is too long");
        let mut lab = Self {
            id,
            hosts: hosts.to_vec(),
            namespaces: Vec::new(),
        };
        lab.build()
            .with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        // The switch: a namespace with a bridge and no IPv6 of its own, so
        // that it adds no traffic of its own.
        let switch = self.add_namespace("sw")?;
        for key in ["all", "default"] {
            sysctl(&switch, &format!("net/ipv6/conf/{key}/disable_ipv6"), "1")?;
        }
        ip(words(&format!(
            "-n {switch} link add {BRIDGE} type bridge stp_state 0 forward_delay 0 \
             mcast_snooping 0"
        )))?;
        ip(words(&format!("-n {switch} link set {BRIDGE} up")))?;

        for host in self.hosts.clone() {
            let ns = self.add_namespace(host.tag())?;
            // Addresses are usable at once: no duplicate address detection,
            // also for the link-local ones. Dual-stack sockets bound to
            // `[::]` also receive IPv4 (the default, made explicit).
            for key in ["all", "default"] {
                sysctl(&ns, &format!("net/ipv6/conf/{key}/accept_dad"), "0")?;
            }
            sysctl(&ns, "net/ipv6/bindv6only", "0")?;
            ip(words(&format!("-n {ns} link set lo up")))?;
            ip(words(&format!(
                "link add {IFACE} address {mac} netns {ns} type veth peer name {port} netns \
                 {switch}",
                mac = host.mac(),
                port = host.tag(),
            )))?;
            ip(words(&format!(
                "-n {switch} link set {port} master {BRIDGE} up",
                port = host.tag()
            )))?;
            ip(words(&format!(
                "-n {ns} addr add {} dev {IFACE}",
                host.addr_with_len(Family::V4)
            )))?;
            ip(words(&format!(
                "-n {ns} addr add {} dev {IFACE} nodad",
                host.addr_with_len(Family::V6)
            )))?;
            ip(words(&format!("-n {ns} link set {IFACE} up")))?;
        }

        // The attacker floods whatever the servers answer: see the module
        // documentation.
        let attacker = self.ns(Host::Attacker);
        for server in self.hosts.iter().filter(|h| h.is_server()) {
            for family in Family::ALL {
                ip(words(&format!(
                    "-n {attacker} neigh replace {} lladdr {} dev {IFACE} nud permanent",
                    server.addr(family),
                    server.mac()
                )))?;
            }
        }
        self.wait_ready(Duration::from_secs(10))
    }

    /// Creates the namespace `<id>-<tag>` and records it for clean-up.
    fn add_namespace(&mut self, tag: &str) -> anyhow::Result<String> {
        let name = format!("{}-{tag}", self.id);
        {
            let _serial = NETNS_ADD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ip(["netns", "add", &name])?;
        }
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// Waits until every veth has its carrier, every bridge port forwards
    /// and no address is tentative.
    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for &host in &self.hosts {
                let ns = self.ns(host);
                let link = ip(words(&format!("-n {ns} -o link show dev {IFACE}")))?;
                if !link.contains("state UP") {
                    waiting.push(format!("{host}: {IFACE} is not up"));
                }
                let tentative = ip(words(&format!(
                    "-n {ns} -o addr show dev {IFACE} tentative"
                )))?;
                if !tentative.trim().is_empty() {
                    waiting.push(format!("{host}: tentative address {}", tentative.trim()));
                }
            }
            let ports = bridge_ports(&self.switch_ns())?;
            for &host in &self.hosts {
                if !ports
                    .lines()
                    .any(|l| l.contains(&format!(" {}@", host.tag())) && l.contains("forwarding"))
                {
                    waiting.push(format!("switch: port {} is not forwarding", host.tag()));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the lab did not come up: {}", waiting.join("; "));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lab's id, `sf<pid>-<n>`: every namespace name starts with it.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hosts on the lab's bridge.
    #[must_use]
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The name of `host`'s network namespace.
    #[must_use]
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.id, host.tag())
    }

    /// The name of the switch's network namespace.
    #[must_use]
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.id)
    }

    /// The lab's namespaces that exist now.
    #[must_use]
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|ns| Path::new(NETNS_DIR).join(ns).exists())
            .cloned()
            .collect()
    }

    /// Runs `f` in `host`'s namespace: see [`run_in_netns`].
    pub fn run_in<T, F>(&self, host: Host, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        run_in_netns(&self.ns(host), f)
    }

    /// Runs `ip -n <host's namespace> args...`.
    pub fn ip(&self, host: Host, args: &str) -> anyhow::Result<String> {
        let ns = self.ns(host);
        ip(["-n", ns.as_str()].into_iter().chain(words(args)))
    }

    /// Attaches `filter` to the server's [`IFACE`] and returns the mode
    /// that took. Attaching resolves the interface and talks netlink in
    /// the calling thread's namespace, so it runs on a thread inside the
    /// server's.
    pub fn attach(&self, filter: &mut Filter, mode: AttachMode) -> anyhow::Result<AttachMode> {
        Ok(self.run_in(Host::Server, || filter.attach(IFACE, mode))??)
    }

    /// Detaches `filter` from the server's [`IFACE`], from inside the
    /// server's namespace.
    pub fn detach(&self, filter: &mut Filter) -> anyhow::Result<()> {
        Ok(self.run_in(Host::Server, || filter.detach(IFACE))??)
    }

    /// Forgets every learned neighbour (ARP and NDP) on the server and the
    /// clients, so that the next packets must resolve them again. The
    /// attacker's permanent entries stay.
    pub fn flush_neighbours(&self) -> anyhow::Result<()> {
        for &host in &self.hosts {
            self.ip(host, &format!("neigh flush dev {IFACE}"))?;
        }
        Ok(())
    }

    /// The interface statistics of `host`'s [`IFACE`] (`ip -s link`), for
    /// failure messages.
    #[must_use]
    pub fn link_stats(&self, host: Host) -> String {
        self.ip(host, &format!("-s link show dev {IFACE}"))
            .unwrap_or_else(|err| format!("{err:#}"))
    }

    /// Deletes the namespaces now and reports what could not be deleted.
    /// Dropping the lab does the same, reporting on standard error.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        // The switch goes last: deleting a host's namespace destroys its
        // veth and with it the peer on the bridge.
        while let Some(ns) = self.namespaces.pop() {
            if let Err(err) = ip(["netns", "delete", &ns])
                && Path::new(NETNS_DIR).join(&ns).exists()
            {
                failures.push(format!("{err:#}"));
            }
        }
        ensure!(
            failures.is_empty(),
            "cleaning up lab {}: {}",
            self.id,
            failures.join("; ")
        );
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            eprintln!("{err:#}");
        }
    }
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("hosts", &self.hosts)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

/// Writes `value` to `/proc/sys/<key>` as seen from namespace `ns` (the
/// network sysctls are per namespace, resolved for the opening thread).
fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    run_in_netns(ns, || fs::write(&path, value))?
        .with_context(|| format!("setting {} in {ns}", path.display()))
}

/// `bridge -o link` in namespace `ns`.
fn bridge_ports(ns: &str) -> anyhow::Result<String> {
    use std::os::unix::process::CommandExt as _;
    let output = Command::new("bridge")
        .args(["-n", ns, "-o", "link", "show"])
        .process_group(0)
        .output()
        .context("running bridge (from iproute2)")?;
    ensure!(
        output.status.success(),
        "bridge -n {ns} link show failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the namespaces of labs whose process is gone (killed before its
/// guards could run). Labs of live processes, this one included, stay.
fn remove_stale_labs() {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = lab_owner(&name) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _serial = NETNS_ADD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Another process may be removing it too: ignore failures.
            let _ = ip(["netns", "delete", &name]);
        }
    }
}

/// The process id in a lab namespace name, `sf<pid hex>-<n hex>-<tag>`.
fn lab_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.split('-');
    let (pid, n, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !(tag == "sw" || Host::FLEET.iter().any(|h| h.tag() == tag))
        || u32::from_str_radix(n, 16).is_err()
    {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn addresses_and_subnets() {
        assert_eq!(Host::Server.addr(Family::V4).to_string(), "198.18.0.1");
        assert_eq!(Host::Listener.addr(Family::V4).to_string(), "198.18.1.10");
        assert_eq!(Host::Attacker.addr(Family::V4).to_string(), "198.18.2.66");
        assert_eq!(Host::Server.addr(Family::V6).to_string(), "2001:2::1");
        assert_eq!(
            Host::Listener.addr(Family::V6).to_string(),
            "2001:2:0:1::10"
        );
        assert_eq!(
            Host::Attacker.addr(Family::V6).to_string(),
            "2001:2:0:2::66"
        );
        assert_eq!(
            Host::Attacker.subnet(Family::V4).to_string(),
            "198.18.2.0/24"
        );
        assert_eq!(
            Host::Attacker.subnet(Family::V6).to_string(),
            "2001:2:0:2::/64"
        );
        assert_eq!(Host::Server2.addr(Family::V4).to_string(), "198.18.3.2");
        assert_eq!(Host::Server3.addr(Family::V6).to_string(), "2001:2:0:4::3");
        assert_eq!(Host::Etcd.addr(Family::V4).to_string(), "198.18.5.20");
        assert_eq!(Host::Etcd.addr(Family::V6).to_string(), "2001:2:0:5::20");
        for family in Family::ALL {
            let attacker = Host::Attacker.subnet(family);
            for host in Host::FLEET {
                assert_eq!(
                    attacker.contains(host.addr(family)),
                    host == Host::Attacker,
                    "{host}"
                );
            }
        }
        let macs: BTreeSet<String> = Host::FLEET.iter().map(|h| h.mac()).collect();
        assert_eq!(macs.len(), Host::FLEET.len(), "one MAC address each");
    }

    #[test]
    fn stale_lab_names() {
        assert_eq!(lab_owner("sf1f40-0-srv"), Some(0x1f40));
        assert_eq!(lab_owner("sf1f40-a-sw"), Some(0x1f40));
        assert_eq!(lab_owner("sf1f40-a-srv3"), Some(0x1f40));
        assert_eq!(lab_owner("sf1f40-a-etcd"), Some(0x1f40));
        assert_eq!(lab_owner("sf1f40-a-other"), None);
        assert_eq!(lab_owner("sfx-0-srv"), None);
        assert_eq!(lab_owner("server"), None);
    }
}
