//! The demo's little internet: network namespaces joined by veth pairs, their addresses and
//! routes, and their removal. Owns every name the demo creates on the machine (namespaces, the
//! run directory, the pin path) so that tear-down, stale-run sweeping and `--teardown` agree.
//!
//! Shape: one router namespace (`net`) with a veth pair to each of the API host and the four
//! client-class namespaces. Each client namespace owns whole address blocks through a `local`
//! route on `lo` plus `ip_nonlocal_bind`, so its clients can bind any address of their block
//! (thousands of IPv6 addresses in one /64, or addresses in many unrelated /24s) without
//! configuring each one. All addresses are in 198.18.0.0/15 (benchmarking range) and fd00::/8.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use devkit::netns;

/// Every namespace the demo creates starts with this, followed by the run id.
pub const NS_PREFIX: &str = "mdemo";
/// Run directories (socket, database, daemon log, pid files) live under here.
pub const RUN_ROOT: &str = "/run/monitor-demo";
/// Pin paths are `<PIN_ROOT>/monitor-demo-<id>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf";
/// The API host's interface, the one the monitor attaches to.
pub const API_IFACE: &str = "api0";
/// The lookup service's port.
pub const LOOKUP_PORT: u16 = 8080;
pub const API_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const API_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 2);

/// The namespaces of one world, in creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Net,
    Api,
    Legit,
    Loud,
    Distributed,
    LowSlow,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Net,
        Role::Api,
        Role::Legit,
        Role::Loud,
        Role::Distributed,
        Role::LowSlow,
    ];
    /// The client namespaces: index 1..=4 also numbers their link to the router.
    const CLIENTS: [Role; 4] = [Role::Legit, Role::Loud, Role::Distributed, Role::LowSlow];

    fn suffix(self) -> &'static str {
        match self {
            Role::Net => "net",
            Role::Api => "api",
            Role::Legit => "legit",
            Role::Loud => "loud",
            Role::Distributed => "dist",
            Role::LowSlow => "slow",
        }
    }

    /// Address blocks this client namespace answers for (its clients bind inside them).
    fn blocks(self) -> &'static [&'static str] {
        match self {
            Role::Legit => &["198.18.16.0/20", "fd00:1::/32"],
            Role::Loud => &["198.18.64.0/20"],
            Role::Distributed => &["198.18.96.0/24", "fd00:77::/32"],
            Role::LowSlow => &["198.19.0.0/16", "fd00:5::/32"],
            Role::Net | Role::Api => &[],
        }
    }
}

/// Names of everything one run owns, derived from its id (the xtask's pid).
#[derive(Clone, Debug)]
pub struct Names {
    pub id: String,
}

impl Names {
    pub fn new(id: &str) -> Self {
        Self { id: id.to_string() }
    }
    pub fn ns(&self, role: Role) -> String {
        format!("{NS_PREFIX}{}-{}", self.id, role.suffix())
    }
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.id)
    }
    pub fn pin_path(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(format!("monitor-demo-{}", self.id))
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("monitor.sock")
    }
}

/// A created world. Dropping it removes the namespaces (which takes the veths, routes and any
/// attached program with them) unless `keep` was called.
pub struct World {
    pub names: Names,
    created: Vec<String>,
    kept: bool,
}

impl World {
    /// Creates the namespaces, links, addresses and routes. A failure part-way leaves a `World`
    /// that was never returned, so the partial one is dropped (and removed) here.
    pub fn create(names: Names) -> anyhow::Result<Self> {
        let mut world = Self {
            names,
            created: Vec::new(),
            kept: false,
        };
        for role in Role::ALL {
            let ns = world.names.ns(role);
            netns::add(&ns)?;
            world.created.push(ns.clone());
        }
        world.configure()?;
        Ok(world)
    }

