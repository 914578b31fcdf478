//! Small system helpers: commands with errors that name them, CPU pinning, /proc readers.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs a command; its stdout, or an error with its stderr.
pub use devkit::netns::sh;

/// Like `sh` but feeds `input` on stdin (for `nft -f -`).
pub fn sh_stdin(args: &[&str], input: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {args:?}"))?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pins the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> anyhow::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Gives the calling thread real-time (SCHED_FIFO) priority, so compiler jobs and other
/// background work on a shared machine cannot take its core during a measurement. The
/// kernel's RT throttling still leaves 5% of each core to everyone else.
pub fn realtime_thread() -> anyhow::Result<()> {
    realtime_thread_at(RT_PRIORITY)
}

/// `realtime_thread` at a given SCHED_FIFO priority.
pub fn realtime_thread_at(priority: i32) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "sched_setscheduler(SCHED_FIFO): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub const RT_PRIORITY: i32 = 50;

/// Busy and total jiffies of one CPU from /proc/stat.
pub fn cpu_jiffies(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{cpu} ");
    for line in stat.lines() {
        if let Some(rest) = line.strip_prefix(&tag) {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            return (total - idle, total);
        }
    }
    (0, 0)
}

/// Measures one CPU's busy fraction over a window.
pub struct CpuWindow {
    cpu: usize,
    start: (u64, u64),
}

impl CpuWindow {
    pub fn start(cpu: usize) -> Self {
        Self {
            cpu,
            start: cpu_jiffies(cpu),
        }
    }
    pub fn busy(&self) -> f64 {
        let (b, t) = cpu_jiffies(self.cpu);
        let dt = t.saturating_sub(self.start.1);
        if dt == 0 {
            0.0
        } else {
            (b - self.start.0) as f64 / dt as f64
        }
    }
}

/// CPU time (user+system, seconds) of a process from /proc/<pid>/stat.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
}

pub fn meminfo_kb(key: &str) -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    m.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
