//! Configuration: the TOML file, `M365_INGEST__…` environment overrides, `*_file` secrets,
//! defaults and validation (design §3). Every error names the offending key and the fix; the
//! binary exits with 78 (EX_CONFIG) on any of them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::normalize::SourceKind;

/// A configuration problem, phrased for the operator who must fix the file.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The whole configuration after defaults, environment overrides and validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The default Dropzone destination; a tenant may name its own.
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
    #[serde(default)]
    pub leases: LeaseConfig,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// `[store]`: where versions, the outbox and cursors live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (the default) or `postgres://…`.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// A file holding the URL, for a Postgres URL with a password.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Delivered bodies are kept this long (for replay), default 30 days.
    #[serde(default = "default_retention", deserialize_with = "duration")]
    pub retention: Duration,
    /// Per-alert dedup state is kept this long after its last change, default 180 days.
    #[serde(default = "default_dedup_retention", deserialize_with = "duration")]
    pub dedup_retention: Duration,
    /// Above this many undelivered versions of one tenant its pollers pause.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
    /// Postgres: connections in the pool (SQLite always uses one writer and two readers).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Postgres: how long connecting, or waiting for a free pooled connection, may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            retention: default_retention(),
            dedup_retention: default_dedup_retention(),
            max_pending: default_max_pending(),
            pool_size: default_pool_size(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

impl StoreConfig {
    /// The store URL: `url`, else the contents of `url_file`, else the embedded SQLite default.
    pub fn resolved_url(&self) -> SecretString {
        self.url
            .clone()
            .unwrap_or_else(|| SecretString::from("sqlite://data/m365-ingest.db"))
    }
}

/// `[server]`: the health, status and metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token required for `/status` and `/metrics` (optional).
    #[serde(default)]
    pub status_token: Option<SecretString>,
    #[serde(default)]
    pub readyz_requires: ReadyzRequires,
    /// How long SIGTERM waits for in-flight work before exiting anyway.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            status_token: None,
            readyz_requires: ReadyzRequires::All,
            shutdown_grace: default_grace(),
        }
    }
}

/// How many tenants must be healthy for `/readyz` to answer 200.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadyzRequires {
    #[default]
    All,
    Any,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: default_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// `[forward]`: one Dropzone destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    pub url: String,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: ForwardAuth,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_forward_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// How the API key is put in the `Authorization` header.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ForwardAuth {
    #[default]
    Bearer,
    Raw,
}

/// `[leases]` (Postgres with several replicas).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    #[serde(default = "default_lease_renew", deserialize_with = "duration")]
    pub renew: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: default_lease_ttl(),
            renew: default_lease_renew(),
        }
    }
}

/// Microsoft's `microsoft.graph.security.serviceSource` members (Graph v1.0 CSDL, in declaration
/// order; `graph-security-enums-v1.0.json`). `service_sources` values go into `$filter` as enum
/// literals, which Graph matches case-sensitively and refuses when unknown, so they are checked
/// against this list at load and sent with Microsoft's casing. `unknownFutureValue` is the
/// placeholder for members a client did not ask for, not a source, so it is not listed.
pub const SERVICE_SOURCES: &[&str] = &[
    "unknown",
    "microsoftDefenderForEndpoint",
    "microsoftDefenderForIdentity",
    "microsoftDefenderForCloudApps",
    "microsoftDefenderForOffice365",
    "microsoft365Defender",
    "azureAdIdentityProtection",
    "microsoftAppGovernance",
    "dataLossPrevention",
    "microsoftDefenderForCloud",
    "microsoftSentinel",
    "microsoftInsiderRiskManagement",
    "microsoftThreatIntelligence",
    "microsoftSecurityForAI",
];

/// A `service_sources` value in Microsoft's casing, whatever casing the user wrote.
pub fn service_source(given: &str) -> Option<&'static str> {
    SERVICE_SOURCES
        .iter()
        .copied()
        .find(|m| m.eq_ignore_ascii_case(given.trim()))
}

/// The Microsoft cloud a tenant lives in; it fixes the login and Graph hosts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    #[default]
    Global,
    Gcc,
    GccHigh,
    Dod,
}

impl Cloud {
    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Global | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
        }
    }
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Global | Cloud::Gcc => "https://graph.microsoft.com",
            Cloud::GccHigh => "https://graph.microsoft.us",
            Cloud::Dod => "https://dod-graph.microsoft.us",
        }
    }
}

/// What a first run reads.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Lookback,
    Now,
}

