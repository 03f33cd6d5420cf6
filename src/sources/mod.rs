//! Pollers: one task per (tenant, source). This file holds what every source shares: the task
//! loop, back-pressure, the commit of a page (items and coverage in one store transaction), and
//! quarantine retries.
//!
//! Layout, a file per concept:
//! - `coverage.rs`: the time-slice coverage scan of the Graph and Cloud Apps listings (design §4
//!   rules 0–5): slices bounded by Microsoft's clock, split rather than paged, the coverage point
//!   moved only in the transaction that completes a slice, and reconciliation, which never moves it.
//! - `alerts.rs`, `incidents.rs`, `submissions.rs`, `cloud_apps.rs`: what each listing asks for and
//!   its own quirks (`$expand` fallback, a refused submission filter, Cloud Apps' POSTed filters).
//! - `phishing_reports.rs`: the reporting mailbox, read with Graph delta queries, and the reported
//!   email attached to each report.
//! - `status.rs`: what `/status` and `/readyz` show of each source.

mod alerts;
mod cloud_apps;
mod coverage;
mod incidents;
#[cfg(test)]
mod mutate;
mod page;
mod phishing_reports;
pub mod status;
mod submissions;

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{SourceSettings, StartFrom};
use crate::lease::LeaseGate;
use crate::microsoft::{MsClient, MsError};
use crate::normalize::SourceKind;
use crate::store::{
    CursorKey, IngestBatch, IngestCounts, RetriedQuarantine, Store, StoreError, TenantRef,
};
use crate::time::{format_ticks, now_ticks};
use crate::AppStore;

pub use alerts::ALERTS_TOP;
pub use cloud_apps::CLOUD_APPS_LIMIT;
pub use coverage::{split_slice, GraphListing};
pub use incidents::INCIDENTS_TOP;
pub use phishing_reports::{access_policy_fix, NO_REPORTING_MAILBOX};
pub use status::{SourceState, SourceStatus};
pub use submissions::SUBMISSION_LISTS;

use coverage::{prepare_item, ParsedPage, Pass};

/// Why a poll ended early. C stays where the last completed slice left it.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Microsoft(#[from] MsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("paused: {0}")]
    Paused(String),
    /// A submission list answered a filtered request with an item outside the slice asked
    /// for: Graph ignored the filter (API.md §5). Ticks (100 ns) since the Unix epoch.
    #[error("the time filter was ignored: an item created at tick {created} came back for [{}, {})", slice.0, slice.1)]
    FilterIgnored { slice: (i64, i64), created: i64 },
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PollOutcome {
    pub counts: IngestCounts,
    pub requests: u64,
    /// The coverage point after the poll (Unix seconds).
    pub coverage: i64,
}

/// How often a long backfill re-checks `store.max_pending` between slices.
const BACKPRESSURE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything one poller task needs.
pub struct Poller {
    pub tenant: TenantRef,
    pub settings: SourceSettings,
    pub start: StartFrom,
    pub client: Arc<MsClient>,
    pub store: Arc<AppStore>,
    pub status: Arc<SourceStatus>,
    pub max_pending: u64,
    /// Bounds the page bodies held in memory across all pollers (design §10).
    pub pages: Arc<Semaphore>,
    lists: Vec<(GraphListing, CursorKey)>,
    /// Set once `$expand=alerts` answered 5xx: the plain listing is used from then on.
    expand_failed: std::sync::atomic::AtomicBool,
    /// Submission lists whose `createdDateTime` filter Microsoft refused: listed without one.
    filter_refused: std::sync::Mutex<Vec<&'static str>>,
    last_reconcile: Option<Instant>,
    /// Lists whose coverage point this process stored first (rule 0), counted by `cursor`
    /// whether or not that poll then completed: when it is all of them, the first run read
    /// every window a reconciliation would re-list, just now.
    cursors_started_here: std::sync::atomic::AtomicUsize,
    /// During a reconciliation pass of a Graph source: the versions the store holds for the
    /// window, so re-listed items it holds already are not prepared again.
    known_versions: Option<Arc<crate::normalize::KnownVersions>>,
    wake: Option<Arc<Notify>>,
    /// The tenant's lease: polls run only on the replica that holds it.
    gate: Arc<LeaseGate>,
    /// Phishing reports: the mailbox found and the reports that failed transiently.
    reports: phishing_reports::MailboxRead,
    /// With campaign context on: how long a new alert about an email waits for it, and who to
    /// tell that alerts want context.
    context: Option<(std::time::Duration, Arc<Notify>)>,
}

