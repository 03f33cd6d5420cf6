//! What every Microsoft Graph resource of the simulator shares: bearer-token checks (401/403),
//! the fault gate (429 with `Retry-After`, 503, delays), Graph's response headers and error body,
//! the OData query options (`$filter`, `$top`, `$skip`, `$count`) and offset paging with
//! `@odata.nextLink` (`$skip`, or an opaque `$skiptoken` for the beta submission lists). The
//! resources themselves live beside it: `alerts.rs`, `incidents.rs`, `submissions.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::faults::Gate;
use crate::odata::{self, Expr, Schema};
use crate::token::{Lookup, Resource};
use crate::{decode_pairs, lock, time, Inner, TenantTag};

/// Graph's JSON content type, parameters included, as a strict client would see it.
const GRAPH_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// One Graph request that passed authentication and the fault gate.
pub(crate) struct Ctx {
    pub inner: Arc<Inner>,
    pub tenant: String,
    /// The app the token was issued to (lowercase), and its roles for Graph.
    pub client_id: String,
    pub roles: Vec<String>,
    request_id: String,
    client_request_id: Option<String>,
    /// The request asked for `Prefer: include-unknown-enum-members`: enum members declared
    /// after `unknownFutureValue` are sent as themselves, not as `unknownFutureValue`.
    pub late_enum_members: bool,
}

fn base_response(
    status: StatusCode,
    body: impl Into<Body>,
    request_id: &str,
    client_request_id: Option<&str>,
    tenant: Option<&str>,
) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(GRAPH_JSON));
    // Graph stamps every answer with its own clock; clients take "now" from here.
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert(header::DATE, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("request-id", v);
    }
    if let Some(v) = client_request_id.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("client-request-id", v);
    }
    if let Some(t) = tenant {
        r.extensions_mut().insert(TenantTag(t.to_string()));
    }
    r
}

/// Graph's error body (`graph-error-example.json`), with `innerError` filled in.
fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    details: bool,
    request_id: &str,
    client_request_id: Option<&str>,
    tenant: Option<&str>,
) -> Response {
    let mut inner = json!({"date": time::iso_plain(time::now_ticks()), "request-id": request_id});
    if let Some(c) = client_request_id {
        inner["client-request-id"] = json!(c);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The 429 sample carries these extra members.
        inner["code"] = json!("429");
        inner["message"] = json!("Please retry after");
        inner["status"] = json!("429");
    }
    let mut error = json!({"code": code, "message": message});
    if details {
        // Some answers (the incidents `$top` one) carry an empty `details` array.
        error["details"] = json!([]);
    }
    error["innerError"] = inner;
    let body = json!({ "error": error });
    base_response(
        status,
        body.to_string(),
        request_id,
        client_request_id,
        tenant,
    )
}

/// Requests per sliding minute Graph allows one app in one tenant on `/security` (API.md §2).
pub(crate) const DEFAULT_SECURITY_PER_MINUTE: usize = 150;

/// [`begin`] for the `/security` resources: the request also counts against the budget of its
/// app and tenant, and is answered 429 with `Retry-After` when over it.
pub(crate) async fn begin_security(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    any_of_roles: &[&str],
) -> Result<Ctx, Response> {
    begin_with(inner, headers, any_of_roles, true).await
}

/// Authenticates a Graph request and runs it through its tenant's faults; no `/security` budget
/// (the mail endpoints keep their own limits).
pub(crate) async fn begin(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    any_of_roles: &[&str],
) -> Result<Ctx, Response> {
    begin_with(inner, headers, any_of_roles, false).await
}

