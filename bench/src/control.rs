//! Part 5: the control plane. Runs the real daemon (`monitor run`) on the API-side veth, fills
//! its table with a million tracked, over-limit sources, then floods them so that offender
//! events keep flowing, while measuring the daemon's CPU time and timing `monitor top`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    filters::OUR_CAPACITY,
    net::Topology,
    progs::Bench,
    stats::{Summary, summarize},
    sys,
    throughput::{GEN_CPU, RX_CPU, Runner, Traffic, set_gen},
    traffic_gen::{self as tg, Pace},
};

pub const SOURCES: u32 = 1_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlResult {
    pub tracked_after_warmup: u64,
    pub flood_pps: f64,
    pub flood_secs: f64,
    pub daemon_cpu_fraction: f64,
    pub events_per_sec: f64,
    pub top_ms_under_flood: Summary,
    pub top_ms_idle: Summary,
}

struct Daemon {
    child: Child,
    /// A private bpffs mount for the daemon's pins: `ip netns exec` mounts a fresh /sys, which
    /// hides /sys/fs/bpf from the daemon it starts.
    bpffs: PathBuf,
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

fn cli(bin: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<(f64, String)> {
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
fn find_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_u64())
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

fn events_sent(bin: &Path, socket: &Path) -> Option<u64> {
    let (_, out) = cli(bin, socket, &["--json", "stats"]).ok()?;
    find_u64(&serde_json::from_str(&out).ok()?, "events_sent")
}

pub fn run(
    t: &Topology,
    bench: &mut Bench,
    bin: &Path,
    work: &Path,
    flood_secs: f64,
    warm_passes: usize,
) -> anyhow::Result<ControlResult> {
    std::fs::create_dir_all(work)?;
    let socket = work.join("monitor.sock");
    let _ = std::fs::remove_file(&socket);
    let bpffs = PathBuf::from(format!("/run/mbench{}", std::process::id()));
    std::fs::create_dir_all(&bpffs)?;
    if let Err(e) = sys::sh(&["mount", "-t", "bpf", "bpf", &bpffs.to_string_lossy()]) {
        let _ = std::fs::remove_dir(&bpffs);
        return Err(e.context("mounting a private bpffs for the daemon's pins"));
    }
    let pin_dir = bpffs.join("monitor");
    let log = std::fs::File::create(work.join("daemon.log"))?;
    let cap = OUR_CAPACITY.to_string();
    let child = match Command::new("ip")
        .args(["netns", "exec", &t.api.name])
        .arg(bin)
        .args([
            "run",
            "--iface",
            &t.api_if,
            "--attach",
            "xdp",
            "--xdp-mode",
            "native",
            "--port",
            "8443",
            "--proto",
            "both",
        ])
        .args([
            "--rate",
            "1/m",
            "--burst",
            "1",
            "--count",
            "packets",
            "--action",
            "drop",
            "--max-sources",
            &cap,
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-path")
        .arg(&pin_dir)
        .arg("--db")
        .arg(work.join("offenders.db"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = sys::sh(&["umount", &bpffs.to_string_lossy()]);
            let _ = std::fs::remove_dir(&bpffs);
            return Err(anyhow::Error::from(e).context("starting `monitor run`"));
        }
    };
    let daemon = Daemon { child, bpffs };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli(bin, &socket, &["status"]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the daemon did not answer on {} within 30 s (see {})",
                socket.display(),
                work.join("daemon.log").display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let pid = daemon.child.id();

    let gen_prog: std::os::fd::OwnedFd = {
        use std::os::fd::AsFd as _;
        bench
            .prog("bench_gen")?
            .fd()?
            .as_fd()
            .try_clone_to_owned()?
    };
    let frame = set_gen(bench, Traffic::V4Udp, SOURCES, t.gen_ifindex)?;
    let mut runner = Runner {
        t,
        bench,
        gen_prog,
        frames: 0,
        warm_pps: 200_000.0,
        warm_passes,
    };
    t.pin_napi(&[RX_CPU])?;
    let tracked = runner.warm_up(&frame, SOURCES)?;
    let gen_prog = runner.gen_prog;

    // Flood: every source, over and over, at a rate the receive core absorbs with room to
    // spare, so the daemon competes only with what an attack really costs.
    let flood_pps = 1_000_000.0;
    let ev0 = events_sent(bin, &socket);
    let cpu0 = sys::process_cpu_secs(pid).context("daemon CPU time")?;
    let start = Instant::now();
    let h = tg::spawn(
        &gen_prog,
        &t.gen_ns,
        GEN_CPU,
        frame.clone(),
        Pace::Paced {
            frames: (flood_pps * flood_secs) as u64,
            chunk: 1024,
            pps: flood_pps,
        },
    )?;
    let mut under = Vec::new();
    // Let the flood settle before timing.
    thread::sleep(Duration::from_millis(500));
    while !h.is_finished() {
        under.push(cli(bin, &socket, &["top", "--limit", "20"])?.0);
        thread::sleep(Duration::from_millis(200));
    }
    let sent = h
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = sys::process_cpu_secs(pid).context("daemon CPU time")?;
    let ev1 = events_sent(bin, &socket);
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(cli(bin, &socket, &["top", "--limit", "20"])?.0);
    }
    let r = ControlResult {
        tracked_after_warmup: tracked,
        flood_pps: sent.pps(),
        flood_secs: wall,
        daemon_cpu_fraction: (cpu1 - cpu0) / wall,
        events_per_sec: match (ev0, ev1) {
            (Some(a), Some(b)) => (b - a) as f64 / wall,
            _ => f64::NAN,
        },
        top_ms_under_flood: summarize(&under),
        top_ms_idle: summarize(&idle),
    };
    eprintln!(
        "bench: control plane: daemon {:.1}% of a core, {:.0} events/s, `monitor top` {:.0} ms under flood ({} runs), {:.0} ms idle",
        r.daemon_cpu_fraction * 100.0,
        r.events_per_sec,
        r.top_ms_under_flood.median,
        r.top_ms_under_flood.n,
        r.top_ms_idle.median
    );
    drop(daemon);
    Ok(r)
}
