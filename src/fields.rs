//! Stage 5c: the hook's `[env]` table — JSON fields of the payload handed to
//! the command as environment variables, so that a deploy script needs no
//! `jq`.
//!
//! ```toml
//! [env]
//! SOCKHOOK_REF = "ref"
//! COMMIT = "head_commit.id"
//! FIRST = "commits.0.id"
//! ```
//!
//! Each value is a dotted path as in `[match]`, where a segment that is a
//! number also indexes an array (`commits.0.id`). The payload is walked where
//! it lies with the bounds of `[match]` ([`crate::filter`]: nesting, key
//! lengths), and only the values on the paths are decoded. A string gives its
//! decoded text, a number its JSON text as sent, a boolean `true` or
//! `false`; an object, an array or `null` give what `env_objects` says.
//! A value longer than [`MAX_VALUE_BYTES`] or a string holding a NUL
//! character refuses the delivery (422): a NUL cannot be in an environment,
//! and a cut value would be a wrong one. A missing field gives an empty
//! value, or refuses the delivery with `env_required = true`. The values go
//! to the environment only, never to the argv.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::act::ENV_NAMES;
use crate::filter::{Key, MAX_KEY_BYTES, MAX_SEGMENTS, UTF8_BOM, scan};

/// Most variables one `[env]` table may set.
pub const MAX_VARS: usize = 16;
/// Longest value of one variable, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest variable name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Names `[env]` may not set: those sockhook sets itself, and those a shell,
/// the dynamic loader, sudo, systemd or the C library read to decide what to
/// run or how. Prefixes end in `_`, or stand for a family (`PYTHON…`).
const RESERVED: [&str; 31] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TZ",
    "TMPDIR",
    "LANG",
    "LANGUAGE",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "GLOBIGNORE",
    "POSIXLY_CORRECT",
    "NLSPATH",
    "GCONV_PATH",
    "LOCPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "NOTIFY_SOCKET",
    "CREDENTIALS_DIRECTORY",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "PWD",
    "OLDPWD",
    "SOCKHOOK_REPLAY",
];
const RESERVED_PREFIXES: [&str; 14] = [
    "LD_",
    "LC_",
    "MALLOC_",
    "GLIBC_",
    "SYSTEMD_",
    "LISTEN_",
    "SUDO_",
    "BASH_FUNC_",
    "PYTHON",
    "PERL",
    "RUBY",
    "NODE_",
    "GIT_",
    "SSH_",
];

/// What an object, an array or `null` at a path gives (`env_objects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    /// An empty value (the default).
    Empty,
    /// The value's JSON text as sent.
    Json,
    /// The delivery is refused (422).
    Refuse,
}

/// A hook's `[env]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvFields {
    /// INVARIANT: 1..=MAX_VARS, names valid and unreserved.
    vars: Vec<Var>,
    root: Tree,
    depth: usize,
    /// A missing field refuses the delivery (`env_required`).
    required: bool,
    objects: Objects,
}

#[derive(Debug, Clone, PartialEq)]
struct Var {
    name: String,
    path: String,
}

/// The paths as a tree: the variables whose path ends here, and the keys below.
#[derive(Debug, Clone, PartialEq, Default)]
struct Tree {
    leaves: Vec<usize>,
    /// INVARIANT: at most MAX_VARS children (a `u32` bit set covers them);
    /// the index is the segment as an array index, if it is a number.
    children: Vec<(String, Option<usize>, Tree)>,
}

/// Whether `name` may be set by `[env]`; why not otherwise.
fn check_name(name: &str) -> Result<(), String> {
    let shape = name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !shape {
        return Err(format!(
            "env: {name:?} is not a variable name: upper-case letters, digits and _, not starting with a digit, at most {MAX_NAME_BYTES} bytes"
        ));
    }
    if ENV_NAMES.contains(&name)
        || RESERVED.contains(&name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(format!(
            "env: {name} is reserved (sockhook sets it, or a shell, loader or runtime reads it); choose another name, e.g. SOCKHOOK_{}",
            name.trim_start_matches("SOCKHOOK_")
        ));
    }
    Ok(())
}

