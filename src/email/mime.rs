//! A MIME message (RFC 5322/2045) read with mail-parser: its headers, body pieces and
//! attachments, with attached messages summarized recursively.
//!
//! The MIME tree is walked here rather than through mail-parser's body lists, because a part
//! cut short by a missing boundary is flagged there as an "encoding problem" and demoted to
//! an attachment; going by the declared type keeps it in the body and re-decodes its bytes.

use std::borrow::Cow;

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::body::{assemble, Piece};
use super::decode::{
    charset_decode, charset_known, sha256_hex, transfer_decode, unknown_charset_note,
};
use super::headers;
use super::model::{Attachment, ReportedEmail};
use super::Limits;

/// Boundaries longer than this are not searched for (RFC 2046 allows 70 characters).
const MAX_BOUNDARY_SEARCH: usize = 256;
/// Multiparts whose closing boundary is checked; each check scans the rest of the message,
/// so a hostile message with thousands of multiparts would otherwise be quadratic.
const MAX_BOUNDARY_CHECKS: usize = 64;

pub(super) fn parse(bytes: &[u8], limits: &Limits, depth: usize) -> ReportedEmail {
    let mut out = ReportedEmail::default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        out.errors.push("the message is empty".to_string());
        return out;
    }
    let Some(msg) = MessageParser::default().parse(bytes) else {
        out.errors.push("the message has no headers".to_string());
        return out;
    };
    headers::fill(&msg, &mut out);
    let headerless = out.errors.iter().any(|e| e == "the message has no headers");
    if !headerless && !has_header_end(bytes) {
        // Every message has an empty line after its headers, even one without a body.
        out.errors.push(
            "the message ends inside its headers: it was cut short (no body was read)".to_string(),
        );
    }
    let pieces = walk(&msg, limits, depth, &mut out);
    assemble(pieces, limits, &mut out);
    out
}

/// Whether the header block is closed by an empty line (CRLF or bare LF line ends).
fn has_header_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Visits the MIME tree depth-first in document order (with an explicit stack: a hostile
/// message can nest multiparts thousands deep), returning the body pieces and filling
/// `attachments`.
fn walk(msg: &Message<'_>, limits: &Limits, depth: usize, out: &mut ReportedEmail) -> Vec<Piece> {
    let raw = msg.raw_message.as_ref();
    let mut pieces = Vec::new();
    let mut visited = vec![false; msg.parts.len()];
    let mut stack = vec![0usize];
    let mut skipped = 0usize;
    let mut missing_boundary = false;
    let mut boundary_checks = 0usize;
    while let Some(id) = stack.pop() {
        let (Some(part), Some(seen)) = (msg.parts.get(id), visited.get_mut(id)) else {
            continue;
        };
        if *seen {
            continue;
        }
        *seen = true;
        if let PartType::Multipart(children) = &part.body {
            boundary_checks += 1;
            if !missing_boundary
                && boundary_checks <= MAX_BOUNDARY_CHECKS
                && !has_closing_boundary(part, raw)
            {
                missing_boundary = true;
                out.errors.push(
                    "the MIME structure is incomplete: the closing boundary of a multipart \
                     part is missing"
                        .to_string(),
                );
            }
            stack.extend(children.iter().rev().map(|c| *c as usize));
            continue;
        }
        let kind = Kind::of(part);
        if kind.is_body() {
            let text = body_text(part, raw, &kind, out);
            pieces.push(if kind.subtype == "html" {
                Piece::Html(text)
            } else {
                Piece::Text(text)
            });
            continue;
        }
        if kind.ctype == "multipart" {
            // Declared multipart, but its boundary never appears: mail-parser keeps the raw
            // text, which is still worth reading for URLs.
            out.errors.push(
                "a multipart part has no parts: its boundary never appears in the body".to_string(),
            );
            pieces.push(Piece::Text(body_text(part, raw, &kind, out)));
            continue;
        }
        if out.attachments.len() >= limits.max_attachments {
            skipped += 1;
            continue;
        }
        let attachment = attachment(part, raw, &kind, limits, depth, out);
        out.attachments.push(attachment);
    }
    if skipped > 0 {
        out.errors.push(format!(
            "{skipped} more attachments were not listed: the limit is {}",
            limits.max_attachments
        ));
    }
    pieces
}

/// What a leaf part declares about itself.
struct Kind {
    ctype: String,
    subtype: String,
    content_type: Option<String>,
    charset: Option<String>,
    disposition: Option<String>,
    name: Option<String>,
    encoding: Option<String>,
    message: bool,
}

impl Kind {
    fn of(part: &MessagePart<'_>) -> Kind {
        let ct = part.content_type();
        let ctype = ct
            .map(|c| c.ctype().to_ascii_lowercase())
            .unwrap_or_default();
        let subtype = ct
            .and_then(|c| c.subtype())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let content_type = ct.map(|_| {
            if subtype.is_empty() {
                ctype.clone()
            } else {
                format!("{ctype}/{subtype}")
            }
        });
        let name = part
            .attachment_name()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let message = matches!(part.body, PartType::Message(_))
            || (ctype == "message" && matches!(subtype.as_str(), "rfc822" | "global"));
        Kind {
            charset: ct.and_then(|c| c.attribute("charset")).map(str::to_string),
            disposition: part
                .content_disposition()
                .map(|d| d.ctype().to_ascii_lowercase()),
            encoding: part.content_transfer_encoding().map(str::to_string),
            ctype,
            subtype,
            content_type,
            name,
            message,
        }
    }

    /// Text shown to the reader: plain or HTML, not declared an attachment, no file name.
    fn is_body(&self) -> bool {
        let shown_type = self.content_type.is_none()
            || (self.ctype == "text" && matches!(self.subtype.as_str(), "plain" | "html"));
        shown_type
            && !self.message
            && self.name.is_none()
            && self.disposition.as_deref() != Some("attachment")
    }
}

/// The raw (still transfer-encoded) bytes of a part.
fn raw_body<'a>(part: &MessagePart<'_>, raw: &'a [u8]) -> Option<&'a [u8]> {
    raw.get(part.offset_body as usize..part.offset_end as usize)
}

/// The decoded text of a body part; re-decoded from the raw bytes when mail-parser could not
/// (it then returns them undecoded). An unknown charset is noted.
fn body_text(part: &MessagePart<'_>, raw: &[u8], kind: &Kind, out: &mut ReportedEmail) -> String {
    if let Some(charset) = kind.charset.as_deref().filter(|c| !charset_known(c)) {
        let note = unknown_charset_note(charset);
        if !out.errors.contains(&note) {
            out.errors.push(note);
        }
    }
    match &part.body {
        PartType::Text(text) | PartType::Html(text) if !part.is_encoding_problem => {
            text.to_string()
        }
        _ => {
            let bytes = raw_body(part, raw).unwrap_or_else(|| part.contents());
            let decoded = transfer_decode(bytes, kind.encoding.as_deref());
            charset_decode(&decoded, kind.charset.as_deref())
        }
    }
}

/// The decoded bytes of an attachment part.
fn attachment_bytes<'a>(part: &'a MessagePart<'_>, raw: &'a [u8], kind: &Kind) -> Cow<'a, [u8]> {
    match &part.body {
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) if !part.is_encoding_problem => {
            Cow::Borrowed(bytes.as_ref())
        }
        _ => match raw_body(part, raw) {
            Some(bytes) => Cow::Owned(transfer_decode(bytes, kind.encoding.as_deref())),
            None => Cow::Borrowed(part.contents()),
        },
    }
}

