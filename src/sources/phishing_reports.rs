//! The reporting mailbox (design §4 "Phishing reports", API.md §7a): user-reported messages read
//! with Graph delta queries on one folder, and the reported original attached to each report.
//!
//! Coverage is the delta query's own: the stored link (a nextLink while a walk is under way, then
//! the deltaLink) is moved only in the transaction that stores the page it ends, so a crash
//! resumes from the last committed link. An expired delta token (410, or `syncStateNotFound`)
//! starts a resync from the newest stored report minus `overlap`; a report read twice is a
//! duplicate (one version, `r1`), and one already stored is not fetched again. A filtered delta
//! returns at most 5,000 messages: a walk that reaches that many is followed by an unfiltered
//! walk of the whole folder, which has no cap, keeping only what is newer than the floor.
//! Nothing here writes to the mailbox: Mail.Read is all it needs.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Commit, PollError, PollOutcome, Poller};
use crate::config::{MailboxSettings, StartFrom};
use crate::email::{self, Limits};
use crate::microsoft::{MsClient, MsError};
use crate::normalize::{self, Prepared, ReportFormat, ReportParts};
use crate::store::{Cursor, CursorKey, QuarantineItem, Store};
use crate::time::{format_seconds, parse_ticks};

/// Messages a delta page holds (`Prefer: odata.maxpagesize`).
const PAGE_SIZE: usize = 50;
/// A delta query with `$filter` returns at most this many messages (API.md §7a).
const FILTERED_CAP: u64 = 5_000;
/// Reports read (fetched and parsed) at once: Outlook allows 4 concurrent requests per mailbox.
const READ_AT_ONCE: usize = 4;
/// Reports stored per transaction: their bodies may hold a 2 MiB original each.
const REPORTS_PER_COMMIT: usize = 8;
/// The largest original read; Exchange Online's own limit is 150 MB, but a report that large is
/// almost never a phish, and holding it costs memory.
const MAX_ORIGINAL: usize = 64 * 1024 * 1024;
/// A report whose original fails this many polls in a row (5xx, network) is forwarded without it.
const TRANSIENT_TRIES: u32 = 3;
/// Resyncs one poll may start before it gives up until the next poll.
const MAX_RESYNCS: usize = 2;
/// The message properties read: enough for `raw` and the report's own fields.
const SELECT: &str = "id,receivedDateTime,sentDateTime,createdDateTime,subject,from,sender,toRecipients,ccRecipients,replyTo,internetMessageId,hasAttachments,importance,bodyPreview,body,parentFolderId,conversationId,webLink";
const PREFER_IMMUTABLE: (&str, &str) = ("Prefer", "IdType=\"ImmutableId\"");

/// What a phishing-report poller keeps between polls.
#[derive(Default)]
pub(super) struct MailboxRead {
    /// The mailbox in use (`auto` resolved through Defender's user reported settings).
    mailbox: Option<String>,
    /// Transient failures per report id, so one broken attachment cannot stall the mailbox.
    failures: HashMap<String, u32>,
}

/// The stored coverage state of a mailbox (the cursor's `state` column, JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DeltaState {
    /// The next request: a nextLink while a walk is under way, else the deltaLink.
    link: String,
    /// Reports received before this (Unix seconds) are not read.
    floor: i64,
    /// The walk's first request carried `$filter` (capped at 5,000 messages by Microsoft).
    filtered: bool,
    /// Messages the current filtered walk has returned so far.
    returned: u64,
    /// The newest `receivedDateTime` stored (Unix seconds): where a resync after a completed
    /// walk starts.
    newest: Option<i64>,
    /// `link` is a deltaLink: every report since `floor` is stored. A walk interrupted by an
    /// expired token must start again from its own floor, since a walk lists newest first and
    /// what it had not reached is older than what it stored.
    #[serde(default)]
    synced: bool,
    /// The mailbox and folder the link belongs to: another one starts a new sync.
    mailbox: String,
    folder: String,
}

/// A delta page.
#[derive(Deserialize)]
struct DeltaPage<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

/// What a listed message says about itself before its report is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "@removed", default, borrow)]
    removed: Option<&'a RawValue>,
    #[serde(borrow, default)]
    received_date_time: Option<Cow<'a, str>>,
    #[serde(default)]
    has_attachments: Option<bool>,
}

/// A message of the page to read as a report.
struct ToRead {
    id: String,
    received: Option<i64>,
    has_attachments: bool,
    raw: Box<RawValue>,
}

