//! The benchmark's network: a generator namespace and an API-host namespace joined by a veth
//! pair, plus an idle veth pair in the generator namespace that keeps the generator program
//! attached (so live-frames test runs skip their RCU wait). Every name carries this process's
//! id; everything is removed on drop, and namespaces left by a killed earlier run are removed
//! at start. Filters (nftables tables, iptables rules, XDP/TC programs) live inside the API
//! namespace, so deleting it removes them too.

use std::fs::File;

use anyhow::{Context as _, bail};
pub use devkit::netns::enter as setns;
use devkit::netns::{self as ns, sh};

pub const PREFIX: &str = "mbn";
pub const API_MAC: &str = "02:00:00:00:00:01";
pub const API_V4: &str = "192.0.2.1";
pub const API_V6: &str = "2001:db8::1";
const GW_V4: &str = "192.0.2.2";
const GW_V6: &str = "2001:db8::2";

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Self> {
        ns::add(&name)?;
        Ok(Self { name })
    }

    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn file(&self) -> anyhow::Result<File> {
        ns::ns_file(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ns::del(&self.name);
    }
}

/// Runs `f` with the calling thread inside `ns`, then returns it to where it was.
pub fn within<T>(ns: &Netns, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    ns::within(&ns.name, f)
}

/// Removes namespaces an earlier, killed run left behind (their owner pid is gone).
pub fn remove_stale() {
    for name in ns::list_with_prefix(PREFIX) {
        let pid: String = name[PREFIX.len()..]
            .chars()
            .skip(1)
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("bench: removing stale namespace {name}");
            let _ = ns::del(&name);
        }
    }
}

pub struct Topology {
    // Field order is drop order: the API namespace first (detaching its filters).
    pub api: Netns,
    pub gen_ns: Netns,
    pub api_if: String,
    pub idle_if: String,
    pub gen_ifindex: u32,
    /// The API's UDP port is open (IPv4 and IPv6) but never read: admitted datagrams end in a
    /// full socket buffer, as at a busy server, instead of each costing an ICMP unreachable.
    _udp_sink: std::net::UdpSocket,
    /// The NAPI threads in receive-queue order, once `order_napi_by_queue` has measured it.
    napi_order: std::sync::OnceLock<Vec<u32>>,
}

fn ifindex(ns: &Netns, ifname: &str) -> anyhow::Result<u32> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")])?;
    Ok(out.trim().parse()?)
}

