//! Offender events: drains the kernel's ring buffer when it becomes readable, writes one line
//! per event (text or JSON) within `--event-lines` (see `event_lines.rs`: past it, one summary
//! line a second), and hands every event to the history. The kernel sends at most one event
//! per key per second (and always one when a ban starts).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use monitor_common::{
    addr::AddrKey,
    config::action,
    event::{EVENT_SIZE, Event, kind, level},
    stats::Stat,
};
use tokio::io::unix::AsyncFd;

use super::{
    Shared,
    event_lines::{EventLines, Summary},
    sampler::Level,
};
use crate::{
    cidr::Cidr, clock, config::LogFormat, history::Sighting, logging, timefmt, units::Rate,
};

/// After a small batch, the reader waits this long before it looks again, so that a steady
/// trickle of events (the kernel's budget spreads them over each second) is handled in
/// batches: each wake-up costs a system call, a task switch and a history hand-off whatever
/// its size, and one event per wake-up cost about 10 µs of CPU each here. Event lines are at
/// most this much later; the ring buffer (1 MiB) holds far more than a pause's worth at any
/// budget up to half a million events a second.
const COALESCE: Duration = Duration::from_millis(20);
/// A batch this large means events are arriving fast: read again at once.
const LARGE_BATCH: usize = 256;

/// Consecutive events of one key give its rate; entries older than this are forgotten.
const RATE_MEMORY: Duration = Duration::from_secs(120);

/// The kernel's count of dropped packets, for the summary lines.
fn dropped_now(shared: &Shared) -> Option<u64> {
    shared
        .writer()
        .kernel()
        .stats()
        .ok()
        .map(|s| s.get(Stat::Dropped))
}

pub async fn run(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    line_limit: Rate,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its descriptor, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut last: HashMap<(Level, AddrKey), (u64, u64)> = HashMap::new();
    let mut limiter = EventLines::new(line_limit);
    let origin = tokio::time::Instant::now();
    loop {
        let due = limiter.summary_due();
        let readable = tokio::select! {
            r = fd.readable_mut() => Some(r?),
            _ = tokio::time::sleep_until(origin + due.unwrap_or_default()), if due.is_some() => None,
        };
        let Some(mut guard) = readable else {
            if let Some(summary) = limiter.summary(origin.elapsed(), || dropped_now(&shared)) {
                let mut line = summary_line(shared.log_format, &summary, line_limit);
                line.push('\n');
                logging::event_lines(&line);
            }
            continue;
        };
        let mut batch = Vec::new();
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= EVENT_SIZE {
                    // SAFETY: the kernel writes whole `Event`s; read_unaligned copes with any
                    // alignment of the ring buffer's data.
                    batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
                }
            }
        }
        guard.clear_ready();
        if batch.is_empty() {
            continue;
        }
        let now_k = clock::kernel_now_ns();
        last.retain(|_, (ts, _)| now_k.saturating_sub(*ts) < RATE_MEMORY.as_nanos() as u64);
        let snapshot = shared.snapshot();
        let format = shared.log_format;
        let mut sightings = Vec::with_capacity(batch.len());
        let mut lines = String::with_capacity(batch.len() * 160);
        for ev in &batch {
            let lvl = if ev.level == level::AGGREGATE {
                Level::Aggregate
            } else {
                Level::Source
            };
            let key = AddrKey { addr: ev.addr };
            let rate = match last.insert((lvl, key), (ev.ts_ns, ev.requests)) {
                Some((ts, req)) if ev.ts_ns > ts && ev.requests >= req => {
                    Some((ev.requests - req) as f64 * 1e9 / (ev.ts_ns - ts) as f64)
                }
                _ => snapshot.rates.get(&(lvl, key)).copied(),
            };
            let rate = rate.map(|r| (r * 10.0).round() / 10.0);
            let at = clock::to_wall(ev.ts_ns);
            let source = Cidr::from_key(&key, ev.prefix_len).to_string();
            let write = limiter.admit(
                origin.elapsed(),
                lvl,
                key,
                || source.clone(),
                rate,
                || dropped_now(&shared),
            );
            if write {
                lines.push_str(&line(format, ev, lvl, &source, rate, at));
                lines.push('\n');
            } else {
                shared.metrics.event_lines_held.inc();
            }
            shared.metrics.events_received.inc();
            sightings.push(Sighting {
                source,
                level: lvl.as_str(),
                at_ms: timefmt::unix_ms(at),
                rate: rate.unwrap_or(0.0),
                dropped: 0,
                banned: ev.kind == kind::BAN,
                event: true,
            });
        }
        if let Some(summary) = limiter.summary(origin.elapsed(), || dropped_now(&shared)) {
            lines.push_str(&summary_line(format, &summary, line_limit));
            lines.push('\n');
        }
        if !lines.is_empty() {
            logging::event_lines(&lines);
        }
        shared.record_history(sightings).await;
        if batch.len() < LARGE_BATCH {
            tokio::time::sleep(COALESCE).await;
        }
    }
}

