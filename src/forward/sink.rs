//! The Dropzone side of delivery: how a batch is put on the wire (body, auth, idempotency key)
//! and the one classifier that turns an answer into delivered, retry, split or pause (design §7).
//! Kept small and behind `DropzoneSink` so the body and auth can change in one place.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{ForwardAuth, ForwardConfig};
use crate::microsoft::{describe_reqwest_error, parse_retry_after, truncate};
use crate::store::BatchItem;

/// What the destination said about a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// 408, 409, 429, 5xx (not 501), timeouts, connection errors: the same batch again later.
    Retry {
        retry_after: Option<Duration>,
        error: String,
    },
    /// 413: split, or dead-letter a single alert as too large.
    TooLarge,
    /// Another 4xx: split to isolate the alert the receiver refuses.
    Rejected {
        status: u16,
        body: String,
    },
    /// The endpoint or key is wrong, not the data (401, 403, 404, 405, 410, 415, 501, and any
    /// 3xx: redirects are not followed, so a redirect means the URL is not the endpoint's):
    /// stop sending to this destination.
    Pause {
        status: u16,
        error: String,
    },
}

/// Sorts an HTTP status into an outcome; the body is kept (truncated) for dead letters.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> SendOutcome {
    match status {
        200..=299 => SendOutcome::Delivered,
        408 | 409 | 429 => SendOutcome::Retry {
            retry_after,
            error: format!("HTTP {status}"),
        },
        413 => SendOutcome::TooLarge,
        // The client follows no redirect (one could carry the API key to another host), so a
        // 3xx says nothing about the alerts: the configured URL is not the endpoint.
        300..=399 | 401 | 403 | 404 | 405 | 410 | 415 | 501 => SendOutcome::Pause {
            status,
            error: pause_message(status),
        },
        500..=599 => SendOutcome::Retry {
            retry_after,
            error: format!("HTTP {status}"),
        },
        _ => SendOutcome::Rejected {
            status,
            body: truncate(body, 1000),
        },
    }
}

fn pause_message(status: u16) -> String {
    let fix = match status {
        300..=399 => {
            "the URL redirects elsewhere and redirects are not followed: set forward.url to the final address"
        }
        401 | 403 => "the API key is wrong or lacks access: check forward.api_key and forward.auth",
        404 | 405 | 410 | 501 => "the URL does not accept alerts: check forward.url",
        415 => "the endpoint refuses JSON: check forward.url",
        _ => "check the [forward] settings",
    };
    format!("destination answered HTTP {status}: {fix}")
}

pub struct DropzoneSink {
    http: reqwest::Client,
    url: String,
    api_key: SecretString,
    auth: ForwardAuth,
    timeout: Duration,
}

impl DropzoneSink {
    pub fn new(http: reqwest::Client, cfg: &ForwardConfig) -> Self {
        Self {
            http,
            url: cfg.url.clone(),
            api_key: cfg
                .api_key
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            auth: cfg.auth,
            timeout: cfg.timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Builds `{"alerts":[…]}` from the stored bytes as they are: no re-serialization.
    pub fn body(items: &[BatchItem]) -> Vec<u8> {
        let len: usize = items.iter().map(|i| i.body.len() + 1).sum();
        let mut out = Vec::with_capacity(len + 16);
        out.extend_from_slice(b"{\"alerts\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&item.body);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Posts one batch; `timeout` bounds the whole exchange (the lease may cut the configured one).
    pub async fn send(&self, key: &str, items: &[BatchItem], timeout: Duration) -> SendOutcome {
        let authorization = match self.auth {
            ForwardAuth::Bearer => format!("Bearer {}", self.api_key.expose_secret()),
            ForwardAuth::Raw => self.api_key.expose_secret().to_string(),
        };
        let result = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .timeout(timeout)
            .body(Self::body(items))
            .send()
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::Retry {
                    retry_after: None,
                    error: describe_reqwest_error(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // The body matters only for rejections; it is read with the same timeout.
        let body = if (400..500).contains(&status) {
            resp.text().await.unwrap_or_default()
        } else {
            String::new()
        };
        classify(status, retry_after, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_follows_the_delivery_contract() {
        assert_eq!(classify(202, None, ""), SendOutcome::Delivered);
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s, None, ""), SendOutcome::Retry { .. }),
                "{s}"
            );
        }
        assert_eq!(classify(413, None, ""), SendOutcome::TooLarge);
        for s in [301, 302, 303, 307, 308, 401, 403, 404, 405, 410, 415, 501] {
            assert!(
                matches!(classify(s, None, ""), SendOutcome::Pause { .. }),
                "{s}"
            );
        }
        assert!(matches!(
            classify(400, None, "bad"),
            SendOutcome::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(422, None, "bad"),
            SendOutcome::Rejected { status: 422, .. }
        ));
    }

    #[test]
    fn body_joins_stored_bytes_verbatim() {
        let items = vec![
            BatchItem {
                seq: 1,
                body: br#"{"x":1}"#.to_vec(),
            },
            BatchItem {
                seq: 2,
                body: br#"{"y":"\u0000"}"#.to_vec(),
            },
        ];
        let body = DropzoneSink::body(&items);
        assert_eq!(body, br#"{"alerts":[{"x":1},{"y":"\u0000"}]}"#.to_vec());
    }
}
