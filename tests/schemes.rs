//! Signature schemes (issue 4) through the real binary over real TCP: for
//! github, gitea, forgejo, gitlab, bitbucket and standard-webhooks, a valid
//! delivery runs the command once with the body on stdin, and every way to
//! fail answers 401, runs nothing, says why in one log line, leaks neither the
//! secret nor the expected signature, and leaves the next valid delivery
//! working. Also: the public test vectors, Standard Webhooks timestamps,
//! several signatures and replayed ids (across a restart too), `events`
//! filters including GitHub's `ping`, and `sockhook sign` output fed to curl.
//!
//! Expected signatures are computed here with the hmac, sha2 and base64
//! crates, independently of `sockhook::verify`, and anchored by the public
//! test vectors.

mod support;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use support::harness::*;

/// Idle time before the server exits; every test waits for that exit, so that
/// all runs are over before they are counted (see [`Served`]).
const IDLE: &str = "0.2";
/// The delivery's body.
const BODY: &[u8] = br#"{"ref":"refs/heads/main","after":"0f1e2d3c"}"#;
/// Another body, for signatures over something else.
const ALTERED: &[u8] = br#"{"ref":"refs/heads/evil","after":"0f1e2d3c"}"#;
/// The hook every test serves.
const PATH: &str = "/hooks/h";

// ---------------------------------------------------------------------------
// Signing, independently of sockhook (with the harness's `hmac_sha256` and `hex`).

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A delivery id no other test uses.
fn unique_id() -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "msg_{}_{nanos}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Github,
    Gitea,
    Forgejo,
    Gitlab,
    Bitbucket,
    StandardWebhooks,
}

use Scheme::*;

impl Scheme {
    /// The `auth` value and `sockhook sign --scheme` argument.
    fn name(self) -> &'static str {
        match self {
            Github => "github",
            Gitea => "gitea",
            Forgejo => "forgejo",
            Gitlab => "gitlab",
            Bitbucket => "bitbucket",
            StandardWebhooks => "standard-webhooks",
        }
    }

    /// The header carrying the signature (or GitLab's token).
    fn header(self) -> &'static str {
        match self {
            Github => "X-Hub-Signature-256",
            Gitea => "X-Gitea-Signature",
            Forgejo => "X-Forgejo-Signature",
            Gitlab => "X-Gitlab-Token",
            Bitbucket => "X-Hub-Signature",
            StandardWebhooks => "webhook-signature",
        }
    }

    /// The header naming the event.
    fn event_header(self) -> &'static str {
        match self {
            Github => "X-GitHub-Event",
            Gitea => "X-Gitea-Event",
            Forgejo => "X-Forgejo-Event",
            Gitlab => "X-Gitlab-Event",
            Bitbucket => "X-Event-Key",
            StandardWebhooks => unreachable!("standard-webhooks has no event header"),
        }
    }

    /// What precedes the encoded MAC in the signature header.
    fn prefix(self) -> &'static str {
        match self {
            Github | Bitbucket => "sha256=",
            StandardWebhooks => "v1,",
            Gitea | Forgejo | Gitlab => "",
        }
    }

    /// The hook's secret, as its file holds it (without the newline).
    fn secret(self) -> String {
        match self {
            StandardWebhooks => format!("whsec_{}", BASE64.encode(b"sw-key:do-not-log:0123456789")),
            other => format!("{}-secret:do-not-log:7Qx9", other.name()),
        }
    }

    /// A secret of the right form that is not the hook's.
    fn wrong_secret(self) -> String {
        match self {
            StandardWebhooks => format!("whsec_{}", BASE64.encode(b"another-key:0123456789ab")),
            _ => "wrong-secret:7Qx9".into(),
        }
    }

    /// Another scheme's signature header with a signature valid for that
    /// scheme and this hook's secret.
    fn foreign_header(self, body: &[u8]) -> String {
        let mac = hex(&hmac_sha256(self.secret().as_bytes(), body));
        match self {
            Github | Gitlab => format!("X-Gitea-Signature: {mac}"),
            Gitea | Forgejo | Bitbucket | StandardWebhooks => {
                format!("X-Hub-Signature-256: sha256={mac}")
            }
        }
    }
}

/// One delivery's parameters: the scheme, and Standard Webhooks' id and timestamp.
#[derive(Clone)]
struct Case {
    scheme: Scheme,
    id: String,
    timestamp: u64,
}

impl Case {
    fn new(scheme: Scheme) -> Case {
        Case {
            scheme,
            id: unique_id(),
            timestamp: now(),
        }
    }

    /// The raw value the scheme authenticates `body` with: the MAC, or
    /// GitLab's token (the secret itself).
    fn mac(&self, secret: &str, body: &[u8]) -> Vec<u8> {
        match self.scheme {
            Gitlab => secret.as_bytes().to_vec(),
            StandardWebhooks => {
                let key = BASE64
                    .decode(secret.strip_prefix("whsec_").unwrap())
                    .unwrap();
                let mut signed = format!("{}.{}.", self.id, self.timestamp).into_bytes();
                signed.extend_from_slice(body);
                hmac_sha256(&key, &signed)
            }
            _ => hmac_sha256(secret.as_bytes(), body),
        }
    }

    /// `mac` as the signature header carries it.
    fn encode(&self, mac: &[u8]) -> String {
        match self.scheme {
            Gitlab => String::from_utf8(mac.to_vec()).unwrap(),
            StandardWebhooks => format!("v1,{}", BASE64.encode(mac)),
            s => format!("{}{}", s.prefix(), hex(mac)),
        }
    }

    /// The signature header's value for `body` signed with `secret`.
    fn value(&self, secret: &str, body: &[u8]) -> String {
        self.encode(&self.mac(secret, body))
    }

    /// A valid delivery of `body`.
    fn deliver(&self, body: &[u8]) -> Delivery {
        let mut headers = vec!["Content-Type: application/json".to_owned()];
        if self.scheme == StandardWebhooks {
            headers.push(format!("webhook-id: {}", self.id));
            headers.push(format!("webhook-timestamp: {}", self.timestamp));
        }
        headers.push(format!(
            "{}: {}",
            self.scheme.header(),
            self.value(&self.scheme.secret(), body)
        ));
        Delivery {
            headers,
            body: body.to_vec(),
        }
    }

