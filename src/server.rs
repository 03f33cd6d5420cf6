//! The on-call's view: `/healthz` (the process serves), `/readyz` (store answers, sources commit,
//! destinations deliver; 503 with the failing checks otherwise) and `/status` (everything an
//! operator needs to see why and how far behind). Never shows a secret or a token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::auth::TokenProvider;
use crate::config::ReadyzRequires;
use crate::forward::DestinationStatus;
use crate::lease::LeaseGate;
use crate::normalize::SourceKind;
use crate::sources::SourceStatus;
use crate::store::Store;
use crate::AppStore;

/// One tenant's moving parts, as the server sees them.
pub struct TenantHealth {
    pub name: String,
    pub tenant_id: String,
    pub destination: String,
    pub sources: Vec<(SourceKind, Arc<SourceStatus>)>,
    pub tokens: Vec<Arc<TokenProvider>>,
    /// The tenant's lease: a standby replica does not poll it and is not judged by its sources.
    pub gate: Arc<LeaseGate>,
}

pub struct Health {
    pub store: Arc<AppStore>,
    pub tenants: Vec<TenantHealth>,
    pub destinations: Vec<(String, Arc<DestinationStatus>, Arc<LeaseGate>)>,
    pub readyz_requires: ReadyzRequires,
    pub started: tokio::time::Instant,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(health)
}

impl Health {
    /// The failing checks, empty when ready.
    pub async fn readiness(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Err(e) = self.store.ping().await {
            failures.push(format!("store: {e}"));
            return failures;
        }
        let mut healthy_tenants = 0;
        let mut tenant_failures = Vec::new();
        for t in &self.tenants {
            let mut ok = true;
            // A standby is ready when its store answers: another replica runs this tenant.
            let standby = !t.gate.held();
            for (kind, s) in t.sources.iter().filter(|_| !standby) {
                if let Err(e) = s.ready() {
                    ok = false;
                    tenant_failures.push(format!(
                        "tenant {} source {}: {e}",
                        t.name,
                        kind.as_str()
                    ));
                }
            }
            if let Some((_, d, _)) = self
                .destinations
                .iter()
                .find(|(n, _, g)| *n == t.destination && g.held())
            {
                if let Err(e) = d.ready() {
                    ok = false;
                    tenant_failures.push(format!("tenant {}: {e}", t.name));
                }
            }
            if ok {
                healthy_tenants += 1;
            }
        }
        let ready = match self.readyz_requires {
            ReadyzRequires::All => tenant_failures.is_empty(),
            ReadyzRequires::Any => healthy_tenants > 0 || self.tenants.is_empty(),
        };
        if !ready {
            failures.extend(tenant_failures);
        }
        failures
    }

    pub async fn status_json(&self) -> Value {
        let mut tenants = Map::new();
        for t in &self.tenants {
            let mut sources = Map::new();
            for (kind, s) in &t.sources {
                sources.insert(kind.as_str().into(), json!(s.snapshot()));
            }
            let queue = match self.store.queue_status(&t.name).await {
                Ok(q) => json!(q),
                Err(e) => json!({"error": e.to_string()}),
            };
            let tokens: Vec<Value> = t
                .tokens
                .iter()
                .map(|p| json!({"scope": p.scope(), "refreshes": p.refresh_count()}))
                .collect();
            tenants.insert(
                t.name.clone(),
                json!({
                    "tenant_id": t.tenant_id,
                    "destination": t.destination,
                    "sources": sources,
                    "queue": queue,
                    "tokens": tokens,
                    "lease": t.gate.describe(),
                }),
            );
        }
        let destinations: Vec<Value> = self
            .destinations
            .iter()
            .map(|(_, d, g)| {
                let mut v = json!(d.snapshot());
                v["lease"] = json!(g.describe());
                v
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.readiness().await.is_empty(),
            "tenants": tenants,
            "destinations": destinations,
        })
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    let failures = h.readiness().await;
    if failures.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "failing": failures})),
        )
            .into_response()
    }
}

async fn status(State(h): State<Arc<Health>>) -> Response {
    Json(h.status_json().await).into_response()
}
