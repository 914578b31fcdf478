//! Part 6: the source-table prototypes (`bench-ebpf` `table.rs`). Their throughput runs in the
//! part 2 alternation (filters `SaTable` and `LruGcra`); this module configures them, reads
//! their memory, and measures eviction under a spoofed churn: one loud source inside a flood
//! of spoofed sources, replayed through each design with an injected clock, counting how many
//! of the loud source's requests each design admitted against what the limit allows.

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use monitor_common::{
    addr::AddrKey,
    table::{SourceSet, TableShape, sets_for},
};
use serde::Serialize;

use crate::{
    fill,
    progs::{Bench, CHURN_TABLE_SOURCES},
};

/// Sets in the set-associative table (8 sources each): 2^18 sets = 2,097,152 slots, 16 MiB.
pub const SA_SETS: u32 = 1 << 18;
const SA_WAYS: usize = 8;
const TIME_SHIFT: u32 = 12;

/// Mirrors `bench-ebpf` `table::SaCfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SaCfg {
    pub sets_log2: u32,
    pub seed: u32,
    pub interval_u: u32,
    pub tau_u: u32,
    pub interval_ns: u64,
    pub tau_ns: u64,
}
unsafe impl aya::Pod for SaCfg {}

/// Mirrors `bench-ebpf` `table::ChurnCfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChurnCfg {
    pub start_ns: u64,
    pub ns_per_packet: u64,
    pub loud_every: u32,
    pub loud: u32,
    pub spoof_base: u32,
    pub spoofed: u32,
}
unsafe impl aya::Pod for ChurnCfg {}

/// Writes the limit both prototypes enforce.
pub fn configure(bench: &mut Bench, interval_ns: u64, burst: u64) -> anyhow::Result<()> {
    let tau_ns = interval_ns * burst;
    let cfg = SaCfg {
        sets_log2: SA_SETS.trailing_zeros(),
        seed: 0x2545_f491,
        interval_u: (interval_ns >> TIME_SHIFT) as u32,
        tau_u: (tau_ns >> TIME_SHIFT) as u32,
        interval_ns,
        tau_ns,
    };
    anyhow::ensure!(
        cfg.tau_u < 1 << 30 && cfg.interval_u > 0,
        "limit outside the prototype's time range"
    );
    let mut a: Array<&mut MapData, SaCfg> =
        Array::try_from(bench.ebpf.map_mut("SA_CFG").context("SA_CFG")?)?;
    a.set(0, cfg, 0)?;
    Ok(())
}

/// A BPF_F_MMAPABLE array of the bench object, mapped into this process.
struct Mapped {
    ptr: *mut u64,
    len: usize,
}

impl Mapped {
    fn new(bench: &Bench) -> anyhow::Result<Self> {
        Self::of(bench, "SA_TABLE", SA_SETS as usize * SA_WAYS * 8)
    }

    fn of(bench: &Bench, map: &str, len: usize) -> anyhow::Result<Self> {
        let fd = fill::map_fd(bench.ebpf.map(map).with_context(|| map.to_string())?)?;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        anyhow::ensure!(
            p != libc::MAP_FAILED,
            "mmap of {map}: {}",
            std::io::Error::last_os_error()
        );
        Ok(Self { ptr: p.cast(), len })
    }
    fn words(&mut self) -> &mut [u64] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len / 8) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Empties the set-associative table (between cells, so each starts fresh).
pub fn clear_sa(bench: &Bench) -> anyhow::Result<()> {
    Mapped::new(bench)?.words().fill(0);
    Ok(())
}

