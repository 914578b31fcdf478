//! Part 1b: what each step of the per-packet path costs. The bench object carries the
//! product's own kernel modules and programs that stop after each step (`bench-ebpf`
//! `steps.rs`): parse, then the port and configuration lookups, the clock, the key and its set
//! of the source table, the charge (GCRA step), and the whole classifier. Each is timed with
//! BPF_PROG_TEST_RUN on the same frame, alternated within every round; the difference between
//! neighbours is that step's cost. The LRU hash design the table replaced, and the prototypes
//! of the cuts, are timed in the same rounds.

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
    table::{SourceSet, SourceSlot, TableShape},
};
use serde::Serialize;

use crate::{
    cost::{PORT, admit_all, refuse_all},
    frames::{self, L4},
    progs::{Bench, STEP_SOURCE_SETS},
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
pub const STEPS: [(&str, &str, Option<&str>); 15] = [
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
        "+ fine clock (bpf_ktime_get_ns)",
        Some("step_config"),
    ),
    (
        "step_coarse",
        "+ coarse clock (the product's per-packet clock)",
        Some("step_config"),
    ),
    (
        "step_lookup",
        "+ key mask and set probe (set-associative table, 4 ways)",
        Some("step_coarse"),
    ),
    (
        "step_gcra",
        "+ charge the slot (coarse refusal, or fine clock + GCRA CAS)",
        Some("step_lookup"),
    ),
    (
        "step_full",
        "full classifier (+ statistics, bans, policy flags, event check)",
        Some("step_gcra"),
    ),
    (
        "lru_lookup",
        "old design: key mask and LRU hash lookup (16-byte key)",
        Some("step_coarse"),
    ),
    (
        "lru_charge",
        "old design: + charge the bucket (coarse refusal, or fine + CAS)",
        Some("lru_lookup"),
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
        "old design's cut: fine clock, 4-byte IPv4 key, LRU hash, GCRA",
        Some("step_clock"),
    ),
    (
        "cut_all",
        "cut: stats record + config bitmap + the product's table (no lists, bans, events)",
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
    // The bench object's own copy of the product's table, placed with a fixed seed.
    let table = TableShape {
        seed: 0x5eed_5eed_5eed_5eed,
        sets: STEP_SOURCE_SETS,
        _pad: 0,
    };
    {
        let e = &mut bench.ebpf;
        let mut ports: Array<&mut MapData, u8> =
            Array::try_from(e.map_mut("MON_PORTS").context("MON_PORTS")?)?;
        ports.set(PORT as u32, port_flags::TCP | port_flags::UDP, 0)?;
        let mut sets: BTreeMap<u32, SourceSet> = BTreeMap::new();
        for (src, tat_ns) in [(pass_src, 1), (drop_src, far.tat_ns)] {
            let key = AddrKey::from_v4(src);
            let index = table.sets_of(&key).context("a table with no sets")?[0];
            let set = sets.entry(index).or_default();
            let way = set.slots.iter().position(|s| s.tat_ns == 0).unwrap_or(0);
            set.slots[way] = SourceSlot {
                key,
                tat_ns,
                ..Default::default()
            };
        }
        let mut src: Array<&mut MapData, SourceSet> =
            Array::try_from(e.map_mut("MON_SOURCES").context("MON_SOURCES")?)?;
        for (index, set) in sets {
            src.set(index, set, 0)?;
        }
        let mut lru: HashMap<&mut MapData, AddrKey, Bucket> =
            HashMap::try_from(e.map_mut("LRU_TABLE").context("LRU_TABLE")?)?;
        lru.insert(AddrKey::from_v4(pass_src), Bucket::default(), 0)?;
        lru.insert(AddrKey::from_v4(drop_src), far, 0)?;
        let mut s4: HashMap<&mut MapData, u32, Bucket> =
            HashMap::try_from(e.map_mut("CUT_SOURCES4").context("CUT_SOURCES4")?)?;
        s4.insert(key4(pass_src), Bucket::default(), 0)?;
        s4.insert(key4(drop_src), far, 0)?;
    }
    let set_config = |bench: &mut Bench, drop: bool| -> anyhow::Result<()> {
        let cfg = Config {
            source: if drop { refuse_all() } else { admit_all() },
            count_mode: count_mode::PACKETS,
            table,
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
                    "step_gcra" | "step_full" | "cut_key4" | "cut_all" | "lru_charge"
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
