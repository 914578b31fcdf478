//! Fleet mode (`monitor run --fleet URL`): one limit per source across every host that shares
//! a Redis, with the packet path never waiting on it.
//!
//! Each daemon decides locally as always. Every interval it publishes its local heavy hitters
//! (sources the kernel marked in `MON_FLEET_HH`, above a floor derived from the fleet limit and
//! the live host count) in batches, each one Lua script call (`script`). The script keeps a
//! sliding-window estimate per source across the fleet, and the one call that first sees a
//! source over the fleet limit wins its ban (`SET NX PX`) and appends it to the ban stream.
//! Every daemon reads that stream from the cursor it keeps in SQLite (`stream`) and applies
//! the entries through the map writer, like any other policy. `monitor block`/`unblock` go
//! through the same stream.
//!
//! Failure model: every Redis call runs on one of the two fleet tasks (`publish`, `stream`),
//! under a short timeout; control commands only queue work for them. While Redis is down, slow
//! or wrong, the kernel keeps enforcing the per-host limits, bans and lists; blocks made then
//! apply locally at once and are published when Redis returns. Each task reconnects with
//! backoff; the daemon logs one line when the fleet link goes down and one when it is back.

pub mod entry;
mod publish;
pub mod script;
mod stream;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use log::{info, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::{
    config::{FleetSettings, redact_url},
    kernel::FleetReader,
    metrics::Metrics,
    proto::{FleetRate, FleetReply},
    timefmt,
};
use entry::Entry;

use super::Shared;

/// How long establishing a connection may take (a blackholed Redis hangs here).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one publish batch or control entry may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The fleet link's state, for `monitor fleet`, `top --fleet` and the metrics.
pub struct Status {
    publish_up: AtomicBool,
    stream_up: AtomicBool,
    /// The combined state last logged, so each change logs exactly once.
    logged_up: Mutex<Option<bool>>,
    pub hosts: Mutex<Vec<String>>,
    /// Last successful exchange with Redis (Unix ms); 0 = never.
    pub last_sync_ms: AtomicI64,
    pub lag_ms: AtomicU64,
    pub top: Mutex<Vec<FleetRate>>,
}

pub struct Fleet {
    pub settings: FleetSettings,
    pub status: Status,
    metrics: Arc<Metrics>,
    ops: mpsc::UnboundedSender<Entry>,
    client: redis::Client,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn unix_ms() -> i64 {
    timefmt::unix_ms(SystemTime::now())
}

impl Fleet {
    /// Checks the URL (no connection is made here: a daemon starts while Redis is down).
    pub fn new(
        settings: FleetSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<Self>, mpsc::UnboundedReceiver<Entry>)> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("invalid --fleet {}: {e}", redact_url(&settings.url)))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let fleet = Arc::new(Self {
            settings,
            status: Status {
                publish_up: AtomicBool::new(false),
                stream_up: AtomicBool::new(false),
                logged_up: Mutex::new(None),
                hosts: Mutex::new(Vec::new()),
                last_sync_ms: AtomicI64::new(0),
                lag_ms: AtomicU64::new(0),
                top: Mutex::new(Vec::new()),
            },
            metrics,
            ops: tx,
            client,
        });
        Ok((fleet, rx))
    }

    /// Starts the publishing and stream-reading tasks.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        shared: Arc<Shared>,
        reader: FleetReader,
        ops: mpsc::UnboundedReceiver<Entry>,
        cursor: Option<String>,
    ) {
        tasks.spawn(publish::run(self.clone(), shared.clone(), reader, ops));
        tasks.spawn(stream::run(self.clone(), shared, cursor));
    }

    /// Queues a block or unblock for the fleet; never waits on Redis.
    pub fn submit(&self, entry: Entry) {
        self.metrics.fleet_pending.inc();
        let _ = self.ops.send(entry);
    }

    pub fn connected(&self) -> bool {
        self.status.publish_up.load(Ordering::Relaxed)
            && self.status.stream_up.load(Ordering::Relaxed)
    }

    fn set_up(&self, publish: Option<bool>, stream: Option<bool>, why: &str) {
        if let Some(p) = publish {
            self.status.publish_up.store(p, Ordering::Relaxed);
        }
        if let Some(s) = stream {
            self.status.stream_up.store(s, Ordering::Relaxed);
        }
        let up = self.connected();
        self.metrics.fleet_up.set(up as i64);
        let mut logged = lock(&self.status.logged_up);
        if *logged == Some(up) {
            return;
        }
        // The first state logged is "down" only when the first attempt failed.
        if logged.is_none() && up {
            info!(
                "fleet: connected to {} as {:?}",
                redact_url(&self.settings.url),
                self.settings.id
            );
        } else if up {
            info!("fleet: reconnected to {}", redact_url(&self.settings.url));
        } else if publish == Some(true) || stream == Some(true) {
            // One task is up, the other not yet: not a state change worth a line.
            if logged.is_none() {
                return;
            }
            warn!("fleet: Redis link down ({why}); enforcing locally");
        } else {
            warn!(
                "fleet: Redis at {} unreachable ({why}); enforcing locally with the per-host limits until it returns",
                redact_url(&self.settings.url)
            );
        }
        *logged = Some(up);
    }

    fn synced(&self) {
        self.status.last_sync_ms.store(unix_ms(), Ordering::Relaxed);
    }

    async fn connect(&self, response_timeout: Duration) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        match tokio::time::timeout(
            CONNECT_TIMEOUT * 4,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        {
            Ok(Ok(con)) => Ok(con),
            Ok(Err(e)) => Err(one_line(&e)),
            Err(_) => Err(format!(
                "no answer within {} ms",
                (CONNECT_TIMEOUT * 4).as_millis()
            )),
        }
    }

    pub fn reply(&self) -> FleetReply {
        let last = self.status.last_sync_ms.load(Ordering::Relaxed);
        FleetReply {
            enabled: true,
            connected: self.connected(),
            id: Some(self.settings.id.clone()),
            hosts: lock(&self.status.hosts).clone(),
            last_sync: (last != 0).then(|| timefmt::rfc3339_ms(last)),
            lag_ms: (last != 0).then(|| self.status.lag_ms.load(Ordering::Relaxed)),
            bans_applied: self.metrics.fleet_bans_applied.get(),
            keys_published: self.metrics.fleet_keys_published.get(),
            keys_suppressed: self.metrics.fleet_keys_suppressed.get(),
            malformed_entries: self.metrics.fleet_malformed.get(),
            pending_entries: self.metrics.fleet_pending.get().max(0) as u64,
            redis: Some(redact_url(&self.settings.url)),
        }
    }

    pub fn top(&self, limit: usize) -> Vec<FleetRate> {
        lock(&self.status.top).iter().take(limit).cloned().collect()
    }
}

impl FleetReply {
    pub fn disabled() -> Self {
        FleetReply {
            enabled: false,
            connected: false,
            id: None,
            hosts: Vec::new(),
            last_sync: None,
            lag_ms: None,
            bans_applied: 0,
            keys_published: 0,
            keys_suppressed: 0,
            malformed_entries: 0,
            pending_entries: 0,
            redis: None,
        }
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// Exponential backoff between reconnection attempts.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// Runs one Redis call under `limit`, flattening a timeout into an error.
async fn call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(one_line(&e)),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}
