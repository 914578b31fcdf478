//! Part 1b: what each step of the per-packet path costs. The bench object carries the
//! product's own kernel modules and programs that stop after each step (`bench-ebpf`
//! `steps.rs`): parse, then the port and configuration lookups, the clock, the key and source
//! lookup, the GCRA step, and the whole classifier. Each is timed with BPF_PROG_TEST_RUN on the
//! same frame, alternated within every round; the difference between neighbours is that
//! step's cost. The prototypes of the cuts are timed in the same rounds.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use monitor_common::{
    addr::AddrKey,
    config::{Config, ConfigSlots, count_mode, port_flags},
    maps::Bucket,
};
use serde::Serialize;

use crate::{
    cost::{PORT, admit_all, refuse_all},
    frames::{self, L4},
    progs::Bench,
    stats::{Summary, summarize},
};

/// Mirrors `bench-ebpf` `steps::Live`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Live {
    config: Config,
    tcp: [u64; 1024],
    udp: [u64; 1024],
}
unsafe impl aya::Pod for Live {}

/// (program, what it adds, compared with which earlier row)
pub const STEPS: [(&str, &str, Option<&str>); 14] = [
    ("bench_pass", "trivial XDP_PASS", None),
    (
        "step_parse",
        "parse (Ethernet, IP, UDP)",
        Some("bench_pass"),
    ),
    (
        "step_config",
        "+ port and configuration lookups (2 array lookups)",
        Some("step_parse"),
    ),
    (
        "step_clock",
        "+ clock (bpf_ktime_get_ns)",
        Some("step_config"),
    ),
    (
        "step_lookup",
        "+ key mask and source lookup (16-byte key, LRU hash)",
        Some("step_clock"),
    ),
    (
        "step_gcra",
        "+ GCRA step (CAS) and bucket counters",
        Some("step_lookup"),
    ),
    (
        "step_full",
        "full classifier (+ statistics, policy flags, event check)",
        Some("step_gcra"),
    ),
    (
        "step_stats",
        "statistics alone: 4 per-CPU lookups (product)",
        Some("bench_pass"),
    ),
    (
        "cut_stats",
        "cut: the 4 counters from one per-CPU record",
        Some("bench_pass"),
    ),
    (
        "cut_config",
        "cut: parse + one lookup (configuration + port bitmap)",
        Some("step_parse"),
    ),
    (
        "cut_key4",
        "cut: step_gcra with a 4-byte IPv4 key",
        Some("step_clock"),
    ),
    (
        "step_coarse",
        "step_clock with the coarse clock (bpf_ktime_get_coarse_ns)",
        Some("step_config"),
    ),
    (
        "cut_coarse",
        "cut: step_gcra, fine clock only when the coarse one cannot refuse",
        Some("step_config"),
    ),
    (
        "cut_all",
        "cut: all of the above (no lists, bans, events)",
        Some("bench_pass"),
    ),
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct StepsResult {
    /// program -> case ("pass"/"drop") -> ns per packet
    pub ns: BTreeMap<String, BTreeMap<String, Summary>>,
    pub repeat: u32,
    pub rounds: usize,
}

fn key4(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

pub fn run(bench: &mut Bench, rounds: usize, repeat: u32) -> anyhow::Result<StepsResult> {
    let pass_src = [10, 127, 0, 1];
    let drop_src = [10, 127, 0, 2];
    let dst: IpAddr = "192.0.2.1".parse()?;
    let frame =
        |src: [u8; 4]| frames::build(IpAddr::from(src), dst, None, L4::Udp, PORT, &[0u8; 18]).bytes;
    let far = Bucket {
        tat_ns: u64::MAX / 4,
        ..Default::default()
    };
    {
        let e = &mut bench.ebpf;
        let mut ports: Array<&mut MapData, u8> =
            Array::try_from(e.map_mut("MON_PORTS").context("MON_PORTS")?)?;
        ports.set(PORT as u32, port_flags::TCP | port_flags::UDP, 0)?;
        let mut src: HashMap<&mut MapData, AddrKey, Bucket> =
            HashMap::try_from(e.map_mut("MON_SOURCES").context("MON_SOURCES")?)?;
        src.insert(AddrKey::from_v4(pass_src), Bucket::default(), 0)?;
        src.insert(AddrKey::from_v4(drop_src), far, 0)?;
        let mut s4: HashMap<&mut MapData, u32, Bucket> =
            HashMap::try_from(e.map_mut("CUT_SOURCES4").context("CUT_SOURCES4")?)?;
        s4.insert(key4(pass_src), Bucket::default(), 0)?;
        s4.insert(key4(drop_src), far, 0)?;
    }
    let set_config = |bench: &mut Bench, drop: bool| -> anyhow::Result<()> {
        let cfg = Config {
            source: if drop { refuse_all() } else { admit_all() },
            count_mode: count_mode::PACKETS,
            ..Config::default()
        };
        let e = &mut bench.ebpf;
        let mut c: Array<&mut MapData, ConfigSlots> =
            Array::try_from(e.map_mut("MON_CONFIG").context("MON_CONFIG")?)?;
        c.set(0, ConfigSlots::new(cfg), 0)?;
        let mut live = Live {
            config: cfg,
            tcp: [0; 1024],
            udp: [0; 1024],
        };
        live.udp[(PORT >> 6) as usize] |= 1 << (PORT & 63);
        live.tcp[(PORT >> 6) as usize] |= 1 << (PORT & 63);
        let mut l: Array<&mut MapData, Live> =
            Array::try_from(e.map_mut("CUT_LIVE").context("CUT_LIVE")?)?;
        l.set(0, live, 0)?;
        Ok(())
    };
    let cases = [
        ("pass", frame(pass_src), false),
        ("drop", frame(drop_src), true),
    ];
    let mut samples: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("bench:   step costs, round {}/{rounds}", round + 1);
        for (ci, (_, bytes, drop)) in cases.iter().enumerate() {
            set_config(bench, *drop)?;
            for (si, (prog, _, _)) in STEPS.iter().enumerate() {
                let opts = TestRunOptions {
                    data_in: Some(bytes),
                    repeat,
                    ..TestRunOptions::new()
                };
                let r = bench
                    .prog(prog)?
                    .test_run(opts)
                    .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
                let verdict_step = matches!(
                    *prog,
                    "step_gcra" | "step_full" | "cut_key4" | "cut_all" | "cut_coarse"
                );
                let expect = if *drop && verdict_step { 1 } else { 2 };
                anyhow::ensure!(
                    r.return_value == expect,
                    "{prog} returned {} on the {} frame (expected {expect})",
                    r.return_value,
                    cases[ci].0
                );
                samples
                    .entry((si, ci))
                    .or_default()
                    .push(r.duration.as_nanos() as f64);
            }
        }
    }
    let mut ns: BTreeMap<String, BTreeMap<String, Summary>> = BTreeMap::new();
    for ((si, ci), v) in samples {
        ns.entry(STEPS[si].0.to_string())
            .or_default()
            .insert(cases[ci].0.to_string(), summarize(&v));
    }
    Ok(StepsResult { ns, repeat, rounds })
}
