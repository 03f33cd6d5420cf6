//! The on-call's view: `/healthz` (the process serves), `/readyz` (store answers, sources commit,
//! destinations deliver; 503 with the failing checks otherwise), `/status` (everything an
//! operator needs to see why and how far behind) and `/metrics` (Prometheus text). With
//! `server.status_token` set, `/status` and `/metrics` need `Authorization: Bearer <token>`;
//! the probes stay open for orchestrators. Never shows a secret or a token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    /// When the tenant's credential stops working, when known.
    pub credential_expires: Option<CredentialExpiry>,
    /// Campaign context, when `context.hunting` is on: the last lookup's outcome and its fix.
    pub context: Option<Arc<crate::hunting::enrich::ContextStatus>>,
}

/// Which credential a tenant signs in with, for expiry messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `client_secret_expires`, midnight UTC of that day.
    Secret,
    /// The certificate's own `notAfter`.
    Certificate,
}

#[derive(Debug, Clone, Copy)]
pub struct CredentialExpiry {
    pub kind: CredentialKind,
    /// Unix seconds.
    pub expires: i64,
}

impl CredentialExpiry {
    /// When the tenant's credential expires: the certificate's own date, or
    /// `client_secret_expires` (validated as YYYY-MM-DD when the settings were read).
    pub fn of_tenant(t: &crate::config::TenantConfig) -> Option<CredentialExpiry> {
        if let Some(cert) = &t.client_certificate {
            return Some(CredentialExpiry {
                kind: CredentialKind::Certificate,
                expires: cert.not_after(),
            });
        }
        let date = t.client_secret_expires.as_deref()?;
        let ticks = crate::time::parse_ticks(&format!("{date}T00:00:00Z"))?;
        Some(CredentialExpiry {
            kind: CredentialKind::Secret,
            expires: ticks / crate::time::TICKS_PER_SECOND,
        })
    }

    /// `/status`'s view: what it is, when it expires, how many days are left.
    fn describe(self, now: i64) -> Value {
        json!({
            "kind": match self.kind { CredentialKind::Secret => "client_secret", CredentialKind::Certificate => "client_certificate" },
            "expires": crate::time::format_seconds(self.expires),
            "days_left": days_left(self.expires, now),
        })
    }
}

/// Whole days from `now` until `expires` (both Unix seconds); negative once it has passed.
pub fn days_left(expires: i64, now: i64) -> i64 {
    (expires - now).div_euclid(86_400)
}

/// What to say about a credential expiring at `expires`, if anything (design §3: warn from
/// 30 days ahead; past it, the tenant is not ready).
pub fn expiry_warning(tenant: &str, credential: CredentialExpiry, now: i64) -> Option<String> {
    let what = match credential.kind {
        CredentialKind::Secret => "client secret",
        CredentialKind::Certificate => "client certificate",
    };
    let fix = expiry_fix(tenant, credential.kind);
    match days_left(credential.expires, now) {
        d if d < 0 => Some(format!("tenant {tenant}: the {what} has expired: {fix}")),
        d if d <= 30 => Some(format!(
            "tenant {tenant}: the {what} expires in {d} days: {fix}"
        )),
        _ => None,
    }
}

/// How to replace an expiring credential, in the Entra admin center's words.
pub fn expiry_fix(tenant: &str, kind: CredentialKind) -> String {
    match kind {
        CredentialKind::Secret => format!("create a new one (Entra admin center → App registrations → the app → Certificates & secrets → New client secret) and update tenants.{tenant}.client_secret and client_secret_expires"),
        CredentialKind::Certificate => format!("create a new certificate, upload it (Entra admin center → App registrations → the app → Certificates & secrets → Certificates → Upload certificate) and replace the file named by tenants.{tenant}.client_certificate_file"),
    }
}

pub struct Health {
    pub store: Arc<AppStore>,
    pub tenants: Vec<TenantHealth>,
    pub destinations: Vec<(String, Arc<DestinationStatus>, Arc<LeaseGate>)>,
    pub readyz_requires: ReadyzRequires,
    /// `server.status_token`: required by `/status` and `/metrics` when set.
    pub status_token: Option<SecretString>,
    pub started: tokio::time::Instant,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(health)
}

