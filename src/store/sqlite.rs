//! The embedded SQLite store: zero set-up, one writer connection owned by the store (WAL,
//! `synchronous=FULL`, `BEGIN IMMEDIATE`), a small pool of readers beside it.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::*;

/// Rows per multi-row statement: 10 binds each stays far below SQLite's 32,766 variables.
const CHUNK: usize = 1000;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Held for the store's life: a second daemon on the same file would break the
    /// single-writer rule the whole store relies on (design §5).
    _lock: std::fs::File,
    cursor_generations: CursorGenerations,
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

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "store.url `{}` is not a SQLite URL: {e}",
                    redact(url)
                ))
            })?
            .create_if_missing(true)
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
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        Ok(Self {
            writer,
            reader,
            _lock: lock,
            cursor_generations: CursorGenerations::default(),
        })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Records the page's link keys and returns, per item, what it is linked to, plus the
    /// already stored items that gained a link now (they get a `linked` revision).
    async fn link(
        tx: &mut sqlx::SqliteConnection,
        tenant: &str,
        batch: &IngestBatch<'_>,
    ) -> Result<(HashMap<String, Vec<LinkRef>>, Vec<(SourceKind, String)>)> {
        let mut related: HashMap<String, Vec<LinkRef>> = HashMap::new();
        let mut relink: Vec<(SourceKind, String)> = Vec::new();
        let source = batch.source.as_str();
        for item in &batch.items {
            for key in link_keys(batch.source, item) {
                let inserted = sqlx::query("INSERT INTO links (tenant, key, source, native_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
                    .bind(tenant)
                    .bind(&key)
                    .bind(source)
                    .bind(&item.native_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                let others = sqlx::query("SELECT l.source, l.native_id, COALESCE(a.forwarded, 0) FROM links l LEFT JOIN alerts a ON a.tenant = l.tenant AND a.source = l.source AND a.native_id = l.native_id WHERE l.tenant = ? AND l.key = ? AND l.source <> ?")
                    .bind(tenant)
                    .bind(&key)
                    .bind(source)
                    .fetch_all(&mut *tx)
                    .await?;
                for r in &others {
                    let (s, n, fwd): (String, String, i64) =
                        (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    let Some(s) = SourceKind::parse(&s) else {
                        continue;
                    };
                    let entry = related.entry(item.native_id.clone()).or_default();
                    if !entry.iter().any(|l| l.source == s && l.native_id == n) {
                        entry.push(LinkRef {
                            source: s,
                            native_id: n.clone(),
                            forwarded: fwd != 0,
                        });
                    }
                    if inserted && !relink.contains(&(s, n.clone())) {
                        relink.push((s, n));
                    }
                }
            }
        }
        Ok((related, relink))
    }

    /// A `linked` revision for an item forwarded before its counterpart arrived.
    /// `page` is the page being committed: its source and the items its plan forwards, whose
    /// `alerts` rows are written after this, so the twin rule must learn of them from the plan.
    async fn linked_revision(
        tx: &mut sqlx::SqliteConnection,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        observed_at: &str,
        page: (SourceKind, &HashSet<String>),
    ) -> Result<Option<OutboxRow>> {
        let row = sqlx::query("SELECT latest, state_hash, revision, forwarded, field_hashes, link_count, last_seq FROM alerts WHERE tenant = ? AND source = ? AND native_id = ?")
            .bind(&tenant.name)
            .bind(source.as_str())
            .bind(native_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state = AlertState {
            native_id: native_id.to_string(),
            latest: row.try_get(0)?,
            state_hash: row.try_get(1)?,
            revision: row.try_get(2)?,
            forwarded: row.try_get::<i64, _>(3)? != 0,
            field_hashes: row.try_get(4)?,
        };
        let link_count: i64 = row.try_get(5)?;
        let last_seq: Option<i64> = row.try_get(6)?;
        let (true, Some(last_seq)) = (state.forwarded, last_seq) else {
            // Never forwarded: its first forwarded version will carry the link.
            return Ok(None);
        };
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM outbox_body WHERE seq = ?")
                .bind(last_seq)
                .fetch_optional(&mut *tx)
                .await?;
        // Past retention the body is gone: the link then shows only on the other side.
        let Some(json) = stored.and_then(|b| body_codec::decode(&b).ok()) else {
            return Ok(None);
        };
        let mut refs: Vec<LinkRef> = sqlx::query("SELECT DISTINCT l2.source, l2.native_id, COALESCE(a.forwarded, 0) FROM links l1 JOIN links l2 ON l2.tenant = l1.tenant AND l2.key = l1.key LEFT JOIN alerts a ON a.tenant = l2.tenant AND a.source = l2.source AND a.native_id = l2.native_id WHERE l1.tenant = ? AND l1.source = ? AND l1.native_id = ? AND NOT (l2.source = l1.source AND l2.native_id = l1.native_id)")
            .bind(&tenant.name)
            .bind(source.as_str())
            .bind(native_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .filter_map(|r| {
                let s: String = r.try_get(0).ok()?;
                let forwarded: i64 = r.try_get(2).ok()?;
                Some(LinkRef { source: SourceKind::parse(&s)?, native_id: r.try_get(1).ok()?, forwarded: forwarded != 0 })
            })
            .collect();
        for r in &mut refs {
            if r.source == page.0 && page.1.contains(&r.native_id) {
                r.forwarded = true;
            }
        }
        let Some((row, next)) = crate::store::linked_revision(
            tenant,
            source,
            &state,
            link_count,
            &json,
            &refs,
            observed_at,
        ) else {
            return Ok(None);
        };
        sqlx::query("UPDATE alerts SET revision = ?, link_count = link_count + 1, last_change = ? WHERE tenant = ? AND source = ? AND native_id = ?")
            .bind(next.revision)
            .bind(now_ms())
            .bind(&tenant.name)
            .bind(source.as_str())
            .bind(native_id)
            .execute(&mut *tx)
            .await?;
        Ok(Some(row))
    }

    async fn load_states(
        tx: &mut sqlx::SqliteConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, AlertState>> {
        let mut states = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT native_id, latest, state_hash, revision, forwarded, field_hashes FROM alerts WHERE tenant = ",
            );
            q.push_bind(tenant.to_string())
                .push(" AND source = ")
                .push_bind(source.to_string())
                .push(" AND native_id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id.to_string());
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *tx).await? {
                let s = AlertState {
                    native_id: row.try_get(0)?,
                    latest: row.try_get(1)?,
                    state_hash: row.try_get(2)?,
                    revision: row.try_get(3)?,
                    forwarded: row.try_get::<i64, _>(4)? != 0,
                    field_hashes: row.try_get(5)?,
                };
                states.insert(s.native_id.clone(), s);
            }
        }
        Ok(states)
    }
}

/// Runs `{statement} WHERE seq IN (…)` over `seqs` in chunks; a `value` is bound first (the
/// statement then ends in a placeholder, e.g. `UPDATE outbox SET batch_id = `).
async fn for_seqs(
    conn: &mut sqlx::SqliteConnection,
    statement: &str,
    value: Option<i64>,
    seqs: &[i64],
) -> Result<()> {
    for chunk in seqs.chunks(CHUNK) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(statement.to_string());
        if let Some(v) = value {
            q.push_bind(v);
        }
        q.push(" WHERE seq IN (");
        let mut sep = q.separated(", ");
        for s in chunk {
            sep.push_bind(*s);
        }
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Appends versions and their bodies; a version already queued (the same event id) is skipped
/// with its body. Returns the rows inserted.
async fn write_outbox(
    tx: &mut sqlx::SqliteConnection,
    tenant: &str,
    rows: Vec<OutboxRow>,
    now: i64,
) -> Result<Vec<QueuedRow>> {
    let mut inserted: Vec<QueuedRow> = Vec::new();
    let mut outbox = rows;
    while !outbox.is_empty() {
        let rest = outbox.split_off(outbox.len().min(CHUNK));
        let chunk = std::mem::replace(&mut outbox, rest);
        let mut bodies: HashMap<String, Vec<u8>> = HashMap::with_capacity(chunk.len());
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO outbox (event_id, tenant, source, native_id, version, historical, size, state, created_at) ",
        );
        q.push_values(chunk, |mut b, r| {
            let size = r.json_len as i64;
            b.push_bind(r.event_id.clone())
                .push_bind(tenant.to_string())
                .push_bind(r.source.as_str())
                .push_bind(r.native_id)
                .push_bind(r.version)
                .push_bind(i64::from(r.historical))
                .push_bind(size)
                .push_bind(row_state::PENDING)
                .push_bind(now);
            bodies.insert(r.event_id, r.stored);
        });
        q.push(" ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id, source, native_id");
        let rows = q.build().fetch_all(&mut *tx).await?;
        let mut stored = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            let event_id: String = r.try_get(1)?;
            let s: String = r.try_get(2)?;
            if let Some(s) = SourceKind::parse(&s) {
                inserted.push((s, r.try_get(3)?, seq));
            }
            if let Some(body) = bodies.remove(&event_id) {
                stored.push((seq, body));
            }
        }
        drop(bodies);
        if stored.is_empty() {
            continue;
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO outbox_body (seq, body) ");
        q.push_values(stored, |mut b, (seq, body)| {
            b.push_bind(seq).push_bind(body);
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(inserted)
}

fn batch_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Batch> {
    // Columns in `BATCH_COLUMNS` order.
    Ok(from_row!(
        Batch,
        row,
        id,
        tenant,
        destination,
        key,
        root_id,
        attempts,
        next_attempt_at,
        rows,
        deferred
    ))
}

const BATCH_COLUMNS: &str =
    "id, tenant, destination, key, root_id, attempts, next_attempt_at, rows, deferred != 0";

impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// One process per file (the lock file): every lease is ours.
    async fn lease(&self, _name: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn release_leases(&self) -> Result<()> {
        Ok(())
    }

    async fn load_cursor(&self, key: &CursorKey) -> Result<Option<Cursor>> {
        let row = sqlx::query(
            "SELECT coverage, t0, generation FROM cursors WHERE tenant = ? AND source = ? AND list = ?",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .fetch_optional(&self.reader)
        .await?;
        Ok(match row {
            Some(r) => {
                self.cursor_generations.read(key, r.try_get(2)?);
                Some(Cursor {
                    coverage: r.try_get(0)?,
                    t0: r.try_get(1)?,
                })
            }
            None => None,
        })
    }

    async fn init_cursor(&self, key: &CursorKey, c: Cursor) -> Result<Cursor> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .bind(c.coverage)
        .bind(c.t0)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "SELECT coverage, t0, generation FROM cursors WHERE tenant = ? AND source = ? AND list = ?",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .fetch_one(&mut *tx)
        .await?;
        let c = Cursor {
            coverage: r.try_get(0)?,
            t0: r.try_get(1)?,
        };
        let generation: i64 = r.try_get(2)?;
        tx.commit().await?;
        self.cursor_generations.read(key, generation);
        Ok(c)
    }

    async fn set_cursor(&self, key: &CursorKey, c: Cursor) -> Result<()> {
        sqlx::query(
            "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (tenant, source, list) DO UPDATE SET coverage = excluded.coverage, t0 = excluded.t0, state = NULL, updated_at = excluded.updated_at, generation = cursors.generation + 1",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .bind(c.coverage)
        .bind(c.t0)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn load_cursor_state(&self, key: &CursorKey) -> Result<Option<String>> {
        let state: Option<Option<String>> = sqlx::query_scalar(
            "SELECT state FROM cursors WHERE tenant = ? AND source = ? AND list = ?",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .fetch_optional(&self.reader)
        .await?;
        Ok(state.flatten())
    }

    async fn known_ids(
        &self,
        tenant: &str,
        source: SourceKind,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        let mut known = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT native_id FROM alerts WHERE tenant = ");
            q.push_bind(tenant)
                .push(" AND source = ")
                .push_bind(source.as_str())
                .push(" AND native_id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            q.push(")");
            let rows: Vec<String> = q.build_query_scalar().fetch_all(&self.reader).await?;
            known.extend(rows);
        }
        Ok(known)
    }

    async fn ingest(&self, mut batch: IngestBatch<'_>) -> Result<IngestCounts> {
        let tenant = batch.tenant.name.clone();
        let source = batch.source.as_str();
        let now = now_ms();
        let mut tx = self.begin().await?;
        let ids: Vec<&str> = {
            let mut seen = std::collections::HashSet::with_capacity(batch.items.len());
            batch
                .items
                .iter()
                .map(|i| i.native_id.as_str())
                .filter(|id| seen.insert(*id))
                .collect()
        };
        let states = Self::load_states(&mut tx, &tenant, source, &ids).await?;
        drop(ids);
        let (related, relink) = Self::link(&mut tx, &tenant, &batch).await?;
        let mut plan = plan_ingest_guarded(&mut batch, &states, &related)?;
        let forwarded_now: HashSet<String> = plan
            .upserts
            .iter()
            .filter(|u| u.forwarded)
            .map(|u| u.native_id.clone())
            .collect();
        for (src, native_id) in relink {
            if let Some(row) = Self::linked_revision(
                &mut tx,
                batch.tenant,
                src,
                &native_id,
                batch.observed_at,
                (batch.source, &forwarded_now),
            )
            .await?
            {
                plan.outbox.push(row);
                plan.counts.queued += 1;
            }
        }
        // Versions first: their seqs are where each alert's latest body now is.
        let inserted = write_outbox(&mut tx, &tenant, plan.outbox, now).await?;
        let (seqs, others) = last_seqs(batch.source, &plan.upserts, &inserted);
        let mut seqs = seqs.into_iter();
        for chunk in plan.upserts.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO alerts (tenant, source, native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq, first_seen, last_change) ",
            );
            q.push_values(chunk, |mut b, s| {
                b.push_bind(tenant.clone())
                    .push_bind(source)
                    .push_bind(s.native_id.clone())
                    .push_bind(s.latest)
                    .push_bind(s.state_hash.clone())
                    .push_bind(s.revision)
                    .push_bind(i64::from(s.forwarded))
                    .push_bind(s.field_hashes.clone())
                    .push_bind(seqs.next().flatten())
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(
                " ON CONFLICT (tenant, source, native_id) DO UPDATE SET latest = excluded.latest, state_hash = excluded.state_hash, \
                 revision = excluded.revision, forwarded = excluded.forwarded, field_hashes = excluded.field_hashes, last_change = excluded.last_change, \
                 last_seq = COALESCE(excluded.last_seq, alerts.last_seq)",
            );
            q.build().execute(&mut *tx).await?;
        }
        for (s, native_id, seq) in others {
            sqlx::query(
                "UPDATE alerts SET last_seq = ? WHERE tenant = ? AND source = ? AND native_id = ?",
            )
            .bind(seq)
            .bind(&tenant)
            .bind(s.as_str())
            .bind(native_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut counts = plan.counts;
        counts.quarantined = 0;
        for item in &batch.quarantine {
            counts.quarantined += sqlx::query("INSERT INTO quarantine (tenant, source, native_id, reason, raw, raw_hash, created_at, list) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(&tenant)
                .bind(source)
                .bind(&item.native_id)
                .bind(&item.reason)
                .bind(&item.raw)
                .bind(item.raw_hash())
                .bind(now)
                .bind(&item.list)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        for r in &batch.retried {
            let statement = match r.still_unusable {
                None => "DELETE FROM quarantine WHERE id = ?1 AND tenant = ?2",
                Some(_) => "UPDATE quarantine SET retry_requested = 0, attempts = attempts + 1, reason = ?3 WHERE id = ?1 AND tenant = ?2",
            };
            let mut q = sqlx::query(statement).bind(r.id).bind(&tenant);
            if let Some(reason) = &r.still_unusable {
                q = q.bind(reason);
            }
            q.execute(&mut *tx).await?;
        }
        if let Some((key, b)) = batch.advance {
            // Only under the generation this poll read: see `CursorGenerations`.
            let expected = self.cursor_generations.expected(key);
            let moved = sqlx::query("UPDATE cursors SET coverage = MAX(coverage, ?), state = COALESCE(?, state), updated_at = ? WHERE tenant = ? AND source = ? AND list = ? AND (? IS NULL OR generation = ?)")
                .bind(b)
                .bind(batch.source_state)
                .bind(now)
                .bind(&key.tenant)
                .bind(key.source.as_str())
                .bind(&key.list)
                .bind(expected)
                .bind(expected)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 0 {
                skipped_advance(key);
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    async fn undelivered(&self, tenant: &str) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE tenant = ? AND state IN (0, 1)")
                .bind(tenant)
                .fetch_one(&self.reader)
                .await?;
        Ok(n as u64)
    }

    async fn next_open_batch(&self, destination: &str, tenant: &str) -> Result<Option<Batch>> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE destination = ? AND tenant = ? AND state = 'open' ORDER BY (deferred != 0 AND next_attempt_at > ?), root_id, deferred, min_seq LIMIT 1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(destination)
            .bind(tenant)
            .bind(now_ms())
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn claim_batch(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<Batch>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query("SELECT seq, size FROM outbox WHERE tenant = ? AND state = 0 ORDER BY historical, seq LIMIT ?")
            .bind(tenant)
            .bind(limits.max_rows as i64)
            .fetch_all(&mut *tx)
            .await?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            let size: i64 = r.try_get(1)?;
            // An alert larger than the limit goes alone; otherwise stop before the limit.
            if !seqs.is_empty() && bytes + size as usize > limits.max_bytes {
                break;
            }
            bytes += size as usize;
            seqs.push(seq);
        }
        let Some(&min_seq) = seqs.iter().min() else {
            return Ok(None);
        };
        let now = now_ms();
        let key = uuid::Uuid::new_v4().to_string();
        let id: i64 = sqlx::query_scalar("INSERT INTO batches (tenant, destination, key, state, root_id, min_seq, rows, created_at, updated_at) VALUES (?, ?, ?, 'open', 0, ?, ?, ?, ?) RETURNING id")
            .bind(tenant)
            .bind(destination)
            .bind(&key)
            .bind(min_seq)
            .bind(seqs.len() as i64)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("UPDATE batches SET root_id = id WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for_seqs(
            &mut tx,
            "UPDATE outbox SET state = 1, batch_id = ",
            Some(id),
            &seqs,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Batch {
            id,
            tenant: tenant.to_string(),
            destination: destination.to_string(),
            key,
            root_id: id,
            attempts: 0,
            next_attempt_at: 0,
            rows: seqs.len() as i64,
            deferred: false,
        }))
    }

    async fn batch_items(&self, batch_id: i64) -> Result<Vec<BatchItem>> {
        let rows =
            sqlx::query("SELECT o.seq, o.event_id, b.body FROM outbox o JOIN outbox_body b ON b.seq = o.seq WHERE o.batch_id = ? ORDER BY o.seq")
                .bind(batch_id)
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let stored: Vec<u8> = r.try_get(2)?;
                Ok(BatchItem {
                    seq,
                    event_id: r.try_get(1)?,
                    body: body_codec::decode(&stored)
                        .map_err(|e| StoreError::Invalid(format!("outbox row {seq}: {e}")))?,
                })
            })
            .collect()
    }

    async fn mark_delivered(&self, batch: &Batch) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE outbox SET state = 2, delivered_at = ? WHERE batch_id = ? AND state = 1",
        )
        .bind(now)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET state = 'delivered', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE batches SET accepted = 1 WHERE id = ?")
            .bind(batch.root_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_retry(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE batches SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(now_ms())
            .bind(batch.id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn split_batch(&self, batch: &Batch) -> Result<()> {
        let mut tx = self.begin().await?;
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE batch_id = ? ORDER BY seq")
                .bind(batch.id)
                .fetch_all(&mut *tx)
                .await?;
        if seqs.len() < 2 {
            return Err(StoreError::Invalid(format!(
                "batch {} has {} rows and cannot be split",
                batch.id,
                seqs.len()
            )));
        }
        let now = now_ms();
        let (left, right) = seqs.split_at(seqs.len() / 2);
        for half in [left, right] {
            let child: i64 = sqlx::query_scalar("INSERT INTO batches (tenant, destination, key, state, root_id, parent_id, min_seq, rows, created_at, updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?) RETURNING id")
                .bind(&batch.tenant)
                .bind(&batch.destination)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(batch.root_id)
                .bind(batch.id)
                .bind(half[0])
                .bind(half.len() as i64)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            for_seqs(&mut tx, "UPDATE outbox SET batch_id = ", Some(child), half).await?;
        }
        sqlx::query("UPDATE batches SET state = 'split', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn defer_single(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE batches SET deferred = 1, attempts = attempts + 1, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(now)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE batches SET probes = probes + 1 WHERE id = ?")
            .bind(batch.root_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn adopt_open_batches(&self, destination: &str, tenant: &str) -> Result<u64> {
        let moved = sqlx::query("UPDATE batches SET destination = ?1, updated_at = ?3 WHERE tenant = ?2 AND state = 'open' AND destination != ?1")
            .bind(destination)
            .bind(tenant)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(moved.rows_affected())
    }

    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE outbox SET state = 3, dead_reason = ? WHERE batch_id = ? AND state = 1",
        )
        .bind(reason)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE batches SET state = 'dead', last_error = ?, updated_at = ? WHERE id = ?",
        )
        .bind(reason)
        .bind(now)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn root_facts(&self, root_id: i64) -> Result<RootFacts> {
        let row = sqlx::query("SELECT accepted, probes FROM batches WHERE id = ?")
            .bind(root_id)
            .fetch_optional(&self.writer)
            .await?;
        Ok(match row {
            Some(r) => RootFacts {
                accepted: r.try_get::<i64, _>(0)? != 0,
                probes: r.try_get(1)?,
            },
            None => RootFacts::default(),
        })
    }

    async fn queue_status(&self, tenant: &str) -> Result<QueueStatus> {
        let r = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM outbox WHERE tenant = ?1 AND state IN (0, 1)), \
               (SELECT MIN(created_at) FROM outbox WHERE tenant = ?1 AND state IN (0, 1)), \
               (SELECT COUNT(*) FROM outbox WHERE tenant = ?1 AND state = 3), \
               (SELECT COUNT(*) FROM quarantine WHERE tenant = ?1), \
               (SELECT COUNT(*) FROM outbox WHERE tenant = ?1 AND state = 2)",
        )
        .bind(tenant)
        .fetch_one(&self.reader)
        .await?;
        let oldest: Option<i64> = r.try_get(1)?;
        Ok(QueueStatus {
            pending: r.try_get::<i64, _>(0)? as u64,
            oldest_pending_age_s: oldest.map(|t| (now_ms() - t).max(0) / 1000),
            dead_letters: r.try_get::<i64, _>(2)? as u64,
            quarantined: r.try_get::<i64, _>(3)? as u64,
            delivered: r.try_get::<i64, _>(4)? as u64,
        })
    }

    async fn dead_letters(&self, tenant: Option<&str>) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query("SELECT seq, tenant, source, native_id, version, event_id, COALESCE(dead_reason, '') FROM outbox WHERE state = 3 AND (?1 IS NULL OR tenant = ?1) ORDER BY seq")
            .bind(tenant)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(from_row!(
                    DeadLetter, r, seq, tenant, source, native_id, version, event_id, reason
                ))
            })
            .collect()
    }

    async fn retry_dead_letters(&self, tenant: Option<&str>, seqs: &[i64]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let dead: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM outbox WHERE state = 3 AND (?1 IS NULL OR tenant = ?1) ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        let chosen: Vec<i64> = dead
            .into_iter()
            .filter(|s| seqs.is_empty() || seqs.contains(s))
            .collect();
        for_seqs(
            &mut tx,
            "UPDATE outbox SET state = 0, batch_id = NULL, dead_reason = NULL",
            None,
            &chosen,
        )
        .await?;
        tx.commit().await?;
        Ok(chosen.len() as u64)
    }

    async fn replay_as_new(&self, f: &ReplayFilter) -> Result<u64> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT o.tenant, o.source, o.native_id, o.version, b.body FROM outbox o JOIN outbox_body b ON b.seq = o.seq WHERE o.state = 2 \
             AND (?1 IS NULL OR o.tenant = ?1) AND (?2 IS NULL OR o.source = ?2) AND (?3 IS NULL OR o.native_id = ?3) \
             AND (?4 IS NULL OR o.created_at >= ?4) AND (?5 IS NULL OR o.created_at < ?5) ORDER BY o.seq",
        )
        .bind(f.tenant.as_deref())
        .bind(f.source.map(|s| s.as_str()))
        .bind(f.native_id.as_deref())
        .bind(f.since_ms)
        .bind(f.until_ms)
        .fetch_all(&mut *tx)
        .await?;
        // One number per replay run (its start, in ms): unique without counting earlier ones.
        let run = now_ms();
        let mut by_tenant: HashMap<String, Vec<OutboxRow>> = HashMap::new();
        for r in &rows {
            let (tenant, source, native_id, version): (String, String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            let Some(source) = SourceKind::parse(&source) else {
                continue;
            };
            let base = replay_base(&version);
            let stored: Vec<u8> = r.try_get(4)?;
            if let Some(row) = replay_row(source, &native_id, base, run, &stored) {
                by_tenant.entry(tenant).or_default().push(row);
            }
        }
        let mut queued = 0;
        for (tenant, rows) in by_tenant {
            queued += write_outbox(&mut tx, &tenant, rows, run).await?.len() as u64;
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn requeue_delivered(&self, f: &ReplayFilter) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE outbox SET state = 0, batch_id = NULL, delivered_at = NULL WHERE state = 2 \
             AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR native_id = ?3) \
             AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at < ?5)",
        )
        .bind(f.tenant.as_deref())
        .bind(f.source.map(|s| s.as_str()))
        .bind(f.native_id.as_deref())
        .bind(f.since_ms)
        .bind(f.until_ms)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        let mut n = 0;
        let mut tx = self.begin().await?;
        if ids.is_empty() {
            n = sqlx::query(
                "UPDATE quarantine SET retry_requested = 1 WHERE (?1 IS NULL OR tenant = ?1)",
            )
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for id in ids {
            n += sqlx::query("UPDATE quarantine SET retry_requested = 1 WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)")
                .bind(id)
                .bind(tenant)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn quarantine_retries(
        &self,
        tenant: &str,
        source: SourceKind,
        limit: i64,
    ) -> Result<Vec<QuarantineRetry>> {
        let rows = sqlx::query("SELECT id, list, raw FROM quarantine WHERE tenant = ? AND source = ? AND retry_requested = 1 ORDER BY id LIMIT ?")
            .bind(tenant)
            .bind(source.as_str())
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok(from_row!(QuarantineRetry, r, id, list, raw)))
            .collect()
    }

    async fn quarantined(&self, tenant: Option<&str>) -> Result<Vec<Quarantined>> {
        let rows = sqlx::query("SELECT id, tenant, source, native_id, reason, created_at, retry_requested, attempts FROM quarantine WHERE (?1 IS NULL OR tenant = ?1) ORDER BY id")
            .bind(tenant)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(from_row!(
                    Quarantined,
                    r,
                    id,
                    tenant,
                    source,
                    native_id,
                    reason,
                    created_at,
                    retry_requested,
                    attempts
                ))
            })
            .collect()
    }

    async fn cursors(&self, tenant: Option<&str>) -> Result<Vec<StoredCursor>> {
        let rows = sqlx::query("SELECT tenant, source, list, coverage, t0 FROM cursors WHERE (?1 IS NULL OR tenant = ?1) ORDER BY tenant, source, list")
            .bind(tenant)
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let source: String = r.try_get(1)?;
            out.extend(stored_cursor(
                r.try_get(0)?,
                &source,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ));
        }
        Ok(out)
    }

    async fn prune(&self, bodies_before: i64, state_before: i64) -> Result<u64> {
        let mut total = 0u64;
        // Small chunks keep each write transaction short, so ingest never waits long.
        loop {
            let mut tx = self.begin().await?;
            let seqs: Vec<i64> = sqlx::query_scalar(
                "SELECT seq FROM outbox WHERE state = 2 AND delivered_at < ? LIMIT 5000",
            )
            .bind(bodies_before)
            .fetch_all(&mut *tx)
            .await?;
            for table in ["outbox_body", "outbox"] {
                for_seqs(&mut tx, &format!("DELETE FROM {table}"), None, &seqs).await?;
            }
            tx.commit().await?;
            total += seqs.len() as u64;
            if seqs.len() < 5000 {
                break;
            }
        }
        loop {
            let n = sqlx::query("DELETE FROM alerts WHERE (tenant, source, native_id) IN (SELECT tenant, source, native_id FROM alerts WHERE last_change < ? LIMIT 5000)")
                .bind(state_before)
                .execute(&self.writer)
                .await?
                .rows_affected();
            total += n;
            if n < 5000 {
                break;
            }
        }
        sqlx::query("DELETE FROM batches WHERE state IN ('delivered', 'split') AND updated_at < ?")
            .bind(bodies_before)
            .execute(&self.writer)
            .await?;
        Ok(total)
    }
}
