//! The periodic sample behind `monitor top`, the tracked-source metrics and the history's
//! drop counts: every second, read the source and aggregate tables in batches (through their
//! own map handles, holding no lock the control handlers need), compute each key's request
//! rate from the change in its `requests` counter, and keep the busiest keys ready to serve.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use monitor_common::{addr::AddrKey, maps::Bucket};

use crate::{cidr::Cidr, clock, control::TopRow, history::Sighting, kernel::TableReader, timefmt};

pub const INTERVAL: Duration = Duration::from_secs(1);
/// Rows kept per sample; `top --limit` is capped here.
pub const MAX_ROWS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Source,
    Aggregate,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Source => "source",
            Level::Aggregate => "aggregate",
        }
    }
}

/// One finished sample. Replaced wholesale each interval, read through an `Arc`.
#[derive(Default)]
pub struct Snapshot {
    pub taken_at: Option<SystemTime>,
    pub interval: Duration,
    pub took: Duration,
    pub tracked_sources: u64,
    pub tracked_aggregates: u64,
    pub active_bans: u64,
    /// The busiest keys of both levels, highest rate first.
    pub rows: Vec<TopRow>,
    /// Per-key rate (requests/s) of every key that sent anything in the last interval.
    pub rates: HashMap<(Level, AddrKey), f64>,
}

/// The prefix lengths in force, to turn keys into CIDRs.
#[derive(Clone, Copy)]
pub struct Prefixes {
    pub v4: u8,
    pub v6: u8,
    pub v4_agg: u8,
    pub v6_agg: u8,
}

impl Prefixes {
    fn cidr(&self, level: Level, key: &AddrKey) -> Cidr {
        let len = match (level, key.is_v4()) {
            (Level::Source, true) => self.v4,
            (Level::Source, false) => self.v6,
            (Level::Aggregate, true) => self.v4_agg,
            (Level::Aggregate, false) => self.v6_agg,
        };
        Cidr::from_key(key, len)
    }
}

pub struct Sampler {
    reader: TableReader,
    previous: HashMap<(Level, AddrKey), (u64, u64)>,
    previous_at: Option<Instant>,
}

pub struct SampleOutput {
    pub snapshot: Arc<Snapshot>,
    /// Keys whose refused count grew, for the history.
    pub sightings: Vec<Sighting>,
}

impl Sampler {
    pub fn new(reader: TableReader) -> Self {
        Self {
            reader,
            previous: HashMap::new(),
            previous_at: None,
        }
    }

    /// Takes one sample (blocking: call from a blocking thread).
    pub fn sample(&mut self, prefixes: Prefixes) -> anyhow::Result<SampleOutput> {
        let started = Instant::now();
        let sources = self.reader.sources()?;
        let aggregates = self.reader.aggregates()?;
        let bans = self.reader.bans()?;
        let now_k = clock::kernel_now_ns();
        let now_w = SystemTime::now();
        let interval = self
            .previous_at
            .map(|t| started.duration_since(t))
            .unwrap_or(Duration::ZERO);
        let secs = interval.as_secs_f64();
        let first = self.previous_at.is_none();

        let ban_of: HashMap<AddrKey, u64> = bans
            .iter()
            .filter(|(_, b)| b.until_ns > now_k)
            .map(|(k, b)| (*k, b.until_ns))
            .collect();
        let mut current = HashMap::with_capacity(sources.len() + aggregates.len());
        let mut rates = HashMap::new();
        let mut candidates: Vec<(f64, Level, AddrKey, Bucket)> = Vec::new();
        let mut sightings = Vec::new();
        let at_ms = timefmt::unix_ms(now_w);
        for (level, table) in [(Level::Source, &sources), (Level::Aggregate, &aggregates)] {
            for (key, bucket) in table.iter() {
                let id = (level, *key);
                current.insert(id, (bucket.requests, bucket.refused));
                let (prev_req, prev_ref) = self.previous.get(&id).copied().unwrap_or((0, 0));
                // A key evicted and re-inserted restarts its counters; count from zero then.
                let delta_req = bucket
                    .requests
                    .checked_sub(prev_req)
                    .unwrap_or(bucket.requests);
                let delta_ref = bucket
                    .refused
                    .checked_sub(prev_ref)
                    .unwrap_or(bucket.refused);
                let rate = if first || secs <= 0.0 {
                    0.0
                } else {
                    delta_req as f64 / secs
                };
                if rate > 0.0 {
                    rates.insert(id, rate);
                }
                if !first && delta_ref > 0 {
                    sightings.push(Sighting {
                        source: prefixes.cidr(level, key).to_string(),
                        level: level.as_str(),
                        at_ms,
                        rate,
                        dropped: delta_ref,
                        banned: false,
                        event: false,
                    });
                }
                candidates.push((rate, level, *key, *bucket));
            }
        }
        // Busiest first; among equals, the most requests overall.
        let order = |a: &(f64, Level, AddrKey, Bucket), b: &(f64, Level, AddrKey, Bucket)| {
            b.0.total_cmp(&a.0).then(b.3.requests.cmp(&a.3.requests))
        };
        if candidates.len() > MAX_ROWS {
            candidates.select_nth_unstable_by(MAX_ROWS, order);
            candidates.truncate(MAX_ROWS);
        }
        candidates.sort_by(order);
        let rows = candidates
            .into_iter()
            .map(|(rate, level, key, bucket)| {
                let until = match level {
                    Level::Source => ban_of
                        .get(&key)
                        .copied()
                        .or((bucket.ban_until_ns > now_k).then_some(bucket.ban_until_ns)),
                    Level::Aggregate => None,
                };
                TopRow {
                    source: prefixes.cidr(level, &key).to_string(),
                    rate: (rate * 10.0).round() / 10.0,
                    total: bucket.requests,
                    dropped: bucket.refused,
                    banned_until: until.map(banned_until),
                    level: level.as_str().to_string(),
                }
            })
            .collect();
        self.previous = current;
        self.previous_at = Some(started);
        let snapshot = Snapshot {
            taken_at: Some(now_w),
            interval,
            took: started.elapsed(),
            tracked_sources: sources.len() as u64,
            tracked_aggregates: aggregates.len() as u64,
            active_bans: ban_of.len() as u64,
            rows,
            rates,
        };
        Ok(SampleOutput {
            snapshot: Arc::new(snapshot),
            sightings,
        })
    }
}

/// RFC 3339 of a ban deadline on the kernel clock.
pub fn banned_until(until_ns: u64) -> String {
    timefmt::rfc3339(clock::to_wall(until_ns))
}
