//! Campaign context from Graph advanced hunting (`POST /security/runHuntingQuery`, API.md §6):
//! for a batch of message ids, who else received the message, where each copy landed and who
//! clicked, in one query per batch. It keeps under the documented 45 calls a minute with its own
//! budget, stops asking after a 429 until Microsoft allows again, does not ask twice about a
//! message within a window, and classifies every failure with the fix an operator needs.
//!
//! The enrichment stage calls [`Hunting::lookup`] once per batch; an id without an answer simply
//! has no context (advanced hunting may not know the message, or not yet).

mod context;
pub mod enrich;
mod kql;

pub use context::{
    Campaign, CampaignContext, CampaignCopy, Click, Clicks, Landed, QueryInfo, Recipient,
    Recipients,
};
pub use kql::{
    build as build_query, is_queryable, string_literal, MAX_BATCH, MAX_ID_CHARS, MAX_LISTED,
    PROBE_QUERY,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::TokenProvider;
use crate::config::ContextConfig;
use crate::microsoft::{Budget, MicrosoftClock, MsClient, MsError};

/// The application permission advanced hunting needs.
pub const ROLE: &str = "ThreatHunting.Read.All";
/// Calls per minute per tenant Microsoft documents ("at least 45").
pub const CALLS_PER_MINUTE: u32 = 45;
/// Microsoft stops a query after 3 minutes; the request is given a little more.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(190);
/// A message found is not asked about again for this long.
pub const FOUND_WINDOW: Duration = Duration::from_secs(3600);
/// A message not found (not indexed yet, or not an email advanced hunting knows) is asked about
/// again after this long.
pub const MISSING_WINDOW: Duration = Duration::from_secs(600);
/// After a 429 without `Retry-After`: a call-rate 429 waits out the minute, a CPU-quota one the
/// 15-minute cycle.
const THROTTLE_PAUSE: Duration = Duration::from_secs(60);
const QUOTA_PAUSE: Duration = Duration::from_secs(900);
/// After a 403, ask again this much later (the role may have been granted meanwhile).
const FORBIDDEN_PAUSE: Duration = Duration::from_secs(300);
/// Entries the lookup cache holds at most per tenant.
const MAX_CACHED: usize = 100_000;

/// Why a lookup gave no context. Each says what happened and, in [`HuntingError::fix`], what the
/// operator can do; none carries a token or a query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HuntingError {
    #[error("advanced hunting is off for tenant {tenant}")]
    Off { tenant: String },
    #[error("advanced hunting is not granted in tenant {tenant} (HTTP 403: {message})")]
    NotGranted { tenant: String, message: String },
    #[error("advanced hunting is throttled in tenant {tenant} (HTTP 429): asking again in {}s", retry_after.as_secs())]
    Throttled {
        tenant: String,
        retry_after: Duration,
    },
    #[error("advanced hunting's CPU quota is spent in tenant {tenant} (HTTP 429): asking again in {}s", retry_after.as_secs())]
    CpuQuota {
        tenant: String,
        retry_after: Duration,
    },
    #[error("advanced hunting timed out in tenant {tenant}: {message}")]
    Timeout { tenant: String, message: String },
    #[error("advanced hunting failed in tenant {tenant}: {message}")]
    Other { tenant: String, message: String },
}

