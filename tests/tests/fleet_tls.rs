//! A daemon in a fleet whose etcd is locked as a production cluster is: a
//! real etcd (Debian's `etcd-server`, one member) in the lab's listener
//! namespace serving `https://` only to clients with a certificate of its
//! CA (`--client-cert-auth`), or with authentication on. A member with
//! the right certificate, or the right user and password, follows the
//! fleet's keys and drops the attacker's datagrams at XDP; one without
//! them says why in `status` and keeps enforcing what it has; options that
//! cannot work stop `run` before anything starts.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use spacefilter::{
    fleet::{Login, etcd::Settings, publish::Publisher, tls::TlsFiles},
    net::{List, Prefix},
};
use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, STOP_TIMEOUT, Scratch, cli},
    etcd::{Cluster, Options},
    netns::{Family, Host, Lab, run_in_netns},
    pki::Pki,
    require_root,
    traffic::{UdpSink, attacker_gets_through, wait_until},
};

const FLEET: &str = "lab";
const PREFIX: &str = "/spacefilter/lab/";
/// How long a change may take to reach the maps, or a link to change.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams sent from each host by one probe.
const PROBE: u64 = 20;
/// The attacker's address as a fleet key's prefix.
const ATTACKER: &str = "198.18.2.66/32";

fn key(list: &str, prefix: &str) -> String {
    format!("{PREFIX}{list}/{prefix}")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

/// The daemon's fleet link, as `status` shows it.
fn link(daemon: &DaemonProcess) -> Value {
    let out = daemon.cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(out.ok("status")).expect("status JSON");
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["kind"] == "fleet").cloned())
        .unwrap_or(Value::Null)
}

/// Whether the daemon lists `prefix` with origin fleet.
fn holds(daemon: &DaemonProcess, prefix: &str) -> bool {
    let out = daemon.cli(&["list", "--json"]);
    serde_json::from_str::<Vec<Value>>(out.ok("list"))
        .expect("list JSON")
        .iter()
        .any(|e| e["prefix"] == prefix && e["origin"] == "fleet")
}

/// A lab with etcd in the listener's namespace and a UDP sink on the
/// server, where the daemon runs (started and stopped by each step).
/// Fields drop in order: the cluster, the sink, the lab, the directory.
struct Fleet {
    cluster: Cluster,
    sink: UdpSink,
    lab: Lab,
    paths: DaemonPaths,
    dir: Scratch,
}

impl Fleet {
    fn start(tag: &str, options: impl FnOnce(&Path) -> Options) -> Self {
        require_root();
        let lab = Lab::new().expect("building the lab");
        let dir = Scratch::new(tag).expect("scratch directory");
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir).expect("etcd directory");
        let cluster = Cluster::start_with(
            &lab.ns(Host::Listener),
            Host::Listener.addr(Family::V4),
            &etcd_dir,
            &options(dir.path()),
        )
        .expect("starting etcd");
        let sink = UdpSink::start(&lab, Host::Server).expect("UDP sink");
        Self {
            cluster,
            sink,
            lab,
            paths: DaemonPaths::in_dir(&dir.join("daemon")),
            dir,
        }
    }

    /// Starts the daemon with `--etcd` and `--fleet` and `args`; the
    /// state directory is the same each time, so a daemon started again
    /// finds what the last one journaled.
    fn daemon(&self, args: &[&str]) -> DaemonProcess {
        let endpoints = self.cluster.endpoints();
        let mut all = vec!["--capacity", "1024", "--etcd", &endpoints, "--fleet", FLEET];
        all.extend_from_slice(args);
        DaemonProcess::start(&self.lab.ns(Host::Server), &self.paths, &all)
            .unwrap_or_else(|err| panic!("starting the daemon: {err:#}"))
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

    /// `spacefilter block ADDR` on the member: the daemon writes it to
    /// etcd with its own TLS and login, and answers once it holds it.
    fn verb_writes_to_etcd(&self, daemon: &DaemonProcess, addr: &str) {
        daemon
            .cli(&["block", addr, "--comment", "typed here"])
            .ok("block through the fleet");
        let keys = self.cluster.keys(PREFIX).expect("reading the keys");
        let written = key("block", &format!("{addr}/32"));
        assert!(keys.contains(&written), "{written} is in etcd: {keys:?}");
        assert!(holds(daemon, &format!("{addr}/32")), "and in force here");
    }

    /// Writes a block to the fleet from the listener's host, as
    /// `settings` say (TLS, login), through the library's [`Publisher`].
    fn publish(&self, settings: Settings, prefix: &str) {
        let publisher = Publisher::from_settings(settings);
        let prefix: Prefix = prefix.parse().expect("a prefix");
        run_in_netns(&self.lab.ns(Host::Listener), || {
            publisher.put(List::Block, &[prefix], None, Some("published"))
        })
        .expect("entering the listener's namespace")
        .unwrap_or_else(|err| panic!("writing to the fleet: {err}"));
    }
}

