//! The embedded SQLite store: zero set-up, one writer connection owned by the store (WAL,
//! `synchronous=FULL`, `BEGIN IMMEDIATE`), a small pool of readers beside it. The store's logic
//! is `sql.rs`; this is SQLite's dialect of it: its SQL where it differs, multi-row `VALUES` in
//! chunks for bulk writes, and no leases (one process per file).
//!
//! The page's multi-row writes say `OR FAIL`. Under SQLite's default conflict action
//! (`ABORT`), a statement that writes several rows inside a transaction keeps a statement
//! journal: a copy of every page it touches that existed before it, so that a failing
//! statement can be undone alone. In memory (`temp_store = memory`) that was up to ~320 pages
//! of 16 KiB for one chunk of alerts or links landing at random places in their B-trees: 6.5 MB
//! of heap at the drain's peak, growing with the store (issue 12, heaptrack). `OR FAIL` needs no statement
//! journal: a failed statement keeps the rows it wrote before the failure, and any failure
//! fails the page's transaction, which is rolled back whole. An upsert's `DO UPDATE` keeps the
//! journal whatever it is told, so stored alerts are updated by a statement of their own.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, QueryBuilder, Row, Sqlite};

use super::filters::FilterDir;
use super::levels::{self, alert_hash, key_hash, Levels};
use super::sql::{Dialect, SqlStore, Tx};
use super::*;

/// Rows per multi-row statement, at most: 12 binds each stays far below SQLite's 32,766
/// variables.
const CHUNK: usize = 128;

/// Rows the writer's connection thread may hand over before it waits for the caller to take
/// them: the most any of its statements returns in normal work (a claim reads up to
/// `forward.batch_size`, at most 1,000, rows with their bodies). sqlx's default, 50, made a
/// claim of 100 rows a ping-pong: past the 50th, each row taken woke the connection thread to
/// send one more, two context switches a row (docs/benchmarks.md, session 19).
const ROWS_BUFFERED: usize = 1024;

/// The sizes a list of `n` rows is written in: whole chunks, then the rest as powers of two.
///
/// A multi-row statement's text depends on its row count, and sqlx keeps every text it ran
/// prepared (up to 100 per connection). Sized by the page, as they were, nearly every page
/// made new ones: ~150 KB of compiled program each, 20 MB of a drain's heap (issue 12), and
/// running them unprepared instead costs a compile per page. With these sizes, each statement
/// has at most eight shapes, prepared once and reused.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= CHUNK { CHUNK } else { 1 << n.ilog2() };
        n -= size;
        Some(size)
    })
}

/// `items` cut as [`chunk_sizes`] says.
fn shaped_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    chunk_sizes(items.len()).map(move |size| {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        chunk
    })
}

/// The SQLite store: the shared logic on SQLite's dialect.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's connections and what it does its own way.
pub struct SqliteDialect {
    writer: SqlitePool,
    reader: SqlitePool,
    levels: Levels,
    /// Held for the store's life: a second daemon on the same file would break the
    /// single-writer rule the whole store relies on (design §5).
    _lock: std::fs::File,
}

/// How long opening waits for another process to let go of the file (a restart's overlap).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the `<db>.lock` file, waiting up to `LOCK_WAIT`; refuses with the fix otherwise.
async fn lock_file(db: &std::path::Path) -> Result<std::fs::File> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Invalid(format!(
                "cannot open the store lock {}: {e}",
                lock_path.display()
            ))
        })?;
    let until = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Invalid(format!(
                    "the SQLite store {} is in use by another m365-ingest process (it holds {}): \
                     SQLite allows one daemon per file. Stop the other process, give this one its \
                     own store.url, or use Postgres (store.url = \"postgres://…\") to run several replicas",
                    db.display(),
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Invalid(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }
    }
}

