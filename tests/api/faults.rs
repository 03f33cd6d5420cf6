//! Microsoft misbehaving: throttling, short token lifetimes, truncated pages, odd items,
//! items moving mid-listing, nextLinks to other hosts; and a stored body damaged on disk.

use std::time::Duration;

use m365_sim::{Faults, SimConfig};
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_requests_wait_for_retry_after_and_everything_arrives() {
    let sim = sim_with(SimConfig {
        page_cap: 200,
        ..Default::default()
    })
    .await;
    sim.generate_alerts(TENANT_ID, 1500, ago(2 * 86_400), ago(300));
    sim.set_faults(
        TENANT_ID,
        Faults {
            throttle_every: Some(3),
            retry_after: Some("2.5".into()),
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(120), "1500 delivered", || {
        sim.delivered_count() >= 1500
    })
    .await;
    assert_eq!(delivered_counts(&sim).len(), 1500);
    let throttled = sim.requests().iter().filter(|r| r.status == 429).count();
    assert!(throttled >= 2, "the fault fired ({throttled} times)");
    assert_eq!(
        sim.throttle_violations(),
        0,
        "a request came before Retry-After was over"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_second_tokens_are_refreshed_ahead_with_at_most_one_401_per_expiry() {
    let sim = sim_with(SimConfig {
        token_lifetime: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    sim.generate_alerts(TENANT_ID, 20, ago(600), ago(300));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "tokens refreshed 4 times", || {
        sim.tokens_issued(TENANT_ID) >= 4
    })
    .await;
    sim.generate_alerts(TENANT_ID, 20, ago(60), ago(30));
    wait_until(Duration::from_secs(30), "all 40 delivered", || {
        sim.delivered_count() >= 40
    })
    .await;
    let issued = sim.tokens_issued(TENANT_ID);
    assert!(
        sim.unauthorized_count() <= issued,
        "{} 401s for {issued} tokens",
        sim.unauthorized_count()
    );
    let (_, status) = app.get("/status").await;
    assert_eq!(
        status["tenants"]["contoso"]["sources"]["alerts"]["consecutive_failures"],
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_page_is_read_again_and_nothing_is_lost() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 300, ago(7200), ago(600));
    sim.set_faults(
        TENANT_ID,
        Faults {
            truncate_next: 2,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "300 delivered", || {
        sim.delivered_count() >= 300
    })
    .await;
    assert_eq!(delivered_counts(&sim).len(), 300);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_page_never_moves_coverage_past_it() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 50, ago(7200), ago(600));
    // More truncations than one poll's retries: the poll fails and C must stay put.
    sim.set_faults(
        TENANT_ID,
        Faults {
            truncate_next: 1000,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until_async(Duration::from_secs(20), "a failed poll", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]
            ["consecutive_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let (_, status) = app.get("/status").await;
    let coverage = status["tenants"]["contoso"]["sources"]["alerts"]["coverage"]
        .as_str()
        .unwrap()
        .to_string();
    let c = m365_ingest::time::parse_ticks(&coverage).unwrap() / 10_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        c < now - 6 * 86_400,
        "coverage {coverage} moved past a page it never read"
    );
    assert_eq!(sim.delivered_count(), 0);
    sim.set_faults(TENANT_ID, Faults::default());
    wait_until(
        Duration::from_secs(30),
        "50 delivered once the fault clears",
        || sim.delivered_count() >= 50,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_with_an_odd_evidence_shape_is_forwarded_with_a_normalization_error() {
    let sim = sim().await;
    let mut odd = alert_json("odd-evidence", &iso7_ago(900));
    odd["evidence"] = json!([{"@odata.type": "#microsoft.graph.security.fileEvidence", "fileDetails": "not an object"}]);
    sim.insert_alert(TENANT_ID, odd);
    sim.insert_alert(TENANT_ID, alert_json("plain", &iso7_ago(800)));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "both delivered", || {
        sim.delivered_count() >= 2
    })
    .await;
    let alerts = delivered_alerts(&sim);
    let odd = alerts
        .iter()
        .find(|a| a["native_id"] == "odd-evidence")
        .unwrap();
    assert!(
        odd["normalization_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{odd}"
    );
    assert_eq!(odd["raw"]["evidence"][0]["fileDetails"], "not an object");
    let plain = alerts.iter().find(|a| a["native_id"] == "plain").unwrap();
    assert!(plain.get("normalization_error").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_updated_while_its_slice_is_listed_skips_no_other_alert() {
    // 25 alerts in one tick with 10 a page: only a nextLink walk reads them, and the walk's
    // $skip pages shift when the fault moves the first alert out of the slice.
    let sim = sim_with(SimConfig {
        page_cap: 10,
        ..Default::default()
    })
    .await;
    insert_in_one_tick(&sim, "same-tick-", 25);
    sim.set_faults(
        TENANT_ID,
        Faults {
            update_during_listing: 3,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(40), "all 25 alerts", || {
        native_ids(&delivered_alerts(&sim)).len() >= 25
    })
    .await;
    assert_eq!(native_ids(&delivered_alerts(&sim)).len(), 25);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_to_another_host_is_not_followed_and_gets_no_token() {
    let elsewhere = sim().await;
    let sim = sim_with(SimConfig {
        page_cap: 10,
        ..Default::default()
    })
    .await;
    insert_in_one_tick(&sim, "s-", 25);
    sim.set_faults(
        TENANT_ID,
        Faults {
            next_link_base: Some(elsewhere.base_url()),
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until_async(
        Duration::from_secs(20),
        "the poll to fail on the foreign link",
        || async {
            app.get("/status").await.1["tenants"]["contoso"]["sources"]["alerts"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"))
        },
    )
    .await;
    assert!(
        elsewhere.requests().is_empty(),
        "the other host was contacted: {:?}",
        elsewhere.requests()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_without_an_id_is_quarantined_with_the_reason_and_the_rest_delivered() {
    let sim = sim().await;
    let t = iso7_ago(900);
    let mut no_id = alert_json("ignored", &t);
    no_id.as_object_mut().unwrap().remove("id");
    sim.insert_alert_at(TENANT_ID, "no-id-key", &t, no_id);
    for i in 0..5 {
        sim.insert_alert(
            TENANT_ID,
            alert_json(&format!("fine-{i}"), &iso7_ago(800 + i)),
        );
    }
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "5 delivered", || {
        sim.delivered_count() >= 5
    })
    .await;
    wait_until_async(Duration::from_secs(20), "one quarantined", || async {
        app.get("/status").await.1["tenants"]["contoso"]["queue"]["quarantined"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.delivered_count(),
        5,
        "the item without an id is not forwarded, and is quarantined once"
    );
    let (_, status) = app.get("/status").await;
    assert_eq!(status["tenants"]["contoso"]["queue"]["quarantined"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claimed_ahead_waits_for_the_refused_one_before_it() {
    let (_dir, db) = temp_db();
    // SQLite writes one transaction at a time: one batch is claimed ahead.
    claimed_ahead_waits_for_the_refused_batch(&format!("sqlite://{}", db.display()), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_batches_claimed_ahead_wait_for_the_refused_one_before_them() {
    // Postgres claims two ahead: the claim after the next runs beside the send and its record.
    let db = crate::pg::PgDb::create().await;
    claimed_ahead_waits_for_the_refused_batch(&db.url, 2).await;
    db.drop_db().await;
}

/// A tenant's next batches are claimed while its current one is sent (issue 12). When the
/// current one is refused, none of them may pass it: the refused batch is the first one
/// accepted, and nothing arrives twice. `ahead`: how many batches the backend claims ahead.
async fn claimed_ahead_waits_for_the_refused_batch(store_url: &str, ahead: i64) {
    let sim = sim().await;
    for i in 0..20 {
        sim.insert_alert(
            TENANT_ID,
            alert_json(&format!("o-{i:02}"), &iso7_ago(900 + i)),
        );
    }
    sim.set_dropzone(m365_sim::DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    let opts = Opts {
        batch_size: 5,
        ..Opts::default()
    };
    let app = TestApp::spawn(settings_on(&sim, store_url, &opts)).await;
    let open_batches = || async {
        use sqlx::Connection;
        const OPEN: &str = "SELECT COUNT(*) FROM batches WHERE state = 'open'";
        if store_url.starts_with("sqlite:") {
            let Ok(mut conn) = sqlx::SqliteConnection::connect(store_url).await else {
                return 0;
            };
            sqlx::query_scalar::<_, i64>(OPEN)
                .fetch_one(&mut conn)
                .await
        } else {
            let Ok(mut conn) = sqlx::PgConnection::connect(store_url).await else {
                return 0;
            };
            sqlx::query_scalar::<_, i64>(OPEN)
                .fetch_one(&mut conn)
                .await
        }
        .unwrap_or(0)
    };
    wait_until_async(
        Duration::from_secs(30),
        "the refused batch and those claimed ahead of it, all open",
        || async { open_batches().await == 1 + ahead },
    )
    .await;
    let first_refused = sim
        .received()
        .iter()
        .find(|b| b.status == 503)
        .and_then(|b| b.idempotency_key.clone())
        .expect("a refused batch");
    sim.set_dropzone(m365_sim::DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(60), "all twenty alerts", || {
        sim.delivered_count() >= 20
    })
    .await;
    let accepted: Vec<String> = sim
        .received()
        .iter()
        .filter(|b| b.status == 200)
        .filter_map(|b| b.idempotency_key.clone())
        .collect();
    assert_eq!(accepted.first(), Some(&first_refused), "{accepted:?}");
    let distinct: std::collections::HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        distinct.len(),
        accepted.len(),
        "a batch accepted twice: {accepted:?}"
    );
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    // Every batch recorded delivered, the last ones too (recorded while the next was sent).
    wait_until_async(Duration::from_secs(30), "no batch left open", || async {
        open_batches().await == 0
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_body_that_cannot_be_read_is_dead_lettered_alone() {
    use m365_ingest::store::Store;
    let sim = sim().await;
    for i in 0..5 {
        sim.insert_alert(TENANT_ID, alert_json(&format!("c-{i}"), &iso7_ago(900 + i)));
    }
    // Nothing is accepted until the damage is done, so every version is still stored.
    sim.set_dropzone(m365_sim::DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(30), "five versions queued", || {
        let store = store.clone();
        async move { store.undelivered("contoso").await.unwrap_or(0) == 5 }
    })
    .await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE outbox_body SET body = x'01ffffff' WHERE seq = (SELECT MIN(seq) FROM outbox_body)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sim.set_dropzone(m365_sim::DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(60), "the four readable alerts", || {
        sim.delivered_count() >= 4
    })
    .await;
    wait_until_async(
        Duration::from_secs(60),
        "the damaged one dead-lettered",
        || {
            let store = store.clone();
            async move {
                store
                    .dead_letters(None)
                    .await
                    .map(|d| d.len() == 1 && d[0].reason.starts_with("unreadable"))
                    .unwrap_or(false)
            }
        },
    )
    .await;
    // Dropzone counts a body when it arrives; the store marks it delivered only after the
    // response, so the queue is waited on rather than read once.
    wait_until_async(Duration::from_secs(30), "the queue empty", || {
        let store = store.clone();
        async move { store.undelivered("contoso").await.unwrap_or(1) == 0 }
    })
    .await;
    assert_eq!(delivered_counts(&sim).len(), 4);
    app.stop().await;
}
