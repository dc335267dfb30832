//! Stage 3: find the hook a request is for.

use std::sync::Arc;

use crate::config::{HOOKS_PREFIX, Hook, Hooks, Problem, valid_name};
use crate::error::Refusal;
use crate::scheme::Scheme;

/// What a path names.
pub enum Lookup<'h> {
    /// A hook file: its name, and the hook or what broke it.
    Hook(&'h str, &'h Result<Arc<Hook>, Problem>),
    /// A hook, but the hooks directory cannot be read: every hook is broken.
    NoDirectory(&'h Problem),
    /// Nothing sockhook serves.
    Nothing,
}

impl Lookup<'_> {
    /// The name of the hook file found, for the log.
    pub fn name(&self) -> Option<&str> {
        match self {
            Lookup::Hook(name, _) => Some(name),
            Lookup::NoDirectory(_) | Lookup::Nothing => None,
        }
    }
}

/// What `path` names.
///
/// Matching is exact and on the raw path: no percent-decoding, no dot
/// segments, no trailing slash, so that a path names at most one hook.
pub fn lookup<'h>(hooks: &'h Hooks, path: &str) -> Lookup<'h> {
    let Some(name) = path
        .strip_prefix(HOOKS_PREFIX)
        .filter(|name| valid_name(name))
    else {
        return Lookup::Nothing;
    };
    match (hooks.get_entry(name), hooks.unavailable()) {
        (Some((name, hook)), _) => Lookup::Hook(name, hook),
        (None, Some(problem)) => Lookup::NoDirectory(problem),
        (None, None) => Lookup::Nothing,
    }
}

/// The hook found if it is valid and accepts `method`.
pub fn accept(found: Lookup<'_>, method: &str) -> Result<Arc<Hook>, Refusal> {
    let hook = match found {
        Lookup::Nothing => return Err(Refusal::NotFound),
        Lookup::NoDirectory(problem) | Lookup::Hook(_, Err(problem)) => {
            return Err(Refusal::HookBroken(problem.clone()));
        }
        // Run only by `sockhook subscribe`: over HTTP it is not there at
        // all, as a path no hook serves (a 403 would confirm the name).
        Lookup::Hook(_, Ok(hook)) if hook.scheme == Scheme::Relay => {
            return Err(Refusal::NotFound);
        }
        Lookup::Hook(_, Ok(hook)) => hook,
    };
    if !hook.methods.iter().any(|m| m == method) {
        return Err(Refusal::MethodNotAllowed {
            allow: hook.methods.join(", "),
        });
    }
    Ok(Arc::clone(hook))
}