impl HuntingError {
    /// A short name for `/status` and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HuntingError::Off { .. } => "off",
            HuntingError::NotGranted { .. } => "not_granted",
            HuntingError::Throttled { .. } => "throttled",
            HuntingError::CpuQuota { .. } => "cpu_quota",
            HuntingError::Timeout { .. } => "timeout",
            HuntingError::Other { .. } => "other",
        }
    }

    /// What the operator can do about it.
    pub fn fix(&self) -> String {
        match self {
            HuntingError::Off { tenant } => {
                format!("set tenants.{tenant}.context.hunting = true to attach campaign context")
            }
            HuntingError::NotGranted { tenant, .. } => format!(
                "grant {ROLE} (application) to the app registration and admin-consent it: Entra admin center → App registrations → the app → API permissions → Add a permission → Microsoft Graph → Application permissions → {ROLE}, then Grant admin consent; or set tenants.{tenant}.context.hunting = false. Alerts are forwarded without context meanwhile"
            ),
            HuntingError::Throttled { .. } => format!(
                "nothing to do if it is rare: alerts are forwarded without context and it follows later. If it persists, another client (a SIEM, scripts) shares the tenant's {CALLS_PER_MINUTE} hunting calls a minute"
            ),
            HuntingError::CpuQuota { tenant, .. } => format!(
                "the tenant's advanced-hunting CPU allocation for this 15-minute cycle is used up (the portal and other API clients share it): context resumes with the next cycle. If it recurs, lower tenants.{tenant}.context.batch_size or reduce other hunting load"
            ),
            HuntingError::Timeout { tenant, .. } => format!(
                "Microsoft stops a query after 3 minutes: lower tenants.{tenant}.context.batch_size so each query covers fewer messages"
            ),
            HuntingError::Other { tenant, .. } => format!(
                "check tenants.{tenant}.graph_url and the network; alerts are forwarded without context meanwhile"
            ),
        }
    }

    /// How long before asking again is useful, when Microsoft said or it is known.
    fn pause(&self) -> Option<Duration> {
        match self {
            HuntingError::Throttled { retry_after, .. }
            | HuntingError::CpuQuota { retry_after, .. } => Some(*retry_after),
            HuntingError::NotGranted { .. } => Some(FORBIDDEN_PAUSE),
            _ => None,
        }
    }

    /// The same error with `left` as its remaining wait.
    fn with_wait(&self, left: Duration) -> HuntingError {
        let mut e = self.clone();
        if let HuntingError::Throttled { retry_after, .. }
        | HuntingError::CpuQuota { retry_after, .. } = &mut e
        {
            *retry_after = left;
        }
        e
    }
}

/// Whether a 429's message names the CPU quota rather than the call rate. Microsoft documents
/// only that "the reason is in the body"; it has no distinct code (UNCONFIRMED), so the message
/// is read here, for this one purpose.
fn is_cpu_quota(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("cpu")
        || m.contains("allocated resources")
        || m.contains("exceeded the allowed limits")
}

/// Turns a failed call into what the operator is told. `blocked` is what the budget's
/// `Retry-After` still holds; the one Microsoft sent wins (the budget caps it at 5 minutes, and
/// a spent CPU quota can last a whole 15-minute cycle).
fn classify(tenant: &str, e: MsError, blocked: Option<Duration>) -> HuntingError {
    let tenant = tenant.to_string();
    let wait = |sent: Option<Duration>, default: Duration| {
        sent.or(blocked)
            .unwrap_or(default)
            .max(Duration::from_secs(1))
    };
    match e {
        MsError::Status {
            status: 403,
            message,
            ..
        } => HuntingError::NotGranted { tenant, message },
        MsError::Status {
            status: 429,
            message,
            retry_after,
            ..
        } if is_cpu_quota(&message) => HuntingError::CpuQuota {
            tenant,
            retry_after: wait(retry_after, QUOTA_PAUSE),
        },
        MsError::Status {
            status: 429,
            retry_after,
            ..
        } => HuntingError::Throttled {
            tenant,
            retry_after: wait(retry_after, THROTTLE_PAUSE),
        },
        MsError::Status {
            status: s @ (408 | 504),
            ..
        } => HuntingError::Timeout {
            tenant,
            message: format!("HTTP {s}: the query ran past Microsoft's 3-minute limit"),
        },
        MsError::Network { message, .. } if message.starts_with("timed out") => {
            HuntingError::Timeout {
                tenant,
                message: format!("no answer: {message}"),
            }
        }
        other => HuntingError::Other {
            tenant,
            message: other.to_string(),
        },
    }
}

struct State {
    /// Answers by id, until when they stand (`None`: nothing found).
    cache: HashMap<String, (Instant, Option<CampaignContext>)>,
    /// No query before this, and the error to answer meanwhile.
    paused: Option<(Instant, HuntingError)>,
}

