//! The command line: `run` (the daemon), `migrate`, `check`, the operator commands (`dead-letters`,
//! `quarantine`, `cursor`, `replay`: see `admin`), `demo` (simulator + daemon on loopback, no
//! tenant needed) and `sim` (the simulator alone). Exit codes: 0 done, 78 bad configuration,
//! 1 anything else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::{LogConfig, LogFormat, Settings};

/// EX_CONFIG from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "m365-ingest",
    version,
    about = "Microsoft 365 Defender alerts to Dropzone AI, at least once and never lost"
)]
pub struct Cli {
    /// The configuration file (TOML); `M365_INGEST__SECTION__KEY` variables override it.
    #[arg(
        long,
        global = true,
        default_value = "config/m365-ingest.toml",
        env = "M365_INGEST_CONFIG"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run,
    /// Create or upgrade the store's tables, then exit.
    Migrate,
    /// Test the setup ("Test & Save"): tokens, granted permissions, one request per source and
    /// the Dropzone endpoint. Exit code 0 when every check passes (warnings allowed), 1 if not.
    Check {
        /// Print a JSON array of checks instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Dead-lettered versions: list them, or queue them again once the cause is fixed.
    DeadLetters {
        #[command(subcommand)]
        cmd: crate::admin::DeadLetters,
    },
    /// Items Microsoft sent that could not be read.
    Quarantine {
        #[command(subcommand)]
        cmd: crate::admin::Quarantine,
    },
    /// Coverage points: show them, or move one to read a period again.
    Cursor {
        #[command(subcommand)]
        cmd: crate::admin::CursorCmd,
    },
    /// Send delivered versions again with their original event ids (by tenant, source, alert or
    /// time stored).
    Replay(crate::admin::Replay),
    /// Print a running daemon's `/status` readably: per tenant and source, how far behind, the
    /// last error, the queue, dead letters and leases.
    Status {
        /// The daemon's address (`server.listen`).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A file holding `server.status_token`, when the daemon has one.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the JSON as the daemon sent it.
        #[arg(long)]
        json: bool,
    },
    /// Probe a running daemon (container HEALTHCHECK: the image has no curl): exit 0 when the
    /// URL answers 200 within 5 s, 1 otherwise.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Run the built-in simulator and the daemon against it (SQLite in a temporary folder).
    Demo {
        /// Alerts already waiting in the simulated tenant (spread over the last 3 days).
        #[arg(long, default_value_t = 2000)]
        alerts: usize,
        /// New alerts per minute while the demo runs.
        #[arg(long, default_value_t = 60)]
        per_minute: u32,
        /// Where `/status` listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run the Microsoft 365 and Dropzone simulator alone.
    Sim {
        #[arg(long, default_value = "127.0.0.1:9999")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        alerts: usize,
        /// Serve HTTPS with a self-signed certificate made at start (for Microsoft's own client
        /// libraries, which refuse http:// authorities); every advertised URL is then https://.
        #[arg(long)]
        tls: bool,
        /// Where to write the certificate (PEM) with `--tls`, for clients to trust
        /// (default: m365-ingest-sim-PORT.pem in the temporary folder).
        #[arg(long, requires = "tls")]
        tls_cert_out: Option<std::path::PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

fn explicit_config(path: &std::path::Path) -> bool {
    std::env::var_os("M365_INGEST_CONFIG").is_some()
        || std::env::args().any(|a| a == "--config" || a.starts_with("--config="))
        || path.exists()
}

fn load(path: &std::path::Path) -> Result<Settings, ExitCode> {
    match Settings::load(path, explicit_config(path)) {
        Ok(s) => Ok(s),
        Err(e) => {
            eprintln!("{e}");
            if !path.exists() {
                eprintln!(
                    "(no config file at {}: copy config/m365-ingest.example.toml there, or pass --config PATH; `m365-ingest demo` runs without one)",
                    path.display()
                );
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

async fn dispatch(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run => {
            let settings = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            crate::telemetry::init(&settings.log);
            run(settings).await
        }
        Command::Migrate => {
            let settings = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            crate::telemetry::init(&settings.log);
            crate::store::open(&settings.store)
                .await
                .map(|_| println!("store is up to date"))
                .map_err(anyhow::Error::from)
        }
        Command::Check { json } => {
            let settings = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let report = crate::check::run(&settings).await;
            print!(
                "{}",
                if json {
                    report.to_json() + "\n"
                } else {
                    report.to_table()
                }
            );
            return ExitCode::from(report.exit_code());
        }
        Command::DeadLetters { cmd } => {
            return admin(&cli.config, crate::admin::Op::DeadLetters(cmd)).await
        }
        Command::Quarantine { cmd } => {
            return admin(&cli.config, crate::admin::Op::Quarantine(cmd)).await
        }
        Command::Cursor { cmd } => return admin(&cli.config, crate::admin::Op::Cursor(cmd)).await,
        Command::Replay(args) => return admin(&cli.config, crate::admin::Op::Replay(args)).await,
        Command::Health { url } => return health(&url).await,
        Command::Status {
            url,
            token_file,
            json,
        } => return status(&url, token_file.as_deref(), json).await,
        Command::Demo {
            alerts,
            per_minute,
            listen,
        } => demo(alerts, per_minute, listen).await,
        Command::Sim {
            listen,
            alerts,
            tls,
            tls_cert_out,
        } => sim(listen, alerts, tls, tls_cert_out).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn status(url: &str, token_file: Option<&std::path::Path>, json: bool) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| t.trim().to_string()),
        Err(e) => {
            eprintln!("error: cannot read --token-file: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match crate::app::http_client(Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut req = client.get(format!("{}/status", url.trim_end_matches('/')));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body: serde_json::Value = match req.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
            eprintln!("error: the daemon wants server.status_token: pass it with --token-file");
            return ExitCode::FAILURE;
        }
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {url}/status did not answer JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!(
                "error: no daemon answers at {url}: {}",
                crate::microsoft::describe_reqwest_error(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body:#}");
    } else {
        print!("{}", crate::admin::render_status(&body));
    }
    ExitCode::SUCCESS
}

async fn health(url: &str) -> ExitCode {
    let answer = match crate::app::http_client(Duration::from_secs(5)) {
        Ok(client) => client.get(url).send().await,
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match answer {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "unhealthy: {url}: {}",
                crate::microsoft::describe_reqwest_error(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// An operator command on the configured store. Exit codes: 0 done, 2 bad arguments, 78 bad
/// configuration, 1 a store error (with SQLite: stop the daemon first, the file has one writer).
async fn admin(config: &std::path::Path, op: crate::admin::Op) -> ExitCode {
    let settings = match load(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match crate::store::open(&settings.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: opening the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::admin::execute(&store, op).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(crate::admin::AdminError::Usage(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = App::build(settings).await?;
    let stop = app.stop_token();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    app.run_until_stopped().await
}

/// Demo tenant identity; only the simulator knows it.
const DEMO_TENANT: &str = "00000000-0000-4000-8000-00000000d3a0";
const DEMO_CLIENT: &str = "11111111-1111-4111-8111-111111111111";
const DEMO_MAILBOX: &str = "phish-reports@demo.example";

async fn start_sim(
    listen: SocketAddr,
    alerts: usize,
    per_minute: u32,
    tls: bool,
) -> anyhow::Result<(m365_sim::Simulator, String)> {
    let sim = m365_sim::Simulator::start(m365_sim::SimConfig {
        bind: listen,
        keep_bodies: false,
        tls,
        ..Default::default()
    })
    .await?;
    let secret = format!("demo-{}", uuid::Uuid::new_v4());
    sim.add_tenant(DEMO_TENANT);
    sim.add_app(
        DEMO_TENANT,
        DEMO_CLIENT,
        &secret,
        &[
            "SecurityAlert.Read.All",
            "SecurityIncident.Read.All",
            "ThreatSubmission.Read.All",
            "Investigation.read",
            "Mail.Read",
            "ThreatHunting.Read.All",
        ],
    );
    let now = SystemTime::now();
    // The reporting mailbox, named in Defender's user reported settings (`mailbox = "auto"`),
    // with three days of user reports; the stream below keeps new ones arriving.
    sim.seed_reporting_mailbox(DEMO_TENANT, DEMO_MAILBOX, (alerts / 20).max(20));
    let history = now - Duration::from_secs(3 * 86_400);
    sim.generate_alerts(DEMO_TENANT, alerts, history, now);
    sim.generate_incidents(DEMO_TENANT, alerts / 10, history, now);
    for list in ["emailThreats", "urlThreats", "fileThreats"] {
        sim.generate_submissions(DEMO_TENANT, list, alerts / 50, history, now);
    }
    sim.generate_cloud_app_alerts(DEMO_TENANT, alerts / 20, history, now);
    if per_minute > 0 {
        sim.spawn_stream(DEMO_TENANT, per_minute);
    }
    Ok((sim, secret))
}

async fn demo(alerts: usize, per_minute: u32, listen: SocketAddr) -> anyhow::Result<()> {
    crate::telemetry::init(&LogConfig {
        format: LogFormat::Pretty,
        level: "info".into(),
    });
    let (sim, secret) = start_sim("127.0.0.1:0".parse()?, alerts, per_minute, false).await?;
    let dir = std::env::temp_dir().join(format!("m365-ingest-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let toml = format!(
        r#"
[store]
url = "sqlite://{db}"
[server]
listen = "{listen}"
shutdown_grace = "5s"
[forward]
url = "{dropzone}"
api_key = "demo-dropzone-key"
[tenants.demo]
tenant_id = "{DEMO_TENANT}"
client_id = "{DEMO_CLIENT}"
client_secret = "{secret}"
login_url = "{login}"
graph_url = "{graph}"
cloud_apps_url = "{cloud_apps}"
[tenants.demo.context]
hunting = true
max_delay = "30s"
[tenants.demo.sources.alerts]
interval = "10s"
settle = "5s"
overlap = "2m"
[tenants.demo.sources.incidents]
interval = "10s"
settle = "5s"
overlap = "2m"
[tenants.demo.sources.submissions]
interval = "20s"
settle = "5s"
overlap = "2m"
recheck_interval = "30s"
[tenants.demo.sources.cloud_apps]
interval = "20s"
settle = "5s"
overlap = "2m"
recheck_interval = "1m"
twin_wait = "30s"
[tenants.demo.sources.phishing_reports]
mailbox = "auto"
interval = "15s"
"#,
        db = dir.join("m365-ingest.db").display(),
        dropzone = sim.dropzone_url(),
        login = sim.login_url(),
        graph = sim.graph_url(),
        cloud_apps = sim.cloud_apps_url(),
    );
    let settings = Settings::from_toml(&toml)?;
    let app = App::build(settings).await?;
    println!();
    println!(
        "m365-ingest demo: simulator at {}, store in {}",
        sim.base_url(),
        dir.display()
    );
    println!(
        "status:  http://127.0.0.1:{}/status   (also /readyz, /healthz)",
        app.port()
    );
    println!("Ctrl-C stops.");
    println!();
    let stop = app.stop_token();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    let result = app.run_until_stopped().await;
    sim.shutdown().await;
    println!(
        "demo stopped: the simulated Dropzone received {} alerts",
        sim.delivered_count()
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn sim(
    listen: SocketAddr,
    alerts: usize,
    tls: bool,
    tls_cert_out: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    crate::telemetry::init(&LogConfig {
        format: LogFormat::Pretty,
        level: "info".into(),
    });
    let (sim, secret) = start_sim(listen, alerts, 60, tls).await?;
    println!("simulator listening on {}", sim.base_url());
    if let Some(pem) = sim.tls_certificate_pem() {
        let path = tls_cert_out.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("m365-ingest-sim-{}.pem", sim.addr().port()))
        });
        std::fs::write(&path, pem)
            .map_err(|e| anyhow::anyhow!("--tls-cert-out {}: {e}", path.display()))?;
        // Printed in the same form as the other lines so a script can pick it up.
        println!("  tls_cert      = \"{}\"", path.display());
    }
    println!("  tenant_id     = \"{DEMO_TENANT}\"");
    println!("  client_id     = \"{DEMO_CLIENT}\"");
    println!("  client_secret = \"{secret}\"");
    println!("  login_url     = \"{}\"", sim.login_url());
    println!("  graph_url     = \"{}\"", sim.graph_url());
    println!("  cloud_apps_url = \"{}\"", sim.cloud_apps_url());
    println!("  forward.url   = \"{}\"", sim.dropzone_url());
    println!(
        "  reporting mailbox = \"{DEMO_MAILBOX}\" (sources.phishing_reports.mailbox, or \"auto\")"
    );
    crate::shutdown::signal().await;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
