//! Behaviour of `prepare` on Microsoft's example payloads and on malformed items.
//!
//! The examples are read at run time from `shared/reference/microsoft/` beside the crate (in the
//! scratch crate, `shared` is a symlink to the same folder).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use serde_json::value::RawValue;
use serde_json::Value;

use super::*;

fn reference(name: &str) -> String {
    let path = format!(
        "{}/../shared/reference/microsoft/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn raw(text: &str) -> Box<RawValue> {
    serde_json::from_str(text).unwrap()
}

/// The items of a `{"value": [...]}` (Graph) or `{"data": [...]}` (Cloud Apps) page.
fn page_items(text: &str, key: &str) -> Vec<Box<RawValue>> {
    let page: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(text).unwrap();
    serde_json::from_str(page[key].get()).unwrap()
}

fn body(p: &Prepared) -> Value {
    serde_json::from_slice(&p.body.json().unwrap()).expect("the body is JSON")
}

/// The alert of graph-alert-get.json with `edit` applied to its JSON.
fn alert_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Box<RawValue> {
    let mut v: Value = serde_json::from_str(&reference("graph-alert-get.json")).unwrap();
    edit(v.as_object_mut().unwrap());
    raw(&v.to_string())
}

const BODY_FIELDS: &[&str] = &[
    "title",
    "description",
    "category",
    "product",
    "detection_source",
    "severity",
    "status",
    "raw_status",
    "classification",
    "determination",
    "assigned_to",
    "created_at",
    "updated_at",
    "first_activity_at",
    "last_activity_at",
    "resolved_at",
    "links",
    "incident_id",
    "related",
    "duplicate_of",
    "indicators",
    "mitre_techniques",
    "tags",
    "comments",
    "entities",
];

/// Every documented field is present, in order, then optionally `normalization_error`, then
/// `raw` last.
fn assert_shape(p: &Prepared) {
    let json = p.body.json().unwrap();
    let text = std::str::from_utf8(&json).unwrap();
    let v = body(p);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = BODY_FIELDS.to_vec();
    if p.normalization_error.is_some() {
        expected.push("normalization_error");
    }
    expected.push("raw");
    let mut sorted = expected.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "serde_json::Map sorts keys");
    // Order in the bytes: each field appears after the previous one.
    let mut at = 0;
    for k in &expected {
        let needle = format!("\"{k}\":");
        let found = text[at..].find(&needle).map(|i| i + at);
        assert!(found.is_some(), "{k} out of order in {text}");
        at = found.unwrap_or(at);
    }
    assert_eq!(
        v.get("normalization_error").and_then(Value::as_str),
        p.normalization_error.as_deref()
    );
}

// ---------------------------------------------------------------------------------------------
// alerts_v2

