//! Threat submissions: Graph beta `/security/threatSubmission/{emailThreats,urlThreats,fileThreats}`,
//! one coverage point per list on `createdDateTime`, and the fallback when Microsoft refuses that
//! filter (the filter is UNCONFIRMED for submissions, API.md §5).

use super::coverage::{GraphListing, Pass, Req};
use super::{PollError, PollOutcome, Poller};
use crate::store::CursorKey;
/// Pages a submission list is read to when it must be listed without a filter.
pub(super) const FALLBACK_PAGES: usize = 10;
/// The submission lists and their names in `kinds`.
pub const SUBMISSION_LISTS: [(&str, &str); 3] = [
    ("email", "emailThreats"),
    ("url", "urlThreats"),
    ("file", "fileThreats"),
];

impl GraphListing {
    /// One threat-submission list (beta, global cloud only), covered by `createdDateTime`.
    pub fn submissions(list: &'static str) -> Self {
        let path = match list {
            "urlThreats" => "/beta/security/threatSubmission/urlThreats",
            "fileThreats" => "/beta/security/threatSubmission/fileThreats",
            _ => "/beta/security/threatSubmission/emailThreats",
        };
        Self {
            path,
            time_field: "createdDateTime",
            max_top: 100,
            list,
            expand_alerts: false,
            cloud_apps: false,
        }
    }
}

impl Poller {
    pub(super) fn refused(&self, listing: &GraphListing) -> bool {
        self.filter_refused
            .lock()
            .map(|l| l.contains(&listing.list))
            .unwrap_or(false)
    }

    /// A submission list whose time filter Microsoft refuses is listed newest first, without a
    /// filter, up to `FALLBACK_PAGES` pages each poll; state numbers keep it from resending.
    pub(super) async fn poll_without_filter(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        let mut next = Some(format!(
            "{}{}?$top={}",
            self.base(),
            listing.path,
            listing.max_top
        ));
        let mut pages = 0;
        while let Some(url) = next.take() {
            let page = self
                .fetch(listing, &|_| Req::Get(url.clone()), false, outcome)
                .await?;
            next = page.next_link.clone();
            self.commit(key, page, false, Pass::Reconcile, None, outcome)
                .await?;
            pages += 1;
            if pages >= FALLBACK_PAGES {
                break;
            }
        }
        Ok(())
    }
}
