//! The typed `entities` of the normalized alert, their `indicators`, and the mapping from Graph
//! evidence to them.
//!
//! Graph evidence is a union of 48 `@odata.type`s (API.md §3). Each evidence item is parsed once,
//! on its own, into [`EvidenceIn`], a flat struct holding the union of the properties we map
//! (serde skips the rest), and then mapped by its `@odata.type`. Parsing items one by one means
//! one malformed item costs only itself: it becomes an `other` entity carrying its raw JSON.
//! Types we do not map also become `other`, so nothing Microsoft sends is dropped.
//!
//! Each type reads only the properties the Graph v1.0 schema defines for it (or inherits from
//! `alertEvidence`): the flat struct holds names of several types, and a type borrowing another's
//! name would map a field Microsoft never sends it. A test walks the schema's 48 types to hold
//! every mapping to that.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{json_object, WriteJson};
use super::lenient::{IdText, LenientI64, LooseText, LooseTextList, Text};
use crate::time::{format_ticks, parse_ticks};

/// One entity of the normalized alert: `{"type": ..., "roles": [...], "verdict": ..., ...}`.
#[derive(Clone, Debug)]
pub(crate) enum Entity<'a> {
    User(UserEntity<'a>),
    Device(DeviceEntity<'a>),
    Ip(IpEntity<'a>),
    Url(UrlEntity<'a>),
    File(FileEntity<'a>),
    /// Boxed: with its two images and account it is three times the size of the others.
    Process(Box<ProcessEntity<'a>>),
    Registry(RegistryEntity<'a>),
    Mailbox(MailboxEntity<'a>),
    Email(EmailEntity<'a>),
    CloudApp(CloudAppEntity<'a>),
    Other(OtherEntity<'a>),
}

/// A person's account; also nested in a process as the account it ran under.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UserInfo<'a> {
    pub upn: Option<Text<'a>>,
    pub account_name: Option<Text<'a>>,
    pub domain: Option<Text<'a>>,
    pub sid: Option<Text<'a>>,
    pub aad_user_id: Option<Text<'a>>,
    pub display_name: Option<Text<'a>>,
}

/// A file; also nested in a process as its image and its parent's image.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FileInfo<'a> {
    pub name: Option<Text<'a>>,
    pub path: Option<Text<'a>>,
    pub sha1: Option<Text<'a>>,
    pub sha256: Option<Text<'a>>,
    pub size: Option<i64>,
    pub publisher: Option<Text<'a>>,
    pub signer: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UserEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub user: UserInfo<'a>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DeviceEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub hostname: Option<Text<'a>>,
    pub mde_device_id: Option<Text<'a>>,
    pub aad_device_id: Option<Text<'a>>,
    pub os_platform: Option<Text<'a>>,
    pub os_build: Option<i64>,
    pub ips: Vec<Text<'a>>,
    pub risk_score: Option<Text<'a>>,
    pub health_status: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct IpEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub address: Option<Text<'a>>,
    pub country: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UrlEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub url: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FileEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub file: FileInfo<'a>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub pid: Option<i64>,
    pub parent_pid: Option<i64>,
    pub command_line: Option<Text<'a>>,
    pub created_at: Option<String>,
    pub image: Option<FileInfo<'a>>,
    pub parent_image: Option<FileInfo<'a>>,
    pub user: Option<UserInfo<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RegistryEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub key: Option<Text<'a>>,
    pub hive: Option<Text<'a>>,
    pub value_name: Option<Text<'a>>,
    pub value_data: Option<Text<'a>>,
    pub value_type: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct MailboxEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub primary_address: Option<Text<'a>>,
    pub upn: Option<Text<'a>>,
    pub display_name: Option<Text<'a>>,
}

/// An email message: from `analyzedMessageEvidence`, `submissionMailEvidence` or an email
/// threat submission.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EmailEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub network_message_id: Option<Text<'a>>,
    pub internet_message_id: Option<Text<'a>>,
    /// The From header address (P2), which is what a user sees and what phishing spoofs.
    pub sender: Option<Text<'a>>,
    pub sender_display_name: Option<Text<'a>>,
    /// The SMTP envelope sender (P1), when Microsoft gives it; it differs from `sender` in
    /// spoofing and bulk mail, which matters to a triage.
    pub envelope_sender: Option<Text<'a>>,
    pub sender_ip: Option<Text<'a>>,
    pub recipient: Option<Text<'a>>,
    pub subject: Option<Text<'a>>,
    pub received_at: Option<String>,
    pub delivery_action: Option<Text<'a>>,
    pub delivery_location: Option<Text<'a>>,
    pub urls: Vec<Text<'a>>,
    /// `submissionMailEvidence` only: the submission that put this message in the alert.
    pub submission_id: Option<Text<'a>>,
    pub submitted_at: Option<String>,
    /// How it was reported (Microsoft's text, e.g. `Junk`, `Phish`).
    pub report_type: Option<Text<'a>>,
    pub submitter: Option<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CloudAppEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    pub app_id: Option<Text<'a>>,
    pub name: Option<Text<'a>>,
    pub instance_name: Option<Text<'a>>,
    pub saas_app_id: Option<Text<'a>>,
}

/// Anything not mapped to a typed entity, kept whole so a consumer loses nothing.
#[derive(Clone, Debug)]
pub(crate) struct OtherEntity<'a> {
    pub roles: Vec<Text<'a>>,
    pub verdict: Option<Text<'a>>,
    /// The evidence's `@odata.type`; null for items that have none (Cloud Apps entities).
    pub odata_type: Option<Text<'a>>,
    pub raw: &'a RawValue,
}

json_object!(UserInfo {
    upn,
    account_name,
    domain,
    sid,
    aad_user_id,
    display_name
});
json_object!(FileInfo {
    name,
    path,
    sha1,
    sha256,
    size,
    publisher,
    signer
});
json_object!(DeviceEntity {
    roles,
    verdict,
    hostname,
    mde_device_id,
    aad_device_id,
    os_platform,
    os_build,
    ips,
    risk_score,
    health_status,
});
json_object!(IpEntity {
    roles,
    verdict,
    address,
    country
});
json_object!(UrlEntity {
    roles,
    verdict,
    url
});
json_object!(ProcessEntity {
    roles,
    verdict,
    pid,
    parent_pid,
    command_line,
    created_at,
    image,
    parent_image,
    user,
});
json_object!(RegistryEntity {
    roles,
    verdict,
    key,
    hive,
    value_name,
    value_data,
    value_type
});
json_object!(MailboxEntity {
    roles,
    verdict,
    primary_address,
    upn,
    display_name
});
json_object!(EmailEntity {
    roles,
    verdict,
    network_message_id,
    internet_message_id,
    sender,
    sender_display_name,
    envelope_sender,
    sender_ip,
    recipient,
    subject,
    received_at,
    delivery_action,
    delivery_location,
    urls,
    submission_id,
    submitted_at,
    report_type,
    submitter,
});
json_object!(CloudAppEntity {
    roles,
    verdict,
    app_id,
    name,
    instance_name,
    saas_app_id
});
json_object!(OtherEntity {
    roles,
    verdict,
    odata_type,
    raw
});

impl UserEntity<'_> {
    /// The account's fields sit beside `roles` and `verdict`, not nested.
    fn write_members(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"roles\":");
        self.roles.write_json(out);
        out.extend_from_slice(b",\"verdict\":");
        self.verdict.write_json(out);
        out.push(b',');
        self.user.write_members(out);
    }
}

impl FileEntity<'_> {
    /// The file's fields sit beside `roles` and `verdict`, not nested.
    fn write_members(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"roles\":");
        self.roles.write_json(out);
        out.extend_from_slice(b",\"verdict\":");
        self.verdict.write_json(out);
        out.push(b',');
        self.file.write_members(out);
    }
}

impl Entity<'_> {
    /// The entity's `type`.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Entity::User(_) => "user",
            Entity::Device(_) => "device",
            Entity::Ip(_) => "ip",
            Entity::Url(_) => "url",
            Entity::File(_) => "file",
            Entity::Process(_) => "process",
            Entity::Registry(_) => "registry",
            Entity::Mailbox(_) => "mailbox",
            Entity::Email(_) => "email",
            Entity::CloudApp(_) => "cloud_app",
            Entity::Other(_) => "other",
        }
    }
}

