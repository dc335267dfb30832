//! Payload filters: a hook's `match` table, checked against the JSON body.
//!
//! ```toml
//! [match]
//! ref = "refs/heads/main"
//! repository.full_name = "example/site"
//! ```
//!
//! Each key of the table is a path: object keys separated by dots, from the
//! top-level object down, so `repository.full_name` is the `full_name` key of
//! the object under the top-level key `repository`. The command runs only if
//! every rule holds. Otherwise the request is answered 2xx, like an event that
//! `events` filters out, nothing runs, and the log line names the first rule
//! that failed (in the order of their paths), e.g.
//! `ref is "refs/heads/dev", not "refs/heads/main"` or
//! `repository.full_name is missing`.
//!
//! - A string matches a JSON string with exactly the same characters, after
//!   JSON escapes are decoded (`"refs\/heads\/main"` matches); no patterns, no
//!   case folding.
//! - An integer matches a JSON integer of the same value; `1.0`, `1e0` and `"1"`
//!   do not match `1`.
//! - `true` and `false` match the JSON booleans.
//! - Nothing else can be a rule: floats, dates and arrays are configuration
//!   errors, and `null` cannot be asked for.
//! - A path fails if it is absent, or if it leads through something that is not
//!   an object (an array, a string, `null`): there is no array indexing. A key
//!   that itself contains a dot cannot be addressed.
//! - TOML's own dotted keys and subtables spell the same paths as a quoted key:
//!   `repository.full_name = …`, `"repository.full_name" = …` and a
//!   `[match.repository]` table holding `full_name = …` are the same rule. A
//!   path given twice, or a path inside another rule's path (`a` and `a.b`), is
//!   an error.
//! - At most 16 rules, each at most 8 keys deep; no key is empty (`a..b`).
//!
//! The body must be a single JSON object (RFC 8259); anything else fails the
//! filter. So does a body in which a key on a rule's path appears twice in the
//! same object: RFC 8259 leaves duplicate names undefined, and parsers disagree
//! on whether the first or the last one counts, so a sender could otherwise
//! show the filter one value and the command another. Duplicates elsewhere in
//! the body are not looked at.
//!
//! The body is read as a stream and never held whole: only the keys and values
//! on the rules' paths are decoded, everything else is skipped as it goes by.
//! To keep that true for any input, nesting deeper than 128 arrays and objects
//! fails the filter, and so does an object key longer than 4096 bytes (as
//! written, escapes included) in the levels the rules look into (down to one
//! below the deepest rule). A string value at a rule's path is held whole while
//! it is compared; its size is bounded only by the hook's `max_body`, and the
//! filter only sees bodies whose senders are already authenticated.

use std::fmt;
use std::io::{self, BufReader, Read};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::log::Clean;

/// Most rules in one `match` table.
pub const MAX_RULES: usize = 16;
/// Most object keys in one rule's path.
pub const MAX_SEGMENTS: usize = 8;
/// Deepest nesting of arrays and objects in a body, skipped parts included.
pub const MAX_DEPTH: usize = 128;
/// Longest object key in a body, in bytes as written, in the levels the rules look into.
pub const MAX_KEY_BYTES: usize = 4096;

/// A hook's `match` table: each dotted path (`ref`, `repository.full_name`) must hold the given value.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// INVARIANT: 1..=MAX_RULES rules, sorted by path, no path equal to or
    /// inside another.
    rules: Vec<Rule>,
    /// The rules' paths as a tree; each leaf is an index into `rules`.
    root: Node,
    /// The most segments in any rule's path.
    depth: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    path: String,
    want: Want,
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// The dotted path to here; empty for the top-level object.
    path: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Leaf(usize),
    /// INVARIANT: at most MAX_RULES children (a `u32` bit set covers them).
    Branch(Vec<(String, Node)>),
}

impl Match {
    /// Builds it from the hook file's table; Err(message) for invalid paths (empty segment, more than 8 segments, more than 16 rules) or values that are not string/integer/bool.
    pub fn from_toml(table: &toml::Table) -> Result<Match, String> {
        let mut rules = Vec::new();
        flatten(table, "", &mut rules)?;
        if rules.is_empty() {
            return Err(
                "match: empty; give rules such as ref = \"refs/heads/main\", or remove it".into(),
            );
        }
        if rules.len() > MAX_RULES {
            return Err(format!("match: {} rules, at most {MAX_RULES}", rules.len()));
        }
        rules.sort_by(|a, b| a.path.cmp(&b.path));
        let mut root = Node {
            path: String::new(),
            kind: Kind::Branch(Vec::new()),
        };
        for (i, rule) in rules.iter().enumerate() {
            insert(&mut root, &rule.path, i)?;
        }
        let depth = rules
            .iter()
            .map(|r| r.path.split('.').count())
            .max()
            .unwrap_or(0);
        Ok(Match { rules, root, depth })
    }
}

