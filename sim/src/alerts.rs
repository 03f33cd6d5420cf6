//! Graph `alerts_v2`: each tenant's alert set, and `GET /v1.0/security/alerts_v2[/{id}]`.
//!
//! A tenant's alerts sit in a `BTreeMap` ordered the way Graph lists them (newest
//! `lastUpdateDateTime` first, ties by id), so a filtered page of a 200,000-alert backlog scans
//! only the time range its `$filter` allows. Generated alerts are kept as seeds and rendered on
//! demand (`generator.rs`); inserted or patched ones as explicit JSON.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use crate::generator::{self, GenMeta};
use crate::odata::{Expr, Fields, Kind, Prop, Schema, Val};
use crate::{graph, lock, tenant_key, time, Inner, Simulator};

pub(crate) const SEVERITY: &[&str] = &[
    "unknown",
    "informational",
    "low",
    "medium",
    "high",
    "unknownFutureValue",
];
pub(crate) const STATUS: &[&str] = &[
    "unknown",
    "new",
    "inProgress",
    "resolved",
    "unknownFutureValue",
];
pub(crate) const CLASSIFICATION: &[&str] = &[
    "unknown",
    "falsePositive",
    "truePositive",
    "informationalExpectedActivity",
    "unknownFutureValue",
];
pub(crate) const DETERMINATION: &[&str] = &[
    "unknown",
    "apt",
    "malware",
    "securityPersonnel",
    "securityTesting",
    "unwantedSoftware",
    "other",
    "multiStagedAttack",
    "compromisedAccount",
    "phishing",
    "maliciousUserActivity",
    "notMalicious",
    "notEnoughDataToValidate",
    "confirmedActivity",
    "lineOfBusinessApplication",
    "unknownFutureValue",
];
pub(crate) const SERVICE_SOURCE: &[&str] = &[
    "unknown",
    "microsoftDefenderForEndpoint",
    "microsoftDefenderForIdentity",
    "microsoftDefenderForCloudApps",
    "microsoftDefenderForOffice365",
    "microsoft365Defender",
    "azureAdIdentityProtection",
    "microsoftAppGovernance",
    "dataLossPrevention",
    "unknownFutureValue",
    "microsoftDefenderForCloud",
    "microsoftSentinel",
    "microsoftInsiderRiskManagement",
    "microsoftThreatIntelligence",
    "microsoftSecurityForAI",
];

/// The properties alerts_v2 documents as filterable (API.md §3).
static FILTERABLE: &[Prop] = &[
    Prop {
        name: "assignedTo",
        kind: Kind::String,
    },
    Prop {
        name: "classification",
        kind: Kind::Enum(
            "microsoft.graph.security.alertClassification",
            CLASSIFICATION,
        ),
    },
    Prop {
        name: "determination",
        kind: Kind::Enum("microsoft.graph.security.alertDetermination", DETERMINATION),
    },
    Prop {
        name: "createdDateTime",
        kind: Kind::DateTime,
    },
    Prop {
        name: "lastUpdateDateTime",
        kind: Kind::DateTime,
    },
    Prop {
        name: "severity",
        kind: Kind::Enum("microsoft.graph.security.alertSeverity", SEVERITY),
    },
    Prop {
        name: "serviceSource",
        kind: Kind::Enum("microsoft.graph.security.serviceSource", SERVICE_SOURCE),
    },
    Prop {
        name: "status",
        kind: Kind::Enum("microsoft.graph.security.alertStatus", STATUS),
    },
];

pub(crate) static SCHEMA: Schema = Schema {
    type_name: "microsoft.graph.security.alert",
    filterable: FILTERABLE,
    other_props: &[
        "id",
        "actorDisplayName",
        "additionalData",
        "alertPolicyId",
        "alertWebUrl",
        "categories",
        "category",
        "comments",
        "customDetails",
        "description",
        "detectionSource",
        "detectorId",
        "evidence",
        "firstActivityDateTime",
        "incidentId",
        "incidentWebUrl",
        "investigationState",
        "lastActivityDateTime",
        "mitreTechniques",
        "productName",
        "providerAlertId",
        "recommendedActions",
        "resolvedDateTime",
        "systemTags",
        "tenantId",
        "threatDisplayName",
        "threatFamilyName",
        "title",
    ],
};

