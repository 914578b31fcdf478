//! `monitor run`: validates the settings, checks everything it can before touching the
//! system, loads the program (adopting pinned state), attaches it, then serves the control
//! socket, the event stream, the sampler and the metrics until SIGINT/SIGTERM. SIGHUP reloads
//! the config file.
//!
//! Stopping: without `--persist` the link and map pins and the pin directory are removed and
//! the process exits, which closes the last link descriptors and detaches the program. With
//! `--persist` everything stays pinned, so the program keeps enforcing until the next
//! `monitor run` with the same pin path adopts it.

pub mod attach;
pub mod control;
pub mod event_lines;
pub mod events;
pub mod fleet;
pub mod preflight;
pub mod sampler;
pub mod writer;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya_log::EbpfLogger;
use log::{error, info, warn};
use monitor_common::maps::MAP_CONFIG;
use tokio::{
    io::unix::AsyncFd,
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{Layer, LogFormat, Policy, Settings},
    history::{self, History, Offender, Sighting},
    kernel::{Kernel, LoadOptions},
    logging,
    metrics::{self, Metrics},
    proto::Attachment,
    units::format_duration,
};
use control::Maps;
use sampler::{Baseline, Prefixes, Sampler, Snapshot};
use writer::MapWriter;

/// What the control handlers, the sampler and the event reader share. `M` is the map writer;
/// tests of the control handlers use a fake.
pub struct Shared<M = MapWriter> {
    writer: Mutex<M>,
    snapshot: RwLock<Arc<Snapshot>>,
    history: Arc<Mutex<history::Writer>>,
    pub metrics: Arc<Metrics>,
    pub log_format: LogFormat,
    pub started_at: SystemTime,
    pub started: Instant,
    pub attachments: Vec<Attachment>,
    settings: Mutex<Settings>,
    /// The command-line layer, kept so a reload merges the re-read file under the same flags.
    flags: Layer,
    socket_flag: Option<PathBuf>,
    /// Fleet mode's link, when `--fleet` is given.
    pub fleet: Option<Arc<fleet::Fleet>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would abort the process (panic = "abort"), so poisoning
    // cannot carry a half-done write; take the value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<M: Maps> Shared<M> {
    pub fn new(
        writer: M,
        settings: Settings,
        flags: Layer,
        socket_flag: Option<PathBuf>,
        history: History,
        attachments: Vec<Attachment>,
    ) -> Self {
        Self {
            writer: Mutex::new(writer),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            history: Arc::new(Mutex::new(history::Writer::new(history))),
            metrics: Arc::new(Metrics::new()),
            log_format: settings.log_format,
            started_at: SystemTime::now(),
            started: Instant::now(),
            attachments,
            settings: Mutex::new(settings),
            flags,
            socket_flag,
            fleet: None,
        }
    }

    /// The last ban-stream ID applied (fleet mode), from the history database.
    pub fn fleet_cursor(&self) -> Result<Option<String>> {
        Ok(lock(&self.history).history.fleet_cursor()?)
    }

    /// The map writer; hold it only for map operations (each is a system call or a few).
    pub fn writer(&self) -> MutexGuard<'_, M> {
        lock(&self.writer)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    fn replace_settings(&self, settings: Settings) {
        *lock(&self.settings) = settings;
    }

    /// Buffers sightings for the history; a full buffer is written at once, the rest by
    /// [`history_flusher`] once a second (one transaction each).
    pub async fn record_history(&self, sightings: Vec<Sighting>) {
        if sightings.is_empty() {
            return;
        }
        let history = self.history.clone();
        let result = tokio::task::spawn_blocking(move || {
            lock(&history).add(sightings, crate::timefmt::unix_ms(SystemTime::now()))
        })
        .await;
        self.history_result(
            result.map(|r| r.map(|flushes| flushes.iter().map(|f| f.pruned).sum::<u64>())),
        );
    }

