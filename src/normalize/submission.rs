//! Graph threat submissions (beta; API.md §5) to the normalized alert, `kind` "submission".
//!
//! A submission is what an admin or user reported to Microsoft (an email, a URL or a file) and
//! Microsoft's verdict on it. It has no update time; its version is a state number over
//! `status`, `result`, `adminReview` and `tenantAllowOrBlockListAction` (design §4). Its native
//! id is `{list}/{id}` because the three lists are separate collections.
//!
//! Mapping choices (design §6 names no submission fields beyond status): the title names the
//! kind and what was submitted; `category` is the submitted category (spam, phishing, ...);
//! `determination` is Microsoft's verdict, `result.category`; `detection_source` is who
//! submitted (`administrator` or `user`); `product` is Defender for Office 365, which runs
//! submissions. The email, URL or file becomes the one entity.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{self, Normalized};
use super::canonical::state_hash;
use super::entities::{
    error_text, message_ids, EmailEntity, Entity, FileEntity, FileInfo, UrlEntity,
};
use super::lenient::Text;
use super::map;
use super::recover::parse_with_recovery;
use super::{FilterFields, Links, Prepared, Unusable, VersionInput};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Submission<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<Text<'a>>,
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    content_type: Option<Text<'a>>,
    #[serde(borrow)]
    category: Option<Text<'a>>,
    #[serde(borrow)]
    source: Option<Text<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    created_date_time: Option<Text<'a>>,
    // Kept as JSON for the state hash; `result` is also read for its category.
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    admin_review: Option<&'a RawValue>,
    #[serde(borrow)]
    tenant_allow_or_block_list_action: Option<&'a RawValue>,
    // email
    #[serde(borrow)]
    recipient_email_address: Option<Text<'a>>,
    #[serde(borrow)]
    internet_message_id: Option<Text<'a>>,
    #[serde(borrow)]
    sender: Option<Text<'a>>,
    #[serde(rename = "senderIP", borrow)]
    sender_ip: Option<Text<'a>>,
    #[serde(borrow)]
    received_date_time: Option<Text<'a>>,
    /// The schema's name; the docs' example uses `emailSubject` (API.md §5).
    #[serde(borrow)]
    subject: Option<Text<'a>>,
    #[serde(borrow)]
    email_subject: Option<Text<'a>>,
    // url
    #[serde(borrow)]
    web_url: Option<Text<'a>>,
    // file
    #[serde(borrow)]
    file_name: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ResultIn<'a> {
    #[serde(borrow)]
    category: Option<Text<'a>>,
}

/// The three submission lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Email,
    Url,
    File,
}

impl Kind {
    fn list(self) -> &'static str {
        match self {
            Kind::Email => "emailThreats",
            Kind::Url => "urlThreats",
            Kind::File => "fileThreats",
        }
    }

    fn from_list(list: &str) -> Option<Kind> {
        [Kind::Email, Kind::Url, Kind::File]
            .into_iter()
            .find(|k| k.list().eq_ignore_ascii_case(list))
    }

    /// From `contentType`, else from `@odata.type` (`emailUrlThreatSubmission` is an email).
    fn of(s: &Submission<'_>) -> Option<Kind> {
        let from = |v: &str, email: &str, url: &str, file: &str| {
            let v = v.to_ascii_lowercase();
            if v.starts_with(email) {
                Some(Kind::Email)
            } else if v.starts_with(url) {
                Some(Kind::Url)
            } else if v.starts_with(file) {
                Some(Kind::File)
            } else {
                None
            }
        };
        s.content_type
            .as_deref()
            .and_then(|c| from(c, "email", "url", "file"))
            .or_else(|| {
                let t = s.odata_type.as_deref()?;
                from(t.rsplit('.').next().unwrap_or(t), "email", "url", "file")
            })
    }
}

/// Prepares one submission; `list` is the list it was read from, when the caller knows it.
pub(crate) fn prepare(list: Option<&str>, raw: &RawValue) -> Result<Prepared, Unusable> {
    parse_with_recovery(
        raw.get(),
        &["id"],
        &|text| serde_json::from_str::<Submission>(text).map(|_| ()),
        &mut |text, notes| {
            serde_json::from_str::<Submission>(text).map(|s| build(list, s, raw.get(), notes))
        },
    )
}