#[test]
fn every_example_alert_prepares_cleanly() {
    let mut items = page_items(&reference("graph-alerts_v2-list.json"), "value");
    items.push(raw(&reference("graph-alert-get.json")));
    for incident in page_items(&reference("graph-incident-expand-alerts.json"), "value") {
        let alerts: std::collections::HashMap<String, Box<RawValue>> =
            serde_json::from_str(incident.get()).unwrap();
        items.extend(serde_json::from_str::<Vec<Box<RawValue>>>(alerts["alerts"].get()).unwrap());
    }
    assert!(items.len() >= 3);
    for item in &items {
        let p = prepare(SourceKind::Alerts, item).unwrap();
        assert_eq!(p.normalization_error, None, "{}", p.native_id);
        assert_shape(&p);
        assert_eq!(body(&p)["entities"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn the_alert_get_example_normalizes_to_the_documented_fields() {
    let text = reference("graph-alert-get.json");
    let item = raw(&text);
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);

    assert_eq!(p.native_id, "da637578995287051192_756343937");
    let expected_ticks = crate::time::parse_ticks("2021-05-02T14:19:01.3266667Z").unwrap();
    assert_eq!(p.version, VersionInput::Ticks(expected_ticks));
    assert_eq!(
        p.filter,
        FilterFields {
            service_source: Some("microsoftDefenderForEndpoint".into()),
            detection_source: Some("antivirus".into()),
            category: Some("DefenseEvasion".into()),
            severity: Some("low"),
            status: Some("new"),
        }
    );
    assert_eq!(
        p.links,
        Links {
            incident_id: Some("28282".into()),
            provider_alert_id: Some("da637578995287051192_756343937".into()),
            message_ids: vec![],
        }
    );

    assert_eq!(v["title"], "Suspicious execution of hidden file");
    assert_eq!(v["product"], "microsoftDefenderForEndpoint");
    assert_eq!(v["detection_source"], "antivirus");
    assert_eq!(v["category"], "DefenseEvasion");
    assert_eq!(v["severity"], "low");
    assert_eq!(v["status"], "new");
    assert_eq!(v["raw_status"], "new");
    assert_eq!(v["classification"], "unknown");
    assert_eq!(v["assigned_to"], Value::Null);
    assert_eq!(v["created_at"], "2021-04-27T12:19:27.7211305Z");
    assert_eq!(v["updated_at"], "2021-05-02T14:19:01.3266667Z");
    assert_eq!(v["first_activity_at"], "2021-04-26T07:45:50.1160000Z");
    assert_eq!(v["last_activity_at"], "2021-05-02T07:56:58.2220000Z");
    assert_eq!(v["resolved_at"], Value::Null);
    assert_eq!(
        v["links"]["portal"],
        "https://security.microsoft.com/alerts/da637578995287051192_756343937?tid=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c"
    );
    assert_eq!(
        v["links"]["incident"],
        "https://security.microsoft.com/incidents/28282?tid=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c"
    );
    assert_eq!(v["incident_id"], "28282");
    assert_eq!(v["related"], serde_json::json!([]));
    assert_eq!(v["duplicate_of"], Value::Null);
    assert_eq!(v["mitre_techniques"], serde_json::json!(["T1564.001"]));
    assert_eq!(v["tags"], serde_json::json!(["Defender Experts"]));
    assert_eq!(v["comments"], serde_json::json!([]));

    let entities = v["entities"].as_array().unwrap();
    let types: Vec<&str> = entities
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["device", "file", "process", "registry"]);
    let (device, file, process, registry) =
        (&entities[0], &entities[1], &entities[2], &entities[3]);
    assert_eq!(device["hostname"], "tempDns");
    assert_eq!(
        device["mde_device_id"],
        "73e7e2de709dff64ef64b1d0c30e67fab63279db"
    );
    assert_eq!(device["os_platform"], "Windows10");
    assert_eq!(device["os_build"], 22424);
    assert_eq!(device["ips"], serde_json::json!(["1.1.1.1"]));
    assert_eq!(device["risk_score"], "medium");
    assert_eq!(device["health_status"], "active");
    assert_eq!(device["roles"], serde_json::json!(["compromised"]));
    assert_eq!(device["verdict"], "unknown");
    assert_eq!(file["name"], "MsSense.exe");
    assert_eq!(file["path"], "C:\\Program Files\\temp");
    assert_eq!(
        file["sha256"],
        "8963a19fb992ad9a76576c5638fd68292cffb9aaac29eb8285f9abf6196a7dec"
    );
    assert_eq!(file["sha1"], "5f1e8acedc065031aad553b710838eb366cfee9a");
    assert_eq!(file["size"], 6136392);
    assert_eq!(file["publisher"], "Microsoft Corporation");
    assert_eq!(process["pid"], 4780);
    assert_eq!(process["parent_pid"], 668);
    assert_eq!(process["command_line"], "\"MsSense.exe\"");
    assert_eq!(process["created_at"], "2021-08-12T12:43:19.0772577Z");
    assert_eq!(process["image"]["name"], "MsSense.exe");
    assert_eq!(process["parent_image"]["name"], "services.exe");
    assert_eq!(process["user"]["account_name"], "SYSTEM");
    assert_eq!(process["user"]["domain"], "NT AUTHORITY");
    assert_eq!(process["user"]["sid"], "S-1-5-18");
    assert_eq!(
        registry["key"],
        "SYSTEM\\CONTROLSET001\\CONTROL\\WMI\\AUTOLOGGER\\SENSEAUDITLOGGER"
    );
    assert_eq!(registry["hive"], "HKEY_LOCAL_MACHINE");

    let indicators: Vec<(String, String)> = v["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap().into(),
                i["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |t: &str, val: &str| indicators.iter().any(|(a, b)| a == t && b == val);
    assert!(has("host", "tempDns"), "{indicators:?}");
    assert!(has(
        "sha256",
        "8963a19fb992ad9a76576c5638fd68292cffb9aaac29eb8285f9abf6196a7dec"
    ));
    assert!(has("sha1", "5f1e8acedc065031aad553b710838eb366cfee9a"));
    assert!(has("file_name", "MsSense.exe"));
    // The file and the process image are the same file: its indicators appear once.
    assert_eq!(indicators.len(), 4, "{indicators:?}");

    // `raw` is Microsoft's object byte for byte, U+FFFD and odd whitespace included.
    let json = p.body.json().unwrap();
    let body_text = std::str::from_utf8(&json).unwrap();
    assert!(body_text.ends_with(&format!(",\"raw\":{}}}", text.trim_end())));
    assert_eq!(v["raw"], serde_json::from_str::<Value>(&text).unwrap());
    assert_eq!(v.get("normalization_error"), None);
    assert_shape(&p);
}

#[test]
fn a_non_array_evidence_is_dropped_and_named() {
    let item = alert_with(|o| {
        o.insert("evidence".into(), "oops".into());
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);
    let err = p.normalization_error.as_deref().unwrap();
    assert!(
        err.starts_with("evidence: dropped, invalid type: string \"oops\""),
        "{err}"
    );
    assert_eq!(v["entities"], serde_json::json!([]));
    assert_eq!(v["title"], "Suspicious execution of hidden file");
    assert_eq!(v["severity"], "low");
    assert_eq!(v["raw"]["evidence"], "oops");
    assert_shape(&p);
}

#[test]
fn one_malformed_evidence_becomes_other_and_the_rest_survive() {
    let item = alert_with(|o| {
        let ev = o["evidence"].as_array_mut().unwrap();
        ev.insert(
            1,
            serde_json::json!({"@odata.type": "#microsoft.graph.security.fileEvidence", "fileDetails": "x"}),
        );
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);
    let types: Vec<&str> = v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["device", "other", "file", "process", "registry"]);
    assert_eq!(
        v["entities"][1]["odata_type"],
        "#microsoft.graph.security.fileEvidence"
    );
    assert_eq!(v["entities"][1]["raw"]["fileDetails"], "x");
    let err = p.normalization_error.as_deref().unwrap();
    assert!(
        err.starts_with("evidence[1] (#microsoft.graph.security.fileEvidence): invalid type"),
        "{err}"
    );
    assert_shape(&p);
}

#[test]
fn an_alert_whose_only_evidence_is_malformed_still_prepares() {
    let item = alert_with(|o| {
        o.insert(
            "evidence".into(),
            serde_json::json!([{"@odata.type": "#microsoft.graph.security.fileEvidence", "fileDetails": "x"}]),
        );
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);
    assert_eq!(v["entities"][0]["type"], "other");
    assert_eq!(v["indicators"], serde_json::json!([]));
    assert!(p
        .normalization_error
        .as_deref()
        .unwrap()
        .contains("fileEvidence"));
    assert_shape(&p);
}

#[test]
fn a_wrongly_typed_field_is_dropped_and_the_rest_normalized() {
    let item = alert_with(|o| {
        o.insert("title".into(), 5.into());
        o.insert("comments".into(), serde_json::json!({"not": "a list"}));
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);
    assert_eq!(v["title"], Value::Null);
    assert_eq!(v["comments"], serde_json::json!([]));
    assert_eq!(v["entities"].as_array().unwrap().len(), 4);
    let err = p.normalization_error.unwrap();
    assert!(
        err.contains("title: dropped") && err.contains("comments: dropped"),
        "{err}"
    );
}

#[test]
fn missing_or_unreadable_id_and_version_are_unusable() {
    let no_id = alert_with(|o| {
        o.remove("id");
    });
    let e = prepare(SourceKind::Alerts, &no_id).unwrap_err();
    assert_eq!(e.reason, "missing id");

    let numeric_id = alert_with(|o| {
        o.insert("id".into(), 42.into());
    });
    let e = prepare(SourceKind::Alerts, &numeric_id).unwrap_err();
    assert_eq!(e.reason, "id is not a string");

    let bad_version = alert_with(|o| {
        o.insert("lastUpdateDateTime".into(), "yesterday".into());
    });
    let e = prepare(SourceKind::Alerts, &bad_version).unwrap_err();
    assert_eq!(e.reason, "lastUpdateDateTime is not a time: \"yesterday\"");
    assert_eq!(
        e.native_id.as_deref(),
        Some("da637578995287051192_756343937")
    );

    let no_version = alert_with(|o| {
        o.remove("lastUpdateDateTime");
    });
    let e = prepare(SourceKind::Alerts, &no_version).unwrap_err();
    assert_eq!(e.reason, "missing lastUpdateDateTime");
    assert_eq!(
        e.native_id.as_deref(),
        Some("da637578995287051192_756343937")
    );

    let numeric_version = alert_with(|o| {
        o.insert("lastUpdateDateTime".into(), 1.into());
    });
    let e = prepare(SourceKind::Alerts, &numeric_version).unwrap_err();
    assert_eq!(e.reason, "lastUpdateDateTime is not a string");

    for not_an_object in ["[]", "\"x\"", "null", "3"] {
        let e = prepare(SourceKind::Alerts, &raw(not_an_object)).unwrap_err();
        assert_eq!(e.reason, "not a JSON object");
    }
}

#[test]
fn unknown_enum_values_are_kept_and_mapped_to_unknown() {
    let item = alert_with(|o| {
        o.insert("severity".into(), "critical".into());
        o.insert("status".into(), "someNewValue".into());
        o.insert("brandNewField".into(), serde_json::json!({"x": [1, 2]}));
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let v = body(&p);
    assert_eq!(v["severity"], "unknown");
    assert_eq!(v["status"], "unknown");
    assert_eq!(v["raw_status"], "someNewValue");
    assert_eq!(v["raw"]["severity"], "critical");
    assert_eq!(v["raw"]["brandNewField"]["x"][1], 2);
    assert_eq!(p.normalization_error, None);
    // Filters let what they cannot read through rather than drop it as "unknown".
    assert_eq!(p.filter.severity, None);
    assert_eq!(p.filter.status, None);
}

#[test]
fn changed_fields_sees_a_status_change_but_not_evidence_order() {
    let base = prepare(SourceKind::Alerts, &alert_with(|_| {})).unwrap();

    let resolved = alert_with(|o| {
        o.insert("status".into(), "resolved".into());
        o.insert("lastUpdateDateTime".into(), "2021-05-03T00:00:00Z".into());
    });
    let next = prepare(SourceKind::Alerts, &resolved).unwrap();
    assert_eq!(
        changed_fields(&base.field_hashes, &next.field_hashes),
        ["status"]
    );

    // A raw status that maps to the same normalized value still counts as a status change.
    let odd = alert_with(|o| {
        o.insert("status".into(), "New".into());
    });
    let next = prepare(SourceKind::Alerts, &odd).unwrap();
    assert_eq!(
        changed_fields(&base.field_hashes, &next.field_hashes),
        ["status"]
    );

    let reordered = alert_with(|o| {
        o["evidence"].as_array_mut().unwrap().reverse();
    });
    let next = prepare(SourceKind::Alerts, &reordered).unwrap();
    assert_ne!(next.body, base.body);
    assert!(changed_fields(&base.field_hashes, &next.field_hashes).is_empty());

    let commented = alert_with(|o| {
        o.insert(
            "comments".into(),
            serde_json::json!([{"comment": "looked", "createdByDisplayName": "Ann", "createdDateTime": "2021-05-03T00:00:00Z"}]),
        );
        o.insert("assignedTo".into(), "ann@contoso.com".into());
    });
    let next = prepare(SourceKind::Alerts, &commented).unwrap();
    assert_eq!(
        changed_fields(&base.field_hashes, &next.field_hashes),
        ["assigned_to", "comments"]
    );
    // And the hashes survive the database.
    let stored = FieldHashes::decode(&base.field_hashes.encode());
    assert_eq!(
        changed_fields(&stored, &next.field_hashes),
        ["assigned_to", "comments"]
    );
}

#[test]
fn every_hashed_field_is_in_the_body_and_has_a_code() {
    let p = prepare(SourceKind::Alerts, &alert_with(|_| {})).unwrap();
    let names: Vec<&str> = p.field_hashes.0.iter().map(|(n, _)| *n).collect();
    let coded: Vec<&str> = field_hashes::hashed_field_names().collect();
    assert_eq!(names, coded);
    // Stored by their low 32 bits: the same fields come back, and compare as unchanged.
    let stored = FieldHashes::decode(&p.field_hashes.encode());
    let stored_names: Vec<&str> = stored.0.iter().map(|(n, _)| *n).collect();
    assert_eq!(stored_names, names);
    assert!(changed_fields(&stored, &p.field_hashes).is_empty());
    for n in names {
        assert!(BODY_FIELDS.contains(&n), "{n}");
    }
}

#[test]
fn identical_evidence_is_sent_once() {
    let item = alert_with(|o| {
        let ev = o["evidence"].as_array_mut().unwrap();
        let dup = ev[1].clone();
        ev.push(dup);
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    assert_eq!(body(&p)["entities"].as_array().unwrap().len(), 4);
    assert_eq!(p.normalization_error, None);
}

#[test]
fn email_evidence_gives_message_ids_and_indicators() {
    let item = alert_with(|o| {
        o.insert(
            "evidence".into(),
            serde_json::json!([
                {"@odata.type": "#microsoft.graph.security.analyzedMessageEvidence",
                 "networkMessageId": "5b1e-net", "internetMessageId": "<abc@evil.test>",
                 "recipientEmailAddress": "bob@contoso.com",
                 "p2Sender": {"emailAddress": "ceo@contoso.com", "displayName": "CEO"},
                 "senderIp": "203.0.113.9", "urls": ["https://evil.test/x"], "roles": ["attacked"],
                 "verdict": "malicious"},
                {"@odata.type": "#microsoft.graph.security.mailboxEvidence",
                 "primaryAddress": "bob@contoso.com", "upn": "bob@contoso.com", "displayName": "Bob"},
                {"@odata.type": "#microsoft.graph.security.ipEvidence", "ipAddress": "203.0.113.9",
                 "countryLetterCode": "NL"},
                {"@odata.type": "#microsoft.graph.security.urlEvidence", "url": "https://evil.test/x"},
                {"@odata.type": "#microsoft.graph.security.userEvidence",
                 "userAccount": {"accountName": "bob", "domainName": "CONTOSO", "userPrincipalName": "bob@contoso.com"}},
                {"@odata.type": "#microsoft.graph.security.mailClusterEvidence", "networkMessageIds": ["a"]}
            ]),
        );
    });
    let p = prepare(SourceKind::Alerts, &item).unwrap();
    assert_eq!(p.normalization_error, None);
    assert_eq!(p.links.message_ids, ["<abc@evil.test>", "5b1e-net"]);
    let v = body(&p);
    let got: Vec<String> = v["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}={}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "email_sender=ceo@contoso.com",
            "email_recipient=bob@contoso.com",
            "internet_message_id=<abc@evil.test>",
            "ip=203.0.113.9",
            "url=https://evil.test/x",
            "user=bob@contoso.com",
            "mailbox=bob@contoso.com",
        ]
    );
    let types: Vec<&str> = v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["email", "mailbox", "ip", "url", "user", "other"]);
    assert_eq!(v["entities"][2]["country"], "NL");
    assert_eq!(v["entities"][0]["verdict"], "malicious");
}

#[test]
fn no_input_shape_makes_prepare_panic() {
    // Every top-level member of the example replaced by every JSON type: prepare either
    // succeeds or refuses for the id or the version, never anything else.
    let base: Value = serde_json::from_str(&reference("graph-alert-get.json")).unwrap();
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    let replacements = [
        Value::Null,
        serde_json::json!(1.5),
        serde_json::json!(-7),
        serde_json::json!("s"),
        serde_json::json!([]),
        serde_json::json!([1, "a", null, {}]),
        serde_json::json!({}),
        serde_json::json!({"a": [1]}),
        serde_json::json!(true),
    ];
    for key in &keys {
        for r in &replacements {
            let mut v = base.clone();
            v[key.as_str()] = r.clone();
            let item = raw(&v.to_string());
            match prepare(SourceKind::Alerts, &item) {
                Ok(p) => {
                    assert_shape(&p);
                    assert_eq!(body(&p)["raw"], v);
                }
                Err(e) => assert!(key == "id" || key == "lastUpdateDateTime", "{key}={r}: {e}"),
            }
            // The same inside the first evidence item.
            let mut v = base.clone();
            for ev_key in [
                "fileDetails",
                "roles",
                "osBuild",
                "ipInterfaces",
                "verdict",
                "@odata.type",
            ] {
                v["evidence"][1][ev_key] = r.clone();
            }
            let p = prepare(SourceKind::Alerts, &raw(&v.to_string())).unwrap();
            assert_shape(&p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// incidents

fn incident_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Box<RawValue> {
    let mut v: Value = serde_json::from_str(&reference("graph-incident-get.json")).unwrap();
    edit(v.as_object_mut().unwrap());
    raw(&v.to_string())
}

#[test]
fn every_example_incident_prepares() {
    let mut items = page_items(&reference("graph-incidents-list.json"), "value");
    items.extend(page_items(
        &reference("graph-incident-expand-alerts.json"),
        "value",
    ));
    items.push(raw(&reference("graph-incident-get.json")));
    for item in &items {
        let p = prepare(SourceKind::Incidents, item).unwrap();
        assert_eq!(p.normalization_error, None);
        assert_shape(&p);
        let v = body(&p);
        assert_eq!(p.native_id, "2972395");
        assert_eq!(
            v["title"]
                .as_str()
                .map(|t| t.starts_with("Multi-stage incident")),
            Some(true)
        );
        assert_eq!(v["severity"], "medium");
        assert_eq!(v["status"], "new");
        assert_eq!(v["incident_id"], "2972395");
        assert_eq!(v["tags"], serde_json::json!(["Demo", "Defender Experts"]));
        assert_eq!(
            v["comments"],
            serde_json::json!([{"text": "Demo incident", "author": "DavidS@contoso.onmicrosoft.com", "created_at": "2021-09-30T12:07:37.2756993Z"}])
        );
        assert_eq!(v["created_at"], "2021-08-13T08:43:35.5533333Z");
        assert_eq!(v["updated_at"], "2021-09-30T09:35:45.1133333Z");
        assert_eq!(
            v["links"]["portal"],
            "https://security.microsoft.com/incidents/2972395?tid=12f988bf-16f1-11af-11ab-1d7cd011db47"
        );
        assert_eq!(v["entities"], serde_json::json!([]));
        assert_eq!(v["related"], serde_json::json!([]));
        assert_eq!(v["raw"], serde_json::from_str::<Value>(item.get()).unwrap());
        assert_eq!(p.filter.severity, Some("medium"));
        assert_eq!(p.filter.status, Some("new"));
        assert_eq!(
            p.version,
            VersionInput::Ticks(crate::time::parse_ticks("2021-09-30T09:35:45.1133333Z").unwrap())
        );
    }
}

#[test]
fn pascal_case_values_are_read_and_kept_as_microsoft_wrote_them() {
    let p = prepare(
        SourceKind::Incidents,
        &raw(&reference("graph-incident-get.json")),
    )
    .unwrap();
    let v = body(&p);
    assert_eq!(v["raw_status"], "Active");
    assert_eq!(v["classification"], "TruePositive");
    assert_eq!(v["determination"], "MultiStagedAttack");
}

#[test]
fn a_merged_incident_points_at_its_survivor() {
    let item = incident_with(|o| {
        o.insert("status".into(), "redirected".into());
        o.insert("redirectIncidentId".into(), "3000001".into());
    });
    let p = prepare(SourceKind::Incidents, &item).unwrap();
    let v = body(&p);
    assert_eq!(v["status"], "resolved");
    assert_eq!(
        v["related"],
        serde_json::json!([{"kind": "incident", "source": "incidents", "native_id": "3000001"}])
    );
    let base = prepare(SourceKind::Incidents, &incident_with(|_| {})).unwrap();
    assert_eq!(
        changed_fields(&base.field_hashes, &p.field_hashes),
        ["status", "related"]
    );
}

#[test]
fn incident_statuses_and_comment_shapes() {
    for (status, expected) in [
        ("active", "new"),
        ("inProgress", "in_progress"),
        ("awaitingAction", "in_progress"),
        ("resolved", "resolved"),
        ("unknownFutureValue", "unknown"),
    ] {
        let item = incident_with(|o| {
            o.insert("status".into(), status.into());
        });
        assert_eq!(
            body(&prepare(SourceKind::Incidents, &item).unwrap())["status"],
            expected
        );
    }
    let item = incident_with(|o| {
        o.insert(
            "comments".into(),
            serde_json::json!([{"comment": "c", "createdByDisplayName": "Ann", "createdDateTime": "2024-01-01T00:00:00Z"}]),
        );
        o.remove("customTags");
        o.insert("tags".into(), serde_json::json!(["t"]));
    });
    let v = body(&prepare(SourceKind::Incidents, &item).unwrap());
    assert_eq!(v["comments"][0]["author"], "Ann");
    assert_eq!(
        v["comments"][0]["created_at"],
        "2024-01-01T00:00:00.0000000Z"
    );
    assert_eq!(v["tags"], serde_json::json!(["t", "Defender Experts"]));

    let e = prepare(
        SourceKind::Incidents,
        &incident_with(|o| {
            o.remove("lastUpdateDateTime");
        }),
    )
    .unwrap_err();
    assert_eq!(e.native_id.as_deref(), Some("2972395"));
}

// ---------------------------------------------------------------------------------------------
// submissions

#[test]
fn every_example_submission_prepares() {
    for (file, list, title, entity) in [
        (
            "graph-emailThreatSubmission-list.json",
            "emailThreats",
            "Email threat submission: This is a spam",
            "email",
        ),
        (
            "graph-urlThreatSubmission-list.json",
            "urlThreats",
            "URL threat submission: http://phishing.contoso.com",
            "url",
        ),
        (
            "graph-fileThreatSubmission-list.json",
            "fileThreats",
            "File threat submission: test.html",
            "file",
        ),
    ] {
        for item in page_items(&reference(file), "value") {
            let p = prepare_submission(list, &item).unwrap();
            assert_eq!(
                p.native_id,
                format!("{list}/49c5ef5b-1f65-444a-e6b9-08d772ea2059")
            );
            assert!(matches!(p.version, VersionInput::State { .. }));
            assert_eq!(p.normalization_error, None);
            assert_shape(&p);
            let v = body(&p);
            assert_eq!(v["title"], title);
            assert_eq!(v["entities"][0]["type"], entity);
            assert_eq!(v["created_at"], "2021-10-10T03:30:18.6890937Z");
            assert_eq!(v["updated_at"], Value::Null);
            assert_eq!(v["severity"], "unknown");
            // Without the list, it is inferred from contentType.
            let inferred = prepare(SourceKind::Submissions, &item).unwrap();
            assert_eq!(inferred.native_id, p.native_id);
            assert_eq!(inferred.body, p.body);
        }
    }
}

#[test]
fn an_email_submission_maps_to_an_email_entity() {
    let item = &page_items(&reference("graph-emailThreatSubmission-list.json"), "value")[0];
    let p = prepare_submission("emailThreats", item).unwrap();
    let v = body(&p);
    assert_eq!(v["status"], "resolved");
    assert_eq!(v["raw_status"], "succeeded");
    assert_eq!(v["category"], "spam");
    assert_eq!(v["determination"], "notSpam");
    assert_eq!(v["detection_source"], "administrator");
    let email = &v["entities"][0];
    assert_eq!(
        email["internet_message_id"],
        "some-internet-message-id@contoso.com"
    );
    assert_eq!(email["sender"], "test@contoso.com");
    assert_eq!(email["sender_ip"], "127.0.0.1");
    assert_eq!(
        email["recipient"],
        "tifc@a830edad9050849EQTPWBJZXODQ.onmicrosoft.com"
    );
    assert_eq!(email["subject"], "This is a spam");
    assert_eq!(email["received_at"], "2021-10-09T03:30:18.6890937Z");
    assert_eq!(
        p.links.message_ids,
        ["some-internet-message-id@contoso.com"]
    );
    let kinds: Vec<&str> = v["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "email_sender",
            "email_recipient",
            "internet_message_id",
            "ip"
        ]
    );
}

#[test]
fn the_submission_state_hash_moves_only_with_its_mutable_fields() {
    let base_text = &page_items(&reference("graph-urlThreatSubmission-list.json"), "value")[0];
    let mut v: Value = serde_json::from_str(base_text.get()).unwrap();
    let state = |v: &Value| match prepare_submission("urlThreats", &raw(&v.to_string()))
        .unwrap()
        .version
    {
        VersionInput::State { hash } => hash,
        other => panic!("submissions have state versions, not {other:?}"),
    };
    let base = state(&v);
    assert_eq!(base, state(&serde_json::from_str(base_text.get()).unwrap()));
    v["category"] = "spam".into(); // not a mutable field
    assert_eq!(state(&v), base);
    v["result"]["detail"] = "phishing".into();
    let after_result = state(&v);
    assert_ne!(after_result, base);
    v["status"] = "succeeded".into();
    assert_ne!(state(&v), after_result);
    v["adminReview"] = serde_json::json!({"reviewResult": "phishing"});
    assert_ne!(state(&v), after_result);
}

#[test]
fn submissions_need_an_id_and_a_known_list() {
    let e = prepare(SourceKind::Submissions, &raw(r#"{"status":"running"}"#)).unwrap_err();
    assert_eq!(e.reason, "missing id");
    let anonymous = raw(r#"{"id":"x","status":"running","webUrl":"http://a.test"}"#);
    let e = prepare(SourceKind::Submissions, &anonymous).unwrap_err();
    assert_eq!(e.native_id.as_deref(), Some("x"));
    let p = prepare_submission("urlThreats", &anonymous).unwrap();
    assert_eq!(p.native_id, "urlThreats/x");
    assert_eq!(body(&p)["status"], "in_progress");
    assert_eq!(body(&p)["entities"][0]["url"], "http://a.test");
    // An odd `result` is noted, not fatal, and still hashed.
    let odd = raw(r#"{"id":"y","contentType":"url","result":"weird"}"#);
    let p = prepare(SourceKind::Submissions, &odd).unwrap();
    assert!(p.normalization_error.unwrap().starts_with("result:"));
}

// ---------------------------------------------------------------------------------------------
// Cloud Apps

fn mda_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Box<RawValue> {
    let mut v: Value = serde_json::from_str(&reference("mda-alert-fetch.json")).unwrap();
    edit(v.as_object_mut().unwrap());
    raw(&v.to_string())
}

#[test]
fn every_example_cloud_apps_alert_prepares() {
    let mut items = page_items(&reference("mda-alerts-list.json"), "data");
    items.push(raw(&reference("mda-alert-fetch.json")));
    for item in &items {
        let p = prepare(SourceKind::CloudApps, item).unwrap();
        assert_eq!(p.normalization_error, None);
        assert_shape(&p);
        assert_eq!(p.native_id, "603f704aaf7417985bbf3b22");
        assert_eq!(
            p.links.provider_alert_id.as_deref(),
            Some("603f704aaf7417985bbf3b22")
        );
        assert!(matches!(p.version, VersionInput::State { .. }));
        let v = body(&p);
        assert_eq!(v["title"], "Honeytoken activity");
        assert_eq!(v["product"], "microsoftDefenderForCloudApps");
        assert_eq!(v["severity"], "medium");
        assert_eq!(v["status"], "in_progress");
        assert_eq!(v["raw_status"], "READ/OPEN");
        assert_eq!(v["classification"], Value::Null);
        assert_eq!(v["created_at"], "2021-05-25T11:25:16.4750000Z");
        assert_eq!(v["resolved_at"], "2021-05-13T14:02:34.9040000Z");
        assert_eq!(
            v["links"]["portal"],
            "https://contoso.portal.cloudappsecurity.com/#/alerts/603f704aaf7417985bbf3b22"
        );
        assert_eq!(v["comments"], serde_json::json!([]));
        let types: Vec<&str> = v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "user",
                "device",
                "cloud_app",
                "device",
                "other",
                "device",
                "device",
                "other"
            ]
        );
        assert_eq!(v["entities"][0]["upn"], "user1@contoso.com");
        assert_eq!(v["entities"][0]["account_name"], "user1");
        assert_eq!(v["entities"][0]["roles"], serde_json::json!(["Source"]));
        assert_eq!(v["entities"][2]["app_id"], "20940");
        assert_eq!(v["entities"][2]["name"], "Active Directory");
        assert_eq!(v["entities"][4]["raw"]["policyType"], "ANOMALY_DETECTION");
        let indicators: Vec<String> = v["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}={}",
                    i["type"].as_str().unwrap(),
                    i["value"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            indicators,
            [
                "user=user1@contoso.com",
                "host=DC3",
                "host=DC4",
                "host=Client1",
                "host=DC1"
            ]
        );
    }
}

#[test]
fn cloud_apps_resolutions_severities_and_state() {
    for (resolution, status, classification) in [
        (1, "resolved", Value::Null),
        (2, "resolved", Value::Null),
        (3, "resolved", "falsePositive".into()),
        (4, "resolved", "informationalExpectedActivity".into()),
        (5, "resolved", "truePositive".into()),
    ] {
        let p = prepare(
            SourceKind::CloudApps,
            &mda_with(|o| {
                o.insert("resolutionStatusValue".into(), resolution.into());
            }),
        )
        .unwrap();
        let v = body(&p);
        assert_eq!(v["status"], status);
        assert_eq!(v["classification"], classification);
    }
    for (value, severity) in [
        (0, "low"),
        (1, "medium"),
        (2, "high"),
        (3, "informational"),
        (9, "unknown"),
    ] {
        let p = prepare(
            SourceKind::CloudApps,
            &mda_with(|o| {
                o.insert("severityValue".into(), value.into());
            }),
        )
        .unwrap();
        assert_eq!(body(&p)["severity"], severity);
    }
    for (value, status) in [(0, "new"), (1, "in_progress"), (2, "resolved")] {
        let p = prepare(
            SourceKind::CloudApps,
            &mda_with(|o| {
                o.insert("statusValue".into(), value.into());
            }),
        )
        .unwrap();
        assert_eq!(body(&p)["status"], status);
    }

    let state = |item: &RawValue| match prepare(SourceKind::CloudApps, item).unwrap().version {
        VersionInput::State { hash } => hash,
        other => panic!("cloud apps have state versions, not {other:?}"),
    };
    let base = state(&mda_with(|_| {}));
    assert_eq!(
        base,
        state(&mda_with(|o| {
            o.insert("threatScore".into(), 99.into());
        }))
    );
    for (field, value) in [
        ("statusValue", Value::from(2)),
        ("resolutionStatusValue", 2.into()),
        ("severityValue", 2.into()),
        ("resolveTime", "2021-06-01T00:00:00Z".into()),
        ("handledByUser", "someone@contoso.com".into()),
        ("comment", "closed".into()),
    ] {
        assert_ne!(
            base,
            state(&mda_with(|o| {
                o.insert(field.into(), value.clone());
            })),
            "{field}"
        );
    }
}

#[test]
fn cloud_apps_ids_and_comments() {
    let numeric = mda_with(|o| {
        o.insert("_id".into(), 15795464.into());
        o.insert("comment".into(), "benign test".into());
    });
    let p = prepare(SourceKind::CloudApps, &numeric).unwrap();
    assert_eq!(p.native_id, "15795464");
    assert_eq!(
        body(&p)["comments"],
        serde_json::json!([{"text": "benign test", "author": "administrator@contoso.com", "created_at": null}])
    );
    let e = prepare(
        SourceKind::CloudApps,
        &mda_with(|o| {
            o.remove("_id");
        }),
    )
    .unwrap_err();
    assert_eq!(e.reason, "missing _id");
    // A wrongly typed mutable field is noted and the alert still prepared.
    let odd = mda_with(|o| {
        o.insert("severityValue".into(), serde_json::json!({"x": 1}));
    });
    let p = prepare(SourceKind::CloudApps, &odd).unwrap();
    assert!(p.normalization_error.unwrap().starts_with("severityValue:"));
}

#[test]
fn source_names_and_kinds() {
    let all = [
        SourceKind::Alerts,
        SourceKind::Incidents,
        SourceKind::Submissions,
        SourceKind::CloudApps,
    ];
    let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = all.iter().map(|s| s.kind()).collect();
    assert_eq!(names, ["alerts", "incidents", "submissions", "cloud_apps"]);
    assert_eq!(kinds, ["alert", "incident", "submission", "alert"]);
}

/// µs per call of `f`: the best of 7 rounds of `n` calls, because the build machine is shared
/// and a round that loses the CPU says nothing about the code.
fn best_of_rounds(n: u32, f: &mut dyn FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    (0..7)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Run with `cargo test --release -- --ignored --nocapture bench_`.
#[test]
#[ignore]
fn bench_prepare_alert() {
    let text = reference("graph-alert-get.json");
    let item = raw(&text);
    let body_len = prepare(SourceKind::Alerts, &item)
        .unwrap()
        .body
        .json()
        .unwrap()
        .len();
    let per = best_of_rounds(10_000, &mut || {
        std::hint::black_box(prepare(SourceKind::Alerts, std::hint::black_box(&item)).unwrap());
    });
    println!(
        "prepare(alerts), graph-alert-get.json ({} bytes in, {body_len} bytes body): {per:.2} µs/alert",
        text.len(),
    );

    let p = prepare(SourceKind::Alerts, &item).unwrap();
    let per = best_of_rounds(10_000, &mut || {
        let version = crate::time::format_ticks(1);
        let id = envelope::event_id("tenant", "alerts", &p.native_id, &version);
        let out = envelope::render(
            &envelope::Envelope {
                event_id: &id,
                alert_id: "tenant:alerts:x",
                kind: "alert",
                revision: 1,
                change: envelope::Change::Created,
                changed_fields: &[],
                observed_at: "2024-01-01T00:00:00.0000000Z",
                historical: false,
                tenant_id: "tenant",
                tenant_name: "Contoso",
                source: "alerts",
                native_id: &p.native_id,
                version: &version,
            },
            &p.body.json().unwrap(),
        );
        std::hint::black_box(out);
    });
    println!("event_id + render: {per:.2} µs/event");
}

// ---------------------------------------------------------------------------------------------
// Evidence fields against Microsoft's v1.0 schema

/// A deserializer that only records the field names a derived `Deserialize` asks for: exactly
/// the JSON names serde reads (renames applied), so the test cannot drift from the structs.
struct FieldNames(std::cell::RefCell<Vec<&'static str>>);

impl<'de> serde::Deserializer<'de> for &FieldNames {
    type Error = serde::de::value::Error;
    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field names only"))
    }
    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.borrow_mut().extend_from_slice(fields);
        Err(serde::de::Error::custom("field names only"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn field_names<T: serde::Deserialize<'static>>() -> Vec<&'static str> {
    let names = FieldNames(std::cell::RefCell::new(Vec::new()));
    let _ = T::deserialize(&names);
    names.0.into_inner()
}

/// The schema file: `types` by short name, each with `baseType` and `properties`.
struct Schema {
    types: serde_json::Map<String, Value>,
    enums: serde_json::Map<String, Value>,
    evidence: Vec<String>,
}

impl Schema {
    fn load() -> Schema {
        let s: Value = serde_json::from_str(&reference("graph-security-schema-v1.0.json")).unwrap();
        let e: Value = serde_json::from_str(&reference("graph-security-enums-v1.0.json")).unwrap();
        Schema {
            types: s["types"].as_object().unwrap().clone(),
            enums: e["enums"].as_object().unwrap().clone(),
            evidence: s["evidenceODataTypes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().rsplit('.').next().unwrap().to_string())
                .collect(),
        }
    }

    /// A type's properties with those inherited from its bases, name → type.
    fn properties(&self, name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            let t = &self.types[&n];
            for (p, ty) in t["properties"].as_object().unwrap() {
                out.push((p.clone(), ty.as_str().unwrap().to_string()));
            }
            next = t["baseType"]
                .as_str()
                .map(|b| b.rsplit('.').next().unwrap().to_string());
        }
        out
    }

    /// A plausible value of a schema type: the kind of value Microsoft would send.
    fn sample(&self, ty: &str, depth: usize) -> Value {
        if let Some(inner) = ty
            .strip_prefix("Collection(")
            .and_then(|t| t.strip_suffix(')'))
        {
            return Value::Array(vec![self.sample(inner, depth)]);
        }
        let short = ty.rsplit('.').next().unwrap_or(ty);
        match ty {
            "Edm.DateTimeOffset" => return Value::from("2024-05-06T07:08:09Z"),
            "Edm.Int32" | "Edm.Int64" | "Edm.Double" => return Value::from(7),
            "Edm.Boolean" => return Value::from(true),
            _ if ty.starts_with("Edm.") => return Value::from(format!("v-{short}")),
            _ => {}
        }
        if let Some(e) = self.enums.get(short) {
            let members: Vec<&str> = e["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            // A member the mapping can use (sha256 for a hash), not `unknown`.
            let pick = ["sha256", "compromised", "malicious"]
                .into_iter()
                .find(|m| members.contains(m))
                .or(members.get(1).copied())
                .unwrap_or("unknown");
            return Value::from(pick);
        }
        if self.types.contains_key(short) && depth < 3 {
            let mut o = serde_json::Map::new();
            for (p, t) in self.properties(short) {
                o.insert(p, self.sample(&t, depth + 1));
            }
            return Value::Object(o);
        }
        Value::from(format!("v-{short}"))
    }
}

/// The entity an evidence item maps to, its JSON without the raw copy `other` keeps, and the
/// notes it added.
fn map_one(json: &Value) -> (String, Value, usize) {
    let raw = raw(&json.to_string());
    let mut errors = Vec::new();
    let entity = entities::from_evidence(&raw, &mut errors, 0);
    let mut out = Vec::new();
    json::WriteJson::write_json(&entity, &mut out);
    let mut v: Value = serde_json::from_slice(&out).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.remove("raw");
    }
    (entity.type_name().to_string(), v, errors.len())
}

#[test]
fn the_normalizer_reads_only_fields_the_schema_defines_for_each_evidence_type() {
    let schema = Schema::load();
    assert_eq!(
        schema.evidence.len(),
        48,
        "API.md §3 counts 48 evidence types"
    );

    // Nested objects: every field read from them is a property of their schema type.
    let nested: [(&str, Vec<&str>); 3] = [
        (
            "userAccount",
            field_names::<entities::UserAccountIn<'static>>(),
        ),
        (
            "fileDetails",
            field_names::<entities::FileDetailsIn<'static>>(),
        ),
        (
            "emailSender",
            field_names::<entities::EmailSenderIn<'static>>(),
        ),
    ];
    let mut wrong = Vec::new();
    for (ty, fields) in &nested {
        assert!(!fields.is_empty(), "{ty}: no field names captured");
        let props: Vec<String> = schema.properties(ty).into_iter().map(|(p, _)| p).collect();
        for f in fields {
            if !props.iter().any(|p| p == f) {
                wrong.push(format!("{ty}.{f}"));
            }
        }
    }

    // Top level: each field serde reads, given to each evidence type that does not define it,
    // must change nothing. Tried beside a complete item (every schema property set) and beside
    // a bare one (so a fallback such as `p2Sender` or `sender` shows too), in every JSON shape.
    let fields: Vec<&str> = field_names::<entities::EvidenceIn<'static>>()
        .into_iter()
        .filter(|f| *f != "@odata.type")
        .collect();
    assert!(fields.len() > 30, "captured {fields:?}");
    let nested_names: Vec<&str> = nested.iter().flat_map(|(_, f)| f.clone()).collect();
    let object_of = |v: Value| {
        Value::Object(
            nested_names
                .iter()
                .map(|n| (n.to_string(), v.clone()))
                .collect(),
        )
    };
    let time = Value::from("2024-05-06T07:08:09Z");
    let shapes = [
        time.clone(),
        Value::from(42),
        Value::Array(vec![time.clone()]),
        object_of(time),
        object_of(Value::from(1)),
    ];
    let mut typed = Vec::new();
    for ty in &schema.evidence {
        let props = schema.properties(ty);
        let odata = Value::from(format!("#microsoft.graph.security.{ty}"));
        let mut full = serde_json::Map::new();
        full.insert("@odata.type".into(), odata.clone());
        for (p, t) in &props {
            full.insert(p.clone(), schema.sample(t, 0));
        }
        let full = Value::Object(full);
        let bare = serde_json::json!({ "@odata.type": odata });
        let (full_type, _, full_errors) = map_one(&full);
        assert_eq!(
            full_errors, 0,
            "{ty}: a schema-shaped item is malformed: {full}"
        );
        for base in [&full, &bare] {
            let (type0, out0, errors0) = map_one(base);
            for f in &fields {
                if props.iter().any(|(p, _)| p == f) {
                    continue;
                }
                for shape in &shapes {
                    let mut item = base.clone();
                    item[*f] = shape.clone();
                    // A shape that does not parse is a malformed item, not a field read.
                    let text = item.to_string();
                    if serde_json::from_str::<entities::EvidenceIn<'_>>(&text).is_err() {
                        continue;
                    }
                    let (t, out, errors) = map_one(&item);
                    if t == type0 && errors == errors0 && out != out0 {
                        wrong.push(format!("{ty}.{f}"));
                        break;
                    }
                }
            }
        }
        if full_type != "other" {
            typed.push(ty.as_str());
        }
    }
    // The walk means something only if the mapped types map: a complete item of each is typed.
    typed.sort_unstable();
    assert_eq!(
        typed,
        [
            "analyzedMessageEvidence",
            "cloudApplicationEvidence",
            "deviceEvidence",
            "fileEvidence",
            "fileHashEvidence",
            "ipEvidence",
            "mailboxEvidence",
            "oauthApplicationEvidence",
            "processEvidence",
            "registryKeyEvidence",
            "registryValueEvidence",
            "submissionMailEvidence",
            "urlEvidence",
            "userEvidence",
        ]
    );
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "the normalizer reads fields the v1.0 schema does not define: {wrong:?}"
    );
}

#[test]
fn submission_mail_evidence_maps_its_v1_fields() {
    let (t, v, errors) = map_one(&serde_json::json!({
        "@odata.type": "#microsoft.graph.security.submissionMailEvidence",
        "createdDateTime": "2024-05-06T07:00:00Z",
        "roles": ["contextual"],
        "verdict": "suspicious",
        "networkMessageId": "7b2d-net",
        "recipient": "alice@contoso.com",
        "reportType": "Junk",
        "sender": "bob@fabrikam.test",
        "senderIp": "203.0.113.7",
        "subject": "Invoice",
        "submissionDateTime": "2024-05-06T07:08:09.1234567Z",
        "submissionId": "e2b1-sub",
        "submitter": "alice@contoso.com"
    }));
    assert_eq!((t.as_str(), errors), ("email", 0), "{v}");
    for (k, want) in [
        ("network_message_id", "7b2d-net"),
        ("recipient", "alice@contoso.com"),
        ("sender", "bob@fabrikam.test"),
        ("sender_ip", "203.0.113.7"),
        ("subject", "Invoice"),
        ("submission_id", "e2b1-sub"),
        ("submitted_at", "2024-05-06T07:08:09.1234567Z"),
        ("report_type", "Junk"),
        ("submitter", "alice@contoso.com"),
        ("verdict", "suspicious"),
    ] {
        assert_eq!(v[k], want, "{k} in {v}");
    }
    assert_eq!(v["roles"], serde_json::json!(["contextual"]));
}
