//! `m365-ingest check`, the "Test & Save" button (design §8): for every configured tenant it
//! asks for a token per resource in use (Microsoft Graph; Microsoft Cloud App Security when
//! `cloud_apps_url` is set), reads the application permissions granted from each token's `roles`
//! claim, compares them with what the enabled sources need, warns about permissions granted but
//! not used (least privilege), sends one smallest request per listing of each enabled source
//! (with the filter the source polls with), and probes every
//! Dropzone destination without sending an alert. Each check is a row with its result and, when
//! it did not pass, the fix in the Entra admin center's own words.
//!
//! Nothing here prints a secret or a token: rows are built from role names, HTTP statuses,
//! Microsoft's error codes and messages, and the operator-facing messages of `auth`.

use std::collections::BTreeSet;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::auth::{
    graph_scope, AuthError, AuthErrorKind, ClientCredential, Credentials, TokenProvider,
};
use crate::config::{Cloud, ForwardAuth, ForwardConfig, Settings, SourceSettings, TenantConfig};
use crate::forward::{DropzoneSink, SendOutcome};
use crate::normalize::SourceKind;
use crate::server::CredentialExpiry;
use crate::sources::{required_permission, GraphListing};

/// Every check request gets this long; a setup check should answer quickly or say why not.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// WindowsDefenderATP's scope (API.md §1). No source uses it; a token for it only shows which
/// of its permissions were granted, so they can be flagged as unused.
const DEFENDER_ATP_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// Permissions that only planned features would use (README's permission table: "not needed
/// yet, do not grant"). Granting them is a least-privilege warning, not a failure.
const PLANNED: &[(&str, &str)] = &[
    (
        "Directory.Read.All",
        "user and group lookups (planned enrichment)",
    ),
    (
        "ThreatHunting.Read.All",
        "campaign context from advanced hunting (`context.hunting`, off for this tenant)",
    ),
    ("Machine.LiveResponse", "live response (planned)"),
    ("Library.Manage", "live response (planned)"),
    ("File.Read.All", "live response (planned)"),
    ("Machine.Read.All", "live response (planned)"),
];

/// How one check came out. `Warn` never fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    /// Not run because an earlier check it depends on failed.
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    /// The tenant's name in the configuration; `None` for destination rows.
    pub tenant: Option<String>,
    pub check: String,
    pub result: Outcome,
    pub detail: String,
    /// What to do, when the check did not pass.
    pub fix: Option<String>,
}

/// Every check of one run, in the order they ran.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub rows: Vec<CheckRow>,
}

impl Report {
    fn push(
        &mut self,
        tenant: Option<&str>,
        check: impl Into<String>,
        result: Outcome,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.rows.push(CheckRow {
            tenant: tenant.map(str::to_string),
            check: check.into(),
            result,
            detail: detail.into(),
            fix,
        });
    }

    /// A probe's row: its request and answer as the detail.
    fn push_probe(&mut self, tenant: Option<&str>, check: impl Into<String>, p: Probe) {
        let detail = format!("{}: {}", p.request, p.answer);
        self.push(tenant, check, p.outcome, detail, p.fix);
    }

    /// True when no check failed (warnings and skips allowed; a skip always follows a failure).
    pub fn passed(&self) -> bool {
        !self.rows.iter().any(|r| r.result == Outcome::Fail)
    }

    /// The process exit code: 0 when every check passed (warnings allowed), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed() {
            0
        } else {
            1
        }
    }

    fn count(&self, o: Outcome) -> usize {
        self.rows.iter().filter(|r| r.result == o).count()
    }

    /// The machine-readable form: a JSON array of rows.
    pub fn to_json(&self) -> String {
        // Serializing strings and enums cannot fail; an empty array is the safe fallback anyway.
        serde_json::to_string_pretty(&self.rows).unwrap_or_else(|_| "[]".into())
    }

    /// The table for a terminal: check, result (with what was seen), and the fix on its own
    /// line under the result, since fixes are long.
    pub fn to_table(&self) -> String {
        let name = |r: &CheckRow| match &r.tenant {
            Some(t) => format!("{t}: {}", r.check),
            None => r.check.clone(),
        };
        let width = self
            .rows
            .iter()
            .map(|r| name(r).chars().count())
            .chain(std::iter::once("CHECK".len()))
            .max()
            .unwrap_or(5);
        let mut out = format!("{:<width$}  {:<4}  DETAIL / FIX\n", "CHECK", "RESULT");
        let indent = " ".repeat(width + 2 + 6 + 2);
        for r in &self.rows {
            let n = name(r);
            let pad = width.saturating_sub(n.chars().count());
            out.push_str(&format!(
                "{n}{}  {:<6}  {}\n",
                " ".repeat(pad),
                r.result.label(),
                r.detail
            ));
            if let Some(fix) = &r.fix {
                out.push_str(&format!("{indent}fix: {fix}\n"));
            }
        }
        out.push_str(&format!(
            "\n{} passed, {} warning(s), {} failed, {} skipped: {}\n",
            self.count(Outcome::Pass),
            self.count(Outcome::Warn),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip),
            if self.passed() {
                "the setup works"
            } else {
                "fix the failures above and run `m365-ingest check` again"
            }
        ));
        out
    }
}

/// An API a token is asked for; one token names exactly one (API.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Graph,
    CloudApps,
    DefenderAtp,
}