impl EnvFields {
    /// Builds it from the hook file's `[env]` table and the keys that go with it.
    pub fn from_toml(
        table: &toml::Table,
        required: Option<bool>,
        objects: Option<&str>,
    ) -> Result<EnvFields, String> {
        if table.is_empty() || table.len() > MAX_VARS {
            return Err(format!(
                "env: give 1 to {MAX_VARS} variables, e.g. SOCKHOOK_REF = \"ref\", or remove it"
            ));
        }
        let objects = match objects {
            None | Some("empty") => Objects::Empty,
            Some("json") => Objects::Json,
            Some("refuse") => Objects::Refuse,
            Some(other) => {
                return Err(format!(
                    "env_objects: {other:?} is not one of \"empty\" (the default), \"json\" or \"refuse\""
                ));
            }
        };
        let mut vars = Vec::new();
        let mut root = Tree::default();
        for (name, path) in table {
            check_name(name)?;
            let toml::Value::String(path) = path else {
                return Err(format!(
                    "env: {name} must be a dotted path as a string, e.g. {name} = \"head_commit.id\""
                ));
            };
            let segments: Vec<&str> = path.split('.').collect();
            if segments
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_KEY_BYTES)
                || segments.len() > MAX_SEGMENTS
            {
                return Err(format!(
                    "env: {name} = {path:?} is not a path of 1 to {MAX_SEGMENTS} non-empty keys, e.g. \"repository.full_name\" or \"commits.0.id\""
                ));
            }
            let mut node = &mut root;
            for segment in &segments {
                let at = match node.children.iter().position(|(k, _, _)| k == segment) {
                    Some(at) => at,
                    None => {
                        let index = segment
                            .parse::<usize>()
                            .ok()
                            .filter(|i| i.to_string() == *segment);
                        node.children
                            .push(((*segment).to_owned(), index, Tree::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].2;
            }
            node.leaves.push(vars.len());
            vars.push(Var {
                name: name.clone(),
                path: path.clone(),
            });
        }
        let depth = vars
            .iter()
            .map(|v| v.path.split('.').count())
            .max()
            .unwrap_or(0);
        Ok(EnvFields {
            vars,
            root,
            depth,
            required: required.unwrap_or(false),
            objects,
        })
    }

    /// The variables' names, in the order of the table.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|v| v.name.as_str())
    }

    /// The variables for the JSON `payload`, each `(NAME, value)`; or why the
    /// delivery is refused, in one line that names the field.
    pub fn extract(&self, payload: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
        let payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
        let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_owned())?;
        scan(text.as_bytes(), self.depth + 1)?;
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
        let mut found = vec![None; self.vars.len()];
        self.walk(&self.root, raw, &mut found)?;
        self.vars
            .iter()
            .zip(found)
            .map(|(var, value)| match value {
                Some(value) => Ok((var.name.clone(), value)),
                None if self.required => Err(format!(
                    "{} (for {}) is missing from the payload, and env_required = true",
                    var.path, var.name
                )),
                None => Ok((var.name.clone(), Vec::new())),
            })
            .collect()
    }

