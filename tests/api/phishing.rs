//! The reporting mailbox (`phishing_reports`) against the simulator's mailbox: reports read
//! through Graph delta queries with their attached originals, delivered once each, across
//! expired delta tokens, crashes, folder moves, Microsoft's 5,000-message cap, access policies,
//! `mailbox = "auto"` and reports that cannot be read in full.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use m365_ingest::check::{self, Outcome};
use m365_ingest::normalize::SourceKind;
use m365_ingest::store::{CursorKey, Store};
use m365_sim::{
    DeltaExpiry, FormatMix, MailFaults, Report, ReportAttachment, ReportFacts, ReportSpec,
    Simulator, ValueRefusal, WrapperFormat,
};
use serde_json::Value;

use crate::helpers::*;

const MAILBOX: &str = "phish-reports@contoso.com";

/// A simulator whose app may read mail and the reporting mailbox in it.
async fn mail_sim() -> Simulator {
    let sim = Simulator::start(m365_sim::SimConfig::default())
        .await
        .expect("simulator starts");
    sim.add_tenant(TENANT_ID);
    let mut roles = ALL_ROLES.to_vec();
    roles.push("Mail.Read");
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    sim.add_mailbox(TENANT_ID, MAILBOX);
    sim
}

/// The phishing-reports source on `mailbox` (with the alerts source as configured by `Opts`).
fn opts(mailbox: &str) -> Opts {
    Opts {
        extra_sources: format!(
            "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n\
             [tenants.contoso.sources.phishing_reports]\nmailbox = \"{mailbox}\"\ninterval = \"1s\"\n"
        ),
        ..Opts::default()
    }
}

/// `n` reports of one format received over two days, in a mailbox that answers slowly enough
/// for a test to act while they are being read.
fn slow_backlog(sim: &Simulator, format: WrapperFormat, n: usize, seed: u64) -> Vec<ReportFacts> {
    let spec = ReportSpec {
        mix: FormatMix::only(format),
        ..ReportSpec::new(n, ago(2 * 86_400), ago(60), seed)
    };
    let facts = sim.add_reports(TENANT_ID, MAILBOX, spec);
    sim.set_mail_faults(
        TENANT_ID,
        MailFaults {
            delay: Some(Duration::from_millis(20)),
            ..MailFaults::default()
        },
    );
    facts
}

