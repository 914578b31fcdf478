//! The periodic sample behind `monitor top`, the tracked-source metrics and the history's drop
//! counts: read the source table (through its shared mapping) and the aggregate table (batched
//! lookups on its own handle) in chunks, holding no lock the control handlers need, compute
//! each key's request rate from the change in its `requests` counter, and keep the busiest keys
//! ready to serve.
//!
//! A sample must never stall the data plane. On an API host the daemon shares its cores with
//! the packet processing it protects, and a whole-table read of a million sources took about a
//! second of CPU with the LRU table this project had before (about 0.2 s from the mapped
//! set-associative table): taken in one go, that was a second in which the core forwarded
//! almost nothing (measured: the drop rate fell to 4% of normal while it ran, with the daemon
//! above the receive thread). So a sample reads [`CHUNK`] entries at a time and, after each chunk,
//! sleeps long enough that its busy time stays within `--sample-cpu` (default
//! [`SAMPLE_CPU_SHARE`]) of the time it runs; the next sample starts when the whole cycle stays
//! within [`CYCLE_FRACTION`] of that. Busy
//! time is the sampler thread's own CPU time, not wall time, so a sampler that is itself
//! preempted does not stretch its own budget. A stopping daemon sets [`Pace::hurry`], and the
//! sample in progress finishes without sleeping.
//!
//! An off-path spoofer controls how many keys the tables hold, up to their capacity, and so
//! how long a sample takes (its CPU cost is bounded by the capacity and spread by the pacing);
//! it cannot make a sample skip a real source. Per sample, only the [`MAX_SIGHTINGS`] keys
//! with the most newly refused requests become history rows; under a flood from more keys
//! than that the rest are counted ([`SampleOutput::folded`]) but not written one by one, so a
//! spoofed flood costs the history a bounded number of rows per sample whatever its size.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, BuildHasherDefault, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use monitor_common::{addr::AddrKey, maps::Bucket};

use crate::{cidr::Cidr, clock, history::Sighting, kernel::TableReader, timefmt};

/// The shortest time between the starts of two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Entries read per chunk (one system call for the aggregate table; whole sets of the mapped
/// source table). Small enough that one chunk (read and processed) is under a millisecond of
/// CPU here, large enough that no hash bucket overflows it.
pub const CHUNK: usize = 1024;
/// The share of one core a sample may use while it runs (busy time over the time it runs), by
/// default (`--sample-cpu`).
pub const SAMPLE_CPU_SHARE: f64 = crate::config::DEFAULT_SAMPLE_CPU as f64 / 100.0;
/// Over a whole cycle sampling uses this fraction of its share while sampling: the next sample
/// starts `busy / (share * CYCLE_FRACTION)` after this one started. At a million sources a
/// sample took 205 ms of CPU in the benchmark (BENCHMARKS.md, part 5), so at the default share
/// it runs for about 10 s and one starts about every 20 s; rates are computed over the real
/// time between samples, and events are not affected.
pub const CYCLE_FRACTION: f64 = 0.5;
/// History rows one sample may write: the keys with the most newly refused requests.
pub const MAX_SIGHTINGS: usize = 1000;
/// Keys whose rate is kept for event lines (those with refused requests, busiest first
/// among the retained rows, then first come).
pub const MAX_RATES: usize = 65_536;

