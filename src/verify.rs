//! Stage 4: check who sent the request.
//!
//! Tokens are hookbot's, with SHA-256: lowercase hex HMAC-SHA256(server key,
//! path); a token for a path ending in `/` covers every path below it.
//! Signature schemes MAC the raw body, which is fed in while it is read, so
//! the body is never held in memory. Every comparison is `Mac::verify_slice`,
//! which runs in constant time.

use std::ops::Deref;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use ring::signature::{ED25519, UnparsedPublicKey};
use sha2::Sha256;

use crate::config::{Hook, Problem};
use crate::error::Refusal;
use crate::fields::EnvFields;
use crate::form::{self, Carrier};
use crate::read::Head;
use crate::replay::MAX_ID_BYTES;
pub use crate::scheme::unhex;
use crate::scheme::{Key, Scheme, Secret};

/// How far a Standard Webhooks timestamp may be from now, either way.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);
/// Most signatures considered in one `webhook-signature` or `Stripe-Signature` header.
pub const MAX_SIGNATURES: usize = 8;
/// The length of an Ed25519 signature, in bytes (RFC 8032).
pub const ED25519_SIGNATURE_BYTES: usize = 64;

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
    /// A signature over the body (and what the sender put before it) must match.
    Body(BodyCheck),
}

/// A signature check over the body: HMACs computed while the body streams
/// in, and Ed25519 signatures checked once it is complete.
pub struct BodyCheck {
    /// One HMAC per secret, fed what precedes the body, then the body.
    macs: Vec<HmacSha256>,
    /// MACs the sender gave; one must match one of `macs`.
    expected: Vec<Vec<u8>>,
    /// Ed25519 public keys.
    keys: Vec<Vec<u8>>,
    /// Ed25519 signatures the sender gave; one must verify under one of `keys`.
    signatures: Vec<Vec<u8>>,
    /// What the sender signed before the body, for the Ed25519 check.
    prefix: Vec<u8>,
    /// What a replay of this delivery would repeat.
    replay: ReplayKey,
    /// MACs keyed as `macs` are, for the decoded `payload` field of a form:
    /// what Gitea and Forgejo sign when they send a form. Either kind may
    /// match, so that a JSON body that a client labels a form (curl's
    /// default) still verifies; both cover the same JSON, so neither lets a
    /// sender without the secret through.
    form_macs: Option<Vec<HmacSha256>>,
}

/// What identifies a delivery for the replay check.
enum ReplayKey {
    /// Nothing: the sender's scheme has no replay protection (GitHub and the
    /// other forges sign neither a time nor an id).
    None,
    /// The sender's signed delivery id (Standard Webhooks).
    Signed(String),
    /// A signed timestamp (Stripe, Slack, Discord): the delivery is
    /// `{scheme} {timestamp}` and the signature that matched.
    Stamped(Scheme, u64),
    /// The body alone is signed (Shopify, Linear, Sentry): the signature that
    /// matched, and the sender's unsigned delivery id if it sent one.
    Body(Scheme, Option<String>),
}

/// An authenticated request.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// What must not be accepted twice, each as (what it is, for the log;
    /// the id): signed delivery ids, and for senders that sign no id, the
    /// signature that matched.
    pub replay_ids: Vec<(String, String)>,
}

