//! m365-sim: a faithful loopback stand-in for the Microsoft side of m365-ingest (the Entra ID
//! token endpoint, Microsoft Graph security alerts_v2, incidents and beta threat submissions, the
//! Exchange Online reporting mailbox through Graph mail, and the Defender for Cloud Apps alerts
//! API) and for the Dropzone ingestion endpoint, for
//! integration tests, benchmarks and the `demo` command.
//!
//! It follows `reference/microsoft/API.md`: AADSTS token errors, roles per app, bearer checks
//! (401/403), `$filter` on the documented properties only, `$top` clamped at 1000, offset paging
//! with `@odata.nextLink`, newest-first order, a `Date` header, and faults a test switches on
//! per tenant (429 with `Retry-After`, 503, truncated bodies, items updated mid-listing).
//!
//! Layout, a file per concept:
//! - `lib.rs`: [`Simulator`] start/stop, the router, request recording.
//! - `token.rs`: tenants, app registrations, the token endpoint, OpenID configuration.
//! - `graph.rs`: what every Graph resource shares (auth, fault gate, headers, errors, paging).
//! - `odata.rs`: the `$filter` parser and evaluator.
//! - `alerts.rs`: alerts_v2 (per-tenant store and endpoints).
//! - `incidents.rs`: incidents, `$expand=alerts` (joined on the alerts' `incidentId`).
//! - `submissions.rs`: the three beta threat-submission lists, `$skiptoken` paging.
//! - `cloud_apps.rs`: Defender for Cloud Apps alerts (JSON-body filters, 30 requests/min), and
//!   detections seen through both MDA and alerts_v2.
//! - `mailbox.rs`: reporting mailboxes through Graph mail (delta sync states, messages,
//!   attachments, `$value`), Mail.Read roles, access policies, Outlook throttling per app and
//!   mailbox, mail faults, and the beta `emailThreatSubmissionPolicies`.
//! - `hunting.rs`: advanced hunting (`runHuntingQuery`) over EmailEvents and UrlClickEvents of
//!   the messages it knows, 45 calls a minute, the CPU quota, the template's query shape only.
//! - `mail_gen.rs`: user-reported messages and their originals, deterministic from seeds, and the
//!   facts a test checks ([`ReportFacts`]).
//! - `mime.rs`: MIME, quoted-printable, base64, RFC 2047, charsets, Outlook `.msg`, stored zip.
//! - `store.rs`: the time-ordered JSON store incidents, submissions and Cloud Apps share.
//! - `generator.rs`: realistic alerts rendered lazily from seeds; the demo stream.
//! - `faults.rs`: [`Faults`] and their per-tenant state.
//! - `dropzone.rs`: the recording ingestion endpoint.
//! - `control.rs`: the `/_sim/` HTTP control API.
//! - `time.rs`: 100-ns timestamps.
//! - `tls.rs`: HTTPS with a self-signed certificate made at start (`SimConfig::tls`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod alerts;
mod cloud_apps;
mod control;
mod dropzone;
mod faults;
mod generator;
mod graph;
mod hunting;
mod incidents;
mod mail_gen;
mod mailbox;
mod mime;
mod odata;
mod store;
mod submissions;
mod time;
mod tls;
mod token;

pub use dropzone::{DropzoneBehavior, ReceivedBatch};
pub use faults::Faults;
pub use hunting::{
    parse_query as parse_hunting_query, template_query as hunting_query, tokenize as tokenize_kql,
    HuntingClick, HuntingFaults, HuntingMessage, HuntingRecipient, ParsedQuery, Token as KqlToken,
    CPU_QUOTA_MESSAGE, HUNTING_PER_MINUTE, HUNTING_ROLE, MAX_QUERY_CHARS,
};
pub use mail_gen::{
    AttachmentFacts, FormatMix, OriginalFacts, Report, ReportAttachment, ReportFacts, ReportSpec,
    WrapperFormat,
};
pub use mailbox::{DeltaExpiry, MailFaults, ValueRefusal};

/// How to start a [`Simulator`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where to listen; default `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// Keep Dropzone request bodies (default true). False records only event ids and counts,
    /// for the 200k-alert benchmark.
    pub keep_bodies: bool,
    /// The most alerts_v2 items one page holds (default 1000, Graph's own clamp).
    pub page_cap: usize,
    /// `expires_in` of issued tokens (default 3599 s, as Entra's samples show).
    pub token_lifetime: Duration,
    /// Serve HTTPS with a self-signed certificate made at start (default false: plain HTTP).
    /// Every URL the simulator hands out or advertises (OpenID configuration, `@odata.nextLink`,
    /// portal links) then starts with `https://`; the certificate is
    /// [`Simulator::tls_certificate_pem`].
    pub tls: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            keep_bodies: true,
            page_cap: 1000,
            token_lifetime: Duration::from_secs(3599),
            tls: false,
        }
    }
}