/// An attachment of a report, listed without its bytes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentMeta {
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Deserialize)]
struct AttachmentPage {
    #[serde(default)]
    value: Vec<AttachmentMeta>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// The policy that names the reporting mailbox (Graph beta).
#[derive(Deserialize)]
struct PolicyPage {
    #[serde(default)]
    value: Vec<Policy>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Policy {
    #[serde(default)]
    customized_report_recipient_email_address: Option<String>,
    #[serde(default)]
    is_report_to_customized_email_address_enabled: Option<bool>,
}

/// Everything reading one report needs, shared by the concurrent reads of a page.
struct ReadCtx {
    client: Arc<MsClient>,
    /// `{graph}/v1.0/users/{mailbox}` with the mailbox encoded.
    user_url: url::Url,
    mailbox: String,
    limits: Limits,
}

/// How reading one report ended.
enum ReadOutcome {
    /// The report, and when it was received (Unix seconds).
    Ready(Box<Prepared>, Option<i64>),
    /// The report has no usable id (quarantined with its text).
    Unusable(QuarantineItem),
    /// Microsoft failed (5xx, network, throttling beyond retries): try again next poll.
    Transient { id: String, error: MsError },
}

/// A delta token Microsoft no longer knows: resync (API.md §7a).
fn is_expired_token(e: &MsError) -> bool {
    match e {
        MsError::Status { status: 410, .. } => true,
        MsError::Status { status, code, .. } if (400..500).contains(status) => {
            let code = code.to_ascii_lowercase();
            code == "syncstatenotfound"
                || code == "resyncrequired"
                || code == "syncstateinvalid"
                || code == "errorinvalidsyncstatedata"
        }
        _ => false,
    }
}

/// Exchange's Application Access Policy or RBAC for Applications said no for this mailbox.
pub(super) fn is_access_policy_denial(e: &MsError) -> bool {
    matches!(e, MsError::Status { status: 403, code, message, .. }
        if code.eq_ignore_ascii_case("ErrorAccessDenied") && message.contains("Access to OData is disabled"))
}

/// The fix for an access-policy denial (README: "Restricting Mail.Read to the reporting mailbox").
pub fn access_policy_fix(mailbox: &str) -> String {
    format!(
        "Exchange Online refuses this app access to {mailbox} (Application Access Policy or RBAC for Applications). Fix: add {mailbox} to the mail-enabled security group of the app's access policy (Test-ApplicationAccessPolicy -Identity {mailbox} -AppId <client id>), or to the management scope of its \"Application Mail.Read\" role assignment (Test-ServicePrincipalAuthorization); changes can take an hour to apply"
    )
}

/// `{graph}/v1.0/users/{mailbox}` with the mailbox as one encoded path segment.
fn user_url(base: &str, mailbox: &str) -> Result<url::Url, PollError> {
    let mut url = url::Url::parse(&format!("{base}/v1.0/users"))
        .map_err(|e| PollError::Invalid(format!("the Graph URL is not a URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| PollError::Invalid("the Graph URL cannot take a path".into()))?
        .push(mailbox);
    Ok(url)
}

/// `url` with more encoded path segments.
fn with_segments(url: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = url.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.extend(segments);
    }
    url
}

/// The first request of a walk: the folder's delta, filtered from `floor` or not at all.
fn first_link(user: &url::Url, folder: &str, floor: Option<i64>) -> String {
    let mut url = with_segments(user, &["mailFolders", folder, "messages", "delta"]);
    url.query_pairs_mut().append_pair("$select", SELECT);
    if let Some(floor) = floor {
        url.query_pairs_mut().append_pair(
            "$filter",
            &format!("receivedDateTime ge {}", format_seconds(floor)),
        );
    }
    url.to_string()
}

fn received_secs(v: Option<&str>) -> Option<i64> {
    v.and_then(parse_ticks).map(|t| t.div_euclid(10_000_000))
}

impl Poller {
    /// The mailbox this source reads: the configured one, or Defender's (`auto`).
    async fn mailbox(&mut self, m: &MailboxSettings) -> Result<String, PollError> {
        if let Some(found) = &self.reports.mailbox {
            return Ok(found.clone());
        }
        let found = if m.is_auto() {
            let url = format!(
                "{}/beta/security/threatSubmission/emailThreatSubmissionPolicies",
                self.base()
            );
            let resp = self.client.get(&url, None).await?;
            let page: PolicyPage = serde_json::from_slice(&resp.body).map_err(|e| {
                PollError::Invalid(format!(
                    "the answer of emailThreatSubmissionPolicies is not a policy list: {e}"
                ))
            })?;
            let address = page
                .value
                .iter()
                .filter(|p| p.is_report_to_customized_email_address_enabled != Some(false))
                .find_map(|p| {
                    p.customized_report_recipient_email_address
                        .as_deref()
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                });
            let Some(address) = address else {
                return Err(PollError::Invalid(NO_REPORTING_MAILBOX.into()));
            };
            tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), mailbox = %address, "reporting mailbox found in Defender's user reported settings");
            self.status.note(&format!(
                "reading the reporting mailbox {address} (mailbox = \"auto\": found in Defender's user reported settings)"
            ));
            address.to_string()
        } else {
            m.mailbox.clone()
        };
        self.status.set_mailbox(&found, &m.folder);
        self.reports.mailbox = Some(found.clone());
        Ok(found)
    }

    /// One poll of the reporting mailbox: walk from the stored link until a deltaLink.
    pub(super) async fn poll_mailbox(&mut self) -> Result<PollOutcome, PollError> {
        let Some(settings) = self.settings.mailbox.clone() else {
            return Err(PollError::Invalid(
                "phishing_reports has no mailbox configured".into(),
            ));
        };
        let mut outcome = PollOutcome::default();
        let mailbox = self.mailbox(&settings).await?;
        let user = user_url(&self.base(), &mailbox)?;
        let key = CursorKey {
            tenant: self.tenant.name.clone(),
            source: self.settings.kind,
            list: String::new(),
        };
        let cursor = self
            .mailbox_cursor(&key, &user, &settings, &mut outcome)
            .await?;
        self.status.set_coverage(cursor.coverage);
        let stored = self.store.load_cursor_state(&key).await?;
        let mut state = match stored.as_deref().map(serde_json::from_str::<DeltaState>) {
            Some(Ok(s))
                if s.mailbox.eq_ignore_ascii_case(&mailbox) && s.folder == settings.folder =>
            {
                s
            }
            other => {
                let overlap = self.settings.overlap.as_secs() as i64;
                let floor = match other {
                    // Another mailbox or folder: from where the old one was read to.
                    Some(Ok(old)) => old.newest.map_or(old.floor, |n| n - overlap),
                    // A state this version cannot read: from the last full read, with margin.
                    Some(Err(_)) => cursor.coverage - overlap,
                    // First run (C is T0 − lookback, or T0), or `cursor set` (C as set).
                    None => cursor.coverage,
                };
                self.new_sync(&user, &settings, &mailbox, floor, None)
            }
        };
        let ctx = Arc::new(ReadCtx {
            client: self.client.clone(),
            user_url: user.clone(),
            mailbox: mailbox.clone(),
            limits: Limits {
                body_max: settings.body_max,
                include_original_max: settings.include_original_max,
                ..Limits::default()
            },
        });
        let mut resyncs = 0;
        loop {
            let page_size = format!("odata.maxpagesize={PAGE_SIZE}");
            let resp = match self
                .client
                .get_with(
                    &state.link,
                    None,
                    &[PREFER_IMMUTABLE, ("Prefer", page_size.as_str())],
                )
                .await
            {
                Ok(r) => r,
                Err(e) if is_expired_token(&e) && resyncs < MAX_RESYNCS => {
                    resyncs += 1;
                    outcome.requests += 1;
                    let overlap = self.settings.overlap.as_secs() as i64;
                    let floor = match (state.synced, state.newest) {
                        (true, Some(n)) => (n - overlap).max(state.floor),
                        _ => state.floor,
                    };
                    let why = format!(
                        "Microsoft expired the mailbox's delta token ({e}); resyncing from reports received since {}",
                        format_seconds(floor)
                    );
                    tracing::warn!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), "{why}");
                    self.status.note(&why);
                    crate::metrics::resync(&self.tenant.name, self.settings.kind.as_str());
                    let filtered = state.filtered || state.synced;
                    state = self.new_sync(&user, &settings, &mailbox, floor, state.newest);
                    if !filtered {
                        // An unfiltered walk (past the 5,000 cap) starts again unfiltered.
                        state.link = first_link(&user, &settings.folder, None);
                        state.filtered = false;
                    }
                    self.save_state(&key, &state, None).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            outcome.requests += 1;
            let body = resp.body;
            let page = serde_json::from_slice::<DeltaPage>(&body).map_err(|e| {
                PollError::Invalid(format!(
                    "a delta page of the mailbox is not complete JSON ({e}); it is read again next poll"
                ))
            })?;
            let (to_read, quarantine, returned) = listed_reports(&page.value, state.floor);
            state.returned += returned;
            let next = match (&page.next_link, &page.delta_link) {
                (Some(n), _) => Some(n.clone()),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(PollError::Invalid(
                        "a delta page of the mailbox has neither @odata.nextLink nor @odata.deltaLink; it is read again next poll".into(),
                    ))
                }
            };
            let newest = to_read.iter().filter_map(|r| r.received).max();
            state.newest = match (state.newest, newest) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let synced_at = match (&next, &page.delta_link) {
                (None, Some(delta)) if state.filtered && state.returned >= FILTERED_CAP => {
                    // Microsoft may have left older reports out: read the folder unfiltered.
                    let why = format!(
                        "the filtered delta returned {} messages, Microsoft's cap: reading the whole folder once to find older reports",
                        state.returned
                    );
                    tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), "{why}");
                    let _ = delta;
                    state.link = first_link(&user, &settings.folder, None);
                    state.filtered = false;
                    state.returned = 0;
                    state.synced = false;
                    None
                }
                (None, Some(delta)) => {
                    state.link = delta.clone();
                    state.synced = true;
                    resp.date.or_else(|| self.client.clock().now_secs())
                }
                (Some(n), _) => {
                    state.link = n.clone();
                    // The pages a walk has not reached yet are not stored.
                    state.synced = false;
                    None
                }
                (None, None) => None,
            };
            drop(page);
            drop(body);
            self.store_reports(
                &ctx,
                &key,
                to_read,
                quarantine,
                cursor.t0,
                &state,
                synced_at.unwrap_or(i64::MIN),
                &mut outcome,
            )
            .await?;
            if let Some(at) = synced_at {
                self.status.set_coverage(at);
                outcome.coverage = at;
                self.status.first_run_finished();
                return Ok(outcome);
            }
        }
    }

    /// A new walk of the folder from `floor`, filtered (Microsoft caps it at 5,000 messages).
    fn new_sync(
        &self,
        user: &url::Url,
        settings: &MailboxSettings,
        mailbox: &str,
        floor: i64,
        newest: Option<i64>,
    ) -> DeltaState {
        DeltaState {
            link: first_link(user, &settings.folder, Some(floor)),
            floor,
            filtered: true,
            returned: 0,
            newest,
            synced: false,
            mailbox: mailbox.to_string(),
            folder: settings.folder.clone(),
        }
    }

    /// The stored cursor, or the first run's: T0 is Microsoft's `Date` of a first request that
    /// also proves the mailbox and folder exist.
    async fn mailbox_cursor(
        &self,
        key: &CursorKey,
        user: &url::Url,
        settings: &MailboxSettings,
        outcome: &mut PollOutcome,
    ) -> Result<Cursor, PollError> {
        if let Some(c) = self.store.load_cursor(key).await? {
            return Ok(c);
        }
        let mut url = with_segments(user, &["mailFolders", &settings.folder]);
        url.query_pairs_mut().append_pair("$select", "id");
        let resp = self.client.get(url.as_str(), None).await?;
        outcome.requests += 1;
        let t0 = resp
            .date
            .or_else(|| self.client.clock().now_secs())
            .ok_or_else(|| {
                PollError::Invalid("Microsoft's answer had no Date header: cannot start".into())
            })?;
        let coverage = match self.start {
            StartFrom::Lookback => t0 - self.settings.lookback.as_secs() as i64,
            StartFrom::Now => t0,
        };
        let c = self.store.init_cursor(key, Cursor { coverage, t0 }).await?;
        tracing::info!(tenant = %self.tenant.name, source = self.settings.kind.as_str(), t0 = %format_seconds(c.t0), from = %format_seconds(c.coverage), "first run: reading reports received since here");
        Ok(c)
    }

    /// Stores a new walk's state on its own (a resync), without items.
    async fn save_state(
        &self,
        key: &CursorKey,
        state: &DeltaState,
        coverage: Option<i64>,
    ) -> Result<(), PollError> {
        let text = serde_json::to_string(state)
            .map_err(|e| PollError::Invalid(format!("cannot write the mailbox state: {e}")))?;
        self.commit_items(Commit {
            items: Vec::new(),
            quarantine: Vec::new(),
            historical: false,
            advance: Some((key, coverage.unwrap_or(i64::MIN))),
            source_state: Some(&text),
        })
        .await?;
        Ok(())
    }

    /// Reads the page's new reports (a few at once) and stores them in small transactions; the
    /// last one moves the link (and, at a deltaLink, the coverage point to `synced_at`).
    #[allow(clippy::too_many_arguments)]
    async fn store_reports(
        &mut self,
        ctx: &Arc<ReadCtx>,
        key: &CursorKey,
        to_read: Vec<ToRead>,
        mut quarantine: Vec<QuarantineItem>,
        t0: i64,
        state: &DeltaState,
        synced_at: i64,
        outcome: &mut PollOutcome,
    ) -> Result<(), PollError> {
        let ids: Vec<String> = to_read.iter().map(|r| r.id.clone()).collect();
        let known = if ids.is_empty() {
            HashSet::new()
        } else {
            self.store
                .known_ids(&self.tenant.name, self.settings.kind, &ids)
                .await?
        };
        let (fresh, seen): (Vec<ToRead>, Vec<ToRead>) =
            to_read.into_iter().partition(|r| !known.contains(&r.id));
        // Read again (a resync, a move back): known without fetching, so counted here.
        let unchanged = crate::store::IngestCounts {
            unchanged: seen.len() as u64,
            ..Default::default()
        };
        outcome.counts.add(unchanged);
        self.status.add_counts(unchanged);
        crate::metrics::record_items(&self.tenant.name, self.settings.kind.as_str(), unchanged);
        let chunks: Vec<Vec<ToRead>> = {
            let mut fresh = fresh.into_iter().peekable();
            let mut out = Vec::new();
            while fresh.peek().is_some() {
                out.push(fresh.by_ref().take(REPORTS_PER_COMMIT).collect());
            }
            out
        };
        let state_text = serde_json::to_string(state)
            .map_err(|e| PollError::Invalid(format!("cannot write the mailbox state: {e}")))?;
        let last = chunks.len();
        if last == 0 {
            let counts = self
                .commit_items(Commit {
                    items: Vec::new(),
                    quarantine: std::mem::take(&mut quarantine),
                    historical: false,
                    advance: Some((key, synced_at)),
                    source_state: Some(&state_text),
                })
                .await?;
            outcome.counts.add(counts);
            return Ok(());
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            let permit = self
                .pages
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| PollError::Invalid("shutting down".into()))?;
            let (ready, unusable, requests) = self.read_reports(ctx, chunk).await?;
            outcome.requests += requests;
            quarantine.extend(unusable);
            // Reports received before the first run started are history (design §6).
            let (historical, live): (Vec<_>, Vec<_>) = ready
                .into_iter()
                .partition(|(_, received)| received.is_some_and(|r| r < t0));
            let historical: Vec<Prepared> = historical.into_iter().map(|(p, _)| p).collect();
            let live: Vec<Prepared> = live.into_iter().map(|(p, _)| p).collect();
            if !historical.is_empty() {
                let counts = self
                    .commit_items(Commit {
                        items: historical,
                        quarantine: Vec::new(),
                        historical: true,
                        advance: None,
                        source_state: None,
                    })
                    .await?;
                outcome.counts.add(counts);
            }
            let is_last = i + 1 == last;
            let counts = self
                .commit_items(Commit {
                    items: live,
                    quarantine: std::mem::take(&mut quarantine),
                    historical: false,
                    advance: is_last.then_some((key, synced_at)),
                    source_state: is_last.then_some(state_text.as_str()),
                })
                .await?;
            outcome.counts.add(counts);
            drop(permit);
        }
        Ok(())
    }

    /// Reads the reports of `chunk`, `READ_AT_ONCE` at a time. A report whose original keeps
    /// failing transiently fails the poll (it is read again) until `TRANSIENT_TRIES`, then goes
    /// out without its original.
    async fn read_reports(
        &mut self,
        ctx: &Arc<ReadCtx>,
        chunk: Vec<ToRead>,
    ) -> Result<(Vec<(Prepared, Option<i64>)>, Vec<QuarantineItem>, u64), PollError> {
        let mut ready = Vec::with_capacity(chunk.len());
        let mut unusable = Vec::new();
        let mut requests = 0u64;
        let mut pending = chunk.into_iter();
        loop {
            let mut set = tokio::task::JoinSet::new();
            for r in pending.by_ref().take(READ_AT_ONCE) {
                let tries = self.reports.failures.get(&r.id).copied().unwrap_or(0);
                let give_up = tries + 1 >= TRANSIENT_TRIES;
                set.spawn(read_report(ctx.clone(), r, give_up));
            }
            if set.is_empty() {
                break;
            }
            let mut transient = None;
            while let Some(joined) = set.join_next().await {
                let (outcome, n) = joined
                    .map_err(|e| PollError::Invalid(format!("a report reader failed: {e}")))?;
                requests += n;
                match outcome {
                    ReadOutcome::Ready(p, received) => {
                        self.reports.failures.remove(&p.native_id);
                        ready.push((*p, received));
                    }
                    ReadOutcome::Unusable(q) => unusable.push(q),
                    ReadOutcome::Transient { id, error } => {
                        *self.reports.failures.entry(id).or_insert(0) += 1;
                        transient.get_or_insert(error);
                    }
                }
            }
            if let Some(e) = transient {
                return Err(e.into());
            }
        }
        Ok((ready, unusable, requests))
    }

    /// A mailbox failure, with the fix.
    pub(super) fn explain_mailbox(&self, e: &PollError) -> Option<String> {
        let mailbox = self
            .reports
            .mailbox
            .clone()
            .or_else(|| self.settings.mailbox.as_ref().map(|m| m.mailbox.clone()))
            .unwrap_or_default();
        let PollError::Microsoft(ms) = e else {
            return None;
        };
        if is_access_policy_denial(ms) {
            return Some(format!("{e}. {}", access_policy_fix(&mailbox)));
        }
        match ms {
            MsError::Status { status: 403, .. } => Some(format!(
                "{e}. Fix: Entra admin center → App registrations → API permissions → Add a permission → Microsoft Graph → Application permissions → Mail.Read, then Grant admin consent{}",
                if self.settings.mailbox.as_ref().is_some_and(MailboxSettings::is_auto) {
                    " (mailbox = \"auto\" also needs ThreatSubmission.Read.All to read Defender's user reported settings)"
                } else {
                    ""
                }
            )),
            MsError::Status { status: 404, code, .. }
                if code.eq_ignore_ascii_case("ErrorInvalidUser")
                    || code.eq_ignore_ascii_case("MailboxNotEnabledForRESTAPI")
                    || code.eq_ignore_ascii_case("ResourceNotFound") =>
            {
                Some(format!(
                    "{e}. Fix: {mailbox} is not an Exchange Online mailbox of this tenant: check sources.phishing_reports.mailbox (the reporting mailbox must be a licensed or shared Exchange Online mailbox, not a group)"
                ))
            }
            MsError::Status { status: 404, .. } => Some(format!(
                "{e}. Fix: the folder `{}` does not exist in {mailbox}: check sources.phishing_reports.folder (a well-known name such as inbox, or a folder id)",
                self.settings.mailbox.as_ref().map(|m| m.folder.as_str()).unwrap_or("")
            )),
            _ => None,
        }
    }
}