fn flatten(table: &toml::Table, prefix: &str, rules: &mut Vec<Rule>) -> Result<(), String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let segments = path.split('.');
        if segments.clone().any(str::is_empty) {
            return Err(format!(
                "match: {path:?} has an empty key; write paths like ref or repository.full_name"
            ));
        }
        if segments.clone().any(|s| s.len() > MAX_KEY_BYTES) {
            return Err(format!(
                "match: {path:?} has a key longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        if segments.count() > MAX_SEGMENTS {
            return Err(format!(
                "match: {path:?} is more than {MAX_SEGMENTS} keys deep"
            ));
        }
        let want = match value {
            toml::Value::String(s) => Want::Str(s.clone()),
            toml::Value::Integer(n) => Want::Int(*n),
            toml::Value::Boolean(b) => Want::Bool(*b),
            toml::Value::Table(inner) if inner.is_empty() => {
                return Err(format!("match: {path:?} is an empty table"));
            }
            toml::Value::Table(inner) => {
                flatten(inner, &path, rules)?;
                continue;
            }
            other => {
                return Err(format!(
                    "match: {path:?} is a{} {}; give a string, an integer or a boolean",
                    if other.type_str().starts_with('a') {
                        "n"
                    } else {
                        ""
                    },
                    other.type_str()
                ));
            }
        };
        rules.push(Rule { path, want });
    }
    Ok(())
}

fn insert(root: &mut Node, path: &str, rule: usize) -> Result<(), String> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut node = root;
    for (depth, segment) in segments.iter().enumerate() {
        let Kind::Branch(children) = &mut node.kind else {
            return Err(format!(
                "match: {:?} must hold a value, but {path:?} looks inside it; no body can match both",
                node.path
            ));
        };
        let last = depth + 1 == segments.len();
        let index = match children.iter().position(|(key, _)| key == segment) {
            Some(_) if last => {
                return Err(format!(
                    "match: {path:?} is given twice (a quoted dotted key and a table spell the same path)"
                ));
            }
            Some(index) => index,
            None => {
                let kind = if last {
                    Kind::Leaf(rule)
                } else {
                    Kind::Branch(Vec::new())
                };
                let path = segments[..=depth].join(".");
                children.push(((*segment).to_owned(), Node { path, kind }));
                children.len() - 1
            }
        };
        node = &mut children[index].1;
    }
    Ok(())
}

/// Ok(()) if every rule holds for the JSON `body`; Err(reason) otherwise, where reason is one short line a user can act on, e.g. `ref is "refs/heads/dev", not "refs/heads/main"`, `repository.full_name is missing`, `body is not JSON: …` — values from the body escaped and cut at 100 bytes (use `crate::log::Clean::peer`).
pub fn check(rules: &Match, body: impl Read) -> Result<(), String> {
    let mut guard = Guard::new(body, rules.depth + 1);
    let mut walk = Walk {
        rules: &rules.rules,
        verdicts: vec![Verdict::Missing; rules.rules.len()],
        refused: None,
    };
    let parsed = {
        let mut json = serde_json::Deserializer::from_reader(BufReader::new(&mut guard));
        At {
            node: &rules.root,
            walk: &mut walk,
        }
        .deserialize(&mut json)
        .and_then(|()| json.end())
    };
    if let Some(why) = guard.refused.or(walk.refused) {
        return Err(why);
    }
    match parsed {
        Err(e) if e.is_io() => return Err(format!("body could not be read: {e}")),
        Err(e) => return Err(format!("body is not JSON: {e}")),
        Ok(()) => {}
    }
    for (rule, verdict) in rules.rules.iter().zip(walk.verdicts) {
        match verdict {
            Verdict::Holds => {}
            Verdict::Missing => return Err(format!("{} is missing", rule.path)),
            Verdict::Fails(why) => return Err(why),
        }
    }
    Ok(())
}

#[derive(Clone)]
enum Verdict {
    Missing,
    Holds,
    Fails(String),
}

