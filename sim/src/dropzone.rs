//! The recording Dropzone ingestion endpoint: `POST /dropzone/alerts` with
//! `{"alerts": [ …normalized alerts… ]}` (design §7).
//!
//! Every request is recorded with its `Idempotency-Key`, `Authorization` and `User-Agent`
//! headers and the `event_id`s it carried; how it is answered is set by [`DropzoneBehavior`].
//! Only 2xx answers count as delivered. With `keep_bodies = false` the body is parsed through a
//! borrowed struct that reads nothing but `event_id`, which keeps a 200,000-alert benchmark cheap.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{lock, Inner, Simulator};

/// How the Dropzone endpoint answers.
#[derive(Clone, Debug, Default)]
pub enum DropzoneBehavior {
    /// 200 `{"accepted": n}`.
    #[default]
    Accept,
    /// Every request answers `status` (with `Retry-After` if given) until changed.
    FailWith {
        status: u16,
        retry_after: Option<String>,
    },
    /// A request containing any of these event ids answers `status` with a JSON body naming
    /// them (`rejected_event_ids`); others 200.
    RejectEventIds { ids: Vec<String>, status: u16 },
    /// A request containing an alert whose top-level string `field` contains `contains` answers
    /// `status`, naming the event ids of those alerts; others 200.
    RejectWhere {
        field: String,
        contains: String,
        status: u16,
    },
    /// Bodies larger than this many bytes answer 413; others 200.
    MaxBodyBytes(usize),
}

/// One POST the endpoint received, whatever it answered.
#[derive(Clone, Debug)]
pub struct ReceivedBatch {
    pub at: SystemTime,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    /// The status the simulator answered.
    pub status: u16,
    /// The `event_id` of every alert in the body, in body order.
    pub event_ids: Vec<String>,
    /// The alerts as sent; empty when the simulator runs with `keep_bodies = false`.
    pub alerts: Vec<Value>,
}

#[derive(Default)]
pub(crate) struct Sink {
    behavior: DropzoneBehavior,
    batches: Vec<ReceivedBatch>,
    delivered_ids: Vec<String>,
    delivered_count: usize,
}

#[derive(Deserialize)]
struct FullBody {
    alerts: Vec<Value>,
}

/// Reads only the event ids; every other field is skipped without being built.
#[derive(Deserialize)]
struct IdsBody<'a> {
    #[serde(borrow)]
    alerts: Vec<IdOnly<'a>>,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
}

fn event_id(v: &Value) -> String {
    v.get("event_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn status_code(s: u16) -> StatusCode {
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let hdr = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let behavior = lock(&inner.dropzone).behavior.clone();
    let mut batch = ReceivedBatch {
        at: SystemTime::now(),
        idempotency_key: hdr(header::HeaderName::from_static("idempotency-key")),
        authorization: hdr(header::AUTHORIZATION),
        user_agent: hdr(header::USER_AGENT),
        status: 0,
        event_ids: Vec::new(),
        alerts: Vec::new(),
    };
    let needs_bodies =
        inner.keep_bodies || matches!(behavior, DropzoneBehavior::RejectWhere { .. });
    let parsed: Result<(), String> = if needs_bodies {
        serde_json::from_slice::<FullBody>(&body)
            .map_err(|e| e.to_string())
            .map(|b| {
                batch.event_ids = b.alerts.iter().map(event_id).collect();
                batch.alerts = b.alerts;
            })
    } else {
        serde_json::from_slice::<IdsBody<'_>>(&body)
            .map_err(|e| e.to_string())
            .map(|b| {
                batch.event_ids = b
                    .alerts
                    .into_iter()
                    .map(|a| a.event_id.map(Cow::into_owned).unwrap_or_default())
                    .collect();
            })
    };
    let is_json =
        hdr(header::CONTENT_TYPE).is_some_and(|c| c.to_ascii_lowercase().contains("json"));

    let mut retry_after = None;
    let (status, answer) = if !is_json {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"error": "Content-Type must be application/json"}),
        )
    } else if let Err(e) = parsed {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid request body: {e}")}),
        )
    } else {
        match &behavior {
            DropzoneBehavior::Accept => {
                (StatusCode::OK, json!({"accepted": batch.event_ids.len()}))
            }
            DropzoneBehavior::FailWith {
                status,
                retry_after: ra,
            } => {
                retry_after = ra.clone();
                (status_code(*status), json!({"error": "simulated failure"}))
            }
            DropzoneBehavior::RejectEventIds { ids, status } => {
                let bad: HashSet<&str> = ids.iter().map(String::as_str).collect();
                let hit: Vec<&String> = batch
                    .event_ids
                    .iter()
                    .filter(|e| bad.contains(e.as_str()))
                    .collect();
                if hit.is_empty() {
                    (StatusCode::OK, json!({"accepted": batch.event_ids.len()}))
                } else {
                    (
                        status_code(*status),
                        json!({"error": "alerts rejected", "rejected_event_ids": hit}),
                    )
                }
            }
            DropzoneBehavior::RejectWhere {
                field,
                contains,
                status,
            } => {
                let hit: Vec<String> = batch
                    .alerts
                    .iter()
                    .filter(|a| {
                        a.get(field)
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.contains(contains.as_str()))
                    })
                    .map(event_id)
                    .collect();
                if hit.is_empty() {
                    (StatusCode::OK, json!({"accepted": batch.event_ids.len()}))
                } else {
                    (
                        status_code(*status),
                        json!({"error": format!("alerts rejected: {field} contains {contains:?}"), "rejected_event_ids": hit}),
                    )
                }
            }
            DropzoneBehavior::MaxBodyBytes(max) if body.len() > *max => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload too large", "max_bytes": max}),
            ),
            DropzoneBehavior::MaxBodyBytes(_) => {
                (StatusCode::OK, json!({"accepted": batch.event_ids.len()}))
            }
        }
    };
    batch.status = status.as_u16();
    if !inner.keep_bodies {
        batch.alerts = Vec::new();
    }
    {
        let mut sink = lock(&inner.dropzone);
        if status.is_success() {
            sink.delivered_count += batch.event_ids.len();
            sink.delivered_ids.extend(batch.event_ids.iter().cloned());
        }
        sink.batches.push(batch);
    }
    let mut r = (status, Json(answer)).into_response();
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    // Batches are capped by the sender (max_batch_bytes); the sim must not refuse them first.
    Router::new().route(
        "/dropzone/alerts",
        post(receive).layer(DefaultBodyLimit::max(256 << 20)),
    )
}

impl Simulator {
    /// Changes how the Dropzone endpoint answers from the next request on.
    pub fn set_dropzone(&self, b: DropzoneBehavior) {
        lock(&self.inner.dropzone).behavior = b;
    }

    /// Every POST to the Dropzone endpoint, rejected ones included, in arrival order.
    pub fn received(&self) -> Vec<ReceivedBatch> {
        lock(&self.inner.dropzone).batches.clone()
    }

    /// Event ids of 2xx-answered requests in arrival order, duplicates included.
    pub fn delivered_event_ids(&self) -> Vec<String> {
        lock(&self.inner.dropzone).delivered_ids.clone()
    }

    /// How many alerts 2xx-answered requests carried.
    pub fn delivered_count(&self) -> usize {
        lock(&self.inner.dropzone).delivered_count
    }
}
