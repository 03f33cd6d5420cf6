//! Defender for Cloud Apps: body filters, sorting and skip/limit paging, limits, auth, the
//! 30-a-minute throttle, resolution filters, twins with alerts_v2.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m365_sim::Simulator;
use serde_json::{json, Value};

use crate::helpers::*;

async fn mda_token(sim: &Simulator) -> String {
    app_token(sim, "mda-reader", &["Investigation.read"], CLOUD_APPS_SCOPE).await
}

/// POST `{cloud_apps_url}/api/v1/alerts/` with `body`; status, headers and JSON answer.
async fn alerts(
    sim: &Simulator,
    token: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("{}/api/v1/alerts/", sim.cloud_apps_url());
    post_json(&url, token, &body).await
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn data_ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn date_range_ascending_pages_by_skip_until_has_next_is_false() {
    let sim = start().await;
    let t0 = at(1_714_521_600); // 2024-05-01T00:00:00Z
    let made = sim.generate_cloud_app_alerts(TENANT, 250, t0, t0 + Duration::from_secs(10_000));
    assert_eq!(sim.cloud_app_alert_count(TENANT), 250);
    // Plus some outside the window.
    sim.generate_cloud_app_alerts(TENANT, 20, at(1_700_000_000), at(1_700_001_000));
    let token = mda_token(&sim).await;
    let (lo, hi) = (ms(t0), ms(t0 + Duration::from_secs(10_000)));
    let mut skip = 0;
    let mut seen = Vec::new();
    let mut stamps = Vec::new();
    loop {
        let body = json!({"filters": {"date": {"gte": lo, "lte": hi}}, "sortField": "date",
                          "sortDirection": "asc", "skip": skip, "limit": 100});
        let (s, _, page) = alerts(&sim, &token, body).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(page["total"], 250);
        assert_eq!(page["max"], 100);
        assert_eq!(page["moreThanTotal"], false);
        for a in page["data"].as_array().unwrap() {
            stamps.push(a["timestamp"].as_i64().unwrap());
        }
        let got = data_ids(&page);
        skip += got.len();
        seen.extend(got);
        if page["hasNext"] == false {
            break;
        }
        assert!(skip < 300, "hasNext never became false");
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(
        seen.iter().cloned().collect::<HashSet<_>>(),
        made.into_iter().collect()
    );
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "ascending");
    assert!(stamps.iter().all(|t| (lo..=hi).contains(t)));

    // Descending is the exact reverse; a GET with the same body answers the same.
    let body =
        json!({"filters": {"date": {"gte": lo, "lte": hi}}, "sortDirection": "desc", "limit": 100});
    let (_, _, desc) = alerts(&sim, &token, body.clone()).await;
    let mut rev = seen.clone();
    rev.reverse();
    assert_eq!(data_ids(&desc), rev[..100]);
    let r = http()
        .get(format!("{}/api/v1/alerts/", sim.cloud_apps_url()))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(data_ids(&got), data_ids(&desc));

    // The default limit is 100, and a single alert can be fetched.
    let (_, _, all) = alerts(&sim, &token, json!({})).await;
    assert_eq!(
        (data_ids(&all).len(), &all["total"], &all["hasNext"]),
        (100, &json!(270), &json!(true))
    );
    let one = &seen[17];
    let r = http()
        .get(format!("{}/api/v1/alerts/{one}/", sim.cloud_apps_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["_id"], one.as_str());
    let r = http()
        .get(format!(
            "{}/api/v1/alerts/ffffffffffffffffffffffff/",
            sim.cloud_apps_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn generated_alerts_are_shaped_like_the_mda_example() {
    let sim = start().await;
    sim.generate_cloud_app_alerts(TENANT, 50, secs_ago(86_400), secs_ago(0));
    let token = mda_token(&sim).await;
    let (_, _, page) = alerts(&sim, &token, json!({"limit": 50})).await;
    for a in page["data"].as_array().unwrap() {
        let id = a["_id"].as_str().unwrap();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(a["idValue"].is_u64() && a["timestamp"].is_i64());
        for k in [
            "title",
            "description",
            "isMarkdown",
            "entities",
            "statusValue",
            "severityValue",
            "resolutionStatusValue",
            "resolveTime",
            "handledByUser",
            "comment",
            "stories",
            "intent",
            "threatScore",
            "isPreview",
            "isSystemAlert",
            "evidence",
            "contextId",
            "URL",
        ] {
            assert!(a.get(k).is_some(), "{k}: {a}");
        }
        let types: HashSet<&str> = a["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains("account") && types.contains("service") && types.contains("policyRule")
        );
    }
}

#[tokio::test]
async fn bad_bodies_are_400() {
    let sim = start().await;
    let token = mda_token(&sim).await;
    for body in [
        json!({"limit": 101}),
        json!({"filters": {"entity.unknown": {"eq": 1}}}),
        json!({"filters": {"date": {"between": 1}}}),
        json!({"filters": {"severity": {"eq": "high"}}}),
        json!({"sortField": "title"}),
        json!({"sortDirection": "up"}),
        json!({"skip": -1}),
    ] {
        let (s, _, err) = alerts(&sim, &token, body.clone()).await;
        assert_eq!(s, 400, "{body}");
        assert!(err["error"].is_string(), "{err}");
    }
    let (s, _, page) = alerts(&sim, &token, json!({"limit": 100})).await;
    assert_eq!((s, &page["max"]), (200, &json!(100)));
}

#[tokio::test]
async fn graph_tokens_are_401_and_missing_roles_403() {
    let sim = start().await;
    let graph = graph_token(&sim).await;
    let (s, _, body) = alerts(&sim, &graph, json!({})).await;
    assert_eq!(s, 401, "{body}");
    assert!(body["detail"].is_string());
    let r = http()
        .post(format!("{}/api/v1/alerts/", sim.cloud_apps_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let no_role = app_token(&sim, "mda-settings", &["Settings.read"], CLOUD_APPS_SCOPE).await;
    let (s, _, body) = alerts(&sim, &no_role, json!({})).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("Investigation.read"));
    // Role names are matched in any case; the other read roles also do.
    for (client, role) in [
        ("mda-upper", "Investigation.Read"),
        ("mda-manage", "Investigation.manage"),
        ("mda-discovery", "Discovery.read"),
    ] {
        let t = app_token(&sim, client, &[role], CLOUD_APPS_SCOPE).await;
        assert_eq!(alerts(&sim, &t, json!({})).await.0, 200, "{role}");
    }
    // The default helper app (Investigation.read) is fine too.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", CLOUD_APPS_SCOPE),
    ];
    let (_, tok) = token_request(&sim, TENANT, &form).await;
    assert_eq!(
        alerts(&sim, tok["access_token"].as_str().unwrap(), json!({}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn the_31st_request_in_a_minute_is_429_with_retry_after() {
    let sim = start().await;
    sim.generate_cloud_app_alerts(TENANT, 5, secs_ago(600), secs_ago(0));
    let token = mda_token(&sim).await;
    for i in 0..30 {
        let (s, _, _) = alerts(&sim, &token, json!({"limit": 1})).await;
        assert_eq!(s, 200, "request {}", i + 1);
    }
    let (s, headers, body) = alerts(&sim, &token, json!({"limit": 1})).await;
    assert_eq!(s, 429, "{body}");
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(sim.throttle_violations(), 0);
    // Coming back before Retry-After has passed is a violation, and refused again.
    let (s, _, _) = alerts(&sim, &token, json!({})).await;
    assert_eq!(s, 429);
    assert_eq!(sim.throttle_violations(), 1);
    // Graph is throttled separately.
    let graph = graph_token(&sim).await;
    assert_eq!(list(&sim, &graph, &[]).await.0, 200);
}

#[tokio::test]
async fn resolution_filters_find_resolved_alerts() {
    let sim = start().await;
    let ids = sim.generate_cloud_app_alerts(TENANT, 40, secs_ago(86_400), secs_ago(3600));
    // Make every alert open, then resolve one at a known time.
    for id in &ids {
        sim.update_cloud_app_alert(
            TENANT,
            id,
            json!({"resolutionStatusValue": 0, "resolveTime": null, "statusValue": 0}),
        );
    }
    let target = &ids[5];
    let before = sim.cloud_app_alert(TENANT, target).unwrap()["timestamp"].clone();
    assert!(sim.update_cloud_app_alert(
        TENANT,
        target,
        json!({"resolutionStatusValue": 2, "resolveTime": "2024-05-13T14:02:34.904Z",
               "handledByUser": "administrator@contoso.com", "statusValue": 1})
    ));
    assert_eq!(
        sim.cloud_app_alert(TENANT, target).unwrap()["timestamp"],
        before,
        "timestamp never changes"
    );
    let token = mda_token(&sim).await;
    let resolved_ms = 1_715_608_954_904i64;
    let (s, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"resolutionDate": {"gte": resolved_ms - 1000}}}),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(data_ids(&page), std::slice::from_ref(target));
    let (_, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"resolutionDate": {"gte": resolved_ms + 1}}}),
    )
    .await;
    assert_eq!(page["total"], 0);
    let (_, _, page) = alerts(&sim, &token, json!({"filters": {"resolutionDate": {"range": [{"start": resolved_ms, "end": resolved_ms}]}}})).await;
    assert_eq!(data_ids(&page), std::slice::from_ref(target));
    let (_, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"alertOpen": {"eq": true}}}),
    )
    .await;
    assert_eq!(page["total"], 39);
    assert!(!data_ids(&page).contains(target));
    let (_, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"alertOpen": {"eq": false}, "read": {"eq": true}}}),
    )
    .await;
    assert_eq!(data_ids(&page), std::slice::from_ref(target));
    let (_, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"resolutionStatus": {"neq": [0]}}}),
    )
    .await;
    assert_eq!(data_ids(&page), std::slice::from_ref(target));
    let (_, _, page) = alerts(
        &sim,
        &token,
        json!({"filters": {"severity": {"eq": [0, 1, 2, 3]}}, "sortField": "severity"}),
    )
    .await;
    assert_eq!(page["total"], 40);
    let sev: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["severityValue"].as_i64().unwrap())
        .collect();
    assert!(
        sev.windows(2).all(|w| w[0] >= w[1]),
        "desc by default: {sev:?}"
    );
}