/// The roles that allow reading alerts_v2.
const READ_ROLES: &[&str] = &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"];

/// Graph's maximum page size for alerts_v2 (larger `$top` values are clamped).
const MAX_TOP: usize = 1000;
/// The page size when `$top` is absent.
const DEFAULT_TOP: usize = 100;

/// Sort key for an alert without a readable `lastUpdateDateTime`: it sorts last and matches
/// no time comparison.
const NO_TIME: i64 = i64::MIN;

#[derive(Clone)]
pub(crate) enum Body {
    Gen(GenMeta),
    Json(Arc<Value>),
}

/// Key: (newest first, then id ascending), Graph's listing order.
type Key = (Reverse<i64>, Arc<str>);

#[derive(Default)]
pub(crate) struct TenantAlerts {
    order: BTreeMap<Key, Body>,
    index: HashMap<Arc<str>, i64>,
    /// Alert ids by `incidentId`, for incidents' `$expand=alerts`.
    by_incident: HashMap<String, BTreeSet<Arc<str>>>,
}

/// The `incidentId` of an alert body, if it has one.
fn incident_of(body: &Body) -> Option<String> {
    match body {
        Body::Gen(m) => Some(m.incident.to_string()),
        Body::Json(v) => v
            .get("incidentId")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// One alert as the filter sees it.
struct Entry<'a> {
    ticks: i64,
    body: &'a Body,
}

impl Fields for Entry<'_> {
    fn field(&self, name: &str) -> Val<'_> {
        match self.body {
            Body::Gen(m) => match name {
                "lastUpdateDateTime" => Val::Time(self.ticks),
                "createdDateTime" => Val::Time(m.created),
                "severity" => Val::Str(m.severity()),
                "status" => Val::Str(m.status()),
                "serviceSource" => Val::Str(m.service()),
                "classification" => Val::Str(m.classification()),
                "determination" => Val::Str(m.determination()),
                "assignedTo" => m.assigned_to().map_or(Val::Null, Val::Str),
                _ => Val::Null,
            },
            Body::Json(v) => match (name, v.get(name)) {
                ("lastUpdateDateTime", _) if self.ticks != NO_TIME => Val::Time(self.ticks),
                ("createdDateTime" | "lastUpdateDateTime", Some(Value::String(s))) => {
                    time::parse(s).map_or(Val::Null, Val::Time)
                }
                (_, Some(Value::String(s))) => Val::Str(s),
                _ => Val::Null,
            },
        }
    }
}

/// A page of a listing, cloned out of the store so rendering happens without the lock.
pub(crate) struct Page {
    pub items: Vec<(Arc<str>, i64, Body)>,
    /// Matches in total (exact when counting was asked for).
    pub total: usize,
    pub more: bool,
}

impl TenantAlerts {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts or replaces an alert.
    pub fn put(&mut self, id: &str, ticks: i64, body: Body) {
        let id: Arc<str> = match self.index.get_key_value(id) {
            Some((k, old)) => {
                let k = k.clone();
                if let Some(prev) = self.order.remove(&(Reverse(*old), k.clone())) {
                    if let Some(inc) = incident_of(&prev) {
                        if let Some(set) = self.by_incident.get_mut(&inc) {
                            set.remove(&k);
                            if set.is_empty() {
                                self.by_incident.remove(&inc);
                            }
                        }
                    }
                }
                k
            }
            None => Arc::from(id),
        };
        if let Some(inc) = incident_of(&body) {
            self.by_incident.entry(inc).or_default().insert(id.clone());
        }
        self.index.insert(id.clone(), ticks);
        self.order.insert((Reverse(ticks), id), body);
    }

