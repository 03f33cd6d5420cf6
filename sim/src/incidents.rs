//! Graph incidents (v1.0): `GET /v1.0/security/incidents`, `/incidents/{id}` and
//! `/incidents/{id}/alerts`, each tenant's incident set, and realistic generated incidents.
//!
//! Per API.md §4: role SecurityIncident.Read.All (or ReadWrite), `$filter` on seven properties,
//! `$top` at most 50 (above it the 400 seen in the wild, `graph-error-incidents-top-exceeded.json`),
//! `$skip`/`$count`/nextLink paging, newest `lastUpdateDateTime` first, and `$expand=alerts`, which
//! embeds the tenant's alerts_v2 items whose `incidentId` is the incident's id (and answers 500
//! while the tenant's `expand_fails` fault is on). Incidents are kept as explicit JSON
//! (`store.rs`); generated ones follow `graph-incidents-list.json`, including its quirks (`tags`
//! instead of `customTags` now and then, comments with `createdBy`/`createdTime`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use fastrand::Rng;
use serde_json::{json, Value};

use crate::alerts::{self, Body, CLASSIFICATION, DETERMINATION, SEVERITY};
use crate::graph::{self, Paging, Rules};
use crate::odata::{Kind, Prop, Schema};
use crate::store::{self, JsonStore, NO_TIME};
use crate::time::{self, TICKS_PER_SEC};
use crate::{generator, lock, tenant_key, Inner, Simulator};

/// `microsoft.graph.security.incidentStatus`, in declaration order.
pub(crate) const STATUS: &[&str] = &[
    "active",
    "resolved",
    "inProgress",
    "redirected",
    "unknownFutureValue",
    "awaitingAction",
];

/// The properties incidents document as filterable (API.md §4).
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
        name: "createdDateTime",
        kind: Kind::DateTime,
    },
    Prop {
        name: "determination",
        kind: Kind::Enum("microsoft.graph.security.alertDetermination", DETERMINATION),
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
        name: "status",
        kind: Kind::Enum("microsoft.graph.security.incidentStatus", STATUS),
    },
];

pub(crate) static SCHEMA: Schema = Schema {
    type_name: "microsoft.graph.security.incident",
    filterable: FILTERABLE,
    other_props: &[
        "id",
        "alerts",
        "comments",
        "customTags",
        "description",
        "displayName",
        "incidentWebUrl",
        "lastModifiedBy",
        "priorityScore",
        "redirectIncidentId",
        "resolvingComment",
        "summary",
        "systemTags",
        "tenantId",
    ],
};

/// The roles that allow reading incidents. Whether `$expand=alerts` also needs
/// SecurityAlert.Read.All is unconfirmed (API.md §1), so it is not required.
const READ_ROLES: &[&str] = &[
    "SecurityIncident.Read.All",
    "SecurityIncident.ReadWrite.All",
];

/// Incidents refuse `$top` above 50 (observed, API.md §4) and page 50 by default.
const RULES: Rules = Rules {
    default_top: 50,
    max_top: 50,
    reject_over_max: true,
    expand: &["alerts"],
    paging: Paging::Skip,
    max_skip: Some(graph::MAX_SKIP),
};

/// The alerts of one incident, cloned out of the alert store.
type Linked = Vec<(Arc<str>, i64, Body)>;

/// Writes an incident, with an `alerts` array when `linked` is given.
fn render(out: &mut String, tenant: &str, v: &Value, linked: Option<&Linked>) {
    let Some(linked) = linked else {
        out.push_str(&v.to_string());
        return;
    };
    let text = match v.as_object() {
        Some(o) if o.contains_key("alerts") => {
            let mut o = o.clone();
            o.remove("alerts");
            Value::Object(o).to_string()
        }
        _ => v.to_string(),
    };
    let Some(head) = text.strip_suffix('}') else {
        out.push_str(&text);
        return;
    };
    out.push_str(head);
    if head.trim_end() != "{" {
        out.push(',');
    }
    out.push_str("\"alerts\":[");
    for (i, (id, ticks, body)) in linked.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        alerts::render(out, tenant, id, *ticks, body);
    }
    out.push_str("]}");
}

