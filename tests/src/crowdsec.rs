//! A real CrowdSec local API (Debian's `crowdsec`, its agent off) in a
//! lab namespace, with a configuration and a database of its own in a
//! scratch directory: nothing of the host's `/etc/crowdsec` or its service
//! is used or touched. `cscli` runs against it in the same namespace.

use std::{
    fs::{self, File},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, ensure};

use crate::{netns::run_in_netns, pki::Pki, traffic::wait_until};

/// Where the local API listens, inside its namespace.
pub const LAPI_PORT: u16 = 8080;
/// How long the local API may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running local API; stopped when dropped (its log printed first if the
/// test is failing).
pub struct Lapi {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
    /// Whether it serves https.
    tls: bool,
}

/// Fails the test unless the CrowdSec commands are installed.
fn require_crowdsec() {
    for command in ["crowdsec", "cscli"] {
        assert!(
            which(command),
            "{command} is missing: the CrowdSec tests run a real local API; install it with \
             `cargo xtask setup` (Debian's crowdsec package)"
        );
    }
}

fn which(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lapi {
    /// Writes a configuration under `dir` and starts the local API in
    /// network namespace `ns`, listening on `127.0.0.1:`[`LAPI_PORT`];
    /// returns once it accepts connections.
    pub fn start(ns: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, dir, None)
    }

    /// [`Self::start`], serving https with the server certificate of
    /// `tls` (made for 127.0.0.1) if given.
    pub fn start_with(ns: &str, dir: &Path, tls: Option<&Pki>) -> anyhow::Result<Self> {
        require_crowdsec();
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        let config = format!(
            "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: {dir}/
  data_dir: {data}/
  simulation_path: {dir}/simulation.yaml
  hub_dir: {dir}/hub/
  index_path: {dir}/hub/.index.json
cscli:
  output: human
db_config:
  type: sqlite
  db_path: {data}/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {dir}/local_api_credentials.yaml
  server:
    listen_uri: 127.0.0.1:{LAPI_PORT}
    profiles_path: {dir}/profiles.yaml
{tls}prometheus:
  enabled: false
",
            dir = dir.display(),
            data = data.display(),
            tls = tls.map_or_else(String::new, |pki| format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            )),
        );
        fs::write(dir.join("config.yaml"), config)?;
        fs::write(dir.join("simulation.yaml"), "simulation: false\n")?;
        fs::write(
            dir.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )?;
        fs::create_dir_all(dir.join("hub"))?;
        fs::write(dir.join("hub/.index.json"), "{}\n")?;
        let mut lapi = Self {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            child: None,
            tls: tls.is_some(),
        };
        // The machine cscli logs in as to add and delete decisions.
        lapi.cscli(&[
            "machines",
            "add",
            "spacefilter-tests",
            "--auto",
            "--force",
            "-f",
            &dir.join("local_api_credentials.yaml").display().to_string(),
        ])?;
        lapi.spawn()?;
        Ok(lapi)
    }

    /// Starts the local API again after [`Self::stop`], on the same
    /// database.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("lapi.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "crowdsec", "-c"])
            .arg(self.dir.join("config.yaml"))
            .args(["-no-cs", "-no-capi"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting crowdsec")?;
        self.child = Some(child);
        let up = wait_until(START_TIMEOUT, || {
            run_in_netns(&self.ns, || {
                TcpStream::connect(("127.0.0.1", LAPI_PORT)).is_ok()
            })
            .unwrap_or(false)
        });
        ensure!(
            up,
            "the local API did not listen within {START_TIMEOUT:?}; its log:\n{}",
            self.log()
        );
        Ok(())
    }

    /// The URL a bouncer in the same namespace reaches it at.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{LAPI_PORT}")
    }

    /// Runs `cscli` against this local API; returns its standard output.
    /// A write that meets the local API's database busy (`SQLite`'s "database
    /// is locked", while the API writes a bouncer's pull) is tried again.
    pub fn cscli(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = || {
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "cscli", "-c"])
                .arg(self.dir.join("config.yaml"))
                .args(args)
                .stdin(Stdio::null())
                .output()
                .context("running cscli")
        };
        let mut out = run()?;
        for _ in 0..5 {
            if out.status.success()
                || !String::from_utf8_lossy(&out.stderr).contains("database is locked")
            {
                break;
            }
            out = run()?;
        }
        ensure!(
            out.status.success(),
            "cscli {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers a bouncer and writes its key to `path`.
    pub fn add_bouncer(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = key.trim();
        ensure!(!key.is_empty(), "cscli bouncers add printed no key");
        fs::write(path, format!("{key}\n"))?;
        Ok(())
    }

    /// Stops the local API (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let gone = wait_until(Duration::from_secs(5), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !gone {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// What it logged.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("lapi.log")).unwrap_or_default()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- crowdsec log ---\n{}--- end ---", self.log());
        }
        self.stop();
    }
}
