//! Turns one Microsoft item (a Graph alert, incident or threat submission, or a Cloud Apps
//! alert) into what the store needs: its identity, its version, the fields filters read, and the
//! normalized body of schema `m365-ingest.alert.v1` (design §6) ready to send.
//!
//! Rules that hold for every source (design §4 rule 6):
//! - Only an item without a readable id or version is refused ([`Unusable`], quarantined).
//! - Anything else is prepared. What could not be normalized is left out and named in
//!   `normalization_error`; Microsoft's object is always in `raw`, verbatim.
//! - Unknown enum values map to `unknown` (with Microsoft's text kept, e.g. in `raw_status`);
//!   unknown fields are ignored here and kept in `raw`.
//!
//! Layout: `graph_alert`, `incident`, `submission` and `cloud_apps` map their source into
//! `body::Normalized`; `entities` holds the entity types and the evidence mapping; `body`
//! serializes and hashes; `field_hashes` stores and compares those hashes; `recover` is the
//! slow path for items the typed parse rejects; `envelope` wraps a body for delivery.

mod body;
mod canonical;
mod cloud_apps;
mod entities;
pub mod envelope;
mod field_hashes;
mod graph_alert;
mod incident;
mod json;
mod lenient;
mod map;
mod phishing_report;
mod recover;
mod submission;

use serde_json::value::RawValue;

pub use field_hashes::{changed_fields, FieldHashes};
pub use phishing_report::{ReportFormat, ReportParts};

/// The `schema` of every event.
pub const SCHEMA: &str = "m365-ingest.alert.v1";

/// Where an item comes from (design §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Alerts,
    Incidents,
    Submissions,
    CloudApps,
    /// User-reported messages read from the reporting mailbox (Graph mail delta).
    PhishingReports,
}

impl SourceKind {
    /// The `source` written in events, ids and config.
    /// The inverse of `as_str`.
    pub fn parse(s: &str) -> Option<SourceKind> {
        Some(match s {
            "alerts" => SourceKind::Alerts,
            "incidents" => SourceKind::Incidents,
            "submissions" => SourceKind::Submissions,
            "cloud_apps" => SourceKind::CloudApps,
            "phishing_reports" => SourceKind::PhishingReports,
            _ => return None,
        })
    }

    /// Every source, in the order pollers are started and listed.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Alerts,
        SourceKind::Incidents,
        SourceKind::Submissions,
        SourceKind::CloudApps,
        SourceKind::PhishingReports,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Alerts => "alerts",
            SourceKind::Incidents => "incidents",
            SourceKind::Submissions => "submissions",
            SourceKind::CloudApps => "cloud_apps",
            SourceKind::PhishingReports => "phishing_reports",
        }
    }

    /// The event `kind`: Cloud Apps alerts are alerts.
    pub fn kind(self) -> &'static str {
        match self {
            SourceKind::Alerts | SourceKind::CloudApps => "alert",
            SourceKind::Incidents => "incident",
            SourceKind::Submissions => "submission",
            SourceKind::PhishingReports => "phishing_report",
        }
    }
}

/// Why an item cannot be stored at all (only: no readable id or no readable version); goes to
/// quarantine with the item's raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub reason: String,
    /// The id, when it was readable (the version was not).
    pub native_id: Option<String>,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.native_id {
            Some(id) => write!(f, "{} (id {id})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Unusable {}

/// The fields filters look at (design §4 rule 7): Microsoft's raw strings, plus the normalized
/// severity and status. `None` means "cannot be read", which filters let through; that includes
/// enum values this build does not know (see `map::filter_value`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterFields {
    pub service_source: Option<String>,
    pub detection_source: Option<String>,
    pub category: Option<String>,
    pub severity: Option<&'static str>,
    pub status: Option<&'static str>,
}

/// The version of an item (design §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionInput {
    /// Graph sources: `lastUpdateDateTime` in 100-ns ticks since the Unix epoch.
    Ticks(i64),
    /// Submissions and Cloud Apps: SHA-256 of the RFC 8785 JSON of the mutable fields; the store
    /// turns a new hash into the next state number.
    State { hash: [u8; 32] },
    /// Phishing reports: a report never changes, so it has one version, `r1`; reading it again
    /// (a resync, a move back into the folder) is always a duplicate.
    Once,
}

/// Links to other items, for the store's cross-source joins (incident, twin, message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    pub incident_id: Option<String>,
    /// alerts_v2 `providerAlertId`; for Cloud Apps its own `_id`: the twin key (design §6).
    pub provider_alert_id: Option<String>,
    /// Internet and network message ids of the email entities.
    pub message_ids: Vec<String>,
}

