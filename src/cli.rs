//! The command line: `sockhook serve|check|token|sign`, parsed with lexopt.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

use crate::config::DEFAULT_HOOKS_DIR;
use crate::error::Error;
use crate::read::DEFAULT_REQUEST_TIMEOUT;
use crate::serve;

/// `sockhook --help`.
pub const HELP: &str = "\
sockhook - socket-activated webhook responder for systemd hosts

Usage:
  sockhook serve [--hooks DIR] [--key FILE] [--listen IP:PORT]
                 [--idle-timeout SECS] [--request-timeout SECS]
  sockhook check [--hooks DIR] [--key FILE]
  sockhook token PATH [--key FILE] [--url-base URL]
  sockhook sign --scheme SCHEME --secret FILE [--id ID] [--timestamp UNIX] < BODY
  sockhook --help | --version

Commands:
  serve   Answer webhooks on the socket systemd passes (LISTEN_FDS), or on
          --listen; run each authenticated hook's command after answering.
  check   Validate every hook file and the server key; one line per problem.
  token   Print the token for PATH (hex HMAC-SHA256 of PATH with the key); a
          PATH ending in / gives a token for every path below it.
  sign    Print the header lines that make BODY (stdin) pass a signature
          scheme, one per line, for curl -H @FILE. SCHEME: github, gitea,
          forgejo, gitlab, bitbucket, standard-webhooks.

Options:
  --hooks DIR            Hook files, one NAME.toml per hook, served at
                         /hooks/NAME [default: /etc/sockhook/hooks.d]
  --key FILE             Server key for tokens [default:
                         $CREDENTIALS_DIRECTORY/key under systemd, else
                         /etc/sockhook/key]
  --listen IP:PORT       Bind this address when systemd passed no socket
  --idle-timeout SECS    Exit after SECS without connections or running
                         commands [default: 5 under systemd; with --listen,
                         run until stopped]
  --request-timeout SECS Time a client has to send its whole request
                         [default: 10]
  --url-base URL         token: print URL/PATH with the token as user name
  --scheme SCHEME        sign: the hook's auth scheme
  --secret FILE          sign: the file holding the hook's secret
  --id ID                sign: standard-webhooks delivery id [default: random]
  --timestamp UNIX       sign: standard-webhooks timestamp [default: now]
  -h, --help             Show this help
  -V, --version          Show the version

Exit status:
  0    all well (a refused request is a normal outcome)
  1    serve: a command failed or timed out; check: a problem was found
  100  usage or configuration error
  101  internal error (a bug: please report it)
  111  a system call failed (temporary)

See sockhook(8) and sockhook.toml(5).
";

/// A parsed command line.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// `sockhook serve`.
    Serve(serve::Options),
    /// `sockhook check`.
    Check {
        /// Directory of hook files.
        hooks_dir: PathBuf,
        /// Server key file; `None` for the default.
        key: Option<PathBuf>,
    },
    /// `sockhook token`.
    Token {
        /// The request path the token is for.
        path: String,
        /// Server key file; `None` for the default.
        key: Option<PathBuf>,
        /// Print a URL with this base instead of the bare token.
        url_base: Option<String>,
    },
    /// `sockhook sign`.
    Sign {
        /// The hook's auth scheme.
        scheme: String,
        /// The file holding the secret.
        secret: PathBuf,
        /// Standard Webhooks delivery id; `None` for a random one.
        id: Option<String>,
        /// Standard Webhooks timestamp; `None` for now.
        timestamp: Option<u64>,
    },
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    parse_inner(args).map_err(|e| match e {
        Error::Usage(why) => Error::Usage(format!("{why}; see sockhook --help")),
        e => e,
    })
}

