//! Tenants are isolated: one tenant's wrong secret or huge backlog does not hold up another.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use m365_ingest::config::ReadyzRequires;
use m365_sim::Simulator;
use serde_json::Value;

use crate::helpers::*;

const BROKEN_TENANT_ID: &str = "9b8c7d6e-5f4a-4b3c-8d2e-1f0a9b8c7d6e";
const BROKEN_CLIENT_ID: &str = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
const BROKEN_REAL_SECRET: &str = "the-secret-entra-holds-Pw3~k";
const BROKEN_WRONG_SECRET: &str = "a-stale-secret-in-the-config-Hq7~m";

const SMALL_TENANT_ID: &str = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a";
const SMALL_CLIENT_ID: &str = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b";
const SMALL_SECRET: &str = "small-tenant-secret-Lm2~v";

/// A simulator with `contoso` (good credentials) and a `broken` tenant whose app exists but whose
/// configured secret is not the one Entra holds; settings for both in one daemon.
async fn good_and_broken(
    db: &std::path::Path,
    readyz: ReadyzRequires,
) -> (Simulator, m365_ingest::config::Settings) {
    let sim = sim().await;
    sim.add_tenant(BROKEN_TENANT_ID);
    sim.add_app(
        BROKEN_TENANT_ID,
        BROKEN_CLIENT_ID,
        BROKEN_REAL_SECRET,
        ALL_ROLES,
    );
    let opts = Opts {
        extra_sources: format!(
            "{}{}",
            Opts::default().extra_sources,
            tenant_toml(
                &sim,
                "broken",
                BROKEN_TENANT_ID,
                BROKEN_CLIENT_ID,
                BROKEN_WRONG_SECRET
            )
        ),
        ..Opts::default()
    };
    let mut s = settings(&sim, db, &opts);
    s.server.readyz_requires = readyz;
    (sim, s)
}

/// `/status`'s alerts source of `tenant`.
fn alerts_source<'a>(status: &'a Value, tenant: &str) -> &'a Value {
    &status["tenants"][tenant]["sources"]["alerts"]
}

