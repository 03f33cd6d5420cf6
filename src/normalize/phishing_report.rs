//! A user-reported message from the reporting mailbox (API.md §7a) to the normalized alert,
//! `kind` "phishing_report".
//!
//! A report is two things: the mailbox message Defender (or a third-party button) delivered, and
//! the reported original attached to it. The mailbox message is `raw` (without attachment
//! bytes); the original, parsed by `crate::email`, is `email.message`. A report never changes, so
//! it has one version, `r1`; its native id is the message's immutable id.
//!
//! Mapping choices: the title names the verdict the user chose and the original's subject (a
//! subject without a documented prefix counts as phishing, as Microsoft counts it, with
//! `verdict_prefix` null; a report with several attached messages, which Microsoft discards,
//! has the verdict `unknown`);
//! `severity` follows that verdict (phishing and unknown → medium, junk → low, not junk →
//! informational: a user's "not junk" is a false-positive report about our own filtering);
//! `status` is `new` (nobody triages inside the mailbox); `product` is Defender for Office 365,
//! which owns user reported settings; `detection_source` is `userReported`. The original becomes
//! one email entity, and its domains, URLs and attachment hashes become indicators.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::body::{self, Normalized};
use super::entities::{message_ids, EmailEntity, Entity};
use super::lenient::Text;
use super::map;
use super::{FilterFields, Links, Prepared, Unusable, VersionInput};
use crate::email::{self, Original, ReportedEmail, WrapperSubject};

/// How the reported original travelled inside the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    /// An Outlook item attachment (its MIME read through `$value`).
    ItemAttachment,
    /// An `.eml` (message/rfc822) file attachment.
    EmlAttachment,
    /// An Outlook `.msg` (compound file) attachment.
    MsgAttachment,
    /// No attached message: the report itself is the reported email (forwarded inline).
    Inline,
    /// More than one attached message: Microsoft discards such reports (API.md §7a); it is
    /// forwarded with the names of the attached messages and none of them parsed.
    MultipleAttachments,
}

/// What the source read of one report besides its mailbox message.
#[derive(Debug)]
pub struct ReportParts {
    /// The mailbox the report was read from.
    pub mailbox: String,
    pub format: ReportFormat,
    /// The reported original, parsed; `None` when it could not be read (see `errors`).
    pub message: Option<ReportedEmail>,
    /// Size, hash and (up to `include_original_max`) the base64 of the original's bytes.
    pub original: Option<Original>,
    /// The attached messages' names when there are several.
    pub attached_messages: Vec<String>,
    /// Why part of the report could not be read (an attachment refused, the report deleted
    /// before its attachment was fetched …): `normalization_error`.
    pub errors: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    received_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    subject: Option<Text<'a>>,
    from: Option<Recipient<'a>>,
    sender: Option<Recipient<'a>>,
    #[serde(borrow)]
    web_link: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Recipient<'a> {
    #[serde(borrow)]
    email_address: Option<Address<'a>>,
}

#[derive(Deserialize, Default)]
struct Address<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    address: Option<Text<'a>>,
}

/// `email.reporter`.
#[derive(Serialize)]
struct Reporter<'a> {
    name: Option<&'a str>,
    address: Option<&'a str>,
}

/// The `email` member of a phishing report.
#[derive(Serialize)]
struct EmailOut<'a> {
    reporter: Reporter<'a>,
    reported_at: Option<&'a str>,
    verdict: email::Verdict,
    /// The documented subject prefix the verdict was read from (`3|`, `Phishing:` …).
    verdict_prefix: Option<&'a str>,
    report_subject: Option<&'a str>,
    report_format: ReportFormat,
    mailbox: &'a str,
    /// The 2020 custom-mailbox subject `action|network message id|sender ip|from|(subject)`.
    legacy_subject: Option<&'a email::LegacySubject>,
    attached_messages: &'a [String],
    message: Option<&'a ReportedEmail>,
    original: Option<&'a Original>,
}

