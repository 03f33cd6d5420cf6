//! Drain benchmark: N alerts (default 200,000, `DRAIN_ALERTS`) from the simulator through SQLite
//! to the recording Dropzone endpoint. The simulator runs in a child process (this same binary
//! with `--sim-child`) so the figures are the daemon's alone: alerts/s, CPU seconds, peak RSS.
//! `DRAIN_BATCH` sets forward.batch_size (default 100, the shipped default). `DRAIN_STORE=postgres`
//! runs it on a fresh database of the local Postgres (`M365_TEST_PG_URL`, default
//! postgres@127.0.0.1:5432) instead of SQLite. `DRAIN_PAGE` caps the alerts the simulator puts
//! in a page (default 1,000, Graph's largest), to see memory against the size of a page. It
//! prints the store's bytes per alert and each table's and index's share; `DRAIN_KEEP=DIR`
//! keeps the SQLite store in DIR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{cpu_seconds, machine_ticks, peak_rss_mb};

const TENANT: &str = "b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c";
const CLIENT: &str = "bench-client";
const SECRET: &str = "bench-secret";

fn main() {
    // Measure the daemon as it ships: `m365-ingest` caps glibc's arenas the same way.
    m365_ingest::allocator::tune_malloc();
    let args: Vec<String> = std::env::args().collect();
    let n: usize = std::env::var("DRAIN_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    if args.iter().any(|a| a == "--sim-child") {
        sim_child(n);
        return;
    }
    // `cargo bench` passes `--bench`; anything else (a filter) is ignored.
    let batch: usize = std::env::var("DRAIN_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--sim-child")
        .env("DRAIN_ALERTS", n.to_string())
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
    // `DRAIN_KEEP=DIR` keeps the SQLite store there for a look afterwards (`sqlite3`, `dbstat`).
    let kept = std::env::var_os("DRAIN_KEEP").map(std::path::PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let db_path = match &kept {
        Some(keep) => {
            std::fs::create_dir_all(keep).unwrap();
            keep.join("bench.db")
        }
        None => dir.path().join("bench.db"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg_base = std::env::var("M365_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
    let pg_db = (std::env::var("DRAIN_STORE").as_deref() == Ok("postgres"))
        .then(|| format!("m365_bench_{}", std::process::id()));
    let store_url = match &pg_db {
        Some(name) => {
            runtime.block_on(pg_admin(&pg_base, &format!("CREATE DATABASE {name}")));
            format!("{pg_base}/{name}")
        }
        None => format!("sqlite://{}", db_path.display()),
    };
    let toml = format!(
        r#"
[store]
url = "{store_url}"
[server]
listen = "127.0.0.1:0"
[log]
level = "warn"
[forward]
url = "{base}/dropzone/alerts"
api_key = "bench"
batch_size = {batch}
max_batch_bytes = 4194304
[tenants.bench]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = "{SECRET}"
login_url = "{base}"
graph_url = "{base}/graph"
graph_requests_per_minute = 1000000
[tenants.bench.sources.alerts]
interval = "1s"
settle = "1s"
[tenants.bench.sources.incidents]
enabled = false
[tenants.bench.sources.submissions]
enabled = false
"#
    );
    let settings = m365_ingest::config::Settings::from_toml(&toml).unwrap();
    let cpu_before = cpu_seconds();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let stop = runtime.block_on(async {
        let app = m365_ingest::app::App::build(settings).await.unwrap();
        let stop = app.stop_token();
        tokio::spawn(app.run_until_stopped());
        stop
    });
    // The child prints DONE once its Dropzone endpoint has accepted all n alerts.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("DONE") {
            break;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let machine = machine_ticks();
    // Busy share of all cores during the drain: the simulator and Postgres run beside us.
    let busy =
        (machine.0 - machine_before.0) as f64 / ((machine.1 - machine_before.1).max(1)) as f64;
    stop.cancel();
    std::thread::sleep(Duration::from_secs(1));
    if std::env::var_os("DRAIN_RESTART").is_some() {
        restart(&runtime, &toml);
    }
    // The store's bytes: Postgres's database size; SQLite's pages after a checkpoint (so the
    // WAL is in the file), with each table's and index's share (the `dbstat` table).
    let (db_size, breakdown) = match &pg_db {
        Some(name) => runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&format!("{pg_base}/{name}"))
                .await
                .unwrap();
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i', 't') \
                 UNION ALL SELECT 'toast of ' || c.relname::text, \
                 pg_total_relation_size(c.reltoastrelid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reltoastrelid <> 0",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            drop(conn);
            let mut conn = sqlx::PgConnection::connect(&format!("{pg_base}/postgres"))
                .await
                .unwrap();
            let size: i64 = sqlx::query_scalar("SELECT pg_database_size($1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            pg_admin(&pg_base, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
            (size as u64, rows)
        }),
        None => runtime.block_on(async {
            use sqlx::Connection;
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
                    .await
                    .unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await
                .unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
            (pages as u64 * page as u64, rows)
        }),
    };
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "drain ({}): {n} alerts, batch_size {batch}: {:.1} s, {:.0} alerts/s, daemon CPU {:.1} s ({:.0} alerts per CPU-second), peak RSS {:.1} MB, store {:.0} MB ({:.0} bytes/alert), machine busy {:.0}% of {} cores",
        if pg_db.is_some() { "postgres" } else { "sqlite" },
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu,
        n as f64 / cpu.max(0.001),
        peak_rss_mb(),
        db_size as f64 / 1e6,
        db_size as f64 / n as f64,
        busy * 100.0,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    let mut breakdown = breakdown;
    breakdown.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    // Tables and indexes of at least a byte per alert.
    for (name, bytes) in breakdown.iter().filter(|(_, b)| *b as usize >= n) {
        println!(
            "  {name:<28} {:>8.1} MB {:>7.0} bytes/alert",
            *bytes as f64 / 1e6,
            *bytes as f64 / n as f64
        );
    }
}

/// `DRAIN_RESTART=1`: the daemon is started again on the drained store, as a restart does. It
/// reconciles [C − 24 h, C) at once, a third of the backlog, every alert of which it holds
/// already; the figures are that pass's. A pass runs between two polls of its source, so it is
/// over when the second poll after the start is counted.
fn restart(runtime: &tokio::runtime::Runtime, toml: &str) {
    let settings = m365_ingest::config::Settings::from_toml(toml).unwrap();
    let (stop, port) = runtime.block_on(async {
        let app = m365_ingest::app::App::build(settings).await.unwrap();
        let (stop, port) = (app.stop_token(), app.port());
        tokio::spawn(app.run_until_stopped());
        (stop, port)
    });
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let total = |name: &str, label: &str| {
        runtime.block_on(async {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
    };
    let polls = || total("m365_ingest_polls_total", "success");
    let unchanged = || total("m365_ingest_items_total", "unchanged");
    let (polls_before, unchanged_before) = (polls(), unchanged());
    let deadline = Instant::now() + Duration::from_secs(900);
    while polls() < polls_before + 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pass = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let items = unchanged() - unchanged_before;
    stop.cancel();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "restart: reconciliation of {items:.0} stored alerts: {:.1} s, daemon CPU {cpu:.1} s ({:.1} µs per alert), peak RSS {:.1} MB",
        pass.as_secs_f64(),
        cpu * 1e6 / items.max(1.0),
        peak_rss_mb()
    );
}

async fn pg_admin(base: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("Postgres answers (DRAIN_STORE=postgres needs the local server)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn sim_child(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let page_cap = std::env::var("DRAIN_PAGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let sim = m365_sim::Simulator::start(m365_sim::SimConfig {
            keep_bodies: false,
            page_cap,
            ..Default::default()
        })
        .await
        .unwrap();
        // The bench measures the pipeline, not Graph's budget (the daemon's is lifted too).
        sim.set_graph_rate_limit(1_000_000);
        sim.add_tenant(TENANT);
        sim.add_app(TENANT, CLIENT, SECRET, &["SecurityAlert.Read.All"]);
        let now = SystemTime::now();
        sim.generate_alerts(
            TENANT,
            n,
            now - Duration::from_secs(3 * 86_400),
            now - Duration::from_secs(300),
        );
        println!("READY {}", sim.base_url());
        while sim.delivered_count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("DONE {}", sim.delivered_count());
        // Serving on until the parent kills it: a restart (`DRAIN_RESTART`) polls it again.
        std::future::pending::<()>().await;
    });
}
