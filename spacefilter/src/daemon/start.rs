//! Start: claim the interfaces, open the store, load the program, restore
//! what the store holds, add the config file's entries, attach.

use std::{
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    AddRequest, Peer, Settings,
    core::Core,
    expiry::Expiry,
    guards,
    header_rules::{self, kernel_rule},
    shield::ShieldState,
};
use crate::{
    api::{LimitsView, Origin},
    bpf::{
        AttachMode, Filter, FilterError, Lists, LoadOptions, PinDir, Staged, features,
        monotonic_ns, pinned_program,
    },
    error_chain,
    net::{List, Prefix, iface},
    store::{Rules, Store, now_ms},
    telemetry::sampling::Samples,
};

/// Puts the allow and block rules into the lists of a program being
/// loaded (see [`Loading`]).
fn fill_lists(lists: &mut Lists, rules: &Rules) -> anyhow::Result<()> {
    for list in [List::Allow, List::Block] {
        let prefixes: Vec<Prefix> = rules
            .keys()
            .filter(|(l, _)| *l == list)
            .map(|&(_, p)| p)
            .collect();
        lists
            .insert_many(list, &prefixes)
            .with_context(|| format!("restoring the {}list", list.name()))?;
    }
    Ok(())
}

/// Puts the rate limit and the auto-blocks from the state directory into
/// the freshly loaded program (its lists filled by [`fill_lists`]);
/// returns the rate limit.
fn restore(
    filter: &mut Filter,
    rules: &Rules,
    store: &Store,
    now: u64,
) -> anyhow::Result<LimitsView> {
    let mut limits = store
        .limits()
        .map_or_else(LimitsView::default, guards::view);
    let profile = guards::reflect_profile(&limits.service_ports);
    if let Some(problem) = &profile.problem {
        log::warn!("the reflection guard's profile: {problem}");
    }
    filter
        .limiter()
        .set_reflect_ports(&limits.reflect_sources, &profile.service_ports)
        .context("setting the reflection guard's ports")?;
    limits.reflect_profile = Some(profile);
    filter
        .limiter()
        .set(limits.kernel())
        .context("restoring the flood guards")?;
    let mono = monotonic_ns();
    for (&(list, prefix), meta) in rules {
        if list == List::Auto
            && let Some(left) = meta.remaining(now)
        {
            let left_ns = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
            filter
                .limiter()
                .insert_auto(prefix, mono.saturating_add(left_ns))
                .context("restoring auto-blocks")?;
        }
    }
    Ok(limits)
}

/// Puts the stored rules on headers into the program; returns them.
fn restore_header_rules(
    filter: &mut Filter,
    store: &Store,
) -> anyhow::Result<Vec<crate::api::HeaderRuleView>> {
    let header_rules: Vec<_> = store
        .header_rules()
        .into_iter()
        .map(header_rules::view)
        .collect();
    filter
        .header_rules()
        .set(
            &header_rules
                .iter()
                .map(|r| (kernel_rule(r), 0))
                .collect::<Vec<_>>(),
        )
        .context("restoring the header rules")?;
    Ok(header_rules)
}

/// The program's load, on a thread of its own: its maps are made first,
/// and its lists handed over to be filled from the state; then the
/// verifier checks the programs while the state is read and the lists are
/// filled. The two share nothing.
struct Loading {
    thread: std::thread::JoinHandle<(Result<Staged, FilterError>, Duration)>,
    lists: mpsc::Receiver<Lists>,
}

impl Loading {
    /// Starts loading; `began` is when the start began, for the log.
    fn start(options: LoadOptions, began: Instant) -> anyhow::Result<Self> {
        let (send, lists) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("load".to_owned())
            .spawn(move || {
                let staged = Filter::stage(options).and_then(|(mut staged, lists)| {
                    // The receiver may have gone (a start that failed): the
                    // programs are loaded all the same, and dropped.
                    let _ = send.send(lists);
                    staged.load_programs().map(|()| staged)
                });
                (staged, began.elapsed())
            })
            .context("starting the program's load")?;
        Ok(Self { thread, lists })
    }