/// Empties the bench object's copy of the product's table and its parole map, and names the
/// shape `churn_table` places sources with: the product's for `--max-sources` `sources` (at
/// most `CHURN_TABLE_SOURCES`, the room the map was created with).
fn reset_product_table(bench: &mut Bench, sources: u32) -> anyhow::Result<()> {
    let shape = TableShape {
        seed: 0x0c4a_51de_5eed_f00d,
        sets: sets_for(sources.min(CHURN_TABLE_SOURCES)),
        _pad: 0,
    };
    let len = shape.sets as usize * std::mem::size_of::<SourceSet>();
    Mapped::of(bench, "MON_SOURCES", len)?.words().fill(0);
    let mut parole: HashMap<&mut MapData, AddrKey, u64> =
        HashMap::try_from(bench.ebpf.map_mut("MON_PAROLE").context("MON_PAROLE")?)?;
    let parked: Vec<AddrKey> = parole.keys().collect::<Result<_, _>>()?;
    for key in parked {
        parole.remove(&key)?;
    }
    let mut a: Array<&mut MapData, TableShape> =
        Array::try_from(bench.ebpf.map_mut("CHURN_SHAPE").context("CHURN_SHAPE")?)?;
    a.set(0, shape, 0)?;
    Ok(())
}

/// Sources the set-associative table holds, and its kernel memory (memlock).
pub fn sa_usage(bench: &Bench) -> anyhow::Result<(u64, u64)> {
    let n = Mapped::new(bench)?
        .words()
        .as_ref()
        .iter()
        .filter(|&&w| w != 0)
        .count() as u64;
    Ok((n, memlock(bench, "SA_TABLE")?))
}

/// Sources the LRU-design table holds, and its memlock.
pub fn lru_usage(bench: &Bench) -> anyhow::Result<(u64, u64)> {
    let fd = fill::map_fd(bench.ebpf.map("LRU_TABLE").context("LRU_TABLE")?)?;
    let n =
        monitor::batch::read_all::<monitor_common::addr::AddrKey, monitor_common::maps::Bucket>(fd)
            .map(|v| v.len() as u64)
            .unwrap_or(0);
    Ok((n, memlock(bench, "LRU_TABLE")?))
}

fn memlock(bench: &Bench, map: &str) -> anyhow::Result<u64> {
    let fd = fill::map_fd(bench.ebpf.map(map).context("map")?)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

const CHURN_CPU: usize = 0;

/// One BPF_PROG_TEST_RUN of `repeat` runs of `frame` (the bench needs no output).
fn test_run(prog: &std::os::fd::OwnedFd, frame: &[u8], repeat: u32) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
    }
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>(),
        )
    };
    anyhow::ensure!(r == 0, "{}", std::io::Error::last_os_error());
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnCell {
    pub design: String,
    /// Distinct spoofed sources (0 = any 32-bit address).
    pub spoofed: u32,
    pub loud_sent: u64,
    pub loud_admitted: u64,
    /// The loud source's requests that found it without a slot (the product's table only).
    pub loud_slotless: Option<u64>,
    /// What the limit allows over the run: burst + duration × rate.
    pub allowed: f64,
    pub secs: f64,
    pub flood_pps: f64,
    pub loud_pps: f64,
}

