//! The Entra ID v2.0 token endpoint (client credentials) and the tenant's OpenID configuration.
//!
//! Tenants and app registrations live in a [`Directory`]. A successful request returns a
//! JWT-shaped access token (`header.payload.signature`, base64url) whose payload carries `aud`,
//! `tid`, `appid`, `roles`, `iat` and `exp` like Entra's; the simulator does not sign anything and
//! validates bearer tokens by looking them up. Errors copy Entra's body (`token-error-response.json`)
//! and its AADSTS codes, so a client's error mapping can be tested against the real shapes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

use crate::{decode_pairs, lock, tenant_key, time, Inner, Simulator, TenantTag};

/// The APIs a token can be for; one token names exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Graph,
    CloudApps,
    DefenderApi,
}

impl Resource {
    /// The resource named by a `scope` value, which must be `{resource}/.default`.
    fn from_scope(scope: &str) -> Option<Resource> {
        match scope.strip_suffix("/.default")? {
            "https://graph.microsoft.com" | "00000003-0000-0000-c000-000000000000" => {
                Some(Resource::Graph)
            }
            "05a65629-4c1b-48c1-a78b-804c4abdd4af" => Some(Resource::CloudApps),
            "https://api.securitycenter.microsoft.com"
            | "https://securitycenter.onmicrosoft.com/windowsatpservice" => {
                Some(Resource::DefenderApi)
            }
            _ => None,
        }
    }

    /// The `aud` claim Entra puts in tokens for this resource.
    fn audience(self) -> &'static str {
        match self {
            Resource::Graph => "https://graph.microsoft.com",
            Resource::CloudApps => "05a65629-4c1b-48c1-a78b-804c4abdd4af",
            Resource::DefenderApi => "https://api.securitycenter.microsoft.com",
        }
    }

    /// Which resource an application permission belongs to. Cloud Apps and Defender for
    /// Endpoint permissions have their own well-known names; everything else is Graph.
    fn of_role(role: &str) -> Resource {
        let prefix = role.split('.').next().unwrap_or("").to_ascii_lowercase();
        match prefix.as_str() {
            "investigation" | "discovery" | "settings" => Resource::CloudApps,
            "machine"
            | "library"
            | "advancedquery"
            | "alert"
            | "ti"
            | "vulnerability"
            | "score"
            | "software"
            | "securityrecommendation"
            | "ip"
            | "url"
            | "file" => Resource::DefenderApi,
            _ => Resource::Graph,
        }
    }
}

struct App {
    secret: String,
    roles: Vec<String>,
    secret_expired: bool,
    certificates: Vec<UploadedCertificate>,
}

