//! What each fuzz target runs on one input.
//!
//! Shared with `tests/fuzz_regressions.rs` (through `#[path]`), so that a saved
//! input replays through exactly the code the fuzzer ran. Each function must
//! return normally for every input; a panic is a finding.

use std::fs;
use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sockhook::internals::{
    self as verify, Block, Carrier, EnvFields, Framing, Head, Hook, Key, MAX_HEADERS,
    MAX_TARGET_BYTES, Match, Pending, Problem, Reader, STANDARD_WEBHOOKS_PREFIX, Scheme, Source,
    form_payload, multipart_payload,
};

/// The body limit of `parse_request` and `chunked`: small, so that inputs reach it.
pub const MAX_BODY: u64 = 256;
/// The head `chunked` puts before its input.
pub const CHUNKED_HEAD: &[u8] =
    b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
/// The server key of `token` and of the token hook.
pub const KEY: &[u8] = b"0123456789abcdef";
/// The secret of the hex and GitLab hooks (GitHub's documented example).
pub const SECRET: &str = "It's a Secret to Everybody";
/// The Standard Webhooks hook's secret (the specification's example).
pub const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The Ed25519 private key (seed) whose public key the Discord and
/// Standard Webhooks v1a hooks hold.
pub const ED25519_SEED: [u8; 32] = [0x5e; 32];
/// In a `signature_headers` value, replaced by the right signature or token.
pub const RIGHT_SIGNATURE: &[u8] = b"!sig";
/// Starting a `signature_headers` value, `~N` becomes the Unix time now plus N seconds.
pub const NOW_PLUS: u8 = b'~';

/// The whole request reader over the input: head, then the body its framing
/// says, read once as one `&[u8]` and once in small pieces, as from a socket.
pub fn parse_request(data: &[u8]) {
    let _ = read_request(&mut { data });
    let _ = read_request(&mut Pieces::new(data));
}

/// A chunked body: the input follows [`CHUNKED_HEAD`].
pub fn chunked(data: &[u8]) {
    parse_request(&[CHUNKED_HEAD, data].concat());
}

/// As `parse_request`, and both reads must accept the request, and read it
/// the same, or both refuse it: how the bytes arrive must not change that.
/// (The refusal may differ: a limit checked while the head is incomplete can
/// fire before the parser's own error.)
pub fn read_split(data: &[u8]) {
    let whole = read_request(&mut { data });
    let pieces = read_request(&mut Pieces::new(data));
    if whole.is_ok() || pieces.is_ok() {
        assert_eq!(whole, pieces, "the outcome depends on how the bytes arrive");
    }
}

/// What [`read_request`] returns: the head and body, or the error's text.
type Outcome = Result<(Head, Vec<u8>), String>;

fn read_request(source: &mut impl Source) -> Outcome {
    let mut reader = Reader::new(Instant::now() + Duration::from_secs(3600));
    let head = reader.read_head(source).map_err(|e| e.to_string())?;
    assert!(head.path.starts_with('/') && head.path.len() <= MAX_TARGET_BYTES);
    assert!(head.headers.len() <= MAX_HEADERS);
    assert!(!head.expect_continue || (head.minor_version == 1 && head.framing != Framing::Empty));
    let mut body = Vec::new();
    let len = reader
        .read_body(source, head.framing, MAX_BODY, &mut |piece| {
            body.extend_from_slice(piece);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    assert_eq!(len, body.len() as u64, "length returned != bytes delivered");
    assert!(len <= MAX_BODY, "body over max_body accepted");
    match head.framing {
        Framing::Empty => assert_eq!(len, 0),
        Framing::Length(n) => assert_eq!(len, n),
        Framing::Chunked => {}
    }
    Ok((head, body))
}

/// Hands out the bytes a few at a time, in a fixed cycle of read sizes.
struct Pieces<'a> {
    bytes: &'a [u8],
    reads: usize,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Pieces { bytes, reads: 0 }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const SIZES: [usize; 7] = [1, 7, 2, 64, 3, 1000, 5];
        let n = SIZES[self.reads % SIZES.len()].min(buf.len());
        self.reads += 1;
        self.bytes.read(&mut buf[..n])
    }
}

