//! Stage 4: check who sent the request.
//!
//! Tokens are hookbot's, with SHA-256: lowercase hex HMAC-SHA256(server key,
//! path); a token for a path ending in `/` covers every path below it.
//! Signature schemes MAC the raw body, which is fed in while it is read, so
//! the body is never held in memory. Every comparison is `Mac::verify_slice`,
//! which runs in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Hook, Problem};
use crate::error::Refusal;
use crate::read::Head;
use crate::replay::MAX_ID_BYTES;
use crate::scheme::{Key, Scheme, Secret};

/// How far a Standard Webhooks timestamp may be from now, either way.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);
/// Most signatures considered in one `webhook-signature` header.
pub const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// The token for `path`: lowercase hex HMAC-SHA256(key, path).
pub fn token(key: &Key, path: &str) -> String {
    hex(&mac(key.expose(), path.as_bytes()))
}

/// Lowercase hex HMAC-SHA256(secret, body): what Gitea and Forgejo send.
pub fn body_signature(secret: &[u8], body: &[u8]) -> String {
    hex(&mac(secret, body))
}

/// `v1,<base64>`: the Standard Webhooks signature of a delivery.
pub fn standard_webhooks_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", BASE64.encode(mac(key, &signed)))
}

/// What is left to check once the head has passed.
pub enum Pending {
    /// Nothing: the sender is authenticated by the head alone.
    Done,
    /// The body's MAC must match one of the signatures the sender gave.
    Body(BodyMac),
}

/// A MAC over the body, computed while the body streams in.
pub struct BodyMac {
    mac: HmacSha256,
    /// Signatures the sender gave; one must match.
    expected: Vec<Vec<u8>>,
    /// The delivery id the signature covers (Standard Webhooks).
    delivery: Option<String>,
}

/// An authenticated request.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// A signed delivery id, which must not be accepted twice (Standard Webhooks).
    pub replay_id: Option<String>,
}

impl Pending {
    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        if let Pending::Body(body) = self {
            body.mac.update(piece);
        }
    }

    /// The verdict once the whole body went through [`Pending::update`]:
    /// compared in constant time with each signature the sender gave.
    pub fn finish(self) -> Result<Verified, Refusal> {
        let body = match self {
            Pending::Done => return Ok(Verified { replay_id: None }),
            Pending::Body(body) => body,
        };
        let matched = body
            .expected
            .iter()
            .any(|expected| body.mac.clone().verify_slice(expected).is_ok());
        if !matched {
            return Err(Refusal::unauthorized(
                "signature does not match the body (wrong secret, or the body was altered)",
            ));
        }
        Ok(Verified {
            replay_id: body.delivery,
        })
    }
}

/// Checks everything that needs no body: credentials, or the signature's presence and form.
///
/// `key` is the server key, or the problem that makes it unavailable.
pub fn before_body(
    hook: &Hook,
    head: &Head,
    key: Result<&Key, &Problem>,
) -> Result<Pending, Refusal> {
    match hook.scheme {
        Scheme::None => Ok(Pending::Done),
        Scheme::Token => {
            let key = key.map_err(|problem| Refusal::HookBroken(problem.clone()))?;
            let presented = presented_token(head)?;
            if token_matches(key, &head.path, &presented) {
                Ok(Pending::Done)
            } else {
                Err(Refusal::Unauthorized {
                    reason: "token does not match the path".into(),
                    challenge: true,
                })
            }
        }
        Scheme::Github => {
            let sha1_only = head.header("x-hub-signature-256").is_none()
                && head
                    .header("x-hub-signature")
                    .is_some_and(|v| v.starts_with(b"sha1="));
            if sha1_only {
                return Err(Refusal::unauthorized(
                    "only X-Hub-Signature (SHA-1) was sent; sockhook needs X-Hub-Signature-256",
                ));
            }
            prefixed_hex(hook, head, "X-Hub-Signature-256")
        }
        Scheme::Bitbucket => prefixed_hex(hook, head, "X-Hub-Signature"),
        Scheme::StandardWebhooks => standard_webhooks(hook, head),
        Scheme::Gitea | Scheme::Forgejo => {
            let name = hook.scheme.signature_header().unwrap_or_default();
            let value =
                single(head, &name.to_ascii_lowercase()).map_err(|e| e.into_refusal(name))?;
            body_mac(hook, value, name)
        }
        Scheme::Gitlab => {
            let value =
                single(head, "x-gitlab-token").map_err(|e| e.into_refusal("X-Gitlab-Token"))?;
            let secret = secret(hook)?;
            let mut presented = keyed(secret.expose());
            presented.update(value);
            presented
                .verify_slice(&mac(secret.expose(), secret.expose()))
                .map(|()| Pending::Done)
                .map_err(|_| Refusal::unauthorized("X-Gitlab-Token does not match the secret"))
        }
    }
}