/// The line that stands for the event lines held back in one window.
fn summary_line(format: LogFormat, s: &Summary, limit: Rate) -> String {
    let time = timefmt::rfc3339(SystemTime::now());
    let secs = (s.window.as_secs_f64() * 10.0).round() / 10.0;
    match format {
        LogFormat::Text => {
            let busiest: Vec<String> = s
                .busiest
                .iter()
                .map(|b| match b.rate {
                    Some(r) => format!("{} ({r}/s)", b.source),
                    None => b.source.clone(),
                })
                .collect();
            format!(
                "{time} offender summary: {} more sources over their limit in the last {secs}s ({} lines held back, event lines capped at {limit}); requests dropped={}; busiest: {}",
                s.sources,
                s.lines,
                s.dropped.map_or("-".to_string(), |d| d.to_string()),
                busiest.join(", "),
            )
        }
        LogFormat::Json => serde_json::json!({
            "time": time,
            "event": "summary",
            "sources": s.sources,
            "lines_held": s.lines,
            "window_secs": secs,
            "line_limit": limit.to_string(),
            "requests_dropped": s.dropped,
            "busiest": s.busiest.iter().map(|b| serde_json::json!({
                "source": b.source,
                "level": b.level.as_str(),
                "rate": b.rate,
            })).collect::<Vec<_>>(),
        })
        .to_string(),
    }
}

/// One event line. `rate` is None for a key's first event when the sampler has not measured
/// it yet (the event itself carries only the running request count).
fn line(
    format: LogFormat,
    ev: &Event,
    lvl: Level,
    source: &str,
    rate: Option<f64>,
    at: SystemTime,
) -> String {
    let time = timefmt::rfc3339(at);
    let proto = if ev.proto == 17 { "udp" } else { "tcp" };
    let act = if ev.action == action::MONITOR {
        "monitor"
    } else {
        "drop"
    };
    let what = if ev.kind == kind::BAN {
        "ban"
    } else {
        "over-limit"
    };
    let ban = (ev.ban_until_ns != 0).then(|| timefmt::rfc3339(clock::to_wall(ev.ban_until_ns)));
    match format {
        LogFormat::Text => format!(
            "{time} offender {what} source={source} level={} port={}/{proto} requests={} rate={} action={act} banned_until={}",
            lvl.as_str(),
            ev.dport,
            ev.requests,
            rate.map_or("-".to_string(), |r| format!("{r}/s")),
            ban.as_deref().unwrap_or("-"),
        ),
        LogFormat::Json => serde_json::json!({
            "time": time,
            "event": what,
            "source": source,
            "level": lvl.as_str(),
            "port": ev.dport,
            "proto": proto,
            "requests": ev.requests,
            "rate": rate,
            "action": act,
            "banned_until": ban,
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::event_lines::Busiest;

    #[test]
    fn a_summary_is_one_line_in_either_format() {
        let s = Summary {
            sources: 979,
            lines: 1200,
            dropped: Some(40_211),
            busiest: vec![
                Busiest {
                    source: "198.51.100.9/32".into(),
                    level: Level::Source,
                    rate: Some(4210.5),
                },
                Busiest {
                    source: "203.0.113.0/24".into(),
                    level: Level::Aggregate,
                    rate: None,
                },
            ],
            window: Duration::from_millis(1_002),
        };
        let limit: Rate = "20/s".parse().unwrap();
        let text = summary_line(LogFormat::Text, &s, limit);
        assert!(!text.contains('\n'));
        assert!(
            text.contains(
                "offender summary: 979 more sources over their limit in the last 1s (1200 lines held back, event lines capped at 20/s); requests dropped=40211; busiest: 198.51.100.9/32 (4210.5/s), 203.0.113.0/24"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&summary_line(LogFormat::Json, &s, limit)).unwrap();
        assert_eq!(json["event"], "summary");
        assert_eq!(json["sources"], 979);
        assert_eq!(json["requests_dropped"], 40_211);
        assert_eq!(json["busiest"][1]["level"], "aggregate");
    }
}