/// What the walk has learnt about the body so far.
struct Walk<'m> {
    rules: &'m [Rule],
    /// One per rule, in the same order.
    verdicts: Vec<Verdict>,
    /// Why the body fails as a whole, when the walk stopped early.
    refused: Option<String>,
}

/// A JSON value, as much of it as a rule or a reason needs.
enum Found<'v> {
    Str(&'v str),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Found<'_> {
    fn is(&self, want: &Want) -> bool {
        match (self, want) {
            (Found::Str(s), Want::Str(w)) => s == w,
            (Found::Int(n), Want::Int(w)) => *n == i128::from(*w),
            (Found::Bool(b), Want::Bool(w)) => b == w,
            _ => false,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Found::Str(_) => "a string",
            Found::Int(_) | Found::Float(_) => "a number",
            Found::Bool(_) => "a boolean",
            Found::Null => "null",
            Found::Array => "an array",
            Found::Object => "an object",
        }
    }
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Str(s) => write!(f, "\"{}\"", Clean::peer(s.as_bytes())),
            Found::Int(n) => write!(f, "{n}"),
            Found::Float(x) => write!(f, "{x:?}"),
            Found::Bool(b) => write!(f, "{b}"),
            Found::Null | Found::Array | Found::Object => f.write_str(self.kind()),
        }
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Str(s) => write!(f, "\"{}\"", Clean::output(s.as_bytes())),
            Want::Int(n) => write!(f, "{n}"),
            Want::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The value at `node`: decoded if a rule is about it, walked if a rule is
/// inside it, skipped otherwise.
struct At<'w, 'm> {
    node: &'m Node,
    walk: &'w mut Walk<'m>,
}

impl At<'_, '_> {
    fn found<E: de::Error>(&mut self, value: Found<'_>) -> Result<(), E> {
        let node = self.node;
        match &node.kind {
            Kind::Leaf(i) => {
                let rule = &self.walk.rules[*i];
                self.walk.verdicts[*i] = if value.is(&rule.want) {
                    Verdict::Holds
                } else {
                    Verdict::Fails(format!("{} is {value}, not {}", rule.path, rule.want))
                };
                Ok(())
            }
            Kind::Branch(_) if node.path.is_empty() => {
                self.walk.refused = Some(format!("body is {}, not a JSON object", value.kind()));
                Err(E::custom("not an object"))
            }
            Kind::Branch(_) => {
                let walk = &mut *self.walk;
                leaves(node, &mut |i| {
                    walk.verdicts[i] = Verdict::Fails(format!(
                        "{} is missing: {} is {value}, not an object",
                        walk.rules[i].path, node.path
                    ));
                });
                Ok(())
            }
        }
    }
}

fn leaves(node: &Node, each: &mut impl FnMut(usize)) {
    match &node.kind {
        Kind::Leaf(i) => each(*i),
        Kind::Branch(children) => children.iter().for_each(|(_, n)| leaves(n, each)),
    }
}

impl<'de> DeserializeSeed<'de> for At<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.found(Found::Bool(v))
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.found(Found::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.found(Found::Int(v.into()))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.found(Found::Float(v))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.found(Found::Str(v))
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.found(Found::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, seq: A) -> Result<(), A::Error> {
        self.found(Found::Array)?;
        IgnoredAny.visit_seq(seq).map(drop)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let node = self.node;
        let Kind::Branch(children) = &node.kind else {
            self.found(Found::Object)?;
            return IgnoredAny.visit_map(map).map(drop);
        };
        let mut seen = 0u32;
        while let Some(key) = map.next_key_seed(Key(children))? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let child = &children[i].1;
            if seen & 1 << i != 0 {
                self.walk.refused = Some(format!(
                    "{} appears twice in the body; duplicate keys are refused",
                    child.path
                ));
                return Err(de::Error::custom("duplicate key"));
            }
            seen |= 1 << i;
            map.next_value_seed(At {
                node: child,
                walk: &mut *self.walk,
            })?;
        }
        Ok(())
    }
}

/// An object key: the index of the child it names, if any.
struct Key<'m>(&'m [(String, Node)]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(key, _)| key == v))
    }
}

