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
/// The prefix of a Standard Webhooks Ed25519 public key (`v1a`); the rest is base64.
pub const STANDARD_WEBHOOKS_PUBLIC_PREFIX: &str = "whpk_";
/// The prefix of a Standard Webhooks Ed25519 private key, for `sockhook sign`.
pub const STANDARD_WEBHOOKS_PRIVATE_PREFIX: &str = "whsk_";
/// The length of an Ed25519 public key, in bytes (RFC 8032).
pub const ED25519_PUBLIC_KEY_BYTES: usize = 32;

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
    /// Stripe: `Stripe-Signature: t=…,v1=<hex HMAC of t.body>`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=<hex HMAC of v0:ts:body>`.
    Slack,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC of the body>`.
    Shopify,
    /// Linear: `Linear-Signature: <hex HMAC of the body>`.
    Linear,
    /// Sentry: `Sentry-Hook-Signature: <hex HMAC of the body>`.
    Sentry,
    /// Discord interactions: `X-Signature-Ed25519` over `timestamp` + body.
    Discord,
    /// No check at all; needs `allow_unauthenticated = true`.
    None,
    /// Run only by `sockhook subscribe`, for the relay's hook of the same
    /// name (which checked the sender); `serve` answers its path 404.
    Relay,
}

impl Scheme {
    /// Every scheme, in the order the documentation lists them.
    pub const ALL: [Scheme; 15] = [
        Scheme::Token,
        Scheme::Github,
        Scheme::Gitea,
        Scheme::Forgejo,
        Scheme::Gitlab,
        Scheme::Bitbucket,
        Scheme::StandardWebhooks,
        Scheme::Stripe,
        Scheme::Slack,
        Scheme::Shopify,
        Scheme::Linear,
        Scheme::Sentry,
        Scheme::Discord,
        Scheme::None,
        Scheme::Relay,
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
            Scheme::Stripe => "stripe",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
            Scheme::Linear => "linear",
            Scheme::Sentry => "sentry",
            Scheme::Discord => "discord",
            Scheme::None => "none",
            Scheme::Relay => "relay",
        }
    }

    /// The scheme a hook file or `sockhook sign` names.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the scheme needs a `secret`.
    pub fn needs_secret(self) -> bool {
        !matches!(self, Scheme::Token | Scheme::None | Scheme::Relay)
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
            Scheme::Stripe => Some("Stripe-Signature"),
            Scheme::Slack => Some("X-Slack-Signature"),
            Scheme::Shopify => Some("X-Shopify-Hmac-Sha256"),
            Scheme::Linear => Some("Linear-Signature"),
            Scheme::Sentry => Some("Sentry-Hook-Signature"),
            Scheme::Discord => Some("X-Signature-Ed25519"),
            Scheme::Token | Scheme::None | Scheme::Relay => None,
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
            Scheme::Shopify => Some("x-shopify-topic"),
            Scheme::Linear => Some("linear-event"),
            Scheme::Sentry => Some("sentry-hook-resource"),
            // Stripe's event type is in the body (`type`, for `[match]`);
            // Slack and Discord name none in a header.
            Scheme::Token
            | Scheme::StandardWebhooks
            | Scheme::Stripe
            | Scheme::Slack
            | Scheme::Discord
            | Scheme::None
            | Scheme::Relay => None,
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
            Scheme::Shopify => Some("x-shopify-webhook-id"),
            Scheme::Linear => Some("linear-delivery"),
            Scheme::Sentry => Some("request-id"),
            Scheme::Token
            | Scheme::Stripe
            | Scheme::Slack
            | Scheme::Discord
            | Scheme::None
            | Scheme::Relay => None,
        }
    }

    /// Other names a sender uses for a header of this scheme, as `(alias,
    /// name)`: Svix sends Standard Webhooks under `svix-*`, Bitbucket Data
    /// Center its delivery id as `X-Request-Id` (Cloud: `X-Request-UUID`).
    pub fn header_aliases(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Scheme::StandardWebhooks => &[
                ("svix-id", "webhook-id"),
                ("svix-timestamp", "webhook-timestamp"),
                ("svix-signature", "webhook-signature"),
            ],
            Scheme::Bitbucket => &[("x-request-id", "x-request-uuid")],
            _ => &[],
        }
    }

    /// The key a secret file's bytes stand for: a Standard Webhooks secret
    /// is `whsec_` and base64 (an HMAC key) or `whpk_` and base64 (an Ed25519
    /// public key); Discord's is the application's public key in hex; every
    /// other scheme uses the bytes as written (Stripe's `whsec_` included).
    pub fn decode_secret(self, bytes: Vec<u8>) -> Result<Secret, BadSecret> {
        let bad = || BadSecret { scheme: self };
        match self {
            Scheme::StandardWebhooks => {
                if let Some(encoded) =
                    bytes.strip_prefix(STANDARD_WEBHOOKS_PUBLIC_PREFIX.as_bytes())
                {
                    return match BASE64.decode(encoded) {
                        Ok(key) if key.len() == ED25519_PUBLIC_KEY_BYTES => Ok(Secret::public(key)),
                        _ => Err(bad()),
                    };
                }
                let encoded = bytes
                    .strip_prefix(STANDARD_WEBHOOKS_PREFIX.as_bytes())
                    .unwrap_or(&bytes);
                match BASE64.decode(encoded) {
                    Ok(key) if !key.is_empty() => Ok(Secret::new(key)),
                    _ => Err(bad()),
                }
            }
            Scheme::Discord => match unhex(bytes.trim_ascii()) {
                Some(key) if key.len() == ED25519_PUBLIC_KEY_BYTES => Ok(Secret::public(key)),
                _ => Err(bad()),
            },
            _ => Ok(Secret::new(bytes)),
        }
    }
}

