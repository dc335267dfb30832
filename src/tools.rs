//! `sockhook token` and `sockhook sign`: make credentials for testing a hook.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{self, CREDENTIALS_DIRECTORY, Problem};
use crate::error::Error;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::scheme::{
    STANDARD_WEBHOOKS_PRIVATE_PREFIX, STANDARD_WEBHOOKS_PUBLIC_PREFIX, Scheme, Secret,
};
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
///
/// For the Ed25519 schemes the file holds the private key, which a receiver
/// never has: for `discord`, the 32-byte seed in hex (64 digits, or 128 with
/// the public key after it); for `standard-webhooks`, `whsk_` and the base64
/// of the seed (or of seed and public key). The public key the hook's
/// `secret` must then hold is printed on stderr.
pub fn sign(
    scheme: Scheme,
    secret: &Path,
    id: Option<String>,
    timestamp: Option<u64>,
    body: &mut dyn Read,
) -> Result<String, Error> {
    let bytes = config::read_secret_file(secret)?;
    let bad = |message: String| Problem {
        path: secret.to_owned(),
        message,
    };
    let private = match scheme {
        Scheme::Discord => Some(
            verify::unhex(bytes.trim_ascii())
                .and_then(|key| signing_key(&key))
                .ok_or_else(|| {
                    bad("sign --scheme discord wants the application's Ed25519 private key: 64 hex digits (the seed), or 128 (seed and public key)".into())
                })?,
        ),
        Scheme::StandardWebhooks => match bytes.strip_prefix(STANDARD_WEBHOOKS_PRIVATE_PREFIX.as_bytes()) {
            Some(encoded) => Some(
                BASE64
                    .decode(encoded)
                    .ok()
                    .and_then(|key| signing_key(&key))
                    .ok_or_else(|| {
                        bad(format!("not a Standard Webhooks private key ({STANDARD_WEBHOOKS_PRIVATE_PREFIX} and the base64 of 32 or 64 bytes)"))
                    })?,
            ),
            None => None,
        },
        _ => None,
    };
    let key = match &private {
        Some(pair) => {
            let public = pair.public_key().as_ref();
            let shown = match scheme {
                Scheme::Discord => verify::hex(public),
                _ => format!("{STANDARD_WEBHOOKS_PUBLIC_PREFIX}{}", BASE64.encode(public)),
            };
            eprintln!("sockhook: the hook's secret file must hold the public key {shown}");
            Secret::new(Vec::new())
        }
        None => scheme
            .decode_secret(bytes)
            .map_err(|e| bad(e.to_string()))?,
    };
    if key.is_public_key() {
        return Err(bad(format!(
            "a public key cannot sign; sign --scheme {} wants the private key ({STANDARD_WEBHOOKS_PRIVATE_PREFIX}…)",
            scheme.name()
        ))
        .into());
    }
    let mut body_bytes = Vec::new();
    body.read_to_end(&mut body_bytes)
        .map_err(|e| Error::system("read the body from stdin", e))?;
    let signature = || verify::body_signature(key.expose(), &body_bytes);
    let timestamp = timestamp.unwrap_or_else(verify::unix_now);
    let signed = |prefix: &str| {
        let mut message = prefix.as_bytes().to_vec();
        message.extend_from_slice(&body_bytes);
        message
    };
    Ok(match scheme {
        Scheme::Github => format!("X-Hub-Signature-256: sha256={}", signature()),
        Scheme::Bitbucket => format!("X-Hub-Signature: sha256={}", signature()),
        Scheme::Gitea => format!("X-Gitea-Signature: {}", signature()),
        Scheme::Forgejo => format!("X-Forgejo-Signature: {}", signature()),
        Scheme::Gitlab => format!("X-Gitlab-Token: {}", String::from_utf8_lossy(key.expose())),
        Scheme::Linear => format!("Linear-Signature: {}", signature()),
        Scheme::Sentry => format!("Sentry-Hook-Signature: {}", signature()),
        Scheme::Shopify => format!(
            "X-Shopify-Hmac-Sha256: {}",
            BASE64.encode(verify::mac(key.expose(), &body_bytes))
        ),
        Scheme::Stripe => format!(
            "Stripe-Signature: t={timestamp},v1={}",
            verify::hex(&verify::mac(
                key.expose(),
                &signed(&format!("{timestamp}."))
            ))
        ),
        Scheme::Slack => format!(
            "X-Slack-Request-Timestamp: {timestamp}\nX-Slack-Signature: v0={}",
            verify::hex(&verify::mac(
                key.expose(),
                &signed(&format!("v0:{timestamp}:"))
            ))
        ),
        Scheme::Discord => {
            let pair = private.as_ref().expect("discord signs with a private key");
            format!(
                "X-Signature-Ed25519: {}\nX-Signature-Timestamp: {timestamp}",
                verify::hex(pair.sign(&signed(&timestamp.to_string())).as_ref())
            )
        }
        Scheme::StandardWebhooks => {
            let id = match id {
                Some(id) => id,
                None => format!("msg_{}", verify::hex(&random_bytes()?)),
            };
            let signature = match &private {
                Some(pair) => format!(
                    "v1a,{}",
                    BASE64.encode(pair.sign(&signed(&format!("{id}.{timestamp}."))))
                ),
                None => {
                    verify::standard_webhooks_signature(key.expose(), &id, timestamp, &body_bytes)
                }
            };
            format!(
                "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {signature}"
            )
        }
        Scheme::Token | Scheme::None | Scheme::Relay => {
            return Err(Error::Usage(format!(
                "sign: auth = \"{}\" has no signature to make",
                scheme.name()
            )));
        }
    })
}

/// The public key of the Ed25519 private key `private` (seed, or seed and
/// public key) and its signature of `message`: for tests and fuzzing.
pub fn ed25519_sign(private: &[u8], message: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let pair = signing_key(private)?;
    Some((
        pair.public_key().as_ref().to_vec(),
        pair.sign(message).as_ref().to_vec(),
    ))
}

/// An Ed25519 key pair from a 32-byte seed, or from seed and public key
/// (64 bytes, as libsodium and Standard Webhooks' `whsk_` keep it), which must agree.
fn signing_key(bytes: &[u8]) -> Option<Ed25519KeyPair> {
    match bytes.len() {
        32 => Ed25519KeyPair::from_seed_unchecked(bytes).ok(),
        64 => Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..]).ok(),
        _ => None,
    }
}

/// Sixteen random bytes for a delivery id.
fn random_bytes() -> Result<[u8; 16], Error> {
    let mut bytes = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::system("read /dev/urandom", e))?;
    Ok(bytes)
}
