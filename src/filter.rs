//! Stage 5b: the hook's filters — which events run the command, which
//! content type the body must have, and its `match` table, checked against
//! the JSON body.
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
//! The body is parsed where it lies (the spooled body, mapped), never copied
//! into the heap: only the keys and values on the rules' paths are decoded,
//! and a value there is decoded only if it is short enough to equal the rule's
//! value (a longer one is a mismatch, shown cut). To keep the heap bounded for
//! any input, nesting deeper than 128 arrays and objects fails the filter, and
//! so does an object key longer than 4096 bytes (as written, escapes included)
//! in the levels the rules look into (down to one below the deepest rule).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::Refusal;
use crate::fields::EnvFields;
use crate::form::Carrier;
use crate::log::Clean;
use crate::read::Head;

/// The UTF-8 byte order mark, skipped before a JSON body.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
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

/// A hook's filters: the conditions under which an authenticated request runs
/// the command, checked in the order the request's life reaches them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Events that run the command, and the header that names the event.
    pub events: Option<(Vec<String>, &'static str)>,
    /// Values the JSON body must hold (`[match]`).
    pub payload: Option<Match>,
    /// JSON fields of the body handed to the command (`[env]`).
    pub env: Option<EnvFields>,
    /// The command's stdin is the JSON payload (`stdin = "payload"`), so
    /// the body must carry one.
    pub payload_stdin: bool,
}

/// Why an authenticated request does not run the command: answered 200, logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored(String);