    /// What must never be logged for a refused `bad` delivery: the secret,
    /// and the signature sockhook expected for it (and for the valid one).
    fn never_logged(&self, bad: &Delivery) -> Vec<String> {
        let secret = self.scheme.secret();
        let mut expected = self.clone();
        if let Some(id) = bad.header("webhook-id") {
            expected.id = id;
        }
        if let Some(t) = bad.header("webhook-timestamp").and_then(|t| t.parse().ok()) {
            expected.timestamp = t;
        }
        let mut never = vec![secret.clone()];
        for (case, body) in [(self, BODY), (&expected, bad.body.as_slice())] {
            let mac = case.mac(&secret, body);
            never.push(match self.scheme {
                Gitlab => continue,
                StandardWebhooks => BASE64.encode(&mac),
                _ => hex(&mac),
            });
        }
        if let Some(encoded) = secret.strip_prefix("whsec_") {
            never.push(encoded.to_owned());
        }
        never
    }
}

/// Header lines (without CRLF) and a body.
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

    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|l| Delivery::is(l, name))
            .map(|l| l.split_once(':').unwrap().1.trim().to_owned())
    }

    /// Without any header called `name`.
    fn without(mut self, name: &str) -> Delivery {
        self.headers.retain(|l| !Delivery::is(l, name));
        self
    }

    /// With one more header line.
    fn with(mut self, line: impl Into<String>) -> Delivery {
        self.headers.push(line.into());
        self
    }

    /// With header `name` set to `value` alone.
    fn set(self, name: &str, value: &str) -> Delivery {
        self.without(name).with(format!("{name}: {value}"))
    }

    fn send(&self, server: &Server) -> Reply {
        let headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        server.post(PATH, &headers, &self.body)
    }
}

// ---------------------------------------------------------------------------
// Fixtures.

/// Writes the scheme's secret file (with a trailing newline, as `echo` leaves
/// it), a recorder `h`, and hook `h` with `extra` lines; returns the secret's path.
fn hook(f: &Fixture, scheme: Scheme, extra: &str) -> PathBuf {
    let secret = f.dir.join("secret");
    fs::write(&secret, format!("{}\n", scheme.secret())).unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!(
            "command = [{script:?}]\nauth = \"{}\"\nsecret = {secret:?}\n{extra}",
            scheme.name()
        ),
    );
    secret
}

/// Arguments for every server: a short idle time; the guard connection of
/// [`Fixture::serve_guarded`] keeps it from exiting before the test is done.
const ARGS: [&str; 2] = ["--idle-timeout", IDLE];

fn serve(f: &Fixture) -> Served {
    f.serve_guarded(&ARGS)
}

/// Closes the guard, waits for the idle exit, asserts exit 0 and exactly
/// `runs` runs of this server and of the recorder, the last with `stdin` on
/// its stdin. Returns the log.
fn finish(f: &Fixture, served: Served, runs: usize, stdin: &[u8]) -> String {
    let log = finish_server(served, runs);
    assert_eq!(f.runs("h"), runs, "recorder runs:\n{log}");
    if runs > 0 {
        assert_eq!(f.read("h.stdin"), stdin, "stdin:\n{log}");
    }
    log
}

/// The part of [`finish`] about the server only.
fn finish_server(served: Served, runs: usize) -> String {
    let (status, log) = served.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    let count = |what: &str| {
        log.lines()
            .filter(|l| l.contains("hook h: run ") && l.contains(what))
            .count()
    };
    assert_eq!(count(" started"), runs, "runs started:\n{log}");
    assert_eq!(count(" exited 0 "), runs, "runs exited 0:\n{log}");
    log
}

/// The log line of the request answered `status`, by its position among them.
fn answer_line(log: &str, status: u16, nth: usize) -> &str {
    let needle = format!("POST {PATH} {status} hook h: ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {status} line #{nth} in the log:\n{log}"))
}

/// A 401 that says `says` in its body and in a warning log line.
fn assert_refused(reply: &Reply, says: &str, log: &str) {
    assert_eq!(reply.status(), 401, "{reply:?}\n{log}");
    assert!(reply.complete(), "{reply:?}");
    assert!(
        reply.body().starts_with("unauthorized: ") && reply.body().contains(says),
        "body should say {says:?}: {reply:?}"
    );
    assert_eq!(
        reply.header("www-authenticate"),
        None,
        "a signature scheme asks no browser for a password: {reply:?}"
    );
    let line = answer_line(log, 401, 0);
    assert!(
        line.starts_with("sockhook: warning: ") && line.contains(says),
        "log line should say {says:?}: {line}"
    );
}

/// Neither the secret nor an expected signature in the log or the answer.
fn assert_no_leak(log: &str, reply: &Reply, never: &[String]) {
    for secret in never {
        assert!(!log.contains(secret.as_str()), "{secret:?} leaked:\n{log}");
        assert!(
            !reply.body().contains(secret.as_str()),
            "{secret:?} leaked: {reply:?}"
        );
    }
}

fn assert_accepted(reply: &Reply, server: &Server) {
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    assert!(reply.complete(), "{reply:?}");
}

// ---------------------------------------------------------------------------
// Valid deliveries.

fn accepted(name: &str, scheme: Scheme) {
    let f = Fixture::new(name);
    hook(&f, scheme, "");
    let server = serve(&f);
    let case = Case::new(scheme);
    let reply = case.deliver(BODY).send(&server);
    assert_accepted(&reply, &server);
    let log = finish(&f, server, 1, BODY);
    assert!(
        answer_line(&log, 204, 0).starts_with("sockhook: info: "),
        "{log}"
    );
    assert!(!log.contains(&scheme.secret()), "{log}");
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(env.contains("SOCKHOOK_HOOK=h\n"), "{env}");
    if scheme == StandardWebhooks {
        assert!(
            env.contains(&format!("SOCKHOOK_DELIVERY={}\n", case.id)),
            "{env}"
        );
    }
}

macro_rules! accepted {
    ($($name:ident: $scheme:ident;)*) => {$(
        #[test]
        fn $name() {
            accepted(stringify!($name), $scheme);
        }
    )*};
}