impl Resource {
    /// The API's name as the Entra admin center's "Request API permissions" pane shows it.
    fn name(self) -> &'static str {
        match self {
            Resource::Graph => "Microsoft Graph",
            Resource::CloudApps => "Microsoft Cloud App Security",
            Resource::DefenderAtp => "WindowsDefenderATP",
        }
    }
}

/// What one source needs: its least-privileged permission, and others that also let it read.
struct Need {
    kind: SourceKind,
    resource: Resource,
    role: &'static str,
    /// Accepted by Microsoft too, but not the least privilege (API.md §1 "Higher").
    also: &'static [&'static str],
}

fn need(kind: SourceKind) -> Need {
    let (resource, role, also): (Resource, &'static str, &'static [&'static str]) = match kind {
        SourceKind::Alerts => (
            Resource::Graph,
            "SecurityAlert.Read.All",
            &["SecurityAlert.ReadWrite.All"],
        ),
        SourceKind::Incidents => (
            Resource::Graph,
            "SecurityIncident.Read.All",
            &["SecurityIncident.ReadWrite.All"],
        ),
        SourceKind::Submissions => (
            Resource::Graph,
            "ThreatSubmission.Read.All",
            &["ThreatSubmission.ReadWrite.All"],
        ),
        // The portal spells it Investigation.Read; the claim's casing is unconfirmed, so roles
        // are compared ignoring case.
        SourceKind::CloudApps => (
            Resource::CloudApps,
            "Investigation.Read",
            &["Investigation.manage", "Discovery.read", "Discovery.manage"],
        ),
        // Mail.ReadBasic.All would list the reports but not their attachments: not enough.
        SourceKind::PhishingReports => (Resource::Graph, "Mail.Read", &["Mail.ReadWrite"]),
    };
    Need {
        kind,
        resource,
        role,
        also,
    }
}

const ALL_SOURCES: [SourceKind; 5] = SourceKind::ALL;

/// A token obtained for a resource, with the roles read from it (`None`: not a readable JWT).
struct Granted {
    token: secrecy::SecretString,
    roles: Option<Vec<String>>,
}

/// Runs every check for every tenant and destination of `settings`.
pub async fn run(settings: &Settings) -> Report {
    let mut report = Report::default();
    let http = match crate::app::http_client(PROBE_TIMEOUT) {
        Ok(h) => h,
        Err(e) => {
            report.push(
                None,
                "HTTP client",
                Outcome::Fail,
                format!("{e:#}"),
                Some("check the TLS set-up of this host".into()),
            );
            return report;
        }
    };
    for (name, tenant) in &settings.tenants {
        check_tenant(&mut report, &http, name, tenant).await;
    }
    // A destination shared by several tenants is probed once.
    let mut seen = BTreeSet::new();
    for name in settings.tenants.keys() {
        if let Some((dest, cfg)) = settings.destination_for(name) {
            if seen.insert(dest.clone()) {
                let key = if dest == "default" {
                    "forward".to_string()
                } else {
                    format!("tenants.{name}.forward")
                };
                check_destination(&mut report, &http, &dest, &key, cfg).await;
            }
        }
    }
    report
}

async fn check_tenant(report: &mut Report, http: &reqwest::Client, name: &str, t: &TenantConfig) {
    let tenant = Some(name);
    let creds = match Credentials::of_tenant(name, t) {
        Ok(c) => c,
        // Validation refuses a tenant without a credential; kept so this never panics.
        Err(e) => {
            report.push(tenant, "credentials", Outcome::Fail, &e, None);
            return;
        }
    };
    credential_row(report, name, t, &creds);
    let app = format!("App registrations → (client id {})", creds.client_id);
    let enabled: Vec<SourceKind> = ALL_SOURCES
        .into_iter()
        .filter(|k| t.sources.get(*k).resolve(*k, t).enabled)
        .collect();

    // Tokens: Graph always (the daemon always builds its provider), Cloud Apps when its URL is
    // set, as `App::build` does.
    let graph_url = t.effective_graph_url();
    let mut resources = vec![(Resource::Graph, graph_scope(&graph_url))];
    if t.cloud_apps_url.is_some() {
        resources.push((
            Resource::CloudApps,
            crate::auth::CLOUD_APPS_SCOPE.to_string(),
        ));
    }
    let mut granted: Vec<(Resource, Granted)> = Vec::new();
    let mut credential_error: Option<AuthErrorKind> = None;
    for (resource, scope) in resources {
        let check = format!("token {}", resource.name());
        if let Some(kind) = credential_error {
            report.push(
                tenant,
                check,
                Outcome::Skip,
                format!("not asked: the credentials were refused above ({kind:?})"),
                None,
            );
            continue;
        }
        let provider = TokenProvider::new(creds.clone(), scope, http.clone());
        match provider.token().await {
            Ok(token) => {
                let roles = granted_roles(token.secret.expose_secret());
                let detail = match &roles {
                    Ok(r) if r.is_empty() => "issued; no application permission granted".into(),
                    Ok(r) => format!("issued; roles: {}", r.join(", ")),
                    Err(why) => format!("issued; its roles cannot be read ({why}), so only the probes below tell whether access works"),
                };
                let result = if roles.is_ok() {
                    Outcome::Pass
                } else {
                    Outcome::Warn
                };
                report.push(tenant, check, result, detail, None);
                granted.push((
                    resource,
                    Granted {
                        token: token.secret,
                        roles: roles.ok(),
                    },
                ));
            }
            Err(e) => {
                if is_credential_error(&e) {
                    credential_error = Some(e.kind);
                }
                let (detail, fix) = split_fix(name, &e);
                report.push(tenant, check, Outcome::Fail, detail, Some(fix));
            }
        }
    }

    // Permissions: what each enabled source needs against what its resource's token carries.
    let mut used: Vec<String> = Vec::new();
    for kind in &enabled {
        let n = need(*kind);
        let check = format!("permission {}", kind.as_str());
        let add = format!(
            "Entra admin center → {app} → API permissions → Add a permission → {}, then Grant admin consent",
            required_permission(*kind)
        );
        let disable = format!(
            "or set tenants.{name}.sources.{}.enabled = false",
            kind.as_str()
        );
        let Some((_, g)) = granted.iter().find(|(r, _)| *r == n.resource) else {
            report.push(
                tenant,
                check,
                Outcome::Skip,
                format!("{} needs a {} token (see above)", n.role, n.resource.name()),
                None,
            );
            continue;
        };
        let Some(roles) = &g.roles else {
            report.push(
                tenant,
                check,
                Outcome::Skip,
                format!(
                    "{} cannot be confirmed from the token; see the probe",
                    n.role
                ),
                None,
            );
            continue;
        };
        let has = |r: &str| roles.iter().find(|g| g.eq_ignore_ascii_case(r)).cloned();
        if let Some(exact) = has(n.role) {
            used.push(exact);
            report.push(
                tenant,
                check,
                Outcome::Pass,
                format!("{} granted", n.role),
                None,
            );
        } else if let Some(higher) = n.also.iter().find_map(|r| has(r)) {
            used.push(higher.clone());
            report.push(
                tenant,
                check,
                Outcome::Warn,
                format!("allowed by {higher}, which grants more than {} needs ({})", kind.as_str(), n.role),
                Some(format!("least privilege: {add}; then remove {higher} (API permissions → … next to {higher} → Revoke admin consent, then Remove permission)")),
            );
        } else {
            report.push(
                tenant,
                check,
                Outcome::Fail,
                format!(
                    "{} is not granted: the {} source cannot read",
                    n.role,
                    kind.as_str()
                ),
                Some(format!("{add}; {disable}")),
            );
        }
    }

    // mailbox = "auto" reads Defender's user reported settings with ThreatSubmission.Read.All.
    if enabled.contains(&SourceKind::PhishingReports)
        && t.sources
            .get(SourceKind::PhishingReports)
            .resolve(SourceKind::PhishingReports, t)
            .mailbox
            .is_some_and(|m| m.is_auto())
    {
        used.push("ThreatSubmission.Read.All".into());
    }
    // Campaign context from advanced hunting needs ThreatHunting.Read.All on the Graph token.
    if t.context.hunting {
        hunting_permission_row(report, name, &app, &granted, &mut used);
    }
    // Least privilege: roles granted that no enabled source uses. WindowsDefenderATP is no
    // resource of ours, but its permissions are the riskiest (live response), so its token is
    // asked for only to read them; failing to get one (no Defender for Endpoint in the tenant,
    // an unknown scope in a national cloud) just means there is nothing to report.
    let mut unused: Vec<(Resource, String)> = Vec::new();
    for (resource, g) in &granted {
        for role in g.roles.iter().flatten() {
            if !used.iter().any(|u| u.eq_ignore_ascii_case(role)) {
                unused.push((*resource, role.clone()));
            }
        }
    }
    if credential_error.is_none() && t.cloud == Cloud::Global {
        let provider = TokenProvider::new(creds.clone(), DEFENDER_ATP_SCOPE.into(), http.clone());
        if let Ok(token) = provider.token().await {
            for role in granted_roles(token.secret.expose_secret()).unwrap_or_default() {
                unused.push((Resource::DefenderAtp, role));
            }
        }
    }
    if !granted.is_empty() {
        if unused.is_empty() {
            report.push(
                tenant,
                "least privilege",
                Outcome::Pass,
                "no permission granted beyond what the enabled sources use",
                None,
            );
        }
        for (resource, role) in unused {
            let why = PLANNED
                .iter()
                .find(|(r, _)| r.eq_ignore_ascii_case(&role))
                .map(|(_, f)| format!("only {f} would use it: not needed yet"))
                .unwrap_or_else(|| {
                    match ALL_SOURCES.iter().map(|k| need(*k)).find(|n| {
                        n.role.eq_ignore_ascii_case(&role)
                            || n.also.iter().any(|a| a.eq_ignore_ascii_case(&role))
                    }) {
                        Some(n) if enabled.contains(&n.kind) => format!(
                            "the {} source needs only {}, which is granted",
                            n.kind.as_str(),
                            n.role
                        ),
                        Some(n) => format!(
                            "only the {} source uses it, and it is disabled",
                            n.kind.as_str()
                        ),
                        None => "no source of m365-ingest uses it".into(),
                    }
                });
            report.push(
                tenant,
                format!("unused permission {role}"),
                Outcome::Warn,
                format!("{} → {role} is granted but unused: {why}", resource.name()),
                Some(format!(
                    "least privilege: Entra admin center → {app} → API permissions → … next to {role} → Revoke admin consent, then Remove permission"
                )),
            );
        }
    }

    // Probes: one smallest request per listing of each enabled source, with its resource's token.
    for kind in &enabled {
        let n = need(*kind);
        let check = format!("probe {}", kind.as_str());
        let Some((_, g)) = granted.iter().find(|(r, _)| *r == n.resource) else {
            report.push(
                tenant,
                check,
                Outcome::Skip,
                format!("no {} token (see above)", n.resource.name()),
                None,
            );
            continue;
        };
        let base = match kind {
            SourceKind::CloudApps => t
                .cloud_apps_url
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            _ => graph_url.trim_end_matches('/').to_string(),
        };
        let settings = t.sources.get(*kind).resolve(*kind, t);
        if let Some(m) = &settings.mailbox {
            let p = probe_mailbox(http, &base, g, name, m, &app).await;
            report.push_probe(tenant, check, p);
            continue;
        }
        // Each listing the source polls is probed with the filter it polls with (a filter Graph
        // refuses, e.g. an enum literal it does not know, fails here and not at the first poll):
        // submissions' three lists, Cloud Apps by date and by resolutionDate. The row shows
        // the worst answer and its fix, and listings that got the same answer share it.
        let (mut worst, mut worst_fix) = (Outcome::Pass, None);
        let mut answers: Vec<(Vec<String>, String)> = Vec::new();
        for listing in GraphListing::for_source(&settings) {
            let p = probe(http, &base, &listing, &settings, g, name, &app).await;
            match answers.iter_mut().find(|(_, a)| *a == p.answer) {
                Some((labels, _)) => labels.push(p.request),
                None => answers.push((vec![p.request], p.answer)),
            }
            if rank(p.outcome) > rank(worst) {
                (worst, worst_fix) = (p.outcome, p.fix);
            }
        }
        let detail = answers
            .iter()
            .map(|(labels, answer)| format!("{}: {answer}", labels.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        report.push(tenant, check, worst, detail, worst_fix);
    }
    if t.context.hunting {
        let check = "probe context";
        match granted.iter().find(|(r, _)| *r == Resource::Graph) {
            Some((_, g)) => {
                let p = probe_hunting(http, graph_url.trim_end_matches('/'), g, name, &app).await;
                report.push_probe(tenant, check, p);
            }
            None => report.push(
                tenant,
                check,
                Outcome::Skip,
                "no Microsoft Graph token (see above)",
                None,
            ),
        }
    }
}

/// `permission context`: whether the Graph token carries ThreatHunting.Read.All.
fn hunting_permission_row(
    report: &mut Report,
    name: &str,
    app: &str,
    granted: &[(Resource, Granted)],
    used: &mut Vec<String>,
) {
    let (tenant, check, role) = (Some(name), "permission context", crate::hunting::ROLE);
    let roles = granted
        .iter()
        .find(|(r, _)| *r == Resource::Graph)
        .and_then(|(_, g)| g.roles.as_ref());
    let Some(roles) = roles else {
        report.push(
            tenant,
            check,
            Outcome::Skip,
            format!("{role} cannot be confirmed from the token; see the probe"),
            None,
        );
        return;
    };
    if let Some(exact) = roles.iter().find(|g| g.eq_ignore_ascii_case(role)) {
        used.push(exact.clone());
        report.push(
            tenant,
            check,
            Outcome::Pass,
            format!("{role} granted"),
            None,
        );
        return;
    }
    report.push(
        tenant,
        check,
        Outcome::Fail,
        format!("{role} is not granted: alerts are forwarded without campaign context"),
        Some(hunting_fix(name, app)),
    );
}

/// How to grant advanced hunting, or turn campaign context off.
fn hunting_fix(name: &str, app: &str) -> String {
    let role = crate::hunting::ROLE;
    format!("grant {role} (application) to the app registration and admin-consent it: Entra admin center → {app} → API permissions → Add a permission → Microsoft Graph → Application permissions → {role}, then Grant admin consent; or set tenants.{name}.context.hunting = false")
}

/// `probe context`: one advanced-hunting query for one row, with the Graph token.
async fn probe_hunting(
    http: &reqwest::Client,
    base: &str,
    g: &Granted,
    tenant: &str,
    app: &str,
) -> Probe {
    let query = crate::hunting::PROBE_QUERY;
    let request = format!("POST /v1.0/security/runHuntingQuery {query}");
    let sent = http
        .post(format!("{base}/v1.0/security/runHuntingQuery"))
        .bearer_auth(g.token.expose_secret())
        .header("Accept", "application/json")
        .json(&serde_json::json!({ "Query": query }))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Probe {
                outcome: Outcome::Fail,
                request,
                answer: crate::microsoft::describe_reqwest_error(&e),
                fix: Some(format!("check that this host reaches tenants.{tenant}.graph_url (or the cloud's Graph host) through any proxy or firewall")),
            }
        }
    };
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let answer = format!("HTTP {status}{}", error_text(&body));
    let (outcome, fix) = match status {
        200..=299 => {
            let rows = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("results").and_then(|r| r.as_array()).map(Vec::len));
            return match rows {
                Some(n) => Probe { outcome: Outcome::Pass, request, answer: format!("HTTP {status}, {n} row(s)"), fix: None },
                None => Probe {
                    outcome: Outcome::Fail,
                    request,
                    answer: format!("HTTP {status} but the answer has no results"),
                    fix: Some(format!("check tenants.{tenant}.graph_url and cloud: the host must be Microsoft Graph")),
                },
            };
        }
        403 => (Outcome::Fail, hunting_fix(tenant, app)),
        429 => (Outcome::Warn, "advanced hunting is reachable but throttled or over its CPU quota (shared with the portal and other clients): run check again in 15 minutes".to_string()),
        401 => (Outcome::Fail, format!("the token was refused: check tenants.{tenant}.cloud and graph_url")),
        404 => (Outcome::Fail, format!("check tenants.{tenant}.cloud and graph_url: advanced hunting exists in the global and US Government clouds")),
        _ => (Outcome::Fail, "Microsoft refused the probe: run check again in a few minutes".to_string()),
    };
    Probe {
        outcome,
        request,
        answer,
        fix: Some(fix),
    }
}