/// The alerts of each incident id, newest first (takes the alert store lock alone).
fn linked_alerts(inner: &Inner, tenant: &str, ids: &[&str]) -> Vec<Linked> {
    let alerts = lock(&inner.alerts);
    let store = alerts.get(tenant);
    ids.iter()
        .map(|id| store.map(|s| s.of_incident(id)).unwrap_or_default())
        .collect()
}

fn expand_fails(inner: &Inner, tenant: &str) -> bool {
    lock(&inner.faults)
        .get(tenant)
        .is_some_and(|f| f.faults.expand_fails)
}

fn expand_error(ctx: &graph::Ctx) -> Response {
    ctx.error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UnknownError",
        "An unexpected error occurred while expanding 'alerts'.",
    )
}

async fn list(State(inner): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = match graph::query(&uri, &SCHEMA, &RULES) {
        Ok(q) => q,
        Err(e) => return ctx.query_error(&e),
    };
    let expand = !q.expand.is_empty();
    if expand && expand_fails(&inner, &ctx.tenant) {
        return expand_error(&ctx);
    }
    let page = lock(&inner.incidents).get(&ctx.tenant).map(|s| {
        s.page(
            q.filter.as_ref(),
            &SCHEMA,
            "lastUpdateDateTime",
            q.skip,
            q.top,
            q.count,
        )
    });
    let page = page.unwrap_or(store::Page {
        items: Vec::new(),
        total: 0,
        more: false,
    });
    let linked = if expand {
        let ids: Vec<&str> = page.items.iter().map(|(id, _, _)| &**id).collect();
        Some(linked_alerts(&inner, &ctx.tenant, &ids))
    } else {
        None
    };
    let next = page
        .more
        .then(|| ctx.next_link(&uri, q.skip + page.items.len()));
    let context = format!(
        "{}/graph/v1.0/$metadata#security/incidents{}",
        inner.base_url,
        if expand { "(alerts())" } else { "" }
    );
    let count = q.count.then_some(page.total);
    let body = graph::page_body(
        &context,
        count,
        next.as_deref(),
        page.items.len(),
        |out, i| {
            if let Some((_, _, v)) = page.items.get(i) {
                render(out, &ctx.tenant, v, linked.as_ref().and_then(|l| l.get(i)));
            }
        },
    );
    ctx.ok_whole(ctx.enum_members(body))
}

async fn get_one(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = match graph::query(&uri, &SCHEMA, &RULES) {
        Ok(q) => q,
        Err(e) => return ctx.query_error(&e),
    };
    let expand = !q.expand.is_empty();
    if expand && expand_fails(&inner, &ctx.tenant) {
        return expand_error(&ctx);
    }
    let found = lock(&inner.incidents)
        .get(&ctx.tenant)
        .and_then(|s| s.get(&id));
    let Some((_, v)) = found else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Incident '{id}' was not found."),
        );
    };
    let linked = expand.then(|| {
        linked_alerts(&inner, &ctx.tenant, &[id.as_str()])
            .pop()
            .unwrap_or_default()
    });
    let mut rendered = String::new();
    render(&mut rendered, &ctx.tenant, &v, linked.as_ref());
    let context = format!(
        "{}/graph/v1.0/$metadata#security/incidents{}/$entity",
        inner.base_url,
        if expand { "(alerts())" } else { "" }
    );
    ctx.ok_whole(ctx.enum_members(graph::entity_body(&context, &rendered)))
}

