//! Microsoft Defender for Cloud Apps (MDA) alerts: `POST` (or `GET` with the same JSON body)
//! `{cloud_apps_url}/api/v1/alerts/` and `GET {cloud_apps_url}/api/v1/alerts/{_id}/`.
//!
//! Per API.md §8: an Entra token for `05a65629-4c1b-48c1-a78b-804c4abdd4af/.default` whose roles
//! include Investigation.read (any case; Investigation.manage, Discovery.read and Discovery.manage
//! also list alerts), the tenant taken from the token; a body of `filters` (`{field: {op: value}}`, ANDed), `sortField`,
//! `sortDirection`, `skip` and `limit` (at most 100, the default); the answer
//! `{"data", "hasNext", "max", "total", "moreThanTotal"}`; and 30 requests a minute per tenant
//! (a sliding minute), the 31st answered 429 with `Retry-After` in whole seconds. MDA's own error
//! bodies are undocumented: 400s are `{"error": "..."}`, 401/403/404 `{"detail": "..."}` as its
//! Django REST framework answers. Alerts follow `mda-alerts-list.json`: `_id` a 24-hex string,
//! `timestamp` epoch milliseconds that never changes, `resolveTime` an ISO string, and no
//! last-modified field. [`Simulator::generate_cloud_app_alert_with_twin`] also creates the same
//! detection as an alerts_v2 item, as Microsoft shows it through both APIs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fastrand::Rng;
use serde_json::{json, Map, Value};

use crate::alerts::SEVERITY;
use crate::store::{self, JsonStore, NO_TIME};
use crate::time;
use crate::token::{Lookup, Resource};
use crate::{generator, lock, tenant_key, Inner, Simulator, TenantTag};

/// Requests a tenant may make in any 60 s (API.md §8).
pub(crate) const DEFAULT_PER_MINUTE: usize = 30;
/// The most alerts one page may ask for; also the default.
const MAX_LIMIT: u64 = 100;
/// Roles (compared case-insensitively) that may list and fetch alerts.
const READ_ROLES: &[&str] = &[
    "investigation.read",
    "investigation.manage",
    "discovery.read",
    "discovery.manage",
];
const MS_PER_DAY: i64 = 86_400_000;

/// A tenant's sliding request window.
#[derive(Default)]
pub(crate) struct Throttle {
    served: VecDeque<Instant>,
    /// The end of the last `Retry-After` this tenant was given.
    retry_until: Option<Instant>,
}

impl Throttle {
    /// Admits a request or returns the `Retry-After` to send; the bool says whether it arrived
    /// inside a `Retry-After` already given (a violation).
    pub(crate) fn admit(&mut self, now: Instant, per_minute: usize) -> (bool, Option<u64>) {
        let minute = Duration::from_secs(60);
        while self
            .served
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            self.served.pop_front();
        }
        let early = self.retry_until.is_some_and(|u| now < u);
        if self.served.len() < per_minute.max(1) {
            self.served.push_back(now);
            return (early, None);
        }
        let wait = self
            .served
            .front()
            .map_or(minute, |t| (*t + minute).saturating_duration_since(now));
        // Whole seconds, rounded up, so a client that waits exactly that long gets through.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        self.retry_until = Some(now + Duration::from_secs(secs));
        (early, Some(secs))
    }

    pub(crate) fn in_window(&self, now: Instant) -> bool {
        self.retry_until.is_some_and(|u| now < u)
    }
}

fn respond(status: StatusCode, body: &Value, tenant: Option<&str>) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        r.headers_mut().insert(header::DATE, v);
    }
    if let Some(t) = tenant {
        r.extensions_mut().insert(TenantTag(t.to_string()));
    }
    r
}

fn bad_request(tenant: &str, message: impl Into<String>) -> Response {
    respond(
        StatusCode::BAD_REQUEST,
        &json!({"error": message.into()}),
        Some(tenant),
    )
}

