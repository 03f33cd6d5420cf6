//! Test scaffolding: a simulator with one tenant, an app on a fresh SQLite file, and waiting on
//! conditions with a deadline (never a bare sleep).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use m365_ingest::app::App;
use m365_ingest::config::Settings;
use m365_ingest::AppStore;
use m365_sim::{SimConfig, Simulator};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TENANT_ID: &str = "6a1e2f3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
pub const CLIENT_ID: &str = "0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f";
pub const SECRET: &str = "test-client-secret-Zq8~x";
pub const DROPZONE_KEY: &str = "test-dropzone-api-key-7731";

pub const ALL_ROLES: &[&str] = &[
    "SecurityAlert.Read.All",
    "SecurityIncident.Read.All",
    "ThreatSubmission.Read.All",
];

pub async fn sim_with(cfg: SimConfig) -> Simulator {
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    // The daemon here runs at 6000 requests a minute for speed; the simulator's budget matches.
    // tests/api/budget.rs keeps both at their defaults.
    sim.set_graph_rate_limit(6000);
    sim.add_tenant(TENANT_ID);
    sim.add_app(TENANT_ID, CLIENT_ID, SECRET, ALL_ROLES);
    sim
}

pub async fn sim() -> Simulator {
    sim_with(SimConfig::default()).await
}

/// Knobs a test may turn; everything else is the documented default, sped up.
#[derive(Clone)]
pub struct Opts {
    pub interval: &'static str,
    pub settle: &'static str,
    pub overlap: &'static str,
    pub start: &'static str,
    pub batch_size: usize,
    pub concurrency: usize,
    pub extra_alerts: String,
    pub extra_forward: String,
    /// Raw TOML appended after the alerts section (other sources' sections).
    pub extra_sources: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            interval: "1s",
            settle: "1s",
            overlap: "10m",
            start: "lookback",
            batch_size: 100,
            concurrency: 4,
            extra_alerts: String::new(),
            extra_forward: String::new(),
            extra_sources: "[tenants.contoso.sources.incidents]\nenabled = false\n[tenants.contoso.sources.submissions]\nenabled = false\n".into(),
        }
    }
}

pub fn settings(sim: &Simulator, db: &Path, o: &Opts) -> Settings {
    settings_on(sim, &format!("sqlite://{}", db.display()), o)
}

/// `settings` on any store URL (a Postgres test database).
pub fn settings_on(sim: &Simulator, store_url: &str, o: &Opts) -> Settings {
    let toml = format!(
        r#"
[store]
url = "{store_url}"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[forward]
url = "{dz}"
api_key = "{DROPZONE_KEY}"
batch_size = {batch}
concurrency = {conc}
timeout = "5s"
{extra_fwd}
[tenants.contoso]
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
login_url = "{login}"
graph_url = "{graph}"
start = "{start}"
graph_requests_per_minute = 6000
[tenants.contoso.sources.alerts]
interval = "{interval}"
settle = "{settle}"
overlap = "{overlap}"
{extra}
{extra_sources}
"#,
        dz = sim.dropzone_url(),
        login = sim.login_url(),
        graph = sim.graph_url(),
        batch = o.batch_size,
        conc = o.concurrency,
        extra_fwd = o.extra_forward,
        start = o.start,
        interval = o.interval,
        settle = o.settle,
        overlap = o.overlap,
        extra = o.extra_alerts,
        extra_sources = o.extra_sources,
    );
    Settings::from_toml(&toml).expect("test settings are valid")
}

/// One more `[tenants.<name>]` block against `sim`, alerts only, polled every second: append it
/// to `Opts::extra_sources` to run several tenants in one daemon.
pub fn tenant_toml(
    sim: &Simulator,
    name: &str,
    tenant_id: &str,
    client_id: &str,
    secret: &str,
) -> String {
    format!(
        r#"
[tenants.{name}]
tenant_id = "{tenant_id}"
client_id = "{client_id}"
client_secret = "{secret}"
login_url = "{login}"
graph_url = "{graph}"
graph_requests_per_minute = 6000
[tenants.{name}.sources.alerts]
interval = "1s"
settle = "1s"
[tenants.{name}.sources.incidents]
enabled = false
[tenants.{name}.sources.submissions]
enabled = false
"#,
        login = sim.login_url(),
        graph = sim.graph_url(),
    )
}

