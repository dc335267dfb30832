//! Who a sender must prove to be: the authentication schemes, the headers
//! each one uses, and the secrets and key they are checked with.
//!
//! Both the hook files ([`crate::config`]) and the checks ([`crate::verify`])
//! build on this module, which depends on neither.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

/// The prefix of a Standard Webhooks secret; the rest is base64.
pub const STANDARD_WEBHOOKS_PREFIX: &str = "whsec_";

/// How a hook checks who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// HMAC-SHA256(server key, path) as Basic-auth user name or Bearer token.
    Token,
    /// `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    Github,
    /// `X-Gitea-Signature: <hex HMAC of the body>`.
    Gitea,
    /// `X-Forgejo-Signature: <hex HMAC of the body>`.
    Forgejo,
    /// `X-Gitlab-Token: <the secret>`.
    Gitlab,
    /// Bitbucket's `X-Hub-Signature: sha256=<hex HMAC of the body>`.
    Bitbucket,
    /// Standard Webhooks: `webhook-signature` over `id.timestamp.body`.
    StandardWebhooks,
    /// No check at all; needs `allow_unauthenticated = true`.
    None,
}

impl Scheme {
    /// Every scheme, in the order the documentation lists them.
    pub const ALL: [Scheme; 8] = [
        Scheme::Token,
        Scheme::Github,
        Scheme::Gitea,
        Scheme::Forgejo,
        Scheme::Gitlab,
        Scheme::Bitbucket,
        Scheme::StandardWebhooks,
        Scheme::None,
    ];

    /// The name used in hook files.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Token => "token",
            Scheme::Github => "github",
            Scheme::Gitea => "gitea",
            Scheme::Forgejo => "forgejo",
            Scheme::Gitlab => "gitlab",
            Scheme::Bitbucket => "bitbucket",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::None => "none",
        }
    }

    /// The scheme a hook file or `sockhook sign` names.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the scheme needs a `secret`.
    pub fn needs_secret(self) -> bool {
        !matches!(self, Scheme::Token | Scheme::None)
    }

    /// The header carrying the signature (or, for GitLab, the secret), as sent.
    pub fn signature_header(self) -> Option<&'static str> {
        match self {
            Scheme::Github => Some("X-Hub-Signature-256"),
            Scheme::Gitea => Some("X-Gitea-Signature"),
            Scheme::Forgejo => Some("X-Forgejo-Signature"),
            Scheme::Gitlab => Some("X-Gitlab-Token"),
            Scheme::Bitbucket => Some("X-Hub-Signature"),
            Scheme::StandardWebhooks => Some("webhook-signature"),
            Scheme::Token | Scheme::None => None,
        }
    }

    /// The header naming the event, for `events` and `SOCKHOOK_EVENT`.
    pub fn event_header(self) -> Option<&'static str> {
        match self {
            Scheme::Github => Some("x-github-event"),
            Scheme::Gitea => Some("x-gitea-event"),
            Scheme::Forgejo => Some("x-forgejo-event"),
            Scheme::Gitlab => Some("x-gitlab-event"),
            Scheme::Bitbucket => Some("x-event-key"),
            Scheme::Token | Scheme::StandardWebhooks | Scheme::None => None,
        }
    }

    /// The header carrying the delivery id, for `SOCKHOOK_DELIVERY`.
    pub fn delivery_header(self) -> Option<&'static str> {
        match self {
            Scheme::Github => Some("x-github-delivery"),
            Scheme::Gitea => Some("x-gitea-delivery"),
            Scheme::Forgejo => Some("x-forgejo-delivery"),
            Scheme::Gitlab => Some("x-gitlab-event-uuid"),
            Scheme::Bitbucket => Some("x-request-uuid"),
            Scheme::StandardWebhooks => Some("webhook-id"),
            Scheme::Token | Scheme::None => None,
        }
    }

    /// The MAC key a secret file's bytes stand for: Standard Webhooks secrets
    /// are `whsec_` and base64, every other scheme uses the bytes as written.
    pub fn decode_secret(self, bytes: Vec<u8>) -> Result<Secret, BadSecret> {
        if self != Scheme::StandardWebhooks {
            return Ok(Secret(bytes));
        }
        let encoded = bytes
            .strip_prefix(STANDARD_WEBHOOKS_PREFIX.as_bytes())
            .unwrap_or(&bytes);
        match BASE64.decode(encoded) {
            Ok(key) if !key.is_empty() => Ok(Secret(key)),
            _ => Err(BadSecret { scheme: self }),
        }
    }
}