/// Authenticates a Graph request and runs it through its tenant's faults. `any_of_roles`: the
/// application permissions of which the token needs at least one (empty: the caller checks
/// roles itself, as the mail endpoints do with their own error body). On refusal, the answer
/// to send.
async fn begin_with(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    any_of_roles: &[&str],
    security: bool,
) -> Result<Ctx, Response> {
    let request_id = crate::new_guid();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let crid = client_request_id.as_deref();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let lookup = match &bearer {
        Some(t) => lock(&inner.directory).lookup(t),
        None => Lookup::Unknown,
    };
    let tenant = match &lookup {
        Lookup::Valid(t) | Lookup::Expired(t) => Some(t.tenant.clone()),
        Lookup::Unknown => None,
    };
    let unauthorized = |message: &str| {
        inner.unauthorized.fetch_add(1, Ordering::Relaxed);
        // An early return is a violation whatever token it carries.
        if let Some(t) = &tenant {
            let now = Instant::now();
            let early = lock(&inner.faults)
                .get(t)
                .is_some_and(|f| f.in_throttle_window(now))
                || (security
                    && lock(&inner.graph_throttle)
                        .iter()
                        .any(|((tenant, _), th)| tenant == t && th.in_window(now)));
            if early {
                inner.throttle_violations.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
            false,
            &request_id,
            crid,
            tenant.as_deref(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\""),
        );
        r
    };
    let info = match lookup {
        Lookup::Unknown if bearer.is_none() => return Err(unauthorized("Access token is empty.")),
        Lookup::Unknown => {
            return Err(unauthorized(
                "IDX14100: JWT is not well formed, there are no dots (.).",
            ))
        }
        Lookup::Expired(_) => {
            return Err(unauthorized(
                "Lifetime validation failed, the token is expired.",
            ))
        }
        Lookup::Valid(info) if info.resource != Resource::Graph => {
            return Err(unauthorized(
                "Access token validation failure. Invalid audience.",
            ));
        }
        Lookup::Valid(info) => info,
    };
    let tenant = info.tenant.clone();

    if security {
        // Counted per app and tenant, as Graph does, before the test's own faults.
        let per_minute = inner.graph_per_minute.load(Ordering::Relaxed);
        let key = (tenant.clone(), info.client_id.to_ascii_lowercase());
        let (early, retry) = lock(&inner.graph_throttle)
            .entry(key)
            .or_default()
            .admit(Instant::now(), per_minute);
        if early {
            inner.throttle_violations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %tenant, "graph request arrived inside a budget Retry-After");
        }
        if let Some(secs) = retry {
            inner.graph_over_budget.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %tenant, per_minute, "graph /security budget exceeded: 429");
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Please retry again later.",
                false,
                &request_id,
                crid,
                Some(&tenant),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return Err(r);
        }
    }

    let (violation, gate, delay) = {
        let mut faults = lock(&inner.faults);
        let state = faults.entry(tenant.clone()).or_default();
        let (violation, gate) = state.on_request(Instant::now());
        (violation, gate, state.faults.delay)
    };
    if violation {
        inner.throttle_violations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant = %tenant, "graph request arrived inside a Retry-After window");
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match gate {
        Gate::Pass => {}
        Gate::Throttle(retry_after) => {
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Please retry again later.",
                false,
                &request_id,
                crid,
                Some(&tenant),
            );
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(r);
        }
        Gate::ServerError => {
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceNotAvailable",
                "The service is temporarily unavailable. Please retry later.",
                false,
                &request_id,
                crid,
                Some(&tenant),
            ));
        }
    }
    if !any_of_roles.is_empty()
        && !info
            .roles
            .iter()
            .any(|r| any_of_roles.contains(&r.as_str()))
    {
        let message = format!(
            "Missing application roles. API required roles: {}. Application roles: {}.",
            any_of_roles.join(", "),
            info.roles.join(", ")
        );
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &message,
            false,
            &request_id,
            crid,
            Some(&tenant),
        ));
    }
    Ok(Ctx {
        inner: inner.clone(),
        tenant,
        client_id: info.client_id.to_ascii_lowercase(),
        roles: info.roles,
        request_id,
        client_request_id,
        late_enum_members: prefers_late_enum_members(headers),
    })
}

/// Whether any `Prefer` header carries the `include-unknown-enum-members` preference (Prefer
/// takes a comma-separated list, and may be sent more than once).
fn prefers_late_enum_members(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.trim()
                .eq_ignore_ascii_case("include-unknown-enum-members")
        })
}

