//! Advanced hunting: the role, the 45-a-minute rate, the template's query shape only, the
//! answers about generated and registered messages, and the faults (CPU quota, 403, slow,
//! timeout, `Name`/`Type` schema).

use std::time::{Duration, Instant, SystemTime};

use m365_sim::{hunting_query, HuntingFaults, HuntingMessage, CPU_QUOTA_MESSAGE, HUNTING_ROLE};
use serde_json::{json, Value};

use crate::helpers::*;

const MSG: &str = "<CAMPAIGN0001@phish.example>";

async fn hunter(sim: &m365_sim::Simulator) -> String {
    app_token(sim, "hunter-app", &[HUNTING_ROLE], GRAPH_SCOPE).await
}

/// POSTs `body` to runHuntingQuery; status, `Retry-After` and the JSON answer.
async fn run_raw(
    sim: &m365_sim::Simulator,
    token: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let url = format!("{}/v1.0/security/runHuntingQuery", sim.graph_url());
    let (status, headers, json) = post_json(&url, token, &body).await;
    let retry = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, json)
}

async fn run(sim: &m365_sim::Simulator, token: &str, ids: &[&str]) -> (u16, Option<String>, Value) {
    run_raw(sim, token, json!({"Query": hunting_query(ids, 5)})).await
}

#[tokio::test]
async fn a_token_without_the_role_gets_graphs_403() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    let (status, _, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(HUNTING_ROLE));
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn a_registered_message_answers_counts_and_the_first_rows() {
    let sim = start().await;
    let token = hunter(&sim).await;
    let m = HuntingMessage::forty_with_three_clickers(MSG);
    let nmid = m.recipients[7].network_message_id.clone();
    sim.add_hunting_message(TENANT, m);

    // By internet message id and by the network message id of one copy: the same message.
    let (status, _, body) = run(
        &sim,
        &token,
        &[
            MSG,
            &nmid,
            "<unknown-but-derived@x.example>",
            "no-such-network-id",
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"][0]["name"], "Key");
    let rows = body["results"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "the unknown network id has no row: {body}");
    for key in [MSG, nmid.as_str()] {
        let row = rows.iter().find(|r| r["Key"] == key).unwrap();
        assert_eq!(row["InternetMessageId"], MSG);
        assert_eq!(row["Recipients"], 40);
        assert_eq!(row["RecipientList"].as_array().unwrap().len(), 5);
        assert_eq!(row["ClickCount"], 3);
        assert_eq!(row["Clickers"], 3);
        let clicks = row["ClickList"].as_array().unwrap();
        assert_eq!(
            clicks
                .iter()
                .filter(|c| c["clicked_through"] == true)
                .count(),
            1
        );
        assert_eq!(row["CampaignMessages"], 1);
    }
}

#[tokio::test]
async fn messages_of_the_same_sender_and_subject_within_the_hour_are_one_campaign() {
    let sim = start().await;
    let token = hunter(&sim).await;
    let first = HuntingMessage::forty_with_three_clickers(MSG);
    let mut second = HuntingMessage::campaign(
        "<CAMPAIGN0002@phish.example>",
        &first.sender,
        &first.subject,
        first.received + Duration::from_secs(1200),
        45,
        0,
    );
    // Five new people; the other 40 got the first message too.
    second.recipients.drain(..40);
    let late = HuntingMessage::campaign(
        "<CAMPAIGN0003@phish.example>",
        &first.sender,
        &first.subject,
        first.received + Duration::from_secs(3 * 3600),
        4,
        0,
    );
    let expired = HuntingMessage::campaign(
        "<OLD0001@phish.example>",
        &first.sender,
        &first.subject,
        SystemTime::now() - Duration::from_secs(31 * 86_400),
        3,
        0,
    );
    sim.add_hunting_message(TENANT, first);
    sim.add_hunting_message(TENANT, second);
    sim.add_hunting_message(TENANT, late);
    sim.add_hunting_message(TENANT, expired);
    // Older than the 30 days advanced hunting keeps: not found.
    let (_, _, body) = run(&sim, &token, &["<OLD0001@phish.example>"]).await;
    assert_eq!(body["results"], json!([]));
    let (_, _, body) = run(&sim, &token, &[MSG]).await;
    let row = &body["results"][0];
    assert_eq!(row["Recipients"], 40);
    assert_eq!(row["CampaignMessages"], 2);
    assert_eq!(row["CampaignRecipients"], 45);
    assert_eq!(
        row["CampaignList"][0]["internet_message_id"],
        "<CAMPAIGN0002@phish.example>"
    );
}

#[tokio::test]
async fn generated_message_ids_get_deterministic_recipients_and_clicks() {
    let sim = start().await;
    let token = hunter(&sim).await;
    let ids: Vec<String> = (0..12)
        .map(|i| format!("<{i:024X}@contoso-mail.example>"))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (_, _, a) = run(&sim, &token, &ids).await;
    let (_, _, b) = run(&sim, &token, &ids).await;
    assert_eq!(a["results"], b["results"]);
    let rows = a["results"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    // One message in three went to 40 people, 3 of whom clicked.
    assert!(
        rows.iter()
            .any(|r| r["Recipients"] == 40 && r["Clickers"] == 3),
        "{a}"
    );
    let d = HuntingMessage::derived(ids[0], SystemTime::now());
    let row = rows.iter().find(|r| r["Key"] == ids[0]).unwrap();
    assert_eq!(row["Recipients"], d.recipients.len());
}

#[tokio::test]
async fn only_the_templates_shape_is_parsed() {
    let sim = start().await;
    let token = hunter(&sim).await;
    let tampered = format!("{} | take 100000", hunting_query(&[MSG], 5));
    for q in [
        "DeviceEvents | take 1".to_string(),
        "EmailEvents | take 2".to_string(),
        tampered,
        hunting_query(&[MSG], 5).replace("30d", "90d"),
        hunting_query(&[], 5),
    ] {
        let (status, _, body) = run_raw(&sim, &token, json!({ "Query": q })).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(body["error"]["message"], "Query could not be parsed.");
    }
    // m365-ingest's `check` probe: one EmailEvents row.
    let (status, _, body) = run_raw(&sim, &token, json!({ "Query": "EmailEvents | take 1" })).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(body["results"][0]["NetworkMessageId"].is_string());
    // Both spellings of the parameter (docs `Query`, metadata `query`).
    let (status, _, _) = run_raw(&sim, &token, json!({ "query": hunting_query(&[MSG], 5) })).await;
    assert_eq!(status, 200);
    // An id with quotes, a pipe, a backslash and a line break is one id.
    let hostile = "<a\"b'c|d\\e\nf@x> | where 1==1";
    let q = hunting_query(&[hostile], 5);
    assert_eq!(
        m365_sim::parse_hunting_query(&q).unwrap().ids,
        vec![hostile]
    );
    let long = format!("<{}@x>", "a".repeat(m365_sim::MAX_QUERY_CHARS));
    let (status, _, body) = run(&sim, &token, &[&long]).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too long"));
}

#[tokio::test]
async fn the_46th_call_in_a_minute_is_throttled() {
    let sim = start().await;
    let token = hunter(&sim).await;
    for i in 0..m365_sim::HUNTING_PER_MINUTE {
        let (status, _, body) = run(&sim, &token, &[MSG]).await;
        assert_eq!(status, 200, "call {i}: {body}");
    }
    let (status, retry, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 429);
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=61).contains(&secs));
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert_eq!(sim.throttle_violations(), 0);
    // Coming back inside the Retry-After is a violation.
    let (status, _, _) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 429);
    assert_eq!(sim.throttle_violations(), 1);
}

