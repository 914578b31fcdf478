//! The configurations compared: no filter, the trivial XDP_DROP ceiling, nftables meters
//! (netdev ingress and inet prerouting), iptables hashlimit (raw PREROUTING), and this project
//! attached as native XDP, generic XDP and TC. All limit each source to one request per minute
//! with a burst of one, on TCP and UDP port 8443, so under the benchmark's traffic every source
//! is over its limit after its first packet. Everything is installed inside the API namespace.

use anyhow::Context as _;
use aya::programs::{TcAttachType, tc, xdp::XdpMode};
use monitor::kernel::{Kernel, LoadOptions};
use monitor_common::{
    config::{Config, action, count_mode, port_flags},
    maps::{MAP_EVENT_SPACING, MAP_PAROLE, MAP_SOURCES},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use serde::Serialize;

use crate::{
    cost::PORT,
    daemon::Daemon,
    net::{self, Topology},
    progs::Bench,
    sys::{sh, sh_stdin},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[allow(clippy::enum_variant_names)] // `NoFilter` reads better than `None` next to `Option`.
pub enum Filter {
    NoFilter,
    TrivialDrop,
    NftNetdev,
    NftInet,
    Iptables,
    XdpNative,
    XdpGeneric,
    Tc,
    /// Bench-only: one LRU lookup per packet in a pre-filled table of 16-byte keys, then
    /// drop. The floor any table of this shape imposes at a given size.
    LookupFloor,
    /// Bench-only: the trivial drop after reading the IPv4 source from the frame.
    TouchDrop,
    /// Bench-only: `LookupFloor` with a 4-byte IPv4 key.
    LookupFloorV4Key,
    /// Bench-only: `LookupFloor` in a plain preallocated hash (no LRU).
    LookupFloorHash,
    /// The product as deployed: `monitor run` (see `daemon`), attached natively.
    Deployed,
    /// Bench-only prototype: the set-associative source table (`table`), GCRA, drop.
    SaTable,
    /// Bench-only: the product's LRU design behind the same minimal parse as `SaTable`.
    LruGcra,
}

impl Filter {
    pub fn label(self) -> &'static str {
        match self {
            Filter::NoFilter => "no filter",
            Filter::TrivialDrop => "trivial XDP_DROP",
            Filter::NftNetdev => "nftables meter (netdev ingress)",
            Filter::NftInet => "nftables meter (inet prerouting)",
            Filter::Iptables => "iptables hashlimit (raw)",
            Filter::XdpNative => "monitor XDP native",
            Filter::XdpGeneric => "monitor XDP generic",
            Filter::Tc => "monitor TC ingress",
            Filter::LookupFloor => "floor: 1 LRU lookup + XDP_DROP",
            Filter::TouchDrop => "trivial: read source + XDP_DROP",
            Filter::LookupFloorV4Key => "floor: 1 LRU lookup, 4-byte key",
            Filter::LookupFloorHash => "floor: 1 plain-hash lookup",
            Filter::Deployed => "monitor run (deployed)",
            Filter::SaTable => "prototype: set-associative table",
            Filter::LruGcra => "prototype: LRU design, same parse",
        }
    }
    pub fn is_peer(self) -> bool {
        matches!(self, Filter::NftNetdev | Filter::NftInet | Filter::Iptables)
    }
    /// Keeps per-source state that a warm-up fills.
    pub fn tracks_sources(self) -> bool {
        self.is_peer() || self.is_ours() || matches!(self, Filter::SaTable | Filter::LruGcra)
    }
    pub fn is_bench_prog(self) -> bool {
        matches!(
            self,
            Filter::TrivialDrop
                | Filter::LookupFloor
                | Filter::TouchDrop
                | Filter::LookupFloorV4Key
                | Filter::LookupFloorHash
                | Filter::SaTable
                | Filter::LruGcra
        )
    }
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Filter::XdpNative | Filter::XdpGeneric | Filter::Tc | Filter::Deployed
        )
    }
}

