//! A request's life, stage by stage: head → hook → pending check → body →
//! verdict → job. Each stage takes what the one before returned.
//!
//! The event loop ([`crate::reactor`]) reads the head, calls [`admit`] for
//! the stages that need no body (they are cheap, and most refusals happen
//! there), feeds the body to [`Admitted::push`] as it arrives, and hands the
//! complete request to a worker thread, which calls [`decide`] for the
//! verdict and the job (a MAC comparison, the replay file, the payload
//! filter: work that must not stall the loop). The loop then writes the
//! [`answer`], half-closes, drains, closes — and only then starts the job.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::act::{Job, Runner};
use crate::config::{self, Hook, Hooks, Problem, Stamp};
use crate::error::Refusal;
use crate::filter::Ignored;
use crate::form::{self, Carrier};
use crate::journal::{Journal, Recorder};
use crate::limits::{Budget, Reservation, Source};
use crate::log::{Clean, Level};
use crate::read::{Body, BodyDecoder, Framing, Head, Spool};
use crate::relay::{Meta, Store};
use crate::replay::Replay;
use crate::respond::Response;
use crate::route;
use crate::scheme::{Key, Scheme};
use crate::verify::{self, Pending};
use crate::{error, info};

/// What the stages before the body judge requests with; the event loop's own.
pub struct Config {
    /// The hooks.
    pub hooks: Hooks,
    /// The server key, or why there is none.
    pub key: Result<Key, Problem>,
    key_path: PathBuf,
    key_stamp: Option<Stamp>,
}

impl Config {
    /// Loads the hooks in `hooks_dir` and the key at `key_path`; logs every
    /// problem, each of which breaks only what it touches.
    pub fn load(hooks_dir: &Path, key_path: PathBuf, credentials: Option<&Path>) -> Config {
        let config = Config {
            hooks: config::load(hooks_dir, credentials),
            key_stamp: Stamp::of(&key_path),
            key: config::load_key(&key_path),
            key_path,
        };
        config.log_problems();
        config
    }

    fn log_problems(&self) {
        if let Some(problem) = self.hooks.unavailable() {
            error!("{problem}; every hook answers 500 until it can be read");
        }
        for problem in self.hooks.problems().skip(self.hooks.general.len()) {
            error!("{problem}; this hook answers 500");
        }
        if let (Err(problem), true) = (&self.key, self.hooks.need_key()) {
            error!("{problem}; token hooks answer 500");
        }
    }

    /// Brings the hooks and the key up to date if the directory, a file the
    /// hook `path` names was read from, or the key file has changed, so that
    /// fixing a file fixes the next request. A few `stat` calls otherwise.
    pub fn refresh(&mut self, path: &str) {
        let name = path.strip_prefix(config::HOOKS_PREFIX);
        let hooks = self.hooks.changed(name);
        let key = Stamp::of(&self.key_path) != self.key_stamp;
        if !hooks && !key {
            return;
        }
        if hooks {
            self.hooks = self.hooks.reload();
        }
        if key {
            self.key_stamp = Stamp::of(&self.key_path);
            self.key = config::load_key(&self.key_path);
        }
        let problems = self.hooks.problems().count();
        info!(
            "{} changed: reloaded {} hook(s), {problems} problem(s)",
            if hooks {
                "hook files"
            } else {
                "the server key"
            },
            self.hooks.iter().count()
        );
        self.log_problems();
    }
}

/// What the stages after the body need; shared with the workers.
pub struct Shared {
    /// Delivery ids already accepted.
    pub replay: Replay,
    /// Runs the commands.
    pub runner: Runner,
    /// Bytes spooled by requests not yet authenticated.
    pub budget: Arc<Budget>,
    /// Where accepted deliveries are kept; `None` without a state directory.
    pub journal: Option<Journal>,
    /// Where published deliveries are kept for the relay's subscribers;
    /// `None` without a state directory or when it cannot be made.
    pub relay: Option<Store>,
}

/// A request whose head passed: its hook, what is left to verify, and how
/// its body is read.
pub struct Admitted {
    hook: Arc<Hook>,
    pending: Pending,
    decoder: BodyDecoder,
    spool: Spool,
    /// Budget held while the body is not yet authenticated; grown as a
    /// chunked body arrives.
    reservation: Option<Reservation>,
    grow: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub send_continue: bool,
}

/// An authenticated request, as its hook's filters judged it.
pub enum Accepted {
    /// Run the command (and, if the hook publishes, published first).
    Run(Box<Job>),
    /// Stored for the relay's subscribers under this sequence number; the
    /// hook has no command.
    Published(u64),
    /// A filter said no: answered 200, nothing runs.
    Ignored(Ignored),
}

