//! The product as deployed: `monitor run` (the real release binary) started inside the API
//! namespace with default flags apart from the limit, attached natively to the receive veth,
//! and pinned to one CPU. Used by the throughput alternation (`Filter::Deployed`) and by the
//! control-plane part. Everything the benchmark learns from it comes through the product's own
//! interfaces (the control socket and its log), never from its maps.

use std::{
    io::{Read as _, Seek as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{filters::Rule, net::Topology, sys, throughput::RX_CPU};

/// The daemon runs on the receive core, the core that handles the flood: on an API host the
/// daemon shares its CPUs with the packet processing it protects. It runs there with
/// SCHED_FIFO one step above the receive (NAPI) thread, so it gets every cycle it asks for,
/// at once, and each of them is taken from the data plane: its CPU figure is its whole demand
/// and the deployed drop rate bears its whole cost (the pessimistic placement). As an
/// ordinary process beside a SCHED_FIFO NAPI thread it would get nothing during a measured run
/// (a run is shorter than the kernel's 950 ms real-time budget) and look free.
pub const DAEMON_CPU: usize = RX_CPU;

/// Source table capacity given to the daemon: the same as the bare object's.
pub const CAPACITY: u32 = crate::filters::OUR_CAPACITY;
/// The daemon's real-time priority: above the generator's and the NAPI thread's.
pub const DAEMON_PRIORITY: i32 = sys::RT_PRIORITY + 1;

static BINARY: OnceLock<(PathBuf, PathBuf, i32)> = OnceLock::new();

/// Where the `monitor` binary is, where the daemons' files go, and the daemon's SCHED_FIFO
/// priority (0: an ordinary process) (set once, from `main`).
pub fn configure(bin: PathBuf, work: PathBuf, priority: i32) {
    let _ = BINARY.set((bin, work, priority));
}

/// The deployed daemon's configured SCHED_FIFO priority (0: an ordinary process).
pub fn priority() -> i32 {
    BINARY.get().map(|c| c.2).unwrap_or(DAEMON_PRIORITY)
}

fn configured() -> anyhow::Result<&'static (PathBuf, PathBuf, i32)> {
    BINARY
        .get()
        .context("the daemon's binary was not configured (bench main sets it)")
}

pub struct Daemon {
    child: Child,
    /// A private bpffs mount for the daemon's pins: `ip netns exec` mounts a fresh /sys, which
    /// hides /sys/fs/bpf from the daemon it starts.
    bpffs: PathBuf,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = sys::sh(&["umount", &self.bpffs.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

impl Daemon {
    /// Starts `monitor run` on the API veth with `rule` as its limit (and the aggregate level
    /// off, as the peers have none), counting packets on TCP and UDP port 8443, and waits until
    /// it answers on its socket. `tag` names its files under the work directory.
    pub fn start(t: &Topology, rule: &Rule, tag: &str) -> anyhow::Result<Self> {
        Self::start_with(t, rule, tag, &[])
    }

    /// `start` with extra `monitor run` flags.
    pub fn start_with(
        t: &Topology,
        rule: &Rule,
        tag: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let (bin, work, priority) = configured()?;
        let dir = work.join(tag);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("monitor.sock");
        let _ = std::fs::remove_file(&socket);
        let db = dir.join("offenders.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let bpffs = PathBuf::from(format!("/run/mbench{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&bpffs)?;
        if let Err(e) = sys::sh(&["mount", "-t", "bpf", "bpf", &bpffs.to_string_lossy()]) {
            let _ = std::fs::remove_dir(&bpffs);
            return Err(e.context("mounting a private bpffs for the daemon's pins"));
        }
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log)?;
        let cap = CAPACITY.to_string();
        let cpu = DAEMON_CPU.to_string();
        let prio = priority.to_string();
        let sched = if *priority > 0 {
            ["-f", prio.as_str()]
        } else {
            ["-o", "0"]
        };
        let spawned = Command::new("chrt")
            .args(sched)
            .args(["taskset", "-c", &cpu])
            .args(["ip", "netns", "exec", &t.api.name])
            .arg(bin)
            .args(["run", "--iface", &t.api_if, "--xdp-mode", "native"])
            .args(["--port", &crate::cost::PORT.to_string(), "--proto", "both"])
            .args(rule.daemon_flags())
            .args([
                "--agg-rate",
                "0",
                "--count",
                "packets",
                "--max-sources",
                &cap,
            ])
            .arg("--socket")
            .arg(&socket)
            .arg("--pin-path")
            .arg(bpffs.join("monitor"))
            .arg("--db")
            .arg(&db)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = sys::sh(&["umount", &bpffs.to_string_lossy()]);
                let _ = std::fs::remove_dir(&bpffs);
                return Err(anyhow::Error::from(e).context("starting `monitor run`"));
            }
        };
        let mut d = Daemon {
            child,
            bpffs,
            bin: bin.clone(),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.cli(&["status"]).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!(
                    "`monitor run` exited ({status}) before answering: see {}",
                    d.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer on {} within 30 s (see {})",
                    d.socket.display(),
                    d.log.display()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(d)
    }

    /// Packets the kernel program has dropped, read from the daemon's pinned statistics map
    /// (the daemon's own counters are refreshed only once per table sample).
    pub fn kernel_dropped(&self) -> anyhow::Result<u64> {
        use monitor_common::{maps::MAP_STATS, stats::Stat};
        let path = self.bpffs.join("monitor").join(MAP_STATS);
        let data = aya::maps::MapData::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let map = aya::maps::Map::PerCpuArray(data);
        let a: aya::maps::PerCpuArray<&aya::maps::MapData, u64> =
            aya::maps::PerCpuArray::try_from(&map)?;
        Ok(a.get(&(Stat::Dropped as u32), 0)?.iter().sum())
    }

    /// The daemon process (`chrt`, `taskset` and `ip netns exec` exec into it, keeping the pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a CLI command against this daemon; returns its wall time (ms) and stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(f64, String)> {
        cli(&self.bin, &self.socket, args)
    }

    /// A counter from `monitor --json stats` (the kernel's statistics, summed over CPUs).
    pub fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let (_, out) = self.cli(&["--json", "stats"])?;
        find_u64(&serde_json::from_str(&out)?, name)
            .with_context(|| format!("`monitor --json stats` has no {name:?}"))
    }

    /// Reads the daemon's Prometheus endpoint (started with `--metrics ADDR` inside the API
    /// namespace) and returns each `name value` line's value, labels included in the name.
    pub fn metrics(t: &Topology, addr: &str) -> anyhow::Result<Vec<(String, f64)>> {
        use std::io::Write as _;
        let mut conn = crate::net::within(&t.api, || {
            std::net::TcpStream::connect(addr).context("connecting to the metrics endpoint")
        })?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut body = String::new();
        conn.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// CPU time the daemon has used (user + system, seconds).
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        sys::process_cpu_secs(self.pid()).context("reading the daemon's CPU time")
    }
}

/// What the daemon's log holds from byte `from` on.
struct LogLines {
    /// Every line: event lines, summaries and diagnostics.
    all: u64,
    /// Offender event lines (summaries excluded).
    events: u64,
    /// The most event lines stamped with any one second. `--event-lines` is a token bucket (N
    /// a second on average, a burst of one second's worth), and a line carries its event's
    /// time, not the time it was written, so one stamped second can hold more than N while the
    /// average stays at N.
    busiest_second: u64,
}

/// Reads the log from byte `from` once (text log format: a line starts with its RFC 3339 time).
fn log_lines(path: &Path, from: u64) -> LogLines {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(std::io::SeekFrom::Start(from))?;
        f.read_to_string(&mut text)
    });
    let mut out = LogLines {
        all: 0,
        events: 0,
        busiest_second: 0,
    };
    if read.is_err() {
        return out;
    }
    let mut per_second: std::collections::HashMap<&str, u64> = Default::default();
    for line in text.lines() {
        out.all += 1;
        let is_event = line.contains(" offender ") && !line.contains(" offender summary:");
        if let (true, Some(second)) = (is_event, line.get(..19)) {
            *per_second.entry(second).or_default() += 1;
            out.events += 1;
        }
    }
    out.busiest_second = per_second.into_values().max().unwrap_or(0);
    out
}

