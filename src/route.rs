//! Stage 3: find the hook a request is for.

use std::sync::Arc;

use crate::config::{HOOKS_PREFIX, Hook, Hooks, valid_name};
use crate::error::Error;

/// The hook served at `path` if it accepts `method`.
///
/// Matching is exact and on the raw path: no percent-decoding, no dot
/// segments, no trailing slash, so that a path names at most one hook.
pub fn route(hooks: &Hooks, path: &str, method: &str) -> Result<Arc<Hook>, Error> {
    let name = hook_name(path).ok_or(Error::NotFound)?;
    let hook = match hooks.get(name) {
        None => return Err(Error::NotFound),
        Some(Err(problem)) => {
            return Err(Error::HookBroken {
                reason: problem.message.clone(),
            });
        }
        Some(Ok(hook)) => hook,
    };
    if !hook.methods.iter().any(|m| m == method) {
        return Err(Error::MethodNotAllowed {
            allow: hook.methods.join(", "),
        });
    }
    Ok(Arc::clone(hook))
}

/// The hook name a path asks for, if it has the form `/hooks/NAME`.
pub fn hook_name(path: &str) -> Option<&str> {
    path.strip_prefix(HOOKS_PREFIX)
        .filter(|name| valid_name(name))
}