/// Waits for the link to come up.
fn link_up(daemon: &DaemonProcess) {
    assert!(
        wait_until(TIMEOUT, || link(daemon)["up"] == true),
        "the link to etcd comes up: {}",
        link(daemon)
    );
}

/// Waits for the link to go down with an error that contains `why`;
/// returns the error.
fn link_down(daemon: &DaemonProcess, why: &str) -> String {
    let mut last = Value::Null;
    let down = wait_until(TIMEOUT, || {
        last = link(daemon);
        last["up"] == false && last["last_error"].as_str().is_some_and(|e| e.contains(why))
    });
    assert!(down, "the link is down, saying {why:?}: {last}");
    eprintln!("the link is down: {}", last["last_error"]);
    last["last_error"].as_str().unwrap_or_default().to_owned()
}

fn settings(fleet: &Fleet) -> Settings {
    Settings::new(&fleet.cluster.endpoints(), FLEET, fleet.dir.path()).expect("fleet settings")
}

#[test]
fn a_member_follows_etcd_over_tls() {
    let mut pki = None;
    let fleet = Fleet::start("fleet-tls", |dir| {
        let made = Pki::generate(&dir.join("pki"), Host::Listener.addr(Family::V4))
            .expect("making the certificates");
        pki = Some(made.clone());
        Options {
            members: 1,
            tls: Some(made),
            args: Vec::new(),
        }
    });
    let pki = pki.expect("the certificates");
    assert!(
        fleet.cluster.endpoints().starts_with("https://"),
        "{}",
        fleet.cluster.endpoints()
    );
    let mut daemon = fleet.daemon(&[
        "--etcd-cacert",
        path(&pki.ca),
        "--etcd-cert",
        path(&pki.client_cert),
        "--etcd-key",
        path(&pki.client_key),
    ]);
    link_up(&daemon);
    assert_eq!(fleet.attacker_gets_through(), PROBE, "before any rule");
    fleet.etcdctl(&["put", &key("block", ATTACKER), r#"{"comment":"flood"}"#]);
    assert!(
        wait_until(TIMEOUT, || holds(&daemon, ATTACKER)),
        "the block put over TLS reaches the member"
    );
    assert_eq!(fleet.attacker_gets_through(), 0, "blocked by the fleet");
    // The library's writer speaks the same TLS.
    let tls = TlsFiles {
        cacert: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    fleet.publish(
        settings(&fleet).with_tls(&tls).expect("TLS settings"),
        "203.0.113.9/32",
    );
    assert!(
        wait_until(TIMEOUT, || holds(&daemon, "203.0.113.9/32")),
        "a block the Publisher wrote over TLS reaches the member"
    );
    fleet.verb_writes_to_etcd(&daemon, "203.0.113.10");
    daemon.terminate(STOP_TIMEOUT).expect("stopping the daemon");

    // The CA alone: etcd wants a client certificate and refuses the
    // handshake; the member keeps what it has.
    let daemon = fleet.daemon(&["--etcd-cacert", path(&pki.ca)]);
    let error = link_down(&daemon, "certificate");
    assert!(
        error.contains("--etcd-cert"),
        "the error says what to give: {error}"
    );
    assert_eq!(
        fleet.attacker_gets_through(),
        0,
        "still blocked while etcd refuses the member"
    );
    assert!(holds(&daemon, ATTACKER), "the fleet's block stays");
    drop(daemon);

    // No CA: the webpki roots do not vouch for the lab's CA.
    let daemon = fleet.daemon(&[
        "--etcd-cert",
        path(&pki.client_cert),
        "--etcd-key",
        path(&pki.client_key),
    ]);
    let error = link_down(&daemon, "UnknownIssuer");
    assert!(
        error.contains("--etcd-cacert"),
        "the error says what to give: {error}"
    );
    assert_eq!(fleet.attacker_gets_through(), 0, "still blocked");
}

/// Runs `spacefilter run` with `args`, which it must refuse with exit
/// status 2 and an error that contains `says`, having started nothing.
fn refused(dir: &Scratch, args: &[&str], says: &str) {
    let state = dir.join("state");
    let socket = dir.join("sock");
    let mut all = vec!["run", "--iface", "eth0", "--state-dir", path(&state)];
    all.extend_from_slice(args);
    let out = cli(&socket, &all);
    out.expect_code(2, &format!("run {args:?}"));
    assert!(
        out.stderr.contains(says),
        "run {args:?}: the error says {says:?}: {}",
        out.stderr
    );
    assert!(
        !socket.exists() && !state.exists(),
        "run {args:?} started nothing"
    );
}

/// An etcd member's URL nothing listens on: refusals come before any
/// connection.
const HTTPS: &str = "https://127.0.0.1:2379";

/// What the refusal tests name: a scratch directory, certificates made in
/// it, a path to no file, and a bouncer key file.
fn refusal_files(name: &str) -> (Scratch, Pki, PathBuf, PathBuf) {
    let dir = Scratch::new(name).expect("scratch directory");
    let pki = Pki::generate(&dir.join("pki"), "127.0.0.1".parse().expect("an address"))
        .expect("making the certificates");
    let missing = dir.join("no-such.pem");
    let bouncer_key = dir.join("bouncer.key");
    std::fs::write(&bouncer_key, "0123456789abcdef\n").expect("writing a bouncer key");
    (dir, pki, missing, bouncer_key)
}

#[test]
fn tls_and_login_options_that_cannot_work_are_refused() {
    let (dir, pki, missing, bouncer_key) = refusal_files("fleet-tls-bad");
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let bouncer_key = path(&bouncer_key);
    let https = HTTPS;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--etcd", https, "--etcd-cacert", path(&missing)],
            "--etcd-cacert",
        ),
        (
            &["--etcd", https, "--etcd-cacert", key],
            "holds no certificate",
        ),
        (
            &["--etcd", https, "--etcd-cacert", "/dev/null"],
            "--etcd-cacert",
        ),
        (&["--etcd", https, "--etcd-cert", cert], "--etcd-key"),
        (&["--etcd", https, "--etcd-key", key], "--etcd-cert"),
        (
            &[
                "--etcd",
                https,
                "--etcd-cert",
                cert,
                "--etcd-key",
                path(&pki.server_key),
            ],
            "--etcd-key",
        ),
        (
            &["--etcd", https, "--etcd-cert", ca, "--etcd-key", ca],
            "--etcd-key",
        ),
        (
            &["--etcd", "http://127.0.0.1:2379", "--etcd-cacert", ca],
            "https://",
        ),
        (
            &["--etcd", https, "--etcd-user", "sf"],
            "--etcd-password-file",
        ),
        (
            &[
                "--etcd",
                https,
                "--etcd-user",
                "sf",
                "--etcd-password-file",
                path(&missing),
            ],
            "--etcd-password-file",
        ),
        (&["--etcd-cacert", ca], "--etcd"),
        (
            &[
                "--crowdsec",
                "https://127.0.0.1:8080",
                "--crowdsec-key-file",
                bouncer_key,
                "--crowdsec-cacert",
                key,
            ],
            "--crowdsec-cacert",
        ),
        (
            &[
                "--crowdsec",
                "http://127.0.0.1:8080",
                "--crowdsec-key-file",
                bouncer_key,
                "--crowdsec-cacert",
                ca,
            ],
            "https://",
        ),
    ];
    for (args, says) in cases {
        refused(&dir, args, says);
    }
}

#[test]
fn a_member_logs_in_to_etcd() {
    // Tokens lapse after 2 s: the watch, opened again every few seconds,
    // finds its token gone and logs in again.
    let mut fleet = Fleet::start("fleet-auth", |_| Options {
        members: 1,
        tls: None,
        args: vec!["--auth-token-ttl=2".to_owned()],
    });
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "fleet"],
        &[
            "role",
            "grant-permission",
            "fleet",
            "--prefix=true",
            "readwrite",
            PREFIX,
        ],
        &["user", "add", "sf:sfpw"],
        &["user", "grant-role", "sf", "fleet"],
        &["auth", "enable"],
    ] {
        fleet.etcdctl(args);
    }
    fleet.cluster.log_in("root:rootpw");
    let password = fleet.dir.join("etcd-password");
    std::fs::write(&password, "sfpw\n").expect("writing the password file");
    let mut daemon = fleet.daemon(&["--etcd-user", "sf", "--etcd-password-file", path(&password)]);
    link_up(&daemon);
    fleet.etcdctl(&["put", &key("block", ATTACKER), "{}"]);
    assert!(
        wait_until(TIMEOUT, || holds(&daemon, ATTACKER)),
        "the block reaches the member logged in as sf"
    );
    assert_eq!(fleet.attacker_gets_through(), 0, "blocked by the fleet");
    assert!(
        wait_until(TIMEOUT, || daemon
            .log()
            .matches("logged in to etcd as sf")
            .count()
            >= 2),
        "the member logs in again once its token lapsed: {}",
        daemon.log()
    );
    fleet.etcdctl(&["put", &key("block", "203.0.113.7/32"), "{}"]);
    assert!(
        wait_until(TIMEOUT, || holds(&daemon, "203.0.113.7/32")),
        "a block put after the token lapsed reaches the member"
    );
    fleet.publish(
        settings(&fleet).with_login(Login::read("sf", &password).expect("the password")),
        "203.0.113.8/32",
    );
    assert!(
        wait_until(TIMEOUT, || holds(&daemon, "203.0.113.8/32")),
        "a block the Publisher wrote logged in reaches the member"
    );
    fleet.verb_writes_to_etcd(&daemon, "203.0.113.10");
    daemon.terminate(STOP_TIMEOUT).expect("stopping the daemon");

    std::fs::write(&password, "not the password\n").expect("writing the password file");
    let daemon = fleet.daemon(&["--etcd-user", "sf", "--etcd-password-file", path(&password)]);
    let error = link_down(&daemon, "authentication failed");
    assert!(
        error.contains("--etcd-password-file"),
        "the error says what to check: {error}"
    );
    assert!(
        daemon.log().contains("authentication failed"),
        "the log says it too: {}",
        daemon.log()
    );
    // etcd logs every refused login: the member does not try again at
    // once, nor every second (each try would go to the next member).
    let refusals = || fleet.cluster.log_lines_with("invalid password");
    let first = refusals();
    assert!(first >= 1, "etcd logged the refused login");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        refusals() <= first + 1,
        "{} logins refused in 5 s after the first {first}",
        refusals() - first
    );
    assert!(
        daemon.log().contains("trying again every 30 s"),
        "the log says when the member tries again: {}",
        daemon.log()
    );
    assert_eq!(
        fleet.attacker_gets_through(),
        0,
        "still blocked while the login fails"
    );
    drop(daemon);

    // No login at all, where etcd wants one.
    let daemon = fleet.daemon(&[]);
    let error = link_down(&daemon, "user name is empty");
    assert!(
        error.contains("--etcd-user"),
        "the error says what to give: {error}"
    );
}