    /// The program's lists, once its maps are made; why not, if making
    /// them failed.
    fn lists(self) -> Result<(Lists, Self), anyhow::Error> {
        match self.lists.recv() {
            Ok(lists) => Ok((lists, self)),
            Err(_) => Err(match self.thread.join() {
                Ok((Err(err), _)) => anyhow::Error::new(err).context("loading the XDP program"),
                _ => anyhow::anyhow!("loading the XDP program panicked"),
            }),
        }
    }

    /// Fills `lists` with the allow and block rules while the programs
    /// load; the loaded program with them, when they were filled and when
    /// the load was done.
    fn fill(
        self,
        mut lists: Lists,
        rules: &Rules,
        began: Instant,
    ) -> anyhow::Result<(Filter, Duration, Duration)> {
        let filled = fill_lists(&mut lists, rules);
        let filled_by = began.elapsed();
        let loaded = self.finish(lists);
        filled?;
        let (filter, loaded_by) = loaded?;
        Ok((filter, filled_by, loaded_by))
    }

    /// The loaded program with `lists` back in it, and when the load was
    /// done.
    fn finish(self, lists: Lists) -> anyhow::Result<(Filter, Duration)> {
        let (staged, by) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("loading the XDP program panicked"))?;
        Ok((
            staged.context("loading the XDP program")?.with_lists(lists),
            by,
        ))
    }
}

/// Puts the stored shield back in force. A shield that cannot be set up
/// (the host refuses a setting) is logged and left off in the program:
/// the rest of the filter starts all the same.
fn restore_shield(core: &mut Core) {
    // The flood guards read verified sources too.
    if let Err(message) = core.configure_verify(false, core.shield.verified_idle_secs) {
        log::error!("verified sources: {message}");
    }
    let Some(record) = core.store.shield() else {
        return;
    };
    let mut state = ShieldState::from_record(record.clone());
    if !state.enabled && state.saved.is_empty() {
        return;
    }
    match core.apply_shield(&mut state) {
        Ok(()) => {
            if state.enabled {
                log::info!(
                    "restored the shield on TCP ports {:?} and UDP ports {:?}",
                    state.tcp_ports,
                    state.udp_ports
                );
            }
            if state.saved != record.saved {
                // Host settings saved anew: they must survive a crash.
                core.shield = state;
                core.journal_shield();
                return;
            }
        }
        Err(message) => log::error!("the shield stays off: {message}"),
    }
    core.shield = state;
}

/// Makes the config file's `allow` and `block` entries the entries of
/// origin `config`: adds those missing, takes off those it no longer
/// lists.
pub(super) fn apply_config_entries(
    core: &mut Core,
    (allow, block): (Vec<Prefix>, Vec<Prefix>),
    force: bool,
) -> anyhow::Result<()> {
    let system = Peer {
        uid: nix::unistd::geteuid().as_raw(),
        pid: Some(std::process::id().cast_signed()),
    };
    for (list, prefixes) in [(List::Allow, allow), (List::Block, block)] {
        core.drop_stale_config(list, &prefixes)
            .map_err(|r| anyhow::anyhow!("config {}list: {}", list.name(), r.message))?;
        let missing: Vec<String> = prefixes
            .iter()
            .filter(|p| !core.rules.contains_key(&(list, **p)))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            continue;
        }
        core.add(
            AddRequest {
                list,
                prefixes: missing,
                ttl: None,
                comment: None,
                origin: Origin::Config,
                force,
                keep_others: false,
            },
            system,
            &mut |_, _| {},
        )
        .map_err(|r| anyhow::anyhow!("config {}list: {}", list.name(), r.message))?;
    }
    Ok(())
}

