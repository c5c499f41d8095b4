//! The control socket: a Unix stream socket speaking the JSON-lines
//! protocol of [`crate::api`]. Each connection is served on its own
//! task; a bad request gets an error reply and never disturbs another
//! client.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::mpsc,
};

use super::streams;
use crate::{
    api::{Envelope, ErrorKind, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Response},
    daemon::{AddRequest, Handle, Peer, Refusal, Stop, stats_view},
};

/// An unknown socket group: the caller's to fix.
#[derive(Debug, thiserror::Error)]
#[error("no group named {0:?} (for --socket-group); create it, or name an existing one")]
pub struct UnknownGroup(pub String);

/// The id of the group `name`.
pub fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => Err(UnknownGroup(name.to_owned()).into()),
        Err(err) => Err(anyhow::anyhow!("looking up group {name:?}: {err}")),
    }
}

/// Creates the socket: its folder if needed, owner root, mode 0660, group
/// `group` if given (its members may then read: stats, lists, top,
/// capture; only root changes anything). A socket file left by a daemon
/// that died is replaced; one a live daemon answers on is not.
pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another spacefilter daemon is answering on {}; stop it or pick another --socket",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    Ok(listener)
}

/// Accepts connections until `stop` turns true.
pub async fn serve(listener: UnixListener, daemon: Handle, mut stop: Stop) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, daemon.clone(), stop.clone()));
                }
                Err(err) => {
                    log::warn!("accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

pub(super) async fn send(out: &mut OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    out.write_all(&line).await
}

pub(super) fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Self {
        error(r.kind, r.message)
    }
}

async fn connection(stream: UnixStream, daemon: Handle, stop: Stop) {
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer {
            uid: cred.uid(),
            pid: cred.pid(),
        },
        Err(err) => {
            log::warn!("peer credentials: {err}");
            return;
        }
    };
    let may_write = peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_REQUEST_BYTES).unwrap_or(u64::MAX) + 1;
        let n = match (&mut read).take(limit).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(err) => {
                log::debug!("{peer}: read: {err}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        if line.len() > MAX_REQUEST_BYTES {
            let _ = send(
                &mut write,
                &error(
                    ErrorKind::BadInput,
                    format!(
                        "request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"
                    ),
                ),
            )
            .await;
            log::warn!("{peer}: oversized request; connection closed");
            return;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let request = match serde_json::from_slice::<Envelope>(text) {
            Ok(Envelope { v, request }) if v == PROTOCOL_VERSION => request,
            Ok(Envelope { v, .. }) => {
                let reply = error(
                    ErrorKind::BadInput,
                    format!(
                        "protocol version {v} is not spoken here; this daemon speaks version {PROTOCOL_VERSION}"
                    ),
                );
                if send(&mut write, &reply).await.is_err() {
                    return;
                }
                continue;
            }
            Err(err) => {
                log::warn!("{peer}: unreadable request: {err}");
                let reply = error(ErrorKind::BadInput, format!("not a valid request: {err}"));
                if send(&mut write, &reply).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if request.writes() && !may_write {
            log::warn!("{peer}: refused a change (not root)");
            let reply = error(
                ErrorKind::Refused,
                format!(
                    "uid {} may read but not change the rules; ask as root",
                    peer.uid
                ),
            );
            if send(&mut write, &reply).await.is_err() {
                return;
            }
            continue;
        }
        let keep_going = match request {
            Request::Watch { .. } | Request::Top { .. } | Request::Capture { .. } => {
                streams::serve(request, &mut read, &mut write, &daemon, stop.clone()).await;
                false
            }
            request => handle(request, &daemon, peer, &mut write).await,
        };
        if !keep_going {
            return;
        }
    }
}

/// Runs `f` on the daemon off the async threads: a large import holds the
/// core for a while, and must not stall the connections that wait for it.
async fn with_daemon(
    daemon: &Handle,
    f: impl FnOnce(&Handle) -> Result<Response, Refusal> + Send + 'static,
) -> Response {
    let daemon = daemon.clone();
    match tokio::task::spawn_blocking(move || f(&daemon)).await {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into(),
        Err(err) => error(ErrorKind::Failed, format!("internal error: {err}")),
    }
}

/// Adds entries, forwarding the progress of a large import.
async fn add(req: AddRequest, daemon: &Handle, peer: Peer, write: &mut OwnedWriteHalf) -> Response {
    // Large imports take a while: run them off the async threads and
    // forward their progress.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let daemon = daemon.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut last = Instant::now();
        daemon.add(req, peer, &mut |done, total| {
            if total >= 50_000 && (last.elapsed() >= Duration::from_millis(200) || done == total) {
                last = Instant::now();
                let _ = tx.send(Response::Progress { done, total });
            }
        })
    });
    while let Some(progress) = rx.recv().await {
        if send(write, &progress).await.is_err() {
            break;
        }
    }
    match job.await {
        Ok(Ok(changed)) => Response::Changed(changed),
        Ok(Err(refusal)) => refusal.into(),
        Err(err) => error(ErrorKind::Failed, format!("internal error: {err}")),
    }
}

