//! `completions`: a shell's completion script, generated from the command
//! line's own definitions, so that it never lags behind them.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Failure};

#[derive(Args)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub(super) fn completions(args: &CompletionsArgs) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "spacefilter", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        // A reader that has read enough (`| head`) is no failure.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::runtime(format!(
            "writing the completion script: {err}"
        ))),
        _ => Ok(()),
    }
}
