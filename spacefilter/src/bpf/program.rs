//! The loaded XDP program: load it, attach it to interfaces, steer its
//! lists and read its counters.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use aya::{
    TestRunOptions,
    maps::{MapData, RingBuf},
    programs::{ProgramError, TestRun as _, Xdp, XdpMode, xdp::XdpLinkId},
};
use spacefilter_common::{
    DEFAULT_BUCKETS, DEFAULT_CAPACITY, PROGRAM_NAME, lookup::MAX_CAPACITY, map_names,
};

mod adoption;
mod egress;
mod pinning;
mod staged;

use self::pinning::{Egress, Held, remove_pin};
pub use self::{
    adoption::Adopted, egress::remove_left_egress, pinning::pinned_program, staged::Staged,
};
use super::{
    CounterReader, Counters, Entry, FeatureOff, HeaderRules, Limiter, ListError, Lists,
    MapSource as _, Observer, Verifier,
};
use crate::{
    error_chain,
    net::{List, Prefix},
};

/// The kernel-side debug log's reader (aya-log): kept for as long as the
/// program lives, and drained by whoever wants the lines.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The XDP program, built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spacefilter"));

/// The measuring tools (`floor_drop`, `floor_pass`, `generator`; see
/// `spacefilter-ebpf/src/tools.rs`), for benchmarks and the flood harness.
pub static TOOLS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spacefilter-tools"));

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode where the
    /// driver has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only: frames are filtered before the kernel
    /// allocates a socket buffer.
    Native,
    /// Generic (skb) mode: works on every interface, after the socket
    /// buffer is allocated.
    Skb,
}