accepted! {
    github_valid_delivery_runs_once_with_the_body: Github;
    gitea_valid_delivery_runs_once_with_the_body: Gitea;
    forgejo_valid_delivery_runs_once_with_the_body: Forgejo;
    gitlab_valid_delivery_runs_once_with_the_body: Gitlab;
    bitbucket_valid_delivery_runs_once_with_the_body: Bitbucket;
    standard_webhooks_valid_delivery_runs_once_with_the_body: StandardWebhooks;
}

// ---------------------------------------------------------------------------
// Every way to fail: 401, nothing runs, one log line says why, no leak, and
// the valid delivery sent next (the same one, with the same webhook-id: a
// refused delivery must not use up its id) is still 204.

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Signed with another secret.
    WrongSecret,
    /// The signature is over another body.
    AlteredBody,
    /// No signature header.
    Missing,
    /// The signature header is empty.
    Empty,
    /// Not hex (hex schemes) or not base64 (Standard Webhooks).
    Malformed,
    /// The MAC without its `sha256=` or `v1,` prefix.
    NoPrefix,
    /// Another prefix: `sha1=`, `sha256=` where none belongs, `v2,`.
    OtherPrefix,
    /// One byte short.
    Truncated,
    /// One byte too many.
    Overlong,
    /// Another scheme's header, with a signature valid for that scheme.
    ForeignHeader,
    /// The valid header twice (the second in lower case).
    DuplicateIdentical,
    /// A wrong value, then the valid one.
    DuplicateWrongFirst,
    /// The valid value, then a wrong one.
    DuplicateWrongLast,
    /// GitHub: only the legacy `X-Hub-Signature: sha1=…`.
    Sha1Only,
    /// Standard Webhooks: several signatures, none matches.
    NoneMatches,
    /// Standard Webhooks: timestamp 301 s old, correctly signed.
    Stale,
    /// Standard Webhooks: timestamp 330 s ahead, correctly signed.
    Future,
    /// Standard Webhooks: the timestamp sent is not the one signed.
    TimestampNotSigned,
    /// Standard Webhooks: the id sent is not the one signed.
    IdNotSigned,
    /// Standard Webhooks: no `webhook-id`.
    MissingId,
    /// Standard Webhooks: no `webhook-timestamp`.
    MissingTimestamp,
    /// Standard Webhooks: a timestamp that is not a number.
    TimestampNotNumber,
    /// Standard Webhooks: `webhook-id` twice.
    DuplicateId,
}

/// `good` spoiled by `fault`.
fn spoil(case: &Case, fault: Fault, good: Delivery) -> Delivery {
    let scheme = case.scheme;
    let header = scheme.header();
    let secret = scheme.secret();
    let mac = case.mac(&secret, BODY);
    let right = case.encode(&mac);
    let wrong = case.value(&scheme.wrong_secret(), BODY);
    let resigned = |case: Case| {
        let d = case.deliver(BODY);
        good.clone()
            .set("webhook-timestamp", &d.header("webhook-timestamp").unwrap())
            .set(header, &d.header(header).unwrap())
    };
    match fault {
        Fault::WrongSecret => good.set(header, &wrong),
        Fault::AlteredBody => Delivery {
            body: ALTERED.to_vec(),
            ..good
        },
        Fault::Missing => good.without(header),
        Fault::Empty => good.without(header).with(format!("{header}:")),
        Fault::Malformed => good.set(
            header,
            &match scheme {
                StandardWebhooks => format!("v1,{}", "*".repeat(44)),
                _ => format!("{}{}", scheme.prefix(), "zz".repeat(32)),
            },
        ),
        Fault::NoPrefix => good.set(header, right.strip_prefix(scheme.prefix()).unwrap()),
        Fault::OtherPrefix => good.set(
            header,
            &match scheme {
                Github | Bitbucket => format!("sha1={}", hex(&mac)),
                Gitea | Forgejo => format!("sha256={}", hex(&mac)),
                StandardWebhooks => format!("v2,{}", BASE64.encode(&mac)),
                Gitlab => unreachable!(),
            },
        ),
        Fault::Truncated => good.set(header, &case.encode(&mac[..mac.len() - 1])),
        Fault::Overlong => good.set(header, &case.encode(&[&mac[..], b"0"].concat())),
        Fault::ForeignHeader => good.without(header).with(scheme.foreign_header(BODY)),
        Fault::DuplicateIdentical => good.with(format!("{}: {right}", header.to_ascii_lowercase())),
        Fault::DuplicateWrongFirst => good
            .without(header)
            .with(format!("{header}: {wrong}"))
            .with(format!("{header}: {right}")),
        Fault::DuplicateWrongLast => good.with(format!("{header}: {wrong}")),
        Fault::Sha1Only => good
            .without(header)
            .with(format!("X-Hub-Signature: sha1={}", &hex(&mac)[..40])),
        Fault::NoneMatches => {
            let other = Case {
                id: unique_id(),
                ..case.clone()
            };
            good.set(header, &format!("{} {wrong}", other.value(&secret, BODY)))
        }
        Fault::Stale => resigned(Case {
            timestamp: now() - 301,
            ..case.clone()
        }),
        Fault::Future => resigned(Case {
            timestamp: now() + 330,
            ..case.clone()
        }),
        Fault::TimestampNotSigned => {
            good.set("webhook-timestamp", &(case.timestamp - 1).to_string())
        }
        Fault::IdNotSigned => good.set("webhook-id", &unique_id()),
        Fault::MissingId => good.without("webhook-id"),
        Fault::MissingTimestamp => good.without("webhook-timestamp"),
        Fault::TimestampNotNumber => {
            good.set("webhook-timestamp", &format!("{}.0", case.timestamp))
        }
        Fault::DuplicateId => good.with(format!("webhook-id: {}", unique_id())),
    }
}

fn refused(name: &str, scheme: Scheme, fault: Fault, says: &str) {
    let f = Fixture::new(name);
    hook(&f, scheme, "");
    let case = Case::new(scheme);
    let good = case.deliver(BODY);
    let bad = spoil(&case, fault, good.clone());
    let server = serve(&f);
    let reply = bad.send(&server);
    assert_eq!(reply.status(), 401, "{bad:?}\n{reply:?}\n{}", server.log());
    let next = good.send(&server);
    assert_accepted(&next, &server);
    let log = finish(&f, server, 1, BODY);
    assert_refused(&reply, says, &log);
    assert_no_leak(&log, &reply, &case.never_logged(&bad));
}

