//! Fleet mode: N daemons (3, and 10 in the full run) in namespaces behind a router, sharing
//! one `redis-server`, measured for
//! - reaction: from the moment a scraper spread over every host crosses the fleet limit until
//!   every host drops it (in fleet intervals);
//! - overshoot: requests admitted fleet-wide above the limit before every host dropped it (in
//!   units of the fleet limit times one interval);
//! - each daemon's CPU and Redis's operations per second while every daemon publishes 10,000
//!   heavy hitters per interval. Those candidates are written straight into each daemon's
//!   pinned `MON_FLEET_HH` (each just above the publishing floor, under the fleet limit), so
//!   the figure is the daemon's and Redis's cost, not a traffic generator's.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use monitor_common::{
    addr::AddrKey,
    maps::{FleetCount, MAP_FLEET_HITTERS},
};
use serde::Serialize;
use tests::fleet::{Redis, World};

const FLEET_RATE: u64 = 30;
const SCRAPER_RATE: u32 = 60;
const INTERVAL: Duration = Duration::from_secs(1);
const HEAVY_HITTERS: u32 = 10_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetRun {
    pub daemons: usize,
    pub reaction_s: f64,
    pub reaction_intervals: f64,
    pub admitted: u64,
    pub overshoot_requests: f64,
    pub overshoot_intervals: f64,
    /// Mean and largest CPU fraction of one core per daemon at 10,000 heavy hitters.
    pub daemon_cpu_mean: f64,
    pub daemon_cpu_max: f64,
    pub redis_ops_per_s: f64,
    pub redis_evalsha_per_s: f64,
    pub keys_published_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetResult {
    pub runs: Vec<FleetRun>,
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn info_stat(redis: &Redis, section: &str, key: &str) -> f64 {
    let out = redis.cli(&["INFO", section]).unwrap_or_default();
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| {
            // commandstats lines are "calls=N,usec=..."
            let v = v.split(',').next().unwrap_or(v);
            v.trim_start_matches("calls=").trim().parse().unwrap_or(0.0)
        })
        .unwrap_or(0.0)
}

fn kernel_now_ns() -> u64 {
    monitor::clock::kernel_now_ns()
}

pub fn run(
    monitor_bin: &std::path::Path,
    sizes: &[usize],
    soak: Duration,
) -> anyhow::Result<FleetResult> {
    if !monitor_bin.exists() {
        bail!("{} is missing", monitor_bin.display());
    }
    // SAFETY: set before any thread of ours reads the environment.
    unsafe { std::env::set_var("MONITOR_BIN", monitor_bin) };
    let mut result = FleetResult::default();
    for (k, &n) in sizes.iter().enumerate() {
        eprintln!("bench: fleet: {n} daemons against one redis-server");
        result.runs.push(one(n, 71 + k as u8, soak)?);
    }
    Ok(result)
}

fn one(n: usize, net: u8, soak: Duration) -> anyhow::Result<FleetRun> {
    let mut world = World::new(net, n, &[10]);
    let url = world.start_redis(Redis::unique_port()).url();
    let args = [
        "--rate",
        "100000/s",
        "--burst",
        "100000",
        "--fleet-rate",
        "30/s",
        "--fleet-interval",
        "1s",
        "--log-format",
        "json",
    ];
    for i in 0..n {
        world.start_daemon(i, &url, &args);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..n).any(|i| {
        let f = world.hosts[i].daemon().json(&["fleet"]);
        f["connected"] != true || f["hosts"].as_array().map_or(0, Vec::len) < n
    }) {
        if Instant::now() > deadline {
            bail!("the daemons did not all join the fleet within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Reaction and overshoot.
    eprintln!("bench: fleet: {n} daemons: a scraper at {SCRAPER_RATE}/s spread over every host");
    let src: IpAddr = world.client_ip(10);
    let results = world.spread(src, SCRAPER_RATE, Duration::from_secs(6));
    // The limit is crossed when the requests sent in the last second first exceed it.
    let crossed = Duration::from_secs_f64(FLEET_RATE as f64 / SCRAPER_RATE as f64);
    let mut stopped = Duration::ZERO;
    for h in 0..n {
        // The host drops the scraper from the first refused request after which none passes.
        let last_ok = results
            .iter()
            .filter(|r| r.1 == h && r.2)
            .map(|r| r.0)
            .max()
            .unwrap_or_default();
        let first_drop = results
            .iter()
            .filter(|r| r.1 == h && !r.2 && r.0 > last_ok)
            .map(|r| r.0)
            .min()
            .with_context(|| format!("host {h} never dropped the scraper"))?;
        stopped = stopped.max(first_drop);
    }
    let admitted = results.iter().filter(|r| r.2).count() as u64;
    let reaction = stopped.saturating_sub(crossed);
    let overshoot = (admitted as f64 - FLEET_RATE as f64 * stopped.as_secs_f64()).max(0.0);
    let per_interval = FLEET_RATE as f64 * INTERVAL.as_secs_f64();
    eprintln!(
        "bench: fleet: {n} daemons: every host dropped the scraper {:.2} s after it crossed the limit; {admitted} admitted, {overshoot:.0} above the limit",
        reaction.as_secs_f64()
    );

    // 10,000 heavy hitters on every daemon: refresh their candidate counts in the pinned maps.
    eprintln!("bench: fleet: {n} daemons: {HEAVY_HITTERS} heavy hitters per daemon for {soak:?}");
    let floor = (FLEET_RATE as f64 / (2.0 * n as f64)).max(1.0) as u64;
    let maps: Vec<aya::maps::MapData> = world
        .hosts
        .iter()
        .map(|h| aya::maps::MapData::from_pin(h.paths.pin.join(MAP_FLEET_HITTERS)))
        .collect::<Result<_, _>>()
        .context("opening the pinned candidate maps")?;
    let keys: Vec<AddrKey> = (0..HEAVY_HITTERS)
        .map(|i| AddrKey::from_v4([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]))
        .collect();
    let refresh = |maps: &[aya::maps::MapData]| -> anyhow::Result<()> {
        let cur = kernel_now_ns() / INTERVAL.as_nanos() as u64;
        let v = FleetCount {
            interval: cur,
            count: floor + 1,
            prev_interval: cur - 1,
            prev_count: floor + 1,
        };
        let entries: Vec<(AddrKey, FleetCount)> = keys.iter().map(|k| (*k, v)).collect();
        for m in maps {
            monitor::batch::write_all(m.fd().as_fd().as_raw_fd(), &entries)?;
        }
        Ok(())
    };
    let pids: Vec<u32> = world.hosts.iter().map(|h| h.daemon().pid()).collect();
    // Warm up: two intervals so every daemon has published the keys once.
    let warm = Instant::now();
    while warm.elapsed() < INTERVAL * 2 {
        refresh(&maps)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let redis = world.redis();
    let ops0 = info_stat(redis, "stats", "total_commands_processed");
    let eval0 = info_stat(redis, "commandstats", "cmdstat_evalsha");
    let pub0: u64 = (0..n)
        .map(|i| {
            world.hosts[i].daemon().json(&["fleet"])["keys_published"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    let cpu0: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    while t0.elapsed() < soak {
        refresh(&maps)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<Result<_, _>>()?;
    let ops1 = info_stat(redis, "stats", "total_commands_processed");
    let eval1 = info_stat(redis, "commandstats", "cmdstat_evalsha");
    let pub1: u64 = (0..n)
        .map(|i| {
            world.hosts[i].daemon().json(&["fleet"])["keys_published"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let fractions: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / hz / secs)
        .collect();
    let run = FleetRun {
        daemons: n,
        reaction_s: reaction.as_secs_f64(),
        reaction_intervals: reaction.as_secs_f64() / INTERVAL.as_secs_f64(),
        admitted,
        overshoot_requests: overshoot,
        overshoot_intervals: overshoot / per_interval,
        daemon_cpu_mean: fractions.iter().sum::<f64>() / n as f64,
        daemon_cpu_max: fractions.iter().cloned().fold(0.0, f64::max),
        redis_ops_per_s: (ops1 - ops0) / secs,
        redis_evalsha_per_s: (eval1 - eval0) / secs,
        keys_published_per_s: (pub1 - pub0) as f64 / secs,
    };
    eprintln!(
        "bench: fleet: {n} daemons: CPU per daemon mean {:.2}% max {:.2}% of a core; Redis {:.0} ops/s ({:.1} script calls/s); {:.0} keys published/s",
        run.daemon_cpu_mean * 100.0,
        run.daemon_cpu_max * 100.0,
        run.redis_ops_per_s,
        run.redis_evalsha_per_s,
        run.keys_published_per_s
    );
    Ok(run)
}