fn rank(o: Outcome) -> u8 {
    match o {
        Outcome::Pass => 0,
        Outcome::Skip => 1,
        Outcome::Warn => 2,
        Outcome::Fail => 3,
    }
}

/// Which credential the tenant signs in with and how long it has left.
fn credential_row(report: &mut Report, name: &str, t: &TenantConfig, creds: &Credentials) {
    let what = match &creds.credential {
        ClientCredential::Secret(_) => "client secret".to_string(),
        ClientCredential::Certificate(c) => format!("certificate x5t#S256={}", c.thumbprint_s256()),
    };
    let now = crate::time::unix_seconds_now();
    let Some(expiry) = CredentialExpiry::of_tenant(t) else {
        report.push(
            Some(name),
            "credential",
            Outcome::Pass,
            format!("{what}; its expiry is unknown: set tenants.{name}.client_secret_expires (the Expires column under Certificates & secrets) to be warned 30 days ahead"),
            None,
        );
        return;
    };
    let days = crate::server::days_left(expiry.expires, now);
    let detail = format!(
        "{what}, expires {} ({days} days left)",
        &crate::time::format_seconds(expiry.expires)[..10]
    );
    let outcome = match crate::server::expiry_warning(name, expiry, now) {
        None => Outcome::Pass,
        Some(_) if days < 0 => Outcome::Fail,
        Some(_) => Outcome::Warn,
    };
    let fix = (outcome != Outcome::Pass).then(|| crate::server::expiry_fix(name, expiry.kind));
    report.push(Some(name), "credential", outcome, detail, fix);
}

