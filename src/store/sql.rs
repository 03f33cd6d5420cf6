//! The store written once: every `Store` operation as statements run through sqlx's generic API
//! on a `Dialect`. A dialect (`sqlite.rs`, `postgres.rs`) supplies only what differs between the
//! backends: the SQL text of the statements that read differently (types, casts, planner and
//! index choices), how a write transaction starts (SQLite's single writer; Postgres's fenced
//! lease and tenant lock), and the bulk steps each does its own way (Postgres: one `UNNEST`
//! statement; SQLite: multi-row `VALUES` in chunks, or a row at a time). Statements that read the
//! same on both are here, with `$N` placeholders, which SQLite takes as well; the callers here
//! fix the bind order, which a dialect's text follows.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type,
};

use super::*;

/// A write transaction of either backend.
pub type Tx<DB> = Transaction<'static, DB>;
/// A dialect's connection.
pub type Conn<D> = <<D as Dialect>::DB as Database>::Connection;
/// A dialect's row.
pub type DbRow<D> = <<D as Dialect>::DB as Database>::Row;
/// A statement on a dialect, its binds taken so far.
type Query<D> =
    sqlx::query::Query<'static, <D as Dialect>::DB, <<D as Dialect>::DB as Database>::Arguments>;

/// The sqlx driver under a dialect, with what generic code cannot name once: "a connection (or
/// pool) executes statements" is a bound on a reference type, which Rust would make every
/// caller repeat, so each driver says it here instead.
pub trait Db: Database<Arguments: IntoArguments<Self>> {
    fn on(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self>;
    fn on_pool(pool: &Pool<Self>) -> impl Executor<'_, Database = Self>;
    /// `QueryResult::rows_affected` is the driver's own method, not a trait's.
    fn rows_affected(done: &Self::QueryResult) -> u64;
}

/// Each driver's `Db`: the same code over other types, calling methods each driver has as its
/// own (not a trait's), so only a macro writes it once.
macro_rules! driver {
    ($db:ty) => {
        impl Db for $db {
            fn on(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self> {
                conn
            }
            fn on_pool(pool: &Pool<Self>) -> impl Executor<'_, Database = Self> {
                pool
            }
            fn rows_affected(done: &Self::QueryResult) -> u64 {
                done.rows_affected()
            }
        }
    };
}
driver!(sqlx::Sqlite);
driver!(sqlx::Postgres);

/// What one backend does its own way. Each `const` is a statement whose text differs between
/// the backends; its binds, in order, are those its caller in this file gives.
pub trait Dialect: Send + Sync + 'static {
    type DB: Db;

