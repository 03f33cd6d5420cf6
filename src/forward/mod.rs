//! The part that forwards: one forwarder per destination drains committed batches to Dropzone,
//! round-robin over its tenants, never two batches of one tenant at once, retrying forever on
//! transient failures, splitting to isolate a rejected alert, pausing when the endpoint is wrong.
//!
//! A refused single alert is dead-lettered only on evidence from *now*: it was refused again
//! after the destination accepted something since its previous refusal. Until then it is parked
//! with backoff while its tenant's later batches pass it; several different alerts refused in a
//! row with nothing accepted in between mean the endpoint is broken, and the destination pauses.

pub mod sink;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::LeaseGate;
use crate::store::{now_ms, Batch, BatchItem, BatchLimits, Store, StoreError};
use crate::AppStore;

pub use sink::{classify, DropzoneSink, SendOutcome};

/// Different alerts refused one by one, with nothing accepted in between, before the endpoint
/// is presumed broken (design §7). Different alerts: one alert refused again and again is the
/// same evidence, and must not pause a destination its tenant's other alerts still get through.
const REFUSALS_BEFORE_PAUSE: usize = 3;
/// A paused destination is tried again this often.
const PAUSE_RETRY: Duration = Duration::from_secs(60);

/// What the destination did lately, to tell a poisoned alert from a broken endpoint by what is
/// happening now rather than by an acceptance minutes ago.
#[derive(Default)]
struct Refusals {
    /// Batches accepted so far (by this process).
    accepts: u64,
    /// Parked single-alert batches → `accepts` when each was last refused.
    parked: HashMap<i64, u64>,
    /// Single-alert batches refused since the last acceptance.
    in_a_row: HashSet<i64>,
}

/// What to do with a single alert the destination refused.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Refused again after the destination accepted other alerts since its last refusal: the
    /// alert is at fault.
    DeadLetter,
    /// No evidence either way yet: park it with backoff, let its tenant's later alerts pass.
    Park,
    /// Several different alerts refused in a row with nothing accepted: the endpoint is broken.
    Pause(usize),
}

/// What `/status` and `/readyz` know of a destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationSnapshot {
    pub name: String,
    pub paused: Option<String>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    pub delivered_alerts: u64,
    pub delivered_batches: u64,
    pub dead_lettered: u64,
    pub in_flight: usize,
}

#[derive(Default)]
pub struct DestinationStatus {
    inner: Mutex<DestinationSnapshot>,
    refusals: Mutex<Refusals>,
}