/// Defender has no reporting mailbox configured (mailbox = "auto").
pub const NO_REPORTING_MAILBOX: &str = "mailbox = \"auto\" but Defender has no reporting mailbox set. Fix: Defender portal → Settings → Email & collaboration → User reported settings → \"Send the reported messages to\" → \"My reporting mailbox only\" or \"Microsoft and my reporting mailbox\", and add the mailbox; or set sources.phishing_reports.mailbox to its address";

/// The page's messages to read: those not removed, received at or after `floor`; items
/// without an id are quarantined. Also returns how many messages the page returned.
fn listed_reports(values: &[&RawValue], floor: i64) -> (Vec<ToRead>, Vec<QuarantineItem>, u64) {
    let mut to_read: Vec<ToRead> = Vec::with_capacity(values.len());
    let mut quarantine = Vec::new();
    let mut returned = 0;
    let mut seen = HashSet::new();
    for raw in values {
        let listed = match serde_json::from_str::<Listed>(raw.get()) {
            Ok(l) => l,
            Err(e) => {
                quarantine.push(QuarantineItem {
                    native_id: None,
                    reason: format!("a listed message is not a message object: {e}"),
                    raw: raw.get().to_string(),
                    list: String::new(),
                });
                continue;
            }
        };
        if listed.removed.is_some() {
            // Moved out or deleted: a report already read stays read.
            continue;
        }
        returned += 1;
        let Some(id) = listed.id.filter(|i| !i.is_empty()) else {
            quarantine.push(QuarantineItem {
                native_id: None,
                reason: "a listed message has no id".into(),
                raw: raw.get().to_string(),
                list: String::new(),
            });
            continue;
        };
        let received = received_secs(listed.received_date_time.as_deref());
        if received.is_some_and(|r| r < floor) {
            continue;
        }
        if !seen.insert(id.to_string()) {
            continue;
        }
        let Ok(raw) = RawValue::from_string(raw.get().to_string()) else {
            continue;
        };
        to_read.push(ToRead {
            id: id.into_owned(),
            received,
            has_attachments: listed.has_attachments.unwrap_or(true),
            raw,
        });
    }
    (to_read, quarantine, returned)
}