/// Errors about the app registration itself: every resource would answer the same.
fn is_credential_error(e: &AuthError) -> bool {
    matches!(
        e.kind,
        AuthErrorKind::WrongSecret
            | AuthErrorKind::ExpiredSecret
            | AuthErrorKind::WrongCertificate
            | AuthErrorKind::ClockSkew
            | AuthErrorKind::UnknownApplication
            | AuthErrorKind::UnknownTenant
    )
}

/// `auth`'s message is "tenant X: <what>. Fix: <how>"; the row names the tenant already.
fn split_fix(tenant: &str, e: &AuthError) -> (String, String) {
    let msg = e.message.as_str();
    let msg = msg
        .strip_prefix(&format!("tenant {tenant}: "))
        .unwrap_or(msg);
    match msg.split_once(". Fix: ") {
        Some((what, how)) => (what.to_string(), how.to_string()),
        None => {
            let how = match e.kind {
                AuthErrorKind::Transient => format!(
                    "check that this host reaches tenants.{tenant}.login_url (or the cloud's login host) through any proxy, then run check again"
                ),
                _ => format!(
                    "check tenants.{tenant}.tenant_id, client_id, client_secret and cloud against the app registration's Overview page"
                ),
            };
            (msg.to_string(), how)
        }
    }
}