impl Health {
    /// True when no token is configured or the request carries it as a bearer token.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.status_token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let Some(presented) = presented else {
            return false;
        };
        // Digests are compared, in constant time, so neither the token's bytes nor its length
        // can be learnt from how long a refusal takes.
        let want = Sha256::digest(token.expose_secret().trim().as_bytes());
        let got = Sha256::digest(presented.as_bytes());
        want[..].ct_eq(&got[..]).into()
    }

    /// Sets the gauges that mirror the store, the sources and the calendar, just before a scrape.
    async fn refresh_gauges(&self) {
        use crate::metrics::{
            CERTIFICATE_DAYS_LEFT, COVERAGE_LAG, OUTBOX_OLDEST_AGE, OUTBOX_PENDING,
            SECRET_DAYS_LEFT,
        };
        let now = crate::store::now_ms() / 1000;
        for t in &self.tenants {
            let tenant = t.name.clone();
            for (kind, s) in &t.sources {
                if let Some(lag) = s.snapshot().lag_s {
                    ::metrics::gauge!(COVERAGE_LAG, "tenant" => tenant.clone(), "source" => kind.as_str())
                        .set(lag as f64);
                }
            }
            match self.store.queue_depth(&t.name).await {
                Ok(q) => {
                    ::metrics::gauge!(OUTBOX_PENDING, "tenant" => tenant.clone())
                        .set(q.pending as f64);
                    ::metrics::gauge!(OUTBOX_OLDEST_AGE, "tenant" => tenant.clone())
                        .set(q.oldest_pending_age_s.unwrap_or(0).max(0) as f64);
                }
                // The gauges keep their last value; `/status` and `/readyz` name the store error.
                Err(e) => {
                    tracing::debug!(tenant = %t.name, error = %e, "metrics: queue status unavailable")
                }
            }
            if let Some(c) = t.credential_expires {
                let name = match c.kind {
                    CredentialKind::Secret => SECRET_DAYS_LEFT,
                    CredentialKind::Certificate => CERTIFICATE_DAYS_LEFT,
                };
                ::metrics::gauge!(name, "tenant" => tenant).set(days_left(c.expires, now) as f64);
            }
        }
    }

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
            if let Some(c) = t.credential_expires {
                let now = crate::time::unix_seconds_now();
                if days_left(c.expires, now) < 0 {
                    ok = false;
                    tenant_failures.extend(expiry_warning(&t.name, c, now));
                }
            }
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
                    "context": t.context.as_ref().map(|c| c.snapshot()),
                    "credential": t.credential_expires.map(|c| c.describe(crate::time::unix_seconds_now())),
                    "client_secret_days_left": t.credential_expires.filter(|c| c.kind == CredentialKind::Secret).map(|c| days_left(c.expires, crate::time::unix_seconds_now())),
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
            "store": self.store.backend(),
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

async fn status(State(h): State<Arc<Health>>, headers: HeaderMap) -> Response {
    if !h.authorized(&headers) {
        return unauthorized();
    }
    Json(h.status_json().await).into_response()
}

async fn metrics_text(State(h): State<Arc<Health>>, headers: HeaderMap) -> Response {
    if !h.authorized(&headers) {
        return unauthorized();
    }
    h.refresh_gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::handle().render(),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "unauthorized: send Authorization: Bearer <server.status_token>"})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_expiry_is_quiet_until_30_days_and_says_the_fix() {
        let now = 1_800_000_000;
        let day = 86_400;
        let secret = |expires| CredentialExpiry {
            kind: CredentialKind::Secret,
            expires,
        };
        assert_eq!(expiry_warning("c", secret(now + 31 * day + 10), now), None);
        let soon = expiry_warning("c", secret(now + 10 * day + 10), now).unwrap();
        assert!(soon.contains("expires in 10 days"), "{soon}");
        assert!(soon.contains("tenants.c.client_secret"), "{soon}");
        let past = expiry_warning("c", secret(now - 10), now).unwrap();
        assert!(past.contains("has expired"), "{past}");
        assert_eq!(days_left(now - 10, now), -1);
        assert_eq!(days_left(now + day, now), 1);
        let cert = CredentialExpiry {
            kind: CredentialKind::Certificate,
            expires: now + 3 * day + 1,
        };
        let soon = expiry_warning("c", cert, now).unwrap();
        assert!(
            soon.contains("client certificate expires in 3 days"),
            "{soon}"
        );
        assert!(
            soon.contains("Upload certificate")
                && soon.contains("tenants.c.client_certificate_file"),
            "{soon}"
        );
    }
}
