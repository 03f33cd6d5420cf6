//! The part that talks to Microsoft: one client per (tenant, API family) that owns bearer
//! injection, host pinning, throttling, retries, the response size cap and Microsoft's clock.
//! Sources build URLs and parse bodies; everything about getting a body safely lives here.

mod budget;
mod clock;

pub use budget::Budget;
pub use clock::MicrosoftClock;

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::auth::{AuthError, TokenProvider};

/// Largest body accepted by default; a larger page is re-asked with a smaller `$top`.
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

/// Why a Microsoft request gave no usable answer (after the retries this client does itself).
#[derive(Debug, thiserror::Error)]
pub enum MsError {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("HTTP {status} from {api}{}: {message}", request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    Status {
        api: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        /// `Retry-After` as Microsoft sent it (up to an hour), for callers that stop asking
        /// for longer than this client's own retries wait.
        retry_after: Option<Duration>,
    },
    #[error("network error talking to {api}: {message}")]
    Network { api: String, message: String },
    #[error("response from {api} is larger than {limit} bytes")]
    TooLarge { api: String, limit: usize },
    #[error(
        "refused to send a token to {url}: it is not the configured host for {api} ({pinned})"
    )]
    ForeignHost {
        api: String,
        url: String,
        pinned: String,
    },
    #[error("stopped")]
    Cancelled,
}

impl MsError {
    pub fn status(&self) -> Option<u16> {
        match self {
            MsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One answer from Microsoft.
pub struct MsResponse {
    pub status: u16,
    /// Microsoft's `Date` header as Unix seconds.
    pub date: Option<i64>,
    pub request_id: Option<String>,
    pub body: Vec<u8>,
}

/// A piece of a successful answer's body, handed on as it arrives (`MsClient::send_streamed`).
pub enum BodyChunk {
    /// A body starts: what came before belonged to an attempt that failed midway.
    Start,
    Bytes(bytes::Bytes),
}

/// A client for one (tenant, API family): Graph, or a tenant's Cloud Apps portal.
pub struct MsClient {
    api: &'static str,
    tenant: String,
    http: reqwest::Client,
    pinned: url::Url,
    tokens: Arc<TokenProvider>,
    budget: Arc<Budget>,
    clock: Arc<MicrosoftClock>,
    max_body: usize,
    max_attempts: usize,
    /// Requests of this client in flight at once (Outlook allows 4 per app and mailbox).
    concurrency: Option<Arc<tokio::sync::Semaphore>>,
}

impl MsClient {
    pub fn new(
        api: &'static str,
        tenant: String,
        http: reqwest::Client,
        base: &str,
        tokens: Arc<TokenProvider>,
        budget: Arc<Budget>,
        clock: Arc<MicrosoftClock>,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            api,
            tenant,
            http,
            pinned: url::Url::parse(base)?,
            tokens,
            budget,
            clock,
            max_body: DEFAULT_MAX_BODY,
            max_attempts: 6,
            concurrency: None,
        })
    }

    /// At most `n` requests of this client in flight at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        self
    }

    pub fn base(&self) -> &url::Url {
        &self.pinned
    }

    pub fn clock(&self) -> &MicrosoftClock {
        &self.clock
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// At most `n` retries of a failed request (default 6); 0 answers with the first failure,
    /// after honouring its `Retry-After` in the budget (advanced hunting asks again only with
    /// the next batch).
    pub fn with_max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = n;
        self
    }

    /// Caps bodies at `limit` bytes for this call's client (rule 4 retries halve `$top` instead).
    pub fn with_max_body(mut self, limit: usize) -> Self {
        self.max_body = limit;
        self
    }

    /// True when `url` has the pinned scheme, host and port.
    fn is_pinned(&self, url: &url::Url) -> bool {
        url.scheme() == self.pinned.scheme()
            && url.host_str() == self.pinned.host_str()
            && url.port_or_known_default() == self.pinned.port_or_known_default()
    }

    /// GET with retries; `body_limit` overrides the size cap for this request.
    pub async fn get(&self, url: &str, body_limit: Option<usize>) -> Result<MsResponse, MsError> {
        self.send(reqwest::Method::GET, url, None, body_limit, &[], None)
            .await
    }

