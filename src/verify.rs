//! Stage 4: check who sent the request.
//!
//! Tokens are hookbot's, with SHA-256: lowercase hex HMAC-SHA256(server key,
//! path); a token for a path ending in `/` covers every path below it.
//! Signature schemes MAC the raw body, which is fed in while it is read, so
//! the body is never held in memory. Every comparison is `Mac::verify_slice`,
//! which runs in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Hook, Key, Scheme, Secret};
use crate::error::Error;
use crate::read::Head;

type HmacSha256 = Hmac<Sha256>;

/// The token for `path`: lowercase hex HMAC-SHA256(key, path).
pub fn token(key: &Key, path: &str) -> String {
    hex(&mac(key.expose(), path.as_bytes()))
}

/// Lowercase hex HMAC-SHA256(secret, body): what Gitea and Forgejo send.
pub fn body_signature(secret: &[u8], body: &[u8]) -> String {
    hex(&mac(secret, body))
}

/// `sha256=<hex>`: GitHub's `X-Hub-Signature-256` value for `body`.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", body_signature(secret, body))
}

/// What is left to check once the head has passed.
pub enum Pending {
    /// Nothing: the sender is authenticated.
    Done,
    /// The body's MAC must match.
    Body(BodyMac),
}

/// A MAC over the body, computed while the body streams in.
pub struct BodyMac {
    mac: HmacSha256,
    expected: Vec<u8>,
}

impl BodyMac {
    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Compares, in constant time, with the signature the sender gave.
    pub fn finish(self) -> Result<(), Error> {
        self.mac.verify_slice(&self.expected).map_err(|_| {
            unauthorized(
                "signature does not match the body (wrong secret, or the body was altered)",
            )
        })
    }
}

/// Checks everything that needs no body: credentials, or the signature's presence and form.
///
/// `key` is the server key, or why it is unavailable.
pub fn before_body(hook: &Hook, head: &Head, key: Result<&Key, &str>) -> Result<Pending, Error> {
    match hook.scheme {
        Scheme::None => Ok(Pending::Done),
        Scheme::Token => {
            let key = key.map_err(|why| Error::HookBroken {
                reason: format!("server key unavailable: {why}"),
            })?;
            let presented = presented_token(head)?;
            if token_matches(key, &head.path, &presented) {
                Ok(Pending::Done)
            } else {
                Err(Error::Unauthorized {
                    reason: "token does not match the path".into(),
                    challenge: true,
                })
            }
        }
        Scheme::Github => {
            let value = single(head, "x-hub-signature-256").map_err(|e| match e {
                Missing::None if head.header("x-hub-signature").is_some() => unauthorized(
                    "only X-Hub-Signature (SHA-1) was sent; sockhook needs X-Hub-Signature-256",
                ),
                e => e.into_error("X-Hub-Signature-256"),
            })?;
            let hex = value
                .strip_prefix(b"sha256=")
                .ok_or_else(|| unauthorized("X-Hub-Signature-256 does not start with sha256="))?;
            body_mac(hook, hex, "X-Hub-Signature-256")
        }
        Scheme::Gitea | Scheme::Forgejo => {
            let name = if hook.scheme == Scheme::Gitea {
                "X-Gitea-Signature"
            } else {
                "X-Forgejo-Signature"
            };
            let value = single(head, &name.to_ascii_lowercase()).map_err(|e| e.into_error(name))?;
            body_mac(hook, value, name)
        }
        Scheme::Gitlab => {
            let value =
                single(head, "x-gitlab-token").map_err(|e| e.into_error("X-Gitlab-Token"))?;
            let secret = secret(hook)?;
            let mut presented =
                HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
            presented.update(value);
            presented
                .verify_slice(&mac(secret.expose(), secret.expose()))
                .map(|()| Pending::Done)
                .map_err(|_| unauthorized("X-Gitlab-Token does not match the secret"))
        }
    }
}

fn body_mac(hook: &Hook, hex_digits: &[u8], header: &str) -> Result<Pending, Error> {
    let expected = unhex(hex_digits)
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| unauthorized(&format!("{header} is not 64 hex digits")))?;
    let mac =
        HmacSha256::new_from_slice(secret(hook)?.expose()).expect("HMAC takes any key length");
    Ok(Pending::Body(BodyMac { mac, expected }))
}

fn secret(hook: &Hook) -> Result<&Secret, Error> {
    hook.secret.as_ref().ok_or_else(|| Error::HookBroken {
        reason: "no secret loaded".into(),
    })
}

/// Whether `presented` is the token of `path` or of a `/`-terminated prefix of it.
pub fn token_matches(key: &Key, path: &str, presented: &str) -> bool {
    let Some(presented) = unhex(presented.as_bytes()) else {
        return false;
    };
    scopes(path).any(|scope| {
        let mut mac = HmacSha256::new_from_slice(key.expose()).expect("HMAC takes any key length");
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
fn presented_token(head: &Head) -> Result<String, Error> {
    let missing = || Error::Unauthorized {
        reason: "no token; send it as the Basic-auth user name or as a Bearer token".into(),
        challenge: true,
    };
    let bad = |why: &str| Error::Unauthorized {
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
        let decoded =
            base64_decode(credentials).ok_or_else(|| bad("Basic credentials are not base64"))?;
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
    fn into_error(self, header: &str) -> Error {
        match self {
            Missing::None => unauthorized(&format!("no {header} header")),
            Missing::Repeated => unauthorized(&format!("more than one {header} header")),
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

fn unauthorized(reason: &str) -> Error {
    Error::Unauthorized {
        reason: reason.into(),
        challenge: false,
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
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

/// Standard base64 (RFC 4648 §4) with padding, as Basic auth uses it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, quad) in bytes.chunks_exact(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc: u32 = 0;
        for &c in &quad[..4 - pad] {
            acc = acc << 6 | u32::from(value(c)?);
        }
        acc <<= 6 * pad as u32;
        let decoded = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        assert_eq!(
            github_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn token_is_lowercase_hex_hmac_of_the_path() {
        let key = Key::from_bytes(b"0123456789abcdef");
        let t = token(&key, "/hooks/a");
        assert_eq!(t.len(), 64);
        assert_eq!(t, t.to_ascii_lowercase());
        assert!(token_matches(&key, "/hooks/a", &t));
        assert!(token_matches(&key, "/hooks/a", &t.to_ascii_uppercase()));
        assert!(!token_matches(&key, "/hooks/b", &t));
    }

    #[test]
    fn prefix_token_covers_paths_below_and_nothing_else() {
        let key = Key::from_bytes(b"0123456789abcdef");
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
    fn base64_decodes_rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(
                base64_decode(coded).as_deref(),
                Some(plain.as_bytes()),
                "{coded}"
            );
        }
        for junk in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!"] {
            assert_eq!(base64_decode(junk), None, "{junk}");
        }
    }
}