impl Poller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: TenantRef,
        settings: SourceSettings,
        start: StartFrom,
        client: Arc<MsClient>,
        store: Arc<AppStore>,
        status: Arc<SourceStatus>,
        max_pending: u64,
        pages: Arc<Semaphore>,
    ) -> Self {
        let tenant_name = tenant.name.clone();
        let lists = GraphListing::for_source(&settings)
            .into_iter()
            .map(|l| {
                let key = CursorKey {
                    tenant: tenant.name.clone(),
                    source: settings.kind,
                    list: l.list.to_string(),
                };
                (l, key)
            })
            .collect();
        Self {
            tenant,
            settings,
            start,
            client,
            store,
            status,
            max_pending,
            pages,
            lists,
            expand_failed: std::sync::atomic::AtomicBool::new(false),
            filter_refused: std::sync::Mutex::new(Vec::new()),
            last_reconcile: None,
            cursors_started_here: std::sync::atomic::AtomicUsize::new(0),
            known_versions: None,
            wake: None,
            gate: LeaseGate::always(crate::store::tenant_lease(&tenant_name)),
            reports: phishing_reports::MailboxRead::default(),
            context: None,
        }
    }

    /// Campaign context is on: a new alert about an email waits up to `max_delay` for it, and
    /// `enrich` is woken when a page queues one.
    pub fn with_context(mut self, max_delay: std::time::Duration, enrich: Arc<Notify>) -> Self {
        self.context = Some((max_delay, enrich));
        self
    }

    /// Polls only while `gate`'s lease is held (several replicas on Postgres).
    pub fn with_gate(mut self, gate: Arc<LeaseGate>) -> Self {
        self.gate = gate;
        self
    }

    /// Wakes the forwarders as soon as a commit queues versions.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Runs until `stop`: a poll each interval, reconciliation when due. A failed poll is logged
    /// and counted; it never ends the task.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if !self.gate.held() {
                if !self.gate.wait_held(&stop).await {
                    break;
                }
                // Taken over from another replica: reconcile as a fresh start does.
                self.last_reconcile = None;
                *self.cursors_started_here.get_mut() = 0;
            }
            let started = Instant::now();
            let result = tokio::select! {
                r = self.poll_once() => r,
                _ = stop.cancelled() => break,
            };
            // A failed poll already says why; a retry would only fail the same way.
            let polled = result.is_ok();
            self.record(result);
            if polled && self.last_reconcile.is_none() && self.backfilled_here() {
                // The first run has just read every window a reconciliation would re-list, so
                // the first one is due an interval from now, as after any other. Re-listing a
                // 24-hour window at once re-read a third of a 3-day backfill (issue 12).
                self.last_reconcile = Some(Instant::now());
            }
            if polled {
                if let Err(e) = self.retry_quarantined().await {
                    tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), error = %e, "quarantine retry failed; tried again next poll");
                }
            }
            if self.reconcile_due() {
                let r = tokio::select! {
                    r = self.reconcile_once() => r,
                    _ = stop.cancelled() => break,
                };
                match r {
                    Ok(late) if late > 0 => {
                        tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), late_arrivals = late, "reconciliation found versions the live scan had missed")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), error = %e, "reconciliation failed")
                    }
                }
            }
            let next = started + self.settings.interval;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => break,
            }
        }
        tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), "poller stopped");
    }

    fn record(&self, result: Result<PollOutcome, PollError>) {
        let lag = self.lag();
        match result {
            Ok(o) => {
                crate::metrics::poll(&self.tenant.name, self.settings.kind.as_str(), "success");
                self.status.success(o, lag);
                if o.counts.queued > 0 || o.counts.quarantined > 0 {
                    tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), new = o.counts.new, updated = o.counts.updated, unchanged = o.counts.unchanged, stale = o.counts.stale, quarantined = o.counts.quarantined, queued = o.counts.queued, requests = o.requests, lag_s = lag.unwrap_or(0), "poll done");
                }
            }
            Err(PollError::Paused(why)) => {
                crate::metrics::poll(&self.tenant.name, self.settings.kind.as_str(), "paused");
                self.status.paused(&why);
                tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), reason = %why, "poll skipped");
            }
            Err(e) => {
                let message = self.explain(&e);
                crate::metrics::poll(&self.tenant.name, self.settings.kind.as_str(), "failure");
                self.status.failure(&message, lag);
                tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), error = %message, "poll failed");
            }
        }
    }

    /// A 403 means a permission is missing: say which.
    fn explain(&self, e: &PollError) -> String {
        if self.settings.kind == SourceKind::PhishingReports {
            if let Some(why) = self.explain_mailbox(e) {
                return why;
            }
        }
        match e {
            PollError::Microsoft(MsError::Status { status: 403, .. }) => format!(
                "{e}. Fix: Entra admin center → App registrations → API permissions → Add a permission → {}, then Grant admin consent",
                required_permission(self.settings.kind)
            ),
            _ => e.to_string(),
        }
    }

    /// Every list's coverage started in this process: no run before this one can have missed
    /// a late arrival.
    fn backfilled_here(&self) -> bool {
        let started = self
            .cursors_started_here
            .load(std::sync::atomic::Ordering::Relaxed);
        !self.lists.is_empty() && started >= self.lists.len()
    }

    fn reconcile_due(&self) -> bool {
        // The mailbox's delta query is its own change feed: there is nothing to re-list.
        if self.settings.kind == SourceKind::PhishingReports {
            return false;
        }
        match self.last_reconcile {
            None => self.status.first_run_done(),
            Some(t) => t.elapsed() >= self.settings.reconcile_interval,
        }
    }

    /// D − C: how far the coverage point trails Microsoft's latest `Date`.
    fn lag(&self) -> Option<i64> {
        let d = self.client.clock().latest()?;
        let c = self.status.coverage()?;
        Some((d - c).max(0))
    }

    /// One poll: for each list, scan slices until C ≥ P − settle.
    pub async fn poll_once(&mut self) -> Result<PollOutcome, PollError> {
        self.check_backpressure().await?;
        if self.settings.kind == SourceKind::PhishingReports {
            return self.poll_mailbox().await;
        }
        let mut outcome = PollOutcome::default();
        let mut lowest = i64::MAX;
        for (listing, key) in &self.lists {
            let c = self.poll_list(listing, key, &mut outcome).await?;
            lowest = lowest.min(c);
        }
        outcome.coverage = lowest;
        self.status.first_run_finished();
        Ok(outcome)
    }

    /// Above `store.max_pending` undelivered versions the tenant's pollers stop reading (C
    /// stays), so a long outage of Dropzone does not fill the disk.
    async fn check_backpressure(&self) -> Result<(), PollError> {
        let undelivered = self.store.undelivered(&self.tenant.name).await?;
        if undelivered > self.max_pending {
            return Err(PollError::Paused(format!(
                "{undelivered} versions await delivery (store.max_pending = {}): waiting for the forwarder",
                self.max_pending
            )));
        }
        Ok(())
    }

    async fn commit(
        &self,
        key: &CursorKey,
        page: ParsedPage,
        historical: bool,
        pass: Pass,
        advance_to: Option<i64>,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        let counts = self
            .commit_page(key, page, historical, pass, advance_to)
            .await?;
        outcome.counts.add(counts);
        Ok(())
    }

    /// Re-reads the quarantined items the operator marked (`quarantine retry`) with this
    /// version's parser: those that parse now are stored like any listed item and leave the
    /// quarantine in the same transaction; the others stay, unmarked, with today's reason.
    /// The poller does it because on Postgres only the tenant's lease holder may write.
    async fn retry_quarantined(&self) -> Result<(), PollError> {
        const RETRIES_PER_POLL: i64 = 500;
        let kind = self.settings.kind;
        let rows = self
            .store
            .quarantine_retries(&self.tenant.name, kind, RETRIES_PER_POLL)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        let mut retried = Vec::with_capacity(rows.len());
        for row in &rows {
            let parsed = serde_json::from_str::<&RawValue>(&row.raw)
                .map_err(|e| format!("the stored text is not JSON: {e}"))
                .and_then(|raw| prepare_item(kind, &row.list, raw).map_err(|u| u.reason));
            let still_unusable = match parsed {
                Ok(p) => {
                    items.push(p);
                    None
                }
                Err(reason) => Some(reason),
            };
            retried.push(RetriedQuarantine {
                id: row.id,
                still_unusable,
            });
        }
        let released = items.len();
        let observed_at = format_ticks(now_ticks());
        let counts = self
            .store
            .ingest(IngestBatch {
                tenant: &self.tenant,
                source: kind,
                items,
                quarantine: Vec::new(),
                retried,
                historical: true,
                observed_at: &observed_at,
                filters: &self.settings.filters,
                advance: None,
                source_state: None,
                context_hold: None,
            })
            .await?;
        self.status.add_counts(counts);
        crate::metrics::record_items(&self.tenant.name, kind.as_str(), counts);
        tracing::info!(tenant = %self.tenant.name, source = kind.as_str(), retried = rows.len(), released, still_quarantined = rows.len() - released, queued = counts.queued, "quarantine retry done");
        if counts.queued > 0 {
            if let Some(w) = &self.wake {
                w.notify_waiters();
            }
        }
        Ok(())
    }

    /// One page in one store transaction; `advance_to` moves C in the same transaction.
    async fn commit_page(
        &self,
        key: &CursorKey,
        page: ParsedPage,
        historical: bool,
        pass: Pass,
        advance_to: Option<i64>,
    ) -> Result<IngestCounts, PollError> {
        let advance = match (pass, advance_to) {
            (Pass::Live, Some(b)) => Some((key, b)),
            _ => None,
        };
        // Items the page reader found stored already, at this version or a newer one: read, and
        // counted as the store would have counted them, but never prepared or sent to it.
        let skipped = IngestCounts {
            unchanged: page.unchanged,
            stale: page.stale,
            ..IngestCounts::default()
        };
        let mut counts = self
            .commit_items(Commit {
                items: page.items,
                quarantine: page.quarantine,
                historical,
                advance,
                source_state: None,
            })
            .await?;
        self.status.add_counts(skipped);
        crate::metrics::record_items(&self.tenant.name, self.settings.kind.as_str(), skipped);
        counts.add(skipped);
        Ok(counts)
    }

    /// Stores items (and moves the coverage point, with `advance`) in one transaction, then
    /// tells `/status`, the metrics, the logs and the forwarders.
    async fn commit_items(&self, c: Commit<'_>) -> Result<IngestCounts, PollError> {
        let observed_at = format_ticks(now_ticks());
        let unusable: Vec<(Option<String>, String)> = c
            .quarantine
            .iter()
            .map(|q| (q.native_id.clone(), q.reason.clone()))
            .collect();
        let advanced = c.advance.is_some();
        let counts = self
            .store
            .ingest(IngestBatch {
                tenant: &self.tenant,
                source: self.settings.kind,
                items: c.items,
                quarantine: c.quarantine,
                retried: Vec::new(),
                historical: c.historical,
                observed_at: &observed_at,
                filters: &self.settings.filters,
                advance: c.advance,
                source_state: c.source_state,
                context_hold: self.context.as_ref().map(|(d, _)| *d),
            })
            .await?;
        if counts.queued > 0 {
            if let Some((_, enrich)) = &self.context {
                enrich.notify_one();
            }
        }
        self.status.add_counts(counts);
        crate::metrics::record_items(&self.tenant.name, self.settings.kind.as_str(), counts);
        if counts.quarantined > 0 {
            for (native_id, reason) in &unusable {
                tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), native_id = native_id.as_deref().unwrap_or(""), reason = %reason, "item quarantined: see `quarantine list`");
            }
        }
        if counts.queued > 0 {
            if let Some(w) = &self.wake {
                w.notify_waiters();
            }
        }
        if advanced {
            self.status.slice_committed();
        }
        Ok(counts)
    }
}

/// What one store transaction of a poller writes.
struct Commit<'a> {
    items: Vec<crate::normalize::Prepared>,
    quarantine: Vec<crate::store::QuarantineItem>,
    historical: bool,
    /// Moves the coverage point in the same transaction.
    advance: Option<(&'a CursorKey, i64)>,
    /// The source's own coverage state, stored with `advance`.
    source_state: Option<&'a str>,
}

/// The Graph permission a source needs (for 403 messages).
pub fn required_permission(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Alerts => "Microsoft Graph → Application permissions → SecurityAlert.Read.All",
        SourceKind::Incidents => "Microsoft Graph → Application permissions → SecurityIncident.Read.All",
        SourceKind::Submissions => "Microsoft Graph → Application permissions → ThreatSubmission.Read.All",
        SourceKind::CloudApps => "APIs my organization uses → Microsoft Cloud App Security → Application permissions → Investigation.Read",
        SourceKind::PhishingReports => "Microsoft Graph → Application permissions → Mail.Read",
    }
}