impl Pending {
    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        if let Pending::Body(check) = self {
            check.macs.iter_mut().for_each(|mac| mac.update(piece));
        }
    }

    /// The verdict once the whole body went through [`Pending::update`]:
    /// each MAC compared in constant time with each the sender gave, then,
    /// if none matched, each Ed25519 signature checked. `body` gives the
    /// whole body, which ring's Ed25519 check takes as one slice after what
    /// the sender signed before it (ring has no streaming interface); it is
    /// asked for only then.
    pub fn finish<B: Deref<Target = [u8]>>(
        self,
        body: impl Fn() -> Result<B, Refusal>,
    ) -> Result<Verified, Refusal> {
        let mut check = match self {
            Pending::Done => return Ok(Verified { replay_ids: vec![] }),
            Pending::Body(check) => check,
        };
        if let Some(mut form_macs) = check.form_macs.take() {
            let whole = body()?;
            let decoded = form::form_payload(&whole, &mut |piece| {
                form_macs.iter_mut().for_each(|mac| mac.update(piece));
                Ok(())
            });
            if decoded.is_ok() {
                check.macs.extend(form_macs);
            }
        }
        let mut matched = check
            .expected
            .iter()
            .find(|expected| {
                check
                    .macs
                    .iter()
                    .any(|mac| mac.clone().verify_slice(expected).is_ok())
            })
            .cloned();
        if matched.is_none() && !check.keys.is_empty() && !check.signatures.is_empty() {
            // One copy of the mapped body, bounded by max_body, made only for a
            // request whose headers passed; the spool's budget does not count it.
            let body = body()?;
            let mut message = check.prefix;
            message.extend_from_slice(&body);
            matched = check
                .signatures
                .iter()
                .find(|signature| {
                    check.keys.iter().any(|key| {
                        UnparsedPublicKey::new(&ED25519, key)
                            .verify(&message, signature)
                            .is_ok()
                    })
                })
                .cloned();
        }
        let Some(matched) = matched else {
            let secret = if check.macs.is_empty() {
                "wrong public key"
            } else if check.keys.is_empty() {
                "wrong secret"
            } else {
                "wrong secret or public key"
            };
            return Err(Refusal::unauthorized(format!(
                "signature does not match the body ({secret}, or the body was altered)"
            )));
        };
        let this =
            |scheme: Scheme| format!("this {}", scheme.signature_header().unwrap_or("signature"));
        let replay_ids = match check.replay {
            ReplayKey::None => vec![],
            ReplayKey::Signed(id) => vec![("webhook-id".to_owned(), id)],
            ReplayKey::Stamped(scheme, t) => vec![(
                this(scheme),
                format!("{} {t} {}", scheme.name(), hex(&matched)),
            )],
            ReplayKey::Body(scheme, id) => {
                let mut ids = vec![(
                    this(scheme),
                    format!("{} body {}", scheme.name(), hex(&matched)),
                )];
                let header = scheme.delivery_header().unwrap_or("id");
                ids.extend(id.map(|id| (header.to_owned(), format!("{} id {id}", scheme.name()))));
                ids
            }
        };
        Ok(Verified { replay_ids })
    }
}

impl BodyCheck {
    /// A check of MACs keyed with each of `secrets` (public keys skipped),
    /// over `prefix` and the body.
    fn macs(secrets: &[Secret], prefix: &[u8], expected: Vec<Vec<u8>>) -> BodyCheck {
        let macs = secrets
            .iter()
            .filter(|s| !s.is_public_key())
            .map(|s| {
                let mut mac = keyed(s.expose());
                mac.update(prefix);
                mac
            })
            .collect();
        BodyCheck {
            macs,
            expected,
            keys: vec![],
            signatures: vec![],
            prefix: prefix.to_vec(),
            replay: ReplayKey::None,
            form_macs: None,
        }
    }

    /// Adds Ed25519 `signatures` over `prefix` and the body, checked with
    /// each public key among `secrets`.
    fn ed25519(mut self, secrets: &[Secret], signatures: Vec<Vec<u8>>) -> BodyCheck {
        self.keys = secrets
            .iter()
            .filter(|s| s.is_public_key())
            .map(|s| s.expose().to_vec())
            .collect();
        self.signatures = signatures;
        self
    }

