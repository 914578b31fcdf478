//! Part 3: accuracy. One source sends at 2x, 10x and 100x its limit from two generator
//! threads on both CPUs at once, into a two-queue veth whose two NAPI threads run on both CPUs:
//! the source's packets are judged on two CPUs concurrently. The admitted rate is what reached
//! the API namespace's transport layer, less the burst, per second of the run.

use std::{collections::BTreeMap, thread, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    filters::{self, Filter, Rule},
    net::Topology,
    progs::Bench,
    stats::{Summary, summarize},
    throughput::{Traffic, set_gen},
    traffic_gen::{self as tg, Pace},
};

pub const RATE: u64 = 1000;
pub const BURST: u64 = 20;

#[derive(Clone, Debug, Default, Serialize)]
pub struct AccuracyResult {
    /// filter -> factor -> admitted rate as a fraction of the limit
    pub admitted: BTreeMap<String, BTreeMap<u32, Summary>>,
    /// filter -> factor -> offered pps (median)
    pub offered: BTreeMap<String, BTreeMap<u32, f64>>,
    pub secs: f64,
}

pub fn run(
    t: &Topology,
    bench: &mut Bench,
    secs: f64,
    reps: usize,
) -> anyhow::Result<AccuracyResult> {
    let gen_prog: std::os::fd::OwnedFd = {
        use std::os::fd::AsFd as _;
        bench
            .prog("bench_gen")?
            .fd()?
            .as_fd()
            .try_clone_to_owned()?
    };
    let frame = set_gen(bench, Traffic::V4Udp, 1, t.gen_ifindex)?;
    let rule = Rule {
        per_sec: Some(RATE),
        per_min: 0,
        burst: BURST,
    };
    let filters = [
        Filter::XdpNative,
        Filter::NftNetdev,
        Filter::NftInet,
        Filter::Iptables,
    ];
    // Prime both generator threads and both receive queues once, untimed: the first live-frames
    // runs of a process pay one-off setup that would otherwise shorten the first cell's traffic
    // inside its timed window (seen as a 5% low first cell).
    t.pin_napi(&[0, 1])?;
    tg::prime(&gen_prog, &t.gen_ns, &frame, &[0, 1])?;
    let mut samples: BTreeMap<(Filter, u32), Vec<(f64, f64)>> = BTreeMap::new();
    for _ in 0..reps {
        for factor in [2u32, 10, 100] {
            for f in filters {
                let inst = filters::install(f, t, bench, &rule, 1)?;
                let r = (|| {
                    t.pin_napi(&[0, 1])?;
                    let before = t.transport_in()?;
                    let per_thread = (RATE * factor as u64) as f64 / 2.0;
                    // Chunks of ~2 ms of traffic: the bucket never idles long enough to refill
                    // past its burst between chunks, so the offered load is steady.
                    let chunk = ((per_thread * 0.002).ceil() as u32).max(1);
                    let frames = (per_thread * secs) as u64;
                    let handles = (0..2)
                        .map(|cpu| {
                            tg::spawn(
                                &gen_prog,
                                &t.gen_ns,
                                cpu,
                                frame.clone(),
                                Pace::Paced {
                                    frames,
                                    chunk,
                                    pps: per_thread,
                                },
                            )
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let mut sent = Vec::new();
                    for h in handles {
                        sent.push(
                            h.join()
                                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??,
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                    let passed = t.transport_in()? - before;
                    let window = sent.iter().map(|s| s.secs).fold(0.0, f64::max);
                    let offered = sent.iter().map(|s| s.frames as f64).sum::<f64>() / window;
                    let admitted = (passed as f64 - BURST as f64) / window / RATE as f64;
                    eprintln!(
                        "bench: accuracy {:34} {factor:3}x: offered {offered:8.0} pps, admitted {:6.1}% of the limit",
                        f.label(),
                        admitted * 100.0
                    );
                    anyhow::Ok((admitted, offered))
                })();
                inst.remove(t, bench).context("removing the filter")?;
                samples.entry((f, factor)).or_default().push(r?);
            }
        }
    }
    let mut out = AccuracyResult {
        secs,
        ..Default::default()
    };
    for ((f, factor), v) in samples {
        let adm: Vec<f64> = v.iter().map(|x| x.0).collect();
        let off = summarize(&v.iter().map(|x| x.1).collect::<Vec<_>>()).median;
        out.admitted
            .entry(f.label().to_string())
            .or_default()
            .insert(factor, summarize(&adm));
        out.offered
            .entry(f.label().to_string())
            .or_default()
            .insert(factor, off);
    }
    Ok(out)
}

impl AccuracyResult {
    /// Worst |admitted/limit - 1| over factors and repetitions for one configuration.
    pub fn max_error(&self, f: Filter) -> Option<f64> {
        let m = self.admitted.get(f.label())?;
        m.values()
            .map(|s| (s.min - 1.0).abs().max((s.max - 1.0).abs()))
            .reduce(f64::max)
    }
}
