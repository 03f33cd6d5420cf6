//! The production Postgres store: a page is one transaction of a few set-based statements
//! (`UNNEST` arrays, `ON CONFLICT`), bodies as `bytea`, and leases with fencing so several
//! replicas can share one database (design §5, §10). The store's logic is `sql.rs`; this is
//! Postgres's dialect of it: its SQL where it differs, the array statements, and the leases.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Pool, Postgres, QueryBuilder, Row};

use super::sql::{Dialect, SqlStore, Tx};
use super::*;

/// The Postgres store: the shared logic on Postgres's dialect.
pub type PgStore = SqlStore<PgDialect>;

/// Postgres's pool, this replica's leases, and what Postgres does its own way.
pub struct PgDialect {
    pool: PgPool,
    /// Who this replica is in the `leases` table.
    holder: String,
    /// The epoch of each lease this replica believes it holds; the database has the last word.
    held: Mutex<HashMap<String, i64>>,
}

impl SqlStore<PgDialect> {
    /// Connects (the pool reconnects by itself after the server drops connections) and migrates.
    pub async fn open(url: &str, pool_size: u32, connect_timeout: Duration) -> Result<Self> {
        let shown = redact(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Invalid(format!("store.url `{shown}` is not a Postgres URL: {e}"))
            })?
            .application_name("m365-ingest")
            // A statement stuck this long holds its lease row and blocks renewal: fail it.
            // The queue tables grow and churn faster than autovacuum refreshes their
            // statistics (a first run's backfill fills them from empty in minutes), and every
            // query here reads a few rows by an index. So: custom plans (a generic plan cached
            // while the tables were small kept scanning them whole for `= ANY($ids)`), and no
            // bitmap scans (with stale row estimates the planner gathered every pending row
            // and sorted it for a LIMIT 100 claim instead of reading the ordered index).
            .options([
                ("statement_timeout", "60s"),
                ("plan_cache_mode", "force_custom_plan"),
                ("enable_bitmapscan", "off"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(1)
            .acquire_timeout(connect_timeout)
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot connect to Postgres at {shown}: {e}. Check store.url (host, port, \
                     database, user, password) and that the server accepts connections"
                ))
            })?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(SqlStore::with_dialect(PgDialect {
            pool,
            holder: holder_id(),
            held: Mutex::new(HashMap::new()),
        }))
    }
}

impl PgDialect {
    fn held_epoch(&self, lease: &str) -> Option<i64> {
        let held = match self.held.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        held.get(lease).copied()
    }

    fn set_held(&self, lease: &str, epoch: Option<i64>) {
        let mut held = match self.held.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match epoch {
            Some(e) => held.insert(lease.to_string(), e),
            None => held.remove(lease),
        };
    }

