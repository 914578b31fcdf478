//! The publishing task: every interval, read the kernel's heavy-hitter candidates, keep those
//! above the floor (largest first, at most `--fleet-max-keys`), and send them to the fleet in
//! batches of one Lua script call each. It also sends queued blocks and unblocks, and keeps
//! the kernel's marking step in line with the live host count.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use log::warn;
use monitor_common::{
    addr::{AddrKey, AddrMask, V4_MAPPED_BITS},
    maps::{FleetConfig, FleetCount},
};
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{Backoff, CALL_TIMEOUT, Fleet, FleetRate, call, entry::Entry, lock, script};
use crate::{cidr::Cidr, clock, config::FleetSettings, daemon::Shared, kernel::FleetReader};

/// Keys per script call: large enough to keep round trips few at 10,000 heavy hitters, small
/// enough that one call stays well under a millisecond of Redis time.
const BATCH_KEYS: usize = 500;
/// Rows kept for `monitor top --fleet`.
const TOP_ROWS: usize = 100;
/// How long (in intervals) a key stays in `top --fleet` after it was last published.
const TOP_KEEP_INTERVALS: u32 = 10;

/// One key to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub key: String,
    pub count: u64,
    /// Requests per fleet window above which the fleet bans the key.
    pub limit: u64,
    pub reason: &'static str,
}

/// The length of the sliding window the script estimates over: one second, or the interval
/// when that is longer (an estimate over less than one interval would see no full count).
pub fn window(settings: &FleetSettings) -> Duration {
    settings.interval.max(Duration::from_secs(1))
}

fn per_window(rate: crate::units::Rate, window: Duration) -> f64 {
    rate.per_second() * window.as_secs_f64()
}

/// The floor a source's count in one interval must reach to be published: half of an even
/// share of the fleet limit among `hosts` hosts, so a source spread unevenly is still seen.
pub fn floor(rate: crate::units::Rate, interval: Duration, hosts: usize) -> u64 {
    let per_interval = rate.per_second() * interval.as_secs_f64();
    ((per_interval / (2.0 * hosts.max(1) as f64)) as u64).max(1)
}

/// The kernel's marking step for a floor: a power of two of at most a quarter of it, so a
/// count is exact to within a quarter of the floor.
pub fn step_mask(floor: u64) -> u64 {
    let quarter = (floor / 4).max(1);
    (1u64 << (63 - quarter.leading_zeros())) - 1
}

fn count_in(c: &FleetCount, interval: u64) -> u64 {
    if c.interval == interval {
        c.count
    } else if c.prev_interval == interval {
        c.prev_count
    } else {
        0
    }
}

/// Prefix lengths used to name keys.
#[derive(Clone, Copy, Debug)]
pub struct Prefixes {
    pub v4: u8,
    pub v6: u8,
    pub v4_agg: u8,
    pub v6_agg: u8,
}

/// Picks what to publish from the candidates' counts in `interval`: sources at or above
/// `floor` (and, with a fleet aggregate rate, aggregate prefixes at or above `agg_floor`),
/// largest first, at most `max`. Returns the items and how many qualified but were cut.
#[allow(clippy::too_many_arguments)]
pub fn select(
    candidates: &[(AddrKey, FleetCount)],
    interval: u64,
    floor: u64,
    limit: u64,
    agg: Option<(u64, u64)>,
    prefixes: Prefixes,
    max: usize,
) -> (Vec<Item>, u64) {
    let mut items = Vec::new();
    let mut aggs: HashMap<AddrKey, u64> = HashMap::new();
    for (key, c) in candidates {
        let n = count_in(c, interval);
        if n == 0 {
            continue;
        }
        let (src_len, agg_len) = if key.is_v4() {
            (prefixes.v4, prefixes.v4_agg)
        } else {
            (prefixes.v6, prefixes.v6_agg)
        };
        if n >= floor {
            items.push(Item {
                key: Cidr::from_key(key, src_len).to_string(),
                count: n,
                limit,
                reason: "fleet-rate",
            });
        }
        if agg.is_some() {
            let mapped = if key.is_v4() {
                V4_MAPPED_BITS + agg_len
            } else {
                agg_len
            };
            *aggs
                .entry(key.masked(&AddrMask::from_bits(mapped)))
                .or_default() += n;
        }
    }
    if let Some((agg_floor, agg_limit)) = agg {
        for (key, n) in aggs {
            if n >= agg_floor {
                let len = if key.is_v4() {
                    prefixes.v4_agg
                } else {
                    prefixes.v6_agg
                };
                items.push(Item {
                    key: Cidr::from_key(&key, len).to_string(),
                    count: n,
                    limit: agg_limit,
                    reason: "fleet-agg-rate",
                });
            }
        }
    }
    items.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    let cut = items.len().saturating_sub(max) as u64;
    items.truncate(max);
    (items, cut)
}

/// What one publish round learned.
struct Round {
    hosts: Vec<String>,
    rates: Vec<FleetRate>,
    banned: usize,
}

