//! SQLite's dedup state in two levels (issue 12, migration 0010 says why). The recent level
//! (`alerts`, `links`) is where `sql.rs`'s shared statements read and write; every
//! [`MERGE_EVERY`] new alerts it is merged into the archive (`alert_archive`, `link_archive`) as
//! one run, and emptied. Rows are appended in arrival order, and the archive's indexes are keyed
//! by (run, hash): a run's entries go in after every earlier run's, in hash order, so a merge
//! appends to its indexes and costs the same however large the archive is. Finding a hash then
//! needs its run: each run has Bloom filters of its hashes, and one filter over the whole
//! archive keeps the common case, a hash the archive does not hold, to one check.
//!
//! The recent level is kept closed under links: an alert there has all its link rows there, and
//! a key there has all its rows, and their owners' alerts, there. So before a page (or an
//! alert's context) touches anything, [`Levels::surface`] brings it back from the archive with
//! everything linked to it, and the shared statements never need to look below. The filters
//! (about 6 bytes an archived alert at the drain bench's link rate, kept in files rather than
//! memory: `filters.rs`) let a page of new alerts skip the archive without reading it. Only
//! this process writes the store (the lock file), and the filters only ever gain hashes, and
//! gain them before the merge that archives them commits, so a filter can be stale only towards
//! "maybe there": it costs a lookup, never a missed alert.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use super::filters::{FilterDir, RunSpace, StoredFilter};

use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::Row;

use super::{Result, StoreError};

/// New or returning alerts the recent level takes before it is merged: its B-trees (~5 MB) then
/// stay about the size of the writer's page cache (docs/benchmarks.md, session 18).
pub const MERGE_EVERY: usize = 15_000;

/// Rows written before the levels existed, moved to the archive per transaction when the store
/// opens (a one-time upgrade).
const UPGRADE_CHUNK: i64 = 5_000;

const ALERT_COLUMNS: &str = "tenant, source, native_id, latest, state_hash, revision, link_count, \
     forwarded, field_hashes, first_seen, last_change, last_seq, context_count, context, hash";
/// The archive keeps `first_seen` as its distance from `last_change`: zero, and so no bytes at
/// all, for the many alerts never updated (7 bytes a version, issue 12's disk target).
const ARCHIVED_COLUMNS: &str = "tenant, source, native_id, latest, state_hash, revision, \
     link_count, forwarded, field_hashes, first_seen_ago, last_change, last_seq, context_count, \
     context, hash";
const RECENT_AS_ARCHIVED: &str = "tenant, source, native_id, latest, state_hash, revision, \
     link_count, forwarded, field_hashes, last_change - first_seen, last_change, last_seq, \
     context_count, context, hash";
const ARCHIVED_AS_RECENT: &str = "tenant, source, native_id, latest, state_hash, revision, \
     link_count, forwarded, field_hashes, last_change - first_seen_ago, last_change, last_seq, \
     context_count, context, hash";
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

/// Which archive hash a filter covers.
#[derive(Clone, Copy, PartialEq)]
enum Covered {
    Alerts,
    Keys,
    Owners,
}

impl Covered {
    const ALL: [Covered; 3] = [Covered::Alerts, Covered::Keys, Covered::Owners];

    /// `run, hash` of every archived entry, in run order (the covering index).
    fn listing(self) -> &'static str {
        match self {
            Covered::Alerts => "SELECT run, hash FROM alert_archive ORDER BY run",
            Covered::Keys => "SELECT run, key_hash FROM link_archive ORDER BY run",
            Covered::Owners => "SELECT run, owner_hash FROM link_archive ORDER BY run",
        }
    }

    /// Owners are looked up only for what a page brought back, rarely: their runs' filters
    /// are enough, and a filter of the whole archive would cost memory for nothing.
    fn has_archive_filter(self) -> bool {
        self != Covered::Owners
    }
}

