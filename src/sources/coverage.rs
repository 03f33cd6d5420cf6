//! The coverage scan of time-listed collections (design §4 rules 0–5): Graph's alerts_v2,
//! incidents and submission lists, and Cloud Apps alerts. A poll scans slices [A, B) until the
//! coverage point C reaches Microsoft's clock minus settle; a slice that does not fit one page is
//! split, not paged, down to one 100-ns tick (Graph refuses `$skip` past 500, so nextLinks are
//! walked only for a single tick); C moves only in the transaction that stores a completed
//! slice; a reconciliation pass re-lists [C − window, C) without moving C.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::page::{Overflowing, PageReader};
use super::submissions::{FALLBACK_PAGES, SUBMISSION_LISTS};
use super::{PollError, PollOutcome, Poller, BACKPRESSURE_EVERY};
use crate::config::{SourceSettings, StartFrom};
use crate::microsoft::{BodyChunk, MsError};
use crate::normalize::{self, KnownVersions, Prepared, SourceKind};
use crate::store::{Cursor, CursorKey, IngestCounts, QuarantineItem, Store, VersionWindow};
use crate::time::{format_filter_bound, format_seconds, format_ticks, TICKS_PER_SECOND};
/// How often a one-tick slice that overflows a page is walked before giving up for this poll.
pub(super) const MAX_WALKS: usize = 5;
/// A body that is not complete JSON is asked for again this many times within one poll.
pub(super) const BAD_BODY_RETRIES: usize = 3;
/// At most this many stored versions (~3 MB) are held at once by a reconciliation pass: a
/// window of more is reconciled in parts.
const KNOWN_VERSIONS_MAX: usize = 100_000;
/// A pass's window is cut at the edges of at most this many buckets of stored versions (a
/// minute each for the default day).
const VERSION_BUCKETS_MAX: i64 = 4096;
/// Microsoft's security API refuses `$skip` above this (security-error-codes, "Constraints").
const MAX_SKIP: usize = 500;

/// A Graph collection listed by a time field, e.g. alerts_v2 by `lastUpdateDateTime`.
#[derive(Debug, Clone)]
pub struct GraphListing {
    /// Path below the Graph base, e.g. `/v1.0/security/alerts_v2`.
    pub path: &'static str,
    pub time_field: &'static str,
    pub max_top: usize,
    /// The list's name within its source (its own coverage point); empty for one-list sources.
    pub list: &'static str,
    /// Incidents only: ask for `$expand=alerts`.
    pub expand_alerts: bool,
    /// A Defender for Cloud Apps listing: POSTed filters, `skip` paging, epoch-ms times.
    pub cloud_apps: bool,
}

impl GraphListing {
    /// The listings a source polls, per its settings.
    pub fn for_source(s: &SourceSettings) -> Vec<GraphListing> {
        match s.kind {
            SourceKind::Alerts => vec![Self::alerts()],
            SourceKind::Incidents => vec![Self::incidents(s.expand_alerts)],
            SourceKind::Submissions => SUBMISSION_LISTS
                .iter()
                .filter(|(kind, _)| s.kinds.iter().any(|k| k == kind))
                .map(|(_, list)| Self::submissions(list))
                .collect(),
            SourceKind::CloudApps => {
                vec![Self::cloud_apps("date"), Self::cloud_apps("resolutionDate")]
            }
            // The mailbox is read by delta query, not listed by time.
            SourceKind::PhishingReports => Vec::new(),
        }
    }
}

impl GraphListing {
    /// The `$filter` that lists slice [a, b) (seconds) of this Graph listing, with the source's
    /// `service_sources` (already in Microsoft's casing). `check` probes with exactly this, so a
    /// filter Graph refuses shows there rather than at the first poll.
    pub fn slice_filter(&self, settings: &SourceSettings, a: i64, b: i64) -> String {
        self.tick_filter(settings, a * TICKS_PER_SECOND, b * TICKS_PER_SECOND)
    }

