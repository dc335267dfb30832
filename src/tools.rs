//! `sockhook token` and `sockhook sign`: make credentials for testing a hook.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{self, CREDENTIALS_DIRECTORY, Problem};
use crate::error::Error;
use crate::scheme::Scheme;
use crate::verify;

/// The token for `path`, or a URL carrying it as the user name with an
/// empty password (and, on stderr, what to put where in an app that wants
/// the token apart). Warns when no hook in `hooks_dir` is served at `path`.
pub fn token(
    path: &str,
    key: Option<&Path>,
    url_base: Option<&str>,
    hooks_dir: &Path,
) -> Result<String, Error> {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let key = config::load_key(&config::key_path(key, credentials.as_deref()))?;
    let token = verify::token(&key, path);
    let hooks = config::load(hooks_dir, credentials.as_deref());
    if hooks.unavailable().is_none() && !serves(&hooks, path) {
        let names: Vec<&str> = hooks.iter().map(|(name, _)| name).collect();
        let names = match names.is_empty() {
            true => "none".to_owned(),
            false => names.join(" "),
        };
        let at = match path.ends_with('/') {
            true => "below",
            false => "at",
        };
        crate::warning!(
            "no hook in {} is served {at} {path} (hooks: {names}); a request with this token gets 404",
            hooks_dir.display()
        );
    }
    let Some(base) = url_base else {
        return Ok(token);
    };
    let (scheme, rest) = base.split_once("://").ok_or_else(|| {
        Error::Usage(format!(
            "--url-base wants scheme://host[:port], not {base:?}"
        ))
    })?;
    let rest = rest.trim_end_matches('/');
    // HTTP Shortcuts and other apps do not take user@ from a URL: say what to
    // put where, on stderr, so that stdout stays the URL alone.
    crate::info!(
        "in an app such as HTTP Shortcuts: URL {scheme}://{rest}{path}, method POST; under Authentication, Basic auth with user name {token} and an empty password, or Bearer token {token}"
    );
    // With the colon, an empty password: without it, Python requests, wget
    // and OkHttp send no credentials at all.
    Ok(format!("{scheme}://{token}:@{rest}{path}"))
}

/// Whether a request to `path` reaches a hook: `/hooks/NAME`, or for a
/// path ending in `/`, any hook below it.
fn serves(hooks: &config::Hooks, path: &str) -> bool {
    let served = |name: &str| format!("{}{name}", config::HOOKS_PREFIX);
    match path.ends_with('/') {
        true => hooks.iter().any(|(name, _)| served(name).starts_with(path)),
        false => hooks.iter().any(|(name, _)| served(name) == path),
    }
}

/// The header lines that make `body` pass `scheme` with the secret in `secret`.
pub fn sign(
    scheme: Scheme,
    secret: &Path,
    id: Option<String>,
    timestamp: Option<u64>,
    body: &mut dyn Read,
) -> Result<String, Error> {
    let bytes = config::read_secret_file(secret)?;
    let key = scheme.decode_secret(bytes).map_err(|e| Problem {
        path: secret.to_owned(),
        message: e.to_string(),
    })?;
    let mut body_bytes = Vec::new();
    body.read_to_end(&mut body_bytes)
        .map_err(|e| Error::system("read the body from stdin", e))?;
    let signature = || verify::body_signature(key.expose(), &body_bytes);
    Ok(match scheme {
        Scheme::Github => format!("X-Hub-Signature-256: sha256={}", signature()),
        Scheme::Bitbucket => format!("X-Hub-Signature: sha256={}", signature()),
        Scheme::Gitea => format!("X-Gitea-Signature: {}", signature()),
        Scheme::Forgejo => format!("X-Forgejo-Signature: {}", signature()),
        Scheme::Gitlab => format!("X-Gitlab-Token: {}", String::from_utf8_lossy(key.expose())),
        Scheme::StandardWebhooks => {
            let id = match id {
                Some(id) => id,
                None => format!("msg_{}", verify::hex(&random_bytes()?)),
            };
            let timestamp = timestamp.unwrap_or_else(verify::unix_now);
            let signature =
                verify::standard_webhooks_signature(key.expose(), &id, timestamp, &body_bytes);
            format!(
                "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {signature}"
            )
        }
        Scheme::Token | Scheme::None => {
            return Err(Error::Usage(format!(
                "sign: auth = \"{}\" has no signature to make",
                scheme.name()
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