impl SqlStore<SqliteDialect> {
    /// Opens (creating the file and its folder if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_merging_every(url, levels::MERGE_EVERY).await
    }

    /// As [`Self::open`], with the recent level of the dedup state merged into the archive every
    /// `merge_every` new alerts: 1 makes every page reach the archive (the tests' way to prove
    /// it), and the bench measures other values.
    pub async fn open_merging_every(url: &str, merge_every: usize) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "store.url `{}` is not a SQLite URL: {e}",
                    redact(url)
                ))
            })?
            .create_if_missing(true)
            .page_size(16384)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(15))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-4000");
        let path = options.get_filename().to_path_buf();
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Invalid(format!(
                        "cannot create the store folder {}: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
        let lock = lock_file(&path).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone().row_buffer_size(ROWS_BUFFERED))
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let levels = Levels::open(&writer, merge_every, FilterDir::beside(&path)).await?;
        // The readers read bodies the writer has just written, which are in no reader's cache
        // anyway, and the status queries: a small cache each keeps the index pages they walk,
        // and a long backlog's drain does not fill 8 MB of page cache with bodies read once.
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.pragma("cache_size", "-1000"))
            .await?;
        Ok(SqlStore::with_dialect(SqliteDialect {
            writer,
            reader,
            levels,
            _lock: lock,
        }))
    }
}

/// An alert row's columns from `native_id` to `last_seq`, in the `alerts` table's order.
fn bind_alert_write(b: &mut Separated<'_, Sqlite, &'static str>, row: &AlertWrite) {
    let s = &row.state;
    b.push_bind(s.native_id.as_str())
        .push_bind(s.latest)
        .push_bind(s.state_hash.as_deref())
        .push_bind(s.revision)
        .push_bind(i64::from(s.forwarded))
        .push_bind(s.field_hashes.as_slice())
        .push_bind(row.last_seq);
}

/// `SELECT {columns} FROM alerts` of (tenant, source) and `ids`, in chunks.
async fn alerts_of_ids(
    conn: &mut SqliteConnection,
    columns: &str,
    tenant: &str,
    source: &str,
    ids: &[&str],
) -> Result<Vec<SqliteRow>> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in shaped_chunks(ids) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {columns} FROM alerts WHERE tenant = "));
        q.push_bind(tenant)
            .push(" AND source = ")
            .push_bind(source)
            .push(" AND native_id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        rows.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// The rows `STORED_VERSIONS` and `STORED_VERSION_COUNTS` read, with `columns`. Without
/// statistics SQLite would take the primary key's (tenant, source) prefix and scan the tenant's
/// whole history. Both levels: an alert is in one of them. In the archive, the runs merged since
/// `since` (migration 0010 says why that is enough).
macro_rules! stored_version_rows {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM alerts INDEXED BY alerts_last_change \
             WHERE last_change >= $1 AND tenant = $2 AND source = $3 \
             AND latest >= $4 AND latest < $5 \
             UNION ALL SELECT ",
            $columns,
            " FROM alert_archive INDEXED BY alert_archive_hash \
             WHERE run >= (SELECT COALESCE(MIN(run), 9223372036854775807) FROM archive_runs \
             WHERE merged_at >= $1) AND last_change >= $1 AND tenant = $2 AND source = $3 \
             AND latest >= $4 AND latest < $5"
        )
    };
}

impl Dialect for SqliteDialect {
    type DB = Sqlite;

