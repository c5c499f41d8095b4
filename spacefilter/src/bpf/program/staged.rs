//! A load in two steps: the maps made and the lists taken out
//! ([`Filter::stage`]), then the programs loaded ([`Staged::load_programs`],
//! the verifier's part): a start fills the lists from the state meanwhile.

use std::{collections::BTreeMap, sync::Arc};

use aya::{EbpfLoader, programs::Xdp};
use spacefilter_common::{
    FEATURES_GLOBAL, PROGRAM_NAME, TICK_NS_GLOBAL, hit_values,
    lookup::{MAX_CAPACITY, buckets_for},
    map_names,
};

use super::{
    Filter, FilterError, KernelLog, LoadOptions, PROGRAM,
    adoption::{Programs, stamp},
    egress::load_egress,
    load_retrying, random_seed,
};
use crate::bpf::{FeatureOff, HeaderRules, Limiter, Lists, Observer, Stats, Verifier, features};

impl Filter {
    /// Makes the program's maps and takes its lists, but loads no program
    /// yet: the lists can be filled on one thread while the verifier
    /// checks the programs on another ([`Staged::load_programs`]).
    pub fn stage(options: LoadOptions) -> Result<(Staged, Lists), FilterError> {
        let LoadOptions {
            capacity,
            buckets,
            hash_seed,
            without,
        } = options;
        if capacity > MAX_CAPACITY {
            return Err(FilterError::Capacity { capacity });
        }
        features::require().map_err(FilterError::Kernel)?;
        let (features, features_off) = probe_features(without);
        let mut loader = EbpfLoader::new();
        loader.override_global(FEATURES_GLOBAL, &features, true);
        let tick_ns = features::tick_ns().unwrap_or(0);
        loader.override_global(TICK_NS_GLOBAL, &tick_ns, true);
        // Each family's tables hold up to `capacity` keys.
        for name in [map_names::V4_BUCKETS, map_names::V6_BUCKETS] {
            loader.map_max_entries(name, buckets_for(capacity));
        }
        for name in [map_names::V4_CROWDED, map_names::V6_CROWDED] {
            loader.map_max_entries(name, capacity);
        }
        // Slot 0 and key index 0 are never handed out.
        loader.map_max_entries(map_names::V6_KEYS, capacity + 1);
        loader.map_max_entries(map_names::RULE_HITS, hit_values(capacity + 1));
        loader.map_max_entries(map_names::BUCKETS, buckets);
        loader.map_max_entries(map_names::AUTO_BLOCKED, buckets);
        // The maps are made and the programs' references to them resolved
        // here; the programs are loaded later, with the maps taken out by
        // then (each keeps its descriptor).
        let mut ebpf = loader.load(PROGRAM).map_err(FilterError::Load)?;
        let lists = Lists::take(
            &mut ebpf,
            capacity + 1,
            hash_seed.unwrap_or_else(random_seed),
            stamp(&options, features),
        )?;
        let kernel_log = KernelLog::init(&mut ebpf).map_err(|err| err.to_string());
        let staged = Staged::assemble(
            Programs::Loaded(ebpf),
            kernel_log,
            (features, features_off),
            None,
        )?;
        Ok((staged, lists))
    }
}

/// The kernel features the program runs with, and those it runs
/// without, each logged with why.
pub(super) fn probe_features(without: u32) -> (u32, Vec<FeatureOff>) {
    let (features, features_off) = features::probe(without);
    log_features_off(&features_off);
    (features, features_off)
}

/// Logs each kernel feature the program runs without, and why.
pub(super) fn log_features_off(features_off: &[FeatureOff]) {
    for off in features_off {
        log::warn!(
            "kernel feature {} is off: {}; {}",
            off.feature.name(),
            off.why,
            off.instead
        );
    }
}

/// A [`Filter`] whose maps are made and its lists taken out
/// ([`Filter::stage`]), its programs not yet loaded; once they are, the
/// part of a [`Filter`] besides its lists and attachments.
pub struct Staged {
    pub(super) programs: Programs,
    pub(super) stats: Arc<Stats>,
    pub(super) limiter: Limiter,
    pub(super) header_rules: HeaderRules,
    pub(super) observer: Observer,
    pub(super) verifier: Verifier,
    pub(super) kernel_log: Option<KernelLog>,
    /// Why the egress program (return routability) could not be loaded, if
    /// it could not: the filter runs without it.
    pub(super) egress_missing: Option<String>,
    /// The kernel features the program runs without, and why.
    pub(super) features_off: Vec<FeatureOff>,
    /// Whether the egress program is attached on TCX links (kernel 6.6),
    /// else as `clsact` filters.
    pub(super) tcx_links: bool,
}

impl Staged {
    /// The filter's parts besides its lists, from the maps of `programs`
    /// (a running program's: the observer takes its interfaces' counter
    /// slots over).
    pub(super) fn assemble(
        mut programs: Programs,
        kernel_log: Result<KernelLog, String>,
        (features, features_off): (u32, Vec<FeatureOff>),
        egress_missing: Option<String>,
    ) -> Result<Self, FilterError> {
        let stats = Stats::take(&mut programs)?;
        let limiter = Limiter::take(&mut programs)?;
        let header_rules = HeaderRules::take(&mut programs)?;
        let observer = match programs {
            Programs::Loaded(_) => Observer::take(&mut programs)?,
            Programs::Adopted { .. } => Observer::adopt(&mut programs)?,
        };
        let verifier = Verifier::take(&mut programs)?;
        let kernel_log = kernel_log
            .inspect_err(|err| log::warn!("the kernel-side debug log is unavailable: {err}"))
            .ok();
        Ok(Self {
            programs,
            stats: Arc::new(stats),
            limiter,
            header_rules,
            observer,
            verifier,
            kernel_log,
            egress_missing,
            features_off,
            tcx_links: features & spacefilter_common::features::TCX_LINKS != 0,
        })
    }

    /// Loads the XDP program and the egress program: the verifier's part
    /// of a load, most of its time.
    pub fn load_programs(&mut self) -> Result<(), FilterError> {
        let Programs::Loaded(ebpf) = &mut self.programs else {
            return Ok(());
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(FilterError::MissingProgram)?
            .try_into()
            .map_err(FilterError::Program)?;
        load_retrying(|| program.load()).map_err(FilterError::Program)?;
        self.egress_missing = load_egress(ebpf).err();
        if let Some(why) = &self.egress_missing {
            log::warn!(
                "the egress program is not loaded ({why}): sources are verified only by \
                 their cookies and by `spacefilter admit`"
            );
        }
        Ok(())
    }

    /// The filter, with the lists [`Filter::stage`] took (filled or not).
    #[must_use]
    pub fn with_lists(self, lists: Lists) -> Filter {
        Filter {
            loaded: self,
            lists,
            attached: BTreeMap::new(),
        }
    }
}