/// `GET /incidents/{id}/alerts`: the incident's alerts as a collection (one page).
async fn alerts_of(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let exists = lock(&inner.incidents)
        .get(&ctx.tenant)
        .is_some_and(|s| s.contains(&id));
    if !exists {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Incident '{id}' was not found."),
        );
    }
    let linked = linked_alerts(&inner, &ctx.tenant, &[id.as_str()])
        .pop()
        .unwrap_or_default();
    let context = format!(
        "{}/graph/v1.0/$metadata#security/incidents('{id}')/alerts",
        inner.base_url
    );
    let body = graph::page_body(&context, None, None, linked.len(), |out, i| {
        if let Some((aid, t, b)) = linked.get(i) {
            alerts::render(out, &ctx.tenant, aid, *t, b);
        }
    });
    ctx.ok_whole(ctx.enum_members(body))
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/graph/v1.0/security/incidents", get(list))
        .route("/graph/v1.0/security/incidents/{id}", get(get_one))
        .route("/graph/v1.0/security/incidents/{id}/alerts", get(alerts_of))
}

// ---------------------------------------------------------------------------------------------
// Generation.

/// (displayName, description) pairs in the portal's style.
const NAMES: &[(&str, &str)] = &[
    ("Multi-stage incident involving Initial access & Command and control on multiple endpoints reported by multiple sources", "Microsoft observed Raspberry Robin worm activity spreading through infected USB on multiple devices in your environment. From available intel, these infections could be a potential precursor activity to ransomware deployment. ..."),
    ("Suspicious PowerShell command line on one endpoint", "A PowerShell process with an encoded command line downloaded and ran a payload. Review the device timeline and the parent process."),
    ("Email messages containing malicious URL removed after delivery involving one user", "Messages with a malicious URL were delivered and removed by zero-hour auto purge. Check whether the recipient clicked the URL before removal."),
    ("Impossible travel activity involving one user", "The user signed in from two distant countries within a short time. The account may be compromised."),
    ("Ransomware activity on multiple endpoints", "Files were encrypted and shadow copies deleted on several devices. Isolate the affected devices and reset the credentials used."),
    ("Password spray attack involving multiple users", "Many accounts were tried with a few common passwords from the same infrastructure; one sign-in succeeded."),
    ("BEC financial fraud involving one user", "A compromised mailbox created a hiding inbox rule and sent payment-change requests to external recipients."),
    ("Credential access incident involving one user on one endpoint", "LSASS memory was read by a process consistent with credential theft tools."),
    ("Mass download by a single user", "A user downloaded an unusually large number of files from SharePoint Online in one session."),
];

const TAGS: &[&[&str]] = &[
    &[],
    &["Demo"],
    &["Tier-1"],
    &["Finance", "VIP"],
    &["Red team exercise"],
];

const RESOLVING: &[&str] = &[
    "Confirmed malicious; devices isolated and credentials reset.",
    "Benign: scheduled penetration test.",
    "False positive after review with the service owner.",
];

