//! Where the daemon pins each interface's XDP link, so that the filter
//! outlives the daemon: a crash, a stop or an upgrade leaves the program
//! on the interface, and the next daemon takes the link over in one
//! update (see [`super::Filter::attach_pinned`]). `spacefilter detach`
//! removes the pins, which takes the program off.
//!
//! A link is pinned at `DIR/xdp-<netns>-<iface>`, and the egress
//! program's (a TCX link) beside it at `DIR/tcx-<netns>-<iface>`: the network namespace's
//! inode number keeps apart the interfaces of one name in several
//! namespaces (bpffs is shared by the whole host).

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// Where the egress link of the interface whose XDP link is pinned at
/// `xdp_pin` is pinned: beside it, `tcx-<netns>-<iface>`.
#[must_use]
pub fn egress_pin(xdp_pin: &Path) -> PathBuf {
    let name = xdp_pin
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    xdp_pin.with_file_name(format!("tcx-{}", name.strip_prefix("xdp-").unwrap_or(name)))
}

/// Where links are pinned unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/spacefilter";

/// A directory on a BPF filesystem holding the daemon's pinned links.
#[derive(Clone, Debug)]
pub struct PinDir {
    dir: PathBuf,
    netns: u64,
}

impl PinDir {
    /// Opens `dir`, creating it (mode 0700) if its parent is on a BPF
    /// filesystem. Fails, saying why, when it is not on one: links then
    /// last only as long as the daemon.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let parent = dir.parent().unwrap_or(dir);
        let on_bpffs =
            |path: &Path| statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC);
        if !dir.exists() {
            if !on_bpffs(parent) {
                return Err(format!(
                    "{} is not on a BPF filesystem (mount one: mount -t bpf bpf {})",
                    parent.display(),
                    parent.display()
                ));
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|err| format!("creating {}: {err}", dir.display()))?;
        }
        if !on_bpffs(dir) {
            return Err(format!("{} is not on a BPF filesystem", dir.display()));
        }
        let netns = std::fs::metadata("/proc/self/ns/net")
            .map_err(|err| format!("reading this network namespace: {err}"))?
            .ino();
        Ok(Self {
            dir: dir.to_path_buf(),
            netns,
        })
    }

    /// Where `iface`'s link is pinned.
    #[must_use]
    pub fn path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("xdp-{}-{iface}", self.netns))
    }

    /// The interfaces of this network namespace with a pinned link, and
    /// the pins' paths.
    #[must_use]
    pub fn pinned(&self) -> Vec<(String, PathBuf)> {
        let prefix = format!("xdp-{}-", self.netns);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let iface = name.strip_prefix(&prefix)?.to_owned();
                Some((iface, e.path()))
            })
            .collect();
        found.sort();
        found
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
