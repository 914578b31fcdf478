//! A source table built for the job (issue 12, part 2), prototyped beside the LRU hash design.
//!
//! **Set-associative table in one array map.** Each set is one 64-byte cache line holding
//! eight IPv4 sources, each a single `u64`: the address (high 32 bits), a "refused since last
//! admitted" flag (bit 31) and the GCRA theoretical arrival time (low 31 bits, in units of
//! 2^12 ns = 4.096 µs, wrapping every 2.4 h; limits with a tolerance over an hour do not fit).
//! A packet hashes its address to one set and reads that one line:
//! - found, refused: drop without writing (only the first refusal after an admission sets
//!   the flag, one CAS);
//! - found, admitted: one CAS of the whole word (address, cleared flag, new time);
//! - missing: the word with the lowest score is replaced by one CAS (the new source's first
//!   request is admitted). Score = how far the entry's time runs ahead of now (its debt), and
//!   a flagged entry still in debt (a source over its limit right now) scores above every
//!   unflagged one, so spoofed one-packet sources evict each other, not a loud source.
//!   An entry whose debt is zero or less is equivalent to a fresh one: evicting it loses
//!   nothing.
//!
//! The array is `BPF_F_MMAPABLE`, which page-aligns its values: every set is one cache line.
//! Memory is 8 bytes per slot.
//!
//! `bench_sa` runs it on live traffic; `bench_lrug` runs the product's LRU design (its
//! `charge_source` on a 16-byte-key LRU hash of 40-byte buckets) behind the same minimal parse,
//! so the two differ only in the table. Both refuse on the coarse clock when the request
//! cannot fit at any instant the fine clock can read (the product's cut, `clock::Now`), and
//! read the fine clock otherwise. `churn_sa` / `churn_lru` / `churn_table` replay a loud
//! source inside a spoofed flood with an injected clock (one BPF_PROG_TEST_RUN repeat = one
//! packet), to count what eviction lets the loud source through; `churn_table` runs the
//! product's own source table (`monitor-ebpf` `sources`: lookup, charge, claim, parole).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use monitor_common::{addr::AddrKey, maps::Bucket, rate::Limit, table::TableShape};

use crate::{
    atomic,
    clock::Now,
    limit::{Charge, charge_bucket, charge_key, insert_new},
    programs::{counted_drop, v4_source},
    sources,
};

const BPF_F_MMAPABLE: u32 = 1 << 10;
const WAYS: usize = 8;
const TIME_SHIFT: u32 = 12;
const TIME_MASK: u32 = 0x7fff_ffff;
const FLAG: u64 = 1 << 31;

/// Layout shared with `monitor-bench` (`table::SaCfg`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SaCfg {
    /// log2 of the number of sets (the map must have at least that many entries).
    pub sets_log2: u32,
    /// Hash seed (a real table would take a random one at load).
    pub seed: u32,
    /// GCRA interval and tolerance in table time units (4.096 µs).
    pub interval_u: u32,
    pub tau_u: u32,
    /// The same limit in ns, for the LRU design.
    pub interval_ns: u64,
    pub tau_ns: u64,
}

#[map]
static SA_CFG: Array<SaCfg> = Array::with_max_entries(1, 0);

#[map]
static SA_TABLE: Array<[u64; WAYS]> = Array::with_max_entries(1 << 18, BPF_F_MMAPABLE);

/// The product's table shape for the comparison (16-byte key, 40-byte bucket).
#[map]
pub static LRU_TABLE: LruHashMap<AddrKey, Bucket> = LruHashMap::with_max_entries(1 << 20, 0);

#[inline(always)]
fn to_units(ns: u64) -> u32 {
    (ns >> TIME_SHIFT) as u32 & TIME_MASK
}

/// `a - b` in table time (31-bit wrapping), as a signed number of units.
#[inline(always)]
fn diff(a: u32, b: u32) -> i32 {
    ((a.wrapping_sub(b) & TIME_MASK) << 1) as i32 >> 1
}