impl Source for Pieces<'_> {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// The hooks `signature_headers` picks from, by the input's first byte minus `'0'`.
const SCHEMES: [&str; 14] = [
    "token",
    "github",
    "gitea",
    "forgejo",
    "gitlab",
    "bitbucket",
    "standard-webhooks",
    "stripe",
    "slack",
    "shopify",
    "linear",
    "sentry",
    "discord",
    // Standard Webhooks with a whpk_ public key (v1a).
    "standard-webhooks-v1a",
];

/// The header names a record picks from, by its first byte minus `'0'`,
/// modulo their number; the empty name (`'9'`) is body.
const NAMES: [&str; 23] = [
    "authorization",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-gitea-signature",
    "x-forgejo-signature",
    "x-gitlab-token",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "x-shopify-webhook-id",
    "linear-signature",
    "linear-delivery",
    "sentry-hook-signature",
    "x-signature-ed25519",
    "x-signature-timestamp",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
];

/// `before_body` and, when it asks for one, the body MAC, on a head built from the input.
///
/// The first byte picks the hook ([`SCHEMES`]; from `0x80` on, the server key
/// is unavailable). The rest is `\n`-separated records: a byte picking the
/// header name ([`NAMES`], or the body) and the value. [`RIGHT_SIGNATURE`] and
/// [`NOW_PLUS`] let the fuzzer reach the paths behind a valid signature.
pub fn signature_headers(data: &[u8]) {
    let Some((&pick, records)) = data.split_first() else {
        return;
    };
    let which = usize::from(pick.wrapping_sub(b'0') & 0x7f) % SCHEMES.len();
    let hook = &hooks()[which];
    let key = Key::new(KEY.to_vec()).unwrap();
    let (mut headers, mut body) = (Vec::new(), Vec::new());
    for record in records.split(|&b| b == b'\n') {
        let Some((&name, value)) = record.split_first() else {
            continue;
        };
        match NAMES[usize::from(name.wrapping_sub(b'0')) % NAMES.len()] {
            "" => body.extend_from_slice(value),
            name => headers.push((name.to_string(), now_plus(value))),
        }
    }
    let path = format!("/hooks/{}", hook.name);
    let right = right_signature(hook, &key, &path, &headers, &body);
    for (_, value) in &mut headers {
        *value = replace(value, RIGHT_SIGNATURE, &right);
    }
    let head = Head {
        method: "POST".into(),
        path,
        query: None,
        minor_version: 1,
        headers,
        framing: Framing::Length(body.len() as u64),
        expect_continue: false,
    };
    let unavailable = Problem {
        path: "/fuzz/key".into(),
        message: "unavailable".into(),
    };
    let key = if pick < 0x80 {
        Ok(&key)
    } else {
        Err(&unavailable)
    };
    let verdict = verify::before_body(hook, &head, key).and_then(|mut pending: Pending| {
        body.chunks(5).for_each(|piece| pending.update(piece));
        pending.finish(|| Ok(body.as_slice()))
    });
    let presented = |name: &str| {
        let mut values = head.headers.iter().filter(|(n, _)| n == name);
        match (values.next(), values.next()) {
            (Some((_, v)), None) => Some(v.as_slice()),
            _ => None,
        }
    };
    // The header carrying the proof, its fixed prefix, and whether the rest is hex.
    let proof: Option<(&str, &[u8], bool)> = match hook.scheme {
        Scheme::Token if key.is_ok() => Some(("authorization", b"Bearer ", true)),
        Scheme::Github => Some(("x-hub-signature-256", b"sha256=", true)),
        Scheme::Bitbucket => Some(("x-hub-signature", b"sha256=", true)),
        Scheme::Gitea => Some(("x-gitea-signature", b"", true)),
        Scheme::Forgejo => Some(("x-forgejo-signature", b"", true)),
        Scheme::Gitlab => Some(("x-gitlab-token", b"", false)),
        _ => None,
    };
    if let Some((name, prefix, hex)) = proof {
        let right_sent = presented(name)
            .and_then(|v| v.strip_prefix(prefix))
            .is_some_and(|v| {
                if hex {
                    v.eq_ignore_ascii_case(&right)
                } else {
                    v == right
                }
            });
        if right_sent {
            assert!(verdict.is_ok(), "right signature refused: {verdict:?}");
        }
        if verdict.is_ok() && hook.scheme != Scheme::Token {
            assert!(right_sent, "wrong signature accepted");
        }
    }
    only_right_accepted(which, &head.headers, &body, verdict.is_ok());
}