/// A running daemon.
pub struct TestApp {
    pub port: u16,
    pub store: Arc<AppStore>,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> TestApp {
        // TEST_LOG=1 shows the daemon's logs (quiet by default, as Z2P does).
        if std::env::var_os("TEST_LOG").is_some() {
            let cfg = m365_ingest::config::LogConfig {
                format: m365_ingest::config::LogFormat::Pretty,
                level: "info".into(),
            };
            let _ = tracing::subscriber::set_global_default(m365_ingest::telemetry::subscriber(
                &cfg,
                std::io::stdout,
            ));
        }
        let app = App::build(settings).await.expect("app builds");
        let port = app.port();
        let store = app.store();
        let stop = app.stop_token();
        let handle = tokio::spawn(app.run_until_stopped());
        TestApp {
            port,
            store,
            stop,
            handle,
        }
    }

    /// A crash: every task is dropped where it stands.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// A graceful stop, as SIGTERM does.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("run task joins")
            .expect("run ends cleanly");
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .expect("server answers");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// A simulator whose app also has ThreatHunting.Read.All.
pub async fn hunting_sim() -> Simulator {
    let s = sim().await;
    let mut roles = ALL_ROLES.to_vec();
    roles.push("ThreatHunting.Read.All");
    s.add_app(TENANT_ID, CLIENT_ID, SECRET, &roles);
    s
}

/// Advanced-hunting calls the simulator received.
pub fn hunting_calls(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with("/runHuntingQuery"))
        .count()
}

pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("m365-ingest.db");
    (dir, db)
}

/// Polls `check` every 50 ms until it holds or `deadline` passes (then panics naming `what`).
pub async fn wait_until(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check() {
            return;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As `wait_until`, for conditions that need an await.
pub async fn wait_until_async<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

/// Alerts the simulated Dropzone accepted, by event id, with how often each arrived.
pub fn delivered_counts(sim: &Simulator) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in sim.delivered_event_ids() {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// Accepted alert bodies (needs keep_bodies).
/// Alerts the simulated Dropzone accepted, each checked against the published output contract
/// (`docs/alert.v1.schema.json`): whatever a test looks at is also proven to be a valid alert.
pub fn delivered_alerts(sim: &Simulator) -> Vec<Value> {
    let alerts: Vec<Value> = sim
        .received()
        .into_iter()
        .filter(|b| (200..300).contains(&b.status))
        .flat_map(|b| b.alerts)
        .collect();
    for a in &alerts {
        assert_valid_alert(a);
    }
    alerts
}

/// The JSON Schema of `m365-ingest.alert.v1`, compiled once.
fn alert_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/alert.v1.schema.json"
        ))
        .expect("docs/alert.v1.schema.json is readable");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    })
}

/// A minimal valid `m365-ingest.alert.v1`, for tests of the contract itself.
pub fn example_alert() -> Value {
    serde_json::json!({
        "schema": "m365-ingest.alert.v1",
        "event_id": "0".repeat(64), "alert_id": "t:alerts:a1", "kind": "alert", "revision": 1,
        "change": "created", "observed_at": "2026-11-27T10:00:00.0000000Z", "historical": false,
        "tenant": {"id": "t", "name": "contoso"}, "source": "alerts", "native_id": "a1",
        "version": "2026-11-27T09:59:00.1234567Z", "title": "x", "description": null,
        "category": null, "product": null, "detection_source": null, "severity": "high",
        "status": "new", "raw_status": "new", "classification": null, "determination": null,
        "assigned_to": null, "created_at": null, "updated_at": null, "first_activity_at": null,
        "last_activity_at": null, "resolved_at": null, "links": {"portal": null, "incident": null},
        "incident_id": null, "related": [], "duplicate_of": null, "indicators": [],
        "mitre_techniques": [], "tags": [], "comments": [], "entities": [], "raw": {}
    })
}

