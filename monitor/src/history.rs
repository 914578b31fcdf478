//! The offender history: one row per offending prefix (first seen, last seen, peak rate,
//! requests dropped, times banned) in an embedded SQLite database, so `monitor offenders`
//! answers across restarts.
//!
//! Bounded by construction, because an attacker chooses how many addresses it floods from:
//! - sightings are merged in memory ([`Pending`], at most [`MAX_PENDING`] keys) and written
//!   in one transaction per flush (the daemon flushes once a second, or sooner when the
//!   buffer is full);
//! - each flush then deletes rows last seen before the retention period, and, above the row
//!   cap, the least important rows: fewest requests dropped first, and among equals the
//!   longest unseen. A spoofed flood from a million addresses that each lose a request or two
//!   therefore churns among its own rows, and the sources that lost the most stay;
//! - while the table is at its cap, a new key enters only if it has dropped more requests
//!   than the least important row (ties keep the rows already there): the history remembers
//!   which keys it holds (a 64-bit keyed hash each), so a flood of new addresses that each
//!   lose a request or two costs a hash lookup per address, not a database write and a
//!   delete. Keys already held are always updated;
//! - the file does not grow past the pages the capped rows need (SQLite reuses freed pages;
//!   the write-ahead log is truncated after checkpoints).
//!
//! `PRAGMA user_version` holds the number of [`MIGRATIONS`] applied. A database written before
//! the schema was versioned reads as version 0 and its table is adopted as it is.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher as _, RandomState},
    path::Path,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

/// Rows older than this (by last sighting) are deleted.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Row cap. The flood test measured 8.1 MB on disk at 50,000 rows (write-ahead log included).
pub const DEFAULT_MAX_ROWS: u64 = 200_000;
/// Distinct keys buffered between flushes; a full buffer flushes at once.
pub const MAX_PENDING: usize = 20_000;
/// Above the cap, delete down to this share of it, so a flood does not prune on every flush.
const PRUNE_TO: f64 = 0.9;
/// The write-ahead log is truncated to this after a checkpoint.
const WAL_LIMIT_BYTES: i64 = 16 << 20;

/// Schema steps, applied in order, each in its own transaction with the `user_version` bump.
/// `user_version` = how many have been applied. Append only: a new column or table is a new
/// step (`ALTER TABLE offenders ADD COLUMN ...`), never an edit of an old one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema as shipped before versioning (IF NOT EXISTS adopts such a database).
    "CREATE TABLE IF NOT EXISTS offenders (
        source TEXT NOT NULL,
        level TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        peak_rate REAL NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        times_banned INTEGER NOT NULL DEFAULT 0,
        events INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (source, level)
    );
    CREATE INDEX IF NOT EXISTS offenders_last_seen ON offenders (last_seen_ms);",
    // 2: one index in importance order: `offenders` reads it backwards (most dropped first),
    // the row cap deletes from its front (least important first).
    "CREATE INDEX IF NOT EXISTS offenders_importance ON offenders (dropped, last_seen_ms);",
    // 3: fleet mode: the stream entries this daemon applied (origin host and reason), and the
    // stream cursor, kept apart from the offender rows.
    "CREATE TABLE IF NOT EXISTS fleet_entries (
        source TEXT NOT NULL,
        op TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        until_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS fleet_entries_at ON fleet_entries (at_ms);
    CREATE TABLE IF NOT EXISTS fleet_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        stream_id TEXT NOT NULL
    );",
];

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("offender database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "offender database {path} has schema version {found}, newer than this monitor's {known}: \
         run the newer monitor, or move the file away to start a new history"
    )]
    Newer {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("offender database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A fleet stream entry this daemon applied: who decided it, and why (fleet mode).
#[derive(Clone, Debug)]
pub struct FleetRecord {
    pub source: String,
    pub op: &'static str,
    pub at_ms: i64,
    pub until_ms: i64,
    pub origin: String,
    pub reason: String,
}

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Rows last seen longer ago than this are deleted; zero keeps rows of any age.
    pub max_age: Duration,
    /// At most this many rows (at least 1).
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_RETENTION,
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

/// One observation of an offender, from a kernel event or from the sampler.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub source: String,
    pub level: &'static str,
    pub at_ms: i64,
    pub rate: f64,
    /// Requests newly refused since the previous sighting.
    pub dropped: u64,
    pub banned: bool,
    pub event: bool,
}

/// Sightings merged per key, exactly as the database merges them into a row.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Merged {
    first_ms: i64,
    last_ms: i64,
    peak_rate: f64,
    dropped: u64,
    bans: u64,
    events: u64,
}

