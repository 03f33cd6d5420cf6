//! Microsoft Defender for Cloud Apps alerts (API.md §8) to the normalized alert.
//!
//! MDA has its own shapes: `_id` is a string (documented as int, so a number is accepted too),
//! `timestamp` is epoch milliseconds, severity and status are small integers, and entities are
//! `{type, id, label, ...}` records rather than Graph evidence. There is no update time: the
//! version is a state number over `statusValue`, `resolutionStatusValue`, `severityValue`,
//! `resolveTime`, `handledByUser` and `comment` (design §4).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{self, Comment, Normalized};
use super::canonical::state_hash;
use super::entities::{
    error_text, CloudAppEntity, DeviceEntity, Entity, FileEntity, FileInfo, IpEntity, OtherEntity,
    UserEntity, UserInfo,
};
use super::lenient::{IdText, LenientI64, Text};
use super::map;
use super::recover::parse_with_recovery;
use super::{FilterFields, Links, Prepared, Unusable, VersionInput};
use crate::time::format_rfc3339_millis_from_ms;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct MdaAlert<'a> {
    #[serde(rename = "_id", borrow)]
    id: Option<IdText<'a>>,
    #[serde(borrow)]
    title: Option<Text<'a>>,
    #[serde(borrow)]
    description: Option<Text<'a>>,
    timestamp: Option<LenientI64>,
    #[serde(rename = "URL", borrow)]
    url: Option<Text<'a>>,
    #[serde(borrow)]
    entities: Option<Vec<&'a RawValue>>,
    // The mutable fields, kept as JSON for the state hash and read from it for the mapping.
    #[serde(borrow)]
    status_value: Option<&'a RawValue>,
    #[serde(borrow)]
    resolution_status_value: Option<&'a RawValue>,
    #[serde(borrow)]
    severity_value: Option<&'a RawValue>,
    #[serde(borrow)]
    resolve_time: Option<&'a RawValue>,
    #[serde(borrow)]
    handled_by_user: Option<&'a RawValue>,
    #[serde(borrow)]
    comment: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MdaEntityIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    id: Option<IdText<'a>>,
    #[serde(borrow)]
    label: Option<Text<'a>>,
    /// The account's principal name (`user1@contoso.com`).
    #[serde(borrow)]
    pa: Option<Text<'a>>,
    #[serde(borrow)]
    entity_role: Option<Text<'a>>,
}

/// Prepares one Cloud Apps alert.
pub(crate) fn prepare(raw: &RawValue) -> Result<Prepared, Unusable> {
    parse_with_recovery(
        raw.get(),
        &[],
        &|text| serde_json::from_str::<MdaAlert>(text).map(|_| ()),
        &mut |text, notes| {
            serde_json::from_str::<MdaAlert>(text).map(|a| build(a, raw.get(), notes))
        },
    )
}

pub(super) fn build(
    a: MdaAlert<'_>,
    raw: &str,
    mut errors: Vec<String>,
) -> Result<Prepared, Unusable> {
    let native_id = map::require_id(a.id.map(Text::from), "_id")?;

    let hash = state_hash(&[
        ("statusValue", a.status_value.map(RawValue::get)),
        (
            "resolutionStatusValue",
            a.resolution_status_value.map(RawValue::get),
        ),
        ("severityValue", a.severity_value.map(RawValue::get)),
        ("resolveTime", a.resolve_time.map(RawValue::get)),
        ("handledByUser", a.handled_by_user.map(RawValue::get)),
        ("comment", a.comment.map(RawValue::get)),
    ]);

    let status_value = int(a.status_value, "statusValue", &mut errors);
    let resolution = int(
        a.resolution_status_value,
        "resolutionStatusValue",
        &mut errors,
    );
    let severity_value = int(a.severity_value, "severityValue", &mut errors);
    let resolve_time = text(a.resolve_time, "resolveTime", &mut errors);
    let handled_by = text(a.handled_by_user, "handledByUser", &mut errors);
    let comment = text(a.comment, "comment", &mut errors);

    let severity = match severity_value {
        Some(0) => map::LOW,
        Some(1) => map::MEDIUM,
        Some(2) => map::HIGH,
        Some(3) => map::INFORMATIONAL,
        _ => map::UNKNOWN,
    };
    // A resolution (1–5) closes the alert whatever its read state.
    let status = match (resolution, status_value) {
        (Some(1..=5), _) => map::RESOLVED,
        (_, Some(0)) => map::NEW,
        (_, Some(1)) => map::IN_PROGRESS,
        (_, Some(2)) => map::RESOLVED,
        _ => map::UNKNOWN,
    };
    let classification = match resolution {
        Some(3) => Some("falsePositive"),
        Some(4) => Some("informationalExpectedActivity"),
        Some(5) => Some("truePositive"),
        _ => None,
    };

    let entities: Vec<Entity<'_>> = a
        .entities
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, e)| entity(e, i, &mut errors))
        .collect();

    let comments = match (&comment, &handled_by) {
        (Some(c), _) if !c.is_empty() => vec![Comment {
            text: comment.clone(),
            author: handled_by.clone(),
            created_at: None,
        }],
        _ => Vec::new(),
    };

    let created_at = a
        .timestamp
        .and_then(|t| t.0)
        .map(format_rfc3339_millis_from_ms);
    let n = Normalized {
        title: a.title,
        description: a.description,
        product: Some(Text::borrowed("microsoftDefenderForCloudApps")),
        severity,
        status,
        raw_status: raw_status(status_value, resolution).map(|s| Text(s.into())),
        classification: classification.map(Text::borrowed),
        created_at,
        resolved_at: map::time(resolve_time.as_ref(), "resolveTime", &mut errors),
        portal_url: a.url,
        comments,
        entities,
        errors,
        ..Normalized::default()
    };
    let written = body::write(&n, raw);
    Ok(Prepared {
        links: Links {
            incident_id: None,
            // The key of the alerts_v2 twin (design §6 twin rule).
            provider_alert_id: Some(native_id.clone()),
            message_ids: Vec::new(),
        },
        filter: FilterFields {
            service_source: None,
            detection_source: None,
            category: None,
            severity: (severity != map::UNKNOWN).then_some(severity),
            status: (status != map::UNKNOWN).then_some(status),
        },
        native_id,
        version: VersionInput::State { hash },
        body: written.body.into(),
        field_hashes: written.field_hashes,
        normalization_error: written.normalization_error,
    })
}