/// A realistic incident last updated at `last_update`.
fn generated(rng: &mut Rng, tenant: &str, id: &str, last_update: i64) -> Value {
    // active, resolved, inProgress, redirected, awaitingAction.
    let status = STATUS[usize::from(generator::weighted(
        rng,
        &[(0, 45), (2, 20), (1, 25), (5, 5), (3, 5)],
    ))];
    let severity = SEVERITY[usize::from(generator::weighted(
        rng,
        &[(1, 10), (2, 30), (3, 40), (4, 20)],
    ))];
    let (classification, determination) = if status == "resolved" {
        let (c, ds): (usize, &[usize]) = match rng.u8(0..3) {
            0 => (2, &[2, 7, 8, 9, 10]),
            1 => (1, &[11, 12, 6]),
            _ => (3, &[4, 13, 14, 3]),
        };
        (c, *generator::pick(rng, ds))
    } else {
        (0, 0)
    };
    let (user, domain) = (
        *generator::pick(rng, generator::USERS),
        generator::pick_str(rng, generator::DOMAINS),
    );
    let analyst = format!("{}@{}", user.1, domain);
    let assigned = if status == "active" && rng.bool() {
        Value::Null
    } else {
        json!(analyst)
    };
    let (name, description) = *generator::pick(rng, NAMES);
    let age = rng.i64(300 * TICKS_PER_SEC..3 * 86_400 * TICKS_PER_SEC);
    let created = last_update.saturating_sub(age);
    let n_comments = if status == "active" {
        rng.usize(0..2)
    } else {
        rng.usize(1..3)
    };
    let comments: Vec<Value> = (0..n_comments)
        .map(|i| {
            let at = created + rng.i64(0..=(last_update - created).max(0));
            json!({
                "comment": generator::COMMENTS[(i + rng.usize(0..4)) % generator::COMMENTS.len()],
                "createdBy": analyst,
                "createdTime": time::iso7(at),
            })
        })
        .collect();
    let tags: Vec<&str> = generator::pick(rng, TAGS).to_vec();
    let system_tags: &[&str] = if rng.u8(0..4) == 0 {
        &["Defender Experts"]
    } else {
        &[]
    };
    let redirect = if status == "redirected" {
        json!((100_000 + rng.u32(0..900_000)).to_string())
    } else {
        Value::Null
    };
    let mut v = json!({
        "@odata.type": "#microsoft.graph.security.incident",
        "id": id,
        "incidentWebUrl": format!("https://security.microsoft.com/incidents/{id}?tid={tenant}"),
        "redirectIncidentId": redirect,
        "tenantId": tenant,
        "displayName": name,
        "createdDateTime": time::iso7(created),
        "lastUpdateDateTime": time::iso7(last_update),
        "assignedTo": assigned,
        "classification": CLASSIFICATION[classification],
        "determination": DETERMINATION[determination],
        "status": status,
        "severity": severity,
        "comments": comments,
        "systemTags": system_tags,
        "description": description,
        "summary": null,
        "lastModifiedBy": if n_comments > 0 { json!(analyst) } else { json!("Automation") },
        "priorityScore": rng.u8(0..=100),
        "resolvingComment": if status == "resolved" { json!(*generator::pick(rng, RESOLVING)) } else { Value::Null },
    });
    // Microsoft's examples disagree: Example 2 calls the custom tags `tags`.
    let tag_key = if rng.u8(0..5) == 0 {
        "tags"
    } else {
        "customTags"
    };
    if let Some(o) = v.as_object_mut() {
        o.insert(tag_key.into(), json!(tags));
    }
    v
}

fn time_of(v: &Value) -> i64 {
    v.get("lastUpdateDateTime")
        .and_then(Value::as_str)
        .and_then(time::parse)
        .unwrap_or(NO_TIME)
}