/// Hex of either case to bytes; `None` for odd lengths or other characters.
pub fn unhex(digits: &[u8]) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |d: u8| char::from(d).to_digit(16).map(|v| v as u8);
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
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
                "not a Standard Webhooks secret ({STANDARD_WEBHOOKS_PREFIX} and base64) or public key ({STANDARD_WEBHOOKS_PUBLIC_PREFIX} and the base64 of 32 bytes)"
            ),
            Scheme::Discord => f.write_str(
                "not an Ed25519 public key in hex (64 digits): copy the application's PUBLIC KEY from Discord's developer portal",
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

/// Secret bytes, or an Ed25519 public key; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: Vec<u8>,
    public: bool,
}

impl Secret {
    /// Bytes used as they are, e.g. by `sockhook sign` or a test.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret {
            bytes,
            public: false,
        }
    }

    /// An Ed25519 public key (32 bytes), which checks signatures instead of keying a MAC.
    pub fn public(bytes: Vec<u8>) -> Secret {
        Secret {
            bytes,
            public: true,
        }
    }

    /// Whether this is an Ed25519 public key rather than an HMAC key.
    pub fn is_public_key(&self) -> bool {
        self.public
    }

    /// The bytes, for computing a MAC or checking a signature.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.public { "PublicKey" } else { "Secret" };
        write!(f, "{kind}({} bytes)", self.bytes.len())
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
        Ok(Key(Secret::new(bytes)))
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
    fn standard_webhooks_public_keys_are_32_bytes() {
        let decode = |s: &str| Scheme::StandardWebhooks.decode_secret(s.as_bytes().to_vec());
        let key = decode(&format!("whpk_{}", BASE64.encode([7; 32]))).unwrap();
        assert!(key.is_public_key());
        assert_eq!(key.expose(), [7; 32]);
        assert!(decode(&format!("whpk_{}", BASE64.encode([7; 31]))).is_err());
        assert!(decode("whpk_not base64").is_err());
        assert!(!decode("whsec_AAEC").unwrap().is_public_key());
    }

    #[test]
    fn discord_keys_are_64_hex_digits() {
        let decode = |s: &str| Scheme::Discord.decode_secret(s.as_bytes().to_vec());
        let key = decode(&"ab".repeat(32)).unwrap();
        assert!(key.is_public_key());
        assert_eq!(key.expose(), [0xab; 32]);
        assert!(decode(&"ab".repeat(31)).is_err());
        assert!(decode(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn stripe_secrets_are_used_as_written() {
        // Stripe's whsec_ is part of the HMAC key, unlike Standard Webhooks'.
        let secret = Scheme::Stripe
            .decode_secret(b"whsec_AAEC".to_vec())
            .unwrap();
        assert_eq!(secret.expose(), b"whsec_AAEC");
        assert!(!secret.is_public_key());
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
