//! Interfaces: do they exist, and is another XDP program on them already?

use std::process::Command;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("there is no interface named {iface:?} (see `ip link`)")]
    NoSuchInterface { iface: String },
    #[error(
        "{iface} already has an XDP program attached ({program}); spacefilter will not replace it unless you give --force"
    )]
    Occupied { iface: String, program: String },
    #[error(
        "{iface} still has an XDP program attached ({program}) after removing it by netlink: it is held by a bpf_link; remove that with bpftool first"
    )]
    Stuck { iface: String, program: String },
}

/// Fails unless `iface` exists in this network namespace.
pub fn ensure_exists(iface: &str) -> Result<u32, IfaceError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| IfaceError::NoSuchInterface {
        iface: iface.to_owned(),
    })
}

/// The XDP programs attached to `iface`, as `name (id N)`, read from
/// iproute2's JSON output.
#[must_use]
pub fn attached_programs(iface: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
    else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut programs = Vec::new();
    if let Some(xdp) = json.get(0).and_then(|link| link.get("xdp")) {
        collect_programs(xdp, &mut programs);
    }
    programs
}

fn collect_programs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(prog) = map.get("prog")
                && let Some(id) = prog.get("id").and_then(Value::as_u64)
            {
                let name = prog.get("name").and_then(Value::as_str).unwrap_or("?");
                let text = format!("{name} (id {id})");
                if !out.contains(&text) {
                    out.push(text);
                }
            }
            for (key, v) in map {
                if key != "prog" {
                    collect_programs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_programs(v, out)),
        _ => {}
    }
}

/// Whether the XDP program attached to `iface` runs in generic (skb) mode
/// (`Some(false)`: native); `None` if none is, or the mode is another.
#[must_use]
pub fn xdp_generic(iface: &str) -> Option<bool> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let json = serde_json::from_slice::<Value>(&out.stdout).ok()?;
    // XDP_ATTACHED_DRV, XDP_ATTACHED_SKB.
    match json.get(0)?.get("xdp")?.get("mode")?.as_u64()? {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Makes `iface` free for spacefilter: fails if another XDP program is
/// there, unless `force`, in which case it is detached. `ours` is the id
/// of spacefilter's own program on a link it pinned, which a successor
/// takes over rather than refusing.
pub fn claim(iface: &str, force: bool, ours: Option<u32>) -> Result<(), IfaceError> {
    ensure_exists(iface)?;
    let mut programs = attached_programs(iface);
    if let Some(id) = ours {
        let mark = format!(" (id {id})");
        programs.retain(|p| !p.ends_with(&mark));
    }
    if programs.is_empty() {
        return Ok(());
    }
    let program = programs.join(", ");
    if !force {
        return Err(IfaceError::Occupied {
            iface: iface.to_owned(),
            program,
        });
    }
    log::warn!("{iface}: detaching {program} (--force)");
    for mode in ["xdpgeneric", "xdpdrv", "xdpoffload"] {
        let _ = Command::new("ip")
            .args(["link", "set", "dev", iface, mode, "off"])
            .output();
    }
    let left = attached_programs(iface);
    if left.is_empty() {
        Ok(())
    } else {
        Err(IfaceError::Stuck {
            iface: iface.to_owned(),
            program: left.join(", "),
        })
    }
}