/// Source table capacity for our program: a million sources plus headroom (2^21 slots in
/// 2^19 sets), so few measured sources find their set full.
pub const OUR_CAPACITY: u32 = 1 << 20;
/// Peers' table sizes (hashlimit's maximum is 2^20).
const PEER_SIZE: u32 = 1 << 20;

/// Per-source limit every configuration enforces, given as requests per minute and burst.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub per_sec: Option<u64>,
    pub per_min: u64,
    pub burst: u64,
}

impl Rule {
    pub const STRICT: Rule = Rule {
        per_sec: None,
        per_min: 1,
        burst: 1,
    };
    fn nft_rate(&self) -> String {
        match self.per_sec {
            Some(r) => format!("{r}/second burst {} packets", self.burst),
            None => format!("{}/minute burst {} packets", self.per_min, self.burst),
        }
    }
    fn ipt_rate(&self) -> String {
        match self.per_sec {
            Some(r) => format!("{r}/sec"),
            None => format!("{}/min", self.per_min),
        }
    }
    /// The same limit as `monitor run` flags.
    pub fn daemon_flags(&self) -> Vec<String> {
        let rate = match self.per_sec {
            Some(r) => format!("{r}/s"),
            None => format!("{}/m", self.per_min),
        };
        vec![
            "--rate".into(),
            rate,
            "--burst".into(),
            self.burst.to_string(),
        ]
    }
    fn limit(&self) -> Limit {
        match self.per_sec {
            Some(r) => Limit::new(r, NANOS_PER_SEC, self.burst),
            None => Limit::new(self.per_min, 60 * NANOS_PER_SEC, self.burst),
        }
        .expect("valid limit")
    }
}

