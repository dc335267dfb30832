//! Hook files (`DIR/NAME.toml`, one hook each), their secrets, and the server key.
//!
//! Everything is loaded once per activation. A broken file breaks only its own
//! hook: the problem is kept and answered with 500, the other hooks keep working.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::error::Problem;
use crate::fields::EnvFields;
use crate::filter::{Filters, Match};
use crate::proxy::Block;
use crate::scheme::{Key, Scheme, Secret, looks_pasted};

/// Where hook files live unless `--hooks` says otherwise.
pub const DEFAULT_HOOKS_DIR: &str = "/etc/sockhook/hooks.d";
/// The server key outside systemd (under systemd: `$CREDENTIALS_DIRECTORY/key`).
pub const DEFAULT_KEY_FILE: &str = "/etc/sockhook/key";
/// The credential name of the server key (`LoadCredential=key:…`).
pub const KEY_CREDENTIAL: &str = "key";
/// Set by systemd to the directory holding `LoadCredential=` files.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// The path prefix under which hooks are served.
pub const HOOKS_PREFIX: &str = "/hooks/";
/// How long a command may run unless the hook's `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest `timeout` a hook may set (a day).
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// Most tasks (processes and threads) a run may have unless the hook's
/// `tasks_max` says otherwise.
pub const DEFAULT_TASKS_MAX: u64 = 512;
/// The largest `tasks_max` a hook may set.
pub const MAX_TASKS_MAX: u64 = 65536;
/// Largest body a hook accepts unless its `max_body` says otherwise (GitHub caps at 25 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 25 * 1024 * 1024;
/// The largest `max_body` a hook may set (1 GiB; bodies are spooled in memory).
pub const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// The start of the value the shipped units give a credential with
/// `SetCredential=` for when the file their `LoadCredential=` names is
/// missing; the path follows. sockhook refuses it and says what to create,
/// so that a missing file answers 500 instead of failing every start.
pub const MISSING_CREDENTIAL: &str = "sockhook-missing-credential:";
/// How the problem of a [`MISSING_CREDENTIAL`] placeholder starts.
const MISSING_FILE: &str = "systemd found no";
/// Hook, key and secret files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// The longest hook name.
pub const MAX_NAME_BYTES: usize = 64;

/// A hook, validated and ready to serve.
#[derive(Debug)]
pub struct Hook {
    /// The name: the file name without `.toml`, served at `/hooks/NAME`.
    pub name: String,
    /// The program (absolute path) and its arguments; empty for a hook
    /// that only publishes (`publish = true` without `command`).
    pub command: Vec<String>,
    /// How senders are authenticated.
    pub scheme: Scheme,
    /// The shared secrets (or public keys) of signature schemes; any one
    /// verifies, so that a sender's secret can be rotated.
    /// INVARIANT: 1..=MAX_SECRETS of them exactly when `scheme.needs_secret()`, else none.
    pub secrets: Vec<Secret>,
    /// Methods accepted, e.g. `["POST"]`.
    pub methods: Vec<String>,
    /// Which authenticated requests run the command (`events`, `[match]`).
    pub filters: Filters,
    /// How long one run may take.
    pub timeout: Duration,
    /// The largest body accepted, in bytes.
    pub max_body: u64,
    /// Most tasks one run may have.
    pub tasks_max: u64,
    /// When and how the request is answered (`respond` and the keys that go with it).
    pub answer: Answer,
    /// Whether accepted deliveries are kept in the delivery journal.
    pub journal: bool,
    /// The token may come as the query parameter `token` (for senders that
    /// can only be given a URL). INVARIANT: only with `Scheme::Token`.
    pub token_in_query: bool,
    /// Accepted deliveries are stored and fanned out to relay subscribers
    /// (`publish = true`); `None` for a hook that does not publish.
    pub publish: Option<Publish>,
    /// The client addresses that may call the hook (`allow_from`); empty:
    /// any. Checked on the head, before any of the body is read.
    pub allow_from: Vec<Block>,
}

/// How much of a publishing hook's deliveries the relay keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Most messages kept (`publish_keep`).
    pub keep: usize,
    /// Most bytes kept (`publish_max_bytes`); the newest message is kept
    /// whatever its size.
    pub max_bytes: u64,
}

