//! Defender alerts: Graph `/security/alerts_v2`, covered by `lastUpdateDateTime`. Only
//! `serviceSource` is filtered by Microsoft; every other filter applies after storing (rule 7).

use super::coverage::GraphListing;
/// Largest `$top` alerts_v2 honours (it clamps above).
pub const ALERTS_TOP: usize = 1000;

impl GraphListing {
    pub fn alerts() -> Self {
        Self {
            path: "/v1.0/security/alerts_v2",
            time_field: "lastUpdateDateTime",
            max_top: ALERTS_TOP,
            list: "",
            expand_alerts: false,
            cloud_apps: false,
        }
    }
}
