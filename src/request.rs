//! A request's life, top to bottom: head → hook → pending check → body →
//! verdict → job. Each stage takes what the one before returned; [`serve`]
//! answers with the outcome, closes the connection cleanly, and only then
//! hands an accepted job to the runner.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::act::{Job, Runner};
use crate::config::{Hooks, Problem};
use crate::error::{Lost, RequestError};
use crate::filter::Ignored;
use crate::listen::Stream;
use crate::log::{self, Clean, Last, Level};
use crate::read::{Head, Reader};
use crate::replay::Replay;
use crate::respond::{Connection, Response};
use crate::scheme::Key;
use crate::verify;
use crate::{info, route, warning};

/// What every request of one activation is served with.
pub struct Context {
    /// The hooks, loaded at start-up.
    pub hooks: Hooks,
    /// Delivery ids already accepted.
    pub replay: Replay,
    /// The server key, or why there is none.
    pub key: Result<Key, Problem>,
    /// Time a client has for its whole request.
    pub request_timeout: Duration,
    /// Runs the commands.
    pub runner: Runner,
}

/// An authenticated request, as its hook's filters judged it.
enum Accepted {
    /// Run the command.
    Run(Job),
    /// A filter said no: answered 200, nothing runs.
    Ignored(Ignored),
}

/// Serves one connection: one request, its answer and a clean close, then its job.
pub fn serve(stream: Stream, context: &Context) {
    let peer = stream.peer_addr();
    let mut connection = Connection::new(stream);
    let mut reader = Reader::new(Instant::now() + context.request_timeout);
    let head = match reader.read_head(connection.stream()) {
        Ok(head) => head,
        Err(e) => {
            // Refused before the head was whole: log what was asked, if that much came.
            let line = reader
                .request_line()
                .map(|(method, target)| request_line(method, target));
            answer(connection, peer, line, None, Err(e));
            return;
        }
    };
    let mut line = request_line(head.method.as_bytes(), head.path.as_bytes());
    if head.query.is_some() {
        line.push_str("?...");
    }
    let entry = route::lookup(&context.hooks, &head.path);
    let name = entry.map(|(name, _)| name.to_owned());
    let accepted = after_head(&mut connection, &mut reader, &head, entry, context, peer);
    if let Some(job) = answer(connection, peer, Some(line), name, accepted) {
        context.runner.trigger(job);
    }
}

/// Every stage after the head, each on what the one before returned.
fn after_head(
    connection: &mut Connection,
    reader: &mut Reader,
    head: &Head,
    entry: Option<route::Entry<'_>>,
    context: &Context,
    peer: Option<SocketAddr>,
) -> Result<Accepted, RequestError> {
    let hook = route::accept(entry, &head.method)?;
    head.framing.check(hook.max_body)?;
    let mut pending = verify::before_body(&hook, head, context.key.as_ref())?;
    hook.filters.content_type(head)?;
    if head.expect_continue && !reader.has_buffered() {
        connection.send_continue().map_err(Lost::Io)?;
    }
    let body = reader.spool(
        connection.stream(),
        head.framing,
        hook.max_body,
        &mut |piece| pending.update(piece),
    )?;
    let verified = pending.finish()?;
    if let Some(id) = &verified.replay_id {
        context.replay.admit(&hook.name, id, verify::unix_now())?;
    }
    if let Err(why) = hook.filters.event(head) {
        return Ok(Accepted::Ignored(why));
    }
    if let Some(rules) = &hook.filters.payload
        && let Err(why) = rules.check(&body.map()?)
    {
        return Ok(Accepted::Ignored(why));
    }
    let ticket = context.runner.ticket();
    Ok(Accepted::Run(Job::new(hook, head, peer, body, ticket)))
}

/// Answers, logs one line, closes; returns the job to run, if one was accepted.
fn answer(
    mut connection: Connection,
    peer: Option<SocketAddr>,
    line: Option<String>,
    hook: Option<String>,
    outcome: Result<Accepted, RequestError>,
) -> Option<Job> {
    let peer = peer.map_or_else(|| "unix".to_owned(), |a| a.to_string());
    let (response, level, note) = match &outcome {
        Ok(Accepted::Run(_)) => (Response::accepted(), Level::Info, "accepted".to_owned()),
        Ok(Accepted::Ignored(why)) => (
            Response::ok(&format!("ignored: {why}")),
            Level::Info,
            format!("ignored: {why}"),
        ),
        Err(RequestError::Lost(Lost::Closed)) if line.is_none() => {
            info!("{peer}: closed without sending a request");
            return None;
        }
        Err(RequestError::Lost(lost)) => {
            let line = line.as_deref().unwrap_or("-");
            warning!("{peer} {line}: no response: {lost}");
            return None;
        }
        Err(RequestError::Refused(refusal)) if refusal.is_server_fault() => (
            Response::refusal(refusal),
            Level::Error,
            refusal.to_string(),
        ),
        Err(RequestError::Refused(refusal)) => (
            Response::refusal(refusal),
            Level::Warning,
            refusal.to_string(),
        ),
    };
    let delivered = match connection.respond(&response) {
        Ok(()) => String::new(),
        Err(e) => format!(" (response not delivered: {e})"),
    };
    let line = line.as_deref().unwrap_or("- -");
    let hook = hook.map_or_else(String::new, |name| format!(" hook {name}"));
    let status = response.status;
    log::line(
        level,
        format_args!("{peer} {line} {status}{hook}: {note}{delivered}"),
    );
    log::status(Last::Request, format_args!("{line} {status}{hook}: {note}"));
    connection.close();
    match outcome {
        Ok(Accepted::Run(job)) => Some(job),
        _ => None,
    }
}

/// `METHOD PATH` for the log, with `?...` standing for a query's values.
fn request_line(method: &[u8], target: &[u8]) -> String {
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
