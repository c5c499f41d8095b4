//! Rebuild the program when the bpf-linker binary changes: the crate depends
//! on it without cargo knowing.
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