/// The secret's checks; `Some` is the refusal to send.
fn check_secret(app: &App, client_id: &str, secret: &str) -> Option<Response> {
    if secret != app.secret {
        return Some(aad_error(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")));
    }
    if app.secret_expired {
        return Some(aad_error(StatusCode::UNAUTHORIZED, "invalid_client", 7000222, &format!(
            "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")));
    }
    None
}

/// A certificate's public part, as uploaded under Certificates & secrets.
struct UploadedCertificate {
    thumbprint_s256: String,
    key: jsonwebtoken::DecodingKey,
    not_after: u64,
}

impl UploadedCertificate {
    fn from_pem(pem_text: &str) -> Result<Self, String> {
        use sha2::Digest as _;
        use x509_cert::der::Decode as _;
        let block = pem::parse_many(pem_text)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or("no CERTIFICATE block")?;
        let cert = x509_cert::Certificate::from_der(block.contents()).map_err(|e| e.to_string())?;
        let tbs = cert.tbs_certificate();
        let public = tbs
            .subject_public_key_info()
            .subject_public_key
            .as_bytes()
            .ok_or("the public key is not a whole number of bytes")?;
        Ok(UploadedCertificate {
            thumbprint_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(block.contents())),
            key: jsonwebtoken::DecodingKey::from_rsa_der(public),
            not_after: tbs.validity().not_after.to_unix_duration().as_secs(),
        })
    }
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Entra's checks of a client assertion; `Some` is the refusal to send.
fn verify_assertion(
    app: &App,
    client_id: &str,
    audience_suffix: &str,
    assertion_type: Option<&str>,
    assertion: &str,
) -> Option<Response> {
    let invalid = |code: u32, message: String| {
        Some(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            &message,
        ))
    };
    if assertion_type != Some(JWT_BEARER) {
        return invalid(
            7000219,
            format!("'client_assertion_type' must be '{JWT_BEARER}'."),
        );
    }
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return invalid(50027, "JWT token is invalid or malformed.".to_string());
    };
    let Some(thumbprint) = header.x5t_s256.as_deref() else {
        return invalid(
            700027,
            "Client assertion failed signature validation. Reason: the x5t#S256 header is missing."
                .to_string(),
        );
    };
    if header.alg != jsonwebtoken::Algorithm::PS256 {
        return invalid(700027, format!("Client assertion failed signature validation. Reason: algorithm {:?} is not PS256.", header.alg));
    }
    let Some(cert) = app
        .certificates
        .iter()
        .find(|c| c.thumbprint_s256 == thumbprint)
    else {
        return invalid(700027, format!("Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"));
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now > cert.not_after {
        return invalid(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key used is expired.]"
                .to_string(),
        );
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
    validation.validate_aud = false;
    validation.validate_nbf = true;
    validation.set_issuer(&[client_id]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let claims = match jsonwebtoken::decode::<serde_json::Value>(assertion, &cert.key, &validation)
    {
        Ok(data) => data.claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            return match e.kind() {
                ErrorKind::InvalidSignature => invalid(700027, "Client assertion contains an invalid signature.".to_string()),
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => invalid(700024, "Client assertion is not within its valid time range.".to_string()),
                ErrorKind::InvalidIssuer => invalid(700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://aka.ms/certCreds .".to_string()),
                other => invalid(50027, format!("JWT token is invalid or malformed ({other:?}).")),
            };
        }
    };
    if claims["sub"].as_str() != Some(client_id) {
        return invalid(
            700021,
            "Client assertion subject doesn't match 'client_id' parameter.".to_string(),
        );
    }
    // The audience is this endpoint's URL; the scheme and host are whatever the client used.
    let aud = claims["aud"].as_str().unwrap_or("");
    if !aud
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(audience_suffix))
    {
        return invalid(
            50027,
            format!("Invalid JWT token. The audience '{aud}' is not this token endpoint."),
        );
    }
    None
}

/// What a token stands for.
#[derive(Clone, Debug)]
pub(crate) struct TokenInfo {
    pub tenant: String,
    pub client_id: String,
    pub resource: Resource,
    pub roles: Vec<String>,
    pub expires: SystemTime,
}

pub(crate) enum Lookup {
    Unknown,
    Expired(TokenInfo),
    Valid(TokenInfo),
}

pub(crate) struct Directory {
    tenants: HashMap<String, HashMap<String, App>>,
    tokens: HashMap<String, TokenInfo>,
    issued: HashMap<String, usize>,
    lifetime: Duration,
}

impl Directory {
    pub fn new(lifetime: Duration) -> Self {
        Directory {
            tenants: HashMap::new(),
            tokens: HashMap::new(),
            issued: HashMap::new(),
            lifetime,
        }
    }

    /// Resolves a bearer token. Expired tokens still name their tenant, so throttle windows can
    /// be checked for them too.
    pub fn lookup(&self, token: &str) -> Lookup {
        match self.tokens.get(token) {
            None => Lookup::Unknown,
            Some(t) if SystemTime::now() >= t.expires => Lookup::Expired(t.clone()),
            Some(t) => Lookup::Valid(t.clone()),
        }
    }
}

/// Entra's error body: `AADSTSnnnn: message` plus trace and correlation ids and a timestamp.
fn aad_error(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let (trace, corr) = (crate::new_guid(), crate::new_guid());
    let ts = time::entra_timestamp(time::now_ticks());
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": "https://login.microsoftonline.com/error?code=".to_string() + &code.to_string(),
    });
    (
        status,
        [(header::CACHE_CONTROL, "no-store, no-cache")],
        Json(body),
    )
        .into_response()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Client credentials from HTTP Basic auth, the alternative to form fields that Entra accepts.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    // The RFC 6749 form url-encodes both parts before Basic encoding.
    let dec = |s: &str| {
        decode_pairs(&format!("x={s}"))
            .pop()
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

async fn token(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut resp = issue(&inner, &tenant, &headers, &body);
    resp.extensions_mut().insert(TenantTag(tenant_key(&tenant)));
    resp
}

fn issue(inner: &Inner, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = decode_pairs(&String::from_utf8_lossy(body))
        .into_iter()
        .collect();
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let key = tenant_key(tenant);
    let mut dir = lock(&inner.directory);
    let lifetime = dir.lifetime;
    let Some(apps) = dir.tenants.get(&key) else {
        return aad_error(StatusCode::BAD_REQUEST, "invalid_request", 90002, &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."));
    };
    let Some(grant) = field("grant_type") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    if grant != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let basic = basic_auth(headers);
    let client_id = field("client_id")
        .map(str::to_owned)
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = field("client_secret")
        .map(str::to_owned)
        .or_else(|| basic.as_ref().map(|b| b.1.clone()));
    let Some(client_id) = client_id.filter(|c| !c.is_empty()) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(app) = apps.get(&client_id.to_ascii_lowercase()) else {
        return aad_error(StatusCode::BAD_REQUEST, "unauthorized_client", 700016, &format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."));
    };
    if let Some(assertion) = field("client_assertion") {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let suffix = format!("{host}/{tenant}/oauth2/v2.0/token");
        if let Some(refused) = verify_assertion(
            app,
            &client_id,
            &suffix,
            field("client_assertion_type"),
            assertion,
        ) {
            return refused;
        }
    } else if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        if let Some(refused) = check_secret(app, &client_id, &secret) {
            return refused;
        }
    } else {
        return aad_error(StatusCode::UNAUTHORIZED, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
    }
    let Some(scope) = field("scope") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let resources: Vec<Option<Resource>> = scopes.iter().map(|s| Resource::from_scope(s)).collect();
    let resource = match resources.as_slice() {
        [Some(r)] => *r,
        [_, _, ..] if resources.iter().all(Option::is_some) => {
            return aad_error(StatusCode::BAD_REQUEST, "invalid_scope", 28000, &format!(
                "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid."));
        }
        _ => {
            return aad_error(StatusCode::BAD_REQUEST, "invalid_scope", 70011, &format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."));
        }
    };
    let roles: Vec<String> = app
        .roles
        .iter()
        .filter(|r| Resource::of_role(r) == resource)
        .cloned()
        .collect();
    let now = SystemTime::now();
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = lifetime.as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": "sim-key", "kid": "sim-key"});
    let payload = json!({
        "aud": resource.audience(),
        "iss": format!("https://sts.windows.net/{key}/"),
        "iat": iat, "nbf": iat, "exp": iat + secs,
        "aio": crate::new_guid(),
        "app_displayname": "m365-sim app",
        "appid": client_id, "appidacr": "1",
        "idp": format!("https://sts.windows.net/{key}/"),
        "idtyp": "app",
        "oid": crate::new_guid(),
        "roles": roles,
        "sub": crate::new_guid(),
        "tid": key,
        "uti": crate::new_guid(),
        "ver": "1.0",
    });
    let sig: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(256)
        .collect();
    let access_token = format!(
        "{}.{}.{}",
        b64(&header),
        b64(&payload),
        URL_SAFE_NO_PAD.encode(sig)
    );
    dir.tokens.insert(
        access_token.clone(),
        TokenInfo {
            tenant: key.clone(),
            client_id: client_id.clone(),
            resource,
            roles,
            expires: now + lifetime,
        },
    );
    *dir.issued.entry(key).or_default() += 1;
    let body = json!({"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": access_token});
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store, no-cache")],
        Json(body),
    )
        .into_response()
}

async fn openid_configuration(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
) -> Response {
    let key = tenant_key(&tenant);
    if !lock(&inner.directory).tenants.contains_key(&key) {
        let mut r = aad_error(StatusCode::BAD_REQUEST, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."));
        r.extensions_mut().insert(TenantTag(key));
        return r;
    }
    let base = format!("{}/{key}", inner.base_url);
    let body = json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{}/{key}/discovery/v2.0/keys", inner.base_url),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    });
    let mut r = Json(body).into_response();
    r.extensions_mut().insert(TenantTag(key));
    r
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

impl Simulator {
    /// Registers a tenant (its id as used in the token URL and in the `tid` claim).
    pub fn add_tenant(&self, tenant_id: &str) {
        lock(&self.inner.directory)
            .tenants
            .entry(tenant_key(tenant_id))
            .or_default();
    }

    /// Registers an app in a tenant (creating the tenant if needed) with its secret and the
    /// application permissions admin-consented for it. Graph permissions
    /// (`SecurityAlert.Read.All`, …) go into Graph tokens; Cloud Apps ones (`Investigation.read`,
    /// `Discovery.read`) and Defender for Endpoint ones (`Machine.Read.All`, `Alert.Read.All`, …)
    /// into tokens for those resources. Registering the same client again replaces it.
    pub fn add_app(&self, tenant_id: &str, client_id: &str, secret: &str, roles: &[&str]) {
        let app = App {
            secret: secret.to_string(),
            roles: roles.iter().map(|r| (*r).to_string()).collect(),
            secret_expired: false,
            certificates: Vec::new(),
        };
        lock(&self.inner.directory)
            .tenants
            .entry(tenant_key(tenant_id))
            .or_default()
            .insert(client_id.to_ascii_lowercase(), app);
    }

    /// Uploads a certificate (PEM; only its public part is read) to an app registered with
    /// [`Simulator::add_app`], so the app can sign in with a client assertion signed by its key.
    pub fn add_app_certificate(
        &self,
        tenant_id: &str,
        client_id: &str,
        certificate_pem: &str,
    ) -> Result<(), String> {
        let cert = UploadedCertificate::from_pem(certificate_pem)?;
        let mut dir = lock(&self.inner.directory);
        let app = dir
            .tenants
            .get_mut(&tenant_key(tenant_id))
            .and_then(|t| t.get_mut(&client_id.to_ascii_lowercase()))
            .ok_or_else(|| format!("no app {client_id} in tenant {tenant_id}: add_app first"))?;
        app.certificates.push(cert);
        Ok(())
    }

    /// Marks an app's secret as expired (AADSTS7000222) or valid again.
    pub fn set_secret_expired(&self, tenant_id: &str, client_id: &str, expired: bool) {
        let mut dir = lock(&self.inner.directory);
        if let Some(app) = dir
            .tenants
            .get_mut(&tenant_key(tenant_id))
            .and_then(|t| t.get_mut(&client_id.to_ascii_lowercase()))
        {
            app.secret_expired = expired;
        }
    }

    /// The lifetime (`expires_in`) of tokens issued from now on. Zero issues tokens that are
    /// already expired, which lets a test see a 401 without waiting.
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.inner.directory).lifetime = d;
    }

    /// Every access token issued so far (tests check none of them reached a log).
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.directory).tokens.keys().cloned().collect()
    }

    /// How many tokens a tenant was issued (all resources).
    pub fn tokens_issued(&self, tenant_id: &str) -> usize {
        lock(&self.inner.directory)
            .issued
            .get(&tenant_key(tenant_id))
            .copied()
            .unwrap_or(0)
    }

    /// How many Graph and Cloud Apps requests were answered 401 (missing, unknown, expired or
    /// wrong-audience token).
    pub fn unauthorized_count(&self) -> usize {
        self.inner
            .unauthorized
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_split_by_resource() {
        assert_eq!(Resource::of_role("SecurityAlert.Read.All"), Resource::Graph);
        assert_eq!(Resource::of_role("Investigation.read"), Resource::CloudApps);
        assert_eq!(Resource::of_role("Machine.Read.All"), Resource::DefenderApi);
        assert_eq!(Resource::of_role("User.Read.All"), Resource::Graph);
    }

    #[test]
    fn scopes_name_one_resource() {
        assert_eq!(
            Resource::from_scope("https://graph.microsoft.com/.default"),
            Some(Resource::Graph)
        );
        assert_eq!(
            Resource::from_scope("05a65629-4c1b-48c1-a78b-804c4abdd4af/.default"),
            Some(Resource::CloudApps)
        );
        assert_eq!(
            Resource::from_scope("https://graph.microsoft.com/SecurityAlert.Read.All"),
            None
        );
    }
}
