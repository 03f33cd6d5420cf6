//! Incidents: the `$top` limit of 50, `$expand=alerts`, the expand fault, filters and paging,
//! roles, updates.

use std::collections::HashSet;

use m365_sim::{Faults, Simulator};
use serde_json::{json, Value};

use crate::helpers::*;

const PATH: &str = "/v1.0/security/incidents";

async fn incident_token(sim: &Simulator) -> String {
    app_token(
        sim,
        "incident-reader",
        &["SecurityIncident.Read.All"],
        GRAPH_SCOPE,
    )
    .await
}

fn incident(id: &str, last_update: &str, status: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.security.incident", "id": id, "displayName": format!("incident {id}"),
           "createdDateTime": last_update, "lastUpdateDateTime": last_update, "status": status,
           "severity": "medium", "classification": "unknown", "determination": "unknown",
           "assignedTo": null, "customTags": [], "systemTags": [], "comments": []})
}

fn alert_in(id: &str, incident: &str, last_update: &str) -> Value {
    let mut a = alert(id, last_update, "microsoftDefenderForEndpoint");
    a["incidentId"] = json!(incident);
    a
}

#[tokio::test]
async fn top_above_50_is_the_400_seen_in_the_wild() {
    let sim = start().await;
    sim.generate_incidents(TENANT, 60, secs_ago(3600), secs_ago(0));
    let token = incident_token(&sim).await;
    let (s, body) = graph_get(&sim, &token, PATH, &[("$top", "51")]).await;
    assert_eq!(s, 400, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], "");
    assert_eq!(
        err["message"],
        "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '51'."
    );
    assert!(err["message"].as_str().unwrap().contains(
        "The limit of '50' for Top query has been exceeded. The value from the incoming request is '51'."
    ));
    assert_eq!(err["details"], json!([]));
    assert!(err["innerError"]["request-id"].is_string());
    assert!(err["innerError"]["date"].is_string());
    // Same keys as graph-error-incidents-top-exceeded.json.
    let keys: HashSet<&str> = err
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["code", "message", "details", "innerError"])
    );

    let (s, page) = graph_get(&sim, &token, PATH, &[("$top", "50")]).await;
    assert_eq!((s, ids(&page).len()), (200, 50));
    // The default page is 50 as well.
    let (_, page) = graph_get(&sim, &token, PATH, &[]).await;
    assert_eq!(ids(&page).len(), 50);
    assert!(page["@odata.nextLink"].is_string());
}

