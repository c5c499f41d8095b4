//! Adopting the running program: a start finds its predecessor's program
//! still filtering on its pinned links, built from this same program with
//! the same options, and takes it over with its maps instead of loading
//! another (no verifier, no fill of a million keys): the lists are read
//! back and brought in line with the state ([`Lists::adopt`]).

use std::{borrow::Cow, collections::BTreeMap};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapInfo},
    programs::{ProgramInfo, SchedClassifier, Xdp},
};
use aya_obj::programs::XdpAttachType;
use spacefilter_common::{EGRESS_PROGRAM_NAME, PROGRAM_NAME, map_names};

use super::{
    Filter, FilterError, KernelLog, LoadOptions, PROGRAM, Staged, staged::log_features_off,
};
use crate::{
    bpf::{ListError, Lists, MapSource, features as probe},
    error_chain,
    net::Prefix,
};

/// The programs of a [`Staged`] filter, and the maps not yet taken.
pub(in crate::bpf) enum Programs {
    /// The object this process loads (or is loading).
    Loaded(Ebpf),
    /// A running program and its egress program, taken over.
    Adopted {
        xdp: Box<Xdp>,
        egress: Option<Box<SchedClassifier>>,
        maps: BTreeMap<String, Map>,
    },
}

impl Programs {
    pub(super) fn xdp(&mut self) -> Option<&mut Xdp> {
        match self {
            Programs::Loaded(ebpf) => ebpf
                .program_mut(PROGRAM_NAME)
                .and_then(|p| p.try_into().ok()),
            Programs::Adopted { xdp, .. } => Some(xdp),
        }
    }

    pub(super) fn egress(&mut self) -> Option<&mut SchedClassifier> {
        match self {
            Programs::Loaded(ebpf) => ebpf
                .program_mut(EGRESS_PROGRAM_NAME)
                .and_then(|p| p.try_into().ok()),
            Programs::Adopted { egress, .. } => egress.as_deref_mut(),
        }
    }
}

impl MapSource for Programs {
    fn take_map(&mut self, name: &str) -> Option<Map> {
        match self {
            Programs::Loaded(ebpf) => ebpf.take_map(name),
            Programs::Adopted { maps, .. } => maps.remove(name),
        }
    }
}

/// What a program was built from: its object, the sizes of its maps and
/// the kernel features it runs with. Stored in `CONFIG` at load; a
/// successor adopts the program only if its own stamp is the same.
pub(super) fn stamp(options: &LoadOptions, features: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(PROGRAM);
    for word in [options.capacity, options.buckets, features] {
        hasher.update(&word.to_le_bytes());
    }
    hasher.finalize()
}

/// The kernel's name of a program: at most 15 bytes.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

fn unadoptable(why: String) -> FilterError {
    FilterError::List(ListError::Unadoptable {
        name: map_names::CONFIG,
        why,
    })
}

/// The running program `id`, if it is this project's and no other
/// process holds it (two daemons must not write one program's maps).
fn running(id: u32) -> Result<ProgramInfo, FilterError> {
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .filter(|p| p.name_as_str() == Some(PROGRAM_NAME))
        .ok_or_else(|| unadoptable(format!("program {id} is not a running {PROGRAM_NAME}")))?;
    if let Some(pid) = holder(id) {
        return Err(unadoptable(format!(
            "program {id} is held by process {pid}, which may be writing its maps"
        )));
    }
    Ok(program)
}

/// The id of `program`'s map `name`.
fn map_id(program: &ProgramInfo, name: &str) -> Option<u32> {
    program
        .map_ids()
        .ok()
        .flatten()?
        .into_iter()
        .find(|&id| MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name)))
}

/// The maps of `program`, by name, opened.
fn open_maps(program: &ProgramInfo, maps: &mut BTreeMap<String, Map>) -> Result<(), String> {
    let ids = program
        .map_ids()
        .map_err(|err| error_chain(&err))?
        .ok_or("the kernel does not list a program's maps")?;
    for id in ids {
        let info = MapInfo::from_id(id).map_err(|err| error_chain(&err))?;
        let Some(name) = info.name_as_str().map(str::to_owned) else {
            continue;
        };
        if maps.contains_key(&name) {
            continue;
        }
        let map = MapData::from_id(id)
            .and_then(Map::from_map_data)
            .map_err(|err| format!("opening map {name}: {}", error_chain(&err)))?;
        maps.insert(name, map);
    }
    Ok(())
}

