//! The operator's store commands against a running daemon: a dead letter retried once the
//! endpoint is fixed, and a time range replayed with its original event ids.

use std::collections::HashSet;
use std::time::Duration;

use m365_ingest::admin::{self, DeadLetters, Replay};
use m365_ingest::store::Store;
use m365_sim::DropzoneBehavior;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_delivered_by_retry_once_the_endpoint_is_fixed() {
    let sim = sim().await;
    for i in 0..10 {
        let mut a = alert_json(&format!("d-{i}"), &iso7_ago(900 + i));
        if i == 4 {
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
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(30), "one dead letter", || {
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
    let listed = admin::dead_letters(
        &app.store,
        DeadLetters::List {
            tenant: Some("contoso".into()),
            json: true,
        },
    )
    .await
    .unwrap();
    let row: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(row["native_id"], "d-4");
    assert_eq!(sim.delivered_count(), 9);

    sim.set_dropzone(DropzoneBehavior::Accept);
    let said = admin::dead_letters(
        &app.store,
        DeadLetters::Retry {
            tenant: Some("contoso".into()),
            seqs: vec![],
        },
    )
    .await
    .unwrap();
    assert!(said.starts_with("1 dead letter"), "{said}");
    wait_until(
        Duration::from_secs(30),
        "the retried alert delivered",
        || native_ids(&delivered_alerts(&sim)).contains("d-4"),
    )
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|&n| n == 1));
    assert!(app.store.dead_letters(None).await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_time_range_resends_exactly_those_versions_with_their_event_ids() {
    let sim = sim().await;
    for i in 0..5 {
        sim.insert_alert(
            TENANT_ID,
            alert_json(&format!("old-{i}"), &iso7_ago(1200 + i)),
        );
    }
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "the first five", || {
        sim.delivered_count() >= 5
    })
    .await;
    // Versions stored from here on are the range to replay.
    let since = m365_ingest::time::format_ticks(m365_ingest::time::now_ticks());
    for i in 0..4 {
        sim.insert_alert(
            TENANT_ID,
            alert_json(&format!("new-{i}"), &iso7_ago(30 + i)),
        );
    }
    wait_until(Duration::from_secs(30), "the next four", || {
        sim.delivered_count() >= 9
    })
    .await;
    let first_round = delivered_counts(&sim);
    let said = admin::replay(
        &app.store,
        Replay {
            tenant: Some("contoso".into()),
            source: Some("alerts".into()),
            alert: None,
            since: Some(since),
            until: None,
            as_new: false,
        },
    )
    .await
    .unwrap();
    assert!(said.starts_with("4 delivered"), "{said}");
    wait_until(Duration::from_secs(30), "the range sent again", || {
        sim.delivered_count() >= 13
    })
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 9, "no new event ids: the originals are sent");
    let again: HashSet<String> = counts
        .iter()
        .filter(|(_, &n)| n == 2)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(again.len(), 4);
    let new_ids: HashSet<String> = delivered_alerts(&sim)
        .iter()
        .filter(|a| {
            a["native_id"]
                .as_str()
                .is_some_and(|n| n.starts_with("new-"))
        })
        .map(|a| a["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(again, new_ids, "exactly the versions stored in the range");
    assert!(first_round.values().all(|&n| n == 1));
    let refused = admin::replay(
        &app.store,
        Replay {
            tenant: None,
            source: None,
            alert: None,
            since: None,
            until: None,
            as_new: false,
        },
    )
    .await;
    assert!(refused.is_err(), "a replay of everything needs a filter");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_exits_zero_only_when_the_daemon_answers() {
    let sim = sim().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-ingest"))
            .args(["health", "--url", &url])
            .output()
            .await
            .unwrap()
    };
    let up = probe(format!("http://127.0.0.1:{}/healthz", app.port)).await;
    assert!(up.status.success(), "{up:?}");
    let port = app.port;
    app.stop().await;
    let down = probe(format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

/// A `client_secret_expires` date with `days` whole days left (negative: past): its midnight
/// falls within the day after now + `days`.
fn date_in_days(days: i64) -> String {
    let secs = m365_ingest::time::unix_seconds_now() + (days + 1) * 86_400;
    m365_ingest::time::format_seconds(secs)[..10].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_expiring_soon_shows_its_days_and_an_expired_one_fails_readyz() {
    let sim = sim().await;
    let (_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &Opts::default());
    s.tenants.get_mut("contoso").unwrap().client_secret_expires = Some(date_in_days(10));
    let app = TestApp::spawn(s).await;
    let (_, status) = app.get("/status").await;
    assert_eq!(status["tenants"]["contoso"]["client_secret_days_left"], 10);
    app.stop().await;

    let mut s = settings(&sim, &db, &Opts::default());
    s.tenants.get_mut("contoso").unwrap().client_secret_expires = Some(date_in_days(-2));
    let app = TestApp::spawn(s).await;
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    let text = body.to_string();
    assert!(text.contains("client secret has expired"), "{text}");
    assert!(text.contains("New client secret"), "names the fix: {text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_prints_each_tenant_source_and_destination() {
    let sim = sim().await;
    sim.insert_alert(TENANT_ID, alert_json("st-1", &iso7_ago(900)));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(30), "the alert", || {
        sim.delivered_count() >= 1
    })
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-ingest"))
        .args(["status", "--url", &format!("http://127.0.0.1:{}", app.port)])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tenant contoso"), "{text}");
    assert!(text.contains("  alerts "), "{text}");
    assert!(text.contains("destination default"), "{text}");
    assert!(text.contains("0 pending"), "{text}");
    let (_, status) = app.get("/status").await;
    assert_eq!(status["store"], "sqlite", "/status names the store backend");
    let port = app.port;
    app.stop().await;
    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-ingest"))
        .args(["status", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("no daemon answers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_retry_sends_what_this_version_reads_and_keeps_the_rest() {
    use m365_ingest::admin::Quarantine;
    use m365_ingest::store::{IngestBatch, QuarantineItem, TenantRef};

    let sim = sim().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    // What an older version quarantined: one item this version reads, one nobody can.
    let readable = alert_json("q-fixed", &iso7_ago(3_600));
    let item = |raw: String| QuarantineItem {
        native_id: None,
        reason: "an older parser refused it".into(),
        raw,
        list: String::new(),
    };
    let filters = m365_ingest::config::Filters::default();
    app.store
        .ingest(IngestBatch {
            context_hold: None,
            tenant: &TenantRef {
                name: "contoso".into(),
                id: TENANT_ID.into(),
            },
            source: m365_ingest::normalize::SourceKind::Alerts,
            items: vec![],
            quarantine: vec![
                item(readable.to_string()),
                item(r#"{"title":"no id"}"#.into()),
            ],
            retried: vec![],
            historical: true,
            observed_at: "2026-11-26T10:00:00Z",
            filters: &filters,
            advance: None,
            source_state: None,
        })
        .await
        .unwrap();
    let listed = quarantine_list(&app.store).await;
    assert!(listed.contains("2 quarantined item(s)"), "{listed}");

    let said = admin::quarantine(
        &app.store,
        Quarantine::Retry {
            tenant: Some("contoso".into()),
            ids: vec![],
        },
    )
    .await
    .unwrap();
    assert!(
        said.starts_with("2 quarantined item(s) marked for retry"),
        "{said}"
    );
    wait_until(
        Duration::from_secs(30),
        "the readable item delivered",
        || {
            delivered_alerts(&sim)
                .iter()
                .any(|a| a["native_id"] == "q-fixed")
        },
    )
    .await;
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(30), "the retry settled", || {
        let store = store.clone();
        async move {
            let left = store.quarantined(None).await.unwrap();
            left.len() == 1 && !left[0].retry_requested
        }
    })
    .await;
    let left = app.store.quarantined(None).await.unwrap();
    assert_eq!(left[0].attempts, 1);
    assert!(
        left[0].reason.contains("id"),
        "today's reason: {}",
        left[0].reason
    );
    let listed = quarantine_list(&app.store).await;
    assert!(listed.contains("[retried 1x]"), "{listed}");
    app.stop().await;
}

async fn quarantine_list(store: &m365_ingest::AppStore) -> String {
    let all = admin::Quarantine::List {
        tenant: None,
        json: false,
    };
    admin::quarantine(store, all).await.unwrap()
}

/// The binary runs itself once more with glibc's malloc tuned (issue 12: two arenas, fixed
/// thresholds), and leaves what the operator set alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_tunes_malloc_unless_the_operator_set_it() {
    use m365_ingest::allocator::SETTINGS;
    use tokio::io::AsyncBufReadExt;
    for preset in [None, Some("4")] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-ingest"));
        command
            .args(["sim", "--listen", "127.0.0.1:0", "--alerts", "1"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (var, _) in SETTINGS {
            command.env_remove(var);
        }
        if let Some(value) = preset {
            command.env("MALLOC_ARENA_MAX", value);
        }
        let mut child = command.spawn().unwrap();
        let pid = child.id().unwrap();
        // Once it speaks it is past the point where it would run itself again.
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the simulator starts within 30 s")
            .unwrap()
            .unwrap_or_default();
        assert!(first.contains("listening"), "{first}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        for (var, default) in SETTINGS {
            let expected = match preset {
                Some(value) if var == "MALLOC_ARENA_MAX" => value,
                _ => default,
            };
            let wanted = format!("{var}={expected}");
            assert!(
                vars.contains(&wanted.as_bytes()),
                "{wanted} is not in the environment of pid {pid}"
            );
            let prefix = format!("{var}=");
            assert_eq!(
                vars.iter()
                    .filter(|v| v.starts_with(prefix.as_bytes()))
                    .count(),
                1
            );
        }
        child.kill().await.unwrap();
    }
}
