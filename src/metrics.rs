//! Prometheus metrics for `/metrics` (design §8): the names, their help text and buckets, and the
//! one process-wide recorder every `App` renders from. Counters and histograms are recorded where
//! things happen (pollers, the Microsoft client, token providers, forwarders); gauges that mirror
//! the store (outbox depth and age) or the calendar (secret expiry) are set at scrape time by the
//! server, so they are never stale.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::store::IngestCounts;

pub const POLLS: &str = "m365_ingest_polls_total";
pub const ITEMS: &str = "m365_ingest_items_total";
pub const LATE_ARRIVALS: &str = "m365_ingest_late_arrivals_total";
pub const RESYNCS: &str = "m365_ingest_resyncs_total";
pub const COVERAGE_LAG: &str = "m365_ingest_coverage_lag_seconds";
pub const MS_REQUESTS: &str = "m365_ingest_microsoft_requests_total";
pub const MS_THROTTLED: &str = "m365_ingest_microsoft_throttled_total";
pub const TOKEN_REFRESHES: &str = "m365_ingest_token_refreshes_total";
pub const OUTBOX_PENDING: &str = "m365_ingest_outbox_pending";
pub const OUTBOX_OLDEST_AGE: &str = "m365_ingest_outbox_oldest_pending_age_seconds";
pub const DELIVERIES: &str = "m365_ingest_deliveries_total";
pub const REDELIVERIES: &str = "m365_ingest_redeliveries_total";
pub const DELIVERY_SECONDS: &str = "m365_ingest_delivery_duration_seconds";
pub const DEAD_LETTERS: &str = "m365_ingest_dead_letters_total";
pub const SECRET_DAYS_LEFT: &str = "m365_ingest_client_secret_days_left";
pub const CERTIFICATE_DAYS_LEFT: &str = "m365_ingest_client_certificate_days_left";
pub const CONTEXT_ALERTS: &str = "m365_ingest_context_alerts_total";
pub const CONTEXT_FAILURES: &str = "m365_ingest_context_lookup_failures_total";

const CONTEXT_OUTCOMES: [&str; 2] = ["attached", "revision"];
const CONTEXT_FAILURE_KINDS: [&str; 5] =
    ["not_granted", "throttled", "cpu_quota", "timeout", "other"];

/// One batch POST: tens of milliseconds when healthy, up to `forward.timeout` (30 s by default)
/// and at most a lease's send window when not.
const DELIVERY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

const POLL_OUTCOMES: [&str; 3] = ["success", "failure", "paused"];
const DELIVERY_OUTCOMES: [&str; 5] = ["delivered", "retry", "split", "dead", "paused"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. A process has one global recorder while tests
/// run several daemons in one process, so every `App` shares it (and their series mix).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(install)
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELIVERY_SECONDS.into()), DELIVERY_BUCKETS)
        // Only an empty bucket list is refused; a summary is the exporter's fallback.
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "another metrics recorder is installed: /metrics stays empty");
    }
    describe();
    handle
}

fn describe() {
    describe_counter!(
        POLLS,
        "Polls by tenant, source and outcome (success, failure, paused)"
    );
    describe_counter!(
        ITEMS,
        "Items read from Microsoft by result (new, updated, unchanged, stale, quarantined)"
    );
    describe_counter!(
        LATE_ARRIVALS,
        "New versions found by reconciliation that the live scan had missed"
    );
    describe_counter!(
        RESYNCS,
        "Delta syncs started again because Microsoft expired the delta token (reporting mailbox)"
    );
    describe_gauge!(
        COVERAGE_LAG,
        Unit::Seconds,
        "Microsoft's clock minus the source's coverage point, after its last poll"
    );
    describe_counter!(
        MS_REQUESTS,
        "Requests to Microsoft by api (graph, cloud_apps) and HTTP status (`error`: no answer)"
    );
    describe_counter!(
        MS_THROTTLED,
        "Microsoft answers 429 or 503 with a Retry-After (every request of the api waits)"
    );
    describe_counter!(
        TOKEN_REFRESHES,
        "Entra ID token requests by api and outcome (ok, error)"
    );
    describe_gauge!(OUTBOX_PENDING, "Versions committed and not yet delivered");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest undelivered version (0 when none)"
    );
    describe_counter!(
        DELIVERIES,
        "Batch POSTs to a destination by outcome (delivered, retry, split, dead, paused)"
    );
    describe_counter!(
        REDELIVERIES,
        "Batches sent again after an earlier attempt (same Idempotency-Key)"
    );
    describe_histogram!(
        DELIVERY_SECONDS,
        Unit::Seconds,
        "Duration of one batch POST"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Alerts dead-lettered (see `dead-letters list`)"
    );
    describe_gauge!(
        SECRET_DAYS_LEFT,
        "Days until the client secret expires (tenants.<name>.client_secret_expires)"
    );
    describe_counter!(
        CONTEXT_ALERTS,
        "Alerts given campaign context, by outcome (attached: sent with it; revision: a context revision followed)"
    );
    describe_counter!(
        CONTEXT_FAILURES,
        "Advanced-hunting lookups that gave no context, by kind (not_granted, throttled, cpu_quota, timeout, other)"
    );
    describe_gauge!(
        CERTIFICATE_DAYS_LEFT,
        "Days until the client certificate expires (tenants.<name>.client_certificate_file)"
    );
}

