//! The network's terms as the rest of the crate speaks them: prefixes and
//! the lists they are on, bulk list files, the lockout guard (this host's
//! own addresses) and the interfaces to attach to; and [`packed`], the
//! dense ordered maps that the lists are kept in.

pub mod bulk;
pub mod host_ports;
pub mod iface;
pub mod list;
pub mod lockout;
pub mod packed;
pub mod prefix;
pub mod sysctl;

pub use self::{
    list::List,
    prefix::{Prefix, PrefixError},
};