/// What one probe request got.
struct Probe {
    outcome: Outcome,
    /// The request, e.g. `GET /v1.0/security/alerts_v2?$filter=…&$top=1`.
    request: String,
    /// The answer, e.g. `HTTP 200` or `HTTP 403 Forbidden: …`.
    answer: String,
    fix: Option<String>,
}

/// One smallest listing request with the filter the source polls with, over its lookback up to
/// now: `$top=1` on Graph, `limit: 1` on Cloud Apps.
async fn probe(
    http: &reqwest::Client,
    base: &str,
    listing: &GraphListing,
    settings: &SourceSettings,
    g: &Granted,
    tenant: &str,
    app: &str,
) -> Probe {
    let (path, cloud_apps, kind) = (listing.path, listing.cloud_apps, settings.kind);
    let b = crate::time::unix_seconds_now();
    let a = b.saturating_sub(i64::try_from(settings.lookback.as_secs()).unwrap_or(i64::MAX));
    let url = format!("{base}{path}");
    let (label, request) = if cloud_apps {
        (
            format!(
                "POST {path} filters {} gte {}, limit 1",
                listing.time_field,
                crate::time::format_seconds(a)
            ),
            http.post(&url).json(&listing.slice_body(a, b, 0, 1)),
        )
    } else {
        let filter = listing.slice_filter(settings, a, b);
        let mut query = vec![("$filter", filter.clone()), ("$top", "1".to_string())];
        if listing.expand_alerts {
            query.push(("$expand", "alerts".to_string()));
        }
        (
            format!("GET {path}?$filter={filter}&$top=1"),
            http.get(&url).query(&query),
        )
    };
    let sent = request
        .bearer_auth(g.token.expose_secret())
        .header("Accept", "application/json")
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let where_ = if cloud_apps {
                format!("tenants.{tenant}.cloud_apps_url")
            } else {
                format!("tenants.{tenant}.graph_url (or the cloud setting)")
            };
            return Probe {
                outcome: Outcome::Fail,
                request: label,
                answer: crate::microsoft::describe_reqwest_error(&e),
                fix: Some(format!(
                    "check that this host reaches {where_} through any proxy or firewall"
                )),
            };
        }
    };
    let status = resp.status().as_u16();
    // Microsoft's error bodies carry a code and a message, never a credential.
    let body = resp.bytes().await.unwrap_or_default();
    if (200..300).contains(&status) {
        let listing = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v.get("value").is_some() || v.get("data").is_some());
        if listing {
            return Probe {
                outcome: Outcome::Pass,
                request: label,
                answer: format!("HTTP {status}"),
                fix: None,
            };
        }
        return Probe {
            outcome: Outcome::Fail,
            request: label,
            answer: format!("HTTP {status} but the answer is not a listing"),
            fix: Some(if cloud_apps {
                format!("tenants.{tenant}.cloud_apps_url must be the Portal URL from Defender → Settings → Cloud Apps → System → About")
            } else {
                format!(
                    "check tenants.{tenant}.graph_url and cloud: the host must be Microsoft Graph"
                )
            }),
        };
    }
    let answer = format!("HTTP {status}{}", error_text(&body));
    let fix = match status {
        401 => format!("the token was refused: check tenants.{tenant}.cloud and graph_url (a token of one cloud is useless in another)"),
        403 => format!(
            "Entra admin center → {app} → API permissions → Add a permission → {}, then Grant admin consent; if it is granted, the tenant may lack the Defender license this API needs",
            required_permission(kind)
        ),
        404 => if cloud_apps {
            format!("tenants.{tenant}.cloud_apps_url must be the Portal URL from Defender → Settings → Cloud Apps → System → About")
        } else {
            format!("check tenants.{tenant}.graph_url and cloud (threat submissions exist only in the global service: global and GCC tenants)")
        },
        429 => return Probe {
            outcome: Outcome::Warn,
            request: label,
            answer: format!("{answer} (throttled: the API is reachable, but whether access works is not known)"),
            fix: Some("another client may share this app's quota; run check again in a minute".into()),
        },
        500..=599 => "Microsoft answered with a server error: run check again in a few minutes".into(),
        _ => format!("unexpected answer: check tenants.{tenant}.graph_url and cloud_apps_url"),
    };
    Probe {
        outcome: Outcome::Fail,
        request: label,
        answer,
        fix: Some(fix),
    }
}