/// Prepares one report: `raw` is its Graph message (without attachment bytes).
pub(crate) fn prepare(raw: &RawValue, parts: ReportParts) -> Result<Prepared, Unusable> {
    let (m, mut errors) = match serde_json::from_str::<Message>(raw.get()) {
        Ok(m) => (m, Vec::new()),
        Err(e) => {
            // Only the id is needed to store it; the rest is best effort.
            let id = serde_json::from_str::<IdOnly>(raw.get())
                .ok()
                .and_then(|i| i.id);
            (
                Message {
                    id,
                    ..Message::default()
                },
                vec![format!("the report's mailbox message: {e}")],
            )
        }
    };
    let native_id = map::require_id(m.id.clone(), "id")?;
    let mut wrapper: WrapperSubject =
        email::parse_wrapper_subject(m.subject.as_deref().unwrap_or(""));
    wrapper.verdict = match (parts.format, wrapper.verdict) {
        // Microsoft discards a report with several attached messages: no verdict stands.
        (ReportFormat::MultipleAttachments, _) => email::Verdict::Unknown,
        // "Anything else counts as phishing" (API.md §7a); `verdict_prefix` stays null.
        (_, email::Verdict::Unknown) => email::Verdict::Phishing,
        (_, v) => v,
    };
    // A report sent "on behalf of" the user has the user in From and the button's account in
    // Sender: the reporter is who clicked, From.
    let reporter = m
        .from
        .as_ref()
        .or(m.sender.as_ref())
        .and_then(|r| r.email_address.as_ref());
    let reported_at = map::time(
        m.received_date_time.as_ref(),
        "receivedDateTime",
        &mut errors,
    );
    errors.extend(parts.errors.iter().cloned());
    if let Some(msg) = &parts.message {
        errors.extend(msg.errors.iter().map(|e| format!("reported email: {e}")));
    }

    let message = parts.message.as_ref();
    let original_subject = message
        .and_then(|msg| msg.subject.as_deref())
        .or(wrapper.legacy.as_ref().map(|l| l.subject.as_str()))
        .unwrap_or(wrapper.rest.as_str());
    let (severity, what) = match wrapper.verdict {
        email::Verdict::Phishing => (map::MEDIUM, "phishing"),
        email::Verdict::Junk => (map::LOW, "junk"),
        email::Verdict::NotJunk => (map::INFORMATIONAL, "not junk"),
        email::Verdict::Unknown => (map::MEDIUM, "suspicious"),
    };
    let title = if original_subject.trim().is_empty() {
        format!("User reported a message as {what}")
    } else {
        format!(
            "User reported a message as {what}: {}",
            original_subject.trim()
        )
    };
    let reporter_text = reporter
        .and_then(|a| a.address.as_deref())
        .unwrap_or("a user");
    let sender_text = message
        .and_then(|msg| msg.from_address())
        .or(wrapper.legacy.as_ref().map(|l| l.from.as_str()))
        .unwrap_or("an unknown sender");
    let description = format!(
        "{reporter_text} reported a message from {sender_text} as {what} to the reporting mailbox {}.",
        parts.mailbox
    );

    let email_out = EmailOut {
        reporter: Reporter {
            name: reporter.and_then(|a| a.name.as_deref()),
            address: reporter.and_then(|a| a.address.as_deref()),
        },
        reported_at: reported_at.as_deref(),
        verdict: wrapper.verdict,
        verdict_prefix: wrapper.prefix.as_deref(),
        report_subject: m.subject.as_deref(),
        report_format: parts.format,
        mailbox: &parts.mailbox,
        legacy_subject: wrapper.legacy.as_ref(),
        attached_messages: &parts.attached_messages,
        message,
        original: parts.original.as_ref(),
    };
    let email_json = match serde_json::to_string(&email_out).map(RawValue::from_string) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) | Err(e) => {
            errors.push(format!("email: {e}"));
            None
        }
    };

    let network_message_id = message
        .and_then(ReportedEmail::network_message_id)
        .or(wrapper
            .legacy
            .as_ref()
            .map(|l| l.network_message_id.as_str()));
    let entity = Entity::Email(EmailEntity {
        internet_message_id: message
            .and_then(ReportedEmail::internet_message_id)
            .map(|v| Text(v.to_owned().into())),
        network_message_id: network_message_id.map(|v| Text(v.to_owned().into())),
        sender: message
            .and_then(|msg| msg.from_address())
            .or(wrapper.legacy.as_ref().map(|l| l.from.as_str()))
            .map(|v| Text(v.to_owned().into())),
        sender_ip: message
            .and_then(|msg| msg.originating_ip.as_deref())
            .or(wrapper.legacy.as_ref().map(|l| l.sender_ip.as_str()))
            .filter(|v| !v.is_empty())
            .map(|v| Text(v.to_owned().into())),
        recipient: reporter
            .and_then(|a| a.address.as_ref())
            .map(|v| Text(v.0.clone())),
        subject: Some(Text(original_subject.to_owned().into())),
        received_at: message.and_then(|msg| msg.date.clone()),
        roles: vec![Text::borrowed("reported")],
        ..EmailEntity::default()
    });
    let entities = vec![entity];
    let extra_indicators = message.map(ReportedEmail::indicators).unwrap_or_default();

    let n = Normalized {
        title: Some(Text(title.into())),
        description: Some(Text(description.into())),
        category: Some(Text::borrowed("phishing")),
        product: Some(Text::borrowed("microsoftDefenderForOffice365")),
        detection_source: Some(Text::borrowed("userReported")),
        severity,
        status: map::NEW,
        created_at: reported_at.clone(),
        updated_at: reported_at.clone(),
        first_activity_at: message.and_then(|msg| msg.date.clone()),
        last_activity_at: reported_at,
        portal_url: m.web_link.clone(),
        entities,
        extra_indicators,
        email: email_json,
        errors,
        ..Normalized::default()
    };
    let written = body::write(&n, raw.get());
    Ok(Prepared {
        links: Links {
            incident_id: None,
            provider_alert_id: None,
            message_ids: message_ids(&n.entities),
        },
        filter: FilterFields {
            service_source: None,
            detection_source: Some("userReported".into()),
            category: Some("phishing".into()),
            severity: Some(severity),
            status: Some(map::NEW),
        },
        native_id,
        version: VersionInput::Once,
        body: written.body.into(),
        field_hashes: written.field_hashes,
        normalization_error: written.normalization_error,
    })
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::normalize::envelope::{self, Change, Envelope};

    const ORIGINAL: &str = "Received: from mail.paypa1.com (mail.paypa1.com [203.0.113.9])\r\n by AM0PR02MB5634.eurprd02.prod.outlook.com with ESMTPS; Tue, 14 Jan 2025 09:12:04 +0000\r\n\
Authentication-Results: spf=fail (sender IP is 203.0.113.9) smtp.mailfrom=paypa1.com; dkim=none (message not signed) header.d=none;dmarc=fail action=quarantine header.from=paypa1.com;compauth=fail reason=000\r\n\
X-MS-Exchange-Organization-Network-Message-Id: 49871234-6dc6-43e8-abcd-08d797f20abe\r\n\
From: PayPal Service <service@paypa1.com>\r\nTo: alice@contoso.com\r\nSubject: Your account has been limited\r\n\
Date: Tue, 14 Jan 2025 09:11:58 +0000\r\nMessage-ID: <abc@mail.paypa1.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p>Verify <a href=\"https://login.paypa1.com/x\">https://www.paypal.com</a></p>\r\n";

    fn report(subject: &str) -> Box<RawValue> {
        RawValue::from_string(
            serde_json::json!({
                "id": "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A",
                "receivedDateTime": "2025-01-14T09:20:00Z",
                "subject": subject,
                "from": {"emailAddress": {"name": "Alice Martin", "address": "alice@contoso.com"}},
                "hasAttachments": true,
                "webLink": "https://outlook.office365.com/owa/?ItemID=x"
            })
            .to_string(),
        )
        .unwrap()
    }

    fn parts(bytes: &[u8]) -> ReportParts {
        let limits = crate::email::Limits::default();
        ReportParts {
            mailbox: "phish@contoso.com".into(),
            format: ReportFormat::EmlAttachment,
            message: Some(crate::email::parse_any(bytes, &limits)),
            original: Some(crate::email::original(bytes, "message/rfc822", &limits)),
            attached_messages: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_report_carries_the_verdict_the_reporter_and_the_parsed_original() {
        let raw = report("Phishing: Your account has been limited");
        let p = prepare(&raw, parts(ORIGINAL.as_bytes())).unwrap();
        assert_eq!(p.version, VersionInput::Once);
        assert_eq!(p.native_id, "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A");
        assert_eq!(
            p.links.message_ids,
            [
                "<abc@mail.paypa1.com>",
                "49871234-6dc6-43e8-abcd-08d797f20abe"
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&p.body.json().unwrap()).unwrap();
        assert_eq!(
            body["title"],
            "User reported a message as phishing: Your account has been limited"
        );
        assert_eq!(body["severity"], "medium");
        assert_eq!(body["email"]["verdict"], "phishing");
        assert_eq!(body["email"]["reporter"]["address"], "alice@contoso.com");
        assert_eq!(body["email"]["report_format"], "eml_attachment");
        assert_eq!(body["email"]["message"]["authentication"]["dmarc"], "fail");
        assert_eq!(
            body["email"]["message"]["urls"][0]["url"],
            "https://login.paypa1.com/x"
        );
        assert!(body["email"]["original"]["base64"].is_string());
        let indicators: Vec<(String, String)> = body["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["type"].as_str().unwrap().to_string(),
                    i["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for expected in [
            ("email_sender", "service@paypa1.com"),
            ("domain", "paypa1.com"),
            ("ip", "203.0.113.9"),
            ("url", "https://login.paypa1.com/x"),
            ("email_recipient", "alice@contoso.com"),
        ] {
            assert!(
                indicators
                    .iter()
                    .any(|(t, v)| t == expected.0 && v == expected.1),
                "{expected:?} missing from {indicators:?}"
            );
        }
        assert!(body.get("normalization_error").is_none());
        assert_eq!(body["raw"]["id"], "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A");
    }

    #[test]
    fn what_could_not_be_read_is_named_and_the_report_still_goes() {
        let raw = report("2| Quarterly invoice");
        let mut parts = parts(b"");
        parts.message = None;
        parts.original = None;
        parts.errors.push(
            "the report was deleted from the mailbox before the reported email could be read"
                .into(),
        );
        let p = prepare(&raw, parts).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&p.body.json().unwrap()).unwrap();
        assert_eq!(body["email"]["verdict"], "not_junk");
        assert_eq!(body["severity"], "informational");
        assert!(body["normalization_error"]
            .as_str()
            .unwrap()
            .contains("deleted from the mailbox"));
    }

    /// Arbitrary bytes as the reported email, through parsing, normalization and the linked
    /// revision's rebuild: nothing panics, and every report comes out as valid JSON.
    #[test]
    fn arbitrary_bytes_through_parse_and_normalize_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 3] = [
            ORIGINAL.as_bytes(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\nSubject: =?utf-8?B?w6k=?=\r\n\r\n--a--",
            &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0, 0, 0],
        ];
        let subjects = ["Phishing: x", "3|a|b|c|(d)", "", "1|", "Not junk:\u{0}"];
        for round in 0..1500 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            match next() % 4 {
                0 => bytes = (0..(next() % 512)).map(|_| next() as u8).collect(),
                1 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
                2 => {
                    for _ in 0..(next() % 16) {
                        let at = (next() as usize) % bytes.len().max(1);
                        if let Some(b) = bytes.get_mut(at) {
                            *b = next() as u8;
                        }
                    }
                }
                _ => {
                    let cut = (next() as usize) % (bytes.len() + 1);
                    let tail = bytes[cut..].to_vec();
                    bytes.extend_from_slice(&tail);
                }
            }
            let raw = report(subjects[round % subjects.len()]);
            let p = prepare(&raw, parts(&bytes)).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&p.body.json().unwrap())
                .unwrap_or_else(|e| panic!("round {round}: the body is not JSON: {e}"));
            assert_eq!(body["raw"]["id"], "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A");
            assert!(envelope::body_of_event(&p.body.json().unwrap()).is_some());
        }
    }

    #[test]
    fn a_report_without_an_id_is_unusable() {
        let raw = RawValue::from_string(r#"{"subject":"Phishing: x"}"#.into()).unwrap();
        assert!(prepare(&raw, parts(ORIGINAL.as_bytes())).is_err());
    }

    #[test]
    fn a_linked_revision_rebuilds_the_body_from_the_stored_event() {
        let raw = report("Phishing: Your account has been limited");
        let p = prepare(&raw, parts(ORIGINAL.as_bytes())).unwrap();
        let event = envelope::render(
            &Envelope {
                event_id: "e",
                alert_id: "a",
                kind: "phishing_report",
                revision: 1,
                change: Change::Created,
                changed_fields: &[],
                observed_at: "2025-01-14T09:20:01.0000000Z",
                historical: false,
                tenant_id: "t",
                tenant_name: "contoso",
                source: "phishing_reports",
                native_id: &p.native_id,
                version: "r1",
            },
            &p.body.json().unwrap(),
        );
        let body = envelope::body_of_event(&event).unwrap();
        assert_eq!(
            body,
            p.body.json().unwrap().into_owned(),
            "the body comes back byte for byte"
        );
        assert!(envelope::body_of_event(b"[1,2]").is_none());
    }
}