    /// A transaction that may write only while `lease` is ours and unexpired: the lease row is
    /// read `FOR SHARE`, so a takeover waits for this commit and a stale holder is refused.
    async fn fenced(&self, lease: &str) -> Result<Tx<Postgres>> {
        let Some(epoch) = self.held_epoch(lease) else {
            return Err(StoreError::Fenced(lease.to_string()));
        };
        let mut tx = self.pool.begin().await?;
        let ours: Option<i64> = sqlx::query_scalar(
            "SELECT epoch FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() FOR SHARE",
        )
        .bind(lease)
        .bind(&self.holder)
        .bind(epoch)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            return Err(StoreError::Fenced(lease.to_string()));
        }
        Ok(tx)
    }

    /// Runs an operator's `statement` on `(tenant or NULL, ids)` in one go; how many rows.
    async fn for_tenant_and_ids(
        &self,
        statement: &'static str,
        tenant: Option<&str>,
        ids: &[i64],
    ) -> Result<u64> {
        let done = sqlx::query(statement)
            .bind(tenant)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Holds the tenant's pages one at a time until this transaction ends.
    ///
    /// Every poller of a tenant (alerts, Cloud Apps, submissions...) commits its pages on a
    /// connection of its own, under READ COMMITTED, and a page reads shared state before it
    /// writes: the alerts rows it plans revisions from (its own items, and the other sources'
    /// items it gives a `linked` revision) and the link rows of other sources. Two pages side by
    /// side would each plan the same next revision of one alert (an update and a `linked`
    /// revision rebuilt from the older body), and each miss the other's uncommitted `mda:` link,
    /// so neither page holds the Cloud Apps twin. Row locks cannot cover a link row that does
    /// not exist yet, hence a lock on the tenant. It is taken after the lease row (`fenced`
    /// reads it `FOR SHARE`), in that order by every page, and nothing else takes it: no
    /// deadlock, and a takeover still waits only for the pages in flight. The operator's
    /// commands neither plan revisions nor write links (a replay appends copies under new event
    /// ids), so they do not take it. SQLite needs none of this: it has one writer.
    async fn lock_tenant_pages(tx: &mut PgConnection, tenant: &str) -> Result<()> {
        // The two-key form, in a namespace of ours, keeps clear of single-key locks such as
        // the migrator's; two tenants whose names hash alike only wait for each other.
        const TENANT_PAGES: i32 = 0x6d33_3635; // "m365"
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(TENANT_PAGES)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// A replica's identity: the host (the pod name under Kubernetes), the process, and a random
/// part so two stores in one process (tests) are two holders.
fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "host".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

impl Dialect for PgDialect {
    type DB = Postgres;

    const ADVANCE_CURSOR: &'static str = "UPDATE cursors SET coverage = GREATEST(coverage, $1), \
         updated_at = $2, state = COALESCE($6, state) \
         WHERE tenant = $3 AND source = $4 AND list = $5 AND ($7::bigint IS NULL OR generation = $7)";
    // A body per row by its key: a join planned on stale statistics hashed the whole body
    // table for 100 rows.
    // The id drawn first, so the root names itself in the same insert: a round trip fewer in
    // each claim, which overlaps the send before it.
    const NEW_ROOT: &'static str = "INSERT INTO batches \
         (id, tenant, destination, key, state, root_id, min_seq, rows, created_at, updated_at) \
         SELECT n, $1, $2, $3, 'open', n, $4, $5, $6, $6 \
         FROM (SELECT nextval(pg_get_serial_sequence('batches', 'id')) AS n) AS next_id \
         RETURNING id";
    const NEW_ROOT_IS_ITS_OWN: bool = true;
    const WRITING_WITH: bool = true;
    const BATCH_ITEMS: &'static str = "SELECT o.seq, \
         (SELECT b.body FROM outbox_body b WHERE b.seq = o.seq) \
         FROM outbox o WHERE o.batch_id = $1 ORDER BY o.seq";
    const DEAD_LETTERS: &'static str = "SELECT o.seq, o.tenant, o.source, o.native_id, \
         o.version, (SELECT b.body FROM outbox_body b WHERE b.seq = o.seq), \
         COALESCE(o.dead_reason, '') FROM outbox o \
         WHERE o.state = 3 AND ($1::text IS NULL OR o.tenant = $1) ORDER BY o.seq";
    const DELIVERED_FOR_REPLAY: &'static str = "SELECT o.tenant, o.source, o.native_id, \
         o.version, b.body FROM outbox o JOIN outbox_body b ON b.seq = o.seq WHERE o.state = 2 \
         AND ($1::text IS NULL OR o.tenant = $1) AND ($2::text IS NULL OR o.source = $2) \
         AND ($3::text IS NULL OR o.native_id = $3) AND ($4::int8 IS NULL OR o.created_at >= $4) \
         AND ($5::int8 IS NULL OR o.created_at < $5) ORDER BY o.seq";
    const REQUEUE_DELIVERED: &'static str = "UPDATE outbox SET state = 0, batch_id = NULL, \
         delivered_at = NULL WHERE state = 2 \
         AND ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR source = $2) \
         AND ($3::text IS NULL OR native_id = $3) AND ($4::int8 IS NULL OR created_at >= $4) \
         AND ($5::int8 IS NULL OR created_at < $5)";
    const QUARANTINE_RETRIES: &'static str = "SELECT id, list, raw FROM quarantine \
         WHERE tenant = $1 AND source = $2 AND retry_requested ORDER BY id LIMIT $3";
    const QUARANTINED: &'static str = "SELECT id, tenant, source, native_id, reason, \
         created_at, retry_requested, attempts FROM quarantine \
         WHERE ($1::text IS NULL OR tenant = $1) ORDER BY id";
    const CURSORS: &'static str = "SELECT tenant, source, list, coverage, t0 FROM cursors \
         WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, source, list";
    const STORED_VERSIONS: &'static str = "SELECT native_id, latest FROM alerts \
         WHERE last_change >= $1 AND tenant = $2 AND source = $3 \
         AND latest >= $4 AND latest < $5 LIMIT $6";
    const STORED_VERSION_COUNTS: &'static str = "SELECT (latest - $4) / $6, COUNT(*) \
         FROM alerts WHERE last_change >= $1 AND tenant = $2 AND source = $3 \
         AND latest >= $4 AND latest < $5 GROUP BY 1";
    // `SKIP LOCKED` lets replicas prune side by side.
    const PRUNE_ALERTS: &'static [&'static str] =
        &["DELETE FROM alerts WHERE (tenant, source, native_id) IN ( \
         SELECT a.tenant, a.source, a.native_id FROM alerts a WHERE a.last_change < $1 \
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = a.last_seq AND o.state <> 2) \
         LIMIT $2 FOR UPDATE OF a SKIP LOCKED)"];

    fn reader(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn writer(&self) -> &Pool<Postgres> {
        &self.pool
    }

    async fn begin(&self) -> Result<Tx<Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn begin_fenced(&self, lease: &str) -> Result<Tx<Postgres>> {
        self.fenced(lease).await
    }

    async fn begin_page(&self, tenant: &str) -> Result<Tx<Postgres>> {
        let mut tx = self.fenced(&tenant_lease(tenant)).await?;
        Self::lock_tenant_pages(&mut tx, tenant).await?;
        Ok(tx)
    }

    async fn lease(&self, name: &str, ttl: Duration) -> Result<bool> {
        let ttl_s = ttl.as_secs_f64();
        if let Some(epoch) = self.held_epoch(name) {
            let renewed: Option<i64> = sqlx::query_scalar(
                "UPDATE leases SET expires_at = now() + make_interval(secs => $4) \
                 WHERE name = $1 AND holder = $2 AND epoch = $3 RETURNING epoch",
            )
            .bind(name)
            .bind(&self.holder)
            .bind(epoch)
            .bind(ttl_s)
            .fetch_optional(&self.pool)
            .await?;
            if renewed.is_some() {
                return Ok(true);
            }
            tracing::warn!(lease = name, "lease lost to another replica");
            self.set_held(name, None);
        }
        // A free or expired lease is taken with the next epoch; a live one is left alone.
        let taken: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at \
             WHERE leases.expires_at < now() RETURNING epoch",
        )
        .bind(name)
        .bind(&self.holder)
        .bind(ttl_s)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(epoch) = taken {
            tracing::info!(lease = name, epoch, holder = %self.holder, "lease taken");
        }
        self.set_held(name, taken);
        Ok(taken.is_some())
    }

    async fn release_leases(&self) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = now() - interval '1 second' WHERE holder = $1")
            .bind(&self.holder)
            .execute(&self.pool)
            .await?;
        let mut held = match self.held.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        held.clear();
        Ok(())
    }

    async fn known_ids(
        &self,
        tenant: &str,
        source: &str,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT native_id FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = ANY($3)",
        )
        .bind(tenant)
        .bind(source)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn retry_dead_letters(&self, tenant: Option<&str>, seqs: &[i64]) -> Result<u64> {
        self.for_tenant_and_ids(
            "UPDATE outbox SET state = 0, batch_id = NULL, dead_reason = NULL WHERE state = 3 \
             AND ($1::text IS NULL OR tenant = $1) AND (cardinality($2::int8[]) = 0 OR seq = ANY($2))",
            tenant,
            seqs,
        )
        .await
    }

    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        self.for_tenant_and_ids(
            "UPDATE quarantine SET retry_requested = TRUE WHERE ($1::text IS NULL OR tenant = $1) \
             AND (cardinality($2::int8[]) = 0 OR id = ANY($2))",
            tenant,
            ids,
        )
        .await
    }

    /// One statement: `SKIP LOCKED` lets replicas prune side by side.
    async fn prune_bodies(&self, before: i64, limit: i64) -> Result<u64> {
        let n = sqlx::query(
            "WITH gone AS ( \
               DELETE FROM outbox WHERE seq IN ( \
                 SELECT seq FROM outbox WHERE state = 2 AND delivered_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING seq) \
             DELETE FROM outbox_body WHERE seq IN (SELECT seq FROM gone)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn load_states(
        conn: &mut PgConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> Result<Vec<PgRow>> {
        // One key lookup per id (OFFSET 0 keeps the planner from turning it into a join it
        // would plan on stale statistics as a scan of the whole table).
        let rows = sqlx::query(
            "SELECT a.native_id, a.latest, a.state_hash, a.revision, a.forwarded, a.field_hashes, a.context \
             FROM UNNEST($3::text[]) AS u(id) CROSS JOIN LATERAL ( \
               SELECT * FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = u.id OFFSET 0) a",
        )
        .bind(tenant)
        .bind(source)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows)
    }

    async fn insert_links(
        conn: &mut PgConnection,
        tenant: &str,
        source: &str,
        keys: &[String],
        owners: &[String],
    ) -> Result<HashSet<(String, String)>> {
        sqlx::query(
            "INSERT INTO links (tenant, key, source, native_id) \
             SELECT $1, k, $2, n FROM UNNEST($3::text[], $4::text[]) AS u(k, n) \
             ON CONFLICT DO NOTHING RETURNING key, native_id",
        )
        .bind(tenant)
        .bind(source)
        .bind(keys)
        .bind(owners)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    /// A key lookup per distinct key (`OFFSET 0`, as in `load_states`).
    async fn links_of_keys(
        conn: &mut PgConnection,
        tenant: &str,
        source: &str,
        keys: &[String],
    ) -> Result<Vec<PgRow>> {
        Ok(sqlx::query(
            "SELECT l.key, l.source, l.native_id, COALESCE(a.forwarded, FALSE) FROM (SELECT DISTINCT k FROM UNNEST($2::text[]) AS u(k)) u \
             CROSS JOIN LATERAL ( \
               SELECT key, source, native_id FROM links WHERE tenant = $1 AND key = u.k AND source <> $3 OFFSET 0) l \
             LEFT JOIN alerts a ON a.tenant = $1 AND a.source = l.source AND a.native_id = l.native_id",
        )
        .bind(tenant)
        .bind(keys)
        .bind(source)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// New alerts are inserted without `ON CONFLICT`: the page holds its tenant's lock, so no
    /// other page adds one meanwhile, and skipping the conflict check saves an index probe per
    /// alert. Stored alerts keep the upsert: a prune (which takes no tenant lock) may have
    /// removed the row since the page read it, and the alert is then written anew.
    async fn write_alerts(
        conn: &mut PgConnection,
        tenant: &str,
        source: &str,
        rows: Vec<AlertWrite>,
        now: i64,
    ) -> Result<()> {
        const INSERT: &str = "INSERT INTO alerts (tenant, source, native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq, first_seen, last_change) \
             SELECT $1, $2, u.native_id, u.latest, u.state_hash, u.revision, u.forwarded, u.field_hashes, u.last_seq, $9, $9 \
             FROM UNNEST($3::text[], $4::int8[], $5::bytea[], $6::int8[], $7::bool[], $8::bytea[], $10::int8[]) \
               AS u(native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq)";
        const UPSERT: &str = " ON CONFLICT (tenant, source, native_id) DO UPDATE SET latest = excluded.latest, \
               state_hash = excluded.state_hash, revision = excluded.revision, forwarded = excluded.forwarded, \
               field_hashes = excluded.field_hashes, last_change = excluded.last_change, \
               last_seq = COALESCE(excluded.last_seq, alerts.last_seq)";
        static UPSERT_STATEMENT: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| format!("{INSERT}{UPSERT}"));
        let (stored, new): (Vec<AlertWrite>, Vec<AlertWrite>) =
            rows.into_iter().partition(|r| r.stored);
        for (statement, rows) in [(INSERT, new), (UPSERT_STATEMENT.as_str(), stored)] {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let (mut ids, mut latest, mut hashes, mut revisions, mut forwarded, mut fields) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let mut last_seqs = Vec::with_capacity(n);
            for AlertWrite {
                state: s, last_seq, ..
            } in rows
            {
                last_seqs.push(last_seq);
                ids.push(s.native_id);
                latest.push(s.latest);
                hashes.push(s.state_hash);
                revisions.push(s.revision);
                forwarded.push(s.forwarded);
                fields.push(s.field_hashes);
            }
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(tenant)
                .bind(source)
                .bind(ids)
                .bind(latest)
                .bind(hashes)
                .bind(revisions)
                .bind(forwarded)
                .bind(fields)
                .bind(now)
                .bind(last_seqs)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Appends versions and their bodies in one statement. Each row takes its seq from the
    /// table's sequence in page order (the subquery's `ORDER BY` keeps Postgres from pulling it
    /// up, so `nextval` runs over the sorted rows), and its body is written under that seq.
    /// The sequence is looked up once per statement (an init plan), not once per row.
    /// Returns the rows inserted: (source, native id, seq).
    async fn write_outbox(
        conn: &mut PgConnection,
        tenant: &str,
        rows: Vec<OutboxRow>,
        now: i64,
    ) -> Result<Vec<QueuedRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let (mut sources, mut natives, mut versions, mut historical, mut sizes, mut bodies) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in rows {
            sources.push(r.source.as_str());
            natives.push(r.native_id);
            versions.push(r.version);
            historical.push(r.historical);
            sizes.push(r.json_len as i64);
            bodies.push(r.stored);
        }
        sqlx::query(
            "WITH u AS MATERIALIZED ( \
               SELECT nextval((SELECT pg_get_serial_sequence('outbox', 'seq'))::regclass) AS seq, x.* FROM ( \
                 SELECT * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bool[], $7::int8[], $8::bytea[]) \
                   WITH ORDINALITY AS x(source, native_id, version, historical, size, body, ord) \
                 ORDER BY ord \
               ) x \
             ), ins AS ( \
               INSERT INTO outbox (seq, tenant, source, native_id, version, historical, size, state, created_at) \
               SELECT seq, $1, source, native_id, version, historical, size, 0, $2 FROM u \
             ), bodies AS ( \
               INSERT INTO outbox_body (seq, body) SELECT seq, body FROM u \
             ) \
             SELECT source, native_id, seq FROM u ORDER BY seq",
        )
        .bind(tenant)
        .bind(now)
        .bind(sources)
        .bind(natives)
        .bind(versions)
        .bind(historical)
        .bind(sizes)
        .bind(bodies)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .filter_map(|r| {
            let s: String = r.try_get(0).ok()?;
            Some(Ok((
                SourceKind::parse(&s)?,
                r.try_get(1).ok()?,
                r.try_get(2).ok()?,
            )))
        })
        .collect()
    }

    /// One statement, the seqs as an array.
    async fn for_seqs(
        conn: &mut PgConnection,
        statement: &str,
        value: Option<i64>,
        seqs: &[i64],
    ) -> Result<()> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(statement);
        if let Some(v) = value {
            q.push_bind(v);
        }
        q.push(" WHERE seq = ANY(").push_bind(seqs).push(")");
        q.build().execute(&mut *conn).await?;
        Ok(())
    }
}