/// Messages a publishing hook keeps unless its `publish_keep` says otherwise.
pub const DEFAULT_PUBLISH_KEEP: u64 = 100;
/// The largest `publish_keep` a hook may set.
pub const MAX_PUBLISH_KEEP: u64 = 100_000;
/// Bytes a publishing hook keeps unless its `publish_max_bytes` says otherwise.
pub const DEFAULT_PUBLISH_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The largest `publish_max_bytes` a hook may set (16 GiB).
pub const MAX_PUBLISH_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// When a hook's requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Respond {
    /// 204 once the request is authenticated; the command runs afterwards.
    BeforeRun,
    /// After the run, with its outcome and its stdout.
    AfterRun,
    /// Its stdout as the run prints it (chunked), its outcome in a trailer.
    Stream,
}

/// How a hook's answer is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// When.
    pub respond: Respond,
    /// How long an answer after the run waits for it before it is 202.
    pub timeout: Duration,
    /// The media type of the command's stdout.
    pub content_type: String,
    /// Whether stderr goes into the answer too (it may hold secrets).
    pub include_stderr: bool,
    /// The status each exit code is answered with, where it is not the default.
    pub exit_status: BTreeMap<i32, u16>,
}

/// How long an answer after the run waits unless the hook's
/// `respond_timeout` says otherwise: half the 10 s that OkHttp (the HTTP
/// Shortcuts app's client) and GitHub wait by default.
pub const DEFAULT_RESPOND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `respond_timeout` a hook may set.
pub const MAX_RESPOND_TIMEOUT_SECS: u64 = 300;
/// The media type of an answer's body unless the hook's `content_type` says otherwise.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Every key a hook file may hold, as `HookFile` reads them.
pub const HOOK_KEYS: [&str; 25] = [
    "command",
    "auth",
    "secret",
    "methods",
    "events",
    "timeout",
    "max_body",
    "tasks_max",
    "respond",
    "respond_timeout",
    "content_type",
    "include_stderr",
    "exit_status",
    "journal",
    "allow_unauthenticated",
    "token_in_query",
    "publish",
    "publish_keep",
    "publish_max_bytes",
    "allow_from",
    "match",
    "env",
    "env_required",
    "env_objects",
    "stdin",
];

/// A hook file as written; every key is optional so each gets a clear message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    command: Option<Vec<String>>,
    auth: Option<Scheme>,
    secret: Option<SecretSpec>,
    methods: Option<Vec<String>>,
    events: Option<Vec<String>>,
    timeout: Option<u64>,
    max_body: Option<u64>,
    tasks_max: Option<u64>,
    respond: Option<String>,
    respond_timeout: Option<u64>,
    content_type: Option<String>,
    include_stderr: Option<bool>,
    exit_status: Option<BTreeMap<String, i64>>,
    journal: Option<bool>,
    allow_unauthenticated: Option<bool>,
    token_in_query: Option<bool>,
    publish: Option<bool>,
    publish_keep: Option<u64>,
    publish_max_bytes: Option<u64>,
    allow_from: Option<Vec<String>>,
    #[serde(rename = "match")]
    filter: Option<toml::Table>,
    env: Option<toml::Table>,
    env_required: Option<bool>,
    env_objects: Option<String>,
    stdin: Option<String>,
}

/// Most secrets one hook may list: each is one more HMAC of every body.
pub const MAX_SECRETS: usize = 8;

/// `secret = "NAME"` or, while a sender's secret is rotated, `secret = ["NEW", "OLD"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSpec {
    One(String),
    Many(Vec<String>),
}

impl SecretSpec {
    fn specs(&self) -> &[String] {
        match self {
            SecretSpec::One(one) => std::slice::from_ref(one),
            SecretSpec::Many(many) => many,
        }
    }
}

/// What a file looked like when it was read; `None` stands for a file that
/// was not there. Any change to its contents, its inode or its permissions
/// changes the stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of `path` now, or `None` if it cannot be looked at.
    pub fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// All hooks of a directory: the valid ones and the broken ones with their