/// One merge's entries in the archive.
struct Run {
    id: i64,
    filters: [StoredFilter; 3],
}

struct State {
    /// Over the whole archive, by `Covered` (none for the owners).
    archive: [Option<StoredFilter>; 3],
    /// Oldest first.
    runs: Vec<Run>,
    run_space: RunSpace,
    next_run: i64,
    /// Alerts added to the recent level since it was last merged.
    since_merge: usize,
}

/// Archived hashes by the run that may hold them.
type ByRun = std::collections::BTreeMap<i64, Vec<i64>>;

impl State {
    /// Adds each of `hashes` to each run of `by_run` whose filter may hold it.
    fn runs_of(&self, covered: Covered, hashes: &[i64], by_run: &mut ByRun) -> std::io::Result<()> {
        let c = covered as usize;
        let maybe: Vec<i64> = match &self.archive[c] {
            Some(archive) => hashes
                .iter()
                .zip(archive.may_contain_each(hashes)?)
                .filter_map(|(hash, maybe)| maybe.then_some(*hash))
                .collect(),
            None => hashes.to_vec(),
        };
        if maybe.is_empty() {
            return Ok(());
        }
        for run in &self.runs {
            let found = run.filters[c].may_contain_each(&maybe)?;
            for (hash, _) in maybe.iter().zip(found).filter(|(_, found)| *found) {
                by_run.entry(run.id).or_default().push(*hash);
            }
        }
        Ok(())
    }
}

/// The levels' in-memory part: the archive's filters and when to merge next.
pub struct Levels {
    merge_every: usize,
    dir: FilterDir,
    state: Mutex<State>,
}

impl Levels {
    /// Finishes an upgrade if one is due, then reads the archive's hashes into filters written
    /// in `dir`.
    pub async fn open(writer: &SqlitePool, merge_every: usize, dir: FilterDir) -> Result<Levels> {
        let mut conn = writer.acquire().await?;
        upgrade(&mut conn).await?;
        let io = |e: std::io::Error| StoreError::Invalid(dir.explain(&e));
        let mut run_space = dir.run_space().map_err(io)?;
        let mut archive: [Option<StoredFilter>; 3] = [None, None, None];
        // Each run's filters, by `Covered`; a run lists no links when it has none.
        let mut by_run: std::collections::BTreeMap<i64, [Option<StoredFilter>; 3]> =
            Default::default();
        for covered in Covered::ALL {
            let (whole, runs) =
                read_filters(&mut conn, &dir, covered, Some(&mut run_space)).await?;
            archive[covered as usize] = whole;
            for (id, filter) in runs {
                by_run.entry(id).or_default()[covered as usize] = Some(filter);
            }
        }
        let mut runs = Vec::with_capacity(by_run.len());
        for (id, filters) in by_run {
            let [alerts, keys, owners] = filters;
            let mut empty = || run_space.add(&[]).map_err(io);
            let filters = [
                alerts.map_or_else(&mut empty, Ok)?,
                keys.map_or_else(&mut empty, Ok)?,
                owners.map_or_else(&mut empty, Ok)?,
            ];
            runs.push(Run { id, filters });
        }
        let since_merge: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
            .fetch_one(&mut *conn)
            .await?;
        let next_run = runs.last().map_or(1, |r| r.id + 1);
        Ok(Levels {
            merge_every: merge_every.max(1),
            state: Mutex::new(State {
                archive,
                runs,
                run_space,
                next_run,
                since_merge: usize::try_from(since_merge).unwrap_or(0),
            }),
            dir,
        })
    }

