//! Campaign context in the pipeline (issue 13), against the simulator: an email alert and a
//! submission carry who got the message and who clicked; throttling, a spent CPU quota or a
//! missing role never hold an alert past `max_delay`, and the context follows as a revision;
//! one hunting query serves a whole poll; a hostile message id stays one literal; alerts waiting
//! for context when the daemon crashes get it after the restart; a phishing report from the
//! reporting mailbox carries the context of the message it reports.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use m365_sim::{HuntingFaults, HuntingMessage, Report, Simulator};
use serde_json::{json, Value};

use crate::helpers::*;

const MSG: &str = "<C0FFEE0001@phish.example>";

/// Test settings with campaign context on (`max_delay`, `batch_size`), plus `extra` TOML.
pub(crate) fn context_opts(max_delay: &str, batch_size: usize, extra: &str) -> Opts {
    let mut o = Opts::default();
    o.extra_sources.push_str(&format!(
        "[tenants.contoso.context]\nhunting = true\nmax_delay = \"{max_delay}\"\nbatch_size = {batch_size}\n{extra}"
    ));
    o
}

/// An alerts_v2 alert with email evidence about `message_id`.
pub(crate) fn email_alert(id: &str, message_id: &str) -> Value {
    let mut a = alert_json(id, &iso7_ago(60));
    a["category"] = json!("InitialAccess");
    a["evidence"] = json!([{
        "@odata.type": "#microsoft.graph.security.analyzedMessageEvidence",
        "verdict": "malicious", "roles": [],
        "internetMessageId": message_id, "subject": "Invoice overdue",
        "senderEmailAddress": "billing@phish.example"
    }]);
    a
}

/// Delivered versions of `native_id`.
fn versions_of(sim: &Simulator, native_id: &str) -> Vec<Value> {
    delivered_alerts(sim)
        .into_iter()
        .filter(|a| a["native_id"] == native_id)
        .collect()
}

fn with_context(versions: &[Value]) -> Option<Value> {
    versions
        .iter()
        .find(|v| v.get("context").is_some())
        .cloned()
}