/// What is wrong with a fetch, for the report's `normalization_error`; `None` when it is
/// transient (5xx, network, throttling after the client's retries) and worth another poll.
fn fetch_problem(what: &str, e: &MsError) -> Option<String> {
    match e {
        MsError::Status { status: 404, .. } => Some(format!(
            "the report was deleted from the mailbox before {what} could be read"
        )),
        MsError::Status { status, code, .. }
            if (400..500).contains(status) && !matches!(status, 408 | 429) =>
        {
            Some(format!("Microsoft refused {what}: HTTP {status} {code}"))
        }
        MsError::TooLarge { limit, .. } => Some(format!(
            "{what} is larger than {} MiB and was not read",
            limit / (1024 * 1024)
        )),
        MsError::ForeignHost { .. } => Some(format!("{what}: {e}")),
        _ => None,
    }
}

/// Reads one report: its attachments, the reported original, parsed off the async threads.
/// Returns the outcome and the requests it made.
async fn read_report(ctx: Arc<ReadCtx>, r: ToRead, give_up: bool) -> (ReadOutcome, u64) {
    let mut requests = 0u64;
    let message_url = with_segments(&ctx.user_url, &["messages", &r.id]);
    let mut errors = Vec::new();
    let transient = |e: MsError, errors: &mut Vec<String>, what: &str| -> Option<ReadOutcome> {
        match fetch_problem(what, &e) {
            Some(p) => {
                errors.push(p);
                None
            }
            None if give_up => {
                errors.push(format!("{what} could not be read after several polls: {e}"));
                None
            }
            None => Some(ReadOutcome::Transient {
                id: r.id.clone(),
                error: e,
            }),
        }
    };
    // The attached messages, or none (the report is the original, forwarded inline).
    let mut attached: Vec<AttachedMessage> = Vec::new();
    let mut listed_ok = true;
    if r.has_attachments {
        let mut url = with_segments(&message_url, &["attachments"]);
        url.query_pairs_mut()
            .append_pair("$select", "id,name,contentType,size,isInline");
        let mut next = Some(url.to_string());
        while let Some(link) = next.take() {
            requests += 1;
            match ctx.client.get(&link, None).await {
                Ok(resp) => match serde_json::from_slice::<AttachmentPage>(&resp.body) {
                    Ok(page) => {
                        next = page.next_link;
                        attached.extend(page.value.into_iter().filter_map(message_attachment));
                    }
                    Err(e) => {
                        errors.push(format!("the report's attachment list is not readable: {e}"));
                        listed_ok = false;
                    }
                },
                Err(e) => {
                    if let Some(t) = transient(e, &mut errors, "the report's attachments") {
                        return (t, requests);
                    }
                    listed_ok = false;
                }
            }
        }
    }
    let (format, source) = match attached.len() {
        _ if !listed_ok => (ReportFormat::Inline, None),
        0 => (
            ReportFormat::Inline,
            Some((
                with_segments(&message_url, &["$value"]),
                "message/rfc822".to_string(),
            )),
        ),
        1 => {
            let a = &attached[0];
            (
                a.format,
                Some((
                    with_segments(&message_url, &["attachments", &a.id, "$value"]),
                    a.content_type.to_string(),
                )),
            )
        }
        _ => (ReportFormat::MultipleAttachments, None),
    };
    let attached_names: Vec<String> = if format == ReportFormat::MultipleAttachments {
        attached.iter().map(|a| a.name.clone()).collect()
    } else {
        Vec::new()
    };
    let mut bytes = None;
    if let Some((url, content_type)) = source {
        requests += 1;
        match ctx.client.get(url.as_str(), Some(MAX_ORIGINAL)).await {
            Ok(resp) => bytes = Some((resp.body, content_type)),
            Err(e) => {
                if let Some(t) = transient(e, &mut errors, "the reported email") {
                    return (t, requests);
                }
            }
        }
    }
    let mailbox = ctx.mailbox.clone();
    let limits = ctx.limits.clone();
    let received = r.received;
    let prepared = tokio::task::spawn_blocking(move || {
        let (message, original) = match &bytes {
            Some((b, content_type)) => {
                let ct = if email::is_msg(b) {
                    "application/vnd.ms-outlook"
                } else {
                    content_type.as_str()
                };
                let mut message = email::parse_any(b, &limits);
                if format == ReportFormat::Inline {
                    // The user forwarded it: the quoted original names the real sender.
                    message.use_forwarded_original();
                }
                (Some(message), Some(email::original(b, ct, &limits)))
            }
            None => (None, None),
        };
        drop(bytes);
        normalize::prepare_phishing_report(
            &r.raw,
            ReportParts {
                mailbox,
                format,
                message,
                original,
                attached_messages: attached_names,
                errors,
            },
        )
        .map(|mut p| {
            // Reports are held 8 at a time with their original MIME: sealed, they are small.
            p.seal();
            p
        })
        .map_err(|u| QuarantineItem {
            native_id: u.native_id.clone(),
            reason: u.reason,
            raw: r.raw.get().to_string(),
            list: String::new(),
        })
    })
    .await;
    let outcome = match prepared {
        Ok(Ok(p)) => ReadOutcome::Ready(Box::new(p), received),
        Ok(Err(q)) => ReadOutcome::Unusable(q),
        Err(e) => ReadOutcome::Unusable(QuarantineItem {
            native_id: None,
            reason: format!("reading the report failed: {e}"),
            raw: String::new(),
            list: String::new(),
        }),
    };
    (outcome, requests)
}

