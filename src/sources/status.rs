//! What each poller reports to `/status` and `/readyz`: coverage, lag, last poll and success,
//! consecutive failures with the last error, and running counts.

use std::sync::Mutex;

use serde::Serialize;
use tokio::time::Instant;

use crate::store::IngestCounts;
use crate::time::format_seconds;

use super::PollOutcome;

/// A source's health as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Starting,
    Running,
    Failing,
    Paused,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceSnapshot {
    pub state: SourceState,
    pub coverage: Option<String>,
    pub lag_s: Option<i64>,
    pub last_poll_age_s: Option<u64>,
    pub last_success_age_s: Option<u64>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    pub paused_reason: Option<String>,
    pub first_run_done: bool,
    pub counts: Counts,
    pub late_arrivals: u64,
    pub note: Option<String>,
    /// Phishing reports: the mailbox and folder read (`auto` resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub quarantined: u64,
    pub queued: u64,
    pub requests: u64,
}

struct Inner {
    state: SourceState,
    coverage: Option<i64>,
    lag: Option<i64>,
    last_poll: Option<Instant>,
    last_success: Option<Instant>,
    last_slice: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
    paused: Option<String>,
    first_run_done: bool,
    counts: Counts,
    late: u64,
    note: Option<String>,
    mailbox: Option<String>,
}

pub struct SourceStatus {
    pub interval: std::time::Duration,
    inner: Mutex<Inner>,
}

impl SourceStatus {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            inner: Mutex::new(Inner {
                state: SourceState::Starting,
                coverage: None,
                lag: None,
                last_poll: None,
                last_success: None,
                last_slice: None,
                failures: 0,
                last_error: None,
                paused: None,
                first_run_done: false,
                counts: Counts::default(),
                late: 0,
                note: None,
                mailbox: None,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn success(&self, o: PollOutcome, lag: Option<i64>) {
        self.with(|s| {
            let now = Instant::now();
            s.state = SourceState::Running;
            s.last_poll = Some(now);
            s.last_success = Some(now);
            s.failures = 0;
            s.paused = None;
            s.lag = lag;
            s.counts.requests += o.requests;
        });
    }

    pub fn failure(&self, message: &str, lag: Option<i64>) {
        self.with(|s| {
            s.state = SourceState::Failing;
            s.last_poll = Some(Instant::now());
            s.failures += 1;
            s.last_error = Some(message.to_string());
            s.lag = lag.or(s.lag);
        });
    }

    pub fn paused(&self, why: &str) {
        self.with(|s| {
            s.state = SourceState::Paused;
            s.last_poll = Some(Instant::now());
            s.paused = Some(why.to_string());
        });
    }

    /// A standing remark for `/status` (e.g. "listing without $expand").
    pub fn note(&self, text: &str) {
        self.with(|s| s.note = Some(text.to_string()));
    }

    /// The mailbox and folder a phishing-report source reads.
    pub fn set_mailbox(&self, mailbox: &str, folder: &str) {
        self.with(|s| s.mailbox = Some(format!("{mailbox} ({folder})")));
    }

    pub fn set_coverage(&self, c: i64) {
        self.with(|s| s.coverage = Some(c));
    }

    pub fn coverage(&self) -> Option<i64> {
        self.with(|s| s.coverage)
    }

    pub fn slice_committed(&self) {
        self.with(|s| s.last_slice = Some(Instant::now()));
    }

    pub fn first_run_finished(&self) {
        self.with(|s| s.first_run_done = true);
    }

    pub fn first_run_done(&self) -> bool {
        self.with(|s| s.first_run_done)
    }

    pub fn add_counts(&self, c: IngestCounts) {
        self.with(|s| {
            s.counts.new += c.new;
            s.counts.updated += c.updated;
            s.counts.unchanged += c.unchanged;
            s.counts.stale += c.stale;
            s.counts.quarantined += c.quarantined;
            s.counts.queued += c.queued;
        });
    }

    pub fn late_arrivals(&self, n: u64) {
        self.with(|s| s.late += n);
    }

    /// Ready when a slice was committed within 3 intervals, or the first run is still under way
    /// and succeeding (a long backfill is healthy).
    pub fn ready(&self) -> Result<(), String> {
        let limit = self.interval * 3;
        self.with(|s| {
            if let Some(why) = &s.paused {
                return Err(format!("paused: {why}"));
            }
            match s.last_slice {
                Some(t) if t.elapsed() <= limit => Ok(()),
                _ if !s.first_run_done && s.failures == 0 => Ok(()),
                _ => Err(s.last_error.clone().unwrap_or_else(|| {
                    format!("no slice committed in the last {}s", limit.as_secs())
                })),
            }
        })
    }

    pub fn snapshot(&self) -> SourceSnapshot {
        self.with(|s| SourceSnapshot {
            state: s.state.clone(),
            coverage: s.coverage.map(format_seconds),
            lag_s: s.lag,
            last_poll_age_s: s.last_poll.map(|t| t.elapsed().as_secs()),
            last_success_age_s: s.last_success.map(|t| t.elapsed().as_secs()),
            consecutive_failures: s.failures,
            last_error: s.last_error.clone(),
            paused_reason: s.paused.clone(),
            first_run_done: s.first_run_done,
            counts: s.counts,
            late_arrivals: s.late,
            note: s.note.clone(),
            mailbox: s.mailbox.clone(),
        })
    }
}
