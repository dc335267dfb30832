//! `sockhook token` and `sockhook sign`: make credentials for testing a hook.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::Error;
use crate::verify;

/// The token for `path`, or a URL carrying it as the user name (and, on
/// stderr, what to paste into an app that wants the token apart).
pub fn token(path: &str, key: Option<&Path>, url_base: Option<&str>) -> Result<String, Error> {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let key = config::load_key(&config::key_path(key, credentials.as_deref()))?;
    let token = verify::token(&key, path);
    let Some(base) = url_base else {
        return Ok(token);
    };
    // Apps such as HTTP Shortcuts do not take user@ from a URL: say what to
    // paste where, on stderr, so that stdout stays the URL alone.
    eprintln!(
        "sockhook: for an app: URL {base}{path}, Basic auth with user name {token} and an empty password, or Bearer token {token}",
        base = base.trim_end_matches('/')
    );
    let (scheme, rest) = base.split_once("://").ok_or_else(|| {
        Error::Usage(format!(
            "--url-base wants scheme://host[:port], not {base:?}"
        ))
    })?;
    Ok(format!(
        "{scheme}://{token}@{}{path}",
        rest.trim_end_matches('/')
    ))
}

/// The header lines that make `body` pass `scheme` with the secret in `secret`.
pub fn sign(
    scheme: &str,
    secret: &Path,
    id: Option<String>,
    timestamp: Option<u64>,
    body: &mut dyn Read,
) -> Result<String, Error> {
    let config = |reason: String| Error::Config {
        path: secret.to_owned(),
        reason,
    };
    let secret = config::read_secret_file(secret).map_err(config)?;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes)
        .map_err(|e| Error::system("read the body from stdin", e))?;
    let signature = || verify::body_signature(&secret, &bytes);
    Ok(match scheme {
        "github" => format!("X-Hub-Signature-256: sha256={}", signature()),
        "bitbucket" => format!("X-Hub-Signature: sha256={}", signature()),
        "gitea" => format!("X-Gitea-Signature: {}", signature()),
        "forgejo" => format!("X-Forgejo-Signature: {}", signature()),
        "gitlab" => format!("X-Gitlab-Token: {}", String::from_utf8_lossy(&secret)),
        "standard-webhooks" => {
            let key = verify::standard_webhooks_key(&secret).map_err(config)?;
            let id = match id {
                Some(id) => id,
                None => format!("msg_{}", verify::hex(&random_bytes()?)),
            };
            let timestamp = timestamp.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
            let signature = verify::standard_webhooks_signature(&key, &id, timestamp, &bytes);
            format!(
                "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {signature}"
            )
        }
        other => {
            return Err(Error::Usage(format!(
                "sign: unknown scheme {other:?}; choose github, gitea, forgejo, gitlab, bitbucket or standard-webhooks"
            )));
        }
    })
}

/// Sixteen random bytes for a delivery id.
fn random_bytes() -> Result<[u8; 16], Error> {
    let mut bytes = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::system("read /dev/urandom", e))?;
    Ok(bytes)
}
