//! The egress program (return routability, `spacefilter-ebpf/src/egress.rs`):
//! loaded beside the XDP program, attached at each filtered interface's
//! egress on a TCX link (kernel 6.6) or, before it, as a `clsact` filter.

use aya::{
    Ebpf, TestRunOptions,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
};
use spacefilter_common::EGRESS_PROGRAM_NAME;

use super::{Filter, FilterError, load_retrying};
use crate::error_chain;

/// Loads the egress program (return routability) into the kernel.
pub(super) fn load_egress(ebpf: &mut Ebpf) -> Result<(), String> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(EGRESS_PROGRAM_NAME)
        .ok_or_else(|| format!("the object file has no program named {EGRESS_PROGRAM_NAME}"))?
        .try_into()
        .map_err(|err: ProgramError| error_chain(&err))?;
    load_retrying(|| program.load()).map_err(|err| error_chain(&err))
}

/// Takes off `iface`'s egress `clsact` filters that run this project's
/// egress program (`tcx-links` off: a stopped or crashed daemon leaves its
/// filter on, since it cannot be pinned); returns whether there were any.
pub fn remove_left_egress(iface: &str) -> Result<bool, String> {
    match tc::qdisc_detach_program(iface, TcAttachType::Egress, EGRESS_PROGRAM_NAME) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(err)) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(format!(
            "taking off the egress filters left on {iface}: {}",
            error_chain(&err)
        )),
    }
}

impl Filter {
    pub(super) fn egress(&mut self) -> Option<&mut SchedClassifier> {
        self.loaded.programs.egress()
    }

    /// Attaches the egress program to `iface`, after the programs already
    /// there: on a TCX link (kernel 6.6), else as a `clsact` qdisc's
    /// filter, in place of any a predecessor left (see
    /// [`remove_left_egress`]).
    pub(super) fn attach_egress(&mut self, iface: &str) -> Result<SchedClassifierLinkId, String> {
        if let Some(why) = &self.loaded.egress_missing {
            return Err(why.clone());
        }
        // A predecessor without TCX links left its filter on.
        match remove_left_egress(iface) {
            Ok(false) => {}
            Ok(true) => log::info!("{iface}: replaced the egress filter a predecessor left"),
            Err(why) => log::warn!("{iface}: {why}"),
        }
        let options = if self.loaded.tcx_links {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            // An existing qdisc is fine.
            let _ = tc::qdisc_add_clsact(iface);
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let program = self.egress().ok_or("the egress program is missing")?;
        program
            .attach_with_options(iface, TcAttachType::Egress, options)
            .map_err(|err| error_chain(&err))
    }

    /// Runs the egress program once on `frame`, a frame the host sends,
    /// with `BPF_PROG_TEST_RUN` (kernel 4.12): the proofs it records are
    /// those the frame would.
    pub fn test_run_egress(&mut self, frame: &[u8]) -> Result<i32, FilterError> {
        let program = self
            .egress()
            .ok_or(FilterError::TestRun(ProgramError::NotLoaded))?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .map_err(FilterError::TestRun)?;
        #[expect(clippy::cast_possible_wrap, reason = "a TC action, signed")]
        Ok(result.return_value as i32)
    }

    /// Why sources are not verified by the host's own traffic, if they
    /// are not: the egress program could not be loaded, or attached to
    /// some interface.
    #[must_use]
    pub fn egress_problem(&self) -> Option<String> {
        if let Some(why) = &self.loaded.egress_missing {
            return Some(format!("the egress program could not be loaded: {why}"));
        }
        let missing: Vec<&str> = self
            .attached
            .iter()
            .filter(|(_, a)| a.egress.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "the egress program is not attached to {}",
                missing.join(", ")
            )
        })
    }
}