    /// The alerts whose `incidentId` is `incident`, newest first.
    pub fn of_incident(&self, incident: &str) -> Vec<(Arc<str>, i64, Body)> {
        let mut out: Vec<(Arc<str>, i64, Body)> = self
            .by_incident
            .get(incident)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let t = *self.index.get(id)?;
                let b = self.order.get(&(Reverse(t), id.clone()))?;
                Some((id.clone(), t, b.clone()))
            })
            .collect();
        out.sort_by(|a, b| (Reverse(a.1), &a.0).cmp(&(Reverse(b.1), &b.0)));
        out
    }

    /// Every `incidentId` some alert names.
    pub fn incident_ids(&self) -> impl Iterator<Item = &str> {
        self.by_incident.keys().map(String::as_str)
    }

    pub fn get(&self, id: &str) -> Option<(i64, &Body)> {
        let (k, t) = self.index.get_key_value(id)?;
        self.order.get(&(Reverse(*t), k.clone())).map(|b| (*t, b))
    }

    /// The newest ids, for the demo stream.
    pub fn newest(&self, n: usize) -> Vec<String> {
        self.order
            .keys()
            .take(n)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    /// Matches of `filter` in listing order, skipping `skip`, at most `top`; counts all matches
    /// only when `count` is set (otherwise stops one past the page, enough to know `more`).
    pub fn page(
        &self,
        filter: Option<&Expr>,
        hidden: impl Fn(&str) -> bool,
        skip: usize,
        top: usize,
        count: bool,
    ) -> Page {
        let (lo, hi) = filter.map_or((i64::MIN, i64::MAX), |f| {
            f.time_bounds("lastUpdateDateTime")
        });
        let mut page = Page {
            items: Vec::new(),
            total: 0,
            more: false,
        };
        if lo > hi {
            return page;
        }
        let start: Bound<Key> = Bound::Included((Reverse(hi), Arc::from("")));
        // Everything at `lo - 1` and older sorts after every key at `lo`, whatever its id.
        let end: Bound<Key> = if lo == i64::MIN {
            Bound::Unbounded
        } else {
            Bound::Excluded((Reverse(lo - 1), Arc::from("")))
        };
        for ((Reverse(ticks), id), body) in self.order.range((start, end)) {
            if hidden(id)
                || !filter.is_none_or(|f| {
                    f.matches(&Entry {
                        ticks: *ticks,
                        body,
                    })
                })
            {
                continue;
            }
            if page.total >= skip {
                if page.items.len() < top {
                    page.items.push((id.clone(), *ticks, body.clone()));
                } else {
                    // `$top=0` asks for no items; a nextLink would repeat the same empty page.
                    page.more = top > 0;
                    if !count {
                        break;
                    }
                }
            }
            page.total += 1;
        }
        page
    }
}

/// Writes an alert's JSON object.
pub(crate) fn render(out: &mut String, tenant: &str, id: &str, ticks: i64, body: &Body) {
    match body {
        Body::Gen(m) => generator::render(out, tenant, id, ticks, m),
        Body::Json(v) => out.push_str(&v.to_string()),
    }
}

fn render_string(tenant: &str, id: &str, ticks: i64, body: &Body) -> String {
    let mut s = String::with_capacity(8192);
    render(&mut s, tenant, id, ticks, body);
    s
}