    /// [`Self::slice_filter`] for bounds in ticks: a part of a second has fractional literals.
    pub fn tick_filter(&self, settings: &SourceSettings, a: i64, b: i64) -> String {
        let field = self.time_field;
        let filter = format!(
            "{field} ge {} and {field} lt {}",
            format_filter_bound(a),
            format_filter_bound(b)
        );
        let sources = &settings.filters.service_sources;
        if sources.is_empty() || settings.kind != SourceKind::Alerts {
            return filter;
        }
        let any = sources
            .iter()
            .map(|s| format!("serviceSource eq '{}'", s.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" or ");
        format!("({any}) and {filter}")
    }
}

/// A slice's answer, parsed off the async threads.
pub(super) struct ParsedPage {
    pub(super) items: Vec<Prepared>,
    pub(super) quarantine: Vec<QuarantineItem>,
    pub(super) next_link: Option<String>,
    pub(super) count: Option<i64>,
    pub(super) received: usize,
    pub(super) ids: Vec<String>,
    pub(super) has_next: bool,
    /// Items not prepared because the store holds their version (reconciliation): counted
    /// as the store would have counted them.
    pub(super) unchanged: u64,
    pub(super) stale: u64,
    /// Submissions only: each item's `createdDateTime` (ticks), to check that the page answers
    /// the slice asked for (a filter Graph ignores returns everything, no error).
    pub(super) created: Vec<i64>,
}

/// Chunks of a listing page's body that may wait for its reader. One: each chunk keeps
/// hyper's read buffer it was cut from (up to a few hundred KB) alive until it is read, so
/// four waiting chunks held ~2 MB (heaptrack, issue 12), and one is enough for the network to
/// go on while the reader parses.
const PAGE_CHUNKS_QUEUED: usize = 1;

/// Reads the page whose body arrives through `chunks`; a body restarted by a retry is read
/// afresh. `Err` says why the answer is not a whole page.
fn read_page_chunks(
    mut chunks: tokio::sync::mpsc::Receiver<BodyChunk>,
    kind: SourceKind,
    list: &str,
    overflowing: Overflowing,
    known: Option<&KnownVersions>,
) -> Result<ParsedPage, String> {
    let mut page = None;
    while let Some(chunk) = chunks.blocking_recv() {
        match chunk {
            BodyChunk::Start => page = Some(PageReader::new(kind, list, overflowing, known)),
            // Refused: returning closes the channel, and the rest of the body is not read.
            BodyChunk::Bytes(bytes) => match page.as_mut() {
                Some(page) => page.feed(&bytes)?,
                None => return Err("the answer's body came without its start".into()),
            },
        }
    }
    page.ok_or_else(|| "the answer has no body".to_string())?
        .finish()
}

/// One listed item, parsed by its source's (and, for submissions, its list's) rules.
pub(super) fn prepare_item(
    kind: SourceKind,
    list: &str,
    raw: &RawValue,
) -> Result<Prepared, normalize::Unusable> {
    match kind {
        SourceKind::Submissions if !list.is_empty() => normalize::prepare_submission(list, raw),
        _ => normalize::prepare(kind, raw),
    }
}

impl ParsedPage {
    pub(super) fn empty() -> Self {
        ParsedPage {
            items: Vec::new(),
            quarantine: Vec::new(),
            next_link: None,
            count: None,
            received: 0,
            ids: Vec::new(),
            has_next: false,
            unchanged: 0,
            stale: 0,
            created: Vec::new(),
        }
    }

    /// The first item created outside [a, b) (ticks), the slice this page was asked for.
    pub(super) fn outside(&self, a: i64, b: i64) -> Option<i64> {
        self.created.iter().copied().find(|t| *t < a || *t >= b)
    }

    /// More items match than this page holds: a nextLink says so, or (when Graph sends none, as
    /// alerts_v2 has been seen to do) `@odata.count`.
    pub(super) fn overflows(&self) -> bool {
        self.next_link.is_some() || self.count.is_some_and(|n| n > self.received as i64)
    }
}

/// A page read but not yet committed: it commits while the next request runs (`overlap`).
pub(super) struct Deferred {
    pub(super) page: ParsedPage,
    pub(super) historical: bool,
    pub(super) advance_to: Option<i64>,
}

impl Deferred {
    pub(super) fn new(page: ParsedPage, historical: bool, advance_to: Option<i64>) -> Self {
        Self {
            page,
            historical,
            advance_to,
        }
    }
}

/// One request of a listing: Graph lists by GET, Cloud Apps by POSTed filters.
pub(super) enum Req {
    Get(String),
    Post(String, serde_json::Value),
}

/// Whether a scan moves the coverage point (live) or only looks again (reconciliation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Live,
    Reconcile,
}