/// An attachment that is the reported message.
struct AttachedMessage {
    format: ReportFormat,
    id: String,
    name: String,
    /// What the original's bytes are, for `email.original`.
    content_type: &'static str,
}

/// The attachment as a reported message, if it is one: an item attachment, or an `.eml` or
/// `.msg` file (by name or content type).
fn message_attachment(a: AttachmentMeta) -> Option<AttachedMessage> {
    let id = a.id?;
    let name = a.name.unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let content_type = a.content_type.unwrap_or_default().to_ascii_lowercase();
    let kind = a.odata_type.unwrap_or_default().to_ascii_lowercase();
    let format = if kind.ends_with("itemattachment") {
        ReportFormat::ItemAttachment
    } else if kind.ends_with("referenceattachment") {
        return None;
    } else if lower.ends_with(".msg") || content_type == "application/vnd.ms-outlook" {
        ReportFormat::MsgAttachment
    } else if lower.ends_with(".eml") || content_type == "message/rfc822" {
        ReportFormat::EmlAttachment
    } else {
        return None;
    };
    Some(AttachedMessage {
        format,
        id,
        name,
        content_type: match format {
            ReportFormat::MsgAttachment => "application/vnd.ms-outlook",
            _ => "message/rfc822",
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::super::mutate::{cases, mutate, reference, Rng};
    use super::*;

    /// Issue 11 item 16 for the mailbox: a delta page built from Microsoft's message example,
    /// mutated, through listing and normalization: nothing panics and every listed message is
    /// read as a report, quarantined, or is a removal.
    #[test]
    fn mutated_delta_pages_never_panic_and_lose_no_message() {
        let message: serde_json::Value =
            serde_json::from_str(&reference("graph-message-get.json")).unwrap();
        let mut second = message.clone();
        second["id"] = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0AB".into();
        second["subject"] = "Phishing: Quick favour".into();
        let page = serde_json::json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)",
            "value": [message, second,
                {"@odata.type": "#microsoft.graph.message", "id": "AAMkADgone", "@removed": {"reason": "deleted"}}],
            "@odata.deltaLink": "https://graph.microsoft.com/v1.0/users/x/mailFolders/inbox/messages/delta?$deltatoken=abc"
        })
        .to_string();
        let mut rng = Rng::new(0x00de_17a5);
        for case in 0..cases() * 3 {
            let text = mutate(&page, &mut rng);
            let Ok(parsed) = serde_json::from_str::<DeltaPage>(&text) else {
                continue; // not a page: the link stays and the page is read again
            };
            let (to_read, quarantine, _) = listed_reports(&parsed.value, i64::MIN);
            let read: HashSet<&str> = to_read.iter().map(|r| r.id.as_str()).collect();
            let mut unreadable = 0;
            for v in &parsed.value {
                match serde_json::from_str::<Listed>(v.get()) {
                    Ok(l) if l.removed.is_some() => {}
                    Ok(l) if l.id.as_deref().is_some_and(|i| !i.is_empty()) => {
                        let id = l.id.unwrap_or_default();
                        assert!(
                            read.contains(id.as_ref()),
                            "case {case}: {id} lost in {text}"
                        );
                    }
                    _ => unreadable += 1,
                }
            }
            assert_eq!(quarantine.len(), unreadable, "case {case}: {text}");
            for r in to_read {
                let p = normalize::prepare_phishing_report(
                    &r.raw,
                    ReportParts {
                        mailbox: "phish@contoso.com".into(),
                        format: ReportFormat::Inline,
                        message: None,
                        original: None,
                        attached_messages: Vec::new(),
                        errors: Vec::new(),
                    },
                );
                // A listed message has an id, so it is always a report.
                let p = p.unwrap_or_else(|u| panic!("case {case}: {u} in {text}"));
                serde_json::from_slice::<serde_json::Value>(&p.body.json().unwrap()).unwrap();
            }
        }
    }
}
