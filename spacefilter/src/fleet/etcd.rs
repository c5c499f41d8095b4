//! The fleet's rules in etcd: every member watches the fleet's prefix and
//! makes its allow and block lists follow it, as entries of origin
//! `fleet`.
//!
//! The keys are `/spacefilter/<fleet>/<list>/<prefix>` (`.../block/198.18.2.0/24`),
//! each value a JSON object (`{"comment": "..."}`, or `{}`); a key with a
//! lease is a timed entry, lasting as long as the lease has left. etcd is
//! spoken to through its v3 JSON gateway (`/v3/kv/range`, `/v3/watch`,
//! `/v3/lease/timetolive`), which every etcd 3.4 serves on its client URLs.
//!
//! The last revision applied is kept in the state directory
//! (`fleet-revision`, written atomically), and the watch resumes after
//! it. When etcd has compacted past it (or there is none) the member reads
//! the whole prefix and applies the difference: what is new first, then
//! removes what is gone, so no rule it holds meanwhile lapses. While no
//! endpoint answers, the member keeps every rule it has (fail-static),
//! tries again with a growing pause, and its link shows the outage.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::BufRead as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    client::{Client, Login},
    gateway::{b64_encode, int, json_of, range_end},
    keys::{FleetRule, Kv, rule_of},
    member::{Member, member_id},
    pages,
    publish::Publisher,
    settings,
};
use crate::{
    api::{ErrorKind, LinkView, Origin},
    daemon::{AddRequest, Handle, Peer, Stop},
    net::{List, Prefix},
};

/// How long a connection may take to open: a member that does not answer
/// by then is passed over for the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a read may take (an idle watch times out, and is opened again
/// from where it was: a link that died silently is found out this way).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stop waits for the follower to notice it.
const QUIT_GRACE: Duration = Duration::from_secs(1);
/// Prefixes per request to the daemon.
const CHUNK: usize = 16 * 1024;
/// Pages read ahead of the one being applied.
const PAGES_AHEAD: usize = 2;
/// The longest pause between two tries while etcd cannot be reached: a
/// member cut off catches up within about this long of coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The pause after etcd refused the member (its login, or its rights):
/// trying again sooner would not help, and etcd logs every refusal.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);

/// Whether `why` a session failed is etcd refusing the member, which only
/// its administrator can put right.
fn refused_by_etcd(why: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "permission denied",
    ]
    .iter()
    .any(|words| why.contains(words))
}

/// Sleeps for `pause`, or until `quit` is set.
fn pause_unless(quit: &AtomicBool, pause: Duration) {
    let until = Instant::now() + pause;
    while !quit.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Where the fleet is and which it is.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Client URLs of the cluster's members (`http://10.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The fleet's name: its keys are under `/spacefilter/<fleet>/`.
    pub fleet: String,
    /// Where the last revision applied is kept.
    pub revision_file: PathBuf,
    /// Whether this host's auto-blocks are written to the fleet.
    pub share_auto_blocks: bool,
    /// TLS for `https://` members, from `--etcd-cacert`, `--etcd-cert`
    /// and `--etcd-key` (`None`: the webpki roots, no client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The user to log in as, when etcd has authentication on.
    pub login: Option<Login>,
}

impl Settings {
    /// Checks the endpoints and the fleet's name; the error says what to
    /// fix.
    pub fn new(endpoints: &str, fleet: &str, state_dir: &std::path::Path) -> Result<Self, String> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("--etcd: give the members' client URLs, e.g. http://10.0.0.1:2379".into());
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(format!(
                "--etcd {bad:?}: each member is a URL, e.g. http://10.0.0.1:2379"
            ));
        }
        if fleet.is_empty()
            || !fleet
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "--fleet {fleet:?}: a name of letters, digits, '-', '_' and '.'"
            ));
        }
        Ok(Self {
            endpoints,
            fleet: fleet.to_owned(),
            revision_file: state_dir.join("fleet-revision"),
            share_auto_blocks: false,
            tls: None,
            login: None,
        })
    }

    pub(super) fn prefix(&self) -> String {
        format!("/spacefilter/{}/", self.fleet)
    }
}