/// Panics, naming every violation, unless `alert` is a valid `m365-ingest.alert.v1`.
pub fn assert_valid_alert(alert: &Value) {
    let errors: Vec<String> = alert_schema()
        .iter_errors(alert)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .take(10)
        .collect();
    assert!(
        errors.is_empty(),
        "alert {} ({}) breaks docs/alert.v1.schema.json:\n{}",
        alert["event_id"],
        alert["source"],
        errors.join("\n")
    );
}

pub fn native_ids(alerts: &[Value]) -> HashSet<String> {
    alerts
        .iter()
        .filter_map(|a| a["native_id"].as_str().map(str::to_string))
        .collect()
}

/// A minimal alert in Microsoft's shape.
pub fn alert_json(id: &str, last_update: &str) -> Value {
    serde_json::json!({
        "@odata.type": "#microsoft.graph.security.alert",
        "id": id,
        "providerAlertId": id,
        "incidentId": "1001",
        "status": "new",
        "severity": "medium",
        "classification": null,
        "determination": null,
        "serviceSource": "microsoftDefenderForEndpoint",
        "detectionSource": "antivirus",
        "tenantId": TENANT_ID,
        "title": format!("Test alert {id}"),
        "description": "A test alert",
        "category": "Malware",
        "createdDateTime": last_update,
        "lastUpdateDateTime": last_update,
        "comments": [],
        "mitreTechniques": ["T1059"],
        "evidence": [{
            "@odata.type": "#microsoft.graph.security.ipEvidence",
            "verdict": "suspicious",
            "roles": [],
            "ipAddress": "203.0.113.7"
        }]
    })
}

/// RFC 3339 with 7 fractional digits, `secs_ago` before now.
pub fn iso7_ago(secs_ago: u64) -> String {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    let ticks = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64 / 100;
    m365_ingest::time::format_ticks(ticks)
}

/// `n` alerts whose versions all fall in one second 15 minutes ago, a millisecond apart: with a
/// small page cap only filters inside that second tell them apart.
pub fn insert_in_one_second(sim: &Simulator, prefix: &str, n: usize) {
    let second = iso7_ago(900);
    for i in 0..n {
        let mut t = second.clone();
        t.replace_range(20..27, &format!("{:07}", i * 1000));
        sim.insert_alert(TENANT_ID, alert_json(&format!("{prefix}{i:02}"), &t));
    }
}

/// `n` alerts that share one 100-ns tick 15 minutes ago: no time filter can tell them apart, so
/// with a small page cap only paging within that tick reads them all.
pub fn insert_in_one_tick(sim: &Simulator, prefix: &str, n: usize) {
    let tick = iso7_ago(900);
    for i in 0..n {
        sim.insert_alert(TENANT_ID, alert_json(&format!("{prefix}{i:02}"), &tick));
    }
}

/// Writes a self-signed RSA certificate valid for `days` more days (negative: expired) and its
/// key to `dir/app.pem`, as an operator would mount it; returns the path and the certificate
/// alone (what is uploaded to the app registration).
pub fn certificate_file(dir: &Path, days: i64) -> (PathBuf, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["m365-ingest.test".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    // Half a day past the whole days, so "days left" is exactly `days`.
    let end = m365_ingest::time::unix_seconds_now() + days * 86_400 + 43_200;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(end as u64);
    let cert = params.self_signed(&key).unwrap().pem();
    let path = dir.join("app.pem");
    std::fs::write(&path, format!("{cert}{}", key.serialize_pem())).unwrap();
    (path, cert)
}

/// The tenant signs in with the certificate in `path` instead of its secret.
pub fn use_certificate(s: &mut Settings, path: &Path) {
    let t = s.tenants.get_mut("contoso").unwrap();
    t.client_secret = None;
    t.client_certificate_file = Some(path.to_path_buf());
    t.client_certificate = Some(Arc::new(
        m365_ingest::certificate::ClientCertificate::load(
            "tenants.contoso.client_certificate_file",
            path,
        )
        .unwrap(),
    ));
}