/// A secret file whose contents the scheme cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSecret {
    /// The scheme that could not use it.
    pub scheme: Scheme,
}

impl fmt::Display for BadSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::StandardWebhooks => write!(
                f,
                "not a Standard Webhooks secret ({STANDARD_WEBHOOKS_PREFIX} and base64)"
            ),
            other => write!(f, "not a secret for auth = \"{}\"", other.name()),
        }
    }
}

impl std::error::Error for BadSecret {}

/// Whether a hook's `secret` value looks like a secret pasted in, rather
/// than the credential name or the path that belongs there: it has a
/// character no credential name has, or a run of 16 letters and digits
/// mixed (or 24 of either), as tokens, hex and base64 have and names do not.
/// Such a value is never printed.
pub fn looks_pasted(spec: &str) -> bool {
    if spec.starts_with('/') {
        return false;
    }
    if !spec
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return true;
    }
    spec.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        let digits = run.bytes().any(|b| b.is_ascii_digit());
        let letters = run.bytes().any(|b| b.is_ascii_alphabetic());
        (run.len() >= 16 && digits && letters) || run.len() >= 24
    })
}

/// Secret bytes; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Bytes used as they are, e.g. by `sockhook sign` or a test.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The bytes, for computing a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The server key that tokens derive from.
#[derive(Clone, Debug)]
pub struct Key(Secret);

impl Key {
    /// The shortest server key accepted, in bytes.
    pub const MIN_BYTES: usize = 16;

    /// A key from a key file's bytes, if it is long enough.
    pub fn new(bytes: Vec<u8>) -> Result<Key, ShortKey> {
        if bytes.len() < Key::MIN_BYTES {
            return Err(ShortKey { len: bytes.len() });
        }
        Ok(Key(Secret(bytes)))
    }

    /// The key's bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }
}

/// A server key shorter than [`Key::MIN_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortKey {
    /// Its length in bytes.
    pub len: usize,
}

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server key has {} bytes; use at least {}",
            self.len,
            Key::MIN_BYTES
        )
    }
}

impl std::error::Error for ShortKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scheme in Scheme::ALL {
            assert_eq!(Scheme::from_name(scheme.name()), Some(scheme));
        }
        assert_eq!(Scheme::from_name("GitHub"), None);
    }

    #[test]
    fn standard_webhooks_secrets_must_be_base64() {
        let decode = |s: &[u8]| Scheme::StandardWebhooks.decode_secret(s.to_vec());
        assert!(decode(b"whsec_not base64!").is_err());
        assert!(decode(b"whsec_").is_err());
        assert_eq!(decode(b"whsec_AAEC").unwrap().expose(), [0, 1, 2]);
        assert_eq!(decode(b"AAEC").unwrap().expose(), [0, 1, 2]);
    }

    #[test]
    fn other_secrets_are_used_as_written() {
        let secret = Scheme::Github
            .decode_secret(b"whsec_AAEC".to_vec())
            .unwrap();
        assert_eq!(secret.expose(), b"whsec_AAEC");
    }

    #[test]
    fn pasted_secrets_are_told_from_names_and_paths() {
        for name in ["deploy", "github-deploy", "gh.secret", "deploy_2024", "a"] {
            assert!(!looks_pasted(name), "{name}");
        }
        assert!(!looks_pasted("/etc/sockhook/It's a secret"));
        for pasted in [
            "It's a Secret to Everybody",
            "hunter2!",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "3f9a0c1d2e4b5a6978877665544332211",
            "glpat-AbCdEf1234567890xyzQ",
        ] {
            assert!(looks_pasted(pasted), "{pasted}");
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(Key::new(vec![0; 15]).unwrap_err(), ShortKey { len: 15 });
        assert!(Key::new(vec![0; 16]).is_ok());
    }
}