/// problems, and what the files they were read from looked like.
#[derive(Debug, Default)]
pub struct Hooks {
    entries: BTreeMap<String, Result<Arc<Hook>, Problem>>,
    /// Problems not tied to one hook (an unreadable directory).
    pub general: Vec<Problem>,
    /// Files that were skipped because their names do not make a hook.
    pub skipped: Vec<PathBuf>,
    /// Where they were loaded from.
    dir: PathBuf,
    credentials: Option<PathBuf>,
    dir_stamp: Option<Stamp>,
    /// The files each hook was read from (its file, its secret), with their stamps.
    files: BTreeMap<String, Vec<(PathBuf, Option<Stamp>)>>,
}

impl Hooks {
    /// The hook called `name` with its name as stored, or the problem that broke it.
    pub fn get_entry(&self, name: &str) -> Option<(&str, &Result<Arc<Hook>, Problem>)> {
        self.entries
            .get_key_value(name)
            .map(|(name, hook)| (name.as_str(), hook))
    }

    /// Every hook, valid or not, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Result<Arc<Hook>, Problem>)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every problem, general ones first.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.general
            .iter()
            .chain(self.entries.values().filter_map(|e| e.as_ref().err()))
    }

    /// The problem that leaves no hook at all: the directory cannot be read.
    pub fn unavailable(&self) -> Option<&Problem> {
        self.general.first()
    }

    /// Whether the directory, or a file the hook `name` was read from, has
    /// changed since: then [`Hooks::reload`] sees what a new activation would.
    pub fn changed(&self, name: Option<&str>) -> bool {
        if Stamp::of(&self.dir) != self.dir_stamp {
            return true;
        }
        let files = name.and_then(|n| self.files.get(n));
        files.is_some_and(|files| files.iter().any(|(path, stamp)| Stamp::of(path) != *stamp))
    }

    /// The hooks as they are now, from the same directory.
    pub fn reload(&self) -> Hooks {
        load(&self.dir, self.credentials.as_deref())
    }

    /// Whether any hook authenticates with tokens (and so needs the server key).
    pub fn need_key(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e, Ok(h) if h.scheme == Scheme::Token))
    }
}

/// Whether `name` can name a hook: `[A-Za-z0-9_-][A-Za-z0-9._-]*`, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut chars = name.chars();
    name.len() <= MAX_NAME_BYTES && chars.next().is_some_and(ok) && chars.all(|c| ok(c) || c == '.')
}

/// Loads every `NAME.toml` in `dir`. `credentials` is `$CREDENTIALS_DIRECTORY`.
pub fn load(dir: &Path, credentials: Option<&Path>) -> Hooks {
    let mut hooks = Hooks {
        dir: dir.to_owned(),
        credentials: credentials.map(Path::to_owned),
        // Taken before the listing: a change while it is read shows next time.
        dir_stamp: Stamp::of(dir),
        ..Hooks::default()
    };
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) => {
            hooks.general.push(Problem {
                path: dir.to_owned(),
                message: format!(
                    "cannot read the hooks directory: {e}; create it or pass --hooks DIR"
                ),
            });
            return hooks;
        }
    };
    for entry in listing.flatten() {
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with('.') {
            continue;
        }
        match file_name.strip_suffix(".toml") {
            Some(name) if valid_name(name) => {
                let (hook, files) = load_hook(&path, name, credentials);
                hooks.entries.insert(name.to_owned(), hook.map(Arc::new));
                let stamped = files.into_iter().map(|f| {
                    let stamp = Stamp::of(&f);
                    (f, stamp)
                });
                hooks.files.insert(name.to_owned(), stamped.collect());
            }
            _ => hooks.skipped.push(path),
        }
    }
    hooks.skipped.sort();
    hooks
}

/// The hook in `path`, or its problem; and every file it was read from.
fn load_hook(
    path: &Path,
    name: &str,
    credentials: Option<&Path>,
) -> (Result<Hook, Problem>, Vec<PathBuf>) {
    let problem = |message: String| Problem {
        path: path.to_owned(),
        message,
    };
    let mut files = vec![path.to_owned()];
    let text = match read_small(path) {
        Ok(text) => text,
        Err(message) => return (Err(problem(message)), files),
    };
    let file: HookFile = match toml::from_str(&text) {
        Ok(file) => file,
        Err(e) => return (Err(problem(toml_problem(&text, &e))), files),
    };
    files.extend(
        file.secret
            .iter()
            .flat_map(SecretSpec::specs)
            .filter_map(|spec| secret_path(spec, credentials).ok()),
    );
    (build(file, name, credentials).map_err(problem), files)
}