#[tokio::test]
async fn a_spent_cpu_quota_answers_429_with_the_reason() {
    let sim = start().await;
    let token = hunter(&sim).await;
    sim.set_hunting_faults(
        TENANT,
        HuntingFaults {
            cpu_quota_for: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    );
    let (status, retry, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 429);
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!((590..=601).contains(&secs), "{secs}");
    assert_eq!(body["error"]["message"], CPU_QUOTA_MESSAGE);
    // Switched off, queries run again.
    sim.set_hunting_faults(TENANT, HuntingFaults::default());
    assert_eq!(run(&sim, &token, &[MSG]).await.0, 200);
}

#[tokio::test]
async fn forbidden_slow_timeout_and_pascal_case_faults() {
    let sim = start().await;
    let token = hunter(&sim).await;
    sim.set_hunting_faults(
        TENANT,
        HuntingFaults {
            forbidden: true,
            ..Default::default()
        },
    );
    assert_eq!(run(&sim, &token, &[MSG]).await.0, 403);

    sim.set_hunting_faults(
        TENANT,
        HuntingFaults {
            delay: Some(Duration::from_millis(300)),
            pascal_schema: true,
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let (status, _, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(body["schema"][0]["Name"], "Key");
    assert_eq!(body["schema"][0]["Type"], "String");
    assert!(body["schema"][0].get("name").is_none());

    sim.set_hunting_faults(
        TENANT,
        HuntingFaults {
            delay: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let (status, _, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "UnknownError");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_control_api_registers_messages_and_switches_faults() {
    let sim = start().await;
    let token = hunter(&sim).await;
    let control = |path: &str, body: Value| {
        let url = format!("{}/_sim/hunting/{path}", sim.base_url());
        async move {
            http()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let msg = json!({"tenant_id": TENANT, "internet_message_id": MSG, "sender": "a@phish.example",
                     "subject": "Hello", "recipients": 40, "clickers": 3});
    assert_eq!(control("messages", msg).await, 200);
    let (_, _, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(body["results"][0]["Recipients"], 40);
    assert_eq!(body["results"][0]["Clickers"], 3);
    assert_eq!(
        control("faults", json!({"tenant_id": TENANT, "cpu_quota_secs": 60})).await,
        200
    );
    assert_eq!(run(&sim, &token, &[MSG]).await.0, 429);
    assert_eq!(
        control(
            "faults",
            json!({"tenant_id": TENANT, "pascal_schema": true})
        )
        .await,
        200
    );
    let (status, _, body) = run(&sim, &token, &[MSG]).await;
    assert_eq!(status, 200);
    assert_eq!(body["schema"][0]["Name"], "Key");
    assert_eq!(control("faults", json!({"tenant": TENANT})).await, 400);
}
