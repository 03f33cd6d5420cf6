//! The operator's store commands (design §7, §8): `dead-letters list | retry`,
//! `quarantine list | retry`, `cursor show | set` and `replay`. They open the store as the daemon does; with SQLite the
//! daemon must be stopped first (one writer per file), with Postgres they run beside it.

use clap::{Args, Subcommand};

use crate::normalize::SourceKind;
use crate::store::{self, AnyStore, Cursor, CursorKey, ReplayFilter, Store};
use crate::time::{format_rfc3339_millis_from_ms, format_seconds, parse_ticks};

#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// List dead-lettered versions with the reason Dropzone gave.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters again (after fixing what Dropzone refused); new batches, new keys.
    Retry {
        #[arg(long)]
        tenant: Option<String>,
        /// Only these (the `seq` column of `list`); all of the tenant's when none is given.
        #[arg(long = "seq")]
        seqs: Vec<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Quarantine {
    /// List items that could not be read, with the reason.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Mark items to be read again with this version's parser (after an upgrade that reads
    /// them). The daemon's poller for the item's tenant and source does it on its next poll:
    /// items that parse now are stored and forwarded; the rest stay, with the new reason.
    Retry {
        #[arg(long)]
        tenant: Option<String>,
        /// Only these (the `id` column of `list`); all of the tenant's when none is given.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CursorCmd {
    /// Show each coverage point C and the first run's T0.
    Show {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Move a coverage point (back, to read a period again; forward, to skip one). With
    /// Postgres it may run beside the daemon: a poll already under way stores its pages but no
    /// longer moves C (the row's generation changed), and the next poll starts from the new C.
    Set {
        #[arg(long)]
        tenant: String,
        /// alerts | incidents | submissions | cloud_apps
        #[arg(long)]
        source: String,
        /// The list within the source (submissions: emailThreats, urlThreats, fileThreats;
        /// cloud_apps: date, resolutionDate); empty for the others.
        #[arg(long, default_value = "")]
        list: String,
        /// The new coverage point, RFC 3339 (e.g. 2026-11-20T00:00:00Z).
        #[arg(long)]
        to: String,
    },
}

/// `replay`: which delivered versions to send again, with their original event ids.
#[derive(Debug, Args)]
pub struct Replay {
    #[arg(long)]
    pub tenant: Option<String>,
    /// alerts | incidents | submissions | cloud_apps
    #[arg(long)]
    pub source: Option<String>,
    /// One alert's native id.
    #[arg(long)]
    pub alert: Option<String>,
    /// Versions stored at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Versions stored before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Send them as new versions (`{version}#replay{n}`, new event ids), for a receiver that
    /// dedupes on event ids.
    #[arg(long)]
    pub as_new: bool,
}

/// One operator command.
pub enum Op {
    DeadLetters(DeadLetters),
    Quarantine(Quarantine),
    Cursor(CursorCmd),
    Replay(Replay),
}

/// Runs `op` on `store` and returns what to print.
pub async fn execute(store: &AnyStore, op: Op) -> Result<String, AdminError> {
    match op {
        Op::DeadLetters(cmd) => dead_letters(store, cmd).await,
        Op::Quarantine(cmd) => quarantine(store, cmd).await,
        Op::Cursor(cmd) => cursor(store, cmd).await,
        Op::Replay(args) => replay(store, args).await,
    }
}

/// A command's failure: bad arguments (the operator's to fix) or a store error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

fn parse_source(s: &str) -> Result<SourceKind, AdminError> {
    SourceKind::parse(s).ok_or_else(|| {
        AdminError::Usage(format!(
            "unknown source `{s}`: use alerts, incidents, submissions or cloud_apps"
        ))
    })
}

/// Unix ms of an RFC 3339 time.
fn parse_ms(what: &str, s: &str) -> Result<i64, AdminError> {
    parse_ticks(s).map(|t| t / 10_000).ok_or_else(|| {
        AdminError::Usage(format!(
            "{what} `{s}` is not an RFC 3339 time such as 2026-11-20T00:00:00Z"
        ))
    })
}

/// One JSON object per line, for scripts.
fn json_lines<T: serde::Serialize>(rows: &[T]) -> String {
    rows.iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default() + "\n")
        .collect()
}

pub async fn dead_letters(store: &AnyStore, cmd: DeadLetters) -> Result<String, AdminError> {
    match cmd {
        DeadLetters::List { tenant, json } => {
            let rows = store.dead_letters(tenant.as_deref()).await?;
            if json {
                return Ok(json_lines(&rows));
            }
            let mut out = format!(
                "{:>8}  {:<12} {:<12} {:<40} reason\n",
                "seq", "tenant", "source", "native id"
            );
            for r in &rows {
                out.push_str(&format!(
                    "{:>8}  {:<12} {:<12} {:<40} {}\n",
                    r.seq, r.tenant, r.source, r.native_id, r.reason
                ));
            }
            out.push_str(&format!("{} dead letter(s)\n", rows.len()));
            Ok(out)
        }
        DeadLetters::Retry { tenant, seqs } => {
            let n = store.retry_dead_letters(tenant.as_deref(), &seqs).await?;
            Ok(format!(
                "{n} dead letter(s) queued again; the daemon sends them in new batches\n"
            ))
        }
    }
}

pub async fn quarantine(store: &AnyStore, cmd: Quarantine) -> Result<String, AdminError> {
    let (tenant, json) = match cmd {
        Quarantine::List { tenant, json } => (tenant, json),
        Quarantine::Retry { tenant, ids } => {
            let n = store
                .request_quarantine_retry(tenant.as_deref(), &ids)
                .await?;
            return Ok(format!(
                "{n} quarantined item(s) marked for retry; the daemon re-reads them on its next poll of each item's source (start it if it is stopped), then `quarantine list` shows what is left\n"
            ));
        }
    };
    let rows = store.quarantined(tenant.as_deref()).await?;
    if json {
        return Ok(json_lines(&rows));
    }
    let mut out = format!(
        "{:>6}  {:<24} {:<12} {:<12} {:<40} reason\n",
        "id", "stored", "tenant", "source", "native id"
    );
    for r in &rows {
        let retry = match (r.retry_requested, r.attempts) {
            (true, _) => " [retry requested]".to_string(),
            (false, 0) => String::new(),
            (false, n) => format!(" [retried {n}x]"),
        };
        out.push_str(&format!(
            "{:>6}  {:<24} {:<12} {:<12} {:<40} {}{retry}\n",
            r.id,
            format_rfc3339_millis_from_ms(r.created_at),
            r.tenant,
            r.source,
            r.native_id.as_deref().unwrap_or("-"),
            r.reason
        ));
    }
    out.push_str(&format!("{} quarantined item(s)\n", rows.len()));
    Ok(out)
}

pub async fn cursor(store: &AnyStore, cmd: CursorCmd) -> Result<String, AdminError> {
    match cmd {
        CursorCmd::Show { tenant } => {
            let rows = store.cursors(tenant.as_deref()).await?;
            let mut out = format!(
                "{:<12} {:<12} {:<16} {:<22} t0\n",
                "tenant", "source", "list", "coverage (C)"
            );
            for r in &rows {
                out.push_str(&format!(
                    "{:<12} {:<12} {:<16} {:<22} {}\n",
                    r.key.tenant,
                    r.key.source.as_str(),
                    if r.key.list.is_empty() {
                        "-"
                    } else {
                        &r.key.list
                    },
                    format_seconds(r.cursor.coverage),
                    format_seconds(r.cursor.t0)
                ));
            }
            Ok(out)
        }
        CursorCmd::Set {
            tenant,
            source,
            list,
            to,
        } => {
            let key = CursorKey {
                tenant,
                source: parse_source(&source)?,
                list,
            };
            let coverage = parse_ms("--to", &to)? / 1000;
            let Some(current) = store.load_cursor(&key).await? else {
                return Err(AdminError::Usage(format!(
                    "no coverage point for tenant {} source {}{}: see `cursor show` (a source gets one on its first poll)",
                    key.tenant,
                    key.source.as_str(),
                    if key.list.is_empty() { String::new() } else { format!(" list {}", key.list) }
                )));
            };
            store
                .set_cursor(
                    &key,
                    Cursor {
                        coverage,
                        t0: current.t0,
                    },
                )
                .await?;
            Ok(format!(
                "coverage point moved from {} to {}\n",
                format_seconds(current.coverage),
                format_seconds(coverage)
            ))
        }
    }
}

pub async fn replay(store: &AnyStore, args: Replay) -> Result<String, AdminError> {
    if args.tenant.is_none() && args.alert.is_none() && args.since.is_none() && args.until.is_none()
    {
        return Err(AdminError::Usage(
            "replay needs --tenant, --alert, or a time range (--since/--until): it will not resend everything by accident".into(),
        ));
    }
    let filter = ReplayFilter {
        tenant: args.tenant,
        source: args.source.as_deref().map(parse_source).transpose()?,
        native_id: args.alert,
        since_ms: args
            .since
            .as_deref()
            .map(|s| parse_ms("--since", s))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|s| parse_ms("--until", s))
            .transpose()?,
    };
    if args.as_new {
        let n = store.replay_as_new(&filter).await?;
        return Ok(format!(
            "{n} delivered version(s) queued again as new versions (new event ids); versions past store.retention are no longer stored\n"
        ));
    }
    let n = store.requeue_delivered(&filter).await?;
    Ok(format!(
        "{n} delivered version(s) queued again with their original event ids; versions past store.retention are no longer stored\n"
    ))
}

/// `/status` for a terminal: one block per tenant, one line per source and destination.
pub fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "m365-ingest {} on {}  up {}s  ready: {}",
        text(&v["version"]),
        text(&v["store"]),
        text(&v["uptime_s"]),
        text(&v["ready"])
    );
    if let Some(tenants) = v["tenants"].as_object() {
        for (name, t) in tenants {
            let q = &t["queue"];
            let _ = writeln!(
                out,
                "\ntenant {name} ({})  lease {}  → {}{}",
                text(&t["tenant_id"]),
                text(&t["lease"]),
                text(&t["destination"]),
                match t["credential"]["kind"].as_str() {
                    Some(kind) => format!(
                        "  {} expires {} ({} days left)",
                        kind.replace('_', " "),
                        text(&t["credential"]["expires"]),
                        text(&t["credential"]["days_left"])
                    ),
                    None => String::new(),
                }
            );
            let _ = writeln!(
                out,
                "  queue: {} pending{}, {} delivered, {} dead letters, {} quarantined",
                text(&q["pending"]),
                match q["oldest_pending_age_s"].as_i64() {
                    Some(age) => format!(" (oldest {age}s)"),
                    None => String::new(),
                },
                text(&q["delivered"]),
                text(&q["dead_letters"]),
                text(&q["quarantined"])
            );
            if let Some(sources) = t["sources"].as_object() {
                for (source, s) in sources {
                    let _ = writeln!(
                        out,
                        "  {source:<12} {:<10} coverage {}  lag {}s  failures {}{}",
                        text(&s["state"]),
                        text(&s["coverage"]),
                        text(&s["lag_s"]),
                        text(&s["consecutive_failures"]),
                        match &s["last_error"] {
                            serde_json::Value::String(e) =>
                                format!("\n               last error: {e}"),
                            _ => String::new(),
                        }
                    );
                }
            }
            let c = &t["context"];
            if c.is_object() {
                let _ = writeln!(
                    out,
                    "  context      {:<10} {} attached, {} revisions  last answer {}{}",
                    text(&c["state"]),
                    text(&c["attached"]),
                    text(&c["revisions"]),
                    text(&c["last_success_at"]),
                    match (&c["error"], &c["fix"]) {
                        (serde_json::Value::String(e), serde_json::Value::String(f)) =>
                            format!("\n               last error: {e}\n               fix: {f}"),
                        _ => String::new(),
                    }
                );
            }
        }
    }
    if let Some(dests) = v["destinations"].as_array() {
        for d in dests {
            let _ = writeln!(
                out,
                "\ndestination {}  lease {}  delivered {} alerts  dead-lettered {}  in flight {}{}",
                text(&d["name"]),
                text(&d["lease"]),
                text(&d["delivered_alerts"]),
                text(&d["dead_lettered"]),
                text(&d["in_flight"]),
                match (&d["paused"], &d["last_error"]) {
                    (serde_json::Value::String(p), _) => format!("\n  PAUSED: {p}"),
                    (_, serde_json::Value::String(e)) => format!("\n  last error: {e}"),
                    _ => String::new(),
                }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_a_tenants_campaign_context_and_its_fix() {
        let status = serde_json::json!({
            "version": "0.1.0", "store": "sqlite", "uptime_s": 5, "ready": true,
            "tenants": {"contoso": {
                "tenant_id": "t", "lease": "held", "destination": "dropzone",
                "queue": {"pending": 0, "delivered": 3, "dead_letters": 0, "quarantined": 0},
                "sources": {},
                "context": {"state": "not_granted", "attached": 2, "revisions": 1,
                    "last_success_at": null, "error": "403 from runHuntingQuery",
                    "fix": "grant ThreatHunting.Read.All"}
            }},
            "destinations": []
        });
        let text = render_status(&status);
        assert!(text.contains("context      not_granted"), "{text}");
        assert!(text.contains("2 attached, 1 revisions"), "{text}");
        assert!(text.contains("fix: grant ThreatHunting.Read.All"), "{text}");
        // A tenant without context on shows no context line.
        let mut off = status.clone();
        off["tenants"]["contoso"]
            .as_object_mut()
            .unwrap()
            .remove("context");
        assert!(!render_status(&off).contains("context "));
    }

    #[test]
    fn times_and_sources_are_checked_with_the_fix() {
        assert_eq!(
            parse_ms("--since", "2026-11-20T00:00:00Z").unwrap(),
            1_795_132_800_000
        );
        let e = parse_ms("--since", "yesterday").unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(parse_source("alerts").is_ok());
        let e = parse_source("mail").unwrap_err().to_string();
        assert!(e.contains("cloud_apps"), "{e}");
    }
}
