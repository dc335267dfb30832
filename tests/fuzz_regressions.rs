//! Saved fuzz inputs, replayed through the very code their fuzz target runs
//! (`fuzz/src/lib.rs`): the seed corpora under `fuzz/seeds/<target>/` and the
//! minimised crashing inputs under `tests/fuzz_regressions/<target>/`, each
//! named after the bug it found. None may panic.

#[path = "../fuzz/src/lib.rs"]
mod drivers;

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

/// Runs `target` on every saved input; fails naming each input that panics.
fn replay(name: &str, target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for dir in ["fuzz/seeds", "tests/fuzz_regressions"] {
        let Ok(listing) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        inputs.extend(listing.map(|entry| entry.unwrap().path()));
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no saved inputs for {name}");
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "panicked on: {failed:#?}");
}

#[test]
fn parse_request() {
    replay("parse_request", drivers::parse_request);
}

#[test]
fn chunked() {
    replay("chunked", drivers::chunked);
}

#[test]
fn read_split() {
    replay("read_split", drivers::read_split);
}

#[test]
fn payloads() {
    replay("payloads", drivers::payloads);
}

#[test]
fn payload_filter() {
    replay("payload_filter", drivers::payload_filter);
}

#[test]
fn signature_headers() {
    replay("signature_headers", drivers::signature_headers);
}

#[test]
fn token() {
    replay("token", drivers::token);
}

#[test]
fn standard_webhooks_secret() {
    replay(
        "standard_webhooks_secret",
        drivers::standard_webhooks_secret,
    );
}
