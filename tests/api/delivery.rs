//! Dropzone misbehaving: down for a while, rejecting a poisoned alert.

use std::time::Duration;

use m365_ingest::store::Store;
use m365_sim::DropzoneBehavior;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropzone_down_for_a_while_loses_nothing_and_readyz_says_so() {
    let sim = sim().await;
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    sim.generate_alerts(TENANT_ID, 400, ago(7200), ago(600));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until_async(Duration::from_secs(30), "/readyz 503", || async {
        app.get("/readyz").await.0 == 503
    })
    .await;
    let (_, body) = app.get("/readyz").await;
    assert!(body["failing"].to_string().contains("503"), "{body}");
    assert_eq!(sim.delivered_count(), 0);

    sim.set_dropzone(DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(60), "400 delivered", || {
        sim.delivered_count() >= 400
    })
    .await;
    assert_eq!(delivered_counts(&sim).len(), 400);
    wait_until_async(Duration::from_secs(20), "/readyz 200", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_alert_is_dead_lettered_and_the_rest_of_its_batch_delivered() {
    let sim = sim().await;
    for i in 0..30 {
        let mut a = alert_json(&format!("a-{i:02}"), &iso7_ago(900 - i));
        if i == 17 {
            a["title"] = "POISON alert".into();
        }
        sim.insert_alert(TENANT_ID, a);
    }
    sim.set_dropzone(DropzoneBehavior::RejectWhere {
        field: "title".into(),
        contains: "POISON".into(),
        status: 400,
    });
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "29 delivered", || {
        sim.delivered_count() >= 29
    })
    .await;
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(20), "one dead letter", || {
        let store = store.clone();
        async move {
            store
                .dead_letters(None)
                .await
                .map(|d| d.len() == 1)
                .unwrap_or(false)
        }
    })
    .await;
    let dead = app.store.dead_letters(Some("contoso")).await.unwrap();
    assert_eq!(dead[0].native_id, "a-17");
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    assert_eq!(sim.delivered_count(), 29);
    assert!(!native_ids(&delivered_alerts(&sim)).contains("a-17"));
    let (code, _) = app.get("/readyz").await;
    assert_eq!(code, 200, "a dead letter does not make the daemon unready");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_pending_the_pollers_pause_and_resume_once_the_queue_drains() {
    let sim = sim().await;
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    sim.generate_alerts(TENANT_ID, 50, ago(7200), ago(3600));
    let (_dir, db) = temp_db();
    let mut settings = settings(&sim, &db, &Opts::default());
    settings.store.max_pending = 10;
    let app = TestApp::spawn(settings).await;
    wait_until_async(Duration::from_secs(30), "the poller pauses", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["state"] == "paused"
    })
    .await;
    let (_, status) = app.get("/status").await;
    let reason = status["tenants"]["contoso"]["sources"]["alerts"]["paused_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("max_pending"), "{reason}");
    // Alerts arriving now wait in Microsoft, not in memory: nothing new is read while paused.
    let requests_before = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/alerts_v2"))
        .count();
    sim.generate_alerts(TENANT_ID, 5, ago(120), ago(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests_after = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/alerts_v2"))
        .count();
    assert_eq!(
        requests_before, requests_after,
        "a paused poller sent requests"
    );
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.to_string().contains("max_pending"), "{body}");

    sim.set_dropzone(DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(60), "all 55 delivered", || {
        delivered_counts(&sim).len() >= 55
    })
    .await;
    app.stop().await;
}
