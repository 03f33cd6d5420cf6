//! Pollers of one tenant committing side by side on Postgres: the alerts and Cloud Apps sources
//! read the same detections (Cloud Apps alerts and their alerts_v2 twins) at the same time.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use m365_ingest::normalize::SourceKind;
use m365_ingest::store::Store;
use serde_json::Value;

use crate::helpers::*;
use crate::pg::PgDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_cloud_apps_pollers_on_postgres_keep_revisions_and_the_twin_rule() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    // A backlog both sources read at once on their first poll...
    let mut pairs: Vec<(String, String)> = (0..300)
        .map(|i| sim.generate_cloud_app_alert_with_twin(TENANT_ID, ago(3_600 - i * 10)))
        .collect();
    let db = PgDb::create().await;
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.cloud_apps]\ninterval = \"1s\"\nsettle = \"1s\"\noverlap = \"20s\"\ntwin_wait = \"0s\"\n";
    let mut settings = settings_on(
        &sim,
        &db.url,
        &Opts {
            batch_size: 50,
            // Each poll re-reads its overlap: short, so the live items are read a few times only.
            overlap: "20s",
            extra_sources: extra.into(),
            ..Opts::default()
        },
    );
    // Both APIs at test speed, so the two pollers page side by side.
    sim.set_cloud_apps_rate_limit(6000);
    let tenant = settings.tenants.get_mut("contoso").unwrap();
    tenant.cloud_apps_url = Some(sim.cloud_apps_url());
    tenant.cloud_apps_requests_per_minute = 6000;
    let app = TestApp::spawn(settings).await;
    // ...and new detections, seen through both APIs, while they poll.
    for _ in 0..25 {
        for _ in 0..30 {
            pairs.push(sim.generate_cloud_app_alert_with_twin(TENANT_ID, ago(2)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (mda_ids, graph_ids): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let store = app.store.clone();
    wait_until_async(
        Duration::from_secs(120),
        "every detection stored from both sources, and the queue empty",
        || async {
            let alerts = store.known_ids("contoso", SourceKind::Alerts, &graph_ids);
            let cloud = store.known_ids("contoso", SourceKind::CloudApps, &mda_ids);
            alerts.await.unwrap().len() == graph_ids.len()
                && cloud.await.unwrap().len() == mda_ids.len()
                && store.undelivered("contoso").await.unwrap() == 0
        },
    )
    .await;
    app.stop().await;

    let mut seen = HashSet::new();
    let delivered: Vec<Value> = delivered_alerts(&sim)
        .into_iter()
        .filter(|a| seen.insert(a["event_id"].as_str().unwrap().to_string()))
        .collect();
    // Each alert's revisions are 1..n, each once: no two pages planned the same revision.
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for a in &delivered {
        revisions
            .entry(a["alert_id"].as_str().unwrap().to_string())
            .or_default()
            .push(a["revision"].as_i64().unwrap());
    }
    for (alert, revs) in &mut revisions {
        revs.sort_unstable();
        let expected: Vec<i64> = (1..=revs.len() as i64).collect();
        assert_eq!(revs, &expected, "revisions of {alert}");
    }
    let last = |source: &str, id: &str| {
        delivered
            .iter()
            .filter(|a| a["source"] == source && a["native_id"] == id)
            .max_by_key(|a| a["revision"].as_i64())
    };
    for (mda_id, graph_id) in &pairs {
        let twin = last("alerts", graph_id).expect("every alerts_v2 twin is forwarded");
        assert!(
            twin["related"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["source"] == "cloud_apps" && r["native_id"] == mda_id.as_str()),
            "the twin {graph_id} names its Cloud Apps alert in its last revision ({} {})",
            twin["revision"],
            twin["change"]
        );
        // The twin rule: held behind the forwarded twin, or (forwarded before the twin was)
        // naming it in `duplicate_of` from its last revision on.
        if let Some(mda) = last("cloud_apps", mda_id) {
            assert_eq!(
                mda["duplicate_of"]["native_id"],
                graph_id.as_str(),
                "the Cloud Apps alert {mda_id} was forwarded beside its twin ({} {})",
                mda["revision"],
                mda["change"]
            );
        }
    }
    db.drop_db().await;
}
