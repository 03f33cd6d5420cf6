//! Defender for Cloud Apps alerts: `POST {portal}/api/v1/alerts/` with filters in the body,
//! `skip` paging inside a slice, epoch-ms times; one coverage point on `date` and a second on
//! `resolutionDate` that catches resolutions.

use super::coverage::{Deferred, GraphListing, Pass, Req};
use super::{PollError, PollOutcome, Poller};
use crate::store::CursorKey;
/// Cloud Apps answers at most this many alerts a request (API.md §8).
pub const CLOUD_APPS_LIMIT: usize = 100;

impl GraphListing {
    /// Defender for Cloud Apps alerts covered by `field`: `date` (creation, never changes) or
    /// `resolutionDate` (the second coverage point that catches resolutions).
    pub fn cloud_apps(field: &'static str) -> Self {
        Self {
            path: "/api/v1/alerts/",
            time_field: field,
            max_top: CLOUD_APPS_LIMIT,
            list: field,
            expand_alerts: false,
            cloud_apps: true,
        }
    }
}

impl GraphListing {
    /// The body that lists slice [a, b) (seconds) of a Cloud Apps listing: its time field
    /// within `gte A, lte B − 1 ms`, oldest first. `check` probes with exactly this.
    pub fn slice_body(&self, a: i64, b: i64, skip: usize, limit: usize) -> serde_json::Value {
        serde_json::json!({
            "filters": { self.time_field: { "gte": a * 1000, "lte": b * 1000 - 1 } },
            "sortField": "date",
            "sortDirection": "asc",
            "skip": skip,
            "limit": limit,
        })
    }
}

impl Poller {
    /// Cloud Apps: `filters.{field} = {gte: A, lte: B − 1 ms}` ascending by date, `skip` while
    /// `hasNext`; C := B after the slice's last page.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scan_cloud_apps(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        a: i64,
        b: i64,
        t0: i64,
        pass: Pass,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        let url = format!("{}{}", self.base(), listing.path);
        let historical = b <= t0;
        let mut skip = 0usize;
        let mut pending = None;
        loop {
            let body = |limit: usize| Req::Post(url.clone(), listing.slice_body(a, b, skip, limit));
            let (page, counts) = self
                .overlap(
                    key,
                    pass,
                    pending.take(),
                    self.fetch(listing, &body, false, outcome),
                )
                .await?;
            outcome.counts.add(counts);
            let received = page.received;
            let last = !page.has_next || received == 0;
            pending = Some(Deferred::new(page, historical, last.then_some(b)));
            if last {
                return self.flush(key, pass, pending, outcome).await;
            }
            skip += received;
        }
    }
}