/// MDA's own names for its status pair, e.g. `READ/OPEN`, so `raw_status` says what Microsoft
/// said in its vocabulary; an unknown number is written as the number.
fn raw_status(status: Option<i64>, resolution: Option<i64>) -> Option<String> {
    const STATUS: &[&str] = &["UNREAD", "READ", "ARCHIVED"];
    const RESOLUTION: &[&str] = &[
        "OPEN",
        "DISMISSED",
        "RESOLVED",
        "FALSE_POSITIVE",
        "BENIGN",
        "TRUE_POSITIVE",
    ];
    let name = |v: Option<i64>, names: &[&str]| match v {
        None => "?".to_owned(),
        Some(v) => usize::try_from(v)
            .ok()
            .and_then(|i| names.get(i))
            .map_or_else(|| v.to_string(), |n| (*n).to_owned()),
    };
    if status.is_none() && resolution.is_none() {
        return None;
    }
    Some(format!(
        "{}/{}",
        name(status, STATUS),
        name(resolution, RESOLUTION)
    ))
}

fn int(raw: Option<&RawValue>, name: &str, errors: &mut Vec<String>) -> Option<i64> {
    match serde_json::from_str::<Option<LenientI64>>(raw?.get()) {
        Ok(v) => v.and_then(|v| v.0),
        Err(e) => {
            errors.push(format!("{name}: {}", error_text(&e)));
            None
        }
    }
}

fn text<'a>(raw: Option<&'a RawValue>, name: &str, errors: &mut Vec<String>) -> Option<Text<'a>> {
    match serde_json::from_str::<Option<Text<'a>>>(raw?.get()) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("{name}: {}", error_text(&e)));
            None
        }
    }
}

/// Maps one MDA entity: account → user, ip, service → cloud_app, device, file; the rest (policy
/// rules, group tags, ...) → other with the record as it came.
fn entity<'a>(raw: &'a RawValue, index: usize, errors: &mut Vec<String>) -> Entity<'a> {
    let e = match serde_json::from_str::<MdaEntityIn<'a>>(raw.get()) {
        Ok(e) => e,
        Err(err) => {
            errors.push(format!("entities[{index}]: {}", error_text(&err)));
            return Entity::Other(OtherEntity {
                roles: Vec::new(),
                verdict: None,
                odata_type: None,
                raw,
            });
        }
    };
    let roles: Vec<Text<'a>> = e.entity_role.into_iter().collect();
    match e.kind.as_deref() {
        Some("account") => Entity::User(UserEntity {
            roles,
            verdict: None,
            user: UserInfo {
                upn: e.pa,
                account_name: e.label,
                ..UserInfo::default()
            },
        }),
        Some("ip") => Entity::Ip(IpEntity {
            roles,
            verdict: None,
            address: e.label.or(e.id.map(Text::from)),
            country: None,
        }),
        Some("service") => Entity::CloudApp(CloudAppEntity {
            roles,
            verdict: None,
            app_id: e.id.map(Text::from),
            name: e.label,
            ..CloudAppEntity::default()
        }),
        Some("device") => Entity::Device(DeviceEntity {
            roles,
            hostname: e.label,
            ..DeviceEntity::default()
        }),
        Some("file") => Entity::File(FileEntity {
            roles,
            verdict: None,
            file: FileInfo {
                name: e.label,
                ..FileInfo::default()
            },
        }),
        _ => Entity::Other(OtherEntity {
            roles,
            verdict: None,
            odata_type: None,
            raw,
        }),
    }
}