impl WriteJson for Entity<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(self.type_name().as_bytes());
        out.extend_from_slice(b"\",");
        match self {
            Entity::User(e) => e.write_members(out),
            Entity::Device(e) => e.write_members(out),
            Entity::Ip(e) => e.write_members(out),
            Entity::Url(e) => e.write_members(out),
            Entity::File(e) => e.write_members(out),
            Entity::Process(e) => e.write_members(out),
            Entity::Registry(e) => e.write_members(out),
            Entity::Mailbox(e) => e.write_members(out),
            Entity::Email(e) => e.write_members(out),
            Entity::CloudApp(e) => e.write_members(out),
            Entity::Other(e) => e.write_members(out),
        }
        out.push(b'}');
    }
}

/// The indicator types of the normalized `indicators` list.
pub(crate) mod indicator {
    pub const USER: &str = "user";
    pub const HOST: &str = "host";
    pub const IP: &str = "ip";
    pub const URL: &str = "url";
    pub const SHA256: &str = "sha256";
    pub const SHA1: &str = "sha1";
    pub const FILE_NAME: &str = "file_name";
    pub const EMAIL_SENDER: &str = "email_sender";
    pub const EMAIL_RECIPIENT: &str = "email_recipient";
    pub const INTERNET_MESSAGE_ID: &str = "internet_message_id";
    pub const MAILBOX: &str = "mailbox";
}

