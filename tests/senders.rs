//! The senders of issue 13 (Stripe, Slack, Shopify, Linear, Sentry, Discord,
//! Standard Webhooks v1a, Svix) through the real binary over real TCP, with
//! every delivery signed by the sender's own library where one is published
//! (`tests/senders/sign.py`: stripe, slack_sdk, standardwebhooks, svix,
//! PyNaCl as Discord's documentation uses it) and by the sender's documented
//! recipe otherwise (Shopify, Linear, Sentry: HMAC-SHA256 of the body, in
//! Python's hmac). A valid delivery runs the command once with the body on
//! stdin and the sender's event and delivery id in its environment; every way
//! to fail answers 401, runs nothing, says why, and logs no secret.
//! `sockhook sign`'s output is checked by the same libraries.
//!
//! The libraries are installed by `.ci/run`; without them these tests are
//! skipped, except under `CI=true`, where that is a failure.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use support::harness::*;

const IDLE: &str = "0.2";
const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","ref":"main"}"#;
const ALTERED: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","ref":"evil"}"#;
const PATH: &str = "/hooks/h";
const SIGNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/senders/sign.py");
/// Seconds past the 300 s tolerance that stale and future timestamps are off by.
const OFF: i64 = 400;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether the senders' libraries are there; without them the test is
/// skipped, or fails under `CI=true`.
fn libraries() -> bool {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import stripe, slack_sdk, nacl, standardwebhooks, svix",
        ])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = "the senders' Python libraries are not installed (pip install stripe slack_sdk pynacl standardwebhooks svix; .ci/run does)";
    assert!(!ci(), "CI=true, but {why}");
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    false
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unique_id() -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "id_{}_{}_{}",
        std::process::id(),
        now(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(program, args, stdin)
}

fn python(args: &[&str], stdin: &[u8]) -> Output {
    let mut all = vec![SIGNER];
    all.extend_from_slice(args);
    run("python3", &all, stdin)
}