    /// Records the values of the variables at `tree`, found at `raw`.
    fn walk(
        &self,
        tree: &Tree,
        raw: &RawValue,
        found: &mut [Option<Vec<u8>>],
    ) -> Result<(), String> {
        for &i in &tree.leaves {
            found[i] = Some(self.value(&self.vars[i], raw)?);
        }
        if tree.children.is_empty() {
            return Ok(());
        }
        let mut why = None;
        let mut json = serde_json::Deserializer::from_str(raw.get());
        let container = Container {
            fields: self,
            tree,
            found,
            why: &mut why,
        };
        let walked = match raw.get().as_bytes()[0] {
            b'{' => json.deserialize_map(container),
            b'[' => json.deserialize_seq(container),
            // A path through a scalar: the fields below are missing.
            _ => Ok(()),
        };
        match (why, walked) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => Err(format!("payload is not JSON: {e}")),
            (None, Ok(())) => Ok(()),
        }
    }

    /// The value of `var`, whose raw JSON is `raw`.
    fn value(&self, var: &Var, raw: &RawValue) -> Result<Vec<u8>, String> {
        let text = raw.get();
        let too_long = || {
            format!(
                "{} (for {}) is longer than {MAX_VALUE_BYTES} bytes",
                var.path, var.name
            )
        };
        let value = match text.as_bytes()[0] {
            b'"' => {
                // Escapes are at most six bytes for one: a longer text is too long.
                if text.len() > 6 * MAX_VALUE_BYTES + 2 {
                    return Err(too_long());
                }
                let decoded: String =
                    serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
                if decoded.contains('\0') {
                    return Err(format!(
                        "{} (for {}) holds a NUL character, which no environment variable can",
                        var.path, var.name
                    ));
                }
                decoded.into_bytes()
            }
            b'{' | b'[' | b'n' => match self.objects {
                Objects::Empty => Vec::new(),
                Objects::Json => text.as_bytes().to_vec(),
                Objects::Refuse => {
                    return Err(format!(
                        "{} (for {}) is {}, and env_objects = \"refuse\"",
                        var.path,
                        var.name,
                        match text.as_bytes()[0] {
                            b'{' => "an object",
                            b'[' => "an array",
                            _ => "null",
                        }
                    ));
                }
            },
            _ => text.as_bytes().to_vec(),
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(too_long());
        }
        Ok(value)
    }
}

/// An object or array on the paths: the children named are walked, every
/// other value skipped.
struct Container<'a> {
    fields: &'a EnvFields,
    tree: &'a Tree,
    found: &'a mut [Option<Vec<u8>>],
    /// Why the payload is refused, once the walk stopped for it.
    why: &'a mut Option<String>,
}

impl Container<'_> {
    fn child(&mut self, at: usize, raw: &RawValue) -> Result<(), String> {
        let (_, _, tree) = &self.tree.children[at];
        self.fields.walk(tree, raw, self.found)
    }
}

