//! Graph faults: 429 with Retry-After and violation counting, 503, truncation, delay.

use std::time::{Duration, Instant};

use m365_sim::Faults;

use crate::helpers::*;

#[tokio::test]
async fn throttling_sends_retry_after_and_counts_early_returns() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    sim.set_token_lifetime(Duration::ZERO);
    let expired = graph_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            throttle_every: Some(3),
            retry_after: Some("0.6".into()),
            ..Faults::default()
        },
    );
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    assert_eq!(get(&url, &token).await.0, 200);
    assert_eq!(get(&url, &token).await.0, 200);
    let (s, headers, body) = get(&url, &token).await;
    assert_eq!(s, 429);
    assert_eq!(headers["retry-after"], "0.6");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert_eq!(body["error"]["innerError"]["status"], "429");
    assert_eq!(sim.throttle_violations(), 0);

    // Coming back at once is a violation, and is refused again.
    let throttled_at = Instant::now();
    let (s, headers, _) = get(&url, &token).await;
    assert_eq!(s, 429);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(sim.throttle_violations(), 1);
    // Also with a token that has since expired.
    assert_eq!(get(&url, &expired).await.0, 401);
    assert_eq!(sim.throttle_violations(), 2);

    // A client that honours Retry-After is served.
    tokio::time::sleep(
        Duration::from_millis(600).saturating_sub(throttled_at.elapsed())
            + Duration::from_millis(50),
    )
    .await;
    assert_eq!(get(&url, &token).await.0, 200);
    assert_eq!(sim.throttle_violations(), 2);
}

#[tokio::test]
async fn throttling_without_retry_after_sends_no_header() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            throttle_every: Some(1),
            ..Faults::default()
        },
    );
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    let (s, headers, _) = get(&url, &token).await;
    assert_eq!(s, 429);
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(get(&url, &token).await.0, 429);
    assert_eq!(sim.throttle_violations(), 0);
}

#[tokio::test]
async fn every_second_request_is_a_503_until_switched_off() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            server_error_every: Some(2),
            ..Faults::default()
        },
    );
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    let statuses = [
        get(&url, &token).await.0,
        get(&url, &token).await.0,
        get(&url, &token).await.0,
        get(&url, &token).await.0,
    ];
    assert_eq!(statuses, [200, 503, 200, 503]);
    sim.set_faults(TENANT, Faults::default());
    assert_eq!(get(&url, &token).await.0, 200);
    assert_eq!(get(&url, &token).await.0, 200);
}

#[tokio::test]
async fn truncated_answers_are_200_with_half_the_json() {
    let sim = start().await;
    sim.generate_alerts(TENANT, 5, secs_ago(60), secs_ago(0));
    let token = graph_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            truncate_next: 1,
            ..Faults::default()
        },
    );
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    let (s, headers, body) = get(&url, &token).await;
    assert_eq!(s, 200);
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    let (s, _, full) = get(&url, &token).await;
    assert_eq!(s, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&full).is_ok());
    assert!(body.len() * 2 <= full.len() + 1 && full.starts_with(&body));
}

#[tokio::test]
async fn delay_holds_every_answer() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            delay: Some(Duration::from_millis(300)),
            ..Faults::default()
        },
    );
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    let started = Instant::now();
    assert_eq!(get(&url, &token).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn faults_are_per_tenant() {
    let sim = start().await;
    sim.add_app("other-tenant", "app2", "pw", &["SecurityAlert.Read.All"]);
    sim.set_faults(
        TENANT,
        Faults {
            server_error_every: Some(1),
            ..Faults::default()
        },
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "app2"),
        ("client_secret", "pw"),
        ("scope", GRAPH_SCOPE),
    ];
    let (_, body) = token_request(&sim, "other-tenant", &form).await;
    let url = format!("{}/v1.0/security/alerts_v2", sim.graph_url());
    assert_eq!(
        get(&url, body["access_token"].as_str().unwrap()).await.0,
        200
    );
    assert_eq!(get(&url, &graph_token(&sim).await).await.0, 503);
}

#[tokio::test]
async fn the_security_budget_is_150_a_minute_per_app_and_tenant_then_429_with_retry_after() {
    let sim = start().await;
    sim.add_app(
        TENANT,
        "0b7e5a02-3333-4000-8000-00000000000c",
        "other~secret",
        &["SecurityAlert.Read.All"],
    );
    let token = graph_token(&sim).await;
    let url = format!("{}/v1.0/security/alerts_v2?$top=1", sim.graph_url());
    for n in 0..150 {
        assert_eq!(
            get(&url, &token).await.0,
            200,
            "request {n} is within the budget"
        );
    }
    assert_eq!(sim.graph_over_budget(), 0);
    let (s, headers, body) = get(&url, &token).await;
    assert_eq!(s, 429, "{body}");
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(sim.graph_over_budget(), 1);
    // Ignoring that Retry-After is a violation.
    assert_eq!(get(&url, &token).await.0, 429);
    assert_eq!(sim.throttle_violations(), 1);
    assert_eq!(sim.graph_over_budget(), 2);

    // The budget is per app: another app of the tenant is served.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "0b7e5a02-3333-4000-8000-00000000000c"),
        ("client_secret", "other~secret"),
        ("scope", GRAPH_SCOPE),
    ];
    let (status, body) = token_request(&sim, TENANT, &form).await;
    assert_eq!(status, 200, "{body}");
    let other = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&url, &other).await.0, 200);

    // Configurable: a higher allowance serves the first app again.
    sim.set_graph_rate_limit(1000);
    assert_eq!(get(&url, &token).await.0, 200);
}
