//! Pinned XDP links: the filter outlives this process, and a successor
//! takes a predecessor's link over in one update (see
//! [`crate::bpf::pins`]).

use std::path::{Path, PathBuf};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use spacefilter_common::map_names;

use super::{AttachMode, Filter, FilterError};
use crate::bpf::pins::egress_pin;
use crate::error_chain;

/// How the filter holds an interface's XDP link.
pub(super) enum Held {
    /// In the program: the link ends with this process.
    Program(XdpLinkId),
    /// Pinned on bpffs: the link outlives this process.
    Pinned(PinnedLink),
    /// A predecessor's pinned link, taken over: in the program, and still
    /// pinned at the path.
    Adopted(XdpLinkId, PathBuf),
}

/// How the filter holds an interface's egress link (a TCX link, kernel
/// 6.6, can be pinned like the XDP link; a `clsact` filter before it
/// cannot, and ends with this process).
pub(super) enum Egress {
    Program(SchedClassifierLinkId),
    Pinned(PinnedLink),
    Adopted(SchedClassifierLinkId, PathBuf),
}

/// Removes the pin of `iface`'s link.
pub(super) fn remove_pin(iface: &str, pin: &Path) -> Result<(), FilterError> {
    std::fs::remove_file(pin).map_err(|source| FilterError::Unpin {
        iface: iface.to_owned(),
        source,
    })
}

impl Filter {
    /// Whether `iface`'s link is pinned (it outlives this process).
    #[must_use]
    pub fn pinned(&self, iface: &str) -> bool {
        self.attached
            .get(iface)
            .is_some_and(|a| !matches!(a.link, Held::Program(_)))
    }