/// One request the simulator served (token, Graph, Cloud Apps or Dropzone; not the control API).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// When it arrived.
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, empty if none.
    pub query: String,
    /// The tenant: from the token URL, or from the bearer token of a Graph or Cloud Apps request.
    pub tenant: Option<String>,
    pub has_authorization: bool,
    /// The status answered (0 while the answer is still pending).
    pub status: u16,
}

/// The running simulator. Cheap to clone; all clones control the same instance.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// `http://` or `https://` and the address: the one root of every URL the simulator gives
    /// out, so the scheme follows the mode everywhere.
    pub(crate) base_url: String,
    addr: SocketAddr,
    /// The self-signed certificate (PEM) when serving HTTPS.
    tls_cert_pem: Option<String>,
    pub(crate) page_cap: usize,
    pub(crate) keep_bodies: bool,
    pub(crate) directory: Mutex<token::Directory>,
    pub(crate) alerts: Mutex<HashMap<String, alerts::TenantAlerts>>,
    /// Incidents per tenant, newest `lastUpdateDateTime` first.
    pub(crate) incidents: Mutex<HashMap<String, store::JsonStore>>,
    /// Threat submissions per (tenant, list), newest `createdDateTime` first.
    pub(crate) submissions: Mutex<HashMap<(String, &'static str), store::JsonStore>>,
    /// Cloud Apps alerts per tenant, keyed by `timestamp` (epoch ms).
    pub(crate) cloud_apps: Mutex<HashMap<String, store::JsonStore>>,
    /// Cloud Apps request windows per tenant, and the allowance per minute.
    pub(crate) mda_throttle: Mutex<cloud_apps::Throttles>,
    pub(crate) mda_per_minute: AtomicUsize,
    /// Graph `/security` request windows per (tenant, app), and the allowance per minute: Graph
    /// budgets the security API per app and tenant (API.md §2).
    pub(crate) graph_throttle: Mutex<HashMap<(String, String), cloud_apps::Throttle>>,
    pub(crate) graph_per_minute: AtomicUsize,
    /// `/security` requests answered 429 because their app and tenant were over the budget.
    pub(crate) graph_over_budget: AtomicUsize,
    pub(crate) faults: Mutex<HashMap<String, faults::FaultState>>,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) dropzone: Mutex<dropzone::Sink>,
    /// Seeds and ids of generated alerts: seeded, so runs are reproducible.
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) unauthorized: AtomicUsize,
    pub(crate) throttle_violations: AtomicUsize,
    /// Reporting mailboxes per tenant (messages, sync states, throttles, faults).
    pub(crate) mail: Mutex<mailbox::MailState>,
    /// Mail requests over Outlook's per-app-per-mailbox limits.
    pub(crate) mail_violations: AtomicUsize,
    /// Advanced hunting per tenant (messages, call windows, faults, queries seen).
    pub(crate) hunting: Mutex<hunting::HuntingState>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// The runtime the simulator was started on, so background tasks can be spawned from
    /// synchronous code outside it.
    pub(crate) runtime: tokio::runtime::Handle,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// Locks a mutex, recovering from poisoning: every critical section leaves its data consistent,
/// and the simulator must not panic because some earlier holder did.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tenant ids are GUIDs, which Entra compares case-insensitively.
pub(crate) fn tenant_key(t: &str) -> String {
    t.to_ascii_lowercase()
}

/// A random GUID-shaped id (request ids, trace ids).
pub(crate) fn new_guid() -> String {
    let mut rng = fastrand::Rng::new();
    generator::guid(&mut rng)
}

/// Decodes `application/x-www-form-urlencoded` text (form bodies and query strings):
/// `+` is a space, `%XX` a byte; invalid escapes are kept literally.
pub(crate) fn decode_pairs(s: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// Put into a response's extensions by handlers that know the tenant, for the request log.
#[derive(Clone)]
pub(crate) struct TenantTag(pub String);

async fn record(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let entry = RecordedRequest {
        at: SystemTime::now(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        tenant: None,
        has_authorization: req.headers().contains_key(header::AUTHORIZATION),
        status: 0,
    };
    // Recorded on arrival so the log is in arrival order; the status is filled in after.
    let index = {
        let mut log = lock(&inner.requests);
        log.push(entry);
        log.len() - 1
    };
    let resp = next.run(req).await;
    let tenant = resp.extensions().get::<TenantTag>().map(|t| t.0.clone());
    if let Some(e) = lock(&inner.requests).get_mut(index) {
        e.status = resp.status().as_u16();
        e.tenant = tenant;
    }
    resp
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "NotFound", "message": "The simulator has no such endpoint."}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .merge(token::routes())
        .merge(alerts::routes())
        .merge(incidents::routes())
        .merge(submissions::routes())
        .merge(cloud_apps::routes())
        .merge(mailbox::routes())
        .merge(hunting::routes())
        .merge(dropzone::routes())
        .layer(middleware::from_fn_with_state(inner.clone(), record))
        .merge(control::routes())
        .fallback(not_found)
        .with_state(inner)
}

/// Serves `app` on `listener` (plain TCP or [`tls::TlsListener`]) until `stop`, then drains.
async fn serve<L>(listener: L, app: Router, stop: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "simulator server stopped");
    }
}