/// What an adoption found in the lists' tables and changed there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Keys found where the state says.
    pub held: usize,
    /// Words rewritten: another hit-counter slot, or another verdict.
    pub rewritten: usize,
    /// Keys the tables held that the state does not: taken out.
    pub stale: usize,
    /// Keys of the state the tables lacked: written.
    pub missing: usize,
}

/// A process other than this one holding program `id` open (a daemon
/// still running it), if one is.
fn holder(id: u32) -> Option<u32> {
    let me = std::process::id();
    let needle = format!("prog_id:\t{id}\n");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog")
                    && std::fs::read_to_string(format!(
                        "/proc/{pid}/fdinfo/{}",
                        fd.file_name().to_string_lossy()
                    ))
                    .is_ok_and(|info| info.contains(&needle))
            })
        })
}

impl Filter {
    /// Whether the running program `id` can be adopted with `options`
    /// (see [`Filter::adopt`]), as far as can be told without reading its
    /// tables: a start that cannot adopt loads its program while it reads
    /// the state. Why not, if not.
    pub fn adoptable(id: u32, options: LoadOptions) -> Result<(), FilterError> {
        let (features, _) = probe::probe(options.without);
        let program = running(id)?;
        let config = map_id(&program, map_names::CONFIG)
            .ok_or_else(|| unadoptable(format!("program {id} has no {}", map_names::CONFIG)))?;
        let map = MapData::from_id(config)
            .and_then(Map::from_map_data)
            .map_err(|err| unadoptable(error_chain(&err)))?;
        let mut maps = BTreeMap::from([(map_names::CONFIG.to_owned(), map)]);
        Lists::stamped(&mut maps, stamp(&options, features))?;
        Ok(())
    }

    /// Takes over the running program `id` (the one on this filter's
    /// pinned links) with its maps, if it was built from this program with
    /// `options` and the kernel features this kernel has: no program is
    /// loaded, and the lists are read back and brought in line with
    /// `allow` and `block` (each in order, no prefix twice). Whatever else
    /// the state holds (limits, rules on headers, shield) is set again by
    /// the caller, as after a load. Fails when the program cannot be
    /// adopted (before any write, unless its tables cannot be read back:
    /// see [`Lists::adopt`]); the caller then loads one.
    pub fn adopt(
        id: u32,
        options: LoadOptions,
        allow: &[Prefix],
        block: &[Prefix],
    ) -> Result<(Self, Adopted), FilterError> {
        probe::require().map_err(FilterError::Kernel)?;
        // (Logged once adopted: a failed adoption is followed by a load,
        // which logs them.)
        let (features, features_off) = probe::probe(options.without);
        let program = running(id)?;
        let mut maps = BTreeMap::new();
        open_maps(&program, &mut maps).map_err(unadoptable)?;
        // The egress program shares the verified sources' map.
        let verified_map = map_id(&program, map_names::VERIFIED);
        let egress_info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some(kernel_name(EGRESS_PROGRAM_NAME)))
            .find(|p| {
                p.map_ids()
                    .ok()
                    .flatten()
                    .is_some_and(|ids| verified_map.is_some_and(|v| ids.contains(&v)))
            });
        if let Some(info) = &egress_info {
            open_maps(info, &mut maps).map_err(unadoptable)?;
        }
        let capacity = options.capacity + 1;
        let (lists, adopted) =
            Lists::adopt(&mut maps, capacity, stamp(&options, features), allow, block)?;
        let kernel_log =
            KernelLog::init_from_id_with_logger(id, log::logger()).map_err(|err| err.to_string());
        let xdp = Xdp::from_program_info(
            program,
            Cow::Borrowed(PROGRAM_NAME),
            XdpAttachType::Interface,
        )
        .map_err(FilterError::Program)?;
        let (egress, egress_missing) = match egress_info.map(|info| {
            SchedClassifier::from_program_info(info, Cow::Borrowed(EGRESS_PROGRAM_NAME))
        }) {
            Some(Ok(egress)) => (Some(Box::new(egress)), None),
            Some(Err(err)) => (None, Some(error_chain(&err))),
            None => (
                None,
                Some("the running egress program was not found".to_owned()),
            ),
        };
        let programs = Programs::Adopted {
            xdp: Box::new(xdp),
            egress,
            maps,
        };
        log_features_off(&features_off);
        let staged = Staged::assemble(
            programs,
            kernel_log,
            (features, features_off),
            egress_missing,
        )?;
        let [v4, v6] = adopted;
        let adopted = Adopted {
            held: v4.held + v6.held,
            rewritten: v4.rewritten + v6.rewritten,
            stale: v4.stale + v6.stale,
            missing: v4.missing + v6.missing,
        };
        Ok((staged.with_lists(lists), adopted))
    }
}
