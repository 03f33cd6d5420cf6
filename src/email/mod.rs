//! Parsing of a user-reported email (the original message a user reported as phishing, as
//! found attached to a report in the reporting mailbox) into [`ReportedEmail`], the
//! `email.message` object of the alert sent to the SOC platform.
//!
//! Input is either MIME (an `.eml`, or the MIME of an Outlook item attachment) or an Outlook
//! `.msg` compound file. Parsing never fails and never panics: whatever cannot be read is
//! described in `errors` and everything else is still filled. The wrapper report's subject
//! (`Phishing:`, `3|…`) is read by [`parse_wrapper_subject`], and [`original`] packages the
//! raw bytes for forwarding.

mod body;
mod decode;
mod forwarded;
mod headers;
mod html;
mod mime;
mod model;
mod msg;
mod original;
mod subject;
mod urls;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use model::{
    Antispam, Attachment, Authentication, Body, BodySource, Link, Mailbox, NestedMessage,
    ReceivedHop, ReportedEmail,
};
pub use original::{original, Original};
pub use subject::{parse_wrapper_subject, LegacySubject, Verdict, WrapperSubject};

/// The CFB (OLE2 compound file) signature an Outlook .msg starts with.
const CFB_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Attached messages are never followed deeper than this, whatever `max_depth` says: each
/// level is a recursion, and no real report nests this far.
const HARD_MAX_DEPTH: usize = 32;

/// Notes kept per message; a hostile message could otherwise produce one per part.
const MAX_ERRORS: usize = 50;

/// Bounds on what is kept of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of body text kept (cut on a char boundary).
    pub body_max: usize,
    /// Distinct URLs kept.
    pub max_urls: usize,
    /// Attachments listed per message.
    pub max_attachments: usize,
    /// Levels of attached messages summarized (the reported message is level 0).
    pub max_depth: usize,
    /// Largest original included as base64 by [`original`].
    pub include_original_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_max: 65_536,
            max_urls: 500,
            max_attachments: 100,
            max_depth: 5,
            include_original_max: 2 * 1024 * 1024,
        }
    }
}

/// Parses a MIME message (RFC 5322).
pub fn parse_mime(bytes: &[u8], limits: &Limits) -> ReportedEmail {
    tidy(mime::parse(bytes, limits, 0))
}

/// Parses an Outlook .msg (MS-OXMSG compound file).
pub fn parse_msg(bytes: &[u8], limits: &Limits) -> ReportedEmail {
    tidy(msg::parse(bytes, limits, 0))
}

/// Whether the bytes start with the compound-file signature of an Outlook .msg.
pub fn is_msg(bytes: &[u8]) -> bool {
    bytes.starts_with(&CFB_MAGIC)
}

/// Parses a .msg when the bytes are a compound file, else MIME.
pub fn parse_any(bytes: &[u8], limits: &Limits) -> ReportedEmail {
    tidy(parse_any_at(bytes, limits, 0))
}

fn parse_any_at(bytes: &[u8], limits: &Limits, depth: usize) -> ReportedEmail {
    if is_msg(bytes) {
        msg::parse(bytes, limits, depth)
    } else {
        mime::parse(bytes, limits, depth)
    }
}

/// The summary of an attached message found at `depth + 1`, or `None` (with a note) when that
/// is deeper than allowed. Its notes are added to `out`'s.
fn nested(
    bytes: &[u8],
    limits: &Limits,
    depth: usize,
    name: Option<&str>,
    out: &mut ReportedEmail,
) -> Option<Box<NestedMessage>> {
    let level = depth + 1;
    if level > limits.max_depth.min(HARD_MAX_DEPTH) {
        out.errors.push(format!(
            "an attached message at nesting level {level} was not parsed: the limit is {}",
            limits.max_depth.min(HARD_MAX_DEPTH)
        ));
        return None;
    }
    let inner = parse_any_at(bytes, limits, level);
    Some(Box::new(summarize(inner, name, out)))
}

/// Keeps what the alert needs of an attached message, moving its notes to the parent's.
fn summarize(inner: ReportedEmail, name: Option<&str>, out: &mut ReportedEmail) -> NestedMessage {
    let label = match name {
        Some(name) => format!("attached message \"{}\"", decode::printable(name, 80)),
        None => "attached message".to_string(),
    };
    for error in inner.errors {
        out.errors.push(format!("{label}: {error}"));
    }
    NestedMessage {
        message_id: inner.message_id,
        network_message_id: inner.network_message_id,
        subject: inner.subject,
        from: inner.from,
        date: inner.date,
        attachments: inner.attachments,
    }
}

/// Removes repeated notes and caps their number.
fn tidy(mut email: ReportedEmail) -> ReportedEmail {
    let mut seen = std::collections::HashSet::new();
    let mut errors = Vec::new();
    let mut dropped = 0usize;
    for error in std::mem::take(&mut email.errors) {
        if !seen.insert(error.clone()) {
            continue;
        }
        if errors.len() < MAX_ERRORS {
            errors.push(error);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        errors.push(format!("{dropped} more problems were not listed"));
    }
    email.errors = errors;
    email
}