    fn history_result(
        &self,
        result: std::result::Result<
            std::result::Result<u64, history::HistoryError>,
            tokio::task::JoinError,
        >,
    ) {
        match result {
            Ok(Ok(pruned)) => {
                self.metrics.history_pruned.inc_by(pruned);
            }
            Ok(Err(e)) => {
                self.metrics.history_errors.inc();
                warn!("{e}");
            }
            Err(e) => warn!("history writer failed: {e}"),
        }
    }

    pub async fn record_fleet(&self, record: crate::history::FleetRecord) {
        let history = self.history.clone();
        let result =
            tokio::task::spawn_blocking(move || lock(&history).history.record_fleet(&record)).await;
        if let Ok(Err(e)) = result {
            self.metrics.history_errors.inc();
            warn!("{e}");
        }
    }

    pub async fn save_fleet_cursor(&self, stream_id: String) {
        let history = self.history.clone();
        let result = tokio::task::spawn_blocking(move || {
            lock(&history).history.set_fleet_cursor(&stream_id)
        })
        .await;
        if let Ok(Err(e)) = result {
            self.metrics.history_errors.inc();
            warn!("{e}");
        }
    }

    pub async fn offenders(&self, since_ms: i64, limit: usize) -> Result<Vec<Offender>> {
        let history = self.history.clone();
        Ok(
            tokio::task::spawn_blocking(move || lock(&history).history.offenders(since_ms, limit))
                .await??,
        )
    }
}

/// Human-readable differences between two policies.
pub fn policy_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    let rate = |r: Option<crate::units::Rate>| r.map_or("off".to_string(), |r| r.to_string());
    diff("rate", old.rate.to_string(), new.rate.to_string());
    diff("burst", old.burst.to_string(), new.burst.to_string());
    diff("agg-rate", rate(old.agg_rate), rate(new.agg_rate));
    diff(
        "agg-burst",
        old.agg_burst.to_string(),
        new.agg_burst.to_string(),
    );
    diff("action", old.action.to_string(), new.action.to_string());
    diff("count", old.count.to_string(), new.count.to_string());
    diff(
        "http-path",
        format!("{:?}", old.http_path),
        format!("{:?}", new.http_path),
    );
    diff("ban", format_duration(old.ban), format_duration(new.ban));
    diff(
        "events-per-sec",
        old.events_per_sec.to_string(),
        new.events_per_sec.to_string(),
    );
    diff("proto", old.proto.to_string(), new.proto.to_string());
    diff(
        "ports",
        format!("{:?}", old.ports),
        format!("{:?}", new.ports),
    );
    diff(
        "v4-prefix",
        old.v4_prefix.to_string(),
        new.v4_prefix.to_string(),
    );
    diff(
        "v6-prefix",
        old.v6_prefix.to_string(),
        new.v6_prefix.to_string(),
    );
    diff(
        "v4-agg-prefix",
        old.v4_agg_prefix.to_string(),
        new.v4_agg_prefix.to_string(),
    );
    diff(
        "v6-agg-prefix",
        old.v6_agg_prefix.to_string(),
        new.v6_agg_prefix.to_string(),
    );
    out
}

/// How long a stopping daemon waits for control commands in progress.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Entry point of `monitor run`.
pub fn run(flags: Layer, socket_flag: Option<PathBuf>, config: Option<PathBuf>) -> Result<()> {
    let settings = Settings::resolve(&flags, socket_flag.as_deref(), config.as_deref())?;
    logging::init(settings.log_format);
    preflight::raise_open_file_limit();
    preflight::privileges()?;
    preflight::interfaces(&settings)?;
    preflight::bpffs(&settings.pin_path)?;
    preflight::socket(&settings.socket)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings, flags, socket_flag))
}

fn remove_pins(pin_dir: &Path) {
    attach::remove_link_pins(pin_dir);
    Kernel::remove_pins(pin_dir);
    let _ = std::fs::remove_dir(pin_dir);
}

fn create_parent(path: &Path, what: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the {what} directory {}", parent.display()))?;
    }
    Ok(())
}

