//! The production Postgres store: a page is one transaction of a few set-based statements
//! (`UNNEST` arrays, `ON CONFLICT`), bodies as `bytea`, and leases with fencing so several
//! replicas can share one database (design §5, §10).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use super::*;

pub struct PgStore {
    pool: PgPool,
    /// Who this replica is in the `leases` table.
    holder: String,
    /// The epoch of each lease this replica believes it holds; the database has the last word.
    held: Mutex<HashMap<String, i64>>,
    cursor_generations: CursorGenerations,
}

type Tx = sqlx::Transaction<'static, Postgres>;

impl PgStore {
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
        Ok(Self {
            pool,
            holder: holder_id(),
            held: Mutex::new(HashMap::new()),
            cursor_generations: CursorGenerations::default(),
        })
    }

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
    async fn fenced(&self, lease: &str) -> Result<Tx> {
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
    async fn lock_tenant_pages(tx: &mut sqlx::PgConnection, tenant: &str) -> Result<()> {
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

    async fn load_states(
        tx: &mut sqlx::PgConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, AlertState>> {
        // One key lookup per id (OFFSET 0 keeps the planner from turning it into a join it
        // would plan on stale statistics as a scan of the whole table).
        let rows = sqlx::query(
            "SELECT a.native_id, a.latest, a.state_hash, a.revision, a.forwarded, a.field_hashes \
             FROM UNNEST($3::text[]) AS u(id) CROSS JOIN LATERAL ( \
               SELECT * FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = u.id OFFSET 0) a",
        )
        .bind(tenant)
        .bind(source)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut states = HashMap::with_capacity(rows.len());
        for row in &rows {
            let s = AlertState {
                native_id: row.try_get(0)?,
                latest: row.try_get(1)?,
                state_hash: row.try_get(2)?,
                revision: row.try_get(3)?,
                forwarded: row.try_get(4)?,
                field_hashes: row.try_get(5)?,
            };
            states.insert(s.native_id.clone(), s);
        }
        Ok(states)
    }

    /// Records the page's link keys in two statements and returns, per item, what it is linked
    /// to, plus the stored items of other sources that gained a link now.
    async fn link(
        tx: &mut sqlx::PgConnection,
        tenant: &str,
        batch: &IngestBatch<'_>,
    ) -> Result<(HashMap<String, Vec<LinkRef>>, Vec<(SourceKind, String)>)> {
        let mut keys: Vec<String> = Vec::new();
        let mut owners: Vec<String> = Vec::new();
        for item in &batch.items {
            for key in link_keys(batch.source, item) {
                keys.push(key);
                owners.push(item.native_id.clone());
            }
        }
        let mut related: HashMap<String, Vec<LinkRef>> = HashMap::new();
        let mut relink: Vec<(SourceKind, String)> = Vec::new();
        if keys.is_empty() {
            return Ok((related, relink));
        }
        let source = batch.source.as_str();
        let inserted: HashSet<(String, String)> = sqlx::query(
            "INSERT INTO links (tenant, key, source, native_id) \
             SELECT $1, k, $2, n FROM UNNEST($3::text[], $4::text[]) AS u(k, n) \
             ON CONFLICT DO NOTHING RETURNING key, native_id",
        )
        .bind(tenant)
        .bind(source)
        .bind(&keys)
        .bind(&owners)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_>>()?;
        let mut others: HashMap<String, Vec<(SourceKind, String, bool)>> = HashMap::new();
        for r in sqlx::query(
            "SELECT l.key, l.source, l.native_id, COALESCE(a.forwarded, FALSE) FROM (SELECT DISTINCT k FROM UNNEST($2::text[]) AS u(k)) u \
             CROSS JOIN LATERAL ( \
               SELECT key, source, native_id FROM links WHERE tenant = $1 AND key = u.k AND source <> $3 OFFSET 0) l \
             LEFT JOIN alerts a ON a.tenant = $1 AND a.source = l.source AND a.native_id = l.native_id",
        )
        .bind(tenant)
        .bind(&keys)
        .bind(source)
        .fetch_all(&mut *tx)
        .await?
        {
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
        tx: &mut sqlx::PgConnection,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        observed_at: &str,
        page: (SourceKind, &HashSet<String>),
    ) -> Result<Option<OutboxRow>> {
        let row = sqlx::query(
            "SELECT latest, state_hash, revision, forwarded, field_hashes, link_count, last_seq FROM alerts \
             WHERE tenant = $1 AND source = $2 AND native_id = $3",
        )
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
            forwarded: row.try_get(3)?,
            field_hashes: row.try_get(4)?,
        };
        let link_count: i64 = row.try_get(5)?;
        let last_seq: Option<i64> = row.try_get(6)?;
        let (true, Some(last_seq)) = (state.forwarded, last_seq) else {
            // Never forwarded: its first forwarded version will carry the link.
            return Ok(None);
        };
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM outbox_body WHERE seq = $1")
                .bind(last_seq)
                .fetch_optional(&mut *tx)
                .await?;
        // Past retention the body is gone: the link then shows only on the other side.
        let Some(json) = stored.and_then(|b| body_codec::decode(&b).ok()) else {
            return Ok(None);
        };
        let mut refs: Vec<LinkRef> = sqlx::query(
            "SELECT DISTINCT l2.source, l2.native_id, COALESCE(a.forwarded, FALSE) FROM links l1 \
             JOIN links l2 ON l2.tenant = l1.tenant AND l2.key = l1.key \
             LEFT JOIN alerts a ON a.tenant = l2.tenant AND a.source = l2.source AND a.native_id = l2.native_id \
             WHERE l1.tenant = $1 AND l1.source = $2 AND l1.native_id = $3 \
             AND NOT (l2.source = l1.source AND l2.native_id = l1.native_id)",
        )
        .bind(&tenant.name)
        .bind(source.as_str())
        .bind(native_id)
        .fetch_all(&mut *tx)
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
        sqlx::query(
            "UPDATE alerts SET revision = $1, link_count = link_count + 1, last_change = $2 \
             WHERE tenant = $3 AND source = $4 AND native_id = $5",
        )
        .bind(next.revision)
        .bind(now_ms())
        .bind(&tenant.name)
        .bind(source.as_str())
        .bind(native_id)
        .execute(&mut *tx)
        .await?;
        Ok(Some(row))
    }

    async fn write_alerts(
        tx: &mut sqlx::PgConnection,
        tenant: &str,
        source: &str,
        upserts: Vec<AlertState>,
        last_seqs: Vec<Option<i64>>,
        now: i64,
    ) -> Result<()> {
        if upserts.is_empty() {
            return Ok(());
        }
        let n = upserts.len();
        let (mut ids, mut latest, mut hashes, mut revisions, mut forwarded, mut fields) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for s in upserts {
            ids.push(s.native_id);
            latest.push(s.latest);
            hashes.push(s.state_hash);
            revisions.push(s.revision);
            forwarded.push(s.forwarded);
            fields.push(s.field_hashes);
        }
        sqlx::query(
            "INSERT INTO alerts (tenant, source, native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq, first_seen, last_change) \
             SELECT $1, $2, u.native_id, u.latest, u.state_hash, u.revision, u.forwarded, u.field_hashes, u.last_seq, $9, $9 \
             FROM UNNEST($3::text[], $4::int8[], $5::bytea[], $6::int8[], $7::bool[], $8::bytea[], $10::int8[]) \
               AS u(native_id, latest, state_hash, revision, forwarded, field_hashes, last_seq) \
             ON CONFLICT (tenant, source, native_id) DO UPDATE SET latest = excluded.latest, \
               state_hash = excluded.state_hash, revision = excluded.revision, forwarded = excluded.forwarded, \
               field_hashes = excluded.field_hashes, last_change = excluded.last_change, \
               last_seq = COALESCE(excluded.last_seq, alerts.last_seq)",
        )
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
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Appends versions and their bodies in one statement; a version already queued (the same
    /// event id) is skipped with its body.
    /// Returns the rows inserted: (source, native id, seq).
    async fn write_outbox(
        tx: &mut sqlx::PgConnection,
        tenant: &str,
        rows: Vec<OutboxRow>,
        now: i64,
    ) -> Result<Vec<QueuedRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let (
            mut event_ids,
            mut sources,
            mut natives,
            mut versions,
            mut historical,
            mut sizes,
            mut bodies,
        ) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in rows {
            event_ids.push(r.event_id);
            sources.push(r.source.as_str());
            natives.push(r.native_id);
            versions.push(r.version);
            historical.push(r.historical);
            sizes.push(r.json_len as i64);
            bodies.push(r.stored);
        }
        // WITH ORDINALITY keeps seq in page order, so delivery follows Microsoft's order.
        sqlx::query(
            "WITH u AS ( \
               SELECT * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::int8[], $9::bytea[]) \
                 WITH ORDINALITY AS u(event_id, source, native_id, version, historical, size, body, ord) \
             ), ins AS ( \
               INSERT INTO outbox (event_id, tenant, source, native_id, version, historical, size, state, created_at) \
               SELECT event_id, $1, source, native_id, version, historical, size, 0, $2 FROM u ORDER BY ord \
               ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id, source, native_id \
             ), bodies AS ( \
               INSERT INTO outbox_body (seq, body) SELECT ins.seq, u.body FROM ins JOIN u USING (event_id) \
             ) \
             SELECT source, native_id, seq FROM ins",
        )
        .bind(tenant)
        .bind(now)
        .bind(event_ids)
        .bind(sources)
        .bind(natives)
        .bind(versions)
        .bind(historical)
        .bind(sizes)
        .bind(bodies)
        .fetch_all(&mut *tx)
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

fn batch_from_row(row: &PgRow) -> Result<Batch> {
    // Columns in the order `next_open_batch` selects them.
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

impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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

    async fn load_cursor(&self, key: &CursorKey) -> Result<Option<Cursor>> {
        let row = sqlx::query(
            "SELECT coverage, t0, generation FROM cursors WHERE tenant = $1 AND source = $2 AND list = $3",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .fetch_optional(&self.pool)
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
        let mut tx = self.fenced(&tenant_lease(&key.tenant)).await?;
        sqlx::query(
            "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
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
            "SELECT coverage, t0, generation FROM cursors WHERE tenant = $1 AND source = $2 AND list = $3",
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
            "INSERT INTO cursors (tenant, source, list, coverage, t0, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, source, list) DO UPDATE SET coverage = excluded.coverage, t0 = excluded.t0, state = NULL, updated_at = excluded.updated_at, generation = cursors.generation + 1",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .bind(c.coverage)
        .bind(c.t0)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_cursor_state(&self, key: &CursorKey) -> Result<Option<String>> {
        let state: Option<Option<String>> = sqlx::query_scalar(
            "SELECT state FROM cursors WHERE tenant = $1 AND source = $2 AND list = $3",
        )
        .bind(&key.tenant)
        .bind(key.source.as_str())
        .bind(&key.list)
        .fetch_optional(&self.pool)
        .await?;
        Ok(state.flatten())
    }

    async fn known_ids(
        &self,
        tenant: &str,
        source: SourceKind,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT native_id FROM alerts WHERE tenant = $1 AND source = $2 AND native_id = ANY($3)",
        )
        .bind(tenant)
        .bind(source.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn ingest(&self, mut batch: IngestBatch<'_>) -> Result<IngestCounts> {
        let tenant = batch.tenant.name.clone();
        let source = batch.source.as_str();
        let now = now_ms();
        let mut tx = self.fenced(&tenant_lease(&tenant)).await?;
        Self::lock_tenant_pages(&mut tx, &tenant).await?;
        let ids: Vec<&str> = {
            let mut seen = HashSet::with_capacity(batch.items.len());
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
        let inserted = Self::write_outbox(&mut tx, &tenant, plan.outbox, now).await?;
        let (seqs, others) = last_seqs(batch.source, &plan.upserts, &inserted);
        Self::write_alerts(&mut tx, &tenant, source, plan.upserts, seqs, now).await?;
        for (s, native_id, seq) in others {
            sqlx::query(
                "UPDATE alerts SET last_seq = $1 WHERE tenant = $2 AND source = $3 AND native_id = $4",
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
            counts.quarantined += sqlx::query(
                "INSERT INTO quarantine (tenant, source, native_id, reason, raw, raw_hash, created_at, list) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
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
                None => "DELETE FROM quarantine WHERE id = $1 AND tenant = $2",
                Some(_) => "UPDATE quarantine SET retry_requested = FALSE, attempts = attempts + 1, reason = $3 WHERE id = $1 AND tenant = $2",
            };
            let mut q = sqlx::query(statement).bind(r.id).bind(&tenant);
            if let Some(reason) = &r.still_unusable {
                q = q.bind(reason);
            }
            q.execute(&mut *tx).await?;
        }
        if let Some((key, b)) = batch.advance {
            // Only under the generation this poll read: see `CursorGenerations`.
            let moved = sqlx::query(
                "UPDATE cursors SET coverage = GREATEST(coverage, $1), updated_at = $2, state = COALESCE($6, state) \
                 WHERE tenant = $3 AND source = $4 AND list = $5 AND ($7::bigint IS NULL OR generation = $7)",
            )
            .bind(b)
            .bind(now)
            .bind(&key.tenant)
            .bind(key.source.as_str())
            .bind(&key.list)
            .bind(batch.source_state)
            .bind(self.cursor_generations.expected(key))
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
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state IN (0, 1)")
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }

    async fn next_open_batch(&self, destination: &str, tenant: &str) -> Result<Option<Batch>> {
        let row = sqlx::query(
            "SELECT id, tenant, destination, key, root_id, attempts, next_attempt_at, rows, deferred FROM batches \
             WHERE destination = $1 AND tenant = $2 AND state = 'open' \
             ORDER BY (deferred AND next_attempt_at > $3), root_id, deferred, min_seq LIMIT 1",
        )
        .bind(destination)
        .bind(tenant)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn claim_batch(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<Batch>> {
        let mut tx = self.fenced(&destination_lease(destination)).await?;
        let rows = sqlx::query(
            "SELECT seq, size FROM outbox WHERE tenant = $1 AND state = 0 ORDER BY historical, seq LIMIT $2",
        )
        .bind(tenant)
        .bind(limits.max_rows as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO batches (tenant, destination, key, state, root_id, min_seq, rows, created_at, updated_at) \
             VALUES ($1, $2, $3, 'open', 0, $4, $5, $6, $6) RETURNING id",
        )
        .bind(tenant)
        .bind(destination)
        .bind(&key)
        .bind(min_seq)
        .bind(seqs.len() as i64)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET root_id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE outbox SET state = 1, batch_id = $1 WHERE seq = ANY($2)")
            .bind(id)
            .bind(&seqs)
            .execute(&mut *tx)
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
        let rows = sqlx::query(
            // A body per row by its key: a join planned on stale statistics hashed the whole
            // body table for 100 rows.
            "SELECT o.seq, o.event_id, (SELECT b.body FROM outbox_body b WHERE b.seq = o.seq) \
             FROM outbox o WHERE o.batch_id = $1 ORDER BY o.seq",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let stored: Option<Vec<u8>> = r.try_get(2)?;
                let stored = stored.ok_or_else(|| {
                    StoreError::Invalid(format!("outbox row {seq} has no stored body"))
                })?;
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
        let mut tx = self.fenced(&destination_lease(&batch.destination)).await?;
        sqlx::query(
            "UPDATE outbox SET state = 2, delivered_at = $1 WHERE batch_id = $2 AND state = 1",
        )
        .bind(now)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET state = 'delivered', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE batches SET accepted = TRUE WHERE id = $1")
            .bind(batch.root_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_retry(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        let mut tx = self.fenced(&destination_lease(&batch.destination)).await?;
        sqlx::query(
            "UPDATE batches SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(now_ms())
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn split_batch(&self, batch: &Batch) -> Result<()> {
        let mut tx = self.fenced(&destination_lease(&batch.destination)).await?;
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE batch_id = $1 ORDER BY seq")
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
            let child: i64 = sqlx::query_scalar(
                "INSERT INTO batches (tenant, destination, key, state, root_id, parent_id, min_seq, rows, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $8) RETURNING id",
            )
            .bind(&batch.tenant)
            .bind(&batch.destination)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(batch.root_id)
            .bind(batch.id)
            .bind(half[0])
            .bind(half.len() as i64)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("UPDATE outbox SET batch_id = $1 WHERE seq = ANY($2)")
                .bind(child)
                .bind(half)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE batches SET state = 'split', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn defer_single(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        let mut tx = self.fenced(&destination_lease(&batch.destination)).await?;
        sqlx::query(
            "UPDATE batches SET deferred = TRUE, attempts = attempts + 1, next_attempt_at = $4, last_error = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(now_ms())
        .bind(batch.id)
        .bind(next_attempt_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET probes = probes + 1 WHERE id = $1")
            .bind(batch.root_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn adopt_open_batches(&self, destination: &str, tenant: &str) -> Result<u64> {
        // Under the new destination's lease: the batches become its to send and settle.
        let mut tx = self.fenced(&destination_lease(destination)).await?;
        let moved = sqlx::query(
            "UPDATE batches SET destination = $1, updated_at = $3 WHERE tenant = $2 AND state = 'open' AND destination <> $1",
        )
        .bind(destination)
        .bind(tenant)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(moved.rows_affected())
    }

    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.fenced(&destination_lease(&batch.destination)).await?;
        sqlx::query(
            "UPDATE outbox SET state = 3, dead_reason = $1 WHERE batch_id = $2 AND state = 1",
        )
        .bind(reason)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE batches SET state = 'dead', last_error = $1, updated_at = $2 WHERE id = $3",
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
        let row = sqlx::query("SELECT accepted, probes FROM batches WHERE id = $1")
            .bind(root_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => RootFacts {
                accepted: r.try_get(0)?,
                probes: r.try_get(1)?,
            },
            None => RootFacts::default(),
        })
    }

    async fn queue_status(&self, tenant: &str) -> Result<QueueStatus> {
        let r = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state IN (0, 1)), \
               (SELECT MIN(created_at) FROM outbox WHERE tenant = $1 AND state IN (0, 1)), \
               (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state = 3), \
               (SELECT COUNT(*) FROM quarantine WHERE tenant = $1), \
               (SELECT COUNT(*) FROM outbox WHERE tenant = $1 AND state = 2)",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
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
        let rows = sqlx::query(
            "SELECT seq, tenant, source, native_id, version, event_id, COALESCE(dead_reason, '') FROM outbox \
             WHERE state = 3 AND ($1::text IS NULL OR tenant = $1) ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
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
        let n = sqlx::query(
            "UPDATE outbox SET state = 0, batch_id = NULL, dead_reason = NULL WHERE state = 3 \
             AND ($1::text IS NULL OR tenant = $1) AND (cardinality($2::int8[]) = 0 OR seq = ANY($2))",
        )
        .bind(tenant)
        .bind(seqs)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn replay_as_new(&self, f: &ReplayFilter) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT o.tenant, o.source, o.native_id, o.version, b.body FROM outbox o JOIN outbox_body b ON b.seq = o.seq WHERE o.state = 2 \
             AND ($1::text IS NULL OR o.tenant = $1) AND ($2::text IS NULL OR o.source = $2) \
             AND ($3::text IS NULL OR o.native_id = $3) AND ($4::int8 IS NULL OR o.created_at >= $4) \
             AND ($5::int8 IS NULL OR o.created_at < $5) ORDER BY o.seq",
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
            queued += Self::write_outbox(&mut tx, &tenant, rows, run).await?.len() as u64;
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn requeue_delivered(&self, f: &ReplayFilter) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE outbox SET state = 0, batch_id = NULL, delivered_at = NULL WHERE state = 2 \
             AND ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR source = $2) \
             AND ($3::text IS NULL OR native_id = $3) AND ($4::int8 IS NULL OR created_at >= $4) \
             AND ($5::int8 IS NULL OR created_at < $5)",
        )
        .bind(f.tenant.as_deref())
        .bind(f.source.map(|s| s.as_str()))
        .bind(f.native_id.as_deref())
        .bind(f.since_ms)
        .bind(f.until_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE quarantine SET retry_requested = TRUE WHERE ($1::text IS NULL OR tenant = $1) \
             AND (cardinality($2::int8[]) = 0 OR id = ANY($2))",
        )
        .bind(tenant)
        .bind(ids)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn quarantine_retries(
        &self,
        tenant: &str,
        source: SourceKind,
        limit: i64,
    ) -> Result<Vec<QuarantineRetry>> {
        let rows = sqlx::query(
            "SELECT id, list, raw FROM quarantine WHERE tenant = $1 AND source = $2 AND retry_requested \
             ORDER BY id LIMIT $3",
        )
        .bind(tenant)
        .bind(source.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(from_row!(QuarantineRetry, r, id, list, raw)))
            .collect()
    }

    async fn quarantined(&self, tenant: Option<&str>) -> Result<Vec<Quarantined>> {
        let rows = sqlx::query(
            "SELECT id, tenant, source, native_id, reason, created_at, retry_requested, attempts FROM quarantine \
             WHERE ($1::text IS NULL OR tenant = $1) ORDER BY id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
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
        let rows = sqlx::query(
            "SELECT tenant, source, list, coverage, t0 FROM cursors \
             WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, source, list",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
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
        // Chunks keep each transaction short; `SKIP LOCKED` lets replicas prune side by side.
        loop {
            let n = sqlx::query(
                "WITH gone AS ( \
                   DELETE FROM outbox WHERE seq IN ( \
                     SELECT seq FROM outbox WHERE state = 2 AND delivered_at < $1 LIMIT 5000 FOR UPDATE SKIP LOCKED) \
                   RETURNING seq) \
                 DELETE FROM outbox_body WHERE seq IN (SELECT seq FROM gone)",
            )
            .bind(bodies_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < 5000 {
                break;
            }
        }
        loop {
            let n = sqlx::query(
                "DELETE FROM alerts WHERE (tenant, source, native_id) IN ( \
                   SELECT tenant, source, native_id FROM alerts WHERE last_change < $1 LIMIT 5000 FOR UPDATE SKIP LOCKED)",
            )
            .bind(state_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < 5000 {
                break;
            }
        }
        sqlx::query(
            "DELETE FROM batches WHERE state IN ('delivered', 'split') AND updated_at < $1",
        )
        .bind(bodies_before)
        .execute(&self.pool)
        .await?;
        Ok(total)
    }
}