/// The header lines the sender's library makes for `body`.
fn library_signs(lib: &str, key: &Path, timestamp: i64, id: &str, body: &[u8]) -> Vec<String> {
    let key = key.to_str().unwrap();
    let out = python(&["sign", lib, key, &timestamp.to_string(), id], body);
    assert!(out.status.success(), "sign.py {lib}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether the sender's library accepts `headers` for `body`.
fn library_accepts(lib: &str, key: &Path, headers: &str, body: &[u8]) -> bool {
    let file = key.with_extension("headers");
    fs::write(&file, headers).unwrap();
    let out = python(
        &["verify", lib, key.to_str().unwrap(), file.to_str().unwrap()],
        body,
    );
    out.status.success()
}

fn unhex(digits: &str) -> Vec<u8> {
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// One sender: what its hook says and how its deliveries look.
struct Sender {
    /// `auth =`.
    auth: &'static str,
    /// `sign.py`'s name for the library that signs.
    lib: &'static str,
    /// The key the sender signs with, as its file holds it.
    key: String,
    /// Another key of the same form.
    wrong_key: String,
    /// The header holding the signature, as the refusals name it.
    signature: &'static str,
    /// The headers that must be present, as sent.
    required: &'static [&'static str],
    /// The sender signs a timestamp.
    timestamped: bool,
    /// SOCKHOOK_EVENT expected for a valid delivery.
    event: &'static str,
    /// SOCKHOOK_DELIVERY is the id given to the library.
    delivery: bool,
}

fn seed(byte: u8) -> String {
    hex(&[byte; 32])
}

impl Sender {
    fn stripe() -> Sender {
        Sender {
            auth: "stripe",
            lib: "stripe",
            key: "whsec_c3RyaXBlLWtleTpkby1ub3QtbG9nOjAxMjM0NTY3".into(),
            wrong_key: "whsec_d3Jvbmcta2V5OjAxMjM0NTY3ODlhYmNkZWY=".into(),
            signature: "Stripe-Signature",
            required: &["Stripe-Signature"],
            timestamped: true,
            event: "",
            delivery: false,
        }
    }

    fn slack() -> Sender {
        Sender {
            auth: "slack",
            lib: "slack",
            key: "8f742231b10e8888abcd99yyyzzz85a5-do-not-log".into(),
            wrong_key: "wrong-signing-secret-0123456789".into(),
            signature: "X-Slack-Signature",
            required: &["X-Slack-Signature", "X-Slack-Request-Timestamp"],
            timestamped: true,
            event: "",
            delivery: false,
        }
    }

    fn shopify() -> Sender {
        Sender {
            auth: "shopify",
            lib: "shopify",
            key: "shpss_do-not-log-0123456789abcdef".into(),
            wrong_key: "shpss_wrong-0123456789abcdef".into(),
            signature: "X-Shopify-Hmac-Sha256",
            required: &["X-Shopify-Hmac-Sha256"],
            timestamped: false,
            event: "orders/create",
            delivery: true,
        }
    }

    fn linear() -> Sender {
        Sender {
            auth: "linear",
            lib: "linear",
            key: "lin_wh_do-not-log-0123456789abcdef".into(),
            wrong_key: "lin_wh_wrong-0123456789abcdef".into(),
            signature: "Linear-Signature",
            required: &["Linear-Signature"],
            timestamped: false,
            event: "Issue",
            delivery: true,
        }
    }

    fn sentry() -> Sender {
        Sender {
            auth: "sentry",
            lib: "sentry",
            key: "sentry-client-secret-do-not-log-0123".into(),
            wrong_key: "sentry-wrong-secret-0123".into(),
            signature: "Sentry-Hook-Signature",
            required: &["Sentry-Hook-Signature"],
            timestamped: false,
            event: "issue",
            delivery: true,
        }
    }

    fn discord() -> Sender {
        Sender {
            auth: "discord",
            lib: "discord",
            key: seed(0x42),
            wrong_key: seed(0x43),
            signature: "X-Signature-Ed25519",
            required: &["X-Signature-Ed25519", "X-Signature-Timestamp"],
            timestamped: true,
            event: "",
            delivery: false,
        }
    }

    fn standard_webhooks() -> Sender {
        Sender {
            auth: "standard-webhooks",
            lib: "standard-webhooks",
            key: format!("whsec_{}", BASE64.encode(b"sw-key:do-not-log:0123456789")),
            wrong_key: format!("whsec_{}", BASE64.encode(b"another-key:0123456789ab")),
            signature: "webhook-signature",
            required: &["webhook-id", "webhook-timestamp", "webhook-signature"],
            timestamped: true,
            event: "",
            delivery: true,
        }
    }

    fn svix() -> Sender {
        Sender {
            lib: "svix",
            required: &["svix-id", "svix-timestamp", "svix-signature"],
            ..Sender::standard_webhooks()
        }
    }

    fn v1a() -> Sender {
        Sender {
            lib: "v1a",
            key: seed(0x5a),
            wrong_key: seed(0x5b),
            ..Sender::standard_webhooks()
        }
    }

    fn ed25519(&self) -> bool {
        matches!(self.lib, "discord" | "v1a")
    }

    /// The signature header's value re-encoded the other way (hex ↔ base64).
    fn misencoded(&self, value: &str) -> String {
        let to_b64 = |digits: &str| BASE64.encode(unhex(digits));
        let to_hex = |encoded: &str| hex(&BASE64.decode(encoded).unwrap());
        match self.auth {
            "stripe" => {
                let (t, v1) = value.split_once(",v1=").unwrap();
                format!("{t},v1={}", to_b64(v1))
            }
            "slack" => format!("v0={}", to_b64(value.strip_prefix("v0=").unwrap())),
            "shopify" => to_hex(value),
            "standard-webhooks" => {
                let (version, encoded) = value.split_once(',').unwrap();
                format!("{version},{}", to_hex(encoded))
            }
            _ => to_b64(value),
        }
    }
}

/// Header lines and a body.
#[derive(Clone, Debug)]
struct Delivery {
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Delivery {
    fn is(line: &str, name: &str) -> bool {
        line.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    }

    fn header(&self, name: &str) -> String {
        let line = self.headers.iter().find(|l| Delivery::is(l, name));
        line.unwrap_or_else(|| panic!("no {name} in {self:?}"))
            .split_once(':')
            .unwrap()
            .1
            .trim()
            .to_owned()
    }

    fn without(mut self, name: &str) -> Delivery {
        self.headers.retain(|l| !Delivery::is(l, name));
        self
    }

    fn set(self, name: &str, value: &str) -> Delivery {
        let mut d = self.without(name);
        d.headers.push(format!("{name}: {value}"));
        d
    }

    fn send(&self, server: &Server) -> Reply {
        let mut headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        headers.push("Content-Type: application/json");
        server.post(PATH, &headers, &self.body)
    }
}

/// A hook for `sender` in a fresh fixture, with its key files: returns the
/// fixture and the paths of the signing key and of a wrong one.
fn setup(sender: &Sender) -> (Fixture, PathBuf, PathBuf) {
    let f = Fixture::new(sender.auth);
    let (key, wrong) = (f.dir.join("sender.key"), f.dir.join("wrong.key"));
    fs::write(&key, format!("{}\n", sender.key)).unwrap();
    fs::write(&wrong, format!("{}\n", sender.wrong_key)).unwrap();
    // What the hook holds: the shared secret, or the public key of the
    // sender's private key (derived by PyNaCl, not by sockhook).
    let secret = if sender.ed25519() {
        let out = python(&["public", sender.lib, key.to_str().unwrap()], b"");
        assert!(out.status.success(), "{out:?}");
        let public = f.dir.join("public.key");
        fs::write(&public, &out.stdout).unwrap();
        public
    } else {
        key.clone()
    };
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!(
            "command = [{script:?}]\nauth = \"{}\"\nsecret = {secret:?}\n",
            sender.auth
        ),
    );
    (f, key, wrong)
}

/// A valid delivery runs the command once with the body, the event and the
/// delivery id; each bad one is 401 with the reason, runs nothing, and no
/// secret reaches the log or an answer.
fn exercise(sender: Sender) {
    if !libraries() {
        return;
    }
    let (f, key, wrong) = setup(&sender);
    let id = unique_id();
    let valid = Delivery {
        headers: library_signs(sender.lib, &key, now(), &id, BODY),
        body: BODY.to_vec(),
    };
    let signature = valid.header(if sender.lib == "svix" {
        "svix-signature"
    } else {
        sender.signature
    });
    let signature_name = if sender.lib == "svix" {
        "svix-signature"
    } else {
        sender.signature
    };
    let fresh = |key: &Path, timestamp: i64, body: &[u8]| Delivery {
        headers: library_signs(sender.lib, key, timestamp, &unique_id(), body),
        body: body.to_vec(),
    };
    let mut cases: Vec<(String, Delivery, String)> = vec![
        (
            "wrong key".into(),
            fresh(&wrong, now(), BODY),
            "signature does not match the body".into(),
        ),
        (
            "altered body".into(),
            Delivery {
                body: ALTERED.to_vec(),
                ..valid.clone()
            },
            "signature does not match the body".into(),
        ),
        (
            "duplicated signature header".into(),
            {
                let mut d = fresh(&key, now(), BODY);
                let line = format!("{signature_name}: {}", d.header(signature_name));
                d.headers.push(line);
                d
            },
            format!("more than one {signature_name} header"),
        ),
        (
            "truncated signature".into(),
            {
                let d = fresh(&key, now(), BODY);
                let value = d.header(signature_name);
                d.set(signature_name, &value[..value.len() - 4])
            },
            sender.signature.into(),
        ),
        (
            "wrong encoding".into(),
            {
                let d = fresh(&key, now(), BODY);
                let value = sender.misencoded(&d.header(signature_name));
                d.set(signature_name, &value)
            },
            sender.signature.into(),
        ),
    ];
    for name in sender.required {
        cases.push((
            format!("missing {name}"),
            fresh(&key, now(), BODY).without(name),
            "no ".into(),
        ));
    }
    if sender.timestamped {
        cases.push((
            "stale timestamp".into(),
            fresh(&key, now() - OFF, BODY),
            "s old, tolerance 300 s".into(),
        ));
        cases.push((
            "future timestamp".into(),
            fresh(&key, now() + OFF, BODY),
            "s in the future, tolerance 300 s".into(),
        ));
    }
    // The very delivery again, and for the senders that sign only the body,
    // again under a delivery id of the attacker's choosing.
    cases.push((
        "replayed".into(),
        valid.clone(),
        "was already accepted (a replay)".into(),
    ));
    if sender.delivery && !sender.timestamped {
        let header = match sender.auth {
            "shopify" => "X-Shopify-Webhook-Id",
            "linear" => "Linear-Delivery",
            _ => "Request-ID",
        };
        cases.push((
            "replayed under a new id".into(),
            valid.clone().set(header, &unique_id()),
            format!("this {} was already accepted (a replay)", sender.signature),
        ));
    }

    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = valid.send(&served);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", served.log());
    let mut replies = Vec::new();
    for (what, delivery, says) in &cases {
        let reply = delivery.send(&served);
        assert_eq!(
            reply.status(),
            401,
            "{} {what}: {reply:?}\n{}",
            sender.auth,
            served.log()
        );
        assert!(
            reply.body().contains(says.as_str()),
            "{} {what}: answer should say {says:?}: {}",
            sender.auth,
            reply.body()
        );
        replies.push(reply);
    }
    let (status, log) = served.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("h"), 1, "only the valid delivery runs:\n{log}");
    assert_eq!(f.read("h.stdin"), BODY, "{log}");
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(
        env.contains(&format!("SOCKHOOK_EVENT={}\n", sender.event)),
        "{env}"
    );
    let delivery = if sender.delivery { id.as_str() } else { "" };
    assert!(
        env.contains(&format!("SOCKHOOK_DELIVERY={delivery}\n")),
        "{env}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(" 401 ")).count(),
        cases.len(),
        "one log line per refusal:\n{log}"
    );
    for secret in [&sender.key, &sender.wrong_key, &signature] {
        let bare = secret.trim_start_matches("whsec_");
        assert!(!log.contains(bare), "{secret:?} in the log:\n{log}");
        for reply in &replies {
            assert!(!reply.body().contains(bare), "{secret:?} in {reply:?}");
        }
    }
}

#[test]
fn stripe_deliveries_from_stripes_library() {
    exercise(Sender::stripe());
}

#[test]
fn slack_deliveries_from_slack_sdk() {
    exercise(Sender::slack());
}

#[test]
fn shopify_deliveries_as_documented() {
    exercise(Sender::shopify());
}

#[test]
fn linear_deliveries_as_documented() {
    exercise(Sender::linear());
}

/// Linear's `webhookTimestamp` (milliseconds, in the signed body) is checked
/// once the signature holds, with the tolerance of the timestamp headers.
#[test]
fn linear_webhook_timestamp_is_checked() {
    if !libraries() {
        return;
    }
    let sender = Sender::linear();
    let (f, key, _) = setup(&sender);
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let send = |timestamp: &str| {
        let body =
            format!(r#"{{"action":"create","type":"Issue","webhookTimestamp":{timestamp}}}"#);
        let headers = library_signs(sender.lib, &key, now(), &unique_id(), body.as_bytes());
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        served.post(PATH, &headers, body.as_bytes())
    };
    let fresh = send(&(now() * 1000 + 123).to_string());
    assert_eq!(fresh.status(), 204, "{fresh:?}\n{}", served.log());
    // The answer names the age; the clock may tick between here and there.
    for (timestamp, says) in [
        ((now() - OFF) * 1000, "s old, tolerance 300 s"),
        (
            (now() + OFF) * 1000 + 999,
            "s in the future, tolerance 300 s",
        ),
    ] {
        let reply = send(&timestamp.to_string());
        assert_eq!(reply.status(), 401, "{reply:?}");
        let body = reply.body();
        let age = body
            .strip_prefix("unauthorized: webhookTimestamp is ")
            .and_then(|rest| rest.strip_suffix(&format!(" {says}\n")))
            .and_then(|age| age.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{says}: {body}"));
        assert!((OFF - 2..=OFF + 2).contains(&age), "{body}");
    }
    for bad in ["1.5e12", "-1", "true", "{}"] {
        let reply = send(bad);
        assert_eq!(reply.status(), 401, "{bad}: {reply:?}");
        assert!(
            reply
                .body()
                .contains("webhookTimestamp in the body is not a number of milliseconds"),
            "{bad}: {reply:?}"
        );
    }
    let (status, log) = served.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("h"), 1, "{log}");
}

#[test]
fn sentry_deliveries_as_documented() {
    exercise(Sender::sentry());
}

#[test]
fn discord_interactions_signed_with_pynacl() {
    exercise(Sender::discord());
}

#[test]
fn standard_webhooks_v1_from_its_library() {
    exercise(Sender::standard_webhooks());
}

#[test]
fn standard_webhooks_from_svix_with_svix_header_names() {
    exercise(Sender::svix());
}

#[test]
fn standard_webhooks_v1a_signed_with_pynacl() {
    exercise(Sender::v1a());
}

/// Stripe's `whsec_…` is the HMAC key as written; Standard Webhooks
/// base64-decodes what follows `whsec_`. The same secret file serves both
/// hooks; each accepts its own sender's signature and refuses one made with
/// the other's reading of the secret.
#[test]
fn stripe_and_standard_webhooks_read_whsec_differently() {
    if !libraries() {
        return;
    }
    let f = Fixture::new("whsec");
    let whsec = format!("whsec_{}", BASE64.encode(b"one secret, two readings"));
    let key = f.dir.join("whsec");
    fs::write(&key, format!("{whsec}\n")).unwrap();
    let script = f.recorder("h");
    for (name, auth) in [("h", "stripe"), ("sw", "standard-webhooks")] {
        f.hook(
            name,
            &format!("command = [{script:?}]\nauth = \"{auth}\"\nsecret = {key:?}\n"),
        );
    }
    let decoded = BASE64
        .decode(whsec.strip_prefix("whsec_").unwrap())
        .unwrap();
    let t = now();
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let post = |path: &str, headers: &[String]| {
        let mut all: Vec<&str> = headers.iter().map(String::as_str).collect();
        all.push("Content-Type: application/json");
        served.post(path, &all, BODY).status()
    };
    // Stripe's library, the secret as written: accepted by the stripe hook.
    let stripe = library_signs("stripe", &key, t, "", BODY);
    assert_eq!(post(PATH, &stripe), 204, "{}", served.log());
    // Stripe's format with the decoded key: refused.
    let signed = [format!("{t}.").as_bytes(), BODY].concat();
    let decoded_mac = hex(&hmac_sha256(&decoded, &signed));
    let header = [format!("Stripe-Signature: t={t},v1={decoded_mac}")];
    assert_eq!(post(PATH, &header), 401, "{}", served.log());
    // Standard Webhooks' library, the secret decoded: accepted by its hook.
    let id = unique_id();
    let sw = library_signs("standard-webhooks", &key, t, &id, BODY);
    assert_eq!(post("/hooks/sw", &sw), 204, "{}", served.log());
    // Its format with the secret as written: refused.
    let raw_mac = hmac_sha256(
        whsec.as_bytes(),
        &[format!("{id}x.{t}.").as_bytes(), BODY].concat(),
    );
    let lines = [
        format!("webhook-id: {id}x"),
        format!("webhook-timestamp: {t}"),
        format!("webhook-signature: v1,{}", BASE64.encode(raw_mac)),
    ];
    assert_eq!(post("/hooks/sw", &lines), 401, "{}", served.log());
    let (_, log) = served.wait(PATIENCE);
    assert_eq!(f.runs("h"), 2, "{log}");
}

/// `sockhook sign`'s headers, checked by the sender's own library (and for
/// the Ed25519 schemes, the public key it names is the one PyNaCl derives).
fn sign_checked_by(auth: &str, lib: &str, private: &str, public: Option<&str>) {
    if !libraries() {
        return;
    }
    let f = Fixture::new(&format!("sign-{lib}"));
    let key = f.dir.join("key.private");
    fs::write(&key, format!("{private}\n")).unwrap();
    let out = run(
        BIN,
        &["sign", "--scheme", auth, "--secret", key.to_str().unwrap()],
        BODY,
    );
    assert!(out.status.success(), "{out:?}");
    let headers = String::from_utf8(out.stdout).unwrap();
    let verify_key = match public {
        None => key.clone(),
        Some(seed_form) => {
            let derived = python(&["public", lib, key.to_str().unwrap()], b"");
            let derived = String::from_utf8(derived.stdout).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(derived.trim()),
                "sign should name the public key {derived}: {stderr}"
            );
            assert!(!stderr.contains(seed_form), "private key shown: {stderr}");
            let path = f.dir.join("key.public");
            fs::write(&path, derived).unwrap();
            path
        }
    };
    assert!(
        library_accepts(lib, &verify_key, &headers, BODY),
        "{lib} refuses sockhook sign's {headers}"
    );
    assert!(
        !library_accepts(lib, &verify_key, &headers, ALTERED),
        "{lib} accepts anything: the check cannot fail"
    );
}

#[test]
fn sign_stripe_passes_stripes_verify_header() {
    sign_checked_by("stripe", "stripe", &Sender::stripe().key, None);
}

#[test]
fn sign_slack_passes_slack_sdks_signature_verifier() {
    sign_checked_by("slack", "slack", &Sender::slack().key, None);
}

#[test]
fn sign_standard_webhooks_passes_its_library() {
    sign_checked_by(
        "standard-webhooks",
        "standard-webhooks",
        &Sender::standard_webhooks().key,
        None,
    );
}

#[test]
fn sign_discord_passes_pynacl() {
    let seed = seed(0x42);
    sign_checked_by("discord", "discord", &seed, Some(&seed));
}

#[test]
fn sign_standard_webhooks_v1a_passes_pynacl() {
    let seed = [0x5a; 32];
    let whsk = format!("whsk_{}", BASE64.encode(seed));
    // sign.py's `public` reads the seed in hex; the check uses that form.
    if !libraries() {
        return;
    }
    let f = Fixture::new("sign-v1a");
    let key = f.dir.join("whsk");
    fs::write(&key, format!("{whsk}\n")).unwrap();
    let seed_file = f.dir.join("seed");
    fs::write(&seed_file, hex(&seed)).unwrap();
    let out = run(
        BIN,
        &[
            "sign",
            "--scheme",
            "standard-webhooks",
            "--secret",
            key.to_str().unwrap(),
        ],
        BODY,
    );
    assert!(out.status.success(), "{out:?}");
    let headers = String::from_utf8(out.stdout).unwrap();
    assert!(headers.contains("webhook-signature: v1a,"), "{headers}");
    let public = python(&["public", "v1a", seed_file.to_str().unwrap()], b"");
    let public = String::from_utf8(public.stdout).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(public.trim()));
    let public_file = f.dir.join("whpk");
    fs::write(&public_file, public).unwrap();
    assert!(library_accepts("v1a", &public_file, &headers, BODY));
    assert!(!library_accepts("v1a", &public_file, &headers, ALTERED));
}