    fn io_error(&self, e: std::io::Error) -> StoreError {
        StoreError::Invalid(self.dir.explain(&e))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is hashes and a counter: whatever a panicking holder left is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hashes of `todo` not seen yet that the archive may hold, by the runs that may hold
    /// them, marking them seen.
    fn candidates(
        &self,
        covered: Covered,
        todo: &mut Vec<i64>,
        seen: &mut HashSet<i64>,
    ) -> Result<ByRun> {
        let fresh: Vec<i64> = todo.drain(..).filter(|h| seen.insert(*h)).collect();
        let mut by_run = ByRun::new();
        if !fresh.is_empty() {
            let state = self.state();
            state
                .runs_of(covered, &fresh, &mut by_run)
                .map_err(|e| self.io_error(e))?;
        }
        Ok(by_run)
    }

    /// The alerts `ids` of (tenant, source), by the archive runs that may hold them.
    pub fn archived_alerts(
        &self,
        tenant: &str,
        source: &str,
        ids: &[&str],
    ) -> Result<Vec<(i64, Vec<i64>)>> {
        let hashes: Vec<i64> = ids
            .iter()
            .map(|id| alert_hash(tenant, source, id))
            .collect();
        let mut by_run = ByRun::new();
        self.state()
            .runs_of(Covered::Alerts, &hashes, &mut by_run)
            .map_err(|e| self.io_error(e))?;
        Ok(by_run.into_iter().collect())
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
            let found_alerts = self.candidates(Covered::Alerts, &mut alerts, &mut seen[0])?;
            let found_keys = self.candidates(Covered::Keys, &mut keyed, &mut seen[1])?;
            let found_owners = self.candidates(Covered::Owners, &mut owned, &mut seen[2])?;
            if found_alerts.is_empty() && found_keys.is_empty() && found_owners.is_empty() {
                break;
            }
            // An alert brought back brings its link rows; a link row brings its owner's alert,
            // the owner's other link rows, and every row under its key.
            for hash in promote_alerts(conn, &found_alerts).await? {
                owned.push(hash);
                returned += 1;
            }
            for (column, found) in [("key_hash", &found_keys), ("owner_hash", &found_owners)] {
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

    /// Counts the page's new alerts, and merges the recent level into the archive as a new run
    /// once it holds enough. Runs inside the page's transaction, so a merge commits with its
    /// page or not at all.
    pub async fn settle(&self, conn: &mut SqliteConnection, new_alerts: usize) -> Result<()> {
        let run = {
            let mut state = self.state();
            state.since_merge += new_alerts;
            if state.since_merge < self.merge_every {
                return Ok(());
            }
            state.next_run
        };
        let alerts: Vec<i64> = sqlx::query_scalar("SELECT hash FROM alerts")
            .fetch_all(&mut *conn)
            .await?;
        let links: Vec<(i64, i64)> = sqlx::query_as("SELECT key_hash, owner_hash FROM links")
            .fetch_all(&mut *conn)
            .await?;
        archive_recent(conn, run, false).await?;
        // Before the commit: should it fail, the filters only say "maybe" of a few more hashes.
        let (keys, owners): (Vec<i64>, Vec<i64>) = links.into_iter().unzip();
        let full: Vec<Covered> = {
            let mut state = self.state();
            state.since_merge = 0;
            state.next_run = run + 1;
            let io = |e| self.io_error(e);
            let filters = [
                state.run_space.add(&alerts).map_err(io)?,
                state.run_space.add(&keys).map_err(io)?,
                state.run_space.add(&owners).map_err(io)?,
            ];
            for (covered, hashes) in [(Covered::Alerts, &alerts), (Covered::Keys, &keys)] {
                if let Some(archive) = state.archive[covered as usize].as_mut() {
                    archive.insert_all(hashes).map_err(io)?;
                }
            }
            state.runs.push(Run { id: run, filters });
            Covered::ALL
                .into_iter()
                .filter(|c| {
                    state.archive[*c as usize]
                        .as_ref()
                        .is_some_and(StoredFilter::is_full)
                })
                .collect()
        };
        for covered in full {
            let (larger, _) = read_filters(conn, &self.dir, covered, None).await?;
            self.state().archive[covered as usize] = larger;
        }
        Ok(())
    }
}

/// Moves the recent level's rows (only those hashed already, when `hashed_only`: an upgrade's
/// chunk) to the archive as run `run`, in hash order: the run's index entries are appended
/// after every earlier run's.
async fn archive_recent(conn: &mut SqliteConnection, run: i64, hashed_only: bool) -> Result<()> {
    let (alerts_where, links_where) = if hashed_only {
        ("WHERE hash IS NOT NULL", "WHERE key_hash IS NOT NULL")
    } else {
        ("", "")
    };
    sqlx::query("INSERT INTO archive_runs (run, merged_at) VALUES ($1, $2)")
        .bind(run)
        .bind(super::now_ms())
        .execute(&mut *conn)
        .await?;
    // `OR FAIL`: a multi-row statement that may abort keeps a statement journal of every page
    // it touches (sqlite.rs's module doc).
    for statement in [
        format!(
            "INSERT OR FAIL INTO alert_archive ({ARCHIVED_COLUMNS}, run) \
             SELECT {RECENT_AS_ARCHIVED}, {run} FROM alerts {alerts_where} ORDER BY hash"
        ),
        format!("DELETE FROM alerts {alerts_where}"),
        format!(
            "INSERT OR FAIL INTO link_archive ({LINK_COLUMNS}, run) \
             SELECT {LINK_COLUMNS}, {run} FROM links {links_where} ORDER BY key_hash"
        ),
        format!("DELETE FROM links {links_where}"),
    ] {
        // Built from this module's constants and an integer.
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Hashes inserted into a filter of the whole archive at a time while it is read: a large
/// archive's hashes are never held at once.
const ARCHIVE_READ_CHUNK: usize = 65_536;

/// In one read of the archive's index for `covered`: the filter of the whole archive (when
/// `covered` has one), and each run's filter, written to `runs` when it is given, a run's
/// hashes held at a time.
async fn read_filters(
    conn: &mut SqliteConnection,
    dir: &FilterDir,
    covered: Covered,
    mut runs: Option<&mut RunSpace>,
) -> Result<(Option<StoredFilter>, Vec<(i64, StoredFilter)>)> {
    let io = |e: std::io::Error| StoreError::Invalid(dir.explain(&e));
    let mut archive = None;
    if covered.has_archive_filter() {
        let table = match covered {
            Covered::Alerts => "alert_archive",
            Covered::Keys | Covered::Owners => "link_archive",
        };
        // A table name of this module's.
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *conn)
                .await?;
        archive = Some(
            dir.archive_filter(usize::try_from(rows).unwrap_or(0))
                .map_err(io)?,
        );
    }
    let mut filters = Vec::new();
    let mut run: Option<(i64, Vec<i64>)> = None;
    let mut pending: Vec<i64> = Vec::new();
    let mut entries = sqlx::query_as::<_, (i64, i64)>(covered.listing()).fetch(&mut *conn);
    while let Some(entry) = std::future::poll_fn(|cx| entries.as_mut().poll_next(cx)).await {
        let (id, hash) = entry?;
        if let Some(filter) = archive.as_mut() {
            pending.push(hash);
            if pending.len() == ARCHIVE_READ_CHUNK {
                filter.insert_all(&pending).map_err(io)?;
                pending.clear();
            }
        }
        let Some(space) = runs.as_deref_mut() else {
            continue;
        };
        match &mut run {
            Some((current, hashes)) if *current == id => hashes.push(hash),
            _ => {
                if let Some((done, hashes)) = run.replace((id, vec![hash])) {
                    filters.push((done, space.add(&hashes).map_err(io)?));
                }
            }
        }
    }
    if let Some(filter) = archive.as_mut() {
        filter.insert_all(&pending).map_err(io)?;
    }
    if let (Some((id, hashes)), Some(space)) = (run, runs) {
        filters.push((id, space.add(&hashes).map_err(io)?));
    }
    Ok((archive, filters))
}

/// Moves the archived alerts with these hashes, in these runs, to the recent level; the hashes
/// of those moved.
async fn promote_alerts(conn: &mut SqliteConnection, by_run: &ByRun) -> Result<Vec<i64>> {
    // `OR IGNORE`: should an alert somehow be in both levels, the recent row is the newer.
    let insert = format!(
        "INSERT OR IGNORE INTO alerts ({ALERT_COLUMNS}) SELECT {ARCHIVED_AS_RECENT} FROM alert_archive"
    );
    let rows = promote(conn, &insert, "alert_archive", "hash", "hash", by_run).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Moves the archived link rows whose `column` (`key_hash` or `owner_hash`) is one of these
/// hashes, in these runs, to the recent level; `(key_hash, owner_hash)` of those moved.
async fn promote_links(
    conn: &mut SqliteConnection,
    column: &'static str,
    by_run: &ByRun,
) -> Result<Vec<(i64, i64)>> {
    let insert = format!(
        "INSERT OR IGNORE INTO links ({LINK_COLUMNS}) SELECT {LINK_COLUMNS} FROM link_archive"
    );
    let rows = promote(
        conn,
        &insert,
        "link_archive",
        column,
        "key_hash, owner_hash",
        by_run,
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Moves the rows of `archive` whose `column` is one of these hashes, in these runs, to the
/// recent level through `insert` (an `INSERT … SELECT … FROM {archive}`, its `WHERE` to come);
/// the columns `returning` names, of the rows moved.
async fn promote(
    conn: &mut SqliteConnection,
    insert: &str,
    archive: &str,
    column: &str,
    returning: &str,
    by_run: &ByRun,
) -> Result<Vec<SqliteRow>> {
    let mut moved = Vec::new();
    let within = format!("WHERE run = $1 AND {column} IN (SELECT value FROM json_each($2))");
    for (run, hashes) in by_run {
        let listed = json_list(hashes);
        // Built from this module's constants.
        let statement = format!("{insert} {within} RETURNING {returning}");
        moved.extend(
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(*run)
                .bind(listed.as_str())
                .fetch_all(&mut *conn)
                .await?,
        );
        let statement = format!("DELETE FROM {archive} {within}");
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(*run)
            .bind(listed.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved)
}

/// `values` as a JSON array, for `IN (SELECT value FROM json_each(?))`: one statement text
/// whatever the list's length. A list of binds made a new text per length, and sqlx keeps up
/// to 100 texts prepared per connection, so lists of many lengths pushed out the statements
/// every page runs (docs/benchmarks.md, session 19).
pub fn json_list(values: &[i64]) -> String {
    use std::fmt::Write as _;
    let mut listed = String::with_capacity(values.len() * 12 + 2);
    listed.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            listed.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(listed, "{v}");
    }
    listed.push(']');
    listed
}

/// Moves rows written before the levels existed (no hash yet) to the archive, computing their
/// hashes, a run per transaction: a crash part-way leaves the rest for the next open, and no
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
        if moved == 0 {
            // Once per store, and as long as the store is large: say why the start waits.
            tracing::info!(
                "moving the dedup state written before this version to its archive level, \
                 a chunk per transaction; the daemon starts when this is done (once per store)"
            );
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
        let run: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(run) FROM alert_archive), 0), \
             COALESCE((SELECT MAX(run) FROM link_archive), 0)) + 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        archive_recent(&mut tx, run, true).await?;
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

    /// An archive of more hashes than one chunk of the whole-archive filter's read, in three
    /// runs: what an open reads back finds each hash, and in its own run.
    #[tokio::test]
    async fn an_open_reads_every_archived_hash_into_the_filters() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("store.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let pool = SqlitePool::connect(&url).await.unwrap();
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .unwrap();
        let count = ARCHIVE_READ_CHUNK + 4_000;
        let ids: Vec<String> = (0..count).map(|i| format!("da{i}")).collect();
        let hashes: Vec<i64> = ids.iter().map(|id| alert_hash("t", "alerts", id)).collect();
        let run_of = |at: usize| (at % 3 + 1) as i64;
        sqlx::query(
            "INSERT INTO alert_archive (tenant, source, native_id, latest, revision, link_count, \
             forwarded, field_hashes, first_seen_ago, last_change, context_count, hash, run) \
             SELECT 't', 'alerts', 'da' || key, 0, 0, 0, 1, x'', 0, 0, 0, value, key % 3 + 1 \
             FROM json_each($1)",
        )
        .bind(json_list(&hashes))
        .execute(&pool)
        .await
        .unwrap();
        let levels = Levels::open(&pool, MERGE_EVERY, FilterDir::beside(&db))
            .await
            .unwrap();
        let sample: Vec<&str> = ids.iter().step_by(97).map(String::as_str).collect();
        let found = levels.archived_alerts("t", "alerts", &sample).unwrap();
        for (at, id) in ids.iter().enumerate().step_by(97) {
            let hash = alert_hash("t", "alerts", id);
            let runs: Vec<i64> = found
                .iter()
                .filter(|(_, hashes)| hashes.contains(&hash))
                .map(|(run, _)| *run)
                .collect();
            // Its own run always; another only by a false positive, rarely.
            assert!(
                runs.contains(&run_of(at)),
                "{id} not found in run {}",
                run_of(at)
            );
        }
        let strays: usize = found.iter().map(|(_, h)| h.len()).sum::<usize>() - sample.len();
        assert!(strays * 20 < sample.len(), "{strays} false positives");
        // Ids the archive does not hold are mostly turned away by the whole-archive filter.
        let absent: Vec<String> = (0..5_000).map(|i| format!("other{i}")).collect();
        let absent: Vec<&str> = absent.iter().map(String::as_str).collect();
        let imagined: usize = levels
            .archived_alerts("t", "alerts", &absent)
            .unwrap()
            .iter()
            .map(|(_, h)| h.len())
            .sum();
        assert!(imagined < 250, "{imagined} of 5,000 absent ids imagined");

        // A merge of more alerts than the whole-archive filter has room for (it was sized for
        // half as many again as the archive held): that filter is read again, larger, and the
        // merged alerts are found beside the older ones.
        let more: Vec<String> = (0..count / 2 + 1_000).map(|i| format!("db{i}")).collect();
        let more_hashes: Vec<i64> = more
            .iter()
            .map(|id| alert_hash("t", "alerts", id))
            .collect();
        sqlx::query(
            "INSERT INTO alerts (tenant, source, native_id, latest, field_hashes, first_seen, \
             last_change, hash) SELECT 't', 'alerts', 'db' || key, 0, x'', 0, 0, value \
             FROM json_each($1)",
        )
        .bind(json_list(&more_hashes))
        .execute(&pool)
        .await
        .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        levels.settle(&mut conn, more.len()).await.unwrap();
        let archive_capacity = |levels: &Levels| {
            levels.state().archive[Covered::Alerts as usize]
                .as_ref()
                .map(StoredFilter::capacity)
        };
        assert!(archive_capacity(&levels) > Some(count + more.len()));
        let merged: Vec<&str> = more.iter().step_by(31).map(String::as_str).collect();
        let found = levels.archived_alerts("t", "alerts", &merged).unwrap();
        let newest = found.last().map(|(run, _)| *run);
        assert_eq!(newest, Some(4), "the merge is run 4");
        let in_newest = found.last().map_or(0, |(_, h)| h.len());
        assert!(
            in_newest >= merged.len(),
            "{in_newest} of {} found",
            merged.len()
        );
        let older = levels.archived_alerts("t", "alerts", &sample).unwrap();
        let older_found: usize = older.iter().map(|(_, h)| h.len()).sum();
        assert!(older_found >= sample.len());
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
