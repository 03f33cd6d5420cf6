//! Mapping rules shared by the sources (design §6): severity and status vocabularies, times,
//! comments, and the id/version checks that decide between storing and quarantining.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::body::Comment;
use super::lenient::Text;
use super::Unusable;
use crate::time::{format_ticks, parse_ticks};

/// Normalized severities.
pub(crate) const INFORMATIONAL: &str = "informational";
pub(crate) const LOW: &str = "low";
pub(crate) const MEDIUM: &str = "medium";
pub(crate) const HIGH: &str = "high";
pub(crate) const UNKNOWN: &str = "unknown";
/// Normalized statuses.
pub(crate) const NEW: &str = "new";
pub(crate) const IN_PROGRESS: &str = "in_progress";
pub(crate) const RESOLVED: &str = "resolved";

/// Graph's alertSeverity (also used by incidents), compared without case because the docs'
/// incident examples write `Medium`. Anything else, including `unknownFutureValue` and values
/// added later, is `unknown`; Microsoft's text stays in `raw`.
pub(crate) fn graph_severity(v: Option<&str>) -> &'static str {
    match v {
        Some(s) if s.eq_ignore_ascii_case("informational") => INFORMATIONAL,
        Some(s) if s.eq_ignore_ascii_case("low") => LOW,
        Some(s) if s.eq_ignore_ascii_case("medium") => MEDIUM,
        Some(s) if s.eq_ignore_ascii_case("high") => HIGH,
        _ => UNKNOWN,
    }
}

/// The normalized value to show filters (design §4 rule 7), or `None` when the field "cannot
/// be read": absent, or a value we do not know. Those are let through rather than filtered as
/// `unknown`, so a new Microsoft severity such as `critical` is never silently dropped by
/// `severities = ["medium", "high"]`. A literal `unknown` from Microsoft is a value like any
/// other and can be filtered.
pub(crate) fn filter_value(normalized: &'static str, raw: Option<&str>) -> Option<&'static str> {
    match raw {
        None => None,
        Some(r) if normalized == UNKNOWN && !r.eq_ignore_ascii_case(UNKNOWN) => None,
        Some(_) => Some(normalized),
    }
}

/// Formats a time Microsoft gave; an unreadable one is null plus a note, so that every time in
/// the body has the one documented shape.
pub(crate) fn time(v: Option<&Text<'_>>, name: &str, errors: &mut Vec<String>) -> Option<String> {
    let v = v?;
    match parse_ticks(v) {
        Some(t) => Some(format_ticks(t)),
        None => {
            errors.push(format!("{name}: not a time: {:?}", &**v));
            None
        }
    }
}

/// A comment in either of the shapes Microsoft uses: the CSDL's `createdByDisplayName` /
/// `createdDateTime`, or the incident examples' `createdBy` / `createdTime` (API.md §11 gotcha 6).
/// Separate fields rather than serde aliases, because an alias turns an item carrying both
/// spellings into a duplicate-field error.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommentIn<'a> {
    #[serde(borrow)]
    comment: Option<Text<'a>>,
    #[serde(borrow)]
    created_by_display_name: Option<Text<'a>>,
    #[serde(borrow)]
    created_by: Option<Text<'a>>,
    #[serde(borrow)]
    created_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    created_time: Option<Text<'a>>,
}

pub(crate) fn comments<'a>(
    input: Vec<CommentIn<'a>>,
    errors: &mut Vec<String>,
) -> Vec<Comment<'a>> {
    input
        .into_iter()
        .map(|c| Comment {
            text: c.comment,
            author: c.created_by_display_name.or(c.created_by),
            created_at: time(
                c.created_date_time.as_ref().or(c.created_time.as_ref()),
                "comments.createdDateTime",
                errors,
            ),
        })
        .collect()
}

/// A usable native id: present and not empty.
pub(crate) fn require_id(id: Option<Text<'_>>, field: &str) -> Result<String, Unusable> {
    match id {
        Some(id) if !id.is_empty() => Ok(id.0.into_owned()),
        Some(_) => Err(Unusable {
            reason: format!("{field} is empty"),
            native_id: None,
        }),
        None => Err(Unusable {
            reason: format!("missing {field}"),
            native_id: None,
        }),
    }
}

/// A Graph version: `lastUpdateDateTime` as ticks.
pub(crate) fn require_ticks(v: Option<&Text<'_>>, native_id: &str) -> Result<i64, Unusable> {
    let Some(v) = v else {
        return Err(Unusable {
            reason: "missing lastUpdateDateTime".to_owned(),
            native_id: Some(native_id.to_owned()),
        });
    };
    parse_ticks(v).ok_or_else(|| Unusable {
        reason: format!("lastUpdateDateTime is not a time: {:?}", &**v),
        native_id: Some(native_id.to_owned()),
    })
}

/// On the slow path: why a required string member is unusable, if it is. Checked before the
/// second typed parse so the reason says "not a string" rather than "missing".
pub(crate) fn check_required_string(
    members: &Map<String, Value>,
    field: &str,
    native_id: Option<&str>,
) -> Result<(), Unusable> {
    match members.get(field) {
        Some(Value::String(_)) | None => Ok(()),
        Some(Value::Null) => Err(Unusable {
            reason: format!("{field} is null"),
            native_id: native_id.map(str::to_owned),
        }),
        Some(_) => Err(Unusable {
            reason: format!("{field} is not a string"),
            native_id: native_id.map(str::to_owned),
        }),
    }
}

/// The id on the slow path, if it is a readable string.
pub(crate) fn member_str<'m>(members: &'m Map<String, Value>, field: &str) -> Option<&'m str> {
    members.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_ignore_case_and_unknowns_map_to_unknown() {
        assert_eq!(graph_severity(Some("Medium")), MEDIUM);
        assert_eq!(graph_severity(Some("informational")), INFORMATIONAL);
        assert_eq!(graph_severity(Some("critical")), UNKNOWN);
        assert_eq!(graph_severity(Some("unknownFutureValue")), UNKNOWN);
        assert_eq!(graph_severity(None), UNKNOWN);
    }

    #[test]
    fn filters_see_none_for_values_they_cannot_read() {
        assert_eq!(filter_value(HIGH, Some("high")), Some(HIGH));
        assert_eq!(filter_value(UNKNOWN, Some("unknown")), Some(UNKNOWN));
        assert_eq!(filter_value(UNKNOWN, Some("critical")), None);
        assert_eq!(filter_value(UNKNOWN, None), None);
    }
}