/// Binds the control socket with mode 0600 from the start (umask), so there is no moment in
/// which another user could connect.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    create_parent(path, "socket")?;
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener =
        bound.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

async fn serve(settings: Settings, flags: Layer, socket_flag: Option<PathBuf>) -> Result<()> {
    let _lock = preflight::lock_pin_path(&settings.pin_path)?;
    let adopting = settings.pin_path.join(MAP_CONFIG).exists();
    create_parent(&settings.db, "database")?;
    let history = History::open(&settings.db, settings.history)?;
    let metrics_listener = match settings.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let started = start(&settings, adopting);
    let (writer, attachments, ring, reader, logger, table_ids) = match started {
        Ok(parts) => parts,
        Err(e) => {
            if !adopting {
                remove_pins(&settings.pin_path);
            }
            return Err(e);
        }
    };
    let listener = bind_socket(&settings.socket)?;
    let mut shared = Shared::new(
        writer,
        settings.clone(),
        flags,
        socket_flag,
        history,
        attachments,
    );
    let metrics = shared.metrics.clone();
    let fleet_parts = match &settings.fleet {
        Some(fs) => {
            let (fleet, ops) = fleet::Fleet::new(fs.clone(), metrics.clone())?;
            let (reader, cursor) = {
                let w = shared.writer();
                (w.kernel().fleet_reader()?, shared.fleet_cursor()?)
            };
            shared.fleet = Some(fleet.clone());
            Some((fleet, ops, reader, cursor))
        }
        None => {
            // Adopted maps may carry an earlier fleet run's marking: switch it off.
            shared
                .writer()
                .set_fleet(&monitor_common::maps::FleetConfig::default())?;
            None
        }
    };
    let shared = Arc::new(shared);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(log_forwarder(logger));
    let s = shared.clone();
    let line_limit = settings.event_lines;
    tasks.spawn(async move {
        if let Err(e) = events::run(ring, s, line_limit).await {
            error!("event reader stopped: {e:#}");
        }
    });
    let baseline_path = baseline_path(&settings.db);
    let baseline = if !adopting {
        let _ = std::fs::remove_file(&baseline_path);
        Baseline::Empty
    } else if let Some(saved) = sampler::take_baseline(&baseline_path, table_ids) {
        info!(
            "requests refused while no daemon ran will be booked against the {} counters the \
             last daemon left",
            saved.len()
        );
        Baseline::Saved(saved)
    } else {
        warn!(
            "no saved counters for the adopted tables (the last daemon did not stop cleanly): \
             requests refused since its last sample are not in the history"
        );
        Baseline::Unknown
    };
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampling = tokio::spawn(sample_loop(
        Sampler::new(reader, baseline),
        shared.clone(),
        stop_sampling.clone(),
        settings.persist.then(|| (baseline_path.clone(), table_ids)),
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let control_server = tokio::spawn(control::server::serve(
        listener,
        shared.clone(),
        control::server::Limits::default(),
        shutdown.clone(),
    ));
    tasks.spawn(history_flusher(shared.clone()));
    tasks.spawn(sweeper(shared.clone()));
    if let Some((fleet, ops, reader, cursor)) = fleet_parts {
        fleet.spawn(&mut tasks, shared.clone(), reader, ops, cursor);
    }
    if let Some(listener) = metrics_listener {
        info!(
            "serving metrics on http://{}/metrics",
            listener.local_addr()?
        );
        tasks.spawn(metrics::serve(listener, metrics));
    }
    info!(
        "monitoring ports {:?} ({}) on {} with {} per source (burst {}), control socket {}",
        settings.policy.ports,
        settings.policy.proto,
        settings.ifaces.join(", "),
        settings.policy.rate,
        settings.policy.burst,
        settings.socket.display()
    );
    if let Some(warning) = settings.policy.spoofable_bans_warning() {
        warn!("{warning}");
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                if let Err(e) = control::reload::apply(&*shared) {
                    error!("SIGHUP reload failed, the running settings stay: {e:#}");
                }
            }
        }
    }
    // The control server finishes the commands in progress (a block, a reload) before the
    // maps can go; the rest stops where it is.
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, control_server)
        .await
        .is_err()
    {
        warn!("control commands still running after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    // The last sample books what was refused since the one before; with --persist its counters
    // are saved so the next daemon books the refusals of the time in between exactly once.
    stop_sampling.cancel();
    match tokio::time::timeout(std::time::Duration::from_secs(60), sampling).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("sampler task failed: {e}"),
        Err(_) => warn!("the last table sample took over a minute; stopping without it"),
    }
    tasks.abort_all();
    flush_history(&shared).await;
    let _ = std::fs::remove_file(&settings.socket);
    if settings.persist {
        info!(
            "--persist: the program stays attached and its state stays pinned under {}",
            settings.pin_path.display()
        );
    } else {
        remove_pins(&settings.pin_path);
        info!(
            "detached; pins under {} removed",
            settings.pin_path.display()
        );
    }
    // Exiting closes the remaining link descriptors, which detaches the program when nothing
    // is pinned.
    Ok(())
}