/// The evolvable enums of `microsoft.graph.security` that have members declared after
/// `unknownFutureValue` (graph-security-enums-v1.0.json), by the property that carries them:
/// Graph sends those members only to clients that prefer `include-unknown-enum-members`.
const LATE_MEMBERS: &[(&str, &[&str])] = &[
    (
        "serviceSource",
        &[
            "microsoftDefenderForCloud",
            "microsoftSentinel",
            "microsoftInsiderRiskManagement",
            "microsoftThreatIntelligence",
            "microsoftSecurityForAI",
        ],
    ),
    (
        "detectionSource",
        &[
            "microsoftDefenderForCloud",
            "microsoftDefenderForIoT",
            "microsoftDefenderForServers",
            "microsoftDefenderForStorage",
            "microsoftDefenderForDNS",
            "microsoftDefenderForDatabases",
            "microsoftDefenderForContainers",
            "microsoftDefenderForNetwork",
            "microsoftDefenderForAppService",
            "microsoftDefenderForKeyVault",
            "microsoftDefenderForResourceManager",
            "microsoftDefenderForApiManagement",
            "nrtAlerts",
            "scheduledAlerts",
            "microsoftDefenderThreatIntelligenceAnalytics",
            "builtInMl",
            "microsoftInsiderRiskManagement",
            "microsoftThreatIntelligence",
            "microsoftDefenderForAIServices",
            "securityCopilot",
            "microsoftSentinel",
        ],
    ),
    // incidentStatus (alertStatus has no late member).
    ("status", &["awaitingAction"]),
    (
        "remediationStatus",
        &[
            "active",
            "pendingApproval",
            "declined",
            "unremediated",
            "running",
            "partiallyRemediated",
        ],
    ),
];

/// Replaces, in compact rendered JSON, each late enum member with `unknownFutureValue`. One
/// scan per property name, not per member: a page of 1,000 alerts is several megabytes.
pub(crate) fn hide_late_members(body: String) -> String {
    let mut body = body;
    for (prop, members) in LATE_MEMBERS {
        let key = format!("\"{prop}\":\"");
        if !body.contains(&key) {
            continue;
        }
        let mut out = String::with_capacity(body.len());
        let mut rest = body.as_str();
        while let Some(at) = rest.find(&key) {
            let value_start = at + key.len();
            out.push_str(&rest[..value_start]);
            rest = &rest[value_start..];
            let end = rest.find('"').unwrap_or(rest.len());
            if members.contains(&&rest[..end]) {
                out.push_str("unknownFutureValue");
                rest = &rest[end..];
            }
        }
        out.push_str(rest);
        body = out;
    }
    body
}

impl Ctx {
    /// A Graph error answer for this request.
    pub fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        error_response(
            status,
            code,
            message,
            false,
            &self.request_id,
            self.client_request_id.as_deref(),
            Some(&self.tenant),
        )
    }

    /// A response with this request's Graph headers (`Date`, `request-id`, `client-request-id`)
    /// and the given status and body; the caller sets `Content-Type` if it is not JSON.
    pub fn respond(&self, status: StatusCode, body: impl Into<Body>) -> Response {
        base_response(
            status,
            body,
            &self.request_id,
            self.client_request_id.as_deref(),
            Some(&self.tenant),
        )
    }

    /// The 400 answer for a refused query option.
    pub fn query_error(&self, e: &QueryError) -> Response {
        error_response(
            StatusCode::BAD_REQUEST,
            e.code,
            &e.message,
            e.details,
            &self.request_id,
            self.client_request_id.as_deref(),
            Some(&self.tenant),
        )
    }

    /// A security entity's JSON as Graph sends it to this client: late enum members hidden
    /// unless the request preferred them.
    pub fn enum_members(&self, body: String) -> String {
        if self.late_enum_members {
            body
        } else {
            hide_late_members(body)
        }
    }

    /// A 200 with a JSON body, cut in half if the tenant's `truncate_next` fault says so.
    pub fn ok(&self, body: String) -> Response {
        let truncate = lock(&self.inner.faults)
            .get_mut(&self.tenant)
            .is_some_and(|f| f.take_truncate());
        let mut bytes = body.into_bytes();
        if truncate {
            bytes.truncate(bytes.len() / 2);
        }
        self.ok_whole(bytes)
    }

    /// A 200 with a JSON body, never truncated: the `truncate_next` fault is documented for
    /// alerts_v2 answers only.
    pub fn ok_whole(&self, body: impl Into<Body>) -> Response {
        base_response(
            StatusCode::OK,
            body,
            &self.request_id,
            self.client_request_id.as_deref(),
            Some(&self.tenant),
        )
    }

    /// The `@odata.nextLink` for the page at `skip`: the request's own path and query options
    /// with `$skip` replaced, on the simulator's base URL (or the tenant's `next_link_base`).
    pub fn next_link(&self, uri: &Uri, skip: usize) -> String {
        self.next_link_with(uri, "$skip", &skip.to_string())
    }

    /// The `@odata.nextLink` carrying `$skiptoken` for the page at `offset`.
    pub fn next_link_token(&self, uri: &Uri, offset: usize) -> String {
        self.next_link_with(uri, "$skiptoken", &skiptoken(offset))
    }

    /// The request's path and query with any `$skip`/`$skiptoken` replaced by `key=value`
    /// (`value` must need no percent-encoding).
    fn next_link_with(&self, uri: &Uri, key: &str, value: &str) -> String {
        let base = lock(&self.inner.faults)
            .get(&self.tenant)
            .and_then(|f| f.faults.next_link_base.clone())
            .unwrap_or_else(|| self.inner.base_url.clone());
        let mut parts: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                decode_pairs(p)
                    .first()
                    .is_none_or(|(k, _)| k != "$skip" && !k.eq_ignore_ascii_case("$skiptoken"))
            })
            .map(str::to_owned)
            .collect();
        parts.push(format!("{key}={value}"));
        format!(
            "{}{}?{}",
            base.trim_end_matches('/'),
            uri.path(),
            parts.join("&")
        )
    }
}