impl Entity<'_> {
    /// Calls `push(type, value)` for each indicator this entity contributes.
    ///
    /// Deliberately left out: device interface IPs (mostly private addresses that would match
    /// across unrelated alerts), a process's parent image and account (usually `services.exe`
    /// and `SYSTEM`), registry keys and `other` entities.
    pub(crate) fn indicators<'b>(&'b self, push: &mut impl FnMut(&'static str, Cow<'b, str>)) {
        use indicator::*;
        match self {
            Entity::User(u) => user_indicator(&u.user, push),
            Entity::Device(d) => put(push, HOST, &d.hostname),
            Entity::Ip(ip) => put(push, IP, &ip.address),
            Entity::Url(u) => put(push, URL, &u.url),
            Entity::File(f) => file_indicators(&f.file, push),
            Entity::Process(p) => {
                if let Some(image) = &p.image {
                    file_indicators(image, push);
                }
            }
            Entity::Mailbox(m) => {
                put(push, USER, &m.upn);
                put(push, MAILBOX, &m.primary_address);
            }
            Entity::Email(e) => {
                put(push, EMAIL_SENDER, &e.sender);
                put(push, EMAIL_RECIPIENT, &e.recipient);
                put(push, INTERNET_MESSAGE_ID, &e.internet_message_id);
                put(push, IP, &e.sender_ip);
                for url in e.urls.iter().filter(|u| !u.is_empty()) {
                    push(URL, Cow::Borrowed(url));
                }
            }
            Entity::Registry(_) | Entity::CloudApp(_) | Entity::Other(_) => {}
        }
    }
}

/// Pushes a present, non-empty value.
fn put<'b>(
    push: &mut impl FnMut(&'static str, Cow<'b, str>),
    kind: &'static str,
    v: &'b Option<Text<'_>>,
) {
    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
        push(kind, Cow::Borrowed(v));
    }
}

/// One `user` indicator per account: the UPN, or else `DOMAIN\name`, or else the bare name.
fn user_indicator<'b>(u: &'b UserInfo<'_>, push: &mut impl FnMut(&'static str, Cow<'b, str>)) {
    let present = |v: &Option<Text<'_>>| v.as_deref().is_some_and(|s| !s.is_empty());
    if present(&u.upn) {
        put(push, indicator::USER, &u.upn);
    } else if let (Some(domain), true) = (
        u.domain.as_deref().filter(|d| !d.is_empty()),
        present(&u.account_name),
    ) {
        let name = u.account_name.as_deref().unwrap_or_default();
        push(indicator::USER, Cow::Owned(format!("{domain}\\{name}")));
    } else {
        put(push, indicator::USER, &u.account_name);
    }
}

