//! Graph `alerts_v2` objects (API.md §3) to the normalized alert.
//!
//! The fast path is one typed parse of the item from its `&RawValue` into [`GraphAlert`], which
//! borrows every string it can and keeps each evidence item as a `&RawValue` to be parsed on its
//! own (see `entities.rs`). Only if that parse fails does the slow path in `recover.rs` run.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{self, Normalized};
use super::entities::{from_evidence, message_ids};
use super::lenient::{id_text, IdText, Text};
use super::map::{self, CommentIn};
use super::recover::parse_with_recovery;
use super::{FilterFields, Links, Prepared, Unusable, VersionInput};
use crate::time::format_ticks;

/// The alert properties we map. Unknown properties are skipped here and kept in `raw`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct GraphAlert<'a> {
    #[serde(borrow)]
    pub(super) id: Option<Text<'a>>,
    #[serde(borrow)]
    provider_alert_id: Option<IdText<'a>>,
    #[serde(borrow)]
    incident_id: Option<IdText<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    severity: Option<Text<'a>>,
    #[serde(borrow)]
    classification: Option<Text<'a>>,
    #[serde(borrow)]
    determination: Option<Text<'a>>,
    #[serde(borrow)]
    service_source: Option<Text<'a>>,
    #[serde(borrow)]
    detection_source: Option<Text<'a>>,
    #[serde(borrow)]
    title: Option<Text<'a>>,
    #[serde(borrow)]
    description: Option<Text<'a>>,
    #[serde(borrow)]
    category: Option<Text<'a>>,
    #[serde(borrow)]
    assigned_to: Option<Text<'a>>,
    #[serde(borrow)]
    alert_web_url: Option<Text<'a>>,
    #[serde(borrow)]
    incident_web_url: Option<Text<'a>>,
    #[serde(borrow)]
    mitre_techniques: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    system_tags: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    created_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) last_update_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    resolved_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    first_activity_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    last_activity_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    comments: Option<Vec<CommentIn<'a>>>,
    #[serde(borrow)]
    evidence: Option<Vec<&'a RawValue>>,
}

/// Prepares one alerts_v2 object.
pub(crate) fn prepare(raw: &RawValue) -> Result<Prepared, Unusable> {
    parse_with_recovery(
        raw.get(),
        &["id", "lastUpdateDateTime"],
        &|text| serde_json::from_str::<GraphAlert>(text).map(|_| ()),
        &mut |text, notes| {
            serde_json::from_str::<GraphAlert>(text).map(|a| build(a, raw.get(), notes))
        },
    )
}

pub(super) fn build(
    a: GraphAlert<'_>,
    raw: &str,
    mut errors: Vec<String>,
) -> Result<Prepared, Unusable> {
    let native_id = map::require_id(a.id, "id")?;
    let ticks = map::require_ticks(a.last_update_date_time.as_ref(), &native_id)?;

    let severity = map::graph_severity(a.severity.as_deref());
    let status = alert_status(a.status.as_deref());
    let filter = FilterFields {
        service_source: a.service_source.as_deref().map(str::to_owned),
        detection_source: a.detection_source.as_deref().map(str::to_owned),
        category: a.category.as_deref().map(str::to_owned),
        severity: map::filter_value(severity, a.severity.as_deref()),
        status: map::filter_value(status, a.status.as_deref()),
    };

    let entities: Vec<_> = a
        .evidence
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, ev)| from_evidence(ev, &mut errors, i))
        .collect();
    let links = Links {
        incident_id: a.incident_id.as_ref().map(|v| v.0.to_string()),
        provider_alert_id: a.provider_alert_id.as_ref().map(|v| v.0.to_string()),
        message_ids: message_ids(&entities),
    };

    let n = Normalized {
        created_at: map::time(a.created_date_time.as_ref(), "createdDateTime", &mut errors),
        updated_at: Some(format_ticks(ticks)),
        first_activity_at: map::time(
            a.first_activity_date_time.as_ref(),
            "firstActivityDateTime",
            &mut errors,
        ),
        last_activity_at: map::time(
            a.last_activity_date_time.as_ref(),
            "lastActivityDateTime",
            &mut errors,
        ),
        resolved_at: map::time(
            a.resolved_date_time.as_ref(),
            "resolvedDateTime",
            &mut errors,
        ),
        comments: map::comments(a.comments.unwrap_or_default(), &mut errors),
        title: a.title,
        description: a.description,
        category: a.category,
        product: a.service_source,
        detection_source: a.detection_source,
        severity,
        status,
        raw_status: a.status,
        classification: a.classification,
        determination: a.determination,
        assigned_to: a.assigned_to,
        portal_url: a.alert_web_url,
        incident_url: a.incident_web_url,
        incident_id: id_text(a.incident_id),
        related: Vec::new(),
        mitre_techniques: a.mitre_techniques.unwrap_or_default(),
        tags: a.system_tags.unwrap_or_default(),
        entities,
        extra_indicators: Vec::new(),
        email: None,
        errors,
    };
    let written = body::write(&n, raw);
    Ok(Prepared {
        native_id,
        version: VersionInput::Ticks(ticks),
        filter,
        body: written.body.into(),
        field_hashes: written.field_hashes,
        links,
        normalization_error: written.normalization_error,
    })
}

/// Graph's alertStatus: new, inProgress, resolved; anything else is `unknown`.
fn alert_status(v: Option<&str>) -> &'static str {
    match v {
        Some(s) if s.eq_ignore_ascii_case("new") => map::NEW,
        Some(s) if s.eq_ignore_ascii_case("inProgress") => map::IN_PROGRESS,
        Some(s) if s.eq_ignore_ascii_case("resolved") => map::RESOLVED,
        _ => map::UNKNOWN,
    }
}
