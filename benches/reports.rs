//! Reporting-mailbox benchmark: N user reports (default 2,000, `REPORTS_N`; the simulator's
//! realistic mix of item, .eml, .msg, inline and third-party reports) read from the simulated
//! mailbox, parsed and forwarded through SQLite. The simulator runs in a child process (this same
//! binary with `--sim-child`) so the figures are the daemon's alone: reports/s, CPU seconds per
//! report, peak RSS. `REPORTS_BIG_MB=30` instead puts one report in the mailbox whose original
//! carries an attachment of that many megabytes, and gives the daemon's peak RSS while it reads
//! and parses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{cpu_seconds, machine_ticks, peak_rss_mb};

const TENANT: &str = "c4d2c6fd-939d-4a6f-b2f2-21e85e7e7f0a";
const CLIENT: &str = "bench-client";
const SECRET: &str = "bench-secret";
const MAILBOX: &str = "phish-reports@bench.example";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Measure the daemon as it ships: `m365-ingest` caps glibc's arenas the same way.
    m365_ingest::allocator::tune_malloc();
    let args: Vec<String> = std::env::args().collect();
    let big_mb = env_usize("REPORTS_BIG_MB", 0);
    let n = if big_mb > 0 {
        1
    } else {
        env_usize("REPORTS_N", 2_000)
    };
    if args.iter().any(|a| a == "--sim-child") {
        sim_child(n, big_mb);
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--sim-child")
        .env("REPORTS_N", n.to_string())
        .env("REPORTS_BIG_MB", big_mb.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("simulator child starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("child speaks").unwrap();
        if let Some(b) = line.strip_prefix("READY ") {
            break b.to_string();
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let toml = format!(
        r#"
[store]
url = "sqlite://{db}"
[server]
listen = "127.0.0.1:0"
[log]
level = "warn"
[forward]
url = "{base}/dropzone/alerts"
api_key = "bench"
max_batch_bytes = 4194304
[tenants.bench]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = "{SECRET}"
login_url = "{base}"
graph_url = "{base}/graph"
mail_requests_per_minute = 1000000
[tenants.bench.sources.alerts]
enabled = false
[tenants.bench.sources.incidents]
enabled = false
[tenants.bench.sources.submissions]
enabled = false
[tenants.bench.sources.phishing_reports]
mailbox = "{MAILBOX}"
interval = "1s"
"#,
        db = dir.path().join("bench.db").display(),
    );
    let settings = m365_ingest::config::Settings::from_toml(&toml).unwrap();
    let rss_before = peak_rss_mb();
    let cpu_before = cpu_seconds();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let stop = runtime.block_on(async {
        let app = m365_ingest::app::App::build(settings).await.unwrap();
        let stop = app.stop_token();
        tokio::spawn(app.run_until_stopped());
        stop
    });
    // The child prints DONE once its Dropzone endpoint has accepted all n reports.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("DONE") {
            break;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let machine = machine_ticks();
    // Busy share of all cores: the simulator runs beside us and builds each report's MIME.
    let busy =
        (machine.0 - machine_before.0) as f64 / ((machine.1 - machine_before.1).max(1)) as f64;
    stop.cancel();
    std::thread::sleep(Duration::from_secs(1));
    let store = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    if big_mb > 0 {
        println!(
            "reports: one report with a {big_mb} MB attachment: {:.1} s, daemon CPU {:.2} s, peak RSS {:.1} MB (before the daemon started: {:.1} MB)",
            elapsed.as_secs_f64(),
            cpu,
            peak_rss_mb(),
            rss_before,
        );
    } else {
        println!(
            "reports: {n} reports: {:.1} s, {:.0} reports/s, daemon CPU {:.1} s ({:.0} µs per report), peak RSS {:.1} MB, store {:.1} MB, machine busy {:.0}%",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            cpu,
            cpu * 1e6 / n as f64,
            peak_rss_mb(),
            store as f64 / 1e6,
            busy * 100.0,
        );
    }
}

/// The simulator: a mailbox of `n` reports received over the last three days (or one report
/// whose original carries a `big_mb` MB attachment), READY when it listens, DONE once its
/// Dropzone endpoint has accepted them all.
fn sim_child(n: usize, big_mb: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = m365_sim::Simulator::start(m365_sim::SimConfig {
            keep_bodies: false,
            ..Default::default()
        })
        .await
        .unwrap();
        sim.add_tenant(TENANT);
        sim.add_app(TENANT, CLIENT, SECRET, &["Mail.Read"]);
        sim.add_mailbox(TENANT, MAILBOX);
        sim.set_mail_faults(
            TENANT,
            m365_sim::MailFaults {
                requests_per_window: usize::MAX,
                ..Default::default()
            },
        );
        let now = SystemTime::now();
        if big_mb > 0 {
            sim.add_report(
                TENANT,
                MAILBOX,
                m365_sim::Report::item(
                    "alice@bench.example",
                    "Phishing: invoice",
                    now - Duration::from_secs(120),
                    big_original(big_mb),
                ),
            );
        } else {
            sim.add_reports(
                TENANT,
                MAILBOX,
                m365_sim::ReportSpec::new(
                    n,
                    now - Duration::from_secs(3 * 86_400),
                    now - Duration::from_secs(60),
                    1,
                ),
            );
        }
        println!("READY {}", sim.base_url());
        while sim.delivered_count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("DONE {}", sim.delivered_count());
    });
}

/// A phish whose attachment is `mb` megabytes, base64 in 76-character lines.
fn big_original(mb: usize) -> Vec<u8> {
    let mut m = b"From: Billing <billing@paypa1.com>\r\nTo: alice@bench.example\r\nSubject: Invoice\r\n\
Message-ID: <big@paypa1.com>\r\nDate: Tue, 14 Jan 2025 09:11:58 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n\
<p>Pay <a href=\"https://login.paypa1.com/pay\">here</a></p>\r\n--b\r\nContent-Type: application/zip; name=\"invoice.zip\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"invoice.zip\"\r\n\r\n"
        .to_vec();
    let line = b"UEsDBBQAAAAIAAAAIQBQSwMEFAAAAAgAAAAhAFBLAwQUAAAACAAAACEAUEsDBBQAAAAIAAAAIQBQ\r\n";
    for _ in 0..(mb * 1024 * 1024 / 57) {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}