/// A GET with the Graph token: (status, body), or a probe that failed to connect.
async fn get_json(
    http: &reqwest::Client,
    url: &str,
    g: &Granted,
    label: &str,
    tenant: &str,
) -> Result<(u16, Vec<u8>), Probe> {
    let sent = http
        .get(url)
        .bearer_auth(g.token.expose_secret())
        .header("Accept", "application/json")
        .header("Prefer", "IdType=\"ImmutableId\"")
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await.unwrap_or_default().to_vec()))
        }
        Err(e) => Err(Probe {
            outcome: Outcome::Fail,
            request: label.to_string(),
            answer: crate::microsoft::describe_reqwest_error(&e),
            fix: Some(format!(
                "check that this host reaches tenants.{tenant}.graph_url (or the cloud's Graph host) through any proxy or firewall"
            )),
        }),
    }
}

/// The reporting mailbox: found (`auto`: in Defender's user reported settings), and one of its
/// messages and that message's attachments readable, which is what Mail.Read gives and what
/// Exchange's access policies can still refuse.
async fn probe_mailbox(
    http: &reqwest::Client,
    base: &str,
    g: &Granted,
    tenant: &str,
    m: &crate::config::MailboxSettings,
    app: &str,
) -> Probe {
    use crate::sources::{access_policy_fix, NO_REPORTING_MAILBOX};
    let fail = |request: String, answer: String, fix: String| Probe {
        outcome: Outcome::Fail,
        request,
        answer,
        fix: Some(fix),
    };
    let mut mailbox = m.mailbox.clone();
    let mut found = String::new();
    if m.is_auto() {
        let label = "GET /beta/security/threatSubmission/emailThreatSubmissionPolicies".to_string();
        let url = format!("{base}/beta/security/threatSubmission/emailThreatSubmissionPolicies");
        let (status, body) = match get_json(http, &url, g, &label, tenant).await {
            Ok(r) => r,
            Err(p) => return p,
        };
        if status == 403 {
            return fail(label, format!("HTTP 403{}", error_text(&body)), format!(
                "mailbox = \"auto\" reads Defender's user reported settings: Entra admin center → {app} → API permissions → Add a permission → Microsoft Graph → Application permissions → ThreatSubmission.Read.All, then Grant admin consent; or set tenants.{tenant}.sources.phishing_reports.mailbox to the address"
            ));
        }
        if !(200..300).contains(&status) {
            return fail(label, format!("HTTP {status}{}", error_text(&body)), format!("set tenants.{tenant}.sources.phishing_reports.mailbox to the reporting mailbox's address"));
        }
        let address = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("value")?.as_array()?.iter().find_map(|p| {
                    p.get("customizedReportRecipientEmailAddress")?
                        .as_str()
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                })
            });
        let Some(address) = address else {
            let (what, fix) = NO_REPORTING_MAILBOX
                .split_once(" Fix: ")
                .unwrap_or((NO_REPORTING_MAILBOX, ""));
            return fail(label, what.to_string(), fix.to_string());
        };
        found = format!("mailbox = \"auto\" found {address}; ");
        mailbox = address;
    }
    let mut user = match url::Url::parse(&format!("{base}/v1.0/users")) {
        Ok(u) => u,
        Err(e) => {
            return fail(
                "GET /v1.0/users".into(),
                e.to_string(),
                format!("check tenants.{tenant}.graph_url"),
            )
        }
    };
    if let Ok(mut path) = user.path_segments_mut() {
        path.push(&mailbox);
    }
    let mut list = user.clone();
    if let Ok(mut path) = list.path_segments_mut() {
        path.extend(["mailFolders", &m.folder, "messages"]);
    }
    list.query_pairs_mut()
        .append_pair("$top", "1")
        .append_pair("$select", "id,hasAttachments");
    let label = format!(
        "GET /v1.0/users/{mailbox}/mailFolders/{}/messages?$top=1",
        m.folder
    );
    let (status, body) = match get_json(http, list.as_str(), g, &label, tenant).await {
        Ok(r) => r,
        Err(p) => return p,
    };
    let refused = |status: u16, body: &[u8], label: String| {
        let (code, message) = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|v| {
                let s = |k: &str| v["error"][k].as_str().unwrap_or_default().to_string();
                (s("code"), s("message"))
            })
            .unwrap_or_default();
        let answer = format!("{found}HTTP {status}{}", error_text(body));
        let fix = match status {
            403 if code.eq_ignore_ascii_case("ErrorAccessDenied") && message.contains("Access to OData is disabled") => access_policy_fix(&mailbox),
            403 => format!("Entra admin center → {app} → API permissions → Add a permission → Microsoft Graph → Application permissions → Mail.Read, then Grant admin consent (Mail.ReadBasic.All cannot read attachments)"),
            404 if code.eq_ignore_ascii_case("ErrorInvalidUser") || code.eq_ignore_ascii_case("MailboxNotEnabledForRESTAPI") => format!("{mailbox} is not an Exchange Online mailbox of this tenant: check tenants.{tenant}.sources.phishing_reports.mailbox"),
            404 => format!("the folder `{}` does not exist in {mailbox}: check tenants.{tenant}.sources.phishing_reports.folder", m.folder),
            429 => "throttled: run check again in a minute".into(),
            500..=599 => "Microsoft answered with a server error: run check again in a few minutes".into(),
            _ => format!("check tenants.{tenant}.graph_url and tenants.{tenant}.sources.phishing_reports"),
        };
        fail(label, answer, fix)
    };
    if !(200..300).contains(&status) {
        return refused(status, &body, label);
    }
    let first = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("value")?
                .as_array()?
                .first()?
                .get("id")?
                .as_str()
                .map(str::to_string)
        });
    let Some(id) = first else {
        return Probe {
            outcome: Outcome::Pass,
            request: label,
            answer: format!("{found}HTTP {status}; the folder is empty, so reading a report's attachments is not proven yet"),
            fix: None,
        };
    };
    let mut attachments = user;
    if let Ok(mut path) = attachments.path_segments_mut() {
        path.extend(["messages", &id, "attachments"]);
    }
    attachments
        .query_pairs_mut()
        .append_pair("$select", "id,name");
    let label = format!("{label}, then GET …/messages/{{id}}/attachments");
    match get_json(http, attachments.as_str(), g, &label, tenant).await {
        Ok((s, _)) if (200..300).contains(&s) => Probe {
            outcome: Outcome::Pass,
            request: label,
            answer: format!("{found}HTTP {s}: a report and its attachments are readable"),
            fix: None,
        },
        Ok((s, b)) => refused(s, &b, label),
        Err(p) => p,
    }
}

