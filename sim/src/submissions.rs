//! Graph threat submissions (beta only, global cloud only):
//! `GET /beta/security/threatSubmission/{emailThreats|urlThreats|fileThreats}` and `/{id}`.
//!
//! Per API.md §5: role ThreatSubmission.Read.All (or ReadWrite), `$filter` on `createdDateTime`,
//! `status`, `category` and `source`, `$top` clamped at 100 (also the default), paging by a
//! nextLink that carries an opaque `$skiptoken`, newest `createdDateTime` first, `$count`. There
//! is no last-modified field: a submission's `status` moves notStarted → running → succeeded (or
//! failed, skipped) and `result` fills in, and that is all a client can see. Items follow
//! `graph-{email,url,file}ThreatSubmission-list.json`, including their quirks (`emailSubject`
//! versus the schema's `subject`, a stray per-item `@odata.context`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use fastrand::Rng;
use serde_json::{json, Value};

use crate::graph::{self, Paging, Rules};
use crate::odata::{Kind, Prop, Schema};
use crate::store::{self, JsonStore, NO_TIME};
use crate::time::{self, TICKS_PER_SEC};
use crate::{generator, lock, tenant_key, Inner, Simulator};

/// The three lists, by their URL segment.
pub(crate) const LISTS: &[&str] = &["emailThreats", "urlThreats", "fileThreats"];

/// `microsoft.graph.security.longRunningOperationStatus`.
pub(crate) const STATUS: &[&str] = &[
    "notStarted",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "unknownFutureValue",
];
const CATEGORY: &[&str] = &[
    "notJunk",
    "spam",
    "phishing",
    "malware",
    "unknownFutureValue",
];
const SOURCE: &[&str] = &["user", "administrator", "unknownFutureValue"];

static FILTERABLE: &[Prop] = &[
    Prop {
        name: "createdDateTime",
        kind: Kind::DateTime,
    },
    Prop {
        name: "status",
        kind: Kind::Enum(
            "microsoft.graph.security.longRunningOperationStatus",
            STATUS,
        ),
    },
    Prop {
        name: "category",
        kind: Kind::Enum("microsoft.graph.security.submissionCategory", CATEGORY),
    },
    Prop {
        name: "source",
        kind: Kind::Enum("microsoft.graph.security.submissionSource", SOURCE),
    },
];

static EMAIL: Schema = Schema {
    type_name: "microsoft.graph.security.emailThreatSubmission",
    filterable: FILTERABLE,
    other_props: &[
        "id",
        "adminReview",
        "clientSource",
        "contentType",
        "createdBy",
        "result",
        "tenantId",
        "attackSimulationInfo",
        "internetMessageId",
        "originalCategory",
        "receivedDateTime",
        "recipientEmailAddress",
        "sender",
        "senderIP",
        "subject",
        "tenantAllowOrBlockListAction",
    ],
};
static URL: Schema = Schema {
    type_name: "microsoft.graph.security.urlThreatSubmission",
    filterable: FILTERABLE,
    other_props: &[
        "id",
        "adminReview",
        "clientSource",
        "contentType",
        "createdBy",
        "result",
        "tenantId",
        "webUrl",
    ],
};
static FILE: Schema = Schema {
    type_name: "microsoft.graph.security.fileThreatSubmission",
    filterable: FILTERABLE,
    other_props: &[
        "id",
        "adminReview",
        "clientSource",
        "contentType",
        "createdBy",
        "result",
        "tenantId",
        "fileName",
    ],
};

fn schema(list: &str) -> &'static Schema {
    match list {
        "urlThreats" => &URL,
        "fileThreats" => &FILE,
        _ => &EMAIL,
    }
}

/// The list named by a URL segment or an API argument.
pub(crate) fn list_name(list: &str) -> Option<&'static str> {
    LISTS.iter().copied().find(|l| *l == list)
}

const READ_ROLES: &[&str] = &[
    "ThreatSubmission.Read.All",
    "ThreatSubmission.ReadWrite.All",
];

/// `$top` defaults to 100 and is clamped there (the maximum is unconfirmed, API.md §5).
const RULES: Rules = Rules {
    default_top: 100,
    max_top: 100,
    reject_over_max: false,
    expand: &[],
    paging: Paging::SkipToken,
    max_skip: None,
};

fn key(tenant: &str, list: &'static str) -> (String, &'static str) {
    (tenant.to_string(), list)
}

