//! Part 2 (throughput), 4 (memory at a million sources) and the traffic for part 3: the
//! generator namespace floods the API namespace over veth, and each configuration is measured
//! on the same traffic, alternated within every repetition.
//!
//! Counting: "offered" is what the generator sent per second of its run; "passed" is what
//! reached the API namespace's transport layer (UDP delivered/no-port/errors, TCP segments in);
//! "dropped" is the filter's own drop count (our maps; the trivial program's map) or, for the
//! peers, packets the receiving veth handed to the stack minus those that reached transport
//! (nft listing is too slow at a million elements to read a rule counter). Frames the veth ring
//! could not take (the receiver was saturated) are neither: they are the difference to offered.
//! CPU is the busy fraction of the receive cores (the NAPI threads' cores) during the run.

use std::{collections::BTreeMap, net::IpAddr, thread, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cost::PORT,
    daemon,
    fill::{V4_BASE, V6_BASE, V6_PREFIX},
    filters::{self, Filter, Installed, Rule},
    frames::{self, L4},
    net::{self, Topology},
    progs::{Bench, GenCfg},
    stats::{Summary, summarize},
    sys::{self, CpuWindow, RT_PRIORITY},
    traffic_gen::{self as tg, Pace},
};

pub const GEN_CPU: usize = 0;
/// Frames per paced warm-up run: well under the veth ring (256), so a burst never overflows it.
const WARM_CHUNK: u32 = 128;
pub const RX_CPU: usize = 1;
/// Frames per live-frames call in timed runs (`Layout::secs`): about 10-30 ms of traffic.
const TIMED_CHUNK: u32 = 100_000;

/// Where a measured run's generator threads and receive (NAPI) threads run.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// One generator thread on each of these CPUs, each sending the run's frames. A veth
    /// delivers a redirected frame to receive queue `cpu % queues` of the sending CPU.
    pub gen_cpus: &'static [usize],
    /// Receive queue i's NAPI thread runs on `napi_cpus[i % len]`.
    pub napi_cpus: &'static [usize],
    /// The NAPI threads' SCHED_FIFO priority (the generators run at `RT_PRIORITY`).
    pub napi_priority: i32,
    /// 0: each generator thread sends the run's frames in one go; otherwise each sends for
    /// this many seconds (so threads of unequal speed cover the same window).
    pub secs: f64,
}