/// Bitbucket Data Center names its delivery `X-Request-Id` (Cloud:
/// `X-Request-UUID`); either becomes SOCKHOOK_DELIVERY.
#[test]
fn bitbucket_data_center_request_id_is_the_delivery() {
    let f = Fixture::new("bitbucket-dc");
    let secret = f.dir.join("secret");
    fs::write(&secret, "bitbucket-secret\n").unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!("command = [{script:?}]\nauth = \"bitbucket\"\nsecret = {secret:?}\n"),
    );
    let sig = format!(
        "X-Hub-Signature: sha256={}",
        hex(&hmac_sha256(b"bitbucket-secret", BODY))
    );
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = served.post(
        PATH,
        &[
            &sig,
            "X-Request-Id: 8d1c6bd5-dc-delivery",
            "X-Event-Key: repo:refs_changed",
        ],
        BODY,
    );
    assert_eq!(reply.status(), 204, "{reply:?}");
    let (_, log) = served.wait(PATIENCE);
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(
        env.contains("SOCKHOOK_DELIVERY=8d1c6bd5-dc-delivery\n"),
        "{env}\n{log}"
    );
}

/// `secret` may list several files while a sender's secret is rotated: a
/// delivery signed with any one is accepted, one signed with another key is
/// not, and `sockhook check` says how many there are, never what they hold.
#[test]
fn rotation_accepts_old_and_new_secrets_and_check_counts_them() {
    if !libraries() {
        return;
    }
    let f = Fixture::new("rotation");
    let sender = Sender::stripe();
    let (new, old, other) = (f.dir.join("new"), f.dir.join("old"), f.dir.join("other"));
    fs::write(&new, format!("{}\n", sender.key)).unwrap();
    fs::write(&old, format!("{}\n", sender.wrong_key)).unwrap();
    fs::write(&other, "whsec_bm90LWNvbmZpZ3VyZWQ=\n").unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!("command = [{script:?}]\nauth = \"stripe\"\nsecret = [{new:?}, {old:?}]\n"),
    );
    let check = Command::new(BIN)
        .args(["check", "--hooks"])
        .arg(&f.hooks)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(said.contains("auth stripe (2 secrets)"), "{said}");
    assert!(
        !said.contains(&sender.key) && !said.contains(&sender.wrong_key),
        "{said}"
    );
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let send = |key: &Path, body: &[u8]| {
        let mut headers = library_signs("stripe", key, now(), "", body);
        headers.push("Content-Type: application/json".into());
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        served.post(PATH, &headers, body).status()
    };
    assert_eq!(send(&old, BODY), 204, "{}", served.log());
    assert_eq!(send(&new, ALTERED), 204, "{}", served.log());
    assert_eq!(send(&other, BODY), 401, "{}", served.log());
    let (_, log) = served.wait(PATIENCE);
    assert_eq!(f.runs("h"), 2, "{log}");
    assert!(log.contains("signature does not match the body"), "{log}");
}

