//! sockhook: a socket-activated webhook responder for systemd hosts.
//!
//! A request's life, one module per stage: [`listen`] (adopt the socket) →
//! [`read`] (bounded head and body) → [`route`] (path to hook) → [`verify`]
//! (token or signature) → [`respond`] (answer, half-close, drain) → [`act`]
//! (run the command) — with [`serve`] driving them until [`idle`] says to exit.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod log;

pub mod act;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
pub mod idle;
pub mod listen;
pub mod read;
pub mod replay;
pub mod respond;
pub mod route;
pub mod serve;
pub mod tools;
pub mod verify;

use std::ffi::OsString;

use cli::Command;
use error::{EXIT_BUG, EXIT_OK, Error};

/// Runs sockhook with `args` (without the program name); returns the exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    one_malloc_arena();
    log::init();
    std::panic::set_hook(Box::new(|info| {
        error!("fatal: internal error (a bug, please report it): {info}");
        std::process::exit(i32::from(EXIT_BUG));
    }));
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            error!("fatal: {e}");
            e.exit_code()
        }
    }
}

/// Makes glibc keep one malloc arena instead of one per busy thread.
///
/// Connection and run threads allocate little, but each would otherwise get
/// an arena of its own. Measured on a burst of 1000 requests at concurrency
/// 8 (five runs each): peak resident memory median 3.7 → 3.3 MiB, worst
/// 5.1 → 3.6 MiB.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn dispatch(args: impl IntoIterator<Item = OsString>) -> Result<u8, Error> {
    match cli::parse(args)? {
        Command::Help => print!("{}", cli::HELP),
        Command::Version => println!("sockhook {}", env!("CARGO_PKG_VERSION")),
        Command::Serve(options) => return serve::serve(&options),
        Command::Check { hooks_dir, key } => return Ok(check::check(&hooks_dir, key.as_deref())),
        Command::Token {
            path,
            key,
            url_base,
        } => {
            println!(
                "{}",
                tools::token(&path, key.as_deref(), url_base.as_deref())?
            );
        }
        Command::Sign {
            scheme,
            secret,
            id,
            timestamp,
        } => {
            let body = &mut std::io::stdin().lock();
            println!("{}", tools::sign(&scheme, &secret, id, timestamp, body)?);
        }
    }
    Ok(EXIT_OK)
}