    /// Attaches to `iface` through the XDP link pinned at `pin`, so that
    /// the program stays attached after this process ends (a crash, a
    /// stop, an upgrade) until a successor takes the link over or
    /// [`Self::detach`] unpins it. If a link is pinned there already (a
    /// predecessor's), this program replaces the one on it in a single
    /// update (`BPF_LINK_UPDATE`, kernel 5.9): no frame goes unfiltered.
    /// Returns the mode and whether a link was taken over.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pin: &Path,
    ) -> Result<(AttachMode, bool), FilterError> {
        if pin.exists() {
            match self.take_over(iface, pin) {
                Ok(used) => return Ok((used, true)),
                Err(err) => {
                    log::warn!(
                        "{iface}: the link pinned at {} could not be taken over ({}); \
                         attaching anew",
                        pin.display(),
                        error_chain(&err)
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let (used, id) = self.attach_link(iface, mode)?;
        let link = self.program().take_link(id).map_err(FilterError::Program)?;
        let pinned = FdLink::try_from(link)
            .map_err(|err| FilterError::Pin {
                iface: iface.to_owned(),
                why: format!("the link is not a bpf_link (kernel 5.9): {err}"),
            })
            .and_then(|fd_link| {
                fd_link.pin(pin).map_err(|err| FilterError::Pin {
                    iface: iface.to_owned(),
                    why: error_chain(&err),
                })
            });
        match pinned {
            Ok(pinned) => {
                self.finish_attach(iface, used, Held::Pinned(pinned), Some(&egress_pin(pin)));
            }
            Err(err) => {
                // Taken out of the program and not pinned: its last
                // reference was the dropped value, so the program is off
                // the interface. Attach again, unpinned.
                log::warn!(
                    "{}; the filter lasts as long as this process",
                    error_chain(&err)
                );
                let (used, id) = self.attach_link(iface, mode)?;
                self.finish_attach(iface, used, Held::Program(id), None);
                return Ok((used, false));
            }
        }
        Ok((used, false))
    }

    /// Puts this program on the link pinned at `pin` in one update.
    fn take_over(&mut self, iface: &str, pin: &Path) -> Result<AttachMode, FilterError> {
        let pin_err = |why: String| FilterError::Pin {
            iface: iface.to_owned(),
            why,
        };
        let pinned = PinnedLink::from_pin(pin).map_err(|err| pin_err(error_chain(&err)))?;
        let link = FdLink::from(pinned);
        match link.info() {
            // This program, adopted: nothing to carry over.
            Ok(info) if self.program_id().ok() == Some(info.program_id()) => {}
            Ok(info) => self.carry_over(iface, info.program_id()),
            Err(err) => log::warn!(
                "{iface}: the pinned link's program is unknown ({}); its buckets, auto-blocks \
                 and verified sources start afresh",
                error_chain(&err)
            ),
        }
        let link = XdpLink::try_from(link)
            .map_err(|err| pin_err(format!("not an XDP link: {}", error_chain(&err))))?;
        let undo = self.slot_first(iface);
        let id = match self.program().attach_to_link(link) {
            Ok(id) => id,
            Err(err) => {
                undo(self);
                return Err(pin_err(format!("BPF_LINK_UPDATE: {}", error_chain(&err))));
            }
        };
        let used = if crate::net::iface::xdp_generic(iface) == Some(true) {
            AttachMode::Skb
        } else {
            AttachMode::Native
        };
        self.finish_attach(
            iface,
            used,
            Held::Adopted(id, pin.to_path_buf()),
            Some(&egress_pin(pin)),
        );
        Ok(used)
    }
}

impl Filter {
    /// Attaches the egress program to `iface`; with `pin`, through the
    /// link pinned there (taken over in one update if a predecessor's is),
    /// so that the host's traffic keeps verifying its peers while no
    /// daemon runs.
    pub(super) fn attach_egress_held(
        &mut self,
        iface: &str,
        pin: Option<&Path>,
    ) -> Result<Egress, String> {
        // A `clsact` filter (no TCX links, before 6.6) cannot be pinned.
        let Some(pin) = pin.filter(|_| self.loaded.tcx_links) else {
            if let Some(pin) = pin {
                // A TCX link a predecessor pinned goes with its pin.
                let _ = std::fs::remove_file(pin);
            }
            return self.attach_egress(iface).map(Egress::Program);
        };
        if pin.exists() {
            let taken = PinnedLink::from_pin(pin)
                .map_err(|err| error_chain(&err))
                .and_then(|pinned| {
                    SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|err| error_chain(&err))
                })
                .and_then(|link| {
                    self.egress()
                        .ok_or_else(|| "the egress program is missing".to_owned())?
                        .attach_to_link(link)
                        .map_err(|err| error_chain(&err))
                });
            match taken {
                Ok(id) => return Ok(Egress::Adopted(id, pin.to_path_buf())),
                Err(why) => {
                    log::warn!(
                        "{iface}: the egress link pinned at {} could not be taken over ({why}); \
                         attaching anew",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let id = self.attach_egress(iface)?;
        let program = self.egress().ok_or("the egress program is missing")?;
        let link = program.take_link(id).map_err(|err| error_chain(&err))?;
        FdLink::try_from(link)
            .map_err(|err| format!("the egress link has no file descriptor to pin: {err}"))?
            .pin(pin)
            .map(Egress::Pinned)
            .map_err(|err| format!("pinning the egress link: {}", error_chain(&err)))
    }

    /// Lets go of `iface`'s egress `clsact` filter (no TCX links: it
    /// cannot be pinned) as this process leaves the interface filtered, so
    /// that the host's traffic goes on verifying its peers: the filter
    /// stays in the kernel with the program, and the next start replaces
    /// it. Returns whether there was one.
    pub fn leave_egress(&mut self, iface: &str) -> bool {
        if self.loaded.tcx_links {
            return false;
        }
        let Some(attachment) = self.attached.get_mut(iface) else {
            return false;
        };
        let Some(Egress::Program(id)) = attachment.egress.take() else {
            return false;
        };
        match self.egress().map(|program| program.take_link(id)) {
            Some(Ok(link)) => {
                // Dropped, the link would take the filter off.
                std::mem::forget(link);
                true
            }
            Some(Err(err)) => {
                log::warn!("{iface}: the egress filter: {}", error_chain(&err));
                false
            }
            None => false,
        }
    }

    /// Takes the egress program off `iface`, unpinning its link.
    pub(super) fn detach_egress(&mut self, iface: &str, egress: Egress) {
        let result = match egress {
            Egress::Program(id) => self
                .egress()
                .map(|p| p.detach(id).map_err(|e| error_chain(&e))),
            Egress::Pinned(pinned) => Some(pinned.unpin().map(drop).map_err(|e| error_chain(&e))),
            Egress::Adopted(id, pin) => {
                let _ = std::fs::remove_file(&pin);
                self.egress()
                    .map(|p| p.detach(id).map_err(|e| error_chain(&e)))
            }
        };
        if let Some(Err(why)) = result {
            log::warn!("{iface}: detaching the egress program: {why}");
        }
    }

    /// Copies what the predecessor's program (`old`, still filtering)
    /// learnt into this program's maps before the swap, so that a takeover
    /// forgets nothing a flood taught: the sources' token buckets (a source
    /// over its limit stays over it), the auto-blocks (journaled by the next
    /// reconciliation), and the verified sources (real clients stay
    /// admitted). Entries the old program writes between the copy and the
    /// swap are lost; a map whose layout differs (another version) is not
    /// copied.
    fn carry_over(&mut self, iface: &str, old: u32) {
        let maps = match old_maps(old) {
            Ok(maps) => maps,
            Err(why) => {
                log::warn!("{iface}: reading the predecessor's maps: {why}; starting afresh");
                return;
            }
        };
        let (buckets, auto) = self.loaded.limiter.carried();
        let copied = [
            copy(&maps, map_names::BUCKETS, buckets),
            copy(&maps, map_names::AUTO_BLOCKED, auto),
        ];
        let verified = copy(&maps, map_names::VERIFIED, self.loaded.verifier.carried());
        if copied[1] > 0 {
            // The program reads the auto-blocks only while one is in force.
            if let Err(err) = self.loaded.limiter.settle_auto_active() {
                log::warn!("{}", error_chain(&err));
            }
        }
        log::info!(
            "{iface}: carried over from the predecessor's program: {} sources' buckets, {} \
             auto-blocks, {verified} verified sources",
            copied[0],
            copied[1]
        );
    }
}

/// The maps of program `id`, by name, with their layouts.
fn old_maps(id: u32) -> Result<Vec<(String, MapInfo)>, String> {
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| format!("program {id} is gone"))?;
    let ids = program
        .map_ids()
        .map_err(|err| error_chain(&err))?
        .ok_or("the kernel does not list a program's maps")?;
    Ok(ids
        .into_iter()
        .filter_map(|id| MapInfo::from_id(id).ok())
        .filter_map(|info| Some((info.name_as_str()?.to_owned(), info)))
        .collect())
}

/// Copies every entry of the old map `name` (among `maps`) into `to`, if
/// its key and value are laid out as `to`'s; returns how many.
fn copy<V: Pod>(
    maps: &[(String, MapInfo)],
    name: &str,
    to: &mut HashMap<MapData, [u8; 16], V>,
) -> usize {
    let Some((_, info)) = maps.iter().find(|(n, _)| n == name) else {
        return 0;
    };
    let fits = info.key_size() as usize == size_of::<[u8; 16]>()
        && info.value_size() as usize == size_of::<V>()
        && info.max_entries() > 0;
    if !fits {
        log::warn!("the predecessor's {name} is laid out otherwise: not carried over");
        return 0;
    }
    let from = MapData::from_id(info.id())
        .map_err(|err| error_chain(&err))
        .and_then(|data| Map::from_map_data(data).map_err(|err| error_chain(&err)))
        .and_then(|map| {
            HashMap::<MapData, [u8; 16], V>::try_from(map).map_err(|err| error_chain(&err))
        });
    let from = match from {
        Ok(from) => from,
        Err(why) => {
            log::warn!("opening the predecessor's {name}: {why}");
            return 0;
        }
    };
    let mut copied = 0;
    for (key, value) in from.iter().filter_map(Result::ok) {
        if to.insert(key, value, 0).is_ok() {
            copied += 1;
        }
    }
    copied
}

/// The id of the program on the XDP link pinned at `pin`, if one is.
#[must_use]
pub fn pinned_program(pin: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(pin).ok()?);
    link.info().ok().map(|info| info.program_id())
}
