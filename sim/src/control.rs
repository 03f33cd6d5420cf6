//! A small HTTP control API under `/_sim/` so the `m365-sim` binary can be driven by tools that
//! are not Rust tests: register tenants and apps, generate or insert alerts, incidents, threat
//! submissions and Cloud Apps alerts, switch faults and the Dropzone behaviour, drive the
//! reporting mailboxes (create, generate reports, move, delete, expire sync states, policies,
//! mail faults), register advanced-hunting messages and switch hunting faults, and read what was
//! received. Control requests are not recorded in [`Simulator::requests`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    time, DeltaExpiry, DropzoneBehavior, Faults, FormatMix, HuntingFaults, HuntingMessage, Inner,
    MailFaults, ReportFacts, ReportSpec, Simulator, ValueRefusal,
};

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(e: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response()
}

fn ok(v: Value) -> Response {
    Json(v).into_response()
}

fn sim(inner: Arc<Inner>) -> Simulator {
    Simulator { inner }
}

#[derive(Deserialize)]
struct TenantReq {
    tenant_id: String,
}

#[derive(Deserialize)]
struct AppReq {
    tenant_id: String,
    client_id: String,
    secret: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct GenerateReq {
    tenant_id: String,
    n: usize,
    #[serde(default = "default_minutes_back")]
    minutes_back: u64,
}

fn default_minutes_back() -> u64 {
    60
}

#[derive(Deserialize)]
struct GenerateListReq {
    tenant_id: String,
    list: String,
    n: usize,
    #[serde(default = "default_minutes_back")]
    minutes_back: u64,
}

#[derive(Deserialize)]
struct InsertItemReq {
    tenant_id: String,
    item: Value,
}

#[derive(Deserialize)]
struct InsertSubmissionReq {
    tenant_id: String,
    list: String,
    item: Value,
}

#[derive(Deserialize)]
struct InsertReq {
    tenant_id: String,
    alert: Value,
}

#[derive(Deserialize)]
struct FaultsReq {
    tenant_id: String,
    throttle_every: Option<u32>,
    retry_after: Option<String>,
    server_error_every: Option<u32>,
    #[serde(default)]
    truncate_next: u32,
    #[serde(default)]
    update_during_listing: u32,
    next_link_base: Option<String>,
    delay_ms: Option<u64>,
    #[serde(default)]
    expand_fails: bool,
    #[serde(default)]
    refuse_submission_filter: bool,
    #[serde(default)]
    ignore_submission_filter: bool,
    #[serde(default)]
    stale_skiptoken_next: u32,
    #[serde(default)]
    alerts_without_next_link: bool,
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum DropzoneReq {
    Accept,
    FailWith {
        status: u16,
        retry_after: Option<String>,
    },
    RejectEventIds {
        ids: Vec<String>,
        status: u16,
    },
    RejectWhere {
        field: String,
        contains: String,
        status: u16,
    },
    MaxBodyBytes {
        bytes: usize,
    },
}

async fn tenants(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<TenantReq>(&body) {
        Ok(r) => {
            sim(inner).add_tenant(&r.tenant_id);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn apps(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<AppReq>(&body) {
        Ok(r) => {
            let roles: Vec<&str> = r.roles.iter().map(String::as_str).collect();
            sim(inner).add_app(&r.tenant_id, &r.client_id, &r.secret, &roles);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn generate(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<GenerateReq>(&body) {
        Ok(r) => {
            let to = SystemTime::now();
            let from = to
                .checked_sub(Duration::from_secs(r.minutes_back.saturating_mul(60)))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let ids = sim(inner).generate_alerts(&r.tenant_id, r.n, from, to);
            ok(json!({"generated": ids.len()}))
        }
        Err(e) => bad_request(e),
    }
}

/// `[now - minutes_back, now)`.
fn window(minutes_back: u64) -> (SystemTime, SystemTime) {
    let to = SystemTime::now();
    let from = to
        .checked_sub(Duration::from_secs(minutes_back.saturating_mul(60)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    (from, to)
}

async fn generate_incidents(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<GenerateReq>(&body) {
        Ok(r) => {
            let (from, to) = window(r.minutes_back);
            let ids = sim(inner).generate_incidents(&r.tenant_id, r.n, from, to);
            ok(json!({"generated": ids.len(), "ids": ids}))
        }
        Err(e) => bad_request(e),
    }
}

async fn generate_submissions(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<GenerateListReq>(&body) {
        Ok(r) if crate::submissions::list_name(&r.list).is_none() => bad_request(format!(
            "unknown list '{}': expected emailThreats, urlThreats or fileThreats",
            r.list
        )),
        Ok(r) => {
            let (from, to) = window(r.minutes_back);
            let ids = sim(inner).generate_submissions(&r.tenant_id, &r.list, r.n, from, to);
            ok(json!({"generated": ids.len(), "ids": ids}))
        }
        Err(e) => bad_request(e),
    }
}

async fn generate_cloud_apps(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<GenerateReq>(&body) {
        Ok(r) => {
            let (from, to) = window(r.minutes_back);
            let ids = sim(inner).generate_cloud_app_alerts(&r.tenant_id, r.n, from, to);
            ok(json!({"generated": ids.len(), "ids": ids}))
        }
        Err(e) => bad_request(e),
    }
}

async fn insert_incident(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<InsertItemReq>(&body) {
        Ok(r) => {
            sim(inner).insert_incident(&r.tenant_id, r.item);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn insert_submission(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<InsertSubmissionReq>(&body) {
        Ok(r) if crate::submissions::list_name(&r.list).is_none() => {
            bad_request(format!("unknown list '{}'", r.list))
        }
        Ok(r) => {
            sim(inner).insert_submission(&r.tenant_id, &r.list, r.item);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn insert_cloud_app_alert(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<InsertItemReq>(&body) {
        Ok(r) => {
            sim(inner).insert_cloud_app_alert(&r.tenant_id, r.item);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn insert(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<InsertReq>(&body) {
        Ok(r) => {
            sim(inner).insert_alert(&r.tenant_id, r.alert);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn faults(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<FaultsReq>(&body) {
        Ok(r) => {
            let f = Faults {
                throttle_every: r.throttle_every,
                retry_after: r.retry_after,
                server_error_every: r.server_error_every,
                truncate_next: r.truncate_next,
                update_during_listing: r.update_during_listing,
                next_link_base: r.next_link_base,
                delay: r.delay_ms.map(Duration::from_millis),
                hide_until: Vec::new(),
                expand_fails: r.expand_fails,
                refuse_submission_filter: r.refuse_submission_filter,
                ignore_submission_filter: r.ignore_submission_filter,
                stale_skiptoken_next: r.stale_skiptoken_next,
                alerts_without_next_link: r.alerts_without_next_link,
            };
            sim(inner).set_faults(&r.tenant_id, f);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn dropzone(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<DropzoneReq>(&body) {
        Ok(r) => {
            let b = match r {
                DropzoneReq::Accept => DropzoneBehavior::Accept,
                DropzoneReq::FailWith {
                    status,
                    retry_after,
                } => DropzoneBehavior::FailWith {
                    status,
                    retry_after,
                },
                DropzoneReq::RejectEventIds { ids, status } => {
                    DropzoneBehavior::RejectEventIds { ids, status }
                }
                DropzoneReq::RejectWhere {
                    field,
                    contains,
                    status,
                } => DropzoneBehavior::RejectWhere {
                    field,
                    contains,
                    status,
                },
                DropzoneReq::MaxBodyBytes { bytes } => DropzoneBehavior::MaxBodyBytes(bytes),
            };
            sim(inner).set_dropzone(b);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

#[derive(Deserialize)]
struct MailboxReq {
    tenant_id: String,
    upn: String,
}

#[derive(Deserialize)]
struct MixReq {
    #[serde(default)]
    item: u32,
    #[serde(default)]
    eml: u32,
    #[serde(default)]
    msg: u32,
    #[serde(default)]
    inline: u32,
    #[serde(default)]
    third_party: u32,
    #[serde(default)]
    multiple: u32,
}

#[derive(Deserialize)]
struct ReportsReq {
    tenant_id: String,
    mailbox: String,
    n: usize,
    #[serde(default = "default_minutes_back")]
    minutes_back: u64,
    #[serde(default)]
    seed: u64,
    folder: Option<String>,
    mix: Option<MixReq>,
}

#[derive(Deserialize)]
struct MessageReq {
    tenant_id: String,
    mailbox: String,
    immutable_id: String,
    folder: Option<String>,
}

#[derive(Deserialize)]
struct ExpireReq {
    tenant_id: String,
    /// `gone` or `sync_state_not_found`
    mode: String,
}

#[derive(Deserialize)]
struct PolicyReq {
    tenant_id: String,
    mailbox: Option<String>,
}

#[derive(Deserialize)]
struct AccessReq {
    tenant_id: String,
    client_id: String,
    allowed: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct MailFaultsReq {
    tenant_id: String,
    #[serde(default)]
    throttle_next: u32,
    retry_after_secs: Option<u64>,
    requests_per_window: Option<usize>,
    window_secs: Option<u64>,
    max_concurrent: Option<usize>,
    delay_ms: Option<u64>,
    #[serde(default)]
    duplicate_next_rounds: u32,
    /// attachment ids whose `$value` answers 500
    #[serde(default)]
    value_server_error: Vec<String>,
    /// attachment ids whose `$value` answers 403
    #[serde(default)]
    value_access_denied: Vec<String>,
    #[serde(default)]
    truncated: Vec<String>,
    #[serde(default)]
    delete_on_fetch: Vec<String>,
}

#[derive(Deserialize)]
struct HuntingFaultsReq {
    tenant_id: String,
    /// the CPU quota is spent for this many seconds from now
    cpu_quota_secs: Option<u64>,
    #[serde(default)]
    forbidden: bool,
    delay_ms: Option<u64>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    pascal_schema: bool,
}

async fn hunting_faults(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<HuntingFaultsReq>(&body) {
        Ok(r) => {
            sim(inner).set_hunting_faults(
                &r.tenant_id,
                HuntingFaults {
                    cpu_quota_for: r.cpu_quota_secs.map(Duration::from_secs),
                    forbidden: r.forbidden,
                    delay: r.delay_ms.map(Duration::from_millis),
                    timeout: r.timeout_ms.map(Duration::from_millis),
                    pascal_schema: r.pascal_schema,
                },
            );
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

#[derive(Deserialize)]
struct HuntingMessageReq {
    tenant_id: String,
    internet_message_id: String,
    sender: String,
    subject: String,
    recipients: usize,
    #[serde(default)]
    clickers: usize,
    /// how long ago it was received (default 10 minutes)
    #[serde(default)]
    minutes_ago: Option<u64>,
}

async fn hunting_message(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<HuntingMessageReq>(&body) {
        Ok(r) => {
            let received =
                SystemTime::now() - Duration::from_secs(60 * r.minutes_ago.unwrap_or(10));
            let m = HuntingMessage::campaign(
                &r.internet_message_id,
                &r.sender,
                &r.subject,
                received,
                r.recipients,
                r.clickers.min(r.recipients),
            );
            sim(inner).add_hunting_message(&r.tenant_id, m);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

fn facts_json(f: &ReportFacts) -> Value {
    let originals: Vec<Value> = f
        .originals
        .iter()
        .map(|o| {
            json!({"message_id": o.message_id, "network_message_id": o.network_message_id,
                   "from": o.from, "subject": o.subject, "dmarc_fails": o.dmarc_fails,
                   "urls": o.urls, "originating_ip": o.originating_ip, "charset": o.charset,
                   "attachments": o.attachments.iter().map(|a| json!({"name": a.name, "sha256": a.sha256})).collect::<Vec<_>>()})
        })
        .collect();
    json!({"immutable_id": f.immutable_id, "internet_message_id": f.internet_message_id,
           "attachment_ids": f.attachment_ids, "received": at(f.received), "reporter": f.reporter,
           "subject": f.subject, "format": f.format.as_str(), "verdict": f.verdict,
           "originals": originals})
}

async fn mailboxes(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<MailboxReq>(&body) {
        Ok(r) => ok(json!({"id": sim(inner).add_mailbox(&r.tenant_id, &r.upn)})),
        Err(e) => bad_request(e),
    }
}

async fn generate_reports(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<ReportsReq>(&body) {
        Ok(r) => {
            let (from, to) = window(r.minutes_back);
            let mut spec = ReportSpec::new(r.n, from, to, r.seed);
            if let Some(f) = r.folder {
                spec.folder = f;
            }
            if let Some(m) = r.mix {
                spec.mix = FormatMix {
                    item: m.item,
                    eml: m.eml,
                    msg: m.msg,
                    inline: m.inline,
                    third_party: m.third_party,
                    multiple: m.multiple,
                };
            }
            let facts = sim(inner).add_reports(&r.tenant_id, &r.mailbox, spec);
            ok(
                json!({"generated": facts.len(), "reports": facts.iter().map(facts_json).collect::<Vec<_>>()}),
            )
        }
        Err(e) => bad_request(e),
    }
}

async fn move_message(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<MessageReq>(&body) {
        Ok(r) => {
            let folder = r.folder.unwrap_or_else(|| "deleteditems".into());
            let moved = sim(inner).move_message(&r.tenant_id, &r.mailbox, &r.immutable_id, &folder);
            ok(json!({"ok": moved}))
        }
        Err(e) => bad_request(e),
    }
}

async fn delete_message(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<MessageReq>(&body) {
        Ok(r) => {
            ok(json!({"ok": sim(inner).delete_message(&r.tenant_id, &r.mailbox, &r.immutable_id)}))
        }
        Err(e) => bad_request(e),
    }
}

async fn expire(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<ExpireReq>(&body) {
        Ok(r) => {
            let mode = match r.mode.as_str() {
                "gone" => DeltaExpiry::Gone,
                "sync_state_not_found" => DeltaExpiry::SyncStateNotFound,
                m => {
                    return bad_request(format!(
                        "unknown mode '{m}': expected gone or sync_state_not_found"
                    ))
                }
            };
            sim(inner).expire_delta_tokens(&r.tenant_id, mode);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn report_policy(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<PolicyReq>(&body) {
        Ok(r) => {
            sim(inner).set_report_policy(&r.tenant_id, r.mailbox.as_deref());
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn access_policy(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<AccessReq>(&body) {
        Ok(r) => {
            sim(inner).set_mail_access_policy(&r.tenant_id, &r.client_id, r.allowed);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn mail_faults(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match parse::<MailFaultsReq>(&body) {
        Ok(r) => {
            let d = MailFaults::default();
            let mut refuse: Vec<(String, ValueRefusal)> = r
                .value_server_error
                .into_iter()
                .map(|a| (a, ValueRefusal::ServerError))
                .collect();
            refuse.extend(
                r.value_access_denied
                    .into_iter()
                    .map(|a| (a, ValueRefusal::AccessDenied)),
            );
            let f = MailFaults {
                throttle_next: r.throttle_next,
                retry_after_secs: r.retry_after_secs.unwrap_or(d.retry_after_secs),
                requests_per_window: r.requests_per_window.unwrap_or(d.requests_per_window),
                window: r.window_secs.map_or(d.window, Duration::from_secs),
                max_concurrent: r.max_concurrent.unwrap_or(d.max_concurrent),
                delay: r.delay_ms.map(Duration::from_millis),
                duplicate_next_rounds: r.duplicate_next_rounds,
                refuse_value: refuse,
                truncated: r.truncated,
                delete_on_fetch: r.delete_on_fetch,
                ..d
            };
            sim(inner).set_mail_faults(&r.tenant_id, f);
            ok(json!({"ok": true}))
        }
        Err(e) => bad_request(e),
    }
}

async fn mail_violations(State(inner): State<Arc<Inner>>) -> Response {
    ok(json!({"mail_throttle_violations": sim(inner).mail_throttle_violations()}))
}

fn at(t: SystemTime) -> String {
    time::iso7(time::ticks(t))
}

async fn received(State(inner): State<Arc<Inner>>) -> Response {
    let s = sim(inner);
    let batches: Vec<Value> = s
        .received()
        .iter()
        .map(|b| {
            json!({"at": at(b.at), "status": b.status, "idempotency_key": b.idempotency_key,
                   "user_agent": b.user_agent, "count": b.event_ids.len(), "event_ids": b.event_ids})
        })
        .collect();
    ok(json!({"delivered_count": s.delivered_count(), "batches": batches}))
}

async fn requests(State(inner): State<Arc<Inner>>) -> Response {
    let list: Vec<Value> = sim(inner)
        .requests()
        .iter()
        .map(|r| {
            json!({"at": at(r.at), "method": r.method, "path": r.path, "query": r.query,
                   "tenant": r.tenant, "has_authorization": r.has_authorization, "status": r.status})
        })
        .collect();
    ok(json!({"requests": list}))
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/_sim/tenants", post(tenants))
        .route("/_sim/apps", post(apps))
        .route("/_sim/alerts", post(insert))
        .route("/_sim/alerts/generate", post(generate))
        .route("/_sim/incidents", post(insert_incident))
        .route("/_sim/incidents/generate", post(generate_incidents))
        .route("/_sim/submissions", post(insert_submission))
        .route("/_sim/submissions/generate", post(generate_submissions))
        .route("/_sim/cloud_apps", post(insert_cloud_app_alert))
        .route("/_sim/cloud_apps/generate", post(generate_cloud_apps))
        .route("/_sim/faults", post(faults))
        .route("/_sim/dropzone", post(dropzone))
        .route("/_sim/received", get(received))
        .route("/_sim/requests", get(requests))
        .route("/_sim/mailboxes", post(mailboxes))
        .route("/_sim/mailboxes/reports/generate", post(generate_reports))
        .route("/_sim/mailboxes/move", post(move_message))
        .route("/_sim/mailboxes/delete", post(delete_message))
        .route("/_sim/mailboxes/expire", post(expire))
        .route("/_sim/mailboxes/report_policy", post(report_policy))
        .route("/_sim/mailboxes/access_policy", post(access_policy))
        .route("/_sim/mailboxes/faults", post(mail_faults))
        .route("/_sim/mailboxes/violations", get(mail_violations))
        .route("/_sim/hunting/faults", post(hunting_faults))
        .route("/_sim/hunting/messages", post(hunting_message))
}
