//! The cost breakdown (issue 12, part 1): the product's own path, cut after each step, so
//! `monitor-bench --only steps` can time each prefix with BPF_PROG_TEST_RUN and report ns per
//! step; and prototypes of the cuts, measured the same way.
//!
//! The source-table steps run the product's set-associative table (`sources::lookup` on
//! `cfg.table`, `Slot::charge`, `sources::admit_new`); `lru_lookup` and `lru_charge` run the
//! LRU hash design it replaced (the table prototype's `LRU_TABLE`, `table::charge_source`) on
//! the same frame, so the two designs' instruction costs sit side by side. BPF_PROG_TEST_RUN
//! repeats one frame, so every lookup here hits the cache: the table's cache-miss advantage
//! shows in the throughput part, not here.
//!
//! Every variant uses what it computed in its verdict (a miss returns XDP_ABORTED, which the
//! bench rejects), so the compiler cannot drop a step.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use monitor_common::{
    addr::AddrKey,
    config::{Config, port_flags},
    maps::Bucket,
    stats::{STAT_COUNT, Stat},
};

use crate::{
    classify::{Verdict, classify},
    clock::Now,
    frame::XdpFrame,
    limit::{Charge, charge_bucket},
    maps::{MON_CONFIG, MON_PORTS, count},
    parse::{IPPROTO_TCP, Parsed, Transport, parse},
    sources,
    table::{LRU_TABLE, charge_source},
};

const ABORT: u32 = xdp_action::XDP_ABORTED;
const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
fn transport(ctx: &XdpContext) -> Option<Transport> {
    match parse(&XdpFrame(ctx)) {
        Ok(Parsed::Transport(t)) => Some(t),
        _ => None,
    }
}

/// The product's port and configuration lookups (two array lookups).
#[inline(always)]
fn monitored(pkt: &Transport) -> Option<&'static Config> {
    let want = if pkt.proto == IPPROTO_TCP {
        port_flags::TCP
    } else {
        port_flags::UDP
    };
    match MON_PORTS.get(pkt.dport as u32) {
        Some(flags) if *flags & want != 0 => {}
        _ => return None,
    }
    let slots = MON_CONFIG.get_ptr(0)?;
    let live = unsafe { core::ptr::read_volatile(&raw const (*slots).active) } & 1;
    Some(unsafe { &(*slots).slots[live as usize] })
}

#[inline(always)]
fn verdict(c: Charge) -> u32 {
    match c {
        Charge::Admitted => PASS,
        Charge::Refused => DROP,
    }
}

/// Step 1: parse only (Ethernet, VLANs, IP, transport).
#[xdp]
pub fn step_parse(ctx: XdpContext) -> u32 {
    match transport(&ctx) {
        Some(p) if p.dport != 0 => PASS,
        _ => ABORT,
    }
}

/// Step 2: + the port and configuration lookups.
#[xdp]
pub fn step_config(ctx: XdpContext) -> u32 {
    match transport(&ctx).as_ref().and_then(monitored) {
        Some(cfg) if cfg.source.interval_ns != 0 => PASS,
        _ => ABORT,
    }
}