pub(super) fn build(
    list: Option<&str>,
    s: Submission<'_>,
    raw: &str,
    mut errors: Vec<String>,
) -> Result<Prepared, Unusable> {
    let id = map::require_id(s.id.clone(), "id")?;
    let kind = Kind::of(&s);
    let list = match list {
        Some(list) => list.to_owned(),
        None => kind
            .map(Kind::list)
            .map(str::to_owned)
            .ok_or_else(|| Unusable {
                reason: "cannot tell which submission list the item belongs to (no contentType or \
                     @odata.type); use prepare_submission"
                    .to_owned(),
                native_id: Some(id.clone()),
            })?,
    };
    // The list the caller read wins over the item's own claim.
    let kind = Kind::from_list(&list).or(kind);
    let native_id = format!("{list}/{id}");

    let status_json = s
        .status
        .as_deref()
        .map(|v| serde_json::Value::from(v).to_string());
    let hash = state_hash(&[
        ("status", status_json.as_deref()),
        ("result", s.result.map(RawValue::get)),
        ("adminReview", s.admin_review.map(RawValue::get)),
        (
            "tenantAllowOrBlockListAction",
            s.tenant_allow_or_block_list_action.map(RawValue::get),
        ),
    ]);

    let verdict = match s.result.map(|r| serde_json::from_str::<ResultIn>(r.get())) {
        Some(Ok(r)) => r.category,
        Some(Err(e)) => {
            errors.push(format!("result: {}", error_text(&e)));
            None
        }
        None => None,
    };

    let subject = s.subject.or(s.email_subject);
    let (label, what) = match kind {
        Some(Kind::Email) => ("Email threat submission", subject.clone()),
        Some(Kind::Url) => ("URL threat submission", s.web_url.clone()),
        Some(Kind::File) => ("File threat submission", s.file_name.clone()),
        None => ("Threat submission", None),
    };
    let title = match what.as_deref() {
        Some(w) if !w.is_empty() => format!("{label}: {w}"),
        _ => label.to_owned(),
    };

    let entity = match kind {
        Some(Kind::Email) => Some(Entity::Email(EmailEntity {
            internet_message_id: s.internet_message_id,
            sender: s.sender,
            sender_ip: s.sender_ip,
            recipient: s.recipient_email_address,
            subject,
            received_at: map::time(
                s.received_date_time.as_ref(),
                "receivedDateTime",
                &mut errors,
            ),
            ..EmailEntity::default()
        })),
        Some(Kind::Url) => s.web_url.map(|url| {
            Entity::Url(UrlEntity {
                url: Some(url),
                ..UrlEntity::default()
            })
        }),
        Some(Kind::File) => s.file_name.map(|name| {
            Entity::File(FileEntity {
                file: FileInfo {
                    name: Some(name),
                    ..FileInfo::default()
                },
                ..FileEntity::default()
            })
        }),
        None => None,
    };
    let entities: Vec<Entity<'_>> = entity.into_iter().collect();

    let status = submission_status(s.status.as_deref());
    let n = Normalized {
        title: Some(Text(title.into())),
        category: s.category,
        product: Some(Text::borrowed("microsoftDefenderForOffice365")),
        detection_source: s.source,
        severity: map::UNKNOWN,
        status,
        raw_status: s.status.clone(),
        determination: verdict,
        created_at: map::time(s.created_date_time.as_ref(), "createdDateTime", &mut errors),
        entities,
        errors,
        ..Normalized::default()
    };
    let written = body::write(&n, raw);
    Ok(Prepared {
        links: Links {
            incident_id: None,
            provider_alert_id: None,
            message_ids: message_ids(&n.entities),
        },
        filter: FilterFields {
            service_source: None,
            detection_source: None,
            category: n.category.as_deref().map(str::to_owned),
            // Submissions carry no severity: there is nothing for a severity filter to read.
            severity: None,
            status: map::filter_value(status, s.status.as_deref()),
        },
        native_id,
        version: VersionInput::State { hash },
        body: written.body.into(),
        field_hashes: written.field_hashes,
        normalization_error: written.normalization_error,
    })
}

/// longRunningOperationStatus: notStarted → new; running → in_progress; succeeded, failed,
/// skipped → resolved.
fn submission_status(v: Option<&str>) -> &'static str {
    const MAP: &[(&str, &str)] = &[
        ("notStarted", map::NEW),
        ("running", map::IN_PROGRESS),
        ("succeeded", map::RESOLVED),
        ("failed", map::RESOLVED),
        ("skipped", map::RESOLVED),
    ];
    v.and_then(|s| MAP.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)))
        .map_or(map::UNKNOWN, |(_, n)| n)
}
