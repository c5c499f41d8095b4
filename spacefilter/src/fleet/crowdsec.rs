//! The CrowdSec bouncer: polls a local API's decision stream and turns its
//! bans into blocks of origin `crowdsec`.
//!
//! The first poll asks for every decision in force (`startup=true`), the
//! next ones for what changed since. A prefix an administrator (or a file,
//! the config, the fleet) already blocks stays theirs: a ban on it changes
//! nothing, lifting the ban leaves their block in place, and if their
//! block goes while the ban holds, the ban applies from the next poll.
//! Every ban goes through the lockout guard: one that covers the host's
//! own addresses is refused and logged, never forced. While the API cannot be reached the
//! blocks stay as they are (they expire on their own), and the link's state
//! says why.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    decisions::{self, Plan, Tracker},
    pause,
    tls::{self, TlsFiles},
};
use crate::{
    api::{ErrorKind, LinkView, Origin},
    daemon::{AddRequest, Handle, Peer, Refusal, Stop},
    net::{List, Prefix},
};

/// How long one request to the API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the bouncer polls and how.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The local API's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// The bouncer's key (`cscli bouncers add NAME`).
    pub key: String,
    /// Between two polls.
    pub interval: Duration,
    /// TLS with the CA of `--crowdsec-cacert` (`None`: the webpki roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Settings {
    /// Checks the URL and reads the key from `key_file`; the error says
    /// what to fix.
    pub fn new(url: &str, key_file: &Path, interval: Duration) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--crowdsec {url:?}: give the local API's URL, e.g. http://127.0.0.1:8080"
            ));
        }
        if interval < Duration::from_millis(100) {
            return Err("--crowdsec-interval: poll at most every 100ms".to_owned());
        }
        let key = std::fs::read_to_string(key_file)
            .map_err(|err| {
                format!(
                    "--crowdsec-key-file {}: {err}; write the key `cscli bouncers add NAME` prints into it",
                    key_file.display()
                )
            })?
            .trim()
            .to_owned();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "--crowdsec-key-file {}: holds no key (one line, as `cscli bouncers add NAME` prints it)",
                key_file.display()
            ));
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            key,
            interval,
            tls: None,
        })
    }

    /// Trusts the CA certificates of `cacert` (`--crowdsec-cacert`) for an
    /// `https://` local API; the error says what to fix.
    pub fn with_cacert(mut self, cacert: &Path) -> Result<Self, String> {
        let files = TlsFiles {
            cacert: Some(cacert.to_owned()),
            ..TlsFiles::default()
        };
        tls::check_scheme("--crowdsec", std::slice::from_ref(&self.url), &files)?;
        self.tls = tls::client_config("--crowdsec", &files)?;
        Ok(self)
    }
}

/// Polls until `stop`.
pub async fn follow(settings: Settings, handle: Handle, mut stop: Stop) {
    log::info!(
        "following CrowdSec decisions from {} every {}",
        settings.url,
        humantime::format_duration(settings.interval)
    );
    let agent = ureq::AgentBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("spacefilter-bouncer/", env!("CARGO_PKG_VERSION")));
    let agent = match &settings.tls {
        Some(config) => agent.tls_config(config.clone()),
        None => agent,
    }
    .build();
    let mut link = Link {
        view: LinkView {
            kind: "crowdsec".to_owned(),
            url: settings.url.clone(),
            ..LinkView::default()
        },
        last_ok: None,
    };
    let mut tracker = Tracker::default();
    let mut startup = true;
    loop {
        let (agent2, settings2) = (agent.clone(), settings.clone());
        let fetched =
            tokio::task::spawn_blocking(move || fetch(&agent2, &settings2, startup)).await;
        let result = match fetched {
            Ok(Ok(body)) => {
                let handle2 = handle.clone();
                let mut moved = std::mem::take(&mut tracker);
                match tokio::task::spawn_blocking(move || {
                    let result = take_in(&body, startup, &mut moved, &handle2);
                    (result, moved)
                })
                .await
                {
                    Ok((result, back)) => {
                        tracker = back;
                        result
                    }
                    Err(err) => Err(format!("applying decisions: {err}")),
                }
            }
            Ok(Err(err)) => Err(err),
            Err(err) => Err(format!("polling: {err}")),
        };
        match result {
            Ok(()) => {
                if !link.view.up && link.view.revision > 0 {
                    log::info!("CrowdSec's local API at {} answers again", settings.url);
                }
                startup = false;
                link.last_ok = Some(Instant::now());
                link.view.up = true;
                link.view.revision += 1;
                link.view.last_error = None;
            }
            Err(why) => {
                if link.view.up || link.view.last_error.as_deref() != Some(&why) {
                    log::warn!("CrowdSec: {why}; the blocks stay as they are");
                }
                link.view.up = false;
                link.view.last_error = Some(why);
            }
        }
        link.report(&handle).await;
        if !pause(&mut stop, settings.interval).await {
            return;
        }
    }
}