/// `HEADER: sha256=<hex HMAC of the body>`, as GitHub and Bitbucket send it.
fn prefixed_hex(hook: &Hook, head: &Head, header: &str) -> Result<Pending, Refusal> {
    let value = single(head, &header.to_ascii_lowercase()).map_err(|e| e.into_refusal(header))?;
    let hex = value
        .strip_prefix(b"sha256=")
        .ok_or_else(|| Refusal::unauthorized(format!("{header} does not start with sha256=")))?;
    body_mac(hook, hex, header)
}

fn body_mac(hook: &Hook, hex_digits: &[u8], header: &str) -> Result<Pending, Refusal> {
    let expected = unhex(hex_digits)
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| Refusal::unauthorized(format!("{header} is not 64 hex digits")))?;
    Ok(Pending::Body(BodyMac {
        mac: keyed(secret(hook)?.expose()),
        expected: vec![expected],
        delivery: None,
    }))
}

/// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp` within the
/// tolerance, and `webhook-signature` holding `v1,<base64>` entries of which
/// one must be the HMAC of `id.timestamp.body`.
fn standard_webhooks(hook: &Hook, head: &Head) -> Result<Pending, Refusal> {
    let field = |name: &str| {
        single(head, name)
            .map_err(|e| e.into_refusal(name))
            .and_then(|v| {
                std::str::from_utf8(v)
                    .map_err(|_| Refusal::unauthorized(format!("{name} is not UTF-8")))
            })
    };
    let id = field("webhook-id")?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::unauthorized(format!(
            "webhook-id must be 1 to {MAX_ID_BYTES} printable characters"
        )));
    }
    let timestamp: u64 = field("webhook-timestamp")?
        .parse()
        .map_err(|_| Refusal::unauthorized("webhook-timestamp is not a number of seconds"))?;
    let (now, tolerance) = (unix_now(), TIMESTAMP_TOLERANCE.as_secs());
    if now.saturating_sub(timestamp) > tolerance {
        return Err(Refusal::unauthorized(format!(
            "webhook-timestamp is {} s old, tolerance {tolerance} s",
            now - timestamp
        )));
    }
    if timestamp.saturating_sub(now) > tolerance {
        return Err(Refusal::unauthorized(format!(
            "webhook-timestamp is {} s in the future, tolerance {tolerance} s",
            timestamp - now
        )));
    }
    let expected: Vec<Vec<u8>> = field("webhook-signature")?
        .split_whitespace()
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .filter(|signature| signature.len() == 32)
        .collect();
    if expected.is_empty() {
        return Err(Refusal::unauthorized(
            "webhook-signature has no v1 signature of 32 bytes",
        ));
    }
    let mut mac = keyed(secret(hook)?.expose());
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    Ok(Pending::Body(BodyMac {
        mac,
        expected,
        delivery: Some(id.to_owned()),
    }))
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// Seconds since the Unix epoch, as the senders' timestamps count them.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn secret(hook: &Hook) -> Result<&Secret, Refusal> {
    // INVARIANT of `Hook`: a scheme that needs a secret has one.
    hook.secret.as_ref().ok_or_else(|| {
        Refusal::HookBroken(Problem {
            path: hook.name.clone().into(),
            message: "no secret loaded".into(),
        })
    })
}

/// Whether `presented` is the token of `path` or of a `/`-terminated prefix of it.
pub fn token_matches(key: &Key, path: &str, presented: &str) -> bool {
    let Some(presented) = unhex(presented.as_bytes()) else {
        return false;
    };
    scopes(path).any(|scope| {
        let mut mac = keyed(key.expose());
        mac.update(scope.as_bytes());
        mac.verify_slice(&presented).is_ok()
    })
}