pub fn cli(bin: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<(f64, String)> {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "monitor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Finds a numeric field by name anywhere in a JSON document.
pub fn find_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_u64())
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

/// What the daemon did over one measured window.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Window {
    /// How long the window lasted.
    pub secs: f64,
    pub cpu_fraction: f64,
    /// Every line the daemon wrote (event lines, summaries, diagnostics) per second.
    pub lines_per_sec: f64,
    /// Offender event lines (summaries excluded) per second over the window: what
    /// `--event-lines` bounds.
    pub event_lines_per_sec: f64,
    /// The most offender event lines stamped with any one second (see [`LogLines`]).
    pub event_lines_max_per_sec: u64,
}

/// Starts measuring the daemon's CPU and log lines.
pub struct WindowStart {
    at: Instant,
    cpu: f64,
    log_len: u64,
}

impl WindowStart {
    pub fn now(d: &Daemon) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            cpu: d.cpu_secs()?,
            log_len: std::fs::metadata(&d.log).map(|m| m.len()).unwrap_or(0),
        })
    }

    pub fn finish(&self, d: &Daemon) -> anyhow::Result<Window> {
        let secs = self.at.elapsed().as_secs_f64();
        let cpu = d.cpu_secs()? - self.cpu;
        let lines = log_lines(&d.log, self.log_len);
        Ok(Window {
            secs,
            cpu_fraction: cpu / secs,
            lines_per_sec: lines.all as f64 / secs,
            event_lines_per_sec: lines.events as f64 / secs,
            event_lines_max_per_sec: lines.busiest_second,
        })
    }
}
