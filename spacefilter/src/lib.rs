//! spacefilter's userspace: loads the XDP program, attaches it to
//! interfaces, and steers it through its maps.
//!
//! - [`prefix`]: the IPv4/IPv6 prefixes that the lists hold, parsed strictly.
//! - [`maps`]: typed wrappers over the program's maps (lists, counters).
//! - [`filter`]: the loaded program: load, attach, detach, test runs.

pub mod filter;
pub mod maps;
pub mod prefix;

pub use filter::{AttachMode, Filter, FilterError, LoadOptions};
pub use maps::{Counters, Entry, List, ListError};
pub use prefix::{Prefix, PrefixError};
pub use spacefilter_common::Reason;