async fn list(
    State(inner): State<Arc<Inner>>,
    Path(list): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(list) = list_name(&list) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{list}'."),
        );
    };
    let mut q = match graph::query(&uri, schema(list), &RULES) {
        Ok(q) => q,
        Err(e) => return ctx.query_error(&e),
    };
    let has_skiptoken = crate::decode_pairs(uri.query().unwrap_or(""))
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("$skiptoken"));
    let (refuse, ignore, stale) = {
        let mut faults = lock(&inner.faults);
        match faults.get_mut(&ctx.tenant) {
            Some(f) => (
                f.faults.refuse_submission_filter,
                f.faults.ignore_submission_filter,
                has_skiptoken && f.take_stale_skiptoken(),
            ),
            None => (false, false, false),
        }
    };
    if stale {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The skip token is invalid or has expired.",
        );
    }
    if ignore {
        // Graph answers a filter it does not apply with the unfiltered list, and no error.
        q.filter = None;
    }
    if refuse && q.filter.is_some() {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid filter clause: filtering on 'createdDateTime' is not supported.",
        );
    }
    let page = lock(&inner.submissions)
        .get(&key(&ctx.tenant, list))
        .map(|s| {
            s.page(
                q.filter.as_ref(),
                schema(list),
                "createdDateTime",
                q.skip,
                q.top,
                q.count,
            )
        })
        .unwrap_or(store::Page {
            items: Vec::new(),
            total: 0,
            more: false,
        });
    let next = page
        .more
        .then(|| ctx.next_link_token(&uri, q.skip + page.items.len()));
    let context = format!(
        "{}/graph/beta/$metadata#security/threatSubmission/{list}",
        inner.base_url
    );
    let count = q.count.then_some(page.total);
    let body = graph::page_body(
        &context,
        count,
        next.as_deref(),
        page.items.len(),
        |out, i| {
            if let Some((_, _, v)) = page.items.get(i) {
                out.push_str(&v.to_string());
            }
        },
    );
    ctx.ok_whole(body)
}

async fn get_one(
    State(inner): State<Arc<Inner>>,
    Path((list, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, READ_ROLES).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(list) = list_name(&list) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{list}'."),
        );
    };
    let found = lock(&inner.submissions)
        .get(&key(&ctx.tenant, list))
        .and_then(|s| s.get(&id));
    let Some((_, v)) = found else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Submission '{id}' was not found."),
        );
    };
    let context = format!(
        "{}/graph/beta/$metadata#security/threatSubmission/{list}/$entity",
        inner.base_url
    );
    ctx.ok_whole(graph::entity_body(&context, &v.to_string()))
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/graph/beta/security/threatSubmission/{list}", get(list))
        .route(
            "/graph/beta/security/threatSubmission/{list}/{id}",
            get(get_one),
        )
}

// ---------------------------------------------------------------------------------------------
// Generation.

const RESULT_DETAILS: &[&str] = &[
    "allowedByTenant",
    "domainImpersonation",
    "brandImpersonation",
    "spoofBlocked",
    "urlFileShouldBeBlocked",
    "urlFileShouldNotBeBlocked",
    "simulatedThreat",
    "messageNotFound",
];
const RESULT_CATEGORIES: &[&str] = &[
    "notJunk",
    "spam",
    "phishing",
    "malware",
    "allowedByPolicy",
    "blockedByPolicy",
    "spoof",
    "unknown",
];

/// The `result` of a submission in `status`: null before processing (or, as Microsoft's url
/// and file examples show, `{"detail": "underInvestigation"}` while running).
fn result(rng: &mut Rng, status: &str, list: &str, url: &str, file: &str) -> Value {
    match status {
        "notStarted" => Value::Null,
        "running" if rng.bool() => Value::Null,
        "running" => json!({"detail": "underInvestigation"}),
        "skipped" => json!({"detail": "messageNotFound", "category": "noResultAvailable",
                            "userMailboxSetting": null, "detectedUrls": [], "detectedFiles": []}),
        "failed" => json!({"detail": "itemNotReceivedByService", "category": "noResultAvailable",
                           "userMailboxSetting": null, "detectedUrls": [], "detectedFiles": []}),
        _ => {
            let (urls, files): (Vec<&str>, Vec<Value>) = match list {
                "urlThreats" => (vec![url], vec![]),
                "fileThreats" => (
                    vec![],
                    vec![json!({"fileName": file, "fileHash": generator::hex(rng, 64)})],
                ),
                _ => (
                    if rng.bool() { vec![url] } else { vec![] },
                    if rng.u8(0..3) == 0 {
                        vec![json!({"fileName": file, "fileHash": generator::hex(rng, 64)})]
                    } else {
                        vec![]
                    },
                ),
            };
            let setting = if list == "emailThreats" {
                json!(generator::pick_str(
                    rng,
                    &[
                        "isFromDomainInDomainSafeList,isJunkMailRuleEnabled",
                        "isJunkMailRuleEnabled",
                        "isFromAddressInAddressBook,isJunkMailRuleEnabled",
                        "none",
                    ]
                ))
            } else {
                Value::Null
            };
            json!({
                "detail": generator::pick_str(rng, RESULT_DETAILS),
                "category": generator::pick_str(rng, RESULT_CATEGORIES),
                "userMailboxSetting": setting,
                "detectedUrls": urls,
                "detectedFiles": files,
            })
        }
    }
}

