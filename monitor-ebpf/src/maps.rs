//! The kernel-side map declarations. Names come from `monitor_common::maps` (the symbol name is
//! the map name); sizes here are defaults that user space overrides at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    addr::{AddrKey, ListAddr},
    config::ConfigSlots,
    maps::{
        Ban, Bucket, DEFAULT_MAX_AGGREGATES, EVENTS_BYTES, KernelState, ListEntry, MAX_BANS,
        MAX_LIST_ENTRIES, MAX_PAROLE, PORT_SLOTS,
    },
    stats::STAT_COUNT,
    table::SourceSet,
};

/// LPM tries reject prealloc; the flag is required.
const BPF_F_NO_PREALLOC: u32 = 1;
/// User space writes the config through a shared mapping (see `monitor_common::config`) and
/// reads the source table through one.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map]
pub static MON_CONFIG: Array<ConfigSlots> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
pub static MON_STATE: Array<KernelState> = Array::with_max_entries(1, 0);

/// [0] the fine `now` (0: the real clocks), [1] how far the coarse clock lags it, [2] requests
/// refused on the coarse clock (see `clock`).
#[cfg(feature = "test-clock")]
#[map]
pub static MON_TEST_CLOCK: Array<u64> = Array::with_max_entries(3, 0);

#[map]
pub static MON_PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

#[map]
pub static MON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// The source table (`monitor_common::table`, used through `sources`). Page-aligned storage
/// (`BPF_F_MMAPABLE`) keeps every 128-byte set on one pair of cache lines, and lets the daemon
/// read the table through a shared mapping. Sized by user space at load.
#[map]
pub static MON_SOURCES: Array<SourceSet> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The limiter state of sources a claim took the slot of while they were in debt, so that a
/// loud source pushed out of its set by a flood resumes its state instead of a fresh burst
/// (`sources::claim`). An LRU map: a flood of evictions ages out the oldest parked states,
/// never anything else. Looked up only for a source with no slot. Not pinned.
#[map]
pub static MON_PAROLE: LruHashMap<AddrKey, u64> = LruHashMap::with_max_entries(MAX_PAROLE, 0);

/// Entries of [`MON_CLAIM_LOCKS`] (a power of two).
pub const CLAIM_LOCKS: u32 = 1024;

/// Claim locks, by a new source's first set (`sources::admit_new`): two CPUs seeing the same
/// new source at once take one slot for it, not two. 0 = free. Not pinned.
#[map]
pub static MON_CLAIM_LOCKS: Array<u64> = Array::with_max_entries(CLAIM_LOCKS, 0);

/// One word per CPU that a source lookup's outcome passes through (see `sources::lookup`).
#[map]
pub static MON_PLACE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Entries of [`MON_EVT_SPACING`] (a power of two).
pub const SPACING_ENTRIES: u32 = 16_384;

/// When each source last sent an offender event, by the low bits of its key hash:
/// `[key hash, ns]`. Touched only when an event may go out (the global budget has room), so a
/// flood that has spent the second's budget never reads it. Two sources sharing an entry take
/// it from each other, so each may then report more than once a second, still within the
/// global budget. Not pinned: a restarted daemon starts with no spacing history.
#[map]
pub static MON_EVT_SPACING: Array<[u64; 2]> = Array::with_max_entries(SPACING_ENTRIES, 0);

#[map]
pub static MON_AGGS: LruHashMap<AddrKey, Bucket> =
    LruHashMap::with_max_entries(DEFAULT_MAX_AGGREGATES, 0);

#[map]
pub static MON_BANS: HashMap<AddrKey, Ban> = HashMap::with_max_entries(MAX_BANS, 0);

#[map]
pub static MON_ALLOW: LpmTrie<ListAddr, ListEntry> =
    LpmTrie::with_max_entries(MAX_LIST_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static MON_DENY: LpmTrie<ListAddr, ListEntry> =
    LpmTrie::with_max_entries(MAX_LIST_ENTRIES, BPF_F_NO_PREALLOC);

/// One parsed packet per CPU (see `classify`): `parse::Transport` as 8-byte words.
#[map]
pub static MON_SCRATCH: PerCpuArray<crate::parse::Transport> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static MON_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Adds one to a per-CPU statistic.
#[inline(always)]
pub fn count(stat: monitor_common::stats::Stat) {
    if let Some(slot) = MON_STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain add is exact.
        unsafe { *slot += 1 };
    }
}