/// The broken tenant's alerts source reports the wrong secret with its fix.
fn names_the_wrong_secret(source: &Value) -> bool {
    source["state"] == "failing"
        && source["last_error"].as_str().is_some_and(|e| {
            e.contains("AADSTS7000215")
                && e.contains("tenants.broken.client_secret")
                && e.contains("Certificates & secrets")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_wrong_secret_does_not_stop_the_other() {
    let (_dir, db) = temp_db();
    let (sim, settings) = good_and_broken(&db, ReadyzRequires::All).await;
    let good: HashSet<String> = sim
        .generate_alerts(TENANT_ID, 50, ago(7200), ago(600))
        .into_iter()
        .collect();
    // The broken tenant's directory has alerts too: none may be read, none delivered.
    sim.generate_alerts(BROKEN_TENANT_ID, 20, ago(7200), ago(600));
    let app = TestApp::spawn(settings).await;

    wait_until(
        Duration::from_secs(30),
        "the good tenant's 50 alerts",
        || sim.delivered_count() >= 50,
    )
    .await;
    wait_until_async(
        Duration::from_secs(20),
        "/status naming the broken tenant's wrong secret",
        || async { names_the_wrong_secret(alerts_source(&app.get("/status").await.1, "broken")) },
    )
    .await;

    let alerts = delivered_alerts(&sim);
    assert_eq!(
        native_ids(&alerts),
        good,
        "exactly the good tenant's alerts"
    );
    assert_eq!(alerts.len(), 50, "each once");
    assert!(alerts
        .iter()
        .all(|a| a["tenant"]["name"] == "contoso" && a["tenant"]["id"] == TENANT_ID));

    let (code, status) = app.get("/status").await;
    assert_eq!(code, 200);
    let good_source = alerts_source(&status, "contoso");
    assert_eq!(good_source["state"], "running", "{status}");
    assert_eq!(good_source["consecutive_failures"], 0, "{status}");
    assert!(good_source["last_error"].is_null(), "{status}");
    let broken = alerts_source(&status, "broken");
    assert!(names_the_wrong_secret(broken), "{status}");
    assert!(
        broken["consecutive_failures"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["tenants"]["broken"]["tenant_id"], BROKEN_TENANT_ID);
    assert_eq!(status["ready"], false, "{status}");
    let text = status.to_string();
    assert!(!text.contains(BROKEN_WRONG_SECRET), "a secret in /status");
    assert!(!text.contains(SECRET), "a secret in /status");

    // readyz_requires = all (the default): one broken tenant is enough to fail.
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    let failing: Vec<&str> = body["failing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!failing.is_empty(), "{body}");
    assert!(
        failing
            .iter()
            .all(|f| f.contains("tenant broken") && !f.contains("contoso")),
        "only the broken tenant fails: {body}"
    );
    assert!(
        failing
            .iter()
            .any(|f| f.contains("AADSTS7000215") && f.contains("tenants.broken.client_secret")),
        "the failure names the fix: {body}"
    );
    assert!(!body.to_string().contains(BROKEN_WRONG_SECRET));

    // Entra refused the broken tenant's token every time; Graph never saw a request for it.
    let requests = sim.requests();
    let broken_key = BROKEN_TENANT_ID.to_ascii_lowercase();
    let token_refusals = requests
        .iter()
        .filter(|r| r.path.ends_with("/oauth2/v2.0/token") && r.path.contains(&broken_key))
        .filter(|r| r.status != 0) // 0: still being answered
        .inspect(|r| assert_eq!(r.status, 401, "{r:?}"))
        .count();
    assert!(token_refusals >= 1);
    assert!(
        requests
            .iter()
            .filter(|r| r.path.contains("/security/"))
            .all(|r| r.tenant.as_deref() != Some(broken_key.as_str())),
        "no Graph request was made for the broken tenant"
    );

    // The good tenant keeps going: a new alert still arrives while the other stays broken.
    sim.insert_alert(TENANT_ID, alert_json("after-the-breakage", &iso7_ago(60)));
    wait_until(
        Duration::from_secs(20),
        "the good tenant's next alert",
        || native_ids(&delivered_alerts(&sim)).contains("after-the-breakage"),
    )
    .await;
    let (code, _) = app.get("/readyz").await;
    assert_eq!(code, 503, "the broken tenant is still broken");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_readyz_requires_any_one_broken_tenant_keeps_readyz_ready() {
    let (_dir, db) = temp_db();
    let (sim, settings) = good_and_broken(&db, ReadyzRequires::Any).await;
    sim.generate_alerts(TENANT_ID, 10, ago(3600), ago(600));
    let app = TestApp::spawn(settings).await;
    wait_until(
        Duration::from_secs(30),
        "the good tenant's 10 alerts",
        || sim.delivered_count() >= 10,
    )
    .await;
    wait_until_async(
        Duration::from_secs(20),
        "/status naming the broken tenant's wrong secret",
        || async { names_the_wrong_secret(alerts_source(&app.get("/status").await.1, "broken")) },
    )
    .await;
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (_, status) = app.get("/status").await;
    assert_eq!(status["ready"], true, "{status}");
    assert!(
        names_the_wrong_secret(alerts_source(&status, "broken")),
        "{status}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_large_backlog_does_not_starve_another() {
    // Large enough that what is left after phase 2 starts takes several of fabrikam's poll
    // intervals to deliver on any machine: with 3,000, a fast one delivered the rest before
    // fabrikam's next poll had even read its new alerts, which says nothing about fairness.
    const BACKLOG: usize = 8000;
    let sim = sim().await;
    sim.add_tenant(SMALL_TENANT_ID);
    sim.add_app(SMALL_TENANT_ID, SMALL_CLIENT_ID, SMALL_SECRET, ALL_ROLES);
    // contoso: three days of history; fabrikam: a handful, present from the start.
    let backlog: HashSet<String> = sim
        .generate_alerts(TENANT_ID, BACKLOG, ago(3 * 86_400), ago(300))
        .into_iter()
        .collect();
    let small_first: HashSet<String> = sim
        .generate_alerts(SMALL_TENANT_ID, 5, ago(3600), ago(600))
        .into_iter()
        .collect();
    let (_dir, db) = temp_db();
    // Small batches make the backlog many sends long, so starvation would show.
    let opts = Opts {
        batch_size: 10,
        extra_sources: format!(
            "{}{}",
            Opts::default().extra_sources,
            tenant_toml(
                &sim,
                "fabrikam",
                SMALL_TENANT_ID,
                SMALL_CLIENT_ID,
                SMALL_SECRET
            )
        ),
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;

    // Waiting reads counts from /status (cheap); what reached the Dropzone is checked after each
    // wait (copying thousands of received bodies every 50 ms would slow the daemon down).
    // Phase 1: both start together; the small tenant's alerts come out before the backlog ends.
    wait_until_async(
        Duration::from_secs(20),
        "fabrikam's first 5 alerts",
        || async { delivered_by(&app, "fabrikam").await >= 5 },
    )
    .await;
    let at_dropzone = by_tenant(&delivered_alerts(&sim));
    assert_eq!(set(&at_dropzone, "fabrikam"), small_first);
    let backlog_done = at_dropzone.get("contoso").map_or(0, Vec::len);
    assert!(
        backlog_done < BACKLOG,
        "fabrikam waited for all of contoso's backlog ({backlog_done} delivered first)"
    );

    // Phase 2: fabrikam's new alerts arrive while contoso's backlog is being delivered.
    wait_until_async(
        Duration::from_secs(20),
        "contoso's backlog under way",
        || async { delivered_by(&app, "contoso").await >= 300 },
    )
    .await;
    let mut small_second = HashSet::new();
    for i in 0..5 {
        let id = format!("fabrikam-live-{i}");
        let mut a = alert_json(&id, &iso7_ago(30 - i));
        a["tenantId"] = SMALL_TENANT_ID.into();
        sim.insert_alert(SMALL_TENANT_ID, a);
        small_second.insert(id);
    }
    wait_until_async(
        Duration::from_secs(20),
        "fabrikam's 5 new alerts",
        || async { delivered_by(&app, "fabrikam").await >= 10 },
    )
    .await;
    let at_dropzone = by_tenant(&delivered_alerts(&sim));
    assert_eq!(
        at_dropzone["fabrikam"].len(),
        10,
        "{:?}",
        at_dropzone["fabrikam"]
    );
    let backlog_done = at_dropzone["contoso"].len();
    assert!(
        backlog_done < BACKLOG,
        "fabrikam's new alerts waited for the end of contoso's backlog"
    );

    wait_until(Duration::from_secs(120), "the whole backlog", || {
        sim.delivered_count() >= BACKLOG + 10
    })
    .await;
    let alerts = delivered_alerts(&sim);
    // In delivery order, every fabrikam alert precedes the last of contoso's backlog.
    let tenant_at: Vec<&str> = alerts
        .iter()
        .map(|a| a["tenant"]["name"].as_str().unwrap())
        .collect();
    let last_backlog = tenant_at.iter().rposition(|t| *t == "contoso").unwrap();
    let last_small = tenant_at.iter().rposition(|t| *t == "fabrikam").unwrap();
    assert!(
        last_small < last_backlog,
        "fabrikam's last alert came at {last_small}, after contoso's backlog ended at {last_backlog}"
    );
    let at_dropzone = by_tenant(&alerts);
    assert_eq!(
        at_dropzone["contoso"].len(),
        BACKLOG,
        "each backlog alert once"
    );
    assert_eq!(set(&at_dropzone, "contoso"), backlog);
    assert_eq!(
        at_dropzone["fabrikam"].len(),
        10,
        "each of fabrikam's alerts once"
    );
    assert_eq!(
        set(&at_dropzone, "fabrikam"),
        small_first.union(&small_second).cloned().collect()
    );
    // A batch holds one tenant's alerts.
    for b in sim.received() {
        let tenants: HashSet<&str> = b
            .alerts
            .iter()
            .filter_map(|a| a["tenant"]["name"].as_str())
            .collect();
        assert!(tenants.len() <= 1, "a batch mixed tenants: {tenants:?}");
    }
    app.stop().await;
}

/// Versions of `tenant` delivered so far, as `/status` counts them.
async fn delivered_by(app: &TestApp, tenant: &str) -> u64 {
    app.get("/status").await.1["tenants"][tenant]["queue"]["delivered"]
        .as_u64()
        .unwrap_or(0)
}

/// Native ids of delivered alerts by tenant name, in delivery order.
fn by_tenant(alerts: &[Value]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for a in alerts {
        let tenant = a["tenant"]["name"].as_str().unwrap_or("?").to_string();
        let id = a["native_id"].as_str().unwrap_or("?").to_string();
        m.entry(tenant).or_default().push(id);
    }
    m
}

fn set(m: &HashMap<String, Vec<String>>, tenant: &str) -> HashSet<String> {
    m.get(tenant).into_iter().flatten().cloned().collect()
}