fn file_indicators<'b>(f: &'b FileInfo<'_>, push: &mut impl FnMut(&'static str, Cow<'b, str>)) {
    put(push, indicator::SHA256, &f.sha256);
    put(push, indicator::SHA1, &f.sha1);
    put(push, indicator::FILE_NAME, &f.name);
}

// ---------------------------------------------------------------------------------------------
// Graph evidence

/// The union of the evidence properties we map. All optional: any evidence type fits.
///
/// Property names whose type differs between evidence types (`ipAddress`, `urls`, `appId`) use
/// lenient types, so that e.g. a `nicEvidence` (whose `ipAddress` is an object) does not fail
/// to parse; a type error anywhere else is a genuine malformation of a type we map.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EvidenceIn<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<Text<'a>>,
    #[serde(borrow)]
    verdict: Option<Text<'a>>,
    #[serde(borrow)]
    roles: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    user_account: Option<UserAccountIn<'a>>,
    // deviceEvidence
    #[serde(borrow)]
    device_dns_name: Option<Text<'a>>,
    #[serde(borrow)]
    host_name: Option<Text<'a>>,
    #[serde(borrow)]
    mde_device_id: Option<Text<'a>>,
    #[serde(borrow)]
    azure_ad_device_id: Option<Text<'a>>,
    #[serde(borrow)]
    os_platform: Option<Text<'a>>,
    os_build: Option<LenientI64>,
    #[serde(borrow)]
    ip_interfaces: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    last_ip_address: Option<Text<'a>>,
    #[serde(borrow)]
    last_external_ip_address: Option<Text<'a>>,
    #[serde(borrow)]
    risk_score: Option<Text<'a>>,
    #[serde(borrow)]
    health_status: Option<Text<'a>>,
    // ipEvidence
    #[serde(borrow)]
    ip_address: Option<LooseText<'a>>,
    #[serde(borrow)]
    country_letter_code: Option<Text<'a>>,
    // urlEvidence
    #[serde(borrow)]
    url: Option<Text<'a>>,
    // fileEvidence, fileHashEvidence
    #[serde(borrow)]
    file_details: Option<FileDetailsIn<'a>>,
    #[serde(borrow)]
    algorithm: Option<Text<'a>>,
    #[serde(borrow)]
    value: Option<Text<'a>>,
    // processEvidence
    process_id: Option<LenientI64>,
    parent_process_id: Option<LenientI64>,
    #[serde(borrow)]
    process_command_line: Option<Text<'a>>,
    #[serde(borrow)]
    process_creation_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    image_file: Option<FileDetailsIn<'a>>,
    #[serde(borrow)]
    parent_process_image_file: Option<FileDetailsIn<'a>>,
    // registryKeyEvidence, registryValueEvidence
    #[serde(borrow)]
    registry_key: Option<Text<'a>>,
    #[serde(borrow)]
    registry_hive: Option<Text<'a>>,
    #[serde(borrow)]
    registry_value_name: Option<Text<'a>>,
    #[serde(borrow)]
    registry_value: Option<Text<'a>>,
    #[serde(borrow)]
    registry_value_type: Option<Text<'a>>,
    // mailboxEvidence
    #[serde(borrow)]
    primary_address: Option<Text<'a>>,
    #[serde(borrow)]
    upn: Option<Text<'a>>,
    #[serde(borrow)]
    display_name: Option<Text<'a>>,
    // analyzedMessageEvidence, submissionMailEvidence
    #[serde(borrow)]
    network_message_id: Option<Text<'a>>,
    // submissionMailEvidence
    #[serde(borrow)]
    submission_id: Option<Text<'a>>,
    #[serde(borrow)]
    submission_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    report_type: Option<Text<'a>>,
    #[serde(borrow)]
    submitter: Option<Text<'a>>,
    #[serde(borrow)]
    internet_message_id: Option<Text<'a>>,
    #[serde(borrow)]
    p1_sender: Option<EmailSenderIn<'a>>,
    #[serde(borrow)]
    p2_sender: Option<EmailSenderIn<'a>>,
    #[serde(borrow)]
    sender: Option<Text<'a>>,
    #[serde(borrow)]
    sender_ip: Option<Text<'a>>,
    #[serde(borrow)]
    recipient_email_address: Option<Text<'a>>,
    #[serde(borrow)]
    recipient: Option<Text<'a>>,
    #[serde(borrow)]
    subject: Option<Text<'a>>,
    #[serde(borrow)]
    received_date_time: Option<Text<'a>>,
    #[serde(borrow)]
    delivery_action: Option<Text<'a>>,
    #[serde(borrow)]
    delivery_location: Option<Text<'a>>,
    #[serde(borrow)]
    urls: Option<LooseTextList<'a>>,
    // cloudApplicationEvidence, oauthApplicationEvidence
    #[serde(borrow)]
    app_id: Option<IdText<'a>>,
    #[serde(borrow)]
    instance_name: Option<Text<'a>>,
    #[serde(borrow)]
    saas_app_id: Option<IdText<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserAccountIn<'a> {
    #[serde(borrow)]
    account_name: Option<Text<'a>>,
    #[serde(borrow)]
    domain_name: Option<Text<'a>>,
    #[serde(borrow)]
    user_sid: Option<Text<'a>>,
    #[serde(borrow)]
    azure_ad_user_id: Option<Text<'a>>,
    #[serde(borrow)]
    user_principal_name: Option<Text<'a>>,
    #[serde(borrow)]
    display_name: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileDetailsIn<'a> {
    #[serde(borrow)]
    sha1: Option<Text<'a>>,
    #[serde(borrow)]
    sha256: Option<Text<'a>>,
    #[serde(borrow)]
    file_name: Option<Text<'a>>,
    #[serde(borrow)]
    file_path: Option<Text<'a>>,
    file_size: Option<LenientI64>,
    #[serde(borrow)]
    file_publisher: Option<Text<'a>>,
    #[serde(borrow)]
    signer: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EmailSenderIn<'a> {
    #[serde(borrow)]
    display_name: Option<Text<'a>>,
    #[serde(borrow)]
    email_address: Option<Text<'a>>,
}

