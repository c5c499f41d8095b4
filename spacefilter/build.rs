//! Builds the XDP program (`spacefilter-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `src/filter.rs` can embed it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "spacefilter-ebpf")
        .ok_or_else(|| anyhow!("spacefilter-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
        .context("building the XDP program failed; `cargo xtask setup` installs what it needs")?;
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    for binary in ["spacefilter", "spacefilter-tools"] {
        no_reachable_panic(&std::path::Path::new(&out_dir).join(binary))?;
    }
    Ok(())
}

/// The symbol the eBPF panic handler calls, defined nowhere: an object that
/// names it still calls the handler (see `spacefilter-ebpf/src/main.rs`).
const PANIC_SYMBOL: &[u8] = b"spacefilter_panic_is_reachable";

/// Fails the build when the optimiser left a panic reachable in `object`
/// (the kernel would refuse the program with no word of why).
fn no_reachable_panic(object: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    if bytes.windows(PANIC_SYMBOL.len()).any(|w| w == PANIC_SYMBOL) {
        return Err(anyhow!(
            "a panic is reachable in the eBPF program {}: its panic handler, which calls the \
             undefined symbol spacefilter_panic_is_reachable, is still called (an index or an \
             unwrap the optimiser could not prove safe; `llvm-objdump -t` on the object lists \
             the core::panicking functions it calls)",
            object.display()
        ));
    }
    Ok(())
}