/// `[tenants.<name>]`: one Entra ID app registration in one tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub tenant_id: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `YYYY-MM-DD`; warned about 30 days ahead.
    #[serde(default)]
    pub client_secret_expires: Option<String>,
    /// A PEM file with the app's certificate and its RSA private key: the alternative to a
    /// client secret. Its expiry is read from the certificate.
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    /// `client_certificate_file`, loaded and checked at load.
    #[serde(skip)]
    pub client_certificate: Option<std::sync::Arc<crate::certificate::ClientCertificate>>,
    #[serde(default)]
    pub cloud: Cloud,
    #[serde(default)]
    pub cloud_apps_url: Option<String>,
    #[serde(default)]
    pub start: StartFrom,
    #[serde(default)]
    pub allow_custom_endpoints: bool,
    /// Overrides the cloud's login host (proxies, the simulator).
    #[serde(default)]
    pub login_url: Option<String>,
    /// Overrides the cloud's Graph host (proxies, the simulator).
    #[serde(default)]
    pub graph_url: Option<String>,
    /// Requests per minute this tenant may make on Graph `/security` (Microsoft allows 150).
    #[serde(default = "default_graph_budget")]
    pub graph_requests_per_minute: u32,
    /// Requests per minute on the Cloud Apps API (Microsoft allows 30).
    #[serde(default = "default_cloud_apps_budget")]
    pub cloud_apps_requests_per_minute: u32,
    /// Requests per minute on the reporting mailbox (Outlook allows 10,000 per 10 minutes).
    #[serde(default = "default_mail_budget")]
    pub mail_requests_per_minute: u32,
    #[serde(default)]
    pub sources: SourcesConfig,
    /// `[tenants.<name>.context]`: enrichment of the alerts about an email.
    #[serde(default)]
    pub context: ContextConfig,
    /// This tenant's own destination (MSSPs: one Dropzone account per customer).
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
}

impl TenantConfig {
    pub fn effective_login_url(&self) -> String {
        trim_slash(self.login_url.as_deref().unwrap_or(self.cloud.login_url()))
    }
    pub fn effective_graph_url(&self) -> String {
        trim_slash(self.graph_url.as_deref().unwrap_or(self.cloud.graph_url()))
    }
    /// The secret, read from `client_secret` or `client_secret_file` at load.
    pub fn secret(&self) -> Option<&SecretString> {
        self.client_secret.as_ref()
    }
}

fn trim_slash(s: &str) -> String {
    s.trim_end_matches('/').to_string()
}

/// `[tenants.<name>.context]`: campaign context from advanced hunting (ThreatHunting.Read.All)
/// for the alerts about an email.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    /// Ask advanced hunting who else got the message, where it landed and who clicked. Off by
    /// default: it needs ThreatHunting.Read.All.
    #[serde(default)]
    pub hunting: bool,
    /// The longest an alert waits for its context before it is forwarded without it (the
    /// context then follows as a revision). Default 2 minutes.
    #[serde(default = "default_context_max_delay", deserialize_with = "duration")]
    pub max_delay: Duration,
    /// Rows of each list (recipients, other messages of the campaign, clicks) an alert carries
    /// beside the counts. Default 10, 1–100.
    #[serde(default = "default_context_max_listed")]
    pub max_listed: u32,
    /// Message ids one hunting query asks about. Default 50, 1–100.
    #[serde(default = "default_context_batch_size")]
    pub batch_size: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            hunting: false,
            max_delay: default_context_max_delay(),
            max_listed: default_context_max_listed(),
            batch_size: default_context_batch_size(),
        }
    }
}

fn default_context_max_delay() -> Duration {
    Duration::from_secs(120)
}
fn default_context_max_listed() -> u32 {
    10
}
fn default_context_batch_size() -> usize {
    50
}

impl ContextConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let max_listed = crate::hunting::MAX_LISTED;
        if !(1..=max_listed).contains(&self.max_listed) {
            return Err(bad(format!(
                "{key}.max_listed must be between 1 and {max_listed}: alerts carry counts plus this many rows per list"
            )));
        }
        let max_batch = crate::hunting::MAX_BATCH;
        if !(1..=max_batch).contains(&self.batch_size) {
            return Err(bad(format!(
                "{key}.batch_size must be between 1 and {max_batch}: one query asks about this many messages, and a longer query would exceed what Microsoft accepts"
            )));
        }
        if self.max_delay > Duration::from_secs(3600) {
            return Err(bad(format!(
                "{key}.max_delay must be at most 1h: alerts wait this long for their context; the context of a slower query follows as a revision"
            )));
        }
        Ok(())
    }
}

/// `[tenants.<name>.sources.*]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub alerts: SourceConfig,
    #[serde(default)]
    pub incidents: SourceConfig,
    #[serde(default)]
    pub submissions: SourceConfig,
    #[serde(default)]
    pub cloud_apps: SourceConfig,
    #[serde(default)]
    pub phishing_reports: SourceConfig,
}

impl SourcesConfig {
    pub fn get(&self, kind: SourceKind) -> &SourceConfig {
        match kind {
            SourceKind::Alerts => &self.alerts,
            SourceKind::Incidents => &self.incidents,
            SourceKind::Submissions => &self.submissions,
            SourceKind::CloudApps => &self.cloud_apps,
            SourceKind::PhishingReports => &self.phishing_reports,
        }
    }
}