/// Just the discriminator, to describe an evidence item that failed to parse.
#[derive(Deserialize)]
struct OdataTypeOnly<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<LooseText<'a>>,
}

/// The evidence types mapped to typed entities, by the last segment of `@odata.type`.
const MAPPED_EVIDENCE: &[&str] = &[
    "userEvidence",
    "deviceEvidence",
    "ipEvidence",
    "urlEvidence",
    "fileEvidence",
    "fileHashEvidence",
    "processEvidence",
    "registryKeyEvidence",
    "registryValueEvidence",
    "mailboxEvidence",
    "analyzedMessageEvidence",
    "submissionMailEvidence",
    "cloudApplicationEvidence",
    "oauthApplicationEvidence",
];

/// `#microsoft.graph.security.fileEvidence` → `fileEvidence`.
fn short_type(odata_type: &str) -> &str {
    odata_type.rsplit('.').next().unwrap_or(odata_type)
}

/// Maps one Graph evidence item to an entity. `Err` carries a note for `normalization_error`
/// together with the `other` entity that replaces the item.
pub(crate) fn from_evidence<'a>(
    raw: &'a RawValue,
    errors: &mut Vec<String>,
    index: usize,
) -> Entity<'a> {
    match serde_json::from_str::<EvidenceIn<'a>>(raw.get()) {
        Ok(ev) => map_evidence(ev, raw, errors, index),
        Err(e) => {
            // Find what it claimed to be, to say so and to decide whether this is news: a type
            // we do not map becomes `other` anyway, so its shape clashing with a property name
            // of a mapped type loses nothing and is not reported.
            let odata_type = serde_json::from_str::<OdataTypeOnly<'a>>(raw.get())
                .ok()
                .and_then(|o| o.odata_type)
                .and_then(|t| t.0)
                .map(Text);
            let mapped = odata_type
                .as_deref()
                .is_none_or(|t| MAPPED_EVIDENCE.contains(&short_type(t)));
            if mapped {
                errors.push(format!(
                    "evidence[{index}] ({}): {}",
                    odata_type.as_deref().unwrap_or("no @odata.type"),
                    error_text(&e)
                ));
            }
            Entity::Other(OtherEntity {
                roles: Vec::new(),
                verdict: None,
                odata_type,
                raw,
            })
        }
    }
}