    /// GET with extra request headers (e.g. more `Prefer` preferences), sent on every attempt.
    pub async fn get_with(
        &self,
        url: &str,
        body_limit: Option<usize>,
        headers: &[(&'static str, &str)],
    ) -> Result<MsResponse, MsError> {
        self.send(reqwest::Method::GET, url, None, body_limit, headers, None)
            .await
    }

    /// POST a JSON body with retries (Cloud Apps lists alerts by POST).
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        body_limit: Option<usize>,
    ) -> Result<MsResponse, MsError> {
        self.send(
            reqwest::Method::POST,
            url,
            Some(body),
            body_limit,
            &[],
            None,
        )
        .await
    }

    /// POST a JSON body with extra request headers, sent on every attempt.
    pub async fn post_json_with(
        &self,
        url: &str,
        body: &serde_json::Value,
        body_limit: Option<usize>,
        headers: &[(&'static str, &str)],
    ) -> Result<MsResponse, MsError> {
        self.send(
            reqwest::Method::POST,
            url,
            Some(body),
            body_limit,
            headers,
            None,
        )
        .await
    }

    /// GET, or POST of `json`, whose successful body goes to `to` as it arrives instead of
    /// into the answer: a listing page is read without being held whole. Each attempt that
    /// reaches a 2xx body first sends [`BodyChunk::Start`]. When `to` is closed (its reader
    /// refused the body), the rest is not read.
    pub async fn send_streamed(
        &self,
        url: &str,
        json: Option<&serde_json::Value>,
        body_limit: Option<usize>,
        to: &tokio::sync::mpsc::Sender<BodyChunk>,
    ) -> Result<MsResponse, MsError> {
        let method = match json {
            Some(_) => reqwest::Method::POST,
            None => reqwest::Method::GET,
        };
        self.send(method, url, json, body_limit, &[], Some(to))
            .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        json: Option<&serde_json::Value>,
        body_limit: Option<usize>,
        headers: &[(&'static str, &str)],
        stream: Option<&tokio::sync::mpsc::Sender<BodyChunk>>,
    ) -> Result<MsResponse, MsError> {
        let parsed = url::Url::parse(url).map_err(|e| MsError::Network {
            api: self.api.into(),
            message: format!("bad URL {url}: {e}"),
        })?;
        if !self.is_pinned(&parsed) {
            tracing::error!(tenant = %self.tenant, api = self.api, url = %redact_query(&parsed), pinned = %self.pinned.origin().ascii_serialization(), "refused to follow a link to another host");
            return Err(MsError::ForeignHost {
                api: self.api.into(),
                url: redact_query(&parsed),
                pinned: self.pinned.origin().ascii_serialization(),
            });
        }
        let limit = body_limit.unwrap_or(self.max_body);
        let mut backoff = backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.max_attempts)
            .build();
        let mut refreshed_after_401 = false;
        loop {
            self.budget.acquire().await;
            // Held through the body read: Outlook counts a request until its answer is read.
            let in_flight = match &self.concurrency {
                Some(s) => Some(s.acquire().await.map_err(|_| MsError::Cancelled)?),
                None => None,
            };
            let token = self.tokens.token().await?;
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let started = Instant::now();
            let mut req = self
                .http
                .request(method.clone(), parsed.clone())
                .bearer_auth(token.secret.expose_secret())
                .header("Prefer", "include-unknown-enum-members")
                .header("client-request-id", &client_request_id)
                .header("Accept", "application/json");
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(body) = json {
                req = req.json(body);
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    crate::metrics::microsoft_request(
                        &self.tenant,
                        self.api,
                        Some(resp.status().as_u16()),
                    );
                    self.read(resp, limit, stream).await
                }
                Err(e) => {
                    crate::metrics::microsoft_request(&self.tenant, self.api, None);
                    Err(Failure::Retryable {
                        error: MsError::Network {
                            api: self.api.into(),
                            message: describe_reqwest_error(&e),
                        },
                        retry_after: None,
                    })
                }
            };
            match outcome {
                Ok(resp) => {
                    tracing::debug!(tenant = %self.tenant, api = self.api, status = resp.status, request_id = resp.request_id.as_deref().unwrap_or(""), client_request_id = %client_request_id, elapsed_ms = started.elapsed().as_millis() as u64, "microsoft request");
                    return Ok(resp);
                }
                Err(Failure::Unauthorized(e)) if !refreshed_after_401 => {
                    // An expired or revoked token: drop it and try once with a fresh one.
                    tracing::info!(tenant = %self.tenant, api = self.api, "401 from Microsoft: refreshing the token");
                    self.tokens.invalidate(token.generation).await;
                    refreshed_after_401 = true;
                    let _ = e;
                }
                Err(Failure::Unauthorized(e)) | Err(Failure::Permanent(e)) => {
                    tracing::warn!(tenant = %self.tenant, api = self.api, error = %e, "microsoft request failed");
                    return Err(e);
                }
                Err(Failure::Retryable { error, retry_after }) => {
                    let delay = match retry_after {
                        Some(d) => {
                            // Throttling is per tenant: every request of this family waits.
                            self.budget.block_for(d);
                            Some(Duration::ZERO)
                        }
                        None => None,
                    };
                    let Some(backoff_delay) = backoff.next() else {
                        tracing::warn!(tenant = %self.tenant, api = self.api, error = %error, "microsoft request failed after retries");
                        return Err(error);
                    };
                    let wait = delay.unwrap_or(backoff_delay);
                    tracing::info!(tenant = %self.tenant, api = self.api, error = %error, retry_in_ms = wait.as_millis() as u64, "retrying microsoft request");
                    drop(in_flight);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn read(
        &self,
        mut resp: reqwest::Response,
        limit: usize,
        stream: Option<&tokio::sync::mpsc::Sender<BodyChunk>>,
    ) -> Result<MsResponse, Failure> {
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let date = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        if let Some(d) = date {
            self.clock.observe(d);
        }
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sent_retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after_as_sent);
        let retry_after = sent_retry_after.map(clamp_retry_after);
        if matches!(status, 429 | 503) && retry_after.is_some() {
            crate::metrics::throttled(&self.tenant, self.api);
        }
        if headers.get("Warning").is_some() {
            tracing::info!(tenant = %self.tenant, api = self.api, warning = ?headers.get("Warning"), "Microsoft sent a Warning header");
        }
        if let Some(len) = resp.content_length() {
            if len as usize > limit {
                return Err(Failure::Permanent(MsError::TooLarge {
                    api: self.api.into(),
                    limit,
                }));
            }
        }
        let stream = stream.filter(|_| (200..300).contains(&status));
        if let Some(to) = stream {
            if to.send(BodyChunk::Start).await.is_err() {
                return Ok(MsResponse {
                    status,
                    date,
                    request_id,
                    body: Vec::new(),
                });
            }
        }
        // Sized once when the length is known: growing by doubling holds up to three times a
        // large page while it is copied.
        let mut body = Vec::with_capacity(match stream {
            Some(_) => 0,
            None => resp
                .content_length()
                .map_or(0, |len| (len as usize).min(limit)),
        });
        let mut read = 0usize;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > limit {
                        return Err(Failure::Permanent(MsError::TooLarge {
                            api: self.api.into(),
                            limit,
                        }));
                    }
                    match stream {
                        // A reader that refused the body wants no more of it.
                        Some(to) => {
                            if to.send(BodyChunk::Bytes(chunk)).await.is_err() {
                                break;
                            }
                        }
                        None => body.extend_from_slice(&chunk),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::Retryable {
                        error: MsError::Network {
                            api: self.api.into(),
                            message: describe_reqwest_error(&e),
                        },
                        retry_after: None,
                    })
                }
            }
        }
        if (200..300).contains(&status) {
            return Ok(MsResponse {
                status,
                date,
                request_id,
                body,
            });
        }
        let (code, message) = graph_error(&body);
        let error = MsError::Status {
            api: self.api.into(),
            status,
            code,
            message,
            request_id,
            retry_after: sent_retry_after,
        };
        Err(match status {
            401 => Failure::Unauthorized(error),
            408 | 429 | 500..=599 if status != 501 => Failure::Retryable { error, retry_after },
            _ => Failure::Permanent(error),
        })
    }
}

enum Failure {
    Retryable {
        error: MsError,
        retry_after: Option<Duration>,
    },
    Unauthorized(MsError),
    Permanent(MsError),
}

/// Graph's error body, `{"error":{"code","message",…}}`, read without trusting its shape.
fn graph_error(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer {
            error: Some(Inner { code, message }),
        }) => (
            code.unwrap_or_default(),
            truncate(&message.unwrap_or_default(), 500),
        ),
        _ => (String::new(), truncate(&String::from_utf8_lossy(body), 200)),
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Retry-After` as decimal seconds (Graph sends `2.128`) or an HTTP-date, clamped to 1 s–5 min.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    retry_after_as_sent(v).map(clamp_retry_after)
}

/// `Retry-After` as decimal seconds or an HTTP-date, at most an hour.
pub fn retry_after_as_sent(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(3600.0))
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(Duration::from_secs(3600)))
}

/// The wait this client's own retries use: 1 s–5 min.
fn clamp_retry_after(d: Duration) -> Duration {
    d.clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// A reqwest error without its URL (which may carry query text) and with its cause chain.
pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn redact_query(u: &url::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_decimals_and_dates_and_is_clamped() {
        assert_eq!(parse_retry_after("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_retry_after("0.1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("9999"), Some(Duration::from_secs(300)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        // As sent: only an hour's cap, for callers that stop asking for longer.
        assert_eq!(retry_after_as_sent("600"), Some(Duration::from_secs(600)));
        assert_eq!(retry_after_as_sent("9999"), Some(Duration::from_secs(3600)));
        assert_eq!(retry_after_as_sent("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn graph_errors_are_read_leniently() {
        let (code, msg) = graph_error(
            br#"{"error":{"code":"TooManyRequests","message":"Please retry again later."}}"#,
        );
        assert_eq!(code, "TooManyRequests");
        assert_eq!(msg, "Please retry again later.");
        let (code, msg) = graph_error(b"<html>oops</html>");
        assert_eq!(code, "");
        assert!(msg.contains("oops"));
    }
}
