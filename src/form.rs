//! Stage 5a: the JSON payload of a form delivery. GitHub and Gitea can send
//! `application/x-www-form-urlencoded` with the JSON in a `payload` field;
//! Plex sends `multipart/form-data` with the JSON in a `payload` part.
//! `[match]` and `[env]` read that JSON; the command's stdin stays the body
//! as sent unless the hook says `stdin = "payload"`.
//!
//! Decoding is bounded: a form field is percent-decoded a piece at a time
//! into the caller's sink (a spool, or a MAC), never whole into the heap; a
//! multipart part is a slice of the body, found with one forward search per
//! boundary, with a part's header fields at most [`MAX_PART_HEAD_BYTES`].
//! Hostile forms (no `payload`, two of them, a bad percent-escape, a
//! boundary that never closes) are refused with a reason that says which.

use memchr::memmem;

use crate::error::Refusal;
use crate::filter::is_json;

/// The field or part that carries the JSON.
pub const PAYLOAD: &str = "payload";
/// Longest header section of one multipart part, in bytes.
pub const MAX_PART_HEAD_BYTES: usize = 8192;
/// Longest boundary (RFC 2046 §5.1.1).
pub const MAX_BOUNDARY_BYTES: usize = 70;
/// Bytes decoded before they are handed to the sink.
const PIECE_BYTES: usize = 16 * 1024;

/// How a body carries the JSON that a hook's filters read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// The body is the JSON (`application/json`, `application/…+json`).
    Json,
    /// `application/x-www-form-urlencoded` with a `payload` field.
    Form,
    /// `multipart/form-data` with a `payload` part and this boundary.
    Multipart(Vec<u8>),
}

impl Carrier {
    /// The carrier a `Content-Type` announces; `None` for any other type.
    /// A multipart type without a usable boundary is refused.
    pub fn of(content_type: Option<&[u8]>) -> Result<Option<Carrier>, Refusal> {
        if is_json(content_type) {
            return Ok(Some(Carrier::Json));
        }
        let Some(value) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
            return Ok(None);
        };
        let mut params = value.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "application/x-www-form-urlencoded" {
            return Ok(Some(Carrier::Form));
        }
        if media != "multipart/form-data" {
            return Ok(None);
        }
        let boundary = params.find_map(|p| {
            let (name, value) = p.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        });
        match boundary {
            Some(b) if !b.is_empty() && b.len() <= MAX_BOUNDARY_BYTES => {
                Ok(Some(Carrier::Multipart(b.into_bytes())))
            }
            _ => Err(Refusal::Unprocessable(format!(
                "multipart/form-data needs a boundary parameter of 1 to {MAX_BOUNDARY_BYTES} characters"
            ))),
        }
    }
}

fn refused(why: impl Into<String>) -> Refusal {
    Refusal::Unprocessable(format!("cannot read the form's payload: {}", why.into()))
}

/// Hands the decoded `payload` field of the form `body` to `sink`, a piece
/// at a time.
pub fn form_payload(
    body: &[u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let mut found: Option<(usize, &[u8])> = None;
    let mut at = 0;
    for pair in body.split(|&b| b == b'&') {
        let start = at;
        at += pair.len() + 1;
        let (name, value, value_at) = match memchr::memchr(b'=', pair) {
            Some(eq) => (&pair[..eq], &pair[eq + 1..], start + eq + 1),
            None => (pair, &pair[pair.len()..], start + pair.len()),
        };
        if !is_payload_name(name) {
            continue;
        }
        if found.is_some() {
            return Err(refused(
                "the form has two payload fields; a sender sends one",
            ));
        }
        found = Some((value_at, value));
    }
    let Some((offset, value)) = found else {
        return Err(refused("the form has no payload field"));
    };
    let mut piece = Vec::with_capacity(PIECE_BYTES);
    let mut i = 0;
    while i < value.len() {
        let byte = match value[i] {
            b'+' => b' ',
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        refused(format!(
                            "the payload field has a bad percent-escape at byte {} of the body",
                            offset + i
                        ))
                    })?;
                i += 2;
                hex
            }
            b => b,
        };
        piece.push(byte);
        if piece.len() == PIECE_BYTES {
            sink(&piece)?;
            piece.clear();
        }
        i += 1;
    }
    if !piece.is_empty() {
        sink(&piece)?;
    }
    Ok(())
}

/// Whether a form field's raw name decodes to `payload`.
fn is_payload_name(raw: &[u8]) -> bool {
    // `payload` with every byte escaped is 21 bytes; longer is another name.
    if raw.len() > 3 * PAYLOAD.len() {
        return false;
    }
    let mut name = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let Some(b) = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                else {
                    return false;
                };
                name.push(b);
                i += 3;
            }
            b'+' => {
                name.push(b' ');
                i += 1;
            }
            b => {
                name.push(b);
                i += 1;
            }
        }
    }
    name == PAYLOAD.as_bytes()
}

