//! The enrichment stage (issue 13): one task per tenant with `context.hunting` on gives the
//! alerts about an email their campaign context.
//!
//! Durable state lives in the store, so nothing is lost across a crash or a lease takeover:
//! the page that queues an email alert's first version marks that version "waiting until
//! now + `max_delay`" (the forwarder's claim skips it, and its alert's later versions, until
//! then) and lists the alert in `context_wanted`. This task reads that list, asks advanced
//! hunting about the listed message ids (one query per `batch_size` ids), and writes each
//! answer into the waiting version, or, when the wait is over, queues a `context` revision.
//! A failed lookup changes nothing: the waits run out, the alerts go without context, and
//! `/status` says what happened and what to do. It runs on the replica holding the tenant's
//! lease, like the tenant's pollers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{HuntingClient, HuntingError};
use crate::lease::LeaseGate;
use crate::store::{ContextOutcome, ContextWanted, Store, TenantRef};
use crate::time::{format_ticks, now_ticks};
use crate::AppStore;

/// How long an alert keeps wanting context: past it, advanced hunting is not asked about it again.
pub const WANTED_FOR: Duration = Duration::from_secs(2 * 3600);
/// Alerts read from the list at a time: lookups skip ids asked about recently, so reading again
/// about messages hunting does not know yet costs no query.
const ROUND: i64 = 1000;
/// After a wake-up, how long to let the rest of a poll's pages land so that one query covers
/// them (at most a quarter of `max_delay`).
const GATHER: Duration = Duration::from_secs(1);
/// The list is read at least this often: alerts listed before a restart, and lookups refused
/// while hunting was paused.
const EVERY: Duration = Duration::from_secs(15);

/// What `/status` shows about a tenant's campaign context.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ContextSnapshot {
    /// `ok`, or the kind of the last failure (`not_granted`, `throttled`, `cpu_quota`,
    /// `timeout`, `other`) while it lasts.
    pub state: &'static str,
    /// What happened, and what to do, while a failure lasts.
    pub error: Option<String>,
    pub fix: Option<String>,
    /// Alerts sent with their context, and context revisions queued, since start.
    pub attached: u64,
    pub revisions: u64,
    /// When the last lookup answered (RFC 3339).
    pub last_success_at: Option<String>,
}

/// Shared between the stage and `/status`.
#[derive(Debug, Default)]
pub struct ContextStatus(Mutex<ContextSnapshot>);

impl ContextStatus {
    pub fn snapshot(&self) -> ContextSnapshot {
        let mut s = self.lock().clone();
        if s.state.is_empty() {
            s.state = "ok";
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContextSnapshot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answered(&self, attached: u64, revisions: u64) {
        let mut s = self.lock();
        s.state = "ok";
        s.error = None;
        s.fix = None;
        s.attached += attached;
        s.revisions += revisions;
        s.last_success_at = Some(format_ticks(now_ticks()));
    }

    fn failed(&self, e: &HuntingError) {
        let mut s = self.lock();
        s.state = e.kind();
        s.error = Some(e.to_string());
        s.fix = Some(e.fix());
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnrichOutcome {
    pub wanted: usize,
    pub attached: u64,
    pub revisions: u64,
}

/// The stage for one tenant.
pub struct Enricher {
    pub tenant: TenantRef,
    pub client: Arc<HuntingClient>,
    pub store: Arc<AppStore>,
    pub status: Arc<ContextStatus>,
    /// Woken by the tenant's pollers when a page queues versions.
    pub wake: Arc<Notify>,
    /// Wakes the forwarders when context was written.
    pub forward: Arc<Notify>,
    pub gate: Arc<LeaseGate>,
    pub max_delay: Duration,
}

impl Enricher {
    /// One round: expire old listings, look up everything listed (a page at a time, so alerts
    /// hunting does not know yet never keep later ones from their turn), write the answers.
    pub async fn enrich_once(&self) -> anyhow::Result<EnrichOutcome> {
        let tenant = self.tenant.name.as_str();
        let cutoff =
            crate::store::now_ms() - i64::try_from(WANTED_FOR.as_millis()).unwrap_or(i64::MAX / 2);
        self.store.expire_context_wanted(tenant, cutoff).await?;
        let mut out = EnrichOutcome::default();
        let mut after = None;
        loop {
            let wanted = self
                .store
                .context_wanted(tenant, after.as_ref(), ROUND)
                .await?;
            out.wanted += wanted.len();
            if !self.enrich_page(&wanted, &mut out).await? {
                break;
            }
            // A short page is the list's end (or holds rows of a source this build does not
            // know, left for the expiry): the next round starts from the oldest again.
            if wanted.len() < usize::try_from(ROUND).unwrap_or(usize::MAX) {
                break;
            }
            after = wanted.into_iter().last();
        }
        crate::metrics::context_alerts(tenant, "attached", out.attached);
        crate::metrics::context_alerts(tenant, "revision", out.revisions);
        if out.attached + out.revisions > 0 {
            self.forward.notify_waiters();
        }
        Ok(out)
    }

    /// Looks up one page of the list and writes the answers. False when hunting failed: the
    /// round stops there, and `/status` says why.
    async fn enrich_page(
        &self,
        wanted: &[ContextWanted],
        out: &mut EnrichOutcome,
    ) -> anyhow::Result<bool> {
        if wanted.is_empty() {
            return Ok(false);
        }
        let tenant = self.tenant.name.as_str();
        let ids: Vec<String> = wanted.iter().map(|w| w.message_id.clone()).collect();
        let found = match self.client.lookup(&ids).await {
            Ok(found) => found,
            Err(e) => {
                crate::metrics::context_failure(tenant, e.kind());
                tracing::warn!(tenant, kind = e.kind(), error = %e, fix = %e.fix(), "campaign context: lookup failed, alerts go without it and it follows when hunting answers");
                self.status.failed(&e);
                return Ok(false);
            }
        };
        let observed_at = format_ticks(now_ticks());
        let (mut attached, mut revisions) = (0, 0);
        for w in wanted {
            let Some(ctx) = found.get(&w.message_id) else {
                continue;
            };
            let context = serde_json::to_vec(&serde_json::json!({ "campaign": ctx }))?;
            match self
                .store
                .attach_context(&self.tenant, w.source, &w.native_id, &context, &observed_at)
                .await?
            {
                ContextOutcome::Attached => attached += 1,
                ContextOutcome::Revision => revisions += 1,
                ContextOutcome::Dropped => {}
            }
        }
        out.attached += attached;
        out.revisions += revisions;
        self.status.answered(attached, revisions);
        Ok(true)
    }

    /// Runs until `stop`: a round when a poll queued versions (after a short gathering pause,
    /// so one query serves the whole poll) or every [`EVERY`] at least.
    pub async fn run(self, stop: CancellationToken) {
        let gather = GATHER.min(self.max_delay / 4);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(EVERY) => {}
            }
            if !self.gate.held() && !self.gate.wait_held(&stop).await {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(gather) => {}
            }
            match self.enrich_once().await {
                Ok(o) if o.attached + o.revisions > 0 => {
                    tracing::info!(tenant = %self.tenant.name, attached = o.attached, revisions = o.revisions, "campaign context written");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant.name, error = format!("{e:#}"), "campaign context round failed; the next round tries again");
                }
            }
        }
    }
}
