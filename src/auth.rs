//! Entra ID client-credentials tokens: one cache per (tenant, resource scope), refreshed ahead of
//! expiry on a monotonic clock, one refresh in flight, dropped on a 401. Token endpoint failures
//! become operator-readable messages keyed on the AADSTS code; the endpoint's body is never logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::certificate::ClientCertificate;
use crate::config::TenantConfig;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken,
    Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Graph's scope in the global cloud; national clouds use their own host (see `graph_scope`).
pub const CLOUD_APPS_SCOPE: &str = "05a65629-4c1b-48c1-a78b-804c4abdd4af/.default";

/// The `/.default` scope for a Graph host: tokens of one cloud are useless in another.
pub fn graph_scope(graph_url: &str) -> String {
    match url::Url::parse(graph_url) {
        Ok(u) if u.host_str().is_some_and(|h| h.ends_with(".microsoft.us")) => {
            format!("https://{}/.default", u.host_str().unwrap_or_default())
        }
        _ => "https://graph.microsoft.com/.default".to_string(),
    }
}

/// Why no token could be had. `Display` is the operator's message, with the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub kind: AuthErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    WrongSecret,
    ExpiredSecret,
    /// The certificate is not (or no longer) registered on the app, or the key does not match.
    WrongCertificate,
    /// The assertion was outside its valid time: this host's clock is off.
    ClockSkew,
    UnknownApplication,
    UnknownTenant,
    InvalidScope,
    /// Network trouble or a 5xx: worth retrying later.
    Transient,
    Other,
}

impl AuthError {
    pub fn is_transient(&self) -> bool {
        self.kind == AuthErrorKind::Transient
    }
}

/// A bearer token and the generation it belongs to (for `invalidate`).
#[derive(Clone)]
pub struct Token {
    pub secret: SecretString,
    pub generation: u64,
}

/// How the app proves who it is.
#[derive(Clone)]
pub enum ClientCredential {
    Secret(SecretString),
    /// A client assertion signed with the certificate's key, made anew for every request.
    Certificate(Arc<ClientCertificate>),
}

/// Who asks for tokens: one app registration in one tenant.
#[derive(Clone)]
pub struct Credentials {
    pub tenant_name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub credential: ClientCredential,
    pub login_url: String,
}