/// `path` itself, then each prefix ending in `/`, longest first.
fn scopes(path: &str) -> impl Iterator<Item = &str> {
    let prefixes = path
        .char_indices()
        .filter(|&(i, c)| c == '/' && i + 1 < path.len())
        .map(move |(i, _)| &path[..=i]);
    std::iter::once(path).chain(prefixes.collect::<Vec<_>>().into_iter().rev())
}

/// The token a client sent: the Basic-auth user name, or a Bearer token.
fn presented_token(head: &Head) -> Result<String, Refusal> {
    let missing = || Refusal::Unauthorized {
        reason: "no token; send it as the Basic-auth user name or as a Bearer token".into(),
        challenge: true,
    };
    let bad = |why: &str| Refusal::Unauthorized {
        reason: why.into(),
        challenge: true,
    };
    let value = match single(head, "authorization") {
        Ok(value) => value,
        Err(Missing::None) => return Err(missing()),
        Err(Missing::Repeated) => return Err(bad("more than one Authorization header")),
    };
    let value = std::str::from_utf8(value).map_err(|_| bad("Authorization is not UTF-8"))?;
    let (scheme, credentials) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("Authorization has no scheme"))?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(credentials.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64
            .decode(credentials)
            .map_err(|_| bad("Basic credentials are not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| bad("Basic credentials are not UTF-8"))?;
        let user = decoded
            .split_once(':')
            .map_or(decoded.as_str(), |(user, _)| user);
        Ok(user.to_owned())
    } else {
        Err(bad("Authorization scheme is neither Basic nor Bearer"))
    }
}

enum Missing {
    None,
    Repeated,
}

impl Missing {
    fn into_refusal(self, header: &str) -> Refusal {
        match self {
            Missing::None => Refusal::unauthorized(format!("no {header} header")),
            Missing::Repeated => Refusal::unauthorized(format!("more than one {header} header")),
        }
    }
}

/// The value of a header that must appear exactly once.
fn single<'h>(head: &'h Head, name: &str) -> Result<&'h [u8], Missing> {
    let mut values = head.headers.iter().filter(|(n, _)| n == name);
    match (values.next(), values.next()) {
        (Some((_, v)), None) => Ok(v),
        (None, _) => Err(Missing::None),
        (Some(_), Some(_)) => Err(Missing::Repeated),
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = keyed(key);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        assert_eq!(
            body_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn token_is_lowercase_hex_hmac_of_the_path() {
        let key = Key::new(b"0123456789abcdef".to_vec()).unwrap();
        let t = token(&key, "/hooks/a");
        assert_eq!(t.len(), 64);
        assert_eq!(t, t.to_ascii_lowercase());
        assert!(token_matches(&key, "/hooks/a", &t));
        assert!(token_matches(&key, "/hooks/a", &t.to_ascii_uppercase()));
        assert!(!token_matches(&key, "/hooks/b", &t));
    }

    #[test]
    fn prefix_token_covers_paths_below_and_nothing_else() {
        let key = Key::new(b"0123456789abcdef".to_vec()).unwrap();
        let prefix = token(&key, "/hooks/");
        assert!(token_matches(&key, "/hooks/a", &prefix));
        assert!(token_matches(&key, "/hooks/ab", &prefix));
        let a_dir = token(&key, "/hooks/a/");
        assert!(!token_matches(&key, "/hooks/ab", &a_dir));
        assert!(!token_matches(&key, "/hooks/a", &a_dir));
        // A token for a path without a trailing slash is exact, not a prefix.
        assert!(!token_matches(&key, "/hooks/ab", &token(&key, "/hooks/a")));
    }

    #[test]
    fn scopes_are_longest_first() {
        assert_eq!(
            scopes("/hooks/a").collect::<Vec<_>>(),
            ["/hooks/a", "/hooks/", "/"]
        );
        assert_eq!(scopes("/hooks/").collect::<Vec<_>>(), ["/hooks/", "/"]);
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex(b"00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex(b"0"), None);
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(b"+1"), None);
    }

    #[test]
    fn standard_webhooks_published_test_vector() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        let key = Scheme::StandardWebhooks
            .decode_secret(b"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_vec())
            .unwrap();
        assert_eq!(
            standard_webhooks_signature(
                key.expose(),
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }
}