pub struct Installed {
    pub filter: Filter,
    kernel: Option<Kernel>,
    pub daemon: Option<Daemon>,
    trivial_link: Option<(&'static str, aya::programs::xdp::XdpLinkId)>,
    base_drops: u64,
}

fn nft_script(t: &Topology, table: &str, family: &str, rule: &Rule) -> String {
    let hook = if family == "netdev" {
        format!(
            "type filter hook ingress device \"{}\" priority 0; policy accept;",
            t.api_if
        )
    } else {
        "type filter hook prerouting priority raw; policy accept;".to_string()
    };
    let rate = rule.nft_rate();
    let set = |name: &str, ty: &str| {
        format!(
            "  set {name} {{ type {ty}; size {PEER_SIZE}; flags dynamic,timeout; timeout 10m; gc-interval 1m; }}\n"
        )
    };
    let mut s = format!("table {family} {table} {{\n");
    s += &set("m4", "ipv4_addr");
    s += &set("m6", "ipv6_addr");
    s += &format!("  chain in {{\n    {hook}\n");
    for (l3, set, l4) in [
        ("ip", "m4", "udp"),
        ("ip", "m4", "tcp"),
        ("ip6", "m6", "udp"),
        ("ip6", "m6", "tcp"),
    ] {
        let family_match = match (family, l3) {
            ("netdev", "ip") => "meta protocol ip",
            ("netdev", _) => "meta protocol ip6",
            (_, "ip") => "meta nfproto ipv4",
            _ => "meta nfproto ipv6",
        };
        s += &format!(
            "    {family_match} {l4} dport {PORT} add @{set} {{ {l3} saddr limit rate over {rate} }} drop\n"
        );
    }
    s += "  }\n}\n";
    s
}

pub fn install(
    f: Filter,
    t: &Topology,
    bench: &mut Bench,
    rule: &Rule,
    sources_hint: u32,
) -> anyhow::Result<Installed> {
    let mut inst = Installed {
        filter: f,
        kernel: None,
        daemon: None,
        trivial_link: None,
        base_drops: 0,
    };
    let table = format!("mb{}", std::process::id());
    match f {
        Filter::NoFilter => {}
        Filter::TrivialDrop => {
            inst.base_drops = bench.drops()?;
            let link = net::within(&t.api, || {
                Ok(bench
                    .prog("bench_drop")?
                    .attach(&t.api_if, XdpMode::Driver)?)
            })
            .context("attaching the trivial XDP_DROP")?;
            inst.trivial_link = Some(("bench_drop", link));
        }
        Filter::TouchDrop => {
            inst.base_drops = bench.drops()?;
            let link = net::within(&t.api, || {
                Ok(bench
                    .prog("bench_touch")?
                    .attach(&t.api_if, XdpMode::Driver)?)
            })
            .context("attaching the touching trivial drop")?;
            inst.trivial_link = Some(("bench_touch", link));
        }
        Filter::LookupFloor | Filter::LookupFloorV4Key | Filter::LookupFloorHash => {
            inst.base_drops = bench.drops()?;
            let (map_name, prog) = match f {
                Filter::LookupFloor => ("FLOOR_LRU", "bench_floor"),
                Filter::LookupFloorV4Key => ("FLOOR_LRU4", "bench_floor4"),
                _ => ("FLOOR_HASH", "bench_floorh"),
            };
            let map = bench.ebpf.map(map_name).context("floor map")?;
            let fd = crate::fill::map_fd(map)?;
            let n = sources_hint.max(1);
            if f == Filter::LookupFloorV4Key {
                let entries: Vec<([u8; 4], u64)> = (0..n)
                    .map(|i| (crate::fill::V4_BASE.wrapping_add(i).to_be_bytes(), 0u64))
                    .collect();
                monitor::batch::write_all(fd, &entries).context("pre-filling the floor table")?;
            } else {
                let entries: Vec<([u8; 16], u64)> = (0..n)
                    .map(|i| (crate::fill::v4_source(i).addr, 0u64))
                    .collect();
                monitor::batch::write_all(fd, &entries).context("pre-filling the floor table")?;
            }
            let link = net::within(&t.api, || {
                Ok(bench.prog(prog)?.attach(&t.api_if, XdpMode::Driver)?)
            })
            .context("attaching a lookup floor")?;
            inst.trivial_link = Some((prog, link));
        }
        Filter::NftNetdev | Filter::NftInet => {
            let family = if f == Filter::NftNetdev {
                "netdev"
            } else {
                "inet"
            };
            let script = nft_script(t, &table, family, rule);
            sh_stdin(
                &["ip", "netns", "exec", &t.api.name, "nft", "-f", "-"],
                &script,
            )
            .with_context(|| format!("installing nftables:\n{script}"))?;
        }
        Filter::Iptables => {
            for (cmd, name) in [
                ("iptables", format!("{table}4")),
                ("ip6tables", format!("{table}6")),
            ] {
                for proto in ["udp", "tcp"] {
                    let port = PORT.to_string();
                    let rate = rule.ipt_rate();
                    let burst = rule.burst.to_string();
                    let size = PEER_SIZE.to_string();
                    t.api
                        .exec(&[
                            cmd,
                            "-t",
                            "raw",
                            "-A",
                            "PREROUTING",
                            "-p",
                            proto,
                            "--dport",
                            &port,
                            "-m",
                            "hashlimit",
                            "--hashlimit-name",
                            &name,
                            "--hashlimit-mode",
                            "srcip",
                            "--hashlimit-above",
                            &rate,
                            "--hashlimit-burst",
                            &burst,
                            "--hashlimit-htable-size",
                            &size,
                            "--hashlimit-htable-max",
                            &size,
                            "--hashlimit-htable-expire",
                            "600000",
                            "--hashlimit-htable-gcinterval",
                            "60000",
                            "-j",
                            "DROP",
                        ])
                        .context("installing iptables hashlimit")?;
                }
            }
        }
        Filter::Deployed => {
            inst.daemon = Some(Daemon::start(t, rule, "deployed")?);
        }
        Filter::SaTable | Filter::LruGcra => {
            inst.base_drops = bench.drops()?;
            let lim = rule.limit();
            crate::table::configure(bench, lim.interval_ns, lim.burst())?;
            let prog = if f == Filter::SaTable {
                crate::table::clear_sa(bench)?;
                "bench_sa"
            } else {
                "bench_lrug"
            };
            let link = net::within(&t.api, || {
                Ok(bench.prog(prog)?.attach(&t.api_if, XdpMode::Driver)?)
            })
            .context("attaching a table prototype")?;
            inst.trivial_link = Some((prog, link));
        }
        Filter::XdpNative | Filter::XdpGeneric | Filter::Tc => {
            let mut k = Kernel::load(&LoadOptions {
                max_sources: OUR_CAPACITY,
                pin_dir: None,
                table_seed: None,
            })
            .context("loading the monitor object")?;
            k.set_config(&Config {
                source: rule.limit(),
                count_mode: count_mode::PACKETS,
                action: action::DROP,
                ..Config::default()
            })?;
            k.set_port(PORT, port_flags::TCP | port_flags::UDP)?;
            net::within(&t.api, || {
                match f {
                    Filter::XdpNative => {
                        k.xdp()?.attach(&t.api_if, XdpMode::Driver)?;
                    }
                    Filter::XdpGeneric => {
                        k.xdp()?.attach(&t.api_if, XdpMode::Skb)?;
                    }
                    _ => {
                        let _ = tc::qdisc_add_clsact(&t.api_if);
                        k.tc()?.attach(&t.api_if, TcAttachType::Ingress)?;
                    }
                }
                Ok(())
            })
            .with_context(|| format!("attaching {}", f.label()))?;
            inst.kernel = Some(k);
        }
    }
    Ok(inst)
}

impl Installed {
    /// Packets this configuration has dropped so far, when it can say cheaply (our programs
    /// and the trivial one count them in maps; the peers do not: see `throughput`).
    pub fn drops(&self, bench: &Bench) -> anyhow::Result<Option<u64>> {
        Ok(match self.filter {
            f if f.is_bench_prog() => Some(bench.drops()? - self.base_drops),
            Filter::Deployed => match &self.daemon {
                Some(d) => Some(d.stat(Stat::Dropped.label())?),
                None => None,
            },
            _ => match &self.kernel {
                Some(k) => Some(k.stats()?.get(Stat::Dropped)),
                None => None,
            },
        })
    }