/// Authenticates, throttles and authorizes an MDA request; the tenant, or the answer to send
/// (boxed: a `Response` is large).
fn begin(inner: &Inner, headers: &HeaderMap) -> Result<String, Box<Response>> {
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
    let now = Instant::now();
    let unauthorized = |tenant: Option<&str>, detail: &str| {
        inner.unauthorized.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = tenant {
            if lock(&inner.mda_throttle)
                .get(t)
                .is_some_and(|th| th.in_window(now))
            {
                inner.throttle_violations.fetch_add(1, Ordering::Relaxed);
            }
        }
        Box::new(respond(
            StatusCode::UNAUTHORIZED,
            &json!({"detail": detail}),
            tenant,
        ))
    };
    let info = match lookup {
        Lookup::Unknown if bearer.is_none() => {
            return Err(unauthorized(
                None,
                "Authentication credentials were not provided.",
            ))
        }
        Lookup::Unknown => return Err(unauthorized(None, "Invalid token.")),
        Lookup::Expired(i) => return Err(unauthorized(Some(&i.tenant), "Token is expired.")),
        Lookup::Valid(i) if i.resource != Resource::CloudApps => {
            return Err(unauthorized(
                Some(&i.tenant),
                "Invalid token: the audience is not 05a65629-4c1b-48c1-a78b-804c4abdd4af.",
            ))
        }
        Lookup::Valid(i) => i,
    };
    let tenant = info.tenant.clone();
    let per_minute = inner.mda_per_minute.load(Ordering::Relaxed);
    let (early, retry) = lock(&inner.mda_throttle)
        .entry(tenant.clone())
        .or_default()
        .admit(now, per_minute);
    if early {
        inner.throttle_violations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant = %tenant, "cloud apps request arrived inside a Retry-After window");
    }
    if let Some(secs) = retry {
        let body = json!({"detail": format!("Request was throttled. Expected available in {secs} seconds.")});
        let mut r = respond(StatusCode::TOO_MANY_REQUESTS, &body, Some(&tenant));
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(Box::new(r));
    }
    let allowed = info
        .roles
        .iter()
        .any(|r| READ_ROLES.contains(&r.to_ascii_lowercase().as_str()));
    if !allowed {
        let body = json!({"detail": format!(
            "You do not have permission to perform this action. Required application permission: Investigation.read. Token roles: {}.",
            info.roles.join(", "))});
        return Err(Box::new(respond(
            StatusCode::FORBIDDEN,
            &body,
            Some(&tenant),
        )));
    }
    Ok(tenant)
}

// ---------------------------------------------------------------------------------------------
// The request body.

/// One condition of `filters`; all must hold.
#[derive(Debug)]
enum Cond {
    /// `timestamp` (ms) within `[lo, hi]`.
    Date(i64, i64),
    /// `timestamp` within any of these ranges.
    DateRanges(Vec<(i64, i64)>),
    /// A resolved alert's `resolveTime` (ms) within `[lo, hi]`.
    Resolved(i64, i64),
    ResolvedRanges(Vec<(i64, i64)>),
    /// `resolutionStatusValue == 0` is (or is not) wanted.
    Open(bool),
    /// An int member is (`true`) or is not (`false`) one of the values.
    In(&'static str, bool, Vec<i64>),
    /// `statusValue != 0` (read or archived) is (or is not) wanted.
    Read(bool),
}

#[derive(Debug)]
struct Query {
    conds: Vec<Cond>,
    by_severity: bool,
    descending: bool,
    skip: usize,
    limit: usize,
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0)
            .map(|f| f as i64)
    })
}