async fn publish(
    con: &mut ConnectionManager,
    settings: &FleetSettings,
    items: &[Item],
) -> Result<Round, String> {
    let script = script::publish();
    let window = window(settings);
    let host_ttl = (settings.interval * 3).as_millis() as u64;
    let mut round = Round {
        hosts: Vec::new(),
        rates: Vec::with_capacity(items.len()),
        banned: 0,
    };
    // An empty round still runs once: it is the heartbeat.
    let chunks: Vec<&[Item]> = if items.is_empty() {
        vec![&[]]
    } else {
        items.chunks(BATCH_KEYS).collect()
    };
    for chunk in chunks {
        let mut inv = script.prepare_invoke();
        inv.key(script::hosts_key())
            .key(script::stream_key())
            .key(script::active_key())
            .arg(&settings.id)
            .arg(window.as_millis() as u64)
            .arg(settings.ban.as_millis() as u64)
            .arg(host_ttl)
            .arg(script::STREAM_MAXLEN);
        for item in chunk {
            inv.key(script::count_key(&item.key))
                .key(script::decision_key(&item.key))
                .arg(&item.key)
                .arg(item.count)
                .arg(item.limit)
                .arg(item.reason);
        }
        let (_now, hosts, est, banned): (i64, Vec<String>, Vec<String>, Vec<String>) =
            call(CALL_TIMEOUT, inv.invoke_async(con)).await?;
        round.hosts = hosts;
        round.banned += banned.len();
        for (item, e) in chunk.iter().zip(est) {
            let e: f64 = e.parse().unwrap_or(0.0);
            round.rates.push(FleetRate {
                key: item.key.clone(),
                fleet_rate: e / window.as_secs_f64(),
                local_count: item.count,
            });
        }
    }
    Ok(round)
}

/// Sends queued blocks and unblocks, oldest first; stops at the first failure (they stay
/// queued).
async fn flush(
    con: &mut ConnectionManager,
    fleet: &Fleet,
    pending: &mut VecDeque<Entry>,
) -> Result<(), String> {
    let script = script::control();
    while let Some(e) = pending.front() {
        let key = e.src.to_string();
        let mut inv = script.prepare_invoke();
        inv.key(script::stream_key())
            .key(script::active_key())
            .key(script::decision_key(&key))
            .key(script::count_key(&key))
            .arg(e.op.as_str())
            .arg(&key)
            .arg(e.until_ms)
            .arg(&e.origin)
            .arg(&e.reason)
            .arg(script::STREAM_MAXLEN);
        let _: Option<String> = call(CALL_TIMEOUT, inv.invoke_async(con)).await?;
        pending.pop_front();
        fleet.metrics.fleet_pending.dec();
    }
    Ok(())
}

fn until_next_boundary(interval_ns: u64) -> Duration {
    let now = clock::kernel_now_ns();
    // A little after the boundary, so the kernel's counts for the interval are complete.
    let next = (now / interval_ns + 1) * interval_ns + 5_000_000;
    Duration::from_nanos(next - now)
}

fn prefixes(shared: &Shared) -> Prefixes {
    let w = shared.writer();
    let p = w.policy();
    Prefixes {
        v4: p.v4_prefix,
        v6: p.v6_prefix,
        v4_agg: p.v4_agg_prefix,
        v6_agg: p.v6_agg_prefix,
    }
}