/// One item ready for the store: identity, version and the pre-serialized normalized body.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub native_id: String,
    pub version: VersionInput,
    pub filter: FilterFields,
    /// The normalized object without the envelope fields: `{...,"raw":<Microsoft's object>}`.
    pub body: PreparedBody,
    /// One hash per normalized field, for `changed_fields`.
    pub field_hashes: FieldHashes,
    pub links: Links,
    /// The `normalization_error` written in `body`, if any.
    pub normalization_error: Option<String>,
}

/// A prepared item's normalized body: the JSON `prepare` wrote, or its members sealed for the
/// store when the page was parsed. A sealed body is a tenth of the size, so a page of 1,000
/// items held while the previous page commits costs ~1 MB instead of ~8 MB, and compressing
/// happens on the parsing thread instead of inside the store's write transaction (issue 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedBody {
    Json(Vec<u8>),
    Sealed {
        /// One zstd frame of the members (everything after the opening brace).
        members: Vec<u8>,
        /// The length of the JSON the frame holds.
        members_len: usize,
    },
}

impl From<Vec<u8>> for PreparedBody {
    fn from(json: Vec<u8>) -> Self {
        PreparedBody::Json(json)
    }
}

impl PreparedBody {
    /// The body as JSON; a sealed one is decompressed. It fails only if memory is corrupt or
    /// zstd cannot allocate.
    pub fn json(&self) -> Result<std::borrow::Cow<'_, [u8]>, String> {
        match self {
            PreparedBody::Json(json) => Ok(std::borrow::Cow::Borrowed(json)),
            PreparedBody::Sealed { members, .. } => {
                let members = crate::store::body_codec::unseal(members)?;
                let mut json = Vec::with_capacity(members.len() + 1);
                json.push(b'{');
                json.extend_from_slice(&members);
                Ok(std::borrow::Cow::Owned(json))
            }
        }
    }
}

impl Prepared {
    /// Compresses the body's members now (see [`PreparedBody`]). A body without members, or
    /// one zstd cannot take, stays JSON.
    pub fn seal(&mut self) {
        let PreparedBody::Json(json) = &self.body else {
            return;
        };
        let Some(members) = envelope::body_members(json) else {
            return;
        };
        if let Some(sealed) = crate::store::body_codec::seal(members) {
            self.body = PreparedBody::Sealed {
                members_len: members.len(),
                members: sealed,
            };
        }
    }
}

/// Prepares one item of `source`.
///
/// Submissions are identified as `{list}/{id}`; [`prepare_submission`] takes the list from the
/// caller, which knows which list it polled. Here it is inferred from the item's `contentType`
/// or `@odata.type`, and an item that names neither is [`Unusable`].
pub fn prepare(source: SourceKind, raw: &RawValue) -> Result<Prepared, Unusable> {
    match source {
        SourceKind::Alerts => graph_alert::prepare(raw),
        SourceKind::Incidents => incident::prepare(raw),
        SourceKind::Submissions => submission::prepare(None, raw),
        SourceKind::CloudApps => cloud_apps::prepare(raw),
        // A report is prepared from its mailbox message and the attached original
        // (`prepare_phishing_report`), never from a stored Graph object alone.
        SourceKind::PhishingReports => Err(Unusable {
            reason: "a phishing report is read from the mailbox, not from stored text".into(),
            native_id: None,
        }),
    }
}

/// An item read where it sits in its page: what it came to, and its JSON text.
#[derive(Debug)]
pub struct Listed<'a> {
    pub item: ListedItem,
    /// The item's text, exactly as a `RawValue` of it would hold it: what quarantine keeps.
    pub text: &'a str,
}

/// What a listed item came to.
// Nearly every item is `Prepared`, moved straight into its page: boxing it would cost an
// allocation per item to save stack space on the rare other variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ListedItem {
    Prepared(Prepared),
    Unusable(Unusable),
    /// A Graph item whose version the store already holds (`stale`: a newer one): not
    /// prepared, since the store would drop it unchanged.
    Known {
        native_id: String,
        stale: bool,
    },
}

impl From<Result<Prepared, Unusable>> for ListedItem {
    fn from(r: Result<Prepared, Unusable>) -> Self {
        match r {
            Ok(p) => ListedItem::Prepared(p),
            Err(u) => ListedItem::Unusable(u),
        }
    }
}

/// Stored versions (ticks) by native id, from `Store::stored_versions`. Keyed by a 128-bit
/// hash of the id: ~30 bytes an alert instead of ~110 with the id itself, so a reconciliation
/// pass over 100,000 stored alerts holds ~3 MB. Two ids of a window sharing a hash (and the
/// later-listed one then not being prepared) has a chance of about 10⁻²⁹.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownVersions(std::collections::HashMap<u128, i64>);

impl KnownVersions {
    pub fn with_capacity(n: usize) -> Self {
        KnownVersions(std::collections::HashMap::with_capacity(n))
    }

    pub fn insert(&mut self, native_id: &str, ticks: i64) {
        self.0
            .insert(xxhash_rust::xxh3::xxh3_128(native_id.as_bytes()), ticks);
    }