/// `name: scheme, fault => "what the body and the log say";` — one test per line.
macro_rules! refused {
    ($($name:ident: $scheme:ident, $fault:ident => $says:expr;)*) => {$(
        #[test]
        fn $name() {
            refused(stringify!($name), $scheme, Fault::$fault, $says);
        }
    )*};
}

const NO_MATCH: &str = "signature does not match the body";
const NOT_HEX: &str = "is not 64 hex digits";
const NO_SHA256: &str = "does not start with sha256=";
const NO_V1: &str = "webhook-signature has no v1 signature of 32 bytes";
const TOKEN_NO_MATCH: &str = "X-Gitlab-Token does not match the secret";

refused! {
    github_wrong_secret: Github, WrongSecret => NO_MATCH;
    github_altered_body: Github, AlteredBody => NO_MATCH;
    github_missing_header: Github, Missing => "no X-Hub-Signature-256 header";
    github_empty_header: Github, Empty => NO_SHA256;
    github_malformed_not_hex: Github, Malformed => NOT_HEX;
    github_malformed_missing_sha256_prefix: Github, NoPrefix => NO_SHA256;
    github_malformed_sha1_prefix: Github, OtherPrefix => NO_SHA256;
    github_truncated_signature: Github, Truncated => NOT_HEX;
    github_overlong_signature: Github, Overlong => NOT_HEX;
    github_gitea_header_instead: Github, ForeignHeader => "no X-Hub-Signature-256 header";
    github_duplicated_header_identical: Github, DuplicateIdentical => "more than one X-Hub-Signature-256 header";
    github_duplicated_header_wrong_first: Github, DuplicateWrongFirst => "more than one X-Hub-Signature-256 header";
    github_duplicated_header_wrong_last: Github, DuplicateWrongLast => "more than one X-Hub-Signature-256 header";
    github_sha1_only_says_sha1: Github, Sha1Only => "only X-Hub-Signature (SHA-1) was sent";

    gitea_wrong_secret: Gitea, WrongSecret => NO_MATCH;
    gitea_altered_body: Gitea, AlteredBody => NO_MATCH;
    gitea_missing_header: Gitea, Missing => "no X-Gitea-Signature header";
    gitea_empty_header: Gitea, Empty => NOT_HEX;
    gitea_malformed_not_hex: Gitea, Malformed => NOT_HEX;
    gitea_malformed_sha256_prefix: Gitea, OtherPrefix => NOT_HEX;
    gitea_truncated_signature: Gitea, Truncated => NOT_HEX;
    gitea_overlong_signature: Gitea, Overlong => NOT_HEX;
    gitea_github_header_instead: Gitea, ForeignHeader => "no X-Gitea-Signature header";
    gitea_duplicated_header_identical: Gitea, DuplicateIdentical => "more than one X-Gitea-Signature header";
    gitea_duplicated_header_wrong_first: Gitea, DuplicateWrongFirst => "more than one X-Gitea-Signature header";
    gitea_duplicated_header_wrong_last: Gitea, DuplicateWrongLast => "more than one X-Gitea-Signature header";

    forgejo_wrong_secret: Forgejo, WrongSecret => NO_MATCH;
    forgejo_altered_body: Forgejo, AlteredBody => NO_MATCH;
    forgejo_missing_header: Forgejo, Missing => "no X-Forgejo-Signature header";
    forgejo_empty_header: Forgejo, Empty => NOT_HEX;
    forgejo_malformed_not_hex: Forgejo, Malformed => NOT_HEX;
    forgejo_malformed_sha256_prefix: Forgejo, OtherPrefix => NOT_HEX;
    forgejo_truncated_signature: Forgejo, Truncated => NOT_HEX;
    forgejo_overlong_signature: Forgejo, Overlong => NOT_HEX;
    forgejo_github_header_instead: Forgejo, ForeignHeader => "no X-Forgejo-Signature header";
    forgejo_duplicated_header_identical: Forgejo, DuplicateIdentical => "more than one X-Forgejo-Signature header";
    forgejo_duplicated_header_wrong_first: Forgejo, DuplicateWrongFirst => "more than one X-Forgejo-Signature header";
    forgejo_duplicated_header_wrong_last: Forgejo, DuplicateWrongLast => "more than one X-Forgejo-Signature header";

    gitlab_wrong_token: Gitlab, WrongSecret => TOKEN_NO_MATCH;
    gitlab_missing_token: Gitlab, Missing => "no X-Gitlab-Token header";
    gitlab_empty_token: Gitlab, Empty => TOKEN_NO_MATCH;
    gitlab_truncated_token: Gitlab, Truncated => TOKEN_NO_MATCH;
    gitlab_overlong_token: Gitlab, Overlong => TOKEN_NO_MATCH;
    gitlab_gitea_header_instead: Gitlab, ForeignHeader => "no X-Gitlab-Token header";
    gitlab_duplicated_token_identical: Gitlab, DuplicateIdentical => "more than one X-Gitlab-Token header";
    gitlab_duplicated_token_wrong_first: Gitlab, DuplicateWrongFirst => "more than one X-Gitlab-Token header";
    gitlab_duplicated_token_wrong_last: Gitlab, DuplicateWrongLast => "more than one X-Gitlab-Token header";

    bitbucket_wrong_secret: Bitbucket, WrongSecret => NO_MATCH;
    bitbucket_altered_body: Bitbucket, AlteredBody => NO_MATCH;
    bitbucket_missing_header: Bitbucket, Missing => "no X-Hub-Signature header";
    bitbucket_empty_header: Bitbucket, Empty => NO_SHA256;
    bitbucket_malformed_not_hex: Bitbucket, Malformed => NOT_HEX;
    bitbucket_malformed_missing_sha256_prefix: Bitbucket, NoPrefix => NO_SHA256;
    bitbucket_malformed_sha1_prefix: Bitbucket, OtherPrefix => NO_SHA256;
    bitbucket_truncated_signature: Bitbucket, Truncated => NOT_HEX;
    bitbucket_overlong_signature: Bitbucket, Overlong => NOT_HEX;
    bitbucket_github_header_instead: Bitbucket, ForeignHeader => "no X-Hub-Signature header";
    bitbucket_duplicated_header_identical: Bitbucket, DuplicateIdentical => "more than one X-Hub-Signature header";
    bitbucket_duplicated_header_wrong_first: Bitbucket, DuplicateWrongFirst => "more than one X-Hub-Signature header";
    bitbucket_duplicated_header_wrong_last: Bitbucket, DuplicateWrongLast => "more than one X-Hub-Signature header";

    standard_webhooks_wrong_secret: StandardWebhooks, WrongSecret => NO_MATCH;
    standard_webhooks_altered_body: StandardWebhooks, AlteredBody => NO_MATCH;
    standard_webhooks_missing_signature: StandardWebhooks, Missing => "no webhook-signature header";
    standard_webhooks_empty_signature: StandardWebhooks, Empty => NO_V1;
    standard_webhooks_malformed_not_base64: StandardWebhooks, Malformed => NO_V1;
    standard_webhooks_malformed_missing_v1_prefix: StandardWebhooks, NoPrefix => NO_V1;
    standard_webhooks_malformed_v2_prefix: StandardWebhooks, OtherPrefix => NO_V1;
    standard_webhooks_truncated_signature: StandardWebhooks, Truncated => NO_V1;
    standard_webhooks_overlong_signature: StandardWebhooks, Overlong => NO_V1;
    standard_webhooks_github_header_instead: StandardWebhooks, ForeignHeader => "no webhook-signature header";
    standard_webhooks_duplicated_signature_identical: StandardWebhooks, DuplicateIdentical => "more than one webhook-signature header";
    standard_webhooks_duplicated_signature_wrong_first: StandardWebhooks, DuplicateWrongFirst => "more than one webhook-signature header";
    standard_webhooks_duplicated_signature_wrong_last: StandardWebhooks, DuplicateWrongLast => "more than one webhook-signature header";
    standard_webhooks_several_signatures_none_matches: StandardWebhooks, NoneMatches => NO_MATCH;
    standard_webhooks_timestamp_301_s_old: StandardWebhooks, Stale => "s old, tolerance 300 s";
    standard_webhooks_timestamp_330_s_ahead: StandardWebhooks, Future => "s in the future, tolerance 300 s";
    standard_webhooks_timestamp_not_the_signed_one: StandardWebhooks, TimestampNotSigned => NO_MATCH;
    standard_webhooks_id_not_the_signed_one: StandardWebhooks, IdNotSigned => NO_MATCH;
    standard_webhooks_missing_id: StandardWebhooks, MissingId => "no webhook-id header";
    standard_webhooks_missing_timestamp: StandardWebhooks, MissingTimestamp => "no webhook-timestamp header";
    standard_webhooks_timestamp_not_a_number: StandardWebhooks, TimestampNotNumber => "webhook-timestamp is not a number";
    standard_webhooks_duplicated_id: StandardWebhooks, DuplicateId => "more than one webhook-id header";
}