#[tokio::test]
async fn expand_alerts_embeds_the_alerts_whose_incident_id_matches() {
    let sim = start().await;
    sim.insert_incident(TENANT, incident("1001", "2024-05-01T12:00:00Z", "active"));
    sim.insert_incident(
        TENANT,
        incident("1002", "2024-05-01T13:00:00Z", "inProgress"),
    );
    sim.insert_incident(TENANT, incident("1003", "2024-05-01T14:00:00Z", "active"));
    sim.insert_alert(TENANT, alert_in("a1", "1001", "2024-05-01T11:00:00Z"));
    sim.insert_alert(TENANT, alert_in("a2", "1001", "2024-05-01T11:30:00Z"));
    sim.insert_alert(TENANT, alert_in("b1", "1002", "2024-05-01T12:30:00Z"));
    sim.insert_alert(TENANT, alert_in("x1", "9999", "2024-05-01T12:30:00Z"));
    let token = incident_token(&sim).await;

    let (s, page) = graph_get(&sim, &token, PATH, &[("$expand", "alerts")]).await;
    assert_eq!(s, 200, "{page}");
    assert!(page["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("#security/incidents(alerts())"));
    assert_eq!(ids(&page), ["1003", "1002", "1001"]);
    let alert_ids = |inc: &Value| -> Vec<String> {
        inc["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    let value = page["value"].as_array().unwrap();
    assert_eq!(alert_ids(&value[0]), Vec::<String>::new());
    assert_eq!(alert_ids(&value[1]), ["b1"]);
    assert_eq!(alert_ids(&value[2]), ["a2", "a1"]);
    assert_eq!(value[2]["alerts"][0]["incidentId"], "1001");

    // Without $expand there is no alerts member.
    let (_, page) = graph_get(&sim, &token, PATH, &[]).await;
    assert!(page["value"][0].get("alerts").is_none());

    // The single get and the alerts navigation agree.
    let (s, one) = graph_get(
        &sim,
        &token,
        &format!("{PATH}/1001"),
        &[("$expand", "alerts")],
    )
    .await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["id"], "1001");
    assert_eq!(alert_ids(&one), ["a2", "a1"]);
    let (s, nav) = graph_get(&sim, &token, &format!("{PATH}/1001/alerts"), &[]).await;
    assert_eq!((s, ids(&nav)), (200, vec!["a2".to_string(), "a1".into()]));

    // An alert moved to another incident follows.
    sim.update_alert(TENANT, "a1", json!({"incidentId": "1003"}));
    let (_, one) = graph_get(
        &sim,
        &token,
        &format!("{PATH}/1003"),
        &[("$expand", "alerts")],
    )
    .await;
    assert_eq!(alert_ids(&one), ["a1"]);

    let (s, err) = graph_get(&sim, &token, PATH, &[("$expand", "evidence")]).await;
    assert_eq!(s, 400, "{err}");
}

#[tokio::test]
async fn generated_incidents_take_the_ids_of_generated_alerts() {
    let sim = start().await;
    sim.generate_alerts(TENANT, 200, secs_ago(7200), secs_ago(0));
    let ids_generated = sim.generate_incidents(TENANT, 20, secs_ago(3600), secs_ago(0));
    assert_eq!(sim.incident_count(TENANT), 20);
    let token = incident_token(&sim).await;
    let (s, page) = graph_get(&sim, &token, PATH, &[("$expand", "alerts")]).await;
    assert_eq!(s, 200);
    let got: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(got, ids_generated.iter().cloned().collect());
    for inc in page["value"].as_array().unwrap() {
        let alerts = inc["alerts"].as_array().unwrap();
        assert!(!alerts.is_empty(), "{}", inc["id"]);
        for a in alerts {
            assert_eq!(a["incidentId"], inc["id"]);
        }
        // Shape of graph-incidents-list.json.
        assert!(inc["id"].as_str().unwrap().parse::<u64>().is_ok());
        for k in [
            "displayName",
            "severity",
            "status",
            "classification",
            "determination",
            "incidentWebUrl",
            "tenantId",
            "systemTags",
            "comments",
            "redirectIncidentId",
            "assignedTo",
        ] {
            assert!(inc.get(k).is_some(), "{k} missing: {inc}");
        }
        assert!(inc.get("customTags").is_some() || inc.get("tags").is_some());
        let (c, u) = (
            inc["createdDateTime"].as_str().unwrap(),
            inc["lastUpdateDateTime"].as_str().unwrap(),
        );
        assert!(c <= u);
        assert_eq!(u.len(), "2021-09-30T09:35:45.1133333Z".len());
        assert_eq!(inc["tenantId"], TENANT);
    }
}

#[tokio::test]
async fn expand_fails_answers_500_only_with_expand() {
    let sim = start().await;
    sim.generate_incidents(TENANT, 5, secs_ago(3600), secs_ago(0));
    let token = incident_token(&sim).await;
    sim.set_faults(
        TENANT,
        Faults {
            expand_fails: true,
            ..Default::default()
        },
    );
    let (s, err) = graph_get(&sim, &token, PATH, &[("$expand", "alerts")]).await;
    assert_eq!(s, 500, "{err}");
    assert!(err["error"]["code"].is_string());
    assert!(err["error"]["innerError"]["request-id"].is_string());
    let (s, page) = graph_get(&sim, &token, PATH, &[]).await;
    assert_eq!((s, ids(&page).len()), (200, 5));
    sim.set_faults(TENANT, Faults::default());
    let (s, _) = graph_get(&sim, &token, PATH, &[("$expand", "alerts")]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn filters_and_next_links_walk_every_matching_incident_newest_first() {
    let sim = start().await;
    let all = sim.generate_incidents(TENANT, 300, secs_ago(86_400), secs_ago(0));
    assert_eq!(all.len(), 300);
    let token = incident_token(&sim).await;
    let since = "2000-01-01T00:00:00Z";
    let f = format!("status eq 'active' and lastUpdateDateTime ge {since}");
    let (s, first) = graph_get(
        &sim,
        &token,
        PATH,
        &[("$filter", f.as_str()), ("$count", "true")],
    )
    .await;
    assert_eq!(s, 200, "{first}");
    let count = first["@odata.count"].as_u64().unwrap() as usize;
    let pages = all_pages(first, &token).await;
    let mut seen = Vec::new();
    let mut times = Vec::new();
    for p in &pages {
        assert!(p["value"].as_array().unwrap().len() <= 50);
        for inc in p["value"].as_array().unwrap() {
            assert_eq!(inc["status"], "active");
            seen.push(inc["id"].as_str().unwrap().to_string());
            times.push(inc["lastUpdateDateTime"].as_str().unwrap().to_string());
        }
    }
    let expected = all
        .iter()
        .filter(|id| sim.incident(TENANT, id).unwrap()["status"] == "active")
        .count();
    assert!(expected > 50, "enough active incidents to page: {expected}");
    assert_eq!((seen.len(), count), (expected, expected));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    assert!(times.windows(2).all(|w| w[0] >= w[1]));

    // $skip works directly too.
    let (_, skipped) = graph_get(
        &sim,
        &token,
        PATH,
        &[("$filter", f.as_str()), ("$skip", "10"), ("$top", "5")],
    )
    .await;
    assert_eq!(ids(&skipped), seen[10..15]);
    // ... up to Microsoft's limit of 500, and 400 above it.
    let (s, _) = graph_get(&sim, &token, PATH, &[("$skip", "500"), ("$top", "5")]).await;
    assert_eq!(s, 200);
    let (s, err) = graph_get(&sim, &token, PATH, &[("$skip", "501"), ("$top", "5")]).await;
    assert_eq!(s, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("500"));

    // Other properties are refused.
    let (s, err) = graph_get(&sim, &token, PATH, &[("$filter", "displayName eq 'x'")]).await;
    assert_eq!(s, 400, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("displayName"));
    let (s, _) = graph_get(&sim, &token, PATH, &[("$filter", "status eq 'new'")]).await;
    assert_eq!(s, 400, "'new' is an alert status, not an incident status");
}

#[tokio::test]
async fn updates_move_an_incident_to_the_top_with_a_strictly_later_time() {
    let sim = start().await;
    let ids_generated = sim.generate_incidents(TENANT, 30, secs_ago(3600), secs_ago(60));
    let id = &ids_generated[7];
    let before = sim.incident(TENANT, id).unwrap()["lastUpdateDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.update_incident(
        TENANT,
        id,
        json!({"status": "resolved", "classification": "truePositive"})
    ));
    let t1 = sim.incident(TENANT, id).unwrap()["lastUpdateDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.update_incident(TENANT, id, json!({})));
    let t2 = sim.incident(TENANT, id).unwrap()["lastUpdateDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(before < t1 && t1 < t2, "{before} {t1} {t2}");
    assert!(!sim.update_incident(TENANT, "nope", json!({})));
    let token = incident_token(&sim).await;
    let (_, page) = graph_get(
        &sim,
        &token,
        PATH,
        &[(
            "$filter",
            "status eq 'resolved' and classification eq 'truePositive'",
        )],
    )
    .await;
    assert_eq!(ids(&page).first(), Some(id));
    assert_eq!(page["value"][0]["lastUpdateDateTime"], t2.as_str());

    // Redirects name the surviving incident.
    assert!(sim.update_incident(
        TENANT,
        &ids_generated[0],
        json!({"status": "redirected", "redirectIncidentId": ids_generated[1]})
    ));
    let (_, one) = graph_get(&sim, &token, &format!("{PATH}/{}", ids_generated[0]), &[]).await;
    assert_eq!(one["status"], "redirected");
    assert_eq!(one["redirectIncidentId"], ids_generated[1].as_str());
}

#[tokio::test]
async fn a_token_without_security_incident_roles_is_403() {
    let sim = start().await;
    // The default app has SecurityAlert.Read.All only.
    let token = graph_token(&sim).await;
    let (s, err) = graph_get(&sim, &token, PATH, &[]).await;
    assert_eq!(s, 403, "{err}");
    assert_eq!(err["error"]["code"], "Forbidden");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SecurityIncident.Read.All"));
    let rw = app_token(
        &sim,
        "incident-writer",
        &["SecurityIncident.ReadWrite.All"],
        GRAPH_SCOPE,
    )
    .await;
    assert_eq!(graph_get(&sim, &rw, PATH, &[]).await.0, 200);
    let (s, _) = graph_get(&sim, &rw, &format!("{PATH}/404404"), &[]).await;
    assert_eq!(s, 404);
}
