//! Value parsers for the verbs' arguments.

/// A port or an inclusive range of ports: `53`, `5000-5100`.
pub(super) fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port or a range of ports such as 5000-5100");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!("{s:?}: the range runs backwards"));
    }
    Ok((lo, hi))
}

/// A protocol by name or number.
pub(super) fn parse_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" | "ipv6-icmp" => Ok(58),
        other => other.parse().map_err(|_| {
            format!("{s:?} is not a protocol: use tcp, udp, icmp, icmpv6 or a number 0-255")
        }),
    }
}

/// TCP flags that must be set or clear, as (mask, value): `SYN,!ACK`.
pub(super) fn parse_tcp_flags(s: &str) -> Result<(u8, u8), String> {
    let (mut mask, mut value) = (0u8, 0u8);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (clear, name) = part.strip_prefix('!').map_or((false, part), |n| (true, n));
        let bit = match name.to_ascii_uppercase().as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            _ => {
                return Err(format!(
                    "{name:?} is not a TCP flag: use FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, each optionally with ! for clear"
                ));
            }
        };
        if mask & bit != 0 && (value & bit != 0) == clear {
            return Err(format!(
                "{name} is asked both set and clear: a rule with both can never match; name it once"
            ));
        }
        mask |= bit;
        if !clear {
            value |= bit;
        }
    }
    if mask == 0 {
        return Err("name at least one flag, e.g. SYN,!ACK".into());
    }
    Ok((mask, value))
}
