//! The host's network settings (`/proc/sys/net/...`) that the shield reads
//! and sets. They belong to the network namespace the daemon runs in, the
//! one whose listeners the shield answers for.

use std::{fs, io, path::PathBuf};

/// A sysctl by its dotted name (`net.ipv4.tcp_syncookies`).
fn path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// The value of `name`, trimmed.
pub fn read(name: &str) -> io::Result<String> {
    Ok(fs::read_to_string(path(name))?.trim().to_owned())
}

/// Sets `name` to `value`.
pub fn write(name: &str, value: &str) -> io::Result<()> {
    fs::write(path(name), value)
}

/// The value of `name` as a number (its `field`-th, for a sysctl of several
/// numbers such as `net.ipv4.tcp_rmem`).
pub fn number(name: &str, field: usize) -> io::Result<u64> {
    read(name)?
        .split_whitespace()
        .nth(field)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{name} is not a list of numbers")))
}

/// The MTU of `iface`.
pub fn mtu(iface: &str) -> io::Result<u32> {
    fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))?
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{iface}'s MTU is not a number")))
}