fn attachment(
    part: &MessagePart<'_>,
    raw: &[u8],
    kind: &Kind,
    limits: &Limits,
    depth: usize,
    out: &mut ReportedEmail,
) -> Attachment {
    let bytes = attachment_bytes(part, raw, kind);
    let lower_name = kind.name.as_deref().map(str::to_ascii_lowercase);
    let outlook_item = lower_name.as_deref().is_some_and(|n| n.ends_with(".msg"))
        || kind.content_type.as_deref() == Some("application/vnd.ms-outlook");
    let is_message = kind.message
        || lower_name.as_deref().is_some_and(|n| n.ends_with(".eml"))
        || (outlook_item && super::is_msg(&bytes));
    let nested = if is_message {
        super::nested(&bytes, limits, depth, kind.name.as_deref(), out)
    } else {
        None
    };
    Attachment {
        name: kind.name.clone(),
        content_type: kind.content_type.clone(),
        size: bytes.len() as u64,
        sha256: Some(sha256_hex(&bytes)),
        disposition: kind.disposition.clone(),
        nested,
    }
}

/// Whether the closing delimiter `--boundary--` of a multipart part appears after its start.
fn has_closing_boundary(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    let Some(boundary) = part.content_type().and_then(|c| c.attribute("boundary")) else {
        return true;
    };
    if boundary.len() > MAX_BOUNDARY_SEARCH {
        return true;
    }
    let needle = format!("--{boundary}--");
    let haystack = raw.get(part.offset_body as usize..).unwrap_or_default();
    contains(haystack, needle.as_bytes())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let mut at = 0;
    while let Some(offset) = haystack
        .get(at..)
        .and_then(|h| h.iter().position(|b| *b == first))
    {
        let start = at + offset;
        if haystack
            .get(start..start + needle.len())
            .is_some_and(|w| w == needle)
        {
            return true;
        }
        at = start + 1;
    }
    false
}