/// An entity answer: the rendered object with its `@odata.context` in front.
pub(crate) fn entity_body(context: &str, rendered: &str) -> String {
    let mut out = String::with_capacity(rendered.len() + context.len() + 32);
    out.push_str("{\"@odata.context\":");
    crate::generator::esc(&mut out, context);
    match rendered.trim_start().strip_prefix('{') {
        Some(rest) if rest.trim_start() != "}" => {
            out.push(',');
            out.push_str(rest);
        }
        _ => out.push('}'),
    }
    out
}

/// Prefix of the decoded `$skiptoken`, so a token from elsewhere is refused.
const SKIPTOKEN_PREFIX: &str = "m365-sim:offset:";

/// An opaque `$skiptoken` for an offset into a listing (URL-safe, needs no encoding).
pub(crate) fn skiptoken(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("{SKIPTOKEN_PREFIX}{offset}"))
}

fn parse_skiptoken(token: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.strip_prefix(SKIPTOKEN_PREFIX)?.parse().ok()
}

/// The OData query options of a collection request.
pub(crate) struct ListQuery {
    pub filter: Option<Expr>,
    pub top: usize,
    /// Where the page starts: from `$skip`, or from the offset a `$skiptoken` carries.
    pub skip: usize,
    pub count: bool,
    /// The navigation properties named in `$expand`.
    pub expand: Vec<String>,
}

/// How a collection pages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paging {
    /// `$skip=n` (v1.0 security collections).
    Skip,
    /// `$skiptoken=<opaque>` (the beta submission lists); `$skip` is refused.
    SkipToken,
}

/// What a collection accepts.
pub(crate) struct Rules {
    pub default_top: usize,
    pub max_top: usize,
    /// Above `max_top`: a 400 (incidents) instead of clamping (alerts_v2, submissions).
    pub reject_over_max: bool,
    /// Navigation properties `$expand` may name (empty: `$expand` is refused).
    pub expand: &'static [&'static str],
    pub paging: Paging,
    /// The largest `$skip` served (Microsoft's security API: 500, "$skip=501 returns 400").
    pub max_skip: Option<usize>,
}

/// Why a query was refused: the 400's `code`, `message` and whether it carries `details: []`.
pub(crate) struct QueryError {
    pub code: &'static str,
    pub message: String,
    pub details: bool,
}

impl From<String> for QueryError {
    fn from(message: String) -> Self {
        QueryError {
            code: "BadRequest",
            message,
            details: false,
        }
    }
}

/// Microsoft's security API serves `$skip` up to this, and answers 400 above it
/// (security-error-codes, "Constraints": `$skip=500` is 200 OK, `$skip=501` is 400).
pub(crate) const MAX_SKIP: usize = 500;

