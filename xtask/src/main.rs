//! Project tasks: `cargo xtask setup | build | test | demo | bench | fuzz | kernels | package`.

mod kernels;
mod setup;
mod tasks;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(about = "spacefilter's project tasks")]
enum Task {
    /// Install what the build, tests and demo need (idempotent): the nightly
    /// rust-src component, bpf-linker and the LLVM it links, iproute2,
    /// tcpdump and friends; mount bpffs.
    Setup,
    /// Set up, then build the daemon (with its XDP program) and the harness.
    Build,
    /// Set up, then check formatting, run clippy with warnings denied, and
    /// run the whole test suite (packet fixtures, property test, netns tests).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the demo: a lab of network namespaces where a
    /// listener and an attacker send traffic to a server, and spacefilter
    /// blocks the attacker at the server's XDP hook.
    Demo,
    /// Set up (xdp-tools included), then measure the per-packet cost of
    /// spacefilter against bare XDP floors and xdp-filter on the same
    /// frames, print the table and rewrite BENCHMARKS.md.
    Bench {
        /// Small tables and few rounds: a check that the benchmark works.
        #[arg(long)]
        quick: bool,
        /// Only these parts, comma-separated (packets, control, floods,
        /// admission, guards, observe, fleet): their sections of
        /// BENCHMARKS.md are rewritten, the others kept. `shield` (the
        /// shield's program costs) and `cost` (rounds of the shield's, the
        /// cookie floor's and nftables' rows against the SYN flood) only
        /// print.
        #[arg(long, value_name = "PARTS")]
        only: Option<String>,
    },
    /// Set up, then run the differential fuzzer longer than the suite does
    /// (release build): the XDP program against the userspace reference on
    /// random configurations (lists, header rules, guards) and random or
    /// mutated frames. Prints the frames checked and the time taken.
    Fuzz {
        /// Cases to run: each a configuration and up to 256 frames.
        #[arg(long, default_value_t = 8000)]
        cases: u32,
    },
    /// Set up, then boot Debian's cloud kernels (6.1, 6.12) under qemu and,
    /// inside each, load the XDP program (the verifier's instruction count
    /// or its refusal) and run the `BPF_PROG_TEST_RUN` suites when it loads.
    Kernels {
        /// Which kernel: 6.1, 6.12 or all.
        #[arg(long, default_value = "all", value_parser = kernels::Choice::parse)]
        kernel: kernels::Choice,
    },
    /// Set up, then build the release binary and the Debian package:
    /// the binary, the systemd unit, the sample config, the manual pages
    /// and shell completions generated from the command line. Prints the
    /// package's path (`target/debian/spacefilter_VERSION_ARCH.deb`).
    Package,
}

fn main() -> Result<()> {
    match Task::parse() {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            tasks::build()
        }
        Task::Test { args } => {
            setup::run()?;
            tasks::test(&args)
        }
        Task::Demo => {
            setup::run()?;
            tasks::demo()
        }
        Task::Bench { quick, only } => {
            setup::run()?;
            tasks::bench(quick, only.as_deref())
        }
        Task::Fuzz { cases } => {
            setup::run()?;
            tasks::fuzz(cases)
        }
        Task::Kernels { kernel } => {
            setup::run()?;
            kernels::run(&kernel.0)
        }
        Task::Package => {
            setup::run()?;
            tasks::package()
        }
    }
}
