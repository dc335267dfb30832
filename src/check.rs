//! `sockhook check`: validate every hook file and the key, the way `visudo -c` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::{EXIT_FAILED, EXIT_OK};

/// Prints one line per hook and per problem on stdout; returns the exit code.
pub fn check(hooks_dir: &Path, key: Option<&Path>) -> u8 {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let hooks = config::load(hooks_dir, credentials.as_deref());
    let mut problems: Vec<String> = hooks.problems().map(ToString::to_string).collect();
    let key_path = config::key_path(key, credentials.as_deref());
    if hooks.need_key() {
        match config::load_key(&key_path) {
            Err(problem) => problems.push(problem.to_string()),
            Ok(_) => {
                let mode = std::fs::metadata(&key_path).map_or(0, |m| m.permissions().mode());
                if mode & 0o004 != 0 {
                    problems.push(format!(
                        "{}: every user can read the server key (mode {:o}); chmod 600 it",
                        key_path.display(),
                        mode & 0o777
                    ));
                }
            }
        }
    }
    for (name, hook) in hooks.iter() {
        if let Ok(hook) = hook {
            println!(
                "{}{name}: ok: auth {}, {} runs {}",
                config::HOOKS_PREFIX,
                hook.scheme.name(),
                hook.methods.join("/"),
                hook.command[0]
            );
        }
    }
    for path in &hooks.skipped {
        println!(
            "{}: skipped: not NAME.toml with NAME of [A-Za-z0-9._-]",
            path.display()
        );
    }
    for problem in &problems {
        println!("{problem}");
    }
    let count = hooks.iter().count();
    println!(
        "{count} hook(s) in {}, {} problem(s)",
        hooks_dir.display(),
        problems.len()
    );
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

// ---------------------------------------------------------------------------
// HTTPS: the certificate chain and its key (issue 12). Kept apart from the
// hook checks above: `check_tls` prints its own lines after theirs.
// ---------------------------------------------------------------------------

/// A certificate that expires within this many days is warned about.
pub const CERT_WARN_DAYS: i64 = 14;

/// What `sockhook check` says about the HTTPS certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFinding {
    /// Fine; what was checked.
    Ok(String),
    /// Works for now, but needs attention soon.
    Warning(String),
    /// HTTPS connections would be closed unanswered.
    Problem(String),
}

/// Checks the certificate and key that `sockhook serve` would use: when
/// `--tls-cert` or `--tls-key` names them, or when either file exists (the
/// credential, or the default path); an unconfigured HTTPS is not a problem.
/// Prints one line per finding; returns the exit code.
pub fn check_tls(cert: Option<&Path>, key: Option<&Path>) -> u8 {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let files = crate::tls::Files::new(cert, key, credentials.as_deref());
    let configured = cert.is_some()
        || key.is_some()
        || std::fs::symlink_metadata(&files.cert).is_ok()
        || std::fs::symlink_metadata(&files.key).is_ok();
    if !configured {
        return EXIT_OK;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let findings = tls_findings(&files, now);
    let mut code = EXIT_OK;
    for finding in &findings {
        match finding {
            TlsFinding::Ok(text) => println!("{text}"),
            TlsFinding::Warning(text) => println!("{text}"),
            TlsFinding::Problem(text) => {
                println!("{text}");
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// The findings for `files` at `now` (seconds since 1970): each problem
/// names the file at fault and says how to fix it; nothing of the key is
/// ever shown.
pub fn tls_findings(files: &crate::tls::Files, now: i64) -> Vec<TlsFinding> {
    let mut findings = Vec::new();
    let problem =
        |path: &Path, what: &str| TlsFinding::Problem(format!("{}: {what}", path.display()));
    for (path, what, option) in [
        (&files.cert, "certificate chain", "--tls-cert"),
        (&files.key, "private key", "--tls-key"),
    ] {
        if let Err(e) = std::fs::metadata(path) {
            findings.push(problem(
                path,
                &match e.kind() {
                    std::io::ErrorKind::NotFound => format!(
                        "the HTTPS {what} is missing: create it (PEM; e.g. a symlink to certbot's /etc/letsencrypt/live/NAME/{}), or name another file with {option}",
                        if option == "--tls-cert" { "fullchain.pem" } else { "privkey.pem" }
                    ),
                    _ => format!("cannot look at the HTTPS {what}: {e}"),
                },
            ));
            continue;
        }
        if let Err(e) = std::fs::File::open(path) {
            findings.push(problem(
                path,
                &format!(
                    "the HTTPS {what} is unreadable ({e}): under systemd, LoadCredential= reads it as root; otherwise let the user sockhook runs as read it (chown or chmod)"
                ),
            ));
        }
    }
    if let Ok(meta) = std::fs::metadata(&files.key)
        && meta.permissions().mode() & 0o004 != 0
    {
        findings.push(problem(
            &files.key,
            &format!(
                "every user can read the HTTPS private key (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    if !findings.is_empty() {
        return findings;
    }
    let loaded = match crate::tls::load(files) {
        Ok(loaded) => loaded,
        Err(p) => {
            let fix = if p.message.contains("does not go with") {
                "; use the key the certificate was issued for (certbot: privkey.pem of the same live/NAME)"
            } else {
                ""
            };
            findings.push(TlsFinding::Problem(format!("{p}{fix}")));
            return findings;
        }
    };
    let cert = &files.cert;
    let (not_before, not_after) = match crate::tls::validity(&loaded.chain[0]) {
        Ok(period) => period,
        Err(why) => {
            findings.push(problem(
                cert,
                &format!("cannot read the first certificate's validity ({why}); is it an X.509 certificate?"),
            ));
            return findings;
        }
    };
    let days_left = (not_after - now).div_euclid(86_400);
    findings.push(if now < not_before {
        problem(
            cert,
            &format!(
                "the certificate is not valid yet: from {} on (now {}); check the clock, or use the certificate in force",
                crate::tls::utc(not_before),
                crate::tls::utc(now)
            ),
        )
    } else if now > not_after {
        problem(
            cert,
            &format!(
                "the certificate expired on {}; renew it (certbot renew), and the next activation serves the new one",
                crate::tls::utc(not_after)
            ),
        )
    } else if days_left < CERT_WARN_DAYS {
        TlsFinding::Warning(format!(
            "{}: warning: the certificate expires on {}, in {days_left} day(s); renew it (certbot renew, or check its timer), and the next activation serves the new one",
            cert.display(),
            crate::tls::utc(not_after)
        ))
    } else {
        TlsFinding::Ok(format!(
            "{}: ok: HTTPS certificate chain of {}, valid until {} ({days_left} days), with its key {}",
            cert.display(),
            loaded.chain.len(),
            crate::tls::utc(not_after),
            files.key.display()
        ))
    });
    findings
}
