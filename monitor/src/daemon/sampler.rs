//! The periodic sample behind `monitor top`, the tracked-source metrics and the history's
//! drop counts: every second, read the source and aggregate tables in batches (through their
//! own map handles, holding no lock the control handlers need), compute each key's request
//! rate from the change in its `requests` counter, and keep the busiest keys ready to serve.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use monitor_common::{addr::AddrKey, maps::Bucket};

use crate::{cidr::Cidr, clock, history::Sighting, kernel::TableReader, timefmt};

/// The shortest time between the starts of two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The share of one core sampling may use. A sample of a million tracked sources takes about
/// a second here, so sampling every second would keep a core busy; instead the period
/// stretches to `took / MAX_CPU_SHARE` (about 25 s at a million sources). Rates are computed
/// over the real time between samples, and events are not affected.
pub const MAX_CPU_SHARE: f64 = 0.04;

/// Time from the start of a sample that took `took` to the start of the next.
pub fn period_after(took: Duration) -> Duration {
    INTERVAL.max(took.div_f64(MAX_CPU_SHARE))
}

/// A multiply-fold hasher for table keys. The keys are addresses the kernel already chose to
/// track, a million of them are hashed every second, and SipHash's flood resistance buys
/// nothing here (the table itself is bounded by the kernel).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_ne_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    /// murmur3's fmix64: the multiply above only carries low bits upwards, and IPv4 keys
    /// differ only in their high half, so fold the high bits back down.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub type KeyMap<V> = HashMap<(Level, AddrKey), V, BuildHasherDefault<KeyHasher>>;
/// Rows kept per sample; `top --limit` is capped here.
pub const MAX_ROWS: usize = crate::proto::MAX_TOP_ROWS;

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
    pub rows: Vec<Busy>,
    /// Per-key rate (requests/s) of the keys that have had requests refused (the only keys
    /// events are about), for an event that arrives before its key's second event.
    pub rates: KeyMap<f64>,
}

/// One of the busiest keys of a sample; the `top` handler maps it to the wire row.
#[derive(Clone, Debug)]
pub struct Busy {
    pub source: Cidr,
    pub level: Level,
    /// Requests per second over the sample's interval.
    pub rate: f64,
    pub total: u64,
    pub dropped: u64,
    /// Ban deadline on the kernel clock, while one is in force.
    pub banned_until_ns: Option<u64>,
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
    previous: KeyMap<(u64, u64)>,
    /// The map before `previous`, kept to be cleared and refilled: allocating (and faulting
    /// in) a fresh million-entry map every second costs more than the inserts.
    spare: KeyMap<(u64, u64)>,
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
            previous: KeyMap::default(),
            spare: KeyMap::default(),
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
        let mut current = std::mem::take(&mut self.spare);
        current.clear();
        current.reserve(sources.len() + aggregates.len());
        let mut rates = KeyMap::default();
        let mut candidates: Vec<(f64, Level, AddrKey, Bucket)> = Vec::with_capacity(2 * MAX_ROWS);
        // Busiest first; among equals, the most requests overall.
        let order = |a: &(f64, Level, AddrKey, Bucket), b: &(f64, Level, AddrKey, Bucket)| {
            b.0.total_cmp(&a.0).then(b.3.requests.cmp(&a.3.requests))
        };
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
                if rate > 0.0 && bucket.refused > 0 {
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
                // Keep the candidates bounded: trim to the best MAX_ROWS whenever twice that
                // many have gathered (amortised linear in the table size).
                if candidates.len() >= 2 * MAX_ROWS {
                    candidates.select_nth_unstable_by(MAX_ROWS, order);
                    candidates.truncate(MAX_ROWS);
                }
            }
        }
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
                Busy {
                    source: prefixes.cidr(level, &key),
                    level,
                    rate: (rate * 10.0).round() / 10.0,
                    total: bucket.requests,
                    dropped: bucket.refused,
                    banned_until_ns: until,
                }
            })
            .collect();
        self.spare = std::mem::replace(&mut self.previous, current);
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

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn neighbouring_ipv4_keys_spread_over_the_low_bits() {
        let build = BuildHasherDefault::<KeyHasher>::default();
        let low: std::collections::HashSet<u64> = (0..4096u32)
            .map(|i| build.hash_one((Level::Source, AddrKey::from_v4(i.to_be_bytes()))) & 0xfff)
            .collect();
        // 4096 keys into 4096 slots: a decent hash fills well over half of them.
        assert!(
            low.len() > 2000,
            "only {} distinct low-bit values",
            low.len()
        );
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn sampling_stays_within_its_share_of_a_core() {
        assert_eq!(period_after(Duration::from_millis(5)), INTERVAL);
        let took = Duration::from_millis(900);
        let period = period_after(took);
        assert!(took.as_secs_f64() / period.as_secs_f64() <= MAX_CPU_SHARE + 1e-9);
        assert!(period <= Duration::from_secs(23), "{period:?}");
    }
}
