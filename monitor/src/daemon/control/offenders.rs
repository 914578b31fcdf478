//! `monitor offenders`: the offender history, from SQLite, mapped to the wire rows here.

use std::time::SystemTime;

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, json};
use crate::{
    daemon::Shared,
    history::Offender,
    proto::{MAX_OFFENDER_ROWS, OffenderRow},
    timefmt,
    units::parse_duration,
};

/// `since` as a Unix time in ms (0 = all), and the row count.
fn parse(since: Option<&str>, limit: usize, now_ms: i64) -> Result<(i64, usize)> {
    if limit == 0 || limit > MAX_OFFENDER_ROWS {
        bail!("invalid --limit {limit}: must be between 1 and {MAX_OFFENDER_ROWS}");
    }
    let since_ms = match since {
        None => 0,
        Some(s) => {
            let d = parse_duration(s)?;
            now_ms.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
        }
    };
    Ok((since_ms, limit))
}

fn row(o: Offender) -> OffenderRow {
    OffenderRow {
        source: o.source,
        level: o.level,
        first_seen: timefmt::rfc3339_ms(o.first_seen_ms),
        last_seen: timefmt::rfc3339_ms(o.last_seen_ms),
        peak_rate: o.peak_rate,
        dropped: o.dropped,
        times_banned: o.times_banned,
        events: o.events,
    }
}

pub async fn run<M: Maps>(shared: &Shared<M>, since: Option<&str>, limit: usize) -> Result<Value> {
    let (since_ms, limit) = parse(since, limit, timefmt::unix_ms(SystemTime::now()))?;
    let rows: Vec<OffenderRow> = shared
        .offenders(since_ms, limit)
        .await?
        .into_iter()
        .map(row)
        .collect();
    Ok(json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_count_is_capped_and_since_is_relative_to_now() {
        assert!(parse(None, 0, 0).is_err());
        let err = parse(None, usize::MAX, 0).unwrap_err().to_string();
        assert!(err.contains("between 1 and 1000"), "{err}");
        assert_eq!(parse(None, MAX_OFFENDER_ROWS, 5).unwrap(), (0, 1000));
        assert_eq!(parse(Some("1s"), 10, 5_000).unwrap(), (4_000, 10));
    }
}
