//! Part 5: the control plane. Runs the real daemon (`monitor run`, started and pinned as in
//! `daemon`) on the API-side veth, fills its table with a million tracked, over-limit sources,
//! then (a) floods them at the generator's full rate across one of the daemon's full-table
//! samples, to see whether sampling costs the data plane packets, and (b) floods them at a
//! paced rate while timing `monitor top` and measuring the daemon's CPU time.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    daemon::{Daemon, Window, WindowStart},
    filters::Rule,
    net::Topology,
    progs::Bench,
    stats::{Summary, summarize},
    throughput::{GEN_CPU, RX_CPU, Runner, Traffic, set_gen},
    traffic_gen::{self as tg, Pace},
};

pub const SOURCES: u32 = 1_000_000;
/// Time between two polls of the daemon's statistics during the sample measurement.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlResult {
    pub tracked_after_warmup: u64,
    pub flood_pps: f64,
    pub flood_secs: f64,
    pub daemon_cpu_fraction: f64,
    pub daemon_lines_per_sec: f64,
    /// Offender event lines per second over the paced flood (`--event-lines` bounds it).
    pub daemon_event_lines_per_sec: f64,
    /// The most offender event lines stamped with any one second of it.
    pub daemon_event_lines_max_per_sec: u64,
    pub events_per_sec: f64,
    pub top_ms_under_flood: Summary,
    pub top_ms_idle: Summary,
    pub sample: Option<SampleWindow>,
}

/// The drop rate at the generator's full rate while the daemon sampled its full table, and
/// outside the sample in the same flood.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SampleWindow {
    /// Sources in the sampled table, and how long the daemon said the sample took.
    pub tracked: u64,
    pub took_ms: u64,
    /// The CPU time the daemon said the sample used (it rests between chunks).
    pub cpu_ms: u64,
    /// Seconds of the flood inside the sample, and the drop rate (pps) there.
    pub during_secs: f64,
    pub during_pps: f64,
    /// The same outside the sample (with a margin either side).
    pub outside_secs: f64,
    pub outside_pps: f64,
    pub offered_pps: f64,
    pub daemon: Window,
}

impl SampleWindow {
    pub fn ratio(&self) -> f64 {
        self.during_pps / self.outside_pps
    }
}

/// Where the control part's daemon serves metrics (inside the API namespace).
const METRICS: &str = "127.0.0.1:9469";

/// What one metrics poll says: samples taken, the last one's duration, packets dropped,
/// sources tracked at the last sample.
#[derive(Clone, Copy, Debug)]
struct Poll {
    at: Instant,
    samples: u64,
    took: Duration,
    /// The CPU time of the last sample (what the daemon paces its samples on).
    busy: Duration,
    dropped: u64,
    tracked: u64,
}

fn poll(t: &Topology, d: &Daemon) -> anyhow::Result<Poll> {
    let dropped = d.kernel_dropped()?;
    let m = Daemon::metrics(t, METRICS)?;
    let get = |name: &str| {
        m.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("the daemon's metrics have no {name}"))
    };
    Ok(Poll {
        at: Instant::now(),
        samples: get("monitor_samples_total")? as u64,
        took: Duration::from_secs_f64(get("monitor_last_sample_duration_seconds")?),
        busy: Duration::from_secs_f64(get("monitor_last_sample_cpu_seconds")?),
        dropped,
        tracked: get("monitor_tracked_sources")? as u64,
    })
}

