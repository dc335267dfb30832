//! The `sockhook` binary: maps [`sockhook::run`] to the process exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(sockhook::run(std::env::args_os().skip(1)))
}
