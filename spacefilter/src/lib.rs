//! spacefilter's userspace: loads the XDP program, attaches it to
//! interfaces, and steers it through its maps.
//!
//! - [`prefix`]: the IPv4/IPv6 prefixes that the lists hold, parsed strictly.
//! - [`maps`]: typed wrappers over the program's maps (lists, counters).
//! - [`filter`]: the loaded program: load, attach, detach, test runs.
//! - [`daemon`]: `spacefilter run`: owns the program, persists the rules in
//!   [`state`], expires timed entries, serves the [`control`] socket.
//! - [`protocol`]: the JSON-lines protocol of the control socket;
//!   [`client`] is its client side.
//! - [`metrics`]: the Prometheus endpoint; [`observe`]: per-interface
//!   counter slots, drop sampling and the kernel-side debug log;
//!   [`sampling`]: the daemon's side of the samples, ranked by [`talkers`]
//!   for `spacefilter top`, drawn by [`top`]; [`capture`] writes samples
//!   to pcap files.
//! - [`guard`]: the lockout guard; [`iface`]: interface checks; [`bulk`]:
//!   bulk list files.

pub mod bulk;
pub mod capture;
pub mod client;
pub mod control;
pub mod daemon;
pub mod filter;
pub mod guard;
pub mod iface;
pub mod maps;
pub mod metrics;
pub mod observe;
pub mod prefix;
pub mod protocol;
pub mod sampling;
pub mod state;
pub mod talkers;
pub mod top;

pub use filter::{AttachMode, Filter, FilterError, LoadOptions};
pub use maps::{Counters, Entry, List, ListError};
pub use prefix::{Prefix, PrefixError};
pub use spacefilter_common::Reason;
