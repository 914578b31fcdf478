//! `monitor top`: the busiest keys of the last sample. The sampler prepares them; this only
//! filters, cuts and maps them to the wire rows, so it answers at once at any table size.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, json};
use crate::{
    daemon::{Shared, sampler},
    proto::{MAX_TOP_ROWS, TopReply, TopRow},
    timefmt,
};

fn parse(limit: usize, level: Option<&str>) -> Result<(usize, Option<sampler::Level>)> {
    if limit == 0 || limit > MAX_TOP_ROWS {
        bail!("invalid --limit {limit}: must be between 1 and {MAX_TOP_ROWS}");
    }
    let level = match level {
        None => None,
        Some("source") => Some(sampler::Level::Source),
        Some("aggregate") => Some(sampler::Level::Aggregate),
        Some(l) => bail!("invalid --level {l:?}: expected source or aggregate"),
    };
    Ok((limit, level))
}

pub fn run<M: Maps>(shared: &Shared<M>, limit: usize, level: Option<&str>) -> Result<Value> {
    let (limit, level) = parse(limit, level)?;
    let snapshot = shared.snapshot();
    let rows = snapshot
        .rows
        .iter()
        .filter(|r| level.is_none_or(|l| r.level == l))
        .take(limit)
        .map(|r| TopRow {
            source: r.source.to_string(),
            rate: r.rate,
            total: r.total,
            dropped: r.dropped,
            banned_until: r.banned_until_ns.map(sampler::banned_until),
            level: r.level.as_str().to_string(),
        })
        .collect();
    Ok(json(TopReply {
        sampled_at: snapshot.taken_at.map(timefmt::rfc3339),
        interval_ms: snapshot.interval.as_millis() as u64,
        sample_took_ms: snapshot.took.as_millis() as u64,
        sample_cpu_ms: snapshot.busy.as_millis() as u64,
        tracked_sources: snapshot.tracked_sources,
        tracked_aggregates: snapshot.tracked_aggregates,
        rows,
    }))
}
