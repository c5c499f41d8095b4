//! The control socket: a Unix stream socket speaking the JSON-lines
//! protocol of [`crate::api`]. Each connection is served on its own
//! task; a bad request gets an error reply and never disturbs another
//! client.

use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    fcntl::{AT_FDCWD, AtFlags, Flock, FlockArg},
    sys::stat::{Mode, umask},
    unistd::fchownat,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{Semaphore, mpsc},
};

use super::streams;
use crate::{
    api::{
        Envelope, ErrorKind, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Response,
        listing::{ENTRIES_HEAD, ENTRIES_SEPARATOR, ENTRIES_TAIL},
    },
    daemon::{AddRequest, Handle, Listing, Peer, Refusal, Stop, stats_view},
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

/// How long a connection may sit without a whole request line before it
/// is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(1);
/// Connections open at once from one user other than root, and from all
/// of them together; root's are not counted, so that no one else can
/// crowd root out.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;
pub const MAX_CONNECTIONS: usize = 512;
/// The longest request line from a peer that may only read (reads are
/// short), and the longest any peer sends without a big-request permit.
pub const SMALL_REQUEST_BYTES: usize = 64 << 10;
/// Request lines longer than [`SMALL_REQUEST_BYTES`] (bulk adds) read at
/// once: a bound on the memory that peers sending huge lines can take.
const BIG_REQUESTS_AT_ONCE: usize = 2;

/// The bound control socket, and the lock that says this daemon owns its
/// path (`<socket>.lock`, held while the daemon runs).
pub struct Bound {
    pub listener: UnixListener,
    pub lock: Flock<File>,
}

/// Creates the socket: owner root, mode 0660, group `group` if given (its
/// members may then read: stats, lists, top, capture; only root changes
/// anything). Its folder, and any folder above it, that does not exist yet
/// is made with mode 0750, and given to `group` too, so that its members
/// can reach the socket. Another daemon on the same path is refused (its
/// lock is held); a socket file left by a daemon that died is replaced;
/// anything else at the path is left alone and refused.
pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> anyhow::Result<Bound> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        let made: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .collect();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        if let Some(gid) = group {
            for folder in made {
                fchownat(
                    AT_FDCWD,
                    folder,
                    None,
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .with_context(|| format!("giving {} to group {gid}", folder.display()))?;
            }
        }
    }
    let lock = lock_for(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another spacefilter daemon is answering on {}; stop it or pick another --socket",
                    path.display()
                );
            }
            fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; move it away or pick another --socket",
            path.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("looking at {}", path.display())),
    }
    // Created with mode 0660 by the umask, rather than changed afterwards
    // through a path that could meanwhile be a symlink.
    let old = umask(Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = group {
        fchownat(
            AT_FDCWD,
            path,
            None,
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    Ok(Bound { listener, lock })
}

/// Takes the lock of the socket at `path` (`<path>.lock`).
fn lock_for(path: &Path) -> anyhow::Result<Flock<File>> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another spacefilter daemon holds {} (its socket is {}); stop it or pick another --socket",
            lock_path.display(),
            path.display()
        )
    })
}

/// Connections open now, per user other than root.
#[derive(Clone, Default)]
struct Open(Arc<Mutex<HashMap<u32, usize>>>);

/// A connection counted in [`Open`], until dropped.
struct Counted {
    open: Open,
    uid: u32,
}

