//! The `pinmesh` binary: parses the command line and hands it to the library. Every failure
//! ends in one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = match pinmesh_agent::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            // clap explains at length; the first line is the error itself.
            let text = err.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, pinmesh_agent::cli::Command::Run(_)) {
        default_sigpipe();
    }
    match pinmesh_agent::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena and rarely returns their free pages:
/// an agent that took a million pins through the API held 184 MB, 103 MB with one arena, at
/// the same ingest rate (`scripts/bench-cluster.sh`). `MALLOC_ARENA_MAX` still overrides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator tunable; it is called first thing in main,
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

/// A client command whose output is cut (`pinmesh pin ls | head -1`) ends quietly, as other
/// Unix tools do, instead of panicking on the failed write. Not for `run`: the daemon's sockets
/// must never kill it.
#[cfg(unix)]
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}
