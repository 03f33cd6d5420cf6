//! The normalized alert of every source ([`Normalized`]) and its serialization: one pass that
//! writes the body bytes and hashes each field from the bytes just written.
//!
//! The body is written member by member rather than through one derived `Serialize`, so the
//! field hashes (for `changed_fields`) come from the exact bytes sent, with no second
//! serialization, and so `raw` can be copied in verbatim as the last member.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::value::RawValue;
use xxhash_rust::xxh3::xxh3_64;

use super::entities::Entity;
use super::field_hashes::{set_hash, FieldHashes};
use super::json::{json_object, WriteJson};
use super::lenient::Text;

/// Everything a source maps its item to, before serialization. Field order is body order.
#[derive(Debug, Default)]
pub(crate) struct Normalized<'a> {
    pub title: Option<Text<'a>>,
    pub description: Option<Text<'a>>,
    pub category: Option<Text<'a>>,
    pub product: Option<Text<'a>>,
    pub detection_source: Option<Text<'a>>,
    pub severity: &'static str,
    pub status: &'static str,
    pub raw_status: Option<Text<'a>>,
    pub classification: Option<Text<'a>>,
    pub determination: Option<Text<'a>>,
    pub assigned_to: Option<Text<'a>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub first_activity_at: Option<String>,
    pub last_activity_at: Option<String>,
    pub resolved_at: Option<String>,
    pub portal_url: Option<Text<'a>>,
    pub incident_url: Option<Text<'a>>,
    pub incident_id: Option<Text<'a>>,
    pub related: Vec<Related<'a>>,
    pub mitre_techniques: Vec<Text<'a>>,
    pub tags: Vec<Text<'a>>,
    pub comments: Vec<Comment<'a>>,
    pub entities: Vec<Entity<'a>>,
    /// Indicators that come from no entity (a reported email's domains and attachment hashes),
    /// after the entities' own.
    pub extra_indicators: Vec<(&'static str, String)>,
    /// Phishing reports: the `email` object (the reporter, the verdict, the reported message),
    /// already serialized.
    pub email: Option<Box<RawValue>>,
    /// Notes for `normalization_error`, joined with "; ".
    pub errors: Vec<String>,
}

/// A link to the same detection or its container seen through another source.
#[derive(Debug, Clone)]
pub(crate) struct Related<'a> {
    pub kind: &'static str,
    pub source: &'static str,
    pub native_id: Text<'a>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Comment<'a> {
    pub text: Option<Text<'a>>,
    pub author: Option<Text<'a>>,
    pub created_at: Option<String>,
}

json_object!(Related {
    kind,
    source,
    native_id
});
json_object!(Comment {
    text,
    author,
    created_at
});

/// `links`: `{portal, incident}`.
struct LinksOut<'b, 'a> {
    portal: &'b Option<Text<'a>>,
    incident: &'b Option<Text<'a>>,
}

impl WriteJson for LinksOut<'_, '_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"portal\":");
        self.portal.write_json(out);
        out.extend_from_slice(b",\"incident\":");
        self.incident.write_json(out);
        out.push(b'}');
    }
}

/// One `{type, value}` of the `indicators` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Indicator<'b> {
    pub kind: &'static str,
    pub value: Cow<'b, str>,
}

impl WriteJson for Indicator<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":");
        self.kind.write_json(out);
        out.extend_from_slice(b",\"value\":");
        self.value.as_ref().write_json(out);
        out.push(b'}');
    }
}

/// A serialized body.
pub(crate) struct Written {
    pub body: Vec<u8>,
    pub field_hashes: FieldHashes,
    /// Exactly the `normalization_error` written into the body, if any.
    pub normalization_error: Option<String>,
}