/// For the schemes whose signature covers a timestamp or sits among others
/// (Stripe, Slack, Shopify, Linear, Sentry, Discord, Standard Webhooks v1a):
/// accepted only if the right signature was among those presented.
fn only_right_accepted(which: usize, headers: &[(String, Vec<u8>)], body: &[u8], accepted: bool) {
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
    };
    let mac = |prefix: &str| verify::mac(SECRET.as_bytes(), &[prefix.as_bytes(), body].concat());
    let signed = |prefix: &str| {
        let (_, signature) =
            verify::ed25519_sign(&ED25519_SEED, &[prefix.as_bytes(), body].concat()).unwrap();
        signature
    };
    let right_sent = match SCHEMES[which] {
        "stripe" => {
            let value = field("stripe-signature");
            let t = value
                .split(',')
                .find_map(|item| item.trim().strip_prefix("t="))
                .unwrap_or("");
            let right = verify::hex(&mac(&format!("{}.", t.parse::<u64>().unwrap_or(0))));
            value
                .split(',')
                .filter_map(|item| item.trim().strip_prefix("v1="))
                .any(|v| v.eq_ignore_ascii_case(&right))
        }
        "slack" => {
            let right = mac(&format!("v0:{}:", field("x-slack-request-timestamp")));
            field("x-slack-signature")
                .strip_prefix("v0=")
                .and_then(|v| verify::unhex(v.as_bytes()))
                .is_some_and(|v| v == right)
        }
        "shopify" => {
            let value = field("x-shopify-hmac-sha256").trim();
            BASE64.decode(value).is_ok_and(|v| v == mac(""))
        }
        "linear" => {
            verify::unhex(field("linear-signature").trim().as_bytes()).is_some_and(|v| v == mac(""))
        }
        "sentry" => verify::unhex(field("sentry-hook-signature").trim().as_bytes())
            .is_some_and(|v| v == mac("")),
        "discord" => verify::unhex(field("x-signature-ed25519").trim().as_bytes())
            .is_some_and(|v| v == signed(field("x-signature-timestamp"))),
        "standard-webhooks-v1a" => {
            let pick = |name: &str, alias: &str| match field(name) {
                "" => field(alias),
                value => value,
            };
            let prefix = format!(
                "{}.{}.",
                pick("webhook-id", "svix-id"),
                pick("webhook-timestamp", "svix-timestamp")
            );
            let right = format!("v1a,{}", BASE64.encode(signed(&prefix)));
            pick("webhook-signature", "svix-signature")
                .split_whitespace()
                .any(|entry| entry == right)
        }
        _ => return,
    };
    if accepted {
        assert!(right_sent, "{}: wrong signature accepted", SCHEMES[which]);
    }
}