/// The shield and the verified sources.
async fn admission(request: Request, daemon: &Handle, peer: Peer) -> Response {
    match request {
        Request::SetShield { shield } => {
            with_daemon(daemon, move |d| {
                d.set_shield(shield, peer).map(Response::Shield)
            })
            .await
        }
        Request::GetShield => with_daemon(daemon, |d| Ok(Response::Shield(d.shield()))).await,
        Request::Admit { addr, ttl_secs } => {
            with_daemon(daemon, move |d| {
                d.admit(addr, ttl_secs, peer).map(Response::Admitted)
            })
            .await
        }
        Request::Revoke { addr } => {
            with_daemon(daemon, move |d| {
                d.revoke(addr, peer).map(Response::Admitted)
            })
            .await
        }
        _ => unreachable!("routed by the caller"),
    }
}

/// Serves one request; returns whether the connection is still usable.
async fn handle(request: Request, daemon: &Handle, peer: Peer, write: &mut OwnedWriteHalf) -> bool {
    let response = match request {
        Request::Add {
            list,
            prefixes,
            ttl_secs,
            comment,
            origin,
            force,
        } => {
            let req = AddRequest {
                list,
                prefixes,
                ttl: ttl_secs.map(Duration::from_secs),
                comment,
                origin,
                force,
            };
            add(req, daemon, peer, write).await
        }
        Request::Remove { list, prefixes } => {
            with_daemon(daemon, move |c| {
                c.remove(list, &prefixes, peer).map(Response::Changed)
            })
            .await
        }
        Request::List { list } => {
            with_daemon(daemon, move |c| {
                c.entries(list).map(|entries| Response::Entries { entries })
            })
            .await
        }
        Request::Stats => {
            with_daemon(daemon, |c| {
                c.counters().map(|n| Response::Stats(stats_view(&n, None)))
            })
            .await
        }
        Request::Status => {
            with_daemon(daemon, |c| Ok(Response::Status(Box::new(c.status())))).await
        }
        Request::SetLimits { limits } => {
            with_daemon(daemon, move |c| {
                c.set_limits(limits, peer).map(Response::Limits)
            })
            .await
        }
        Request::GetLimits => with_daemon(daemon, |c| Ok(Response::Limits(c.limits()))).await,
        Request::RuleAdd { rule, force } => {
            with_daemon(daemon, move |c| {
                c.add_rule(rule, force, peer)
                    .map(|rules| Response::Rules { rules })
            })
            .await
        }
        Request::RuleDel { id } => {
            with_daemon(daemon, move |c| {
                c.del_rule(id, peer).map(|rules| Response::Rules { rules })
            })
            .await
        }
        Request::RuleList => {
            with_daemon(daemon, |c| {
                c.header_rules().map(|rules| Response::Rules { rules })
            })
            .await
        }
        Request::GetObserve => with_daemon(daemon, |c| Ok(Response::Observe(c.observe()))).await,
        Request::SetObserve {
            sample_every,
            sample_cap,
            debug_log,
        } => {
            with_daemon(daemon, move |c| {
                c.set_observe((sample_every, sample_cap, debug_log), peer)
                    .map(Response::Observe)
            })
            .await
        }
        Request::SetShield { .. }
        | Request::GetShield
        | Request::Admit { .. }
        | Request::Revoke { .. } => admission(request, daemon, peer).await,
        Request::Watch { .. } | Request::Top { .. } | Request::Capture { .. } => {
            unreachable!("handled by the caller")
        }
    };
    send(write, &response).await.is_ok()
}