/// One source's settings as written; `resolve` fills the per-source defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub lookback: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub overlap: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub settle: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_slice: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub reconcile_interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub reconcile_window: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub recheck: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub recheck_interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub twin_wait: Option<Duration>,
    pub forward_twins: Option<bool>,
    pub expand_alerts: Option<bool>,
    #[serde(default)]
    pub service_sources: Vec<String>,
    #[serde(default)]
    pub detection_sources: Vec<String>,
    #[serde(default)]
    pub severities: Vec<String>,
    #[serde(default)]
    pub statuses: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
    pub open_only: Option<bool>,
    /// Phishing reports: the reporting mailbox (UPN or object id), or `auto` for the one set in
    /// Defender's user reported settings. The source is on when this is set.
    pub mailbox: Option<String>,
    /// Phishing reports: a well-known folder name (`inbox`) or a folder id.
    pub folder: Option<String>,
    /// Phishing reports: the original MIME travels base64 in the alert up to this many bytes.
    pub include_original_max: Option<usize>,
    /// Phishing reports: the text body is cut at this many bytes (and marked).
    pub body_max: Option<usize>,
}

/// A source's settings with every default applied.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub kind: SourceKind,
    pub enabled: bool,
    pub interval: Duration,
    pub lookback: Duration,
    pub overlap: Duration,
    pub settle: Duration,
    pub max_slice: Duration,
    pub reconcile_interval: Duration,
    pub reconcile_window: Duration,
    /// Incidents: ask for `$expand=alerts` (falls back to the plain listing on a 5xx).
    pub expand_alerts: bool,
    /// Submissions: the lists polled (`email`, `url`, `file`).
    pub kinds: Vec<String>,
    pub filters: Filters,
    /// Phishing reports: where they are read.
    pub mailbox: Option<MailboxSettings>,
}

/// The reporting mailbox a `phishing_reports` source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSettings {
    /// A UPN or object id, or `auto` (Defender's user reported settings).
    pub mailbox: String,
    pub folder: String,
    pub include_original_max: usize,
    pub body_max: usize,
}

impl MailboxSettings {
    pub fn is_auto(&self) -> bool {
        self.mailbox.eq_ignore_ascii_case("auto")
    }
}

/// "Which alert types to sync": applied after storing, except `service_sources` (design §4 rule 7).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub service_sources: Vec<String>,
    pub detection_sources: Vec<String>,
    pub severities: Vec<String>,
    pub statuses: Vec<String>,
    pub categories: Vec<String>,
    /// Cloud Apps: also forward an alert whose alerts_v2 twin is known (default: hold it, so
    /// Dropzone investigates one detection once).
    pub forward_twins: bool,
}

impl SourceConfig {
    pub fn resolve(&self, kind: SourceKind, tenant: &TenantConfig) -> SourceSettings {
        let enabled = self.enabled.unwrap_or(match kind {
            SourceKind::CloudApps => tenant.cloud_apps_url.is_some(),
            SourceKind::PhishingReports => self.mailbox.is_some(),
            _ => true,
        });
        let d = |v: Option<Duration>, default: u64| v.unwrap_or(Duration::from_secs(default));
        // Sources without an update time re-list recent items instead of reconciling: their
        // recheck is the reconciliation pass, over `recheck` every `recheck_interval`.
        let (reconcile_interval, reconcile_window) = match kind {
            SourceKind::Submissions => (
                d(self.recheck_interval.or(self.reconcile_interval), 600),
                d(self.recheck.or(self.reconcile_window), 7 * DAY),
            ),
            SourceKind::CloudApps => (
                d(self.recheck_interval.or(self.reconcile_interval), 900),
                d(self.recheck.or(self.reconcile_window), 3 * DAY),
            ),
            _ => (
                d(self.reconcile_interval, 3600),
                d(self.reconcile_window, DAY),
            ),
        };
        let twin_wait = match kind {
            SourceKind::CloudApps => d(self.twin_wait, 600),
            _ => Duration::ZERO,
        };
        SourceSettings {
            kind,
            enabled,
            interval: d(self.interval, 60),
            lookback: d(self.lookback, 7 * DAY),
            // Cloud Apps' twin_wait: an alert is read only once it is older than the wait, so
            // its alerts_v2 twin is usually known by then (the twin rule). Both bounds move by
            // it, keeping settle < overlap.
            overlap: d(self.overlap, 600) + twin_wait,
            settle: d(self.settle, 30) + twin_wait,
            max_slice: d(self.max_slice, DAY),
            reconcile_interval,
            reconcile_window,
            expand_alerts: self.expand_alerts.unwrap_or(false),
            kinds: if self.kinds.is_empty() {
                vec!["email".into(), "url".into(), "file".into()]
            } else {
                lower(&self.kinds)
            },
            filters: Filters {
                forward_twins: self.forward_twins.unwrap_or(false),
                // Microsoft's casing: Graph compares enum literals case-sensitively. A value not
                // in the enum is refused at load, so the fallback only keeps `resolve` total.
                service_sources: self
                    .service_sources
                    .iter()
                    .map(|v| service_source(v).map_or_else(|| v.clone(), str::to_string))
                    .collect(),
                detection_sources: lower(&self.detection_sources),
                severities: lower(&self.severities),
                // Cloud Apps' "open only" is a status filter applied after storing (rule 7).
                statuses: if kind == SourceKind::CloudApps
                    && self.open_only == Some(true)
                    && self.statuses.is_empty()
                {
                    vec!["new".into(), "in_progress".into()]
                } else {
                    self.statuses.iter().map(|s| normalize_status(s)).collect()
                },
                categories: lower(&self.categories),
            },
            mailbox: match kind {
                SourceKind::PhishingReports => self.mailbox.as_ref().map(|m| MailboxSettings {
                    mailbox: m.trim().to_string(),
                    folder: self
                        .folder
                        .as_deref()
                        .map(str::trim)
                        .filter(|f| !f.is_empty())
                        .unwrap_or("inbox")
                        .to_string(),
                    include_original_max: self.include_original_max.unwrap_or(2 * 1024 * 1024),
                    body_max: self.body_max.unwrap_or(64 * 1024),
                }),
                _ => None,
            },
        }
    }
}