/// The same settings from the config file's `[fleet]` and `[crowdsec]`
/// tables: refused as the flags are.
#[test]
fn link_tables_that_cannot_work_are_refused() {
    let (dir, pki, missing, bouncer_key) = refusal_files("fleet-tls-tables");
    let cert = path(&pki.client_cert);
    let bouncer_key = path(&bouncer_key);
    let https = HTTPS;
    let config = dir.join("spacefilter.toml");
    let tables: &[(String, &str)] = &[
        (
            format!("[fleet]\netcd = \"{https}\"\ncert = \"{cert}\"\n"),
            "[fleet]: cert needs key",
        ),
        (
            format!("[fleet]\netcd = \"{https}\"\nuser = \"sf\"\n"),
            "[fleet]: user needs password_file",
        ),
        (
            format!(
                "[fleet]\netcd = \"{https}\"\ncacert = \"{}\"\n",
                path(&missing)
            ),
            "config [fleet]: cacert ",
        ),
        (
            format!("[fleet]\netcd = \"{https}\"\nshare_auto_block = true\n"),
            "unknown field `share_auto_block`",
        ),
        (
            format!(
                "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\nkey_file = \"{bouncer_key}\"\n\
                 interval = \"soon\"\n"
            ),
            "[crowdsec]: interval \"soon\"",
        ),
        (
            "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\n".to_owned(),
            "missing field `key_file`",
        ),
        (
            format!(
                "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\nkey_file = \"{}\"\n",
                path(&missing)
            ),
            "config [crowdsec]: key_file ",
        ),
    ];
    for (text, says) in tables {
        std::fs::write(&config, text).expect("writing the config file");
        refused(&dir, &["--config", path(&config)], says);
    }
}