/// The throughput part's layout: the generator on one core, the receiver on the other.
pub const SPLIT: Layout = Layout {
    gen_cpus: &[GEN_CPU],
    napi_cpus: &[RX_CPU],
    napi_priority: RT_PRIORITY,
    secs: 0.0,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Traffic {
    V4Udp,
    V6Udp,
    V4Syn,
    V6Syn,
}

impl Traffic {
    pub fn label(self) -> &'static str {
        match self {
            Traffic::V4Udp => "IPv4 UDP",
            Traffic::V6Udp => "IPv6 UDP",
            Traffic::V4Syn => "IPv4 TCP SYN",
            Traffic::V6Syn => "IPv6 TCP SYN",
        }
    }
    pub fn is_v6(self) -> bool {
        matches!(self, Traffic::V6Udp | Traffic::V6Syn)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Regime {
    pub sources: u32,
    /// Every source already tracked and over its limit before the measured run.
    pub warm: bool,
}

impl Regime {
    pub fn label(self) -> String {
        let n = match self.sources {
            1_000_000 => "1M".to_string(),
            10_000 => "10k".to_string(),
            n => n.to_string(),
        };
        if self.sources >= 1_000_000 {
            format!("{n} {}", if self.warm { "warm" } else { "cold" })
        } else {
            n
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    pub offered: f64,
    pub passed: f64,
    pub dropped: f64,
    pub cpu: f64,
    /// The deployed daemon's own cost over the run (only for `Filter::Deployed`).
    pub daemon: Option<daemon::Window>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub offered: Summary,
    pub passed: Summary,
    pub dropped: Summary,
    pub cpu: Summary,
    /// The deployed daemon's CPU (fraction of one core) and log lines per second.
    pub daemon_cpu: Option<Summary>,
    /// The most offender event lines the daemon wrote in any one second of the run (a run
    /// is shorter than a second, so lines per second over it would magnify one burst).
    pub daemon_event_lines_max: Option<Summary>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Our source map: memlock bytes, entries tracked, capacity.
    pub ours_memlock: u64,
    pub ours_tracked: u64,
    pub ours_capacity: u64,
    /// Kernel memory growth (slab + vmalloc) while each peer's table filled, and the entries
    /// it then held (first packets of sources, which pass).
    pub peers: BTreeMap<String, (u64, u64)>,
    /// The table prototypes: memlock bytes and sources held after the warm-up.
    pub prototypes: BTreeMap<String, (u64, u64)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ThroughputResult {
    pub cells: BTreeMap<String, BTreeMap<String, BTreeMap<String, Cell>>>,
    pub generator_alone_pps: Summary,
    pub frames_per_run: u32,
    pub reps: usize,
    pub memory: Memory,
}

pub struct Plan {
    pub traffic: Traffic,
    pub filters: Vec<Filter>,
    pub regimes: Vec<Regime>,
    pub reps: usize,
}

pub fn frame_for(tr: Traffic) -> frames::Built {
    let (src, dst): (IpAddr, IpAddr) = if tr.is_v6() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&V6_PREFIX);
        a[4..8].copy_from_slice(&V6_BASE.to_be_bytes());
        a[15] = 1;
        (IpAddr::from(a), net::API_V6.parse().unwrap())
    } else {
        (
            IpAddr::from(V4_BASE.to_be_bytes()),
            net::API_V4.parse().unwrap(),
        )
    };
    let l4 = if matches!(tr, Traffic::V4Udp | Traffic::V6Udp) {
        L4::Udp
    } else {
        L4::Syn
    };
    frames::build(src, dst, None, l4, PORT, &[0u8; 18])
}

pub fn set_gen(
    bench: &mut Bench,
    tr: Traffic,
    sources: u32,
    ifindex: u32,
) -> anyhow::Result<Vec<u8>> {
    let b = frame_for(tr);
    bench.set_gen(GenCfg {
        ifindex,
        sources,
        is_v6: tr.is_v6() as u32,
        l4_csum_off: b.l4_csum_off as u32,
        base: if tr.is_v6() { V6_BASE } else { V4_BASE },
        _pad: 0,
    })?;
    Ok(b.bytes)
}

fn rx_packets(t: &Topology) -> u64 {
    t.api_link_stats()
        .ok()
        .and_then(|v| v["rx"]["packets"].as_u64())
        .unwrap_or(0)
}

fn slab_vmalloc_kb() -> u64 {
    sys::meminfo_kb("Slab") + sys::meminfo_kb("VmallocUsed") + sys::meminfo_kb("Percpu")
}

pub struct Runner<'a> {
    pub t: &'a Topology,
    pub bench: &'a mut Bench,
    pub gen_prog: std::os::fd::OwnedFd,
    pub frames: u32,
    pub warm_pps: f64,
    pub warm_passes: usize,
}

impl Runner<'_> {
    /// Runs a generator thread flat out for `count` frames on each of the layout's generator
    /// CPUs at once, and returns what they sent together (over the longest thread's time).
    fn blast(&mut self, layout: Layout, frame: &[u8], count: u32) -> anyhow::Result<tg::Sent> {
        let handles = layout
            .gen_cpus
            .iter()
            .map(|&cpu| {
                tg::spawn(
                    &self.gen_prog,
                    &self.t.gen_ns,
                    cpu,
                    frame.to_vec(),
                    if layout.secs > 0.0 {
                        Pace::For {
                            secs: layout.secs,
                            chunk: TIMED_CHUNK,
                        }
                    } else {
                        Pace::Flat(count)
                    },
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut total = tg::Sent::default();
        let mut each = Vec::new();
        for h in handles {
            let s = h
                .join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
            total.frames += s.frames;
            total.secs = total.secs.max(s.secs);
            each.push(format!("{:.2} Mpps in {:.3} s", s.pps() / 1e6, s.secs));
        }
        if each.len() > 1 {
            eprintln!("bench:   generator threads: {}", each.join(", "));
        }
        Ok(total)
    }

    /// The generator's own ceiling: frames rewritten and dropped at the generator.
    pub fn generator_alone(&mut self, tr: Traffic) -> anyhow::Result<f64> {
        let frame = set_gen(self.bench, tr, 1, 0)?;
        Ok(self.blast(SPLIT, &frame, self.frames)?.pps())
    }

    /// Sends every source one frame at a pace the receiving stack keeps up with: the first
    /// request of a source is admitted (burst 1) and passes, after which the source is tracked
    /// and over its one-per-minute limit. Frames the receiver misses (the veth ring overflows
    /// when the receive core stalls) leave sources untracked, so passes repeat, up to
    /// `warm_passes`, until 99% are tracked. Returns the frames that passed: one per source
    /// now tracked, so coverage can be reported.
    pub fn warm_up(&mut self, frame: &[u8], sources: u32) -> anyhow::Result<u64> {
        let before = self.t.transport_in()?;
        let mut tracked = 0;
        for pass in 0..self.warm_passes {
            let pace = Pace::Paced {
                frames: sources as u64,
                chunk: WARM_CHUNK,
                pps: self.warm_pps,
            };
            let h = tg::spawn(
                &self.gen_prog,
                &self.t.gen_ns,
                GEN_CPU,
                frame.to_vec(),
                pace,
            )?;
            h.join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
            thread::sleep(Duration::from_millis(100));
            tracked = self.t.transport_in()? - before;
            eprintln!(
                "bench:   warm-up pass {}: {tracked} of {sources} sources tracked",
                pass + 1
            );
            if tracked * 100 >= sources as u64 * 99 {
                break;
            }
        }
        Ok(tracked)
    }

    pub fn measure(
        &mut self,
        f: Filter,
        tr: Traffic,
        regime: Regime,
        memory: Option<&mut Memory>,
    ) -> anyhow::Result<Sample> {
        self.measure_on(SPLIT, f, tr, regime, memory)
    }

    /// `measure` with the measured run's generators and receivers placed by `layout` (the
    /// warm-up always runs as `SPLIT`).
    pub fn measure_on(
        &mut self,
        layout: Layout,
        f: Filter,
        tr: Traffic,
        regime: Regime,
        memory: Option<&mut Memory>,
    ) -> anyhow::Result<Sample> {
        let frame = set_gen(self.bench, tr, regime.sources, self.t.gen_ifindex)?;
        let mem_before = slab_vmalloc_kb();
        let mut inst: Installed =
            filters::install(f, self.t, self.bench, &Rule::STRICT, regime.sources)?;
        let result = (|| {
            if regime.warm && f.tracks_sources() {
                self.t.pin_napi(&[RX_CPU])?;
                let entries = self.warm_up(&frame, regime.sources)?;
                eprintln!(
                    "bench:   warm-up of {}: {entries} of {} sources tracked ({:.1}%)",
                    f.label(),
                    regime.sources,
                    entries as f64 * 100.0 / regime.sources as f64
                );
                if let Some(mem) = memory {
                    if f.is_peer() {
                        let grown = slab_vmalloc_kb().saturating_sub(mem_before) * 1024;
                        eprintln!(
                            "bench:   kernel memory grew {:.1} MiB while {} held {entries} sources",
                            grown as f64 / 1048576.0,
                            f.label()
                        );
                        mem.peers.insert(f.label().to_string(), (grown, entries));
                    } else if f == Filter::XdpNative
                        && let Some((n, memlock)) = inst.our_table()?
                    {
                        mem.ours_memlock = memlock;
                        mem.ours_tracked = n as u64;
                        mem.ours_capacity = filters::OUR_CAPACITY as u64;
                    } else if f == Filter::SaTable || f == Filter::LruGcra {
                        let (n, memlock) = if f == Filter::SaTable {
                            crate::table::sa_usage(self.bench)?
                        } else {
                            crate::table::lru_usage(self.bench)?
                        };
                        eprintln!(
                            "bench:   {}: {n} sources tracked, {:.1} MiB ({:.1} B per tracked source)",
                            f.label(),
                            memlock as f64 / 1048576.0,
                            memlock as f64 / n.max(1) as f64
                        );
                        mem.prototypes.insert(f.label().to_string(), (memlock, n));
                    }
                }
            }
            self.t.pin_napi_at(layout.napi_cpus, layout.napi_priority)?;
            let tin = self.t.transport_in()?;
            let rx = rx_packets(self.t);
            let drops = inst.drops(self.bench)?;
            let window = match &inst.daemon {
                Some(d) => Some(daemon::WindowStart::now(d)?),
                None => None,
            };
            let cpus: Vec<CpuWindow> = layout
                .napi_cpus
                .iter()
                .map(|&c| CpuWindow::start(c))
                .collect();
            let sent = self.blast(layout, &frame, self.frames)?;
            let busy = cpus.iter().map(|c| c.busy()).sum::<f64>() / cpus.len().max(1) as f64;
            let daemon = match (&window, &inst.daemon) {
                (Some(w), Some(d)) => Some(w.finish(d)?),
                _ => None,
            };
            thread::sleep(Duration::from_millis(50));
            let passed = self.t.transport_in()? - tin;
            let dropped = match (drops, inst.drops(self.bench)?) {
                (Some(a), Some(b)) => b - a,
                _ => (rx_packets(self.t) - rx).saturating_sub(passed),
            };
            Ok(Sample {
                offered: sent.pps(),
                passed: passed as f64 / sent.secs,
                dropped: dropped as f64 / sent.secs,
                cpu: busy,
                daemon,
            })
        })();
        inst.remove(self.t, self.bench)
            .context("removing the filter")?;
        result
    }
}

pub fn run(
    t: &Topology,
    bench: &mut Bench,
    plans: &[Plan],
    frames: u32,
    warm_pps: f64,
    warm_passes: usize,
    gen_reps: usize,
) -> anyhow::Result<ThroughputResult> {
    let gen_prog: std::os::fd::OwnedFd = {
        use std::os::fd::AsFd as _;
        bench
            .prog("bench_gen")?
            .fd()?
            .as_fd()
            .try_clone_to_owned()?
    };
    let mut r = Runner {
        t,
        bench,
        gen_prog,
        frames,
        warm_pps,
        warm_passes,
    };
    let mut out = ThroughputResult {
        frames_per_run: frames,
        ..Default::default()
    };
    let mut alone = Vec::new();
    for _ in 0..gen_reps {
        alone.push(r.generator_alone(Traffic::V4Udp)?);
    }
    out.generator_alone_pps = summarize(&alone);
    eprintln!(
        "bench: generator alone (rewrite + drop at the generator): {:.2} Mpps",
        out.generator_alone_pps.median / 1e6
    );

    let mut samples: BTreeMap<(Traffic, Regime, Filter), Vec<Sample>> = BTreeMap::new();
    let reps = plans.iter().map(|p| p.reps).max().unwrap_or(1);
    for rep in 0..reps {
        for plan in plans.iter().filter(|p| rep < p.reps) {
            for &regime in &plan.regimes {
                for &f in &plan.filters {
                    let want_mem = rep == 0
                        && regime.sources == 1_000_000
                        && regime.warm
                        && plan.traffic == Traffic::V4Udp;
                    let s = r
                        .measure(
                            f,
                            plan.traffic,
                            regime,
                            if want_mem {
                                Some(&mut out.memory)
                            } else {
                                None
                            },
                        )
                        .with_context(|| {
                            format!(
                                "{} / {} / {}",
                                plan.traffic.label(),
                                regime.label(),
                                f.label()
                            )
                        })?;
                    eprintln!(
                        "bench: rep {} {:13} {:8} {:34} offered {:6.2} passed {:6.3} dropped {:6.3} Mpps  rx cpu {:3.0}%{}",
                        rep + 1,
                        plan.traffic.label(),
                        regime.label(),
                        f.label(),
                        s.offered / 1e6,
                        s.passed / 1e6,
                        s.dropped / 1e6,
                        s.cpu * 100.0,
                        s.daemon
                            .map(|d| format!(
                                "  daemon {:.1}% of a core, {} event lines in its busiest second",
                                d.cpu_fraction * 100.0,
                                d.event_lines_max_per_sec
                            ))
                            .unwrap_or_default()
                    );
                    samples
                        .entry((plan.traffic, regime, f))
                        .or_default()
                        .push(s);
                }
            }
        }
    }
    out.reps = reps;
    for ((tr, regime, f), v) in samples {
        let pick = |g: fn(&Sample) -> f64| summarize(&v.iter().map(g).collect::<Vec<_>>());
        let pick_daemon = |g: fn(&daemon::Window) -> f64| {
            let d: Vec<f64> = v.iter().filter_map(|s| s.daemon.as_ref().map(g)).collect();
            (!d.is_empty()).then(|| summarize(&d))
        };
        out.cells
            .entry(tr.label().to_string())
            .or_default()
            .entry(regime.label())
            .or_default()
            .insert(
                f.label().to_string(),
                Cell {
                    offered: pick(|s| s.offered),
                    passed: pick(|s| s.passed),
                    dropped: pick(|s| s.dropped),
                    cpu: pick(|s| s.cpu),
                    daemon_cpu: pick_daemon(|d| d.cpu_fraction),
                    daemon_event_lines_max: pick_daemon(|d| d.event_lines_max_per_sec as f64),
                },
            );
    }
    Ok(out)
}