fn build(file: HookFile, name: &str, credentials: Option<&Path>) -> Result<Hook, String> {
    if file.auth == Some(Scheme::Relay) {
        relay_only(&file)?;
    }
    let answer = answer(&file)?;
    let publish = publish(&file)?;
    let command = match (file.command, publish) {
        (Some(command), _) => {
            check_command(&command)?;
            command
        }
        (None, Some(_)) if answer.respond != Respond::BeforeRun => {
            return Err(
                "respond: a hook that only publishes runs nothing to answer after; remove respond or add a command".into(),
            );
        }
        (None, Some(_)) => Vec::new(),
        (None, None) => {
            return Err(
                "command: missing; give the program and its arguments, e.g. command = [\"/usr/bin/systemctl\", \"restart\", \"kodi.service\"], or publish = true to fan deliveries out to relay subscribers".into(),
            );
        }
    };
    let scheme = file.auth.ok_or(
        "auth: missing; choose token, github, gitea, forgejo, gitlab, bitbucket, standard-webhooks, stripe, slack, shopify, linear, sentry, discord, none or relay (see sockhook.toml(5))",
    )?;
    let secrets = match (scheme.needs_secret(), file.secret) {
        (true, None) => {
            return Err(format!(
                "secret: auth = \"{}\" needs secret = \"NAME\" (a systemd credential) or an absolute path",
                scheme.name()
            ));
        }
        (false, Some(_)) => {
            return Err(format!(
                "secret: not used by auth = \"{}\"; remove it (tokens derive from the server key)",
                scheme.name()
            ));
        }
        (true, Some(spec)) if spec.specs().iter().any(|s| looks_pasted(s)) => {
            return Err(format!(
                "secret: the value looks like the secret itself (not shown here); this key names where the secret is kept, a systemd credential or an absolute path, never the secret: put it in a root-only file, e.g. /etc/sockhook/{name}, add LoadCredential={name}:/etc/sockhook/{name} to sockhook.service (systemctl edit sockhook.service) and write secret = \"{name}\""
            ));
        }
        (true, Some(spec)) => load_secrets(spec.specs(), credentials, scheme)?,
        (false, None) => Vec::new(),
    };
    match (scheme, file.allow_unauthenticated) {
        (Scheme::None, Some(true)) => {}
        (Scheme::None, _) => {
            return Err("auth = \"none\" lets anyone who reaches the port run this command; if that is intended, add allow_unauthenticated = true".into());
        }
        (_, Some(_)) => {
            return Err(format!(
                "allow_unauthenticated: only applies to auth = \"none\", not \"{}\"; remove it",
                scheme.name()
            ));
        }
        (_, None) => {}
    }
    if file.token_in_query.is_some() && scheme != Scheme::Token {
        return Err(format!(
            "token_in_query: only applies to auth = \"token\", not \"{}\"; remove it",
            scheme.name()
        ));
    }
    let allow_from = allow_from(file.allow_from.as_deref())?;
    let payload_stdin = match file.stdin.as_deref() {
        None | Some("body") => false,
        Some("payload") => true,
        Some(other) => {
            return Err(format!(
                "stdin: {other:?} is not one of \"body\" (the default: the body as sent) or \"payload\" (the JSON, also out of a form's payload field)"
            ));
        }
    };
    let env = match &file.env {
        Some(table) => Some(EnvFields::from_toml(
            table,
            file.env_required,
            file.env_objects.as_deref(),
        )?),
        None if file.env_required.is_some() || file.env_objects.is_some() => {
            return Err(
                "env_required, env_objects: only apply with an [env] table; add one or remove them"
                    .into(),
            );
        }
        None => None,
    };
    let methods = file.methods.unwrap_or_else(|| vec!["POST".into()]);
    if methods.is_empty()
        || !methods
            .iter()
            .all(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err("methods: give a non-empty list of upper-case methods, e.g. [\"POST\"]".into());
    }
    let events = match (file.events, scheme.event_header()) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(format!(
                "events: auth = \"{}\" carries no event header; remove events or use a sender's scheme",
                scheme.name()
            ));
        }
        (Some(events), Some(_)) if events.is_empty() || events.iter().any(String::is_empty) => {
            return Err("events: give a non-empty list of event names, e.g. [\"push\"]".into());
        }
        (Some(events), Some(header)) => Some((events, header)),
    };
    let timeout = Duration::from_secs(within(
        "timeout",
        " s",
        file.timeout,
        DEFAULT_TIMEOUT.as_secs(),
        1..=MAX_TIMEOUT_SECS,
    )?);
    let max_body = within(
        "max_body",
        " bytes",
        file.max_body,
        DEFAULT_MAX_BODY_BYTES,
        0..=MAX_MAX_BODY_BYTES,
    )?;
    let tasks_max = within(
        "tasks_max",
        "",
        file.tasks_max,
        DEFAULT_TASKS_MAX,
        1..=MAX_TASKS_MAX,
    )?;
    Ok(Hook {
        name: name.to_owned(),
        tasks_max,
        answer,
        journal: file.journal.unwrap_or(true),
        command,
        scheme,
        secrets,
        methods,
        filters: Filters {
            events,
            payload: file.filter.as_ref().map(Match::from_toml).transpose()?,
            env,
            payload_stdin,
        },
        timeout,
        max_body,
        token_in_query: file.token_in_query.unwrap_or(false),
        publish,
        allow_from,
    })
}

