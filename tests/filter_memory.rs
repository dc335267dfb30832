//! The `[match]` filter's heap stays small whatever the body: measured with a
//! counting allocator, in a test binary of its own so that no other test's
//! allocations are counted.
//!
//! The body itself is a mapping of the spooled memory file in the server, so
//! what counts is what the filter allocates on top of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sockhook::internals::Match;

/// Counts the bytes allocated now and the most allocated at once.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BIG: usize = 20 << 20;
/// What the filter may allocate above what it held before, for any body.
const BOUND: usize = 256 << 10;

/// `head`, then `unit` repeated to about `BIG` bytes, then `tail`.
fn body(head: &str, unit: &str, tail: &str) -> Vec<u8> {
    let mut body = head.as_bytes().to_vec();
    while body.len() < BIG {
        body.extend_from_slice(unit.as_bytes());
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The verdict on `body`, and the most the check allocated at once.
fn measured(rules: &Match, body: &[u8]) -> (Result<(), String>, usize) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let verdict = rules.check(body).map_err(|e| e.to_string());
    (verdict, PEAK.load(Ordering::Relaxed) - before)
}

#[test]
fn twenty_mebibyte_bodies_cost_the_filter_little_heap() {
    let table: toml::Table = "ref = \"refs/heads/main\"\nrepository.full_name = \"a/b\""
        .parse()
        .unwrap();
    let rules = Match::from_toml(&table).unwrap();
    let cases = [
        (
            "a long array no rule looks into",
            body(
                r#"{"repository":{"full_name":"a/b"},"commits":["#,
                r#"{"id":"0123456789abcdef","added":["a","b"],"n":[1,2.5,null,true]},"#,
                r#"0],"ref":"refs/heads/main"}"#,
            ),
            Ok(()),
        ),
        (
            "a long escaped string beside a rule",
            body(
                r#"{"repository":{"full_name":"a/b","blob":""#,
                r#"0123456789abcdef\n\""#,
                r#""},"ref":"refs/heads/main"}"#,
            ),
            Ok(()),
        ),
        // Regression test: this one cost ~32 MiB when the value was decoded whole.
        (
            "a long escaped string at a rule's path",
            body(
                r#"{"ref":""#,
                r#"\u0061\n"#,
                r#"","repository":{"full_name":"a/b"}}"#,
            ),
            Err(format!(
                r#"ref is "{}...", not "refs/heads/main""#,
                r"a\x0a".repeat(50)
            )),
        ),
        (
            "a long string where a rule looks inside",
            body(
                r#"{"ref":"refs/heads/main","repository":""#,
                r#"\u0062"#,
                r#""}"#,
            ),
            Err(format!(
                r#"repository.full_name is missing: repository is "{}...", not an object"#,
                "b".repeat(100)
            )),
        ),
        (
            "nesting deeper than the limit",
            body(r#"{"x":"#, "[", ""),
            Err("body nests arrays and objects deeper than 128 levels".into()),
        ),
        (
            "a long key in an object the rules look into",
            body(r#"{""#, "k", r#"":1}"#),
            Err("body has an object key longer than 4096 bytes".into()),
        ),
    ];
    for (what, body, expected) in cases {
        let (verdict, grown) = measured(&rules, &body);
        assert_eq!(verdict, expected, "{what}");
        assert!(
            grown < BOUND,
            "{what}: the filter allocated {grown} bytes at once for a {} byte body",
            body.len()
        );
        println!("{what}: {grown} bytes of heap at most");
    }
}