impl Poller {
    pub(super) async fn poll_list(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        outcome: &mut PollOutcome,
    ) -> Result<i64, PollError> {
        if self.refused(listing) {
            self.poll_without_filter(listing, key, outcome).await?;
            return Ok(self.client.clock().now_secs().unwrap_or(0));
        }
        let cursor = self.cursor(listing, key, outcome).await?;
        let mut c = cursor.coverage;
        self.status.set_coverage(c);
        let settle = self.settings.settle.as_secs() as i64;
        let p = match self.client.clock().now_secs() {
            Some(p) => p,
            None => self.probe_date(listing, outcome).await?,
        };
        let target = p - settle;
        let mut a = c - self.settings.overlap.as_secs() as i64;
        let mut last_check = Instant::now();
        while c < target {
            let mut b = (a + self.settings.max_slice.as_secs() as i64).min(target);
            if c < cursor.t0 {
                b = b.min(cursor.t0);
            }
            let b = b.max(c);
            if b <= a {
                break;
            }
            match self
                .scan(listing, key, a, b, cursor.t0, Pass::Live, outcome)
                .await
            {
                Err(PollError::FilterIgnored { slice, created })
                    if self.settings.kind == SourceKind::Submissions =>
                {
                    let why = format!("Graph ignored the createdDateTime filter on {}: an item created at {} came back for the slice [{}, {}); listing its newest {} items each poll instead", listing.list, format_ticks(created), format_filter_bound(slice.0), format_filter_bound(slice.1), FALLBACK_PAGES * listing.max_top);
                    self.fall_back(listing, key, &why, outcome).await?;
                    return Ok(c);
                }
                Err(PollError::Microsoft(e @ MsError::Status { status: 400, .. }))
                    if self.settings.kind == SourceKind::Submissions =>
                {
                    // A 400 during a scan may be the filter (UNCONFIRMED for submissions, API.md
                    // §5) or something else, such as a skiptoken that expired mid-walk. Only a
                    // fresh request for the slice, with nothing but the filter, tells them apart.
                    if !self.filter_refused_now(listing, a, b, outcome).await? {
                        tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), list = listing.list, error = %e, "400 during a scan, but the filter is accepted: the slice is read again next poll");
                        return Err(e.into());
                    }
                    let why = format!("Microsoft refused the createdDateTime filter on {}: listing its newest {} items each poll instead", listing.list, FALLBACK_PAGES * listing.max_top);
                    self.fall_back(listing, key, &why, outcome).await?;
                    return Ok(c);
                }
                r => r?,
            }
            c = c.max(b);
            self.status.set_coverage(c);
            a = b;
            // A long backfill checks between slices, not only once per poll; every few seconds
            // is enough for a coarse guard, and counting a large queue is not free.
            if last_check.elapsed() >= BACKPRESSURE_EVERY {
                self.check_backpressure().await?;
                last_check = Instant::now();
            }
        }
        Ok(c)
    }

    /// Switches a submission list to the unfiltered listing for good, saying why in the logs
    /// and `/status`, and runs it once now.
    async fn fall_back(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        why: &str,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        if let Ok(mut l) = self.filter_refused.lock() {
            l.push(listing.list);
        }
        tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), list = listing.list, "{why}");
        self.status.note(why);
        self.poll_without_filter(listing, key, outcome).await
    }

    /// Asks for slice [a, b) afresh (first page, one item): true if Microsoft refuses it with
    /// 400, which then can only be the filter.
    async fn filter_refused_now(
        &self,
        listing: &GraphListing,
        a: i64,
        b: i64,
        outcome: &mut PollOutcome,
    ) -> Result<bool, PollError> {
        let url = self.slice_url(listing, a * TICKS_PER_SECOND, b * TICKS_PER_SECOND, 1);
        let sent = self.client.get(&url, None).await;
        outcome.requests += 1;
        match sent {
            Ok(_) => Ok(false),
            Err(MsError::Status { status: 400, .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Submissions only: a page holding an item created outside the slice it was asked for
    /// (ticks) means Graph did not apply the filter.
    fn check_slice(
        &self,
        listing: &GraphListing,
        page: &ParsedPage,
        a: i64,
        b: i64,
    ) -> Result<(), PollError> {
        if self.settings.kind != SourceKind::Submissions || listing.cloud_apps {
            return Ok(());
        }
        match page.outside(a, b) {
            Some(created) => Err(PollError::FilterIgnored {
                slice: (a, b),
                created,
            }),
            None => Ok(()),
        }
    }

    /// Re-lists [C − reconcile_window, C) of every list without moving C; returns the new
    /// versions found (late arrivals, or for submissions the changes a recheck exists to catch).
    pub async fn reconcile_once(&mut self) -> Result<u64, PollError> {
        self.last_reconcile = Some(Instant::now());
        let mut outcome = PollOutcome::default();
        let listed = self.reconcile_lists(&mut outcome).await;
        // The pass's stored versions go with it, however it ended.
        self.known_versions = None;
        listed?;
        let found = outcome.counts.new + outcome.counts.updated;
        if !matches!(
            self.settings.kind,
            SourceKind::Submissions | SourceKind::CloudApps
        ) {
            self.status.late_arrivals(found);
            crate::metrics::late_arrivals(&self.tenant.name, self.settings.kind.as_str(), found);
        }
        Ok(found)
    }

    /// Re-lists each list's window, [C − `reconcile_window`, C).
    async fn reconcile_lists(&mut self, outcome: &mut PollOutcome) -> Result<(), PollError> {
        for (listing, key) in &self.lists {
            // Cloud Apps' recheck re-lists by creation date; resolutions have their own cursor.
            // A list polled without a filter is re-listed whole each poll already.
            if listing.time_field == "resolutionDate" || self.refused(listing) {
                continue;
            }
            let Some(cursor) = self.store.load_cursor(key).await? else {
                continue;
            };
            let end = cursor.coverage;
            let start = end - self.settings.reconcile_window.as_secs() as i64;
            'pass: for part in self.version_parts(start, end).await {
                // A part's versions go before the next part's are read.
                self.known_versions = None;
                if part.with_versions {
                    self.known_versions = self.stored_versions(part.from, part.to).await;
                }
                let mut a = part.from;
                while a < part.to {
                    let b = (a + self.settings.max_slice.as_secs() as i64).min(part.to);
                    match self
                        .scan(listing, key, a, b, cursor.t0, Pass::Reconcile, outcome)
                        .await
                    {
                        Err(PollError::FilterIgnored { slice, created }) => {
                            let why = format!("Graph ignored the createdDateTime filter on {} (reconciliation): an item created at {} came back for the slice [{}, {}); listing its newest {} items each poll instead", listing.list, format_ticks(created), format_filter_bound(slice.0), format_filter_bound(slice.1), FALLBACK_PAGES * listing.max_top);
                            self.fall_back(listing, key, &why, outcome).await?;
                            break 'pass;
                        }
                        r => r?,
                    }
                    a = b;
                }
            }
        }
        Ok(())
    }

    /// The parts [start, end) is reconciled in (seconds, Microsoft's clock), each holding the
    /// versions of at most `KNOWN_VERSIONS_MAX` stored alerts. A day of a large tenant's alerts
    /// is more than that, and in one part every item of the pass was prepared again (issue 12).
    /// One part, without versions for sources whose version is not a time, or with them all
    /// when the store cannot count them.
    async fn version_parts(&self, start: i64, end: i64) -> Vec<VersionPart> {
        let whole = vec![VersionPart {
            from: start,
            to: end,
            with_versions: self.versions_are_times(),
        }];
        if !self.versions_are_times() || end <= start {
            return whole;
        }
        // `end > start`: the window is positive.
        let bucket = ((end - start + VERSION_BUCKETS_MAX - 1) / VERSION_BUCKETS_MAX).max(60);
        let counts = self.store.stored_version_counts(
            &self.tenant.name,
            self.settings.kind,
            version_window(start, end),
            bucket.saturating_mul(TICKS_PER_SECOND),
        );
        match counts.await {
            Ok(counts) => plan_version_parts(&counts, start, end, bucket, KNOWN_VERSIONS_MAX),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), error = %e, "cannot count the stored versions; this reconciliation reads them in one part");
                whole
            }
        }
    }

    /// Alerts and incidents are versioned by their update time; other sources are not.
    fn versions_are_times(&self) -> bool {
        matches!(
            self.settings.kind,
            SourceKind::Alerts | SourceKind::Incidents
        )
    }

    /// The versions the store holds of this Graph source's items updated in [from, to)
    /// (seconds, Microsoft's clock), for a reconciliation pass to skip preparing them. `None`
    /// (prepare everything, as before) for sources whose version is not a time, when the part
    /// holds more than `KNOWN_VERSIONS_MAX` alerts, or when the store cannot say.
    async fn stored_versions(&self, from: i64, to: i64) -> Option<Arc<normalize::KnownVersions>> {
        if !self.versions_are_times() {
            return None;
        }
        let read = self.store.stored_versions(
            &self.tenant.name,
            self.settings.kind,
            version_window(from, to),
            KNOWN_VERSIONS_MAX,
        );
        match read.await {
            Ok(known) => known.map(Arc::new),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), error = %e, "cannot read the stored versions; this reconciliation prepares every item it lists");
                None
            }
        }
    }

    /// The stored cursor, or the first run's (rule 0), stored before any item.
    pub(super) async fn cursor(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        outcome: &mut PollOutcome,
    ) -> Result<Cursor, PollError> {
        if let Some(c) = self.store.load_cursor(key).await? {
            return Ok(c);
        }
        let date = self.probe_date(listing, outcome).await?;
        let t0 = date - self.settings.settle.as_secs() as i64;
        let coverage = match self.start {
            StartFrom::Lookback => t0 - self.settings.lookback.as_secs() as i64,
            StartFrom::Now => t0,
        };
        let c = self.store.init_cursor(key, Cursor { coverage, t0 }).await?;
        // Another replica may have stored its own first: then this run did not start it.
        if (c.coverage, c.t0) == (coverage, t0) {
            self.cursors_started_here
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), list = listing.list, t0 = %format_seconds(c.t0), coverage = %format_seconds(c.coverage), "first run: coverage starts here");
        Ok(c)
    }

    /// One small request whose only purpose is Microsoft's `Date`.
    pub(super) async fn probe_date(
        &self,
        listing: &GraphListing,
        outcome: &mut PollOutcome,
    ) -> Result<i64, PollError> {
        let resp = if listing.cloud_apps {
            let url = format!("{}{}", self.base(), listing.path);
            let body =
                serde_json::json!({"sortField": "date", "sortDirection": "desc", "limit": 1});
            self.client.post_json(&url, &body, None).await?
        } else {
            let url = format!("{}{}?$top=1", self.base(), listing.path);
            self.client.get(&url, None).await?
        };
        outcome.requests += 1;
        // An API that sends no Date (Cloud Apps' behaviour is undocumented) borrows the
        // tenant's Microsoft clock from the other APIs.
        resp.date
            .or_else(|| self.client.clock().now_secs())
            .ok_or_else(|| {
                PollError::Invalid(
                    "Microsoft's answer had no Date header: cannot bound coverage".into(),
                )
            })
    }

    pub(super) fn base(&self) -> String {
        self.client
            .base()
            .as_str()
            .trim_end_matches('/')
            .to_string()
    }

    /// The first page of slice [a, b) in ticks.
    pub(super) fn slice_url(&self, listing: &GraphListing, a: i64, b: i64, top: usize) -> String {
        let filter = listing.tick_filter(&self.settings, a, b);
        let mut url = match url::Url::parse(&format!("{}{}", self.base(), listing.path)) {
            Ok(u) => u,
            Err(_) => return format!("{}{}", self.base(), listing.path),
        };
        url.query_pairs_mut()
            .append_pair("$filter", &filter)
            .append_pair("$top", &top.to_string())
            .append_pair("$count", "true");
        if self.expand(listing) {
            url.query_pairs_mut().append_pair("$expand", "alerts");
        }
        url.to_string()
    }

    /// Fetches and parses one page, re-asking when the body is cut short or too large (rule 4).
    pub(super) async fn fetch(
        &self,
        listing: &GraphListing,
        request_for_top: &(dyn Fn(usize) -> Req + Sync),
        split_if_overflowing: bool,
        outcome: &mut PollOutcome,
    ) -> Result<ParsedPage, PollError> {
        let mut top = listing.max_top;
        let mut limit: Option<usize> = None;
        let mut bad_bodies = 0;
        loop {
            let req = request_for_top(top);
            let permit = self
                .pages
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| PollError::Invalid("shutting down".into()))?;
            let (url, post) = match &req {
                Req::Get(u) => (u.as_str(), None),
                Req::Post(u, body) => (u.as_str(), Some(body)),
            };
            // The page is read as it arrives, on a blocking thread: the body is never held
            // whole.
            let (to_reader, chunks) = tokio::sync::mpsc::channel(PAGE_CHUNKS_QUEUED);
            let reader = tokio::task::spawn_blocking({
                let kind = self.settings.kind;
                let list = listing.list;
                let overflowing = if split_if_overflowing {
                    Overflowing::Skim { top }
                } else {
                    Overflowing::Prepare
                };
                let known = self.known_versions.clone();
                move || read_page_chunks(chunks, kind, list, overflowing, known.as_deref())
            });
            let sent = self
                .client
                .send_streamed(url, post, limit, &to_reader)
                .await;
            drop(to_reader);
            let parsed = reader
                .await
                .map_err(|e| PollError::Invalid(format!("page parser failed: {e}")));
            match sent {
                // Its status and headers were read; its body went to the reader.
                Ok(_) => {}
                Err(e) if e.status().is_some_and(|s| s >= 500) && self.expand(listing) => {
                    // Large tenants see persistent 500s with $expand=alerts (API.md §4).
                    self.expand_failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let why = format!(
                        "$expand=alerts failed ({e}); listing incidents without it from now on"
                    );
                    tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), "{why}");
                    self.status.note(&why);
                    outcome.requests += 1;
                    continue;
                }
                Err(MsError::TooLarge { limit: l, .. }) => {
                    outcome.requests += 1;
                    if top > 1 {
                        top = (top / 2).max(1);
                    } else if limit.is_none() {
                        limit = Some(l.saturating_mul(10));
                    } else {
                        return Err(PollError::Invalid(format!(
                            "a single item is larger than {l} bytes; the source stops at this slice ({url})"
                        )));
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            outcome.requests += 1;
            let kind = self.settings.kind;
            let parsed = parsed?;
            drop(permit);
            match parsed {
                Ok(p) => return Ok(p),
                Err(why) => {
                    bad_bodies += 1;
                    tracing::warn!(tenant = %self.tenant.name, source = kind.as_str(), error = %why, attempt = bad_bodies, "bad page from Microsoft; reading it again");
                    if bad_bodies >= BAD_BODY_RETRIES {
                        return Err(PollError::Invalid(why));
                    }
                }
            }
        }
    }

    /// Scans [a, b): commit when it fits one page, else split it (rule 3).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scan(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        a: i64,
        b: i64,
        t0: i64,
        pass: Pass,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        if listing.cloud_apps {
            return self
                .scan_cloud_apps(listing, key, a, b, t0, pass, outcome)
                .await;
        }
        // A stack keeps the parts in order without recursion. Bounds are ticks from here on.
        let (t0, mut todo) = (
            t0 * TICKS_PER_SECOND,
            vec![(a * TICKS_PER_SECOND, b * TICKS_PER_SECOND)],
        );
        let mut pending = None;
        while let Some((a, b)) = todo.pop() {
            let historical = b <= t0;
            let (page, counts) = self
                .overlap(
                    key,
                    pass,
                    pending.take(),
                    self.fetch(
                        listing,
                        &|top| Req::Get(self.slice_url(listing, a, b, top)),
                        b - a > 1,
                        outcome,
                    ),
                )
                .await?;
            outcome.counts.add(counts);
            self.check_slice(listing, &page, a, b)?;
            // C is whole seconds: a part that ends inside a second moves it to that second's
            // start, so the rest of the second is listed again next poll (the store dedupes).
            let covered = b.div_euclid(TICKS_PER_SECOND);
            if !page.overflows() {
                pending = Some(Deferred::new(page, historical, Some(covered)));
                continue;
            }
            let (n, m) = (page.count.unwrap_or(0), page.received.max(1) as i64);
            if b - a <= 1 {
                let first = (page.ids.clone(), page.received);
                let next = self.next_page(listing, (a, b), &page, page.received)?;
                pending = Some(Deferred::new(page, historical, None));
                self.walk(
                    listing,
                    key,
                    (a, b),
                    first,
                    next,
                    historical,
                    pass,
                    &mut pending,
                    outcome,
                )
                .await?;
                continue;
            }
            // A skimmed page holds nothing to store: its parts list its items again.
            if !page.items.is_empty() || !page.quarantine.is_empty() {
                pending = Some(Deferred::new(page, historical, None));
            }
            let k = 2.max((n + m - 1) / m + 1);
            for part in split_slice(a, b, k).into_iter().rev() {
                todo.push(part);
            }
        }
        self.flush(key, pass, pending, outcome).await
    }

    /// The page after one that overflows a single tick: its nextLink, or, when Graph sent none
    /// but `@odata.count` says more match, the same filter at `$skip = offset`. Microsoft refuses
    /// `$skip` above 500, so a tick holding more than that cannot be read whole.
    fn next_page(
        &self,
        listing: &GraphListing,
        (a, b): (i64, i64),
        page: &ParsedPage,
        offset: usize,
    ) -> Result<Option<String>, PollError> {
        if page.next_link.is_some() {
            return Ok(page.next_link.clone());
        }
        if page.count.is_none_or(|n| n <= offset as i64) || page.received == 0 {
            return Ok(None);
        }
        if offset > MAX_SKIP {
            return Err(PollError::Invalid(format!(
                "more than {MAX_SKIP} items share the 100-ns tick {} and Microsoft sent no nextLink; Graph refuses $skip above {MAX_SKIP}, so the tick is read again next poll",
                format_ticks(a)
            )));
        }
        let mut url = self.slice_url(listing, a, b, listing.max_top);
        url.push_str(&format!("&$skip={offset}"));
        Ok(Some(url))
    }

    /// Runs `next` (the following request) while the `pending` page commits. Commits stay in
    /// page order, and a failed commit fails the scan before any later page is committed, so
    /// the coverage point never passes a page that is not stored.
    pub(super) async fn overlap<T>(
        &self,
        key: &CursorKey,
        pass: Pass,
        pending: Option<Deferred>,
        next: impl std::future::Future<Output = Result<T, PollError>>,
    ) -> Result<(T, IngestCounts), PollError> {
        let Some(d) = pending else {
            return Ok((next.await?, IngestCounts::default()));
        };
        let (committed, fetched) = tokio::join!(
            self.commit_page(key, d.page, d.historical, pass, d.advance_to),
            next
        );
        let counts = committed?;
        Ok((fetched?, counts))
    }

    /// Commits the last page of a scan.
    pub(super) async fn flush(
        &self,
        key: &CursorKey,
        pass: Pass,
        pending: Option<Deferred>,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        if let Some(d) = pending {
            let counts = self
                .commit_page(key, d.page, d.historical, pass, d.advance_to)
                .await?;
            outcome.counts.add(counts);
        }
        Ok(())
    }

    /// A one-tick slice that overflows a page: walk its pages, again until a walk adds no new id.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn walk(
        &self,
        listing: &GraphListing,
        key: &CursorKey,
        (a, b): (i64, i64),
        (first_ids, first_received): (Vec<String>, usize),
        first_next: Option<String>,
        historical: bool,
        pass: Pass,
        pending: &mut Option<Deferred>,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        let mut seen: HashSet<String> = first_ids.into_iter().collect();
        let mut next = first_next;
        let mut offset = first_received;
        for walk in 0..MAX_WALKS {
            let before = seen.len();
            // A walk after the first lists the slice again from its first page.
            let mut from_start = walk > 0;
            loop {
                let link = if std::mem::take(&mut from_start) {
                    offset = 0;
                    None
                } else {
                    match next.take() {
                        Some(link) => Some(link),
                        None => break,
                    }
                };
                let (page, counts) = self
                    .overlap(
                        key,
                        pass,
                        pending.take(),
                        self.fetch(
                            listing,
                            &|top| match &link {
                                Some(l) => Req::Get(l.clone()),
                                None => Req::Get(self.slice_url(listing, a, b, top)),
                            },
                            false,
                            outcome,
                        ),
                    )
                    .await?;
                outcome.counts.add(counts);
                self.check_slice(listing, &page, a, b)?;
                seen.extend(page.ids.iter().cloned());
                offset += page.received;
                next = self.next_page(listing, (a, b), &page, offset)?;
                *pending = Some(Deferred::new(page, historical, None));
            }
            if walk > 0 && seen.len() == before {
                // Commits stay in order: C moves only after the walk's pages are stored.
                let (_, counts) = self
                    .overlap(key, pass, pending.take(), async { Ok(()) })
                    .await?;
                outcome.counts.add(counts);
                let covered = b.div_euclid(TICKS_PER_SECOND);
                *pending = Some(Deferred::new(
                    ParsedPage::empty(),
                    historical,
                    Some(covered),
                ));
                return Ok(());
            }
        }
        Err(PollError::Invalid(format!(
            "the 100-ns tick at {} kept changing over {MAX_WALKS} walks; it is read again next poll",
            format_ticks(a)
        )))
    }
}

