//! The daemon's transports: the control socket ([`control`]) with its
//! streams ([`streams`]), and the Prometheus endpoint ([`metrics`]). They
//! reach the daemon through its [`Handle`] only; [`Plan::start`] is what
//! [`crate::daemon::run`] is given to start them.

pub mod control;
pub mod metrics;
mod streams;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;

use crate::daemon::{Handle, Stop, Transports};

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The control socket.
    pub socket: PathBuf,
    /// The group that may read over the socket (`None`: root only).
    pub socket_group: Option<String>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Settings checked against the system (the socket group exists), before
/// the daemon loads anything.
pub struct Plan {
    settings: Settings,
    group: Option<nix::unistd::Gid>,
}

impl Plan {
    /// Looks up the socket group.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let group = settings
            .socket_group
            .as_deref()
            .map(control::group_id)
            .transpose()?;
        Ok(Self { settings, group })
    }

    /// Binds the control socket and the metrics endpoint and serves them
    /// until `stop`.
    pub fn start(self, daemon: Handle, stop: Stop) -> anyhow::Result<Transports> {
        let Settings {
            socket,
            socket_group: _,
            metrics,
        } = self.settings;
        // The metrics endpoint first: a port in use then leaves no socket
        // file behind.
        let metrics = metrics
            .map(|addr| {
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        tokio::net::TcpListener::from_std(l)
                    })
                    .with_context(|| format!("binding the metrics endpoint {addr}"))?;
                log::info!("serving Prometheus metrics on http://{addr}/metrics");
                anyhow::Ok(listener)
            })
            .transpose()?;
        raise_fd_limit();
        let control::Bound { listener, lock } = control::bind(&socket, self.group)?;
        log::info!("listening on {}", socket.display());
        let mut tasks = vec![tokio::spawn(control::serve(
            listener,
            daemon.clone(),
            stop.clone(),
        ))];
        if let Some(listener) = metrics {
            tasks.push(tokio::spawn(metrics::serve(listener, daemon, stop)));
        }
        Ok(Transports {
            tasks,
            cleanup: Box::new(move || {
                if let Err(err) = std::fs::remove_file(&socket) {
                    log::warn!("removing {}: {err}", socket.display());
                }
                // Held until the socket is gone.
                drop(lock);
            }),
        })
    }
}

/// Raises the soft limit on open files to the hard one: each client holds
/// a descriptor, and the default soft limit (1024) is not much on a busy
/// host.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                log::warn!(
                    "raising the open-file limit to {}: {}",
                    limit.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