/// Advanced hunting for one tenant.
pub struct HuntingClient {
    tenant: String,
    ms: MsClient,
    url: String,
    budget: Arc<Budget>,
    /// The tenant's Graph `/security` budget, which hunting calls are counted against as well.
    shared: Option<Arc<Budget>>,
    batch_size: usize,
    max_listed: u32,
    /// The longest one query may take, answer included.
    timeout: Duration,
    state: Mutex<State>,
}

impl HuntingClient {
    /// A client for tenant `name` on `graph_url`, with the tenant's Graph token provider and
    /// clock. The client gives up on a query after [`REQUEST_TIMEOUT`] itself, so `http`'s own
    /// timeout must not be shorter. `shared` is the tenant's Graph `/security` budget, if
    /// hunting calls should count against it too (API.md §2: budget as if they do).
    pub fn new(
        name: &str,
        graph_url: &str,
        http: reqwest::Client,
        tokens: Arc<TokenProvider>,
        clock: Arc<MicrosoftClock>,
        shared: Option<Arc<Budget>>,
        cfg: &ContextConfig,
    ) -> Result<Self, url::ParseError> {
        let base = graph_url.trim_end_matches('/');
        let budget = Arc::new(Budget::per_minute(CALLS_PER_MINUTE));
        let ms = MsClient::new(
            "hunting",
            name.to_string(),
            http,
            base,
            tokens,
            budget.clone(),
            clock,
        )?
        // A failed batch is not retried here: its alerts go out without context, and the
        // budget keeps the next batch from asking before Microsoft allows.
        .with_max_attempts(0);
        Ok(Self {
            tenant: name.to_string(),
            ms,
            url: format!("{base}/v1.0/security/runHuntingQuery"),
            budget,
            shared,
            batch_size: cfg.batch_size.clamp(1, MAX_BATCH),
            max_listed: cfg.max_listed.clamp(1, MAX_LISTED),
            timeout: REQUEST_TIMEOUT,
            state: Mutex::new(State {
                cache: HashMap::new(),
                paused: None,
            }),
        })
    }