pub async fn run(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    reader: FleetReader,
    mut ops: mpsc::UnboundedReceiver<Entry>,
) {
    let s = fleet.settings.clone();
    let interval_ns = s.interval.as_nanos() as u64;
    let window = window(&s);
    let limit = (per_window(s.rate, window) + s.burst as f64).ceil() as u64;
    let agg_limit = s.agg_rate.map(|r| per_window(r, window).ceil() as u64);
    let mut hosts = 1usize;
    let mut marked_floor = 0;
    let reader = Arc::new(reader);
    let mut con: Option<ConnectionManager> = None;
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut read_error_logged = false;
    let mut recent: HashMap<String, (FleetRate, Instant)> = HashMap::new();
    loop {
        let floor = floor(s.rate, s.interval, hosts);
        let agg_floor = s.agg_rate.map(|r| floor_agg(r, s.interval, hosts));
        // The kernel marks at the smaller of the two floors' steps.
        let mark_floor = agg_floor.map_or(floor, |a| a.min(floor));
        if mark_floor != marked_floor {
            let config = FleetConfig {
                interval_ns,
                step_mask: step_mask(mark_floor),
            };
            match shared.writer().set_fleet(&config) {
                Ok(()) => marked_floor = mark_floor,
                Err(e) => warn!("fleet: writing the marking step failed: {e:#}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(until_next_boundary(interval_ns)) => {}
            Some(op) = ops.recv() => {
                pending.push_back(op);
                while let Ok(op) = ops.try_recv() {
                    pending.push_back(op);
                }
                if let Some(c) = con.as_mut()
                    && let Err(e) = flush(c, &fleet, &mut pending).await
                {
                    con = None;
                    fleet.set_up(Some(false), None, &e);
                    retry_at = Instant::now() + backoff.step();
                }
                continue;
            }
        }
        let target = clock::kernel_now_ns() / interval_ns - 1;
        let r = reader.clone();
        let candidates = match tokio::task::spawn_blocking(move || r.candidates()).await {
            Ok(Ok(c)) => {
                read_error_logged = false;
                c
            }
            Ok(Err(e)) => {
                if !read_error_logged {
                    warn!("fleet: reading the heavy-hitter candidates failed: {e}");
                    read_error_logged = true;
                }
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let (items, cut) = select(
            &candidates,
            target,
            floor,
            limit,
            agg_floor.zip(agg_limit),
            prefixes(&shared),
            s.max_keys,
        );
        fleet.metrics.fleet_keys_suppressed.inc_by(cut);
        if con.is_none() && Instant::now() >= retry_at {
            match fleet.connect(CALL_TIMEOUT).await {
                Ok(c) => {
                    con = Some(c);
                }
                Err(e) => {
                    fleet.set_up(Some(false), None, &e);
                    retry_at = Instant::now() + backoff.step();
                }
            }
        }
        let Some(c) = con.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let result = match flush(c, &fleet, &mut pending).await {
            Ok(()) => publish(c, &s, &items).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(round) => {
                backoff.reset();
                fleet.set_up(Some(true), None, "");
                fleet.synced();
                fleet
                    .metrics
                    .fleet_publish_seconds
                    .set(started.elapsed().as_secs_f64());
                fleet
                    .metrics
                    .fleet_keys_published
                    .inc_by(items.len() as u64);
                fleet.metrics.fleet_bans_decided.inc_by(round.banned as u64);
                hosts = round.hosts.len().max(1);
                fleet.metrics.fleet_hosts.set(hosts as i64);
                *lock(&fleet.status.hosts) = round.hosts;
                // Rows stay for a few intervals after their key was last published, so a
                // banned scraper that paused is still listed.
                let now = Instant::now();
                for r in round.rates {
                    recent.insert(r.key.clone(), (r, now));
                }
                recent
                    .retain(|_, (_, at)| now.duration_since(*at) < s.interval * TOP_KEEP_INTERVALS);
                let mut rates: Vec<FleetRate> = recent.values().map(|(r, _)| r.clone()).collect();
                rates.sort_by(|a, b| b.fleet_rate.total_cmp(&a.fleet_rate));
                rates.truncate(TOP_ROWS);
                *lock(&fleet.status.top) = rates;
            }
            Err(e) => {
                con = None;
                fleet.set_up(Some(false), None, &e);
                retry_at = Instant::now() + backoff.step();
            }
        }
    }
}

fn floor_agg(rate: crate::units::Rate, interval: Duration, hosts: usize) -> u64 {
    floor(rate, interval, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Rate;

    fn rate(n: u64) -> Rate {
        Rate {
            requests: n,
            period_ns: 1_000_000_000,
        }
    }

    #[test]
    fn fleet_floor_and_step_follow_the_limit_and_host_count() {
        let s = Duration::from_secs(1);
        assert_eq!(floor(rate(30), s, 3), 5);
        assert_eq!(floor(rate(30), s, 100), 1);
        assert_eq!(floor(rate(10_000), s, 1), 5_000);
        assert_eq!(step_mask(5), 0);
        assert_eq!(step_mask(1), 0);
        assert_eq!(step_mask(5_000), 1023);
        assert_eq!(step_mask(4_096), 1023);
        assert_eq!(step_mask(4_095), 511);
    }

    #[test]
    fn fleet_select_keeps_the_largest_above_the_floor_and_counts_the_cut() {
        let key = |last: u8| AddrKey::from_v4([198, 51, 100, last]);
        let c = |interval, count, prev_interval, prev_count| FleetCount {
            interval,
            count,
            prev_interval,
            prev_count,
        };
        let candidates = vec![
            (key(1), c(7, 50, 6, 9)),  // counts 9 in interval 6 (already rolled over)
            (key(2), c(6, 20, 5, 1)),  // 20 in 6
            (key(3), c(6, 4, 0, 0)),   // under the floor
            (key(4), c(6, 12, 0, 0)),  // 12 in 6
            (key(5), c(4, 99, 3, 99)), // nothing in 6
        ];
        let p = Prefixes {
            v4: 32,
            v6: 64,
            v4_agg: 24,
            v6_agg: 48,
        };
        let (items, cut) = select(&candidates, 6, 5, 30, None, p, 2);
        let got: Vec<_> = items.iter().map(|i| (i.key.as_str(), i.count)).collect();
        assert_eq!(got, [("198.51.100.2/32", 20), ("198.51.100.4/32", 12)]);
        assert_eq!(cut, 1);
        let (items, _) = select(&candidates, 6, 100, 30, Some((30, 50)), p, 10);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].key, "198.51.100.0/24");
        assert_eq!(items[0].count, 9 + 20 + 4 + 12);
        assert_eq!((items[0].limit, items[0].reason), (50, "fleet-agg-rate"));
    }
}
