//! Stage 3: find the hook a request is for.

use std::sync::Arc;

use crate::config::{HOOKS_PREFIX, Hook, Hooks, Problem, valid_name};
use crate::error::Refusal;

/// A hook file found for a path: its name, and the hook or what broke it.
pub type Entry<'h> = (&'h str, &'h Result<Arc<Hook>, Problem>);

/// The hook file that `path` names, if any.
///
/// Matching is exact and on the raw path: no percent-decoding, no dot
/// segments, no trailing slash, so that a path names at most one hook.
pub fn lookup<'h>(hooks: &'h Hooks, path: &str) -> Option<Entry<'h>> {
    let name = path
        .strip_prefix(HOOKS_PREFIX)
        .filter(|name| valid_name(name))?;
    hooks.get_entry(name)
}

/// The hook of `entry` if it is valid and accepts `method`.
pub fn accept(entry: Option<Entry<'_>>, method: &str) -> Result<Arc<Hook>, Refusal> {
    let hook = match entry {
        None => return Err(Refusal::NotFound),
        Some((_, Err(problem))) => return Err(Refusal::HookBroken(problem.clone())),
        Some((_, Ok(hook))) => hook,
    };
    if !hook.methods.iter().any(|m| m == method) {
        return Err(Refusal::MethodNotAllowed {
            allow: hook.methods.join(", "),
        });
    }
    Ok(Arc::clone(hook))
}