impl Simulator {
    /// Inserts (or replaces, by `id`) an incident given as Microsoft's JSON object. Without a
    /// string `id` it is dropped (logged); without a readable `lastUpdateDateTime` it is listed
    /// last and matches no time filter.
    pub fn insert_incident(&self, tenant_id: &str, incident: Value) {
        let Some(id) = incident
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            tracing::warn!("insert_incident: incident without a string id ignored");
            return;
        };
        let t = time_of(&incident);
        lock(&self.inner.incidents)
            .entry(tenant_key(tenant_id))
            .or_default()
            .put(&id, t, incident);
    }

    /// Generates `n` realistic incidents with `lastUpdateDateTime` spread uniformly over
    /// `[from, to)` and returns their (numeric string) ids. Ids are taken first from the
    /// `incidentId`s of the tenant's alerts that have no incident yet, so `$expand=alerts`
    /// finds their alerts; then fresh numbers.
    pub fn generate_incidents(
        &self,
        tenant_id: &str,
        n: usize,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<String> {
        let tenant = tenant_key(tenant_id);
        let (lo, hi) = (time::ticks(from), time::ticks(to));
        // Lock order: alerts alone first, then rng, then incidents.
        let mut candidates: Vec<String> = lock(&self.inner.alerts)
            .get(&tenant)
            .map(|a| a.incident_ids().map(str::to_owned).collect())
            .unwrap_or_default();
        candidates.sort_unstable();
        let mut rng = lock(&self.inner.rng);
        let mut incidents = lock(&self.inner.incidents);
        let store = incidents.entry(tenant.clone()).or_default();
        candidates.retain(|c| !store.contains(c));
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let ticks = if hi > lo { rng.i64(lo..hi) } else { lo };
            let id = if candidates.is_empty() {
                // Beyond the range generated alerts use, so no alert claims it by accident.
                let mut id = (100_000 + rng.u32(0..9_900_000)).to_string();
                while store.contains(&id) {
                    id = (100_000 + rng.u32(0..9_900_000)).to_string();
                }
                id
            } else {
                let i = rng.usize(0..candidates.len());
                candidates.swap_remove(i)
            };
            let v = generated(&mut rng, &tenant, &id, ticks);
            store.put(&id, ticks, v);
            ids.push(id);
        }
        ids
    }

    /// Merges `patch`'s top-level fields into an incident and sets its `lastUpdateDateTime` to
    /// now (7 fractional digits, strictly later than before). False if there is no such incident.
    pub fn update_incident(&self, tenant_id: &str, id: &str, patch: Value) -> bool {
        let mut incidents = lock(&self.inner.incidents);
        let Some(store) = incidents.get_mut(&tenant_key(tenant_id)) else {
            return false;
        };
        let Some((old, v)) = store.get(id) else {
            return false;
        };
        let mut v = (*v).clone();
        if !v.is_object() {
            return false;
        }
        store::merge(&mut v, &patch);
        let ticks = time::now_ticks().max(old.saturating_add(1));
        store::merge(
            &mut v,
            &json!({"id": id, "lastUpdateDateTime": time::iso7(ticks)}),
        );
        store.put(id, ticks, v);
        true
    }

    /// An incident's current JSON object (without alerts).
    pub fn incident(&self, tenant_id: &str, id: &str) -> Option<Value> {
        lock(&self.inner.incidents)
            .get(&tenant_key(tenant_id))
            .and_then(|s| s.get(id))
            .map(|(_, v)| (*v).clone())
    }

    /// How many incidents a tenant has.
    pub fn incident_count(&self, tenant_id: &str) -> usize {
        lock(&self.inner.incidents)
            .get(&tenant_key(tenant_id))
            .map_or(0, JsonStore::len)
    }

    /// The ids of a tenant's most recently updated incidents, for the demo stream.
    pub(crate) fn newest_incidents(&self, tenant_id: &str, n: usize) -> Vec<String> {
        lock(&self.inner.incidents)
            .get(&tenant_key(tenant_id))
            .map(|s| s.newest(n))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_incidents_look_like_microsofts() {
        let mut rng = Rng::with_seed(3);
        let base = time::parse("2024-06-01T00:00:00Z").unwrap_or_default();
        let mut tag_keys = std::collections::BTreeSet::new();
        for i in 0..200 {
            let v = generated(
                &mut rng,
                "t-1",
                &(1000 + i).to_string(),
                base + i64::from(i),
            );
            let created = v["createdDateTime"].as_str().unwrap_or_default();
            let updated = v["lastUpdateDateTime"].as_str().unwrap_or_default();
            assert!(created <= updated && updated.len() == 28, "{v}");
            assert!(STATUS.contains(&v["status"].as_str().unwrap_or_default()));
            assert_eq!(
                v["status"] == "redirected",
                v["redirectIncidentId"].is_string()
            );
            for c in v["comments"].as_array().into_iter().flatten() {
                assert!(c["createdBy"].is_string() && c["createdTime"].is_string());
            }
            for k in ["tags", "customTags"] {
                if v.get(k).is_some() {
                    tag_keys.insert(k);
                }
            }
            let len = v.to_string().len();
            assert!((600..2500).contains(&len), "{len}");
        }
        assert_eq!(tag_keys.len(), 2);
    }
}
