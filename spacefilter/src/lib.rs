//! spacefilter's userspace: loads the XDP program, attaches it to
//! interfaces, and steers it through its maps. Each layer talks to the
//! next one only:
//!
//! ```text
//! cli ─▶ api (client) ═ socket ═▶ server ─▶ daemon ─▶ store
//!                                              └────▶ bpf ─▶ kernel
//! ```
//!
//! - [`cli`]: the command line, one file per verb group; [`config`]: the
//!   daemon's TOML file.
//! - [`api`]: the wire contract of the control socket and its views, and
//!   the client the verbs use.
//! - [`server`]: the control socket, its streams and the metrics endpoint,
//!   over a [`daemon::Handle`].
//! - [`daemon`]: `spacefilter run`: start, tasks, signals, shutdown, and
//!   the core state split by concern (lists, guards, header rules,
//!   observability).
//! - [`store`]: the state directory: journal and snapshot, in records of
//!   its own.
//! - [`bpf`]: the loaded program and typed wrappers over its maps.
//! - [`telemetry`]: drop samples described, ranked and written to pcap.
//! - [`net`]: prefixes and lists, bulk files, the lockout guard,
//!   interfaces.

pub mod api;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod net;
pub mod server;
pub mod store;
pub mod telemetry;

pub use bpf::{AttachMode, Counters, Entry, Filter, FilterError, ListError, LoadOptions};
pub use net::{List, Prefix, PrefixError};
pub use spacefilter_common::Reason;

/// An error and its causes on one line: `a: b: c`.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