/// Step 3: + the fine clock (`bpf_ktime_get_ns`). The product reads it only when the coarse
/// clock cannot decide (`clock::Now`); compare `step_coarse`.
#[xdp]
pub fn step_clock(ctx: XdpContext) -> u32 {
    let Some(cfg) = transport(&ctx).as_ref().and_then(monitored) else {
        return ABORT;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now != cfg.source.interval_ns {
        PASS
    } else {
        ABORT
    }
}

/// The product's charge of one request on its source table: the slot found is charged
/// (`Slot::charge`: refused on the coarse clock when it cannot fit at any instant the fine
/// clock can read, else the GCRA step on the fine clock); a source with no slot is charged on
/// its parked state or admitted, and claims a slot (`admit_new`).
#[inline(always)]
fn charge_table(cfg: &Config, key: &AddrKey, now: &mut Now) -> u32 {
    let Some(place) = sources::lookup(&cfg.table, key) else {
        return ABORT;
    };
    match place.slot() {
        Some(slot) => verdict(slot.charge(&cfg.source, now)),
        None => verdict(sources::admit_new(&place, key, &cfg.source, now.fine()).0),
    }
}

/// Step 4: step_coarse + masking the key and probing its set of the source table
/// (`sources::lookup`: keyed hash, the first set's array lookup, four 16-byte compares (the
/// second set's too when the first does not hold the key), and the slot passed
/// through the per-CPU `MON_PLACE` word for the verifier). The product reads
/// the coarse clock (`Now::read`) before the lookup, so this builds on `step_coarse`.
#[xdp]
pub fn step_lookup(ctx: XdpContext) -> u32 {
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(cfg) = monitored(&pkt) else {
        return ABORT;
    };
    let now = Now::read();
    let key = pkt.src.masked(&cfg.v4_source_mask);
    match sources::lookup(&cfg.table, &key).and_then(|place| place.slot()) {
        Some(slot) if slot.requests() as u64 != now.earliest() => PASS,
        _ => ABORT,
    }
}

/// Step 5: + charging the slot (`Slot::charge`; `admit_new` for a missing source): the
/// verdict, without statistics, bans, policy checks or the event check. A refusal reads only
/// the coarse clock; an admission reads the fine clock and swaps the state (CAS).
#[xdp]
pub fn step_gcra(ctx: XdpContext) -> u32 {
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(cfg) = monitored(&pkt) else {
        return ABORT;
    };
    let mut now = Now::read();
    let key = pkt.src.masked(&cfg.v4_source_mask);
    charge_table(cfg, &key, &mut now)
}

/// Step 6: the product's whole classifier (statistics, policy flags, event check included).
#[xdp]
pub fn step_full(ctx: XdpContext) -> u32 {
    match classify(&XdpFrame(&ctx)) {
        Verdict::Pass => PASS,
        Verdict::Drop => DROP,
    }
}

/// The statistics the product touches on a monitored, admitted request: four per-CPU map
/// lookups, one per counter.
#[xdp]
pub fn step_stats(_ctx: XdpContext) -> u32 {
    count(Stat::Seen);
    count(Stat::Monitored);
    count(Stat::Requests);
    count(Stat::Passed);
    PASS
}

// ---- Prototypes of the cuts -------------------------------------------------------------

/// All statistics of one CPU in one value: fetched once per packet.
#[map]
static CUT_STATS: PerCpuArray<[u64; STAT_COUNT as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Cut: the same four counters from one per-CPU record fetched once.
#[xdp]
pub fn cut_stats(_ctx: XdpContext) -> u32 {
    let Some(s) = CUT_STATS.get_ptr_mut(0) else {
        return ABORT;
    };
    unsafe {
        (*s)[Stat::Seen as usize] += 1;
        (*s)[Stat::Monitored as usize] += 1;
        (*s)[Stat::Requests as usize] += 1;
        (*s)[Stat::Passed as usize] += 1;
    }
    PASS
}

/// The live configuration and the monitored ports in one value: a bitmap per protocol (8 KiB
/// each). The daemon would replace the whole value in one map update, so a packet sees either
/// the old or the new one.
#[repr(C)]
pub struct Live {
    pub config: Config,
    pub tcp: [u64; 1024],
    pub udp: [u64; 1024],
}

#[map]
static CUT_LIVE: Array<Live> = Array::with_max_entries(1, 0);

#[inline(always)]
fn live_monitored(pkt: &Transport) -> Option<&'static Live> {
    let live = CUT_LIVE.get(0)?;
    let word = (pkt.dport >> 6) as usize;
    let bit = 1u64 << (pkt.dport & 63);
    let words = if pkt.proto == IPPROTO_TCP {
        &live.tcp
    } else {
        &live.udp
    };
    if word < words.len() && words[word] & bit != 0 {
        Some(live)
    } else {
        None
    }
}

/// Cut: step 2 with one lookup (configuration + port bitmap) instead of two.
#[xdp]
pub fn cut_config(ctx: XdpContext) -> u32 {
    match transport(&ctx).as_ref().and_then(live_monitored) {
        Some(live) if live.config.source.interval_ns != 0 => PASS,
        _ => ABORT,
    }
}

/// The LRU design's source table keyed by the bare IPv4 address, same bucket.
#[map]
static CUT_SOURCES4: LruHashMap<u32, Bucket> = LruHashMap::with_max_entries(1 << 20, 0);

/// The LRU design's cut (before the set-associative table): its step 5 on the fine clock with
/// a 4-byte IPv4 key in an LRU hash (and the product's two config lookups).
#[xdp]
pub fn cut_key4(ctx: XdpContext) -> u32 {
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(cfg) = monitored(&pkt) else {
        return ABORT;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = pkt.src.masked(&cfg.v4_source_mask);
    let k4 = u32::from_ne_bytes([key.addr[12], key.addr[13], key.addr[14], key.addr[15]]);
    match CUT_SOURCES4.get_ptr_mut(k4) {
        Some(b) => verdict(charge_bucket(b, &cfg.source, now)),
        None => ABORT,
    }
}

/// Cut, all together: parse, one configuration lookup with the port bitmap, the product's
/// clock and source table (`charge_table`, as `step_gcra`), and the statistics from one record
/// fetched once. What the product's drop/pass path would cost with the remaining cuts (no
/// policy lists, bans or events).
#[xdp]
pub fn cut_all(ctx: XdpContext) -> u32 {
    let Some(stats) = CUT_STATS.get_ptr_mut(0) else {
        return ABORT;
    };
    unsafe { (*stats)[Stat::Seen as usize] += 1 };
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(live) = live_monitored(&pkt) else {
        return ABORT;
    };
    unsafe { (*stats)[Stat::Monitored as usize] += 1 };
    let mut now = Now::read();
    let key = pkt.src.masked(&live.config.v4_source_mask);
    unsafe { (*stats)[Stat::Requests as usize] += 1 };
    let v = charge_table(&live.config, &key, &mut now);
    let which = match v {
        PASS => Stat::Passed,
        DROP => Stat::Dropped,
        _ => return ABORT,
    };
    unsafe { (*stats)[which as usize] += 1 };
    v
}

/// Step 3 as the product runs it: the coarse clock (`Now::read`, bpf_ktime_get_coarse_ns),
/// which every packet reads; the source-table steps build on this one.
#[xdp]
pub fn step_coarse(ctx: XdpContext) -> u32 {
    let Some(cfg) = transport(&ctx).as_ref().and_then(monitored) else {
        return ABORT;
    };
    let now = Now::read();
    if now.earliest() != cfg.source.interval_ns {
        PASS
    } else {
        ABORT
    }
}

/// The LRU design's lookup: `step_lookup` on a 16-byte-key LRU hash of 40-byte buckets
/// (`table::LRU_TABLE`, the product's source table before the set-associative one).
#[xdp]
pub fn lru_lookup(ctx: XdpContext) -> u32 {
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(cfg) = monitored(&pkt) else {
        return ABORT;
    };
    let now = Now::read();
    let key = pkt.src.masked(&cfg.v4_source_mask);
    match LRU_TABLE.get_ptr_mut(key) {
        Some(b) if unsafe { (*b).tat_ns } != now.earliest() => PASS,
        _ => ABORT,
    }
}

/// The LRU design's `step_gcra`: its source charge (`table::charge_source`: coarse-clock
/// refusal, else the GCRA step on the fine clock) on the LRU hash bucket.
#[xdp]
pub fn lru_charge(ctx: XdpContext) -> u32 {
    let Some(pkt) = transport(&ctx) else {
        return ABORT;
    };
    let Some(cfg) = monitored(&pkt) else {
        return ABORT;
    };
    let key = pkt.src.masked(&cfg.v4_source_mask);
    let Some(b) = LRU_TABLE.get_ptr_mut(key) else {
        return ABORT;
    };
    verdict(charge_source(b, &cfg.source, &mut Now::read()))
}