impl DestinationStatus {
    fn with<R>(&self, f: impl FnOnce(&mut DestinationSnapshot) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn snapshot(&self) -> DestinationSnapshot {
        self.with(|s| s.clone())
    }

    /// Healthy when not paused and the last attempt did not fail.
    pub fn ready(&self) -> Result<(), String> {
        self.with(|s| match (&s.paused, s.consecutive_failures) {
            (Some(p), _) => Err(format!("destination {} paused: {p}", s.name)),
            (None, 0) => Ok(()),
            (None, n) => Err(format!(
                "destination {}: {n} failed attempts, last: {}",
                s.name,
                s.last_error.as_deref().unwrap_or("unknown")
            )),
        })
    }

    fn refusals<R>(&self, f: impl FnOnce(&mut Refusals) -> R) -> R {
        let mut g = match self.refusals.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    fn note_accept(&self, batch_id: i64) {
        self.refusals(|r| {
            r.accepts += 1;
            r.in_a_row.clear();
            r.parked.remove(&batch_id);
        });
    }

    /// Records that a single-alert batch was refused and says what to do with it.
    fn note_refusal(&self, batch_id: i64) -> Verdict {
        self.refusals(|r| {
            let previous = r.parked.insert(batch_id, r.accepts);
            if previous.is_some_and(|at| r.accepts > at) {
                r.parked.remove(&batch_id);
                return Verdict::DeadLetter;
            }
            r.in_a_row.insert(batch_id);
            if r.in_a_row.len() >= REFUSALS_BEFORE_PAUSE {
                Verdict::Pause(r.in_a_row.len())
            } else {
                Verdict::Park
            }
        })
    }

    /// Refusals have paused the destination and nothing has been accepted since.
    fn refusing(&self) -> bool {
        self.refusals(|r| r.in_a_row.len() >= REFUSALS_BEFORE_PAUSE)
    }

    fn forget(&self, batch_id: i64) {
        self.refusals(|r| {
            r.parked.remove(&batch_id);
        });
    }
}

/// One destination's delivery loop.
pub struct Forwarder {
    pub name: String,
    pub sink: Arc<DropzoneSink>,
    pub store: Arc<AppStore>,
    pub tenants: Vec<String>,
    pub limits: BatchLimits,
    pub concurrency: usize,
    pub status: Arc<DestinationStatus>,
    pub wake: Arc<Notify>,
    /// The destination's lease: batches are claimed and sent only on the replica holding it.
    pub gate: Arc<LeaseGate>,
}

/// A batch and what became of it; `Err`: its stored bodies cannot be read (corrupt or missing),
/// which no retry will cure. With it, the tenant's next batch when one was claimed ahead, and
/// the claim of the one after that, still running.
type SendResult = (
    Batch,
    Result<SendOutcome, String>,
    Option<Ahead>,
    Option<Claim>,
);

/// A claim of a tenant's next batch, running on its own.
type Claim = tokio::task::JoinHandle<Option<Ahead>>;

/// How often a tenant whose claim is still running is looked at again.
const CLAIM_POLL: Duration = Duration::from_millis(2);

/// A tenant's next batch, claimed and read while the one before it was being sent. A tenant's
/// batches go one at a time, and the store's work between two of them (record one delivered,
/// claim the next, read its bodies) was two thirds of each cycle (issue 12, docs/benchmarks.md):
/// the claim and the read now overlap the POST before them. It is sent only once the batch
/// before it was accepted and recorded delivered, so each alert's versions still arrive in
/// order and a crash repeats at most the one batch in flight. Until then it is an open batch
/// like any other: if the batch before it is retried, split or parked, it waits its turn in
/// `next_open_batch`'s order (a new claim's root comes after every open one).
///
/// On a store that takes writes side by side (Postgres), the claim after it starts as soon as
/// it is claimed, so the claims follow each other instead of each waiting for a send: the
/// longer of a claim and a send-and-record is then each cycle, not their sum less the POST
/// (docs/benchmarks.md, issue 12).
struct Ahead {
    batch: Batch,
    /// None when reading them failed: the send reads them again.
    items: Option<Vec<BatchItem>>,
}

/// Claims the tenant's next batch and reads its items, on a task of its own; a store error
/// leaves the claim (if it committed) to `next_open_batch` and only costs the overlap.
fn claim_ahead(
    store: Arc<AppStore>,
    destination: String,
    tenant: String,
    limits: BatchLimits,
) -> Claim {
    tokio::spawn(async move {
        match store.claim_batch_read(&destination, &tenant, limits).await {
            Ok(claimed) => claimed.map(|(batch, items)| Ahead {
                batch,
                items: items.ok(),
            }),
            Err(e) => {
                tracing::warn!(destination = %destination, tenant = %tenant, error = %e, "store error while claiming the next batch ahead; it is claimed after this one instead");
                None
            }
        }
    })
}

/// What a destination holds of each tenant beyond the batch it sends.
#[derive(Default)]
struct Claimed {
    /// The next batch, to send once the one before it is recorded delivered.
    next: HashMap<String, Ahead>,
    /// The claim of the batch after that, still running. Until it ends nothing else is claimed
    /// or sent for its tenant: its rows come before those of any later claim.
    running: HashMap<String, Claim>,
}

impl Forwarder {
    pub async fn run(self, stop: CancellationToken) {
        self.status.with(|s| s.name = self.name.clone());
        let mut in_flight: JoinSet<SendResult> = JoinSet::new();
        let mut busy: HashSet<String> = HashSet::new();
        // Tenants whose batches open at another destination were moved here (once per start).
        let mut adopted: HashSet<String> = HashSet::new();
        let mut paused_until: Option<Instant> = None;
        let mut turn = 0usize;
        // Each tenant's next batch: claimed in the transaction that marked its last delivered,
        // or claimed and read while that one was sent (`Ahead`).
        let mut claimed = Claimed::default();
        loop {
            let mut wait = Duration::from_millis(500);
            let paused = paused_until.is_some_and(|t| Instant::now() < t);
            if !self.gate.held() {
                // The next holder sends them: they are open batches in the store.
                claimed.next.clear();
                // Standby: another replica forwards; sends still in flight here settle below
                // (their store writes are refused if the lease moved on).
                wait = Duration::from_millis(250);
            } else if !stop.is_cancelled() && !paused {
                match self
                    .fill(
                        &mut in_flight,
                        &mut busy,
                        &mut claimed,
                        &mut adopted,
                        turn,
                        paused_until.is_some(),
                    )
                    .await
                {
                    Ok(w) => wait = w,
                    Err(e) => {
                        tracing::error!(destination = %self.name, error = %e, "store error while claiming batches");
                        wait = Duration::from_secs(1);
                    }
                }
                turn = turn.wrapping_add(1);
            } else if let Some(t) = paused_until {
                wait = t.saturating_duration_since(Instant::now());
            }
            if stop.is_cancelled() && in_flight.is_empty() {
                break;
            }
            self.status.with(|s| s.in_flight = in_flight.len());
            tokio::select! {
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let Ok((batch, outcome, ahead, running)) = joined else { continue };
                    busy.remove(&batch.tenant);
                    if let Some(claim) = running {
                        claimed.running.insert(batch.tenant.clone(), claim);
                    }
                    let settled = match outcome {
                        Ok(outcome) => self.settle(&batch, outcome, ahead, &mut claimed).await,
                        Err(why) => self.unreadable(&batch, &why).await.map(|()| None),
                    };
                    match settled {
                        Ok(Some(pause)) => {
                            paused_until = Some(Instant::now() + PAUSE_RETRY);
                            tracing::error!(destination = %self.name, reason = %pause, "destination paused; retrying every minute");
                        }
                        Ok(None) => {
                            if paused_until.is_some() {
                                tracing::info!(destination = %self.name, "destination accepts again; resuming");
                            }
                            paused_until = None;
                            self.status.with(|s| s.paused = None);
                        }
                        Err(e) => tracing::error!(destination = %self.name, error = %e, "store error after a send; the batch will be sent again"),
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
            }
        }
        tracing::info!(destination = %self.name, "forwarder stopped");
    }

    /// Starts sends until the slots are full; returns how long to wait for the next due retry.
    async fn fill(
        &self,
        in_flight: &mut JoinSet<SendResult>,
        busy: &mut HashSet<String>,
        claimed: &mut Claimed,
        adopted: &mut HashSet<String>,
        turn: usize,
        probing: bool,
    ) -> Result<Duration, StoreError> {
        let mut wait = Duration::from_millis(500);
        let n = self.tenants.len();
        // While paused, one batch at a time probes the endpoint.
        let slots = if probing { 1 } else { self.concurrency };
        for i in 0..n {
            if in_flight.len() >= slots {
                break;
            }
            let tenant = &self.tenants[(turn + i) % n];
            if busy.contains(tenant) {
                continue;
            }
            let Some(timeout) = self.gate.send_window(self.sink.timeout()) else {
                break;
            };
            if !adopted.contains(tenant) {
                // A tenant moved here from another destination brings the batches it had open
                // there; left behind, they would never be sent and would count against
                // max_pending forever.
                let moved = self.store.adopt_open_batches(&self.name, tenant).await?;
                if moved > 0 {
                    tracing::warn!(destination = %self.name, tenant = %tenant, batches = moved, "open batches of this tenant's previous destination are sent through this one");
                }
                adopted.insert(tenant.clone());
            }
            // A batch claimed after the last one was sent and accepted: no other batch of the
            // tenant is open, so the next may be claimed while this one is sent. Not while
            // probing a paused destination: one batch at a time then.
            let mut fresh = !probing;
            let mut items = None;
            let mut running = None;
            let open = if let Some(next) = claimed.next.remove(tenant) {
                items = next.items;
                if fresh {
                    running = claimed.running.remove(tenant);
                }
                Some(next.batch)
            } else {
                if let Some(claim) = claimed.running.get(tenant) {
                    if !claim.is_finished() {
                        wait = wait.min(CLAIM_POLL);
                        continue;
                    }
                    claimed.running.remove(tenant);
                }
                fresh = false;
                self.store.next_open_batch(&self.name, tenant).await?
            };
            let batch = match open {
                Some(b) if b.next_attempt_at > now_ms() => {
                    let due = Duration::from_millis((b.next_attempt_at - now_ms()).max(0) as u64);
                    // Only a parked refused alert is returned while not due if nothing else is
                    // open: new rows go past it, so one poisoned alert never stalls its tenant.
                    // Anything else backing off holds its tenant's queue, to keep order.
                    let fresh = if b.deferred {
                        self.store
                            .claim_batch(&self.name, tenant, self.limits)
                            .await?
                    } else {
                        None
                    };
                    match fresh {
                        Some(f) => f,
                        None => {
                            wait = wait.min(due);
                            continue;
                        }
                    }
                }
                Some(b) => b,
                None => match self
                    .store
                    .claim_batch(&self.name, tenant, self.limits)
                    .await?
                {
                    Some(b) => {
                        fresh = !probing;
                        b
                    }
                    None => continue,
                },
            };
            busy.insert(tenant.clone());
            let store = self.store.clone();
            let sink = self.sink.clone();
            let destination = self.name.clone();
            let limits = self.limits;
            let chained = self.store.writes_side_by_side();
            in_flight.spawn(async move {
                let ahead = async {
                    if !fresh {
                        return (None, None);
                    }
                    let claim = running.unwrap_or_else(|| {
                        claim_ahead(
                            store.clone(),
                            destination.clone(),
                            batch.tenant.clone(),
                            limits,
                        )
                    });
                    let next = claim.await.ok().flatten();
                    let after = match &next {
                        Some(_) if chained => Some(claim_ahead(
                            store.clone(),
                            destination.clone(),
                            batch.tenant.clone(),
                            limits,
                        )),
                        _ => None,
                    };
                    (next, after)
                };
                let read = async {
                    match items {
                        Some(items) => Ok(items),
                        None => store.batch_items(batch.id).await,
                    }
                };
                let send = async {
                    match read.await {
                        Ok(items) if items.is_empty() => Ok(SendOutcome::Delivered),
                        Ok(items) => {
                            if batch.attempts > 0 {
                                crate::metrics::redelivery(&destination, &batch.tenant);
                            }
                            let started = Instant::now();
                            let outcome = sink.send(&batch.key, &items, timeout).await;
                            crate::metrics::delivery_duration(
                                &destination,
                                &batch.tenant,
                                started.elapsed(),
                            );
                            Ok(outcome)
                        }
                        Err(StoreError::Invalid(why)) => Err(why),
                        Err(e) => Ok(SendOutcome::Retry {
                            retry_after: None,
                            error: format!("reading the batch: {e}"),
                        }),
                    }
                };
                let (outcome, (ahead, after)) = tokio::join!(send, ahead);
                (batch, outcome, ahead, after)
            });
        }
        Ok(wait)
    }

    /// A batch whose stored body cannot be read: split to find the row, dead-letter it alone,
    /// so one damaged row never blocks its tenant's queue.
    async fn unreadable(&self, batch: &Batch, why: &str) -> Result<(), StoreError> {
        if batch.rows > 1 {
            self.store.split_batch(batch).await?;
            tracing::warn!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, error = %why, "a stored body cannot be read: batch split to isolate it");
            return Ok(());
        }
        self.dead(batch, &format!("unreadable: {why}")).await?;
        crate::metrics::delivery(&self.name, &batch.tenant, "dead", 1);
        Ok(())
    }

    /// Records an answer; returns the pause reason when the destination must pause.
    /// `ahead`: the tenant's next batch, claimed while this one was sent; it is sent next only
    /// if this one is recorded delivered, and otherwise waits, open, for its turn.
    async fn settle(
        &self,
        batch: &Batch,
        outcome: SendOutcome,
        ahead: Option<Ahead>,
        claimed: &mut Claimed,
    ) -> Result<Option<String>, StoreError> {
        let counted = |outcome| crate::metrics::delivery(&self.name, &batch.tenant, outcome, 1);
        match outcome {
            SendOutcome::Delivered => {
                // A claim of this tenant still running (left by a send made while probing) must
                // not race another: the record alone, and its batch is found open next.
                let claiming = claimed
                    .running
                    .get(&batch.tenant)
                    .is_some_and(|claim| !claim.is_finished());
                let next = match ahead {
                    Some(ahead) => {
                        self.store.mark_delivered(batch).await?;
                        Some(ahead)
                    }
                    None if claiming => {
                        self.store.mark_delivered(batch).await?;
                        None
                    }
                    None => self
                        .store
                        .deliver_and_claim(batch, self.limits)
                        .await?
                        .map(|batch| Ahead { batch, items: None }),
                };
                if let Some(next) = next {
                    claimed.next.insert(next.batch.tenant.clone(), next);
                }
                counted("delivered");
                self.status.note_accept(batch.id);
                self.status.with(|s| {
                    s.consecutive_failures = 0;
                    s.delivered_alerts += batch.rows as u64;
                    s.delivered_batches += 1;
                });
                tracing::info!(destination = %self.name, tenant = %batch.tenant, alerts = batch.rows, batch = batch.id, attempts = batch.attempts + 1, "batch delivered");
                Ok(None)
            }
            SendOutcome::Retry { retry_after, error } => {
                let delay = retry_after.unwrap_or_else(|| full_jitter(batch.attempts));
                let next = now_ms() + delay.as_millis() as i64;
                self.store.mark_retry(batch, next, &error).await?;
                counted("retry");
                self.failed(&error);
                tracing::warn!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, error = %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                Ok(None)
            }
            SendOutcome::TooLarge if batch.rows > 1 => {
                self.store.split_batch(batch).await?;
                counted("split");
                tracing::info!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, "HTTP 413: batch split in two");
                Ok(None)
            }
            SendOutcome::TooLarge => {
                self.dead(batch, "too_large: HTTP 413 for this alert alone")
                    .await?;
                counted("dead");
                Ok(None)
            }
            SendOutcome::Rejected { status, .. } if batch.rows > 1 => {
                self.store.split_batch(batch).await?;
                counted("split");
                tracing::info!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, status, "batch rejected: split to isolate the refused alert");
                // A paused destination's probe being split is no sign of recovery: it stays
                // paused until something is accepted.
                if self.status.refusing() {
                    return Ok(self.status.with(|s| s.paused.clone()));
                }
                Ok(None)
            }
            SendOutcome::Rejected { status, body } => {
                let reason = format!("HTTP {status}: {body}");
                match self.status.note_refusal(batch.id) {
                    Verdict::DeadLetter => {
                        self.dead(batch, &reason).await?;
                        counted("dead");
                        Ok(None)
                    }
                    Verdict::Park => {
                        // Parked with backoff; its tenant's later batches go past it meanwhile,
                        // and their acceptance is what later convicts it.
                        let delay = full_jitter(batch.attempts);
                        let next = now_ms() + delay.as_millis() as i64;
                        self.store.defer_single(batch, next, &reason).await?;
                        counted("retry");
                        tracing::warn!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, status, retry_in_ms = delay.as_millis() as u64, "alert refused; parked until the destination is seen accepting others");
                        Ok(None)
                    }
                    Verdict::Pause(n) => {
                        let next = now_ms() + PAUSE_RETRY.as_millis() as i64;
                        self.store.defer_single(batch, next, &reason).await?;
                        counted("paused");
                        // Dropzone's answer body stays in the store (the batch's last error),
                        // never in logs or /status.
                        let why = format!("{n} different alerts refused one by one with HTTP {status} and nothing accepted in between: the endpoint or its contract is wrong, not the data; check forward.url");
                        self.failed(&format!("HTTP {status}"));
                        self.status.with(|s| s.paused = Some(why.clone()));
                        Ok(Some(why))
                    }
                }
            }
            SendOutcome::Pause { status: _, error } => {
                let next = now_ms() + PAUSE_RETRY.as_millis() as i64;
                self.store.mark_retry(batch, next, &error).await?;
                counted("paused");
                self.failed(&error);
                self.status.with(|s| s.paused = Some(error.clone()));
                Ok(Some(error))
            }
        }
    }

    async fn dead(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        self.store.dead_letter(batch, reason).await?;
        self.status.forget(batch.id);
        crate::metrics::dead_letters(&self.name, &batch.tenant, batch.rows.max(0) as u64);
        self.status.with(|s| s.dead_lettered += batch.rows as u64);
        // The reason may quote Dropzone's answer: it is kept for `dead-letters list`, not logged.
        let status = reason.split(':').next().unwrap_or("");
        tracing::error!(destination = %self.name, tenant = %batch.tenant, batch = batch.id, status = %status, "alert dead-lettered; the reason is stored with it");
        Ok(())
    }

    fn failed(&self, error: &str) {
        self.status.with(|s| {
            s.consecutive_failures += 1;
            s.last_error = Some(error.to_string());
        });
    }
}

