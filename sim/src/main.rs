//! `m365-sim`: runs the simulator as a standalone process (for the demo and manual testing):
//! one tenant and app pre-registered, a backlog of alerts (and optionally incidents, threat
//! submissions and Cloud Apps alerts), optionally a live stream, until Ctrl-C.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use clap::Parser;
use m365_sim::{SimConfig, Simulator};

/// Every Graph security and Cloud Apps application permission, so the seeded app can read
/// everything.
const ROLES: &[&str] = &[
    "SecurityAlert.Read.All",
    "SecurityIncident.Read.All",
    "ThreatSubmission.Read.All",
    "ThreatHunting.Read.All",
    "Investigation.read",
    "Mail.Read",
];

#[derive(Parser)]
#[command(
    version,
    about = "Microsoft 365 Defender and Dropzone simulator on loopback"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Tenant id to register.
    #[arg(long, default_value = "00000000-0000-0000-0000-00000000000a")]
    tenant: String,
    /// Client (application) id of the registered app.
    #[arg(long, default_value = "11111111-1111-1111-1111-111111111111")]
    client_id: String,
    /// Client secret of the registered app.
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    /// A certificate (PEM) to upload for the app, so it can also sign in with a client assertion
    /// signed by that certificate's key (`client_certificate_file`).
    #[arg(long)]
    client_certificate: Option<std::path::PathBuf>,
    /// Alerts to generate over the last 3 days.
    #[arg(long, default_value_t = 1000)]
    alerts: usize,
    /// Incidents to generate over the last 3 days (linked to the alerts' incident ids).
    #[arg(long, default_value_t = 0)]
    incidents: usize,
    /// Threat submissions to generate in each of the three lists (emailThreats, urlThreats,
    /// fileThreats) over the last 3 days.
    #[arg(long, default_value_t = 0)]
    submissions: usize,
    /// Defender for Cloud Apps alerts to generate over the last 3 days.
    #[arg(long, default_value_t = 0)]
    cloud_app_alerts: usize,
    /// A reporting mailbox (UPN) to create, named by the tenant's report submission policy and
    /// holding `--reports` user-reported messages; new ones keep arriving while running.
    #[arg(long)]
    mailbox: Option<String>,
    /// Reports to generate into `--mailbox` over the last 3 days.
    #[arg(long, default_value_t = 300)]
    reports: usize,
    /// Seconds between new reports in `--mailbox` while running (0: none).
    #[arg(long, default_value_t = 20)]
    report_every_secs: u64,
    /// New or updated alerts per minute while running (0: none).
    #[arg(long, default_value_t = 0)]
    stream_per_minute: u32,
    /// Record only event ids at the Dropzone endpoint, not bodies.
    #[arg(long)]
    no_keep_bodies: bool,
    /// Serve HTTPS with a self-signed certificate made at start; every advertised URL is then
    /// https://.
    #[arg(long)]
    tls: bool,
    /// Where to write the certificate (PEM) with `--tls`
    /// (default: m365-sim-PORT.pem in the temporary folder).
    #[arg(long, requires = "tls")]
    tls_cert_out: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let cfg = SimConfig {
        bind: args.listen,
        keep_bodies: !args.no_keep_bodies,
        tls: args.tls,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await?;
    if let Some(pem) = sim.tls_certificate_pem() {
        let path = args.tls_cert_out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("m365-sim-{}.pem", sim.addr().port()))
        });
        std::fs::write(&path, pem).map_err(|e| {
            std::io::Error::other(format!("--tls-cert-out {}: {e}", path.display()))
        })?;
        println!("m365-sim tls_cert={}", path.display());
    }
    sim.add_tenant(&args.tenant);
    sim.add_app(&args.tenant, &args.client_id, &args.client_secret, ROLES);
    if let Some(path) = &args.client_certificate {
        let pem = std::fs::read_to_string(path)?;
        sim.add_app_certificate(&args.tenant, &args.client_id, &pem)
            .map_err(|e| {
                std::io::Error::other(format!("--client-certificate {}: {e}", path.display()))
            })?;
    }
    let now = SystemTime::now();
    let from = now
        .checked_sub(Duration::from_secs(3 * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    sim.generate_alerts(&args.tenant, args.alerts, from, now);
    sim.generate_incidents(&args.tenant, args.incidents, from, now);
    for list in ["emailThreats", "urlThreats", "fileThreats"] {
        sim.generate_submissions(&args.tenant, list, args.submissions, from, now);
    }
    sim.generate_cloud_app_alerts(&args.tenant, args.cloud_app_alerts, from, now);
    sim.spawn_stream(&args.tenant, args.stream_per_minute);
    if let Some(upn) = &args.mailbox {
        sim.seed_reporting_mailbox(&args.tenant, upn, args.reports);
        sim.start_report_stream(
            &args.tenant,
            upn,
            Duration::from_secs(args.report_every_secs),
        );
        println!("m365-sim mailbox={upn} reports={}", args.reports);
    }
    println!(
        "m365-sim listening: login_url={} graph_url={} cloud_apps_url={} dropzone_url={} tenant={} client_id={} alerts={} incidents={} submissions={}x3 cloud_app_alerts={}",
        sim.login_url(),
        sim.graph_url(),
        sim.cloud_apps_url(),
        sim.dropzone_url(),
        args.tenant,
        args.client_id,
        args.alerts,
        args.incidents,
        args.submissions,
        args.cloud_app_alerts
    );
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