impl Ignored {
    fn new(why: impl Into<String>) -> Ignored {
        Ignored(why.into())
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Filters {
    /// Before the body: a hook that matches JSON fields needs a JSON body
    /// (415), and one it can read as sent: a compressed body
    /// (`Content-Encoding` other than `identity`) would otherwise fail every
    /// rule and be answered "ignored" while the sender shows success. It is
    /// refused instead (RFC 9110 §15.5.16), which the sender shows as a
    /// failure that says why; decoding it would take a decompressor bounded
    /// against bombs, for senders that can all be told not to compress.
    pub fn content_type(&self, head: &Head) -> Result<(), Refusal> {
        if !self.reads_payload() {
            return Ok(());
        }
        if Carrier::of(head.header("content-type"))?.is_none() {
            return Err(Refusal::UnsupportedMediaType);
        }
        let codings = head
            .headers
            .iter()
            .filter(|(name, _)| name == "content-encoding")
            .flat_map(|(_, value)| value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"));
        match codings {
            Some(coding) => Err(Refusal::UnsupportedContentCoding(
                Clean::peer(coding).to_string(),
            )),
            None => Ok(()),
        }
    }

    /// Whether anything reads the JSON payload: `[match]`, `[env]`, `stdin = "payload"`.
    pub fn reads_payload(&self) -> bool {
        self.payload.is_some() || self.env.is_some() || self.payload_stdin
    }

    /// After verification: whether the request's event is one that runs the command.
    pub fn event(&self, head: &Head) -> Result<(), Ignored> {
        let Some((events, header)) = &self.events else {
            return Ok(());
        };
        match head.header(header) {
            Some(event) if events.iter().any(|e| e.as_bytes() == event) => Ok(()),
            Some(event) => Err(Ignored::new(format!(
                "event {} not in events",
                Clean::peer(event)
            ))),
            None => Err(Ignored::new(format!(
                "no {header} header, and events are filtered"
            ))),
        }
    }
}

/// Whether a `Content-Type` says JSON: `application/json` or `application/…+json`.
pub fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

impl Match {
    /// Ok(()) if every rule holds for the JSON `body`; otherwise why not, in
    /// one short line a user can act on, e.g. `ref is "refs/heads/dev", not
    /// "refs/heads/main"`, `repository.full_name is missing`, `body is not
    /// JSON: …` — values from the body escaped and cut at 100 bytes.
    pub fn check(&self, body: &[u8]) -> Result<(), Ignored> {
        // RFC 8259 §8.1: a parser may ignore a byte order mark, which some
        // senders put before their JSON; serde_json would stop at it.
        let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
        // RFC 8259 §8.1; serde_json does not check the strings it skips.
        let text = std::str::from_utf8(body).map_err(|_| Ignored::new("body is not UTF-8"))?;
        scan(text.as_bytes(), self.depth + 1).map_err(Ignored::new)?;
        let mut walk = Walk {
            text,
            rules: &self.rules,
            verdicts: vec![Verdict::Missing; self.rules.len()],
            refused: None,
        };
        let parsed = if text.trim_start().starts_with('{') {
            let mut json = serde_json::Deserializer::from_str(text);
            Object {
                node: &self.root,
                walk: &mut walk,
            }
            .deserialize(&mut json)
            .and_then(|()| json.end())
        } else {
            // Not an object: say what it is, once it is known to be JSON.
            serde_json::from_str::<IgnoredAny>(text).map(|_| {
                walk.refused = Some(format!(
                    "body is {}, not a JSON object",
                    kind_of(text.trim_start())
                ));
            })
        };
        if let Some(why) = walk.refused {
            return Err(Ignored(why));
        }
        parsed.map_err(|e| Ignored::new(format!("body is not JSON: {e}")))?;
        for (rule, verdict) in self.rules.iter().zip(walk.verdicts) {
            match verdict {
                Verdict::Holds => {}
                Verdict::Missing => return Err(Ignored::new(format!("{} is missing", rule.path))),
                Verdict::Fails(why) => return Err(Ignored(why)),
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Verdict {
    Missing,
    Holds,
    Fails(String),
}

/// What the walk has learnt about the body so far.
struct Walk<'m> {
    /// The whole body, for the positions of errors in values decoded apart.
    text: &'m str,
    rules: &'m [Rule],
    /// One per rule, in the same order.
    verdicts: Vec<Verdict>,
    /// Why the body fails as a whole, when the walk stopped early.
    refused: Option<String>,
}

/// Longest raw text of a value that is decoded only to be shown, in bytes:
/// enough for the 100 bytes a log line shows, however it is escaped.
const SHOWN_RAW_BYTES: usize = 6 * Clean::PEER_MAX + 8;

/// A JSON value, as much of it as a rule or a reason needs.
enum Found {
    /// A string; `whole` is false when only its start was decoded.
    Str {
        text: String,
        whole: bool,
    },
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Found {
    fn is(&self, want: &Want) -> bool {
        match (self, want) {
            (Found::Str { text, whole: true }, Want::Str(w)) => text == w,
            (Found::Int(n), Want::Int(w)) => *n == i128::from(*w),
            (Found::Bool(b), Want::Bool(w)) => b == w,
            _ => false,
        }
    }
}

/// "a string", "an object", … for the value that starts `raw` (valid JSON).
fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Str { text, whole: true } => write!(f, "\"{}\"", Clean::peer(text.as_bytes())),
            Found::Str { text, whole: false } => {
                let shown = &text.as_bytes()[..text.len().min(Clean::PEER_MAX)];
                write!(f, "\"{}...\"", Clean::peer(shown))
            }
            Found::Int(n) => write!(f, "{n}"),
            Found::Float(x) => write!(f, "{x:?}"),
            Found::Bool(b) => write!(f, "{b}"),
            Found::Null => f.write_str("null"),
            Found::Array => f.write_str("an array"),
            Found::Object => f.write_str("an object"),
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

impl<'m> Walk<'m> {
    /// Decodes as much of the value `raw` as `want` needs: all of it if it can
    /// be equal, else only the start that a reason shows. Raw JSON text can be
    /// up to six times longer than what it stands for (`\u0061` is `a`).
    fn found(&self, raw: &RawValue, want: Option<&Want>) -> Result<Found, String> {
        let text = raw.get();
        let decode = |json: &str| -> Result<Found, String> {
            serde_json::Deserializer::from_str(json)
                .deserialize_any(Scalar)
                .map_err(|e| self.not_json(raw, &e))
        };
        match text.as_bytes()[0] {
            b'{' => Ok(Found::Object),
            b'[' => Ok(Found::Array),
            b'"' => {
                let could_equal = match want {
                    Some(Want::Str(w)) => text.len() <= 6 * w.len() + 2,
                    _ => false,
                };
                if could_equal || text.len() <= SHOWN_RAW_BYTES {
                    return decode(text);
                }
                // Cut after a complete character and outside an escape, then close it.
                let mut cut = SHOWN_RAW_BYTES;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                let escape = text[..cut].rfind('\\').filter(|&i| cut - i < 12);
                let cut = escape.map_or(cut, |i| i);
                match decode(&format!("{}\"", &text[..cut]))? {
                    Found::Str { text, .. } => Ok(Found::Str { text, whole: false }),
                    other => Ok(other),
                }
            }
            _ => decode(text),
        }
    }

    /// A decoding error of the value `raw`, placed in the whole body.
    fn not_json(&self, raw: &RawValue, e: &serde_json::Error) -> String {
        let start = raw.get().as_ptr() as usize - self.text.as_ptr() as usize;
        let before = &self.text[..start];
        let line = before.matches('\n').count() + e.line();
        let column = match e.line() {
            1 => before.len() - before.rfind('\n').map_or(0, |nl| nl + 1) + e.column(),
            _ => e.column(),
        };
        let message = e.to_string();
        let message = message
            .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
            .unwrap_or(&message);
        format!("body is not JSON: {message} at line {line} column {column}")
    }

    /// Records what the value `raw` at `node` means for the rules.
    fn value(&mut self, node: &'m Node, raw: &RawValue) -> Result<(), String> {
        match &node.kind {
            Kind::Leaf(i) => {
                let rule = &self.rules[*i];
                let found = self.found(raw, Some(&rule.want))?;
                self.verdicts[*i] = if found.is(&rule.want) {
                    Verdict::Holds
                } else {
                    Verdict::Fails(format!("{} is {found}, not {}", rule.path, rule.want))
                };
                Ok(())
            }
            Kind::Branch(_) if raw.get().starts_with('{') => {
                let mut json = serde_json::Deserializer::from_str(raw.get());
                let walked = Object { node, walk: self }.deserialize(&mut json);
                match (walked, self.refused.take()) {
                    (_, Some(why)) => Err(why),
                    (Err(e), None) => Err(self.not_json(raw, &e)),
                    (Ok(()), None) => Ok(()),
                }
            }
            Kind::Branch(_) => {
                let found = self.found(raw, None)?;
                let (rules, verdicts) = (self.rules, &mut self.verdicts);
                leaves(node, &mut |i| {
                    verdicts[i] = Verdict::Fails(format!(
                        "{} is missing: {} is {found}, not an object",
                        rules[i].path, node.path
                    ));
                });
                Ok(())
            }
        }
    }
}

/// Decodes a scalar value (`found` has already dealt with arrays and objects).
struct Scalar;

impl<'de> Visitor<'de> for Scalar {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Found, E> {
        Ok(Found::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Found, E> {
        Ok(Found::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Found, E> {
        Ok(Found::Int(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Found, E> {
        Ok(Found::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Found, E> {
        Ok(Found::Str {
            text: v.to_owned(),
            whole: true,
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Null)
    }
}

fn leaves(node: &Node, each: &mut impl FnMut(usize)) {
    match &node.kind {
        Kind::Leaf(i) => each(*i),
        Kind::Branch(children) => children.iter().for_each(|(_, n)| leaves(n, each)),
    }
}

/// The object at a branch `node`: the keys on rules' paths are looked at,
/// every other value is skipped.
struct Object<'w, 'm> {
    node: &'m Node,
    walk: &'w mut Walk<'m>,
}

impl<'de> DeserializeSeed<'de> for Object<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Object<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Kind::Branch(children) = &self.node.kind else {
            return Err(de::Error::custom("a leaf is not an object"));
        };
        let mut seen = 0u32;
        while let Some(key) =
            map.next_key_seed(Key(|v: &str| children.iter().position(|(key, _)| key == v)))?
        {
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
            let raw: &RawValue = map.next_value()?;
            if let Err(why) = self.walk.value(child, raw) {
                self.walk.refused = Some(why);
                return Err(de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}

/// An object key, read without a copy: the index of the child it names,
/// if any, as `find` says (the filters' tree here, `[env]`'s in fields.rs).
pub(crate) struct Key<F>(pub(crate) F);

impl<'de, F: FnOnce(&str) -> Option<usize>> DeserializeSeed<'de> for Key<F> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, F: FnOnce(&str) -> Option<usize>> Visitor<'de> for Key<F> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok((self.0)(v))
    }
}

/// Checks the body for the two things that would make serde_json buffer
/// without bound: nesting anywhere (it keeps one byte per open bracket while
/// skipping, where its recursion limit does not apply) and long keys in the
/// objects the walk decodes (at depth `key_depth` and above; 1 is the top).
/// Exact for valid JSON; invalid JSON fails either way.
pub(crate) fn scan(body: &[u8], key_depth: usize) -> Result<(), String> {
    let mut depth = 0;
    // Bit `d` is set if the container at depth `d + 1` is an object.
    let mut objects: u128 = 0;
    let mut key_expected = false;
    let mut at = 0;
    while at < body.len() {
        match body[at] {
            b'"' => {
                let capped = key_expected && depth <= key_depth;
                key_expected = false;
                let start = at + 1;
                let mut end = start;
                loop {
                    match body[end..].iter().position(|&b| b == b'"' || b == b'\\') {
                        None => return Ok(()),
                        Some(i) if body[end + i] == b'\\' => end += i + 2,
                        Some(i) => {
                            end += i;
                            break;
                        }
                    }
                    if end >= body.len() {
                        return Ok(());
                    }
                }
                if capped && end - start > MAX_KEY_BYTES {
                    return Err(format!(
                        "body has an object key longer than {MAX_KEY_BYTES} bytes"
                    ));
                }
                at = end + 1;
                continue;
            }
            b @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return Err(format!(
                        "body nests arrays and objects deeper than {MAX_DEPTH} levels"
                    ));
                }
                let bit = 1u128 << depth;
                objects = if b == b'{' {
                    objects | bit
                } else {
                    objects & !bit
                };
                depth += 1;
                key_expected = b == b'{';
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                key_expected = false;
            }
            b',' => key_expected = depth > 0 && objects >> (depth - 1) & 1 == 1,
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Filters, Head, MAX_DEPTH, MAX_KEY_BYTES, Match, is_json};

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
                let got = rules($rules).unwrap().check($body.as_bytes());
                assert_eq!(got.map_err(|e| e.to_string()), want.map_err(str::to_owned));
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

    // Regression test: a JSON body with a UTF-8 byte order mark was answered
    // "200 ignored: body is not JSON" and nothing ran (issue 13).
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let rules = rules(r#"ref = "main""#).unwrap();
        assert_eq!(rules.check(b"\xEF\xBB\xBF{\"ref\":\"main\"}"), Ok(()));
        assert_eq!(
            rules
                .check(b"\xEF\xBB\xBF{\"ref\":\"dev\"}")
                .unwrap_err()
                .to_string(),
            r#"ref is "dev", not "main""#
        );
        // Only one, and only at the start.
        assert!(
            rules
                .check(b"\xEF\xBB\xBF\xEF\xBB\xBF{\"ref\":\"main\"}")
                .is_err()
        );
        assert!(rules.check(b" \xEF\xBB\xBF{\"ref\":\"main\"}").is_err());
    }

    // Regression test: a gzip-encoded body was answered "200 ignored: body is
    // not UTF-8" and nothing ran (issue 13).
    #[test]
    fn compressed_bodies_are_refused_before_they_are_read() {
        let filters = Filters {
            events: None,
            payload: Some(rules(r#"ref = "main""#).unwrap()),
            env: None,
            payload_stdin: false,
        };
        let head = |encoding: &[&str]| Head {
            method: "POST".into(),
            path: "/hooks/h".into(),
            query: None,
            minor_version: 1,
            headers: std::iter::once(("content-type".to_owned(), b"application/json".to_vec()))
                .chain(
                    encoding
                        .iter()
                        .map(|e| ("content-encoding".to_owned(), e.as_bytes().to_vec())),
                )
                .collect(),
            framing: crate::read::Framing::Length(1),
            expect_continue: false,
        };
        assert!(filters.content_type(&head(&[])).is_ok());
        assert!(filters.content_type(&head(&["identity"])).is_ok());
        for encoded in [
            &["gzip"][..],
            &["identity, gzip"],
            &["identity", "br"],
            &["x-gzip"],
        ] {
            let refusal = filters.content_type(&head(encoded)).unwrap_err();
            assert_eq!(refusal.status(), 415, "{encoded:?}");
            assert!(refusal.to_string().contains("turn compression off"));
        }
        // Without [match], the body goes to the command as sent.
        assert!(Filters::default().content_type(&head(&["gzip"])).is_ok());
    }

    #[test]
    fn invalid_utf8_in_a_wanted_value_fails() {
        let got = rules(r#"ref = "main""#)
            .unwrap()
            .check(b"{\"ref\":\"ma\xffin\"}");
        assert_eq!(got.unwrap_err().to_string(), "body is not UTF-8");
    }

    // Regression test: serde_json skips strings no rule looks at without
    // checking their UTF-8, so such a body passed (found by the payload_filter
    // fuzz target).
    #[test]
    fn utf8_is_checked_everywhere() {
        let rules = rules(r#"ref = "main""#).unwrap();
        let good = "{\"skipped\":{\"é€😀\":\"é€😀\"},\"ref\":\"main\"}".as_bytes();
        assert_eq!(rules.check(good), Ok(()));
        for bad in [
            &b"{\"skipped\":{\"\xff\":1},\"ref\":\"main\"}"[..],
            &b"{\"ref\":\"main\",\"x\":\"\xc3\"}"[..],
            &b"{\"ref\":\"main\",\"x\":\"\xed\xa0\x80\"}"[..],
            &b"{\"ref\":\"main\"}\xe2\x82"[..],
        ] {
            assert_eq!(
                rules.check(bad).unwrap_err().to_string(),
                "body is not UTF-8",
                "{bad:?}"
            );
        }
    }

    // Regression test: a long string at a compared path was decoded whole
    // into the heap (20 MiB of it cost ~32 MiB); now only what could equal
    // the rule's value, or what a reason shows, is decoded.
    #[test]
    fn long_values_at_a_rule_are_cut_not_decoded() {
        let m = rules(r#"ref = "main""#).unwrap();
        let escaped = format!(r#"{{"ref":"{}"}}"#, "\\u0061".repeat(1000));
        assert_eq!(
            m.check(escaped.as_bytes()).unwrap_err().to_string(),
            format!(r#"ref is "{}...", not "main""#, "a".repeat(100))
        );
        // A value that decodes to the rule's exactly is still found, however escaped.
        let m = rules(r#"ref = "aaaa""#).unwrap();
        assert_eq!(m.check(br#"{"ref":"\u0061\u0061\u0061\u0061"}"#), Ok(()));
        assert!(m.check(br#"{"ref":"\u0061\u0061\u0061\u0061a"}"#).is_err());
        let m = rules(r#"repository.name = "x""#).unwrap();
        let through = format!(r#"{{"repository":"{}"}}"#, "b".repeat(5000));
        assert_eq!(
            m.check(through.as_bytes()).unwrap_err().to_string(),
            format!(
                r#"repository.name is missing: repository is "{}...", not an object"#,
                "b".repeat(100)
            )
        );
    }

    #[test]
    fn errors_in_nested_values_are_placed_in_the_whole_body() {
        let m = rules(r#"a.ref = "main""#).unwrap();
        assert_eq!(
            m.check(b"{\n \"a\": {\"ref\":\"\\ud800\"}}")
                .unwrap_err()
                .to_string(),
            "body is not JSON: unexpected end of hex escape at line 2 column 21"
        );
    }

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.github+json",
            " application/json ",
        ] {
            assert!(is_json(Some(yes.as_bytes())), "{yes}");
        }
        for no in [
            "text/json",
            "application/x-www-form-urlencoded",
            "application/jsonp",
            "application/+jsonx",
            "",
        ] {
            assert!(!is_json(Some(no.as_bytes())), "{no}");
        }
        assert!(!is_json(None));
        assert!(!is_json(Some(b"application/json\xff")));
    }
}
