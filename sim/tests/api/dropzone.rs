//! The recording Dropzone endpoint and its behaviours.

use m365_sim::{DropzoneBehavior, SimConfig, Simulator};
use serde_json::{json, Value};

use crate::helpers::*;

fn batch(ids: &[&str]) -> Value {
    json!({"alerts": ids.iter().map(|id| json!({"schema": "m365-ingest.alert.v1", "event_id": id, "title": format!("alert {id}")})).collect::<Vec<_>>()})
}

async fn post(sim: &Simulator, body: &Value, key: &str) -> (u16, Option<String>, Value) {
    let r = http()
        .post(sim.dropzone_url())
        .header("Authorization", "Bearer dz-key")
        .header("Idempotency-Key", key)
        .header("User-Agent", "m365-ingest/0.1.0")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, r.json().await.unwrap())
}

#[tokio::test]
async fn accepted_batches_are_recorded_with_headers_and_bodies() {
    let sim = start().await;
    let (s, _, answer) = post(&sim, &batch(&["e1", "e2"]), "k1").await;
    assert_eq!((s, answer), (200, json!({"accepted": 2})));
    let (s, _, _) = post(&sim, &batch(&["e2"]), "k2").await;
    assert_eq!(s, 200);
    let got = sim.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].idempotency_key.as_deref(), Some("k1"));
    assert_eq!(got[0].authorization.as_deref(), Some("Bearer dz-key"));
    assert_eq!(got[0].user_agent.as_deref(), Some("m365-ingest/0.1.0"));
    assert_eq!(got[0].event_ids, ["e1", "e2"]);
    assert_eq!(got[0].alerts[1]["title"], "alert e2");
    assert_eq!(sim.delivered_event_ids(), ["e1", "e2", "e2"]);
    assert_eq!(sim.delivered_count(), 3);
}

#[tokio::test]
async fn fail_with_answers_every_request_until_changed() {
    let sim = start().await;
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: Some("3".into()),
    });
    let (s, ra, _) = post(&sim, &batch(&["e1"]), "k").await;
    assert_eq!((s, ra.as_deref()), (503, Some("3")));
    assert_eq!(post(&sim, &batch(&["e1"]), "k").await.0, 503);
    assert_eq!(sim.delivered_count(), 0);
    sim.set_dropzone(DropzoneBehavior::Accept);
    assert_eq!(post(&sim, &batch(&["e1"]), "k").await.0, 200);
    let statuses: Vec<u16> = sim.received().iter().map(|b| b.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(sim.delivered_event_ids(), ["e1"]);
}

#[tokio::test]
async fn rejected_event_ids_are_named() {
    let sim = start().await;
    sim.set_dropzone(DropzoneBehavior::RejectEventIds {
        ids: vec!["bad".into()],
        status: 400,
    });
    let (s, _, answer) = post(&sim, &batch(&["ok1", "bad"]), "k").await;
    assert_eq!(s, 400);
    assert_eq!(answer["rejected_event_ids"], json!(["bad"]));
    assert_eq!(post(&sim, &batch(&["ok1"]), "k2").await.0, 200);
    assert_eq!(sim.delivered_event_ids(), ["ok1"]);
}

#[tokio::test]
async fn reject_where_matches_a_field() {
    let sim = start().await;
    sim.set_dropzone(DropzoneBehavior::RejectWhere {
        field: "title".into(),
        contains: "POISON".into(),
        status: 422,
    });
    let body = json!({"alerts": [{"event_id": "a", "title": "fine"}, {"event_id": "b", "title": "xx POISON xx"}]});
    let (s, _, answer) = post(&sim, &body, "k").await;
    assert_eq!(s, 422);
    assert_eq!(answer["rejected_event_ids"], json!(["b"]));
    assert_eq!(post(&sim, &batch(&["a"]), "k2").await.0, 200);
}

#[tokio::test]
async fn max_body_bytes_answers_413_for_larger_bodies() {
    let sim = start().await;
    sim.set_dropzone(DropzoneBehavior::MaxBodyBytes(200));
    let many: Vec<String> = (0..20).map(|i| format!("event-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(post(&sim, &batch(&many), "k").await.0, 413);
    assert_eq!(post(&sim, &batch(&["e"]), "k2").await.0, 200);
    assert_eq!(sim.delivered_count(), 1);
}

#[tokio::test]
async fn without_bodies_only_event_ids_and_counts_are_kept() {
    let sim = start_with(SimConfig {
        keep_bodies: false,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(post(&sim, &batch(&["e1", "e2", "e3"]), "k").await.0, 200);
    let got = sim.received();
    assert!(got[0].alerts.is_empty());
    assert_eq!(got[0].event_ids, ["e1", "e2", "e3"]);
    assert_eq!(sim.delivered_count(), 3);
}

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types_are_refused_and_recorded() {
    let sim = start().await;
    let r = http()
        .post(sim.dropzone_url())
        .header("Content-Type", "application/json")
        .body("{\"alerts\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .post(sim.dropzone_url())
        .header("Content-Type", "text/plain")
        .body("{\"alerts\": []}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let statuses: Vec<u16> = sim.received().iter().map(|b| b.status).collect();
    assert_eq!(statuses, [400, 415]);
    assert_eq!(sim.delivered_count(), 0);
}