    /// Gives up on a query after `d` instead of [`REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The context of each id advanced hunting knows (by internet or network message id),
    /// asking only about ids not looked up within the window, [`ContextConfig::batch_size`] per
    /// query. Ids that cannot be message ids (empty, too long, control characters) are never
    /// sent and have no context. On failure nothing is returned, but batches answered before it
    /// are remembered, so asking again costs only the rest.
    pub async fn lookup(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, CampaignContext>, HuntingError> {
        let now = Instant::now();
        let mut found = HashMap::new();
        let mut todo: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        {
            let st = self.state();
            for id in ids {
                if !kql::is_queryable(id) || !seen.insert(id.as_str()) {
                    continue;
                }
                match st.cache.get(id) {
                    Some((until, hit)) if *until > now => {
                        if let Some(c) = hit {
                            found.insert(id.clone(), c.clone());
                        }
                    }
                    _ => todo.push(id),
                }
            }
        }
        for batch in todo.chunks(self.batch_size) {
            found.extend(self.query(batch).await?);
        }
        Ok(found)
    }

    /// One query over `batch`; its answers go into the cache.
    async fn query(
        &self,
        batch: &[&str],
    ) -> Result<HashMap<String, CampaignContext>, HuntingError> {
        if let Some(e) = self.paused() {
            return Err(e);
        }
        let Some(query) = kql::build(batch, self.max_listed) else {
            return Err(HuntingError::Other {
                tenant: self.tenant.clone(),
                message: "a batch could not be written as a query".into(),
            });
        };
        if let Some(shared) = &self.shared {
            shared.acquire().await;
        }
        let started = Instant::now();
        let body = serde_json::json!({ "Query": query });
        let sent = self.ms.post_json_with(
            &self.url,
            &body,
            None,
            // Message ids may be non-ASCII (API.md §6).
            &[("Content-Type", "application/json; charset=utf-8")],
        );
        let sent = match tokio::time::timeout(self.timeout, sent).await {
            Ok(sent) => sent,
            Err(_) => Err(MsError::Network {
                api: "hunting".into(),
                message: format!("timed out after {}s", self.timeout.as_secs_f32()),
            }),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let e = classify(&self.tenant, e, self.budget.blocked_for());
                if let Some(p) = e.pause() {
                    self.state().paused = Some((Instant::now() + p, e.clone()));
                }
                tracing::warn!(tenant = %self.tenant, kind = e.kind(), error = %e, fix = %e.fix(), "advanced hunting gave no context");
                return Err(e);
            }
        };
        let info = QueryInfo {
            at: crate::time::format_seconds(crate::time::unix_seconds_now()),
            rows: 0,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let mut answers = context::parse(&resp.body, &info).map_err(|e| HuntingError::Other {
            tenant: self.tenant.clone(),
            message: e.to_string(),
        })?;
        let rows = answers.len() as u64;
        for c in answers.values_mut() {
            c.query.rows = rows;
        }
        let now = Instant::now();
        let mut st = self.state();
        if st.cache.len() + batch.len() > MAX_CACHED {
            st.cache.retain(|_, (until, _)| *until > now);
            if st.cache.len() + batch.len() > MAX_CACHED {
                st.cache.clear();
            }
        }
        for id in batch {
            let hit = answers.get(*id).cloned();
            let window = if hit.is_some() {
                FOUND_WINDOW
            } else {
                MISSING_WINDOW
            };
            st.cache.insert(id.to_string(), (now + window, hit));
        }
        Ok(answers)
    }

    /// The error to answer while Microsoft asked us to wait, with the time left. A `Retry-After`
    /// the budget still holds (say from a 503) counts too: the call would only wait for it.
    fn paused(&self) -> Option<HuntingError> {
        let now = Instant::now();
        let mut st = self.state();
        match &st.paused {
            Some((until, e)) if *until > now => return Some(e.with_wait(*until - now)),
            Some(_) => st.paused = None,
            None => {}
        }
        self.budget
            .blocked_for()
            .map(|retry_after| HuntingError::Throttled {
                tenant: self.tenant.clone(),
                retry_after,
            })
    }
}

/// Advanced hunting for every tenant that has it on.
#[derive(Default)]
pub struct Hunting {
    tenants: HashMap<String, HuntingClient>,
}

impl Hunting {
    /// Adds tenant `name`'s client.
    pub fn insert(&mut self, name: &str, client: HuntingClient) {
        self.tenants.insert(name.to_string(), client);
    }

    /// [`HuntingClient::lookup`] in tenant `tenant`; [`HuntingError::Off`] for a tenant without
    /// hunting.
    pub async fn lookup(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CampaignContext>, HuntingError> {
        match self.tenants.get(tenant) {
            Some(c) => c.lookup(ids).await,
            None => Err(HuntingError::Off {
                tenant: tenant.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, message: &str) -> MsError {
        MsError::Status {
            api: "hunting".into(),
            status,
            code: "x".into(),
            message: message.into(),
            request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn failures_are_classified_with_their_fix() {
        let e = classify("contoso", status(403, "Missing application roles."), None);
        assert_eq!(e.kind(), "not_granted");
        assert!(e.fix().contains("grant ThreatHunting.Read.All (application) to the app registration and admin-consent it"));
        let e = classify(
            "contoso",
            status(429, "Please retry again later."),
            Some(Duration::from_secs(7)),
        );
        assert_eq!(
            e,
            HuntingError::Throttled {
                tenant: "contoso".into(),
                retry_after: Duration::from_secs(7)
            }
        );
        let e = classify("contoso", status(429, m365_sim::CPU_QUOTA_MESSAGE), None);
        assert_eq!(
            e,
            HuntingError::CpuQuota {
                tenant: "contoso".into(),
                retry_after: QUOTA_PAUSE
            }
        );
        assert!(e.fix().contains("15-minute cycle"));
        assert_eq!(classify("contoso", status(504, ""), None).kind(), "timeout");
        let net = MsError::Network {
            api: "hunting".into(),
            message: "timed out: operation timed out".into(),
        };
        assert_eq!(classify("contoso", net, None).kind(), "timeout");
        let e = classify("contoso", status(400, "Query could not be parsed."), None);
        assert_eq!(e.kind(), "other");
        assert!(e.to_string().contains("Query could not be parsed"));
    }
}