/// Asserts that `campaign` (an alert's `context.campaign`) is that of
/// [`HuntingMessage::forty_with_three_clickers`] over [`MSG`]: 40 recipients, the first 10 (the
/// default `max_listed`) at most listed, and its 3 clickers by name.
fn assert_forty_and_three_clickers(campaign: &Value, what: &str) {
    let clickers: HashSet<String> = HuntingMessage::forty_with_three_clickers(MSG)
        .clicks
        .into_iter()
        .map(|c| c.account)
        .collect();
    assert_eq!(campaign["recipients"]["count"], 40, "{what}: {campaign}");
    assert!(campaign["recipients"]["first"].as_array().unwrap().len() <= 10);
    assert_eq!(campaign["clicks"]["clickers"], 3, "{what}: {campaign}");
    let listed: HashSet<String> = campaign["clicks"]["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["account"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, clickers, "{what}");
}

#[tokio::test]
async fn an_email_alert_and_a_submission_carry_the_40_recipients_and_the_3_clickers() {
    // Arrange
    let sim = hunting_sim().await;
    sim.add_hunting_message(TENANT_ID, HuntingMessage::forty_with_three_clickers(MSG));
    sim.insert_alert(TENANT_ID, email_alert("mail-1", MSG));
    sim.insert_submission(
        TENANT_ID,
        "emailThreats",
        json!({
            "@odata.type": "#microsoft.graph.security.emailContentThreatSubmission",
            "id": "7a7a7a7a-0000-4000-8000-0000000000c1", "createdDateTime": iso7_ago(120),
            "contentType": "email", "category": "phishing", "status": "succeeded",
            "source": "user", "recipientEmailAddress": "megan@contoso.com",
            "sender": "billing@phish.example", "internetMessageId": MSG,
            "emailSubject": "Invoice overdue"
        }),
    );
    let (_dir, db) = temp_db();
    let mut o = context_opts("30s", 50, "");
    o.extra_sources = o.extra_sources.replace(
        "[tenants.contoso.sources.submissions]\nenabled = false\n",
        "[tenants.contoso.sources.submissions]\ninterval = \"1s\"\nsettle = \"1s\"\n",
    );

    // Act
    let app = TestApp::spawn(settings(&sim, &db, &o)).await;
    wait_until(Duration::from_secs(60), "both with context", || {
        let got: Vec<Value> = delivered_alerts(&sim)
            .into_iter()
            .filter(|a| a.get("context").is_some())
            .collect();
        got.iter().any(|a| a["source"] == "alerts")
            && got.iter().any(|a| a["source"] == "submissions")
    })
    .await;

    // Assert
    for source in ["alerts", "submissions"] {
        let a = delivered_alerts(&sim)
            .into_iter()
            .find(|a| a["source"] == source && a.get("context").is_some())
            .unwrap();
        assert_valid_alert(&a);
        assert_forty_and_three_clickers(&a["context"]["campaign"], source);
    }

    // A version Microsoft makes later (the analyst resolves it) keeps the context.
    assert!(sim.update_alert(TENANT_ID, "mail-1", json!({"status": "resolved"})));
    wait_until(Duration::from_secs(30), "the resolved version", || {
        versions_of(&sim, "mail-1")
            .iter()
            .any(|v| v["status"] == "resolved")
    })
    .await;
    let resolved = versions_of(&sim, "mail-1")
        .into_iter()
        .find(|v| v["status"] == "resolved")
        .unwrap();
    assert_eq!(resolved["change"], "updated");
    assert_eq!(
        resolved["context"]["campaign"]["recipients"]["count"], 40,
        "{resolved}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phishing_report_carries_the_40_recipients_and_the_3_clickers_of_the_reported_message() {
    // Arrange: a user reports the message sent to 40 people, 3 of whom clicked, to the reporting
    // mailbox; the app may read that mailbox and run hunting queries.
    const MAILBOX: &str = "phish-reports@contoso.com";
    let sim = hunting_sim().await;
    let mut roles = ALL_ROLES.to_vec();
    roles.extend(["ThreatHunting.Read.All", "Mail.Read"]);
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    sim.add_mailbox(TENANT_ID, MAILBOX);
    sim.add_hunting_message(TENANT_ID, HuntingMessage::forty_with_three_clickers(MSG));
    let original = format!(
        "From: Billing <billing@phish.example>\r\nTo: megan.bowen@contoso.com\r\n\
         Subject: Invoice overdue\r\nMessage-ID: {MSG}\r\nDate: Tue, 14 Jan 2025 09:11:58 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nPay now: https://phish.example/login/verify\r\n"
    );
    let report = sim.add_report(
        TENANT_ID,
        MAILBOX,
        Report::eml(
            "megan.bowen@contoso.com",
            "Phishing: Invoice overdue",
            ago(120),
            original.into_bytes(),
        ),
    );
    let (_dir, db) = temp_db();
    let o = context_opts(
        "30s",
        50,
        &format!(
            "[tenants.contoso.sources.phishing_reports]\nmailbox = \"{MAILBOX}\"\ninterval = \"1s\"\n"
        ),
    );

    // Act
    let app = TestApp::spawn(settings(&sim, &db, &o)).await;
    wait_until(Duration::from_secs(60), "the report with context", || {
        with_context(&versions_of(&sim, &report.immutable_id)).is_some()
    })
    .await;

    // Assert: hunting was asked about the reported message's internet message id, and the
    // report went out once, with the context of that message.
    let asked: Vec<String> = sim
        .hunting_queries(TENANT_ID)
        .iter()
        .flat_map(|q| m365_sim::parse_hunting_query(q).unwrap().ids)
        .collect();
    assert!(asked.contains(&MSG.to_string()), "{asked:?}");
    let versions = versions_of(&sim, &report.immutable_id);
    let a = with_context(&versions).unwrap();
    assert_valid_alert(&a);
    assert_eq!(a["source"], "phishing_reports");
    assert_eq!(a["kind"], "phishing_report");
    assert_eq!(a["email"]["message"]["message_id"], MSG);
    assert_eq!(
        a["change"], "created",
        "sent with its context, not after: {versions:?}"
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_forty_and_three_clickers(&a["context"]["campaign"], "the report");
    app.stop().await;
}

#[tokio::test]
async fn a_spent_cpu_quota_delays_no_alert_and_the_context_revisions_follow() {
    // Arrange: the quota stays spent for 20 s (Microsoft's 10 minutes, scaled so the test does
    // not wait them), alerts wait at most 2 s.
    let sim = hunting_sim().await;
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            cpu_quota_for: Some(Duration::from_secs(20)),
            ..Default::default()
        },
    );
    let quota_ends = Instant::now() + Duration::from_secs(20);
    let ids: Vec<String> = (0..5).map(|i| format!("quota-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        sim.insert_alert(TENANT_ID, email_alert(id, &format!("<Q{i}@phish.example>")));
    }
    let (_dir, db) = temp_db();

    // Act
    let app = TestApp::spawn(settings(&sim, &db, &context_opts("2s", 50, ""))).await;

    // Assert: every alert goes out without context while the quota is spent.
    wait_until(Duration::from_secs(15), "all 5 forwarded", || {
        ids.iter().all(|id| !versions_of(&sim, id).is_empty())
    })
    .await;
    assert!(
        Instant::now() < quota_ends,
        "forwarding waited for the quota"
    );
    for id in &ids {
        let first = &versions_of(&sim, id)[0];
        assert_eq!(first["change"], "created");
        assert!(first.get("context").is_none());
    }
    let (_, status) = app.get("/status").await;
    let ctx = &status["tenants"]["contoso"]["context"];
    assert_eq!(ctx["state"], "cpu_quota", "{ctx}");
    assert!(ctx["fix"].as_str().unwrap().contains("15-minute cycle"));

    // Once the quota is back, each alert gets a context revision.
    wait_until(Duration::from_secs(90), "5 context revisions", || {
        ids.iter().all(|id| {
            versions_of(&sim, id)
                .iter()
                .any(|v| v["change"] == "context")
        })
    })
    .await;
    for id in &ids {
        let v = versions_of(&sim, id);
        let rev = v.iter().find(|v| v["change"] == "context").unwrap();
        assert_valid_alert(rev);
        assert_eq!(
            rev["version"],
            format!("{}#c1", v[0]["version"].as_str().unwrap())
        );
        assert_eq!(rev["revision"], 2);
        assert!(rev["context"]["campaign"].is_object());
    }
    assert_eq!(sim.throttle_violations(), 0);
    app.stop().await;
}

#[tokio::test]
async fn without_threathunting_read_all_alerts_flow_and_status_and_check_name_it() {
    // Arrange: the app has every role but ThreatHunting.Read.All.
    let sim = sim().await;
    sim.insert_alert(TENANT_ID, email_alert("no-role", "<NR1@phish.example>"));
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &context_opts("2s", 50, ""));

    // Act
    let app = TestApp::spawn(s.clone()).await;

    // Assert
    wait_until(Duration::from_secs(20), "the alert forwarded", || {
        !versions_of(&sim, "no-role").is_empty()
    })
    .await;
    assert!(with_context(&versions_of(&sim, "no-role")).is_none());
    wait_until_async(
        Duration::from_secs(20),
        "/status names the role",
        || async {
            let (_, status) = app.get("/status").await;
            let ctx = &status["tenants"]["contoso"]["context"];
            ctx["state"] == "not_granted"
                && ctx["fix"]
                    .as_str()
                    .is_some_and(|f| f.contains("ThreatHunting.Read.All"))
        },
    )
    .await;
    let report = m365_ingest::check::run(&s).await;
    assert!(report.to_table().contains("ThreatHunting.Read.All"));
    app.stop().await;
}

#[tokio::test]
async fn two_hundred_email_alerts_in_one_poll_take_at_most_four_hunting_calls() {
    // Arrange
    let sim = hunting_sim().await;
    for i in 0..200 {
        sim.insert_alert(
            TENANT_ID,
            email_alert(
                &format!("bulk-{i:03}"),
                &format!("<BULK{i:03}@phish.example>"),
            ),
        );
    }
    let (_dir, db) = temp_db();
    let mut o = context_opts("20s", 50, "");
    o.batch_size = 500;

    // Act
    let app = TestApp::spawn(settings(&sim, &db, &o)).await;
    wait_until(Duration::from_secs(90), "200 alerts with context", || {
        delivered_alerts(&sim)
            .iter()
            .filter(|a| a.get("context").is_some())
            .map(|a| a["native_id"].as_str().unwrap_or_default().to_string())
            .collect::<HashSet<_>>()
            .len()
            == 200
    })
    .await;

    // Assert: ⌈200 / 50⌉ queries at most.
    assert!(
        hunting_calls(&sim) <= 4,
        "{} hunting calls",
        hunting_calls(&sim)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_message_id_with_quotes_a_pipe_and_a_line_break_stays_one_literal_in_the_query() {
    // Arrange
    let sim = hunting_sim().await;
    let hostile = "<a\"b'c|d\ne@evil.example> | take 100000 //";
    sim.insert_alert(TENANT_ID, email_alert("hostile", hostile));
    let (_dir, db) = temp_db();

    // Act
    let app = TestApp::spawn(settings(&sim, &db, &context_opts("10s", 50, ""))).await;
    wait_until(Duration::from_secs(30), "the alert forwarded", || {
        !versions_of(&sim, "hostile").is_empty()
    })
    .await;

    // Assert: the query the simulator received is the template over exactly that id.
    let queries = sim.hunting_queries(TENANT_ID);
    assert_eq!(queries.len(), 1, "{queries:?}");
    let parsed = m365_sim::parse_hunting_query(&queries[0]).unwrap();
    assert_eq!(parsed.ids, vec![hostile.to_string()]);
    let template =
        m365_sim::tokenize_kql(&m365_sim::hunting_query(&["x"], parsed.first_n)).unwrap();
    assert_eq!(
        m365_sim::tokenize_kql(&queries[0]).unwrap().len(),
        template.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn alerts_waiting_for_context_when_the_daemon_crashes_get_it_after_the_restart() {
    use m365_ingest::store::Store;
    // Arrange: hunting is slow, so the first daemon dies before it answers.
    let sim = hunting_sim().await;
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            delay: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    sim.insert_alert(TENANT_ID, email_alert("crash-1", "<CR1@phish.example>"));
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &context_opts("1s", 50, ""));
    let app = TestApp::spawn(s.clone()).await;
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(20), "the alert wants context", || {
        let store = store.clone();
        async move {
            store
                .context_wanted("contoso", None, 10)
                .await
                .is_ok_and(|w| w.len() == 1)
        }
    })
    .await;
    app.crash().await;
    drop(store);

    // Act: hunting answers again, and the daemon restarts on the same store.
    sim.set_hunting_faults(TENANT_ID, HuntingFaults::default());
    let app = TestApp::spawn(s).await;

    // Assert: the alert went out once as created, and its context reached Dropzone.
    wait_until(
        Duration::from_secs(60),
        "the alert with its context",
        || with_context(&versions_of(&sim, "crash-1")).is_some(),
    )
    .await;
    let versions = versions_of(&sim, "crash-1");
    let created = versions.iter().filter(|v| v["change"] == "created").count();
    assert_eq!(created, 1, "{versions:?}");
    assert!(with_context(&versions).unwrap()["context"]["campaign"].is_object());
    app.stop().await;
}