    /// Our tracked-source count (read through the table's shared mapping) and the kernel
    /// memory of everything that tracks sources (memlock from `/proc/self/fdinfo`): the source
    /// table (for a `BPF_F_MMAPABLE` array, the sets rounded up to whole pages plus one page
    /// for the map itself), the parked states of evicted sources (`MON_PAROLE`) and the event
    /// spacing (`MON_EVT_SPACING`).
    pub fn our_table(&mut self) -> anyhow::Result<Option<(usize, u64)>> {
        let Some(k) = self.kernel.as_mut() else {
            return Ok(None);
        };
        let n = k.sources()?.len();
        let mut memlock = 0u64;
        for name in [MAP_SOURCES, MAP_PAROLE, MAP_EVENT_SPACING] {
            let map = k.ebpf_mut().map(name).context(name)?;
            let fd = crate::fill::map_fd(map)?;
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            memlock += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Some((n, memlock)))
    }

    pub fn remove(mut self, t: &Topology, bench: &mut Bench) -> anyhow::Result<()> {
        let table = format!("mb{}", std::process::id());
        match self.filter {
            Filter::NoFilter => {}
            f if f.is_bench_prog() => {
                if let Some((prog, link)) = self.trivial_link.take() {
                    bench.prog(prog)?.detach(link)?;
                }
            }
            Filter::NftNetdev => {
                t.api.exec(&["nft", "delete", "table", "netdev", &table])?;
            }
            Filter::NftInet => {
                t.api.exec(&["nft", "delete", "table", "inet", &table])?;
            }
            Filter::Iptables => {
                t.api.exec(&["iptables", "-t", "raw", "-F", "PREROUTING"])?;
                t.api
                    .exec(&["ip6tables", "-t", "raw", "-F", "PREROUTING"])?;
            }
            // Stopping the daemon (SIGTERM, no --persist) detaches its program.
            Filter::Deployed => drop(self.daemon.take()),
            _ => {
                // Dropping the object closes its links, which detaches the programs.
                let k = self.kernel.take();
                net::within(&t.api, || {
                    drop(k);
                    Ok(())
                })?;
            }
        }
        let _ = sh(&["true"]);
        Ok(())
    }
}