/// `: code: message` from a Graph (`{"error":{"code","message"}}`) or Cloud Apps
/// (`{"detail"}`, `{"error"}`) error body, cut short.
fn error_text(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let s = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).map(str::to_string);
    let text = match v.get("error") {
        Some(e) if e.is_object() => {
            let code = s(e.get("code")).unwrap_or_default();
            let message = s(e.get("message")).unwrap_or_default();
            format!("{code}: {message}")
        }
        Some(e) => s(Some(e)).unwrap_or_default(),
        None => s(v.get("detail")).unwrap_or_default(),
    };
    if text.trim_matches([':', ' ']).is_empty() {
        String::new()
    } else {
        format!(" {}", crate::microsoft::truncate(&text, 300))
    }
}

/// Probes a Dropzone destination without sending an alert: the configured auth and an empty
/// batch, `POST {"alerts":[]}` with a one-off `Idempotency-Key`. A receiver that follows the
/// contract (design §7) authenticates before it reads the body, so 2xx proves the URL and key,
/// 401/403 mean the key (or `auth` style) is wrong, 404/405/410/501 that the URL is not the
/// ingestion endpoint. Another 4xx means the endpoint is there but refuses an empty batch, so
/// the key could not be confirmed: a warning.
async fn check_destination(
    report: &mut Report,
    http: &reqwest::Client,
    dest: &str,
    key: &str,
    cfg: &ForwardConfig,
) {
    // The URL without its query, which could carry a credential.
    let shown = match url::Url::parse(&cfg.url) {
        Ok(mut u) => {
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    };
    let check = format!("destination {dest} ({shown})");
    let sink = DropzoneSink::new(http.clone(), cfg);
    let idempotency_key = format!("m365-ingest-check-{}", uuid::Uuid::new_v4());
    let timeout = cfg.timeout.min(PROBE_TIMEOUT);
    let auth = match cfg.auth {
        ForwardAuth::Bearer => "bearer (Authorization: Bearer KEY)",
        ForwardAuth::Raw => "raw (Authorization: KEY)",
    };
    let (result, detail, fix) = match sink.send(&idempotency_key, &[], timeout).await {
        SendOutcome::Delivered => (
            Outcome::Pass,
            "POST {\"alerts\":[]} accepted: the URL and API key work".to_string(),
            None,
        ),
        SendOutcome::Pause { status, .. } if status == 401 || status == 403 => (
            Outcome::Fail,
            format!("HTTP {status}: the API key was refused (auth = {auth})"),
            Some(format!(
                "put the Dropzone API key in {key}.api_key (or api_key_file); set {key}.auth = \"raw\" if Dropzone expects the key without \"Bearer\""
            )),
        ),
        SendOutcome::Pause { status, .. } if status == 415 => (
            Outcome::Fail,
            format!("HTTP {status}: the endpoint refuses JSON"),
            Some(format!("{key}.url must be Dropzone's alert ingestion endpoint")),
        ),
        SendOutcome::Pause { status, .. } => (
            Outcome::Fail,
            format!("HTTP {status}: this URL does not accept alerts"),
            Some(format!("{key}.url must be Dropzone's alert ingestion endpoint")),
        ),
        SendOutcome::Retry { error, .. } if error.starts_with("HTTP 4") => (
            Outcome::Warn,
            format!("{error}: the endpoint is busy; the URL and key could not be confirmed"),
            Some("run check again in a minute".into()),
        ),
        SendOutcome::Retry { error, .. } => (
            Outcome::Fail,
            format!("no answer: {error}"),
            Some(format!(
                "check {key}.url and that this host reaches it through any proxy or firewall"
            )),
        ),
        SendOutcome::TooLarge => (
            Outcome::Warn,
            "HTTP 413 for an empty batch: the URL and key could not be confirmed".to_string(),
            Some(format!("check {key}.url")),
        ),
        // The receiver's body is not shown: it could echo what it was sent.
        SendOutcome::Rejected { status, .. } => (
            Outcome::Warn,
            format!("HTTP {status}: the endpoint answers but refuses an empty batch, so the API key could not be confirmed"),
            Some(format!("check {key}.url and {key}.api_key; the first real batch will tell")),
        ),
    };
    report.push(None, check, result, detail, fix);
}

/// The `roles` claim of a JWT access token: the application permissions granted on the token's
/// resource. The signature is not checked (the token came straight from the token endpoint over
/// TLS; only its content is read). A missing claim means none granted, as Entra omits it then.
/// Errors never quote the token.
pub fn granted_roles(token: &str) -> Result<Vec<String>, String> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a JWT".into());
    };
    let bytes = base64url_decode(payload).ok_or("the token's payload is not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "the token's payload is not JSON")?;
    match claims.get("roles") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect()),
        Some(_) => Err("the token's roles claim is not a list".into()),
    }
}