/// A `[match]` hook never answers "200 ignored" to a body it cannot read:
/// a gzip-encoded one is refused 415 before it is read, saying why, and a
/// JSON body after a UTF-8 byte order mark is read (RFC 8259 §8.1), with the
/// body as sent on the command's stdin.
#[test]
fn match_hooks_refuse_compressed_bodies_and_skip_a_byte_order_mark() {
    let f = Fixture::new("interop");
    let secret = f.dir.join("secret");
    fs::write(&secret, "interop-secret\n").unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!(
            "command = [{script:?}]\nauth = \"github\"\nsecret = {secret:?}\n[match]\nref = \"main\"\n"
        ),
    );
    let gzip = run("gzip", &["-c"], BODY);
    assert!(gzip.status.success(), "{gzip:?}");
    let sign = |body: &[u8]| github_signature(b"interop-secret", body);
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let zipped = served.post(
        PATH,
        &[
            &sign(&gzip.stdout),
            "Content-Type: application/json",
            "Content-Encoding: gzip",
        ],
        &gzip.stdout,
    );
    assert_eq!(zipped.status(), 415, "{zipped:?}\n{}", served.log());
    assert!(
        zipped
            .body()
            .contains("Content-Encoding gzip is not supported"),
        "{}",
        zipped.body()
    );
    let bom = [b"\xEF\xBB\xBF".as_slice(), BODY].concat();
    let reply = served.post(
        PATH,
        &[&sign(&bom), "Content-Type: application/json; charset=utf-8"],
        &bom,
    );
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", served.log());
    let (_, log) = served.wait(PATIENCE);
    assert_eq!(f.runs("h"), 1, "{log}");
    assert_eq!(f.read("h.stdin"), bom, "{log}");
    assert!(!log.contains("ignored"), "{log}");
}

