//! Certificate credentials end to end: the daemon signs in with `client_certificate_file` (the
//! simulator verifies the PS256 assertion against the uploaded certificate), alerts flow, the
//! certificate's own expiry shows in `/status`, `/metrics` and `check`, an expired one fails
//! `/readyz`, and a certificate never uploaded is named with the fix.

use std::time::Duration;

use m365_ingest::check::{self, Outcome};

use crate::helpers::*;

fn row<'a>(r: &'a check::Report, name: &str) -> &'a check::CheckRow {
    r.rows
        .iter()
        .find(|x| x.check == name)
        .unwrap_or_else(|| panic!("no `{name}` row in\n{}", r.to_table()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_signs_in_its_expiry_is_shown_and_an_expired_one_fails_readyz() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, cert) = certificate_file(dir.path(), 10);
    sim.add_app_certificate(TENANT_ID, CLIENT_ID, &cert)
        .unwrap();
    sim.insert_alert(TENANT_ID, alert_json("cert-1", &iso7_ago(900)));
    let (_db_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &Opts::default());
    use_certificate(&mut s, &pem);

    let report = check::run(&s).await;
    let table = report.to_table();
    assert_eq!(
        row(&report, "token Microsoft Graph").result,
        Outcome::Pass,
        "{table}"
    );
    let credential = row(&report, "credential");
    assert_eq!(credential.result, Outcome::Warn, "{table}");
    assert!(
        credential.detail.contains("certificate x5t#S256=")
            && credential.detail.contains("(10 days left)"),
        "{table}"
    );
    assert!(
        credential
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("Upload certificate"),
        "{table}"
    );
    assert!(!table.contains("PRIVATE KEY"), "{table}");

    let app = TestApp::spawn(s).await;
    wait_until(
        Duration::from_secs(30),
        "the alert, fetched with a certificate's token",
        || sim.delivered_count() >= 1,
    )
    .await;
    assert!(sim.tokens_issued(TENANT_ID) >= 1);
    let (_, status) = app.get("/status").await;
    let c = &status["tenants"]["contoso"]["credential"];
    assert_eq!(c["kind"], "client_certificate", "{status}");
    assert_eq!(c["days_left"], 10, "{status}");
    assert!(status["tenants"]["contoso"]["client_secret_days_left"].is_null());
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", app.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("m365_ingest_client_certificate_days_left{tenant=\"contoso\"}"),
        "{metrics}"
    );
    app.stop().await;

    let (expired_pem, expired) = certificate_file(dir.path(), -2);
    sim.add_app_certificate(TENANT_ID, CLIENT_ID, &expired)
        .unwrap();
    let mut s = settings(&sim, &db, &Opts::default());
    use_certificate(&mut s, &expired_pem);
    let app = TestApp::spawn(s).await;
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    let text = body.to_string();
    assert!(text.contains("client certificate has expired"), "{text}");
    assert!(text.contains("Upload certificate"), "names the fix: {text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_never_uploaded_is_named_with_aadsts700027_and_the_upload_fix() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, _not_uploaded) = certificate_file(dir.path(), 365);
    let (_db_dir, db) = temp_db();
    let mut s = settings(&sim, &db, &Opts::default());
    use_certificate(&mut s, &pem);
    let report = check::run(&s).await;
    let table = report.to_table();
    let token = row(&report, "token Microsoft Graph");
    assert_eq!(token.result, Outcome::Fail, "{table}");
    assert!(token.detail.contains("AADSTS700027"), "{table}");
    assert!(
        token
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("Certificates & secrets → Certificates → Upload certificate"),
        "{table}"
    );
    assert_eq!(row(&report, "credential").result, Outcome::Pass, "{table}");
    assert_ne!(report.exit_code(), 0);
}
