//! The other three sources: incidents, threat submissions and Defender for Cloud Apps alerts,
//! which sources are polled, and a permission missing for one of them.

use std::time::{Duration, SystemTime};

use m365_sim::{Faults, SimConfig};
use serde_json::json;

use crate::helpers::*;

const ONLY: &str = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n";

/// Settings with the Cloud Apps source on (at the simulator's portal URL) and `extra` sources.
fn with_cloud_apps(
    sim: &m365_sim::Simulator,
    db: &std::path::Path,
    extra: &str,
) -> m365_ingest::config::Settings {
    let mut s = settings(sim, db, &with_sources(extra));
    s.tenants.get_mut("contoso").unwrap().cloud_apps_url = Some(sim.cloud_apps_url());
    s
}

pub fn with_sources(extra: &str) -> Opts {
    Opts {
        extra_sources: extra.to_string(),
        ..Opts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_incidents_are_paged_fifty_at_a_time_and_every_version_arrives_once() {
    let sim = sim().await;
    let ids = sim.generate_incidents(TENANT_ID, 300, ago(2 * 86_400), ago(600));
    let (_dir, db) = temp_db();
    let opts = with_sources("[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.incidents]\ninterval = \"1s\"\nsettle = \"1s\"\n");
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(60), "300 incidents", || {
        sim.delivered_count() >= 300
    })
    .await;
    for id in ids.iter().take(20) {
        assert!(sim.update_incident(
            TENANT_ID,
            id,
            json!({"status": "resolved", "classification": "truePositive"})
        ));
    }
    wait_until(Duration::from_secs(30), "20 updates", || {
        sim.delivered_count() >= 320
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 320);
    assert!(counts.values().all(|&n| n == 1));
    let alerts = delivered_alerts(&sim);
    assert!(alerts
        .iter()
        .all(|a| a["kind"] == "incident" && a["source"] == "incidents"));
    assert_eq!(
        alerts.iter().filter(|a| a["change"] == "updated").count(),
        20
    );
    for r in sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/security/incidents"))
    {
        assert_ne!(r.status, 400, "a request broke the $top limit: {}", r.query);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_alerts_answering_500_falls_back_to_the_plain_listing() {
    let sim = sim().await;
    sim.generate_incidents(TENANT_ID, 30, ago(7200), ago(600));
    sim.set_faults(
        TENANT_ID,
        Faults {
            expand_fails: true,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let opts = with_sources("[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.incidents]\ninterval = \"1s\"\nsettle = \"1s\"\nexpand_alerts = true\n");
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(
        Duration::from_secs(60),
        "30 incidents despite the 500s",
        || sim.delivered_count() >= 30,
    )
    .await;
    let (_, status) = app.get("/status").await;
    let note = status["tenants"]["contoso"]["sources"]["incidents"]["note"]
        .as_str()
        .unwrap_or("");
    assert!(note.contains("$expand"), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_of_every_kind_arrive_and_a_finished_email_submission_is_one_update() {
    let sim = sim().await;
    let created = iso7_ago(900);
    sim.insert_submission(TENANT_ID, "emailThreats", json!({
        "@odata.type": "#microsoft.graph.security.emailContentThreatSubmission",
        "id": "49c5ef5b-1f65-444a-e6b9-08d772ea2059", "createdDateTime": created, "contentType": "email",
        "category": "phishing", "status": "notStarted", "source": "user", "result": null, "adminReview": null,
        "recipientEmailAddress": "megan@contoso.com", "sender": "attacker@fabrikam.example", "senderIP": "203.0.113.9",
        "emailSubject": "Your mailbox is full", "internetMessageId": "<abc@fabrikam.example>",
        "receivedDateTime": created, "tenantId": TENANT_ID
    }));
    sim.insert_submission(TENANT_ID, "urlThreats", json!({
        "@odata.type": "#microsoft.graph.security.urlThreatSubmission", "id": "f6a1e2f3-0000-4000-8000-000000000001",
        "createdDateTime": iso7_ago(850), "contentType": "url", "category": "phishing", "status": "succeeded",
        "source": "administrator", "webUrl": "http://phish.example/login", "result": {"detail": "underInvestigation", "category": "phishing"}
    }));
    sim.insert_submission(TENANT_ID, "fileThreats", json!({
        "@odata.type": "#microsoft.graph.security.fileContentThreatSubmission", "id": "f6a1e2f3-0000-4000-8000-000000000002",
        "createdDateTime": iso7_ago(800), "contentType": "file", "category": "malware", "status": "succeeded",
        "source": "administrator", "fileName": "invoice.docm", "result": {"detail": "malwareDetected", "category": "malware"}
    }));
    let (_dir, db) = temp_db();
    let opts = with_sources("[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\nrecheck_interval = \"1s\"\nrecheck = \"1d\"\n");
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(Duration::from_secs(30), "3 submissions", || {
        sim.delivered_count() >= 3
    })
    .await;
    let alerts = delivered_alerts(&sim);
    assert!(alerts
        .iter()
        .all(|a| a["kind"] == "submission" && a["change"] == "created"));
    let email = alerts
        .iter()
        .find(|a| a["native_id"] == "emailThreats/49c5ef5b-1f65-444a-e6b9-08d772ea2059")
        .unwrap();
    assert_eq!(email["status"], "new");
    assert!(
        email["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "email"),
        "{email}"
    );

    // running and succeeded land together, before the next recheck sees either.
    sim.update_submission(
        TENANT_ID,
        "emailThreats",
        "49c5ef5b-1f65-444a-e6b9-08d772ea2059",
        json!({"status": "running"}),
    );
    sim.update_submission(TENANT_ID, "emailThreats", "49c5ef5b-1f65-444a-e6b9-08d772ea2059",
        json!({"status": "succeeded", "result": {"detail": "phishingDetected", "category": "phishing"}}));
    wait_until(Duration::from_secs(30), "the email's result", || {
        sim.delivered_count() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = delivered_alerts(&sim);
    assert_eq!(alerts.len(), 4, "one update, no more");
    let update = alerts.iter().find(|a| a["change"] == "updated").unwrap();
    assert_eq!(update["status"], "resolved");
    assert_eq!(update["raw"]["result"]["detail"], "phishingDetected");
    assert!(
        update["version"].as_str().unwrap().starts_with("r2."),
        "{}",
        update["version"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_apps_alerts_are_paged_and_every_triage_change_is_an_update() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    // 250 older alerts (3 pages of 100), then two recent ones the recheck keeps an eye on.
    sim.generate_cloud_app_alerts(TENANT_ID, 248, ago(3 * 86_400), ago(2 * 86_400));
    let recent = sim.generate_cloud_app_alerts(TENANT_ID, 2, ago(1200), ago(900));
    // Both start unread and open, so each change below is a real one.
    for id in &recent {
        assert!(sim.update_cloud_app_alert(TENANT_ID, id, json!({"statusValue": 0, "resolutionStatusValue": 0, "resolveTime": null, "handledByUser": null})));
    }
    let (_dir, db) = temp_db();
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.cloud_apps]\ninterval = \"2s\"\nsettle = \"1s\"\nrecheck_interval = \"2s\"\nrecheck = \"1h\"\ntwin_wait = \"0s\"\n";
    let settings = with_cloud_apps(&sim, &db, extra);
    let app = TestApp::spawn(settings).await;
    wait_until(Duration::from_secs(60), "250 alerts", || {
        sim.delivered_count() >= 250
    })
    .await;

    let (resolved, flipped) = (&recent[0], &recent[1]);
    assert!(sim.update_cloud_app_alert(TENANT_ID, resolved, json!({"resolutionStatusValue": 2, "resolveTime": iso7_ago(0), "handledByUser": "soc@contoso.com"})));
    wait_until(Duration::from_secs(60), "the resolution", || {
        sim.delivered_count() >= 251
    })
    .await;
    for (n, read) in [(252, 1), (253, 0), (254, 1)] {
        assert!(sim.update_cloud_app_alert(TENANT_ID, flipped, json!({"statusValue": read})));
        wait_until(Duration::from_secs(60), "a triage change", || {
            sim.delivered_count() >= n
        })
        .await;
    }
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 254);
    assert!(counts.values().all(|&n| n == 1));
    let alerts = delivered_alerts(&sim);
    let updates: Vec<_> = alerts.iter().filter(|a| a["change"] == "updated").collect();
    assert_eq!(updates.len(), 4);
    assert_eq!(
        updates
            .iter()
            .filter(|a| a["native_id"] == flipped.as_str())
            .count(),
        3
    );
    assert!(alerts
        .iter()
        .all(|a| a["source"] == "cloud_apps" && a["product"] == "microsoftDefenderForCloudApps"));
    assert_eq!(sim.throttle_violations(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_switched_off_is_never_requested() {
    let sim = sim().await;
    sim.generate_alerts(TENANT_ID, 5, ago(900), ago(600));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(ONLY))).await;
    wait_until(Duration::from_secs(30), "alerts", || {
        sim.delivered_count() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim
        .requests()
        .iter()
        .all(|r| !r.path.contains("/incidents") && !r.path.contains("threatSubmission")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_submission_permission_is_named_and_the_other_sources_keep_working() {
    let sim = m365_sim::Simulator::start(SimConfig::default())
        .await
        .unwrap();
    sim.add_tenant(TENANT_ID);
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "SecurityIncident.Read.All"],
    );
    sim.generate_alerts(TENANT_ID, 10, ago(900), ago(600));
    sim.generate_incidents(TENANT_ID, 5, ago(900), ago(600));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(""))).await;
    wait_until(Duration::from_secs(30), "alerts and incidents", || {
        sim.delivered_count() >= 15
    })
    .await;
    wait_until_async(Duration::from_secs(20), "the 403 in /status", || async {
        app.get("/status").await.1["tenants"]["contoso"]["sources"]["submissions"]["last_error"]
            .as_str()
            .is_some_and(|e| {
                e.contains("403")
                    && e.contains("ThreatSubmission.Read.All")
                    && e.contains("Grant admin consent")
            })
    })
    .await;
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.to_string().contains("submissions"), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_apps_alert_and_its_alerts_v2_twin_name_each_other_in_related() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    let (mda_id, graph_id) = sim.generate_cloud_app_alert_with_twin(TENANT_ID, ago(900));
    let (_dir, db) = temp_db();
    // forward_twins: both sides are sent, so both carry the link.
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.cloud_apps]\ninterval = \"2s\"\nsettle = \"1s\"\nforward_twins = true\n";
    let settings = with_cloud_apps(&sim, &db, extra);
    let app = TestApp::spawn(settings).await;
    let names = |a: &serde_json::Value, source: &str, id: &str| {
        a["related"].as_array().is_some_and(|r| {
            r.iter()
                .any(|l| l["source"] == source && l["native_id"] == id)
        })
    };
    wait_until(Duration::from_secs(60), "both sides linked", || {
        let alerts = delivered_alerts(&sim);
        alerts.iter().any(|a| {
            a["source"] == "alerts"
                && a["native_id"] == graph_id.as_str()
                && names(a, "cloud_apps", &mda_id)
        }) && alerts.iter().any(|a| {
            a["source"] == "cloud_apps"
                && a["native_id"] == mda_id.as_str()
                && names(a, "alerts", &graph_id)
        })
    })
    .await;
    let alerts = delivered_alerts(&sim);
    let linked: Vec<_> = alerts.iter().filter(|a| a["change"] == "linked").collect();
    assert_eq!(
        linked.len(),
        1,
        "the side forwarded first gets one linked revision"
    );
    assert_eq!(linked[0]["revision"], 2);
    assert!(linked[0]["version"].as_str().unwrap().ends_with("#l1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        delivered_counts(&sim).len(),
        3,
        "two alerts and one linked revision, nothing more"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_apps_alert_whose_twin_is_known_is_held_as_a_duplicate() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    let (mda_id, graph_id) = sim.generate_cloud_app_alert_with_twin(TENANT_ID, ago(900));
    let (_dir, db) = temp_db();
    // First only alerts_v2, so the twin is known before the Cloud Apps alert is read.
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(ONLY))).await;
    wait_until(Duration::from_secs(30), "the alerts_v2 twin", || {
        sim.delivered_count() >= 1
    })
    .await;
    app.stop().await;

    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.cloud_apps]\ninterval = \"1s\"\nsettle = \"1s\"\n";
    let settings = with_cloud_apps(&sim, &db, extra);
    let app = TestApp::spawn(settings).await;
    wait_until_async(
        Duration::from_secs(30),
        "the Cloud Apps alert stored",
        || async {
            app.get("/status").await.1["tenants"]["contoso"]["sources"]["cloud_apps"]["counts"]
                ["new"]
                == 1
        },
    )
    .await;
    // Its arrival links the forwarded twin: one linked revision of the alerts_v2 item.
    wait_until(
        Duration::from_secs(30),
        "the twin's linked revision",
        || sim.delivered_count() >= 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = delivered_alerts(&sim);
    assert!(
        alerts
            .iter()
            .all(|a| a["source"] == "alerts" && a["native_id"] == graph_id.as_str()),
        "the duplicate was forwarded"
    );
    let linked = alerts.iter().find(|a| a["change"] == "linked").unwrap();
    assert!(linked["related"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["source"] == "cloud_apps" && l["native_id"] == mda_id.as_str()));
    assert_eq!(alerts.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_submission_and_the_alert_about_the_same_message_are_linked() {
    let sim = sim().await;
    let mut alert = alert_json("phish-alert", &iso7_ago(900));
    alert["evidence"] = json!([{
        "@odata.type": "#microsoft.graph.security.analyzedMessageEvidence",
        "verdict": "malicious", "roles": [],
        "internetMessageId": "<Phish-123@fabrikam.example>",
        "networkMessageId": "5e1b2a3c-0000-4000-8000-00000000beef",
        "recipientEmailAddress": "megan@contoso.com",
        "p1Sender": {"emailAddress": "attacker@fabrikam.example"},
        "subject": "Your mailbox is full"
    }]);
    sim.insert_alert(TENANT_ID, alert);
    let (_dir, db) = temp_db();
    // Alerts first, so the submission arriving later links the already forwarded alert.
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(ONLY))).await;
    wait_until(Duration::from_secs(30), "the alert", || {
        sim.delivered_count() >= 1
    })
    .await;
    app.stop().await;
    let created = iso7_ago(600);
    sim.insert_submission(TENANT_ID, "emailThreats", json!({
        "@odata.type": "#microsoft.graph.security.emailContentThreatSubmission",
        "id": "7a7a7a7a-0000-4000-8000-000000000007", "createdDateTime": created, "contentType": "email",
        "category": "phishing", "status": "succeeded", "source": "user",
        "recipientEmailAddress": "megan@contoso.com", "sender": "attacker@fabrikam.example",
        "internetMessageId": "<phish-123@fabrikam.example>", "emailSubject": "Your mailbox is full"
    }));
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\n";
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(extra))).await;
    wait_until(
        Duration::from_secs(30),
        "the submission and the alert's linked revision",
        || sim.delivered_count() >= 3,
    )
    .await;
    let alerts = delivered_alerts(&sim);
    let submission = alerts
        .iter()
        .find(|a| a["source"] == "submissions")
        .unwrap();
    assert!(
        submission["related"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["source"] == "alerts" && l["native_id"] == "phish-alert"),
        "{submission}"
    );
    let linked = alerts.iter().find(|a| a["change"] == "linked").unwrap();
    assert_eq!(linked["native_id"], "phish-alert");
    assert!(linked["related"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["source"] == "submissions"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cloud_apps_alert_waits_for_its_twin_and_is_then_held() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    sim.generate_cloud_app_alerts(TENANT_ID, 3, ago(3600), ago(1800));
    let (mda_id, graph_id) = sim.generate_cloud_app_alert_with_twin(TENANT_ID, ago(2));
    let (_dir, db) = temp_db();
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.cloud_apps]\ninterval = \"1s\"\nsettle = \"1s\"\ntwin_wait = \"8s\"\n";
    let settings = with_cloud_apps(&sim, &db, extra);
    let app = TestApp::spawn(settings).await;
    // The three older Cloud Apps alerts and the alerts_v2 twin flow at once.
    wait_until(Duration::from_secs(30), "4 alerts", || {
        sim.delivered_count() >= 4
    })
    .await;
    // Past the wait the Cloud Apps twin is read, found to duplicate a known alert, and held;
    // the alerts_v2 side gets a linked revision naming it.
    wait_until(Duration::from_secs(40), "the linked revision", || {
        sim.delivered_count() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = delivered_alerts(&sim);
    assert!(
        !native_ids(&alerts).contains(&mda_id),
        "the duplicate Cloud Apps alert was forwarded"
    );
    let linked = alerts.iter().find(|a| a["change"] == "linked").unwrap();
    assert_eq!(linked["native_id"], graph_id.as_str());
    assert_eq!(alerts.len(), 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_list_whose_time_filter_is_refused_is_listed_without_one() {
    let sim = sim().await;
    sim.set_faults(
        TENANT_ID,
        Faults {
            refuse_submission_filter: true,
            ..Default::default()
        },
    );
    let ids = sim.generate_submissions(TENANT_ID, "urlThreats", 3, ago(3600), ago(600));
    let (_dir, db) = temp_db();
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\nkinds = [\"url\"]\n";
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(extra))).await;
    wait_until(Duration::from_secs(30), "3 submissions", || {
        sim.delivered_count() >= 3
    })
    .await;
    let (_, status) = app.get("/status").await;
    let note = status["tenants"]["contoso"]["sources"]["submissions"]["note"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(note.contains("refused"), "{status}");
    assert!(sim.update_submission(
        TENANT_ID,
        "urlThreats",
        &ids[0],
        json!({"status": "succeeded", "result": {"detail": "test-unique-detail", "category": "phishing"}})
    ));
    wait_until(Duration::from_secs(30), "the change", || {
        sim.delivered_count() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        delivered_counts(&sim).len(),
        4,
        "re-listing sends only changes"
    );
    app.stop().await;
}

/// The note of the submissions source on `/status`.
async fn submissions_note(app: &TestApp) -> String {
    let (_, status) = app.get("/status").await;
    status["tenants"]["contoso"]["sources"]["submissions"]["note"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_list_that_ignores_its_time_filter_is_caught_and_listed_without_one() {
    let sim = sim().await;
    // Graph answers the filtered request with everything, and no error.
    sim.set_faults(
        TENANT_ID,
        Faults {
            ignore_submission_filter: true,
            ..Default::default()
        },
    );
    sim.generate_submissions(TENANT_ID, "urlThreats", 5, ago(3 * 86_400), ago(600));
    let (_dir, db) = temp_db();
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\nkinds = [\"url\"]\n";
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(extra))).await;
    wait_until_async(
        Duration::from_secs(30),
        "the ignored filter noticed",
        || async { submissions_note(&app).await.contains("ignored") },
    )
    .await;
    wait_until(Duration::from_secs(30), "5 submissions", || {
        sim.delivered_count() >= 5
    })
    .await;
    // From now on the list is read without a filter, and still sees new submissions.
    let noticed = sim.requests().len();
    sim.generate_submissions(TENANT_ID, "urlThreats", 1, ago(120), ago(60));
    wait_until(Duration::from_secs(30), "the new one", || {
        sim.delivered_count() >= 6
    })
    .await;
    let later: Vec<_> = sim.requests().into_iter().skip(noticed).collect();
    assert!(later.iter().any(|r| r.path.ends_with("/urlThreats")));
    assert!(
        later
            .iter()
            .filter(|r| r.path.ends_with("/urlThreats"))
            .all(|r| !r.query.contains("filter")),
        "still filtering after the filter was found ignored"
    );
    assert_eq!(delivered_counts(&sim).len(), 6);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_skiptoken_in_a_walk_is_not_taken_for_a_refused_filter() {
    let sim = sim().await;
    // 150 submissions in one 100-ns tick: more than a page (100), so that tick is walked by
    // nextLink ($skiptoken), and the first skiptoken answers 400.
    let second = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            ago(900)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    sim.generate_submissions(TENANT_ID, "urlThreats", 150, second, second);
    sim.set_faults(
        TENANT_ID,
        Faults {
            stale_skiptoken_next: 1,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let extra = "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\nkinds = [\"url\"]\n";
    let app = TestApp::spawn(settings(&sim, &db, &with_sources(extra))).await;
    wait_until(Duration::from_secs(30), "150 submissions", || {
        sim.delivered_count() >= 150
    })
    .await;
    let requests = sim.requests();
    let refused_at = requests
        .iter()
        .position(|r| r.path.ends_with("/urlThreats") && r.status == 400)
        .expect("the stale skiptoken was sent and refused");
    assert!(requests[refused_at].query.contains("skiptoken"));
    // The scan carried on with its filter: no fallback, no note of a refused filter.
    wait_until(
        Duration::from_secs(30),
        "a filtered listing after the 400",
        || {
            sim.requests().iter().skip(refused_at + 1).any(|r| {
                r.path.ends_with("/urlThreats") && r.query.contains("filter") && r.status == 200
            })
        },
    )
    .await;
    let note = submissions_note(&app).await;
    assert!(
        !note.contains("refused") && !note.contains("ignored"),
        "{note}"
    );
    // Unfiltered: only the first run's one-item clock probe, never the fallback listing.
    let unfiltered: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/urlThreats") && !r.query.contains("filter"))
        .map(|r| r.query)
        .collect();
    assert!(
        unfiltered.iter().all(|q| q.ends_with("top=1")),
        "{unfiltered:?}"
    );
    assert_eq!(delivered_counts(&sim).len(), 150);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_enum_members_are_asked_for_and_kept() {
    let sim = sim().await;
    // Members Graph declares after unknownFutureValue, sent only to a client that prefers
    // `include-unknown-enum-members`: the daemon must ask for them and forward them as they are.
    sim.insert_alert(
        TENANT_ID,
        json!({"id": "sentinel-1", "lastUpdateDateTime": iso7_ago(300), "createdDateTime": iso7_ago(300),
               "serviceSource": "microsoftSentinel", "detectionSource": "scheduledAlerts",
               "severity": "medium", "status": "new", "title": "Sentinel analytics rule"}),
    );
    let incidents = sim.generate_incidents(TENANT_ID, 60, ago(3600), ago(600));
    assert!(sim.update_incident(
        TENANT_ID,
        &incidents[0],
        json!({"status": "awaitingAction"})
    ));
    let (_dir, db) = temp_db();
    let opts = with_sources("[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.incidents]\ninterval = \"1s\"\nsettle = \"1s\"\n");
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(
        Duration::from_secs(60),
        "the alert and the incidents",
        || {
            let alerts = delivered_alerts(&sim);
            alerts.iter().any(|a| a["raw"]["id"] == "sentinel-1")
                && alerts.iter().filter(|a| a["kind"] == "incident").count() >= 60
        },
    )
    .await;
    let alerts = delivered_alerts(&sim);
    let sentinel = alerts
        .iter()
        .find(|a| a["raw"]["id"] == "sentinel-1")
        .unwrap();
    assert_eq!(sentinel["product"], "microsoftSentinel", "{sentinel}");
    assert_eq!(
        sentinel["detection_source"], "scheduledAlerts",
        "{sentinel}"
    );
    let waiting = alerts
        .iter()
        .rev()
        .find(|a| a["raw"]["id"] == incidents[0].as_str())
        .unwrap();
    assert_eq!(waiting["raw_status"], "awaitingAction", "{waiting}");
    assert_eq!(waiting["status"], "in_progress", "{waiting}");
    assert!(
        !alerts
            .iter()
            .any(|a| a.to_string().contains("unknownFutureValue")),
        "a late member arrived as unknownFutureValue"
    );
    app.stop().await;
}