fn map_evidence<'a>(
    ev: EvidenceIn<'a>,
    raw: &'a RawValue,
    errors: &mut Vec<String>,
    index: usize,
) -> Entity<'a> {
    let roles = ev.roles.unwrap_or_default();
    let verdict = ev.verdict;
    let kind = ev.odata_type.as_deref().map(short_type).unwrap_or("");
    match kind {
        "userEvidence" => Entity::User(UserEntity {
            roles,
            verdict,
            user: ev.user_account.map(user_info).unwrap_or_default(),
        }),
        "deviceEvidence" => {
            let mut ips = ev.ip_interfaces.unwrap_or_default();
            for ip in [ev.last_ip_address, ev.last_external_ip_address]
                .into_iter()
                .flatten()
            {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            Entity::Device(DeviceEntity {
                roles,
                verdict,
                // The DNS name is the fully qualified one; hostName is its first label.
                hostname: ev.device_dns_name.or(ev.host_name),
                mde_device_id: ev.mde_device_id,
                aad_device_id: ev.azure_ad_device_id,
                os_platform: ev.os_platform,
                os_build: ev.os_build.and_then(|v| v.0),
                ips,
                risk_score: ev.risk_score,
                health_status: ev.health_status,
            })
        }
        "ipEvidence" => Entity::Ip(IpEntity {
            roles,
            verdict,
            address: ev.ip_address.and_then(|v| v.0).map(Text),
            country: ev.country_letter_code,
        }),
        "urlEvidence" => Entity::Url(UrlEntity {
            roles,
            verdict,
            url: ev.url,
        }),
        "fileEvidence" => Entity::File(FileEntity {
            roles,
            verdict,
            file: ev.file_details.map(file_info).unwrap_or_default(),
        }),
        "fileHashEvidence" => {
            let mut file = FileInfo::default();
            match ev
                .algorithm
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("sha256") => file.sha256 = ev.value,
                Some("sha1") => file.sha1 = ev.value,
                // md5 and unknown algorithms have no field; the raw keeps them.
                _ => return other(roles, verdict, ev.odata_type, raw),
            }
            Entity::File(FileEntity {
                roles,
                verdict,
                file,
            })
        }
        "processEvidence" => {
            let created_at = time_field(
                ev.process_creation_date_time.as_deref(),
                "processCreationDateTime",
                errors,
                index,
            );
            Entity::Process(Box::new(ProcessEntity {
                roles,
                verdict,
                pid: ev.process_id.and_then(|v| v.0),
                parent_pid: ev.parent_process_id.and_then(|v| v.0),
                command_line: ev.process_command_line,
                created_at,
                image: ev.image_file.map(file_info),
                parent_image: ev.parent_process_image_file.map(file_info),
                user: ev.user_account.map(user_info),
            }))
        }
        // A key has no value: the value fields are registryValueEvidence's.
        "registryKeyEvidence" => Entity::Registry(RegistryEntity {
            roles,
            verdict,
            key: ev.registry_key,
            hive: ev.registry_hive,
            ..RegistryEntity::default()
        }),
        "registryValueEvidence" => Entity::Registry(RegistryEntity {
            roles,
            verdict,
            key: ev.registry_key,
            hive: ev.registry_hive,
            value_name: ev.registry_value_name,
            value_data: ev.registry_value,
            value_type: ev.registry_value_type,
        }),
        "mailboxEvidence" => {
            let account = ev.user_account.unwrap_or_default();
            Entity::Mailbox(MailboxEntity {
                roles,
                verdict,
                primary_address: ev.primary_address,
                upn: ev.upn.or(account.user_principal_name),
                display_name: ev.display_name.or(account.display_name),
            })
        }
        // A message someone submitted (v1.0 schema): flat sender and recipient strings and
        // the submission's own id, time, type and submitter; no P1/P2 senders, no delivery.
        "submissionMailEvidence" => {
            let submitted_at = time_field(
                ev.submission_date_time.as_deref(),
                "submissionDateTime",
                errors,
                index,
            );
            Entity::Email(EmailEntity {
                roles,
                verdict,
                network_message_id: ev.network_message_id,
                sender: ev.sender,
                sender_ip: ev.sender_ip,
                recipient: ev.recipient,
                subject: ev.subject,
                submission_id: ev.submission_id,
                submitted_at,
                report_type: ev.report_type,
                submitter: ev.submitter,
                ..EmailEntity::default()
            })
        }
        "analyzedMessageEvidence" => {
            let received_at = time_field(
                ev.received_date_time.as_deref(),
                "receivedDateTime",
                errors,
                index,
            );
            let p1 = ev.p1_sender.unwrap_or_default();
            let p2 = ev.p2_sender.unwrap_or_default();
            Entity::Email(EmailEntity {
                roles,
                verdict,
                network_message_id: ev.network_message_id,
                internet_message_id: ev.internet_message_id,
                sender: p2.email_address,
                sender_display_name: p2.display_name.or(p1.display_name),
                envelope_sender: p1.email_address,
                sender_ip: ev.sender_ip,
                recipient: ev.recipient_email_address,
                subject: ev.subject,
                received_at,
                delivery_action: ev.delivery_action,
                delivery_location: ev.delivery_location,
                urls: ev.urls.map(|u| u.0).unwrap_or_default(),
                ..EmailEntity::default()
            })
        }
        "cloudApplicationEvidence" => Entity::CloudApp(CloudAppEntity {
            roles,
            verdict,
            app_id: ev.app_id.map(Text::from),
            name: ev.display_name,
            instance_name: ev.instance_name,
            saas_app_id: ev.saas_app_id.map(Text::from),
        }),
        // An OAuth app has no instance or SaaS app id (those are cloudApplicationEvidence's).
        "oauthApplicationEvidence" => Entity::CloudApp(CloudAppEntity {
            roles,
            verdict,
            app_id: ev.app_id.map(Text::from),
            name: ev.display_name,
            ..CloudAppEntity::default()
        }),
        _ => other(roles, verdict, ev.odata_type, raw),
    }
}