/// Claims the interfaces, opens the state directory, loads the program,
/// restores the rules, adds the config file's entries and attaches.
pub(super) fn start(settings: Settings) -> anyhow::Result<Core> {
    let Settings {
        ifaces,
        mode,
        state_dir,
        force,
        capacity,
        max_sources,
        sampling,
        without,
        pin_dir,
        allow,
        block,
        reload: _,
    } = settings;
    let began = Instant::now();
    let options = LoadOptions {
        capacity,
        buckets: max_sources,
        hash_seed: None,
        without: features::bits_of(&without),
    };
    let pins = open_pins(&pin_dir);
    // The program still filtering on this daemon's pinned links, if every
    // one of them runs the same: adopted rather than loaded anew when it
    // was built from this program (see `Filter::adopt`).
    let running = pins
        .as_ref()
        .and_then(|pins| running_program(pins, &ifaces, options));
    // The state directory first: a second daemon on it stops at its lock,
    // before `--force` could take the interfaces from the first.
    let loading = match running {
        Some(_) => None,
        None => Some(Loading::start(options, began)?),
    };
    let opened = Store::open(&state_dir);
    let opened_by = began.elapsed();
    let (store, mut rules) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            // The load ends first: the host is left as it was.
            if let Some(Ok((lists, loading))) = loading.map(Loading::lists) {
                drop(loading.finish(lists));
            }
            return Err(anyhow::anyhow!("{}", error_chain(&err)));
        }
    };
    let loading = loading.map(Loading::lists).transpose()?;
    claim_all(&ifaces, force, pins.as_ref())?;
    let now = now_ms();
    rules.retain(|_, meta| meta.expires_at_ms.is_none_or(|at| at > now));

    let (mut filter, how) = match running.and_then(|id| adopt(id, options, &rules)) {
        Some(adopted) => adopted,
        None => load(loading, options, &rules, began, opened_by)?,
    };
    filter
        .observer()
        .set_sampling(sampling)
        .context("setting up drop sampling")?;
    let limits = restore(&mut filter, &rules, &store, now)?;
    let header_rules = restore_header_rules(&mut filter, &store)?;
    log::info!(
        "restored {} rules from {}",
        rules.len(),
        state_dir.display()
    );
    let program_id = filter.program_id().unwrap_or(0);
    let mut core = Core {
        filter,
        expiry: Expiry::of(&rules),
        rules,
        store,
        limits,
        spoof_switches: 0,
        header_rules,
        ifaces: ifaces.clone(),
        started: Instant::now(),
        capacity,
        max_sources,
        program_id,
        samples: Samples::default(),
        auto_blocks: 0,
        shield: ShieldState::default(),
        auto_exempt: Vec::new(),
        auto_sink: None,
    };
    core.refresh_auto_exempt();
    restore_shield(&mut core);
    core.restore_admissions();
    if let Err(err) = apply_config_entries(&mut core, (allow, block), force) {
        // The daemon does not start: the host gets its settings back.
        core.release_host();
        return Err(err);
    }
    let configured = began.elapsed();
    attach_all(&mut core, &ifaces, mode, pins.as_ref())?;
    if let Err(err) = core.filter.release_other_slots() {
        log::warn!("{}", error_chain(&err));
    }
    log::info!(
        "started in {:.2} s: {how}; settings by {:.2} s",
        began.elapsed().as_secs_f64(),
        configured.as_secs_f64()
    );
    Ok(core)
}

/// The program loaded (its load started already, or started now) with
/// the lists of `rules`, and how the start went for the log.
fn load(
    loading: Option<(Lists, Loading)>,
    options: LoadOptions,
    rules: &Rules,
    began: Instant,
    opened_by: Duration,
) -> anyhow::Result<(Filter, String)> {
    let (lists, loading) = match loading {
        Some(started) => started,
        None => Loading::start(options, began)?.lists()?,
    };
    let (filter, filled_by, loaded_by) = loading.fill(lists, rules, began)?;
    let how = format!(
        "state read in {:.2} s and the lists filled by {:.2} s while the program loaded in \
         {:.2} s",
        opened_by.as_secs_f64(),
        filled_by.as_secs_f64(),
        loaded_by.as_secs_f64(),
    );
    Ok((filter, how))
}

/// Makes each of `ifaces` free for this daemon (see [`iface::claim`]);
/// the program on a link pinned in `pins` is this project's own.
fn claim_all(ifaces: &[String], force: bool, pins: Option<&PinDir>) -> anyhow::Result<()> {
    for iface in ifaces {
        let ours = pins.and_then(|pins| pinned_program(&pins.path(iface)));
        iface::claim(iface, force, ours)?;
    }
    Ok(())
}