// ---------------------------------------------------------------------------
// GitHub specifics.

#[test]
fn github_public_test_vector_with_its_exact_header() {
    let f = Fixture::new("github-vector");
    let secret = f.dir.join("secret");
    fs::write(&secret, "It's a Secret to Everybody").unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!("command = [{script:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    let server = serve(&f);
    let reply = server.post(
        PATH,
        &["X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"],
        b"Hello, World!",
    );
    assert_accepted(&reply, &server);
    finish(&f, server, 1, b"Hello, World!");
}

#[test]
fn github_sends_sha1_and_sha256_headers_together_accepted() {
    let f = Fixture::new("github-both");
    hook(&f, Github, "");
    let case = Case::new(Github);
    let delivery = case
        .deliver(BODY)
        .with("X-Hub-Signature: sha1=0123456789abcdef0123456789abcdef01234567")
        .with("X-GitHub-Event: push")
        .with("X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let server = serve(&f);
    assert_accepted(&delivery.send(&server), &server);
    finish(&f, server, 1, BODY);
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(
        env.contains("SOCKHOOK_DELIVERY=72d3162e-cc78-11e3-81ab-4c9367dc0958\n"),
        "{env}"
    );
}

#[test]
fn github_header_name_in_lower_case_accepted() {
    let f = Fixture::new("github-lower");
    hook(&f, Github, "");
    let case = Case::new(Github);
    let value = case.value(&Github.secret(), BODY);
    let server = serve(&f);
    let reply = server.post(PATH, &[&format!("x-hub-signature-256: {value}")], BODY);
    assert_accepted(&reply, &server);
    finish(&f, server, 1, BODY);
}

#[test]
fn github_empty_body_signed_accepted() {
    let f = Fixture::new("github-empty");
    hook(&f, Github, "");
    let server = serve(&f);
    assert_accepted(&Case::new(Github).deliver(b"").send(&server), &server);
    finish(&f, server, 1, b"");
}

#[test]
fn github_chunked_body_is_verified_over_the_decoded_bytes() {
    let f = Fixture::new("github-chunked");
    hook(&f, Github, "");
    let case = Case::new(Github);
    let value = case.value(&Github.secret(), BODY);
    let (a, b) = BODY.split_at(10);
    let chunked = |sig: &str| {
        let mut request = format!(
            "POST {PATH} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nX-Hub-Signature-256: {sig}\r\n\r\n{:x}\r\n",
            a.len()
        )
        .into_bytes();
        request.extend_from_slice(a);
        request.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
        request.extend_from_slice(b);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
        request
    };
    let server = serve(&f);
    let wrong = case.value(&Github.wrong_secret(), BODY);
    let reply = server.request(&chunked(&wrong));
    assert_eq!(reply.status(), 401, "{reply:?}\n{}", server.log());
    assert_accepted(&server.request(&chunked(&value)), &server);
    let log = finish(&f, server, 1, BODY);
    assert_refused(&reply, NO_MATCH, &log);
    assert_no_leak(&log, &reply, &case.never_logged(&case.deliver(BODY)));
}

/// Bitbucket's `X-Hub-Signature: sha256=…` sent to a github hook is refused,
/// and the reason must not claim that a SHA-1 signature was sent.
#[test]
fn github_bitbucket_header_instead_is_not_called_sha1() {
    let f = Fixture::new("github-bitbucket-header");
    hook(&f, Github, "");
    let case = Case::new(Github);
    let value = case.value(&Github.secret(), BODY);
    let bad = case
        .deliver(BODY)
        .without("X-Hub-Signature-256")
        .with(format!("X-Hub-Signature: {value}"));
    let server = serve(&f);
    let reply = bad.send(&server);
    assert_eq!(reply.status(), 401, "{reply:?}\n{}", server.log());
    assert_accepted(&case.deliver(BODY).send(&server), &server);
    let log = finish(&f, server, 1, BODY);
    assert_refused(&reply, "X-Hub-Signature-256", &log);
    let line = answer_line(&log, 401, 0);
    assert!(
        !line.contains("SHA-1"),
        "X-Hub-Signature carried sha256=, not SHA-1: {line}"
    );
    assert_no_leak(&log, &reply, &case.never_logged(&bad));
}

// ---------------------------------------------------------------------------
// Senders' full header sets (Gitea and Forgejo also send the other headers).

#[test]
fn gitea_delivery_as_gitea_sends_it_accepted() {
    let f = Fixture::new("gitea-full");
    hook(&f, Gitea, "");
    let case = Case::new(Gitea);
    let mac = hex(&hmac_sha256(Gitea.secret().as_bytes(), BODY));
    let delivery = case
        .deliver(BODY)
        .with(format!("X-Gogs-Signature: {mac}"))
        .with(format!("X-Hub-Signature-256: sha256={mac}"))
        .with("X-Gitea-Event: push")
        .with("X-Gitea-Delivery: 9a0c0d4e-1b2f-4c3d-8e5f-6a7b8c9d0e1f");
    let server = serve(&f);
    assert_accepted(&delivery.send(&server), &server);
    finish(&f, server, 1, BODY);
}

#[test]
fn forgejo_delivery_as_forgejo_sends_it_accepted() {
    let f = Fixture::new("forgejo-full");
    hook(&f, Forgejo, "");
    let case = Case::new(Forgejo);
    let mac = hex(&hmac_sha256(Forgejo.secret().as_bytes(), BODY));
    let delivery = case
        .deliver(BODY)
        .with(format!("X-Gitea-Signature: {mac}"))
        .with(format!("X-Gogs-Signature: {mac}"))
        .with(format!("X-Hub-Signature-256: sha256={mac}"))
        .with("X-Forgejo-Event: push");
    let server = serve(&f);
    assert_accepted(&delivery.send(&server), &server);
    finish(&f, server, 1, BODY);
}

// ---------------------------------------------------------------------------
// Standard Webhooks specifics.

/// `sockhook sign` with `args`, `secret` in a file and `body` on stdin.
fn sign(f: &Fixture, secret: &str, body: &[u8], args: &[&str]) -> std::process::Output {
    let path = f.dir.join("sign-secret");
    fs::write(&path, format!("{secret}\n")).unwrap();
    let mut child = Command::new(BIN)
        .arg("sign")
        .args(args)
        .arg("--secret")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sign_standard_webhooks_reproduces_the_public_test_vector() {
    let f = Fixture::new("sign-sw-vector");
    let out = sign(
        &f,
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        br#"{"email":"test@example.com","username":"test_user"}"#,
        &[
            "--scheme",
            "standard-webhooks",
            "--id",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "--timestamp",
            "1649367553",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "webhook-id: msg_27UH4WbU6Z5A5EzD8u03UvzRbpk\n\
         webhook-timestamp: 1649367553\n\
         webhook-signature: v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=\n"
    );
}

#[test]
fn sign_github_reproduces_the_public_test_vector() {
    let f = Fixture::new("sign-github-vector");
    let out = sign(
        &f,
        "It's a Secret to Everybody",
        b"Hello, World!",
        &["--scheme", "github"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17\n"
    );
}

#[test]
fn standard_webhooks_several_signatures_one_matches_accepted() {
    let f = Fixture::new("sw-several");
    hook(&f, StandardWebhooks, "");
    let case = Case::new(StandardWebhooks);
    let right = case.value(&StandardWebhooks.secret(), BODY);
    let wrong = case.value(&StandardWebhooks.wrong_secret(), BODY);
    let delivery = case.deliver(BODY).set(
        "webhook-signature",
        &format!("v2,AAAA {wrong} {right} v1,AAAA"),
    );
    let server = serve(&f);
    assert_accepted(&delivery.send(&server), &server);
    finish(&f, server, 1, BODY);
}

#[test]
fn standard_webhooks_timestamps_within_tolerance_accepted() {
    let f = Fixture::new("sw-tolerance");
    hook(&f, StandardWebhooks, "");
    let server = serve(&f);
    for (i, timestamp) in [now() - 290, now() + 290].into_iter().enumerate() {
        let case = Case {
            timestamp,
            ..Case::new(StandardWebhooks)
        };
        assert_accepted(&case.deliver(BODY).send(&server), &server);
        // Each delivery must run: wait for its run, or the second could
        // legitimately coalesce with (or supersede) the first.
        server.wait_log(" exited 0 ", i + 1);
    }
    finish(&f, server, 2, BODY);
}

#[test]
fn standard_webhooks_stale_timestamp_log_gives_the_age() {
    let f = Fixture::new("sw-stale-age");
    hook(&f, StandardWebhooks, "");
    let case = Case {
        timestamp: now() - 400,
        ..Case::new(StandardWebhooks)
    };
    let server = serve(&f);
    let reply = case.deliver(BODY).send(&server);
    let log = finish(&f, server, 0, b"");
    assert_refused(&reply, "s old, tolerance 300 s", &log);
    assert_no_leak(&log, &reply, &case.never_logged(&case.deliver(BODY)));
    let line = answer_line(&log, 401, 0);
    let age: u64 = line
        .split("webhook-timestamp is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no age in {line}"));
    assert!((400..=420).contains(&age), "{line}");
}

#[test]
fn standard_webhooks_replayed_id_refused() {
    let f = Fixture::new("sw-replay");
    hook(&f, StandardWebhooks, "");
    let case = Case::new(StandardWebhooks);
    let delivery = case.deliver(BODY);
    let server = serve(&f);
    assert_accepted(&delivery.send(&server), &server);
    // Runs start in the order connections close, not the order of requests:
    // let the first finish so that the last stdin is the fresh delivery's.
    server.wait_log("exited 0", 1);
    let replay = delivery.send(&server);
    assert_eq!(replay.status(), 401, "{replay:?}\n{}", server.log());
    // A new id is still welcome.
    let fresh = Case::new(StandardWebhooks).deliver(ALTERED);
    assert_accepted(&fresh.send(&server), &server);
    let log = finish(&f, server, 2, ALTERED);
    assert_refused(&replay, "webhook-id was already accepted (a replay)", &log);
    assert_no_leak(&log, &replay, &case.never_logged(&delivery));
}

#[test]
fn standard_webhooks_replayed_id_with_another_signed_body_refused() {
    let f = Fixture::new("sw-replay-other-body");
    hook(&f, StandardWebhooks, "");
    let case = Case::new(StandardWebhooks);
    let server = serve(&f);
    assert_accepted(&case.deliver(BODY).send(&server), &server);
    let again = case.deliver(ALTERED);
    let replay = again.send(&server);
    let log = finish(&f, server, 1, BODY);
    assert_refused(&replay, "webhook-id was already accepted (a replay)", &log);
    assert_no_leak(&log, &replay, &case.never_logged(&again));
}

#[test]
fn standard_webhooks_replay_refused_across_a_restart() {
    let f = Fixture::new("sw-replay-restart");
    hook(&f, StandardWebhooks, "");
    let runtime = f.dir.join("runtime");
    fs::create_dir(&runtime).unwrap();
    let env = [("RUNTIME_DIRECTORY", runtime.to_str().unwrap())];
    let case = Case::new(StandardWebhooks);
    let delivery = case.deliver(BODY);

    let first = f.serve_guarded_with_env(&ARGS, &env);
    assert_accepted(&delivery.send(&first), &first);
    finish(&f, first, 1, BODY);
    assert!(runtime.join("webhook-ids").exists());

    let second = f.serve_guarded_with_env(&ARGS, &env);
    let replay = delivery.send(&second);
    assert_eq!(replay.status(), 401, "{replay:?}\n{}", second.log());
    let fresh = Case::new(StandardWebhooks).deliver(ALTERED);
    assert_accepted(&fresh.send(&second), &second);
    let log = finish_server(second, 1);
    assert_eq!(f.runs("h"), 2, "{log}");
    assert_eq!(f.read("h.stdin"), ALTERED);
    assert_refused(&replay, "webhook-id was already accepted (a replay)", &log);
    assert_no_leak(&log, &replay, &case.never_logged(&delivery));
}

#[test]
fn standard_webhooks_secret_not_whsec_base64_answers_500_and_check_reports_it() {
    let f = Fixture::new("sw-bad-secret");
    let secret = f.dir.join("secret");
    let plain = "plain secret, not base64!";
    fs::write(&secret, format!("{plain}\n")).unwrap();
    let script = f.recorder("h");
    f.hook(
        "h",
        &format!("command = [{script:?}]\nauth = \"standard-webhooks\"\nsecret = {secret:?}\n"),
    );
    let case = Case::new(StandardWebhooks);
    let server = serve(&f);
    let reply = case.deliver(BODY).send(&server);
    assert_eq!(reply.status(), 500, "{reply:?}\n{}", server.log());
    let log = finish(&f, server, 0, b"");
    assert!(
        log.lines()
            .any(|l| l.starts_with("sockhook: error: ")
                && l.contains("not a Standard Webhooks secret")),
        "{log}"
    );
    assert!(!log.contains(plain), "{log}");

    let out = f.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&secret.display().to_string())
                && l.contains("not a Standard Webhooks secret")),
        "{stdout}"
    );
    assert!(stdout.contains("1 problem(s)"), "{stdout}");
    assert!(!stdout.contains(plain), "{stdout}");
}

// ---------------------------------------------------------------------------
// Event filters: other events answer 200 `ignored: …` and run nothing.

fn events(name: &str, scheme: Scheme, wanted: &str, other: &str) {
    let f = Fixture::new(name);
    hook(&f, scheme, &format!("events = [{wanted:?}]\n"));
    let case = Case::new(scheme);
    let header = scheme.event_header();
    let server = serve(&f);
    let ignored = case
        .deliver(BODY)
        .with(format!("{header}: {other}"))
        .send(&server);
    assert_eq!(ignored.status(), 200, "{ignored:?}\n{}", server.log());
    assert!(ignored.complete(), "{ignored:?}");
    let why = format!("ignored: event {other} not in events");
    assert_eq!(ignored.body(), format!("{why}\n"));
    let run = case
        .deliver(BODY)
        .with(format!("{header}: {wanted}"))
        .send(&server);
    assert_accepted(&run, &server);
    let log = finish(&f, server, 1, BODY);
    let line = answer_line(&log, 200, 0);
    assert!(
        line.starts_with("sockhook: info: ") && line.ends_with(&why),
        "{line}"
    );
    let env = String::from_utf8(f.read("h.env")).unwrap();
    assert!(env.contains(&format!("SOCKHOOK_EVENT={wanted}\n")), "{env}");
}

macro_rules! events {
    ($($name:ident: $scheme:ident, $wanted:literal, $other:literal;)*) => {$(
        #[test]
        fn $name() {
            events(stringify!($name), $scheme, $wanted, $other);
        }
    )*};
}

events! {
    github_events_ping_ignored_push_runs: Github, "push", "ping";
    gitea_events_other_ignored_push_runs: Gitea, "push", "issues";
    forgejo_events_other_ignored_push_runs: Forgejo, "push", "issues";
    gitlab_events_other_ignored_push_hook_runs: Gitlab, "Push Hook", "Merge Request Hook";
    bitbucket_events_other_ignored_repo_push_runs: Bitbucket, "repo:push", "repo:fork";
}

#[test]
fn github_events_without_an_event_header_ignored() {
    let f = Fixture::new("github-events-none");
    hook(&f, Github, "events = [\"push\"]\n");
    let server = serve(&f);
    let reply = Case::new(Github).deliver(BODY).send(&server);
    assert_eq!(reply.status(), 200, "{reply:?}\n{}", server.log());
    assert!(reply.body().starts_with("ignored: "), "{reply:?}");
    finish(&f, server, 0, b"");
}

#[test]
fn github_events_ping_with_a_wrong_signature_is_401_not_200() {
    let f = Fixture::new("github-events-bad-ping");
    hook(&f, Github, "events = [\"push\"]\n");
    let case = Case::new(Github);
    let bad = spoil(&case, Fault::WrongSecret, case.deliver(BODY)).with("X-GitHub-Event: ping");
    let server = serve(&f);
    let reply = bad.send(&server);
    let log = finish(&f, server, 0, b"");
    assert_refused(&reply, NO_MATCH, &log);
    assert_no_leak(&log, &reply, &case.never_logged(&bad));
}

// ---------------------------------------------------------------------------
// `sockhook sign` output, fed to curl against the real binary.

fn curl_signed(name: &str, scheme: Scheme) {
    let f = Fixture::new(name);
    let secret = hook(&f, scheme, "");
    let body = f.dir.join("body.json");
    fs::write(&body, BODY).unwrap();
    let headers = f.dir.join("headers");
    let out = Command::new(BIN)
        .args(["sign", "--scheme", scheme.name(), "--secret"])
        .arg(&secret)
        .stdin(fs::File::open(&body).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // `sign` against an independent signer first: the server shares its code.
    let printed = String::from_utf8(out.stdout.clone()).unwrap();
    let field = |name: &str| {
        printed.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then(|| v.to_owned())
        })
    };
    let mut case = Case::new(scheme);
    if scheme == StandardWebhooks {
        case.id = field("webhook-id").expect("a webhook-id line");
        case.timestamp = field("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .expect("a webhook-timestamp line");
        assert!(
            case.timestamp.abs_diff(now()) <= 60,
            "timestamp {} is not now:\n{printed}",
            case.timestamp
        );
    }
    assert_eq!(
        field(scheme.header()),
        Some(case.value(&scheme.secret(), BODY)),
        "sockhook sign --scheme {}:\n{printed}",
        scheme.name()
    );
    fs::write(&headers, &out.stdout).unwrap();
    let server = serve(&f);
    let (status, stderr) = curl(&[
        "-H",
        &format!("@{}", headers.display()),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://{}{PATH}", server.addr),
    ]);
    assert_eq!(status, 204, "curl: {stderr}\n{}", server.log());
    finish(&f, server, 1, BODY);
}

macro_rules! curl_signed {
    ($($name:ident: $scheme:ident;)*) => {$(
        #[test]
        fn $name() {
            curl_signed(stringify!($name), $scheme);
        }
    )*};
}

curl_signed! {
    curl_with_sign_output_github: Github;
    curl_with_sign_output_gitea: Gitea;
    curl_with_sign_output_forgejo: Forgejo;
    curl_with_sign_output_gitlab: Gitlab;
    curl_with_sign_output_bitbucket: Bitbucket;
    curl_with_sign_output_standard_webhooks: StandardWebhooks;
}

// ---------------------------------------------------------------------------
// Payload filters: `[match]` on JSON fields, checked after authentication.

const MATCH: &str = "[match]\nref = \"refs/heads/main\"\n\"repository.full_name\" = \"org/site\"\n";
const MATCHING: &[u8] =
    br#"{"ref":"refs/heads/main","repository":{"full_name":"org/site","id":1}}"#;

#[test]
fn match_table_runs_the_command_when_every_field_matches() {
    let f = Fixture::new("match-ok");
    hook(&f, Github, MATCH);
    let served = serve(&f);
    let reply = Case::new(Github).deliver(MATCHING).send(&served);
    assert_accepted(&reply, &served);
    finish(&f, served, 1, MATCHING);
}

#[test]
fn match_mismatch_is_200_ignored_naming_the_field_and_runs_nothing() {
    let f = Fixture::new("match-mismatch");
    hook(&f, Github, MATCH);
    let served = serve(&f);
    let body = br#"{"ref":"refs/heads/dev","repository":{"full_name":"org/site"}}"#;
    let reply = Case::new(Github).deliver(body).send(&served);
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(
        reply.body(),
        "ignored: ref is \"refs/heads/dev\", not \"refs/heads/main\"\n"
    );
    let log = finish(&f, served, 0, b"");
    assert!(
        log.contains("info: ") && log.contains("200 hook h: ignored: ref is"),
        "{log}"
    );
}

#[test]
fn match_missing_field_is_200_ignored_and_runs_nothing() {
    let f = Fixture::new("match-missing");
    hook(&f, Github, MATCH);
    let served = serve(&f);
    let reply = Case::new(Github)
        .deliver(br#"{"ref":"refs/heads/main"}"#)
        .send(&served);
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.body(), "ignored: repository.full_name is missing\n");
    finish(&f, served, 0, b"");
}

#[test]
fn match_without_json_content_type_is_415_and_runs_nothing() {
    let f = Fixture::new("match-form");
    hook(&f, Github, MATCH);
    let served = serve(&f);
    let text = Case::new(Github)
        .deliver(MATCHING)
        .set("Content-Type", "text/plain");
    let reply = text.send(&served);
    assert_eq!(reply.status(), 415, "{reply:?}");
    // A form is read for its payload field; JSON sent as a form has none.
    let form = Case::new(Github)
        .deliver(MATCHING)
        .set("Content-Type", "application/x-www-form-urlencoded");
    let reply = form.send(&served);
    assert_eq!(reply.status(), 422, "{reply:?}");
    assert_eq!(
        reply.body(),
        "cannot read the form's payload: the form has no payload field\n"
    );
    let reply = Case::new(Github).deliver(MATCHING).send(&served);
    assert_accepted(&reply, &served);
    finish(&f, served, 1, MATCHING);
}

#[test]
fn match_is_checked_only_after_the_signature() {
    let f = Fixture::new("match-unsigned");
    hook(&f, Github, MATCH);
    let served = serve(&f);
    let forged = Case::new(Github)
        .deliver(MATCHING)
        .set("X-Hub-Signature-256", &format!("sha256={}", "0".repeat(64)));
    let reply = forged.send(&served);
    assert_eq!(reply.status(), 401, "{reply:?}");
    finish(&f, served, 0, b"");
}

#[test]
fn invalid_match_table_answers_500_and_check_reports_it() {
    let f = Fixture::new("match-invalid");
    hook(&f, Github, "[match]\nref = 1.5\n");
    let served = serve(&f);
    let reply = Case::new(Github).deliver(MATCHING).send(&served);
    assert_eq!(reply.status(), 500, "{reply:?}");
    finish(&f, served, 0, b"");
    let out = Command::new(BIN)
        .args(["check", "--hooks"])
        .arg(&f.hooks)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("h.toml: match: "), "{stdout}");
}
