//! Faults a test switches on per tenant: throttling, server errors, truncated bodies, items that
//! change mid-listing, foreign nextLinks, slow answers and late-indexed items.
//!
//! Each tenant has one [`FaultState`] that counts its Graph requests (so "every n-th request"
//! is per tenant, as Microsoft's quota is) and remembers the `Retry-After` window it imposed, so
//! a client that comes back early is answered 429 again and counted as a violation.

use std::time::{Duration, Instant, SystemTime};

use crate::{lock, tenant_key, Simulator};

/// Faults for one tenant's Graph traffic. `Default` is "no faults".
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every n-th Graph request of the tenant answers 429 (body like `graph-error-429.json`).
    pub throttle_every: Option<u32>,
    /// The `Retry-After` value sent with those 429s, verbatim (decimal seconds such as `"2.5"`,
    /// or an HTTP-date). `None` sends no `Retry-After` header and opens no throttle window.
    pub retry_after: Option<String>,
    /// Every n-th Graph request answers 503 without `Retry-After`.
    pub server_error_every: Option<u32>,
    /// The next n alerts_v2 answers (list or get) are cut in half: status 200, a consistent
    /// `Content-Length`, but only the first half of the JSON.
    pub truncate_next: u32,
    /// The next n alerts_v2 list answers update the first alert of their page right after the
    /// page is built, so the following `$skip` page shifts by one.
    pub update_during_listing: u32,
    /// If set, every `@odata.nextLink` uses this base URL (scheme, host and port) instead of the
    /// simulator's own, keeping the path and query.
    pub next_link_base: Option<String>,
    /// Every Graph answer of the tenant is delayed this long.
    pub delay: Option<Duration>,
    /// Alerts (by id) that listings leave out until the given time: late-indexed items. A get
    /// by id still finds them.
    pub hide_until: Vec<(String, SystemTime)>,
    /// Threat-submission lists answer 400 to any `$filter`, as a tenant where Microsoft does not
    /// support filtering them on `createdDateTime` would.
    pub refuse_submission_filter: bool,
    /// Threat-submission lists drop any `$filter` and list everything (with `@odata.count` of
    /// everything), as Graph does with a filter on a property it does not filter by: no error.
    pub ignore_submission_filter: bool,
    /// The next n threat-submission requests that carry a `$skiptoken` answer 400, as Graph does
    /// to a skiptoken that expired during a walk. Requests without one are served.
    pub stale_skiptoken_next: u32,
    /// While true, every incidents request with `$expand=alerts` answers 500 (Graph's error
    /// body), as large tenants saw (API.md §4); the same request without it succeeds.
    pub expand_fails: bool,
    /// alerts_v2 listings send no `@odata.nextLink` even when more items match (`@odata.count`
    /// still says how many), as elastic observed on real tenants; only `$skip` reads further.
    pub alerts_without_next_link: bool,
}

/// What the fault gate decided for one Graph request.
pub(crate) enum Gate {
    Pass,
    /// Answer 429, with this `Retry-After` header value if any.
    Throttle(Option<String>),
    /// Answer 503.
    ServerError,
}

#[derive(Default)]
pub(crate) struct FaultState {
    pub faults: Faults,
    requests: u64,
    throttled_until: Option<Instant>,
    truncate_left: u32,
    update_left: u32,
    stale_skiptoken_left: u32,
}