async fn list(State(inner): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let max_top = inner.page_cap.clamp(1, MAX_TOP);
    let q = match graph::list_query(&uri, &SCHEMA, DEFAULT_TOP, max_top) {
        Ok(q) => q,
        Err(m) => return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &m),
    };
    let now = SystemTime::now();
    let (page, without_next_link) = {
        // Snapshot the hidden ids first: the alert store lock is never held with another one.
        let (faults, without_next_link) = lock(&inner.faults)
            .get(&ctx.tenant)
            .map(|f| {
                (
                    f.faults.hide_until.clone(),
                    f.faults.alerts_without_next_link,
                )
            })
            .unwrap_or_default();
        let hidden = |id: &str| faults.iter().any(|(h, until)| h == id && now < *until);
        let alerts = lock(&inner.alerts);
        let page = match alerts.get(&ctx.tenant) {
            Some(t) => t.page(q.filter.as_ref(), hidden, q.skip, q.top, q.count),
            None => Page {
                items: Vec::new(),
                total: 0,
                more: false,
            },
        };
        (page, without_next_link)
    };
    let next =
        (page.more && !without_next_link).then(|| ctx.next_link(&uri, q.skip + page.items.len()));
    let context = format!("{}/graph/v1.0/$metadata#security/alerts_v2", inner.base_url);
    let count = q.count.then_some(page.total);
    let body = graph::page_body(
        &context,
        count,
        next.as_deref(),
        page.items.len(),
        |out, i| {
            if let Some((id, t, b)) = page.items.get(i) {
                render(out, &ctx.tenant, id, *t, b);
            }
        },
    );
    let update_first = lock(&inner.faults)
        .get_mut(&ctx.tenant)
        .is_some_and(|f| f.take_update());
    if update_first {
        if let Some((id, _, _)) = page.items.first() {
            update(&inner, &ctx.tenant, id, &Value::Object(Default::default()));
        }
    }
    ctx.ok(ctx.enum_members(body))
}

async fn get_one(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let found = lock(&inner.alerts)
        .get(&ctx.tenant)
        .and_then(|t| t.get(&id).map(|(ticks, b)| (ticks, b.clone())));
    let Some((ticks, body)) = found else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Alert '{id}' was not found."),
        );
    };
    let rendered = render_string(&ctx.tenant, &id, ticks, &body);
    // The entity answer is the object itself with its @odata.context in front.
    let context = format!(
        "{}/graph/v1.0/$metadata#security/alerts_v2/$entity",
        inner.base_url
    );
    ctx.ok(ctx.enum_members(graph::entity_body(&context, &rendered)))
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/graph/v1.0/security/alerts_v2", get(list))
        .route("/graph/v1.0/security/alerts_v2/{id}", get(get_one))
}

/// Merges `patch` into an alert and moves its `lastUpdateDateTime` to now (strictly past its
/// previous value, so every update is a new version even within one clock tick).
fn update(inner: &Inner, tenant: &str, id: &str, patch: &Value) -> bool {
    let mut alerts = lock(&inner.alerts);
    let Some(t) = alerts.get_mut(tenant) else {
        return false;
    };
    let Some((old, body)) = t.get(id) else {
        return false;
    };
    let mut v: Value = match body {
        Body::Json(v) => (**v).clone(),
        Body::Gen(_) => {
            serde_json::from_str(&render_string(tenant, id, old, body)).unwrap_or(Value::Null)
        }
    };
    let Some(obj) = v.as_object_mut() else {
        return false;
    };
    if let Some(p) = patch.as_object() {
        for (k, val) in p {
            obj.insert(k.clone(), val.clone());
        }
    }
    let ticks = time::now_ticks().max(old.saturating_add(1));
    obj.insert("id".into(), Value::String(id.to_string()));
    obj.insert(
        "lastUpdateDateTime".into(),
        Value::String(time::iso7(ticks)),
    );
    t.put(id, ticks, Body::Json(Arc::new(v)));
    true
}

impl Simulator {
    /// Inserts (or replaces, by `id`) an alert given as Microsoft's JSON object. Without a
    /// string `id` it is dropped (logged); without a readable `lastUpdateDateTime` it is listed
    /// last and matches no time filter, as an item without a version would.
    pub fn insert_alert(&self, tenant_id: &str, alert: Value) {
        let Some(id) = alert.get("id").and_then(Value::as_str).map(str::to_owned) else {
            tracing::warn!("insert_alert: alert without a string id ignored");
            return;
        };
        let ticks = alert
            .get("lastUpdateDateTime")
            .and_then(Value::as_str)
            .and_then(time::parse)
            .unwrap_or(NO_TIME);
        lock(&self.inner.alerts)
            .entry(tenant_key(tenant_id))
            .or_default()
            .put(&id, ticks, Body::Json(Arc::new(alert)));
    }

