//! Network namespaces and veth pairs for tests, each uniquely named and removed on drop
//! (also when the test panics).

use std::process::Command;

pub use devkit::netns::unique;
use devkit::netns::{self as ns, add_addr};

/// Runs a command and panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    ns::sh(args).unwrap_or_else(|e| panic!("{e:#}"))
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ns::add(&name).unwrap_or_else(|e| panic!("{e:#}"));
        Self { name }
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
        let file = ns::ns_file(&self.name).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::spawn(move || {
            ns::enter(&file).unwrap_or_else(|e| panic!("{e:#}"));
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
        let _ = ns::del(&self.name);
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
        ns::veth(&client.name, &client_if, &server.name, &server_if)
            .unwrap_or_else(|e| panic!("{e:#}"));
        for addr in server_addrs {
            add_addr(&server.name, &server_if, addr).unwrap_or_else(|e| panic!("{e:#}"));
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
        add_addr(&self.client.name, &self.client_if, addr).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