    pub fn get(&self, native_id: &str) -> Option<i64> {
        self.0
            .get(&xxhash_rust::xxh3::xxh3_128(native_id.as_bytes()))
            .copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Prepares the item `rest` starts with (`rest` runs from the item's first byte to the end of
/// its page) and says where the item ends.
///
/// The item is parsed once, straight into its source's typed struct: splitting the page into
/// raw items first read every byte once more, ~10% of a drained alert's instructions (issue
/// 12). An item that typed parse refuses is read again as raw text and prepared the slow way,
/// exactly as [`prepare`] does. `list` is the submission list polled, empty for other sources.
/// A Graph item whose id and version are in `known` with that version or a newer one is not
/// prepared ([`ListedItem::Known`]).
/// `Err` when `rest` does not start with a whole JSON value: the page is not complete.
pub fn prepare_listed<'a>(
    source: SourceKind,
    list: &str,
    rest: &'a str,
    known: Option<&KnownVersions>,
) -> Result<Listed<'a>, serde_json::Error> {
    match source {
        SourceKind::Alerts => listed(
            rest,
            |a: graph_alert::GraphAlert<'a>, text| match known_version(
                known,
                a.id.as_ref(),
                a.last_update_date_time.as_ref(),
            ) {
                Some(k) => k,
                None => graph_alert::build(a, text, Vec::new()).into(),
            },
            graph_alert::prepare,
        ),
        SourceKind::Incidents => listed(
            rest,
            |i: incident::Incident<'a>, text| match known_version(
                known,
                i.id.as_ref(),
                i.last_update_date_time.as_ref(),
            ) {
                Some(k) => k,
                None => incident::build(i, text, Vec::new()).into(),
            },
            incident::prepare,
        ),
        SourceKind::Submissions => {
            let list = (!list.is_empty()).then_some(list);
            listed(
                rest,
                |s, text| submission::build(list, s, text, Vec::new()).into(),
                |raw| submission::prepare(list, raw),
            )
        }
        SourceKind::CloudApps => listed(
            rest,
            |a, text| cloud_apps::build(a, text, Vec::new()).into(),
            cloud_apps::prepare,
        ),
        SourceKind::PhishingReports => listed_raw(rest, |raw| prepare(source, raw)),
    }
}

/// [`ListedItem::Known`] when `known` holds this id at this version or a newer one. The id
/// and version are read as `prepare` reads them, so they match what the store keeps.
fn known_version(
    known: Option<&KnownVersions>,
    id: Option<&lenient::Text<'_>>,
    version: Option<&lenient::Text<'_>>,
) -> Option<ListedItem> {
    let id: &str = id?;
    let stored = known?.get(id)?;
    let ticks = crate::time::parse_ticks(version?)?;
    (ticks <= stored).then(|| ListedItem::Known {
        native_id: id.to_owned(),
        stale: ticks < stored,
    })
}

/// The fast path of [`prepare_listed`]: one typed parse, and the item's text from where the
/// parse stopped. `build` gets no notes: an item that parses whole has nothing to report.
fn listed<'a, T: serde::Deserialize<'a>>(
    rest: &'a str,
    build: impl FnOnce(T, &'a str) -> ListedItem,
    slow: impl FnOnce(&'a RawValue) -> Result<Prepared, Unusable>,
) -> Result<Listed<'a>, serde_json::Error> {
    let mut typed = serde_json::Deserializer::from_str(rest).into_iter::<T>();
    if let Some(Ok(item)) = typed.next() {
        let text = &rest[..typed.byte_offset()];
        return Ok(Listed {
            item: build(item, text),
            text,
        });
    }
    listed_raw(rest, slow)
}

/// The slow path of [`prepare_listed`]: the item as raw text, prepared by `slow`.
fn listed_raw<'a>(
    rest: &'a str,
    slow: impl FnOnce(&'a RawValue) -> Result<Prepared, Unusable>,
) -> Result<Listed<'a>, serde_json::Error> {
    let mut raw = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
    match raw.next() {
        Some(Ok(item)) => Ok(Listed {
            item: slow(item).into(),
            text: item.get(),
        }),
        Some(Err(e)) => Err(e),
        None => Err(serde::de::Error::custom(
            "the page ends where an item should start",
        )),
    }
}

/// Prepares one report of the reporting mailbox: `raw` is its Graph message (without attachment
/// bytes), `parts` what was read of the reported original.
pub fn prepare_phishing_report(raw: &RawValue, parts: ReportParts) -> Result<Prepared, Unusable> {
    phishing_report::prepare(raw, parts)
}

/// Prepares one threat submission read from `list` (`emailThreats`, `urlThreats` or
/// `fileThreats`); its native id is `{list}/{id}`.
pub fn prepare_submission(list: &str, raw: &RawValue) -> Result<Prepared, Unusable> {
    submission::prepare(Some(list), raw)
}

#[cfg(test)]
mod tests;