impl AttachMode {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("loading the XDP program failed (is this root, on a kernel with BPF?)")]
    Load(#[source] aya::EbpfError),
    #[error("{0}")]
    Kernel(String),
    #[error("the object file has no XDP program named {PROGRAM_NAME}")]
    MissingProgram,
    #[error("preparing the XDP program failed")]
    Program(#[source] ProgramError),
    #[error("attaching to {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{iface}: the XDP link could not be pinned or taken over: {why}")]
    Pin { iface: String, why: String },
    #[error("{iface}: removing the XDP link's pin failed")]
    Unpin {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{iface} is not attached")]
    NotAttached { iface: String },
    #[error("detaching from {iface} failed")]
    Detach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    List(#[from] ListError),
    #[error("test run failed")]
    TestRun(#[source] ProgramError),
    #[error("a capacity of {capacity} entries is more than the lists can number ({MAX_CAPACITY})")]
    Capacity { capacity: u32 },
}

/// Load-time settings.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// How many entries each list map holds, and how many hit counters
    /// there are in all. Each hit counter costs 8 bytes per CPU.
    pub capacity: u32,
    /// How many sources the rate limiter tracks (and may auto-block) at
    /// once; the least recently seen are forgotten first.
    pub buckets: u32,
    /// Seed of the lookup tables' bucket hashes; `None` draws one. Fixing
    /// it lets a test choose keys that share buckets.
    pub hash_seed: Option<u64>,
    /// Features to switch off although the kernel has them
    /// ([`spacefilter_common::features`] bits; see [`super::features`]).
    pub without: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            buckets: DEFAULT_BUCKETS,
            hash_seed: None,
            without: 0,
        }
    }
}

/// Runs a program load, again if a signal interrupted the verifier
/// (`EAGAIN`: a long verification on a busy host catches one now and
/// then), as libbpf does: up to five tries.
fn load_retrying(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let mut tries = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

/// A seed nobody outside this process can predict.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The XDP program, loaded, with its maps.
pub struct Filter {
    /// The program and every map but the lists.
    loaded: Staged,
    lists: Lists,
    /// Attached interfaces: the mode that took, the link, the ifindex and
    /// the counter slot (`None`: counted with the unattributed frames).
    attached: BTreeMap<String, Attachment>,
}

struct Attachment {
    mode: AttachMode,
    link: Held,
    ifindex: u32,
    slot: Option<u32>,
    /// The egress program's link, if it could be attached.
    egress: Option<Egress>,
}

impl Filter {
    /// Loads the program into the kernel (not yet attached anywhere).
    pub fn load(options: LoadOptions) -> Result<Self, FilterError> {
        let (mut staged, lists) = Self::stage(options)?;
        staged.load_programs()?;
        Ok(staged.with_lists(lists))
    }

    /// The kernel features the program runs without, and why.
    #[must_use]
    pub fn features_off(&self) -> &[FeatureOff] {
        &self.loaded.features_off
    }

    fn program(&mut self) -> &mut Xdp {
        self.loaded.programs.xdp().expect("checked at load")
    }

    /// Attaches to `iface` and returns the mode that took: with
    /// [`AttachMode::Auto`], native if the driver allows, else skb.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, FilterError> {
        let (used, link) = self.attach_link(iface, mode)?;
        self.finish_attach(iface, used, Held::Program(link), None);
        Ok(used)
    }

    /// Attaches the XDP program to `iface` (see [`Self::attach`]), its
    /// counter slot assigned first ([`Self::slot_first`]).
    fn attach_link(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(AttachMode, XdpLinkId), FilterError> {
        let undo = self.slot_first(iface);
        let attached = self.attach_link_now(iface, mode);
        if attached.is_err() {
            undo(self);
        }
        attached
    }

    /// Assigns `iface` its counter slot before the program runs there, so
    /// that no frame right after the attach is counted with the
    /// unattributed ones (a failure is reported by [`Self::finish_attach`],
    /// which assigns it again); returns how to take it back if the attach
    /// fails.
    pub(super) fn slot_first(&mut self, iface: &str) -> impl FnOnce(&mut Self) + use<> {
        let ifindex = nix::net::if_::if_nametoindex(iface).unwrap_or(0);
        let had = self.loaded.observer.has_slot(ifindex);
        let _ = self.loaded.observer.assign(ifindex);
        move |filter: &mut Self| {
            if !had {
                let _ = filter.loaded.observer.release(ifindex);
            }
        }
    }

    fn attach_link_now(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(AttachMode, XdpLinkId), FilterError> {
        let attempt = |program: &mut Xdp, mode: AttachMode| {
            let xdp_mode = match mode {
                AttachMode::Auto | AttachMode::Native => XdpMode::Driver,
                AttachMode::Skb => XdpMode::Skb,
            };
            program
                .attach(iface, xdp_mode)
                .map_err(|source| FilterError::Attach {
                    iface: iface.to_owned(),
                    mode: mode.name(),
                    source,
                })
        };
        let (used, link) = match mode {
            AttachMode::Auto => match attempt(self.program(), AttachMode::Native) {
                Ok(link) => (AttachMode::Native, link),
                Err(native_err) => {
                    log::warn!(
                        "{iface}: native XDP failed ({}), falling back to skb mode",
                        error_chain(&native_err)
                    );
                    (AttachMode::Skb, attempt(self.program(), AttachMode::Skb)?)
                }
            },
            mode => (mode, attempt(self.program(), mode)?),
        };
        Ok((used, link))
    }

    /// Counter slot, egress program and bookkeeping of a new attachment.
    fn finish_attach(
        &mut self,
        iface: &str,
        used: AttachMode,
        link: Held,
        egress_pin: Option<&Path>,
    ) {
        let ifindex = nix::net::if_::if_nametoindex(iface).unwrap_or(0);
        let slot = self.loaded.observer.assign(ifindex).unwrap_or_else(|err| {
            log::warn!("{iface}: no counters of its own: {}", error_chain(&err));
            None
        });
        if slot.is_none() {
            log::warn!(
                "{iface}: no counter slot left (or its ifindex {ifindex} shares one); its \
                 frames are counted with the unattributed ones"
            );
        }
        let egress = match self.attach_egress_held(iface, egress_pin) {
            Ok(link) => Some(link),
            Err(why) => {
                log::warn!(
                    "{iface}: the egress program is not attached ({why}): the host's peers on \
                     it are not verified by its traffic"
                );
                None
            }
        };
        self.attached.insert(
            iface.to_owned(),
            Attachment {
                mode: used,
                link,
                ifindex,
                slot,
                egress,
            },
        );
    }

    /// Detaches from `iface`.
    pub fn detach(&mut self, iface: &str) -> Result<(), FilterError> {
        let attachment = self
            .attached
            .remove(iface)
            .ok_or_else(|| FilterError::NotAttached {
                iface: iface.to_owned(),
            })?;
        if let Err(err) = self.loaded.observer.release(attachment.ifindex) {
            log::warn!("{iface}: {}", error_chain(&err));
        }
        if let Some(egress) = attachment.egress {
            self.detach_egress(iface, egress);
        }
        match attachment.link {
            Held::Program(link) => {
                self.program()
                    .detach(link)
                    .map_err(|source| FilterError::Detach {
                        iface: iface.to_owned(),
                        source,
                    })
            }
            Held::Adopted(link, pin) => {
                remove_pin(iface, &pin)?;
                self.program()
                    .detach(link)
                    .map_err(|source| FilterError::Detach {
                        iface: iface.to_owned(),
                        source,
                    })
            }
            // Unpinned, the link's last reference is this one: dropping it
            // detaches the program.
            Held::Pinned(pinned) => pinned
                .unpin()
                .map(drop)
                .map_err(|source| FilterError::Unpin {
                    iface: iface.to_owned(),
                    source,
                }),
        }
    }

    /// Takes back the counter slots of interfaces this filter is not
    /// attached to: those an adopted program's predecessor filtered.
    pub fn release_other_slots(&mut self) -> Result<(), FilterError> {
        let kept: Vec<u32> = self.attached.values().map(|a| a.ifindex).collect();
        Ok(self.loaded.observer.release_others(&kept)?)
    }

    /// The interfaces attached, with the mode each one took.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attached
            .iter()
            .map(|(iface, attachment)| (iface.as_str(), attachment.mode))
    }

    /// The name of the attached interface `ifindex`.
    #[must_use]
    pub fn iface_name(&self, ifindex: u32) -> Option<&str> {
        self.attached
            .iter()
            .find(|(_, a)| a.ifindex == ifindex)
            .map(|(name, _)| name.as_str())
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&mut self) -> Result<u32, FilterError> {
        self.program()
            .info()
            .map(|info| info.id())
            .map_err(FilterError::Program)
    }

    /// Blocks `prefix`. Returns `false` if it was blocked already.
    pub fn block(&mut self, prefix: Prefix) -> Result<bool, FilterError> {
        Ok(self.lists.insert(List::Block, prefix)?)
    }

    /// Removes `prefix` from the blocklist. Returns `false` if it was not
    /// there.
    pub fn unblock(&mut self, prefix: Prefix) -> Result<bool, FilterError> {
        Ok(self.lists.remove(List::Block, prefix)?)
    }

    /// Allows `prefix`: its frames pass whatever the blocklist says.
    pub fn allow(&mut self, prefix: Prefix) -> Result<bool, FilterError> {
        Ok(self.lists.insert(List::Allow, prefix)?)
    }

    /// Removes `prefix` from the allowlist.
    pub fn unallow(&mut self, prefix: Prefix) -> Result<bool, FilterError> {
        Ok(self.lists.remove(List::Allow, prefix)?)
    }

    /// The lists, to read.
    #[must_use]
    pub fn lists_ref(&self) -> &Lists {
        &self.lists
    }

    /// The lists, for operations beyond the four verbs above.
    pub fn lists(&mut self) -> &mut Lists {
        &mut self.lists
    }

    /// The rate limiter.
    pub fn limiter(&mut self) -> &mut Limiter {
        &mut self.loaded.limiter
    }

    /// The rate limiter, to read.
    #[must_use]
    pub fn limiter_ref(&self) -> &Limiter {
        &self.loaded.limiter
    }

    /// The rules on headers.
    pub fn header_rules(&mut self) -> &mut HeaderRules {
        &mut self.loaded.header_rules
    }

    /// The verified sources.
    pub fn verifier(&mut self) -> &mut Verifier {
        &mut self.loaded.verifier
    }

    /// The verified sources, to read.
    #[must_use]
    pub fn verifier_ref(&self) -> &Verifier {
        &self.loaded.verifier
    }

    /// Drop sampling, the debug log and the interface counter slots.
    pub fn observer(&mut self) -> &mut Observer {
        &mut self.loaded.observer
    }

    /// The reader of the kernel-side debug log; taken once, by whoever
    /// drains it (it must stay alive as long as the program).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.loaded.kernel_log.take()
    }

    /// The ring buffer of sampled dropped frames; taken once, by whoever
    /// reads it.
    pub fn take_samples(&mut self) -> Option<RingBuf<MapData>> {
        self.loaded
            .programs
            .take_map(map_names::SAMPLES)
            .and_then(|map| RingBuf::try_from(map).ok())
    }

    /// The ring buffer of auto-block events; taken once, by whoever reads
    /// it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.loaded
            .programs
            .take_map(map_names::EVENTS)
            .and_then(|map| RingBuf::try_from(map).ok())
    }

    /// Every entry of both lists with its hit count.
    pub fn entries(&self) -> Result<Vec<Entry>, FilterError> {
        Ok(self.lists.entries()?)
    }

    /// The verdict counters, summed over the CPUs, in all and per attached
    /// interface.
    pub fn counters(&self) -> Result<Counters, FilterError> {
        let mut counters = self.loaded.stats.read(&self.counter_slots())?;
        counters.verified = self.loaded.verifier.proven()?;
        Ok(counters)
    }

    /// A reader of the counters that needs no access to the filter, for
    /// the interfaces attached now.
    pub fn counter_reader(&self) -> Result<CounterReader, FilterError> {
        Ok(CounterReader {
            stats: Arc::clone(&self.loaded.stats),
            proofs: self.loaded.verifier.proofs()?,
            ifaces: self.counter_slots(),
        })
    }

    /// The attached interfaces' counter slots.
    fn counter_slots(&self) -> Vec<(String, u32)> {
        self.attached
            .iter()
            .filter_map(|(name, a)| a.slot.map(|slot| (name.clone(), slot)))
            .collect()
    }

    /// Runs the program on `frame` `repeat` times with `BPF_PROG_TEST_RUN`
    /// (kernel 4.12; XDP frames of any size since 5.18) and returns the XDP
    /// action and the mean time per run.
    pub fn test_run(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), FilterError> {
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .map_err(FilterError::TestRun)?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the program once on `frame` and copies the frame as it leaves
    /// (an answer sent back with `XDP_TX`, say) into `out`; returns the
    /// verdict and the frame's length.
    pub fn test_run_out(
        &mut self,
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<(u32, usize), FilterError> {
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(out),
                ..Default::default()
            })
            .map_err(FilterError::TestRun)?;
        Ok((result.return_value, result.data_size_out as usize))
    }
}