type Started = (
    MapWriter,
    Vec<Attachment>,
    aya::maps::RingBuf<aya::maps::MapData>,
    crate::kernel::TableReader,
    EbpfLogger<logging::KernelLog>,
    (u32, u32),
);

fn start(settings: &Settings, adopting: bool) -> Result<Started> {
    let mut kernel = Kernel::load(&LoadOptions {
        max_sources: settings.max_sources,
        pin_dir: Some(settings.pin_path.clone()),
        table_seed: None,
    })
    .inspect_err(|e| {
        let lines = std::env::var(crate::kernel::VERIFIER_LOG_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(tail) = lines.and_then(|n| e.verifier_tail(n)) {
            error!("the verifier's last lines:\n{tail}");
        }
    })?;
    if adopting {
        info!(
            "adopted the maps pinned under {} (counters, bans and lists carry over)",
            settings.pin_path.display()
        );
    }
    let logger = EbpfLogger::init_with_logger(kernel.ebpf_mut(), logging::KernelLog)
        .context("starting the kernel log reader")?;
    let ring = kernel.take_events()?;
    let reader = kernel.table_reader()?;
    let table_ids = kernel.table_ids()?;
    let mut writer = MapWriter::start(
        kernel,
        settings.policy.clone(),
        &settings.allow,
        &settings.deny,
    )?;
    let attachments = attach::attach_all(writer.kernel_mut(), settings)?;
    Ok((writer, attachments, ring, reader, logger, table_ids))
}

/// How often expired bans and list entries are deleted. A ban table full of dead bans accepts
/// new bans again within this time.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

async fn sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_logged: Option<Instant> = None;
    loop {
        tick.tick().await;
        let s = shared.clone();
        let result = tokio::task::spawn_blocking(move || {
            s.writer().sweep_expired(crate::clock::kernel_now_ns())
        })
        .await;
        match result {
            Ok(Ok(swept)) => {
                let m = &shared.metrics;
                m.swept_bans.inc_by(swept.bans as u64);
                m.swept_list_entries
                    .inc_by((swept.allow + swept.deny) as u64);
            }
            Ok(Err(e)) => {
                if last_error_logged.is_none_or(|t| t.elapsed().as_secs() >= 60) {
                    warn!("{e:#}");
                    last_error_logged = Some(Instant::now());
                }
            }
            Err(e) => warn!("sweeper thread failed: {e}"),
        }
    }
}

/// How often buffered sightings are written.
const HISTORY_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

async fn history_flusher(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HISTORY_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_history(&shared).await;
    }
}

async fn flush_history(shared: &Shared) {
    let history = shared.history.clone();
    let result = tokio::task::spawn_blocking(move || {
        lock(&history)
            .flush(crate::timefmt::unix_ms(SystemTime::now()))
            .map(|f| f.pruned)
    })
    .await;
    shared.history_result(result);
}