/// Follows the fleet until `stop`.
pub async fn follow(settings: Settings, handle: Handle, mut stop: Stop) {
    log::info!(
        "following fleet {} at {}",
        settings.fleet,
        settings.endpoints.join(",")
    );
    let quit = Arc::new(AtomicBool::new(false));
    let member = Arc::new(Member::new(
        Publisher::from_settings(settings.clone()),
        handle.clone(),
        member_id(&settings),
    ));
    handle.join_fleet(member.clone());
    if settings.share_auto_blocks {
        let blocks = handle.auto_blocks();
        let member = member.clone();
        std::thread::spawn(move || member.share_auto_blocks(&blocks));
    }
    // A thread of its own, not the blocking pool: the runtime's end waits
    // for the pool's tasks, and a watch waiting for news would hold the
    // daemon's stop for up to READ_TIMEOUT.
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    {
        let (own, handle, quit) = (settings.clone(), handle.clone(), quit.clone());
        let spawned = std::thread::Builder::new()
            .name("fleet".to_owned())
            .spawn(move || {
                run(&own, &handle, &member, &quit);
                let _ = done.send(());
            });
        if let Err(err) = spawned {
            log::error!("fleet {}: the follower cannot start: {err}", settings.fleet);
            return;
        }
    }
    let _ = stop.wait_for(|stopped| *stopped).await;
    quit.store(true, Ordering::Relaxed);
    // A change being applied finishes; a watch waiting for news is left to
    // the process's exit (the revision is saved only after a change is
    // applied, so nothing is lost either way).
    if tokio::time::timeout(QUIT_GRACE, finished).await.is_err() {
        log::info!(
            "fleet {}: not waiting for the watch to time out",
            settings.fleet
        );
    }
}