/// Watches the raw bytes on their way to serde_json and stops the body at
/// the two things that would make serde_json buffer without bound: nesting
/// inside skipped values (it keeps one byte per open bracket, and its
/// recursion limit does not apply there) and long keys in the objects it
/// decodes. Tracking is exact for valid JSON; invalid JSON fails either way.
struct Guard<R> {
    inner: R,
    /// Keys are capped in objects at this depth and above (1 is the top level).
    key_depth: usize,
    depth: usize,
    /// Bit `d` is set if the container at depth `d + 1` is an object.
    objects: u128,
    in_string: bool,
    escaped: bool,
    key_expected: bool,
    /// The bytes so far of a key being capped.
    key_bytes: Option<usize>,
    /// An incomplete UTF-8 sequence at the end of the last read.
    carry: [u8; 4],
    carry_len: usize,
    refused: Option<String>,
}

impl<R: Read> Guard<R> {
    fn new(inner: R, key_depth: usize) -> Guard<R> {
        Guard {
            inner,
            key_depth,
            depth: 0,
            objects: 0,
            in_string: false,
            escaped: false,
            key_expected: false,
            key_bytes: None,
            carry: [0; 4],
            carry_len: 0,
            refused: None,
        }
    }

    /// Checks that the body is UTF-8 (RFC 8259 §8.1) as it streams: serde_json
    /// does not check the strings it skips. An incomplete sequence at the end
    /// of one read is carried over to the next.
    fn check_utf8(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let invalid = || "body is not UTF-8".to_owned();
        while self.carry_len > 0 && !bytes.is_empty() {
            self.carry[self.carry_len] = bytes[0];
            self.carry_len += 1;
            bytes = &bytes[1..];
            match std::str::from_utf8(&self.carry[..self.carry_len]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return Err(invalid()),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
                Ok(())
            }
            Err(_) => Err(invalid()),
        }
    }

