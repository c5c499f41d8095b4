//! The host's UDP ports as the reflection guard's default profile reads
//! them: the ephemeral range (`net.ipv4.ip_local_port_range`, where the
//! kernel picks the local port of a client socket that binds none), and
//! the UDP sockets in `/proc/net/udp` and `/proc/net/udp6`. Both belong to
//! the network namespace of the process that reads them.
//!
//! A socket with a peer (`connect`ed: state 1, `TCP_ESTABLISHED`, and a
//! remote port) is a client's: a resolver's query socket, say (glibc,
//! Unbound's `udp-connect`, BIND's dispatch). A socket without one is a
//! listening service, which may be answered from any address and port.

use std::{collections::BTreeSet, fs, io};

use super::sysctl;

/// Linux's default `net.ipv4.ip_local_port_range`.
pub const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// The host's UDP ports, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// `net.ipv4.ip_local_port_range` (it covers IPv6 too).
    pub ephemeral: (u16, u16),
    /// Ports with a UDP socket that has no peer: services.
    pub listening: BTreeSet<u16>,
    /// Ports whose UDP sockets all have a peer: clients' ports.
    pub clients: BTreeSet<u16>,
}

impl HostPorts {
    /// Reads the ephemeral range and the UDP sockets of the namespace this
    /// process runs in.
    ///
    /// # Errors
    /// The sysctl or `/proc/net/udp` cannot be read, or reads as nonsense.
    pub fn read() -> io::Result<Self> {
        let range = sysctl::read("net.ipv4.ip_local_port_range")?;
        let ephemeral = parse_range(&range).ok_or_else(|| {
            io::Error::other(format!(
                "net.ipv4.ip_local_port_range reads {range:?}, not two ports"
            ))
        })?;
        let mut sockets = parse_sockets(&fs::read_to_string("/proc/net/udp")?);
        // Without IPv6 in the kernel the table is absent.
        match fs::read_to_string("/proc/net/udp6") {
            Ok(text) => sockets.extend(parse_sockets(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        Ok(Self::from_sockets(ephemeral, &sockets))
    }

    /// The ports of `sockets` (local port, has a peer) sorted into
    /// listening and client ports.
    #[must_use]
    pub fn from_sockets(ephemeral: (u16, u16), sockets: &[(u16, bool)]) -> Self {
        let listening: BTreeSet<u16> = sockets
            .iter()
            .filter(|&&(_, peer)| !peer)
            .map(|&(port, _)| port)
            .collect();
        let clients = sockets
            .iter()
            .filter(|&&(port, peer)| peer && !listening.contains(&port))
            .map(|&(port, _)| port)
            .collect();
        Self {
            ephemeral,
            listening,
            clients,
        }
    }

    /// The service ports as inclusive ranges. With `explicit` ranges, those
    /// ports but the clients'; without, every listening port outside the
    /// ephemeral range (a port nothing listens on has no service to
    /// crowd out, and answers to the host's own queries arrive at ports
    /// that do not listen).
    #[must_use]
    pub fn service_ports(&self, explicit: &[(u16, u16)]) -> Vec<(u16, u16)> {
        let (lo, hi) = self.ephemeral;
        let service = |port: u16| {
            if explicit.is_empty() {
                self.listening.contains(&port) && !(lo..=hi).contains(&port)
            } else {
                explicit.iter().any(|&(a, b)| (a..=b).contains(&port))
                    && !self.clients.contains(&port)
            }
        };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for port in 0..=u16::MAX {
            if !service(port) {
                continue;
            }
            match ranges.last_mut() {
                Some((_, end)) if u32::from(*end) + 1 == u32::from(port) => *end = port,
                _ => ranges.push((port, port)),
            }
        }
        ranges
    }
}

/// `"32768\t60999"` as a range.
fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    (lo <= hi).then_some((lo, hi))
}

/// The sockets of a `/proc/net/udp` or `udp6` table: local port, and
/// whether the socket has a peer. Lines that do not parse are skipped
/// (the header among them).
fn parse_sockets(table: &str) -> Vec<(u16, bool)> {
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = port_of(fields.next()?)?;
            let remote = port_of(fields.next()?)?;
            let state = u8::from_str_radix(fields.next()?, 16).ok()?;
            Some((local, state == 1 && remote != 0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  110: 00000000:007B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0
  111: 0100007F:4E20 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 2 2 0000000000000000 0
  112: 00000000:6987 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 0
  113: 00000000:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0000000000000000 0
";

    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   5: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
   6: 00000000000000000000000001000000:007B 00000000000000000000000001000000:007B 01 00000000:00000000 00:00000000 00000000     0        0 6 2 0000000000000000 0
";

    fn host() -> HostPorts {
        let mut sockets = parse_sockets(UDP);
        sockets.extend(parse_sockets(UDP6));
        HostPorts::from_sockets(DEFAULT_EPHEMERAL, &sockets)
    }

    #[test]
    fn sockets_are_listening_or_clients() {
        let host = host();
        // 123 has a peerless socket beside a connected one: it listens.
        assert_eq!(
            host.listening.iter().copied().collect::<Vec<_>>(),
            [123, 443, 27015, 40000]
        );
        assert_eq!(host.clients.iter().copied().collect::<Vec<_>>(), [20000]);
    }

    #[test]
    fn default_services_listen_outside_the_ephemeral_range() {
        assert_eq!(
            host().service_ports(&[]),
            [(123, 123), (443, 443), (27015, 27015)]
        );
    }

    #[test]
    fn explicit_services_spare_client_ports() {
        assert_eq!(
            host().service_ports(&[(0, 32767)]),
            [(0, 19999), (20001, 32767)]
        );
    }

    #[test]
    fn the_range_sysctl_parses() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("32768"), None);
    }
}