/// Floods at full rate across the daemon's next full-table sample. The daemon paces its
/// samples (`monitor::daemon::sampler::period_after`), so the next one starts about one
/// period after the last one started; the flood starts a little before that and runs until
/// the sample has been counted, polling the daemon's metrics every 100 ms meanwhile.
fn across_a_sample(
    d: &Daemon,
    t: &Topology,
    gen_prog: &std::os::fd::OwnedFd,
    frame: &[u8],
    min_tracked: u64,
) -> anyhow::Result<SampleWindow> {
    let deadline = Instant::now() + Duration::from_secs(240);
    // A daemon busy with a backlog may not answer a poll in time: those are skipped.
    let mut first: Option<Poll> = None;
    let last = loop {
        thread::sleep(Duration::from_millis(200));
        let Ok(p) = poll(t, d) else {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemon's metrics did not answer within 240 s"
            );
            continue;
        };
        let Some(f) = first else {
            first = Some(p);
            continue;
        };
        if p.samples > f.samples && p.tracked >= min_tracked {
            break p;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon took no sample of {min_tracked}+ sources within 240 s"
        );
    };
    // The daemon paces its samples to a share of a core, so the next one is due about
    // `period_after(busy)` after this one started. Flood from now until it has been counted
    // (and a second more), rather than trusting the prediction to the second.
    // The bench's daemon runs with the default --sample-cpu.
    let period = monitor::daemon::sampler::period_after(
        last.busy,
        monitor::daemon::sampler::SAMPLE_CPU_SHARE,
    );
    eprintln!(
        "bench:   full-table sample of {} sources took {} ms ({} ms of CPU); flooding at full rate until the next one (due in about {:.0} s) is done",
        last.tracked,
        last.took.as_millis(),
        last.busy.as_millis(),
        period.saturating_sub(last.took).as_secs_f64()
    );
    let max_secs = (period.as_secs_f64() + 2.0 * last.took.as_secs_f64() + 10.0).min(200.0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = {
        let stop = stop.clone();
        let prog = gen_prog.try_clone()?;
        let ns = t.gen_ns.file()?;
        let frame = frame.to_vec();
        thread::spawn(move || -> anyhow::Result<tg::Sent> {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            crate::sys::pin_thread(GEN_CPU)?;
            crate::sys::realtime_thread()?;
            crate::net::setns(&ns)?;
            let begin = Instant::now();
            let mut frames = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && begin.elapsed().as_secs_f64() < max_secs
            {
                tg::live_run(prog.as_fd().as_raw_fd(), &frame, 1 << 18)?;
                frames += 1 << 18;
            }
            Ok(tg::Sent {
                frames,
                secs: begin.elapsed().as_secs_f64(),
            })
        })
    };
    let window = WindowStart::now(d)?;
    // The poller runs real-time above the generator on the generator's core: an ordinary
    // thread would get no CPU there while the generator floods.
    let polls: Vec<Poll> = thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Vec<Poll>> {
            crate::sys::pin_thread(GEN_CPU)?;
            crate::sys::realtime_thread_at(crate::sys::RT_PRIORITY + 2)?;
            let mut polls: Vec<Poll> = Vec::new();
            let mut ended: Option<usize> = None;
            let mut failed = 0;
            while !h.is_finished() {
                // A poll the daemon is too busy to answer is skipped (the slices around it
                // merge); many in a row end the measurement.
                let p = match poll(t, d) {
                    Ok(p) => p,
                    Err(e) => {
                        failed += 1;
                        anyhow::ensure!(failed < 20, "metrics polls keep failing: {e:#}");
                        continue;
                    }
                };
                polls.push(p);
                if ended.is_none() && p.samples > last.samples {
                    ended = Some(polls.len() - 1);
                }
                // Keep flooding a second past the sample's end, for the "after" side.
                if let Some(k) = ended
                    && p.at.duration_since(polls[k].at) > Duration::from_secs(1)
                {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                thread::sleep(POLL.saturating_sub(p.at.elapsed()));
            }
            Ok(polls)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("poller thread panicked"))?
    })?;
    let ended = polls.iter().position(|p| p.samples > last.samples);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = h
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    let daemon = window.finish(d)?;
    let k = ended.context("the daemon finished no sample during the flood")?;
    anyhow::ensure!(k >= 1, "the sample ended before the first poll");
    let took = polls[k].took;
    // The sample ran at most over [seen_{k-1} - took, seen_k], and covered
    // [seen_k - took, seen_{k-1}] when that is not empty.
    let inner = (
        polls[k].at.checked_sub(took).unwrap_or(polls[0].at),
        polls[k - 1].at,
    );
    let outer = (
        polls[k - 1].at.checked_sub(took).unwrap_or(polls[0].at),
        polls[k].at,
    );
    let margin = Duration::from_millis(300);
    let (mut during, mut during_s, mut outside, mut outside_s) = (0u64, 0.0, 0u64, 0.0);
    for w in polls.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let n = b.dropped.saturating_sub(a.dropped);
        // Inside the sample: wholly within the window it must have run in, allowing one poll
        // interval at the start (a daemon busy sampling may answer no poll until it is done).
        if a.at + POLL >= outer.0 && b.at <= outer.1 && b.at > inner.0 {
            during += n;
            during_s += secs;
        } else if b.at + margin <= outer.0 || a.at >= outer.1 + margin {
            outside += n;
            outside_s += secs;
        }
    }
    if during_s <= 0.0 || outside_s <= 0.0 {
        let t0 = polls[0].at;
        let around: Vec<String> = polls[k.saturating_sub(4)..(k + 3).min(polls.len())]
            .iter()
            .map(|p| format!("{:.2}", p.at.duration_since(t0).as_secs_f64()))
            .collect();
        anyhow::bail!(
            "the polls did not separate the sample ({} ms) from the rest of the flood: {} polls, \
             the sample was counted at poll {k}; polls around it at {} s",
            took.as_millis(),
            polls.len(),
            around.join(", ")
        );
    }
    let r = SampleWindow {
        tracked: polls[k].tracked,
        took_ms: took.as_millis() as u64,
        cpu_ms: polls[k].busy.as_millis() as u64,
        during_secs: during_s,
        during_pps: during as f64 / during_s,
        outside_secs: outside_s,
        outside_pps: outside as f64 / outside_s,
        offered_pps: sent.pps(),
        daemon,
    };
    eprintln!(
        "bench:   during the sample ({} ms, {} sources): dropped {:.3} Mpps over {:.1} s; outside it {:.3} Mpps over {:.1} s ({:.2}x); daemon {:.1}% of a core",
        r.took_ms,
        r.tracked,
        r.during_pps / 1e6,
        r.during_secs,
        r.outside_pps / 1e6,
        r.outside_secs,
        r.ratio(),
        r.daemon.cpu_fraction * 100.0
    );
    Ok(r)
}