/// The content of the `payload` part of the multipart `body` (RFC 7578).
pub fn multipart_payload<'b>(body: &'b [u8], boundary: &[u8]) -> Result<&'b [u8], Refusal> {
    let mut delimiter = b"\r\n--".to_vec();
    delimiter.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delimiter);
    // The first delimiter may open the body, without the CRLF before it.
    let mut at = if body.starts_with(&delimiter[2..]) {
        delimiter.len() - 2
    } else {
        finder
            .find(body)
            .map(|i| i + delimiter.len())
            .ok_or_else(|| refused("the body has no multipart boundary"))?
    };
    let mut found = None;
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            break;
        }
        let after_padding = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(rest.len());
        if !rest[after_padding..].starts_with(b"\r\n") {
            return Err(refused(
                "the multipart body ends before its closing boundary",
            ));
        }
        let part = &rest[after_padding + 2..];
        let head_end = memmem::find(
            &part[..part.len().min(MAX_PART_HEAD_BYTES + 4)],
            b"\r\n\r\n",
        )
        .map(|i| i + 2)
        .or_else(|| part.starts_with(b"\r\n").then_some(0))
        .ok_or_else(|| {
            refused(format!(
                "a part's header fields do not end within {MAX_PART_HEAD_BYTES} bytes"
            ))
        })?;
        let content_start = head_end + 2;
        let content_len = finder
            .find(&part[content_start..])
            .ok_or_else(|| refused("the multipart body ends before its closing boundary"))?;
        if is_payload_part(&part[..head_end]) {
            if found.is_some() {
                return Err(refused(
                    "the body has two payload parts; a sender sends one",
                ));
            }
            found = Some(&part[content_start..content_start + content_len]);
        }
        at = body.len() - part.len() + content_start + content_len + delimiter.len();
    }
    found.ok_or_else(|| refused("the multipart body has no payload part"))
}

/// Whether a part's header fields say `Content-Disposition: form-data; name="payload"`.
fn is_payload_part(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let Ok(line) = std::str::from_utf8(line) else {
            return false;
        };
        let Some((field, value)) = line.split_once(':') else {
            return false;
        };
        if !field.trim().eq_ignore_ascii_case("content-disposition") {
            return false;
        }
        let mut params = value.split(';');
        let form_data = params
            .next()
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data"));
        form_data
            && params.any(|p| {
                p.trim().split_once('=').is_some_and(|(n, v)| {
                    n.trim().eq_ignore_ascii_case("name") && v.trim().trim_matches('"') == PAYLOAD
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        form_payload(body, &mut |p| {
            out.extend_from_slice(p);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form(b"a=1&payload=%7B%22ref%22%3A+%22x%22%7D&b").unwrap(),
            b"{\"ref\": \"x\"}"
        );
        assert_eq!(form(b"p%61yload=1").unwrap(), b"1");
        assert_eq!(form(b"payload=").unwrap(), b"");
        let big = format!("payload={}", "%41".repeat(40_000));
        assert_eq!(form(big.as_bytes()).unwrap(), vec![b'A'; 40_000]);
    }

    #[test]
    fn bad_forms_say_why() {
        for (body, why) in [
            (&b"a=1"[..], "the form has no payload field"),
            (b"", "the form has no payload field"),
            (b"payload=1&payload=2", "two payload fields"),
            (b"payload=%7", "bad percent-escape at byte 8 of the body"),
            (
                b"x=1&payload=ab%zz",
                "bad percent-escape at byte 14 of the body",
            ),
            (b"payload=%+1", "bad percent-escape"),
        ] {
            let err = form(body).unwrap_err();
            assert!(err.contains(why), "{body:?}: {err}");
        }
    }

    const PLEX: &[u8] = b"--B\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: application/json\r\n\r\n{\"event\":\"media.play\"}\r\n--B\r\nContent-Disposition: form-data; name=\"thumb\"; filename=\"t.jpg\"\r\n\r\n\xff\xd8\r\n--B--\r\n";

    #[test]
    fn the_payload_part_is_found() {
        assert_eq!(
            multipart_payload(PLEX, b"B").unwrap(),
            b"{\"event\":\"media.play\"}"
        );
        let preamble = [b"preamble\r\n".as_slice(), PLEX].concat();
        assert_eq!(
            multipart_payload(&preamble, b"B").unwrap(),
            b"{\"event\":\"media.play\"}"
        );
        assert_eq!(
            Carrier::of(Some(b"multipart/form-data; boundary=\"B\"")).unwrap(),
            Some(Carrier::Multipart(b"B".to_vec()))
        );
        assert!(Carrier::of(Some(b"multipart/form-data")).is_err());
        assert_eq!(Carrier::of(Some(b"text/plain")).unwrap(), None);
    }

    #[test]
    fn bad_multiparts_say_why() {
        let unclosed = &PLEX[..PLEX.len() - 8];
        let no_payload = PLEX.to_vec();
        let no_payload = String::from_utf8_lossy(&no_payload).replace("\"payload\"", "\"other\"");
        let twice = [
            &PLEX[..PLEX.len() - 4],
            b"\r\nContent-Disposition: form-data; name=payload\r\n\r\n2\r\n--B--",
        ]
        .concat();
        let long_head = format!("--B\r\nX: {}\r\n\r\nx\r\n--B--", "a".repeat(9000));
        for (body, why) in [
            (unclosed, "ends before its closing boundary"),
            (b"--B\r\n\r\n{}", "ends before its closing boundary"),
            (b"--B", "ends before its closing boundary"),
            (b"{}", "no multipart boundary"),
            (no_payload.as_bytes(), "no payload part"),
            (&twice, "two payload parts"),
            (long_head.as_bytes(), "do not end within 8192 bytes"),
        ] {
            let err = multipart_payload(body, b"B").unwrap_err().to_string();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
