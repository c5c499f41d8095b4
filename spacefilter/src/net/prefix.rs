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

/// The longest text of a prefix: an IPv6 address of eight full groups,
/// and `/128`.
pub const TEXT_MAX: usize = 43;

impl Prefix {
    /// The prefix as `Display` writes it, written into `buf` by hand:
    /// snapshots, journal records and listings write a million of them,
    /// and the formatting machinery costs more than the rest of each
    /// record.
    #[must_use]
    pub fn text(self, buf: &mut [u8; TEXT_MAX]) -> &str {
        let mut out = Cursor { buf, len: 0 };
        match self.addr() {
            IpAddr::V4(addr) => out.v4(addr),
            IpAddr::V6(addr) => out.v6(addr),
        }
        out.push(b'/');
        out.decimal(self.len());
        let len = out.len;
        std::str::from_utf8(&buf[..len]).expect("ASCII")
    }
}

/// Bytes written into a buffer that holds any prefix's text.
struct Cursor<'b> {
    buf: &'b mut [u8; TEXT_MAX],
    len: usize,
}

impl Cursor<'_> {
    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn decimal(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }

    fn v4(&mut self, addr: std::net::Ipv4Addr) {
        for (i, octet) in addr.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.decimal(octet);
        }
    }

    /// As `Ipv6Addr`'s `Display` writes it (RFC 5952: hex groups without
    /// leading zeros, the first longest run of two or more zero groups as
    /// `::`; an IPv4-mapped address as `::ffff:a.b.c.d`).
    fn v6(&mut self, addr: std::net::Ipv6Addr) {
        if let Some(v4) = addr.to_ipv4_mapped() {
            for &b in b"::ffff:" {
                self.push(b);
            }
            return self.v4(v4);
        }
        let groups = addr.segments();
        let (mut zeros, mut run) = ((0, 0), (0, 0));
        for (i, &group) in groups.iter().enumerate() {
            if group == 0 {
                run = if run.1 == 0 {
                    (i, 1)
                } else {
                    (run.0, run.1 + 1)
                };
                if run.1 > zeros.1 {
                    zeros = run;
                }
            } else {
                run = (0, 0);
            }
        }
        if zeros.1 > 1 {
            self.hex(&groups[..zeros.0]);
            self.push(b':');
            self.push(b':');
            self.hex(&groups[zeros.0 + zeros.1..]);
        } else {
            self.hex(&groups);
        }
    }

    fn hex(&mut self, groups: &[u16]) {
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                self.push(b':');
            }
            let digits = group.to_be_bytes();
            let nibbles = [
                digits[0] >> 4,
                digits[0] & 15,
                digits[1] >> 4,
                digits[1] & 15,
            ];
            let first = nibbles.iter().position(|&n| n != 0).unwrap_or(3);
            for &n in &nibbles[first..] {
                self.push(b"0123456789abcdef"[usize::from(n)]);
            }
        }
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text(&mut [0; TEXT_MAX]))
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than a `String`: a snapshot holds a million of
        // them, and a `&str` needs no allocation.
        struct Text;

        impl serde::de::Visitor<'_> for Text {
            type Value = Prefix;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a prefix")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Prefix, E> {
                Prefix::parse_stored(text).map_err(E::custom)
            }
        }

        d.deserialize_str(Text)
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

    /// Prefixes written by hand are written as `Display` writes them.
    #[test]
    fn text_is_what_display_writes() {
        let mut texts: Vec<String> = [
            "::/0",
            "::1/128",
            "::ffff:198.18.0.7/128",
            "::198.18.0.7/128",
            "1::/16",
            "1:0:0:1::/64",
            "1::1:0:0:1/128",
            "0:1:0:1:0:1:0:1/128",
            "1:0:0:2:0:0:3:4/128",
            "fe80::abcd:0:0:0/80",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.0.0.0/8",
        ]
        .map(str::to_owned)
        .to_vec();
        // Random addresses, with zero groups scattered through some.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let groups: [u16; 8] = std::array::from_fn(|i| {
                let g = u16::try_from((x >> (i * 8)) & 0xffff).unwrap();
                if (x >> (i + 40)) & 1 == 1 { 0 } else { g }
            });
            texts.push(format!("{}/128", std::net::Ipv6Addr::from(groups)));
            let v4 = u32::try_from(x & 0xffff_ffff).unwrap();
            texts.push(format!("{}/32", std::net::Ipv4Addr::from(v4)));
        }
        for text in texts {
            let net: IpNet = text.parse().unwrap();
            let prefix = Prefix::truncating(net.addr(), net.prefix_len());
            assert_eq!(prefix.text(&mut [0; TEXT_MAX]), prefix.to_string());
            assert_eq!(
                serde_json::to_string(&prefix).unwrap(),
                format!("\"{prefix}\"")
            );
        }
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
