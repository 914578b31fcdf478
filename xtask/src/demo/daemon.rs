//! The real `monitor` binary, driven as an operator would: `monitor run ...` started inside the
//! API host's namespace with nothing but its documented defaults plus the interface, the lookup
//! port and where to keep its socket, pins and database; and the CLI (`monitor top`,
//! `offenders`, `stats`, all `--json`) to read it back.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::world::{self, API_IFACE, LOOKUP_PORT, Names, Role};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Daemon {
    child: Option<Child>,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    pid_file: PathBuf,
}

impl Daemon {
    /// The command line an operator would type on the API host (shown in the report).
    pub fn command_line(&self) -> String {
        format!("monitor {}", self.args.join(" "))
    }

    /// Starts `monitor run` in the API namespace and waits until its socket answers.
    pub fn start(
        bin: &Path,
        names: &Names,
        attach: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let dir = names.run_dir();
        let socket = names.socket();
        let mut args: Vec<String> = [
            "run",
            "--iface",
            API_IFACE,
            "--port",
            &LOOKUP_PORT.to_string(),
            "--attach",
            attach,
            "--socket",
            &socket.display().to_string(),
            "--pin-path",
            &names.pin_path().display().to_string(),
            "--db",
            &dir.join("offenders.db").display().to_string(),
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let log = dir.join("daemon.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let ns = devkit::netns::ns_file(&names.ns(Role::Api))?;
        let ns_fd = ns.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: between fork and exec only async-signal-safe calls: setns and setpgid.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group: a Ctrl-C in the terminal reaches the xtask, which
                // then stops the daemon in order (and `--keep` can leave it running).
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        drop(ns);
        let pid_file = dir.join("daemon.pid");
        fs::write(&pid_file, child.id().to_string())?;
        let mut daemon = Self {
            child: Some(child),
            bin: bin.to_path_buf(),
            socket,
            log,
            args,
            pid_file,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "`{}` exited with {status} before it was ready; its log:\n{}",
                    self.command_line(),
                    tail(&self.log)
                );
            }
            if self.socket.exists() && self.cli(&["stats"]).is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "`{}` did not answer on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.command_line(),
                    self.socket.display(),
                    tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `monitor --socket S <args> --json` and parses its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .arg("--json")
            .output()
            .with_context(|| format!("running monitor {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "monitor {} --json: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing the JSON of monitor {}", args.join(" ")))
    }

    /// Stops the daemon the way an operator would (SIGTERM), waiting for its clean detach.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id() as i32;
        let _ = fs::remove_file(&self.pid_file);
        let clean = terminate(pid, || child.try_wait().ok().flatten().is_some());
        let _ = child.wait();
        if !clean {
            bail!("the daemon did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed");
        }
        Ok(())
    }

    /// Leaves the daemon running (for `--keep`).
    pub fn detach(&mut self) {
        self.child = None;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("demo: {e:#}");
        }
    }
}

/// SIGTERM, wait up to `STOP_TIMEOUT` for `exited()`, then SIGKILL. True if it stopped cleanly.
fn terminate(pid: i32, mut exited: impl FnMut() -> bool) -> bool {
    // SAFETY: signalling a process we started (or recorded as ours).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < STOP_TIMEOUT {
        if exited() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    false
}

/// Stops a daemon recorded by a previous (kept or crashed) run, if it is still a `monitor`.
pub fn stop_pid(pid: i32) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "monitor" {
        return;
    }
    terminate(pid, || !world::pid_alive(pid) || is_zombie(pid));
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The last lines of the daemon's log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