/// The program on every pinned link of `ifaces` (at least one), if they
/// all run the same and it can be adopted with `options` (saying why
/// not, if not).
fn running_program(pins: &PinDir, ifaces: &[String], options: LoadOptions) -> Option<u32> {
    let mut running = None;
    for iface in ifaces {
        let pin = pins.path(iface);
        if !pin.exists() {
            continue;
        }
        let id = pinned_program(&pin)?;
        if running.is_some_and(|r| r != id) {
            return None;
        }
        running = Some(id);
    }
    running.filter(|&id| match Filter::adoptable(id, options) {
        Ok(()) => true,
        Err(err) => {
            log::warn!(
                "the running program {id} is not adopted ({}): loading one, which takes its link \
                 over",
                error_chain(&err)
            );
            false
        }
    })
}

/// Adopts the running program `id` with the lists of `rules`; `None`,
/// saying why, if it cannot be (the caller loads one).
fn adopt(id: u32, options: LoadOptions, rules: &Rules) -> Option<(Filter, String)> {
    let began = Instant::now();
    let list = |list| -> Vec<Prefix> {
        rules
            .keys()
            .filter(|(l, _)| *l == list)
            .map(|&(_, p)| p)
            .collect()
    };
    match Filter::adopt(id, options, &list(List::Allow), &list(List::Block)) {
        Ok((filter, found)) => {
            if found.stale + found.missing > 0 {
                log::warn!(
                    "the running program's lists differed from the state: {} keys taken out, \
                     {} written (a daemon stopped between its journal and the kernel)",
                    found.stale,
                    found.missing
                );
            }
            let how = format!(
                "adopted the running program {id} with its maps in {:.2} s ({} keys in place, \
                 {} words rewritten, {} taken out, {} written)",
                began.elapsed().as_secs_f64(),
                found.held,
                found.rewritten,
                found.stale,
                found.missing
            );
            Some((filter, how))
        }
        Err(err) => {
            log::warn!(
                "the running program {id} is not adopted ({}): loading one, which takes its \
                 link over",
                error_chain(&err)
            );
            None
        }
    }
}

/// The directory the links are pinned in, if it is on a BPF filesystem.
fn open_pins(pin_dir: &Path) -> Option<PinDir> {
    match PinDir::open(pin_dir) {
        Ok(pins) => Some(pins),
        Err(why) => {
            log::warn!(
                "the XDP links are not pinned ({why}): the filter lasts only as long as the \
                 daemon"
            );
            None
        }
    }
}

/// Attaches to every interface, through a pinned link where `pins` is
/// given (taking over a predecessor's); on a failure, detaches from those
/// not pinned, and gives the host its settings back if none is left.
fn attach_all(
    core: &mut Core,
    ifaces: &[String],
    mode: AttachMode,
    pins: Option<&PinDir>,
) -> anyhow::Result<()> {
    for iface in ifaces {
        let attached = match pins {
            Some(pins) => {
                let pin = pins.path(iface);
                core.filter
                    .attach_pinned(iface, mode, &pin)
                    .map(|(used, took_over)| {
                        if took_over {
                            log::info!(
                                "took over {iface} from the program pinned at {} with no gap \
                                 ({} mode)",
                                pin.display(),
                                used.name()
                            );
                            if mode != AttachMode::Auto && mode != used {
                                log::warn!(
                                    "{iface}: the pinned link runs in {} mode, not the {} mode \
                                     asked for, and keeps it: changing the mode would leave the \
                                     interface unfiltered for a moment. To change it, run \
                                     `spacefilter detach` and start again",
                                    used.name(),
                                    mode.name()
                                );
                            }
                        } else if core.filter.pinned(iface) {
                            log::info!("{iface}: link pinned at {}", pin.display());
                        }
                        used
                    })
            }
            None => core.filter.attach(iface, mode),
        };
        match attached {
            Ok(used) => {
                if mode == AttachMode::Auto && used == AttachMode::Skb {
                    log::warn!("{iface}: the driver has no native XDP; attached in skb mode");
                }
                log::info!("attached to {iface} in {} mode", used.name());
            }
            Err(err) => {
                // Fail static: an interface already on a pinned link keeps
                // this program; the rest are detached.
                if !core.leave_pinned() {
                    core.release_host();
                }
                return Err(anyhow::anyhow!("{}", error_chain(&err)));
            }
        }
    }
    Ok(())
}