const DAY: u64 = 86_400;

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// Operators write Microsoft's spelling (`inProgress`) or ours (`in_progress`); both mean one thing.
fn normalize_status(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "inprogress" | "in_progress" => "in_progress".into(),
        other => other.into(),
    }
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * DAY)
}
fn default_dedup_retention() -> Duration {
    Duration::from_secs(180 * DAY)
}
fn default_max_pending() -> u64 {
    200_000
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_grace() -> Duration {
    Duration::from_secs(20)
}
fn default_level() -> String {
    "info".into()
}
fn default_batch_size() -> usize {
    100
}
fn default_max_batch_bytes() -> usize {
    1_048_576
}
fn default_concurrency() -> usize {
    4
}
fn default_forward_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_size() -> u32 {
    10
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_lease_renew() -> Duration {
    Duration::from_secs(10)
}
fn default_graph_budget() -> u32 {
    150
}
fn default_mail_budget() -> u32 {
    1000
}
fn default_cloud_apps_budget() -> u32 {
    30
}

/// Parses `"90s"`, `"10m"`, `"7d"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write it like \"90s\", \"10m\" or \"7d\"")
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

impl Settings {
    /// Reads the file (if present: `required` says whether its absence is an error), overlays the
    /// environment, reads `*_file` secrets and validates.
    pub fn load(path: &Path, required: bool) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, required, None)
    }

    /// As `load`, with the environment given explicitly (tests never touch the process's).
    pub fn load_with_env(
        path: &Path,
        required: bool,
        env: Option<HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        if required && !path.exists() {
            return Err(bad(format!(
                "config file {} not found: pass --config PATH, or copy config/m365-ingest.example.toml there",
                path.display()
            )));
        }
        let file = config::File::from(path.to_path_buf())
            .format(config::FileFormat::Toml)
            .required(required);
        let env_source = config::Environment::with_prefix("M365_INGEST")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let raw = config::Config::builder()
            .add_source(file)
            .add_source(env_source)
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        let mut settings: Settings = raw.try_deserialize().map_err(|e| bad(explain(e)))?;
        settings.read_secret_files()?;
        settings.normalize_urls();
        settings.validate()?;
        Ok(settings)
    }

    /// Parses a TOML string (tests, `demo`).
    pub fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        let mut settings: Settings = raw.try_deserialize().map_err(|e| bad(explain(e)))?;
        settings.read_secret_files()?;
        settings.normalize_urls();
        settings.validate()?;
        Ok(settings)
    }

    /// The Cloud Apps "API URL" the portal shows may end in `/api`, while the daemon appends
    /// `/api/v1/...` itself: a trailing `/api` (and slash) is dropped so either form works.
    fn normalize_urls(&mut self) {
        for t in self.tenants.values_mut() {
            if let Some(u) = t.cloud_apps_url.as_mut() {
                let mut trimmed = u.trim_end_matches('/');
                if let Some(root) = trimmed.strip_suffix("/api") {
                    trimmed = root.trim_end_matches('/');
                }
                *u = trimmed.to_string();
            }
        }
    }

    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.store.url_file {
            self.store.url = Some(read_secret("store.url_file", path)?);
        }
        if let Some(fwd) = self.forward.as_mut() {
            fwd.read_secret_file("forward")?;
        }
        for (name, t) in self.tenants.iter_mut() {
            if let Some(path) = &t.client_secret_file {
                if t.client_secret.is_some() {
                    return Err(bad(format!(
                        "tenants.{name}: set client_secret or client_secret_file, not both"
                    )));
                }
                t.client_secret = Some(read_secret(
                    &format!("tenants.{name}.client_secret_file"),
                    path,
                )?);
            }
            if let Some(path) = &t.client_certificate_file {
                if t.client_secret.is_some() {
                    return Err(bad(format!(
                        "tenants.{name}: set a client secret or client_certificate_file, not both (remove the one the app registration does not use)"
                    )));
                }
                let cert = crate::certificate::ClientCertificate::load(
                    &format!("tenants.{name}.client_certificate_file"),
                    path,
                )
                .map_err(bad)?;
                t.client_certificate = Some(std::sync::Arc::new(cert));
            }
            if let Some(fwd) = t.forward.as_mut() {
                fwd.read_secret_file(&format!("tenants.{name}.forward"))?;
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: names, URLs, relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(fwd) = &self.forward {
            fwd.validate("forward")?;
        }
        if self.leases.renew.saturating_mul(2) >= self.leases.ttl {
            return Err(bad(
                "leases.renew must be less than half of leases.ttl, so a lease is renewed twice before it can expire",
            ));
        }
        if self
            .server
            .status_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            // An empty token would make `Authorization: Bearer ` the password.
            return Err(bad(
                "server.status_token is empty: set a long random token or remove the key",
            ));
        }
        if !(2..=200).contains(&self.store.pool_size) {
            return Err(bad("store.pool_size must be between 2 and 200"));
        }
        if self.store.connect_timeout < Duration::from_secs(1) {
            return Err(bad("store.connect_timeout must be at least 1s"));
        }
        if self.store.dedup_retention < self.store.retention {
            return Err(bad("store.dedup_retention must not be shorter than store.retention (dedup state must outlive the bodies it guards)"));
        }
        if self.tenants.is_empty() {
            return Err(bad(
                "no tenant configured: add a [tenants.<name>] block with tenant_id, client_id and client_secret",
            ));
        }
        for (name, t) in &self.tenants {
            validate_tenant(name, t)?;
            let fwd = t.forward.as_ref().or(self.forward.as_ref());
            match fwd {
                Some(f) => f.validate(&format!("tenants.{name}.forward"))?,
                None => {
                    return Err(bad(format!(
                        "tenants.{name}: no destination: set [forward] url and api_key (or [tenants.{name}.forward])"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The destination a tenant's alerts go to, and its name (`default` for `[forward]`).
    pub fn destination_for(&self, tenant: &str) -> Option<(String, &ForwardConfig)> {
        let t = self.tenants.get(tenant)?;
        match &t.forward {
            Some(f) => Some((format!("tenant:{tenant}"), f)),
            None => self.forward.as_ref().map(|f| ("default".to_string(), f)),
        }
    }
}

impl ForwardConfig {
    fn read_secret_file(&mut self, key: &str) -> Result<(), ConfigError> {
        if let Some(path) = &self.api_key_file {
            if self.api_key.is_some() {
                return Err(bad(format!("{key}: set api_key or api_key_file, not both")));
            }
            self.api_key = Some(read_secret(&format!("{key}.api_key_file"), path)?);
        }
        Ok(())
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_url(&format!("{key}.url"), &self.url)?;
        match &self.api_key {
            Some(k) if !k.expose_secret().trim().is_empty() => {}
            _ => {
                return Err(bad(format!(
                    "{key}.api_key is missing: set api_key or api_key_file to the Dropzone API key"
                )))
            }
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(bad(format!("{key}.batch_size must be between 1 and 1000")));
        }
        if self.max_batch_bytes < 1024 {
            return Err(bad(format!("{key}.max_batch_bytes must be at least 1024")));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(bad(format!("{key}.concurrency must be between 1 and 64")));
        }
        if self.timeout < Duration::from_secs(1) {
            return Err(bad(format!("{key}.timeout must be at least 1s")));
        }
        Ok(())
    }
}

fn validate_tenant(name: &str, t: &TenantConfig) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad(format!(
            "tenant name `{name}` must be lowercase letters, digits, `_` or `-` (environment keys are lowercased)"
        )));
    }
    let key = format!("tenants.{name}");
    if t.tenant_id.trim().is_empty() {
        return Err(bad(format!("{key}.tenant_id is empty: copy the Directory (tenant) ID from the app registration's Overview page")));
    }
    if t.client_id.trim().is_empty() {
        return Err(bad(format!("{key}.client_id is empty: copy the Application (client) ID from the app registration's Overview page")));
    }
    match &t.client_secret {
        Some(s) if !s.expose_secret().trim().is_empty() => {}
        _ if t.client_certificate.is_some() => {}
        _ => {
            return Err(bad(format!(
                "{key}.client_secret is missing: set client_secret or client_secret_file (Certificates & secrets → New client secret → copy the Value), or client_certificate_file"
            )))
        }
    }
    if t.client_certificate.is_some() && t.client_secret_expires.is_some() {
        return Err(bad(format!(
            "{key}.client_secret_expires is set but the tenant signs in with a certificate, whose expiry is read from the certificate itself: remove client_secret_expires"
        )));
    }
    if let Some(date) = &t.client_secret_expires {
        if crate::time::parse_ticks(&format!("{date}T00:00:00Z")).is_none() {
            return Err(bad(format!(
                "{key}.client_secret_expires `{date}` is not a date: write it as YYYY-MM-DD"
            )));
        }
    }
    if let Some(u) = &t.login_url {
        check_url(&format!("{key}.login_url"), u)?;
    }
    if let Some(u) = &t.graph_url {
        check_url(&format!("{key}.graph_url"), u)?;
    }
    if let Some(u) = &t.cloud_apps_url {
        check_cloud_apps_url(&key, t, u)?;
    }
    t.context.validate(&format!("{key}.context"))?;
    for kind in SourceKind::ALL {
        let s = t.sources.get(kind).resolve(kind, t);
        let skey = format!("{key}.sources.{}", kind.as_str());
        if s.interval < Duration::from_secs(1) {
            return Err(bad(format!("{skey}.interval must be at least 1s")));
        }
        if s.settle >= s.overlap {
            return Err(bad(format!(
                "{skey}.settle ({}) must be shorter than overlap ({}): the overlap re-reads what settle leaves unclaimed",
                humantime::format_duration(s.settle),
                humantime::format_duration(s.overlap)
            )));
        }
        if s.max_slice < Duration::from_secs(1) {
            return Err(bad(format!("{skey}.max_slice must be at least 1s")));
        }
        for sev in &s.filters.severities {
            if !["informational", "low", "medium", "high", "unknown"].contains(&sev.as_str()) {
                return Err(bad(format!("{skey}.severities: `{sev}` is not one of informational, low, medium, high, unknown")));
            }
        }
        for v in &t.sources.get(kind).service_sources {
            if service_source(v).is_none() {
                return Err(bad(format!(
                    "{skey}.service_sources: `{v}` is not a Microsoft serviceSource; use one of {} (any casing)",
                    SERVICE_SOURCES.join(", ")
                )));
            }
        }
        for st in &s.filters.statuses {
            if !["new", "in_progress", "resolved", "unknown"].contains(&st.as_str()) {
                return Err(bad(format!(
                    "{skey}.statuses: `{st}` is not one of new, in_progress, resolved, unknown"
                )));
            }
        }
        for k in &s.kinds {
            if !["email", "url", "file"].contains(&k.as_str()) {
                return Err(bad(format!(
                    "{skey}.kinds: `{k}` is not one of email, url, file"
                )));
            }
        }
        if s.enabled && kind == SourceKind::CloudApps && t.cloud_apps_url.is_none() {
            return Err(bad(format!(
                "{skey} is enabled but {key}.cloud_apps_url is not set: copy the Portal URL from Defender → Settings → Cloud Apps → System → About"
            )));
        }
        validate_mailbox(&skey, kind, t.sources.get(kind), &s)?;
        // GCC (moderate) tenants use the global service (graph.microsoft.com), where Microsoft
        // offers threat submissions; GCC High and DoD have their own Graph, where it does not.
        if s.enabled
            && kind == SourceKind::Submissions
            && matches!(t.cloud, Cloud::GccHigh | Cloud::Dod)
        {
            return Err(bad(format!(
                "{skey}: threat submissions are not offered in this cloud. Microsoft's threatSubmission API reference lists its national cloud availability as: Global service ✅ | US Government L4 ❌ | US Government L5 (DOD) ❌ | China operated by 21Vianet ❌ (GCC uses the global service; GCC High is L4, DoD is L5). Set {skey}.enabled = false for this tenant"
            )));
        }
    }
    Ok(())
}

/// The mailbox keys belong to `phishing_reports` only, and that source needs a mailbox.
fn validate_mailbox(
    skey: &str,
    kind: SourceKind,
    raw: &SourceConfig,
    s: &SourceSettings,
) -> Result<(), ConfigError> {
    let mailbox_keys = [
        ("mailbox", raw.mailbox.is_some()),
        ("folder", raw.folder.is_some()),
        ("include_original_max", raw.include_original_max.is_some()),
        ("body_max", raw.body_max.is_some()),
    ];
    if kind != SourceKind::PhishingReports {
        if let Some((key, _)) = mailbox_keys.iter().find(|(_, set)| *set) {
            return Err(bad(format!(
                "{skey}.{key} belongs to the phishing_reports source only"
            )));
        }
        return Ok(());
    }
    let Some(m) = &s.mailbox else {
        if s.enabled {
            return Err(bad(format!(
                "{skey} is enabled but has no mailbox: set {skey}.mailbox to the reporting mailbox (e.g. \"phish-reports@contoso.com\", or \"auto\" to use the one set in Defender's user reported settings)"
            )));
        }
        return Ok(());
    };
    if m.mailbox.is_empty() || m.mailbox.contains(['/', '?', '#', ' ']) {
        return Err(bad(format!(
            "{skey}.mailbox `{}` is not a mailbox: give its address (UPN), its object id, or \"auto\"",
            m.mailbox
        )));
    }
    if m.folder.contains(['/', '?', '#']) {
        return Err(bad(format!(
            "{skey}.folder `{}` is not a folder: give a well-known name such as \"inbox\" or a folder id",
            m.folder
        )));
    }
    if m.body_max < 1024 {
        return Err(bad(format!("{skey}.body_max must be at least 1024 bytes")));
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// https everywhere, plain http only on loopback (the simulator, a local proxy).
fn check_url(key: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| bad(format!("{key} `{raw}` is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(bad(format!(
            "{key} `{raw}` must use https (plain http is allowed only on loopback)"
        ))),
    }
}

fn check_cloud_apps_url(key: &str, t: &TenantConfig, raw: &str) -> Result<(), ConfigError> {
    let url = check_url(&format!("{key}.cloud_apps_url"), raw)?;
    // A URL that already holds an API route would be requested as `.../api/v1/alerts/api/v1/...`.
    if let Some(at) = url.path().find("/api/") {
        let root = format!(
            "{}://{}{}",
            url.scheme(),
            &url[url::Position::BeforeHost..url::Position::BeforePath],
            url.path()[..at].trim_end_matches('/')
        );
        return Err(bad(format!(
            "{key}.cloud_apps_url `{raw}` already holds an API route; the daemon adds /api/v1/... itself: set it to `{root}` (the Portal URL from Defender → Settings → Cloud Apps → System → About)"
        )));
    }
    if is_loopback(&url) || t.allow_custom_endpoints {
        return Ok(());
    }
    let suffix = match t.cloud {
        Cloud::Global => ".portal.cloudappsecurity.com",
        Cloud::Gcc => ".portal.cloudappsecuritygov.com",
        Cloud::GccHigh | Cloud::Dod => ".portal.cloudappsecurity.us",
    };
    let host = url.host_str().unwrap_or_default();
    if !host.ends_with(suffix) {
        return Err(bad(format!(
            "{key}.cloud_apps_url host `{host}` does not end in {suffix}: copy the Portal URL from Defender → Settings → Cloud Apps → System → About, or set allow_custom_endpoints = true for a proxy"
        )));
    }
    Ok(())
}

fn read_secret(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("{key}: cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad(format!("{key}: {} is empty", path.display())));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// config-rs reports unknown fields and type errors with the key path; make the fix explicit.
fn explain(e: config::ConfigError) -> String {
    let msg = e.to_string();
    if msg.contains("unknown field") {
        format!("{msg} (check the spelling against README's configuration reference)")
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[forward]
url = "https://dz.example.com/api/ingest/alerts"
api_key = "k"
[tenants.contoso]
tenant_id = "t"
client_id = "c"
client_secret = "s"
"#;

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        let t = &s.tenants["contoso"];
        let a = t.sources.alerts.resolve(SourceKind::Alerts, t);
        assert!(a.enabled);
        assert_eq!(a.interval, Duration::from_secs(60));
        assert_eq!(a.overlap, Duration::from_secs(600));
        assert_eq!(a.lookback, Duration::from_secs(7 * DAY));
        let ca = t.sources.cloud_apps.resolve(SourceKind::CloudApps, t);
        assert!(!ca.enabled, "cloud apps is off without cloud_apps_url");
        assert_eq!(s.store.max_pending, 200_000);
    }

    #[test]
    fn context_is_off_by_default_and_bad_values_name_the_key_and_the_fix() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        let c = &s.tenants["contoso"].context;
        assert!(!c.hunting);
        assert_eq!(c.max_delay, Duration::from_secs(120));
        assert_eq!((c.max_listed, c.batch_size), (10, 50));
        let with = |body: &str| {
            Settings::from_toml(&format!("{MINIMAL}\n[tenants.contoso.context]\n{body}\n"))
        };
        let s =
            with("hunting = true\nmax_delay = \"30s\"\nmax_listed = 5\nbatch_size = 100").unwrap();
        let c = &s.tenants["contoso"].context;
        assert!(c.hunting);
        assert_eq!(
            (c.max_delay, c.max_listed, c.batch_size),
            (Duration::from_secs(30), 5, 100)
        );
        for (body, key, fix) in [
            (
                "batch_size = 0",
                "tenants.contoso.context.batch_size",
                "between 1 and 100",
            ),
            (
                "batch_size = 101",
                "tenants.contoso.context.batch_size",
                "between 1 and 100",
            ),
            (
                "max_listed = 0",
                "tenants.contoso.context.max_listed",
                "between 1 and 100",
            ),
            (
                "max_delay = \"2h\"",
                "tenants.contoso.context.max_delay",
                "at most 1h",
            ),
            ("max_delay = \"soon\"", "max_delay", "write it like"),
            ("hunt = true", "hunt", "hunting"),
        ] {
            let err = with(body).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(fix), "{body}: {err}");
        }
    }

    #[test]
    fn service_sources_take_microsofts_casing_and_refuse_what_is_not_in_its_enum() {
        let with = |v: &str| {
            Settings::from_toml(&format!(
                "{MINIMAL}\n[tenants.contoso.sources.alerts]\nservice_sources = {v}\n"
            ))
        };
        let s =
            with(r#"["MicrosoftDefenderForEndpoint", "MICROSOFTSENTINEL", "dataLossPrevention"]"#)
                .unwrap();
        let t = &s.tenants["contoso"];
        let a = t.sources.alerts.resolve(SourceKind::Alerts, t);
        assert_eq!(
            a.filters.service_sources,
            [
                "microsoftDefenderForEndpoint",
                "microsoftSentinel",
                "dataLossPrevention"
            ]
        );
        for bad in ["defenderForEndpoint", "unknownFutureValue", ""] {
            let err = with(&format!("[\"{bad}\"]")).unwrap_err().to_string();
            assert!(
                err.contains("tenants.contoso.sources.alerts.service_sources")
                    && err.contains("microsoftDefenderForEndpoint, microsoftDefenderForIdentity"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_cloud_apps_url_ending_in_api_works_and_a_deeper_path_is_refused_with_the_fix() {
        let with = |u: &str| Settings::from_toml(&format!("{MINIMAL}cloud_apps_url = \"{u}\"\n"));
        for given in [
            "https://contoso.us3.portal.cloudappsecurity.com/api",
            "https://contoso.us3.portal.cloudappsecurity.com/api/",
            "https://contoso.us3.portal.cloudappsecurity.com/",
        ] {
            let s = with(given).unwrap();
            assert_eq!(
                s.tenants["contoso"].cloud_apps_url.as_deref(),
                Some("https://contoso.us3.portal.cloudappsecurity.com"),
                "{given}"
            );
        }
        let err = with("https://contoso.us3.portal.cloudappsecurity.com/api/v1/alerts/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenants.contoso.cloud_apps_url")
                && err.contains("set it to `https://contoso.us3.portal.cloudappsecurity.com`"),
            "{err}"
        );
    }

    #[test]
    fn submissions_are_allowed_in_gcc_and_refused_in_gcc_high_and_dod_in_microsofts_words() {
        let with = |cloud: &str| {
            Settings::from_toml(&MINIMAL.replace(
                "client_secret = \"s\"",
                &format!("client_secret = \"s\"\ncloud = \"{cloud}\""),
            ))
        };
        let s = with("gcc").unwrap();
        let t = &s.tenants["contoso"];
        assert!(
            t.sources
                .submissions
                .resolve(SourceKind::Submissions, t)
                .enabled
        );
        for cloud in ["gcc_high", "dod"] {
            let err = with(cloud).unwrap_err().to_string();
            assert!(
                err.contains("tenants.contoso.sources.submissions")
                    && err.contains("US Government L4")
                    && err.contains("enabled = false"),
                "{cloud}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::from_toml(&format!("{MINIMAL}\nbogus_key = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
    }

    #[test]
    fn settle_not_below_overlap_is_rejected_with_the_key() {
        let toml = format!(
            "{MINIMAL}\n[tenants.contoso.sources.alerts]\nsettle = \"20m\"\noverlap = \"10m\"\n"
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(
            err.contains("tenants.contoso.sources.alerts.settle"),
            "{err}"
        );
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let toml = MINIMAL.replace("https://dz.example.com", "http://dz.example.com");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("forward.url"), "{err}");
        let toml = MINIMAL.replace("https://dz.example.com", "http://127.0.0.1:9");
        assert!(Settings::from_toml(&toml).is_ok());
    }

    #[test]
    fn environment_overrides_the_file_and_secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let env = HashMap::from([(
            "M365_INGEST__TENANTS__CONTOSO__CLIENT_SECRET".to_string(),
            "from-env-secret".to_string(),
        )]);
        let s = Settings::load_with_env(&path, true, Some(env)).unwrap();
        let t = &s.tenants["contoso"];
        assert_eq!(t.secret().unwrap().expose_secret(), "from-env-secret");
        assert!(!format!("{s:?}").contains("from-env-secret"));
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "file-secret\n").unwrap();
        let toml = MINIMAL.replace(
            "client_secret = \"s\"",
            &format!("client_secret_file = \"{}\"", secret.display()),
        );
        let s = Settings::from_toml(&toml).unwrap();
        assert_eq!(
            s.tenants["contoso"].secret().unwrap().expose_secret(),
            "file-secret"
        );
    }

    #[test]
    fn a_certificate_file_replaces_the_secret_and_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::certificate::tests::generated(30);
        let pem = dir.path().join("app.pem");
        std::fs::write(&pem, format!("{cert}{key}")).unwrap();
        let with_cert = MINIMAL.replace(
            "client_secret = \"s\"",
            &format!("client_certificate_file = \"{}\"", pem.display()),
        );
        let s = Settings::from_toml(&with_cert).unwrap();
        let t = &s.tenants["contoso"];
        assert!(t.secret().is_none());
        assert!(t.client_certificate.is_some());
        assert!(!format!("{s:?}").contains("PRIVATE KEY"));

        let both = MINIMAL.replace(
            "client_secret = \"s\"",
            &format!(
                "client_secret = \"s\"\nclient_certificate_file = \"{}\"",
                pem.display()
            ),
        );
        let err = Settings::from_toml(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");

        let missing = with_cert.replace("app.pem", "nowhere.pem");
        let err = Settings::from_toml(&missing).unwrap_err().to_string();
        assert!(
            err.contains("tenants.contoso.client_certificate_file") && err.contains("nowhere.pem"),
            "{err}"
        );

        std::fs::write(&pem, &cert).unwrap();
        let err = Settings::from_toml(&with_cert).unwrap_err().to_string();
        assert!(err.contains("no private key"), "{err}");

        let dated = with_cert.replace(
            "client_certificate_file",
            "client_secret_expires = \"2030-01-01\"\nclient_certificate_file",
        );
        std::fs::write(&pem, format!("{cert}{key}")).unwrap();
        let err = Settings::from_toml(&dated).unwrap_err().to_string();
        assert!(err.contains("remove client_secret_expires"), "{err}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = include_str!("../config/m365-ingest.example.toml")
            .replace(
                "api_key_file = \"/run/secrets/dropzone_api_key\"",
                "api_key = \"k\"",
            )
            .replace(
                "client_secret_file = \"/run/secrets/client_secret\"",
                "client_secret = \"s\"",
            );
        let s = Settings::from_toml(&example).unwrap();
        assert_eq!(s.tenants["contoso"].graph_requests_per_minute, 150);
    }

    #[test]
    fn bad_duration_names_the_value() {
        let toml = format!("{MINIMAL}\n[tenants.contoso.sources.alerts]\ninterval = \"soon\"\n");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
    }
}
