//! `cargo xtask demo --hosts N`: the distributed scraper against a fleet. N API hosts (each a
//! namespace with a small HTTP responder and the real `monitor run` with its default per-source
//! limit of 20/s) sit behind a router namespace that also runs `redis-server`. A scraper sends
//! 15 requests/s to every host, under each host's limit but N x 15/s in all, while five people
//! send one request a second each. The scenario runs twice: with per-host limits only, then
//! with `--fleet`, and the report says what the scraper got and what the people lost.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use devkit::netns;
use serde::Serialize;

use super::check_interrupted;

const PORT: u16 = 8080;
const REDIS_PORT: u16 = 6379;
const PER_HOST: u32 = 15;
const PEOPLE: u8 = 5;
const TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetRunReport {
    pub fleet: bool,
    pub scraper_sent: u64,
    pub scraper_served: u64,
    pub people_sent: u64,
    pub people_served: u64,
    /// Seconds from the start until no host served the scraper any more (None: never).
    pub scraper_stopped_after_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetReport {
    pub hosts: usize,
    pub duration_s: u64,
    pub per_host_limit: String,
    pub scraper_rate_per_host: u32,
    pub runs: Vec<FleetRunReport>,
}

fn ns_exec(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    netns::ip(&full).map(drop)
}

/// Namespaces of this run, deleted on drop (their veths go with them).
struct Spaces(Vec<String>);

impl Drop for Spaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = netns::del(ns);
        }
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<thread::JoinHandle<T>> {
    let file = devkit::netns::ns_file(ns)?;
    Ok(thread::spawn(move || {
        devkit::netns::enter(&file).expect("entering a demo namespace");
        drop(file);
        f()
    }))
}

fn responder(ns: &str, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let listener = match TcpListener::bind(("0.0.0.0", PORT)) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = listener.set_nonblocking(true);
        let _ = tx.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 512];
                        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    })?;
    rx.recv()?.context("binding the demo responder")?;
    Ok(())
}