    const ADVANCE_CURSOR: &'static str = "UPDATE cursors SET coverage = MAX(coverage, $1), \
         updated_at = $2, state = COALESCE($6, state) \
         WHERE tenant = $3 AND source = $4 AND list = $5 AND ($7 IS NULL OR generation = $7)";
    const NEW_ROOT: &'static str = "INSERT INTO batches \
         (tenant, destination, key, state, root_id, min_seq, rows, created_at, updated_at) \
         VALUES ($1, $2, $3, 'open', 0, $4, $5, $6, $6) RETURNING id";
    const NEW_ROOT_IS_ITS_OWN: bool = false;
    const WRITING_WITH: bool = false;
    const BATCH_ITEMS: &'static str = "SELECT o.seq, b.body FROM outbox o \
         JOIN outbox_body b ON b.seq = o.seq WHERE o.batch_id = $1 ORDER BY o.seq";
    const DEAD_LETTERS: &'static str = "SELECT o.seq, o.tenant, o.source, o.native_id, \
         o.version, b.body, COALESCE(o.dead_reason, '') FROM outbox o \
         LEFT JOIN outbox_body b ON b.seq = o.seq \
         WHERE o.state = 3 AND ($1 IS NULL OR o.tenant = $1) ORDER BY o.seq";
    const DELIVERED_FOR_REPLAY: &'static str = "SELECT o.tenant, o.source, o.native_id, \
         o.version, b.body FROM outbox o JOIN outbox_body b ON b.seq = o.seq WHERE o.state = 2 \
         AND ($1 IS NULL OR o.tenant = $1) AND ($2 IS NULL OR o.source = $2) \
         AND ($3 IS NULL OR o.native_id = $3) AND ($4 IS NULL OR o.created_at >= $4) \
         AND ($5 IS NULL OR o.created_at < $5) ORDER BY o.seq";
    const REQUEUE_DELIVERED: &'static str = "UPDATE outbox SET state = 0, batch_id = NULL, \
         delivered_at = NULL WHERE state = 2 \
         AND ($1 IS NULL OR tenant = $1) AND ($2 IS NULL OR source = $2) \
         AND ($3 IS NULL OR native_id = $3) AND ($4 IS NULL OR created_at >= $4) \
         AND ($5 IS NULL OR created_at < $5)";
    // `= 1` as in the partial index `quarantine_retry`, which SQLite uses only then.
    const QUARANTINE_RETRIES: &'static str = "SELECT id, list, raw FROM quarantine \
         WHERE tenant = $1 AND source = $2 AND retry_requested = 1 ORDER BY id LIMIT $3";
    const QUARANTINED: &'static str = "SELECT id, tenant, source, native_id, reason, \
         created_at, retry_requested, attempts FROM quarantine \
         WHERE ($1 IS NULL OR tenant = $1) ORDER BY id";
    const CURSORS: &'static str = "SELECT tenant, source, list, coverage, t0 FROM cursors \
         WHERE ($1 IS NULL OR tenant = $1) ORDER BY tenant, source, list";
    // Without statistics SQLite would take the primary key's (tenant, source) prefix and scan
    // the tenant's whole history.
    const STORED_VERSIONS: &'static str =
        concat!(stored_version_rows!("native_id, latest"), " LIMIT $6");
    const STORED_VERSION_COUNTS: &'static str = concat!(
        "SELECT (latest - $4) / $6, COUNT(*) FROM (",
        stored_version_rows!("latest"),
        ") GROUP BY 1"
    );
    // Link rows stay: pruning an alert keeps the recent level closed under links (`levels.rs`).
    // In the archive, rows of the runs merged before the cutoff (migration 0010).
    const PRUNE_ALERTS: &'static [&'static str] = &[
        "DELETE FROM alerts WHERE (tenant, source, native_id) IN \
         (SELECT a.tenant, a.source, a.native_id FROM alerts a WHERE a.last_change < $1 \
          AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = a.last_seq AND o.state <> 2) \
          LIMIT $2)",
        "DELETE FROM alert_archive WHERE rowid IN \
         (SELECT a.rowid FROM alert_archive a INDEXED BY alert_archive_hash \
          WHERE a.run <= (SELECT COALESCE(MAX(run), 0) FROM archive_runs WHERE merged_at < $1) \
          AND a.last_change < $1 \
          AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = a.last_seq AND o.state <> 2) \
          LIMIT $2)",
    ];

    fn reader(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    fn writer(&self) -> &Pool<Sqlite> {
        &self.writer
    }

    async fn begin(&self) -> Result<Tx<Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// One process per file (the lock file): every lease is ours, nothing to check.
    async fn begin_fenced(&self, _lease: &str) -> Result<Tx<Sqlite>> {
        self.begin().await
    }

    /// One writer: pages are one at a time already.
    async fn begin_page(&self, _tenant: &str) -> Result<Tx<Sqlite>> {
        self.begin().await
    }

    async fn lease(&self, _name: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn release_leases(&self) -> Result<()> {
        Ok(())
    }

    async fn known_ids(
        &self,
        tenant: &str,
        source: &str,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut conn = self.reader.acquire().await?;
        // One read transaction: a merge moving rows between the levels is seen whole or not.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut known: HashSet<String> = alerts_of_ids(&mut tx, "native_id", tenant, source, &ids)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let wanted: HashSet<&str> = ids.iter().copied().collect();
        for (run, hashes) in self.levels.archived_alerts(tenant, source, &ids)? {
            let q = sqlx::query(
                "SELECT native_id FROM alert_archive WHERE run = $1 \
                 AND hash IN (SELECT value FROM json_each($2)) AND tenant = $3 AND source = $4",
            )
            .bind(run)
            .bind(levels::json_list(&hashes))
            .bind(tenant)
            .bind(source);
            for row in q.fetch_all(&mut *tx).await? {
                let id: String = row.try_get(0)?;
                // A hash shared by another id of the same source is not this one.
                if wanted.contains(id.as_str()) {
                    known.insert(id);
                }
            }
        }
        Ok(known)
    }

    async fn surface(
        &self,
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
        keys: &[String],
    ) -> Result<()> {
        self.levels.surface(conn, tenant, source, ids, keys).await
    }

    async fn settle_page(&self, conn: &mut SqliteConnection, new_alerts: usize) -> Result<()> {
        self.levels.settle(conn, new_alerts).await
    }

    async fn retry_dead_letters(&self, tenant: Option<&str>, seqs: &[i64]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let dead: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM outbox WHERE state = 3 AND ($1 IS NULL OR tenant = $1) ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        let chosen: Vec<i64> = dead
            .into_iter()
            .filter(|s| seqs.is_empty() || seqs.contains(s))
            .collect();
        Self::for_seqs(
            &mut tx,
            "UPDATE outbox SET state = 0, batch_id = NULL, dead_reason = NULL",
            None,
            &chosen,
        )
        .await?;
        tx.commit().await?;
        Ok(chosen.len() as u64)
    }

    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        let mut n = 0;
        let mut tx = self.begin().await?;
        if ids.is_empty() {
            n = sqlx::query(
                "UPDATE quarantine SET retry_requested = 1 WHERE ($1 IS NULL OR tenant = $1)",
            )
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for id in ids {
            n += sqlx::query(
                "UPDATE quarantine SET retry_requested = 1 WHERE id = $1 AND ($2 IS NULL OR tenant = $2)",
            )
            .bind(id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn prune_bodies(&self, before: i64, limit: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM outbox WHERE state = 2 AND delivered_at < $1 LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for table in ["outbox_body", "outbox"] {
            Self::for_seqs(&mut tx, &format!("DELETE FROM {table}"), None, &seqs).await?;
        }
        tx.commit().await?;
        Ok(seqs.len() as u64)
    }

    async fn load_states(
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> Result<Vec<SqliteRow>> {
        let columns = "native_id, latest, state_hash, revision, forwarded, field_hashes, context";
        alerts_of_ids(conn, columns, tenant, source, ids).await
    }

    /// The page's links in multi-row statements; `RETURNING` names the pairs that were new.
    /// Not one statement over a JSON array, as before: its `json_extract` calls may raise an
    /// error, which made SQLite keep a statement journal for it (the module's doc).
    async fn insert_links(
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        keys: &[String],
        owners: &[String],
    ) -> Result<HashSet<(String, String)>> {
        let pairs: Vec<(&String, &String)> = keys.iter().zip(owners).collect();
        let mut inserted = HashSet::new();
        for chunk in shaped_chunks(&pairs) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR FAIL INTO links (tenant, key, source, native_id, key_hash, owner_hash) ",
            );
            q.push_values(chunk, |mut b, (key, owner)| {
                b.push_bind(tenant)
                    .push_bind(key.as_str())
                    .push_bind(source)
                    .push_bind(owner.as_str())
                    .push_bind(key_hash(tenant, key))
                    .push_bind(alert_hash(tenant, source, owner));
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING key, native_id");
            for row in q.build().fetch_all(&mut *conn).await? {
                inserted.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(inserted)
    }

    /// One statement for all of the page's keys (a JSON array), each looked up by the `links`
    /// primary key.
    async fn links_of_keys(
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        keys: &[String],
    ) -> Result<Vec<SqliteRow>> {
        let keys = serde_json::to_string(keys)
            .map_err(|e| StoreError::Invalid(format!("link keys: {e}")))?;
        Ok(sqlx::query(
            "SELECT l.key, l.source, l.native_id, COALESCE(a.forwarded, 0) FROM links l \
             LEFT JOIN alerts a ON a.tenant = l.tenant AND a.source = l.source AND a.native_id = l.native_id \
             WHERE l.tenant = $1 AND l.key IN (SELECT DISTINCT value FROM json_each($2)) AND l.source <> $3",
        )
        .bind(tenant)
        .bind(keys)
        .bind(source)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// Appends versions and their bodies. Seqs are handed out here, after the table's
    /// AUTOINCREMENT high-water mark, so each body is written beside its row without reading
    /// the rows back: this connection is the only writer (design §5) and holds the write lock.
    async fn write_outbox(
        conn: &mut SqliteConnection,
        tenant: &str,
        rows: Vec<OutboxRow>,
        now: i64,
    ) -> Result<Vec<QueuedRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut inserted: Vec<QueuedRow> = Vec::with_capacity(rows.len());
        let mut outbox = rows;
        let mut next = last;
        while !outbox.is_empty() {
            let rest = outbox.split_off(chunk_sizes(outbox.len()).next().unwrap_or(0));
            let chunk = std::mem::replace(&mut outbox, rest);
            let first = next + 1;
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR FAIL INTO outbox (seq, tenant, source, native_id, version, historical, size, state, created_at) ",
            );
            q.push_values(chunk.iter(), |mut b, r| {
                next += 1;
                b.push_bind(next)
                    .push_bind(tenant)
                    .push_bind(r.source.as_str())
                    .push_bind(r.native_id.as_str())
                    .push_bind(r.version.as_str())
                    .push_bind(i64::from(r.historical))
                    .push_bind(r.json_len as i64)
                    .push_bind(row_state::PENDING)
                    .push_bind(now);
            });
            q.build().execute(&mut *conn).await?;
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT OR FAIL INTO outbox_body (seq, body) ");
            let mut seq = first;
            q.push_values(chunk, |mut b, r| {
                b.push_bind(seq).push_bind(r.stored);
                inserted.push((r.source, r.native_id, seq));
                seq += 1;
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(inserted)
    }

    /// New alerts are inserted and stored ones updated, each in multi-row statements `OR
    /// FAIL` (the module's doc says why).
    async fn write_alerts(
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        rows: Vec<AlertWrite>,
        now: i64,
    ) -> Result<()> {
        let (stored, new): (Vec<AlertWrite>, Vec<AlertWrite>) =
            rows.into_iter().partition(|r| r.stored);
        for chunk in shaped_chunks(&new) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR FAIL INTO alerts (tenant, source, native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq, first_seen, last_change, hash) ",
            );
            q.push_values(chunk, |mut b, row| {
                b.push_bind(tenant).push_bind(source);
                bind_alert_write(&mut b, row);
                b.push_bind(now).push_bind(now).push_bind(alert_hash(
                    tenant,
                    source,
                    &row.state.native_id,
                ));
            });
            q.build().execute(&mut *conn).await?;
        }
        for chunk in shaped_chunks(&stored) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "UPDATE OR FAIL alerts SET latest = v.column2, state_hash = v.column3, \
                 revision = v.column4, forwarded = v.column5, field_hashes = v.column6, \
                 last_seq = COALESCE(v.column7, alerts.last_seq), last_change = ",
            );
            q.push_bind(now).push(" FROM (");
            q.push_values(chunk, |mut b, row| bind_alert_write(&mut b, row));
            q.push(") AS v WHERE alerts.tenant = ")
                .push_bind(tenant)
                .push(" AND alerts.source = ")
                .push_bind(source)
                .push(" AND alerts.native_id = v.column1");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// One statement for any number of seqs, as a JSON array read by `json_each`: a single
    /// shape to prepare, and one round trip to the connection's thread where chunked `IN (…)`
    /// lists took three for a 100-row claim (docs/benchmarks.md, session 19).
    async fn for_seqs(
        conn: &mut SqliteConnection,
        statement: &str,
        value: Option<i64>,
        seqs: &[i64],
    ) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(statement.to_string());
        if let Some(v) = value {
            q.push_bind(v);
        }
        q.push(" WHERE seq IN (SELECT value FROM json_each(")
            .push_bind(levels::json_list(seqs))
            .push("))");
        q.build().execute(&mut *conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_in_few_statement_shapes() {
        let mut shapes = HashSet::new();
        for n in 0..=3 * CHUNK + 1 {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| *s == CHUNK || s.is_power_of_two()));
            shapes.extend(sizes);
            let items: Vec<usize> = (0..n).collect();
            let rejoined: Vec<usize> = shaped_chunks(&items).flatten().copied().collect();
            assert_eq!(rejoined, items);
        }
        assert_eq!(shapes.len(), 8, "{shapes:?}");
    }

    /// Every metrics scrape reads each tenant's queue depth: through the index of undelivered
    /// rows, never a scan of the whole outbox.
    #[tokio::test]
    async fn the_queue_depth_reads_only_the_undelivered_index() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .unwrap();
        // A constant of this crate, prefixed: nothing from outside reaches this SQL.
        let explain = format!("EXPLAIN QUERY PLAN {}", super::super::sql::QUEUE_DEPTH);
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind("contoso")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|step| step.get::<String, _>("detail"))
            .collect();
        assert!(!plan.is_empty());
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN outbox")
                && (!step.contains("outbox") || step.contains("outbox_undelivered"))),
            "{plan:?}"
        );
    }
}
