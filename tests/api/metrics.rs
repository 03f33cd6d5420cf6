//! `/metrics` after a run against the simulator, and `server.status_token` guarding `/status` and
//! `/metrics`. The Prometheus recorder is global to the process, so series of other tests'
//! daemons (same tenant name) may add to these counters: assertions use `>=`.

use std::time::Duration;

use m365_ingest::app::App;
use m365_sim::{DropzoneBehavior, Faults};
use secrecy::SecretString;

use crate::helpers::*;

/// The sum of every sample of `name` (exactly, before `{`) carrying all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (series, value) = match rest.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        if !(series.is_empty() || series.starts_with('{')) {
            continue; // another metric whose name starts with `name`
        }
        if labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        {
            let v: f64 = value.parse().expect("a sample value is a number");
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn scrape(port: u16, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("server answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn value(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = scrape(port, None).await;
    sample(&text, name, labels).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_polls_items_requests_and_deliveries() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 60, ago(7200), ago(600));
    // Every 4th Graph request is throttled, and Dropzone fails at first: retries, redeliveries.
    sim.set_faults(
        TENANT_ID,
        Faults {
            throttle_every: Some(4),
            retry_after: Some("1".into()),
            ..Default::default()
        },
    );
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("1".into()),
    });
    let (_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &Opts::default());
    // A date 40 days ahead: the gauge says 39 or 40 (midnight UTC of that day).
    let in_40_days = m365_ingest::time::now_ticks() + 40 * 86_400 * 10_000_000;
    let expires = m365_ingest::time::format_ticks(in_40_days)[..10].to_string();
    s.tenants
        .get_mut("contoso")
        .expect("the helper's tenant")
        .client_secret_expires = Some(expires);
    let app = TestApp::spawn(s).await;
    let contoso = [("tenant", "contoso")];

    wait_until_async(
        Duration::from_secs(30),
        "a failed delivery counted",
        || async {
            value(
                app.port,
                "m365_ingest_deliveries_total",
                &[("tenant", "contoso"), ("outcome", "retry")],
            )
            .await
                >= 1.0
        },
    )
    .await;
    sim.set_dropzone(DropzoneBehavior::Accept);
    wait_until(Duration::from_secs(60), "60 delivered", || {
        sim.delivered_count() >= 60
    })
    .await;
    wait_until_async(Duration::from_secs(20), "outbox empty", || async {
        value(app.port, "m365_ingest_outbox_pending", &contoso).await == 0.0
    })
    .await;
    wait_until_async(Duration::from_secs(30), "a throttled request", || async {
        value(app.port, "m365_ingest_microsoft_throttled_total", &contoso).await >= 1.0
    })
    .await;

    let (status, text) = scrape(app.port, None).await;
    assert_eq!(status, 200);
    let get = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = contoso.to_vec();
        labels.extend_from_slice(extra);
        sample(&text, name, &labels).unwrap_or_else(|| panic!("{name} {extra:?} in:\n{text}"))
    };
    let delivered = delivered_counts(&sim).len() as f64;
    let alerts = [("source", "alerts")];
    assert!(
        get(
            "m365_ingest_polls_total",
            &[("source", "alerts"), ("outcome", "success")]
        ) >= 1.0
    );
    assert!(
        get(
            "m365_ingest_items_total",
            &[("source", "alerts"), ("result", "new")]
        ) >= delivered
    );
    for result in ["updated", "unchanged", "stale", "quarantined"] {
        assert!(get("m365_ingest_items_total", &[("result", result)]) >= 0.0);
    }
    assert!(get("m365_ingest_late_arrivals_total", &alerts) >= 0.0);
    let lag = get("m365_ingest_coverage_lag_seconds", &alerts);
    assert!(lag.is_finite() && lag >= 0.0, "lag {lag}");
    assert!(
        get(
            "m365_ingest_microsoft_requests_total",
            &[("api", "graph"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        get(
            "m365_ingest_microsoft_requests_total",
            &[("api", "graph"), ("status", "429")]
        ) >= 1.0
    );
    assert!(get("m365_ingest_microsoft_throttled_total", &[("api", "graph")]) >= 1.0);
    assert!(
        get(
            "m365_ingest_token_refreshes_total",
            &[("api", "graph"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(get("m365_ingest_outbox_pending", &[]), 0.0);
    assert_eq!(
        get("m365_ingest_outbox_oldest_pending_age_seconds", &[]),
        0.0
    );
    assert!(get("m365_ingest_deliveries_total", &[("outcome", "delivered")]) >= 1.0);
    assert!(get("m365_ingest_deliveries_total", &[("outcome", "retry")]) >= 1.0);
    for outcome in ["split", "dead", "paused"] {
        assert!(get("m365_ingest_deliveries_total", &[("outcome", outcome)]) >= 0.0);
    }
    assert!(get("m365_ingest_redeliveries_total", &[]) >= 1.0);
    assert!(get("m365_ingest_dead_letters_total", &[]) >= 0.0);
    assert!(get("m365_ingest_delivery_duration_seconds_count", &[]) >= 2.0);
    assert!(
        text.contains("m365_ingest_delivery_duration_seconds_bucket{"),
        "explicit buckets make a histogram:\n{text}"
    );
    let days = get("m365_ingest_client_secret_days_left", &[]);
    assert!((39.0..=40.0).contains(&days), "days left {days}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_token_guards_status_and_metrics_but_not_the_probes() {
    const TOKEN: &str = "status-token-0b6f1c2e9d";
    let sim = sim().await;
    let (_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &Opts::default());
    s.server.status_token = Some(SecretString::from(TOKEN));
    let app = TestApp::spawn(s).await;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", app.port);
    let http = reqwest::Client::new();

    for path in ["/status", "/metrics"] {
        let none = http.get(url(path)).send().await.unwrap();
        assert_eq!(none.status().as_u16(), 401, "{path} without a token");
        let body = none.text().await.unwrap();
        assert!(!body.contains(TOKEN), "{body}");
        let wrong = http
            .get(url(path))
            .bearer_auth("status-token-0b6f1c2e9e")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path} with a wrong token");
        let basic = http
            .get(url(path))
            .header("Authorization", TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status().as_u16(), 401, "{path} without the scheme");
        let right = http.get(url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(right.status().as_u16(), 200, "{path} with the token");
        assert!(!right.text().await.unwrap().contains(TOKEN));
    }
    let (status, text) = scrape(app.port, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(text.contains("m365_ingest_polls_total"), "{text}");
    assert_eq!(app.get("/healthz").await.0, 200);
    let ready = http.get(url("/readyz")).send().await.unwrap();
    assert_ne!(ready.status().as_u16(), 401, "/readyz stays open");
    app.stop().await;

    // An empty token would let `Authorization: Bearer ` in: it is refused at start.
    let mut s = settings(&sim, &db, &Opts::default());
    s.server.status_token = Some(SecretString::from("  "));
    let err = App::build(s)
        .await
        .err()
        .expect("an empty token is refused");
    assert!(err.to_string().contains("server.status_token"), "{err}");
}