impl Open {
    /// Counts a connection from `uid`, or says why it is one too many.
    fn admit(&self, uid: u32) -> Result<Option<Counted>, String> {
        if uid == 0 {
            return Ok(None);
        }
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let mine = open.entry(uid).or_default();
        if *mine >= MAX_CONNECTIONS_PER_UID {
            return Err(format!(
                "uid {uid} has {MAX_CONNECTIONS_PER_UID} connections open already; close some"
            ));
        }
        if total >= MAX_CONNECTIONS {
            return Err(format!(
                "{MAX_CONNECTIONS} connections are open already; try again later"
            ));
        }
        *mine += 1;
        Ok(Some(Counted {
            open: self.clone(),
            uid,
        }))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Accepts connections until `stop` turns true.
pub async fn serve(listener: UnixListener, daemon: Handle, mut stop: Stop) {
    let open = Open::default();
    let big = Arc::new(Semaphore::new(BIG_REQUESTS_AT_ONCE));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let limits = Limits { open: open.clone(), big: big.clone() };
                    tokio::spawn(connection(stream, daemon.clone(), stop.clone(), limits));
                }
                Err(err) => {
                    // Out of file descriptors, say: wait for some to close
                    // rather than spin.
                    log::warn!("accept: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// What a connection shares with the others.
struct Limits {
    open: Open,
    big: Arc<Semaphore>,
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

/// Reads one request line into `line`, within [`IDLE_TIMEOUT`]: `false`
/// when the peer hung up; `Err` (with the reply) when the line is too long
/// for the peer or takes too long. A peer that may only read gets
/// [`SMALL_REQUEST_BYTES`]; one that may write, [`MAX_REQUEST_BYTES`],
/// past the small size only while it holds one of the few big-request
/// permits.
async fn read_request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
    may_write: bool,
    big: &Semaphore,
) -> Result<bool, String> {
    let timed_out = || format!("no whole request within {}s", IDLE_TIMEOUT.as_secs());
    let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
    let small = (SMALL_REQUEST_BYTES + 1) as u64;
    let n = tokio::time::timeout_at(deadline, (&mut *read).take(small).read_until(b'\n', line))
        .await
        .map_err(|_| timed_out())?
        .map_err(|err| format!("read: {err}"))?;
    if n == 0 {
        return Ok(false);
    }
    if line.ends_with(b"\n") || line.len() <= SMALL_REQUEST_BYTES {
        // A whole line, or the peer's last one, cut by its hang-up.
        return Ok(true);
    }
    let too_long = |max: usize| format!("request longer than {max} bytes; closing the connection");
    if !may_write {
        return Err(too_long(SMALL_REQUEST_BYTES));
    }
    let _permit = tokio::time::timeout_at(deadline, big.acquire())
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| "the daemon is stopping".to_owned())?;
    let rest = (MAX_REQUEST_BYTES - line.len() + 1) as u64;
    let n = tokio::time::timeout_at(deadline, (&mut *read).take(rest).read_until(b'\n', line))
        .await
        .map_err(|_| timed_out())?
        .map_err(|err| format!("read: {err}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(too_long(MAX_REQUEST_BYTES));
    }
    // A last line without its newline, at the peer's hang-up, is a request
    // all the same.
    Ok(n > 0 || !line.is_empty())
}

async fn connection(stream: UnixStream, daemon: Handle, stop: Stop, limits: Limits) {
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
    let _counted = match limits.open.admit(peer.uid) {
        Ok(counted) => counted,
        Err(message) => {
            log::warn!("{peer}: {message}");
            let _ = send(&mut write, &error(ErrorKind::Refused, message)).await;
            return;
        }
    };
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_request(&mut read, &mut line, may_write, &limits.big).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(message) => {
                log::warn!("{peer}: {message}; connection closed");
                let _ = send(&mut write, &error(ErrorKind::BadInput, message)).await;
                return;
            }
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let parsed = Envelope::parse(text);
        if line.capacity() > SMALL_REQUEST_BYTES {
            // A bulk request's buffer goes once it is parsed, rather than
            // stay while the request is carried out, or for the next.
            line = Vec::new();
        }
        let request = match parsed {
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

/// Makes `change` fleet-wide; gives it back when this host is in no fleet
/// or it is not a change a fleet shares (it is then served as it is).
async fn fleet_wide(change: Request, daemon: &Handle, peer: Peer) -> Result<Response, Request> {
    if !change.writes() || matches!(change, Request::Fleet { .. }) {
        return Ok(error(
            ErrorKind::BadInput,
            "a fleet-wide request holds one change (an add, a remove, limits, a rule, the shield)",
        ));
    }
    let d = daemon.clone();
    let asked = change.clone();
    match tokio::task::spawn_blocking(move || d.share(&asked, peer)).await {
        Ok(Some(Ok(response))) => Ok(response),
        Ok(Some(Err(refusal))) => Ok(refusal.into()),
        Ok(None) => Err(change),
        Err(err) => Ok(error(ErrorKind::Failed, format!("internal error: {err}"))),
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

/// Bytes of entries written to the socket at a time.
const LISTING_CHUNK: usize = 256 << 10;

/// Sends the entries that `take` lists: one `entries` reply line, as
/// [`Response::Entries`] would be, but written a chunk of entries at a
/// time from the listing the daemon took; returns whether the connection
/// is still usable.
async fn list_entries(
    daemon: &Handle,
    write: &mut OwnedWriteHalf,
    take: impl FnOnce(&Handle) -> Result<Listing, Refusal> + Send + 'static,
) -> bool {
    let d = daemon.clone();
    let listing = match tokio::task::spawn_blocking(move || take(&d)).await {
        Ok(Ok(listing)) => listing,
        Ok(Err(refusal)) => return send(write, &refusal.into()).await.is_ok(),
        Err(err) => {
            let reply = error(ErrorKind::Failed, format!("internal error: {err}"));
            return send(write, &reply).await.is_ok();
        }
    };
    let mut chunk = Vec::with_capacity(LISTING_CHUNK + 1024);
    chunk.extend_from_slice(ENTRIES_HEAD);
    for (i, entry) in listing.iter().enumerate() {
        if i > 0 {
            chunk.push(ENTRIES_SEPARATOR);
        }
        entry.write_json(&mut chunk);
        if chunk.len() >= LISTING_CHUNK {
            if write.write_all(&chunk).await.is_err() {
                return false;
            }
            chunk.clear();
        }
    }
    chunk.extend_from_slice(ENTRIES_TAIL);
    write.write_all(&chunk).await.is_ok()
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
                keep_others: false,
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
            return list_entries(daemon, write, move |d| d.entries(list)).await;
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
        Request::Fleet { change } => match fleet_wide(*change, daemon, peer).await {
            Ok(response) => response,
            Err(local) => return Box::pin(handle(local, daemon, peer, write)).await,
        },
        Request::Watch { .. } | Request::Top { .. } | Request::Capture { .. } => {
            unreachable!("handled by the caller")
        }
    };
    send(write, &response).await.is_ok()
}