/// The keys an `auth = "relay"` hook cannot use: `sockhook subscribe` runs
/// it for a message the relay already checked, filtered and answered.
fn relay_only(file: &HookFile) -> Result<(), String> {
    let unused = [
        ("methods", file.methods.is_some()),
        ("respond", file.respond.is_some()),
        ("respond_timeout", file.respond_timeout.is_some()),
        ("content_type", file.content_type.is_some()),
        ("include_stderr", file.include_stderr.is_some()),
        ("exit_status", file.exit_status.is_some()),
        ("match", file.filter.is_some()),
        ("publish", file.publish.is_some()),
        ("publish_keep", file.publish_keep.is_some()),
        ("publish_max_bytes", file.publish_max_bytes.is_some()),
        ("allow_from", file.allow_from.is_some()),
        ("stdin", file.stdin.is_some()),
    ];
    if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{key}: not used by auth = \"relay\" (the relay's hook answered and filtered the delivery); remove it"
        ));
    }
    if file.journal == Some(false) {
        return Err("journal: auth = \"relay\" needs the journal (sockhook subscribe resumes from it); remove journal = false".into());
    }
    Ok(())
}

/// `publish` and the keys that only mean something with it.
fn publish(file: &HookFile) -> Result<Option<Publish>, String> {
    if file.publish != Some(true) {
        for (key, set) in [
            ("publish_keep", file.publish_keep.is_some()),
            ("publish_max_bytes", file.publish_max_bytes.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{key}: only applies with publish = true; remove it or add publish = true"
                ));
            }
        }
        return Ok(None);
    }
    let keep = within(
        "publish_keep",
        " messages",
        file.publish_keep,
        DEFAULT_PUBLISH_KEEP,
        1..=MAX_PUBLISH_KEEP,
    )?;
    let max_bytes = within(
        "publish_max_bytes",
        " bytes",
        file.publish_max_bytes,
        DEFAULT_PUBLISH_MAX_BYTES,
        1..=MAX_PUBLISH_MAX_BYTES,
    )?;
    Ok(Some(Publish {
        keep: keep as usize,
        max_bytes,
    }))
}

/// Most blocks one hook's `allow_from` may list: each is compared with
/// every request's address.
pub const MAX_ALLOW_FROM: usize = 64;

/// `allow_from = ["192.168.0.0/16", "2001:db8::/32", "10.1.2.3"]`.
fn allow_from(list: Option<&[String]>) -> Result<Vec<Block>, String> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.is_empty() || list.len() > MAX_ALLOW_FROM {
        return Err(format!(
            "allow_from: give 1 to {MAX_ALLOW_FROM} addresses or ADDR/BITS blocks, e.g. [\"192.168.0.0/16\", \"::1\"], or remove the key to allow any address"
        ));
    }
    list.iter()
        .map(|text| text.parse().map_err(|e| format!("allow_from: {e}")))
        .collect()
}

