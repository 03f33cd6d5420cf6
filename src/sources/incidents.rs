//! Incidents: Graph `/security/incidents`, covered by `lastUpdateDateTime`, at most 50 a page;
//! `$expand=alerts` only when asked, and dropped for good after a 5xx (large tenants see them).

use super::coverage::GraphListing;
use super::Poller;
/// Incidents answer 400 above this `$top` (API.md §4).
pub const INCIDENTS_TOP: usize = 50;

impl GraphListing {
    pub fn incidents(expand_alerts: bool) -> Self {
        Self {
            path: "/v1.0/security/incidents",
            time_field: "lastUpdateDateTime",
            max_top: INCIDENTS_TOP,
            list: "",
            expand_alerts,
            cloud_apps: false,
        }
    }
}

impl Poller {
    pub(super) fn expand(&self, listing: &GraphListing) -> bool {
        listing.expand_alerts
            && !self
                .expand_failed
                .load(std::sync::atomic::Ordering::Relaxed)
    }
}