/// Head → hook → pending check: every stage that needs no body. Returns the
/// name of the hook the path names, for the log, whatever the outcome.
///
/// `buffered` says whether bytes of the body came with the head.
pub fn admit(
    config: &Config,
    shared: &Shared,
    head: &Head,
    client: Option<IpAddr>,
    source: Source,
    buffered: bool,
) -> (Option<String>, Result<Admitted, Refusal>) {
    let found = route::lookup(&config.hooks, &head.path);
    let name = found.name().map(str::to_owned);
    (
        name,
        admit_found(found, shared, config, head, (client, source), buffered),
    )
}

fn admit_found(
    found: route::Lookup<'_>,
    shared: &Shared,
    config: &Config,
    head: &Head,
    (client, source): (Option<IpAddr>, Source),
    buffered: bool,
) -> Result<Admitted, Refusal> {
    let hook = route::accept(found, &head.method)?;
    allowed(&hook, client)?;
    let decoder = BodyDecoder::new(head.framing, hook.max_body)?;
    let pending = verify::before_body(&hook, head, config.key.as_ref())?;
    hook.filters.content_type(head)?;
    // A body that must be read before its sender is known counts against the
    // budget: all of it at once when its length is announced.
    let (reservation, grow) = match (&pending, head.framing) {
        (Pending::Body(_), Framing::Length(len)) => (Some(reserve(shared, source, len)?), false),
        (Pending::Body(_), Framing::Chunked) => (Some(reserve(shared, source, 0)?), true),
        _ => (None, false),
    };
    Ok(Admitted {
        spool: Spool::new(head.framing)?,
        send_continue: head.expect_continue && !buffered,
        hook,
        pending,
        decoder,
        reservation,
        grow,
    })
}

/// Whether `client` may call `hook` (its `allow_from`): decided on the
/// head, so that a refused client's body is never read, spooled or counted.
fn allowed(hook: &Hook, client: Option<IpAddr>) -> Result<(), Refusal> {
    if hook.allow_from.is_empty() {
        return Ok(());
    }
    match client {
        Some(ip) if hook.allow_from.iter().any(|block| block.holds(ip)) => Ok(()),
        _ => Err(Refusal::NotAllowedFrom(client.map(|ip| ip.to_canonical()))),
    }
}

fn reserve(shared: &Shared, source: Source, bytes: u64) -> Result<Reservation, Refusal> {
    shared
        .budget
        .reserve(source, bytes)
        .ok_or(Refusal::Busy("too many unauthenticated bodies in progress"))
}

impl Admitted {
    /// Body: decodes bytes that arrived, into the MAC and the spool; returns
    /// how many belong to the request.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let Admitted {
            pending,
            spool,
            reservation,
            grow,
            ..
        } = self;
        self.decoder.push(bytes, &mut |piece| {
            if let Some(reservation) = reservation.as_mut().filter(|_| *grow)
                && !reservation.grow(piece.len() as u64)
            {
                return Err(Refusal::Busy("too many unauthenticated bodies in progress"));
            }
            pending.update(piece);
            spool.write(piece)
        })
    }

    /// Whether the whole body is in.
    pub fn is_complete(&self) -> bool {
        self.decoder.is_done()
    }

    /// Whether the verdict is cheap enough for the event loop's own thread:
    /// a body of at most [`QUICK_BODY_BYTES`] and no synced write, to the
    /// journal or to the relay's store. A worker costs a thread hop each
    /// way, two context switches that for a small request take longer than
    /// the verdict itself.
    pub fn is_quick(&self, shared: &Shared) -> bool {
        self.spool.written() <= QUICK_BODY_BYTES
            && !(shared.journal.is_some() && self.hook.journal)
            && self.hook.publish.is_none()
    }
}

/// Largest body whose verdict the event loop gives itself (see
/// [`Admitted::is_quick`]): its MAC is already computed, and a payload
/// filter or an Ed25519 check over it takes well under a millisecond.
pub const QUICK_BODY_BYTES: u64 = 64 * 1024;