impl ChurnCell {
    pub fn extra(&self) -> f64 {
        self.loud_admitted as f64 / self.allowed - 1.0
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TableResult {
    pub churn: Vec<ChurnCell>,
    pub rate_per_sec: u64,
    pub burst: u64,
}

/// One loud source at `loud_pps` inside a spoofed flood of `flood_pps`, for `secs` of
/// injected time, through each design, for each number of spoofed sources.
pub fn churn(bench: &mut Bench, spoofed: &[u32], secs: f64) -> anyhow::Result<TableResult> {
    let (rate, burst) = (10u64, 10u64);
    let interval_ns = 1_000_000_000 / rate;
    let flood_pps = 5_000_000.0;
    let loud_every = 5_000u32;
    let ns_per_packet = (1e9 / flood_pps) as u64;
    let packets = (secs * flood_pps) as u64;
    let mut out = TableResult {
        rate_per_sec: rate,
        burst,
        ..Default::default()
    };
    // The LRU design gets 2^20 entries, the earlier product's map; the product's table gets
    // its room for 2^20 sources, and once a room for 16,384: there 100,000 spoofed sources,
    // each over its limit and so as deep in debt as the loud source, overfill its sets and
    // take its slot (about one loud request in eight found it slotless when this was
    // written), and parole is what keeps its state.
    for &n in spoofed {
        for (design, prog, room) in [
            (
                "product: set-associative, two sets of 4 x 32 B",
                "churn_table",
                CHURN_TABLE_SOURCES,
            ),
            (
                "product, the same with room for 16,384 sources",
                "churn_table",
                16_384,
            ),
            (
                "prototype: set-associative (8 x 8 B per line)",
                "churn_sa",
                0,
            ),
            ("LRU hash (earlier product design)", "churn_lru", 0),
        ] {
            configure(bench, interval_ns, burst)?;
            match prog {
                "churn_sa" => clear_sa(bench)?,
                "churn_table" => reset_product_table(bench, room)?,
                _ => {}
            }
            // Start the injected clock well past anything the live tests left behind.
            let start_ns = monitor::clock::kernel_now_ns() + 3_600_000_000_000;
            {
                let mut c: Array<&mut MapData, ChurnCfg> =
                    Array::try_from(bench.ebpf.map_mut("CHURN_CFG").context("CHURN_CFG")?)?;
                c.set(
                    0,
                    ChurnCfg {
                        start_ns,
                        ns_per_packet,
                        loud_every,
                        loud: u32::from_be_bytes([198, 51, 100, 7]),
                        spoof_base: u32::from_be_bytes([100, 64, 0, 0]),
                        spoofed: n,
                    },
                    0,
                )?;
                let mut k: PerCpuArray<&mut MapData, u64> =
                    PerCpuArray::try_from(bench.ebpf.map_mut("CHURN").context("CHURN")?)?;
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
                for i in 0..4 {
                    k.set(i, aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
                }
            }
            let frame = vec![0u8; 64];
            let started = std::time::Instant::now();
            // The sequence (and so the injected clock) is per CPU: every chunk must run on the
            // same CPU, so the runs go through one pinned thread.
            let fd = {
                use std::os::fd::AsFd as _;
                bench.prog(prog)?.fd()?.as_fd().try_clone_to_owned()?
            };
            std::thread::scope(|s| {
                s.spawn(|| -> anyhow::Result<()> {
                    crate::sys::pin_thread(CHURN_CPU)?;
                    let chunk = 10_000_000u64;
                    let mut done = 0u64;
                    while done < packets {
                        let n = chunk.min(packets - done) as u32;
                        test_run(&fd, &frame, n)
                            .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
                        done += n as u64;
                    }
                    Ok(())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("churn thread panicked"))?
            })?;
            let took = started.elapsed().as_secs_f64();
            let k: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(bench.ebpf.map("CHURN").context("CHURN")?)?;
            let sum = |i: u32| -> anyhow::Result<u64> { Ok(k.get(&i, 0)?.iter().sum()) };
            let (seq, admitted, refused, slotless) = (sum(0)?, sum(1)?, sum(2)?, sum(3)?);
            anyhow::ensure!(seq == packets, "{prog} ran {seq} of {packets} packets");
            let cell = ChurnCell {
                design: design.to_string(),
                spoofed: n,
                loud_sent: admitted + refused,
                loud_admitted: admitted,
                // The loud source's first request always finds no slot.
                loud_slotless: (prog == "churn_table").then(|| slotless.saturating_sub(1)),
                allowed: burst as f64 + secs * rate as f64,
                secs,
                flood_pps,
                loud_pps: flood_pps / loud_every as f64,
            };
            eprintln!(
                "bench:   churn: {design}, {} spoofed sources: loud source admitted {} of {} (limit allows {:.0}: {:+.1}%), lost its slot {} times [{:.0} ns per packet]",
                if n == 0 {
                    "any-address".to_string()
                } else {
                    n.to_string()
                },
                cell.loud_admitted,
                cell.loud_sent,
                cell.allowed,
                cell.extra() * 100.0,
                cell.loud_slotless
                    .map_or_else(|| "(not counted)".to_string(), |n| n.to_string()),
                took * 1e9 / packets as f64
            );
            out.churn.push(cell);
        }
    }
    Ok(out)
}
