//! SQLite's dedup state in two levels (issue 12, migration 0010 says why). The recent level
//! (`alerts`, `links`) is where `sql.rs`'s shared statements read and write; every
//! [`MERGE_EVERY`] new alerts it is merged, in hash order, into the archive (`alert_archive`,
//! `link_archive`: rows in arrival order under 8-byte hash indexes) and emptied.
//!
//! The recent level is kept closed under links: an alert there has all its link rows there, and
//! a key there has all its rows, and their owners' alerts, there. So before a page (or an
//! alert's context) touches anything, [`Levels::surface`] brings it back from the archive with
//! everything linked to it, and the shared statements never need to look below. In-memory Bloom
//! filters of the archive's hashes (~1.2 bytes an entry) let a page of new alerts skip the
//! archive without reading it. Only this process writes the file (the lock file), and the
//! filters only ever gain hashes, so a filter can be stale only towards "maybe there": it costs
//! a lookup, never a missed alert.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::Result;

/// New or returning alerts the recent level takes before it is merged: its B-trees (~5 MB) then
/// stay about the size of the writer's page cache, and a merge of this many rows in hash order
/// touches each leaf of the archive's hash index about once (docs/benchmarks.md, session 18).
pub const MERGE_EVERY: usize = 15_000;

/// Hashes bound per statement: far below SQLite's 32,766 variables.
const HASHES_PER_STATEMENT: usize = 256;

/// Rows written before the levels existed, moved to the archive per transaction when the store
/// opens (a one-time upgrade).
const UPGRADE_CHUNK: i64 = 5_000;

const ALERT_COLUMNS: &str = "tenant, source, native_id, latest, state_hash, revision, link_count, \
     forwarded, field_hashes, first_seen, last_change, last_seq, context_count, context, hash";
const LINK_COLUMNS: &str = "tenant, key, source, native_id, key_hash, owner_hash";

/// The hash of an alert, which is also the owner hash of its link rows. Stored in the archive:
/// never change it.
pub fn alert_hash(tenant: &str, source: &str, native_id: &str) -> i64 {
    hash_of(&[tenant, source, native_id])
}

/// The hash of a link key within its tenant. Stored in the archive: never change it.
pub fn key_hash(tenant: &str, key: &str) -> i64 {
    hash_of(&[tenant, "", key])
}

fn hash_of(parts: &[&str; 3]) -> i64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        h.update(part.as_bytes());
        // A separator no name holds keeps ("ab", "c") and ("a", "bc") apart.
        h.update(&[0]);
    }
    // The column is a signed 64-bit INTEGER: the same bits.
    h.digest() as i64
}

/// A Bloom filter over hashes that are already well mixed: ten bits and seven probes an entry
/// (about 1% false positives), sized for twice the entries it was built with.
struct Filter {
    bits: Vec<u64>,
    entries: usize,
    capacity: usize,
}

const PROBES: u64 = 7;
const BITS_PER_ENTRY: usize = 10;
/// The smallest filter (20 KB): an empty or new store pays next to nothing.
const MIN_CAPACITY: usize = 16_384;

impl Filter {
    fn for_entries(entries: usize) -> Filter {
        let capacity = entries.saturating_mul(2).max(MIN_CAPACITY);
        let words = (capacity * BITS_PER_ENTRY).div_ceil(64);
        Filter {
            bits: vec![0; words],
            entries: 0,
            capacity,
        }
    }

