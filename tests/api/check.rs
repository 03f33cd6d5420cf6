//! `m365-ingest check` ("Test & Save") against the simulator: tokens, the roles granted versus
//! those the enabled sources need, unused roles, one probe per source, the Dropzone endpoint,
//! the JSON form and the exit codes of the built binary.

use m365_ingest::check::{self, Outcome, Report};
use m365_ingest::config::Settings;
use m365_sim::{DropzoneBehavior, Simulator};
use secrecy::SecretString;

use crate::helpers::*;

/// Everything the enabled sources need, Cloud Apps included.
const COMPLETE: &[&str] = &[
    "SecurityAlert.Read.All",
    "SecurityIncident.Read.All",
    "ThreatSubmission.Read.All",
    "Investigation.read",
];

/// All four sources enabled against the simulator (Cloud Apps through its Portal URL).
fn all_sources(sim: &Simulator, db: &std::path::Path) -> Settings {
    let opts = Opts {
        extra_sources: String::new(),
        ..Opts::default()
    };
    let mut s = settings(sim, db, &opts);
    s.tenants.get_mut("contoso").unwrap().cloud_apps_url = Some(sim.cloud_apps_url());
    s
}

fn row<'a>(r: &'a Report, check: &str) -> &'a check::CheckRow {
    r.rows
        .iter()
        .find(|x| x.check == check)
        .unwrap_or_else(|| panic!("no `{check}` row in\n{}", r.to_table()))
}