fn parse_inner(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let subcommand = match parser.next().map_err(usage)? {
        None => return Err(Error::Usage("no command given".into())),
        Some(Short('h') | Long("help")) => return Ok(Command::Help),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => v.string().map_err(usage)?,
        Some(other) => return Err(usage(other.unexpected())),
    };
    let mut hooks_dir = PathBuf::from(DEFAULT_HOOKS_DIR);
    let mut key = None;
    let mut listen = None;
    let mut idle_timeout = None;
    let mut request_timeout = DEFAULT_REQUEST_TIMEOUT;
    let mut url_base = None;
    let mut scheme = None;
    let mut secret = None;
    let mut id = None;
    let mut timestamp = None;
    let mut positional = Vec::new();
    let allowed: &[&str] = match subcommand.as_str() {
        "serve" => &["hooks", "key", "listen", "idle-timeout", "request-timeout"],
        "check" => &["hooks", "key"],
        "token" => &["key", "url-base"],
        "sign" => &["scheme", "secret", "id", "timestamp"],
        other => return Err(Error::Usage(format!("unknown command {other:?}"))),
    };
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long(name) if allowed.contains(&name) => {
                let name = name.to_owned();
                let value = parser.value().map_err(usage)?;
                match name.as_str() {
                    "hooks" => hooks_dir = value.into(),
                    "key" => key = Some(value.into()),
                    "listen" => listen = Some(value.string().map_err(usage)?),
                    "idle-timeout" => idle_timeout = Some(seconds(&name, value, true)?),
                    "request-timeout" => request_timeout = seconds(&name, value, false)?,
                    "url-base" => url_base = Some(value.string().map_err(usage)?),
                    "scheme" => scheme = Some(value.string().map_err(usage)?),
                    "id" => id = Some(value.string().map_err(usage)?),
                    "timestamp" => timestamp = Some(value.parse().map_err(usage)?),
                    _ => secret = Some(value.into()),
                }
            }
            Value(value) if subcommand == "token" && positional.is_empty() => {
                positional.push(value.string().map_err(usage)?);
            }
            other => {
                return Err(Error::Usage(format!(
                    "{subcommand}: {}",
                    other.unexpected()
                )));
            }
        }
    }
    Ok(match subcommand.as_str() {
        "serve" => Command::Serve(serve::Options {
            hooks_dir,
            key,
            listen,
            idle_timeout,
            request_timeout,
        }),
        "check" => Command::Check { hooks_dir, key },
        "token" => {
            let path = positional.pop().ok_or_else(|| {
                Error::Usage("token: give the PATH, e.g. /hooks/kodi-restart".into())
            })?;
            if !path.starts_with('/') {
                return Err(Error::Usage(format!(
                    "token: PATH must start with /, not {path:?}"
                )));
            }
            Command::Token {
                path,
                key,
                url_base,
            }
        }
        _ => Command::Sign {
            scheme: scheme.ok_or_else(|| Error::Usage("sign: --scheme is required".into()))?,
            secret: secret.ok_or_else(|| Error::Usage("sign: --secret FILE is required".into()))?,
            id,
            timestamp,
        },
    })
}

/// A duration in (possibly fractional) seconds; zero only where `zero_ok`.
fn seconds(name: &str, value: OsString, zero_ok: bool) -> Result<Duration, Error> {
    let text = value.string().map_err(usage)?;
    let secs: f64 = text
        .parse()
        .map_err(|_| Error::Usage(format!("--{name}: {text:?} is not a number of seconds")))?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) || secs > 86_400.0 * 365.0 {
        return Err(Error::Usage(format!(
            "--{name}: {text} seconds is out of range"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, Error> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn serve_defaults() {
        let Command::Serve(options) = parse_str(&["serve"]).unwrap() else {
            panic!()
        };
        assert_eq!(options.hooks_dir, PathBuf::from(DEFAULT_HOOKS_DIR));
        assert_eq!(options.idle_timeout, None);
        assert_eq!(options.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn serve_options() {
        let Command::Serve(options) = parse_str(&[
            "serve",
            "--hooks",
            "/h",
            "--key=/k",
            "--listen",
            "127.0.0.1:1",
            "--idle-timeout",
            "0.5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(options.hooks_dir, PathBuf::from("/h"));
        assert_eq!(options.key, Some(PathBuf::from("/k")));
        assert_eq!(options.idle_timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn options_of_other_commands_are_refused() {
        assert!(parse_str(&["check", "--listen", "x"]).is_err());
        assert!(parse_str(&["serve", "extra"]).is_err());
        assert!(parse_str(&["frobnicate"]).is_err());
        assert!(parse_str(&[]).is_err());
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(parse_str(&["serve", "--request-timeout", "0"]).is_err());
        assert!(parse_str(&["serve", "--idle-timeout", "-1"]).is_err());
        assert!(parse_str(&["serve", "--idle-timeout", "nan"]).is_err());
    }

    #[test]
    fn token_needs_an_absolute_path() {
        assert!(parse_str(&["token"]).is_err());
        assert!(parse_str(&["token", "hooks/a"]).is_err());
        assert_eq!(
            parse_str(&["token", "/hooks/a", "--url-base", "http://h"]).unwrap(),
            Command::Token {
                path: "/hooks/a".into(),
                key: None,
                url_base: Some("http://h".into())
            }
        );
    }

    #[test]
    fn help_lists_every_option_the_parser_knows() {
        for option in [
            "--hooks",
            "--key",
            "--listen",
            "--idle-timeout",
            "--request-timeout",
            "--url-base",
            "--scheme",
            "--secret",
            "--id",
            "--timestamp",
        ] {
            assert!(HELP.contains(option), "{option}");
        }
    }
}