/// `respond` and the keys that only mean something with it.
fn answer(file: &HookFile) -> Result<Answer, String> {
    let respond = match file.respond.as_deref() {
        None | Some("before-run") => Respond::BeforeRun,
        Some("after-run") => Respond::AfterRun,
        Some("stream") => Respond::Stream,
        Some(other) => {
            return Err(format!(
                "respond: {other:?} is not one of \"before-run\" (the default: 204, then the run), \"after-run\" (the run's outcome and output) or \"stream\" (its output as it comes)"
            ));
        }
    };
    if respond == Respond::BeforeRun {
        let set = [
            ("respond_timeout", file.respond_timeout.is_some()),
            ("content_type", file.content_type.is_some()),
            ("include_stderr", file.include_stderr.is_some()),
            ("exit_status", file.exit_status.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{key}: only applies with respond = \"after-run\" or \"stream\"; the answer (204) comes before the run"
            ));
        }
    }
    let timeout = Duration::from_secs(within(
        "respond_timeout",
        " s",
        file.respond_timeout,
        DEFAULT_RESPOND_TIMEOUT.as_secs(),
        1..=MAX_RESPOND_TIMEOUT_SECS,
    )?);
    let content_type = file
        .content_type
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
    let token = |c: char| c.is_ascii_graphic() || c == ' ';
    if content_type.is_empty() || content_type.len() > 200 || !content_type.chars().all(token) {
        return Err(
            "content_type: give a media type such as \"application/json\" (printable ASCII, at most 200 bytes)"
                .into(),
        );
    }
    let mut exit_status = BTreeMap::new();
    for (code, status) in file.exit_status.iter().flatten() {
        let code: i32 = code
            .parse()
            .ok()
            .filter(|c| (0..=255).contains(c))
            .ok_or_else(|| format!("exit_status: {code:?} is not an exit code (0 to 255)"))?;
        let status = u16::try_from(*status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| {
                format!("exit_status: {code} = {status} is not a status from 200 to 599")
            })?;
        exit_status.insert(code, status);
    }
    Ok(Answer {
        respond,
        timeout,
        content_type,
        include_stderr: file.include_stderr.unwrap_or(false),
        exit_status,
    })
}

/// `value` of `key`, or `default` when the file does not give it; a value
/// outside `range` is a problem that names both (`unit` follows the value).
fn within(
    key: &str,
    unit: &str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v),
        Some(v) => Err(format!(
            "{key}: {v}{unit} is outside {}..={}",
            range.start(),
            range.end()
        )),
    }
}

fn check_command(command: &[String]) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err("command: empty; give the program and its arguments".into());
    };
    if !program.starts_with('/') {
        return Err(format!(
            "command: {program:?} is not an absolute path; sockhook runs no shell and searches no PATH, so write e.g. /usr/bin/{program}"
        ));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(format!("command: argument {i} contains a NUL byte"));
    }
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(program) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("command: {program} is not an executable file")),
        Err(e) => Err(format!("command: {program}: {e}")),
    }
}

/// Where a `secret` value points: an absolute path, or a credential name.
pub fn secret_path(spec: &str, credentials: Option<&Path>) -> Result<PathBuf, String> {
    if spec.starts_with('/') {
        return Ok(PathBuf::from(spec));
    }
    let credential = !spec.is_empty()
        && spec != "."
        && spec != ".."
        && spec
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !credential {
        return Err(format!(
            "secret: {spec:?} is neither an absolute path nor a credential name ([A-Za-z0-9._-])"
        ));
    }
    match credentials {
        Some(dir) => Ok(dir.join(spec)),
        None => Err(format!(
            "secret: {spec:?} names a systemd credential, but {CREDENTIALS_DIRECTORY} is not set; add LoadCredential={spec}:/etc/sockhook/{spec} to the service, or give an absolute path"
        )),
    }
}

fn load_secrets(
    specs: &[String],
    credentials: Option<&Path>,
    scheme: Scheme,
) -> Result<Vec<Secret>, String> {
    if specs.is_empty() || specs.len() > MAX_SECRETS {
        return Err(format!(
            "secret: give 1 to {MAX_SECRETS} secrets (a list while one is rotated: [\"new\", \"old\"]), not {}",
            specs.len()
        ));
    }
    specs
        .iter()
        .map(|spec| load_secret(spec, credentials, scheme))
        .collect()
}