/// The follower's loop, on a thread of its own: the watch is a blocking
/// read.
fn run(settings: &Settings, handle: &Handle, member: &Member, quit: &AtomicBool) {
    // No connection is kept for another request: a pooled one comes back
    // without its read timeout, and a watch opened on it while the member
    // is cut off would wait for its answer for ever.
    let client = Client::new(
        settings,
        ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .max_idle_connections(0),
    );
    let mut link = LinkView {
        kind: "fleet".to_owned(),
        name: settings.fleet.clone(),
        url: settings.endpoints.join(","),
        ..LinkView::default()
    };
    // Known from the start, so that the verbs write to the fleet even
    // before the first answer.
    handle.report_link(link.clone());
    let mut last_ok: Option<Instant> = None;
    let mut revision = fs::read_to_string(&settings.revision_file)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok());
    let mut backoff = Duration::from_millis(100);
    let mut at = 0;
    while !quit.load(Ordering::Relaxed) {
        let endpoint = &settings.endpoints[at % settings.endpoints.len()];
        let since = revision;
        let mut follower = Follower {
            client: &client,
            endpoint,
            settings,
            handle,
            member,
            quit,
            leases: BTreeMap::new(),
        };
        let mut progressed = |rev: i64, link: &mut LinkView| {
            revision = Some(rev);
            save_revision(&settings.revision_file, rev);
            last_ok = Some(Instant::now());
            link.up = true;
            link.last_error = None;
            link.revision = u64::try_from(rev).unwrap_or(0);
            link.lag_secs = Some(0);
            link.entries = handle.count_of(Origin::Fleet);
            handle.report_link(link.clone());
            member.progressed(rev);
        };
        match follower.session(since, &mut |rev| progressed(rev, &mut link)) {
            Ok(()) => {
                // A watch that went quiet and is opened again: the link is
                // well, and says so.
                backoff = Duration::from_millis(100);
                last_ok = Some(Instant::now());
                link.up = true;
                link.last_error = None;
                link.lag_secs = Some(0);
                handle.report_link(link.clone());
            }
            Err(why) => {
                let refused = refused_by_etcd(&why);
                if link.up || link.last_error.is_none() {
                    let again = if refused {
                        format!("; trying again every {} s", REFUSED_BACKOFF.as_secs())
                    } else {
                        String::new()
                    };
                    log::warn!("fleet: {endpoint}: {why}; the rules stay as they are{again}");
                }
                link.up = false;
                link.last_error = Some(format!("{endpoint}: {why}"));
                link.lag_secs = last_ok.map(|t| t.elapsed().as_secs());
                handle.report_link(link.clone());
                at += 1;
                if refused {
                    pause_unless(quit, REFUSED_BACKOFF);
                } else {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Writes the revision beside the journal, atomically (a crash leaves the
/// old one or the new one, and an old one only means a longer replay).
fn save_revision(path: &std::path::Path, revision: i64) {
    let tmp = path.with_extension("tmp");
    if let Err(err) = fs::write(&tmp, format!("{revision}\n")).and_then(|()| fs::rename(&tmp, path))
    {
        log::warn!("fleet: keeping the revision in {}: {err}", path.display());
    }
}

struct Follower<'a> {
    client: &'a Client,
    endpoint: &'a str,
    settings: &'a Settings,
    handle: &'a Handle,
    member: &'a Member,
    quit: &'a AtomicBool,
    /// The TTL each lease had when first asked, and when, by id.
    leases: BTreeMap<i64, (Instant, Option<Duration>)>,
}

impl Follower<'_> {
    fn post(&self, path: &str, body: &Value) -> Result<ureq::Response, String> {
        self.client.post_to(self.endpoint, path, body)
    }

    /// Reads the whole prefix, applies it, then watches from after it;
    /// or, given a revision, watches from after it straight away.
    fn session(
        &mut self,
        since: Option<i64>,
        progressed: &mut dyn FnMut(i64),
    ) -> Result<(), String> {
        let revision = if let Some(rev) = since {
            rev
        } else {
            let rev = self.resync()?;
            progressed(rev);
            rev
        };
        match self.watch(revision, progressed)? {
            WatchEnd::Compacted(at) => {
                log::info!(
                    "fleet: etcd compacted its history to revision {at}, past {revision}: reading the whole fleet again"
                );
                let rev = self.resync()?;
                progressed(rev);
                Ok(())
            }
            WatchEnd::Idle | WatchEnd::Quit => Ok(()),
        }
    }

    /// Reads every rule of the fleet and makes the lists follow; returns
    /// the revision read at. The keys come in pages, all read at the
    /// revision of the first, and each page is applied while the next is
    /// read: etcd's gateway takes most of the time, writing the JSON.
    fn resync(&mut self) -> Result<i64, String> {
        let started = Instant::now();
        let prefix = self.settings.prefix();
        let reader = Follower {
            leases: BTreeMap::new(),
            ..*self
        };
        let (sender, pages) = std::sync::mpsc::sync_channel(PAGES_AHEAD);
        let mut wanted = BTreeSet::new();
        let read = std::thread::scope(|scope| {
            let reading = scope.spawn(move || {
                let post = |body: &Value| reader.post("/v3/kv/range", body);
                pages::read(&post, &reader.settings.prefix(), reader.quit, &sender)
            });
            // New and changed rules first: nothing the fleet still holds
            // lapses.
            for kvs in pages {
                for kv in &kvs {
                    if let Some((name, value)) = settings::read(kv, &prefix) {
                        settings::apply(self.handle, &self.settings.fleet, &name, value);
                    }
                }
                let rules: Vec<FleetRule> = kvs
                    .iter()
                    .filter_map(|kv| rule_of(kv, &prefix))
                    .filter(|rule| !self.own(rule))
                    .collect();
                self.put_many(&rules);
                wanted.extend(rules.iter().map(|r| (r.list, r.prefix)));
            }
            reading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let (revision, read) = read?;
        let held = self
            .handle
            .entries(None)
            .map_err(|r| format!("reading the lists: {}", r.message))?;
        for list in [List::Allow, List::Block] {
            let gone: Vec<String> = held
                .iter()
                .filter(|e| e.origin == Origin::Fleet && e.list == list)
                .filter(|e| !wanted.contains(&(list, e.prefix)))
                .map(|e| e.prefix.to_string())
                .collect();
            for chunk in gone.chunks(CHUNK) {
                if let Err(refusal) = self.handle.remove(list, chunk, peer()) {
                    log::warn!(
                        "fleet: removing {} gone {} entries: {}",
                        chunk.len(),
                        list.name(),
                        refusal.message
                    );
                }
            }
        }
        log::info!(
            "fleet {}: {} rules read and applied at revision {revision} in {:?} ({read} keys)",
            self.settings.fleet,
            wanted.len(),
            started.elapsed()
        );
        Ok(revision)
    }

    /// Watches from after `revision` until the watch ends.
    fn watch(
        &mut self,
        revision: i64,
        progressed: &mut dyn FnMut(i64),
    ) -> Result<WatchEnd, String> {
        let prefix = self.settings.prefix();
        let reader = self.client.watch(
            self.endpoint,
            &json!({"create_request": {
                "key": b64_encode(prefix.as_bytes()),
                "range_end": range_end(&prefix),
                "start_revision": (revision + 1).to_string(),
                "progress_notify": true,
            }}),
        )?;
        for line in reader.lines() {
            if self.quit.load(Ordering::Relaxed) {
                return Ok(WatchEnd::Quit);
            }
            let line = match line {
                Ok(line) => line,
                // An idle watch times out on read: open it again from where
                // it was.
                Err(err)
                    if err.kind() == std::io::ErrorKind::TimedOut
                        || err.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    return Ok(WatchEnd::Idle);
                }
                Err(err) => return Err(format!("watching: {err}")),
            };
            let message: Value = serde_json::from_str(&line).map_err(|err| err.to_string())?;
            if let Some(error) = message.get("error") {
                return Err(format!("watch: {error}"));
            }
            let result = &message["result"];
            let compacted = int(&result["compact_revision"]);
            if compacted > 0 {
                return Ok(WatchEnd::Compacted(compacted));
            }
            if result["canceled"] == true {
                return Err(format!(
                    "the watch was cancelled: {}",
                    result["cancel_reason"]
                ));
            }
            let events: Vec<Value> = result["events"].as_array().cloned().unwrap_or_default();
            // The answer that creates the watch carries the newest revision,
            // before the events up to it: only events, and progress notes,
            // say how far this member is.
            let mut last = if events.is_empty() && result["created"] != true {
                int(&result["header"]["revision"])
            } else {
                0
            };
            // Puts in a row are applied together (one journal flush for
            // a transaction's keys), in order with the rest.
            let mut puts: Vec<FleetRule> = Vec::new();
            for event in &events {
                last = last.max(int(&event["kv"]["mod_revision"]));
                let kv: Kv = serde_json::from_value(event["kv"].clone()).unwrap_or_default();
                let deleted = event["type"] == "DELETE";
                if let Some((name, value)) = settings::read(&kv, &prefix) {
                    // A setting deleted from the fleet stays as it is here.
                    if !deleted {
                        self.put_many(&std::mem::take(&mut puts));
                        settings::apply(self.handle, &self.settings.fleet, &name, value);
                    }
                    continue;
                }
                let Some(rule) = rule_of(&kv, &prefix) else {
                    continue;
                };
                if deleted {
                    self.put_many(&std::mem::take(&mut puts));
                    self.delete(rule.list, rule.prefix);
                } else if !self.own(&rule) {
                    puts.push(rule);
                }
            }
            self.put_many(&puts);
            if last > 0 {
                progressed(last);
            }
        }
        Err("the watch stream ended".to_owned())
    }

    /// Whether this host wrote `rule` for itself (its shared auto-block,
    /// which it holds as an auto-block already).
    fn own(&self, rule: &FleetRule) -> bool {
        rule.member.as_deref() == Some(self.member.id.as_str())
    }

    /// The time a lease has left, asked once per lease.
    fn ttl(&mut self, lease: i64) -> Option<Duration> {
        if lease == 0 {
            return None;
        }
        if let Some((asked, ttl)) = self.leases.get(&lease) {
            return ttl.map(|t| t.saturating_sub(asked.elapsed()));
        }
        let ttl = self
            .post("/v3/lease/timetolive", &json!({"ID": lease.to_string()}))
            .ok()
            .and_then(|r| json_of(r).ok())
            .map(|v| int(&v["TTL"]))
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs);
        self.leases.insert(lease, (Instant::now(), ttl));
        ttl
    }

    /// Applies rules, in one request for each list, lease and comment: a
    /// joining member takes a whole fleet in a few requests.
    fn put_many(&mut self, rules: &[FleetRule]) {
        let mut groups: BTreeMap<(List, i64, Option<&str>), Vec<String>> = BTreeMap::new();
        for rule in rules {
            groups
                .entry((rule.list, rule.lease, rule.comment.as_deref()))
                .or_default()
                .push(rule.prefix.to_string());
        }
        for ((list, lease, comment), prefixes) in groups {
            let ttl = self.ttl(lease);
            if lease != 0 && ttl.is_none_or(|t| t.is_zero()) {
                // The lease is gone: its keys are being deleted.
                continue;
            }
            for chunk in prefixes.chunks(CHUNK) {
                let add = |prefixes: Vec<String>| {
                    self.handle.add(
                        AddRequest {
                            list,
                            prefixes,
                            ttl,
                            comment: comment.map(str::to_owned),
                            origin: Origin::Fleet,
                            force: false,
                            // A rule someone else made on this host stays
                            // theirs.
                            keep_others: true,
                        },
                        peer(),
                        &mut |_, _| {},
                    )
                };
                match add(chunk.to_vec()) {
                    Ok(_) => {}
                    // One prefix this host's guard refuses must not keep
                    // the others out.
                    Err(refusal) if refusal.kind == ErrorKind::Refused && chunk.len() > 1 => {
                        for prefix in chunk {
                            if let Err(refusal) = add(vec![prefix.clone()]) {
                                refused(list, prefix, &refusal.message);
                            }
                        }
                    }
                    Err(refusal) => refused(list, &chunk[0], &refusal.message),
                }
            }
        }
    }

    fn delete(&self, list: List, prefix: Prefix) {
        // Only the fleet's own entry: one someone else made stays theirs.
        if let Err(refusal) = self
            .handle
            .remove_own(list, &[prefix], Origin::Fleet, peer())
        {
            log::warn!(
                "fleet: removing {} {prefix}: {}",
                list.name(),
                refusal.message
            );
        }
    }
}

/// How a watch ended without an error.
enum WatchEnd {
    /// etcd no longer has the history after the revision asked for.
    Compacted(i64),
    /// Nothing came for a while: the watch is opened again from where it
    /// was.
    Idle,
    /// The daemon stops.
    Quit,
}

fn refused(list: List, prefix: &str, why: &str) {
    log::warn!(
        "fleet: {} {prefix}: {why}; not applied on this host",
        list.name()
    );
}

pub(super) fn peer() -> Peer {
    Peer {
        uid: nix::unistd::getuid().as_raw(),
        pid: i32::try_from(std::process::id()).ok(),
    }
}