    fn replay(self, replay: ReplayKey) -> BodyCheck {
        BodyCheck { replay, ..self }
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
        // `route::accept` answers these 404 already; never run from HTTP.
        Scheme::Relay => Err(Refusal::NotFound),
        Scheme::Token => {
            let key = key.map_err(|problem| Refusal::HookBroken(problem.clone()))?;
            let presented = presented_token(head, hook.token_in_query)?;
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
            let mut pending = body_mac(hook, value, name)?;
            // A form delivery's signature covers its payload field, not the form.
            if let Pending::Body(check) = &mut pending
                && matches!(
                    Carrier::of(head.header("content-type")),
                    Ok(Some(Carrier::Form))
                )
            {
                check.form_macs = Some(check.macs.clone());
            }
            Ok(pending)
        }
        Scheme::Gitlab => {
            let value =
                single(head, "x-gitlab-token").map_err(|e| e.into_refusal("X-Gitlab-Token"))?;
            let matches = secrets(hook)?.iter().any(|secret| {
                let mut presented = keyed(secret.expose());
                presented.update(value);
                presented
                    .verify_slice(&mac(secret.expose(), secret.expose()))
                    .is_ok()
            });
            if matches {
                Ok(Pending::Done)
            } else {
                Err(Refusal::unauthorized(
                    "X-Gitlab-Token does not match the secret",
                ))
            }
        }
        Scheme::Stripe => stripe(hook, head),
        Scheme::Slack => slack(hook, head),
        Scheme::Shopify => {
            let value = text(head, "X-Shopify-Hmac-Sha256")?;
            let expected = BASE64
                .decode(value.trim())
                .ok()
                .filter(|mac| mac.len() == 32)
                .ok_or_else(|| {
                    Refusal::unauthorized("X-Shopify-Hmac-Sha256 is not the base64 of 32 bytes")
                })?;
            body_only(hook, head, expected, "x-shopify-webhook-id")
        }
        Scheme::Linear | Scheme::Sentry => {
            let name = hook.scheme.signature_header().unwrap_or_default();
            let value = text(head, name)?;
            let expected = unhex(value.trim().as_bytes())
                .filter(|mac| mac.len() == 32)
                .ok_or_else(|| Refusal::unauthorized(format!("{name} is not 64 hex digits")))?;
            let id = hook.scheme.delivery_header().unwrap_or_default();
            body_only(hook, head, expected, id)
        }
        Scheme::Discord => discord(hook, head),
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
    Ok(Pending::Body(BodyCheck::macs(
        secrets(hook)?,
        b"",
        vec![expected],
    )))
}

/// An HMAC of the body alone (Shopify, Linear, Sentry). Nothing else is
/// signed, so the replay check remembers the MAC itself, and the sender's
/// delivery id (header `id`) if present: it repeats on the sender's own
/// duplicate deliveries.
fn body_only(hook: &Hook, head: &Head, expected: Vec<u8>, id: &str) -> Result<Pending, Refusal> {
    let id = match single(head, id) {
        Ok(value) => Some(delivery_id(id, value)?),
        Err(Missing::None) => None,
        Err(repeated) => return Err(repeated.into_refusal(id)),
    };
    let check = BodyCheck::macs(secrets(hook)?, b"", vec![expected])
        .replay(ReplayKey::Body(hook.scheme, id));
    Ok(Pending::Body(check))
}

/// A delivery id as the replay file keeps it: 1 to 256 printable characters.
fn delivery_id(name: &str, value: &[u8]) -> Result<String, Refusal> {
    match std::str::from_utf8(value) {
        Ok(id)
            if !id.is_empty()
                && id.len() <= MAX_ID_BYTES
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(id.to_owned())
        }
        _ => Err(Refusal::unauthorized(format!(
            "{name} must be 1 to {MAX_ID_BYTES} printable characters"
        ))),
    }
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, the HMAC of
/// `{t}.{body}` keyed with the endpoint secret as written (`whsec_` included).
/// Other schemes (`v0`, test mode) are ignored, as Stripe's libraries do.
fn stripe(hook: &Hook, head: &Head) -> Result<Pending, Refusal> {
    const NAME: &str = "Stripe-Signature";
    let value = text(head, NAME)?;
    let (mut t, mut v1) = (None, Vec::new());
    for item in value.split(',').take(2 * MAX_SIGNATURES) {
        match item.trim().split_once('=') {
            Some(("t", _)) if t.is_some() => {
                return Err(Refusal::unauthorized(format!("{NAME} has more than one t")));
            }
            Some(("t", stamp)) => t = Some(stamp),
            Some(("v1", signature)) => v1.push(signature),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| Refusal::unauthorized(format!("{NAME} has no t=")))?;
    let timestamp = seconds(&format!("{NAME} t"), t)?;
    let expected: Vec<Vec<u8>> = v1
        .iter()
        .filter_map(|s| unhex(s.as_bytes()))
        .filter(|mac| mac.len() == 32)
        .collect();
    if expected.is_empty() {
        return Err(Refusal::unauthorized(format!(
            "{NAME} has no v1 signature of 64 hex digits"
        )));
    }
    let prefix = format!("{timestamp}.");
    let check = BodyCheck::macs(secrets(hook)?, prefix.as_bytes(), expected)
        .replay(ReplayKey::Stamped(Scheme::Stripe, timestamp));
    Ok(Pending::Body(check))
}

/// Slack: `X-Slack-Signature: v0=<hex>`, the HMAC of `v0:{ts}:{body}` with
/// `ts` from `X-Slack-Request-Timestamp`.
fn slack(hook: &Hook, head: &Head) -> Result<Pending, Refusal> {
    const NAME: &str = "X-Slack-Signature";
    let stamp = text(head, "X-Slack-Request-Timestamp")?;
    let timestamp = seconds("X-Slack-Request-Timestamp", stamp)?;
    let value = text(head, NAME)?;
    let digits = value
        .strip_prefix("v0=")
        .ok_or_else(|| Refusal::unauthorized(format!("{NAME} does not start with v0=")))?;
    let expected = unhex(digits.as_bytes())
        .filter(|mac| mac.len() == 32)
        .ok_or_else(|| Refusal::unauthorized(format!("{NAME} is not v0= and 64 hex digits")))?;
    let prefix = format!("v0:{stamp}:");
    let check = BodyCheck::macs(secrets(hook)?, prefix.as_bytes(), vec![expected])
        .replay(ReplayKey::Stamped(Scheme::Slack, timestamp));
    Ok(Pending::Body(check))
}

/// Discord interactions: `X-Signature-Ed25519` (hex), Ed25519 over
/// `X-Signature-Timestamp` followed by the body, checked with the
/// application's public key.
fn discord(hook: &Hook, head: &Head) -> Result<Pending, Refusal> {
    const NAME: &str = "X-Signature-Ed25519";
    let signature = text(head, NAME)?;
    let signature = unhex(signature.trim().as_bytes())
        .filter(|s| s.len() == ED25519_SIGNATURE_BYTES)
        .ok_or_else(|| Refusal::unauthorized(format!("{NAME} is not 128 hex digits")))?;
    let stamp = text(head, "X-Signature-Timestamp")?;
    let timestamp = seconds("X-Signature-Timestamp", stamp)?;
    let check = BodyCheck::macs(&[], stamp.as_bytes(), vec![])
        .ed25519(secrets(hook)?, vec![signature])
        .replay(ReplayKey::Stamped(Scheme::Discord, timestamp));
    Ok(Pending::Body(check))
}

/// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp` within the
/// tolerance, and `webhook-signature` holding `v1,<base64>` entries (HMAC,
/// `whsec_` secrets) or `v1a,<base64>` entries (Ed25519, `whpk_` public
/// keys), of which one must sign `id.timestamp.body`. Svix's `svix-*`
/// header names are accepted where the `webhook-*` ones are missing.
fn standard_webhooks(hook: &Hook, head: &Head) -> Result<Pending, Refusal> {
    let field = |name: &str| {
        let alias = Scheme::StandardWebhooks
            .header_aliases()
            .iter()
            .find(|(_, canonical)| *canonical == name)
            .map(|(alias, _)| *alias);
        let value = match (single(head, name), alias) {
            (Err(Missing::None), Some(alias)) => single(head, alias).map_err(|e| match e {
                Missing::None => Refusal::unauthorized(format!("no {name} header (nor {alias})")),
                repeated => repeated.into_refusal(alias),
            }),
            (found, _) => found.map_err(|e| e.into_refusal(name)),
        }?;
        std::str::from_utf8(value)
            .map_err(|_| Refusal::unauthorized(format!("{name} is not UTF-8")))
    };
    let id = field("webhook-id")?;
    let id = delivery_id("webhook-id", id.as_bytes())?;
    let timestamp = seconds("webhook-timestamp", field("webhook-timestamp")?)?;
    let secrets = secrets(hook)?;
    let (hmac, ed25519) = (
        secrets.iter().any(|s| !s.is_public_key()),
        secrets.iter().any(Secret::is_public_key),
    );
    let entries = || field("webhook-signature").map(|v| v.split_whitespace().take(MAX_SIGNATURES));
    let decoded = |version: &str, len: usize| -> Result<Vec<Vec<u8>>, Refusal> {
        Ok(entries()?
            .filter_map(|entry| entry.strip_prefix(version))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .filter(|signature| signature.len() == len)
            .collect())
    };
    let expected = if hmac { decoded("v1,", 32)? } else { vec![] };
    let signatures = if ed25519 {
        decoded("v1a,", ED25519_SIGNATURE_BYTES)?
    } else {
        vec![]
    };
    if expected.is_empty() && signatures.is_empty() {
        let wanted = match (hmac, ed25519) {
            (true, false) => "v1 signature of 32 bytes",
            (false, true) => "v1a signature of 64 bytes (the hook's secret is a whpk_ public key)",
            _ => "v1 signature of 32 bytes or v1a signature of 64 bytes",
        };
        return Err(Refusal::unauthorized(format!(
            "webhook-signature has no {wanted}"
        )));
    }
    let prefix = format!("{id}.{timestamp}.");
    let check = BodyCheck::macs(secrets, prefix.as_bytes(), expected)
        .ed25519(secrets, signatures)
        .replay(ReplayKey::Signed(id));
    Ok(Pending::Body(check))
}

/// Linear's `webhookTimestamp` (milliseconds, in the signed body), checked
/// like a timestamp header once the signature holds. Linear sends it in
/// every delivery, and no one without the secret can take it out of a
/// signed body, so a body without one (or one that is not JSON, which the
/// filters deal with) is not refused for it. Read with `[env]`'s bounded
/// walk: only that one field is decoded.
pub fn linear_timestamp(body: &[u8]) -> Result<(), Refusal> {
    static FIELD: LazyLock<EnvFields> = LazyLock::new(|| {
        let table = toml::Table::from_iter([(
            "WEBHOOK_TIMESTAMP".to_owned(),
            toml::Value::String("webhookTimestamp".to_owned()),
        )]);
        EnvFields::from_toml(&table, None, Some("json")).expect("a valid [env] table")
    });
    let Ok(values) = FIELD.extract(body) else {
        return Ok(());
    };
    let Some((_, text)) = values.first().filter(|(_, text)| !text.is_empty()) else {
        return Ok(());
    };
    let ms = std::str::from_utf8(text)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| {
            Refusal::unauthorized("webhookTimestamp in the body is not a number of milliseconds")
        })?;
    seconds("webhookTimestamp", &(ms / 1000).to_string()).map(|_| ())
}

/// A timestamp header's Unix seconds, if within [`TIMESTAMP_TOLERANCE`] of now.
fn seconds(name: &str, value: &str) -> Result<u64, Refusal> {
    let timestamp: u64 = value
        .parse()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Refusal::unauthorized(format!("{name} is not a number of seconds")))?;
    let (now, tolerance) = (unix_now(), TIMESTAMP_TOLERANCE.as_secs());
    if now.saturating_sub(timestamp) > tolerance {
        return Err(Refusal::unauthorized(format!(
            "{name} is {} s old, tolerance {tolerance} s",
            now - timestamp
        )));
    }
    if timestamp.saturating_sub(now) > tolerance {
        return Err(Refusal::unauthorized(format!(
            "{name} is {} s in the future, tolerance {tolerance} s",
            timestamp - now
        )));
    }
    Ok(timestamp)
}