/// The link's state, as `status` shows it.
struct Link {
    view: LinkView,
    last_ok: Option<Instant>,
}

impl Link {
    async fn report(&mut self, handle: &Handle) {
        self.view.lag_secs = self.last_ok.map(|at| at.elapsed().as_secs());
        let handle2 = handle.clone();
        self.view.entries = tokio::task::spawn_blocking(move || handle2.count_of(Origin::Crowdsec))
            .await
            .unwrap_or(0);
        handle.report_link(self.view.clone());
    }
}

/// One poll of the stream; its body.
fn fetch(agent: &ureq::Agent, settings: &Settings, startup: bool) -> Result<String, String> {
    let url = format!("{}/v1/decisions/stream?startup={startup}", settings.url);
    match agent.get(&url).set("X-Api-Key", &settings.key).call() {
        Ok(response) => response
            .into_string()
            .map_err(|err| format!("reading {url}: {err}")),
        Err(ureq::Error::Status(403, _)) => Err(format!(
            "{url}: the key was refused (403): check --crowdsec-key-file (key_file in [crowdsec]) against `cscli bouncers list`"
        )),
        Err(ureq::Error::Status(code, response)) => {
            Err(format!("{url}: HTTP {code} {}", response.status_text()))
        }
        Err(err) => Err(format!("{url}: {err}")),
    }
}

/// The daemon's peer for changes the bouncer makes (the logs name it).
fn peer() -> Peer {
    Peer {
        uid: nix::unistd::getuid().as_raw(),
        pid: i32::try_from(std::process::id()).ok(),
    }
}

/// Takes in one answer: updates the tracker and makes the daemon's blocks
/// follow. A startup answer lists every decision in force, so blocks of
/// origin `crowdsec` it does not name are lifted (they were deleted while
/// the bouncer was not listening).
fn take_in(
    body: &str,
    startup: bool,
    tracker: &mut Tracker,
    handle: &Handle,
) -> Result<(), String> {
    let delta = decisions::read_stream(body)?;
    for why in &delta.ignored {
        log::info!("CrowdSec: ignoring {why}");
    }
    if startup {
        tracker.clear();
    }
    let now = Instant::now();
    let mut plan = tracker.apply(&delta, now);
    if startup {
        let dropping: BTreeSet<Prefix> = plan.drop.iter().copied().collect();
        let stale: Vec<Prefix> = handle
            .prefixes_of(List::Block, Origin::Crowdsec)
            .into_iter()
            .filter(|prefix| !tracker.holds(prefix) && !dropping.contains(prefix))
            .collect();
        plan.drop.extend(stale);
    }
    // Who holds the prefixes this poll touches, and those whose ban waits
    // on someone else's block: looked up, not listed.
    let touched: Vec<Prefix> = plan
        .put
        .iter()
        .map(|(prefix, _, _)| *prefix)
        .chain(plan.drop.iter().copied())
        .chain(tracker.deferred().copied())
        .collect();
    let held = handle.origins(List::Block, &touched);
    let theirs = |prefix: &Prefix| held.get(prefix).is_some_and(|o| *o != Origin::Crowdsec);
    for prefix in tracker.settle(&mut plan, theirs, now) {
        log::info!(
            "CrowdSec bans {prefix}, whose block by someone else is gone: the ban applies now"
        );
    }
    let recheck = enforce(handle, &plan, &held)?;
    tracker.defer(recheck);
    Ok(())
}

