//! The lockout guard: refuses rules that would cut the host off from its
//! own network (a prefix covering one of its addresses on the attached
//! interfaces, or a default gateway) and rules covering everything (/0),
//! unless the admin says `--force`.

use std::{fs, net::IpAddr};

use nix::ifaddrs::getifaddrs;

use crate::net::{List, Prefix};

/// An address worth protecting, with what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    pub addr: IpAddr,
    pub what: String,
}

/// The addresses of `ifaces` (this host's, including link-local ones) and
/// the default gateways.
#[must_use]
pub fn protected_addresses(ifaces: &[String]) -> Vec<Protected> {
    let mut out = Vec::new();
    if let Ok(addrs) = getifaddrs() {
        for ifaddr in addrs {
            if !ifaces.contains(&ifaddr.interface_name) {
                continue;
            }
            let Some(address) = ifaddr.address else {
                continue;
            };
            let addr = if let Some(v4) = address.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = address.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push(Protected {
                addr,
                what: format!("an address of {} on this host", ifaddr.interface_name),
            });
        }
    }
    out.extend(
        default_gateways()
            .into_iter()
            .map(|(iface, addr)| Protected {
                addr,
                what: format!("the default gateway via {iface}"),
            }),
    );
    out
}

/// The sources never auto-blocked: the lockout guard's addresses (this
/// host's on `ifaces`, its default gateways) and the resolvers in
/// `resolv_conf` (normally `/etc/resolv.conf`). A flood forged from one of
/// them must not get it blocked: the host would cut itself off.
#[must_use]
pub fn auto_block_exempt(ifaces: &[String], resolv_conf: &str) -> Vec<Protected> {
    let mut out = protected_addresses(ifaces);
    out.extend(resolvers(resolv_conf).into_iter().map(|addr| Protected {
        addr,
        what: "a resolver in /etc/resolv.conf".to_owned(),
    }));
    out
}

/// The `nameserver` addresses of a resolv.conf text (an IPv6 link-local
/// address may carry a `%zone`, which is dropped).
#[must_use]
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse().ok())
        .collect()
}

/// Default gateways from the kernel's routing tables.
fn default_gateways() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    // Iface Destination Gateway Flags ...: hex, in host byte order.
    if let Ok(table) = fs::read_to_string("/proc/net/route") {
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let [iface, "00000000", gateway, ..] = cols[..]
                && let Ok(raw) = u32::from_str_radix(gateway, 16)
                && raw != 0
            {
                out.push((iface.to_owned(), IpAddr::from(raw.to_le_bytes())));
            }
        }
    }
    // dest dest_len src src_len next_hop metric refcnt use flags iface
    if let Ok(table) = fs::read_to_string("/proc/net/ipv6_route") {
        for line in table.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() == 10
                && cols[0].bytes().all(|b| b == b'0')
                && cols[1] == "00"
                && let Ok(raw) = u128::from_str_radix(cols[4], 16)
                && raw != 0
            {
                out.push((cols[9].to_owned(), IpAddr::from(raw.to_be_bytes())));
            }
        }
    }
    out
}

/// Why `prefix` may not go on `list` without `--force`, if it may not.
#[must_use]
pub fn objection(list: List, prefix: Prefix, protected: &[Protected]) -> Option<String> {
    if prefix.len() == 0 {
        let effect = match list {
            List::Block | List::Auto => {
                "drop every packet of that family, including your own session"
            }
            List::Allow => "let every packet of that family through, switching the filter off",
        };
        return Some(format!(
            "refusing to {} {prefix}: it covers every address and would {effect}; add --force if that is what you want",
            list.name()
        ));
    }
    let hit = protected.iter().find(|p| prefix.contains(p.addr))?;
    let effect = match list {
        List::Block | List::Auto => "could lock this host out of its own network",
        List::Allow => "would let traffic spoofing this host's addresses through",
    };
    Some(format!(
        "refusing to {} {prefix}: it covers {} ({}) and {effect}; add --force if that is what you want",
        list.name(),
        hit.addr,
        hit.what
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_to_zero_prefixes_and_own_addresses() {
        let protected = vec![Protected {
            addr: "198.18.0.1".parse().unwrap(),
            what: "an address of eth0 on this host".into(),
        }];
        let zero = "0.0.0.0/0".parse().unwrap();
        assert!(
            objection(List::Block, zero, &[])
                .unwrap()
                .contains("every address")
        );
        let own = "198.18.0.0/24".parse().unwrap();
        let msg = objection(List::Block, own, &protected).unwrap();
        assert!(
            msg.contains("198.18.0.1") && msg.contains("--force"),
            "{msg}"
        );
        let other = "198.18.2.0/24".parse().unwrap();
        assert_eq!(objection(List::Block, other, &protected), None);
    }

    #[test]
    fn resolvers_are_the_nameserver_lines() {
        let conf = "# comment\nsearch example.org\nnameserver 192.0.2.53\n  nameserver\t2001:db8::53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        let expected: Vec<IpAddr> = ["192.0.2.53", "2001:db8::53", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(resolvers(conf), expected);
        assert!(resolvers("").is_empty());
    }
}