/// The buffer between the daemon's producers (event drains, samples) and the database.
#[derive(Default)]
pub struct Pending {
    rows: HashMap<(String, &'static str), Merged>,
}

impl Pending {
    /// Merges `s`; true when the buffer is full and should be flushed now.
    pub fn add(&mut self, s: Sighting) -> bool {
        self.add_if(s, |_| true).1
    }

    /// Merges `s` when its key is already buffered or `admit(&s)` says yes. Returns
    /// (merged, buffer full).
    fn add_if(&mut self, s: Sighting, admit: impl FnOnce(&Sighting) -> bool) -> (bool, bool) {
        let m = Merged {
            first_ms: s.at_ms,
            last_ms: s.at_ms,
            peak_rate: s.rate,
            dropped: s.dropped,
            bans: s.banned as u64,
            events: s.event as u64,
        };
        let key = (s.source, s.level);
        if let Some(r) = self.rows.get_mut(&key) {
            r.first_ms = r.first_ms.min(m.first_ms);
            r.last_ms = r.last_ms.max(m.last_ms);
            r.peak_rate = r.peak_rate.max(m.peak_rate);
            r.dropped += m.dropped;
            r.bans += m.bans;
            r.events += m.events;
            return (true, false);
        }
        let s = Sighting { source: key.0, ..s };
        if !admit(&s) {
            return (false, false);
        }
        self.rows.insert((s.source, s.level), m);
        (true, self.rows.len() >= MAX_PENDING)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub written: u64,
    /// New keys not written because the table was full of more important rows.
    pub skipped: u64,
    /// Rows deleted for age or for the cap.
    pub pruned: u64,
    pub rows: u64,
}

/// One row of the history, in the history's own terms (times in Unix ms). The control
/// handler maps it to the wire row.
#[derive(Clone, Debug, PartialEq)]
pub struct Offender {
    pub source: String,
    pub level: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub peak_rate: f64,
    pub dropped: u64,
    pub times_banned: u64,
    pub events: u64,
}

pub struct History {
    conn: Connection,
    retention: Retention,
    /// Keyed hashes of the (source, level) of every row (see the module doc).
    known: HashSet<u64>,
    hasher: RandomState,
    rows: u64,
    /// (dropped, last seen) of the least important row.
    floor: Option<(i64, i64)>,
}

impl History {
    pub fn open(path: &Path, retention: Retention) -> Result<Self, HistoryError> {
        let open_err = |source| HistoryError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // WAL keeps readers (offenders queries) from blocking the writer, and a crash loses at
        // most the transaction in flight.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(HistoryError::Newer {
                path: path.display().to_string(),
                found: version,
                known,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(open_err)?;
            tx.execute_batch(step).map_err(open_err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        let mut history = Self {
            conn,
            retention: Retention {
                max_rows: retention.max_rows.max(1),
                ..retention
            },
            known: HashSet::new(),
            hasher: RandomState::new(),
            rows: 0,
            floor: None,
        };
        history.load_known().map_err(open_err)?;
        Ok(history)
    }

    /// Records an applied fleet entry with its origin host and reason. Rows older than a week
    /// are dropped on the way, so the table stays small under a long attack.
    pub fn record_fleet(&mut self, r: &FleetRecord) -> Result<(), HistoryError> {
        self.conn.execute(
            "INSERT INTO fleet_entries (source, op, at_ms, until_ms, origin, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.source, r.op, r.at_ms, r.until_ms, r.origin, r.reason],
        )?;
        self.conn.execute(
            "DELETE FROM fleet_entries WHERE at_ms < ?1",
            params![r.at_ms - 7 * 86_400_000],
        )?;
        Ok(())
    }

    /// Applied fleet entries for one source, newest first: (op, at ms, origin, reason).
    pub fn fleet_entries(
        &self,
        source: &str,
    ) -> Result<Vec<(String, i64, String, String)>, HistoryError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT op, at_ms, origin, reason FROM fleet_entries WHERE source = ?1
             ORDER BY at_ms DESC",
        )?;
        let rows = stmt.query_map(params![source], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last ban-stream ID this daemon applied.
    pub fn fleet_cursor(&self) -> Result<Option<String>, HistoryError> {
        Ok(self
            .conn
            .query_row("SELECT stream_id FROM fleet_cursor WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_fleet_cursor(&mut self, stream_id: &str) -> Result<(), HistoryError> {
        self.conn.execute(
            "INSERT INTO fleet_cursor (id, stream_id) VALUES (0, ?1)
             ON CONFLICT (id) DO UPDATE SET stream_id = excluded.stream_id",
            params![stream_id],
        )?;
        Ok(())
    }

    /// Whether a sighting of a key could be written: the key is held, the table has room, or
    /// it dropped more than the least important row. Cheap: a hash lookup.
    pub fn admits(&self, s: &Sighting) -> bool {
        self.rows < self.retention.max_rows
            || self
                .floor
                .is_none_or(|(floor, _)| s.dropped.min(i64::MAX as u64) as i64 > floor)
            || self.known.contains(&self.key_hash(&s.source, s.level))
    }

    fn key_hash(&self, source: &str, level: &str) -> u64 {
        self.hasher.hash_one((source, level))
    }

    fn load_known(&mut self) -> rusqlite::Result<()> {
        let mut known = HashSet::new();
        {
            let mut stmt = self.conn.prepare("SELECT source, level FROM offenders")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                known.insert(self.key_hash(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?));
            }
        }
        self.rows = self.count_rows()?;
        self.known = known;
        self.floor = self.least_important()?;
        Ok(())
    }

    fn count_rows(&self) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached("SELECT count(*) FROM offenders")?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    fn least_important(&self) -> rusqlite::Result<Option<(i64, i64)>> {
        self.conn
            .prepare_cached(
                "SELECT dropped, last_seen_ms FROM offenders
                 ORDER BY dropped ASC, last_seen_ms ASC LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    pub fn schema_version(&self) -> Result<i64, HistoryError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Records a batch in one transaction (merging it first), then prunes.
    pub fn record(&mut self, sightings: &[Sighting], now_ms: i64) -> Result<Flushed, HistoryError> {
        let mut pending = Pending::default();
        for s in sightings {
            pending.add(s.clone());
        }
        self.flush(&mut pending, now_ms)
    }

    /// Writes and empties `pending` in one transaction, and prunes in the same transaction.
    pub fn flush(&mut self, pending: &mut Pending, now_ms: i64) -> Result<Flushed, HistoryError> {
        let retention = self.retention;
        let mut out = Flushed::default();
        let mut added = Vec::new();
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO offenders (source, level, first_seen_ms, last_seen_ms, peak_rate,
                                        dropped, times_banned, events)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (source, level) DO UPDATE SET
                    first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
                    last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                    peak_rate = max(peak_rate, excluded.peak_rate),
                    dropped = dropped + excluded.dropped,
                    times_banned = times_banned + excluded.times_banned,
                    events = events + excluded.events",
            )?;
            let mut rows = self.rows;
            // Most important first, so that a full table admits the heaviest newcomers.
            let mut batch: Vec<_> = pending.rows.drain().collect();
            batch.sort_unstable_by(|a, b| {
                (b.1.dropped, b.1.last_ms).cmp(&(a.1.dropped, a.1.last_ms))
            });
            for ((source, level), m) in batch {
                let dropped = m.dropped.min(i64::MAX as u64) as i64;
                let hash = self.hasher.hash_one((source.as_str(), level));
                let known = self.known.contains(&hash);
                if !known
                    && rows >= retention.max_rows
                    && self.floor.is_some_and(|(floor, _)| dropped <= floor)
                {
                    out.skipped += 1;
                    continue;
                }
                stmt.execute(params![
                    source,
                    level,
                    m.first_ms,
                    m.last_ms,
                    m.peak_rate,
                    dropped,
                    m.bans as i64,
                    m.events as i64,
                ])?;
                if !known {
                    added.push(hash);
                    rows += 1;
                }
                out.written += 1;
            }
        }
        let added_count = added.len() as u64;
        let mut removed = Vec::new();
        let pruned = prune(
            &tx,
            retention,
            now_ms,
            self.rows + added_count,
            &mut |s, l| removed.push(self.hasher.hash_one((s, l))),
        )?;
        tx.commit()?;
        self.known.extend(added);
        for h in &removed {
            self.known.remove(h);
        }
        out.pruned = pruned;
        self.rows = if pruned > 0 {
            // Recount: exact even if two keys ever shared a hash.
            self.count_rows()?
        } else {
            self.rows + added_count
        };
        self.floor = self.least_important()?;
        out.rows = self.rows;
        Ok(out)
    }

    /// Offenders last seen at or after `since_ms`, most requests dropped first.
    pub fn offenders(&self, since_ms: i64, limit: usize) -> Result<Vec<Offender>, HistoryError> {
        let mut stmt = self.conn.prepare_cached(OFFENDERS_QUERY)?;
        // Callers cap `limit`; clamp anyway, since -1 would mean "no limit" to SQLite.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![since_ms, limit], |r| {
            Ok(Offender {
                source: r.get(0)?,
                level: r.get(1)?,
                first_seen_ms: r.get(2)?,
                last_seen_ms: r.get(3)?,
                peak_rate: r.get(4)?,
                dropped: r.get::<_, i64>(5)? as u64,
                times_banned: r.get::<_, i64>(6)? as u64,
                events: r.get::<_, i64>(7)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn count(&self) -> Result<u64, HistoryError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM offenders", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

const OFFENDERS_QUERY: &str = "SELECT source, level, first_seen_ms, last_seen_ms, peak_rate,
        dropped, times_banned, events
     FROM offenders WHERE last_seen_ms >= ?1
     ORDER BY dropped DESC, last_seen_ms DESC LIMIT ?2";

/// Deletes rows past the retention period, then the least important rows above the cap,
/// telling `gone` each deleted (source, level). `rows` is the row count before. Returns how
/// many rows were deleted.
fn prune(
    tx: &Transaction<'_>,
    retention: Retention,
    now_ms: i64,
    mut rows: u64,
    gone: &mut dyn FnMut(&str, &str),
) -> rusqlite::Result<u64> {
    let mut pruned = 0;
    let mut delete = |sql: &str, arg: i64| -> rusqlite::Result<u64> {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut deleted = stmt.query([arg])?;
        let mut n = 0;
        while let Some(r) = deleted.next()? {
            gone(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?);
            n += 1;
        }
        Ok(n)
    };
    if !retention.max_age.is_zero() {
        let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as i64);
        let n = delete(
            "DELETE FROM offenders WHERE last_seen_ms < ?1 RETURNING source, level",
            cutoff,
        )?;
        pruned += n;
        rows = rows.saturating_sub(n);
    }
    if rows > retention.max_rows {
        let keep = ((retention.max_rows as f64 * PRUNE_TO) as u64).max(1);
        pruned += delete(
            "DELETE FROM offenders WHERE rowid IN (
                SELECT rowid FROM offenders ORDER BY dropped ASC, last_seen_ms ASC LIMIT ?1)
             RETURNING source, level",
            (rows - keep) as i64,
        )?;
    }
    Ok(pruned)
}

/// The daemon's side of the write path: buffers sightings, flushes on a timer or when the
/// buffer is full, and reports what each flush did.
pub struct Writer {
    pub history: History,
    pending: Pending,
    last_flush: Instant,
}

impl Writer {
    pub fn new(history: History) -> Self {
        Self {
            history,
            pending: Pending::default(),
            last_flush: Instant::now(),
        }
    }

    /// Buffers a batch, flushing whenever the buffer fills. Returns the flushes it did.
    pub fn add(
        &mut self,
        sightings: impl IntoIterator<Item = Sighting>,
        now_ms: i64,
    ) -> Result<Vec<Flushed>, HistoryError> {
        let mut done = Vec::new();
        let mut skipped = 0;
        for s in sightings {
            // Sightings the table would refuse are dropped here, before they cost a buffer slot
            // (the flush checks again: the table may fill meanwhile).
            let (merged, full) = self.pending.add_if(s, |s| self.history.admits(s));
            skipped += u64::from(!merged);
            if full {
                done.push(self.flush(now_ms)?);
            }
        }
        if skipped > 0 {
            match done.last_mut() {
                Some(f) => f.skipped += skipped,
                None => done.push(Flushed {
                    skipped,
                    rows: self.history.rows,
                    ..Flushed::default()
                }),
            }
        }
        Ok(done)
    }

    /// Writes what is buffered (a no-op when nothing is).
    pub fn flush(&mut self, now_ms: i64) -> Result<Flushed, HistoryError> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(Flushed::default());
        }
        self.history.flush(&mut self.pending, now_ms)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn since_flush(&self) -> Duration {
        self.last_flush.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "monitor-hist-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sighting(source: &str, at_ms: i64, rate: f64, dropped: u64, banned: bool) -> Sighting {
        Sighting {
            source: source.into(),
            level: "source",
            at_ms,
            rate,
            dropped,
            banned,
            event: true,
        }
    }

    #[test]
    fn sightings_merge_into_one_row_per_prefix_and_survive_reopen() {
        let dir = TempDir::new("merge");
        let path = dir.0.join("h.db");
        let s = |at, rate, dropped, banned| sighting("203.0.113.7/32", at, rate, dropped, banned);
        {
            let mut h = History::open(&path, Retention::default()).unwrap();
            h.record(&[s(2_000, 50.0, 10, false), s(1_000, 80.0, 5, true)], 3_000)
                .unwrap();
        }
        let mut h = History::open(&path, Retention::default()).unwrap();
        h.record(&[s(3_000, 20.0, 1, false)], 3_000).unwrap();
        let rows = h.offenders(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.dropped, r.times_banned, r.events), (16, 1, 3));
        assert_eq!(r.peak_rate, 80.0);
        assert_eq!((r.first_seen_ms, r.last_seen_ms), (1_000, 3_000));
        assert!(h.offenders(3_001, 10).unwrap().is_empty());
    }

    #[test]
    fn an_unversioned_database_is_migrated_and_keeps_its_rows() {
        let dir = TempDir::new("migrate");
        let path = dir.0.join("h.db");
        {
            // The schema exactly as shipped before versioning, with one row.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO offenders VALUES ('198.51.100.1/32', 'source', 1, 2, 3.0, 4, 0, 1)",
                [],
            )
            .unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 0);
        }
        let h = History::open(&path, Retention::default()).unwrap();
        assert_eq!(h.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let rows = h.offenders(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dropped, 4);
        drop(h);
        // Reopening applies nothing twice.
        let h = History::open(&path, Retention::default()).unwrap();
        assert_eq!(h.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_database_from_a_newer_monitor_is_refused_with_what_to_do() {
        let dir = TempDir::new("newer");
        let path = dir.0.join("h.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = History::open(&path, Retention::default())
            .err()
            .expect("a newer schema must be refused")
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
        assert!(err.contains("move the file away"), "{err}");
    }

    #[test]
    fn offenders_sort_is_served_by_an_index() {
        let dir = TempDir::new("plan");
        let h = History::open(&dir.0.join("h.db"), Retention::default()).unwrap();
        let plan: Vec<String> = h
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OFFENDERS_QUERY}"))
            .unwrap()
            .query_map(params![0, 10], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("offenders_importance"), "{plan}");
        assert!(
            !plan.contains("TEMP B-TREE"),
            "sorts outside an index: {plan}"
        );
    }

    #[test]
    fn a_full_history_admits_a_new_source_only_when_it_dropped_more() {
        let dir = TempDir::new("admit");
        let retention = Retention {
            max_age: Duration::ZERO,
            max_rows: 10,
        };
        let mut h = History::open(&dir.0.join("h.db"), retention).unwrap();
        let light: Vec<Sighting> = (0..10)
            .map(|i| sighting(&format!("198.51.100.{i}/32"), 100 + i, 1.0, 2, false))
            .collect();
        assert_eq!(h.record(&light, 200).unwrap().written, 10);
        // Full: as light as the lightest, and newer, a flood source is not written.
        let f = h
            .record(&[sighting("203.0.113.1/32", 300, 1.0, 2, false)], 300)
            .unwrap();
        assert_eq!((f.written, f.skipped, f.rows), (0, 1, 10));
        // A source already held is always updated.
        let f = h
            .record(&[sighting("198.51.100.3/32", 300, 1.0, 1, false)], 300)
            .unwrap();
        assert_eq!((f.written, f.skipped), (1, 0));
        // A heavier newcomer enters; the lightest and longest unseen rows make room.
        let f = h
            .record(&[sighting("192.0.2.50/32", 300, 9.0, 50, false)], 300)
            .unwrap();
        assert_eq!(f.written, 1);
        assert!(f.rows <= 10 && f.pruned > 0, "{f:?}");
        let rows = h.offenders(0, 100).unwrap();
        assert_eq!(rows[0].source, "192.0.2.50/32");
        assert!(rows.iter().any(|r| r.source == "198.51.100.3/32"));
        assert!(!rows.iter().any(|r| r.source == "198.51.100.0/32"));
        // Fill up again, then reopen: the reopened history remembers what it holds.
        h.record(&[sighting("192.0.2.51/32", 300, 9.0, 40, false)], 300)
            .unwrap();
        drop(h);
        let mut h = History::open(&dir.0.join("h.db"), retention).unwrap();
        let f = h
            .record(&[sighting("203.0.113.2/32", 400, 1.0, 1, false)], 400)
            .unwrap();
        assert_eq!(f.skipped, 1, "{f:?}");
    }

    #[test]
    fn rows_past_the_retention_period_are_deleted() {
        let dir = TempDir::new("age");
        let retention = Retention {
            max_age: Duration::from_secs(60),
            max_rows: 100,
        };
        let mut h = History::open(&dir.0.join("h.db"), retention).unwrap();
        h.record(&[sighting("192.0.2.1/32", 1_000, 1.0, 1, false)], 1_000)
            .unwrap();
        h.record(&[sighting("192.0.2.2/32", 50_000, 1.0, 1, false)], 50_000)
            .unwrap();
        let f = h.record(&[], 70_000).unwrap();
        assert_eq!((f.pruned, f.rows), (1, 1));
        let rows = h.offenders(0, 10).unwrap();
        assert_eq!(rows[0].source, "192.0.2.2/32");
    }

    #[test]
    fn above_the_cap_the_fewest_dropped_and_longest_unseen_go_first() {
        let dir = TempDir::new("cap");
        let retention = Retention {
            max_age: Duration::ZERO,
            max_rows: 10,
        };
        let mut h = History::open(&dir.0.join("h.db"), retention).unwrap();
        // One heavy offender seen long ago, then 20 light ones.
        h.record(&[sighting("192.0.2.99/32", 1, 1.0, 5_000, true)], 1)
            .unwrap();
        let light: Vec<Sighting> = (0..20)
            .map(|i| sighting(&format!("198.51.100.{i}/32"), 100 + i, 1.0, 1, false))
            .collect();
        let f = h.record(&light, 200).unwrap();
        assert!(f.rows <= 10, "{f:?}");
        let rows = h.offenders(0, 100).unwrap();
        assert_eq!(rows.len() as u64, f.rows);
        assert_eq!(
            rows[0].source, "192.0.2.99/32",
            "the heaviest offender stays"
        );
        // Among the light ones, the most recently seen stayed.
        let mut kept: Vec<i64> = rows[1..]
            .iter()
            .map(|r| {
                r.source
                    .trim_start_matches("198.51.100.")
                    .trim_end_matches("/32")
                    .parse()
                    .unwrap()
            })
            .collect();
        kept.sort();
        let newest: Vec<i64> = (20 - kept.len() as i64..20).collect();
        assert_eq!(kept, newest);
    }

    /// A spoofed flood: a million distinct sources, each seen once, through the daemon's write
    /// path (buffer, flush when full, flush on the timer) into a real SQLite file.
    #[test]
    fn a_million_address_flood_keeps_the_database_bounded() {
        const SOURCES: u32 = 1_000_000;
        const CAP: u64 = 50_000;
        let dir = TempDir::new("flood");
        let path = dir.0.join("h.db");
        let retention = Retention {
            max_age: DEFAULT_RETENTION,
            max_rows: CAP,
        };
        let mut w = Writer::new(History::open(&path, retention).unwrap());
        // A real offender that lost many requests before the flood.
        w.add([sighting("192.0.2.200/32", 1, 500.0, 1_000_000, true)], 1)
            .unwrap();
        w.flush(1).unwrap();
        let started = Instant::now();
        let mut max_rows = 0;
        let mut max_bytes = 0;
        let mut written = 0;
        let mut skipped = 0;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = dir.0.join("h.db-wal");
        // Drains of 5,000 events, as the event reader hands them over.
        for chunk in 0..SOURCES / 5_000 {
            let now_ms = 1_000 + i64::from(chunk);
            let batch = (chunk * 5_000..(chunk + 1) * 5_000).map(|i| {
                let [a, b, c, d] = (0x0a00_0000 + i).to_be_bytes();
                sighting(&format!("{a}.{b}.{c}.{d}/32"), now_ms, 2.0, 1, false)
            });
            for f in w.add(batch, now_ms).unwrap() {
                max_rows = max_rows.max(f.rows);
                written += f.written;
                skipped += f.skipped;
            }
            if chunk % 4 == 3 {
                let f = w.flush(now_ms).unwrap();
                written += f.written;
                skipped += f.skipped;
                max_rows = max_rows.max(f.rows);
                max_bytes = max_bytes.max(size(&path) + size(&wal));
            }
        }
        max_rows = max_rows.max(w.flush(2_000_000).unwrap().rows);
        max_bytes = max_bytes.max(size(&path) + size(&wal));
        let took = started.elapsed();
        let rows = w.history.count().unwrap();
        eprintln!(
            "history flood: {SOURCES} distinct sources in {:.1} s ({:.0}/s), cap {CAP}: \
             {written} rows written, {skipped} refused, at most {max_rows} rows, {rows} at the end, at most {:.1} MB \
             on disk",
            took.as_secs_f64(),
            f64::from(SOURCES) / took.as_secs_f64(),
            max_bytes as f64 / 1e6
        );
        assert!(max_rows <= CAP, "{max_rows} rows over the cap of {CAP}");
        assert_eq!(
            written + skipped,
            u64::from(SOURCES),
            "sightings unaccounted for"
        );
        assert!(rows <= CAP);
        // Measured about 160 bytes a row with both indexes; allow 200, plus the WAL limit.
        let bound = CAP * 200 + WAL_LIMIT_BYTES as u64;
        assert!(
            max_bytes <= bound,
            "{max_bytes} bytes on disk for {CAP} rows (bound {bound})"
        );
        let top = w.history.offenders(0, 1).unwrap();
        assert_eq!(
            top[0].source, "192.0.2.200/32",
            "the flood evicted the real offender"
        );
    }
}
