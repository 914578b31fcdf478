//! A fleet for tests: API hosts in namespaces behind one router namespace, a client namespace
//! for the traffic, and a real `redis-server` in the router, reachable from every host. Each
//! host runs the responder of `traffic` and `monitor run --fleet`. Everything is removed on
//! drop, also when the test panics.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    daemon::{Daemon, Paths},
    netns::{Netns, unique},
    traffic::{Server, TIMEOUT, request},
};

/// The protected port on every host.
pub const PORT: u16 = 8443;
/// An address whose packets the router silently drops: a Redis there hangs every connect.
pub const BLACKHOLE: &str = "10.254.254.1";

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A real `redis-server` in a namespace, killed on drop.
pub struct Redis {
    child: Option<Child>,
    ns_name: String,
    pub addr: String,
    pub port: u16,
}

impl Redis {
    /// Starts `redis-server` in `ns` on `addr:port` without persistence, and waits for PING.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "redis-server"])
            .args(["--port", &port.to_string(), "--bind", addr])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? `cargo xtask setup` installs it)");
        let redis = Self {
            child: Some(child),
            ns_name: ns.name.clone(),
            addr: addr.to_string(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis
            .cli(&["PING"])
            .map(|o| o.trim() != "PONG")
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// A port no other test's Redis uses (each also lives in its own namespace).
    pub fn unique_port() -> u16 {
        16_400
            + (std::process::id() % 1000) as u16 * 8
            + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 8
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.addr, self.port)
    }

    /// `redis-cli` against this server (from its namespace); stdout, or stderr on failure.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "redis-cli", "--raw"])
            .args(["-h", &self.addr, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !stdout.starts_with("ERR") {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // `ip netns exec` execs redis-server, so the child's pid is the server's.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Kills the server (a crash: nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// One API host: its namespace, its responder, its daemon (when running) and state paths.
pub struct Host {
    // Field order is drop order: the daemon first, the namespace last.
    pub daemon: Option<Daemon>,
    server: Option<Server>,
    pub paths: Paths,
    pub iface: String,
    pub addr: IpAddr,
    pub ns: Netns,
}

impl Host {
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.addr, PORT)
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    pub fn served(&self) -> u64 {
        self.server
            .as_ref()
            .map_or(0, |s| s.served.load(Ordering::Relaxed))
    }
}

/// The router, the client namespace, the hosts and Redis.
pub struct World {
    // Field order is drop order: daemons and responders before their namespaces.
    pub hosts: Vec<Host>,
    pub redis: Option<Redis>,
    pub client: Netns,
    pub router: Netns,
    pub net: u8,
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    devkit::netns::veth(&a.name, a_if, &b.name, b_if).unwrap_or_else(|e| panic!("{e:#}"));
}

impl World {
    /// `rate` requests per second from `src`, round-robin over the hosts, for `duration`;
    /// each result with its send time after the start and the host it went to, in send order.
    pub fn spread(
        &self,
        src: IpAddr,
        rate: u32,
        duration: Duration,
    ) -> Vec<(Duration, usize, bool)> {
        let dsts: Vec<_> = self.hosts.iter().map(|h| h.dst()).collect();
        let results = Arc::new(Mutex::new(Vec::new()));
        let out = results.clone();
        self.client.run_in(move || {
            let start = Instant::now();
            let gap = Duration::from_secs(1) / rate;
            let n = (duration.as_secs_f64() * rate as f64) as u32;
            let mut threads = Vec::new();
            for k in 0..n {
                let at = gap * k;
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let h = k as usize % dsts.len();
                let dst = dsts[h];
                let out = out.clone();
                threads.push(std::thread::spawn(move || {
                    let ok = request(src, dst, "/lookup", TIMEOUT);
                    out.lock().unwrap().push((at, h, ok));
                }));
            }
            for t in threads {
                let _ = t.join();
            }
        });
        let mut r = results.lock().unwrap().clone();
        r.sort_by_key(|x| x.0);
        r
    }

    /// `hosts` API hosts on 10.`net`.H.2 (router 10.`net`.H.1), the client on 10.`net`.100.0/24
    /// (router .1), Redis on the router at 10.`net`.0.1. `client_addrs` are host numbers in the
    /// client subnet to add (the first is the client's own .2).
    pub fn new(net: u8, hosts: usize, client_addrs: &[u8]) -> Self {
        let router = Netns::new("fr");
        router.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let client = Netns::new("fc");
        let (rc, cc) = (unique("frc"), unique("fcc"));
        veth(&router, &rc, &client, &cc);
        router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.100.1/24"),
            "dev",
            &rc,
        ]);
        client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.100.2/24"),
            "dev",
            &cc,
        ]);
        for a in client_addrs {
            client.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.{net}.100.{a}/24"),
                "dev",
                &cc,
            ]);
        }
        client.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.100.1"),
        ]);
        // Redis listens on a loopback-like address of the router, routed from every host.
        router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.0.1/32"),
            "dev",
            "lo",
        ]);
        router.exec(&[
            "ip",
            "route",
            "add",
            "blackhole",
            &format!("{BLACKHOLE}/32"),
        ]);
        let mut world = Self {
            hosts: Vec::new(),
            redis: None,
            client,
            router,
            net,
        };
        for h in 1..=hosts {
            world.add_host(h as u8);
        }
        world
    }

    fn add_host(&mut self, h: u8) {
        let net = self.net;
        let ns = Netns::new("fh");
        let (r_if, h_if) = (unique("frh"), unique("fhh"));
        veth(&self.router, &r_if, &ns, &h_if);
        self.router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.{h}.1/24"),
            "dev",
            &r_if,
        ]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.{h}.2/24"),
            "dev",
            &h_if,
        ]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.{h}.1"),
        ]);
        let server = ns.run_in(|| Server::start(PORT));
        self.hosts.push(Host {
            ns,
            iface: h_if,
            addr: format!("10.{net}.{h}.2").parse().unwrap(),
            paths: Paths::new(),
            daemon: None,
            server: Some(server),
        });
    }

    pub fn redis_addr(&self) -> String {
        format!("10.{}.0.1", self.net)
    }

    pub fn start_redis(&mut self, port: u16) -> &Redis {
        let redis = Redis::start(&self.router, &self.redis_addr(), port);
        self.redis = Some(redis);
        self.redis.as_ref().unwrap()
    }

    pub fn redis(&self) -> &Redis {
        self.redis.as_ref().expect("redis running")
    }

    /// Starts host `i`'s daemon with `--fleet url --fleet-id host<i>` and `extra`.
    pub fn start_daemon(&mut self, i: usize, url: &str, extra: &[&str]) {
        let id = format!("host{}", i + 1);
        let host = &mut self.hosts[i];
        let mut args = vec!["--port", "8443", "--fleet", url, "--fleet-id", &id];
        args.extend_from_slice(extra);
        host.daemon = Some(Daemon::start(&host.ns, &host.iface, &host.paths, &args));
    }

    /// The source address `10.net.100.a`.
    pub fn client_ip(&self, a: u8) -> IpAddr {
        format!("10.{}.100.{a}", self.net).parse().unwrap()
    }
}