async fn log_forwarder(logger: EbpfLogger<logging::KernelLog>) {
    // SAFETY: the logger owns its ring buffer's descriptor for as long as the AsyncFd owns it.
    let Ok(mut fd) = (unsafe { AsyncFd::register(logger) }) else {
        warn!("kernel log records will not be forwarded");
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return std::future::pending().await;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Where a stopping daemon leaves the sampler's counters for the next (next to the database).
fn baseline_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".baseline");
    PathBuf::from(name)
}

async fn sample_loop(
    mut sampler: Sampler,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
    save: Option<(PathBuf, (u32, u32))>,
) {
    let mut last_error_logged: Option<Instant> = None;
    let mut next_start = Instant::now();
    let mut stopping = false;
    let share = f64::from(shared.settings().sample_cpu) / 100.0;
    let pace = sampler::Pace::new(share);
    // A stop finishes the sample in progress at full speed (its final counters are the ones
    // the next daemon starts from).
    tokio::spawn({
        let (stop, hurry) = (stop.clone(), pace.hurry.clone());
        async move {
            stop.cancelled().await;
            hurry.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    loop {
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep_until(next_start.into()) => {}
                _ = stop.cancelled() => stopping = true,
            }
        }
        let started = Instant::now();
        let prefixes = {
            let w = shared.writer();
            let p = w.policy();
            Prefixes {
                v4: p.v4_prefix,
                v6: p.v6_prefix,
                v4_agg: p.v4_agg_prefix,
                v6_agg: p.v6_agg_prefix,
            }
        };
        let joined = tokio::task::spawn_blocking({
            let pace = pace.clone();
            move || {
                let out = sampler.sample(prefixes, &pace);
                (sampler, out)
            }
        })
        .await;
        let out;
        (sampler, out) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                error!("sampler thread failed: {e}");
                return;
            }
        };
        let m = &shared.metrics;
        match out {
            Ok(out) => {
                next_start = started + sampler::period_after(out.snapshot.busy, share);
                m.samples.inc();
                m.last_sample_seconds.set(out.snapshot.took.as_secs_f64());
                m.last_sample_cpu_seconds
                    .set(out.snapshot.busy.as_secs_f64());
                m.history_folded.inc_by(out.folded);
                m.tracked_sources.set(out.snapshot.tracked_sources as i64);
                m.tracked_aggregates
                    .set(out.snapshot.tracked_aggregates as i64);
                m.active_bans.set(out.snapshot.active_bans as i64);
                *shared.snapshot.write().unwrap_or_else(|e| e.into_inner()) = out.snapshot;
                shared.record_history(out.sightings).await;
            }
            Err(e) => {
                next_start = started + sampler::period_after(started.elapsed(), share);
                m.sample_errors.inc();
                if last_error_logged.is_none_or(|t| t.elapsed().as_secs() >= 60) {
                    warn!("sampling the tables failed: {e:#}");
                    last_error_logged = Some(Instant::now());
                }
            }
        }
        let counts = {
            let w = shared.writer();
            let k = w.kernel();
            (
                k.stats(),
                k.list_entries(crate::kernel::List::Allow).map(|l| l.len()),
                k.list_entries(crate::kernel::List::Deny).map(|l| l.len()),
            )
        };
        if let (Ok(stats), Ok(allow), Ok(deny)) = counts {
            m.observe_kernel(&stats);
            m.set_list_entries(allow, deny);
        }
        if stopping {
            break;
        }
    }
    if let Some((path, ids)) = save {
        let result = tokio::task::spawn_blocking(move || {
            sampler::save_baseline(&path, ids, sampler.booked()).map(|n| (n, path))
        })
        .await;
        match result {
            Ok(Ok((n, path))) => info!(
                "saved the counters of {n} keys to {} for the next daemon",
                path.display()
            ),
            Ok(Err(e)) => warn!("saving the sampler's counters for the next daemon: {e}"),
            Err(e) => warn!("saving the sampler's counters: {e}"),
        }
    }
}