    /// `(b, now, tenant, source, list, source_state, expected generation)`: C := max(C, b)
    /// and the source's state, only while the row has the generation the poll read.
    const ADVANCE_CURSOR: &'static str;
    /// `(batch_id)` → `seq, stored body (NULL if missing)` in seq order.
    const BATCH_ITEMS: &'static str;
    /// `(tenant, destination, key, min_seq, rows, now)` → `id` of a new open root batch. Its
    /// `root_id` is its own id where the backend can number a row within its own insert
    /// ([`Self::NEW_ROOT_IS_ITS_OWN`]); elsewhere 0 until `ROOT_IS_ITSELF` sets it.
    const NEW_ROOT: &'static str;
    const NEW_ROOT_IS_ITS_OWN: bool;
    /// Whether a `WITH` may hold an `UPDATE` (Postgres), so two writes go in one statement.
    const WRITING_WITH: bool;
    /// `(tenant or NULL)` → `seq, tenant, source, native_id, version, stored body (NULL if
    /// missing), reason` of dead-lettered rows in seq order.
    const DEAD_LETTERS: &'static str;
    /// `(tenant, source, native_id, since_ms, until_ms)`, each NULL for any →
    /// `tenant, source, native_id, version, body` of delivered rows in seq order.
    const DELIVERED_FOR_REPLAY: &'static str;
    /// The same filter: delivered rows back to pending.
    const REQUEUE_DELIVERED: &'static str;
    /// `(tenant, source, limit)` → `id, list, raw` marked for retry, oldest first.
    const QUARANTINE_RETRIES: &'static str;
    /// `(tenant or NULL)` → `Quarantined` columns in id order.
    const QUARANTINED: &'static str;
    /// `(tenant or NULL)` → `tenant, source, list, coverage, t0`.
    const CURSORS: &'static str;
    /// `(before, limit)`: deletes up to `limit` dedup rows last changed before `before`, except
    /// those whose latest queued version is not delivered yet: their state is what keeps that
    /// version from being queued twice, event ids being no longer unique in the store.
    /// Each statement is run until it deletes fewer than `limit` (one per table holding dedup
    /// rows).
    const PRUNE_ALERTS: &'static [&'static str];
    /// `(since_ms, tenant, source, from_ticks, to_ticks, limit)` → `native_id, latest` of the
    /// alerts last changed at or after `since_ms` whose latest version is in [from_ticks,
    /// to_ticks), read through an index (a tenant's whole history is not scanned):
    /// `last_change`'s, or on SQLite's archive level the runs merged since `since_ms`.
    const STORED_VERSIONS: &'static str;
    /// `(since_ms, tenant, source, from_ticks, to_ticks, bucket_ticks)` → `bucket, count` over
    /// the same rows as `STORED_VERSIONS`, a bucket being `(latest - from_ticks) / bucket_ticks`.
    const STORED_VERSION_COUNTS: &'static str;

    /// Where reads that need not see this replica's latest commit go.
    fn reader(&self) -> &Pool<Self::DB>;
    /// Where single unfenced writes, and the forwarder's reads of its own writes, go.
    fn writer(&self) -> &Pool<Self::DB>;
    /// A write transaction for the operator's commands, which no lease fences.
    fn begin(&self) -> impl Future<Output = Result<Tx<Self::DB>>> + Send;
    /// A write transaction that commits only while `lease` is this replica's.
    fn begin_fenced(&self, lease: &str) -> impl Future<Output = Result<Tx<Self::DB>>> + Send;
    /// The transaction of one ingested page of `tenant`: fenced by its lease, and alone among
    /// the tenant's pages while it plans revisions from what it reads.
    fn begin_page(&self, tenant: &str) -> impl Future<Output = Result<Tx<Self::DB>>> + Send;
    fn lease(&self, name: &str, ttl: Duration) -> impl Future<Output = Result<bool>> + Send;
    fn release_leases(&self) -> impl Future<Output = Result<()>> + Send;

    /// Which of `ids` are stored for (tenant, source).
    fn known_ids(
        &self,
        tenant: &str,
        source: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>>> + Send;
    /// Queues dead letters again (all of `tenant` when `seqs` is empty); how many.
    fn retry_dead_letters(
        &self,
        tenant: Option<&str>,
        seqs: &[i64],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Marks quarantined items for retry (all of `tenant` when `ids` is empty); how many.
    fn request_quarantine_retry(
        &self,
        tenant: Option<&str>,
        ids: &[i64],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Deletes up to `limit` delivered rows stored before `before`, with their bodies, in a
    /// short transaction of its own; how many.
    fn prune_bodies(&self, before: i64, limit: i64) -> impl Future<Output = Result<u64>> + Send;

    /// The `alerts` rows of `ids`: `native_id, latest, state_hash, revision, forwarded,
    /// field_hashes`.
    fn load_states(
        conn: &mut Conn<Self>,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> impl Future<Output = Result<Vec<DbRow<Self>>>> + Send;
    /// Stores the link rows `(keys[i], owners[i])` of `source`; returns those that are new.
    fn insert_links(
        conn: &mut Conn<Self>,
        tenant: &str,
        source: &str,
        keys: &[String],
        owners: &[String],
    ) -> impl Future<Output = Result<HashSet<(String, String)>>> + Send;
    /// The other sources' items under `keys`: `key, source, native_id, forwarded`, a key's
    /// rows together.
    fn links_of_keys(
        conn: &mut Conn<Self>,
        tenant: &str,
        source: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<DbRow<Self>>>> + Send;
    /// Appends versions and their bodies, in order, under new seqs. Returns the rows inserted.
    /// Nothing here refuses a version queued before: the caller plans against the alert's dedup
    /// state under the page's lock.
    fn write_outbox(
        conn: &mut Conn<Self>,
        tenant: &str,
        rows: Vec<OutboxRow>,
        now: i64,
    ) -> impl Future<Output = Result<Vec<QueuedRow>>> + Send;
    /// Writes the page's dedup rows.
    fn write_alerts(
        conn: &mut Conn<Self>,
        tenant: &str,
        source: &str,
        rows: Vec<AlertWrite>,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Makes everything a page of `ids` (of `source`) with link `keys`, or an alert's context,
    /// may read or change visible to the statements here, inside the page's transaction before
    /// its first read. SQLite brings it back from its archive level (`levels.rs`); the default
    /// has one level.
    fn surface(
        &self,
        _conn: &mut Conn<Self>,
        _tenant: &str,
        _source: &str,
        _ids: &[&str],
        _keys: &[String],
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Inside a page's transaction, after its writes, which added `new_alerts` dedup rows.
    fn settle_page(
        &self,
        _conn: &mut Conn<Self>,
        _new_alerts: usize,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Runs `{statement} WHERE seq …` over `seqs`; a `value` is bound first (the statement
    /// then ends where it goes, e.g. `UPDATE outbox SET batch_id = `).
    fn for_seqs(
        conn: &mut Conn<Self>,
        statement: &str,
        value: Option<i64>,
        seqs: &[i64],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The page's link rows: `keys[i]` is a link key of the item `owners[i]`.
fn page_links(batch: &IngestBatch<'_>) -> (Vec<String>, Vec<String>) {
    let mut keys: Vec<String> = Vec::new();
    let mut owners: Vec<String> = Vec::new();
    for item in &batch.items {
        for key in link_keys(batch.source, item) {
            keys.push(key);
            owners.push(item.native_id.clone());
        }
    }
    (keys, owners)
}

/// A `Store` on a dialect: `SqliteStore` and `PgStore`.
pub struct SqlStore<D> {
    pub(crate) dialect: D,
    cursor_generations: CursorGenerations,
}

impl<D> SqlStore<D> {
    pub(crate) fn with_dialect(dialect: D) -> Self {
        Self {
            dialect,
            cursor_generations: CursorGenerations::default(),
        }
    }
}

const PING: &str = "SELECT 1";
const LOAD_CURSOR: &str =
    "SELECT coverage, t0, generation FROM cursors WHERE tenant = $1 AND source = $2 AND list = $3";
const INIT_CURSOR: &str = "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const SET_CURSOR: &str = "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, source, list) DO UPDATE SET \
     coverage = excluded.coverage, t0 = excluded.t0, state = NULL, updated_at = excluded.updated_at, \
     generation = cursors.generation + 1";
const LOAD_CURSOR_STATE: &str =
    "SELECT state FROM cursors WHERE tenant = $1 AND source = $2 AND list = $3";
const ALERT_FOR_LINK: &str = "SELECT latest, state_hash, revision, forwarded, field_hashes, \
     link_count, last_seq FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = $3";
const BODY: &str = "SELECT body FROM outbox_body WHERE seq = $1";
const LINKS_OF_ITEM: &str = "SELECT DISTINCT l2.source, l2.native_id, COALESCE(a.forwarded, FALSE) \
     FROM links l1 JOIN links l2 ON l2.tenant = l1.tenant AND l2.key = l1.key \
     LEFT JOIN alerts a ON a.tenant = l2.tenant AND a.source = l2.source AND a.native_id = l2.native_id \
     WHERE l1.tenant = $1 AND l1.source = $2 AND l1.native_id = $3 \
     AND NOT (l2.source = l1.source AND l2.native_id = l1.native_id)";
const LINKED_REVISION: &str = "UPDATE alerts SET revision = $1, link_count = link_count + 1, \
     last_change = $2 WHERE tenant = $3 AND source = $4 AND native_id = $5";
const SET_LAST_SEQ: &str =
    "UPDATE alerts SET last_seq = $1 WHERE tenant = $2 AND source = $3 AND native_id = $4";
const QUARANTINE: &str = "INSERT INTO quarantine \
     (tenant, source, native_id, reason, raw, raw_hash, created_at, list) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
const RETRIED_PARSED: &str = "DELETE FROM quarantine WHERE id = $1 AND tenant = $2";
const RETRIED_UNUSABLE: &str = "UPDATE quarantine SET retry_requested = FALSE, \
     attempts = attempts + 1, reason = $3 WHERE id = $1 AND tenant = $2";
const UNDELIVERED: &str = "SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state IN (0, 1)";
const NEXT_OPEN_BATCH: &str = "SELECT id, tenant, destination, key, root_id, attempts, \
     next_attempt_at, rows, deferred FROM batches \
     WHERE destination = $1 AND tenant = $2 AND state = 'open' \
     ORDER BY (deferred AND next_attempt_at > $3), root_id, deferred, min_seq LIMIT 1";
/// The tenant's claimable rows, `$columns` of each. A row waiting for its context
/// (`hold_until` ahead) is not claimed, nor any later row of its alert: an alert's versions
/// reach Dropzone in order.
macro_rules! claimable {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM outbox o WHERE tenant = $1 AND state = 0 \
     AND NOT EXISTS (SELECT 1 FROM outbox h WHERE h.tenant = o.tenant AND h.source = o.source \
       AND h.native_id = o.native_id AND h.hold_until IS NOT NULL AND h.hold_until > $3 \
       AND h.seq <= o.seq AND h.state = 0) \
     ORDER BY historical, seq LIMIT $2"
        )
    };
}
const CLAIMABLE: &str = claimable!("seq, size");
/// With each row's stored body: the claim that reads its batch in the same statement.
const CLAIMABLE_READ: &str =
    claimable!("seq, size, (SELECT b.body FROM outbox_body b WHERE b.seq = o.seq)");
const HOLD: &str = "UPDATE outbox SET hold_until = $1 WHERE seq = $2";
const WANT_CONTEXT: &str = "INSERT INTO context_wanted \
     (tenant, source, native_id, message_id, created_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT DO NOTHING";
// Read in pages after the last row read: a round reaches every listed alert, however many
// hunting does not know yet.
const CONTEXT_WANTED: &str = "SELECT source, native_id, message_id, created_at \
     FROM context_wanted WHERE tenant = $1 AND (created_at, source, native_id) > ($2, $3, $4) \
     ORDER BY created_at, source, native_id LIMIT $5";
const WANTED_DONE: &str =
    "DELETE FROM context_wanted WHERE tenant = $1 AND source = $2 AND native_id = $3";
const EXPIRE_WANTED: &str = "DELETE FROM context_wanted WHERE tenant = $1 AND created_at < $2";
const HELD_ROW: &str = "SELECT seq FROM outbox WHERE tenant = $1 AND source = $2 \
     AND native_id = $3 AND state = 0 AND hold_until IS NOT NULL ORDER BY seq LIMIT 1";
// `state = 0` again: on Postgres a claim that took the row first makes this update nothing,
// and the context then goes as a revision.
const ENRICH_QUEUED: &str = "UPDATE outbox SET hold_until = NULL, size = $1 \
     WHERE seq = $2 AND state = 0";
const KEEP_CONTEXT: &str =
    "UPDATE alerts SET context = $4 WHERE tenant = $1 AND source = $2 AND native_id = $3";
const SET_BODY: &str = "UPDATE outbox_body SET body = $1 WHERE seq = $2";
const ALERT_FOR_CONTEXT: &str = "SELECT revision, forwarded, context_count, last_seq \
     FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = $3";
const CONTEXT_REVISION: &str =
    "UPDATE alerts SET revision = $1, context_count = context_count + 1, \
     last_change = $2, last_seq = $3 WHERE tenant = $4 AND source = $5 AND native_id = $6";
const ROOT_IS_ITSELF: &str = "UPDATE batches SET root_id = id WHERE id = $1";
// `(now, batch id, root id)`. A delivered row leaves its batch: nothing reads a delivered row by
// batch, and the `outbox_batch` index then holds only rows in flight or dead (11 B per version,
// issue 12). The batch and its root are one statement: a batch is often its own root.
macro_rules! delivered_rows {
    () => {
        "UPDATE outbox SET state = 2, delivered_at = $1, batch_id = NULL \
         WHERE batch_id = $2 AND state = 1"
    };
}
macro_rules! delivered_batches {
    () => {
        "UPDATE batches SET \
           state = CASE WHEN id = $2 THEN 'delivered' ELSE state END, \
           updated_at = CASE WHEN id = $2 THEN $1 ELSE updated_at END, \
           accepted = CASE WHEN id = $3 THEN TRUE ELSE accepted END \
         WHERE id IN ($2, $3)"
    };
}
const DELIVERED_ROWS: &str = delivered_rows!();
const DELIVERED_BATCHES: &str = delivered_batches!();
/// Both in one statement, where the backend lets a `WITH` write: the record of a delivered
/// batch stands between two sends of a tenant, and each statement is a round trip there.
const DELIVERED_AT_ONCE: &str = concat!(
    "WITH rows_delivered AS (",
    delivered_rows!(),
    ") ",
    delivered_batches!()
);
const RETRY_LATER: &str = "UPDATE batches SET attempts = attempts + 1, next_attempt_at = $1, \
     last_error = $2, updated_at = $3 WHERE id = $4";
const BATCH_SEQS: &str = "SELECT seq FROM outbox WHERE batch_id = $1 ORDER BY seq";
const NEW_CHILD: &str = "INSERT INTO batches \
     (tenant, destination, key, state, root_id, parent_id, min_seq, rows, created_at, updated_at) \
     VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $8) RETURNING id";
const SPLIT: &str = "UPDATE batches SET state = 'split', updated_at = $1 WHERE id = $2";
const DEFER: &str = "UPDATE batches SET deferred = TRUE, attempts = attempts + 1, \
     next_attempt_at = $4, last_error = $1, updated_at = $2 WHERE id = $3";
const ROOT_PROBED: &str = "UPDATE batches SET probes = probes + 1 WHERE id = $1";
const ADOPT: &str = "UPDATE batches SET destination = $1, updated_at = $3 \
     WHERE tenant = $2 AND state = 'open' AND destination <> $1";
const DEAD_ROWS: &str =
    "UPDATE outbox SET state = 3, dead_reason = $1 WHERE batch_id = $2 AND state = 1";
const DEAD_BATCH: &str =
    "UPDATE batches SET state = 'dead', last_error = $1, updated_at = $2 WHERE id = $3";
const ROOT_FACTS: &str = "SELECT accepted, probes FROM batches WHERE id = $1";
/// The rest of what `/status` shows of a queue, beside [`QUEUE_DEPTH`].
const QUEUE_COUNTS: &str = "SELECT \
       (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state = 3), \
       (SELECT COUNT(*) FROM quarantine WHERE tenant = $1), \
       (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state = 2)";
/// What the metrics read on every scrape: the undelivered rows only, through the
/// `outbox_undelivered` index. [`QUEUE_COUNTS`] reads every row the tenant ever queued, which a
/// scrape of many tenants on a large store must not pay.
pub(super) const QUEUE_DEPTH: &str = "SELECT \
       (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state IN (0, 1)), \
       (SELECT MIN(created_at) FROM outbox WHERE tenant = $1 AND state IN (0, 1))";
const PRUNE_BATCHES: &str =
    "DELETE FROM batches WHERE state IN ('delivered', 'split') AND updated_at < $1";

/// Rows a prune statement deletes at a time: short transactions, so ingest never waits long.
const PRUNE_CHUNK: i64 = 5000;

impl<D: Dialect> SqlStore<D>
where
    usize: ColumnIndex<DbRow<D>>,
    for<'r> i64: Type<D::DB> + Encode<'r, D::DB> + Decode<'r, D::DB>,
    for<'r> bool: Type<D::DB> + Decode<'r, D::DB>,
    for<'r> String: Type<D::DB> + Decode<'r, D::DB>,
    for<'r> &'r str: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Option<&'r str>: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Option<i64>: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Vec<u8>: Type<D::DB> + Encode<'r, D::DB> + Decode<'r, D::DB>,
{
    fn alert_state(row: &DbRow<D>) -> Result<AlertState> {
        Ok(from_row!(
            AlertState,
            row,
            native_id,
            latest,
            state_hash,
            revision,
            forwarded,
            field_hashes,
            context
        ))
    }

    fn batch_from_row(row: &DbRow<D>) -> Result<Batch> {
        // Columns in `NEXT_OPEN_BATCH` order.
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

    /// `statement` with a coverage point's key bound: `(tenant, source, list, …)`.
    fn keyed(statement: &'static str, key: &CursorKey) -> Query<D> {
        sqlx::query(statement)
            .bind(key.tenant.as_str())
            .bind(key.source.as_str())
            .bind(key.list.as_str())
    }

    /// `statement` with an item bound: `(tenant, source, native_id, …)`.
    fn of_item(statement: &'static str, tenant: &str, source: &str, native_id: &str) -> Query<D> {
        sqlx::query(statement)
            .bind(tenant)
            .bind(source)
            .bind(native_id)
    }

    /// `statement` with a replay filter bound: `(tenant, source, native_id, since, until)`.
    fn filtered(statement: &'static str, f: &ReplayFilter) -> Query<D> {
        sqlx::query(statement)
            .bind(f.tenant.as_deref())
            .bind(f.source.map(|s| s.as_str()))
            .bind(f.native_id.as_deref())
            .bind(f.since_ms)
            .bind(f.until_ms)
    }

    /// What a listing `statement` on `(tenant or NULL)` reads, for the operator's commands.
    async fn listed(&self, statement: &'static str, tenant: Option<&str>) -> Result<Vec<DbRow<D>>> {
        Ok(sqlx::query(statement)
            .bind(tenant)
            .fetch_all(D::DB::on_pool(self.dialect.reader()))
            .await?)
    }

    /// Records the page's link keys and returns, per item, what it is linked to, plus the
    /// stored items of other sources that gained a link now (they get a `linked` revision).
    /// `keys[i]` is a link key of the page's item `owners[i]` ([`page_links`]).
    async fn link(
        conn: &mut Conn<D>,
        tenant: &str,
        batch: &IngestBatch<'_>,
        keys: Vec<String>,
        owners: Vec<String>,
    ) -> Result<(HashMap<String, Vec<LinkRef>>, Vec<(SourceKind, String)>)> {
        let mut related: HashMap<String, Vec<LinkRef>> = HashMap::new();
        let mut relink: Vec<(SourceKind, String)> = Vec::new();
        if keys.is_empty() {
            return Ok((related, relink));
        }
        let source = batch.source.as_str();
        let inserted = D::insert_links(conn, tenant, source, &keys, &owners).await?;
        let mut others: HashMap<String, Vec<(SourceKind, String, bool)>> = HashMap::new();
        for r in D::links_of_keys(conn, tenant, source, &keys).await? {
            let (key, s, n, fwd): (String, String, String, bool) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            if let Some(s) = SourceKind::parse(&s) {
                others.entry(key).or_default().push((s, n, fwd));
            }
        }
        for (key, owner) in keys.into_iter().zip(owners) {
            let Some(linked) = others.get(&key) else {
                continue;
            };
            let is_new = inserted.contains(&(key, owner.clone()));
            let entry = related.entry(owner).or_default();
            for (s, n, fwd) in linked {
                if !entry.iter().any(|l| l.source == *s && &l.native_id == n) {
                    entry.push(LinkRef {
                        source: *s,
                        native_id: n.clone(),
                        forwarded: *fwd,
                    });
                }
                if is_new && !relink.iter().any(|(rs, rn)| rs == s && rn == n) {
                    relink.push((*s, n.clone()));
                }
            }
        }
        Ok((related, relink))
    }

    /// A `linked` revision for an item forwarded before its counterpart arrived.
    /// `page` is the page being committed: its source and the items its plan forwards, whose
    /// `alerts` rows are written after this, so the twin rule must learn of them from the plan.
    async fn linked_revision(
        conn: &mut Conn<D>,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        observed_at: &str,
        page: (SourceKind, &HashSet<String>),
    ) -> Result<Option<OutboxRow>> {
        let row = Self::of_item(ALERT_FOR_LINK, &tenant.name, source.as_str(), native_id)
            .fetch_optional(D::DB::on(conn))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state = AlertState {
            native_id: native_id.to_string(),
            latest: row.try_get(0)?,
            state_hash: row.try_get(1)?,
            revision: row.try_get(2)?,
            forwarded: row.try_get(3)?,
            field_hashes: row.try_get(4)?,
            context: None,
        };
        let link_count: i64 = row.try_get(5)?;
        let last_seq: Option<i64> = row.try_get(6)?;
        let (true, Some(last_seq)) = (state.forwarded, last_seq) else {
            // Never forwarded: its first forwarded version will carry the link.
            return Ok(None);
        };
        let stored: Option<Vec<u8>> = sqlx::query_scalar(BODY)
            .bind(last_seq)
            .fetch_optional(D::DB::on(conn))
            .await?;
        // Past retention the body is gone: the link then shows only on the other side.
        let Some(json) = stored.and_then(|b| body_codec::decode(&b).ok()) else {
            return Ok(None);
        };
        let mut refs: Vec<LinkRef> =
            Self::of_item(LINKS_OF_ITEM, &tenant.name, source.as_str(), native_id)
                .fetch_all(D::DB::on(conn))
                .await?
                .iter()
                .filter_map(|r| {
                    let s: String = r.try_get(0).ok()?;
                    Some(LinkRef {
                        source: SourceKind::parse(&s)?,
                        native_id: r.try_get(1).ok()?,
                        forwarded: r.try_get(2).ok()?,
                    })
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
        sqlx::query(LINKED_REVISION)
            .bind(next.revision)
            .bind(now_ms())
            .bind(tenant.name.as_str())
            .bind(source.as_str())
            .bind(native_id)
            .execute(D::DB::on(conn))
            .await?;
        Ok(Some(row))
    }

    /// `attach_context`'s work inside its transaction: the waiting version if there is one,
    /// else a `context` revision of the forwarded alert. Either way the alert keeps the context,
    /// so its later versions carry it too.
    async fn enrich(
        conn: &mut Conn<D>,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        context: &[u8],
        observed_at: &str,
    ) -> Result<ContextOutcome> {
        let name = tenant.name.as_str();
        Self::of_item(KEEP_CONTEXT, name, source.as_str(), native_id)
            .bind(body_codec::encode(context))
            .execute(D::DB::on(conn))
            .await?;
        let row = Self::of_item(ALERT_FOR_CONTEXT, name, source.as_str(), native_id)
            .fetch_optional(D::DB::on(conn))
            .await?;
        let Some(row) = row else {
            return Ok(ContextOutcome::Dropped);
        };
        let revision: i64 = row.try_get(0)?;
        let forwarded: bool = row.try_get(1)?;
        let context_count: i64 = row.try_get(2)?;
        let last_seq: Option<i64> = row.try_get(3)?;
        let held: Option<i64> = Self::of_item(HELD_ROW, name, source.as_str(), native_id)
            .fetch_optional(D::DB::on(conn))
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(seq) = held {
            if Self::add_context_to_queued(conn, seq, context).await? {
                // A later version queued while the first one waited (it waits behind it) is
                // the alert's latest state in Dropzone: it carries the context too.
                if let Some(latest) = last_seq.filter(|l| *l > seq) {
                    Self::add_context_to_queued(conn, latest, context).await?;
                }
                return Ok(ContextOutcome::Attached);
            }
        }
        let (true, Some(last_seq)) = (forwarded, last_seq) else {
            return Ok(ContextOutcome::Dropped);
        };
        let stored: Option<Vec<u8>> = sqlx::query_scalar(BODY)
            .bind(last_seq)
            .fetch_optional(D::DB::on(conn))
            .await?;
        // Past retention the body is gone, and with it what a revision would be made from.
        let Some(json) = stored.and_then(|b| body_codec::decode(&b).ok()) else {
            return Ok(ContextOutcome::Dropped);
        };
        let Some((out, revision)) = crate::store::context_revision(
            tenant,
            source,
            native_id,
            revision,
            context_count,
            &json,
            context,
            observed_at,
        ) else {
            return Ok(ContextOutcome::Dropped);
        };
        let inserted = D::write_outbox(conn, name, vec![out], now_ms()).await?;
        let Some((_, _, seq)) = inserted.first() else {
            // Its event id was queued before (the same context again): nothing new to send.
            return Ok(ContextOutcome::Dropped);
        };
        sqlx::query(CONTEXT_REVISION)
            .bind(revision)
            .bind(now_ms())
            .bind(*seq)
            .bind(name)
            .bind(source.as_str())
            .bind(native_id)
            .execute(D::DB::on(conn))
            .await?;
        Ok(ContextOutcome::Revision)
    }

    /// Writes `context` into the queued, not yet claimed row `seq` and lets it go (its hold
    /// ends). False when the row was claimed meanwhile or its body cannot take the context.
    async fn add_context_to_queued(conn: &mut Conn<D>, seq: i64, context: &[u8]) -> Result<bool> {
        let stored: Option<Vec<u8>> = sqlx::query_scalar(BODY)
            .bind(seq)
            .fetch_optional(D::DB::on(conn))
            .await?;
        let event = stored.and_then(|b| body_codec::decode(&b).ok());
        let Some(event) = event.and_then(|e| with_context(&e, context)) else {
            return Ok(false);
        };
        let done = sqlx::query(ENRICH_QUEUED)
            .bind(event.len() as i64)
            .bind(seq)
            .execute(D::DB::on(conn))
            .await?;
        if D::DB::rows_affected(&done) != 1 {
            return Ok(false);
        }
        sqlx::query(SET_BODY)
            .bind(body_codec::encode_event(&event))
            .bind(seq)
            .execute(D::DB::on(conn))
            .await?;
        Ok(true)
    }

    /// Claims a new batch of the tenant's pending rows in `tx`.
    async fn claim_in(
        tx: &mut Tx<D::DB>,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<Batch>> {
        Ok(Self::claim_reading(tx, destination, tenant, limits, false)
            .await?
            .map(|(batch, _)| batch))
    }

    /// `claim_in`, and with `read`, the stored bodies of the rows claimed (by seq; None for a
    /// row without one).
    async fn claim_reading(
        tx: &mut Tx<D::DB>,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
        read: bool,
    ) -> Result<Option<(Batch, Vec<(i64, Option<Vec<u8>>)>)>> {
        let rows = sqlx::query(if read { CLAIMABLE_READ } else { CLAIMABLE })
            .bind(tenant)
            .bind(limits.max_rows as i64)
            .bind(now_ms())
            .fetch_all(D::DB::on(tx))
            .await?;
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        let mut stored = Vec::new();
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
            if read {
                stored.push((seq, r.try_get(2)?));
            }
        }
        let Some(&min_seq) = seqs.iter().min() else {
            return Ok(None);
        };
        let now = now_ms();
        let key = uuid::Uuid::new_v4().to_string();
        let id: i64 = sqlx::query_scalar(D::NEW_ROOT)
            .bind(tenant)
            .bind(destination)
            .bind(key.as_str())
            .bind(min_seq)
            .bind(seqs.len() as i64)
            .bind(now)
            .fetch_one(D::DB::on(tx))
            .await?;
        if !D::NEW_ROOT_IS_ITS_OWN {
            sqlx::query(ROOT_IS_ITSELF)
                .bind(id)
                .execute(D::DB::on(tx))
                .await?;
        }
        D::for_seqs(
            tx,
            "UPDATE outbox SET state = 1, hold_until = NULL, batch_id = ",
            Some(id),
            &seqs,
        )
        .await?;
        let batch = Batch {
            id,
            tenant: tenant.to_string(),
            destination: destination.to_string(),
            key,
            root_id: id,
            attempts: 0,
            next_attempt_at: 0,
            rows: seqs.len() as i64,
            deferred: false,
        };
        Ok(Some((batch, stored)))
    }

    /// `claim_reading` in a transaction of its own under the destination's lease, committed
    /// when it claimed something.
    async fn claim_committed(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
        read: bool,
    ) -> Result<Option<(Batch, Vec<(i64, Option<Vec<u8>>)>)>> {
        let mut tx = self
            .dialect
            .begin_fenced(&destination_lease(destination))
            .await?;
        let claimed = Self::claim_reading(&mut tx, destination, tenant, limits, read).await?;
        if claimed.is_some() {
            tx.commit().await?;
        }
        Ok(claimed)
    }

    /// Runs `steps` (statements with their binds) in one transaction under the batch's
    /// destination lease: the forwarder settling a batch it holds.
    async fn settle(&self, batch: &Batch, steps: &[(&'static str, &[Bind<'_>])]) -> Result<()> {
        self.settling(batch, steps).await?.commit().await?;
        Ok(())
    }

    /// `steps` run in a transaction under the batch's destination lease, left open.
    async fn settling(
        &self,
        batch: &Batch,
        steps: &[(&'static str, &[Bind<'_>])],
    ) -> Result<Tx<D::DB>> {
        let mut tx = self
            .dialect
            .begin_fenced(&destination_lease(&batch.destination))
            .await?;
        for (statement, binds) in steps {
            let mut q = sqlx::query(*statement);
            for bind in *binds {
                q = match bind {
                    Bind::Int(v) => q.bind(*v),
                    Bind::Text(v) => q.bind(*v),
                };
            }
            q.execute(D::DB::on(&mut tx)).await?;
        }
        Ok(tx)
    }

    /// The batch marked delivered, in a transaction left open.
    async fn delivering(&self, batch: &Batch, now: i64) -> Result<Tx<D::DB>> {
        use Bind::Int;
        let binds = [Int(now), Int(batch.id), Int(batch.root_id)];
        if D::WRITING_WITH {
            self.settling(batch, &[(DELIVERED_AT_ONCE, &binds)]).await
        } else {
            self.settling(
                batch,
                &[(DELIVERED_ROWS, &binds[..2]), (DELIVERED_BATCHES, &binds)],
            )
            .await
        }
    }
}

/// A batch's row `seq` as it is sent, from its stored body; `Invalid` when that cannot be read.
fn batch_item(seq: i64, stored: Option<Vec<u8>>) -> Result<BatchItem> {
    let stored = stored
        .ok_or_else(|| StoreError::Invalid(format!("outbox row {seq} has no stored body")))?;
    Ok(BatchItem {
        seq,
        body: body_codec::decode(&stored)
            .map_err(|e| StoreError::Invalid(format!("outbox row {seq}: {e}")))?,
    })
}

/// A value a batch-settling statement binds.
#[derive(Clone, Copy)]
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

impl<D: Dialect> Store for SqlStore<D>
where
    usize: ColumnIndex<DbRow<D>>,
    for<'r> i64: Type<D::DB> + Encode<'r, D::DB> + Decode<'r, D::DB>,
    for<'r> bool: Type<D::DB> + Decode<'r, D::DB>,
    for<'r> String: Type<D::DB> + Decode<'r, D::DB>,
    for<'r> &'r str: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Option<&'r str>: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Option<i64>: Type<D::DB> + Encode<'r, D::DB>,
    for<'r> Vec<u8>: Type<D::DB> + Encode<'r, D::DB> + Decode<'r, D::DB>,
{
    async fn ping(&self) -> Result<()> {
        sqlx::query(PING)
            .execute(D::DB::on_pool(self.dialect.reader()))
            .await?;
        Ok(())
    }

    async fn lease(&self, name: &str, ttl: Duration) -> Result<bool> {
        self.dialect.lease(name, ttl).await
    }

    async fn release_leases(&self) -> Result<()> {
        self.dialect.release_leases().await
    }

    async fn load_cursor(&self, key: &CursorKey) -> Result<Option<Cursor>> {
        let row = Self::keyed(LOAD_CURSOR, key)
            .fetch_optional(D::DB::on_pool(self.dialect.reader()))
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
        let mut tx = self
            .dialect
            .begin_fenced(&tenant_lease(&key.tenant))
            .await?;
        Self::keyed(INIT_CURSOR, key)
            .bind(c.coverage)
            .bind(c.t0)
            .bind(now_ms())
            .execute(D::DB::on(&mut tx))
            .await?;
        let r = Self::keyed(LOAD_CURSOR, key)
            .fetch_one(D::DB::on(&mut tx))
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
        Self::keyed(SET_CURSOR, key)
            .bind(c.coverage)
            .bind(c.t0)
            .bind(now_ms())
            .execute(D::DB::on_pool(self.dialect.writer()))
            .await?;
        Ok(())
    }

    async fn load_cursor_state(&self, key: &CursorKey) -> Result<Option<String>> {
        let row = Self::keyed(LOAD_CURSOR_STATE, key)
            .fetch_optional(D::DB::on_pool(self.dialect.reader()))
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    async fn known_ids(
        &self,
        tenant: &str,
        source: SourceKind,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        self.dialect.known_ids(tenant, source.as_str(), ids).await
    }

    async fn stored_versions(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        max: usize,
    ) -> Result<Option<crate::normalize::KnownVersions>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX - 1) + 1;
        let mut rows = sqlx::query(D::STORED_VERSIONS)
            .bind(window.since_ms)
            .bind(tenant)
            .bind(source.as_str())
            .bind(window.from_ticks)
            .bind(window.to_ticks)
            .bind(limit)
            .fetch(D::DB::on_pool(self.dialect.reader()));
        // Row by row: the rows of a large window held at once would cost more than the map.
        let mut versions = crate::normalize::KnownVersions::with_capacity(max.min(4096));
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            if versions.len() == max {
                return Ok(None);
            }
            let row = row?;
            let id: String = row.try_get(0)?;
            versions.insert(&id, row.try_get(1)?);
        }
        Ok(Some(versions))
    }

    async fn stored_version_counts(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        bucket_ticks: i64,
    ) -> Result<Vec<(i64, u64)>> {
        let rows = sqlx::query(D::STORED_VERSION_COUNTS)
            .bind(window.since_ms)
            .bind(tenant)
            .bind(source.as_str())
            .bind(window.from_ticks)
            .bind(window.to_ticks)
            .bind(bucket_ticks.max(1))
            .fetch_all(D::DB::on_pool(self.dialect.reader()))
            .await?;
        let mut counts = rows
            .iter()
            .map(|row| {
                let count: i64 = row.try_get(1)?;
                Ok((row.try_get(0)?, u64::try_from(count).unwrap_or(0)))
            })
            .collect::<Result<Vec<(i64, u64)>>>()?;
        counts.sort_unstable();
        Ok(counts)
    }

    async fn ingest(&self, mut batch: IngestBatch<'_>) -> Result<IngestCounts> {
        let tenant = batch.tenant.name.clone();
        let source = batch.source.as_str();
        let now = now_ms();
        let mut tx = self.dialect.begin_page(&tenant).await?;
        let ids: Vec<&str> = {
            let mut seen = HashSet::with_capacity(batch.items.len());
            batch
                .items
                .iter()
                .map(|i| i.native_id.as_str())
                .filter(|id| seen.insert(*id))
                .collect()
        };
        let (keys, owners) = page_links(&batch);
        self.dialect
            .surface(&mut tx, &tenant, source, &ids, &keys)
            .await?;
        let mut states = HashMap::with_capacity(ids.len());
        for row in D::load_states(&mut tx, &tenant, source, &ids).await? {
            let s = Self::alert_state(&row)?;
            states.insert(s.native_id.clone(), s);
        }
        drop(ids);
        let (related, relink) = Self::link(&mut tx, &tenant, &batch, keys, owners).await?;
        // Alerts about an email whose first forwarded version this page may queue: that version
        // waits for campaign context, and the alert is listed as wanting it.
        let wants: HashMap<String, String> = match batch.context_hold {
            // A first run's history too: an analyst triaging it asks the same questions. An
            // alert that has its context already carries it (`plan_ingest`) and does not wait.
            Some(_) => batch
                .items
                .iter()
                .filter(|i| {
                    !states
                        .get(&i.native_id)
                        .is_some_and(|p| p.forwarded || p.context.is_some())
                })
                .filter_map(|i| {
                    context_message_id(batch.source, i)
                        .map(|m| (i.native_id.clone(), m.to_string()))
                })
                .collect(),
            None => HashMap::new(),
        };
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
        let inserted = D::write_outbox(&mut tx, &tenant, plan.outbox, now).await?;
        if let Some(hold) = batch.context_hold.filter(|_| !wants.is_empty()) {
            let until = now + i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 2);
            for (s, native_id, seq) in &inserted {
                let Some(message_id) = wants.get(native_id).filter(|_| *s == batch.source) else {
                    continue;
                };
                sqlx::query(HOLD)
                    .bind(until)
                    .bind(*seq)
                    .execute(D::DB::on(&mut tx))
                    .await?;
                sqlx::query(WANT_CONTEXT)
                    .bind(tenant.as_str())
                    .bind(source)
                    .bind(native_id.as_str())
                    .bind(message_id.as_str())
                    .bind(now)
                    .execute(D::DB::on(&mut tx))
                    .await?;
            }
        }
        let (seqs, others) = last_seqs(batch.source, &plan.upserts, &inserted);
        let rows: Vec<AlertWrite> = plan
            .upserts
            .into_iter()
            .zip(seqs)
            .map(|(state, last_seq)| AlertWrite {
                stored: states.contains_key(&state.native_id),
                state,
                last_seq,
            })
            .collect();
        let new_alerts = rows.iter().filter(|r| !r.stored).count();
        D::write_alerts(&mut tx, &tenant, source, rows, now).await?;
        for (s, native_id, seq) in others {
            sqlx::query(SET_LAST_SEQ)
                .bind(seq)
                .bind(tenant.as_str())
                .bind(s.as_str())
                .bind(native_id.as_str())
                .execute(D::DB::on(&mut tx))
                .await?;
        }
        let mut counts = plan.counts;
        counts.quarantined = 0;
        for item in &batch.quarantine {
            let done = sqlx::query(QUARANTINE)
                .bind(tenant.as_str())
                .bind(source)
                .bind(item.native_id.as_deref())
                .bind(item.reason.as_str())
                .bind(item.raw.as_str())
                .bind(item.raw_hash().as_str())
                .bind(now)
                .bind(item.list.as_str())
                .execute(D::DB::on(&mut tx))
                .await?;
            counts.quarantined += D::DB::rows_affected(&done);
        }
        for r in &batch.retried {
            let q = match &r.still_unusable {
                None => sqlx::query(RETRIED_PARSED).bind(r.id).bind(tenant.as_str()),
                Some(reason) => sqlx::query(RETRIED_UNUSABLE)
                    .bind(r.id)
                    .bind(tenant.as_str())
                    .bind(reason.as_str()),
            };
            q.execute(D::DB::on(&mut tx)).await?;
        }
        if let Some((key, b)) = batch.advance {
            // Only under the generation this poll read: see `CursorGenerations`.
            let done = sqlx::query(D::ADVANCE_CURSOR)
                .bind(b)
                .bind(now)
                .bind(key.tenant.as_str())
                .bind(key.source.as_str())
                .bind(key.list.as_str())
                .bind(batch.source_state)
                .bind(self.cursor_generations.expected(key))
                .execute(D::DB::on(&mut tx))
                .await?;
            if D::DB::rows_affected(&done) == 0 {
                skipped_advance(key);
            }
        }
        self.dialect.settle_page(&mut tx, new_alerts).await?;
        tx.commit().await?;
        Ok(counts)
    }

    async fn undelivered(&self, tenant: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(UNDELIVERED)
            .bind(tenant)
            .fetch_one(D::DB::on_pool(self.dialect.reader()))
            .await?;
        Ok(n as u64)
    }

    async fn next_open_batch(&self, destination: &str, tenant: &str) -> Result<Option<Batch>> {
        let row = sqlx::query(NEXT_OPEN_BATCH)
            .bind(destination)
            .bind(tenant)
            .bind(now_ms())
            .fetch_optional(D::DB::on_pool(self.dialect.writer()))
            .await?;
        row.as_ref().map(Self::batch_from_row).transpose()
    }

    async fn claim_batch(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<Batch>> {
        let claimed = self.claim_committed(destination, tenant, limits, false);
        Ok(claimed.await?.map(|(batch, _)| batch))
    }

    async fn claim_batch_read(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<(Batch, Result<Vec<BatchItem>>)>> {
        let claimed = self.claim_committed(destination, tenant, limits, true);
        let Some((batch, mut stored)) = claimed.await? else {
            return Ok(None);
        };
        // As `batch_items` gives them, and decoded outside the transaction.
        stored.sort_unstable_by_key(|(seq, _)| *seq);
        let items = stored
            .into_iter()
            .map(|(seq, body)| batch_item(seq, body))
            .collect();
        Ok(Some((batch, items)))
    }

    async fn batch_items(&self, batch_id: i64) -> Result<Vec<BatchItem>> {
        let rows = sqlx::query(D::BATCH_ITEMS)
            .bind(batch_id)
            .fetch_all(D::DB::on_pool(self.dialect.reader()))
            .await?;
        rows.iter()
            .map(|r| batch_item(r.try_get(0)?, r.try_get(1)?))
            .collect()
    }

    async fn mark_delivered(&self, batch: &Batch) -> Result<()> {
        self.delivering(batch, now_ms()).await?.commit().await?;
        Ok(())
    }

    async fn deliver_and_claim(&self, batch: &Batch, limits: BatchLimits) -> Result<Option<Batch>> {
        let now = now_ms();
        let mut tx = self.delivering(batch, now).await?;
        // Another open batch of the tenant goes first, by the forwarder's own rules.
        let open = sqlx::query(NEXT_OPEN_BATCH)
            .bind(batch.destination.as_str())
            .bind(batch.tenant.as_str())
            .bind(now)
            .fetch_optional(D::DB::on(&mut tx))
            .await?;
        let next = match open {
            Some(_) => None,
            None => Self::claim_in(&mut tx, &batch.destination, &batch.tenant, limits).await?,
        };
        tx.commit().await?;
        Ok(next)
    }

    async fn mark_retry(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        use Bind::{Int, Text};
        let binds = [
            Int(next_attempt_at),
            Text(error),
            Int(now_ms()),
            Int(batch.id),
        ];
        self.settle(batch, &[(RETRY_LATER, &binds)]).await
    }

    async fn split_batch(&self, batch: &Batch) -> Result<()> {
        let mut tx = self
            .dialect
            .begin_fenced(&destination_lease(&batch.destination))
            .await?;
        let seqs: Vec<i64> = sqlx::query_scalar(BATCH_SEQS)
            .bind(batch.id)
            .fetch_all(D::DB::on(&mut tx))
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
            let child: i64 = sqlx::query_scalar(NEW_CHILD)
                .bind(batch.tenant.as_str())
                .bind(batch.destination.as_str())
                .bind(uuid::Uuid::new_v4().to_string().as_str())
                .bind(batch.root_id)
                .bind(batch.id)
                .bind(half[0])
                .bind(half.len() as i64)
                .bind(now)
                .fetch_one(D::DB::on(&mut tx))
                .await?;
            D::for_seqs(&mut tx, "UPDATE outbox SET batch_id = ", Some(child), half).await?;
        }
        sqlx::query(SPLIT)
            .bind(now)
            .bind(batch.id)
            .execute(D::DB::on(&mut tx))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn defer_single(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        use Bind::{Int, Text};
        let defer = [
            Text(error),
            Int(now_ms()),
            Int(batch.id),
            Int(next_attempt_at),
        ];
        self.settle(
            batch,
            &[(DEFER, &defer), (ROOT_PROBED, &[Int(batch.root_id)])],
        )
        .await
    }

    async fn adopt_open_batches(&self, destination: &str, tenant: &str) -> Result<u64> {
        // Under the new destination's lease: the batches become its to send and settle.
        let mut tx = self
            .dialect
            .begin_fenced(&destination_lease(destination))
            .await?;
        let moved = sqlx::query(ADOPT)
            .bind(destination)
            .bind(tenant)
            .bind(now_ms())
            .execute(D::DB::on(&mut tx))
            .await?;
        tx.commit().await?;
        Ok(D::DB::rows_affected(&moved))
    }

    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<()> {
        use Bind::{Int, Text};
        self.settle(
            batch,
            &[
                (DEAD_ROWS, &[Text(reason), Int(batch.id)]),
                (DEAD_BATCH, &[Text(reason), Int(now_ms()), Int(batch.id)]),
            ],
        )
        .await
    }

    async fn root_facts(&self, root_id: i64) -> Result<RootFacts> {
        let row = sqlx::query(ROOT_FACTS)
            .bind(root_id)
            .fetch_optional(D::DB::on_pool(self.dialect.writer()))
            .await?;
        Ok(match row {
            Some(r) => RootFacts {
                accepted: r.try_get(0)?,
                probes: r.try_get(1)?,
            },
            None => RootFacts::default(),
        })
    }

    async fn queue_depth(&self, tenant: &str) -> Result<QueueDepth> {
        let r = sqlx::query(QUEUE_DEPTH)
            .bind(tenant)
            .fetch_one(D::DB::on_pool(self.dialect.reader()))
            .await?;
        let oldest: Option<i64> = r.try_get(1)?;
        Ok(QueueDepth {
            pending: r.try_get::<i64, _>(0)? as u64,
            oldest_pending_age_s: oldest.map(|t| (now_ms() - t).max(0) / 1000),
        })
    }

    async fn queue_status(&self, tenant: &str) -> Result<QueueStatus> {
        let depth = self.queue_depth(tenant).await?;
        let r = sqlx::query(QUEUE_COUNTS)
            .bind(tenant)
            .fetch_one(D::DB::on_pool(self.dialect.reader()))
            .await?;
        Ok(QueueStatus {
            pending: depth.pending,
            oldest_pending_age_s: depth.oldest_pending_age_s,
            dead_letters: r.try_get::<i64, _>(0)? as u64,
            quarantined: r.try_get::<i64, _>(1)? as u64,
            delivered: r.try_get::<i64, _>(2)? as u64,
        })
    }

    async fn dead_letters(&self, tenant: Option<&str>) -> Result<Vec<DeadLetter>> {
        let rows = self.listed(D::DEAD_LETTERS, tenant).await?;
        rows.iter()
            .map(|r| {
                // Event ids are not stored: each body carries its own.
                let stored: Option<Vec<u8>> = r.try_get(5)?;
                let event_id = stored
                    .and_then(|b| body_codec::decode(&b).ok())
                    .and_then(|json| envelope::event_id_of(&json))
                    .unwrap_or_default();
                Ok(DeadLetter {
                    seq: r.try_get(0)?,
                    tenant: r.try_get(1)?,
                    source: r.try_get(2)?,
                    native_id: r.try_get(3)?,
                    version: r.try_get(4)?,
                    event_id,
                    reason: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn retry_dead_letters(&self, tenant: Option<&str>, seqs: &[i64]) -> Result<u64> {
        self.dialect.retry_dead_letters(tenant, seqs).await
    }

    async fn replay_as_new(&self, f: &ReplayFilter) -> Result<u64> {
        let mut tx = self.dialect.begin().await?;
        let rows = Self::filtered(D::DELIVERED_FOR_REPLAY, f)
            .fetch_all(D::DB::on(&mut tx))
            .await?;
        // One number per replay run (its start, in ms): unique without counting earlier ones.
        let run = now_ms();
        let mut by_tenant: HashMap<String, Vec<OutboxRow>> = HashMap::new();
        // A version and its earlier replays share a base, so they would be queued under one
        // new event id: the first (oldest) is sent. Event ids are not unique in the store.
        let mut taken: HashSet<(String, String, String, String)> = HashSet::new();
        for r in &rows {
            let (tenant, source, native_id, version): (String, String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            let Some(source) = SourceKind::parse(&source) else {
                continue;
            };
            let base = replay_base(&version);
            let key = (
                tenant.clone(),
                source.as_str().to_string(),
                native_id.clone(),
                base.to_string(),
            );
            if !taken.insert(key) {
                continue;
            }
            let stored: Vec<u8> = r.try_get(4)?;
            if let Some(row) = replay_row(source, &native_id, base, run, &stored) {
                by_tenant.entry(tenant).or_default().push(row);
            }
        }
        let mut queued = 0;
        for (tenant, rows) in by_tenant {
            queued += D::write_outbox(&mut tx, &tenant, rows, run).await?.len() as u64;
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn requeue_delivered(&self, f: &ReplayFilter) -> Result<u64> {
        let done = Self::filtered(D::REQUEUE_DELIVERED, f)
            .execute(D::DB::on_pool(self.dialect.writer()))
            .await?;
        Ok(D::DB::rows_affected(&done))
    }

    async fn quarantined(&self, tenant: Option<&str>) -> Result<Vec<Quarantined>> {
        let rows = self.listed(D::QUARANTINED, tenant).await?;
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

    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        self.dialect.request_quarantine_retry(tenant, ids).await
    }

    async fn quarantine_retries(
        &self,
        tenant: &str,
        source: SourceKind,
        limit: i64,
    ) -> Result<Vec<QuarantineRetry>> {
        let rows = sqlx::query(D::QUARANTINE_RETRIES)
            .bind(tenant)
            .bind(source.as_str())
            .bind(limit)
            .fetch_all(D::DB::on_pool(self.dialect.reader()))
            .await?;
        rows.iter()
            .map(|r| Ok(from_row!(QuarantineRetry, r, id, list, raw)))
            .collect()
    }

    async fn context_wanted(
        &self,
        tenant: &str,
        after: Option<&ContextWanted>,
        limit: i64,
    ) -> Result<Vec<ContextWanted>> {
        let rows = sqlx::query(CONTEXT_WANTED)
            .bind(tenant)
            .bind(after.map_or(i64::MIN, |a| a.created_at))
            .bind(after.map_or("", |a| a.source.as_str()))
            .bind(after.map_or("", |a| a.native_id.as_str()))
            .bind(limit)
            .fetch_all(D::DB::on_pool(self.dialect.reader()))
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let source: String = r.try_get(0)?;
            // A source this build does not know is left for the expiry.
            let Some(source) = SourceKind::parse(&source) else {
                continue;
            };
            out.push(ContextWanted {
                source,
                native_id: r.try_get(1)?,
                message_id: r.try_get(2)?,
                created_at: r.try_get(3)?,
            });
        }
        Ok(out)
    }

    async fn attach_context(
        &self,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        context: &[u8],
        observed_at: &str,
    ) -> Result<ContextOutcome> {
        let name = tenant.name.as_str();
        let mut tx = self.dialect.begin_page(name).await?;
        self.dialect
            .surface(&mut tx, name, source.as_str(), &[native_id], &[])
            .await?;
        let outcome =
            Self::enrich(&mut tx, tenant, source, native_id, context, observed_at).await?;
        sqlx::query(WANTED_DONE)
            .bind(name)
            .bind(source.as_str())
            .bind(native_id)
            .execute(D::DB::on(&mut tx))
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn expire_context_wanted(&self, tenant: &str, before: i64) -> Result<u64> {
        let done = sqlx::query(EXPIRE_WANTED)
            .bind(tenant)
            .bind(before)
            .execute(D::DB::on_pool(self.dialect.writer()))
            .await?;
        Ok(D::DB::rows_affected(&done))
    }

    async fn cursors(&self, tenant: Option<&str>) -> Result<Vec<StoredCursor>> {
        let rows = self.listed(D::CURSORS, tenant).await?;
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
        loop {
            let n = self
                .dialect
                .prune_bodies(bodies_before, PRUNE_CHUNK)
                .await?;
            total += n;
            if n < PRUNE_CHUNK as u64 {
                break;
            }
        }
        for statement in D::PRUNE_ALERTS {
            loop {
                let done = sqlx::query(*statement)
                    .bind(state_before)
                    .bind(PRUNE_CHUNK)
                    .execute(D::DB::on_pool(self.dialect.writer()))
                    .await?;
                let n = D::DB::rows_affected(&done);
                total += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        sqlx::query(PRUNE_BATCHES)
            .bind(bodies_before)
            .execute(D::DB::on_pool(self.dialect.writer()))
            .await?;
        Ok(total)
    }
}
