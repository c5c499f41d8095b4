//! The `spacefilter` command: the daemon (`run`) and the client verbs that
//! steer it over its control socket (see [`spacefilter::cli`]).

fn main() -> std::process::ExitCode {
    spacefilter::cli::main()
}