/// Cuts slice [a, b) (ticks) into about k parts: on whole seconds while it spans more than one,
/// then on ticks within a second (Graph takes fractional-second filter literals).
pub fn split_slice(a: i64, b: i64, k: i64) -> Vec<(i64, i64)> {
    let whole = |t: i64| t.rem_euclid(TICKS_PER_SECOND) == 0;
    if b - a > TICKS_PER_SECOND && whole(a) && whole(b) {
        let (sa, sb) = (a / TICKS_PER_SECOND, b / TICKS_PER_SECOND);
        return split_evenly(sa, sb, k)
            .into_iter()
            .map(|(x, y)| (x * TICKS_PER_SECOND, y * TICKS_PER_SECOND))
            .collect();
    }
    split_evenly(a, b, k)
}

/// Cuts [a, b) into k parts of whole units, the remainder spread over the first parts.
fn split_evenly(a: i64, b: i64, k: i64) -> Vec<(i64, i64)> {
    let total = b - a;
    let k = k.clamp(1, total.max(1));
    let (step, extra) = (total / k, total % k);
    let mut parts = Vec::with_capacity(k as usize);
    let mut start = a;
    for i in 0..k {
        let len = step + i64::from(i < extra);
        parts.push((start, start + len));
        start += len;
    }
    parts
}

