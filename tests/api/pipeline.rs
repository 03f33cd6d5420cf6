//! The pipeline end to end: backlog, updates, late arrivals, restarts, quiet tenants.

use std::collections::HashSet;
use std::time::Duration;

use m365_ingest::store::Store;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_5000_alerts_over_3_days_is_delivered_exactly_once() {
    let sim = sim().await;
    let ids: HashSet<String> = sim
        .generate_alerts(TENANT_ID, 5000, ago(3 * 86_400), ago(120))
        .into_iter()
        .collect();
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;

    wait_until(Duration::from_secs(90), "5000 alerts delivered", || {
        sim.delivered_count() >= 5000
    })
    .await;
    // Let a few more polls re-read the overlap: nothing may arrive twice.
    wait_until_async(Duration::from_secs(20), "three more polls", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["counts"]["requests"]
            .as_u64()
            .unwrap_or(0)
            > 20
    })
    .await;

    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 5000, "every alert once");
    assert!(counts.values().all(|&n| n == 1), "no event delivered twice");
    let alerts = delivered_alerts(&sim);
    assert_eq!(native_ids(&alerts), ids);
    for a in &alerts {
        assert_eq!(a["schema"], "m365-ingest.alert.v1");
        assert_eq!(a["kind"], "alert");
        assert_eq!(a["change"], "created");
        assert_eq!(a["revision"], 1);
        assert_eq!(a["historical"], true, "a first run's lookback is history");
        assert_eq!(a["tenant"]["id"], TENANT_ID);
        assert!(["informational", "low", "medium", "high", "unknown"]
            .contains(&a["severity"].as_str().unwrap()));
        assert!(
            ["new", "in_progress", "resolved", "unknown"].contains(&a["status"].as_str().unwrap())
        );
        let version = a["version"].as_str().unwrap();
        assert_eq!(version.len(), 28, "7 fractional digits: {version}");
        assert_eq!(
            a["raw"]["lastUpdateDateTime"].as_str().map(|s| s.len()),
            Some(28)
        );
        assert!(a["entities"].as_array().is_some_and(|e| !e.is_empty()));
        assert!(
            a.get("normalization_error").is_none(),
            "{}",
            a["normalization_error"]
        );
    }
    // Every batch carried the API key and an idempotency key.
    for b in sim.received() {
        assert_eq!(
            b.authorization.as_deref(),
            Some(&*format!("Bearer {DROPZONE_KEY}"))
        );
        assert!(b.idempotency_key.as_deref().is_some_and(|k| k.len() == 36));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_100_status_changes_is_delivered_once_as_an_update() {
    let sim = sim().await;
    // Alerts that start as new and unclassified, so the update changes exactly those fields.
    let ids: Vec<String> = (0..100).map(|i| format!("status-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        sim.insert_alert(TENANT_ID, alert_json(id, &iso7_ago(3600 - i as u64)));
    }
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "100 created", || {
        sim.delivered_count() >= 100
    })
    .await;

    for id in &ids {
        assert!(sim.update_alert(
            TENANT_ID,
            id,
            json!({"status": "resolved", "classification": "truePositive"})
        ));
    }
    wait_until(Duration::from_secs(30), "100 updates", || {
        sim.delivered_count() >= 200
    })
    .await;
    // More polls over the same window send nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.delivered_count(), 200);

    let updates: Vec<_> = delivered_alerts(&sim)
        .into_iter()
        .filter(|a| a["change"] == "updated")
        .collect();
    assert_eq!(updates.len(), 100);
    assert_eq!(native_ids(&updates), ids.iter().cloned().collect());
    for u in &updates {
        assert_eq!(u["revision"], 2);
        assert_eq!(u["status"], "resolved");
        let changed: Vec<&str> = u["changed_fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(changed.contains(&"status"), "{changed:?}");
        assert!(changed.contains(&"classification"), "{changed:?}");
        assert!(!changed.contains(&"title"), "{changed:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_appears_two_minutes_behind_the_cursor_is_delivered() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 10, ago(1800), ago(900));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "first alerts", || {
        sim.delivered_count() >= 10
    })
    .await;
    // Until the first run ends, what it finds below T0 is history (a slow machine is still there).
    wait_until_async(Duration::from_secs(30), "first run done", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["first_run_done"]
            == true
    })
    .await;
    // The coverage point is now within seconds of Microsoft's clock.
    sim.insert_alert(TENANT_ID, alert_json("late-indexed-1", &iso7_ago(120)));
    wait_until(Duration::from_secs(30), "the late alert", || {
        sim.delivered_count() >= 11
    })
    .await;
    let late: Vec<_> = delivered_alerts(&sim)
        .into_iter()
        .filter(|a| a["native_id"] == "late-indexed-1")
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["historical"], false);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_backlog_loses_nothing_and_resends_only_the_in_flight_batch() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 3000, ago(86_400), ago(300));
    let (_dir, db) = temp_db();
    let opts = Opts {
        batch_size: 10,
        concurrency: 1,
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(60), "a third delivered", || {
        sim.delivered_count() >= 1000
    })
    .await;
    app.crash().await;
    let after_crash = sim.delivered_count();
    assert!(after_crash < 3000, "the crash came mid-backlog");

    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(90), "all 3000 delivered", || {
        delivered_counts(&sim).len() >= 3000
    })
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 3000);
    let twice: Vec<_> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        twice.len() <= 10,
        "only the in-flight batch may repeat, got {}",
        twice.len()
    );
    // A repeated alert came again in a batch with the same Idempotency-Key.
    for id in &twice {
        let keys: HashSet<_> = sim
            .received()
            .into_iter()
            .filter(|b| b.event_ids.contains(id))
            .filter_map(|b| b.idempotency_key)
            .collect();
        assert_eq!(keys.len(), 1, "{id} was re-sent under a new key");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_reading_the_overlap_sends_nothing_again_and_a_quiet_tenant_does_not_lag() {
    let sim = sim().await;
    // 7 fractional digits right at whole-second edges are the hard case for text or float versions.
    for i in 0..20u64 {
        let mut t = iso7_ago(200 + i * 7);
        t.replace_range(20..27, "9999999");
        sim.insert_alert(TENANT_ID, alert_json(&format!("edge-{i}"), &t));
    }
    let (_dir, db) = temp_db();
    let opts = Opts {
        interval: "1s",
        settle: "1s",
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(30), "20 delivered", || {
        sim.delivered_count() >= 20
    })
    .await;
    // Ten more polls re-read the same overlap window.
    wait_until_async(Duration::from_secs(30), "ten quiet polls", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["counts"]["unchanged"]
            .as_u64()
            .unwrap_or(0)
            >= 200
    })
    .await;
    assert_eq!(
        sim.delivered_count(),
        20,
        "the overlap re-read sent nothing again"
    );
    let (_, status) = app.get("/status").await;
    let lag = status["tenants"]["contoso"]["sources"]["alerts"]["lag_s"]
        .as_i64()
        .unwrap();
    let (interval, settle) = (1, 1);
    assert!(
        lag < 2 * interval + settle + 1,
        "quiet tenant lag {lag}s (2 × interval + settle, +1 s for Date's resolution)"
    );
    let (code, _) = app.get("/readyz").await;
    assert_eq!(code, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_skips_history_and_forwards_what_comes_after() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 50, ago(86_400 * 2), ago(86_400));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(
        &sim,
        &db,
        &Opts {
            start: "now",
            ..Opts::default()
        },
    ))
    .await;
    wait_until_async(Duration::from_secs(20), "first run done", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["first_run_done"]
            == true
    })
    .await;
    sim.insert_alert(TENANT_ID, alert_json("fresh-1", &iso7_ago(0)));
    wait_until(Duration::from_secs(20), "the fresh alert", || {
        sim.delivered_count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.delivered_count(), 1, "history before T0 stays behind");
    let q = app.store.queue_status("contoso").await.unwrap();
    assert_eq!(q.pending, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_an_alert_indexed_later_than_the_overlap_reaches() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 5, ago(7200), ago(3600));
    let t = iso7_ago(1800); // 30 minutes back: outside the 10-minute overlap
    sim.insert_alert(TENANT_ID, alert_json("very-late", &t));
    sim.set_faults(
        TENANT_ID,
        m365_sim::Faults {
            hide_until: vec![("very-late".into(), ago(0) + Duration::from_secs(6))],
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let opts = Opts {
        extra_alerts: "reconcile_interval = \"2s\"\nreconcile_window = \"2h\"".into(),
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(30), "the 5 visible alerts", || {
        sim.delivered_count() >= 5
    })
    .await;
    wait_until(
        Duration::from_secs(40),
        "the late one, through reconciliation",
        || native_ids(&delivered_alerts(&sim)).contains("very-late"),
    )
    .await;
    let (_, status) = app.get("/status").await;
    assert!(
        status["tenants"]["contoso"]["sources"]["alerts"]["late_arrivals"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    app.stop().await;
}

/// Alert listings from the `skip`th request on that start 2 to 4 hours back: with a 3-hour
/// reconciliation window, those are reconciliations. Live polls start 10 minutes back (the
/// overlap), and a first run's one-day slices at whole days before its start.
fn reconciliations_since(sim: &m365_sim::Simulator, skip: usize) -> usize {
    let now = m365_ingest::time::now_ticks();
    sim.requests()
        .iter()
        .skip(skip)
        .filter(|r| r.path.ends_with("/security/alerts_v2"))
        .filter_map(|r| {
            let filter = url::form_urlencoded::parse(r.query.as_bytes())
                .find(|(k, _)| k == "$filter")?
                .1
                .into_owned();
            let bound = filter.split("lastUpdateDateTime ge ").nth(1)?;
            let ticks = m365_ingest::time::parse_ticks(bound.split_whitespace().next()?)?;
            Some((now - ticks) / m365_ingest::time::TICKS_PER_SECOND)
        })
        .filter(|back| (2 * 3600..4 * 3600).contains(back))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_is_reconciled_an_interval_later_and_a_restart_at_once() {
    // A backfill has just read every window a reconciliation would re-list: re-listing the
    // last day at once would read it all again. A restart cannot know what it missed.
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 5, ago(7200), ago(3600));
    let (_dir, db) = temp_db();
    let opts = Opts {
        extra_alerts: "reconcile_interval = \"1h\"\nreconcile_window = \"3h\"".into(),
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(30), "the backlog", || {
        sim.delivered_count() >= 5
    })
    .await;
    wait_until_async(Duration::from_secs(30), "the first run to end", || async {
        let (_, status) = app.get("/status").await;
        status["tenants"]["contoso"]["sources"]["alerts"]["first_run_done"] == true
    })
    .await;
    let after_first_run = sim.requests().len();
    wait_until(Duration::from_secs(30), "three more polls", || {
        sim.requests()
            .iter()
            .skip(after_first_run)
            .filter(|r| r.path.ends_with("/security/alerts_v2"))
            .count()
            >= 3
    })
    .await;
    assert_eq!(
        reconciliations_since(&sim, 0),
        0,
        "no reconciliation right after the first run"
    );
    app.stop().await;

    let restarted = sim.requests().len();
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(
        Duration::from_secs(30),
        "a reconciliation after the restart",
        || reconciliations_since(&sim, restarted) > 0,
    )
    .await;
    assert_eq!(
        sim.delivered_count(),
        5,
        "a reconciliation sends nothing new"
    );
    // The pass read the five again, at versions stored already: not prepared, but counted as
    // read (`/status` here; the metrics take the same counts, in a registry the tests share).
    wait_until_async(
        Duration::from_secs(30),
        "the five counted unchanged",
        || async {
            let (_, status) = app.get("/status").await;
            status["tenants"]["contoso"]["sources"]["alerts"]["counts"]["unchanged"]
                .as_u64()
                .unwrap_or(0)
                >= 5
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_what_enters_and_a_forwarded_alert_keeps_being_forwarded() {
    let sim = sim().await;
    let mut wanted = alert_json("wanted", &iso7_ago(900));
    wanted["status"] = "new".into();
    let mut unwanted = alert_json("unwanted", &iso7_ago(890));
    unwanted["status"] = "resolved".into();
    sim.insert_alert(TENANT_ID, wanted);
    sim.insert_alert(TENANT_ID, unwanted);
    let (_dir, db) = temp_db();
    let opts = Opts {
        extra_alerts: "statuses = [\"new\", \"inProgress\"]\nservice_sources = [\"microsoftDefenderForEndpoint\", \"microsoftDefenderForOffice365\"]".into(),
        ..Opts::default()
    };
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(30), "the new alert", || {
        sim.delivered_count() >= 1
    })
    .await;
    assert!(sim.update_alert(TENANT_ID, "wanted", json!({"status": "resolved"})));
    wait_until(Duration::from_secs(30), "its resolved version", || {
        sim.delivered_count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = delivered_alerts(&sim);
    assert_eq!(alerts.len(), 2);
    assert!(alerts.iter().all(|a| a["native_id"] == "wanted"));
    assert_eq!(alerts[1]["status"], "resolved");
    let asked = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/alerts_v2") && r.query.contains("filter"))
        .count();
    assert!(asked > 0);
    for r in sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/alerts_v2") && r.query.contains("filter"))
    {
        let q = r.query.replace('+', " ");
        let q = url_decode(&q);
        assert!(q.contains("serviceSource eq 'microsoftDefenderForEndpoint' or serviceSource eq 'microsoftDefenderForOffice365'"), "{q}");
    }
    app.stop().await;
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