#[tokio::test]
async fn a_twin_is_the_same_detection_in_both_apis() {
    let sim = start().await;
    let when = secs_ago(1800);
    let (mda_id, graph_id) = sim.generate_cloud_app_alert_with_twin(TENANT, when);
    assert_eq!(graph_id, format!("ca{mda_id}"));
    let mda = sim.cloud_app_alert(TENANT, &mda_id).unwrap();
    assert_eq!(mda["timestamp"], ms(when));
    let token = graph_token(&sim).await;
    let (s, a) = get_json(
        &format!("{}/v1.0/security/alerts_v2/{graph_id}", sim.graph_url()),
        &token,
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["providerAlertId"], mda_id.as_str());
    assert_eq!(a["serviceSource"], "microsoftDefenderForCloudApps");
    assert_eq!(a["detectionSource"], "cloudAppSecurity");
    assert_eq!(a["title"], mda["title"]);
    let (_, page) = list(
        &sim,
        &token,
        &[(
            "$filter",
            "serviceSource eq 'microsoftDefenderForCloudApps'",
        )],
    )
    .await;
    assert_eq!(ids(&page), std::slice::from_ref(&graph_id));
    let mda_token = mda_token(&sim).await;
    let (_, _, page) = alerts(&sim, &mda_token, json!({})).await;
    assert_eq!(data_ids(&page), [mda_id]);
}