fn other<'a>(
    roles: Vec<Text<'a>>,
    verdict: Option<Text<'a>>,
    odata_type: Option<Text<'a>>,
    raw: &'a RawValue,
) -> Entity<'a> {
    Entity::Other(OtherEntity {
        roles,
        verdict,
        odata_type,
        raw,
    })
}

fn user_info(u: UserAccountIn<'_>) -> UserInfo<'_> {
    UserInfo {
        upn: u.user_principal_name,
        account_name: u.account_name,
        domain: u.domain_name,
        sid: u.user_sid,
        aad_user_id: u.azure_ad_user_id,
        display_name: u.display_name,
    }
}

fn file_info(f: FileDetailsIn<'_>) -> FileInfo<'_> {
    FileInfo {
        name: f.file_name,
        path: f.file_path,
        sha1: f.sha1,
        sha256: f.sha256,
        size: f.file_size.and_then(|v| v.0),
        publisher: f.file_publisher,
        signer: f.signer,
    }
}

/// Formats an evidence time; an unreadable one is noted and left out.
fn time_field(
    v: Option<&str>,
    name: &str,
    errors: &mut Vec<String>,
    index: usize,
) -> Option<String> {
    let v = v?;
    match parse_ticks(v) {
        Some(t) => Some(format_ticks(t)),
        None => {
            errors.push(format!("evidence[{index}].{name}: not a time: {v:?}"));
            None
        }
    }
}

/// A serde_json error without its " at line 1 column 23" suffix, which says nothing useful
/// about a fragment that was cut out of a larger document.
pub(crate) fn error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The internet and network message ids of the email entities, for cross-source links.
pub(crate) fn message_ids(entities: &[Entity<'_>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in entities {
        if let Entity::Email(m) = e {
            for id in [&m.internet_message_id, &m.network_message_id]
                .into_iter()
                .flatten()
            {
                if !id.is_empty() && !out.iter().any(|o| o == &**id) {
                    out.push(id.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn entity(json: &str) -> (String, Vec<String>) {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let mut errors = Vec::new();
        let e = from_evidence(&raw, &mut errors, 0);
        let mut out = Vec::new();
        e.write_json(&mut out);
        (String::from_utf8(out).unwrap(), errors)
    }

    #[test]
    fn user_evidence_maps_its_account() {
        let (json, errors) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.userEvidence","roles":["compromised"],
            "verdict":"suspicious","userAccount":{"accountName":"alice","domainName":"CONTOSO",
            "userSid":"S-1-5-21-1","azureAdUserId":"a-1","userPrincipalName":"alice@contoso.com",
            "displayName":"Alice"}}"##,
        );
        assert!(errors.is_empty());
        assert_eq!(
            json,
            r#"{"type":"user","roles":["compromised"],"verdict":"suspicious","upn":"alice@contoso.com","account_name":"alice","domain":"CONTOSO","sid":"S-1-5-21-1","aad_user_id":"a-1","display_name":"Alice"}"#
        );
    }

    #[test]
    fn analyzed_message_becomes_an_email_with_p2_as_sender() {
        let (json, errors) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.analyzedMessageEvidence",
            "networkMessageId":"n-1","internetMessageId":"<m@x>","recipientEmailAddress":"bob@contoso.com",
            "p1Sender":{"emailAddress":"bounce@evil.test","displayName":null},
            "p2Sender":{"emailAddress":"ceo@contoso.com","displayName":"The CEO"},
            "senderIp":"203.0.113.5","subject":"Pay now","receivedDateTime":"2024-01-02T03:04:05Z",
            "deliveryAction":"delivered","deliveryLocation":"inbox","urls":["https://evil.test/a"]}"##,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "email");
        assert_eq!(v["sender"], "ceo@contoso.com");
        assert_eq!(v["envelope_sender"], "bounce@evil.test");
        assert_eq!(v["received_at"], "2024-01-02T03:04:05.0000000Z");
        assert_eq!(v["urls"][0], "https://evil.test/a");
    }

    #[test]
    fn app_id_is_a_string_whether_microsoft_sent_a_number_or_a_string() {
        let (a, _) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.cloudApplicationEvidence","appId":11161,"displayName":"Office 365","instanceName":"Office 365","saasAppId":11161}"##,
        );
        assert!(a.contains(r#""app_id":"11161""#), "{a}");
        assert!(a.contains(r#""saas_app_id":"11161""#), "{a}");
        let (b, _) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.oauthApplicationEvidence","appId":"4f6a-…","displayName":"App"}"##,
        );
        assert!(b.contains(r#""type":"cloud_app""#) && b.contains(r#""app_id":"4f6a-…""#));
    }

    #[test]
    fn a_malformed_mapped_evidence_is_other_with_a_note() {
        let (json, errors) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":"x"}"##,
        );
        assert!(json.starts_with(r##"{"type":"other","roles":[],"verdict":null,"odata_type":"#microsoft.graph.security.fileEvidence","raw":{"##));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .starts_with("evidence[0] (#microsoft.graph.security.fileEvidence): invalid type"),
            "{errors:?}"
        );
    }

    #[test]
    fn unmapped_types_are_other_and_clashing_shapes_there_are_not_errors() {
        // nicEvidence.ipAddress is an object, where ipEvidence.ipAddress is a string.
        let (json, errors) = entity(
            r##"{"@odata.type":"#microsoft.graph.security.nicEvidence","ipAddress":{"ipAddress":"10.0.0.1"},"macAddress":"00:11"}"##,
        );
        assert!(errors.is_empty());
        assert!(json.contains(r##""odata_type":"#microsoft.graph.security.nicEvidence""##));
        assert!(
            json.contains(r#""macAddress":"00:11""#),
            "raw is kept: {json}"
        );
        let (_, errors) = entity("42");
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn indicators_of_a_user_without_upn_use_domain_and_name() {
        let e = Entity::User(UserEntity {
            user: UserInfo {
                account_name: Some(Text::borrowed("alice")),
                domain: Some(Text::borrowed("CONTOSO")),
                ..UserInfo::default()
            },
            ..UserEntity::default()
        });
        let mut got = Vec::new();
        e.indicators(&mut |k, v| got.push(format!("{k}={v}")));
        assert_eq!(got, ["user=CONTOSO\\alice"]);
    }
}