fn load_secret(spec: &str, credentials: Option<&Path>, scheme: Scheme) -> Result<Secret, String> {
    let path = secret_path(spec, credentials)?;
    let bytes = read_secret_file(&path).map_err(|problem| {
        format!("secret: {problem}; write the sender's secret there, readable by user sockhook, or pass it with LoadCredential=")
    })?;
    scheme
        .decode_secret(bytes)
        .map_err(|e| format!("secret: {}: {e}", path.display()))
}

/// Reads a key or secret file: its bytes without one trailing newline; never empty.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, Problem> {
    let problem = |message: String| Problem {
        path: path.to_owned(),
        message,
    };
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(problem("empty".into()));
    }
    if let Some(source) = bytes.strip_prefix(MISSING_CREDENTIAL.as_bytes()) {
        let source = String::from_utf8_lossy(source);
        return Err(problem(format!(
            "{MISSING_FILE} {source} for this credential (LoadCredential=) and passed the unit's SetCredential= placeholder; create it, and the next activation reads it"
        )));
    }
    Ok(bytes)
}

/// The key file to use: `--key`, else the systemd credential, else the default.
pub fn key_path(explicit: Option<&Path>, credentials: Option<&Path>) -> PathBuf {
    match (explicit, credentials) {
        (Some(path), _) => path.to_owned(),
        (None, Some(dir)) => dir.join(KEY_CREDENTIAL),
        (None, None) => PathBuf::from(DEFAULT_KEY_FILE),
    }
}

