//! A small HTTP control API under `/_sim/` so the `m365-sim` binary can be driven by tools that
//! are not Rust tests: register tenants and apps, generate or insert alerts, incidents, threat
//! submissions and Cloud Apps alerts, switch faults and the Dropzone behaviour, and read what
//! was received. Control requests are not recorded in [`Simulator::requests`].

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

use crate::{time, DropzoneBehavior, Faults, Inner, Simulator};

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
}