/// Creates a tenant's campaign-context series at zero.
pub fn register_context(tenant: &str) {
    for outcome in CONTEXT_OUTCOMES {
        counter!(CONTEXT_ALERTS, "tenant" => tenant.to_string(), "outcome" => outcome).increment(0);
    }
    for kind in CONTEXT_FAILURE_KINDS {
        counter!(CONTEXT_FAILURES, "tenant" => tenant.to_string(), "kind" => kind).increment(0);
    }
}

pub fn context_alerts(tenant: &str, outcome: &'static str, n: u64) {
    counter!(CONTEXT_ALERTS, "tenant" => tenant.to_string(), "outcome" => outcome).increment(n);
}

pub fn context_failure(tenant: &str, kind: &'static str) {
    counter!(CONTEXT_FAILURES, "tenant" => tenant.to_string(), "kind" => kind).increment(1);
}

/// Creates a source's series at zero, so rates and absence alerts work before the first event.
pub fn register_source(tenant: &str, source: &'static str) {
    for outcome in POLL_OUTCOMES {
        counter!(POLLS, "tenant" => tenant.to_string(), "source" => source, "outcome" => outcome)
            .increment(0);
    }
    record_items(tenant, source, IngestCounts::default());
    counter!(LATE_ARRIVALS, "tenant" => tenant.to_string(), "source" => source).increment(0);
    if source == "phishing_reports" {
        counter!(RESYNCS, "tenant" => tenant.to_string(), "source" => source).increment(0);
    }
}

/// A delta sync started again after Microsoft expired its token.
pub fn resync(tenant: &str, source: &'static str) {
    counter!(RESYNCS, "tenant" => tenant.to_string(), "source" => source).increment(1);
}

/// Creates an API family's series at zero (see `register_source`).
pub fn register_api(tenant: &str, api: &'static str) {
    counter!(MS_THROTTLED, "tenant" => tenant.to_string(), "api" => api).increment(0);
    for outcome in ["ok", "error"] {
        counter!(TOKEN_REFRESHES, "tenant" => tenant.to_string(), "api" => api, "outcome" => outcome)
            .increment(0);
    }
}

/// Creates a (destination, tenant)'s delivery series at zero (see `register_source`).
pub fn register_destination(destination: &str, tenant: &str) {
    for outcome in DELIVERY_OUTCOMES {
        delivery(destination, tenant, outcome, 0);
    }
    counter!(REDELIVERIES, "destination" => destination.to_string(), "tenant" => tenant.to_string())
        .increment(0);
    counter!(DEAD_LETTERS, "destination" => destination.to_string(), "tenant" => tenant.to_string())
        .increment(0);
    // Registering the histogram makes it render (with zero counts) before the first send.
    let _ = histogram!(DELIVERY_SECONDS, "destination" => destination.to_string(), "tenant" => tenant.to_string());
}

pub fn poll(tenant: &str, source: &'static str, outcome: &'static str) {
    counter!(POLLS, "tenant" => tenant.to_string(), "source" => source, "outcome" => outcome)
        .increment(1);
}

pub fn record_items(tenant: &str, source: &'static str, c: IngestCounts) {
    for (result, n) in [
        ("new", c.new),
        ("updated", c.updated),
        ("unchanged", c.unchanged),
        ("stale", c.stale),
        ("quarantined", c.quarantined),
    ] {
        counter!(ITEMS, "tenant" => tenant.to_string(), "source" => source, "result" => result)
            .increment(n);
    }
}

pub fn late_arrivals(tenant: &str, source: &'static str, n: u64) {
    counter!(LATE_ARRIVALS, "tenant" => tenant.to_string(), "source" => source).increment(n);
}

/// One answer (or `error` for none) from Microsoft.
pub fn microsoft_request(tenant: &str, api: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!(MS_REQUESTS, "tenant" => tenant.to_string(), "api" => api, "status" => status)
        .increment(1);
}

pub fn throttled(tenant: &str, api: &'static str) {
    counter!(MS_THROTTLED, "tenant" => tenant.to_string(), "api" => api).increment(1);
}

pub fn token_refresh(tenant: &str, api: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(TOKEN_REFRESHES, "tenant" => tenant.to_string(), "api" => api, "outcome" => outcome)
        .increment(1);
}

pub fn delivery(destination: &str, tenant: &str, outcome: &'static str, n: u64) {
    counter!(DELIVERIES, "destination" => destination.to_string(), "tenant" => tenant.to_string(), "outcome" => outcome)
        .increment(n);
}

pub fn redelivery(destination: &str, tenant: &str) {
    counter!(REDELIVERIES, "destination" => destination.to_string(), "tenant" => tenant.to_string())
        .increment(1);
}

pub fn delivery_duration(destination: &str, tenant: &str, took: Duration) {
    histogram!(DELIVERY_SECONDS, "destination" => destination.to_string(), "tenant" => tenant.to_string())
        .record(took.as_secs_f64());
}

pub fn dead_letters(destination: &str, tenant: &str, n: u64) {
    counter!(DEAD_LETTERS, "destination" => destination.to_string(), "tenant" => tenant.to_string())
        .increment(n);
}

/// Moves histogram samples into their buckets every few seconds: without it, samples pile up
/// between scrapes (or forever when nothing scrapes).
pub async fn upkeep(stop: CancellationToken) {
    let handle = handle();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}