/// Loads the server key from `path`.
pub fn load_key(path: &Path) -> Result<Key, Problem> {
    let problem = |message: String| Problem {
        path: path.to_owned(),
        message,
    };
    let bytes = read_secret_file(path).map_err(|e| {
        if e.message.starts_with(MISSING_FILE) {
            return problem(format!("cannot use the server key: {}", e.message));
        }
        if path.exists() {
            // Never advise a new key when one exists: it would invalidate every token.
            let denied = fs::File::open(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            let advice = match denied {
                true => "; it is root-only: run this as root (the service gets a copy through LoadCredential=key:)",
                false => "",
            };
            return problem(format!("cannot use the server key: {}{advice}", e.message));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.map_or(String::new(), |d| format!("cd {} && ", d.display()));
        let name = path.file_name().map_or("key".into(), |n| n.to_string_lossy());
        problem(format!(
            "cannot use the server key: {}; create one, root-only: {dir}(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' >{name})",
            e.message
        ))
    })?;
    Key::new(bytes).map_err(|e| problem(e.to_string()))
}

/// The contents of a small file, as UTF-8.
fn read_small(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// A TOML error as one line: `line 3: unknown field `comand`, expected one of …`.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_str(text: &str) -> Result<Hook, String> {
        let file: HookFile = toml::from_str(text).map_err(|e| e.to_string())?;
        build(file, "t", Some(Path::new("/nonexistent-credentials")))
    }

    #[test]
    fn minimal_token_hook_gets_defaults() {
        let hook = build_str("command = [\"/bin/true\"]\nauth = \"token\"\n").unwrap();
        assert_eq!(hook.methods, ["POST"]);
        assert_eq!(hook.timeout, DEFAULT_TIMEOUT);
        assert_eq!(hook.max_body, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn relative_command_is_refused_with_a_fix() {
        let e = build_str("command = [\"sudo\"]\nauth = \"token\"\n").unwrap_err();
        assert!(
            e.contains("not an absolute path") && e.contains("/usr/bin/sudo"),
            "{e}"
        );
    }

    #[test]
    fn none_needs_the_explicit_opt_in() {
        let e = build_str("command = [\"/bin/true\"]\nauth = \"none\"\n").unwrap_err();
        assert!(e.contains("allow_unauthenticated = true"), "{e}");
        build_str("command = [\"/bin/true\"]\nauth = \"none\"\nallow_unauthenticated = true\n")
            .unwrap();
    }

    #[test]
    fn unknown_keys_and_schemes_are_refused() {
        assert!(build_str("command = [\"/bin/true\"]\nauth = \"token\"\ncomand = 1\n").is_err());
        assert!(build_str("command = [\"/bin/true\"]\nauth = \"tokn\"\n").is_err());
    }

    #[test]
    fn signature_schemes_need_a_secret() {
        let e = build_str("command = [\"/bin/true\"]\nauth = \"github\"\n").unwrap_err();
        assert!(e.contains("needs secret"), "{e}");
    }

    #[test]
    fn a_secret_may_be_a_short_list() {
        let dir = std::env::temp_dir().join(format!("sockhook-secrets-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("new"), "new-secret\n").unwrap();
        fs::write(dir.join("old"), "old-secret\n").unwrap();
        let hook = |secret: &str| {
            build_str(&format!(
                "command = [\"/bin/true\"]\nauth = \"github\"\nsecret = {secret}\n"
            ))
        };
        let both = hook(&format!("[{:?}, {:?}]", dir.join("new"), dir.join("old"))).unwrap();
        let bytes: Vec<&[u8]> = both.secrets.iter().map(Secret::expose).collect();
        assert_eq!(bytes, [&b"new-secret"[..], b"old-secret"]);
        assert_eq!(
            hook(&format!("{:?}", dir.join("new")))
                .unwrap()
                .secrets
                .len(),
            1
        );
        assert!(hook("[]").unwrap_err().contains("give 1 to 8"));
        let nine = vec![format!("{:?}", dir.join("new")); 9].join(", ");
        assert!(hook(&format!("[{nine}]")).unwrap_err().contains("not 9"));
        // One missing file breaks the hook: a typo must not leave only the old secret.
        let missing = hook(&format!("[{:?}, \"/nonexistent/old\"]", dir.join("new")));
        assert!(missing.unwrap_err().contains("/nonexistent/old"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_in_query_is_for_token_hooks_only() {
        let hook = |auth: &str| {
            build_str(&format!(
                "command = [\"/bin/true\"]\nauth = \"{auth}\"\ntoken_in_query = true\n"
            ))
        };
        assert!(hook("token").unwrap().token_in_query);
        let e = hook("none\"\nallow_unauthenticated = true\n#").unwrap_err();
        assert!(e.starts_with("token_in_query: only applies"), "{e}");
    }

    #[test]
    fn events_need_a_scheme_with_an_event_header() {
        let e = build_str("command = [\"/bin/true\"]\nauth = \"token\"\nevents = [\"push\"]\n")
            .unwrap_err();
        assert!(e.starts_with("events:"), "{e}");
    }

    #[test]
    fn a_hook_that_publishes_may_run_nothing() {
        let hook = build_str("auth = \"token\"\npublish = true\npublish_keep = 7\n").unwrap();
        assert!(hook.command.is_empty());
        assert_eq!(
            hook.publish,
            Some(Publish {
                keep: 7,
                max_bytes: DEFAULT_PUBLISH_MAX_BYTES
            })
        );
        let e = build_str("auth = \"token\"\npublish = true\npublish_keep = 0\n").unwrap_err();
        assert!(e.starts_with("publish_keep: 0 messages is outside"), "{e}");
        let e = build_str("auth = \"token\"\npublish = false\n").unwrap_err();
        assert!(e.starts_with("command: missing"), "{e}");
    }

    #[test]
    fn hook_keys_are_the_keys_hook_files_accept() {
        let e = toml::from_str::<HookFile>("nonsense = 1")
            .err()
            .unwrap()
            .to_string();
        let expected: Vec<String> = HOOK_KEYS.iter().map(|k| format!("`{k}`")).collect();
        assert!(e.contains(&expected.join(", ")), "{e}");
    }

    #[test]
    fn names_are_restricted() {
        for ok in ["a", "kodi-restart", "deploy_site.v2", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn credential_names_need_the_credentials_directory() {
        assert_eq!(
            secret_path("deploy", Some(Path::new("/run/credentials/x"))).unwrap(),
            Path::new("/run/credentials/x/deploy")
        );
        assert!(
            secret_path("deploy", None)
                .unwrap_err()
                .contains("LoadCredential=deploy:")
        );
        assert!(secret_path("../etc/shadow", Some(Path::new("/c"))).is_err());
        assert_eq!(secret_path("/etc/s", None).unwrap(), Path::new("/etc/s"));
    }
}