/// The entry's debt (how far its time runs ahead of now). An entry whose stored time is
/// further ahead than any GCRA state can be (it wrapped while idle) has no debt.
#[inline(always)]
fn debt(w: u64, now: u32, tau: u32) -> i32 {
    let d = diff(w as u32 & TIME_MASK, now);
    if d > tau as i32 { i32::MIN } else { d }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sa {
    Admitted,
    Refused,
    /// Lost every CAS: admitted (fail open).
    Raced,
}

#[inline(always)]
fn word(key: u32, flag: u64, tat: u32) -> u64 {
    ((key as u64) << 32) | flag | (tat & TIME_MASK) as u64
}

/// The set `key` (non-zero) hashes to.
#[inline(always)]
fn set_of(cfg: &SaCfg, key: u32) -> Option<*mut u64> {
    let log2 = cfg.sets_log2;
    if log2 == 0 || log2 > 24 {
        return None;
    }
    let h = (key ^ cfg.seed).wrapping_mul(0x9e37_79b1);
    let idx = h >> (32 - log2);
    SA_TABLE.get_ptr_mut(idx).map(|set| set as *mut u64)
}

/// Whether the entry `w` refuses a request at table time `now` (the GCRA step of
/// `charge_entry`).
#[inline(always)]
fn sa_refuses(cfg: &SaCfg, w: u64, now: u32) -> bool {
    let d = debt(w, now, cfg.tau_u);
    let start = if d > 0 { w as u32 & TIME_MASK } else { now };
    diff(start.wrapping_add(cfg.interval_u), now) > cfg.tau_u as i32
}

/// Charges one request from `key` (non-zero): refused on the coarse clock when the key's entry
/// refuses at both ends of the window the fine clock can read in (the product's argument,
/// `monitor_common::rate`), otherwise on the fine clock.
#[inline(always)]
pub fn charge_sa(cfg: &SaCfg, key: u32, now: &mut Now) -> Sa {
    let Some(set) = set_of(cfg, key) else {
        return Sa::Raced;
    };
    let (lo, hi) = (to_units(now.earliest()), to_units(now.latest()));
    let mut i = 0;
    while i < WAYS {
        let p = unsafe { set.add(i) };
        let w = atomic::load(p);
        if (w >> 32) as u32 == key {
            if sa_refuses(cfg, w, lo) && sa_refuses(cfg, w, hi) {
                if w & FLAG == 0 {
                    let _ = atomic::compare_and_swap(p, w, w | FLAG);
                }
                return Sa::Refused;
            }
            break;
        }
        i += 1;
    }
    charge_sa_at(cfg, key, to_units(now.fine()))
}

/// Charges one request from `key` (non-zero) at table time `now`.
#[inline(always)]
pub fn charge_sa_at(cfg: &SaCfg, key: u32, now: u32) -> Sa {
    let Some(set) = set_of(cfg, key) else {
        return Sa::Raced;
    };
    for _attempt in 0..2 {
        let mut victim = 0usize;
        let mut victim_score = i64::MAX;
        let mut victim_word = 0u64;
        let mut i = 0;
        while i < WAYS {
            let p = unsafe { set.add(i) };
            let w = atomic::load(p);
            if (w >> 32) as u32 == key {
                return charge_entry(cfg, p, w, key, now);
            }
            let score = if w == 0 {
                i64::MIN
            } else {
                let d = debt(w, now, cfg.tau_u) as i64;
                if w & FLAG != 0 && d > 0 {
                    d + cfg.tau_u as i64 + 1
                } else {
                    d
                }
            };
            if score < victim_score {
                victim_score = score;
                victim = i;
                victim_word = w;
            }
            i += 1;
        }
        let first = now.wrapping_add(cfg.interval_u);
        let p = unsafe { set.add(victim & (WAYS - 1)) };
        if atomic::compare_and_swap(p, victim_word, word(key, 0, first)) {
            return Sa::Admitted;
        }
    }
    Sa::Raced
}

#[inline(always)]
fn charge_entry(cfg: &SaCfg, p: *mut u64, mut w: u64, key: u32, now: u32) -> Sa {
    for _ in 0..4 {
        let tat = w as u32 & TIME_MASK;
        let d = debt(w, now, cfg.tau_u);
        let start = if d > 0 { tat } else { now };
        let new_tat = start.wrapping_add(cfg.interval_u);
        if diff(new_tat, now) > cfg.tau_u as i32 {
            // Refused: read-only, except the first refusal after an admission.
            if w & FLAG == 0 {
                let _ = atomic::compare_and_swap(p, w, w | FLAG);
            }
            return Sa::Refused;
        }
        if atomic::compare_and_swap(p, w, word(key, 0, new_tat)) {
            return Sa::Admitted;
        }
        w = atomic::load(p);
        if (w >> 32) as u32 != key {
            // Evicted under us: fail open.
            return Sa::Raced;
        }
    }
    Sa::Raced
}

/// The LRU design's source charge (the product's until the set-associative table replaced it):
/// charges a source's request on its bucket. A request that `step` would refuse at every
/// instant the fine clock can read (`Limit::refuses_throughout` on the coarse clock's bounds)
/// is refused here, reading only: the same verdict, and the same unchanged state, as
/// `charge_bucket` on the fine clock. Anything else reads the fine clock and charges as usual.
#[inline(always)]
pub fn charge_source(bucket: *mut Bucket, limit: &Limit, now: &mut Now) -> Charge {
    let tat = atomic::load(unsafe { &raw const (*bucket).tat_ns });
    if limit.refuses_throughout(tat, now.earliest(), now.latest()) {
        unsafe {
            (*bucket).requests += 1;
            (*bucket).refused += 1;
        }
        return Charge::Refused;
    }
    charge_bucket(bucket, limit, now.fine())
}

#[inline(always)]
fn key_of(src: [u8; 4]) -> u32 {
    u32::from_be_bytes(src)
}

#[inline(always)]
fn lru_key(cfg: &SaCfg, src: [u8; 4]) -> (AddrKey, Limit) {
    let mut key = AddrKey { addr: [0u8; 16] };
    key.addr[10] = 0xff;
    key.addr[11] = 0xff;
    key.addr[12..16].copy_from_slice(&src);
    let limit = Limit {
        interval_ns: cfg.interval_ns,
        tolerance_ns: cfg.tau_ns,
    };
    (key, limit)
}

#[inline(always)]
fn lru_charge(cfg: &SaCfg, src: [u8; 4], now: u64) -> Charge {
    let (key, limit) = lru_key(cfg, src);
    charge_key(&LRU_TABLE, &key, &limit, now).0
}

/// Live traffic through the set-associative table: IPv4 source, then the table; refused
/// requests are dropped (counted in DROPS), the rest pass.
#[xdp]
pub fn bench_sa(ctx: XdpContext) -> u32 {
    let Some(src) = v4_source(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(cfg) = SA_CFG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let key = key_of(src);
    if key == 0 {
        return xdp_action::XDP_PASS;
    }
    match charge_sa(cfg, key, &mut Now::read()) {
        Sa::Refused => counted_drop(),
        _ => xdp_action::XDP_PASS,
    }
}

/// The same on the product's LRU design (its source path: `charge_source`, or `insert_new`
/// for a new source).
#[xdp]
pub fn bench_lrug(ctx: XdpContext) -> u32 {
    let Some(src) = v4_source(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(cfg) = SA_CFG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let (key, limit) = lru_key(cfg, src);
    let mut now = Now::read();
    let charge = match LRU_TABLE.get_ptr_mut(key) {
        Some(bucket) => charge_source(bucket, &limit, &mut now),
        None => insert_new(&LRU_TABLE, &key, &limit, now.fine()).0,
    };
    match charge {
        Charge::Refused => counted_drop(),
        Charge::Admitted => xdp_action::XDP_PASS,
    }
}

/// Layout shared with `monitor-bench` (`table::ChurnCfg`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChurnCfg {
    /// The injected clock: packet i arrives at `start_ns + i * ns_per_packet`.
    pub start_ns: u64,
    pub ns_per_packet: u64,
    /// Every `loud_every`-th packet comes from the loud source; the rest from spoofed ones.
    pub loud_every: u32,
    /// The loud source's address (host order).
    pub loud: u32,
    /// Spoofed addresses are drawn from `spoof_base + (hash(i) % spoofed)`; 0 = any address.
    pub spoof_base: u32,
    pub spoofed: u32,
}

#[map]
static CHURN_CFG: Array<ChurnCfg> = Array::with_max_entries(1, 0);
/// [0] packet sequence, [1] the loud source's admitted requests, [2] its refused ones, [3] its
/// requests that found it without a slot (`churn_table` only: it lost its slot since the
/// previous one).
#[map]
static CHURN: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

#[inline(always)]
fn churn_next() -> Option<(u32, u64, bool)> {
    let c = CHURN_CFG.get(0)?;
    let seq = CHURN.get_ptr_mut(0)?;
    let i = unsafe { *seq };
    unsafe { *seq = i + 1 };
    let now = c.start_ns + i * c.ns_per_packet;
    let every = if c.loud_every == 0 { 1 } else { c.loud_every } as u64;
    if i % every == 0 {
        return Some((c.loud, now, true));
    }
    // splitmix-style mixing of the sequence number.
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    let r = x as u32;
    let src = if c.spoofed == 0 {
        r
    } else {
        c.spoof_base.wrapping_add(r % c.spoofed)
    };
    let src = if src == 0 || src == c.loud {
        src ^ 1
    } else {
        src
    };
    Some((src, now, false))
}

#[inline(always)]
fn churn_count(loud: bool, admitted: bool) -> u32 {
    if loud && let Some(n) = CHURN.get_ptr_mut(if admitted { 1 } else { 2 }) {
        unsafe { *n += 1 };
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn churn_sa(_ctx: XdpContext) -> u32 {
    let (Some((src, now, loud)), Some(cfg)) = (churn_next(), SA_CFG.get(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    churn_count(loud, charge_sa_at(cfg, src, to_units(now)) != Sa::Refused)
}

#[xdp]
pub fn churn_lru(_ctx: XdpContext) -> u32 {
    let (Some((src, now, loud)), Some(cfg)) = (churn_next(), SA_CFG.get(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    churn_count(
        loud,
        lru_charge(cfg, src.to_be_bytes(), now) == Charge::Admitted,
    )
}

/// The shape `churn_table` places sources with in this object's `MON_SOURCES`.
#[map]
static CHURN_SHAPE: Array<TableShape> = Array::with_max_entries(1, 0);

/// The product's source table: its lookup, then its charge or, for a source with no slot,
/// its `admit_new` (parole, claim), on the injected clock.
#[xdp]
pub fn churn_table(_ctx: XdpContext) -> u32 {
    let (Some((src, now, loud)), Some(cfg), Some(shape)) =
        (churn_next(), SA_CFG.get(0), CHURN_SHAPE.get(0))
    else {
        return xdp_action::XDP_ABORTED;
    };
    let (key, limit) = lru_key(cfg, src.to_be_bytes());
    let Some(place) = sources::lookup(shape, &key) else {
        return xdp_action::XDP_ABORTED;
    };
    let charge = match place.slot() {
        Some(slot) => slot.charge(&limit, &mut Now::at(now)),
        None => {
            if loud && let Some(n) = CHURN.get_ptr_mut(3) {
                unsafe { *n += 1 };
            }
            sources::admit_new(&place, &key, &limit, now).0
        }
    };
    churn_count(loud, charge == Charge::Admitted)
}
