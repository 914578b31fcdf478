//! Tables on the terminal, BENCHMARKS.md and `summary.json`.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    accuracy::AccuracyResult, control::ControlResult, cost::CostResult, filters::Filter,
    throughput::ThroughputResult,
};

#[derive(Default, Serialize)]
pub struct All {
    pub quick: bool,
    pub machine: Machine,
    pub cost: Option<CostResult>,
    pub throughput: Option<ThroughputResult>,
    pub accuracy: Option<AccuracyResult>,
    pub control: Option<ControlResult>,
    pub control_error: Option<String>,
    pub steps: Option<crate::steps::StepsResult>,
    pub table: Option<crate::table::TableResult>,
    pub fleet: Option<crate::fleet::FleetResult>,
    pub fleet_error: Option<String>,
    pub cores: Option<crate::cores::CoresResult>,
    pub seconds: f64,
}

#[derive(Default, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub mem_gib: f64,
    pub load_before: String,
    pub load_after: String,
    pub nft: String,
    pub iptables: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

fn first_line(cmd: &[&str]) -> String {
    crate::sys::sh(cmd)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kernel: first_line(&["uname", "-r"]),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            mem_gib: crate::sys::meminfo_kb("MemTotal") as f64 / 1048576.0,
            load_before: load(),
            load_after: String::new(),
            nft: first_line(&["nft", "--version"]),
            iptables: first_line(&["iptables", "--version"]),
            rustc: first_line(&["rustc", "--version"]),
            commit: first_line(&["git", "rev-parse", "--short", "HEAD"]),
            date: first_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mpps(x: f64) -> String {
    format!("{:.2}", x / 1e6)
}

fn cell(tp: &ThroughputResult, traffic: &str, regime: &str, f: Filter) -> Option<f64> {
    Some(
        tp.cells
            .get(traffic)?
            .get(regime)?
            .get(f.label())?
            .dropped
            .median,
    )
}

fn best_peer(tp: &ThroughputResult, traffic: &str, regime: &str) -> Option<(f64, Filter)> {
    [Filter::NftNetdev, Filter::NftInet, Filter::Iptables]
        .into_iter()
        .filter_map(|f| Some((cell(tp, traffic, regime, f)?, f)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

pub fn summary(all: &All) -> serde_json::Value {
    let mut s = serde_json::Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        s.insert(
            k.to_string(),
            v.filter(|x| x.is_finite())
                .map(serde_json::Value::from)
                .unwrap_or(serde_json::Value::Null),
        );
    };
    let tp = all.throughput.as_ref();
    let ratio_of = |f: Filter, regime: &str| {
        let tp = tp?;
        let ours = cell(tp, "IPv4 UDP", regime, f)?;
        Some(ours / best_peer(tp, "IPv4 UDP", regime)?.0)
    };
    let ratio = |regime: &str| ratio_of(Filter::XdpNative, regime);
    // The product as deployed (`monitor run`); the bare object's figures stay as the floor.
    put(
        "deployed_drop_ratio_vs_best_peer_1m",
        ratio_of(Filter::Deployed, "1M warm"),
    );
    put(
        "deployed_drop_ratio_vs_best_peer_1",
        ratio_of(Filter::Deployed, "1"),
    );
    put(
        "deployed_vs_bare_1m",
        tp.and_then(|t| {
            Some(
                cell(t, "IPv4 UDP", "1M warm", Filter::Deployed)?
                    / cell(t, "IPv4 UDP", "1M warm", Filter::XdpNative)?,
            )
        }),
    );
    let deployed_1m = tp.and_then(|t| {
        t.cells
            .get("IPv4 UDP")?
            .get("1M warm")?
            .get(Filter::Deployed.label())
    });
    put(
        "deployed_daemon_event_lines_max_1m",
        deployed_1m.and_then(|c| c.daemon_event_lines_max.as_ref().map(|s| s.max)),
    );
    put(
        "sample_drop_ratio_1m",
        all.control
            .as_ref()
            .and_then(|c| c.sample.as_ref())
            .map(|s| s.ratio()),
    );
    put("drop_ratio_vs_best_peer_1", ratio("1"));
    put("drop_ratio_vs_best_peer_1m", ratio("1M warm"));
    put("drop_ratio_vs_best_peer_1m_cold", ratio("1M cold"));
    put("drop_ratio_vs_best_peer_10k", ratio("10k"));
    let cost_ratio = all.cost.as_ref().and_then(|c| {
        let trivial = c.ns.get("trivial XDP_PASS")?;
        let mon = c.ns.get("IPv4 UDP monitored pass")?;
        mon.iter()
            .filter_map(|(n, s)| Some(s.median / trivial.get(n)?.median))
            .reduce(f64::max)
    });
    put("monitored_cost_ratio", cost_ratio);
    put(
        "accuracy_max_error",
        all.accuracy
            .as_ref()
            .and_then(|a| a.max_error(Filter::XdpNative)),
    );
    for (k, f) in [
        ("accuracy_max_error_nft_netdev", Filter::NftNetdev),
        ("accuracy_max_error_nft_inet", Filter::NftInet),
        ("accuracy_max_error_iptables", Filter::Iptables),
    ] {
        put(k, all.accuracy.as_ref().and_then(|a| a.max_error(f)));
    }
    let mem = tp.map(|t| &t.memory);
    put(
        "bytes_per_source_1m",
        mem.filter(|m| m.ours_memlock > 0)
            .map(|m| m.ours_memlock as f64 / 1_000_000.0),
    );
    put(
        "nft_bytes_per_source_1m",
        mem.and_then(|m| m.peers.get(Filter::NftNetdev.label()))
            .filter(|p| p.1 > 0)
            .map(|p| p.0 as f64 / p.1 as f64),
    );
    put(
        "iptables_bytes_per_source_1m",
        mem.and_then(|m| m.peers.get(Filter::Iptables.label()))
            .filter(|p| p.1 > 0)
            .map(|p| p.0 as f64 / p.1 as f64),
    );
    put(
        "top_latency_ms_1m",
        all.control.as_ref().map(|c| c.top_ms_under_flood.median),
    );
    put(
        "top_latency_ms_1m_idle",
        all.control.as_ref().map(|c| c.top_ms_idle.median),
    );
    // At a million over-limit sources flooding at the generator's full rate (the deployed
    // 1M warm cell); the control part's paced flood when the throughput part did not run.
    // The goal's figure is the full-rate flood across a whole sample cycle of a million
    // sources (the control part, about a minute: it holds everything the daemon does
    // periodically, at its real frequency). The deployed 1M warm cells are reported beside
    // it; a cell lasts a fraction of a second, so one history flush or sample chunk landing in
    // it weighs many times its share of a second.
    let deployed_cpu_1m = deployed_1m.and_then(|c| c.daemon_cpu.as_ref().map(|s| s.median));
    let sample_cycle_cpu = all
        .control
        .as_ref()
        .and_then(|c| c.sample.as_ref())
        .map(|s| s.daemon.cpu_fraction);
    put("deployed_daemon_cpu_fraction_1m", deployed_cpu_1m);
    put("daemon_cpu_fraction_sample_cycle_1m", sample_cycle_cpu);
    put(
        "daemon_cpu_fraction",
        sample_cycle_cpu
            .or(deployed_cpu_1m)
            .or(all.control.as_ref().map(|c| c.daemon_cpu_fraction)),
    );
    // Over the full-rate flood across a whole sample cycle (about a minute), against what
    // `--event-lines` (a token bucket: 20 a second and a burst of 20) allows in that time.
    let sample_window = all
        .control
        .as_ref()
        .and_then(|c| c.sample.as_ref())
        .map(|s| s.daemon);
    put(
        "daemon_event_lines_per_sec",
        sample_window.map(|w| w.event_lines_per_sec),
    );
    put(
        "daemon_event_lines_of_allowed",
        sample_window.map(|w| {
            // The bench runs the daemon with the default `--event-lines`.
            let per_sec = monitor::config::DEFAULT_EVENT_LINES
                .parse::<monitor::units::Rate>()
                .map_or(f64::NAN, |r| r.per_second());
            let allowed = per_sec * (w.secs + 1.0);
            w.event_lines_per_sec * w.secs / allowed
        }),
    );
    put(
        "daemon_event_lines_max_per_sec",
        all.control
            .as_ref()
            .map(|c| c.daemon_event_lines_max_per_sec as f64),
    );
    put(
        "daemon_cpu_fraction_paced_flood",
        all.control.as_ref().map(|c| c.daemon_cpu_fraction),
    );
    put(
        "drop_fraction_of_trivial_1",
        tp.and_then(|t| {
            Some(
                cell(t, "IPv4 UDP", "1", Filter::XdpNative)?
                    / cell(t, "IPv4 UDP", "1", Filter::TrivialDrop)?,
            )
        }),
    );
    let proto = |regime: &str| {
        let t = tp?;
        Some(
            cell(t, "IPv4 UDP", regime, Filter::SaTable)?
                / cell(t, "IPv4 UDP", regime, Filter::LruGcra)?,
        )
    };
    put("prototype_sa_vs_lru_1m", proto("1M warm"));
    put("prototype_sa_vs_lru_1", proto("1"));
    put(
        "prototype_sa_bytes_per_source_1m",
        mem.and_then(|m| m.prototypes.get(Filter::SaTable.label()))
            .filter(|p| p.1 > 0)
            .map(|p| p.0 as f64 / p.1 as f64),
    );
    if let Some(st) = &all.steps {
        let ns = |p: &str| Some(st.ns.get(p)?.get("pass")?.median);
        put("step_full_ns", ns("step_full"));
        put("cut_all_ns", ns("cut_all"));
        put(
            "cut_all_cost_ratio",
            ns("cut_all").zip(ns("bench_pass")).map(|(a, b)| a / b),
        );
    }
    if let Some(t) = &all.table {
        for (key, design) in [
            ("churn_extra_product_max", "product"),
            ("churn_extra_sa_max", "prototype"),
            ("churn_extra_lru_max", "LRU"),
        ] {
            put(
                key,
                t.churn
                    .iter()
                    .filter(|c| c.design.starts_with(design))
                    .map(|c| c.extra())
                    .reduce(f64::max),
            );
        }
    }
    // Scaling with cores: Mpps per receive core (each also running a generator thread).
    if let Some(c) = &all.cores {
        let ours =
            |layout: &str, regime: &str, f: Filter| c.per_core(layout, regime, f).map(|x| x / 1e6);
        put(
            "two_queue_mpps_per_core_1m",
            ours("2 cores", "1M warm", Filter::XdpNative),
        );
        put(
            "two_queue_mpps_per_core_1",
            ours("2 cores", "1", Filter::XdpNative),
        );
        put(
            "two_queue_deployed_mpps_per_core_1m",
            ours("2 cores", "1M warm", Filter::Deployed),
        );
        put(
            "two_queue_best_peer_mpps_per_core_1m",
            c.best_peer_per_core("2 cores", "1M warm")
                .map(|p| p.0 / 1e6),
        );
        put(
            "two_queue_ratio_vs_best_peer_1m",
            c.per_core("2 cores", "1M warm", Filter::XdpNative)
                .zip(c.best_peer_per_core("2 cores", "1M warm"))
                .map(|(a, b)| a / b.0),
        );
        put(
            "one_core_shared_mpps_1m",
            ours("1 core", "1M warm", Filter::XdpNative),
        );
        for (key, regime) in [
            ("two_queue_scaling_1m", "1M warm"),
            ("two_queue_scaling_1", "1"),
        ] {
            put(
                key,
                c.per_core("2 cores", regime, Filter::XdpNative)
                    .zip(c.per_core("1 core", regime, Filter::XdpNative))
                    .map(|(two, one)| 2.0 * two / one),
            );
        }
    }
    put(
        "generator_alone_mpps",
        tp.map(|t| t.generator_alone_pps.median / 1e6),
    );
    // Fleet mode: the worst over the fleet sizes measured.
    let fleet = all.fleet.as_ref().map(|f| &f.runs);
    let worst = |g: fn(&crate::fleet::FleetRun) -> f64| {
        fleet.and_then(|r| r.iter().map(g).reduce(f64::max))
    };
    put("fleet_reaction_intervals", worst(|r| r.reaction_intervals));
    put(
        "fleet_overshoot_intervals",
        worst(|r| r.overshoot_intervals),
    );
    put("fleet_daemon_cpu_fraction", worst(|r| r.daemon_cpu_max));
    serde_json::Value::Object(s)
}

/// The fleet section of BENCHMARKS.md.
fn fleet_markdown(all: &All) -> String {
    let mut o = String::from(
        "\n## Fleet mode\n\nDaemons in namespaces behind a router, one `redis-server`, fleet limit 30/s per \
         source, interval 1 s. Reaction: from the moment a scraper at 60/s spread round-robin over \
         every host crosses the fleet limit until every host drops it. Overshoot: requests admitted \
         fleet-wide above 30/s until then, in units of the limit times one interval. CPU and Redis \
         load: every daemon publishing 10,000 heavy hitters per interval (written into its pinned \
         candidate map). Goals: reaction at most 2 intervals, overshoot at most 1, each daemon \
         under 2% of a core.\n\n",
    );
    match &all.fleet {
        Some(f) => {
            o.push_str("| daemons | reaction (intervals) | admitted | overshoot (limit x interval) | daemon CPU mean / max | Redis ops/s | script calls/s | keys published/s |\n|---|---|---|---|---|---|---|---|\n");
            for r in &f.runs {
                o.push_str(&format!(
                    "| {} | {:.2} | {} | {:.2} | {:.2}% / {:.2}% | {:.0} | {:.1} | {:.0} |\n",
                    r.daemons,
                    r.reaction_intervals,
                    r.admitted,
                    r.overshoot_intervals,
                    r.daemon_cpu_mean * 100.0,
                    r.daemon_cpu_max * 100.0,
                    r.redis_ops_per_s,
                    r.redis_evalsha_per_s,
                    r.keys_published_per_s
                ));
            }
        }
        None => o.push_str(&format!(
            "Not measured: {}\n",
            all.fleet_error.as_deref().unwrap_or("skipped")
        )),
    }
    o
}

fn goal(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

pub fn markdown(all: &All, summary: &serde_json::Value) -> String {
    let m = &all.machine;
    let g = |k: &str| summary.get(k).and_then(|v| v.as_f64());
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `cargo xtask bench{}` on {} ({:.0} s). Reproduce with `cargo xtask bench` \
         (about 20 minutes) or `cargo xtask bench --quick` (about 4 minutes: one repetition, 1 and \
         1,000,000 sources). Raw figures: `target/bench/results.json`; headline: \
         `target/bench/summary.json`.\n",
        if all.quick { " --quick" } else { "" },
        m.date,
        all.seconds
    );
    let _ = writeln!(o, "## Machine and versions\n");
    let _ = writeln!(
        o,
        "- Kernel {}, {} CPUs ({}), {:.0} GiB",
        m.kernel, m.cpus, m.cpu, m.mem_gib
    );
    let _ = writeln!(
        o,
        "- Load average before / after the run: {} / {}",
        m.load_before, m.load_after
    );
    let _ = writeln!(
        o,
        "- {}; {}; {}; monitor at commit {}",
        m.nft, m.iptables, m.rustc, m.commit
    );
    let _ = writeln!(
        o,
        "- Absolute numbers on this shared 2-core machine are noisy; ratios measured within the run are \
         what count. Configurations are alternated inside every repetition; cells show median (min–max) \
         when there is more than one repetition.\n"
    );

    let _ = writeln!(o, "## Goals\n");
    let _ = writeln!(o, "| Goal | Measured | |\n|---|---|---|");
    let row = |o: &mut String,
               what: &str,
               val: Option<f64>,
               fmt: &dyn Fn(f64) -> String,
               ok: &dyn Fn(f64) -> bool| {
        let _ = writeln!(
            o,
            "| {what} | {} | {} |",
            val.map(fmt).unwrap_or_else(|| "–".into()),
            goal(val.map(ok))
        );
    };
    row(
        &mut o,
        "Deployed (`monitor run`) drop ≥ 5x best peer, 1M warm sources",
        g("deployed_drop_ratio_vs_best_peer_1m"),
        &|x| format!("{x:.2}x"),
        &|x| x >= 5.0,
    );
    row(
        &mut o,
        "Deployed drop ≥ 3x best peer, 1 source",
        g("deployed_drop_ratio_vs_best_peer_1"),
        &|x| format!("{x:.2}x"),
        &|x| x >= 3.0,
    );
    row(
        &mut o,
        "Deployed drop ≥ 95% of the bare object's, 1M warm sources",
        g("deployed_vs_bare_1m"),
        &|x| format!("{:.0}%", x * 100.0),
        &|x| x >= 0.95,
    );
    row(
        &mut o,
        "Daemon ≤ 5% of a core, 1M over-limit sources at full rate (over a whole sample cycle)",
        g("daemon_cpu_fraction"),
        &|x| format!("{:.1}%", x * 100.0),
        &|x| x <= 0.05,
    );
    row(
        &mut o,
        "Daemon ≤ 5% of a core in the deployed 1M warm runs (sub-second: noisy)",
        g("deployed_daemon_cpu_fraction_1m"),
        &|x| format!("{:.1}%", x * 100.0),
        &|x| x <= 0.05,
    );
    row(
        &mut o,
        "Daemon event lines within `--event-lines` (20/s and a one-second burst) over a whole sample cycle at full rate, 1M over-limit sources",
        g("daemon_event_lines_of_allowed"),
        &|x| format!("{:.0}% of the lines allowed", x * 100.0),
        &|x| x <= 1.0,
    );
    row(
        &mut o,
        "Drop rate during a full-table sample ≥ 95% of the rate outside it, 1M sources",
        g("sample_drop_ratio_1m"),
        &|x| format!("{:.0}%", x * 100.0),
        &|x| x >= 0.95,
    );
    row(
        &mut o,
        "Floor: bare object (no daemon) drop ≥ 5x best peer, 1M warm sources",
        g("drop_ratio_vs_best_peer_1m"),
        &|x| format!("{x:.2}x"),
        &|x| x >= 5.0,
    );
    row(
        &mut o,
        "Floor: bare object drop ≥ 3x best peer, 1 source",
        g("drop_ratio_vs_best_peer_1"),
        &|x| format!("{x:.2}x"),
        &|x| x >= 3.0,
    );
    row(
        &mut o,
        "1-source drop ≥ 60% of trivial XDP_DROP",
        g("drop_fraction_of_trivial_1"),
        &|x| format!("{:.0}%", x * 100.0),
        &|x| x >= 0.6,
    );
    row(
        &mut o,
        "Monitored pass ≤ 3x trivial XDP_PASS (worst over table sizes)",
        g("monitored_cost_ratio"),
        &|x| format!("{x:.2}x"),
        &|x| x <= 3.0,
    );
    row(
        &mut o,
        "Kernel memory ≤ 64 bytes per tracked source, 1M sources (table, parole, event spacing)",
        g("bytes_per_source_1m"),
        &|x| format!("{x:.0} B"),
        &|x| x <= 64.0,
    );
    row(
        &mut o,
        "Admitted rate within 5% of the limit (worst case)",
        g("accuracy_max_error"),
        &|x| format!("{:.1}%", x * 100.0),
        &|x| x <= 0.05,
    );
    row(
        &mut o,
        "`monitor top` < 200 ms with 1M tracked (under flood)",
        g("top_latency_ms_1m"),
        &|x| format!("{x:.0} ms"),
        &|x| x < 200.0,
    );
    if let Some(c) = &all.cost {
        let drop_cheaper = ["IPv4 UDP", "IPv6 UDP", "VLAN IPv4 UDP"].iter().all(|p| {
            let pass = c.ns.get(&format!("{p} monitored pass"));
            let drop = c.ns.get(&format!("{p} rate drop"));
            match (pass, drop) {
                (Some(a), Some(b)) => a
                    .iter()
                    .all(|(n, s)| b.get(n).is_some_and(|d| d.median < s.median)),
                _ => false,
            }
        });
        let _ = writeln!(
            o,
            "| Drop path cheaper than pass path (every family, every table size) | see part 1 | {} |",
            goal(Some(drop_cheaper))
        );
    }
    let _ = writeln!(o);

    if let Some(c) = &all.cost {
        let _ = writeln!(o, "## 1. Program cost (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            o,
            "ns per packet as the kernel reports it for `repeat` = {} runs of one frame, {} rounds, cases \
             alternated within each round. The source table (sized for that many sources) is pre-filled \
             (`Kernel::write_sources`, whole sets in batched updates) with that many sources, the measured \
             ones first; sources whose set was already full are left out ({}). Pass cases use a limit that \
             always admits; drop cases a source whose state is an hour ahead under a one-per-hour limit. The \
             trivial programs are in the same run. Note: one frame repeated keeps its slot in cache, so \
             these figures do not show the table's cache misses; part 2 does.\n",
            c.repeat,
            c.rounds,
            c.left_out
                .iter()
                .map(|(n, out)| format!("{out} of {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let ns: Vec<u32> =
            c.ns.values()
                .next()
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
        let _ = write!(o, "| Case |");
        for n in &ns {
            let _ = write!(o, " {n} sources |");
        }
        let _ = write!(o, "\n|---|");
        for _ in &ns {
            let _ = write!(o, "---|");
        }
        let _ = writeln!(o);
        let trivial = c.ns.get("trivial XDP_PASS");
        for (name, by_n) in &c.ns {
            let _ = write!(o, "| {name} |");
            for n in &ns {
                let s = by_n.get(n);
                let ratio = trivial
                    .and_then(|t| t.get(n))
                    .zip(s)
                    .map(|(t, s)| s.median / t.median);
                let _ = write!(
                    o,
                    " {} ({:.1}x) |",
                    s.map(|s| s.show(|x| format!("{x:.0}"))).unwrap_or_default(),
                    ratio.unwrap_or(f64::NAN)
                );
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(
            o,
            "\n(x) = relative to the trivial XDP_PASS at the same table size.\n"
        );
    }

    if let Some(st) = &all.steps {
        let _ = writeln!(o, "## 1b. Cost of each step (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            o,
            "The bench object compiles the product's own kernel modules (monitor-ebpf's parse, \
             maps, sources, limit, policy and classify) and programs that stop after each step, on the \
             product's set-associative source table; `lru_*` rows run the LRU hash design it replaced; ns per packet \
             for `repeat` = {} runs of one IPv4 UDP frame, {} rounds, alternated within each round; \
             *pass*: a tracked source under a limit that always admits, *drop*: one an hour over a \
             one-per-hour limit. *Step* = this row's pass figure less the row it builds on. One frame \
             repeated keeps its state in cache: these are CPU costs, not the table's cache misses \
             (part 2 has those).\n",
            st.repeat, st.rounds
        );
        let _ = writeln!(
            o,
            "| Program | What it does | Pass ns | Drop ns | Step (ns, pass) |\n|---|---|---|---|---|"
        );
        let get = |p: &str, c: &str| st.ns.get(p).and_then(|m| m.get(c));
        for (prog, what, base) in crate::steps::STEPS {
            let step = base
                .and_then(|b| Some(get(prog, "pass")?.median - get(b, "pass")?.median))
                .map(|d| format!("{d:+.0} (vs {})", base.unwrap_or("")))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| `{prog}` | {what} | {} | {} | {step} |",
                get(prog, "pass")
                    .map(|s| s.show(|x| format!("{x:.0}")))
                    .unwrap_or_default(),
                get(prog, "drop")
                    .map(|s| s.show(|x| format!("{x:.0}")))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(o);
    }

    if let Some(tp) = &all.throughput {
        let _ = writeln!(
            o,
            "## 2. Throughput (generator namespace → API namespace over veth)\n"
        );
        let _ = writeln!(
            o,
            "Generator: `bench_gen` (bench-ebpf) run with BPF_PROG_TEST_RUN in XDP live-frames mode \
             ({} frames per run, batch 256) from a thread pinned to CPU 0 with SCHED_FIFO; it rewrites \
             each frame's source (checksums fixed incrementally) over 1 / 10,000 / 1,000,000 sources and \
             redirects it out of the generator veth. Its own ceiling (rewrite, then drop at the generator): \
             {} Mpps. Receiver: API-side veth with GRO on and threaded NAPI; the NAPI thread is pinned to \
             CPU 1 with SCHED_FIFO (`taskset`, `chrt`), so compiler jobs cannot share the receive core. \
             The API's UDP port has a bound socket that is never read. Every configuration limits each \
             source to 1 request/minute, burst 1, on TCP and UDP port 8443: after its first packet a \
             source is over its limit.\n",
            tp.frames_per_run,
            tp.generator_alone_pps.show(mpps)
        );
        let _ = writeln!(
            o,
            "*monitor run (deployed)* is the product as an operator runs it: the release `monitor` \
             binary, `monitor run --iface <api veth> --xdp-mode native --port 8443 --proto both --rate \
             1/m --burst 1 --agg-rate 0 --count packets --max-sources {}` with every other flag at its \
             default, started fresh for each cell, in the same alternation as the bare object. The \
             daemon is pinned to the receive core (CPU {}, `taskset`) {}. On an API host the daemon \
             shares its cores with the packet processing it protects; with SCHED_FIFO one above the \
             NAPI thread (the default, `--daemon-priority`) it gets every cycle it asks for at the data \
             plane's expense, so its CPU figure is its whole demand and the deployed drop rate bears \
             its whole cost (the pessimistic case; as an ordinary process beside the SCHED_FIFO NAPI \
             thread it gets no CPU during a run, which is shorter than the kernel's 950 ms real-time \
             budget, and looks free). Its drops are read through `monitor --json stats`; \
             the last column is its CPU (utime+stime from /proc/<pid>/stat over the measured run, as a \
             fraction of one core) and the lines it wrote to stdout/stderr per second. *monitor XDP \
             native* is the bare object with no daemon: the floor.\n",
            crate::daemon::CAPACITY,
            crate::daemon::DAEMON_CPU,
            match crate::daemon::priority() {
                0 => "as an ordinary process (SCHED_OTHER)".to_string(),
                p => format!("with SCHED_FIFO priority {p} (`chrt`)"),
            }
        );
        let _ = writeln!(
            o,
            "Columns: offered (generator rate), passed (reached the API's transport layer), dropped (by the \
             filter: our stats map, the trivial program's map, or for the peers the veth's received packets \
             less those that reached transport), all in Mpps, and the receive core's busy fraction. Offered \
             minus passed minus dropped is what the veth ring refused because the receiver was saturated. \
             *1M cold*: fresh tables, every source new. *1M warm*: a paced warm-up first sends every source \
             one admitted packet (repeated passes until 99% are tracked or the pass limit), so every source \
             is tracked and over its limit; this is the headline.\n"
        );
        for (traffic, regimes) in &tp.cells {
            let _ = writeln!(o, "### {traffic}\n");
            let _ = writeln!(
                o,
                "| Sources | Configuration | Offered | Passed | Dropped | Drop vs best peer | Rx core busy | Daemon CPU, event lines in its busiest second |\n|---|---|---|---|---|---|---|---|"
            );
            let order = ["1", "10k", "1M cold", "1M warm"];
            for regime in order.iter().filter(|r| regimes.contains_key(**r)) {
                let cells = &regimes[*regime];
                let best = best_peer(tp, traffic, regime).map(|b| b.0);
                for f in [
                    Filter::NoFilter,
                    Filter::TrivialDrop,
                    Filter::NftNetdev,
                    Filter::NftInet,
                    Filter::Iptables,
                    Filter::XdpNative,
                    Filter::Deployed,
                    Filter::XdpGeneric,
                    Filter::Tc,
                    Filter::TouchDrop,
                    Filter::LookupFloor,
                    Filter::LookupFloorV4Key,
                    Filter::LookupFloorHash,
                    Filter::SaTable,
                    Filter::LruGcra,
                ] {
                    let Some(c) = cells.get(f.label()) else {
                        continue;
                    };
                    let vs = match (best, f == Filter::NoFilter) {
                        (Some(b), false) if b > 0.0 => format!("{:.2}x", c.dropped.median / b),
                        _ => "".into(),
                    };
                    let daemon = match (&c.daemon_cpu, &c.daemon_event_lines_max) {
                        (Some(cpu), Some(lines)) => format!(
                            "{}, {}",
                            cpu.show(|x| format!("{:.1}%", x * 100.0)),
                            lines.show(|x| format!("{x:.0}"))
                        ),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        o,
                        "| {regime} | {} | {} | {} | {} | {vs} | {} | {daemon} |",
                        f.label(),
                        c.offered.show(mpps),
                        c.passed.show(mpps),
                        c.dropped.show(mpps),
                        c.cpu.show(|x| format!("{:.0}%", x * 100.0))
                    );
                }
            }
            let _ = writeln!(o);
        }
        let d = |regime: &str, f: Filter| cell(tp, "IPv4 UDP", regime, f);
        let _ = writeln!(o, "### What bounds the drop rate\n");
        let _ = writeln!(
            o,
            "Two bench-only XDP programs (bench-ebpf, never in the product object) run in the same \
             alternation: *trivial: read source + XDP_DROP* reads the IPv4 source from the frame before \
             dropping, and *floor: 1 LRU lookup + XDP_DROP* does one lookup in a pre-filled LRU hash of \
             the monitor's 16-byte keys (the same table shape; pre-filled, so it is warm in both 1M rows).\n"
        );
        let f2 = |x: Option<f64>| {
            x.map(|v| format!("{:.2} Mpps", v / 1e6))
                .unwrap_or_else(|| "–".into())
        };
        for regime in ["1", "1M warm"] {
            let _ = writeln!(
                o,
                "- {regime}: trivial XDP_DROP {}, reading the source first {}, one LRU lookup {}, the \
                 monitor {}.",
                f2(d(regime, Filter::TrivialDrop)),
                f2(d(regime, Filter::TouchDrop)),
                f2(d(regime, Filter::LookupFloor)),
                f2(d(regime, Filter::XdpNative))
            );
        }
        let _ = writeln!(
            o,
            "\nThe trivial XDP_DROP never reads the frame. Each frame was written by the generator on \
             the other core, so a program that reads a header first may pay a cross-core cache transfer \
             per frame; compare the first two figures per row (an artefact of generating traffic on the \
             same machine, which a NIC's DMA would replace with its own miss). At a million sources the \
             table lookup misses cache: one lookup in an LRU hash of this shape is the floor for any \
             design that keeps per-source state in such a map; compare it with the monitor's figure.\n"
        );
        for regime in ["1", "1M warm"] {
            if let (Some(sa), Some(lru)) = (d(regime, Filter::SaTable), d(regime, Filter::LruGcra))
            {
                let _ = writeln!(
                    o,
                    "- Source-table prototypes, {regime}: set-associative table {}, the LRU design behind \
                     the same parse {} (**{:.2}x**); the product's LRU lookup floor {}.",
                    f2(Some(sa)),
                    f2(Some(lru)),
                    sa / lru,
                    f2(d(regime, Filter::LookupFloor))
                );
            }
        }
        let _ = writeln!(o);
        let mem = &tp.memory;
        let _ = writeln!(o, "## 4. Memory at 1,000,000 sources\n");
        if mem.ours_memlock > 0 {
            let _ = writeln!(
                o,
                "- This project: the source table (set-associative array sized for {} sources: {} sets of \
                 4 x 32-byte slots, 7/4 slots a source) with the parked states of evicted sources \
                 (`MON_PAROLE`, {} entries) and the event spacing (`MON_EVT_SPACING`) report memlock \
                 {:.1} MiB (`/proc/self/fdinfo`), holding {} sources after the warm-up: **{:.0} bytes per \
                 source** at 1,000,000 ({:.0} per source of capacity; a slot is key 16 B + state 8 B + \
                 counters 8 B, with no per-entry overhead).",
                mem.ours_capacity,
                monitor_common::table::sets_for(mem.ours_capacity.min(u32::MAX as u64) as u32),
                monitor_common::maps::MAX_PAROLE,
                mem.ours_memlock as f64 / 1048576.0,
                mem.ours_tracked,
                mem.ours_memlock as f64 / 1e6,
                mem.ours_memlock as f64 / mem.ours_capacity.max(1) as f64
            );
        }
        for (name, (bytes, n)) in &mem.peers {
            let _ = writeln!(
                o,
                "- {name}: kernel memory (Slab + VmallocUsed + Percpu from /proc/meminfo) grew {:.1} MiB \
                 while its table filled to {n} sources: **{:.0} bytes per source**. Approximate: other work on \
                 the machine allocates too.",
                *bytes as f64 / 1048576.0,
                if *n > 0 {
                    *bytes as f64 / *n as f64
                } else {
                    f64::NAN
                }
            );
        }
        for (name, (bytes, n)) in &mem.prototypes {
            let _ = writeln!(
                o,
                "- {name}: memlock {:.1} MiB holding {n} sources after the warm-up: **{:.1} bytes per \
                 tracked source**.",
                *bytes as f64 / 1048576.0,
                *bytes as f64 / (*n).max(1) as f64
            );
        }
        let _ = writeln!(
            o,
            "\nnftables' set memory is not read with `nft list` (listing a 1M-element set takes over a \
             minute with nft 1.0.6), hence the /proc/meminfo deltas.\n"
        );
    }

    if let Some(a) = &all.accuracy {
        let _ = writeln!(o, "## 3. Accuracy\n");
        let _ = writeln!(
            o,
            "One source, limit {}/s with burst {}, offered at 2x, 10x and 100x from two generator threads \
             (CPU 0 and CPU 1) into a two-queue veth whose NAPI threads run on both CPUs, so the one source \
             is judged on two CPUs at once, for {:.1} s per cell. Admitted rate = (packets that reached the \
             API's transport layer − burst) / run time, as % of the limit.\n",
            crate::accuracy::RATE,
            crate::accuracy::BURST,
            a.secs
        );
        let _ = writeln!(
            o,
            "| Configuration | 2x | 10x | 100x | worst error |\n|---|---|---|---|---|"
        );
        for (f, by) in &a.admitted {
            let _ = write!(o, "| {f} |");
            for k in [2, 10, 100] {
                let _ = write!(
                    o,
                    " {} |",
                    by.get(&k)
                        .map(|s| s.show(|x| format!("{:.1}%", x * 100.0)))
                        .unwrap_or_default()
                );
            }
            let worst = by
                .values()
                .map(|s| (s.min - 1.0).abs().max((s.max - 1.0).abs()))
                .fold(0.0, f64::max);
            let _ = writeln!(o, " {:.1}% |", worst * 100.0);
        }
        let _ = writeln!(o);
    }

    if let Some(t) = &all.table {
        let _ = writeln!(o, "## 6. Source-table eviction under a spoofed churn\n");
        let _ = writeln!(
            o,
            "One loud source sending {:.0} requests/s inside a spoofed flood of {:.1} Mpps, limit {}/s \
             burst {}, replayed through each design (bench-ebpf `churn_table`: the product's source table code, sized for {} sources; `churn_sa`, `churn_lru`) with an \
             injected clock: BPF_PROG_TEST_RUN repeats, one packet per repeat, the clock advancing {} \
             ns per packet. *Extra* is what the loud source got through beyond what its limit allows \
             (burst + rate × time): the cost of losing its entry to the churn and starting over with a \
             fresh burst. *Loud lost its slot*: how many of the loud source's requests found it without a slot, \
             so that it was charged from `MON_PAROLE` or afresh (counted for the product's table only; its first request \
             is not counted).\n",
            t.churn.first().map(|c| c.loud_pps).unwrap_or(0.0),
            t.churn.first().map(|c| c.flood_pps / 1e6).unwrap_or(0.0),
            t.rate_per_sec,
            t.burst,
            crate::progs::CHURN_TABLE_SOURCES,
            t.churn
                .first()
                .map(|c| (1e9 / c.flood_pps) as u64)
                .unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "| Design | Spoofed sources | Seconds | Loud sent | Loud lost its slot | Loud admitted | Allowed | Extra |\n|---|---|---|---|---|---|---|---|"
        );
        for c in &t.churn {
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {:+.1}% |",
                c.design,
                if c.spoofed == 0 {
                    "any address".to_string()
                } else {
                    c.spoofed.to_string()
                },
                c.secs,
                c.loud_sent,
                c.loud_slotless
                    .map_or_else(|| "–".to_string(), |n| n.to_string()),
                c.loud_admitted,
                c.allowed,
                c.extra() * 100.0
            );
        }
        let _ = writeln!(o);
    }

    if let Some(c) = &all.cores {
        let _ = writeln!(o, "## 7. Scaling with cores (two receive queues)\n");
        let _ = writeln!(
            o,
            "IPv4 UDP over a two-queue veth (a frame goes to the queue of the CPU that sent it), \
             every generator thread sending for {:.1} s, {} repetition(s). Layouts: *split* is part 2's (one \
             generator thread on CPU 0, the receive queue's NAPI thread on CPU 1); *1 core*: one \
             generator thread and its queue's NAPI thread both on CPU 1; *2 cores*: a generator \
             thread and a NAPI thread on each CPU. NAPI threads run one SCHED_FIFO level above \
             the generators (so each batch is received before the next is sent). **With 2 cores the \
             generators share the receive cores**: Mpps per core in *1 core* and *2 cores* is what \
             one core does while also generating, so compare those two with each other (scaling), \
             not with *split*.\n",
            c.secs, c.reps
        );
        let _ = writeln!(
            o,
            "| Layout | Sources | Configuration | Dropped Mpps (all cores) | Mpps per core | Offered Mpps |\n|---|---|---|---|---|---|"
        );
        for (layout, regimes) in &c.cells {
            for (regime, filters) in regimes {
                for (f, cell) in filters {
                    let cores = c.cores.get(layout).copied().unwrap_or(1) as f64;
                    let _ = writeln!(
                        o,
                        "| {layout} | {regime} | {f} | {} | {:.2} | {} |",
                        cell.dropped.show(mpps),
                        cell.dropped.median / 1e6 / cores,
                        mpps(cell.offered.median)
                    );
                }
            }
        }
        let _ = writeln!(
            o,
            "\nMonitor (bare object) per core, 2 cores vs 1 core: {} at 1M warm sources, {} at 1 \
             source (2.00 would be linear); vs the best peer per core with 2 cores at 1M: {}.\n",
            g("two_queue_scaling_1m")
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "–".into()),
            g("two_queue_scaling_1")
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "–".into()),
            g("two_queue_ratio_vs_best_peer_1m")
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "–".into()),
        );
    }

    let _ = writeln!(o, "## 5. Control plane\n");
    if let Some(c) = &all.control {
        let _ = writeln!(
            o,
            "`monitor run` (release build, started and pinned as the deployed configuration in part 2) \
             attached natively to the API veth with a 1/minute limit and room for {} sources; a paced warm-up made {} sources tracked and over their limit; then the \
             generator flooded all of them at {:.2} Mpps for {:.1} s so offender events kept flowing \
             ({:.0} events/s delivered by the kernel).\n",
            crate::filters::OUR_CAPACITY,
            c.tracked_after_warmup,
            c.flood_pps / 1e6,
            c.flood_secs,
            c.events_per_sec
        );
        let _ = writeln!(
            o,
            "- Daemon during the paced flood: **{:.1}% of one core** (utime+stime from /proc/<pid>/stat over the flood), {:.0} lines/s written (event lines and summaries), {:.1} event lines/s (`--event-lines` 20/s: a token bucket with a burst of one second's worth), at most {} stamped with any one second.",
            c.daemon_cpu_fraction * 100.0,
            c.daemon_lines_per_sec,
            c.daemon_event_lines_per_sec,
            c.daemon_event_lines_max_per_sec
        );
        let _ = writeln!(
            o,
            "- `monitor top --limit 20` wall time (process start to exit, as a user sees it): **{} ms** under \
             the flood ({} runs), {} ms after it.\n",
            c.top_ms_under_flood.show(|x| format!("{x:.0}")),
            c.top_ms_under_flood.n,
            c.top_ms_idle.show(|x| format!("{x:.0}"))
        );
        match &c.sample {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "- Drop rate during a full-table sample ({} sources; the sample ran {} ms and used {} ms \
                     of CPU, resting between chunks to stay within the default `--sample-cpu`): the flood \
                     ran at the generator's full rate ({:.2} Mpps offered) from before the daemon's next \
                     sample until after it; the kernel's drop counter polled every 100 ms. Dropped **{:.3} \
                     Mpps during the sample** ({:.1} s of polls wholly inside it) against {:.3} Mpps \
                     outside it ({:.1} s): **{:.0}%**. Daemon over that flood (a whole sample cycle): \
                     **{:.1}% of a core**, {:.0} lines/s.\n",
                    w.tracked,
                    w.took_ms,
                    w.cpu_ms,
                    w.offered_pps / 1e6,
                    w.during_pps / 1e6,
                    w.during_secs,
                    w.outside_pps / 1e6,
                    w.outside_secs,
                    w.ratio() * 100.0,
                    w.daemon.cpu_fraction * 100.0,
                    w.daemon.lines_per_sec
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "- Drop rate during a full-table sample: not measured (see the run's log).\n"
                );
            }
        }
    } else {
        let _ = writeln!(
            o,
            "Not measured: {}\n",
            all.control_error.as_deref().unwrap_or("skipped")
        );
    }
    o
}

pub fn write(all: &All, markdown_path: &Path, out_dir: &Path) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(out_dir)?;
    let s = summary(all);
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&s)?,
    )?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(all)?,
    )?;
    std::fs::write(markdown_path, markdown(all, &s) + &fleet_markdown(all))?;
    Ok(s)
}