/// The value that makes `hook` accept the request: bare hex, base64 or secret.
fn right_signature(
    hook: &Hook,
    key: &Key,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Vec<u8> {
    let secret = hook.secrets.first().map_or(&[][..], |s| s.expose());
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    match hook.scheme {
        Scheme::Token => verify::token(key, path).into_bytes(),
        Scheme::Gitlab => secret.to_vec(),
        Scheme::StandardWebhooks if hook.secrets.iter().any(|s| s.is_public_key()) => {
            let id = field("webhook-id").or(field("svix-id")).unwrap_or("");
            let timestamp = field("webhook-timestamp").or(field("svix-timestamp"));
            let prefix = format!("{id}.{}.", timestamp.unwrap_or(""));
            let (_, signature) =
                verify::ed25519_sign(&ED25519_SEED, &[prefix.as_bytes(), body].concat()).unwrap();
            BASE64.encode(signature).into_bytes()
        }
        Scheme::StandardWebhooks => {
            let id = field("webhook-id").or(field("svix-id")).unwrap_or("");
            let timestamp = field("webhook-timestamp").or(field("svix-timestamp"));
            let timestamp = timestamp.and_then(|t| t.parse().ok());
            let signature =
                verify::standard_webhooks_signature(secret, id, timestamp.unwrap_or(0), body);
            signature.trim_start_matches("v1,").as_bytes().to_vec()
        }
        Scheme::Stripe => {
            let t = field("stripe-signature")
                .and_then(|v| v.split(',').find_map(|i| i.trim().strip_prefix("t=")))
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            let signed = [format!("{t}.").as_bytes(), body].concat();
            verify::hex(&verify::mac(secret, &signed)).into_bytes()
        }
        Scheme::Slack => {
            let ts = field("x-slack-request-timestamp").unwrap_or("");
            let signed = [format!("v0:{ts}:").as_bytes(), body].concat();
            verify::hex(&verify::mac(secret, &signed)).into_bytes()
        }
        Scheme::Shopify => BASE64.encode(verify::mac(secret, body)).into_bytes(),
        Scheme::Discord => {
            let ts = field("x-signature-timestamp").unwrap_or("");
            let (_, signature) =
                verify::ed25519_sign(&ED25519_SEED, &[ts.as_bytes(), body].concat()).unwrap();
            verify::hex(&signature).into_bytes()
        }
        _ => verify::body_signature(secret, body).into_bytes(),
    }
}

/// `~N` as the decimal Unix time now plus N seconds (also after a leading
/// `t=`, as in `Stripe-Signature`); other values unchanged.
fn now_plus(value: &[u8]) -> Vec<u8> {
    if let Some(rest) = value.strip_prefix(b"t=") {
        let (stamp, tail) =
            rest.split_at(rest.iter().position(|&b| b == b',').unwrap_or(rest.len()));
        if stamp.first() == Some(&NOW_PLUS) {
            return [b"t=".as_slice(), &now_plus(stamp), tail].concat();
        }
    }
    let offset = value
        .strip_prefix(&[NOW_PLUS])
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok());
    match offset {
        Some(offset) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_secs()
                .saturating_add_signed(offset)
                .to_string()
                .into_bytes()
        }
        None => value.to_vec(),
    }
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// One hook per scheme of [`SCHEMES`], loaded by `config::load` from files
/// written once to a temporary directory, exactly as `serve` loads them,
/// which is removed again.
fn hooks() -> &'static [Arc<Hook>] {
    static HOOKS: OnceLock<Vec<Arc<Hook>>> = OnceLock::new();
    HOOKS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sockhook-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (secret, whsec) = (dir.join("secret"), dir.join("whsec"));
        let (public_hex, whpk) = (dir.join("public-hex"), dir.join("whpk"));
        let (public, _) = verify::ed25519_sign(&ED25519_SEED, b"").unwrap();
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        fs::write(&whsec, format!("{WHSEC}\n")).unwrap();
        fs::write(&public_hex, verify::hex(&public)).unwrap();
        fs::write(&whpk, format!("whpk_{}", BASE64.encode(&public))).unwrap();
        for name in SCHEMES {
            let file =
                |path: &std::path::Path| format!("secret = {:?}\n", path.display().to_string());
            let (auth, secret) = match name {
                "token" => (name, String::new()),
                "standard-webhooks" => (name, file(&whsec)),
                "standard-webhooks-v1a" => ("standard-webhooks", file(&whpk)),
                "discord" => (name, file(&public_hex)),
                _ => (name, file(&secret)),
            };
            let text = format!("command = [\"/bin/true\"]\nauth = \"{auth}\"\n{secret}");
            fs::write(dir.join(format!("{name}.toml")), text).unwrap();
        }
        let loaded = verify::load(&dir, None);
        fs::remove_dir_all(&dir).unwrap();
        SCHEMES
            .iter()
            .map(|name| match loaded.get_entry(name).map(|(_, hook)| hook) {
                Some(Ok(hook)) => Arc::clone(hook),
                other => panic!("hook {name} did not load: {other:?}"),
            })
            .collect()
    })
}