/// Reads `$filter`, `$top`, `$skip` and `$count`. `$top` is clamped to `max_top` as Graph does
/// for alerts_v2; any other `$` option, a repeated one, or a bad value is an error message for
/// a 400. Options without `$` are ignored, as Graph ignores unknown parameters.
pub(crate) fn list_query(
    uri: &Uri,
    schema: &Schema,
    default_top: usize,
    max_top: usize,
) -> Result<ListQuery, String> {
    let rules = Rules {
        default_top,
        max_top,
        reject_over_max: false,
        expand: &[],
        paging: Paging::Skip,
        max_skip: Some(MAX_SKIP),
    };
    query(uri, schema, &rules).map_err(|e| e.message)
}

/// Reads a collection's query options by its [`Rules`]: `$filter`, `$top`, `$count`, `$expand`
/// and `$skip` or `$skiptoken`.
pub(crate) fn query(uri: &Uri, schema: &Schema, rules: &Rules) -> Result<ListQuery, QueryError> {
    let mut q = ListQuery {
        filter: None,
        top: rules.default_top.min(rules.max_top),
        skip: 0,
        count: false,
        expand: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in decode_pairs(uri.query().unwrap_or("")) {
        if !k.starts_with('$') {
            continue;
        }
        // Graph matches `$skipToken` and `$skiptoken` alike.
        let k = if k.eq_ignore_ascii_case("$skiptoken") {
            "$skiptoken".to_string()
        } else {
            k
        };
        if seen.contains(&k) {
            return Err(format!("Query option '{k}' was specified more than once, but it must be specified at most once.").into());
        }
        seen.push(k.clone());
        match k.as_str() {
            "$filter" => q.filter = Some(odata::parse(&v, schema)?),
            "$top" => {
                let n: usize = v.trim().parse().map_err(|_| format!("Invalid value '{v}' for $top query option found. The $top query option requires a non-negative integer value."))?;
                if rules.reject_over_max && n > rules.max_top {
                    // Seen in the wild (graph-error-incidents-top-exceeded.json): empty code.
                    return Err(QueryError {
                        code: "",
                        message: format!("The query specified in the URI is not valid. The limit of '{}' for Top query has been exceeded. The value from the incoming request is '{n}'.", rules.max_top),
                        details: true,
                    });
                }
                q.top = n.min(rules.max_top);
            }
            "$skip" if rules.paging == Paging::Skip => {
                q.skip = v.trim().parse().map_err(|_| format!("Invalid value '{v}' for $skip query option found. The $skip query option requires a non-negative integer value."))?;
                if let Some(max) = rules.max_skip.filter(|max| q.skip > *max) {
                    return Err(format!("The value of $skip ({}) exceeds the limit of {max}. Page with @odata.nextLink, or narrow $filter by time instead.", q.skip).into());
                }
            }
            "$skiptoken" if rules.paging == Paging::SkipToken => {
                q.skip = parse_skiptoken(&v)
                    .ok_or_else(|| format!("The $skiptoken '{v}' is invalid or has expired."))?;
            }
            "$count" => {
                q.count = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("'{v}' is not a valid count option.").into()),
                }
            }
            "$expand" if !rules.expand.is_empty() => {
                for name in v.split(',').map(str::trim) {
                    if !rules.expand.contains(&name) {
                        return Err(format!("Could not find a property named '{name}' on type '{}'.", schema.type_name).into());
                    }
                    q.expand.push(name.to_string());
                }
            }
            _ => return Err(format!("Query option '{k}' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings.").into()),
        }
    }
    Ok(q)
}

/// Writes a collection page: the envelope, and `n` items each written by `item` straight into
/// the body (no intermediate strings: a page of 1,000 alerts is about 5 MB).
pub(crate) fn page_body(
    context: &str,
    count: Option<usize>,
    next_link: Option<&str>,
    n: usize,
    mut item: impl FnMut(&mut String, usize),
) -> String {
    let mut out = String::with_capacity(n * 6144 + 512);
    out.push_str("{\"@odata.context\":");
    crate::generator::esc(&mut out, context);
    if let Some(n) = count {
        out.push_str(&format!(",\"@odata.count\":{n}"));
    }
    if let Some(l) = next_link {
        out.push_str(",\"@odata.nextLink\":");
        crate::generator::esc(&mut out, l);
    }
    out.push_str(",\"value\":[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        item(&mut out, i);
    }
    out.push_str("]}");
    out
}