/// Base64url without padding (JWT's alphabet); standard-alphabet characters and `=` padding are
/// accepted too. `None` on any other character. (A dozen lines instead of a dependency.)
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.len();
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=n {
                out.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            assert_eq!(base64url_decode(&b64url(&data)), Some(data));
        }
        assert_eq!(base64url_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("a b"), None);
    }

    #[test]
    fn roles_are_read_from_the_payload() {
        let payload = b64url(br#"{"aud":"x","roles":["SecurityAlert.Read.All","Mail.Read"]}"#);
        let token = format!("eyJ0eXAiOiJKV1QifQ.{payload}.c2ln");
        assert_eq!(
            granted_roles(&token).unwrap(),
            vec!["SecurityAlert.Read.All", "Mail.Read"]
        );
        let none = format!("h.{}.s", b64url(br#"{"aud":"x"}"#));
        assert_eq!(granted_roles(&none).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unreadable_tokens_are_errors_that_do_not_quote_the_token() {
        for t in ["opaque-secret-token", "a.b", "a.!!!.c", "a.b.c.d"] {
            let e = granted_roles(t).unwrap_err();
            assert!(!e.contains(t), "{e}");
        }
        let not_json = format!("h.{}.s", b64url(b"secret-ish"));
        assert!(granted_roles(&not_json).is_err());
    }

    #[test]
    fn exit_code_ignores_warnings_but_not_failures() {
        let mut r = Report::default();
        r.push(Some("t"), "a", Outcome::Pass, "", None);
        r.push(Some("t"), "b", Outcome::Warn, "", Some("x".into()));
        assert_eq!(r.exit_code(), 0);
        r.push(None, "c", Outcome::Fail, "", Some("y".into()));
        assert_eq!(r.exit_code(), 1);
        let table = r.to_table();
        assert!(
            table.contains("FAIL") && table.contains("fix: y"),
            "{table}"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(v[2]["result"], "fail");
    }

    #[test]
    fn auth_messages_split_into_what_and_fix() {
        let e = crate::auth::explain_aadsts(
            "contoso",
            "cid",
            "s",
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
        let (what, fix) = split_fix("contoso", &e);
        assert!(what.starts_with("AADSTS7000215"), "{what}");
        assert!(fix.contains("Certificates & secrets"), "{fix}");
    }
}