/// Carries out a plan on entries that are the bouncer's own (or nobody's);
/// returns the prefixes of the adds that left some entry to someone who
/// blocked it since the look-up, to be looked at again at the next poll.
fn enforce(
    handle: &Handle,
    plan: &Plan,
    held: &BTreeMap<Prefix, Origin>,
) -> Result<Vec<Prefix>, String> {
    let ours = |prefix: &Prefix| held.get(prefix).is_none_or(|o| *o == Origin::Crowdsec);
    let mut failed = None;
    let mut recheck = Vec::new();
    // Prefixes with the same time left (to the second) go in one request:
    // a startup with many decisions is a few requests, not one per ban.
    let mut groups: BTreeMap<(u64, &str), Vec<Prefix>> = BTreeMap::new();
    for (prefix, ttl, comment) in &plan.put {
        if ours(prefix) {
            groups
                .entry((ttl.as_secs().max(1), comment.as_str()))
                .or_default()
                .push(*prefix);
        } else {
            log::info!(
                "CrowdSec bans {prefix}, which is already blocked (origin {}): left as it is, \
                 and applied if that block goes while the ban holds",
                held[prefix].name()
            );
        }
    }
    for ((ttl, comment), prefixes) in groups {
        let add = |prefixes: Vec<String>| {
            handle.add(
                AddRequest {
                    list: List::Block,
                    prefixes,
                    ttl: Some(Duration::from_secs(ttl)),
                    comment: Some(comment.to_owned()),
                    origin: Origin::Crowdsec,
                    force: false,
                    // An administrator's block made since the look-up
                    // stays theirs.
                    keep_others: true,
                },
                peer(),
                &mut |_, _| {},
            )
        };
        match add(prefixes.iter().map(ToString::to_string).collect()) {
            Ok(changed) => {
                if changed.unchanged > 0 {
                    recheck.extend(prefixes);
                }
            }
            // One prefix the guard refuses must not keep the others out:
            // try them one by one.
            Err(Refusal {
                kind: ErrorKind::Refused,
                ..
            }) if prefixes.len() > 1 => {
                for prefix in prefixes {
                    if let Err(refusal) = add(vec![prefix.to_string()]) {
                        note_refusal(prefix, &refusal, &mut failed);
                    }
                }
            }
            Err(refusal) => note_refusal(prefixes[0], &refusal, &mut failed),
        }
    }
    let drop: Vec<Prefix> = plan
        .drop
        .iter()
        .filter(|p| held.get(p) == Some(&Origin::Crowdsec))
        .copied()
        .collect();
    if !drop.is_empty()
        && let Err(refusal) = handle.remove_own(List::Block, &drop, Origin::Crowdsec, peer())
    {
        failed = Some(format!("lifting {} bans: {}", drop.len(), refusal.message));
    }
    failed.map_or(Ok(recheck), Err)
}

fn note_refusal(prefix: Prefix, refusal: &Refusal, failed: &mut Option<String>) {
    if refusal.kind == ErrorKind::Refused {
        log::warn!(
            "CrowdSec ban on {prefix} refused: {}; it is not enforced",
            refusal.message
        );
    } else {
        log::error!("CrowdSec ban on {prefix}: {}", refusal.message);
        *failed = Some(format!("blocking {prefix}: {}", refusal.message));
    }
}