/// A header that must appear exactly once, as UTF-8.
fn text<'h>(head: &'h Head, name: &str) -> Result<&'h str, Refusal> {
    let value = single(head, &name.to_ascii_lowercase()).map_err(|e| e.into_refusal(name))?;
    std::str::from_utf8(value).map_err(|_| Refusal::unauthorized(format!("{name} is not UTF-8")))
}

/// `name=value` pairs of a query, as sent (a token is hex: nothing to decode).
fn query_params(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// `head` as the command sees it, if that differs: with the scheme's
/// canonical header names added where the sender used an alias (Svix's
/// `svix-id`, Bitbucket Data Center's `X-Request-Id`), so that `events` and
/// `SOCKHOOK_DELIVERY` find them, and without a query token, which is a
/// credential and must not reach `SOCKHOOK_QUERY`.
pub fn canonical_head(hook: &Hook, head: &Head) -> Option<Head> {
    let query_token =
        hook.token_in_query && query_params(head.query.as_deref()).any(|(n, _)| n == QUERY_TOKEN);
    let added: Vec<(String, Vec<u8>)> = hook
        .scheme
        .header_aliases()
        .iter()
        .filter(|(_, canonical)| head.header(canonical).is_none())
        .filter_map(|(alias, canonical)| {
            Some(((*canonical).to_owned(), head.header(alias)?.to_vec()))
        })
        .collect();
    if added.is_empty() && !query_token {
        return None;
    }
    let mut head = head.clone();
    head.headers.extend(added);
    if query_token {
        let kept: Vec<&str> = head
            .query
            .iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != QUERY_TOKEN)
            .collect();
        head.query = Some(kept.join("&")).filter(|q| !q.is_empty());
    }
    Some(head)
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

fn secrets(hook: &Hook) -> Result<&[Secret], Refusal> {
    // INVARIANT of `Hook`: a scheme that needs a secret has one.
    Some(hook.secrets.as_slice())
        .filter(|secrets| !secrets.is_empty())
        .ok_or_else(|| {
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

/// The query parameter that carries a token where a hook allows it (`token_in_query`).
pub const QUERY_TOKEN: &str = "token";

/// The token a client sent: the Basic-auth user name, or a Bearer token, or
/// (when `in_query`, and no `Authorization` was sent) the query parameter `token`.
pub fn presented_token(head: &Head, in_query: bool) -> Result<String, Refusal> {
    let missing = || Refusal::Unauthorized {
        reason: if in_query {
            format!(
                "no token; send it as the Basic-auth user name, as a Bearer token, or as ?{QUERY_TOKEN}="
            )
        } else {
            "no token; send it as the Basic-auth user name or as a Bearer token".into()
        },
        challenge: true,
    };
    let bad = |why: &str| Refusal::Unauthorized {
        reason: why.into(),
        challenge: true,
    };
    let value = match single(head, "authorization") {
        Ok(value) => value,
        Err(Missing::None) if in_query => {
            let mut tokens = query_params(head.query.as_deref()).filter(|(n, _)| *n == QUERY_TOKEN);
            return match (tokens.next(), tokens.next()) {
                (Some((_, token)), None) => Ok(token.to_owned()),
                (None, _) => Err(missing()),
                (Some(_), Some(_)) => Err(bad("more than one token parameter in the query")),
            };
        }
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

/// HMAC-SHA256(key, data).
pub fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
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