/// Verdict → job: the stages after the body.
pub fn decide(
    shared: &Shared,
    head: &Head,
    client: Option<IpAddr>,
    admitted: Admitted,
) -> Result<Accepted, Refusal> {
    let Admitted {
        hook,
        pending,
        spool,
        reservation,
        ..
    } = admitted;
    let body = spool.finish()?;
    let verified = pending.finish(|| body.map())?;
    if hook.scheme == Scheme::Linear {
        verify::linear_timestamp(&body.map()?)?;
    }
    // Authenticated: the body no longer counts against the budget.
    drop(reservation);
    for (what, id) in &verified.replay_ids {
        shared
            .replay
            .admit(&hook.name, what, id, verify::unix_now())?;
    }
    // Svix's and Bitbucket Data Center's header names under the names
    // `events` and SOCKHOOK_DELIVERY read, and no query token.
    let canonical = verify::canonical_head(&hook, head);
    let head = canonical.as_ref().unwrap_or(head);
    if let Err(why) = hook.filters.event(head) {
        return Ok(Accepted::Ignored(why));
    }
    // A form's JSON, out of its payload field or part, spooled as the body is.
    let payload = form_payload(&hook, head, &body)?;
    let json = payload.as_ref().unwrap_or(&body);
    if let Some(rules) = &hook.filters.payload
        && let Err(why) = rules.check(&json.map()?)
    {
        return Ok(Accepted::Ignored(why));
    }
    let fields = match &hook.filters.env {
        Some(env) => env
            .extract(&json.map()?)
            .map_err(|why| Refusal::Unprocessable(format!("cannot set the hook's [env]: {why}")))?,
        None => Vec::new(),
    };
    // Relay store → journal: a delivery refused for want of the relay's
    // store is neither published nor run. The body as the sender sent it.
    if hook.publish.is_some() {
        let seq = publish(shared, &hook, head, &body.map()?)?;
        if hook.command.is_empty() {
            return Ok(Accepted::Published(seq));
        }
    }
    let body = match payload {
        Some(payload) if hook.filters.payload_stdin => payload,
        _ => body,
    };
    let ticket = shared.runner.ticket();
    let mut job = Job::new(hook, head, client, body, ticket);
    job.set_fields(fields);
    // Journal → job: on disk before the answer says yes.
    if let Some(journal) = shared.journal.as_ref().filter(|_| job.hook().journal) {
        let user_agent = head.header("user-agent").unwrap_or_default();
        let pending = journal.record(&job, user_agent, None)?;
        job.watch(Box::new(Recorder::new(pending)));
    }
    Ok(Accepted::Run(Box::new(job)))
}

/// Stores a delivery of a publishing hook for the relay; its sequence number.
fn publish(shared: &Shared, hook: &Hook, head: &Head, body: &[u8]) -> Result<u64, Refusal> {
    let Some(store) = &shared.relay else {
        return Err(Refusal::NotStored(std::io::Error::other(
            "no relay store (no StateDirectory= or --state, or it cannot be written)",
        )));
    };
    let field = |name: Option<&str>| {
        name.and_then(|n| head.header(n))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let meta = Meta {
        event: field(hook.scheme.event_header()),
        delivery: field(hook.scheme.delivery_header()),
        content_type: field(Some("content-type")),
    };
    store.publish(hook, &meta, body)
}

/// The JSON payload of a form delivery, when the hook reads it; `None` for
/// a JSON body, which is its own payload.
fn form_payload(hook: &Hook, head: &Head, body: &Body) -> Result<Option<Body>, Refusal> {
    if !hook.filters.reads_payload() {
        return Ok(None);
    }
    let carrier = Carrier::of(head.header("content-type"))?;
    if !matches!(carrier, Some(Carrier::Form | Carrier::Multipart(_))) {
        return Ok(None);
    }
    let whole = body.map()?;
    let mut spool = Spool::new(Framing::Chunked)?;
    match carrier {
        Some(Carrier::Multipart(boundary)) => {
            spool.write(form::multipart_payload(&whole, &boundary)?)?;
        }
        _ => form::form_payload(&whole, &mut |piece| spool.write(piece))?,
    }
    spool.finish().map(Some)
}

/// The response to an outcome, with the level and the words of its log line.
pub fn answer(outcome: &Result<Accepted, Refusal>) -> (Response, Level, String) {
    match outcome {
        Ok(Accepted::Run(_)) => (Response::accepted(), Level::Info, "accepted".to_owned()),
        Ok(Accepted::Published(seq)) => (
            Response::accepted(),
            Level::Info,
            format!("accepted: published as {seq}"),
        ),
        Ok(Accepted::Ignored(why)) => (
            Response::ok(&format!("ignored: {why}")),
            Level::Info,
            format!("ignored: {why}"),
        ),
        Err(refusal) => {
            let level = match refusal {
                r if r.is_server_fault() => Level::Error,
                _ => Level::Warning,
            };
            (Response::refusal(refusal), level, refusal.to_string())
        }
    }
}

/// `METHOD PATH` for the log, with `?...` standing for a query's values.
pub fn request_line(method: &[u8], target: &[u8]) -> String {
    let path_end = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let query = if path_end < target.len() { "?..." } else { "" };
    format!(
        "{} {}{query}",
        Clean::peer(method),
        Clean::peer(&target[..path_end])
    )
}

/// The request line of a parsed head, for the log.
pub fn head_line(head: &Head) -> String {
    let mut line = request_line(head.method.as_bytes(), head.path.as_bytes());
    if head.query.is_some() {
        line.push_str("?...");
    }
    line
}