fn ints(field: &str, v: &Value) -> Result<Vec<i64>, String> {
    let one = |x: &Value| {
        int(x)
            .ok_or_else(|| format!("Invalid value {x} for filter '{field}': expected an integer."))
    };
    match v {
        Value::Array(xs) => xs.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}

fn ranges(field: &str, v: &Value) -> Result<Vec<(i64, i64)>, String> {
    let one = |x: &Value| match (x.get("start").and_then(int), x.get("end").and_then(int)) {
        (Some(s), Some(e)) => Ok((s, e)),
        _ => Err(format!(
            "Invalid range {x} for filter '{field}': expected {{\"start\": ms, \"end\": ms}}."
        )),
    };
    match v {
        Value::Array(xs) => xs.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}

fn boolean(field: &str, v: &Value) -> Result<bool, String> {
    if let Some([x]) = v.as_array().map(Vec::as_slice) {
        return boolean(field, x);
    }
    match v {
        Value::Bool(b) => Ok(*b),
        x => Err(format!(
            "Invalid value {x} for filter '{field}': expected a boolean."
        )),
    }
}

fn parse_filter(field: &str, op: &str, v: &Value, now_ms: i64) -> Result<Cond, String> {
    let ms = |v: &Value| {
        int(v).ok_or_else(|| {
            format!("Invalid value {v} for filter '{field}': expected epoch milliseconds.")
        })
    };
    let days = |v: &Value| {
        int(v).ok_or_else(|| {
            format!("Invalid value {v} for filter '{field}': expected a number of days.")
        })
    };
    Ok(match (field, op) {
        ("date", "gte") => Cond::Date(ms(v)?, i64::MAX),
        ("date", "lte") => Cond::Date(i64::MIN, ms(v)?),
        ("date", "range") => Cond::DateRanges(ranges(field, v)?),
        ("date", "gte_ndays") => Cond::Date(now_ms - days(v)? * MS_PER_DAY, i64::MAX),
        ("date", "lte_ndays") => Cond::Date(i64::MIN, now_ms - days(v)? * MS_PER_DAY),
        ("resolutionDate", "gte") => Cond::Resolved(ms(v)?, i64::MAX),
        ("resolutionDate", "lte") => Cond::Resolved(i64::MIN, ms(v)?),
        ("resolutionDate", "range") => Cond::ResolvedRanges(ranges(field, v)?),
        ("alertOpen", "eq") => Cond::Open(boolean(field, v)?),
        ("read", "eq") => Cond::Read(boolean(field, v)?),
        ("severity", "eq") => Cond::In("severityValue", true, ints(field, v)?),
        ("severity", "neq") => Cond::In("severityValue", false, ints(field, v)?),
        ("resolutionStatus", "eq") => Cond::In("resolutionStatusValue", true, ints(field, v)?),
        ("resolutionStatus", "neq") => Cond::In("resolutionStatusValue", false, ints(field, v)?),
        ("date" | "resolutionDate" | "alertOpen" | "read" | "severity" | "resolutionStatus", _) => {
            return Err(format!(
                "Invalid filter: operator '{op}' is not supported for field '{field}'."
            ))
        }
        _ => return Err(format!("Invalid filter: unknown filter field '{field}'.")),
    })
}

fn parse_query(body: &[u8], now_ms: i64) -> Result<Query, String> {
    let mut q = Query {
        conds: Vec::new(),
        by_severity: false,
        descending: true,
        skip: 0,
        limit: 100,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(q);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON request body: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("The request body must be a JSON object.".into());
    };
    let empty = Map::new();
    let filters = match obj.get("filters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(f)) => f,
        Some(_) => return Err("'filters' must be an object of {field: {operator: value}}.".into()),
    };
    for (field, ops) in filters {
        let Some(ops) = ops.as_object() else {
            return Err(format!(
                "Invalid filter: '{field}' must be an object of {{operator: value}}."
            ));
        };
        for (op, val) in ops {
            q.conds.push(parse_filter(field, op, val, now_ms)?);
        }
    }
    match obj.get("sortField") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "date" => q.by_severity = false,
        Some(Value::String(f)) if f == "severity" => q.by_severity = true,
        Some(_) => return Err("Invalid sortField: expected 'date' or 'severity'.".into()),
    }
    match obj.get("sortDirection") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if d == "asc" => q.descending = false,
        Some(Value::String(d)) if d == "desc" => q.descending = true,
        Some(_) => return Err("Invalid sortDirection: expected 'asc' or 'desc'.".into()),
    }
    match obj.get("skip") {
        None | Some(Value::Null) => {}
        Some(v) => {
            q.skip = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("Invalid skip: expected a non-negative integer.")?
        }
    }
    match obj.get("limit") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_LIMIT => q.limit = usize::try_from(n).unwrap_or(100),
            Some(n) => return Err(format!("Invalid limit {n}: the maximum is {MAX_LIMIT}.")),
            None => return Err("Invalid limit: expected a non-negative integer.".into()),
        },
    }
    Ok(q)
}

/// The epoch-ms `resolveTime` of a resolved alert.
fn resolve_ms(v: &Value) -> Option<i64> {
    let open = v.get("resolutionStatusValue").and_then(Value::as_i64) == Some(0);
    if open {
        return None;
    }
    let t = time::parse(v.get("resolveTime")?.as_str()?)?;
    Some(t.div_euclid(10_000))
}

fn within(x: i64, lo: i64, hi: i64) -> bool {
    lo <= x && x <= hi
}

