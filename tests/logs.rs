//! A full run's logs, captured at debug level, must not contain the client secret, any token the
//! simulator issued, or the Dropzone API key. Its own binary: it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use m365_ingest::app::App;
use m365_ingest::config::{LogConfig, LogFormat, Settings};
use m365_sim::{DropzoneBehavior, Faults, SimConfig, Simulator};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const SECRET: &str = "S3cr3t~client~value~9f2a";
const API_KEY: &str = "dz-api-key-4e1f9c77";
const TENANT: &str = "d1a2b3c4-0000-4000-8000-0000000000aa";

/// A `client_secret_expires` date with `days` whole days left: its midnight (UTC) falls within
/// the day after now + `days`.
fn in_days(days: u64) -> String {
    let t = SystemTime::now() + Duration::from_secs((days + 1) * 86_400);
    let ticks = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64 / 100;
    m365_ingest::time::format_ticks(ticks)[..10].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_full_run_contain_no_secret_token_or_api_key() {
    let capture = Capture::default();
    let cfg = LogConfig {
        format: LogFormat::Json,
        level: "debug".into(),
    };
    tracing::subscriber::set_global_default(m365_ingest::telemetry::subscriber(
        &cfg,
        capture.clone(),
    ))
    .unwrap();

    let sim = Simulator::start(SimConfig {
        token_lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    // The daemon below runs at 6000 requests a minute; so does the simulator's budget.
    sim.set_graph_rate_limit(6000);
    sim.add_tenant(TENANT);
    sim.add_app(
        TENANT,
        "c1",
        SECRET,
        &["SecurityAlert.Read.All", "Mail.Read"],
    );
    // The reporting mailbox is outside the app's Exchange access policy: the logs name the fix.
    sim.add_mailbox(TENANT, "phish@contoso.com");
    sim.set_mail_access_policy(TENANT, "c1", Some(vec!["other@contoso.com".into()]));
    let now = SystemTime::now();
    sim.generate_alerts(
        TENANT,
        300,
        now - Duration::from_secs(86_400),
        now - Duration::from_secs(120),
    );
    // Some failures too, so the error paths log.
    sim.set_faults(
        TENANT,
        Faults {
            throttle_every: Some(4),
            retry_after: Some("1".into()),
            ..Default::default()
        },
    );
    sim.set_dropzone(DropzoneBehavior::FailWith {
        status: 503,
        retry_after: None,
    });

    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[store]
url = "sqlite://{db}"
[server]
listen = "127.0.0.1:0"
[forward]
url = "{dz}"
api_key = "{API_KEY}"
[tenants.contoso]
tenant_id = "{TENANT}"
client_id = "c1"
client_secret = "{SECRET}"
client_secret_expires = "{expires}"
login_url = "{login}"
graph_url = "{graph}"
graph_requests_per_minute = 6000
[tenants.contoso.sources.alerts]
interval = "1s"
settle = "1s"
[tenants.contoso.sources.incidents]
enabled = false
[tenants.contoso.sources.submissions]
enabled = false
[tenants.contoso.sources.phishing_reports]
mailbox = "phish@contoso.com"
interval = "1s"
"#,
        db = dir.path().join("db.sqlite").display(),
        dz = sim.dropzone_url(),
        login = sim.login_url(),
        graph = sim.graph_url(),
        expires = in_days(10),
    );
    let app = App::build(Settings::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let stop = app.stop_token();
    let run = tokio::spawn(app.run_until_stopped());
    tokio::time::timeout(Duration::from_secs(20), async {
        while sim.tokens_issued(TENANT) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("tokens were refreshed");
    sim.set_dropzone(DropzoneBehavior::Accept);
    tokio::time::timeout(Duration::from_secs(40), async {
        while sim.delivered_count() < 300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("everything delivered");
    stop.cancel();
    run.await.unwrap().unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 20, "the run logged");
    assert!(logs.contains("batch delivered"));
    assert!(
        logs.contains("the client secret expires in 10 days"),
        "the secret's coming expiry is warned about"
    );
    assert!(
        logs.lines().any(|l| l.contains("poll failed")
            && l.contains("phishing_reports")
            && l.contains("Access to OData is disabled")
            && l.contains("Test-ApplicationAccessPolicy")),
        "the access-policy denial is logged with its fix"
    );
    assert!(!logs.contains(SECRET), "client secret in logs");
    assert!(!logs.contains(API_KEY), "Dropzone API key in logs");
    for token in sim.issued_tokens() {
        assert!(!logs.contains(&token), "a bearer token in logs");
        // Even a token's signature part alone must not appear.
        let sig = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(sig));
    }
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every log line is one JSON object");
    }
}
