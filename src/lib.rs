//! sockhook: a socket-activated webhook responder for systemd hosts.
//!
//! A request's life, one module per stage: [`listen`] (adopt the sockets;
//! [`tls`] for the ones named `https`) → [`read`] (bounded head, then the
//! body spooled to a sealed memory file) → [`route`] (path to hook) →
//! [`verify`] (token or signature, over the [`scheme`]s) → [`form`] (the
//! JSON of a form delivery) → [`filter`]
//! (events, content type, `[match]`) → [`fields`] (`[env]`) → [`journal`] (the accepted delivery on
//! disk before its answer) → [`respond`] (answer, half-close, drain) →
//! [`act`] (run the command, one at a time per hook, each in its
//! [`cgroup`]). [`request`] takes one request through them top to bottom;
//! [`reactor`] is the event loop that owns every connection, with
//! [`limits`] (connections and unauthenticated bytes per source) and
//! [`proxy`] (who the client is behind a trusted proxy); [`serve`] is the
//! process around it, accepting until [`idle`] says to exit. [`config`]
//! loads the hook files, [`replay`] keeps the delivery ids already seen,
//! [`log`] writes the log's lines, and [`error`] holds the two error types.
//! [`subscribe`] is the home side of a relay: it takes messages from a
//! websocket and runs them with the same [`act`] and [`journal`].
//! `check`, `token`, `sign`, `deliveries` and `replay` are in [`check`]
//! (with [`service`], the installed unit and its user, for judging files as
//! the service meets them), [`tools`] and [`deliveries`]; the command line
//! in [`cli`].

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod log;

pub(crate) mod act;
pub(crate) mod cgroup;
pub(crate) mod check;
pub(crate) mod cli;
pub(crate) mod config;
pub(crate) mod deliveries;
pub(crate) mod error;
pub(crate) mod fields;
pub(crate) mod filter;
pub(crate) mod form;
pub(crate) mod idle;
pub(crate) mod journal;
pub(crate) mod limits;
pub(crate) mod listen;
pub(crate) mod proxy;
pub(crate) mod reactor;
pub(crate) mod read;
pub(crate) mod relay;
pub(crate) mod replay;
pub(crate) mod request;
pub(crate) mod respond;
pub(crate) mod route;
pub(crate) mod scheme;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod subscribe;
pub(crate) mod tls;
pub(crate) mod tools;
pub(crate) mod verify;

use std::ffi::OsString;

use cli::Command;
pub use error::{EXIT_BUG, Error};

/// Runs the command line `args` (without the program name); returns the
/// exit code, or the error that ends the program.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<u8, Error> {
    match cli::parse(args)? {
        Command::Help(text) => print!("{text}"),
        Command::Version => println!("sockhook {}", env!("CARGO_PKG_VERSION")),
        Command::Serve(options) => return serve::serve(&options),
        Command::Subscribe(options) => return subscribe::subscribe(&options),
        Command::Check {
            hooks_dir,
            key,
            user,
            tls_cert,
            tls_key,
        } => {
            let hooks = check::check(&hooks_dir, key.as_deref(), user.as_deref());
            let tls = check::check_tls(tls_cert.as_deref(), tls_key.as_deref());
            return Ok(hooks.max(tls));
        }
        Command::Deliveries(query) => return deliveries::deliveries(&query),
        Command::Replay {
            id,
            state,
            hooks_dir,
            user,
        } => return deliveries::replay(&id, state.as_deref(), &hooks_dir, user.as_deref()),
        Command::Token {
            path,
            key,
            url_base,
            hooks_dir,
        } => {
            println!(
                "{}",
                tools::token(&path, key.as_deref(), url_base.as_deref(), &hooks_dir)?
            );
        }
        Command::Sign {
            scheme,
            secret,
            id,
            timestamp,
        } => {
            let body = &mut std::io::stdin().lock();
            println!("{}", tools::sign(scheme, &secret, id, timestamp, body)?);
        }
    }
    Ok(error::EXIT_OK)
}

/// What the fuzz targets, the regression tests and the man-page checks reach
/// inside: not an API, and not kept stable.
#[doc(hidden)]
pub mod internals {
    pub use crate::act::ENV_NAMES;
    pub use crate::cli::{COMMANDS, Opt, Subcommand};
    pub use crate::config::{HOOK_KEYS, Hook, Hooks, Problem, load};
    pub use crate::error::{EXIT_CODES, RequestError};
    pub use crate::fields::EnvFields;
    pub use crate::filter::{Ignored, Match};
    pub use crate::form::{Carrier, form_payload, multipart_payload};
    pub use crate::proxy::Block;
    pub use crate::read::{Framing, Head, MAX_HEADERS, MAX_TARGET_BYTES, Reader, Source};
    pub use crate::respond::STATUSES;
    pub use crate::scheme::{Key, STANDARD_WEBHOOKS_PREFIX, Scheme, Secret};
    pub use crate::tools::ed25519_sign;
    pub use crate::verify::{
        Pending, before_body, body_signature, hex, mac, standard_webhooks_signature, token,
        token_matches, unhex,
    };
}