    /// The (word, bit) pairs of `hash` in a filter of `words` words: double hashing on the two
    /// halves of one well-mixed 64-bit hash.
    fn probes(words: usize, hash: i64) -> impl Iterator<Item = (usize, u64)> {
        let h = hash as u64;
        let step = h.rotate_left(32) | 1;
        let m = (words as u64) * 64;
        (0..PROBES).map(move |i| {
            let bit = h.wrapping_add(i.wrapping_mul(step)) % m;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, hash: i64) {
        for (word, mask) in Self::probes(self.bits.len(), hash) {
            self.bits[word] |= mask;
        }
        self.entries += 1;
    }

    fn may_contain(&self, hash: i64) -> bool {
        Self::probes(self.bits.len(), hash).all(|(word, mask)| self.bits[word] & mask != 0)
    }

    /// Past its capacity the false positives climb: time to rebuild it larger.
    fn is_full(&self) -> bool {
        self.entries > self.capacity
    }
}

/// Which archive hash a filter covers: the statement that lists them all.
#[derive(Clone, Copy)]
enum Covered {
    Alerts,
    Keys,
    Owners,
}

impl Covered {
    const ALL: [Covered; 3] = [Covered::Alerts, Covered::Keys, Covered::Owners];

    fn listing(self) -> &'static str {
        match self {
            Covered::Alerts => "SELECT hash FROM alert_archive",
            Covered::Keys => "SELECT key_hash FROM link_archive",
            Covered::Owners => "SELECT owner_hash FROM link_archive",
        }
    }
}

struct State {
    filters: [Filter; 3],
    /// Alerts added to the recent level since it was last merged.
    since_merge: usize,
}

/// The levels' in-memory part: the archive's filters and when to merge next.
pub struct Levels {
    merge_every: usize,
    state: Mutex<State>,
}

impl Levels {
    /// Finishes an upgrade if one is due, then reads the archive's hashes into the filters.
    pub async fn open(writer: &SqlitePool, merge_every: usize) -> Result<Levels> {
        let mut conn = writer.acquire().await?;
        upgrade(&mut conn).await?;
        let mut filters = Vec::with_capacity(3);
        for covered in Covered::ALL {
            filters.push(build_filter(&mut conn, covered).await?);
        }
        let since_merge: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
            .fetch_one(&mut *conn)
            .await?;
        let [alerts, keys, owners]: [Filter; 3] = filters
            .try_into()
            .map_err(|_| super::StoreError::Invalid("dedup filters: three expected".into()))?;
        Ok(Levels {
            merge_every: merge_every.max(1),
            state: Mutex::new(State {
                filters: [alerts, keys, owners],
                since_merge: usize::try_from(since_merge).unwrap_or(0),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is hashes and a counter: whatever a panicking holder left is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hashes of `todo` not seen yet that the archive may hold, marking them seen.
    fn candidates(
        &self,
        covered: Covered,
        todo: &mut Vec<i64>,
        seen: &mut HashSet<i64>,
    ) -> Vec<i64> {
        let state = self.state();
        let filter = &state.filters[covered as usize];
        todo.drain(..)
            .filter(|h| seen.insert(*h) && filter.may_contain(*h))
            .collect()
    }

    /// Brings back from the archive the alerts `ids` of (tenant, source), the link rows under
    /// `keys`, and everything linked to them, so the recent level holds all a page of them may
    /// read or change.
    pub async fn surface(
        &self,
        conn: &mut SqliteConnection,
        tenant: &str,
        source: &str,
        ids: &[&str],
        keys: &[String],
    ) -> Result<()> {
        let mut alerts: Vec<i64> = ids
            .iter()
            .map(|id| alert_hash(tenant, source, id))
            .collect();
        let mut keyed: Vec<i64> = keys.iter().map(|k| key_hash(tenant, k)).collect();
        let mut owned: Vec<i64> = Vec::new();
        let mut seen: [HashSet<i64>; 3] = Default::default();
        let mut returned = 0;
        loop {
            let found_alerts = self.candidates(Covered::Alerts, &mut alerts, &mut seen[0]);
            let found_keys = self.candidates(Covered::Keys, &mut keyed, &mut seen[1]);
            let found_owners = self.candidates(Covered::Owners, &mut owned, &mut seen[2]);
            if found_alerts.is_empty() && found_keys.is_empty() && found_owners.is_empty() {
                break;
            }
            // An alert brought back brings its link rows; a link row brings its owner's alert,
            // the owner's other link rows, and every row under its key.
            for hash in promote_alerts(conn, &found_alerts).await? {
                owned.push(hash);
                returned += 1;
            }
            for column in ["key_hash", "owner_hash"] {
                let found = if column == "key_hash" {
                    &found_keys
                } else {
                    &found_owners
                };
                for (key, owner) in promote_links(conn, column, found).await? {
                    keyed.push(key);
                    alerts.push(owner);
                    owned.push(owner);
                }
            }
        }
        self.state().since_merge += returned;
        Ok(())
    }

    /// Counts the page's new alerts, and merges the recent level into the archive once it holds
    /// enough. Runs inside the page's transaction, so a merge commits with its page or not at all.
    pub async fn settle(&self, conn: &mut SqliteConnection, new_alerts: usize) -> Result<()> {
        {
            let mut state = self.state();
            state.since_merge += new_alerts;
            if state.since_merge < self.merge_every {
                return Ok(());
            }
        }
        let alerts: Vec<i64> = sqlx::query_scalar("SELECT hash FROM alerts")
            .fetch_all(&mut *conn)
            .await?;
        let links: Vec<(i64, i64)> = sqlx::query_as("SELECT key_hash, owner_hash FROM links")
            .fetch_all(&mut *conn)
            .await?;
        // `OR FAIL`: a multi-row statement that may abort keeps a statement journal of every page
        // it touches, here every leaf of the archive's hash index (sqlite.rs's module doc).
        for statement in [
            format!("INSERT OR FAIL INTO alert_archive ({ALERT_COLUMNS}) SELECT {ALERT_COLUMNS} FROM alerts ORDER BY hash"),
            "DELETE FROM alerts".to_string(),
            format!("INSERT OR FAIL INTO link_archive ({LINK_COLUMNS}) SELECT {LINK_COLUMNS} FROM links ORDER BY key_hash"),
            "DELETE FROM links".to_string(),
        ] {
            // Built from this module's constants only.
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
        }
        // Before the commit: should it fail, the filters only say "maybe" of a few more hashes.
        let full: Vec<Covered> = {
            let mut state = self.state();
            state.since_merge = 0;
            for h in alerts {
                state.filters[Covered::Alerts as usize].insert(h);
            }
            for (key, owner) in links {
                state.filters[Covered::Keys as usize].insert(key);
                state.filters[Covered::Owners as usize].insert(owner);
            }
            Covered::ALL
                .into_iter()
                .filter(|c| state.filters[*c as usize].is_full())
                .collect()
        };
        for covered in full {
            let larger = build_filter(conn, covered).await?;
            self.state().filters[covered as usize] = larger;
        }
        Ok(())
    }
}

/// A filter of every hash `covered` lists in the archive, read as a stream: a large archive's
/// hashes are never held at once.
async fn build_filter(conn: &mut SqliteConnection, covered: Covered) -> Result<Filter> {
    let table = match covered {
        Covered::Alerts => "alert_archive",
        Covered::Keys | Covered::Owners => "link_archive",
    };
    // A table name of this module's.
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut *conn)
            .await?;
    let mut filter = Filter::for_entries(usize::try_from(rows).unwrap_or(0));
    let mut hashes = sqlx::query_scalar::<_, i64>(covered.listing()).fetch(&mut *conn);
    while let Some(hash) = std::future::poll_fn(|cx| hashes.as_mut().poll_next(cx)).await {
        filter.insert(hash?);
    }
    Ok(filter)
}

/// Moves the archived alerts with these hashes to the recent level; the hashes of those moved.
async fn promote_alerts(conn: &mut SqliteConnection, hashes: &[i64]) -> Result<Vec<i64>> {
    let mut moved = Vec::new();
    for chunk in hashes.chunks(HASHES_PER_STATEMENT) {
        // `OR IGNORE`: should an alert somehow be in both levels, the recent row is the newer.
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT OR IGNORE INTO alerts ({ALERT_COLUMNS}) SELECT {ALERT_COLUMNS} FROM alert_archive WHERE hash IN ("
        ));
        in_list(&mut q, chunk);
        q.push(" RETURNING hash");
        for row in q.build().fetch_all(&mut *conn).await? {
            moved.push(row.try_get(0)?);
        }
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("DELETE FROM alert_archive WHERE hash IN (");
        in_list(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    Ok(moved)
}

/// Moves the archived link rows whose `column` (`key_hash` or `owner_hash`) is one of `hashes`
/// to the recent level; `(key_hash, owner_hash)` of those moved.
async fn promote_links(
    conn: &mut SqliteConnection,
    column: &'static str,
    hashes: &[i64],
) -> Result<Vec<(i64, i64)>> {
    let mut moved = Vec::new();
    for chunk in hashes.chunks(HASHES_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT OR IGNORE INTO links ({LINK_COLUMNS}) SELECT {LINK_COLUMNS} FROM link_archive WHERE {column} IN ("
        ));
        in_list(&mut q, chunk);
        q.push(" RETURNING key_hash, owner_hash");
        for row in q.build().fetch_all(&mut *conn).await? {
            moved.push((row.try_get(0)?, row.try_get(1)?));
        }
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("DELETE FROM link_archive WHERE {column} IN ("));
        in_list(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    Ok(moved)
}

/// Closes an `IN (` with the binds of `hashes`.
fn in_list(q: &mut QueryBuilder<Sqlite>, hashes: &[i64]) {
    let mut list = q.separated(", ");
    for h in hashes {
        list.push_bind(*h);
    }
    q.push(")");
}

/// Moves rows written before the levels existed (no hash yet) to the archive, computing their
/// hashes, a chunk per transaction: a crash part-way leaves the rest for the next open, and no
/// page runs until it is done.
async fn upgrade(conn: &mut SqliteConnection) -> Result<()> {
    let mut moved = 0u64;
    loop {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let alerts: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT tenant, source, native_id FROM alerts WHERE hash IS NULL LIMIT $1",
        )
        .bind(UPGRADE_CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        let links: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT tenant, key, source, native_id FROM links WHERE key_hash IS NULL LIMIT $1",
        )
        .bind(UPGRADE_CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        if alerts.is_empty() && links.is_empty() {
            break;
        }
        for (tenant, source, native_id) in &alerts {
            sqlx::query(
                "UPDATE alerts SET hash = $1 WHERE tenant = $2 AND source = $3 AND native_id = $4",
            )
            .bind(alert_hash(tenant, source, native_id))
            .bind(tenant)
            .bind(source)
            .bind(native_id)
            .execute(&mut *tx)
            .await?;
        }
        for (tenant, key, source, native_id) in &links {
            sqlx::query(
                "UPDATE links SET key_hash = $1, owner_hash = $2 \
                 WHERE tenant = $3 AND key = $4 AND source = $5 AND native_id = $6",
            )
            .bind(key_hash(tenant, key))
            .bind(alert_hash(tenant, source, native_id))
            .bind(tenant)
            .bind(key)
            .bind(source)
            .bind(native_id)
            .execute(&mut *tx)
            .await?;
        }
        for statement in [
            format!("INSERT OR FAIL INTO alert_archive ({ALERT_COLUMNS}) SELECT {ALERT_COLUMNS} FROM alerts WHERE hash IS NOT NULL"),
            "DELETE FROM alerts WHERE hash IS NOT NULL".to_string(),
            format!("INSERT OR FAIL INTO link_archive ({LINK_COLUMNS}) SELECT {LINK_COLUMNS} FROM links WHERE key_hash IS NOT NULL"),
            "DELETE FROM links WHERE key_hash IS NOT NULL".to_string(),
        ] {
            // Built from this module's constants only.
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        moved += (alerts.len() + links.len()) as u64;
    }
    if moved > 0 {
        tracing::info!(
            rows = moved,
            "moved the dedup state written before this version to its archive level (once)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_never_forgets_and_rarely_imagines() {
        let mut f = Filter::for_entries(10_000);
        let inserted: Vec<i64> = (0..20_000u32)
            .map(|i| alert_hash("t", "alerts", &i.to_string()))
            .collect();
        for h in &inserted {
            f.insert(*h);
        }
        assert!(inserted.iter().all(|h| f.may_contain(*h)));
        assert!(!f.is_full());
        let imagined = (20_000..120_000u32)
            .filter(|i| f.may_contain(alert_hash("t", "alerts", &i.to_string())))
            .count();
        // ~1% expected at capacity; 2% leaves room for chance.
        assert!(imagined < 2_000, "{imagined} false positives in 100,000");
        f.insert(1);
        for _ in 0..20_000 {
            f.insert(2);
        }
        assert!(f.is_full());
    }

    #[test]
    fn hashes_keep_their_parts_apart_and_never_change() {
        assert_ne!(alert_hash("ab", "c", "d"), alert_hash("a", "bc", "d"));
        assert_ne!(alert_hash("t", "alerts", "x"), key_hash("t", "x"));
        // Stored in every archive: a change here would lose every archived alert.
        assert_eq!(alert_hash("contoso", "alerts", "da1"), -1563906557976089898);
        assert_eq!(
            key_hash("contoso", "msg:m1@fabrikam.example"),
            6829608270577404806
        );
    }
}