    fn step(&mut self, b: u8) -> Result<(), String> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                return Ok(());
            }
            if let Some(n) = &mut self.key_bytes {
                *n += 1;
                if *n > MAX_KEY_BYTES {
                    return Err(format!(
                        "body has an object key longer than {MAX_KEY_BYTES} bytes"
                    ));
                }
            }
            return Ok(());
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.key_bytes = (self.key_expected && self.depth <= self.key_depth).then_some(0);
                self.key_expected = false;
            }
            b'{' | b'[' => {
                if self.depth == MAX_DEPTH {
                    return Err(format!(
                        "body nests arrays and objects deeper than {MAX_DEPTH} levels"
                    ));
                }
                let bit = 1u128 << self.depth;
                self.objects = if b == b'{' {
                    self.objects | bit
                } else {
                    self.objects & !bit
                };
                self.depth += 1;
                self.key_expected = b == b'{';
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                self.key_expected = false;
            }
            b',' => {
                self.key_expected = self.depth > 0 && self.objects >> (self.depth - 1) & 1 == 1;
            }
            _ => {}
        }
        Ok(())
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.refused.is_some() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let n = self.inner.read(buf)?;
        let checked = match n {
            0 if self.carry_len > 0 => Err("body is not UTF-8".to_owned()),
            _ => self.check_utf8(&buf[..n]),
        };
        if let Err(why) = checked {
            self.refused = Some(why);
            return Err(io::ErrorKind::InvalidData.into());
        }
        for &b in &buf[..n] {
            if let Err(why) = self.step(b) {
                self.refused = Some(why);
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::Command;

    use super::{MAX_DEPTH, MAX_KEY_BYTES, Match, check};

    fn rules(toml: &str) -> Result<Match, String> {
        Match::from_toml(&toml.parse::<toml::Table>().expect("test TOML parses"))
    }

    #[test]
    fn from_toml_accepts_these_spellings() {
        let quoted = rules(r#""repository.full_name" = "a/b""#).unwrap();
        for (name, toml) in [
            ("dotted key", "repository.full_name = \"a/b\""),
            ("inline table", "repository = { full_name = \"a/b\" }"),
            ("subtable", "[repository]\nfull_name = \"a/b\""),
        ] {
            assert_eq!(rules(toml).as_ref(), Ok(&quoted), "{name}");
        }
        for toml in [
            "ref = \"refs/heads/main\"",
            "n = -3",
            "b = false",
            "a.b.c.d.e.f.g.h = 1",
            "a = 1\nb = 2\nc.d = 3\nc.e = \"x\"",
        ] {
            assert!(rules(toml).is_ok(), "{toml}");
        }
    }

    #[test]
    fn from_toml_refuses_these() {
        let seventeen: String = (0..17).map(|i| format!("k{i} = {i}\n")).collect();
        let long_key = format!("\"{}\" = 1", "k".repeat(MAX_KEY_BYTES + 1));
        for (toml, reason) in [
            (
                "",
                "match: empty; give rules such as ref = \"refs/heads/main\", or remove it",
            ),
            (
                "\"\" = 1",
                "match: \"\" has an empty key; write paths like ref or repository.full_name",
            ),
            (
                "\"a..b\" = 1",
                "match: \"a..b\" has an empty key; write paths like ref or repository.full_name",
            ),
            (
                "\".a\" = 1",
                "match: \".a\" has an empty key; write paths like ref or repository.full_name",
            ),
            (
                "a.\"b.\" = 1",
                "match: \"a.b.\" has an empty key; write paths like ref or repository.full_name",
            ),
            (
                "a.b.c.d.e.f.g.h.i = 1",
                "match: \"a.b.c.d.e.f.g.h.i\" is more than 8 keys deep",
            ),
            (
                "\"a.b.c.d\".e.f.g.h.i = 1",
                "match: \"a.b.c.d.e.f.g.h.i\" is more than 8 keys deep",
            ),
            (&seventeen, "match: 17 rules, at most 16"),
            (&long_key, "match: \"kkkk"),
            (
                "x = 1.5",
                "match: \"x\" is a float; give a string, an integer or a boolean",
            ),
            (
                "x = [\"a\"]",
                "match: \"x\" is an array; give a string, an integer or a boolean",
            ),
            (
                "x = 2026-01-01",
                "match: \"x\" is a datetime; give a string, an integer or a boolean",
            ),
            ("x = {}", "match: \"x\" is an empty table"),
            (
                "a = 1\n\"a.b\" = 2",
                "match: \"a\" must hold a value, but \"a.b\" looks inside it; no body can match both",
            ),
            (
                "\"a.b\" = 1\na.b = 2",
                "match: \"a.b\" is given twice (a quoted dotted key and a table spell the same path)",
            ),
        ] {
            let got = rules(toml).expect_err(toml);
            assert!(got.starts_with(reason), "{toml}: {got}");
        }
    }

    /// `case!(name, rules, body, expected)`: one test that checks `body`
    /// (a `&str`) against the `match` table `rules` (TOML).
    macro_rules! case {
        ($name:ident, $rules:expr, $body:expr, $want:expr $(,)?) => {
            #[test]
            fn $name() {
                let want: Result<(), &str> = $want;
                let got = check(&rules($rules).unwrap(), $body.as_bytes());
                assert_eq!(
                    got.as_ref().map_err(String::as_str),
                    want.as_ref().map_err(|s| *s)
                );
            }
        };
    }

    // Matches.
    case!(top_level, r#"ref = "main""#, r#"{"ref":"main"}"#, Ok(()));
    case!(
        nested,
        r#"repository.full_name = "a/b""#,
        r#"{"repository":{"id":1,"full_name":"a/b"},"x":[]}"#,
        Ok(())
    );
    case!(
        several,
        "a = 1\nb = true\nc.d = \"x\"\nc.e = -2",
        r#"{"c":{"e":-2,"d":"x"},"b":true,"a":1}"#,
        Ok(())
    );
    case!(
        escapes_are_decoded,
        r#"ref = "refs/heads/main""#,
        r#"{"ref":"refs\/heads\/m\u0061in"}"#,
        Ok(())
    );
    case!(
        unicode,
        r#"name = "café""#,
        r#"{"name":"caf\u00e9"}"#,
        Ok(())
    );
    case!(
        whitespace,
        r#"ref = "main""#,
        " \n{ \"ref\" :\t\"main\" }\r\n",
        Ok(())
    );
    case!(
        i64_max,
        "n = 9223372036854775807",
        r#"{"n":9223372036854775807}"#,
        Ok(())
    );
    case!(negative, "n = -1", r#"{"n":-1}"#, Ok(()));
    case!(
        duplicates_elsewhere_are_not_looked_at,
        r#"ref = "main""#,
        r#"{"x":1,"x":2,"ref":"main","o":{"y":1,"y":1}}"#,
        Ok(())
    );
    case!(
        skipped_key_with_quotes,
        r#"ref = "main""#,
        r#"{"\"ref\"":"dev","ref":"main"}"#,
        Ok(())
    );
    case!(
        deep_within_the_limit,
        r#"ref = "main""#,
        &format!(
            r#"{{"x":{}{},"ref":"main"}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        ),
        Ok(())
    );
    case!(
        long_key_below_the_rules,
        r#"ref = "main""#,
        &format!(
            r#"{{"a":{{"b":{{"{}":1}}}},"ref":"main"}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        ),
        Ok(())
    );
    case!(
        long_skipped_string,
        r#"ref = "main""#,
        &format!(
            r#"{{"x":"{}","ref":"main"}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        ),
        Ok(())
    );

    // Mismatches.
    case!(
        string_differs,
        r#"ref = "refs/heads/main""#,
        r#"{"ref":"refs/heads/dev"}"#,
        Err(r#"ref is "refs/heads/dev", not "refs/heads/main""#)
    );
    case!(
        nested_differs,
        r#"repository.full_name = "a/b""#,
        r#"{"repository":{"full_name":"a/c"}}"#,
        Err(r#"repository.full_name is "a/c", not "a/b""#)
    );
    case!(
        case_matters,
        r#"ref = "main""#,
        r#"{"ref":"Main"}"#,
        Err(r#"ref is "Main", not "main""#)
    );
    case!(integer_differs, "n = 1", r#"{"n":2}"#, Err("n is 2, not 1"));
    case!(
        bool_differs,
        "b = true",
        r#"{"b":false}"#,
        Err("b is false, not true")
    );
    case!(
        first_failing_path_is_named,
        "a = 1\nb = 2",
        r#"{"b":3,"a":4}"#,
        Err("a is 4, not 1")
    );

    // Wrong type.
    case!(
        string_for_integer,
        "n = 1",
        r#"{"n":"1"}"#,
        Err(r#"n is "1", not 1"#)
    );
    case!(
        integer_for_string,
        r#"n = "1""#,
        r#"{"n":1}"#,
        Err(r#"n is 1, not "1""#)
    );
    case!(
        float_for_integer,
        "n = 1",
        r#"{"n":1.0}"#,
        Err("n is 1.0, not 1")
    );
    case!(
        exponent_for_integer,
        "n = 100",
        r#"{"n":1e2}"#,
        Err("n is 100.0, not 100")
    );
    case!(
        beyond_i64,
        "n = 9223372036854775807",
        r#"{"n":9223372036854775808}"#,
        Err("n is 9223372036854775808, not 9223372036854775807")
    );
    case!(
        null_for_string,
        r#"ref = "main""#,
        r#"{"ref":null}"#,
        Err(r#"ref is null, not "main""#)
    );
    case!(
        array_for_string,
        r#"ref = "main""#,
        r#"{"ref":["main"]}"#,
        Err(r#"ref is an array, not "main""#)
    );
    case!(
        object_for_string,
        r#"ref = "main""#,
        r#"{"ref":{"main":1}}"#,
        Err(r#"ref is an object, not "main""#)
    );
    case!(
        string_for_bool,
        "b = true",
        r#"{"b":"true"}"#,
        Err(r#"b is "true", not true"#)
    );

    // Missing.
    case!(
        missing,
        r#"ref = "main""#,
        r#"{"refs":"main"}"#,
        Err("ref is missing")
    );
    case!(
        missing_nested,
        r#"repository.full_name = "a/b""#,
        r#"{"repository":{}}"#,
        Err("repository.full_name is missing")
    );
    case!(
        missing_parent,
        r#"repository.full_name = "a/b""#,
        "{}",
        Err("repository.full_name is missing")
    );
    case!(
        key_with_a_dot_cannot_be_addressed,
        r#""a.b" = 1"#,
        r#"{"a.b":1}"#,
        Err("a.b is missing")
    );
    case!(
        through_a_string,
        r#"repository.full_name = "a/b""#,
        r#"{"repository":"a/b"}"#,
        Err(r#"repository.full_name is missing: repository is "a/b", not an object"#)
    );
    case!(
        through_an_array,
        "a.b = 1",
        r#"{"a":[{"b":1}]}"#,
        Err("a.b is missing: a is an array, not an object")
    );
    case!(
        through_null,
        "a.b.c = 1",
        r#"{"a":{"b":null}}"#,
        Err("a.b.c is missing: a.b is null, not an object")
    );

    // Duplicate keys on a rule's path.
    case!(
        duplicate_leaf,
        r#"ref = "main""#,
        r#"{"ref":"main","ref":"dev"}"#,
        Err("ref appears twice in the body; duplicate keys are refused")
    );
    case!(
        duplicate_leaf_same_value,
        r#"ref = "main""#,
        r#"{"ref":"main","ref":"main"}"#,
        Err("ref appears twice in the body; duplicate keys are refused")
    );
    case!(
        duplicate_spelled_with_an_escape,
        r#"ref = "main""#,
        r#"{"ref":"main","r\u0065f":"dev"}"#,
        Err("ref appears twice in the body; duplicate keys are refused")
    );
    case!(
        duplicate_parent,
        "a.b = 1",
        r#"{"a":{"b":1},"a":{"b":2}}"#,
        Err("a appears twice in the body; duplicate keys are refused")
    );

    // Not a JSON object.
    case!(
        top_level_array,
        r#"ref = "main""#,
        r#"[{"ref":"main"}]"#,
        Err("body is an array, not a JSON object")
    );
    case!(
        top_level_string,
        r#"ref = "main""#,
        r#""main""#,
        Err("body is a string, not a JSON object")
    );
    case!(
        top_level_number,
        r#"ref = "main""#,
        "1",
        Err("body is a number, not a JSON object")
    );
    case!(
        top_level_null,
        r#"ref = "main""#,
        "null",
        Err("body is null, not a JSON object")
    );
    case!(
        empty_body,
        r#"ref = "main""#,
        "",
        Err("body is not JSON: EOF while parsing a value at line 1 column 0")
    );
    case!(
        form_body,
        r#"ref = "main""#,
        "ref=main",
        Err("body is not JSON: expected value at line 1 column 1")
    );
    case!(
        truncated,
        r#"ref = "main""#,
        r#"{"ref":"main""#,
        Err("body is not JSON: EOF while parsing an object at line 1 column 13")
    );
    case!(
        trailing_characters,
        r#"ref = "main""#,
        r#"{"ref":"main"} {}"#,
        Err("body is not JSON: trailing characters at line 1 column 16")
    );
    case!(
        two_objects,
        r#"ref = "main""#,
        "{}{}",
        Err("body is not JSON: trailing characters at line 1 column 3")
    );
    case!(
        bad_skipped_value,
        r#"ref = "main""#,
        r#"{"x":[1,},"ref":"main"}"#,
        Err("body is not JSON: expected value at line 1 column 9")
    );
    case!(
        lone_surrogate,
        r#"ref = "main""#,
        r#"{"ref":"\ud800"}"#,
        Err("body is not JSON: unexpected end of hex escape at line 1 column 15")
    );

    // Limits.
    case!(
        too_deep,
        r#"ref = "main""#,
        &format!(
            r#"{{"x":{}{},"ref":"main"}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        ),
        Err("body nests arrays and objects deeper than 128 levels")
    );
    case!(
        long_key,
        r#"ref = "main""#,
        &format!(r#"{{"{}":1,"ref":"main"}}"#, "k".repeat(MAX_KEY_BYTES + 1)),
        Err("body has an object key longer than 4096 bytes")
    );
    case!(
        long_key_inside_a_wanted_object,
        "a.b = 1",
        &format!(
            r#"{{"a":{{"b":{{"{}":1}}}}}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        ),
        Err("body has an object key longer than 4096 bytes")
    );
    case!(
        key_at_the_limit,
        r#"ref = "main""#,
        &format!(r#"{{"{}":1,"ref":"main"}}"#, "k".repeat(MAX_KEY_BYTES)),
        Ok(())
    );

    // Values from the body are escaped and cut.
    case!(
        control_bytes_escaped,
        r#"ref = "main""#,
        r#"{"ref":"\u001b[2J\nsockhook: info: ok\r"}"#,
        Err(r#"ref is "\x1b[2J\x0asockhook: info: ok\x0d", not "main""#)
    );
    case!(
        non_ascii_escaped,
        r#"ref = "main""#,
        r#"{"ref":"mäin"}"#,
        Err(r#"ref is "m\xc3\xa4in", not "main""#)
    );
    case!(
        long_value_cut,
        r#"ref = "main""#,
        &format!(r#"{{"ref":"{}"}}"#, "x".repeat(300)),
        Err(&format!(r#"ref is "{}...", not "main""#, "x".repeat(100)))
    );

    #[test]
    fn invalid_utf8_in_a_wanted_value_fails() {
        let got = check(
            &rules(r#"ref = "main""#).unwrap(),
            &b"{\"ref\":\"ma\xffin\"}"[..],
        );
        assert_eq!(got.unwrap_err(), "body is not UTF-8");
    }

    /// Hands out one byte per read, as a slow socket would.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((&b, rest)), false) => {
                    buf[0] = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    // Regression test: serde_json skips strings no rule looks at without
    // checking their UTF-8, so such a body passed (found by the payload_filter
    // fuzz target).
    #[test]
    fn utf8_is_checked_everywhere_and_across_reads() {
        let rules = rules(r#"ref = "main""#).unwrap();
        let good = "{\"skipped\":{\"é€😀\":\"é€😀\"},\"ref\":\"main\"}".as_bytes();
        assert_eq!(check(&rules, OneByte(good)), Ok(()));
        for bad in [
            &b"{\"skipped\":{\"\xff\":1},\"ref\":\"main\"}"[..],
            &b"{\"ref\":\"main\",\"x\":\"\xc3\"}"[..],
            &b"{\"ref\":\"main\",\"x\":\"\xed\xa0\x80\"}"[..],
        ] {
            assert_eq!(
                check(&rules, OneByte(bad)).unwrap_err(),
                "body is not UTF-8",
                "{bad:?}"
            );
            assert_eq!(
                check(&rules, bad).unwrap_err(),
                "body is not UTF-8",
                "{bad:?}"
            );
        }
        // A sequence cut by the end of the body: refused, whichever check sees it first.
        let cut = &b"{\"ref\":\"main\"}\xe2\x82"[..];
        assert!(check(&rules, OneByte(cut)).is_err() && check(&rules, cut).is_err());
    }

    /// Yields `unit` over and over, `len` bytes in all, without holding them.
    struct Cycle {
        unit: &'static [u8],
        at: usize,
        left: usize,
    }

    impl Read for Cycle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left);
            for b in &mut buf[..n] {
                *b = self.unit[self.at];
                self.at = (self.at + 1) % self.unit.len();
            }
            self.left -= n;
            Ok(n)
        }
    }

    fn big(
        head: &'static [u8],
        unit: &'static [u8],
        bytes: usize,
        tail: &'static [u8],
    ) -> impl Read {
        let len = bytes / unit.len() * unit.len();
        head.chain(Cycle {
            unit,
            at: 0,
            left: len,
        })
        .chain(tail)
    }

    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/self/status");
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM in kB")
    }

    const MEMORY_CHILD: &str = "SOCKHOOK_TEST_FILTER_MEMORY_CHILD";
    const BIG_BYTES: usize = 20 << 20;

    /// Measures in a process of its own, where no other test can move the high-water mark.
    #[test]
    fn large_bodies_stream_in_little_memory() {
        let exe = std::env::current_exe().expect("test binary path");
        let out = Command::new(exe)
            .args(["--exact", "filter::tests::large_bodies_memory_child"])
            .args(["--nocapture", "--test-threads=1"])
            .env(MEMORY_CHILD, "1")
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("peak RSS grew by"),
            "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }

    #[test]
    fn large_bodies_memory_child() {
        if std::env::var_os(MEMORY_CHILD).is_none() {
            return;
        }
        let m = rules("ref = \"refs/heads/main\"\nrepository.full_name = \"a/b\"").unwrap();
        let pass = &br#"{"ref":"refs/heads/main","repository":{"full_name":"a/b"}}"#[..];
        assert_eq!(check(&m, pass), Ok(()));
        let before = vm_hwm_kib();
        let array = big(
            br#"{"repository":{"full_name":"a/b"},"commits":["#,
            br#"{"id":"0123456789abcdef","added":["a","b"],"n":[1,2.5,null,true]},"#,
            BIG_BYTES,
            br#"0],"ref":"refs/heads/main"}"#,
        );
        assert_eq!(check(&m, array), Ok(()));
        let string = big(
            br#"{"repository":{"full_name":"a/b","blob":""#,
            b"0123456789abcdef\\n\\\"",
            BIG_BYTES,
            br#""},"ref":"refs/heads/main"}"#,
        );
        assert_eq!(check(&m, string), Ok(()));
        let deep = big(b"{\"x\":", b"[", BIG_BYTES, b"");
        assert_eq!(
            check(&m, deep),
            Err(format!(
                "body nests arrays and objects deeper than {MAX_DEPTH} levels"
            ))
        );
        let key = big(b"{\"", b"k", BIG_BYTES, b"\":1}");
        assert_eq!(
            check(&m, key),
            Err(format!(
                "body has an object key longer than {MAX_KEY_BYTES} bytes"
            ))
        );
        let grown = vm_hwm_kib() - before;
        println!("peak RSS grew by {grown} KiB");
        assert!(
            grown < 1024,
            "peak RSS grew by {grown} KiB reading 20 MiB bodies"
        );
    }
}