impl<'de> Visitor<'de> for Container<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut seen = 0u32;
        while let Some(key) = map.next_key_seed(Key(|v: &str| {
            self.tree.children.iter().position(|(key, _, _)| key == v)
        }))? {
            let Some(at) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen & 1 << at != 0 {
                *self.why = Some(format!(
                    "{:?} appears twice in one object of the payload; duplicate keys are refused",
                    self.tree.children[at].0
                ));
                return Err(de::Error::custom("duplicate key"));
            }
            seen |= 1 << at;
            let raw: &RawValue = map.next_value()?;
            if let Err(why) = self.child(at, raw) {
                *self.why = Some(why);
                return Err(de::Error::custom("refused"));
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<&RawValue>()? {
            let at = self
                .tree
                .children
                .iter()
                .position(|(_, i, _)| *i == Some(index));
            if let Some(at) = at
                && let Err(why) = self.child(at, raw)
            {
                *self.why = Some(why);
                return Err(de::Error::custom("refused"));
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(toml: &str, required: bool, objects: &str) -> EnvFields {
        EnvFields::from_toml(&toml.parse().unwrap(), Some(required), Some(objects)).unwrap()
    }

    fn text(values: &[(String, Vec<u8>)]) -> Vec<(&str, String)> {
        values
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn values_of_every_kind_and_array_indexes() {
        let f = fields(
            "A = \"ref\"\nB = \"head_commit.id\"\nC = \"commits.1.id\"\nD = \"n\"\nE = \"t\"\nF = \"o\"\nG = \"none\"\nH = \"ref.x\"\nI = \"0\"",
            false,
            "json",
        );
        let body = br#"{"ref":"refs\/heads\/main","head_commit":{"id":"abc","x":[1]},"commits":[{"id":"c0"},{"id":"c1","id2":2}],"n":-1.5e3,"t":true,"o":{"k":[1, 2]},"0":"zero"}"#;
        assert_eq!(
            text(&f.extract(body).unwrap()),
            [
                ("A", "refs/heads/main".into()),
                ("B", "abc".into()),
                ("C", "c1".into()),
                ("D", "-1.5e3".into()),
                ("E", "true".into()),
                ("F", "{\"k\":[1, 2]}".into()),
                ("G", String::new()),
                ("H", String::new()),
                ("I", "zero".into()),
            ]
        );
        // A top-level array is indexed too.
        let f = fields("A = \"1.id\"", true, "empty");
        assert_eq!(
            text(&f.extract(br#"[{"id":0},{"id":"x"}]"#).unwrap()),
            [("A", "x".into())]
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let f = fields("A = \"a\"\nB = \"b.c\"", true, "refuse");
        let why = |body: &[u8]| f.extract(body).unwrap_err();
        assert_eq!(
            why(br#"{"a":"x"}"#),
            "b.c (for B) is missing from the payload, and env_required = true"
        );
        assert_eq!(
            why(br#"{"a":"x\u0000y","b":{"c":1}}"#),
            "a (for A) holds a NUL character, which no environment variable can"
        );
        assert_eq!(
            why(br#"{"a":null,"b":{"c":1}}"#),
            "a (for A) is null, and env_objects = \"refuse\""
        );
        let long = format!("{{\"a\":\"{}\",\"b\":{{\"c\":1}}}}", "x".repeat(4097));
        assert_eq!(why(long.as_bytes()), "a (for A) is longer than 4096 bytes");
        let escaped = format!("{{\"a\":\"{}\"}}", "\\u0041".repeat(5000));
        assert_eq!(
            why(escaped.as_bytes()),
            "a (for A) is longer than 4096 bytes"
        );
        assert_eq!(
            why(br#"{"a":"x","a":"y","b":{"c":1}}"#),
            "\"a\" appears twice in one object of the payload; duplicate keys are refused"
        );
        assert!(why(b"{\"a\":").starts_with("payload is not JSON"));
        assert_eq!(why(b"\xff"), "payload is not UTF-8");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(why(deep.as_bytes()).contains("deeper than 128"));
        let exactly = format!("{{\"a\":\"{}\",\"b\":{{\"c\":1}}}}", "é".repeat(2048));
        assert_eq!(f.extract(exactly.as_bytes()).unwrap()[0].1.len(), 4096);
    }

    #[test]
    fn names_and_paths_are_checked() {
        for (toml, message) in [
            ("path = \"a\"", "is not a variable name"),
            ("PATH = \"a\"", "PATH is reserved"),
            ("LD_PRELOAD = \"a\"", "LD_PRELOAD is reserved"),
            ("SOCKHOOK_EVENT = \"a\"", "SOCKHOOK_EVENT is reserved"),
            ("PYTHONPATH = \"a\"", "reserved"),
            ("1A = \"a\"", "is not a variable name"),
            ("A = \"a..b\"", "is not a path"),
            ("A = \"a.b.c.d.e.f.g.h.i\"", "is not a path"),
            ("A = 1", "must be a dotted path"),
        ] {
            let err = EnvFields::from_toml(&toml.parse().unwrap(), None, None).unwrap_err();
            assert!(err.contains(message), "{toml}: {err}");
        }
        let seventeen: String = (0..17).map(|i| format!("V{i} = \"a\"\n")).collect();
        assert!(EnvFields::from_toml(&seventeen.parse().unwrap(), None, None).is_err());
        assert!(EnvFields::from_toml(&toml::Table::new(), None, None).is_err());
        let err = EnvFields::from_toml(&"A = \"a\"".parse().unwrap(), None, Some("drop"));
        assert!(err.unwrap_err().starts_with("env_objects:"));
        assert!(
            EnvFields::from_toml(&"SOCKHOOK_REF = \"ref\"".parse().unwrap(), None, None).is_ok()
        );
    }
}