/// A part of a reconciliation pass: [from, to) in seconds, and whether it reads the stored
/// versions of its alerts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VersionPart {
    from: i64,
    to: i64,
    with_versions: bool,
}

/// The stored versions of [from, to) (seconds, Microsoft's clock). An item's stored
/// `last_change` (this host's clock, ms) follows Microsoft's update time unless the clocks
/// disagree: an hour of margin covers any skew worth the name.
fn version_window(from: i64, to: i64) -> VersionWindow {
    VersionWindow {
        since_ms: (from - 3600).saturating_mul(1000),
        from_ticks: from.saturating_mul(TICKS_PER_SECOND),
        to_ticks: to.saturating_mul(TICKS_PER_SECOND),
    }
}

/// [start, end) cut into parts of at most `max` stored versions each, from the counts of
/// versions in each `bucket` seconds from `start` (`(bucket index, count)`, in order). A bucket
/// of more than `max` alone is a part without versions: its items are prepared, as they all
/// were before.
fn plan_version_parts(
    counts: &[(i64, u64)],
    start: i64,
    end: i64,
    bucket: i64,
    max: usize,
) -> Vec<VersionPart> {
    let max = max as u64;
    let mut parts = Vec::new();
    let mut from = start;
    let mut held = 0u64;
    for &(index, count) in counts {
        let lo = start.saturating_add(index.saturating_mul(bucket)).max(from);
        if lo >= end {
            break;
        }
        let hi = lo.saturating_add(bucket).min(end);
        if count > max {
            if from < lo {
                parts.push(VersionPart {
                    from,
                    to: lo,
                    with_versions: true,
                });
            }
            parts.push(VersionPart {
                from: lo,
                to: hi,
                with_versions: false,
            });
            from = hi;
            held = 0;
            continue;
        }
        if held + count > max && from < lo {
            parts.push(VersionPart {
                from,
                to: lo,
                with_versions: true,
            });
            from = lo;
            held = 0;
        }
        held += count;
    }
    if from < end {
        parts.push(VersionPart {
            from,
            to: end,
            with_versions: true,
        });
    }
    parts
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::super::mutate::{cases, mutate, reference, Rng, EXAMPLE_PAGES};
    use super::super::page::parse_page;
    use super::*;

    fn part(from: i64, to: i64, with_versions: bool) -> VersionPart {
        VersionPart {
            from,
            to,
            with_versions,
        }
    }

    #[test]
    fn a_window_of_more_stored_versions_than_may_be_held_is_cut_into_parts() {
        // Under the cap: one part, as before.
        assert_eq!(
            plan_version_parts(&[(0, 3), (5, 4)], 1_000, 1_600, 60, 10),
            [part(1_000, 1_600, true)]
        );
        assert_eq!(
            plan_version_parts(&[], 1_000, 1_600, 60, 10),
            [part(1_000, 1_600, true)]
        );
        // Cut at the edge of the bucket that would overflow the part, never inside a bucket.
        assert_eq!(
            plan_version_parts(&[(0, 6), (2, 3), (4, 5), (9, 10)], 0, 600, 60, 10),
            [
                part(0, 240, true),
                part(240, 540, true),
                part(540, 600, true)
            ]
        );
        // A bucket of more than the cap alone is prepared whole, between parts that are not.
        assert_eq!(
            plan_version_parts(&[(1, 4), (3, 11), (4, 2)], 0, 600, 60, 10),
            [
                part(0, 180, true),
                part(180, 240, false),
                part(240, 600, true)
            ]
        );
        // Such a bucket first and last, and the last one cut at the window's end.
        assert_eq!(
            plan_version_parts(&[(0, 11), (9, 12)], 0, 590, 60, 10),
            [
                part(0, 60, false),
                part(60, 540, true),
                part(540, 590, false)
            ]
        );
    }

    /// Issue 11 item 16: Microsoft's example pages of every listed source, mutated, through page
    /// parsing and normalization. Nothing panics, and no item is lost: a page that does not parse
    /// is read again (the slice stays), and of a page that does, every item is prepared (stored
    /// and forwarded, with `normalization_error` when part of it could not be read) or
    /// quarantined.
    #[test]
    fn mutated_example_pages_never_panic_and_lose_no_item() {
        let mut rng = Rng::new(0x5eed_1234);
        let (mut parsed_pages, mut refused_pages) = (0, 0);
        for (kind, list, name) in EXAMPLE_PAGES {
            let text = reference(name);
            for case in 0..cases() {
                let page = mutate(&text, &mut rng);
                match parse_page(
                    kind,
                    list,
                    page.clone().into_bytes(),
                    Overflowing::Prepare,
                    None,
                ) {
                    Err(_) => refused_pages += 1,
                    Ok(p) => {
                        parsed_pages += 1;
                        assert_eq!(
                            p.received,
                            p.items.len() + p.quarantine.len(),
                            "{name} case {case}: an item was lost"
                        );
                        for item in &p.items {
                            let json = item.body.json().unwrap();
                            let body: serde_json::Value = serde_json::from_slice(&json)
                                .unwrap_or_else(|e| {
                                    panic!("{name} case {case}: the body is not JSON: {e}")
                                });
                            assert!(body.get("raw").is_some());
                            assert_eq!(
                                body.get("normalization_error").and_then(|e| e.as_str()),
                                item.normalization_error.as_deref()
                            );
                        }
                        for q in &p.quarantine {
                            assert!(!q.reason.is_empty());
                        }
                    }
                }
            }
        }
        assert!(
            parsed_pages > 0 && refused_pages > 0,
            "both outcomes were exercised"
        );
    }

    #[test]
    fn parts_cover_the_slice_exactly_in_whole_seconds_then_ticks() {
        const T: i64 = TICKS_PER_SECOND;
        assert_eq!(
            split_slice(0, 10 * T, 3),
            vec![(0, 4 * T), (4 * T, 7 * T), (7 * T, 10 * T)]
        );
        assert_eq!(
            split_slice(5 * T, 7 * T, 5),
            vec![(5 * T, 6 * T), (6 * T, 7 * T)]
        );
        assert_eq!(
            split_slice(0, 86_400 * T, 2),
            vec![(0, 43_200 * T), (43_200 * T, 86_400 * T)]
        );
        // One second, then a part of one, is cut on ticks.
        assert_eq!(split_slice(T, 2 * T, 4)[1], (T + T / 4, T + T / 2));
        assert_eq!(split_slice(7, 10, 5), vec![(7, 8), (8, 9), (9, 10)]);
    }

    #[test]
    fn filter_bounds_inside_a_second_carry_seven_fractional_digits() {
        assert_eq!(
            format_filter_bound(1_700_000_000 * TICKS_PER_SECOND),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            format_filter_bound(1_700_000_000 * TICKS_PER_SECOND + 1),
            "2023-11-14T22:13:20.0000001Z"
        );
    }
}
