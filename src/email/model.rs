//! The shape of a parsed reported email: the structs serialized as the alert's
//! `email.message` object, and the indicators the SOC platform pivots on.
//!
//! Field names are the JSON contract. Every `Option` serializes as `null` and every list as
//! `[]` (no skipped keys), so consumers see one stable set of keys whatever the input was.

use std::collections::HashSet;

use serde::Serialize;

/// A display name and address, as read from an address header or a .msg property.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: Option<String>,
}

impl Mailbox {
    /// The lowercased domain of the address, when it has one.
    pub fn domain(&self) -> Option<String> {
        domain_of_address(self.address.as_deref()?)
    }
}

/// Sender authentication verdicts, lowercased words as the receiving server wrote them
/// (`pass`, `fail`, `softfail`, `none`, `neutral`, `temperror`, `permerror`, `bestguesspass`…).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Authentication {
    pub spf: Option<String>,
    pub dkim: Option<String>,
    pub dmarc: Option<String>,
    pub compauth: Option<String>,
    pub compauth_reason: Option<String>,
    pub spf_domain: Option<String>,
    pub dkim_domain: Option<String>,
    pub dmarc_header_from: Option<String>,
}

/// Exchange Online Protection's filtering stamps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Antispam {
    pub scl: Option<i64>,
    pub bcl: Option<i64>,
    pub sfv: Option<String>,
    pub cat: Option<String>,
    pub pcl: Option<i64>,
    pub country: Option<String>,
    pub lang: Option<String>,
    pub ipv: Option<String>,
    pub dir: Option<String>,
    pub sfty: Option<String>,
}

/// One `Received` header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReceivedHop {
    pub from: Option<String>,
    pub by: Option<String>,
    pub ip: Option<String>,
    /// RFC 3339 UTC, from the date after the last `;`.
    pub at: Option<String>,
}

/// Where the body text came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodySource {
    Text,
    Html,
    #[default]
    None,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Body {
    pub text: String,
    pub source: BodySource,
    /// True when `text` was cut at `Limits::body_max`.
    pub truncated: bool,
    /// Bytes of the whole extracted text, before any truncation.
    pub length: usize,
}

/// One distinct URL found in the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The target, unwrapped from Safe Links when it was wrapped.
    pub url: String,
    pub domain: Option<String>,
    /// The link text, only when it differs from the target.
    pub text: Option<String>,
    /// The Safe Links URL as written, when `url` was unwrapped from it.
    pub wrapped: Option<String>,
}

/// One attachment part (or .msg attachment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub name: Option<String>,
    pub content_type: Option<String>,
    /// Decoded bytes.
    pub size: u64,
    /// Hex SHA-256 of the decoded bytes; `null` only for an Outlook embedded item, which is a
    /// storage inside the .msg rather than a file.
    pub sha256: Option<String>,
    /// `attachment` or `inline` as declared, `null` when not declared.
    pub disposition: Option<String>,
    pub nested: Option<Box<NestedMessage>>,
}

/// What is kept of an attached message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NestedMessage {
    pub message_id: Option<String>,
    pub network_message_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<Mailbox>,
    pub date: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// The reported (original) email, as sent in the alert's `email.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportedEmail {
    /// As written, angle brackets included.
    pub message_id: Option<String>,
    pub network_message_id: Option<String>,
    pub crosstenant_id: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339 UTC.
    pub date: Option<String>,
    pub from: Option<Mailbox>,
    pub sender: Option<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub return_path: Option<String>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub in_reply_to: Option<String>,
    pub authentication: Authentication,
    pub antispam: Antispam,
    /// Newest first, as the headers are stacked.
    pub received: Vec<ReceivedHop>,
    pub originating_ip: Option<String>,
    pub body: Body,
    pub urls: Vec<Link>,
    pub urls_truncated: bool,
    pub attachments: Vec<Attachment>,
    /// A report forwarded inline: the forward's own From, when `from` and `subject` were read
    /// from the quoted original in the body.
    pub forwarded_by: Option<Mailbox>,
    /// What could not be read, one short sentence each.
    pub errors: Vec<String>,
}

impl ReportedEmail {
    /// The Message-ID as written (with its angle brackets), the `internetMessageId` of Graph.
    pub fn internet_message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    pub fn network_message_id(&self) -> Option<&str> {
        self.network_message_id.as_deref()
    }

    /// The From address, what a user sees and what phishing spoofs.
    pub fn from_address(&self) -> Option<&str> {
        self.from.as_ref().and_then(|f| f.address.as_deref())
    }

    /// `(type, value)` pairs for the SOC platform, first-seen order, no duplicates.
    pub fn indicators(&self) -> Vec<(&'static str, String)> {
        let mut out = Indicators::default();
        let sender_domain = self.from.as_ref().and_then(Mailbox::domain);
        if let Some(address) = self.from.as_ref().and_then(|m| m.address.as_deref()) {
            out.push("email_sender", address.trim());
        }
        if let Some(domain) = &sender_domain {
            out.push("domain", domain);
        }
        // A Reply-To or Return-Path elsewhere than the sender's domain is where replies and
        // bounces really go, so it is worth a pivot; the same domain adds nothing.
        let others = self
            .reply_to
            .iter()
            .filter_map(Mailbox::domain)
            .chain(self.return_path.as_deref().and_then(domain_of_address));
        for domain in others {
            if sender_domain.as_deref() != Some(domain.as_str()) {
                out.push("domain", &domain);
            }
        }
        if let Some(id) = self.internet_message_id() {
            out.push("internet_message_id", id);
        }
        if let Some(ip) = &self.originating_ip {
            out.push("ip", ip);
        }
        for link in &self.urls {
            out.push("url", &link.url);
            if let Some(domain) = &link.domain {
                out.push("domain", domain);
            }
        }
        push_attachments(&mut out, &self.attachments);
        out.list
    }
}

fn push_attachments(out: &mut Indicators, attachments: &[Attachment]) {
    for attachment in attachments {
        if let Some(hash) = &attachment.sha256 {
            out.push("sha256", hash);
        }
        if let Some(name) = attachment.name.as_deref().filter(|n| !n.trim().is_empty()) {
            out.push("file_name", name.trim());
        }
        if let Some(nested) = &attachment.nested {
            push_attachments(out, &nested.attachments);
        }
    }
}

#[derive(Default)]
struct Indicators {
    list: Vec<(&'static str, String)>,
    seen: HashSet<(&'static str, String)>,
}

impl Indicators {
    fn push(&mut self, kind: &'static str, value: &str) {
        if value.is_empty() {
            return;
        }
        let key = (kind, value.to_string());
        if self.seen.insert(key.clone()) {
            self.list.push(key);
        }
    }
}

/// The lowercased part after the last `@`, without the angle brackets a Return-Path keeps.
pub(super) fn domain_of_address(address: &str) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}