/// Neither form of the report may carry a credential.
fn assert_no_secrets(sim: &Simulator, r: &Report) {
    for text in [r.to_table(), r.to_json()] {
        assert!(!text.contains(SECRET), "client secret printed:\n{text}");
        assert!(!text.contains(DROPZONE_KEY), "API key printed:\n{text}");
        for token in sim.issued_tokens() {
            assert!(!text.contains(&token), "a token was printed:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_registration_passes_every_check_and_sends_no_alert() {
    let sim = sim().await;
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, COMPLETE);
    let (_dir, db) = temp_db();
    let report = check::run(&all_sources(&sim, &db)).await;
    let table = report.to_table();
    assert!(
        report.rows.iter().all(|r| r.result == Outcome::Pass),
        "{table}"
    );
    assert_eq!(report.exit_code(), 0, "{table}");
    for name in [
        "token Microsoft Graph",
        "token Microsoft Cloud App Security",
        "permission alerts",
        "permission incidents",
        "permission submissions",
        "permission cloud_apps",
        "least privilege",
        "probe alerts",
        "probe incidents",
        "probe submissions",
        "probe cloud_apps",
    ] {
        assert_eq!(row(&report, name).tenant.as_deref(), Some("contoso"));
    }
    assert!(row(&report, "token Microsoft Graph")
        .detail
        .contains("ThreatSubmission.Read.All"));
    // The submissions probe asks each of the three lists for one item.
    assert_eq!(
        row(&report, "probe submissions")
            .detail
            .matches("$top=1")
            .count(),
        3
    );
    let dest = report
        .rows
        .iter()
        .find(|r| r.check.starts_with("destination default"))
        .expect("a destination row");
    assert_eq!(dest.result, Outcome::Pass, "{table}");
    // The Dropzone probe is an empty batch: one request, no alert.
    let received = sim.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].event_ids.is_empty());
    assert_eq!(sim.delivered_count(), 0);
    assert_no_secrets(&sim, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_probe_sends_the_filter_its_source_polls_with() {
    let sim = sim().await;
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, COMPLETE);
    let (_dir, db) = temp_db();
    let opts = Opts {
        // The user's casing; Graph only takes Microsoft's.
        extra_alerts:
            "service_sources = [\"MicrosoftDefenderForEndpoint\", \"MICROSOFTSENTINEL\"]\n".into(),
        extra_sources: String::new(),
        ..Opts::default()
    };
    let mut s = settings(&sim, &db, &opts);
    s.tenants.get_mut("contoso").unwrap().cloud_apps_url = Some(sim.cloud_apps_url());
    let report = check::run(&s).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 0, "{table}");
    let alerts = row(&report, "probe alerts");
    assert!(
        alerts.detail.contains("(serviceSource eq 'microsoftDefenderForEndpoint' or serviceSource eq 'microsoftSentinel') and lastUpdateDateTime ge ")
            && alerts.detail.contains("$top=1"),
        "{table}"
    );
    for list in ["emailThreats", "urlThreats", "fileThreats"] {
        assert!(
            row(&report, "probe submissions")
                .detail
                .contains(&format!("{list}?$filter=createdDateTime ge ")),
            "{table}"
        );
    }
    assert!(
        row(&report, "probe incidents")
            .detail
            .contains("$filter=lastUpdateDateTime ge "),
        "{table}"
    );
    // Cloud Apps polls by `date` and by `resolutionDate`: both filters are probed.
    let ca = &row(&report, "probe cloud_apps").detail;
    assert!(
        ca.contains("filters date gte ") && ca.contains("filters resolutionDate gte "),
        "{table}"
    );
    // What reached Graph is the filter itself, not a bare `$top=1`.
    let graph: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/security/"))
        .collect();
    assert!(graph.len() >= 5, "{graph:?}");
    for r in &graph {
        let query: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
        let filter = query.get("$filter").map(String::as_str).unwrap_or_default();
        assert!(
            filter.contains("DateTime ge ") && filter.contains("DateTime lt "),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
        if r.path.ends_with("/alerts_v2") {
            assert!(
                filter.starts_with("(serviceSource eq 'microsoftDefenderForEndpoint' or "),
                "{filter}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_manage_is_accepted_for_cloud_apps_alerts() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &[
            "SecurityAlert.Read.All",
            "SecurityIncident.Read.All",
            "ThreatSubmission.Read.All",
            "Discovery.manage",
        ],
    );
    let (_dir, db) = temp_db();
    let report = check::run(&all_sources(&sim, &db)).await;
    let table = report.to_table();
    // Microsoft lets Discovery.manage list alerts: a wider grant than needed, not a failure.
    let perm = row(&report, "permission cloud_apps");
    assert_eq!(perm.result, Outcome::Warn, "{table}");
    assert!(
        perm.detail.contains("allowed by Discovery.manage"),
        "{table}"
    );
    assert_eq!(
        row(&report, "probe cloud_apps").result,
        Outcome::Pass,
        "{table}"
    );
    assert_eq!(report.exit_code(), 0, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_fails_and_names_it_with_the_fix() {
    let sim = sim().await;
    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &["SecurityAlert.Read.All", "SecurityIncident.Read.All"],
    );
    let (_dir, db) = temp_db();
    let report = check::run(&all_sources(&sim, &db)).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 1, "{table}");
    let missing = row(&report, "permission submissions");
    assert_eq!(missing.result, Outcome::Fail);
    assert!(
        missing.detail.contains("ThreatSubmission.Read.All"),
        "{table}"
    );
    let fix = missing.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains("API permissions → Add a permission → Microsoft Graph → Application permissions → ThreatSubmission.Read.All, then Grant admin consent"),
        "{fix}"
    );
    // The probe confirms it: Graph answers 403.
    let probe = row(&report, "probe submissions");
    assert_eq!(probe.result, Outcome::Fail);
    assert!(probe.detail.contains("HTTP 403"), "{table}");
    // Without Investigation.read, the Cloud Apps token carries no role and its source fails too.
    assert_eq!(row(&report, "permission cloud_apps").result, Outcome::Fail);
    assert!(
        table.contains(
            "Microsoft Cloud App Security → Application permissions → Investigation.Read"
        ),
        "{table}"
    );
    assert_eq!(row(&report, "permission alerts").result, Outcome::Pass);
    assert_no_secrets(&sim, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_granted_but_unused_are_warnings_not_failures() {
    let sim = sim().await;
    let mut roles = COMPLETE.to_vec();
    roles.extend([
        "Mail.Read",
        "Directory.Read.All",
        "ThreatHunting.Read.All",
        "Machine.LiveResponse",
        "Library.Manage",
        "Machine.Read.All",
    ]);
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    let (_dir, db) = temp_db();
    let report = check::run(&all_sources(&sim, &db)).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 0, "{table}");
    for role in [
        "Mail.Read",
        "Directory.Read.All",
        "ThreatHunting.Read.All",
        "Machine.LiveResponse",
        "Library.Manage",
        "Machine.Read.All",
    ] {
        let r = row(&report, &format!("unused permission {role}"));
        assert_eq!(r.result, Outcome::Warn, "{table}");
        assert!(
            r.fix
                .as_deref()
                .unwrap_or_default()
                .contains("Remove permission"),
            "{table}"
        );
    }
    assert!(
        row(&report, "unused permission Machine.LiveResponse")
            .detail
            .starts_with("WindowsDefenderATP"),
        "{table}"
    );
    assert!(!report.rows.iter().any(|r| r.check == "least privilege"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_source_makes_its_permission_unused() {
    let sim = sim().await;
    // The default Opts disable incidents and submissions; the app still has their roles.
    let (_dir, db) = temp_db();
    let report = check::run(&settings(&sim, &db, &Opts::default())).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 0, "{table}");
    let r = row(&report, "unused permission ThreatSubmission.Read.All");
    assert_eq!(r.result, Outcome::Warn);
    assert!(r.detail.contains("disabled"), "{table}");
    assert!(!table.contains("probe submissions"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_names_aadsts7000215_and_the_fix() {
    let sim = sim().await;
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, COMPLETE);
    let (_dir, db) = temp_db();
    let mut s = all_sources(&sim, &db);
    let wrong = "wrong-secret-value-8841";
    s.tenants.get_mut("contoso").unwrap().client_secret = Some(SecretString::from(wrong));
    let report = check::run(&s).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 1, "{table}");
    let token = row(&report, "token Microsoft Graph");
    assert_eq!(token.result, Outcome::Fail);
    assert!(token.detail.contains("AADSTS7000215"), "{table}");
    assert!(
        token
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("Certificates & secrets → New client secret"),
        "{table}"
    );
    // Same credentials, same answer: the Cloud Apps token is not asked for, nothing is probed.
    assert_eq!(
        row(&report, "token Microsoft Cloud App Security").result,
        Outcome::Skip
    );
    assert_eq!(row(&report, "probe alerts").result, Outcome::Skip);
    assert!(!table.contains(wrong) && !report.to_json().contains(wrong));
    assert_no_secrets(&sim, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_or_wrong_url_fails_the_destination_check() {
    let sim = sim().await;
    let (_dir, db) = temp_db();
    let s = settings(&sim, &db, &Opts::default());
    for (status, says) in [(401, "api_key"), (404, "forward.url")] {
        sim.set_dropzone(DropzoneBehavior::FailWith {
            status,
            retry_after: None,
        });
        let report = check::run(&s).await;
        let dest = report
            .rows
            .iter()
            .find(|r| r.check.starts_with("destination"))
            .expect("a destination row");
        assert_eq!(dest.result, Outcome::Fail, "{}", report.to_table());
        assert!(dest.detail.contains(&format!("HTTP {status}")));
        assert!(
            dest.fix.as_deref().unwrap_or_default().contains(says),
            "{}",
            report.to_table()
        );
        assert_eq!(report.exit_code(), 1);
        assert_no_secrets(&sim, &report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_an_array_of_checks() {
    let sim = sim().await;
    let (_dir, db) = temp_db();
    let report = check::run(&settings(&sim, &db, &Opts::default())).await;
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), report.rows.len());
    for r in rows {
        assert!(r["check"].is_string(), "{r}");
        assert!(
            ["pass", "warn", "fail", "skip"].contains(&r["result"].as_str().unwrap_or("")),
            "{r}"
        );
        assert!(r["detail"].is_string(), "{r}");
        assert!(r.get("fix").is_some() && r.get("tenant").is_some(), "{r}");
    }
}

/// Runs the built binary (a blocking child process, off the runtime the simulator serves on).
async fn run_binary(args: Vec<String>) -> (Option<i32>, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_m365-ingest"))
            .args(&args)
            .env_remove("M365_INGEST_CONFIG")
            .output()
    })
    .await
    .expect("the child's thread joins")
    .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_when_all_pass_1_on_a_failure_and_78_on_a_bad_config() {
    let sim = sim().await;
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, COMPLETE);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("m365-ingest.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "sqlite://{db}"
[forward]
url = "{dz}"
api_key = "{DROPZONE_KEY}"
[tenants.contoso]
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
login_url = "{login}"
graph_url = "{graph}"
cloud_apps_url = "{cloud_apps}"
"#,
            db = dir.path().join("m365-ingest.db").display(),
            dz = sim.dropzone_url(),
            login = sim.login_url(),
            graph = sim.graph_url(),
            cloud_apps = sim.cloud_apps_url(),
        ),
    )
    .unwrap();
    let path = config.display().to_string();

    let (code, stdout, stderr) =
        run_binary(vec!["--config".into(), path.clone(), "check".into()]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("probe cloud_apps"), "{stdout}");

    let (code, stdout, stderr) = run_binary(vec![
        "--config".into(),
        path.clone(),
        "check".into(),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert!(v.as_array().is_some_and(|a| !a.is_empty()), "{stdout}");

    sim.add_app(
        TENANT_ID,
        CLIENT_ID,
        SECRET,
        &[
            "SecurityAlert.Read.All",
            "SecurityIncident.Read.All",
            "Investigation.read",
        ],
    );
    let (code, stdout, stderr) =
        run_binary(vec!["--config".into(), path.clone(), "check".into()]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("ThreatSubmission.Read.All"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(SECRET) && !text.contains(DROPZONE_KEY),
            "{text}"
        );
    }

    std::fs::write(&config, "[tenants.contoso]\ntenant_id = \"t\"\n").unwrap();
    let (code, stdout, stderr) = run_binary(vec!["--config".into(), path, "check".into()]).await;
    assert_eq!(code, Some(78), "{stdout}{stderr}");
}

/// All sources, with campaign context from advanced hunting on.
fn with_context(sim: &Simulator, db: &std::path::Path) -> Settings {
    let mut s = all_sources(sim, db);
    s.tenants.get_mut("contoso").unwrap().context.hunting = true;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_context_on_check_probes_hunting_and_names_a_missing_role() {
    // Without ThreatHunting.Read.All: the permission row and the probe (a 403) fail, naming it.
    let sim = sim().await;
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, COMPLETE);
    let (_dir, db) = temp_db();
    let report = check::run(&with_context(&sim, &db)).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 1, "{table}");
    for name in ["permission context", "probe context"] {
        let r = row(&report, name);
        assert_eq!(r.result, Outcome::Fail, "{table}");
        let fix = r.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("grant ThreatHunting.Read.All (application) to the app registration and admin-consent it"),
            "{table}"
        );
        assert!(
            fix.contains("tenants.contoso.context.hunting = false"),
            "{table}"
        );
    }
    assert!(
        row(&report, "probe context").detail.contains("HTTP 403"),
        "{table}"
    );
    assert_no_secrets(&sim, &report);

    // Granted: both pass, the probe ran its one-row query, and the role is not "unused".
    let mut roles = COMPLETE.to_vec();
    roles.push("ThreatHunting.Read.All");
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    let report = check::run(&with_context(&sim, &db)).await;
    let table = report.to_table();
    assert_eq!(report.exit_code(), 0, "{table}");
    assert_eq!(
        row(&report, "permission context").result,
        Outcome::Pass,
        "{table}"
    );
    let probe = row(&report, "probe context");
    assert_eq!(probe.result, Outcome::Pass, "{table}");
    assert!(
        probe
            .detail
            .contains("EmailEvents | take 1: HTTP 200, 1 row(s)"),
        "{table}"
    );
    assert!(
        !table.contains("unused permission ThreatHunting.Read.All"),
        "{table}"
    );
    let queries = sim.hunting_queries(TENANT_ID);
    assert_eq!(queries, vec!["EmailEvents | take 1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hunting_quota_in_check_is_a_warning() {
    let sim = sim().await;
    let mut roles = COMPLETE.to_vec();
    roles.push("ThreatHunting.Read.All");
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    sim.set_hunting_faults(
        TENANT_ID,
        m365_sim::HuntingFaults {
            cpu_quota_for: Some(std::time::Duration::from_secs(600)),
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let report = check::run(&with_context(&sim, &db)).await;
    let table = report.to_table();
    let probe = row(&report, "probe context");
    assert_eq!(probe.result, Outcome::Warn, "{table}");
    assert!(probe.detail.contains("HTTP 429"), "{table}");
    assert_eq!(report.exit_code(), 0, "{table}");
}
