//! `sockhook token` and `sockhook sign`: make credentials for testing a hook.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::Error;
use crate::verify;

/// The token for `path`, or a URL carrying it as the user name.
pub fn token(path: &str, key: Option<&Path>, url_base: Option<&str>) -> Result<String, Error> {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let key = config::load_key(&config::key_path(key, credentials.as_deref()))?;
    let token = verify::token(&key, path);
    let Some(base) = url_base else {
        return Ok(token);
    };
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

/// The header line that makes `body` pass `scheme` with the secret in `secret`.
pub fn sign(scheme: &str, secret: &Path, body: &mut dyn Read) -> Result<String, Error> {
    let secret = config::read_secret_file(secret).map_err(|reason| Error::Config {
        path: secret.to_owned(),
        reason,
    })?;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes)
        .map_err(|e| Error::system("read the body from stdin", e))?;
    Ok(match scheme {
        "github" => format!(
            "X-Hub-Signature-256: {}",
            verify::github_signature(&secret, &bytes)
        ),
        "gitea" => format!(
            "X-Gitea-Signature: {}",
            verify::body_signature(&secret, &bytes)
        ),
        "forgejo" => format!(
            "X-Forgejo-Signature: {}",
            verify::body_signature(&secret, &bytes)
        ),
        "gitlab" => format!("X-Gitlab-Token: {}", String::from_utf8_lossy(&secret)),
        other => {
            return Err(Error::Usage(format!(
                "sign: unknown scheme {other:?}; choose github, gitea, forgejo or gitlab"
            )));
        }
    })
}