/// `token_matches` with the path and the presented token from the input
/// (split at the first `\n`), and the token it computes itself.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, presented) = text.split_once('\n').unwrap_or((&text, ""));
    let key = Key::new(KEY.to_vec()).unwrap();
    let matched = verify::token_matches(&key, path, presented);
    assert!(
        !matched || presented.len() == 64,
        "a token that is not 64 hex digits"
    );
    let own = verify::token(&key, path);
    assert!(verify::token_matches(&key, path, &own));
    assert!(verify::token_matches(&key, path, &own.to_ascii_uppercase()));
    assert_eq!(
        verify::unhex(own.as_bytes()).map(|b| verify::hex(&b)),
        Some(own)
    );
    if let Some(bytes) = verify::unhex(presented.as_bytes()) {
        assert!(verify::hex(&bytes).eq_ignore_ascii_case(presented));
    }
}

/// The Standard Webhooks secret decoding on the input, with and without the
/// `whsec_` prefix; a `whpk_` input must give a 32-byte public key or nothing.
pub fn standard_webhooks_secret(data: &[u8]) {
    let decode = |bytes: &[u8]| {
        Scheme::StandardWebhooks
            .decode_secret(bytes.to_vec())
            .map(|s| (s.is_public_key(), s.expose().to_vec()))
    };
    let key = decode(data);
    let public = data.starts_with(b"whpk_");
    if let Ok((is_public, key)) = &key {
        assert_eq!(*is_public, public, "whpk_ decides the kind of key");
        if public {
            assert_eq!(key.len(), 32, "an Ed25519 public key is 32 bytes");
        }
        assert!(!key.is_empty());
        let signature = verify::standard_webhooks_signature(key, "msg_1", 1, data);
        assert!(signature.starts_with("v1,") && signature.len() == 47);
    }
    if !data.starts_with(STANDARD_WEBHOOKS_PREFIX.as_bytes()) && !public {
        let prefixed = [STANDARD_WEBHOOKS_PREFIX.as_bytes(), data].concat();
        assert_eq!(decode(&prefixed), key);
    }
}

/// The `match` table of `payload_filter`: every kind of value, at several depths.
pub const FILTER_RULES: &str = r#"
ref = "refs/heads/main"
repository.full_name = "example/site"
repository.private = false
a.b.c.d.e.f.g.h = -3
n = 9223372036854775807
"#;

/// `Match::check` on the input as a JSON body: a body it accepts must be
/// JSON (UTF-8, RFC 8259 §8.1) that satisfies every rule as serde_json reads it.
pub fn payload_filter(data: &[u8]) {
    static RULES: OnceLock<(Match, toml::Table)> = OnceLock::new();
    let (rules, table) = RULES.get_or_init(|| {
        let table: toml::Table = FILTER_RULES.parse().unwrap();
        (Match::from_toml(&table).unwrap(), table)
    });
    let verdict = rules.check(data);
    if verdict.is_ok() {
        assert!(std::str::from_utf8(data).is_ok(), "accepted, not UTF-8");
        match serde_json::from_slice(data) {
            Ok(body) => assert_holds(table, &body),
            // RFC 8259 allows lone surrogate escapes (§8.2) and numbers of
            // any size (§6); serde_json refuses both.
            Err(e)
                if ["hex escape", "number out of range"]
                    .iter()
                    .any(|why| e.to_string().contains(why)) => {}
            Err(e) => panic!("accepted, not JSON: {e}"),
        }
    }
}

