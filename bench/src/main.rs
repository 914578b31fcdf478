//! `monitor-bench`: the benchmark behind `cargo xtask bench`. Runs every part in one process
//! (so the ratios come from one run on one machine), prints a table per part, and writes
//! BENCHMARKS.md and `target/bench/summary.json`.

mod cost;
mod fill;
mod filters;
mod frames;
mod traffic_gen;
mod net;
mod progs;
mod stats;
mod sys;
mod throughput;

use std::path::PathBuf;

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
    /// Reduced run: fewer repetitions, 1 and 1,000,000 sources only (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Where BENCHMARKS.md goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where summary.json goes.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Run only these parts (cost, throughput, accuracy, control); default all.
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

fn run(args: &Args) -> anyhow::Result<()> {
    net::remove_stale();
    let sources: Vec<u32> = if args.quick { vec![1, 1_000_000] } else { vec![1, 10_000, 1_000_000] };
    if wants(args, "cost") {
        let (rounds, repeat) = if args.quick { (3, 200_000) } else { (5, 500_000) };
        let cost = cost::run(&sources, rounds, repeat)?;
        for (name, by_n) in &cost.ns {
            let cells: Vec<String> =
                by_n.iter().map(|(n, s)| format!("{n}: {}", s.show(|x| format!("{x:.1}")))).collect();
            println!("{name:45} {}", cells.join("  "));
        }
    }
    let mut bench = progs::Bench::load()?;
    if wants(args, "throughput") {
        let t = net::Topology::new("t", 1)?;
        // The generator stays attached to an idle veth: live-frames runs then skip an RCU wait.
        net::within(&t.gen_ns, || Ok(bench.prog("bench_gen")?.attach(&t.idle_if, XdpMode::Driver)?))
            .context("attaching the generator to its idle veth")?;
        let all = vec![
            Filter::NoFilter,
            Filter::TrivialDrop,
            Filter::NftNetdev,
            Filter::NftInet,
            Filter::Iptables,
            Filter::XdpNative,
            Filter::XdpGeneric,
            Filter::Tc,
        ];
        let regimes: Vec<Regime> = sources
            .iter()
            .flat_map(|&n| {
                if n >= 1_000_000 {
                    vec![Regime { sources: n, warm: false }, Regime { sources: n, warm: true }]
                } else {
                    vec![Regime { sources: n, warm: false }]
                }
            })
            .collect();
        let plans = vec![Plan { traffic: Traffic::V4Udp, filters: all, regimes, reps: if args.quick { 1 } else { 3 } }];
        let frames = if args.quick { 3_000_000 } else { 4_000_000 };
        let tp = throughput::run(&t, &mut bench, &plans, frames, 200_000.0, if args.quick { 2 } else { 3 }, 3)?;
        println!("{}", serde_json::to_string_pretty(&tp)?);
    }
    Ok(())
}
