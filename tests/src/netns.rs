//! Network namespaces and veth pairs for tests, each uniquely named and removed on drop
//! (also when the test panics).

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short name (interface names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Runs a command and panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a new thread that first moves itself into this namespace, so the sockets
    /// it creates live there and interface names resolve there.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }

    /// `spawn_in`, waiting for the result.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_in(f)
            .join()
            .expect("thread inside namespace panicked")
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// Two namespaces joined by a veth pair: `client` side and `server` side.
pub struct Link {
    pub client: Netns,
    pub server: Netns,
    pub client_if: String,
    pub server_if: String,
}

impl Link {
    /// Creates the pair with the given server addresses (CIDR form, e.g. "10.200.0.1/24").
    pub fn new(server_addrs: &[&str]) -> Self {
        let client = Netns::new("tc");
        let server = Netns::new("ts");
        let client_if = unique("vc");
        let server_if = unique("vs");
        sh(&[
            "ip",
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            &server.name,
        ]);
        for (ns, ifname) in [(&client, &client_if), (&server, &server_if)] {
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        for addr in server_addrs {
            let family = if addr.contains(':') { "-6" } else { "-4" };
            server.exec(&[
                "ip", family, "addr", "add", addr, "dev", &server_if, "nodad",
            ]);
        }
        Self {
            client,
            server,
            client_if,
            server_if,
        }
    }

    /// Adds a client address (CIDR form); IPv6 addresses skip duplicate detection.
    pub fn add_client_addr(&self, addr: &str) {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        self.client.exec(&[
            "ip",
            family,
            "addr",
            "add",
            addr,
            "dev",
            &self.client_if,
            "nodad",
        ]);
    }
}
