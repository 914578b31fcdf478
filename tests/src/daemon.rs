//! Runs the real `monitor` binary as a daemon inside a test namespace, and its CLI against it.
//! Every daemon gets its own socket, pin path and database under unique names; the process is
//! killed and its pins and files removed on drop, also when the test panics.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::{Netns, unique};

/// The binary under test, built by cargo beside the test executables (this package's
/// `monitor-under-test` bin, which is `monitor::cli::main`). `MONITOR_BIN` overrides it.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MONITOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/monitor-under-test
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("monitor-under-test");
    assert!(
        path.exists(),
        "{} is missing: run the tests with cargo (it builds the bin of the tests package)",
        path.display()
    );
    path
}

/// Where one daemon keeps its state. The same `Paths` can serve several daemon lifetimes
/// (restart tests).
pub struct Paths {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pin: PathBuf,
    pub db: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let name = unique("mon");
        let dir = std::env::temp_dir().join(format!("{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            socket: dir.join("monitor.sock"),
            db: dir.join("offenders.db"),
            pin: PathBuf::from("/sys/fs/bpf").join(&name),
            dir,
        }
    }

    /// `--socket`, `--pin-path`, `--db` for `monitor run`.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket.display().to_string(),
            "--pin-path".into(),
            self.pin.display().to_string(),
            "--db".into(),
            self.db.display().to_string(),
        ]
    }
}

impl Default for Paths {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.pin) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Output collected from a child's stream by a reader thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn follow(stream: impl std::io::Read + Send + 'static) -> Self {
        let out = Self::default();
        let sink = out.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        out
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) until a line satisfies `pred`; returns it.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.text().lines().find(|l| pred(l)) {
                return Some(l.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Starting a daemon loads a 4096-entry table and attaches; this bounds the wait generously
/// (two shared cores, several tests in parallel).
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon {
    /// `monitor run --iface IFACE <paths> <extra>` inside `ns` (only the network namespace is
    /// entered, so /sys/fs/bpf stays the host's bpffs). Waits until it answers `status`.
    pub fn start(ns: &Netns, iface: &str, paths: &Paths, extra: &[&str]) -> Self {
        let mut args = vec!["run".to_string(), "--iface".into(), iface.into()];
        args.extend(paths.run_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(ns, &args, &paths.socket)
    }

    /// Spawns `monitor <args>` in `ns` and waits for its socket to answer.
    pub fn spawn(ns: &Netns, args: &[String], socket: &Path) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn monitor run");
        let stdout = Captured::follow(child.stdout.take().expect("stdout"));
        let stderr = Captured::follow(child.stderr.take().expect("stderr"));
        let mut daemon = Self {
            child: Some(child),
            socket: socket.to_path_buf(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "monitor run exited early ({status}): {}",
                    daemon.stderr.text()
                );
            }
            if daemon.cli(&["status"]).is_ok() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer within {START_TIMEOUT:?}: {}",
                daemon.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs a CLI command against this daemon: stdout on success, stderr on failure.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        cli(&self.socket, args)
    }

    /// A CLI command with `--json`, parsed; panics with the error when it fails.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self
            .cli(&full)
            .unwrap_or_else(|e| panic!("monitor {args:?} failed: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {out}"))
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon ignored signal {signal} for 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: a clean stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }

    /// kill -9: a crash.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `monitor --socket SOCKET <args>` in the calling namespace (the socket is a path, so
/// no namespace is needed): stdout on success, stderr on failure.
pub fn cli(socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MONITOR_SOCKET")
        .output()
        .expect("run monitor CLI");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `monitor <args>` to completion (bounded): exit code and stderr.
pub fn run_to_exit(ns: Option<&Netns>, args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{}", ns.name))
                .arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monitor");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "timed out".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends raw bytes to a control socket and returns what comes back until the daemon closes
/// the connection (bounded by a read timeout).
pub fn raw_exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    // End of input, so a truncated frame is seen as truncated rather than awaited.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `top --json` row for `source`, if listed.
pub fn top_row(top: &Value, source: &str) -> Option<Value> {
    top.as_array()?
        .iter()
        .find(|r| r["source"] == source)
        .cloned()
}