/// Exponential backoff with full jitter between 1 s and 5 min.
pub fn full_jitter(attempts: i64) -> Duration {
    let cap_ms = 1000u64
        .saturating_mul(1u64 << attempts.clamp(0, 9))
        .min(300_000);
    Duration::from_millis(fastrand::u64(1000..=cap_ms.max(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_convicts_an_alert_only_when_others_were_accepted_since_its_last() {
        let status = DestinationStatus::default();
        // One alert refused again and again with nothing accepted: parked, never a pause.
        for _ in 0..5 {
            assert_eq!(status.note_refusal(1), Verdict::Park);
        }
        // Another batch accepted since its last refusal: the next refusal is the alert's fault.
        status.note_accept(7);
        assert_eq!(status.note_refusal(1), Verdict::DeadLetter);
        // A first refusal right after an acceptance is not enough on its own.
        status.note_accept(8);
        assert_eq!(status.note_refusal(5), Verdict::Park);
        status.note_accept(6);
        // Different alerts refused in a row with nothing accepted: the endpoint is broken.
        assert_eq!(status.note_refusal(2), Verdict::Park);
        assert_eq!(status.note_refusal(3), Verdict::Park);
        assert_eq!(status.note_refusal(4), Verdict::Pause(3));
        assert!(status.refusing());
        assert_eq!(
            status.note_refusal(2),
            Verdict::Pause(3),
            "still nothing accepted"
        );
        status.note_accept(9);
        assert!(!status.refusing());
    }

    #[test]
    fn jitter_stays_within_one_second_and_five_minutes() {
        for attempts in [0, 1, 5, 20, 100] {
            for _ in 0..100 {
                let d = full_jitter(attempts);
                assert!(
                    d >= Duration::from_secs(1) && d <= Duration::from_secs(300),
                    "{d:?}"
                );
            }
        }
        assert!(full_jitter(0) <= Duration::from_secs(1));
    }
}