    /// Lists `alert` verbatim at time `last_update` under the storage key `key`, whatever its own
    /// `id` says (or lacks): how a test serves an item Microsoft should never send, such as one
    /// without an id, to see it quarantined.
    pub fn insert_alert_at(&self, tenant_id: &str, key: &str, last_update: &str, alert: Value) {
        let ticks = time::parse(last_update).unwrap_or(NO_TIME);
        lock(&self.inner.alerts)
            .entry(tenant_key(tenant_id))
            .or_default()
            .put(key, ticks, Body::Json(Arc::new(alert)));
    }

    /// Generates `n` realistic alerts with `lastUpdateDateTime` spread uniformly over
    /// `[from, to)` (100-ns precision) and returns their ids.
    pub fn generate_alerts(
        &self,
        tenant_id: &str,
        n: usize,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<String> {
        let (lo, hi) = (time::ticks(from), time::ticks(to));
        let mut rng = lock(&self.inner.rng);
        let mut alerts = lock(&self.inner.alerts);
        let store = alerts.entry(tenant_key(tenant_id)).or_default();
        let mut ids = Vec::with_capacity(n);
        let mut previous_incident = None;
        for _ in 0..n {
            let ticks = if hi > lo { rng.i64(lo..hi) } else { lo };
            let mut meta = generator::new_meta(&mut rng, ticks);
            // Incidents correlate alerts: about a third join the previous alert's incident.
            if let Some(inc) = previous_incident.filter(|_| rng.u8(0..3) == 0) {
                meta.incident = inc;
            }
            previous_incident = Some(meta.incident);
            let mut id = generator::new_id(&mut rng, &meta);
            while store.contains(&id) {
                id = generator::new_id(&mut rng, &meta);
            }
            store.put(&id, ticks, Body::Gen(meta));
            ids.push(id);
        }
        ids
    }

    /// Merges `patch`'s top-level fields into an alert and sets its `lastUpdateDateTime` to now
    /// (7 fractional digits, strictly later than before). False if there is no such alert.
    pub fn update_alert(&self, tenant_id: &str, id: &str, patch: Value) -> bool {
        update(&self.inner, &tenant_key(tenant_id), id, &patch)
    }

    /// An alert's current JSON object.
    pub fn alert(&self, tenant_id: &str, id: &str) -> Option<Value> {
        let tenant = tenant_key(tenant_id);
        let (ticks, body) = lock(&self.inner.alerts)
            .get(&tenant)
            .and_then(|t| t.get(id).map(|(ticks, b)| (ticks, b.clone())))?;
        serde_json::from_str(&render_string(&tenant, id, ticks, &body)).ok()
    }

    /// An alert's JSON exactly as the simulator serves it (fields in Microsoft's order; `alert`
    /// parses it, which sorts them).
    pub fn alert_json(&self, tenant_id: &str, id: &str) -> Option<String> {
        let tenant = tenant_key(tenant_id);
        let (ticks, body) = lock(&self.inner.alerts)
            .get(&tenant)
            .and_then(|t| t.get(id).map(|(ticks, b)| (ticks, b.clone())))?;
        Some(render_string(&tenant, id, ticks, &body))
    }

    /// How many alerts a tenant has.
    pub fn alert_count(&self, tenant_id: &str) -> usize {
        lock(&self.inner.alerts)
            .get(&tenant_key(tenant_id))
            .map_or(0, TenantAlerts::len)
    }

    pub(crate) fn newest_ids(&self, tenant_id: &str, n: usize) -> Vec<String> {
        lock(&self.inner.alerts)
            .get(&tenant_key(tenant_id))
            .map(|t| t.newest(n))
            .unwrap_or_default()
    }
}