pub fn run(
    t: &Topology,
    bench: &mut Bench,
    flood_secs: f64,
    warm_passes: usize,
) -> anyhow::Result<ControlResult> {
    // Metrics on: the sample measurement reads the daemon's sample count from them.
    let daemon = Daemon::start_with(t, &Rule::STRICT, "control", &["--metrics", METRICS])?;
    let gen_prog: std::os::fd::OwnedFd = {
        use std::os::fd::AsFd as _;
        bench
            .prog("bench_gen")?
            .fd()?
            .as_fd()
            .try_clone_to_owned()?
    };
    let frame = set_gen(bench, Traffic::V4Udp, SOURCES, t.gen_ifindex)?;
    let mut runner = Runner {
        t,
        bench,
        gen_prog,
        frames: 0,
        warm_pps: 200_000.0,
        warm_passes,
    };
    t.pin_napi(&[RX_CPU])?;
    let tracked = runner.warm_up(&frame, SOURCES)?;
    let gen_prog = runner.gen_prog;

    let sample = match across_a_sample(&daemon, t, &gen_prog, &frame, tracked * 9 / 10) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("bench:   drop rate during a full-table sample not measured: {e:#}");
            None
        }
    };

    // Flood: every source, over and over, at a rate the receive core absorbs with room to
    // spare, so the daemon competes only with what an attack really costs.
    let flood_pps = 1_000_000.0;
    let ev0 = daemon.stat("events_sent").ok();
    let window = WindowStart::now(&daemon)?;
    let start = Instant::now();
    let h = tg::spawn(
        &gen_prog,
        &t.gen_ns,
        GEN_CPU,
        frame.clone(),
        Pace::Paced {
            frames: (flood_pps * flood_secs) as u64,
            chunk: 1024,
            pps: flood_pps,
        },
    )?;
    let mut under = Vec::new();
    // Let the flood settle before timing.
    thread::sleep(Duration::from_millis(500));
    while !h.is_finished() {
        under.push(daemon.cli(&["top", "--limit", "20"])?.0);
        thread::sleep(Duration::from_millis(200));
    }
    let sent = h
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    let wall = start.elapsed().as_secs_f64();
    let used = window.finish(&daemon)?;
    let ev1 = daemon.stat("events_sent").ok();
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(daemon.cli(&["top", "--limit", "20"])?.0);
    }
    let r = ControlResult {
        tracked_after_warmup: tracked,
        flood_pps: sent.pps(),
        flood_secs: wall,
        daemon_cpu_fraction: used.cpu_fraction,
        daemon_lines_per_sec: used.lines_per_sec,
        daemon_event_lines_per_sec: used.event_lines_per_sec,
        daemon_event_lines_max_per_sec: used.event_lines_max_per_sec,
        events_per_sec: match (ev0, ev1) {
            (Some(a), Some(b)) => (b - a) as f64 / wall,
            _ => f64::NAN,
        },
        top_ms_under_flood: summarize(&under),
        top_ms_idle: summarize(&idle),
        sample,
    };
    eprintln!(
        "bench: control plane: daemon {:.1}% of a core, {:.0} lines/s, {:.0} events/s, `monitor top` {:.0} ms under flood ({} runs), {:.0} ms idle",
        r.daemon_cpu_fraction * 100.0,
        r.daemon_lines_per_sec,
        r.events_per_sec,
        r.top_ms_under_flood.median,
        r.top_ms_under_flood.n,
        r.top_ms_idle.median
    );
    drop(daemon);
    Ok(r)
}
