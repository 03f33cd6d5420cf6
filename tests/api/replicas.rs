//! Postgres in production: two replicas sharing one database under leases, a leader crash, and
//! every server connection cut mid-run.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::pg::PgDb;

const TTL_S: u64 = 6;
const RENEW_S: u64 = 1;

fn replica_opts() -> Opts {
    Opts {
        batch_size: 100,
        concurrency: 4,
        extra_forward: format!("[leases]\nttl = \"{TTL_S}s\"\nrenew = \"{RENEW_S}s\"\n"),
        ..Opts::default()
    }
}

fn leases(status: &Value) -> (String, String) {
    (
        status["tenants"]["contoso"]["lease"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        status["destinations"][0]["lease"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

async fn holds_both(app: &TestApp) -> bool {
    leases(&app.get("/status").await.1) == ("held".into(), "held".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_version_once_and_a_standby_takes_over_a_crashed_leader() {
    let sim = sim().await;
    let total = 20_000;
    sim.generate_alerts(TENANT_ID, total, ago(2 * 86_400), ago(120));
    let db = PgDb::create().await;
    let settings = settings_on(&sim, &db.url, &replica_opts());
    let leader = TestApp::spawn(settings.clone()).await;
    wait_until_async(
        Duration::from_secs(20),
        "the first replica takes both leases",
        || holds_both(&leader),
    )
    .await;
    let standby = TestApp::spawn(settings).await;
    // A standby neither polls nor forwards, and is ready because its store answers.
    let (code, status) = standby.get("/status").await;
    assert_eq!(code, 200);
    assert_eq!(leases(&status), ("standby".into(), "standby".into()));
    let (code, ready) = standby.get("/readyz").await;
    assert_eq!(code, 200, "a standby is ready: {ready}");

    wait_until(
        Duration::from_secs(120),
        "a third of the backlog delivered",
        || sim.delivered_count() >= total / 3,
    )
    .await;
    assert!(
        sim.delivered_count() < total,
        "the crash must come mid-backlog"
    );
    leader.crash().await;
    let crashed = tokio::time::Instant::now();
    wait_until_async(
        Duration::from_secs(TTL_S + RENEW_S + 5),
        "the standby takes both leases over",
        || holds_both(&standby),
    )
    .await;
    let takeover = crashed.elapsed();
    assert!(
        takeover <= Duration::from_secs(TTL_S + 2 * RENEW_S),
        "taken over in {takeover:?}, beyond the lease TTL ({TTL_S}s) and a renew period"
    );

    wait_until(Duration::from_secs(180), "every alert delivered", || {
        delivered_counts(&sim).len() >= total
    })
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), total, "nothing lost");
    let twice: usize = counts.values().filter(|&&n| n > 1).count();
    // Only batches in flight at the crash may arrive twice (with their idempotency keys).
    assert!(
        twice <= 4 * 100,
        "{twice} versions delivered twice: more than the in-flight batches"
    );
    assert!(counts.values().all(|&n| n <= 2));
    // Batches sent again after the takeover carry the keys they were first sent with.
    let mut keys_per_event: std::collections::HashMap<String, Vec<String>> = Default::default();
    for b in sim.received() {
        if let Some(key) = &b.idempotency_key {
            for id in &b.event_ids {
                keys_per_event
                    .entry(id.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
    }
    for (id, keys) in keys_per_event.iter().filter(|(_, k)| k.len() > 1) {
        assert!(
            keys.windows(2).all(|w| w[0] == w[1]),
            "{id} was resent under another key: {keys:?}"
        );
    }
    standby.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_drops_every_connection_the_daemon_reconnects_and_loses_nothing() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 2_000, ago(86_400), ago(300));
    let db = PgDb::create().await;
    let app = TestApp::spawn(settings_on(&sim, &db.url, &replica_opts())).await;
    wait_until(
        Duration::from_secs(60),
        "the first alerts delivered",
        || sim.delivered_count() >= 500,
    )
    .await;

    db.shut_out().await;
    sim.generate_alerts(TENANT_ID, 300, ago(200), ago(100));
    wait_until_async(
        Duration::from_secs(30),
        "/readyz 503 while the store is away",
        || async {
            let (code, body) = app.get("/readyz").await;
            code == 503 && body.to_string().contains("store")
        },
    )
    .await;

    db.let_in().await;
    wait_until_async(Duration::from_secs(60), "/readyz 200 again", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    wait_until(Duration::from_secs(90), "every alert delivered", || {
        delivered_counts(&sim).len() >= 2_300
    })
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 2_300, "nothing lost");
    let twice = counts.values().filter(|&&n| n > 1).count();
    assert!(twice <= 4 * 100, "{twice} delivered twice");
    app.stop().await;
    db.drop_db().await;
}
