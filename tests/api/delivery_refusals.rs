//! Dropzone refusing in ways that must not lose or strand alerts (issue 11, delivery): an
//! endpoint that starts refusing everything, a redirect, a lone poisoned alert in a quiet tenant,
//! and a tenant moved to another destination with batches still open.

use std::time::Duration;

use m365_ingest::store::Store;
use m365_sim::{DropzoneBehavior, Simulator};
use serde_json::Value;

use crate::helpers::*;

fn destination(status: &Value) -> Value {
    status["destinations"][0].clone()
}

async fn dead_letter_count(app: &TestApp) -> usize {
    app.store.dead_letters(None).await.unwrap().len()
}

/// Inserts `n` alerts updated a minute ago, so a running poller reads them on its next pass.
fn insert_recent(sim: &Simulator, prefix: &str, n: usize) {
    for i in 0..n {
        let a = alert_json(&format!("{prefix}-{i:03}"), &iso7_ago(60));
        sim.insert_alert(TENANT_ID, a);
    }
}

async fn wait_paused(app: &TestApp) -> String {
    wait_until_async(
        Duration::from_secs(60),
        "the destination pauses",
        || async { !destination(&app.get("/status").await.1)["paused"].is_null() },
    )
    .await;
    destination(&app.get("/status").await.1)["paused"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_starts_refusing_everything_pauses_instead_of_dead_lettering() {
    let sim = sim().await;
    insert_recent(&sim, "early", 5);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "the first 5 delivered", || {
        sim.delivered_count() >= 5
    })
    .await;

    // A Dropzone deploy that answers 422 to every alert, right after an accepted batch.
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 422,
        retry_after: None,
    });
    insert_recent(&sim, "later", 60);
    let reason = wait_paused(&app).await;
    assert!(reason.contains("422"), "{reason}");
    assert!(reason.contains("forward.url"), "{reason}");
    assert_eq!(
        dead_letter_count(&app).await,
        0,
        "a broken endpoint dead-lettered alerts"
    );
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503, "{body}");

    // Fixed: the paused destination finds out on its next probe and delivers everything.
    sim.set_dropzone(DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(120), "all 65 delivered", || {
        delivered_counts(&sim).len() >= 65
    })
    .await;
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_pauses_the_destination_without_splitting_or_dead_lettering() {
    let sim = sim().await;
    insert_recent(&sim, "early", 3);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "the first 3 delivered", || {
        sim.delivered_count() >= 3
    })
    .await;

    // The URL moved: redirects are not followed (they could carry the key elsewhere).
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 307,
        retry_after: None,
    });
    insert_recent(&sim, "later", 20);
    let reason = wait_paused(&app).await;
    assert!(reason.contains("307"), "{reason}");
    assert!(reason.contains("forward.url"), "{reason}");
    assert_eq!(dead_letter_count(&app).await, 0);
    let redirected: Vec<usize> = sim
        .received()
        .iter()
        .filter(|b| b.status == 307)
        .map(|b| b.event_ids.len())
        .collect();
    assert!(!redirected.is_empty());
    assert!(
        redirected[0] > 1 && redirected.iter().all(|&n| n == redirected[0]),
        "a redirected batch was split: {redirected:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_poisoned_alert_in_a_quiet_tenant_is_dead_lettered_and_later_alerts_flow() {
    let sim = sim().await;
    let mut poison = alert_json("poison", &iso7_ago(60));
    poison["title"] = "POISON alert".into();
    sim.insert_alert(TENANT_ID, poison);
    sim.set_dropzone(DropzoneBehavior::RejectWhere {
        field: "title".into(),
        contains: "POISON".into(),
        status: 422,
    });
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    // The poisoned alert is alone in its batch and refused a few times before anything else
    // arrives: nothing has been accepted yet, so nothing tells it apart from a broken endpoint.
    wait_until(
        Duration::from_secs(30),
        "the lone alert refused twice",
        || sim.received().iter().filter(|b| b.status == 422).count() >= 2,
    )
    .await;
    insert_recent(&sim, "later", 3);
    wait_until(
        Duration::from_secs(30),
        "the tenant's later alerts delivered",
        || sim.delivered_count() >= 3,
    )
    .await;
    let store = app.store.clone();
    wait_until_async(
        Duration::from_secs(30),
        "the poisoned alert dead-lettered",
        || {
            let store = store.clone();
            async move {
                store
                    .dead_letters(None)
                    .await
                    .map(|d| d.len() == 1)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let dead = app.store.dead_letters(Some("contoso")).await.unwrap();
    assert_eq!(dead[0].native_id, "poison");
    assert!(dead[0].reason.contains("422"), "{}", dead[0].reason);
    wait_until_async(
        Duration::from_secs(20),
        "nothing left undelivered",
        || async { app.store.undelivered("contoso").await.unwrap() == 0 },
    )
    .await;
    let (_, status) = app.get("/status").await;
    assert!(destination(&status)["paused"].is_null(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moved_to_another_destination_delivers_its_open_batches_through_it() {
    let sim = sim().await;
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    insert_recent(&sim, "moved", 30);
    let (_dir, db) = temp_db();
    let first = settings(&sim, &db, &Opts::default());
    let app = TestApp::spawn(first.clone()).await;
    // The 30 alerts are claimed into a batch of the default destination, which keeps failing.
    wait_until(Duration::from_secs(30), "a batch sent and refused", || {
        sim.received().iter().any(|b| b.event_ids.len() == 30)
    })
    .await;
    app.stop().await;

    // Restarted with the tenant on its own destination (same endpoint, another name).
    let mut moved = first;
    let fwd = moved.forward.clone();
    moved.tenants.get_mut("contoso").unwrap().forward = fwd;
    sim.set_dropzone(DropzoneBehavior::Accept);
    let app = TestApp::spawn(moved).await;
    wait_until(Duration::from_secs(30), "the 30 delivered", || {
        delivered_counts(&sim).len() >= 30
    })
    .await;
    wait_until_async(
        Duration::from_secs(20),
        "nothing left undelivered",
        || async { app.store.undelivered("contoso").await.unwrap() == 0 },
    )
    .await;
    let (_, status) = app.get("/status").await;
    assert_eq!(destination(&status)["name"], "tenant:contoso", "{status}");
    app.stop().await;
}