/// The phishing reports Dropzone received, by native id, with how often each arrived.
fn reports(sim: &Simulator) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for a in delivered_alerts(sim) {
        if a["source"] == "phishing_reports" {
            m.entry(a["native_id"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(a);
        }
    }
    m
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the daemon made of a report, checked against what the simulator put in it.
fn assert_report_matches(alert: &Value, facts: &ReportFacts) {
    let id = &facts.immutable_id;
    assert_eq!(alert["kind"], "phishing_report", "{id}");
    assert_eq!(alert["version"], "r1", "{id}");
    let email = &alert["email"];
    assert_eq!(
        email["reporter"]["address"].as_str().map(str::to_lowercase),
        Some(facts.reporter.to_lowercase()),
        "{id}: reporter"
    );
    assert_eq!(
        email["verdict"], facts.verdict,
        "{id}: verdict of {:?}",
        facts.subject
    );
    if facts.format == WrapperFormat::MultipleAttached {
        assert!(
            email["message"].is_null(),
            "{id}: several originals are not parsed"
        );
        assert_eq!(strings(&email["attached_messages"]).len(), 2, "{id}");
        return;
    }
    let original = &facts.originals[0];
    let message = &email["message"];
    assert!(message.is_object(), "{id}: no parsed message in {email}");
    if let Some(mid) = &original.message_id {
        assert_eq!(message["message_id"], mid.as_str(), "{id}: Message-ID");
    }
    if let Some(nid) = &original.network_message_id {
        assert_eq!(
            message["network_message_id"],
            nid.as_str(),
            "{id}: network id"
        );
    }
    assert_eq!(
        message["from"]["address"].as_str().map(str::to_lowercase),
        Some(original.from.to_lowercase()),
        "{id} ({:?}): From in {message}",
        facts.format
    );
    assert_eq!(
        message["subject"],
        original.subject.as_str(),
        "{id}: subject"
    );
    if let Some(fails) = original.dmarc_fails {
        assert_eq!(
            message["authentication"]["dmarc"] == "fail",
            fails,
            "{id}: dmarc in {}",
            message["authentication"]
        );
    }
    if let Some(ip) = &original.originating_ip {
        assert_eq!(
            message["originating_ip"],
            ip.as_str(),
            "{id}: originating IP"
        );
    }
    let urls: Vec<String> = message["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["url"].as_str().map(str::to_string))
        .collect();
    for u in &original.urls {
        assert!(urls.contains(u), "{id}: URL {u} missing from {urls:?}");
    }
    let hashes: HashSet<String> = message["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["sha256"].as_str().map(str::to_string))
        .collect();
    let indicators: HashSet<(String, String)> = alert["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap_or("").to_string(),
                i["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for a in &original.attachments {
        assert!(
            hashes.contains(&a.sha256),
            "{id}: attachment {} hash",
            a.name
        );
        assert!(
            indicators.contains(&("sha256".to_string(), a.sha256.clone())),
            "{id}: attachment hash indicator"
        );
    }
    assert!(
        indicators.contains(&("email_sender".to_string(), original.from.to_lowercase()))
            || indicators.contains(&("email_sender".to_string(), original.from.clone())),
        "{id}: sender indicator in {indicators:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_reports_over_three_days_are_each_delivered_once_with_their_fields() {
    let sim = mail_sim().await;
    let spec = ReportSpec::new(300, ago(3 * 86_400), ago(60), 7);
    let facts = sim.add_reports(TENANT_ID, MAILBOX, spec);
    assert!(facts
        .iter()
        .any(|f| f.format == WrapperFormat::ItemAttachment));
    assert!(facts
        .iter()
        .any(|f| f.format == WrapperFormat::EmlAttachment));
    assert!(facts
        .iter()
        .any(|f| f.format == WrapperFormat::MsgAttachment));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &opts(MAILBOX))).await;

    wait_until(Duration::from_secs(120), "300 reports delivered", || {
        reports(&sim).len() >= 300
    })
    .await;
    let got = reports(&sim);
    for f in &facts {
        let versions = got
            .get(&f.immutable_id)
            .unwrap_or_else(|| panic!("report {} ({:?}) not delivered", f.immutable_id, f.format));
        assert_eq!(
            versions.len(),
            1,
            "report {} delivered twice",
            f.immutable_id
        );
        assert_report_matches(&versions[0], f);
    }
    let (_, status) = app.get("/status").await;
    let source = &status["tenants"]["contoso"]["sources"]["phishing_reports"];
    assert!(
        source["mailbox"].as_str().unwrap_or("").contains(MAILBOX),
        "/status names the mailbox: {source}"
    );
    assert_eq!(
        sim.mail_throttle_violations(),
        0,
        "the daemon kept within Outlook's limits"
    );
    // Another round of polls sends nothing new.
    let before = delivered_alerts(&sim).len();
    wait_until_async(Duration::from_secs(20), "two more polls", || async {
        let (_, s) = app.get("/status").await;
        s["tenants"]["contoso"]["sources"]["phishing_reports"]["counts"]["requests"]
            .as_u64()
            .unwrap_or(0)
            > source["counts"]["requests"].as_u64().unwrap_or(0) + 2
    })
    .await;
    assert_eq!(delivered_alerts(&sim).len(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delta_token_mid_backlog_resyncs_without_losing_or_resending() {
    for mode in [DeltaExpiry::Gone, DeltaExpiry::SyncStateNotFound] {
        let sim = mail_sim().await;
        let facts = slow_backlog(&sim, WrapperFormat::EmlAttachment, 200, 11);
        let (_dir, db) = temp_db();
        let app = TestApp::spawn(settings(&sim, &db, &opts(MAILBOX))).await;
        wait_until(Duration::from_secs(60), "a part of the backlog", || {
            reports(&sim).len() >= 30
        })
        .await;
        assert!(reports(&sim).len() < 200, "the walk is still under way");
        sim.expire_delta_tokens(TENANT_ID, mode);
        // New reports arrive after the expiry too.
        let later = sim.add_reports(
            TENANT_ID,
            MAILBOX,
            ReportSpec {
                mix: FormatMix::only(WrapperFormat::ItemAttachment),
                ..ReportSpec::new(20, ago(30), ago(1), 12)
            },
        );
        wait_until(Duration::from_secs(120), "every report delivered", || {
            reports(&sim).len() >= 220
        })
        .await;
        let got = reports(&sim);
        for f in facts.iter().chain(&later) {
            assert_eq!(
                got.get(&f.immutable_id).map(Vec::len),
                Some(1),
                "{mode:?}: report {} delivered once",
                f.immutable_id
            );
        }
        let (_, metrics) = (
            (),
            reqwest::get(format!("http://127.0.0.1:{}/metrics", app.port))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert!(
            metrics.lines().any(
                |l| l.starts_with("m365_ingest_resyncs_total") && !l.trim_end().ends_with(" 0")
            ),
            "{mode:?}: a resync is counted:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("resync"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        app.stop().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_walk_resumes_from_the_last_committed_link() {
    let sim = mail_sim().await;
    let facts = slow_backlog(&sim, WrapperFormat::ItemAttachment, 300, 21);
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &opts(MAILBOX));
    let app = TestApp::spawn(s.clone()).await;
    let key = CursorKey {
        tenant: "contoso".into(),
        source: SourceKind::PhishingReports,
        list: String::new(),
    };
    let store = app.store.clone();
    wait_until_async(Duration::from_secs(60), "a nextLink committed", || {
        let store = store.clone();
        let key = key.clone();
        async move {
            store
                .load_cursor_state(&key)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.contains("skiptoken"))
        }
    })
    .await;
    app.crash().await;
    let committed: Value =
        serde_json::from_str(&store.load_cursor_state(&key).await.unwrap().unwrap()).unwrap();
    let link = committed["link"].as_str().unwrap().to_string();
    assert!(link.contains("skiptoken"), "mid-walk: {link}");
    drop(store);
    let requests_before = sim.requests().len();

    let app = TestApp::spawn(s).await;
    wait_until(Duration::from_secs(120), "every report delivered", || {
        reports(&sim).len() >= 300
    })
    .await;
    let first_delta = sim
        .requests()
        .into_iter()
        .skip(requests_before)
        .find(|r| r.path.contains("/messages/delta"))
        .expect("a delta request after the restart");
    let token = |s: &str| {
        s.split(['?', '&'])
            .find(|p| p.starts_with("%24skiptoken=") || p.starts_with("$skiptoken="))
            .map(str::to_string)
    };
    assert!(
        token(&format!("{}?{}", first_delta.path, first_delta.query)).is_some()
            && token(&format!("{}?{}", first_delta.path, first_delta.query)) == token(&link),
        "the restart continued the committed walk: {} ?{} vs {link}",
        first_delta.path,
        first_delta.query
    );
    let got = reports(&sim);
    for f in &facts {
        assert!(
            got.contains_key(&f.immutable_id),
            "report {} lost",
            f.immutable_id
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_moved_to_another_folder_and_back_is_not_sent_again() {
    let sim = mail_sim().await;
    let facts = sim.add_reports(
        TENANT_ID,
        MAILBOX,
        ReportSpec::new(10, ago(3600), ago(60), 31),
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &opts(MAILBOX))).await;
    wait_until(Duration::from_secs(60), "10 reports", || {
        reports(&sim).len() >= 10
    })
    .await;
    let moved = &facts[3].immutable_id;
    assert!(sim.move_message(TENANT_ID, MAILBOX, moved, "archive"));
    // Wait for a delta round to see it leave, then bring it back.
    let seen = sim.requests().len();
    wait_until(Duration::from_secs(20), "a delta round", || {
        sim.requests()
            .iter()
            .skip(seen)
            .filter(|r| r.path.contains("/messages/delta"))
            .count()
            >= 2
    })
    .await;
    assert!(sim.move_message(TENANT_ID, MAILBOX, moved, "inbox"));
    let fresh = sim.add_reports(TENANT_ID, MAILBOX, ReportSpec::new(1, ago(5), ago(1), 32));
    wait_until(Duration::from_secs(30), "the next report", || {
        reports(&sim).contains_key(&fresh[0].immutable_id)
    })
    .await;
    let seen = sim.requests().len();
    wait_until(Duration::from_secs(20), "two more delta rounds", || {
        sim.requests()
            .iter()
            .skip(seen)
            .filter(|r| r.path.contains("/messages/delta"))
            .count()
            >= 2
    })
    .await;
    let got = reports(&sim);
    assert_eq!(
        got.get(moved).map(Vec::len),
        Some(1),
        "moved report sent once"
    );
    assert_eq!(got.len(), 11, "no report appeared under a new id");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_of_six_thousand_reports_in_the_lookback_is_read_completely() {
    let sim = mail_sim().await;
    let spec = ReportSpec {
        mix: FormatMix::only(WrapperFormat::Inline),
        ..ReportSpec::new(6_000, ago(6 * 86_400), ago(60), 41)
    };
    let facts = sim.add_reports(TENANT_ID, MAILBOX, spec);
    let (_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &opts(MAILBOX));
    s.tenants
        .get_mut("contoso")
        .unwrap()
        .mail_requests_per_minute = 60_000;
    sim.set_mail_faults(
        TENANT_ID,
        MailFaults {
            requests_per_window: 1_000_000,
            ..MailFaults::default()
        },
    );
    let app = TestApp::spawn(s).await;
    wait_until(Duration::from_secs(300), "6,000 reports delivered", || {
        reports(&sim).len() >= 6_000
    })
    .await;
    let got = reports(&sim);
    for f in &facts {
        assert_eq!(
            got.get(&f.immutable_id).map(Vec::len),
            Some(1),
            "report {} received {:?}",
            f.immutable_id,
            f.received
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_policy_denial_names_the_fix_and_the_other_sources_keep_flowing() {
    let sim = mail_sim().await;
    sim.add_reports(
        TENANT_ID,
        MAILBOX,
        ReportSpec::new(3, ago(3600), ago(60), 51),
    );
    sim.set_mail_access_policy(
        TENANT_ID,
        CLIENT_ID,
        Some(vec!["someone-else@contoso.com".into()]),
    );
    sim.insert_alert(TENANT_ID, alert_json("da-policy-1", &iso7_ago(120)));
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &opts(MAILBOX));
    let app = TestApp::spawn(s.clone()).await;
    wait_until(Duration::from_secs(30), "the alert delivered", || {
        native_ids(&delivered_alerts(&sim)).contains("da-policy-1")
    })
    .await;
    wait_until_async(
        Duration::from_secs(30),
        "the mailbox failure on /status",
        || async {
            let (_, st) = app.get("/status").await;
            st["tenants"]["contoso"]["sources"]["phishing_reports"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("Access to OData is disabled"))
        },
    )
    .await;
    let (_, st) = app.get("/status").await;
    let err = st["tenants"]["contoso"]["sources"]["phishing_reports"]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("Application Access Policy") && err.contains(MAILBOX),
        "the fix names the policy and the mailbox: {err}"
    );
    let report = check::run(&s).await;
    let row = report
        .rows
        .iter()
        .find(|r| r.check == "probe phishing_reports")
        .unwrap_or_else(|| panic!("no probe row:\n{}", report.to_table()));
    assert_eq!(row.result, Outcome::Fail, "{}", report.to_table());
    assert!(
        row.fix
            .as_deref()
            .is_some_and(|f| f.contains("Test-ApplicationAccessPolicy") && f.contains(MAILBOX)),
        "{}",
        report.to_table()
    );
    assert!(reports(&sim).is_empty());
    // Lifting the policy lets the reports through.
    sim.set_mail_access_policy(TENANT_ID, CLIENT_ID, None);
    wait_until(Duration::from_secs(30), "3 reports", || {
        reports(&sim).len() >= 3
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_auto_reads_the_one_set_in_defender_and_says_so() {
    let sim = mail_sim().await;
    sim.add_reports(
        TENANT_ID,
        MAILBOX,
        ReportSpec::new(5, ago(3600), ago(60), 61),
    );
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &opts("auto"));
    // Nothing set in Defender yet: the source says which setting to change.
    let app = TestApp::spawn(s.clone()).await;
    wait_until_async(
        Duration::from_secs(30),
        "the missing setting named",
        || async {
            let (_, st) = app.get("/status").await;
            st["tenants"]["contoso"]["sources"]["phishing_reports"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("User reported settings"))
        },
    )
    .await;
    app.stop().await;

    sim.set_report_policy(TENANT_ID, Some(MAILBOX));
    let app = TestApp::spawn(s.clone()).await;
    wait_until(Duration::from_secs(30), "5 reports", || {
        reports(&sim).len() >= 5
    })
    .await;
    let (_, st) = app.get("/status").await;
    let source = &st["tenants"]["contoso"]["sources"]["phishing_reports"];
    assert!(
        source["mailbox"].as_str().unwrap_or("").contains(MAILBOX),
        "{source}"
    );
    assert!(
        source["note"].as_str().unwrap_or("").contains("auto"),
        "{source}"
    );
    let report = check::run(&s).await;
    let row = report
        .rows
        .iter()
        .find(|r| r.check == "probe phishing_reports")
        .unwrap();
    assert_eq!(row.result, Outcome::Pass, "{}", report.to_table());
    assert!(row.detail.contains(MAILBOX), "{}", row.detail);
    app.stop().await;
}

/// A plain message in MIME, for crafted originals.
fn mime(subject: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bad Actor <ceo@contoso-payments.com>\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n\
         Message-ID: <crafted-{}@contoso-payments.com>\r\nDate: Tue, 14 Jan 2025 09:11:58 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n{body}",
        subject.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_that_cannot_be_read_in_full_are_forwarded_with_what_was_read() {
    let sim = mail_sim().await;
    let now = ago(120);
    let broken_boundary = mime(
        "Broken",
        "multipart/mixed; boundary=\"zz\"",
        "--zz\r\nContent-Type: text/plain\r\n\r\nclick https://evil.example/a\r\n--zz\r\nContent-Type: text/html\r\n\r\n<a href=",
    );
    let unknown_charset = mime(
        "Charset",
        "text/plain; charset=x-no-such-charset",
        "caf\u{e9} https://evil.example/b",
    );
    let mut big = mime(
        "Big",
        "multipart/mixed; boundary=\"b\"",
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\n\r\n",
    );
    // 30 MB of attachment, base64 in 76-character lines.
    let line = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n";
    for _ in 0..(30 * 1024 * 1024 / 57) {
        big.extend_from_slice(line.as_bytes());
    }
    big.extend_from_slice(b"--b--\r\n");
    let cases = [
        ("broken", Report::eml("bob@contoso.com", "Phishing: broken", now, broken_boundary)),
        ("charset", Report::item("bob@contoso.com", "Phishing: charset", now, unknown_charset)),
        ("big", Report::item("bob@contoso.com", "Phishing: big", now, big)),
        (
            "refused",
            Report::eml("bob@contoso.com", "Phishing: refused", now, mime("Refused", "text/plain", "x")),
        ),
        (
            "truncated",
            Report::eml(
                "bob@contoso.com",
                "Phishing: truncated",
                now,
                mime("Truncated", "multipart/mixed; boundary=\"t\"", "--t\r\nContent-Type: text/plain\r\n\r\nhello https://evil.example/t\r\n--t\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfs\r\n--t--\r\n"),
            ),
        ),
        (
            "deleted",
            Report::eml("bob@contoso.com", "Phishing: deleted", now, mime("Deleted", "text/plain", "x")),
        ),
        (
            "reference",
            Report {
                attachments: vec![ReportAttachment::Reference {
                    name: "report.eml".into(),
                    source_url: "https://contoso.sharepoint.com/x".into(),
                }],
                ..Report::item("bob@contoso.com", "Phishing: reference only", now, Vec::new())
            },
        ),
    ];
    let mut ids: HashMap<&str, ReportFacts> = HashMap::new();
    for (name, r) in cases {
        ids.insert(name, sim.add_report(TENANT_ID, MAILBOX, r));
    }
    sim.set_mail_faults(
        TENANT_ID,
        MailFaults {
            refuse_value: vec![(
                ids["refused"].attachment_ids[0].clone(),
                ValueRefusal::AccessDenied,
            )],
            truncated: vec![ids["truncated"].attachment_ids[0].clone()],
            delete_on_fetch: vec![ids["deleted"].immutable_id.clone()],
            ..MailFaults::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &opts(MAILBOX))).await;
    wait_until(Duration::from_secs(120), "every report forwarded", || {
        reports(&sim).len() >= ids.len()
    })
    .await;
    let got = reports(&sim);
    let alert = |name: &str| got[&ids[name].immutable_id][0].clone();
    let error = |name: &str| {
        alert(name)["normalization_error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    assert!(error("broken").contains("boundary"), "{}", error("broken"));
    let broken_urls: Vec<Value> = alert("broken")["email"]["message"]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["url"].clone())
        .collect();
    assert!(
        strings(&Value::Array(broken_urls)).contains(&"https://evil.example/a".to_string()),
        "what parsed is kept"
    );
    assert!(
        error("charset").contains("x-no-such-charset"),
        "{}",
        error("charset")
    );
    let big = alert("big");
    assert_eq!(big["email"]["message"]["attachments"][0]["name"], "big.bin");
    assert!(
        big["email"]["original"]["base64"].is_null(),
        "30 MB original left out"
    );
    assert!(big["email"]["original"]["sha256"].is_string());
    assert!(big["email"]["original"]["omitted"].is_string());
    assert!(error("refused").contains("403"), "{}", error("refused"));
    assert!(
        !error("truncated").is_empty(),
        "a cut attachment is named: {}",
        alert("truncated")["email"]
    );
    assert!(error("deleted").contains("deleted"), "{}", error("deleted"));
    for name in [
        "broken",
        "charset",
        "big",
        "refused",
        "truncated",
        "deleted",
        "reference",
    ] {
        assert_eq!(alert(name)["kind"], "phishing_report", "{name}");
        assert_eq!(alert(name)["email"]["verdict"], "phishing", "{name}");
    }
    let (_, st) = app.get("/status").await;
    assert_eq!(
        st["tenants"]["contoso"]["sources"]["phishing_reports"]["counts"]["quarantined"], 0,
        "nothing quarantined: {st}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_its_submission_and_defenders_alert_name_each_other() {
    let sim = mail_sim().await;
    let spec = ReportSpec {
        mix: FormatMix::only(WrapperFormat::EmlAttachment),
        ..ReportSpec::new(1, ago(1200), ago(1100), 71)
    };
    let report = sim.add_reports(TENANT_ID, MAILBOX, spec).remove(0);
    let original = &report.originals[0];
    let message_id = original.message_id.clone().unwrap();
    let network_id = original.network_message_id.clone().unwrap();
    let (_dir, db) = temp_db();
    // The report first: its links arrive later, as `linked` revisions.
    let app = TestApp::spawn(settings(&sim, &db, &opts(MAILBOX))).await;
    wait_until(Duration::from_secs(30), "the report", || {
        !reports(&sim).is_empty()
    })
    .await;
    app.stop().await;

    let mut alert = alert_json("user-reported-1", &iso7_ago(900));
    alert["title"] = "Email reported by user as malware or phish".into();
    alert["evidence"] = serde_json::json!([{
        "@odata.type": "#microsoft.graph.security.analyzedMessageEvidence",
        "verdict": "unknown", "roles": [],
        "networkMessageId": network_id,
        "recipientEmailAddress": report.reporter,
        "subject": original.subject
    }]);
    sim.insert_alert(TENANT_ID, alert);
    sim.insert_submission(
        TENANT_ID,
        "emailThreats",
        serde_json::json!({
            "@odata.type": "#microsoft.graph.security.emailContentThreatSubmission",
            "id": "7a7a7a7a-0000-4000-8000-000000000071", "createdDateTime": iso7_ago(900),
            "contentType": "email", "category": "phishing", "status": "succeeded", "source": "user",
            "recipientEmailAddress": report.reporter, "sender": original.from,
            "internetMessageId": message_id, "emailSubject": original.subject
        }),
    );
    let extra = "[tenants.contoso.sources.submissions]\nenabled = true\ninterval = \"1s\"\nsettle = \"1s\"\n";
    let mut o = opts(MAILBOX);
    o.extra_sources = o.extra_sources.replace(
        "[tenants.contoso.sources.submissions]\nenabled = false\n",
        extra,
    );
    let app = TestApp::spawn(settings(&sim, &db, &o)).await;
    let related_to = |a: &Value, source: &str| {
        a["related"]
            .as_array()
            .is_some_and(|r| r.iter().any(|l| l["source"] == source))
    };
    wait_until(Duration::from_secs(60), "the report linked to both", || {
        reports(&sim)
            .get(&report.immutable_id)
            .is_some_and(|versions| {
                versions.iter().any(|v| related_to(v, "alerts"))
                    && versions.iter().any(|v| related_to(v, "submissions"))
            })
    })
    .await;
    let all = delivered_alerts(&sim);
    let alert = all
        .iter()
        .find(|a| a["native_id"] == "user-reported-1")
        .unwrap();
    assert!(
        related_to(alert, "phishing_reports"),
        "{}",
        alert["related"]
    );
    let submission = all.iter().find(|a| a["source"] == "submissions").unwrap();
    assert!(
        related_to(submission, "phishing_reports"),
        "{}",
        submission["related"]
    );
    let versions = &reports(&sim)[&report.immutable_id];
    let linked: Vec<&Value> = versions
        .iter()
        .filter(|v| v["change"] == "linked")
        .collect();
    assert!(!linked.is_empty());
    for v in &linked {
        assert!(
            v["version"].as_str().unwrap().starts_with("r1#l"),
            "{}",
            v["version"]
        );
        // The linked revision keeps the parsed original.
        assert_eq!(v["email"]["message"]["message_id"], message_id.as_str());
    }
    let revisions: Vec<i64> = versions
        .iter()
        .map(|v| v["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(
        revisions.len(),
        revisions.iter().collect::<HashSet<_>>().len()
    );
    app.stop().await;
}
