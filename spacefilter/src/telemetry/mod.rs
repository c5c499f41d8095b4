//! What the daemon makes of the program's drop samples: described and fed
//! to the [`talkers`] ranking behind `spacefilter top` and to capture
//! clients ([`sampling`]), and written to pcap files ([`pcap`]).

pub mod pcap;
pub mod sampling;
pub mod talkers;
