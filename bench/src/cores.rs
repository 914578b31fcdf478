//! Part 7: scaling with cores (issue 12, section 3). The two-queue veth of the accuracy part
//! (`Topology::new(_, 2)`), whose receive queue is chosen by the sending CPU (veth picks
//! `cpu % queues` for redirected frames), so a generator thread on CPU n feeds queue n. Three
//! layouts, each on the same filters and traffic, alternated:
//!
//! - `split`: the throughput part's layout, one generator thread on CPU 0 and both NAPI
//!   threads on CPU 1 (only queue 0 carries traffic): one receive core with a core of its own;
//! - `1 core`: one generator thread and the NAPI thread of its queue both on CPU 1;
//! - `2 cores`: a generator thread on each CPU and each queue's NAPI thread on its CPU.
//!
//! Every generator thread sends for the same 0.4 s (in live-frames calls of 100,000 frames),
//! so two threads of unequal speed still load both queues over the whole measured window.
//!
//! On a two-core machine the last two layouts share every receive core with a generator, so
//! their Mpps per core is what a core does generating and receiving: compare `2 cores` with
//! `1 core` for the scaling, not with `split`. The NAPI threads run one SCHED_FIFO level above
//! the generator threads, so a woken receive thread preempts the generator on its core after
//! each batch instead of waiting for the whole run (at equal priority it never would, and the
//! veth ring would overflow); the deployed daemon stays on CPU 1 at its usual priority.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    filters::Filter,
    net::Topology,
    progs::Bench,
    stats::summarize,
    sys::RT_PRIORITY,
    throughput::{Cell, Layout, Regime, Runner, Sample, Traffic, set_gen},
    traffic_gen as tg,
};

/// Seconds each generator thread sends for in a measured run.
const SECS: f64 = 0.4;

pub const SPLIT: Layout = Layout {
    gen_cpus: &[0],
    napi_cpus: &[1],
    napi_priority: RT_PRIORITY,
    secs: SECS,
};
pub const ONE_CORE: Layout = Layout {
    gen_cpus: &[1],
    napi_cpus: &[0, 1],
    napi_priority: RT_PRIORITY + 1,
    secs: SECS,
};
pub const TWO_CORES: Layout = Layout {
    gen_cpus: &[0, 1],
    napi_cpus: &[0, 1],
    napi_priority: RT_PRIORITY + 1,
    secs: SECS,
};

pub const LAYOUTS: [(&str, Layout, usize); 3] = [
    ("split", SPLIT, 1),
    ("1 core", ONE_CORE, 1),
    ("2 cores", TWO_CORES, 2),
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct CoresResult {
    /// layout -> regime -> filter -> cell (dropped and offered are totals over the layout's
    /// cores, in packets per second)
    pub cells: BTreeMap<String, BTreeMap<String, BTreeMap<String, Cell>>>,
    /// Receive cores per layout (divide by it for Mpps per core).
    pub cores: BTreeMap<String, usize>,
    /// Seconds every generator thread sends for in a measured run.
    pub secs: f64,
    pub reps: usize,
}

impl CoresResult {
    /// Dropped packets per second per receive core (median).
    pub fn per_core(&self, layout: &str, regime: &str, f: Filter) -> Option<f64> {
        let c = self.cells.get(layout)?.get(regime)?.get(f.label())?;
        Some(c.dropped.median / *self.cores.get(layout)? as f64)
    }

    /// The best of nftables and iptables per core, and which it was.
    pub fn best_peer_per_core(&self, layout: &str, regime: &str) -> Option<(f64, Filter)> {
        [Filter::NftNetdev, Filter::NftInet, Filter::Iptables]
            .into_iter()
            .filter_map(|f| Some((self.per_core(layout, regime, f)?, f)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    t: &Topology,
    bench: &mut Bench,
    filters: &[Filter],
    regimes: &[Regime],
    warm_pps: f64,
    warm_passes: usize,
    reps: usize,
) -> anyhow::Result<CoresResult> {
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
        frames: 0,
        warm_pps,
        warm_passes,
    };
    // Untimed first runs on both CPUs (see `traffic_gen::prime`), receive queues on both;
    // then which NAPI thread serves which queue (a thread on CPU q feeds queue q).
    let frame = set_gen(r.bench, Traffic::V4Udp, 1, t.gen_ifindex)?;
    t.pin_napi(&[0, 1])?;
    tg::prime(&r.gen_prog, &t.gen_ns, &frame, &[0, 1])?;
    let order = t.order_napi_by_queue(2, |q| {
        tg::spawn(
            &r.gen_prog,
            &t.gen_ns,
            q,
            frame.clone(),
            tg::Pace::Flat(50_000),
        )?
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        Ok(())
    })?;
    eprintln!("bench:   NAPI threads in queue order: {order:?}");
    let mut samples: BTreeMap<(&str, Regime, Filter), Vec<Sample>> = BTreeMap::new();
    for rep in 0..reps {
        for &regime in regimes {
            for &f in filters {
                for (name, layout, cores) in LAYOUTS {
                    let s = r
                        .measure_on(layout, f, Traffic::V4Udp, regime, None)
                        .with_context(|| format!("{name} / {} / {}", regime.label(), f.label()))?;
                    eprintln!(
                        "bench: rep {} {:8} {:8} {:34} offered {:6.2} dropped {:6.3} Mpps ({:.3} per core)",
                        rep + 1,
                        name,
                        regime.label(),
                        f.label(),
                        s.offered / 1e6,
                        s.dropped / 1e6,
                        s.dropped / 1e6 / cores as f64,
                    );
                    samples.entry((name, regime, f)).or_default().push(s);
                }
            }
        }
    }
    let mut out = CoresResult {
        secs: SECS,
        reps,
        cores: LAYOUTS
            .iter()
            .map(|(n, _, c)| (n.to_string(), *c))
            .collect(),
        ..Default::default()
    };
    for ((name, regime, f), v) in samples {
        let pick = |g: fn(&Sample) -> f64| summarize(&v.iter().map(g).collect::<Vec<_>>());
        out.cells
            .entry(name.to_string())
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
                    daemon_cpu: None,
                    daemon_event_lines_max: None,
                },
            );
    }
    Ok(out)
}
