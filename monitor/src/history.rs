//! The offender history: one row per offending prefix (first seen, last seen, peak rate,
//! requests dropped, times banned) in an embedded SQLite database, so `monitor offenders`
//! answers across restarts. Writes come in batches, one transaction each.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("offender database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("offender database: {0}")]
    Sql(#[from] rusqlite::Error),
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
}

impl History {
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let open_err = |source| HistoryError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // WAL keeps readers (offenders queries) from blocking the writer, and a crash loses at
        // most the transaction in flight.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
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
        )
        .map_err(open_err)?;
        Ok(Self { conn })
    }

    /// Records a batch in one transaction.
    pub fn record(&mut self, sightings: &[Sighting]) -> Result<(), HistoryError> {
        if sightings.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO offenders (source, level, first_seen_ms, last_seen_ms, peak_rate,
                                        dropped, times_banned, events)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (source, level) DO UPDATE SET
                    first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
                    last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                    peak_rate = max(peak_rate, excluded.peak_rate),
                    dropped = dropped + excluded.dropped,
                    times_banned = times_banned + excluded.times_banned,
                    events = events + excluded.events",
            )?;
            for s in sightings {
                stmt.execute(params![
                    s.source,
                    s.level,
                    s.at_ms,
                    s.rate,
                    s.dropped as i64,
                    s.banned as i64,
                    s.event as i64,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Offenders last seen at or after `since_ms`, most requests dropped first.
    pub fn offenders(&self, since_ms: i64, limit: usize) -> Result<Vec<Offender>, HistoryError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT source, level, first_seen_ms, last_seen_ms, peak_rate, dropped, times_banned,
                    events
             FROM offenders WHERE last_seen_ms >= ?1
             ORDER BY dropped DESC, last_seen_ms DESC LIMIT ?2",
        )?;
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
        let n: Option<i64> = self
            .conn
            .query_row("SELECT count(*) FROM offenders", [], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_merge_into_one_row_per_prefix_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("monitor-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.db");
        let s = |at_ms, rate, dropped, banned| Sighting {
            source: "203.0.113.7/32".into(),
            level: "source",
            at_ms,
            rate,
            dropped,
            banned,
            event: true,
        };
        {
            let mut h = History::open(&path).unwrap();
            h.record(&[s(2_000, 50.0, 10, false), s(1_000, 80.0, 5, true)])
                .unwrap();
        }
        let mut h = History::open(&path).unwrap();
        h.record(&[s(3_000, 20.0, 1, false)]).unwrap();
        let rows = h.offenders(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.dropped, r.times_banned, r.events), (16, 1, 3));
        assert_eq!(r.peak_rate, 80.0);
        assert_eq!((r.first_seen_ms, r.last_seen_ms), (1_000, 3_000));
        assert!(h.offenders(3_001, 10).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