/// A status that fits a submission's age: recent ones are still being processed.
fn status_for(rng: &mut Rng, created: i64) -> &'static str {
    let age = time::now_ticks().saturating_sub(created);
    let table: &[(u8, u32)] = if age < 30 * 60 * TICKS_PER_SEC {
        &[(0, 40), (1, 40), (2, 20)]
    } else {
        &[(2, 85), (3, 8), (4, 7)]
    };
    STATUS[usize::from(generator::weighted(rng, table))]
}

/// A realistic submission of `list` created at `created`.
fn generated(rng: &mut Rng, tenant: &str, list: &str, id: &str, created: i64) -> Value {
    let status = status_for(rng, created);
    let source = if rng.u8(0..3) == 0 {
        "user"
    } else {
        "administrator"
    };
    let (admin, admin_upn) = (
        *generator::pick(rng, generator::USERS),
        generator::pick_str(rng, generator::DOMAINS),
    );
    let admin_email = format!("{}@{}", admin.1, admin_upn);
    let created_by = json!({"user": {"identity": generator::guid(rng), "displayName": admin.0, "email": admin_email}});
    let url = generator::pick_str(rng, generator::URLS);
    let file = generator::pick(rng, generator::FILES).0;
    let category = match list {
        "fileThreats" => *generator::pick(rng, &["malware", "malware", "notJunk"]),
        "urlThreats" => *generator::pick(rng, &["phishing", "malware", "notJunk"]),
        _ => *generator::pick(rng, &["spam", "phishing", "phishing", "malware", "notJunk"]),
    };
    let result = result(rng, status, list, url, file);
    let admin_review = if status == "succeeded" && rng.u8(0..4) == 0 {
        json!({"reviewBy": admin_email, "reviewResult": category,
               "reviewDateTime": time::iso7(created + rng.i64(3600 * TICKS_PER_SEC..86_400 * TICKS_PER_SEC))})
    } else {
        Value::Null
    };
    let client_source = if rng.u8(0..5) == 0 {
        "other"
    } else {
        "microsoft"
    };
    let mut v = match list {
        "urlThreats" => json!({
            "@odata.type": "#microsoft.graph.security.urlThreatSubmission",
            "category": category,
            "id": id,
            "createdDateTime": time::iso7(created),
            "contentType": "url",
            "webUrl": url,
            "status": status,
            "source": source,
            "createdBy": created_by,
            "result": result,
            "adminReview": admin_review,
            "clientSource": client_source,
            "tenantId": tenant,
        }),
        "fileThreats" => {
            let content = rng.bool();
            let mut v = json!({
                "@odata.type": if content { "#microsoft.graph.security.fileContentThreatSubmission" } else { "#microsoft.graph.security.fileUrlThreatSubmission" },
                "category": category,
                "id": id,
                "createdDateTime": time::iso7(created),
                "contentType": "file",
                "fileName": file,
                "status": status,
                "source": source,
                "createdBy": created_by,
                "result": result,
                "adminReview": admin_review,
                "clientSource": client_source,
                "tenantId": tenant,
            });
            let extra = if content {
                ("fileContent", Value::Null)
            } else {
                (
                    "fileUrl",
                    json!(format!("https://contoso.sharepoint.com/sites/share/{file}")),
                )
            };
            store::merge(&mut v, &json!({ extra.0: extra.1 }));
            v
        }
        _ => {
            let user = *generator::pick(rng, generator::USERS);
            let domain = generator::pick_str(rng, generator::DOMAINS);
            let sender = *generator::pick(rng, generator::SENDERS);
            let subject = generator::pick_str(rng, generator::SUBJECTS);
            let url_type = rng.u8(0..3) == 0;
            let original = *generator::pick(rng, &["notJunk", "spam", "phishing"]);
            let allow_block = if rng.u8(0..4) == 0 {
                let exp = time::iso7(created + 20 * 86_400 * TICKS_PER_SEC);
                let action = if category == "notJunk" {
                    "allow"
                } else {
                    "block"
                };
                json!({
                    "action": action,
                    "expirationDateTime": exp,
                    "note": format!("temporal {action} the url/attachment/sender in the email."),
                    "results": [
                        {"identity": generator::guid(rng), "value": sender.1, "entryType": "sender",
                         "expirationDateTime": exp, "status": "succeeded"},
                        {"identity": generator::guid(rng), "value": url, "entryType": "url",
                         "expirationDateTime": exp, "status": if rng.bool() { "succeeded" } else { "skipped" }},
                    ],
                })
            } else {
                Value::Null
            };
            let simulation = if rng.u8(0..10) == 0 {
                json!({"simulationId": generator::guid(rng)})
            } else {
                Value::Null
            };
            let mut v = json!({
                "@odata.type": if url_type { "#microsoft.graph.security.emailUrlThreatSubmission" } else { "#microsoft.graph.security.emailContentThreatSubmission" },
                "category": category,
                "recipientEmailAddress": format!("{}@{}", user.1, domain),
                "id": id,
                "createdDateTime": time::iso7(created),
                "contentType": "email",
                "status": status,
                "source": source,
                "createdBy": created_by,
                "result": result,
                "adminReview": admin_review,
                "internetMessageId": format!("<{}@{}>", generator::hex(rng, 24).to_uppercase(), sender.1),
                "sender": sender.2,
                "senderIP": generator::external_ip(rng),
                "receivedDateTime": time::iso7(created - rng.i64(60 * TICKS_PER_SEC..2 * 86_400 * TICKS_PER_SEC)),
                "originalCategory": original,
                "attackSimulationInfo": simulation,
                "tenantAllowOrBlockListAction": allow_block,
                "clientSource": client_source,
                "tenantId": tenant,
            });
            // The docs' example says `emailSubject`, the schema `subject` (API.md §5).
            let subject_key = if rng.u8(0..4) == 0 {
                "subject"
            } else {
                "emailSubject"
            };
            let mut extra = json!({ subject_key: subject });
            if url_type {
                extra["messageUrl"] = json!(format!(
                    "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1",
                    generator::hex(rng, 32)
                ));
            }
            store::merge(&mut v, &extra);
            v
        }
    };
    // The url and file examples carry a per-item `@odata.context`; some generated items do too.
    if list != "emailThreats" && rng.u8(0..4) == 0 {
        let kind = if list == "urlThreats" {
            "urlThreatSubmission"
        } else {
            "fileThreatSubmission"
        };
        store::merge(
            &mut v,
            &json!({"@odata.context": format!("https://graph.microsoft.com/beta/$metadata#security/threatSubmission/{kind}/$entity")}),
        );
    }
    v
}

