//! Threat submissions (beta): the three lists, `$skiptoken` paging, filters, status changes,
//! roles.

use std::collections::HashSet;

use m365_sim::Simulator;
use serde_json::{json, Value};

use crate::helpers::*;

const BASE: &str = "/beta/security/threatSubmission";
const LISTS: [&str; 3] = ["emailThreats", "urlThreats", "fileThreats"];

async fn submission_token(sim: &Simulator) -> String {
    app_token(
        sim,
        "submission-reader",
        &["ThreatSubmission.Read.All"],
        GRAPH_SCOPE,
    )
    .await
}

fn email(id: &str, created: &str, status: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.security.emailContentThreatSubmission", "id": id,
           "createdDateTime": created, "contentType": "email", "category": "phishing",
           "status": status, "source": "user", "result": null, "emailSubject": "hi"})
}

#[tokio::test]
async fn every_list_serves_items_shaped_like_microsofts_examples() {
    let sim = start().await;
    let token = submission_token(&sim).await;
    for list in LISTS {
        let made = sim.generate_submissions(TENANT, list, 30, secs_ago(86_400 * 3), secs_ago(0));
        assert_eq!(sim.submission_count(TENANT, list), 30);
        let (s, page) = graph_get(&sim, &token, &format!("{BASE}/{list}"), &[]).await;
        assert_eq!(s, 200, "{page}");
        assert!(page["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with(&format!("$metadata#security/threatSubmission/{list}")));
        let got: HashSet<String> = ids(&page).into_iter().collect();
        assert_eq!(got, made.iter().cloned().collect());
        let content_type = match list {
            "emailThreats" => "email",
            "urlThreats" => "url",
            _ => "file",
        };
        for item in page["value"].as_array().unwrap() {
            assert_eq!(item["contentType"], content_type);
            assert!(item["@odata.type"]
                .as_str()
                .unwrap()
                .starts_with("#microsoft.graph.security."));
            assert_eq!(item["id"].as_str().unwrap().len(), 36);
            assert!(item["createdBy"]["user"]["email"].is_string());
            assert_eq!(item["tenantId"], TENANT);
            assert!(item.get("lastUpdateDateTime").is_none());
            let status = item["status"].as_str().unwrap();
            if status == "notStarted" {
                assert!(item["result"].is_null());
            }
            match list {
                "emailThreats" => {
                    assert!(item.get("emailSubject").is_some() || item.get("subject").is_some());
                    for k in [
                        "recipientEmailAddress",
                        "internetMessageId",
                        "sender",
                        "senderIP",
                        "receivedDateTime",
                        "originalCategory",
                        "attackSimulationInfo",
                        "tenantAllowOrBlockListAction",
                    ] {
                        assert!(item.get(k).is_some(), "{k}: {item}");
                    }
                    if status == "succeeded" {
                        assert!(item["result"]["detectedUrls"].is_array(), "{item}");
                    }
                }
                "urlThreats" => assert!(item["webUrl"].is_string()),
                _ => assert!(item["fileName"].is_string()),
            }
        }
        let one = &made[3];
        let (s, got) = graph_get(&sim, &token, &format!("{BASE}/{list}/{one}"), &[]).await;
        assert_eq!((s, got["id"].as_str()), (200, Some(one.as_str())));
    }
    let (s, _) = graph_get(&sim, &token, &format!("{BASE}/appThreats"), &[]).await;
    assert_eq!(s, 400);
    let (s, _) = graph_get(&sim, &token, &format!("{BASE}/emailThreats/nope"), &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn skiptoken_next_links_walk_every_item_newest_first() {
    let sim = start().await;
    let made: HashSet<String> = sim
        .generate_submissions(TENANT, "emailThreats", 250, secs_ago(86_400), secs_ago(0))
        .into_iter()
        .collect();
    let token = submission_token(&sim).await;
    let path = format!("{BASE}/emailThreats");
    let (s, first) = graph_get(&sim, &token, &path, &[("$count", "true")]).await;
    assert_eq!(s, 200);
    let next = first["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next.contains("$skiptoken="), "{next}");
    assert!(!next.contains("$skip="), "{next}");
    assert!(
        next.contains("count=true"),
        "the other options are kept: {next}"
    );
    let pages = all_pages(first, &token).await;
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["value"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert!(pages.iter().all(|p| p["@odata.count"] == 250));
    let seen: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), made);
    let times: Vec<String> = pages
        .iter()
        .flat_map(|p| p["value"].as_array().unwrap().clone())
        .map(|i| i["createdDateTime"].as_str().unwrap().to_string())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));

    // $top is clamped at 100; smaller pages work.
    let (_, page) = graph_get(&sim, &token, &path, &[("$top", "500")]).await;
    assert_eq!(ids(&page).len(), 100);
    let (_, page) = graph_get(&sim, &token, &path, &[("$top", "40")]).await;
    let pages = all_pages(page, &token).await;
    assert_eq!(pages.len(), 7);
    assert_eq!(pages.iter().flat_map(ids).collect::<Vec<_>>(), seen);

    // A token the simulator did not issue, and $skip, are refused.
    for q in [
        ("$skiptoken", "garbage!"),
        ("$skiptoken", "bm90LWEtdG9rZW4"),
        ("$skip", "10"),
    ] {
        let (s, err) = graph_get(&sim, &token, &path, &[q]).await;
        assert_eq!(s, 400, "{q:?}: {err}");
        assert_eq!(err["error"]["code"], "BadRequest");
    }
}

#[tokio::test]
async fn created_date_time_status_category_and_source_filter() {
    let sim = start().await;
    for (i, status) in ["succeeded", "running", "notStarted", "succeeded"]
        .iter()
        .enumerate()
    {
        sim.insert_submission(
            TENANT,
            "emailThreats",
            email(
                &format!("s{i}"),
                &format!("2024-05-01T12:00:0{i}.5Z"),
                status,
            ),
        );
    }
    let token = submission_token(&sim).await;
    let path = format!("{BASE}/emailThreats");
    let list = |f: &'static str| {
        let (sim, token, path) = (&sim, &token, &path);
        async move {
            let (s, page) = graph_get(sim, token, path, &[("$filter", f)]).await;
            assert_eq!(s, 200, "{f}: {page}");
            ids(&page)
        }
    };
    assert_eq!(
        list("createdDateTime ge 2024-05-01T12:00:01.5Z").await,
        ["s3", "s2", "s1"]
    );
    assert_eq!(
        list(
            "createdDateTime gt 2024-05-01T12:00:01.5Z and createdDateTime lt 2024-05-01T12:00:03Z"
        )
        .await,
        ["s2"]
    );
    assert_eq!(
        list("createdDateTime le 2024-05-01T12:00:00.5Z").await,
        ["s0"]
    );
    assert_eq!(list("status eq 'succeeded'").await, ["s3", "s0"]);
    assert_eq!(
        list("status eq 'notStarted' or status eq 'running'").await,
        ["s2", "s1"]
    );
    assert_eq!(
        list("category eq 'phishing' and source eq 'user'")
            .await
            .len(),
        4
    );
    let (s, err) = graph_get(&sim, &token, &path, &[("$filter", "sender eq 'x'")]).await;
    assert_eq!(s, 400, "{err}");
}

#[tokio::test]
async fn status_changes_are_visible_without_any_last_modified_field() {
    let sim = start().await;
    let token = submission_token(&sim).await;
    for list in LISTS {
        let id = sim
            .generate_submissions(TENANT, list, 5, secs_ago(3600), secs_ago(0))
            .remove(2);
        let created = sim.submission(TENANT, list, &id).unwrap()["createdDateTime"].clone();
        assert!(sim.update_submission(
            TENANT,
            list,
            &id,
            json!({"status": "notStarted", "result": null})
        ));
        assert!(sim.update_submission(TENANT, list, &id, json!({"status": "running"})));
        let url = format!("{BASE}/{list}/{id}");
        assert_eq!(
            graph_get(&sim, &token, &url, &[]).await.1["status"],
            "running"
        );
        assert!(sim.update_submission(
            TENANT,
            list,
            &id,
            json!({"status": "succeeded", "result": {"detail": "allowedByTenant", "category": "notJunk",
                   "userMailboxSetting": null, "detectedUrls": [], "detectedFiles": []}})
        ));
        let (_, got) = graph_get(&sim, &token, &url, &[]).await;
        assert_eq!(got["status"], "succeeded");
        assert_eq!(got["result"]["detail"], "allowedByTenant");
        assert_eq!(got["createdDateTime"], created);
        let (_, page) = graph_get(
            &sim,
            &token,
            &format!("{BASE}/{list}"),
            &[("$filter", "status eq 'succeeded'")],
        )
        .await;
        assert!(ids(&page).contains(&id));
        assert_eq!(sim.submission_count(TENANT, list), 5);
    }
    assert!(!sim.update_submission(TENANT, "emailThreats", "nope", json!({})));
    assert!(!sim.update_submission(TENANT, "appThreats", "nope", json!({})));
}

#[tokio::test]
async fn a_token_without_threat_submission_roles_is_403() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    let (s, err) = graph_get(&sim, &token, &format!("{BASE}/emailThreats"), &[]).await;
    assert_eq!(s, 403, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ThreatSubmission.Read.All"));
    let rw = app_token(
        &sim,
        "submission-writer",
        &["ThreatSubmission.ReadWrite.All"],
        GRAPH_SCOPE,
    )
    .await;
    assert_eq!(
        graph_get(&sim, &rw, &format!("{BASE}/fileThreats"), &[])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_list_told_to_ignore_its_filter_answers_everything_and_a_stale_skiptoken_answers_400() {
    let sim = start().await;
    sim.generate_submissions(TENANT, "urlThreats", 150, secs_ago(86_400), secs_ago(0));
    let token = submission_token(&sim).await;
    let path = format!("{BASE}/urlThreats");
    // A filter no item matches.
    let filter = [
        ("$filter", "createdDateTime lt 2000-01-01T00:00:00Z"),
        ("$count", "true"),
    ];
    let (s, page) = graph_get(&sim, &token, &path, &filter).await;
    assert_eq!((s, page["@odata.count"].as_u64()), (200, Some(0)));
    sim.set_faults(
        TENANT,
        m365_sim::Faults {
            ignore_submission_filter: true,
            stale_skiptoken_next: 1,
            ..Default::default()
        },
    );
    let (s, page) = graph_get(&sim, &token, &path, &filter).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["@odata.count"], 150, "the filter is ignored, silently");
    let next = page["@odata.nextLink"].as_str().unwrap().to_string();
    let (s, err) = get_json(&next, &token).await;
    assert_eq!(s, 400, "{err}");
    assert_eq!(err["error"]["code"], "BadRequest");
    // Only the next one: asked again, the skiptoken is served.
    let (s, page) = get_json(&next, &token).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 50);
}
