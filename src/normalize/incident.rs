//! Graph `incidents` (API.md §4) to the normalized alert, `kind` "incident".
//!
//! The docs' examples disagree with the schema (API.md §11 gotcha 6), so this reads both
//! spellings: PascalCase enum values (`Active`, `TruePositive`), `tags` or `customTags`, and
//! comments with `createdBy`/`createdTime` or `createdByDisplayName`/`createdDateTime`.
//! An incident's alerts (`$expand=alerts`) stay in `raw` only: they are ingested, with their
//! own versions, by the alerts source.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{self, Normalized, Related};
use super::lenient::{IdText, Text};
use super::map::{self, CommentIn};
use super::recover::parse_with_recovery;
use super::{FilterFields, Links, Prepared, SourceKind, Unusable, VersionInput};
use crate::time::format_ticks;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Incident<'a> {
    #[serde(borrow)]
    pub(super) id: Option<Text<'a>>,
    #[serde(borrow)]
    display_name: Option<Text<'a>>,
    #[serde(borrow)]
    description: Option<Text<'a>>,
    #[serde(borrow)]
    severity: Option<Text<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    classification: Option<Text<'a>>,
    #[serde(borrow)]
    determination: Option<Text<'a>>,
    #[serde(borrow)]
    assigned_to: Option<Text<'a>>,
    #[serde(borrow)]
    incident_web_url: Option<Text<'a>>,
    #[serde(borrow)]
    redirect_incident_id: Option<IdText<'a>>,
    #[serde(borrow)]
    created_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) last_update_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    custom_tags: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    tags: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    system_tags: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    comments: Option<Vec<CommentIn<'a>>>,
}

/// Prepares one incident object.
pub(crate) fn prepare(raw: &RawValue) -> Result<Prepared, Unusable> {
    parse_with_recovery(
        raw.get(),
        &["id", "lastUpdateDateTime"],
        &|text| serde_json::from_str::<Incident>(text).map(|_| ()),
        &mut |text, notes| {
            serde_json::from_str::<Incident>(text).map(|i| build(i, raw.get(), notes))
        },
    )
}

pub(super) fn build(
    i: Incident<'_>,
    raw: &str,
    mut errors: Vec<String>,
) -> Result<Prepared, Unusable> {
    let native_id = map::require_id(i.id, "id")?;
    let ticks = map::require_ticks(i.last_update_date_time.as_ref(), &native_id)?;

    let severity = map::graph_severity(i.severity.as_deref());
    let status = incident_status(i.status.as_deref());
    let filter = FilterFields {
        service_source: None,
        detection_source: None,
        category: None,
        severity: map::filter_value(severity, i.severity.as_deref()),
        status: map::filter_value(status, i.status.as_deref()),
    };

    // A merged incident names the one it survives in.
    let related = i
        .redirect_incident_id
        .filter(|r| !r.0.is_empty())
        .map(|r| Related {
            kind: SourceKind::Incidents.kind(),
            source: SourceKind::Incidents.as_str(),
            native_id: r.into(),
        })
        .into_iter()
        .collect();

    let mut tags = i.custom_tags.or(i.tags).unwrap_or_default();
    for t in i.system_tags.unwrap_or_default() {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }

    let n = Normalized {
        created_at: map::time(i.created_date_time.as_ref(), "createdDateTime", &mut errors),
        updated_at: Some(format_ticks(ticks)),
        comments: map::comments(i.comments.unwrap_or_default(), &mut errors),
        title: i.display_name,
        description: i.description,
        severity,
        status,
        raw_status: i.status,
        classification: i.classification,
        determination: i.determination,
        assigned_to: i.assigned_to,
        portal_url: i.incident_web_url.clone(),
        incident_url: i.incident_web_url,
        // An incident is its own incident: consumers group alerts and incidents by this.
        incident_id: Some(Text(native_id.clone().into())),
        related,
        tags,
        errors,
        ..Normalized::default()
    };
    let written = body::write(&n, raw);
    Ok(Prepared {
        links: Links {
            incident_id: Some(native_id.clone()),
            provider_alert_id: None,
            message_ids: Vec::new(),
        },
        native_id,
        version: VersionInput::Ticks(ticks),
        filter,
        body: written.body.into(),
        field_hashes: written.field_hashes,
        normalization_error: written.normalization_error,
    })
}

/// Graph's incidentStatus, without case (the docs' examples write `Active`):
/// active → new; inProgress, awaitingAction → in_progress; resolved, redirected → resolved.
fn incident_status(v: Option<&str>) -> &'static str {
    const MAP: &[(&str, &str)] = &[
        ("active", map::NEW),
        ("inProgress", map::IN_PROGRESS),
        ("awaitingAction", map::IN_PROGRESS),
        ("resolved", map::RESOLVED),
        ("redirected", map::RESOLVED),
    ];
    v.and_then(|s| MAP.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)))
        .map_or(map::UNKNOWN, |(_, n)| n)
}
