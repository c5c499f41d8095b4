//! IPv4 and IPv6 prefixes as the lists hold them.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// An IPv4 or IPv6 prefix with no host bits set: `198.18.0.0/15`,
/// `2001:2::/48`, or a single address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error(
        "{input:?} is not an IP address or CIDR prefix; expected forms like 198.18.0.7, 198.18.0.0/15 or 2001:2::/48"
    )]
    Invalid { input: String },
    #[error("{input} has host bits set; did you mean {suggestion}?")]
    HostBits { input: String, suggestion: Prefix },
    #[error(
        "{input} is an IPv4-mapped IPv6 prefix, which no frame matches: IPv4 frames are matched by their IPv4 address; use {suggestion}"
    )]
    Mapped { input: String, suggestion: Prefix },
}

impl Prefix {
    /// The prefix made of one address.
    #[must_use]
    pub fn host(addr: IpAddr) -> Self {
        Self(IpNet::from(addr))
    }

    /// The prefix of `addr` with the given length, host bits cleared.
    ///
    /// # Panics
    /// If `len` is longer than the address (32 or 128).
    #[must_use]
    pub fn truncating(addr: IpAddr, len: u8) -> Self {
        Self(
            IpNet::new(addr, len)
                .expect("prefix length within the address")
                .trunc(),
        )
    }

    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length in bits.
    #[must_use]
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a container's"
    )]
    pub fn len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether the prefix is a single address (/32 or /128).
    #[must_use]
    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }

    #[must_use]
    pub fn net(&self) -> IpNet {
        self.0
    }
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix (within `::ffff:0:0/96`)
/// stands for.
fn unmapped(net: IpNet) -> Option<Prefix> {
    let IpNet::V6(v6) = net else {
        return None;
    };
    let v4 = v6.network().to_ipv4_mapped()?;
    let len = v6.prefix_len().checked_sub(96)?;
    Some(Prefix::truncating(IpAddr::V4(v4), len))
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses a prefix as a user gives it: host bits must be clear, and an
    /// IPv4-mapped IPv6 prefix is refused (it could never match).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let prefix = Self::parse_stored(input)?;
        if let Some(suggestion) = unmapped(prefix.0) {
            return Err(PrefixError::Mapped {
                input: input.trim().to_owned(),
                suggestion,
            });
        }
        Ok(prefix)
    }
}

impl Prefix {
    /// Parses a prefix as a state directory holds it: as [`FromStr`], but
    /// an IPv4-mapped prefix that an older version took is read back (and
    /// stays inert) rather than failing the whole file.
    fn parse_stored(input: &str) -> Result<Self, PrefixError> {
        let trimmed = input.trim();
        let invalid = || PrefixError::Invalid {
            input: input.to_owned(),
        };
        let net = if trimmed.contains('/') {
            IpNet::from_str(trimmed).map_err(|_| invalid())?
        } else {
            IpNet::from(IpAddr::from_str(trimmed).map_err(|_| invalid())?)
        };
        if net.trunc() != net {
            return Err(PrefixError::HostBits {
                input: trimmed.to_owned(),
                suggestion: Prefix(net.trunc()),
            });
        }
        Ok(Prefix(net))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.network(), self.0.prefix_len())
    }
}

impl From<IpNet> for Prefix {
    fn from(net: IpNet) -> Self {
        Self(net.trunc())
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Prefix::parse_stored(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(
            "198.18.0.7".parse::<Prefix>().unwrap().to_string(),
            "198.18.0.7/32"
        );
        assert_eq!("198.18.0.0/15".parse::<Prefix>().unwrap().len(), 15);
        assert_eq!(
            "2001:2::/48".parse::<Prefix>().unwrap().to_string(),
            "2001:2::/48"
        );
        assert_eq!("2001:2::1".parse::<Prefix>().unwrap().len(), 128);
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().len(), 0);
    }

    #[test]
    fn rejects_host_bits_with_a_suggestion() {
        let err = "198.18.0.7/24".parse::<Prefix>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "198.18.0.7/24 has host bits set; did you mean 198.18.0.0/24?"
        );
    }

    #[test]
    fn refuses_ipv4_mapped_prefixes_with_the_ipv4_one() {
        for (mapped, ipv4) in [
            ("::ffff:198.18.0.7", "198.18.0.7/32"),
            ("::ffff:198.18.0.0/120", "198.18.0.0/24"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ] {
            let err = mapped.parse::<Prefix>().unwrap_err();
            assert_eq!(
                err,
                PrefixError::Mapped {
                    input: mapped.to_owned(),
                    suggestion: ipv4.parse().unwrap()
                }
            );
            assert!(err.to_string().contains(ipv4), "{err}");
        }
        // Around the mapped range: ordinary IPv6 prefixes.
        for fine in ["::/80", "::fffe:198.18.0.7", "2001:2::ffff:c612:7"] {
            assert!(fine.parse::<Prefix>().is_ok(), "{fine}");
        }
        // A state directory written before keeps reading.
        let stored: Prefix = serde_json::from_str("\"::ffff:198.18.0.7/128\"").unwrap();
        assert_eq!(stored.len(), 128);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "198.18.0",
            "198.18.0.0/33",
            "2001:2::/129",
            "example.com",
            "1.2.3.4/",
        ] {
            assert!(
                matches!(bad.parse::<Prefix>(), Err(PrefixError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
