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

/// Campaign context on Postgres with two replicas: the list of alerts waiting for context is in
/// the database, so when the leader dies while hunting is slow, the replica that takes the
/// tenant's lease over asks hunting and the alerts go out with their context, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_taking_over_gives_the_waiting_alerts_their_context() {
    use m365_ingest::store::Store;
    use m365_sim::{HuntingFaults, HuntingMessage};
    let sim = hunting_sim().await;
    let alerts = 20;
    for i in 0..alerts {
        let message = format!("<R{i:03}@phish.example>");
        sim.add_hunting_message(
            TENANT_ID,
            HuntingMessage::campaign(
                &message,
                "billing@phish.example",
                &format!("Invoice {i}"),
                std::time::SystemTime::now() - Duration::from_secs(1800),
                5,
                1,
            ),
        );
        sim.insert_alert(
            TENANT_ID,
            crate::context::email_alert(&format!("r-{i}"), &message),
        );
    }
    // The leader's query is still running when it dies.
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            delay: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    );
    let db = PgDb::create().await;
    let mut o = crate::context::context_opts("5m", 50, "");
    o.extra_forward = replica_opts().extra_forward;
    let settings = settings_on(&sim, &db.url, &o);
    let leader = TestApp::spawn(settings.clone()).await;
    let store = leader.store.clone();
    wait_until_async(
        Duration::from_secs(30),
        "every alert waits for context",
        || {
            let store = store.clone();
            async move {
                store
                    .context_wanted("contoso", None, 100)
                    .await
                    .is_ok_and(|w| w.len() == alerts)
            }
        },
    )
    .await;
    drop(store);
    wait_until(Duration::from_secs(30), "the leader asks hunting", || {
        sim.hunting_queries(TENANT_ID).len() == 1
    })
    .await;
    let standby = TestApp::spawn(settings).await;
    assert_eq!(
        leases(&standby.get("/status").await.1).0,
        "standby",
        "the leader holds the tenant"
    );

    // Act: the leader dies mid-query; hunting answers quickly again.
    leader.crash().await;
    sim.set_hunting_faults(TENANT_ID, HuntingFaults::default());

    // Assert: each alert went out once, created, with its context.
    wait_until(
        Duration::from_secs(90),
        "every alert with its context",
        || {
            delivered_alerts(&sim)
                .iter()
                .filter(|a| a.get("context").is_some())
                .count()
                >= alerts
        },
    )
    .await;
    let delivered = delivered_alerts(&sim);
    assert_eq!(delivered.len(), alerts, "one version each: {delivered:?}");
    for a in &delivered {
        assert_eq!(a["change"], "created");
        assert_eq!(a["context"]["campaign"]["recipients"]["count"], 5, "{a}");
    }
    // The leader's query and one by the new leader: the standby asked nothing while it waited.
    assert_eq!(sim.hunting_queries(TENANT_ID).len(), 2);
    standby.stop().await;
    db.drop_db().await;
}