    fn configure(&self) -> anyhow::Result<()> {
        let net = self.names.ns(Role::Net);
        let api = self.names.ns(Role::Api);
        netns::sysctls(
            &net,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        netns::veth(&net, "r-api", &api, API_IFACE)?;
        netns::add_addr(&net, "r-api", "198.18.0.1/24")?;
        netns::add_addr(&net, "r-api", "fd00:a::1/64")?;
        netns::add_addr(&api, API_IFACE, &format!("{API_V4}/24"))?;
        netns::add_addr(&api, API_IFACE, &format!("{API_V6}/64"))?;
        netns::ip(&[
            "-n",
            &api,
            "-4",
            "route",
            "add",
            "default",
            "via",
            "198.18.0.1",
        ])?;
        netns::ip(&[
            "-n",
            &api,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:a::1",
        ])?;
        for (i, role) in Role::CLIENTS.into_iter().enumerate() {
            let ns = self.names.ns(role);
            let n = i + 1;
            let r_if = format!("r-{}", role.suffix());
            netns::veth(&net, &r_if, &ns, "eth0")?;
            let (r4, c4) = (format!("198.18.24{n}.1"), format!("198.18.24{n}.2"));
            let (r6, c6) = (format!("fd00:f:{n}::1"), format!("fd00:f:{n}::2"));
            netns::add_addr(&net, &r_if, &format!("{r4}/24"))?;
            netns::add_addr(&net, &r_if, &format!("{r6}/64"))?;
            netns::add_addr(&ns, "eth0", &format!("{c4}/24"))?;
            netns::add_addr(&ns, "eth0", &format!("{c6}/64"))?;
            netns::ip(&["-n", &ns, "-4", "route", "add", "default", "via", &r4])?;
            netns::ip(&["-n", &ns, "-6", "route", "add", "default", "via", &r6])?;
            netns::sysctls(
                &ns,
                &[
                    ("net/ipv4/ip_nonlocal_bind", "1"),
                    ("net/ipv6/ip_nonlocal_bind", "1"),
                ],
            )?;
            for block in role.blocks() {
                let fam = netns::family(block);
                netns::ip(&["-n", &ns, fam, "route", "add", "local", block, "dev", "lo"])?;
                let via = if fam == "-6" { &c6 } else { &c4 };
                netns::ip(&["-n", &net, fam, "route", "add", block, "via", via])?;
            }
        }
        Ok(())
    }

    /// Leaves everything in place when dropped (for `--keep`).
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes the namespaces now; errors are reported, not fatal (best effort).
    pub fn remove(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = netns::del(&ns) {
                eprintln!("demo: could not remove namespace {ns}: {e:#}");
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.kept {
            self.remove();
        }
    }
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission; it sends nothing.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Removes everything a run with this id left behind: its daemon (by the pid it recorded),
/// namespaces, pins and run directory. Used for stale runs and by `--teardown`.
pub fn sweep(names: &Names) {
    let dir = names.run_dir();
    if let Some(pid) = read_pid(&dir.join("daemon.pid")) {
        super::daemon::stop_pid(pid);
    }
    for ns in netns::list_with_prefix(&format!("{NS_PREFIX}{}-", names.id)) {
        if let Err(e) = netns::del(&ns) {
            eprintln!("demo: could not remove namespace {ns}: {e:#}");
        }
    }
    remove_tree(&names.pin_path());
    remove_tree(&dir);
    // The shared parent goes too once no run uses it (this fails, harmlessly, while one does).
    let _ = fs::remove_dir(RUN_ROOT);
}

pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes a directory tree if present (bpffs pins are removed by unlinking them).
pub fn remove_tree(path: &Path) {
    if path.exists()
        && let Err(e) = fs::remove_dir_all(path)
    {
        eprintln!("demo: could not remove {}: {e}", path.display());
    }
}

/// Run ids found on the machine: run directories and namespaces with the demo's prefix.
pub fn known_runs() -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(RUN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for ns in netns::list_with_prefix(NS_PREFIX) {
        if let Some(id) = ns
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            && !ids.iter().any(|i| i == id)
        {
            ids.push(id.to_string());
        }
    }
    ids
}

/// Whether the run with this id is still in use: its xtask is alive, or it was kept on purpose.
pub fn run_in_use(names: &Names) -> bool {
    let alive = names.id.parse().is_ok_and(pid_alive);
    alive || names.run_dir().join("kept").exists()
}

/// An address inside a client block, from its parts (helper for the scenario's address plan).
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}
