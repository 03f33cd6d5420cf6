//! The `/_sim/` control API and shutdown.

use serde_json::{json, Value};

use crate::helpers::*;

async fn control(sim: &m365_sim::Simulator, path: &str, body: Value) -> Value {
    let r = http()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_control_api_sets_up_a_tenant_that_graph_then_serves() {
    let sim = m365_sim::Simulator::start(m365_sim::SimConfig::default())
        .await
        .unwrap();
    control(&sim, "tenants", json!({"tenant_id": TENANT})).await;
    control(&sim, "apps", json!({"tenant_id": TENANT, "client_id": CLIENT, "secret": SECRET, "roles": ["SecurityAlert.Read.All"]})).await;
    assert_eq!(
        control(
            &sim,
            "alerts/generate",
            json!({"tenant_id": TENANT, "n": 12, "minutes_back": 30})
        )
        .await["generated"],
        12
    );
    control(
        &sim,
        "faults",
        json!({"tenant_id": TENANT, "server_error_every": 2}),
    )
    .await;
    control(
        &sim,
        "dropzone",
        json!({"mode": "fail_with", "status": 500}),
    )
    .await;

    let token = graph_token(&sim).await;
    let (s, page) = list(&sim, &token, &[]).await;
    assert_eq!((s, ids(&page).len()), (200, 12));
    assert_eq!(list(&sim, &token, &[]).await.0, 503);
    let r = http()
        .post(sim.dropzone_url())
        .json(&json!({"alerts": [{"event_id": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    let received: Value = http()
        .get(format!("{}/_sim/received", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(received["batches"][0]["status"], 500);
    assert_eq!(received["batches"][0]["event_ids"], json!(["x"]));
    let log: Value = http()
        .get(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Control calls are not recorded: token, two lists, one dropzone POST.
    assert_eq!(log["requests"].as_array().unwrap().len(), 4);

    let r = http()
        .post(format!("{}/_sim/faults", sim.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn shutdown_stops_serving_and_the_stream() {
    let sim = start().await;
    sim.spawn_stream(TENANT, 6000);
    // The stream creates alerts on its own; wait until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.alert_count(TENANT) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "stream produced no alerts"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    sim.shutdown().await;
    let after = sim.alert_count(TENANT);
    assert!(http()
        .get(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .is_err());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.alert_count(TENANT), after, "stream stopped");
}

#[tokio::test]
async fn the_control_api_generates_incidents_submissions_and_cloud_app_alerts() {
    let sim = start().await;
    let r = control(
        &sim,
        "incidents/generate",
        json!({"tenant_id": TENANT, "n": 7, "minutes_back": 30}),
    )
    .await;
    assert_eq!(
        (r["generated"].as_u64(), sim.incident_count(TENANT)),
        (Some(7), 7)
    );
    let r = control(
        &sim,
        "submissions/generate",
        json!({"tenant_id": TENANT, "list": "urlThreats", "n": 4}),
    )
    .await;
    assert_eq!(r["generated"], 4);
    assert_eq!(sim.submission_count(TENANT, "urlThreats"), 4);
    let r = control(
        &sim,
        "cloud_apps/generate",
        json!({"tenant_id": TENANT, "n": 9}),
    )
    .await;
    assert_eq!(r["ids"].as_array().map(Vec::len), Some(9));
    assert_eq!(sim.cloud_app_alert_count(TENANT), 9);
    control(&sim, "incidents", json!({"tenant_id": TENANT, "item": {"id": "5", "lastUpdateDateTime": "2024-01-01T00:00:00Z"}})).await;
    control(&sim, "submissions", json!({"tenant_id": TENANT, "list": "fileThreats", "item": {"id": "f", "createdDateTime": "2024-01-01T00:00:00Z"}})).await;
    control(&sim, "cloud_apps", json!({"tenant_id": TENANT, "item": {"_id": "603f704aaf7417985bbf3b22", "timestamp": 1621941916475i64}})).await;
    assert_eq!(sim.incident_count(TENANT), 8);
    assert_eq!(sim.submission_count(TENANT, "fileThreats"), 1);
    assert_eq!(sim.cloud_app_alert_count(TENANT), 10);
    control(
        &sim,
        "faults",
        json!({"tenant_id": TENANT, "expand_fails": true}),
    )
    .await;
    let r = http()
        .post(format!("{}/_sim/submissions/generate", sim.base_url()))
        .json(&json!({"tenant_id": TENANT, "list": "appThreats", "n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn the_stream_also_moves_incidents_submissions_and_cloud_app_alerts() {
    let sim = start().await;
    sim.spawn_stream(TENANT, 60_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let submissions = |sim: &m365_sim::Simulator| {
        ["emailThreats", "urlThreats", "fileThreats"]
            .iter()
            .map(|l| sim.submission_count(TENANT, l))
            .sum::<usize>()
    };
    while sim.incident_count(TENANT) < 3
        || submissions(&sim) < 3
        || sim.cloud_app_alert_count(TENANT) < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stream: {} incidents, {} submissions, {} cloud app alerts",
            sim.incident_count(TENANT),
            submissions(&sim),
            sim.cloud_app_alert_count(TENANT)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sim.shutdown().await;
    assert!(sim.alert_count(TENANT) > sim.cloud_app_alert_count(TENANT));
}