/// Seconds to wait for a `Retry-After` value: decimal seconds or an HTTP-date.
fn retry_after_secs(v: &str) -> Option<f64> {
    if let Ok(s) = v.trim().parse::<f64>() {
        return (s.is_finite() && s > 0.0).then_some(s);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    at.duration_since(SystemTime::now())
        .ok()
        .map(|d| d.as_secs_f64())
}

impl FaultState {
    fn new(faults: Faults) -> Self {
        FaultState {
            truncate_left: faults.truncate_next,
            update_left: faults.update_during_listing,
            stale_skiptoken_left: faults.stale_skiptoken_next,
            faults,
            ..Default::default()
        }
    }

    /// Counts a Graph request and decides its fate. The bool says whether it arrived while a
    /// `Retry-After` this tenant was given was still running.
    pub fn on_request(&mut self, now: Instant) -> (bool, Gate) {
        self.requests += 1;
        if let Some(until) = self.throttled_until {
            if now < until {
                // Microsoft keeps refusing a client that does not wait; tell it what is left.
                let left = until - now;
                return (
                    true,
                    Gate::Throttle(Some(format!("{:.3}", left.as_secs_f64()))),
                );
            }
            self.throttled_until = None;
        }
        let hit = |every: Option<u32>| {
            every.is_some_and(|n| n > 0 && self.requests.is_multiple_of(u64::from(n)))
        };
        if hit(self.faults.throttle_every) {
            let ra = self.faults.retry_after.clone();
            if let Some(secs) = ra.as_deref().and_then(retry_after_secs) {
                self.throttled_until = Some(now + Duration::from_secs_f64(secs.min(86_400.0)));
            }
            return (false, Gate::Throttle(ra));
        }
        if hit(self.faults.server_error_every) {
            return (false, Gate::ServerError);
        }
        (false, Gate::Pass)
    }

    /// Whether a `Retry-After` this tenant was given is still running.
    pub fn in_throttle_window(&self, now: Instant) -> bool {
        self.throttled_until.is_some_and(|until| now < until)
    }

    /// Whether this answer is to be truncated (consumes one).
    pub fn take_truncate(&mut self) -> bool {
        let t = self.truncate_left > 0;
        self.truncate_left = self.truncate_left.saturating_sub(1);
        t
    }

    /// Whether this skiptoken is to be answered as expired (consumes one).
    pub fn take_stale_skiptoken(&mut self) -> bool {
        let t = self.stale_skiptoken_left > 0;
        self.stale_skiptoken_left = self.stale_skiptoken_left.saturating_sub(1);
        t
    }

    /// Whether this listing is to update its first item (consumes one).
    pub fn take_update(&mut self) -> bool {
        let t = self.update_left > 0;
        self.update_left = self.update_left.saturating_sub(1);
        t
    }
}

impl Simulator {
    /// Replaces a tenant's faults. Counters (the n in "every n-th") and any running throttle
    /// window restart, so a test that switches faults off gets clean answers at once.
    pub fn set_faults(&self, tenant_id: &str, f: Faults) {
        lock(&self.inner.faults).insert(tenant_key(tenant_id), FaultState::new(f));
    }

    /// Sets how many `/security` requests one app may make in one tenant per sliding minute
    /// (default 150, Graph's documented budget, API.md §2); the next answers 429 with
    /// `Retry-After` in whole seconds.
    pub fn set_graph_rate_limit(&self, per_minute: usize) {
        self.inner
            .graph_per_minute
            .store(per_minute.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many `/security` requests were answered 429 for being over the Graph budget (all
    /// tenants and apps together). A client that keeps to the budget keeps this at 0.
    pub fn graph_over_budget(&self) -> usize {
        self.inner
            .graph_over_budget
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many Graph or Cloud Apps requests arrived while a `Retry-After` their tenant was given
    /// (by that API) was still running (all tenants together). A well-behaved client keeps this
    /// at 0.
    pub fn throttle_violations(&self) -> usize {
        self.inner
            .throttle_violations
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_is_throttled_and_early_returns_count() {
        let mut s = FaultState::new(Faults {
            throttle_every: Some(2),
            retry_after: Some("10".into()),
            ..Default::default()
        });
        let t0 = Instant::now();
        assert!(matches!(s.on_request(t0), (false, Gate::Pass)));
        assert!(matches!(s.on_request(t0), (false, Gate::Throttle(Some(ref v))) if v == "10"));
        assert!(matches!(
            s.on_request(t0 + Duration::from_secs(5)),
            (true, Gate::Throttle(_))
        ));
        // After the window the count goes on: request 4 is throttled again.
        assert!(matches!(
            s.on_request(t0 + Duration::from_secs(11)),
            (false, Gate::Throttle(_))
        ));
    }

    #[test]
    fn retry_after_parses_decimals_and_dates() {
        assert_eq!(retry_after_secs("2.128"), Some(2.128));
        assert_eq!(retry_after_secs("0"), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        assert!(retry_after_secs(&later).is_some_and(|s| s > 25.0 && s <= 30.0));
    }
}
