//! `monitor-bench`: the benchmark behind `cargo xtask bench`. Runs every part in one process
//! (so the ratios come from one run on one machine), prints progress and a table per part,
//! and writes BENCHMARKS.md, `target/bench/summary.json` and `target/bench/results.json`.

mod accuracy;
mod control;
mod cores;
mod cost;
mod daemon;
mod fill;
mod filters;
mod fleet;
mod frames;
mod net;
mod progs;
mod report;
mod stats;
mod steps;
mod sys;
mod table;
mod throughput;
mod traffic_gen;

use std::{path::PathBuf, time::Instant};

use anyhow::Context as _;
use aya::programs::xdp::XdpMode;
use clap::Parser;

use crate::{
    filters::Filter,
    throughput::{Plan, Regime, Traffic},
};

#[derive(Parser)]
#[command(about = "Benchmarks the monitor against trivial programs, nftables and iptables")]
struct Args {
    /// Reduced run: one repetition, 1 and 1,000,000 sources only (about 4 minutes).
    #[arg(long)]
    quick: bool,
    /// Where BENCHMARKS.md goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where summary.json and results.json go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// The `monitor` binary (deployed configuration and control-plane part) [default: next
    /// to this one].
    #[arg(long)]
    monitor: Option<PathBuf>,
    /// SCHED_FIFO priority of the deployed daemon on the receive core; 0 runs it as an
    /// ordinary process (it then gets no CPU while the SCHED_FIFO receive thread is saturated).
    #[arg(long, default_value_t = daemon::DAEMON_PRIORITY)]
    daemon_priority: i32,
    /// Run only these parts (cost, steps, churn, throughput, prototypes, control, accuracy,
    /// cores, fleet); default all. `prototypes` runs only part 2's source-table prototypes.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn wants(args: &Args, part: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|p| p == part)
}

const ALL_FILTERS: [Filter; 13] = [
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
];

fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            >= 2,
        "the benchmark pins the generator and the receiver to two different CPUs: it needs at least 2"
    );
    net::remove_stale();
    let mut all = report::All {
        quick: args.quick,
        machine: report::Machine::probe(),
        ..Default::default()
    };
    let q = args.quick;
    let sources: Vec<u32> = if q {
        vec![1, 1_000_000]
    } else {
        vec![1, 10_000, 1_000_000]
    };

    if wants(args, "cost") {
        eprintln!("bench: part 1/5: program cost (BPF_PROG_TEST_RUN repeat)");
        let (rounds, repeat) = if q { (3, 200_000) } else { (5, 500_000) };
        all.cost = Some(cost::run(&sources, rounds, repeat)?);
    }

    let monitor_bin = match &args.monitor {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("monitor"),
    };
    daemon::configure(
        monitor_bin,
        args.out_dir.join("daemon"),
        args.daemon_priority,
    );
    let mut bench = progs::Bench::load()?;
    if wants(args, "steps") {
        eprintln!("bench: part 1b: cost of each step of the path (BPF_PROG_TEST_RUN repeat)");
        let (rounds, repeat) = if q { (3, 200_000) } else { (5, 500_000) };
        all.steps = Some(steps::run(&mut bench, rounds, repeat)?);
    }
    if wants(args, "churn") {
        eprintln!("bench: part 6: source-table eviction under a spoofed churn (injected clock)");
        // 100,000 spoofed sources at 5 Mpps are each over the limit too; "any address" (0)
        // makes every spoofed packet a new source.
        let spoofed: &[u32] = if q { &[0] } else { &[100_000, 0] };
        all.table = Some(table::churn(
            &mut bench,
            spoofed,
            if q { 1.0 } else { 2.0 },
        )?);
    }
    let warm_passes = if q { 2 } else { 3 };
    if wants(args, "throughput") || wants(args, "prototypes") || wants(args, "control") {
        let t = net::Topology::new("t", 1)?;
        // The generator stays attached to an idle veth: live-frames runs then skip an RCU wait.
        net::within(&t.gen_ns, || {
            Ok(bench
                .prog("bench_gen")?
                .attach(&t.idle_if, XdpMode::Driver)?)
        })
        .context("attaching the generator to its idle veth")?;
        if wants(args, "throughput") || wants(args, "prototypes") {
            eprintln!(
                "bench: part 2/5 and 4/5: throughput and memory (every configuration, alternated)"
            );
            let regimes: Vec<Regime> = sources
                .iter()
                .flat_map(|&n| {
                    if n >= 1_000_000 {
                        vec![
                            Regime {
                                sources: n,
                                warm: false,
                            },
                            Regime {
                                sources: n,
                                warm: true,
                            },
                        ]
                    } else {
                        vec![Regime {
                            sources: n,
                            warm: false,
                        }]
                    }
                })
                .collect();
            let one_and_warm = vec![
                Regime {
                    sources: 1,
                    warm: false,
                },
                Regime {
                    sources: 1_000_000,
                    warm: true,
                },
            ];
            let peers_and_ours = vec![
                Filter::TrivialDrop,
                Filter::NftNetdev,
                Filter::NftInet,
                Filter::Iptables,
                Filter::XdpNative,
                Filter::Deployed,
            ];
            // The source-table prototypes: only where their tables' state is defined (the
            // warm-up sets it; their tables are not emptied between repetitions).
            let prototypes = |reps| Plan {
                traffic: Traffic::V4Udp,
                filters: vec![Filter::SaTable, Filter::LruGcra],
                regimes: one_and_warm.clone(),
                reps,
            };
            let plans = if !wants(args, "throughput") {
                vec![prototypes(if q { 1 } else { 3 })]
            } else if q {
                vec![
                    Plan {
                        traffic: Traffic::V4Udp,
                        filters: ALL_FILTERS.to_vec(),
                        regimes,
                        reps: 1,
                    },
                    prototypes(1),
                    Plan {
                        traffic: Traffic::V6Udp,
                        filters: vec![
                            Filter::TrivialDrop,
                            Filter::NftNetdev,
                            Filter::Iptables,
                            Filter::XdpNative,
                            Filter::Deployed,
                        ],
                        regimes: vec![Regime {
                            sources: 1,
                            warm: false,
                        }],
                        reps: 1,
                    },
                ]
            } else {
                vec![
                    Plan {
                        traffic: Traffic::V4Udp,
                        filters: ALL_FILTERS.to_vec(),
                        regimes,
                        reps: 3,
                    },
                    prototypes(3),
                    Plan {
                        traffic: Traffic::V6Udp,
                        filters: peers_and_ours.clone(),
                        regimes: one_and_warm.clone(),
                        reps: 1,
                    },
                    Plan {
                        traffic: Traffic::V4Syn,
                        filters: peers_and_ours.clone(),
                        regimes: one_and_warm.clone(),
                        reps: 1,
                    },
                    Plan {
                        traffic: Traffic::V6Syn,
                        filters: peers_and_ours,
                        regimes: vec![Regime {
                            sources: 1,
                            warm: false,
                        }],
                        reps: 1,
                    },
                ]
            };
            let frames = if q { 2_000_000 } else { 3_000_000 };
            all.throughput = Some(throughput::run(
                &t,
                &mut bench,
                &plans,
                frames,
                200_000.0,
                warm_passes,
                3,
            )?);
        }
        if wants(args, "control") {
            eprintln!(
                "bench: part 5/5: control plane (`monitor run` with 1,000,000 tracked sources)"
            );
            match control::run(&t, &mut bench, if q { 3.0 } else { 6.0 }, warm_passes) {
                Ok(c) => all.control = Some(c),
                Err(e) => {
                    eprintln!("bench: control plane not measured: {e:#}");
                    all.control_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    if wants(args, "accuracy") {
        eprintln!("bench: part 3/5: accuracy (one source over two CPUs)");
        let t = net::Topology::new("q", 2)?;
        net::within(&t.gen_ns, || {
            Ok(bench
                .prog("bench_gen")?
                .attach(&t.idle_if, XdpMode::Driver)?)
        })
        .context("attaching the generator to its idle veth")?;
        all.accuracy = Some(accuracy::run(
            &t,
            &mut bench,
            if q { 1.0 } else { 2.0 },
            if q { 1 } else { 2 },
        )?);
    }

    if wants(args, "cores") {
        eprintln!("bench: part 7: scaling with cores (two receive queues)");
        let t = net::Topology::new("c", 2)?;
        net::within(&t.gen_ns, || {
            Ok(bench
                .prog("bench_gen")?
                .attach(&t.idle_if, XdpMode::Driver)?)
        })
        .context("attaching the generator to its idle veth")?;
        let mut filters = vec![
            Filter::XdpNative,
            Filter::Deployed,
            Filter::NftNetdev,
            Filter::Iptables,
        ];
        if !q {
            filters.push(Filter::NftInet);
        }
        let regimes = [
            Regime {
                sources: 1,
                warm: false,
            },
            Regime {
                sources: 1_000_000,
                warm: true,
            },
        ];
        all.cores = Some(cores::run(
            &t,
            &mut bench,
            &filters,
            &regimes,
            200_000.0,
            warm_passes,
            if q { 1 } else { 3 },
        )?);
    }

    if wants(args, "fleet") {
        eprintln!("bench: fleet: daemons in namespaces sharing one redis-server");
        let bin = match &args.monitor {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("monitor"),
        };
        let sizes: &[usize] = if args.quick { &[3] } else { &[3, 10] };
        let soak = std::time::Duration::from_secs(if args.quick { 10 } else { 20 });
        match fleet::run(&bin, sizes, soak) {
            Ok(f) => all.fleet = Some(f),
            Err(e) => {
                eprintln!("bench: fleet not measured: {e:#}");
                all.fleet_error = Some(format!("{e:#}"));
            }
        }
    }

    all.machine.load_after = report::load();
    all.seconds = started.elapsed().as_secs_f64();
    let summary = report::write(&all, &args.markdown, &args.out_dir)?;
    println!("{}", report::markdown(&all, &summary));
    println!("summary.json: {}", serde_json::to_string_pretty(&summary)?);
    eprintln!(
        "bench: wrote {} and {}",
        args.markdown.display(),
        args.out_dir.join("summary.json").display()
    );
    Ok(())
}