/// Serializes `n` with `raw` as the last member.
pub(crate) fn write(n: &Normalized<'_>, raw: &str) -> Written {
    // The normalized part is typically well under the raw size; one growth at most.
    let mut w = Writer {
        buf: Vec::with_capacity(raw.len() + raw.len() / 2 + 1024),
        hashes: Vec::with_capacity(24),
    };
    w.buf.push(b'{');
    w.field("title", &n.title);
    w.field("description", &n.description);
    w.field("category", &n.category);
    w.field("product", &n.product);
    w.field("detection_source", &n.detection_source);
    w.field("severity", &n.severity);
    // `status` and `raw_status` are hashed together as "status" (design §6).
    let status_at = w.member("status", &n.status);
    let raw_status_at = w.member("raw_status", &n.raw_status);
    let folded = [xxh3_64(&w.buf[status_at]), xxh3_64(&w.buf[raw_status_at])];
    w.hashes.push(("status", xxh3_64(&bytes_of(&folded))));
    w.field("classification", &n.classification);
    w.field("determination", &n.determination);
    w.field("assigned_to", &n.assigned_to);
    w.field("created_at", &n.created_at);
    w.member("updated_at", &n.updated_at);
    w.field("first_activity_at", &n.first_activity_at);
    w.field("last_activity_at", &n.last_activity_at);
    w.field("resolved_at", &n.resolved_at);
    w.field(
        "links",
        &LinksOut {
            portal: &n.portal_url,
            incident: &n.incident_url,
        },
    );
    w.field("incident_id", &n.incident_id);
    w.set("related", n.related.iter(), false);
    w.field("duplicate_of", &());
    w.set(
        "indicators",
        indicators(&n.entities, &n.extra_indicators).iter(),
        false,
    );
    w.set("mitre_techniques", n.mitre_techniques.iter(), false);
    w.set("tags", n.tags.iter(), false);
    w.set("comments", n.comments.iter(), false);
    // Identical evidence (Microsoft repeats a file or a device across detections) is sent once.
    w.set("entities", n.entities.iter(), true);
    if let Some(email) = &n.email {
        w.field("email", email.as_ref());
    }

    let normalization_error = (!n.errors.is_empty()).then(|| n.errors.join("; "));
    if let Some(e) = &normalization_error {
        w.member("normalization_error", e);
    }
    w.buf.extend_from_slice(b",\"raw\":");
    w.buf.extend_from_slice(raw.as_bytes());
    w.buf.push(b'}');
    Written {
        body: w.buf,
        field_hashes: FieldHashes(w.hashes),
        normalization_error,
    }
}

/// The deduplicated indicators of `entities`, then `extra`, in first-seen order.
pub(crate) fn indicators<'b>(
    entities: &'b [Entity<'_>],
    extra: &'b [(&'static str, String)],
) -> Vec<Indicator<'b>> {
    // A linear scan beats hashing for the handful most alerts have; an email with hundreds of
    // URLs switches to a set so the cost stays linear.
    const LINEAR_UP_TO: usize = 32;
    let mut seen: HashSet<(&'static str, Cow<'b, str>)> = HashSet::new();
    let mut out: Vec<Indicator<'b>> = Vec::new();
    let mut push = |kind: &'static str, value: Cow<'b, str>| {
        let new = if out.len() < LINEAR_UP_TO {
            !out.iter().any(|i| i.kind == kind && i.value == value)
        } else {
            if seen.is_empty() {
                seen.extend(out.iter().map(|i| (i.kind, i.value.clone())));
            }
            seen.insert((kind, value.clone()))
        };
        if new {
            out.push(Indicator { kind, value });
        }
    };
    for e in entities {
        e.indicators(&mut push);
    }
    for (kind, value) in extra {
        push(kind, Cow::Borrowed(value.as_str()));
    }
    out
}

fn bytes_of(hashes: &[u64]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_le_bytes()).collect()
}

struct Writer {
    buf: Vec<u8>,
    hashes: Vec<(&'static str, u64)>,
}

impl Writer {
    /// Writes `,"name":value` (no comma after the opening brace) and returns the value's range.
    fn member<T: WriteJson + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> std::ops::Range<usize> {
        self.key(name);
        let start = self.buf.len();
        self.value(value);
        start..self.buf.len()
    }

    /// A member whose hash is that of its JSON.
    fn field<T: WriteJson + ?Sized>(&mut self, name: &'static str, value: &T) {
        let range = self.member(name, value);
        let h = xxh3_64(&self.buf[range]);
        self.hashes.push((name, h));
    }

    /// An array member hashed as a set of its elements; with `dedup`, an element whose JSON
    /// equals an earlier one's is left out.
    fn set<'i, T: WriteJson + 'i>(
        &mut self,
        name: &'static str,
        items: impl Iterator<Item = &'i T>,
        dedup: bool,
    ) {
        self.key(name);
        self.buf.push(b'[');
        let mut element_hashes: Vec<u64> = Vec::new();
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for item in items {
            let before = self.buf.len();
            if !element_hashes.is_empty() {
                self.buf.push(b',');
            }
            let start = self.buf.len();
            self.value(item);
            let h = xxh3_64(&self.buf[start..]);
            if dedup {
                let dup = element_hashes
                    .iter()
                    .zip(&ranges)
                    .any(|(&eh, r)| eh == h && self.buf[r.clone()] == self.buf[start..]);
                if dup {
                    self.buf.truncate(before);
                    continue;
                }
                ranges.push(start..self.buf.len());
            }
            element_hashes.push(h);
        }
        self.buf.push(b']');
        self.hashes.push((name, set_hash(&mut element_hashes)));
    }

    fn key(&mut self, name: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        // Field names are our own ASCII identifiers; they need no escaping.
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn value<T: WriteJson + ?Sized>(&mut self, value: &T) {
        value.write_json(&mut self.buf);
    }
}