impl Simulator {
    /// Binds, starts serving in a background task and returns once listening.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            // Listening on all interfaces; loopback is still the address to hand out.
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let identity = if cfg.tls {
            Some(tls::make_identity(cfg.bind.ip())?)
        } else {
            None
        };
        let scheme = if identity.is_some() { "https" } else { "http" };
        let inner = Arc::new(Inner {
            base_url: format!("{scheme}://{addr}"),
            addr,
            tls_cert_pem: identity.as_ref().map(|i| i.cert_pem.clone()),
            page_cap: cfg.page_cap,
            keep_bodies: cfg.keep_bodies,
            directory: Mutex::new(token::Directory::new(cfg.token_lifetime)),
            alerts: Mutex::default(),
            incidents: Mutex::default(),
            submissions: Mutex::default(),
            cloud_apps: Mutex::default(),
            mda_throttle: Mutex::default(),
            mda_per_minute: AtomicUsize::new(cloud_apps::DEFAULT_PER_MINUTE),
            graph_throttle: Mutex::default(),
            graph_per_minute: AtomicUsize::new(graph::DEFAULT_SECURITY_PER_MINUTE),
            graph_over_budget: AtomicUsize::new(0),
            faults: Mutex::default(),
            requests: Mutex::default(),
            dropzone: Mutex::default(),
            rng: Mutex::new(fastrand::Rng::with_seed(0x6d33_3635_7369_6d00)),
            unauthorized: AtomicUsize::new(0),
            throttle_violations: AtomicUsize::new(0),
            mail: Mutex::default(),
            mail_violations: AtomicUsize::new(0),
            hunting: Mutex::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            server: Mutex::new(None),
        });
        let app = router(inner.clone());
        let stop = inner.stop.clone();
        let handle = match identity {
            None => tokio::spawn(serve(listener, app, stop)),
            Some(identity) => {
                let listener = tls::TlsListener::new(listener, &identity, stop.clone())?;
                tokio::spawn(serve(listener, app, stop))
            }
        };
        *lock(&inner.server) = Some(handle);
        Ok(Simulator { inner })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` when serving TLS.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The self-signed certificate (PEM) when started with [`SimConfig::tls`]: what a client
    /// adds to its trusted roots. `None` for plain HTTP.
    pub fn tls_certificate_pem(&self) -> Option<String> {
        self.inner.tls_cert_pem.clone()
    }

    /// The login host: the token endpoint is `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub fn login_url(&self) -> String {
        self.base_url()
    }

    /// The Graph host: alerts are at `{graph_url}/v1.0/security/alerts_v2`, incidents at
    /// `{graph_url}/v1.0/security/incidents`, submissions at
    /// `{graph_url}/beta/security/threatSubmission/{emailThreats|urlThreats|fileThreats}`,
    /// mailboxes at `{graph_url}/v1.0/users/{upn|id}/…`.
    pub fn graph_url(&self) -> String {
        format!("{}/graph", self.inner.base_url)
    }

    /// The Dropzone ingestion endpoint.
    pub fn dropzone_url(&self) -> String {
        format!("{}/dropzone/alerts", self.inner.base_url)
    }

    /// Stops serving: background streams end, open requests get up to 5 s to finish, then
    /// the server task is aborted.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let handle = lock(&self.inner.server).take();
        if let Some(h) = handle {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .is_err()
            {
                tracing::warn!("simulator did not drain within 5 s; aborting it");
                abort.abort();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
    }

    /// Every request served so far (token, Graph, Cloud Apps, Dropzone), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p = decode_pairs("a=1+2&b=%24filter%3D&c&d=%zz&e=%4");
        let want = [
            ("a", "1 2"),
            ("b", "$filter="),
            ("c", ""),
            ("d", "%zz"),
            ("e", "%4"),
        ];
        assert_eq!(p.len(), want.len());
        for ((k, v), (wk, wv)) in p.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
    }
}