/// Every rule of `table` holds in `value`.
fn assert_holds(table: &toml::Table, value: &serde_json::Value) {
    for (key, want) in table {
        let got = &value[key.as_str()];
        match want {
            toml::Value::Table(inner) => assert_holds(inner, got),
            toml::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{key}"),
            toml::Value::Boolean(b) => assert_eq!(got.as_bool(), Some(*b), "{key}"),
            toml::Value::Integer(n) => assert_eq!(got.as_i64(), Some(*n), "{key}"),
            other => panic!("rule {key} = {other:?}"),
        }
    }
}

/// The `[env]` table of `payloads`: keys, array indexes, a path through both.
pub const ENV_TABLE: &str = "A = \"ref\"\nB = \"commits.0.id\"\nC = \"a.b\"\nD = \"1\"";

/// The parsers of what a form, an `[env]` table or `allow_from` hands in;
/// the first byte picks one, the rest is its input:
/// `'0'` `form_payload` (checked against a plain percent-decoder),
/// `'1'` `multipart_payload` with boundary `B` (the part must lie in the body),
/// `'2'` `EnvFields::extract` of [`ENV_TABLE`] (each string value checked
/// against serde_json's own parse), `'3'` `Block` (a block's text must parse
/// back to it, and an address in it must be held), `'4'` `Carrier::of`.
pub fn payloads(data: &[u8]) {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which {
        b'0' => {
            let mut decoded = Vec::new();
            let result = form_payload(input, &mut |piece| {
                decoded.extend_from_slice(piece);
                Ok(())
            });
            if result.is_ok() {
                assert!(decoded.len() <= input.len(), "decoded longer than the form");
                let field = input
                    .split(|&b| b == b'&')
                    .find_map(|pair| pair.strip_prefix(b"payload="))
                    .or_else(|| {
                        input
                            .split(|&b| b == b'&')
                            .find(|p| *p == b"payload")
                            .map(|_| &b""[..])
                    });
                if let Some(field) = field {
                    assert_eq!(decoded, percent_decode(field), "decoded differently");
                }
            }
        }
        b'1' => {
            if let Ok(part) = multipart_payload(input, b"B") {
                let (start, end) = (
                    input.as_ptr() as usize,
                    input.as_ptr() as usize + input.len(),
                );
                let at = part.as_ptr() as usize;
                assert!(
                    at >= start && at + part.len() <= end,
                    "the part is not in the body"
                );
            }
        }
        b'2' => {
            static FIELDS: OnceLock<EnvFields> = OnceLock::new();
            let fields = FIELDS.get_or_init(|| {
                EnvFields::from_toml(&ENV_TABLE.parse().unwrap(), None, Some("json")).unwrap()
            });
            let Ok(values) = fields.extract(input) else {
                return;
            };
            for (_, value) in &values {
                assert!(value.len() <= 4096, "a value over 4096 bytes");
                assert!(!value.contains(&0), "a NUL in a value");
            }
            let text = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(text) {
                let got = |name: &str| &values.iter().find(|(n, _)| n == name).unwrap().1;
                for (name, pointer) in [("A", "/ref"), ("B", "/commits/0/id"), ("C", "/a/b")] {
                    if let Some(serde_json::Value::String(s)) = json.pointer(pointer) {
                        assert_eq!(got(name), s.as_bytes(), "{name}");
                    }
                }
            }
        }
        b'3' => {
            let Ok(text) = std::str::from_utf8(input) else {
                return;
            };
            if let Ok(block) = text.parse::<Block>() {
                let again: Block = block.to_string().parse().expect("a block's text parses");
                assert_eq!(again, block, "{text}");
                let addr = text.split('/').next().unwrap().parse().unwrap();
                assert!(block.holds(addr), "{text} does not hold its own address");
            }
        }
        b'4' => {
            let _ = Carrier::of(Some(input));
        }
        _ => {}
    }
}

/// `application/x-www-form-urlencoded` decoding, byte by byte.
fn percent_decode(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < field.len() {
        match field[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&field[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}