fn lookup(src: IpAddr, dst: SocketAddr) -> bool {
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) else {
        return false;
    };
    if sock.bind(&SocketAddr::new(src, 0).into()).is_err()
        || sock.connect_timeout(&dst.into(), TIMEOUT).is_err()
    {
        return false;
    }
    let mut s: TcpStream = sock.into();
    let _ = s.set_read_timeout(Some(TIMEOUT));
    if s.write_all(b"GET /lookup HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

fn start_daemon(
    bin: &Path,
    ns: &str,
    iface: &str,
    dir: &Path,
    extra: &[String],
) -> anyhow::Result<Proc> {
    let socket = dir.join("monitor.sock");
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let ns_file = devkit::netns::ns_file(ns)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ns_file);
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--iface", iface, "--port", &PORT.to_string()])
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-path")
        .arg(PathBuf::from("/sys/fs/bpf").join(dir.file_name().unwrap_or_default()))
        .arg("--db")
        .arg(dir.join("offenders.db"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Proc(cmd.spawn().context("starting monitor run")?);
    drop(ns_file);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(child);
        }
        if Instant::now() > deadline {
            bail!(
                "monitor run in {ns} did not answer within 30 s; see {}",
                dir.join("daemon.log").display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(
    bin: &Path,
    hosts: usize,
    duration: Duration,
    run_dir: &Path,
) -> anyhow::Result<FleetReport> {
    let id = std::process::id() % 100_000;
    let router = format!("mfr{id}");
    let client = format!("mfc{id}");
    let mut names = vec![router.clone(), client.clone()];
    for h in 1..=hosts {
        names.push(format!("mfh{id}x{h}"));
    }
    let spaces = Spaces(Vec::new());
    let mut spaces = spaces;
    for ns in &names {
        netns::add(ns)?;
        spaces.0.push(ns.clone());
    }
    ns_exec(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let link =
        |a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str| -> anyhow::Result<()> {
            netns::veth(a, a_if, b, b_if)?;
            netns::add_addr(a, a_if, a_ip)?;
            netns::add_addr(b, b_if, b_ip)
        };
    link(
        &router,
        "rc",
        "10.77.100.1/24",
        &client,
        "c0",
        "10.77.100.2/24",
    )?;
    ns_exec(
        &client,
        &["ip", "route", "add", "default", "via", "10.77.100.1"],
    )?;
    for a in (10..11).chain(20..20 + PEOPLE) {
        ns_exec(
            &client,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.77.100.{a}/24"),
                "dev",
                "c0",
            ],
        )?;
    }
    ns_exec(&router, &["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"])?;
    let stop = Arc::new(AtomicBool::new(false));
    for h in 1..=hosts {
        let ns = &names[1 + h];
        link(
            &router,
            &format!("r{h}"),
            &format!("10.77.{h}.1/24"),
            ns,
            "api0",
            &format!("10.77.{h}.2/24"),
        )?;
        ns_exec(
            ns,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{h}.1"),
            ],
        )?;
        responder(ns, stop.clone())?;
    }
    let _redis = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "redis-server",
                "--port",
                &REDIS_PORT.to_string(),
            ])
            .args([
                "--bind",
                "10.77.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    );
    let url = format!("redis://10.77.0.1:{REDIS_PORT}");
    let mut report = FleetReport {
        hosts,
        duration_s: duration.as_secs(),
        per_host_limit: "20/s (the default)".into(),
        scraper_rate_per_host: PER_HOST,
        runs: Vec::new(),
    };
    for fleet in [false, true] {
        check_interrupted()?;
        eprintln!(
            "demo: {} hosts, {}: starting the daemons",
            hosts,
            if fleet {
                "with --fleet"
            } else {
                "per-host limits only"
            }
        );
        let mut daemons = Vec::new();
        for h in 1..=hosts {
            let dir = run_dir.join(format!("fleet-{}-{h}", if fleet { "on" } else { "off" }));
            std::fs::create_dir_all(&dir)?;
            let mut extra = Vec::new();
            if fleet {
                extra.extend([
                    "--fleet".to_string(),
                    url.clone(),
                    "--fleet-id".into(),
                    format!("api{h}"),
                ]);
            }
            daemons.push(start_daemon(bin, &names[1 + h], "api0", &dir, &extra)?);
        }
        if fleet {
            // Let every daemon heartbeat once, so each knows the fleet's size.
            thread::sleep(Duration::from_millis(2_500));
        }
        eprintln!(
            "demo: the scraper sends {PER_HOST}/s to each of {hosts} hosts for {} s",
            duration.as_secs()
        );
        report.runs.push(traffic(&client, hosts, duration, fleet)?);
        drop(daemons);
    }
    stop.store(true, Ordering::Relaxed);
    drop(spaces);
    Ok(report)
}

fn traffic(
    client: &str,
    hosts: usize,
    duration: Duration,
    fleet: bool,
) -> anyhow::Result<FleetRunReport> {
    let scraper_sent = Arc::new(AtomicU64::new(0));
    let scraper_served = Arc::new(AtomicU64::new(0));
    let last_served_ms = Arc::new(AtomicU64::new(0));
    let people_sent = Arc::new(AtomicU64::new(0));
    let people_served = Arc::new(AtomicU64::new(0));
    let dst = |h: usize| SocketAddr::from(([10, 77, h as u8 + 1, 2], PORT));
    let (ss, sv, ls) = (
        scraper_sent.clone(),
        scraper_served.clone(),
        last_served_ms.clone(),
    );
    let scraper = in_ns(client, move || {
        let start = Instant::now();
        let total = duration.as_secs() as u32 * PER_HOST * hosts as u32;
        let gap = Duration::from_secs(1) / (PER_HOST * hosts as u32);
        let mut threads = Vec::new();
        for k in 0..total {
            if let Some(w) = (gap * k).checked_sub(start.elapsed()) {
                thread::sleep(w);
            }
            let (ss, sv, ls) = (ss.clone(), sv.clone(), ls.clone());
            let d = dst(k as usize % hosts);
            threads.push(thread::spawn(move || {
                ss.fetch_add(1, Ordering::Relaxed);
                let at = start.elapsed().as_millis() as u64;
                if lookup(IpAddr::from([10, 77, 100, 10]), d) {
                    sv.fetch_add(1, Ordering::Relaxed);
                    ls.fetch_max(at, Ordering::Relaxed);
                }
            }));
        }
        for t in threads {
            let _ = t.join();
        }
    })?;
    let mut people = Vec::new();
    for p in 0..PEOPLE {
        let (ps, pv) = (people_sent.clone(), people_served.clone());
        people.push(in_ns(client, move || {
            let start = Instant::now();
            for k in 0..duration.as_secs() as usize {
                if let Some(w) = (Duration::from_secs(1) * k as u32).checked_sub(start.elapsed()) {
                    thread::sleep(w);
                }
                ps.fetch_add(1, Ordering::Relaxed);
                if lookup(
                    IpAddr::from([10, 77, 100, 20 + p]),
                    dst((k + p as usize) % hosts),
                ) {
                    pv.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?);
    }
    let _ = scraper.join();
    for p in people {
        let _ = p.join();
    }
    let last = last_served_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    Ok(FleetRunReport {
        fleet,
        scraper_sent: scraper_sent.load(Ordering::Relaxed),
        scraper_served: scraper_served.load(Ordering::Relaxed),
        people_sent: people_sent.load(Ordering::Relaxed),
        people_served: people_served.load(Ordering::Relaxed),
        scraper_stopped_after_s: (last < duration.as_secs_f64() - 2.0).then_some(last),
    })
}

impl FleetReport {
    pub fn text(&self) -> String {
        let mut o = format!(
            "Distributed scraper over {} API hosts, {} s per run: {}/s to each host ({}/s in all), \
             per-host limit {}; {} people at 1/s each.\n\n",
            self.hosts,
            self.duration_s,
            self.scraper_rate_per_host,
            self.scraper_rate_per_host as usize * self.hosts,
            self.per_host_limit,
            PEOPLE
        );
        o.push_str("run                   scraper served/sent   people served/sent   scraper stopped after\n");
        for r in &self.runs {
            o.push_str(&format!(
                "{:<21} {:>8}/{:<12} {:>8}/{:<11} {}\n",
                if r.fleet {
                    "with --fleet"
                } else {
                    "per-host limits only"
                },
                r.scraper_served,
                r.scraper_sent,
                r.people_served,
                r.people_sent,
                r.scraper_stopped_after_s
                    .map_or("never".to_string(), |s| format!("{s:.1} s"))
            ));
        }
        o.push_str(
            "\nEach host sees the scraper under its own limit, so per-host limits let it through; the \
             fleet adds the hosts' counts in Redis and bans it on every host.\n",
        );
        o
    }
}