impl Topology {
    /// `queues`: receive queues of the API-side veth (2 spreads one source over both CPUs).
    pub fn new(tag: &str, queues: usize) -> anyhow::Result<Self> {
        let id = std::process::id() % 100_000;
        let api = Netns::new(format!("{PREFIX}a{id}{tag}"))?;
        let gen_ns = Netns::new(format!("{PREFIX}g{id}{tag}"))?;
        let api_if = format!("ba{id}{tag}");
        let gen_if = format!("bg{id}{tag}");
        let idle_if = format!("bi{id}{tag}");
        let q = queues.to_string();
        sh(&[
            "ip",
            "link",
            "add",
            &gen_if,
            "netns",
            &gen_ns.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &api_if,
            "netns",
            &api.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        gen_ns.exec(&[
            "ip",
            "link",
            "add",
            &idle_if,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{idle_if}p"),
        ])?;
        for i in [&idle_if, &format!("{idle_if}p"), &gen_if] {
            gen_ns.exec(&["ip", "link", "set", i, "up"])?;
        }
        api.exec(&["ip", "link", "set", &api_if, "address", API_MAC])?;
        api.exec(&["ip", "link", "set", &api_if, "up"])?;
        api.exec(&[
            "ip",
            "-4",
            "addr",
            "add",
            &format!("{API_V4}/24"),
            "dev",
            &api_if,
        ])?;
        api.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{API_V6}/64"),
            "dev",
            &api_if,
            "nodad",
        ])?;
        // Replies (ICMP unreachable, RST) go to a fixed neighbour: no ARP/ND per source.
        let gen_mac = gen_ns.exec(&["cat", &format!("/sys/class/net/{gen_if}/address")])?;
        let gen_mac = gen_mac.trim();
        api.exec(&[
            "ip",
            "neigh",
            "add",
            GW_V4,
            "lladdr",
            gen_mac,
            "dev",
            &api_if,
            "nud",
            "permanent",
        ])?;
        api.exec(&[
            "ip",
            "-6",
            "neigh",
            "add",
            GW_V6,
            "lladdr",
            gen_mac,
            "dev",
            &api_if,
            "nud",
            "permanent",
        ])?;
        api.exec(&[
            "ip", "route", "add", "default", "via", GW_V4, "dev", &api_if,
        ])?;
        api.exec(&[
            "ip", "-6", "route", "add", "default", "via", GW_V6, "dev", &api_if,
        ])?;
        // veth NAPI (needed to receive XDP-redirected frames) comes with GRO; threaded NAPI lets
        // the receive work be pinned to its own core.
        api.exec(&["ethtool", "-K", &api_if, "gro", "on"])?;
        api.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{api_if}/threaded"),
        ])?;
        let gen_ifindex = ifindex(&gen_ns, &gen_if)?;
        let sink = within(&api, || {
            std::net::UdpSocket::bind(("::", crate::cost::PORT)).context("binding the UDP sink")
        })?;
        Ok(Self {
            api,
            gen_ns,
            api_if,
            idle_if,
            gen_ifindex,
            _udp_sink: sink,
            napi_order: std::sync::OnceLock::new(),
        })
    }

    /// The NAPI kthreads of the API-side veth (one per receive queue): in queue order once
    /// `order_napi_by_queue` has run, in pid order until then.
    pub fn napi_threads(&self) -> Vec<u32> {
        if let Some(order) = self.napi_order.get() {
            return order.clone();
        }
        let want = format!("napi/{}-", self.api_if);
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                // comm is cut at 15 bytes; interface names are kept short enough that the
                // `napi/<if>-` prefix survives the cut.
                if comm.trim().starts_with(&want) {
                    found.push(pid);
                }
            }
        }
        found.sort();
        found
    }

    /// Finds which NAPI thread serves which receive queue: `send(q)` must put traffic on queue
    /// `q` only; the thread whose run time grows most serves it. (The threads' names carry the
    /// NAPI id, but the 15-byte `comm` cuts it off, and pid order is not queue order.)
    pub fn order_napi_by_queue(
        &self,
        queues: usize,
        mut send: impl FnMut(usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<u32>> {
        let threads = self.napi_threads();
        let run_ns = |pid: u32| -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let mut order = Vec::new();
        for q in 0..queues {
            let before: Vec<u64> = threads.iter().map(|&p| run_ns(p)).collect();
            send(q)?;
            let busiest = threads
                .iter()
                .zip(&before)
                .max_by_key(|&(&p, &b)| run_ns(p).saturating_sub(b))
                .map(|(&p, _)| p)
                .context("no NAPI threads")?;
            if order.contains(&busiest) {
                bail!("queue {q}'s traffic ran on the NAPI thread of an earlier queue ({busiest})");
            }
            order.push(busiest);
        }
        let _ = self.napi_order.set(order.clone());
        Ok(order)
    }

    /// Pins queue i's NAPI thread to `cpus[i % len]`, at the generator's real-time priority.
    /// Returns the threads.
    pub fn pin_napi(&self, cpus: &[usize]) -> anyhow::Result<Vec<u32>> {
        self.pin_napi_at(cpus, crate::sys::RT_PRIORITY)
    }

    /// `pin_napi` at a given SCHED_FIFO priority.
    pub fn pin_napi_at(&self, cpus: &[usize], priority: i32) -> anyhow::Result<Vec<u32>> {
        let threads = self.napi_threads();
        if threads.is_empty() {
            bail!(
                "no NAPI thread for {} (threaded NAPI did not start)",
                self.api_if
            );
        }
        for (i, pid) in threads.iter().enumerate() {
            sh(&[
                "taskset",
                "-pc",
                &cpus[i % cpus.len()].to_string(),
                &pid.to_string(),
            ])?;
            // Real-time, like the generator: background jobs cannot share the core.
            sh(&["chrt", "-f", "-p", &priority.to_string(), &pid.to_string()])?;
        }
        Ok(threads)
    }

    /// Receive-side interface statistics from the API namespace (`ip -s -j link`).
    pub fn api_link_stats(&self) -> anyhow::Result<serde_json::Value> {
        let out = self
            .api
            .exec(&["ip", "-s", "-j", "link", "show", &self.api_if])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["stats64"].clone())
    }

    /// Packets that reached the transport layer in the API namespace (UDP delivered + no port
    /// + errors, TCP segments in): "passed to the stack" for every configuration alike.
    pub fn transport_in(&self) -> anyhow::Result<u64> {
        let snmp = self
            .api
            .exec(&["cat", "/proc/net/snmp", "/proc/net/snmp6"])?;
        Ok(transport_counters(&snmp))
    }
}

/// Sums the transport-layer receive counters out of /proc/net/snmp + snmp6 text.
pub fn transport_counters(text: &str) -> u64 {
    let mut total = 0;
    let lines: Vec<&str> = text.lines().collect();
    // /proc/net/snmp: header line then value line per protocol.
    for pair in lines.windows(2) {
        let (h, v) = (pair[0], pair[1]);
        for proto in ["Udp:", "Tcp:"] {
            if h.starts_with(proto) && v.starts_with(proto) && h != v {
                let names: Vec<&str> = h.split_whitespace().collect();
                let vals: Vec<&str> = v.split_whitespace().collect();
                for (n, x) in names.iter().zip(vals.iter()) {
                    if matches!(*n, "InDatagrams" | "NoPorts" | "InErrors" | "InSegs") {
                        total += x.parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    // /proc/net/snmp6: "name value" lines (TCP over IPv6 is already in Tcp InSegs).
    for l in &lines {
        let mut it = l.split_whitespace();
        if let (Some(n), Some(x)) = (it.next(), it.next())
            && matches!(n, "Udp6InDatagrams" | "Udp6NoPorts" | "Udp6InErrors")
        {
            total += x.parse::<u64>().unwrap_or(0);
        }
    }
    total
}