impl Cond {
    fn holds(&self, ts: i64, v: &Value) -> bool {
        let int_of = |k: &str| v.get(k).and_then(Value::as_i64);
        match self {
            Cond::Date(lo, hi) => ts != NO_TIME && within(ts, *lo, *hi),
            Cond::DateRanges(rs) => ts != NO_TIME && rs.iter().any(|(lo, hi)| within(ts, *lo, *hi)),
            Cond::Resolved(lo, hi) => resolve_ms(v).is_some_and(|r| within(r, *lo, *hi)),
            Cond::ResolvedRanges(rs) => {
                resolve_ms(v).is_some_and(|r| rs.iter().any(|(lo, hi)| within(r, *lo, *hi)))
            }
            Cond::Open(want) => (int_of("resolutionStatusValue") == Some(0)) == *want,
            Cond::Read(want) => int_of("statusValue").is_some_and(|s| s != 0) == *want,
            Cond::In(k, positive, set) => int_of(k).is_some_and(|x| set.contains(&x)) == *positive,
        }
    }

    /// The `timestamp` range this condition allows.
    fn date_bounds(&self) -> (i64, i64) {
        match self {
            Cond::Date(lo, hi) => (*lo, *hi),
            Cond::DateRanges(rs) if !rs.is_empty() => (
                rs.iter().map(|r| r.0).min().unwrap_or(i64::MIN),
                rs.iter().map(|r| r.1).max().unwrap_or(i64::MAX),
            ),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

async fn list(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let tenant = match begin(&inner, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let now_ms = time::now_ticks().div_euclid(10_000);
    let q = match parse_query(&body, now_ms) {
        Ok(q) => q,
        Err(m) => return bad_request(&tenant, m),
    };
    let (lo, hi) = q.conds.iter().fold((i64::MIN, i64::MAX), |(lo, hi), c| {
        let (a, b) = c.date_bounds();
        (lo.max(a), hi.min(b))
    });
    let mut matches: Vec<(i64, Arc<str>, Arc<Value>)> = lock(&inner.cloud_apps)
        .get(&tenant)
        .map(|s| {
            s.range(lo, hi)
                .filter(|(_, ts, v)| q.conds.iter().all(|c| c.holds(*ts, v)))
                .map(|(id, ts, v)| (ts, id, v))
                .collect()
        })
        .unwrap_or_default();
    let severity = |v: &Value| v.get("severityValue").and_then(Value::as_i64).unwrap_or(0);
    // Ascending by (key, timestamp, _id); descending is the exact reverse.
    if q.by_severity {
        matches.sort_by(|a, b| (severity(&a.2), a.0, &a.1).cmp(&(severity(&b.2), b.0, &b.1)));
    } else {
        matches.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }
    if q.descending {
        matches.reverse();
    }
    let total = matches.len();
    let data: Vec<Value> = matches
        .iter()
        .skip(q.skip)
        .take(q.limit)
        .map(|(_, _, v)| (**v).clone())
        .collect();
    let has_next = q.skip.saturating_add(data.len()) < total && q.limit > 0;
    let body = json!({"data": data, "hasNext": has_next, "max": q.limit, "total": total, "moreThanTotal": false});
    respond(StatusCode::OK, &body, Some(&tenant))
}

async fn fetch(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let tenant = match begin(&inner, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let found = lock(&inner.cloud_apps)
        .get(&tenant)
        .and_then(|s| s.get(&id));
    match found {
        Some((_, v)) => respond(StatusCode::OK, &v, Some(&tenant)),
        None => respond(
            StatusCode::NOT_FOUND,
            &json!({"detail": "Not found."}),
            Some(&tenant),
        ),
    }
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/cloudapps/api/v1/alerts/", get(list).post(list))
        .route("/cloudapps/api/v1/alerts", get(list).post(list))
        .route("/cloudapps/api/v1/alerts/{id}/", get(fetch))
        .route("/cloudapps/api/v1/alerts/{id}", get(fetch))
}

// ---------------------------------------------------------------------------------------------
// Generation.

/// An MDA detection: title, description, stories, intents, policy type, service (id, name),
/// and whether devices and files take part.
struct Kind {
    title: &'static str,
    description: &'static str,
    stories: &'static [u8],
    intent: &'static [u8],
    policy_type: &'static str,
    service: (i64, &'static str),
    devices: bool,
    file: bool,
}

static KINDS: &[Kind] = &[
    Kind { title: "Impossible travel activity", description: "The user <b>{user}</b> performed activities from <b>{ip}</b> and from a distant location within a time shorter than the travel time between them.", stories: &[0], intent: &[1], policy_type: "ANOMALY_DETECTION", service: (11161, "Office 365"), devices: false, file: false },
    Kind { title: "Activity from infrequent country", description: "The user <b>{user}</b> performed an activity from <b>{ip}</b>, a country not recently or never visited by any user in the organization.", stories: &[0], intent: &[1], policy_type: "ANOMALY_DETECTION", service: (11161, "Office 365"), devices: false, file: false },
    Kind { title: "Mass download by a single user", description: "The user <b>{user}</b> downloaded 312 files in 5 minutes from Microsoft OneDrive for Business.", stories: &[0], intent: &[10], policy_type: "ANOMALY_DETECTION", service: (15600, "Microsoft OneDrive for Business"), devices: false, file: true },
    Kind { title: "Suspicious inbox forwarding", description: "The user <b>{user}</b> created or updated an inbox forwarding rule that forwards all incoming email to an external address.", stories: &[0], intent: &[10, 5], policy_type: "ANOMALY_DETECTION", service: (20893, "Microsoft Exchange Online"), devices: false, file: false },
    Kind { title: "Honeytoken activity", description: "Contoso user performed 11 suspicious activities MITRE Technique used Account Discovery (T1087) and subtechnique used Domain Account (T1087.002)", stories: &[0], intent: &[7], policy_type: "ANOMALY_DETECTION", service: (20940, "Active Directory"), devices: true, file: false },
    Kind { title: "Multiple failed login attempts", description: "The user <b>{user}</b> failed to sign in 43 times from <b>{ip}</b> in 10 minutes.", stories: &[0], intent: &[6], policy_type: "ANOMALY_DETECTION", service: (11161, "Office 365"), devices: false, file: false },
    Kind { title: "Ransomware activity", description: "The user <b>{user}</b> uploaded files with extensions typical of ransomware and deleted many files in a short time.", stories: &[0], intent: &[13], policy_type: "ANOMALY_DETECTION", service: (15600, "Microsoft OneDrive for Business"), devices: false, file: true },
    Kind { title: "File containing PCI data shared externally", description: "The file <b>{file}</b> owned by <b>{user}</b> matched the policy \"PCI data shared externally\" and was shared with an external domain.", stories: &[2, 3, 5], intent: &[10], policy_type: "FILE", service: (20892, "Microsoft SharePoint Online"), devices: false, file: true },
    Kind { title: "Activity from a Tor IP address", description: "The user <b>{user}</b> performed an activity from <b>{ip}</b>, an IP address identified as a Tor exit node.", stories: &[0], intent: &[1, 5], policy_type: "ANOMALY_DETECTION", service: (11161, "Office 365"), devices: false, file: false },
];

const MITRE_INTENT_MAX: u8 = 13;

/// A realistic MDA alert raised at `ts_ms`.
fn generated(
    rng: &mut Rng,
    tenant: &str,
    id: &str,
    id_value: u64,
    ts_ms: i64,
    now_ms: i64,
) -> Value {
    let k = generator::pick(rng, KINDS);
    let user = *generator::pick(rng, generator::USERS);
    let domain = generator::pick_str(rng, generator::DOMAINS);
    let upn = format!("{}@{}", user.1, domain);
    let ip = generator::external_ip(rng);
    let file = generator::pick(rng, generator::FILES).0;
    let description = k
        .description
        .replace("{user}", &upn)
        .replace("{ip}", &ip)
        .replace("{file}", file);
    let mut entities = vec![
        json!({"entityRole": "Source", "entityType": 2, "id": generator::guid(rng),
        "inst": 0, "label": user.1, "pa": upn, "type": "account"}),
    ];
    entities.push(json!({"id": k.service.0, "label": k.service.1, "type": "service"}));
    if k.devices {
        for role in ["Related", "Source", "Related"] {
            entities.push(json!({"entityRole": role, "id": generator::guid(rng),
                "label": generator::pick_str(rng, generator::HOSTS).to_uppercase(), "type": "device"}));
        }
    } else {
        entities.push(json!({"entityRole": "Source", "id": ip, "label": ip, "type": "ip"}));
    }
    if k.file {
        entities.push(json!({"id": generator::hex(rng, 24), "label": file, "type": "file"}));
    }
    entities.push(json!({"id": generator::hex(rng, 24), "label": k.title,
        "policyType": k.policy_type, "type": "policyRule"}));
    if rng.bool() {
        entities
            .push(json!({"type": "groupTag", "id": generator::hex(rng, 24), "label": "All Users"}));
    }
    let severity = generator::weighted(rng, &[(0, 40), (1, 35), (2, 20), (3, 5)]);
    let status = generator::weighted(rng, &[(0, 50), (1, 45), (2, 5)]);
    let resolution = generator::weighted(rng, &[(0, 65), (1, 5), (2, 8), (3, 8), (4, 6), (5, 8)]);
    let (resolve_time, handled, comment) = if resolution == 0 {
        let handled = if status == 0 {
            Value::Null
        } else {
            json!(format!("soc-tier1@{domain}"))
        };
        (Value::Null, handled, json!(""))
    } else {
        let at = (ts_ms + rng.i64(60_000..2 * MS_PER_DAY))
            .min(now_ms)
            .max(ts_ms);
        let comment = *generator::pick(
            rng,
            &[
                "",
                "",
                "Confirmed with the user.",
                "Known VPN egress; benign.",
            ],
        );
        (
            json!(time::iso3(at.saturating_mul(10_000))),
            json!(format!("soc-tier2@{domain}")),
            json!(comment),
        )
    };
    let mut intent: Vec<u8> = k.intent.to_vec();
    if rng.u8(0..4) == 0 {
        intent.push(rng.u8(0..=MITRE_INTENT_MAX));
    }
    json!({
        "_id": id,
        "contextId": tenant,
        "description": description,
        "entities": entities,
        "evidence": [],
        "idValue": id_value,
        "intent": intent,
        "isMarkdown": false,
        "isPreview": false,
        "isSystemAlert": k.policy_type == "ANOMALY_DETECTION" && rng.u8(0..3) == 0,
        "resolutionStatusValue": resolution,
        "severityValue": severity,
        "statusValue": if resolution != 0 && status == 0 { 1 } else { status },
        "stories": k.stories,
        "threatScore": rng.u8(5..=95),
        "timestamp": ts_ms,
        "title": k.title,
        "comment": comment,
        "handledByUser": handled,
        "resolveTime": resolve_time,
        "URL": format!("https://contoso.portal.cloudappsecurity.com/#/alerts/{id}"),
    })
}

fn time_of(v: &Value) -> i64 {
    v.get("timestamp").and_then(int).unwrap_or(NO_TIME)
}

fn ms(t: SystemTime) -> i64 {
    time::ticks(t).div_euclid(10_000)
}

/// The alerts_v2 view of an MDA alert: `severityValue` 0 low, 1 medium, 2 high, 3 informational.
fn graph_severity(v: &Value) -> &'static str {
    match v.get("severityValue").and_then(Value::as_i64) {
        Some(0) => SEVERITY[2],
        Some(1) => SEVERITY[3],
        Some(2) => SEVERITY[4],
        Some(3) => SEVERITY[1],
        _ => SEVERITY[0],
    }
}

impl Simulator {
    /// The tenant's Cloud Apps "Portal URL": the alerts API is at `{cloud_apps_url}/api/v1/alerts/`.
    pub fn cloud_apps_url(&self) -> String {
        format!("{}/cloudapps", self.inner.base_url)
    }

    /// Sets how many Cloud Apps requests a tenant may make per sliding minute (default 30, as
    /// documented); the 31st answers 429.
    pub fn set_cloud_apps_rate_limit(&self, per_minute: usize) {
        self.inner
            .mda_per_minute
            .store(per_minute.max(1), Ordering::Relaxed);
    }

    /// Inserts (or replaces, by `_id`) a Cloud Apps alert given as MDA's JSON object. Without a
    /// string `_id` it is dropped (logged); without an integer `timestamp` it sorts last and
    /// matches no date filter.
    pub fn insert_cloud_app_alert(&self, tenant_id: &str, alert: Value) {
        let Some(id) = alert.get("_id").and_then(Value::as_str).map(str::to_owned) else {
            tracing::warn!("insert_cloud_app_alert: alert without a string _id ignored");
            return;
        };
        let t = time_of(&alert);
        lock(&self.inner.cloud_apps)
            .entry(tenant_key(tenant_id))
            .or_default()
            .put(&id, t, alert);
    }

    /// Generates `n` realistic Cloud Apps alerts with `timestamp` spread uniformly over
    /// `[from, to)` (millisecond precision) and returns their `_id`s.
    pub fn generate_cloud_app_alerts(
        &self,
        tenant_id: &str,
        n: usize,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<String> {
        let tenant = tenant_key(tenant_id);
        let (lo, hi) = (ms(from), ms(to));
        let now_ms = ms(SystemTime::now());
        let mut rng = lock(&self.inner.rng);
        let mut all = lock(&self.inner.cloud_apps);
        let store = all.entry(tenant.clone()).or_default();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let ts = if hi > lo { rng.i64(lo..hi) } else { lo };
            let mut id = generator::hex(&mut rng, 24);
            while store.contains(&id) {
                id = generator::hex(&mut rng, 24);
            }
            let id_value = 15_000_000 + store.len() as u64 * 7 + rng.u64(0..7);
            let v = generated(&mut rng, &tenant, &id, id_value, ts, now_ms.max(ts));
            store.put(&id, ts, v);
            ids.push(id);
        }
        ids
    }

    /// Merges `patch`'s top-level fields into a Cloud Apps alert (for example `{"statusValue": 1}`,
    /// or `{"resolutionStatusValue": 2, "resolveTime": "…", "handledByUser": "…"}`). `timestamp`
    /// is the creation time and does not move. False if there is no such alert.
    pub fn update_cloud_app_alert(&self, tenant_id: &str, id: &str, patch: Value) -> bool {
        let mut all = lock(&self.inner.cloud_apps);
        let Some(store) = all.get_mut(&tenant_key(tenant_id)) else {
            return false;
        };
        let Some((_, v)) = store.get(id) else {
            return false;
        };
        let mut v = (*v).clone();
        if !v.is_object() {
            return false;
        }
        store::merge(&mut v, &patch);
        store::merge(&mut v, &json!({ "_id": id }));
        let t = time_of(&v);
        store.put(id, t, v);
        true
    }

    /// A Cloud Apps alert's current JSON object.
    pub fn cloud_app_alert(&self, tenant_id: &str, id: &str) -> Option<Value> {
        lock(&self.inner.cloud_apps)
            .get(&tenant_key(tenant_id))
            .and_then(|s| s.get(id))
            .map(|(_, v)| (*v).clone())
    }

    /// How many Cloud Apps alerts a tenant has.
    pub fn cloud_app_alert_count(&self, tenant_id: &str) -> usize {
        lock(&self.inner.cloud_apps)
            .get(&tenant_key(tenant_id))
            .map_or(0, JsonStore::len)
    }

    /// Creates one detection seen through both APIs: a Cloud Apps alert raised at `at`, and an
    /// alerts_v2 alert (`serviceSource` microsoftDefenderForCloudApps, `detectionSource`
    /// cloudAppSecurity, `providerAlertId` the MDA `_id`, `id` `"ca" + _id`) with the same title,
    /// description, severity and triage state, created and last updated at `at`. Returns
    /// (MDA `_id`, alerts_v2 `id`).
    pub fn generate_cloud_app_alert_with_twin(
        &self,
        tenant_id: &str,
        at: SystemTime,
    ) -> (String, String) {
        let tenant = tenant_key(tenant_id);
        let mda_id = self
            .generate_cloud_app_alerts(&tenant, 1, at, at)
            .pop()
            .unwrap_or_default();
        let mda = self
            .cloud_app_alert(&tenant, &mda_id)
            .unwrap_or(Value::Null);
        let graph_id = format!("ca{mda_id}");
        let ticks = ms(at).saturating_mul(10_000);
        let meta = {
            let mut rng = lock(&self.inner.rng);
            let mut m = generator::new_meta(&mut rng, ticks);
            m.service = generator::CLOUD_APPS;
            m.created = ticks;
            m
        };
        let mut text = String::new();
        generator::render(&mut text, &tenant, &graph_id, ticks, &meta);
        let mut alert: Value = serde_json::from_str(&text).unwrap_or(json!({}));
        let resolution = mda.get("resolutionStatusValue").and_then(Value::as_i64);
        let read = mda
            .get("statusValue")
            .and_then(Value::as_i64)
            .is_some_and(|s| s != 0);
        let (status, classification, determination) = match resolution {
            Some(0) | None if read => ("inProgress", "unknown", "unknown"),
            Some(0) | None => ("new", "unknown", "unknown"),
            Some(5) => ("resolved", "truePositive", "compromisedAccount"),
            Some(3) => ("resolved", "falsePositive", "notMalicious"),
            Some(4) => (
                "resolved",
                "informationalExpectedActivity",
                "confirmedActivity",
            ),
            Some(_) => ("resolved", "unknown", "unknown"),
        };
        let resolved = if status == "resolved" {
            json!(time::iso7(ticks))
        } else {
            Value::Null
        };
        store::merge(
            &mut alert,
            &json!({
                "id": graph_id,
                "providerAlertId": mda_id,
                "serviceSource": "microsoftDefenderForCloudApps",
                "detectionSource": "cloudAppSecurity",
                "productName": "Microsoft Defender for Cloud Apps",
                "title": mda.get("title").cloned().unwrap_or(Value::Null),
                "description": mda.get("description").cloned().unwrap_or(Value::Null),
                "severity": graph_severity(&mda),
                "status": status,
                "classification": classification,
                "determination": determination,
                "assignedTo": mda.get("handledByUser").cloned().unwrap_or(Value::Null),
                "createdDateTime": time::iso7(ticks),
                "lastUpdateDateTime": time::iso7(ticks),
                "resolvedDateTime": resolved,
                "alertWebUrl": format!("https://security.microsoft.com/alerts/{graph_id}?tid={tenant}"),
            }),
        );
        self.insert_alert(&tenant, alert);
        (mda_id, graph_id)
    }

    /// The newest Cloud Apps alert ids of a tenant, for the demo stream.
    pub(crate) fn newest_cloud_app_alerts(&self, tenant_id: &str, n: usize) -> Vec<String> {
        lock(&self.inner.cloud_apps)
            .get(&tenant_key(tenant_id))
            .map(|s| s.newest(n))
            .unwrap_or_default()
    }
}

/// Per-tenant throttle windows.
pub(crate) type Throttles = HashMap<String, Throttle>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_31st_request_in_a_minute_waits_for_the_oldest_to_leave() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..30 {
            assert_eq!(
                t.admit(t0 + Duration::from_millis(i * 100), 30),
                (false, None)
            );
        }
        let (early, retry) = t.admit(t0 + Duration::from_millis(3000), 30);
        assert!(!early);
        assert_eq!(retry, Some(57));
        assert!(
            t.admit(t0 + Duration::from_secs(10), 30).0,
            "early retry is a violation"
        );
        assert_eq!(t.admit(t0 + Duration::from_secs(61), 30), (false, None));
    }

    #[test]
    fn filters_parse_and_refuse() {
        let q = parse_query(br#"{"filters": {"date": {"gte": 5, "lte": 9}, "severity": {"eq": [1, 2]}}, "sortDirection": "asc"}"#, 0);
        let q = q.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.conds.len(), 3);
        assert!(!q.descending);
        for (body, needle) in [
            (
                r#"{"filters": {"nope": {"eq": 1}}}"#,
                "unknown filter field",
            ),
            (r#"{"filters": {"date": {"eq": 1}}}"#, "operator 'eq'"),
            (
                r#"{"filters": {"date": {"gte": "x"}}}"#,
                "epoch milliseconds",
            ),
            (r#"{"limit": 101}"#, "maximum"),
            (r#"{"sortField": "title"}"#, "sortField"),
            ("{", "JSON"),
        ] {
            match parse_query(body.as_bytes(), 0) {
                Ok(q) => panic!("{body} parsed as {q:?}"),
                Err(m) => assert!(m.contains(needle), "{body}: {m}"),
            }
        }
    }

    #[test]
    fn generated_alerts_look_like_mdas() {
        let mut rng = Rng::with_seed(9);
        for i in 0..200 {
            let id = generator::hex(&mut rng, 24);
            let v = generated(
                &mut rng,
                "t",
                &id,
                i,
                1_700_000_000_000 + i as i64,
                1_800_000_000_000,
            );
            assert_eq!(v["_id"].as_str().map(str::len), Some(24));
            assert!(v["timestamp"].is_i64() && v["idValue"].is_u64());
            let open = v["resolutionStatusValue"] == 0;
            assert_eq!(open, v["resolveTime"].is_null(), "{v}");
            if !open {
                assert!(resolve_ms(&v).is_some_and(|r| r >= 1_700_000_000_000 + i as i64));
            }
            assert!(v["entities"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["type"] == "service" && x["id"].is_i64())));
            let len = v.to_string().len();
            assert!((900..3000).contains(&len), "{len}");
        }
    }
}
