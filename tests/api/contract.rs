//! The output contract: every alert of every source is a valid `m365-ingest.alert.v1` as
//! published in `docs/alert.v1.schema.json` (what a consumer of the alerts codes against).

use std::time::Duration;

use m365_sim::ReportSpec;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_sends_alerts_that_match_the_published_schema() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &[
            "SecurityAlert.Read.All",
            "SecurityIncident.Read.All",
            "ThreatSubmission.Read.All",
            "Investigation.read",
            "Mail.Read",
        ],
    );
    let (from, until) = (ago(2 * 86_400), ago(600));
    sim.generate_alerts(TENANT_ID, 200, from, until);
    sim.generate_incidents(TENANT_ID, 30, from, until);
    for list in ["emailThreats", "urlThreats", "fileThreats"] {
        sim.generate_submissions(TENANT_ID, list, 10, from, until);
    }
    sim.generate_cloud_app_alerts(TENANT_ID, 20, from, until);
    sim.add_mailbox(TENANT_ID, "phish@contoso.com");
    sim.add_reports(
        TENANT_ID,
        "phish@contoso.com",
        ReportSpec::new(60, from, until, 5),
    );
    let (_dir, db) = temp_db();
    let opts = Opts {
        extra_sources: "[tenants.contoso.sources.incidents]\ninterval = \"1s\"\nsettle = \"1s\"\n\
            [tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\n\
            [tenants.contoso.sources.cloud_apps]\ninterval = \"1s\"\nsettle = \"1s\"\ntwin_wait = \"0s\"\n\
            [tenants.contoso.sources.phishing_reports]\nmailbox = \"phish@contoso.com\"\ninterval = \"1s\"\n"
            .into(),
        ..Opts::default()
    };
    let mut s = settings(&sim, &db, &opts);
    s.tenants.get_mut("contoso").unwrap().cloud_apps_url = Some(sim.cloud_apps_url());
    let app = TestApp::spawn(s).await;
    wait_until(Duration::from_secs(90), "every source delivered", || {
        let alerts = delivered_alerts(&sim);
        [
            "alerts",
            "incidents",
            "submissions",
            "cloud_apps",
            "phishing_reports",
        ]
        .iter()
        .all(|src| alerts.iter().any(|a| a["source"] == *src))
            && alerts
                .iter()
                .filter(|a| a["source"] == "phishing_reports")
                .count()
                >= 60
    })
    .await;
    // `delivered_alerts` has checked each one against the schema.
    let alerts = delivered_alerts(&sim);
    assert!(alerts.len() > 300, "{} alerts", alerts.len());
    app.stop().await;
}

#[test]
fn the_schema_refuses_an_alert_that_breaks_the_contract() {
    let good = example_alert();
    assert_valid_alert(&good);
    for (field, bad) in [
        ("severity", Value::from("critical")),
        ("event_id", Value::from("not-a-hash")),
        ("revision", Value::from(0)),
        ("observed_at", Value::from("yesterday")),
    ] {
        let mut alert = good.clone();
        alert[field] = bad;
        let refused = std::panic::catch_unwind(|| assert_valid_alert(&alert)).is_err();
        assert!(refused, "{field} = {} passed the schema", alert[field]);
    }
    let mut report = good.clone();
    report["kind"] = "phishing_report".into();
    assert!(
        std::panic::catch_unwind(|| assert_valid_alert(&report)).is_err(),
        "a phishing report must carry `email`"
    );
}
