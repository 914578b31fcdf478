//! The benchmark-only eBPF object (bench-ebpf): trivial pass/drop baselines and the generator.

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};

pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-ebpf"));

/// Mirrors `bench-ebpf`'s `GenCfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenCfg {
    pub ifindex: u32,
    pub sources: u32,
    pub is_v6: u32,
    pub l4_csum_off: u32,
    pub base: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for GenCfg {}

const PROGRAMS: [&str; 26] = [
    "bench_pass",
    "bench_drop",
    "bench_gen",
    "bench_floor",
    "bench_touch",
    "bench_floor4",
    "bench_floorh",
    "step_parse",
    "step_config",
    "step_clock",
    "step_lookup",
    "step_gcra",
    "step_full",
    "step_stats",
    "cut_stats",
    "cut_config",
    "cut_key4",
    "cut_all",
    "step_coarse",
    "lru_lookup",
    "lru_charge",
    "bench_sa",
    "bench_lrug",
    "churn_sa",
    "churn_lru",
    "churn_table",
];

/// Sets the step variants place their two sources in (a shape over the bench object's copy
/// of `MON_SOURCES`).
pub const STEP_SOURCE_SETS: u32 = 4096;

/// Sources the bench object's copy of `MON_SOURCES` has room for: the product's table for
/// `--max-sources` 1,048,576, which the churn replay (part 6) runs on.
pub const CHURN_TABLE_SOURCES: u32 = 1 << 20;

pub struct Bench {
    pub ebpf: Ebpf,
}

impl Bench {
    pub fn load() -> anyhow::Result<Self> {
        // The product maps compiled into this object serve the step variants, which run one
        // frame at a time (small maps), and the churn replay, which needs the product's table
        // at a million sources.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(
                "MON_SOURCES",
                monitor_common::table::sets_for(CHURN_TABLE_SOURCES).max(STEP_SOURCE_SETS),
            )
            .map_max_entries("MON_AGGS", 1024)
            .map_max_entries("MON_BANS", 1024)
            .map_max_entries("CUT_SOURCES4", 4096)
            .map_max_entries("SA_TABLE", crate::table::SA_SETS)
            .load(BENCH_OBJECT)
            .context("loading the bench eBPF object")?;
        for name in PROGRAMS {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { ebpf })
    }

    pub fn prog(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?)
    }

    pub fn set_gen(&mut self, cfg: GenCfg) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, GenCfg> =
            Array::try_from(self.ebpf.map_mut("GEN_CFG").context("GEN_CFG")?)?;
        a.set(0, cfg, 0)?;
        Ok(())
    }

    /// Total frames `bench_drop` dropped, over CPUs.
    pub fn drops(&self) -> anyhow::Result<u64> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("DROPS").context("DROPS")?)?;
        Ok(a.get(&0, 0)?.iter().sum())
    }
}