/// A sender that can only be given a URL (Docker Hub): with
/// `token_in_query = true` the token may come as `?token=`; it is never
/// logged and never reaches the command's SOCKHOOK_QUERY; without the
/// opt-in the same URL is refused.
#[test]
fn token_in_query_is_an_opt_in_and_never_logged() {
    let f = Fixture::new("query-token");
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!("command = [{script:?}]\nauth = \"token\"\ntoken_in_query = true\n"),
    );
    f.hook(
        "plain",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    let token = f.token(PATH);
    let plain_token = f.token("/hooks/plain");
    let served = f.serve_guarded(&["--idle-timeout", IDLE]);
    let post = |target: &str| served.post(target, &["Content-Type: application/json"], BODY);
    let ok = post(&format!("{PATH}?repo=site&token={token}&x=1"));
    assert_eq!(ok.status(), 204, "{ok:?}\n{}", served.log());
    let wrong = post(&format!("{PATH}?token={plain_token}"));
    assert_eq!(wrong.status(), 401, "{wrong:?}");
    assert!(
        wrong.body().contains("token does not match the path"),
        "{wrong:?}"
    );
    let twice = post(&format!("{PATH}?token={token}&token={token}"));
    assert_eq!(twice.status(), 401, "{twice:?}");
    assert!(twice.body().contains("more than one token"), "{twice:?}");
    let none = post(PATH);
    assert!(none.body().contains("?token="), "{none:?}");
    let not_opted_in = post(&format!("/hooks/plain?token={plain_token}"));
    assert_eq!(not_opted_in.status(), 401, "{not_opted_in:?}");
    let (_, log) = served.wait(PATIENCE);
    assert_eq!(f.runs("h"), 1, "{log}");
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(env.contains("SOCKHOOK_QUERY=repo=site&x=1\n"), "{env}");
    assert!(
        !env.contains(&token),
        "the token reached the command: {env}"
    );
    for t in [&token, &plain_token] {
        assert!(!log.contains(t.as_str()), "token in the log:\n{log}");
    }
    assert_eq!(log.matches(" 401 ").count(), 4, "{log}");
}
