//! Prometheus metrics: the kernel's counters by reason, table occupancy, events, and the
//! daemon's own health, served in the text exposition format by a small HTTP responder
//! (`GET /metrics`; anything else gets 404). Off unless `--metrics ADDR` is given.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use monitor_common::stats::Stat;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::kernel::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabel {
    list: &'static str,
}

pub struct Metrics {
    registry: Registry,
    kernel: Family<ReasonLabel, Counter>,
    kernel_seen: Mutex<Stats>,
    pub tracked_sources: Gauge,
    pub tracked_aggregates: Gauge,
    pub active_bans: Gauge,
    list_entries: Family<ListLabel, Gauge>,
    pub events_received: Counter,
    pub events_lost: Counter,
    pub events_suppressed: Counter,
    pub events_emitted: Counter,
    pub event_lines_held: Counter,
    pub samples: Counter,
    pub sample_errors: Counter,
    pub history_errors: Counter,
    pub history_pruned: Counter,
    pub swept_bans: Counter,
    pub swept_list_entries: Counter,
    pub last_sample_seconds: Gauge<f64, AtomicU64>,
    pub last_sample_cpu_seconds: Gauge<f64, AtomicU64>,
    pub history_folded: Counter,
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    pub control_requests: Counter,
    pub control_errors: Counter,
    pub fleet_up: Gauge,
    pub fleet_hosts: Gauge,
    pub fleet_publish_seconds: Gauge<f64, AtomicU64>,
    pub fleet_keys_published: Counter,
    pub fleet_keys_suppressed: Counter,
    pub fleet_bans_decided: Counter,
    pub fleet_bans_applied: Counter,
    pub fleet_stream_lag_seconds: Gauge<f64, AtomicU64>,
    pub fleet_malformed: Counter,
    pub fleet_pending: Gauge,
    started: Instant,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("monitor");
        let m = Self {
            kernel: Family::default(),
            kernel_seen: Mutex::new(Stats::default()),
            tracked_sources: Gauge::default(),
            tracked_aggregates: Gauge::default(),
            active_bans: Gauge::default(),
            list_entries: Family::default(),
            events_received: Counter::default(),
            events_lost: Counter::default(),
            events_suppressed: Counter::default(),
            events_emitted: Counter::default(),
            event_lines_held: Counter::default(),
            samples: Counter::default(),
            sample_errors: Counter::default(),
            history_errors: Counter::default(),
            history_pruned: Counter::default(),
            swept_bans: Counter::default(),
            swept_list_entries: Counter::default(),
            last_sample_seconds: Gauge::default(),
            last_sample_cpu_seconds: Gauge::default(),
            history_folded: Counter::default(),
            uptime_seconds: Gauge::default(),
            control_requests: Counter::default(),
            control_errors: Counter::default(),
            fleet_up: Gauge::default(),
            fleet_hosts: Gauge::default(),
            fleet_publish_seconds: Gauge::default(),
            fleet_keys_published: Counter::default(),
            fleet_keys_suppressed: Counter::default(),
            fleet_bans_decided: Counter::default(),
            fleet_bans_applied: Counter::default(),
            fleet_stream_lag_seconds: Gauge::default(),
            fleet_malformed: Counter::default(),
            fleet_pending: Gauge::default(),
            started: Instant::now(),
            registry: Registry::default(),
        };
        registry.register(
            "kernel_packets",
            "Packets counted by the kernel program, by reason (seen, monitored, passed, dropped, dropped_rate, ...)",
            m.kernel.clone(),
        );
        registry.register(
            "tracked_sources",
            "Sources in the kernel's table at the last sample",
            m.tracked_sources.clone(),
        );
        registry.register(
            "tracked_aggregates",
            "Aggregate prefixes in the kernel's table at the last sample",
            m.tracked_aggregates.clone(),
        );
        registry.register(
            "active_bans",
            "Bans in force at the last sample",
            m.active_bans.clone(),
        );
        registry.register(
            "list_entries",
            "Entries in the allow and deny lists",
            m.list_entries.clone(),
        );
        registry.register(
            "events_emitted",
            "Offender events the kernel put in the ring buffer",
            m.events_emitted.clone(),
        );
        registry.register(
            "events_lost",
            "Offender events the kernel lost to a full ring buffer",
            m.events_lost.clone(),
        );
        registry.register(
            "events_suppressed",
            "Offender events the kernel withheld to stay within its global event budget \
             (--events-per-sec); the table sampler still books what they refused",
            m.events_suppressed.clone(),
        );
        registry.register(
            "events_received",
            "Offender events the daemon read and logged",
            m.events_received.clone(),
        );
        registry.register(
            "event_lines_held",
            "Offender event lines held back by --event-lines (the events still reach the history; a summary line stands for them)",
            m.event_lines_held.clone(),
        );
        registry.register("samples", "Table samples taken", m.samples.clone());
        registry.register(
            "sample_errors",
            "Table samples that failed",
            m.sample_errors.clone(),
        );
        registry.register(
            "history_write_errors",
            "Failed writes to the offender database",
            m.history_errors.clone(),
        );
        registry.register(
            "history_pruned_rows",
            "History rows deleted for age or for the row cap",
            m.history_pruned.clone(),
        );
        registry.register(
            "swept_bans",
            "Expired bans the daemon deleted from the kernel's ban table",
            m.swept_bans.clone(),
        );
        registry.register(
            "swept_list_entries",
            "Expired allow and deny entries the daemon deleted",
            m.swept_list_entries.clone(),
        );
        registry.register(
            "last_sample_duration_seconds",
            "How long the last table sample took, from start to end (it rests between chunks)",
            m.last_sample_seconds.clone(),
        );
        registry.register(
            "last_sample_cpu_seconds",
            "The CPU time the last table sample used",
            m.last_sample_cpu_seconds.clone(),
        );
        registry.register(
            "history_folded_sources",
            "Sources with newly refused requests that a sample did not write to the history one \
             by one, because more sources than a sample writes had refusals (a flood)",
            m.history_folded.clone(),
        );
        for (name, help, metric) in [
            (
                "fleet_up",
                "1 while this daemon exchanges with the fleet's Redis, 0 while it enforces locally only",
                &m.fleet_up,
            ),
            (
                "fleet_hosts",
                "Fleet daemons that heartbeat in the last three intervals",
                &m.fleet_hosts,
            ),
            (
                "fleet_pending_entries",
                "Blocks and unblocks waiting for Redis to return",
                &m.fleet_pending,
            ),
        ] {
            registry.register(name, help, metric.clone());
        }
        for (name, help, metric) in [
            (
                "fleet_publish_seconds",
                "How long the last round of heavy-hitter publishing took",
                &m.fleet_publish_seconds,
            ),
            (
                "fleet_stream_lag_seconds",
                "Age of the last ban-stream entry when this daemon applied it",
                &m.fleet_stream_lag_seconds,
            ),
        ] {
            registry.register(name, help, metric.clone());
        }
        for (name, help, metric) in [
            (
                "fleet_keys_published",
                "Heavy hitters published to the fleet",
                &m.fleet_keys_published,
            ),
            (
                "fleet_keys_suppressed",
                "Heavy hitters over the floor left unpublished by --fleet-max-keys",
                &m.fleet_keys_suppressed,
            ),
            (
                "fleet_bans_decided",
                "Fleet bans this daemon won the decision for",
                &m.fleet_bans_decided,
            ),
            (
                "fleet_bans_applied",
                "Fleet bans and blocks this daemon applied to its kernel",
                &m.fleet_bans_applied,
            ),
            (
                "fleet_stream_malformed",
                "Ban-stream entries skipped as malformed",
                &m.fleet_malformed,
            ),
        ] {
            registry.register(name, help, metric.clone());
        }
        registry.register(
            "uptime_seconds",
            "Seconds since the daemon started",
            m.uptime_seconds.clone(),
        );
        registry.register(
            "control_requests",
            "Control-socket requests handled",
            m.control_requests.clone(),
        );
        registry.register(
            "control_errors",
            "Control-socket requests answered with an error",
            m.control_errors.clone(),
        );
        for stat in Stat::ALL {
            // Every reason shows from the first scrape, zero or not.
            drop(m.kernel.get_or_create(&ReasonLabel {
                reason: stat.label(),
            }));
        }
        Self { registry, ..m }
    }

    /// Brings the kernel counters up to `stats` (the kernel's are absolute; ours only grow).
    pub fn observe_kernel(&self, stats: &Stats) {
        let mut seen = self.kernel_seen.lock().unwrap_or_else(|e| e.into_inner());
        for stat in Stat::ALL {
            let delta = stats.get(*stat).saturating_sub(seen.get(*stat));
            if delta > 0 {
                self.kernel
                    .get_or_create(&ReasonLabel {
                        reason: stat.label(),
                    })
                    .inc_by(delta);
            }
        }
        let emitted = stats
            .get(Stat::EventsSent)
            .saturating_sub(seen.get(Stat::EventsSent));
        let lost = stats
            .get(Stat::EventsLost)
            .saturating_sub(seen.get(Stat::EventsLost));
        let suppressed = stats
            .get(Stat::EventsSuppressed)
            .saturating_sub(seen.get(Stat::EventsSuppressed));
        self.events_emitted.inc_by(emitted);
        self.events_lost.inc_by(lost);
        self.events_suppressed.inc_by(suppressed);
        *seen = *stats;
    }

    pub fn set_list_entries(&self, allow: usize, deny: usize) {
        self.list_entries
            .get_or_create(&ListLabel { list: "allow" })
            .set(allow as i64);
        self.list_entries
            .get_or_create(&ListLabel { list: "deny" })
            .set(deny as i64);
    }

    pub fn render(&self) -> String {
        self.uptime_seconds
            .set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Binds the metrics listener (so a bad address fails the start, not later).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))
}

/// Scrapers at once. Prometheus scrapes one connection at a time per target; a few more
/// cover a second scraper and a person with curl. Beyond it a connection is closed at once,
/// so a flood of connections costs neither descriptors nor tasks.
pub const MAX_CONNECTIONS: usize = 8;
/// A scrape that has not finished in this long is cut off.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, MAX_CONNECTIONS).await
}

async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, max_connections: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Best effort, without waiting (a plain non-blocking write on the descriptor): the
            // peer learns why before the close.
            if let Ok(mut std_stream) = stream.into_std() {
                let _ = std::io::Write::write(
                    &mut std_stream,
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, respond(stream, &metrics)).await;
        });
    }
}

/// Reads one request head (bounded) and answers it; the connection then closes.
async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_and_scrapes_resume_when_they_go() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_with(listener, Arc::new(Metrics::new()), 2));
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Read without sending: the refusal comes at once (and closing a socket with an
        // unread request in it would reset the connection instead).
        let mut refused = String::new();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.read_to_string(&mut refused).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        drop(silent);
        let mut ok = String::new();
        for _ in 0..100 {
            ok = get(addr).await;
            if ok.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok.contains("monitor_control_errors"), "{ok}");
        server.abort();
    }
}
