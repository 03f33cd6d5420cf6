//! Bodies as the store keeps them, rendered from the simulator's generated alerts: what the
//! zstd dictionary is trained on (`examples/body_dict.rs`) and what the codec test measures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use m365_ingest::config::Filters;
use m365_ingest::normalize::{self, SourceKind};
use m365_ingest::store::{self, body_codec, IngestBatch, TenantRef};
use serde_json::value::RawValue;
use serde_json::Value;

pub const TENANT_ID: &str = "b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c";

/// The JSON bodies the store would keep for the Graph alerts and the Cloud Apps alerts in these
/// ranges of what a fresh simulator generates (its generator is seeded, so the same every run;
/// the training set is a prefix, so a range after it is held out). Spread over
/// `[from, from + 3 days)`. Returns the Graph alerts' bodies, then the Cloud Apps alerts'.
pub fn simulator_bodies(
    alerts: Range<usize>,
    cloud_apps: Range<usize>,
    from: SystemTime,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sim = rt
        .block_on(m365_sim::Simulator::start(m365_sim::SimConfig::default()))
        .expect("the simulator starts");
    let to = from + Duration::from_secs(3 * 86_400);
    // As served: the daemon stores each item's JSON as it was received, in its field order.
    let alerts: Vec<Box<RawValue>> = sim.generate_alerts(TENANT_ID, alerts.end, from, to)[alerts]
        .iter()
        .filter_map(|id| RawValue::from_string(sim.alert_json(TENANT_ID, id)?).ok())
        .collect();
    let cloud: Vec<Value> = sim.generate_cloud_app_alerts(TENANT_ID, cloud_apps.end, from, to)
        [cloud_apps]
        .iter()
        .filter_map(|id| sim.cloud_app_alert(TENANT_ID, id))
        .collect();
    (
        rendered_raw(SourceKind::Alerts, alerts),
        rendered(SourceKind::CloudApps, &cloud),
    )
}

/// The stored JSON bodies (first versions) of `items` of one source, rendered by the store's
/// own planning step.
pub fn rendered(source: SourceKind, items: &[Value]) -> Vec<Vec<u8>> {
    rendered_raw(
        source,
        items
            .iter()
            .filter_map(|v| serde_json::value::to_raw_value(v).ok())
            .collect(),
    )
}

/// `rendered`, for items as received.
pub fn rendered_raw(source: SourceKind, items: Vec<Box<RawValue>>) -> Vec<Vec<u8>> {
    let tenant = TenantRef {
        name: "bench".into(),
        id: TENANT_ID.into(),
    };
    let filters = Filters::default();
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(500) {
        let prepared = chunk
            .iter()
            .filter_map(|raw| normalize::prepare(source, raw).ok())
            .collect();
        let mut batch = IngestBatch {
            context_hold: None,
            tenant: &tenant,
            source,
            items: prepared,
            quarantine: Vec::new(),
            retried: Vec::new(),
            historical: false,
            observed_at: "2026-11-26T10:00:00.1234567Z",
            filters: &filters,
            advance: None,
            source_state: None,
        };
        let plan = store::plan_ingest(&mut batch, &HashMap::new(), &HashMap::new());
        out.extend(
            plan.outbox
                .iter()
                .map(|row| body_codec::decode(&row.stored).expect("a body the codec wrote")),
        );
    }
    out
}

/// What the store compresses of one rendered event, as two frames of one stored body (issue 12):
/// the envelope up to the comma before the body's members, without its event id when that is
/// derived, and the body's members (`store::body_codec::encode_with_sealed`).
pub fn stored_parts(event: &[u8]) -> (Vec<u8>, Vec<u8>) {
    const VERSION: &str = r#","version":""#;
    let text = std::str::from_utf8(event).expect("an event is UTF-8");
    let key = text.find(VERSION).expect("an event has a version") + VERSION.len();
    let end = key + text[key..].find('"').expect("the version ends") + 2;
    let head = &event[..end];
    assert!(head.ends_with(b"\",") && !text[key..end].contains('\\'));
    let head = normalize::envelope::without_event_id(head).unwrap_or_else(|| head.to_vec());
    (head, event[end..].to_vec())
}

/// Items of Microsoft's example responses in `dir` (`shared/reference/microsoft`), as bodies:
/// Graph alerts (`graph-alerts_v2-list.json`, `graph-alert-get.json`, the alerts of
/// `graph-incident-expand-alerts.json`) and Cloud Apps alerts
/// (`mda-alerts-list.json`, `mda-alert-fetch.json`). None of them is in the training set. The
/// files repeat ids and a page keeps one version of each: 3 bodies (2 Graph, 1 Cloud Apps).
pub fn microsoft_bodies(dir: &std::path::Path) -> Vec<Vec<u8>> {
    type Object = HashMap<String, Box<RawValue>>;
    // Items in the file's own field order, as Microsoft sends them.
    let items = |text: &str| -> Vec<Box<RawValue>> {
        let list = serde_json::from_str::<Object>(text).ok().and_then(|o| {
            let list = o.get("value").or_else(|| o.get("data"))?;
            serde_json::from_str::<Vec<Box<RawValue>>>(list.get()).ok()
        });
        list.or_else(|| Some(vec![RawValue::from_string(text.to_string()).ok()?]))
            .unwrap_or_default()
    };
    let read = |name: &str| items(&std::fs::read_to_string(dir.join(name)).unwrap_or_default());
    let mut graph = read("graph-alerts_v2-list.json");
    graph.extend(read("graph-alert-get.json"));
    for incident in read("graph-incident-expand-alerts.json") {
        let alerts = serde_json::from_str::<Object>(incident.get())
            .ok()
            .and_then(|o| serde_json::from_str::<Vec<Box<RawValue>>>(o.get("alerts")?.get()).ok());
        graph.extend(alerts.unwrap_or_default());
    }
    let mut mda = read("mda-alerts-list.json");
    mda.extend(read("mda-alert-fetch.json"));
    let mut out = rendered_raw(SourceKind::Alerts, graph);
    out.extend(rendered_raw(SourceKind::CloudApps, mda));
    out
}