fn time_of(v: &Value) -> i64 {
    v.get("createdDateTime")
        .and_then(Value::as_str)
        .and_then(time::parse)
        .unwrap_or(NO_TIME)
}

fn known_list(list: &str, what: &str) -> Option<&'static str> {
    let l = list_name(list);
    if l.is_none() {
        tracing::warn!(
            list,
            "{what}: unknown submission list (emailThreats, urlThreats, fileThreats)"
        );
    }
    l
}

impl Simulator {
    /// Inserts (or replaces, by `id`) a submission of `list` (`emailThreats`, `urlThreats` or
    /// `fileThreats`) given as Microsoft's JSON object. Without a string `id`, or for an unknown
    /// list, it is dropped (logged); without a readable `createdDateTime` it is listed last.
    pub fn insert_submission(&self, tenant_id: &str, list: &str, item: Value) {
        let Some(list) = known_list(list, "insert_submission") else {
            return;
        };
        let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_owned) else {
            tracing::warn!("insert_submission: submission without a string id ignored");
            return;
        };
        let t = time_of(&item);
        lock(&self.inner.submissions)
            .entry(key(&tenant_key(tenant_id), list))
            .or_default()
            .put(&id, t, item);
    }

    /// Generates `n` realistic submissions of `list` with `createdDateTime` spread uniformly
    /// over `[from, to)` and returns their ids (GUIDs). Ones created in the last 30 minutes are
    /// mostly still notStarted or running. An unknown list generates nothing.
    pub fn generate_submissions(
        &self,
        tenant_id: &str,
        list: &str,
        n: usize,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<String> {
        let Some(list) = known_list(list, "generate_submissions") else {
            return Vec::new();
        };
        let tenant = tenant_key(tenant_id);
        let (lo, hi) = (time::ticks(from), time::ticks(to));
        let mut rng = lock(&self.inner.rng);
        let mut all = lock(&self.inner.submissions);
        let store = all.entry(key(&tenant, list)).or_default();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let ticks = if hi > lo { rng.i64(lo..hi) } else { lo };
            let mut id = generator::guid(&mut rng);
            while store.contains(&id) {
                id = generator::guid(&mut rng);
            }
            let v = generated(&mut rng, &tenant, list, &id, ticks);
            store.put(&id, ticks, v);
            ids.push(id);
        }
        ids
    }

    /// Merges `patch`'s top-level fields into a submission (for example `{"status": "running"}`,
    /// then `{"status": "succeeded", "result": {…}}`). Nothing else changes: submissions have no
    /// last-modified field. False if there is no such submission.
    pub fn update_submission(&self, tenant_id: &str, list: &str, id: &str, patch: Value) -> bool {
        let Some(list) = list_name(list) else {
            return false;
        };
        let mut all = lock(&self.inner.submissions);
        let Some(store) = all.get_mut(&key(&tenant_key(tenant_id), list)) else {
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
        store::merge(&mut v, &json!({ "id": id }));
        let t = time_of(&v);
        store.put(id, t, v);
        true
    }

    /// A submission's current JSON object.
    pub fn submission(&self, tenant_id: &str, list: &str, id: &str) -> Option<Value> {
        let list = list_name(list)?;
        lock(&self.inner.submissions)
            .get(&key(&tenant_key(tenant_id), list))
            .and_then(|s| s.get(id))
            .map(|(_, v)| (*v).clone())
    }

    /// How many submissions a tenant has in `list`.
    pub fn submission_count(&self, tenant_id: &str, list: &str) -> usize {
        let Some(list) = list_name(list) else {
            return 0;
        };
        lock(&self.inner.submissions)
            .get(&key(&tenant_key(tenant_id), list))
            .map_or(0, JsonStore::len)
    }

    /// The ids of a tenant's submissions in `list` whose status is not terminal, newest first
    /// (for the demo stream).
    pub(crate) fn pending_submissions(&self, tenant_id: &str, list: &str) -> Vec<(String, String)> {
        let Some(list) = list_name(list) else {
            return Vec::new();
        };
        lock(&self.inner.submissions)
            .get(&key(&tenant_key(tenant_id), list))
            .map(|s| {
                s.range(i64::MIN, i64::MAX)
                    .take(500)
                    .filter_map(|(id, _, v)| {
                        let st = v.get("status").and_then(Value::as_str)?;
                        matches!(st, "notStarted" | "running")
                            .then(|| (id.to_string(), st.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The `result` a finished submission gets (used by the demo stream).
pub(crate) fn finished_result(rng: &mut Rng, list: &str) -> Value {
    let url = generator::pick_str(rng, generator::URLS);
    let file = generator::pick(rng, generator::FILES).0;
    result(rng, "succeeded", list, url, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_submissions_look_like_microsofts() {
        let mut rng = Rng::with_seed(5);
        let base = time::now_ticks() - 10 * 86_400 * TICKS_PER_SEC;
        for list in LISTS {
            for i in 0..100 {
                let v = generated(&mut rng, "t", list, &format!("id-{i}"), base + i);
                let ty = v["@odata.type"].as_str().unwrap_or_default();
                assert!(ty.starts_with("#microsoft.graph.security."), "{v}");
                let status = v["status"].as_str().unwrap_or_default();
                if status == "notStarted" {
                    assert!(v["result"].is_null());
                }
                let len = v.to_string().len();
                assert!((500..3000).contains(&len), "{list} {len}: {v}");
                if *list == "emailThreats" {
                    assert!(v.get("emailSubject").is_some() || v.get("subject").is_some());
                    assert_eq!(v["contentType"], "email");
                }
            }
        }
    }
}