impl Credentials {
    /// The credentials of `[tenants.<name>]`, whose settings were validated at load.
    pub fn of_tenant(name: &str, t: &TenantConfig) -> Result<Credentials, String> {
        let credential = match (&t.client_certificate, t.secret()) {
            (Some(c), _) => ClientCredential::Certificate(c.clone()),
            (None, Some(s)) => ClientCredential::Secret(s.clone()),
            (None, None) => {
                return Err(format!(
                    "tenants.{name} has no credential: set client_secret, client_secret_file or client_certificate_file"
                ))
            }
        };
        Ok(Credentials {
            tenant_name: name.to_string(),
            tenant_id: t.tenant_id.trim().to_string(),
            client_id: t.client_id.trim().to_string(),
            credential,
            login_url: t.effective_login_url(),
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credential = match &self.credential {
            ClientCredential::Secret(_) => "client secret [REDACTED]".to_string(),
            ClientCredential::Certificate(c) => {
                format!("certificate x5t#S256={}", c.thumbprint_s256())
            }
        };
        f.debug_struct("Credentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("credential", &credential)
            .finish()
    }
}

/// RFC 7523's client assertion type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Cached {
    secret: SecretString,
    refresh_at: Instant,
    generation: u64,
}

/// The token for one (tenant, resource scope).
pub struct TokenProvider {
    creds: Credentials,
    scope: String,
    http: reqwest::Client,
    // A tokio mutex: whoever refreshes holds it across the token request, so concurrent callers
    // wait for that one refresh instead of starting their own.
    state: Mutex<Option<Cached>>,
    next_generation: AtomicU64,
    refreshes: AtomicU64,
}

impl TokenProvider {
    /// `http` must not follow redirects (oauth2's SSRF advice); `App` builds it so.
    pub fn new(creds: Credentials, scope: String, http: reqwest::Client) -> Self {
        Self {
            creds,
            scope,
            http,
            state: Mutex::new(None),
            next_generation: AtomicU64::new(1),
            refreshes: AtomicU64::new(0),
        }
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn tenant_name(&self) -> &str {
        &self.creds.tenant_name
    }

    /// The API family this token is for, as metrics label it.
    fn api(&self) -> &'static str {
        if self.scope == CLOUD_APPS_SCOPE {
            "cloud_apps"
        } else {
            "graph"
        }
    }

    /// How many tokens were fetched so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// A valid token, fetching a new one when the cached one is due for refresh.
    pub async fn token(&self) -> Result<Token, AuthError> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(Token {
                    secret: c.secret.clone(),
                    generation: c.generation,
                });
            }
        }
        let fetched = self.fetch().await;
        crate::metrics::token_refresh(&self.creds.tenant_name, self.api(), fetched.is_ok());
        let (secret, lifetime) = fetched?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        *state = Some(Cached {
            secret: secret.clone(),
            refresh_at: Instant::now() + refresh_after(lifetime),
            generation,
        });
        tracing::debug!(tenant = %self.creds.tenant_name, scope = %self.scope, lifetime_s = lifetime.as_secs(), "token acquired");
        Ok(Token { secret, generation })
    }

    /// Drops the token of `generation` after a 401; a newer token is kept, so a burst of 401s
    /// on one expired token costs one refresh.
    pub async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| c.generation == generation) {
            *state = None;
        }
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), AuthError> {
        let token_url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.creds.login_url, self.creds.tenant_id
        );
        let audience = token_url.clone();
        let token_url = TokenUrl::new(token_url).map_err(|e| AuthError {
            kind: AuthErrorKind::Other,
            message: format!("login_url is not a valid URL: {e}"),
        })?;
        let mut client: EntraClient =
            oauth2::Client::new(ClientId::new(self.creds.client_id.clone()))
                .set_auth_type(AuthType::RequestBody)
                .set_token_uri(token_url);
        if let ClientCredential::Secret(secret) = &self.creds.credential {
            client =
                client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
        }
        let http = self.http.clone();
        let send = move |req: oauth2::HttpRequest| {
            let http = http.clone();
            async move { send_token_request(&http, req).await }
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = client
                .exchange_client_credentials()
                .add_scope(Scope::new(self.scope.clone()));
            if let ClientCredential::Certificate(cert) = &self.creds.credential {
                let assertion = cert
                    .assertion(
                        &self.creds.client_id,
                        &audience,
                        crate::time::unix_seconds_now(),
                    )
                    .map_err(|message| AuthError {
                        kind: AuthErrorKind::Other,
                        message: format!("tenant {}: {message}", self.creds.tenant_name),
                    })?;
                request = request
                    .add_extra_param("client_assertion_type", JWT_BEARER)
                    .add_extra_param("client_assertion", assertion);
            }
            let result = request.request_async(&send).await;
            match result {
                Ok(resp) => {
                    let lifetime = resp.expires_in().unwrap_or(Duration::from_secs(3599));
                    let secret = SecretString::from(resp.access_token().secret().to_string());
                    return Ok((secret, lifetime.max(Duration::from_secs(1))));
                }
                Err(e) => {
                    let err = self.explain(e);
                    if err.is_transient() && attempt < 3 {
                        let delay = Duration::from_millis(250 * 2u64.pow(attempt))
                            + Duration::from_millis(fastrand::u64(0..250));
                        tracing::warn!(tenant = %self.creds.tenant_name, attempt, error = %err, "token request failed, retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    fn explain(
        &self,
        e: oauth2::RequestTokenError<TransportError, BasicErrorResponse>,
    ) -> AuthError {
        let tenant = &self.creds.tenant_name;
        match e {
            oauth2::RequestTokenError::ServerResponse(r) => {
                let description = r.error_description().map(String::as_str).unwrap_or("");
                explain_aadsts(tenant, &self.creds.client_id, &self.scope, r.error().as_ref(), description)
            }
            oauth2::RequestTokenError::Request(t) => AuthError {
                kind: if t.transient { AuthErrorKind::Transient } else { AuthErrorKind::Other },
                message: format!("tenant {tenant}: token endpoint unreachable: {}", t.message),
            },
            // The body may hold a token: never repeat it.
            oauth2::RequestTokenError::Parse(_, _) => AuthError {
                kind: AuthErrorKind::Transient,
                message: format!("tenant {tenant}: the token endpoint's answer could not be parsed (is login_url right?)"),
            },
            oauth2::RequestTokenError::Other(m) => AuthError {
                kind: AuthErrorKind::Transient,
                message: format!("tenant {tenant}: token request failed: {m}"),
            },
        }
    }
}

/// Refresh at the earlier of 5 minutes before expiry and 80% of the lifetime (design §1).
fn refresh_after(lifetime: Duration) -> Duration {
    let early = lifetime.saturating_sub(Duration::from_secs(300));
    let eighty = lifetime.mul_f64(0.8);
    early.min(eighty)
}

/// Maps Entra's error to what the operator must do. Only the AADSTS code is taken from the
/// description: the rest carries trace ids that are noise to an operator.
pub fn explain_aadsts(
    tenant: &str,
    client_id: &str,
    scope: &str,
    error: &str,
    description: &str,
) -> AuthError {
    let code = description
        .strip_prefix("AADSTS")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or("");
    let (kind, message) = match code {
        "7000215" => (
            AuthErrorKind::WrongSecret,
            format!("tenant {tenant}: AADSTS7000215 the client secret is wrong. Fix: Entra admin center → App registrations → (client id {client_id}) → Certificates & secrets → New client secret; put its Value (not its Secret ID) in tenants.{tenant}.client_secret"),
        ),
        "7000222" => (
            AuthErrorKind::ExpiredSecret,
            format!("tenant {tenant}: AADSTS7000222 the client secret has expired. Fix: Entra admin center → App registrations → (client id {client_id}) → Certificates & secrets → New client secret; update tenants.{tenant}.client_secret and client_secret_expires"),
        ),
        "700027" => (
            AuthErrorKind::WrongCertificate,
            format!("tenant {tenant}: AADSTS700027 Entra does not accept the certificate: it is not uploaded to this app registration, has expired there, or was replaced. Fix: Entra admin center → App registrations → (client id {client_id}) → Certificates & secrets → Certificates → Upload certificate (the certificate only, without its key), and check that tenants.{tenant}.client_certificate_file holds that certificate"),
        ),
        "700024" => (
            AuthErrorKind::ClockSkew,
            format!("tenant {tenant}: AADSTS700024 the client assertion is outside its valid time range: this host's clock is wrong. Fix: synchronize the clock (NTP)"),
        ),
        "700016" => (
            AuthErrorKind::UnknownApplication,
            format!("tenant {tenant}: AADSTS700016 no application with client id {client_id} in this tenant. Fix: copy the Application (client) ID from the app registration's Overview page into tenants.{tenant}.client_id, and check tenant_id"),
        ),
        "90002" | "90023" | "900023" => (
            AuthErrorKind::UnknownTenant,
            format!("tenant {tenant}: AADSTS{code} tenant not found. Fix: copy the Directory (tenant) ID from the app registration's Overview page into tenants.{tenant}.tenant_id, and check the cloud setting"),
        ),
        "70011" => (
            AuthErrorKind::InvalidScope,
            format!("tenant {tenant}: AADSTS70011 the scope {scope} is not valid for this cloud. Fix: check tenants.{tenant}.cloud and graph_url"),
        ),
        _ if error == "invalid_scope" => (
            AuthErrorKind::InvalidScope,
            format!("tenant {tenant}: invalid_scope for {scope}. Fix: check tenants.{tenant}.cloud and graph_url"),
        ),
        _ if error == "temporarily_unavailable" || error == "server_error" => (
            AuthErrorKind::Transient,
            format!("tenant {tenant}: the token endpoint is temporarily unavailable ({error})"),
        ),
        _ => (
            AuthErrorKind::Other,
            format!("tenant {tenant}: token request refused: {error}{}", if code.is_empty() { String::new() } else { format!(" (AADSTS{code})") }),
        ),
    };
    AuthError { kind, message }
}

type EntraClient = oauth2::Client<
    BasicErrorResponse,
    EntraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The token response, lenient where Entra is: `expires_in` arrives as a number or a string.
#[derive(Debug, Serialize, Deserialize)]
struct EntraTokenResponse {
    access_token: AccessToken,
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
}

impl TokenResponse for EntraTokenResponse {
    type TokenType = BasicTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        None
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    Ok(match Option::<NumOrStr>::deserialize(d)? {
        Some(NumOrStr::Num(n)) => Some(n),
        Some(NumOrStr::Str(s)) => s.trim().parse().ok(),
        None => None,
    })
}

/// A transport failure of the token request (no body, no secret in it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct TransportError {
    message: String,
    transient: bool,
}

async fn send_token_request(
    http: &reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TransportError> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| TransportError {
            message: crate::microsoft::describe_reqwest_error(&e),
            transient: true,
        })?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(TransportError {
            message: format!("HTTP {status}"),
            transient: true,
        });
    }
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|e| TransportError {
        message: crate::microsoft::describe_reqwest_error(&e),
        transient: true,
    })?;
    let mut out = http::Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        *h = headers;
    }
    out.body(bytes.to_vec()).map_err(|e| TransportError {
        message: e.to_string(),
        transient: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_early_for_long_and_short_lifetimes() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(5)),
            Duration::from_secs(0)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(100)),
            Duration::from_secs(0)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(7200)),
            Duration::from_secs(5760)
        );
    }

    #[test]
    fn aadsts_codes_name_the_fix() {
        let e = explain_aadsts(
            "contoso",
            "cid",
            "s",
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x",
        );
        assert_eq!(e.kind, AuthErrorKind::WrongSecret);
        assert!(
            e.message.contains("Certificates & secrets"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("Trace ID"));
        let e = explain_aadsts(
            "contoso",
            "cid",
            "s",
            "invalid_client",
            "AADSTS7000222: expired",
        );
        assert_eq!(e.kind, AuthErrorKind::ExpiredSecret);
        let e = explain_aadsts(
            "contoso",
            "cid",
            "s",
            "unauthorized_client",
            "AADSTS700016: nope",
        );
        assert_eq!(e.kind, AuthErrorKind::UnknownApplication);
        let e = explain_aadsts(
            "contoso",
            "cid",
            "s",
            "invalid_request",
            "AADSTS90002: Tenant not found",
        );
        assert_eq!(e.kind, AuthErrorKind::UnknownTenant);
        let e = explain_aadsts("contoso", "cid", "s", "invalid_scope", "AADSTS70011: bad");
        assert_eq!(e.kind, AuthErrorKind::InvalidScope);
    }

    #[test]
    fn expires_in_may_be_a_string() {
        let r: EntraTokenResponse = serde_json::from_str(
            r#"{"token_type":"Bearer","expires_in":"3599","access_token":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(3599));
        let r: EntraTokenResponse =
            serde_json::from_str(r#"{"token_type":"Bearer","expires_in":60,"access_token":"x"}"#)
                .unwrap();
        assert_eq!(r.expires_in, Some(60));
    }

    #[test]
    fn national_cloud_scopes_follow_the_graph_host() {
        assert_eq!(
            graph_scope("https://graph.microsoft.us"),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(
            graph_scope("https://dod-graph.microsoft.us"),
            "https://dod-graph.microsoft.us/.default"
        );
        assert_eq!(
            graph_scope("http://127.0.0.1:4000/graph"),
            "https://graph.microsoft.com/.default"
        );
    }
}