/// Time from the start of a sample that was busy for `busy`, at `share` of a core while
/// sampling, to the start of the next.
pub fn period_after(busy: Duration, share: f64) -> Duration {
    let cycle_share = (share * CYCLE_FRACTION).clamp(1e-3, 1.0);
    INTERVAL.max(busy.div_f64(cycle_share))
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// How a sample spreads its work.
#[derive(Clone, Default)]
pub struct Pace {
    /// Busy time over running time while sampling; 0 (or 1 and above) never sleeps.
    pub share: f64,
    /// Set when the daemon stops: the sample in progress finishes without sleeping.
    pub hurry: Arc<AtomicBool>,
}

impl Pace {
    pub fn new(share: f64) -> Self {
        Self {
            share,
            hurry: Arc::default(),
        }
    }

    /// How long to rest after a chunk that was busy for `busy`.
    pub fn rest_after(&self, busy: Duration) -> Duration {
        if self.share <= 0.0 || self.share >= 1.0 || self.hurry.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        // A chunk's rest is capped so that a stop request is never waited on for long.
        busy.mul_f64(1.0 / self.share - 1.0)
            .min(Duration::from_millis(250))
    }
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

/// A key's identity in the sampler's books: a 64-bit digest of (level, key). The books hold
/// every tracked key (a million under a flood) and are read at random once per key and sample,
/// while the data plane wants the last-level cache for the source table: 24 bytes per key here
/// against 48 with the whole key. Two keys share a digest with probability about 3e-8 at a
/// million keys; they would then share one key's reported deltas, nothing else.
pub fn digest(level: Level, key: &AddrKey) -> u64 {
    BuildHasherDefault::<KeyHasher>::default().hash_one((level, key))
}

/// Hashes a [`digest`] by passing it through (it is already mixed).
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Every tracked key's counters as the history has booked them, by [`digest`].
pub type Books = HashMap<u64, Counted, BuildHasherDefault<DigestHasher>>;

/// A key's counters as the history has booked them, and the sample that last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub requests: u64,
    /// Refused requests in the high 56 bits, the low 8 bits of the sample that last saw the key
    /// (0: from a saved baseline, not sampled yet): one word, so an entry is 24 bytes.
    refused_seen: u64,
}

impl Counted {
    pub fn new(requests: u64, refused: u64) -> Self {
        Self::seen_by(requests, refused, 0)
    }

    fn seen_by(requests: u64, refused: u64, generation: u8) -> Self {
        Self {
            requests,
            refused_seen: (refused.min(u64::MAX >> 8) << 8) | u64::from(generation),
        }
    }

    pub fn refused(&self) -> u64 {
        self.refused_seen >> 8
    }

    fn seen(&self) -> u8 {
        self.refused_seen as u8
    }
}
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
    /// From the sample's start to its end (paced: mostly sleeping).
    pub took: Duration,
    /// The CPU time the sample used.
    pub busy: Duration,
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

/// How far a counter moved since it was booked at `prev`. A source's counters are 32 bits in
/// the kernel and wrap; a counter found below its booking by more than half their range
/// wrapped, and one found below it by less was restarted (its key evicted and re-inserted),
/// so it counts from zero. Aggregate counters are 64 bits and never wrap.
pub fn counted_since(level: Level, prev: u64, now: u64) -> u64 {
    if now >= prev {
        return now - prev;
    }
    let wrapped = level == Level::Source && prev <= u64::from(u32::MAX) && prev - now > 1 << 31;
    if wrapped {
        u64::from((now as u32).wrapping_sub(prev as u32))
    } else {
        now
    }
}

/// Where the first sample's drop counts start from, so that requests refused while no daemon
/// ran (the `--persist` window) reach the history exactly once.
pub enum Baseline {
    /// Tables created by this run: everything they hold is new.
    Empty,
    /// The counters as the previous daemon last booked them (saved when it stopped).
    Saved(Books),
    /// Adopted tables and no saved baseline (the previous daemon did not stop cleanly): the
    /// first sample only sets the baseline.
    Unknown,
}

/// The file a stopping daemon leaves for the next: the tables' map ids (a baseline applies
/// only to the very tables it was taken from) and every key with refused requests, by digest.
const BASELINE_MAGIC: &[u8; 8] = b"MONBASE2";
const BASELINE_ENTRY: usize = 8 + 8 + 8;
/// The previous version's file (whole keys), still read once after an upgrade.
const BASELINE_V1_MAGIC: &[u8; 8] = b"MONBASE1";
const BASELINE_V1_ENTRY: usize = 1 + 16 + 8 + 8;

/// Writes the refused counters the history has booked (atomically: a temporary file renamed).
pub fn save_baseline(
    path: &std::path::Path,
    table_ids: (u32, u32),
    booked: &Books,
) -> std::io::Result<usize> {
    use std::io::Write as _;
    let entries: Vec<_> = booked.iter().filter(|(_, c)| c.refused() > 0).collect();
    let mut buf = Vec::with_capacity(24 + entries.len() * BASELINE_ENTRY);
    buf.extend_from_slice(BASELINE_MAGIC);
    buf.extend_from_slice(&table_ids.0.to_le_bytes());
    buf.extend_from_slice(&table_ids.1.to_le_bytes());
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (digest, counted) in &entries {
        buf.extend_from_slice(&digest.to_le_bytes());
        buf.extend_from_slice(&counted.requests.to_le_bytes());
        buf.extend_from_slice(&counted.refused().to_le_bytes());
    }
    let tmp = path.with_extension("baseline.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(entries.len())
}

/// Reads and removes a saved baseline. None when there is none, or when it was taken from
/// other tables than `table_ids`, or when it is damaged.
pub fn take_baseline(path: &std::path::Path, table_ids: (u32, u32)) -> Option<Books> {
    let bytes = std::fs::read(path).ok()?;
    let _ = std::fs::remove_file(path);
    let (head, body) = bytes.split_at_checked(24)?;
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
    let u64_at = |e: &[u8], i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap());
    let entry = match &head[..8] {
        m if m == BASELINE_MAGIC => BASELINE_ENTRY,
        m if m == BASELINE_V1_MAGIC => BASELINE_V1_ENTRY,
        _ => return None,
    };
    if (u32_at(8), u32_at(12)) != table_ids {
        return None;
    }
    let count = u64_at(head, 16) as usize;
    if body.len() != count.checked_mul(entry)? {
        return None;
    }
    let mut out = Books::default();
    out.reserve(count);
    for e in body.chunks_exact(entry) {
        let (id, counted) = if entry == BASELINE_ENTRY {
            (u64_at(e, 0), Counted::new(u64_at(e, 8), u64_at(e, 16)))
        } else {
            let level = if e[0] == 1 {
                Level::Aggregate
            } else {
                Level::Source
            };
            let key = AddrKey {
                addr: e[1..17].try_into().unwrap(),
            };
            (
                digest(level, &key),
                Counted::new(u64_at(e, 17), u64_at(e, 25)),
            )
        };
        out.insert(id, counted);
    }
    Some(out)
}

pub struct Sampler {
    reader: TableReader,
    /// Whether the first sample's refused counts, measured against `booked`, are news for
    /// the history (false only for adopted tables without a saved baseline).
    baseline_known: bool,
    /// Every key's counters as of the last sample that saw it, updated in place (one hash
    /// lookup per key and sample; keys a sample did not see are dropped after it).
    booked: Books,
    /// The number of samples taken, modulo 255, from 1 (0 marks a saved baseline's keys).
    generation: u8,
    previous_at: Option<Instant>,
}

pub struct SampleOutput {
    pub snapshot: Arc<Snapshot>,
    /// The keys whose refused count grew the most (at most [`MAX_SIGHTINGS`]), for the history.
    pub sightings: Vec<Sighting>,
    /// Keys whose refused count grew but that were not among them.
    pub folded: u64,
}

/// One key of a sample, as the ranking passes see it.
type Seen = (f64, Level, AddrKey, Bucket);

/// Keeps the best `keep` of what is pushed by `order` (best first), trimming whenever twice
/// that many have gathered: amortised linear in what is pushed, bounded in memory.
struct Best<T, F> {
    items: Vec<T>,
    keep: usize,
    order: F,
}

impl<T, F: FnMut(&T, &T) -> std::cmp::Ordering> Best<T, F> {
    fn new(keep: usize, order: F) -> Self {
        Self {
            items: Vec::with_capacity(2 * keep),
            keep,
            order,
        }
    }

    fn push(&mut self, item: T) {
        self.items.push(item);
        if self.items.len() >= 2 * self.keep {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.items.len() > self.keep {
            self.items
                .select_nth_unstable_by(self.keep, &mut self.order);
            self.items.truncate(self.keep);
        }
    }

    /// The best `keep`, best first.
    fn into_sorted(mut self) -> Vec<T> {
        self.trim();
        self.items.sort_by(&mut self.order);
        self.items
    }
}

impl Sampler {
    pub fn new(reader: TableReader, baseline: Baseline) -> Self {
        let (baseline_known, booked) = match baseline {
            Baseline::Empty => (true, Books::default()),
            Baseline::Saved(map) => (true, map),
            Baseline::Unknown => (false, Books::default()),
        };
        Self {
            reader,
            baseline_known,
            booked,
            generation: 0,
            previous_at: None,
        }
    }

    /// Takes one sample (blocking: call from a blocking thread), resting between chunks as
    /// `pace` says.
    pub fn sample(&mut self, prefixes: Prefixes, pace: &Pace) -> anyhow::Result<SampleOutput> {
        let started = Instant::now();
        let cpu_at_start = thread_cpu_time();
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
        self.generation = self.generation % 255 + 1;
        let generation = self.generation;
        let mut rates = KeyMap::default();
        // Busiest first; among equals, the most requests overall.
        let mut busiest = Best::new(MAX_ROWS, |a: &Seen, b: &Seen| {
            b.0.total_cmp(&a.0).then(b.3.requests.cmp(&a.3.requests))
        });
        // Most newly refused first.
        let mut refused = Best::new(MAX_SIGHTINGS, |a: &(u64, f64, Level, AddrKey), b| {
            b.0.cmp(&a.0)
        });
        let mut with_refusals = 0u64;
        let mut tracked = [0u64; 2];
        let mut chunk = Vec::with_capacity(CHUNK);
        for (i, level) in [Level::Source, Level::Aggregate].into_iter().enumerate() {
            let mut walk = match level {
                Level::Source => self.reader.walk_sources(CHUNK),
                Level::Aggregate => self.reader.walk_aggregates(CHUNK),
            };
            loop {
                let chunk_cpu = thread_cpu_time();
                chunk.clear();
                let more = walk.next_chunk(&mut chunk)?;
                tracked[i] += chunk.len() as u64;
                for (key, bucket) in &chunk {
                    let id = (level, *key);
                    let booked = self.booked.entry(digest(level, key)).or_default();
                    let (prev_req, prev_ref) = (booked.requests, booked.refused());
                    *booked = Counted::seen_by(bucket.requests, bucket.refused, generation);
                    let delta_req = counted_since(level, prev_req, bucket.requests);
                    let delta_ref = counted_since(level, prev_ref, bucket.refused);
                    let rate = if first || secs <= 0.0 {
                        0.0
                    } else {
                        delta_req as f64 / secs
                    };
                    if rate > 0.0 && bucket.refused > 0 && rates.len() < MAX_RATES {
                        rates.insert(id, rate);
                    }
                    if (!first || self.baseline_known) && delta_ref > 0 {
                        with_refusals += 1;
                        refused.push((delta_ref, rate, level, *key));
                    }
                    busiest.push((rate, level, *key, *bucket));
                }
                if !more {
                    break;
                }
                let rest = pace.rest_after(thread_cpu_time().saturating_sub(chunk_cpu));
                if !rest.is_zero() {
                    std::thread::sleep(rest);
                }
            }
        }
        let at_ms = timefmt::unix_ms(now_w);
        let sightings: Vec<Sighting> = refused
            .into_sorted()
            .into_iter()
            .map(|(dropped, rate, level, key)| Sighting {
                source: prefixes.cidr(level, &key).to_string(),
                level: level.as_str(),
                at_ms,
                rate,
                dropped,
                banned: false,
                event: false,
            })
            .collect();
        let rows = busiest
            .into_sorted()
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
        // Keys gone from the tables (evicted, expired) since the sample before.
        self.booked.retain(|_, c| c.seen() == generation);
        self.baseline_known = true;
        self.previous_at = Some(started);
        let snapshot = Snapshot {
            taken_at: Some(now_w),
            interval,
            took: started.elapsed(),
            busy: thread_cpu_time().saturating_sub(cpu_at_start),
            tracked_sources: tracked[0],
            tracked_aggregates: tracked[1],
            active_bans: ban_of.len() as u64,
            rows,
            rates,
        };
        Ok(SampleOutput {
            snapshot: Arc::new(snapshot),
            folded: with_refusals - sightings.len() as u64,
            sightings,
        })
    }
}

impl Sampler {
    /// The counters the history has booked so far (what the next daemon starts from).
    pub fn booked(&self) -> &Books {
        &self.booked
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
        let share = SAMPLE_CPU_SHARE;
        assert_eq!(period_after(Duration::from_millis(5), share), INTERVAL);
        let busy = Duration::from_millis(500);
        let period = period_after(busy, share);
        let cycle = busy.as_secs_f64() / period.as_secs_f64();
        assert!(cycle <= share * CYCLE_FRACTION + 1e-9, "{cycle}");
        assert!(period <= Duration::from_secs(60), "{period:?}");
        assert_eq!(period_after(busy, 1.0), Duration::from_secs(1), "unpaced");
    }

    #[test]
    fn a_chunk_rests_for_its_share_and_not_at_all_when_hurried() {
        let pace = Pace::new(SAMPLE_CPU_SHARE);
        let busy = Duration::from_millis(1);
        let rest = pace.rest_after(busy);
        let share = busy.as_secs_f64() / (busy + rest).as_secs_f64();
        assert!((share - SAMPLE_CPU_SHARE).abs() < 1e-6, "share {share}");
        assert!(
            pace.rest_after(Duration::from_secs(1)) <= Duration::from_millis(250),
            "a stop is never waited on for long"
        );
        pace.hurry.store(true, Ordering::Relaxed);
        assert_eq!(pace.rest_after(busy), Duration::ZERO);
        assert_eq!(Pace::default().rest_after(busy), Duration::ZERO, "unpaced");
    }

    #[test]
    fn the_ranking_keeps_the_best_whatever_the_order_they_come_in() {
        let mut best = Best::new(3, |a: &u64, b: &u64| b.cmp(a));
        for x in [5, 1, 9, 3, 7, 8, 2, 6, 4, 0, 10] {
            best.push(x);
        }
        assert_eq!(best.into_sorted(), vec![10, 9, 8]);
        let few = Best::new(3, |a: &u64, b: &u64| b.cmp(a));
        assert!(few.into_sorted().is_empty());
    }
}

#[cfg(test)]
mod baseline_tests {
    use super::*;

    #[test]
    fn a_saved_baseline_applies_only_to_the_tables_it_came_from_and_only_once() {
        let dir = std::env::temp_dir().join(format!("monitor-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("offenders.db.baseline");
        let source = digest(Level::Source, &AddrKey::from_v4([192, 0, 2, 1]));
        let aggregate = digest(Level::Aggregate, &AddrKey::from_v4([192, 0, 2, 0]));
        let mut booked = Books::default();
        booked.insert(source, Counted::new(50, 7));
        booked.insert(aggregate, Counted::new(80, 9));
        // Keys with nothing refused need no baseline: all their refusals are news.
        booked.insert(
            digest(Level::Source, &AddrKey::from_v4([192, 0, 2, 2])),
            Counted::new(5, 0),
        );
        assert_eq!(save_baseline(&path, (11, 12), &booked).unwrap(), 2);
        assert!(take_baseline(&path, (11, 13)).is_none(), "other tables");
        assert!(!path.exists(), "a read baseline is removed");
        save_baseline(&path, (11, 12), &booked).unwrap();
        let got = take_baseline(&path, (11, 12)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&aggregate], Counted::new(80, 9));
        assert!(take_baseline(&path, (11, 12)).is_none(), "used once");

        // The previous version's file (whole keys) is still read, once, after an upgrade.
        let mut v1 = b"MONBASE1".to_vec();
        v1.extend_from_slice(&11u32.to_le_bytes());
        v1.extend_from_slice(&12u32.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.push(0);
        v1.extend_from_slice(&AddrKey::from_v4([192, 0, 2, 1]).addr);
        v1.extend_from_slice(&50u64.to_le_bytes());
        v1.extend_from_slice(&7u64.to_le_bytes());
        std::fs::write(&path, v1).unwrap();
        let got = take_baseline(&path, (11, 12)).unwrap();
        assert_eq!(got[&source], Counted::new(50, 7));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn booked_counters_keep_their_refused_count_and_generation_apart() {
        let c = Counted::seen_by(10, 1 << 40, 255);
        assert_eq!((c.requests, c.refused(), c.seen()), (10, 1 << 40, 255));
        assert_eq!(Counted::new(1, 2).seen(), 0, "a baseline's keys are unseen");
    }
}
