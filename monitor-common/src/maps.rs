//! Map names (defined once: the kernel declares maps under these names, user space opens them
//! by these names) and the map value types.
//!
//! Names stay within the kernel's 15-character object-name limit so that `bpftool map` shows
//! them whole.

pub const MAP_CONFIG: &str = "MON_CONFIG";
pub const MAP_PORTS: &str = "MON_PORTS";
pub const MAP_STATS: &str = "MON_STATS";
pub const MAP_SOURCES: &str = "MON_SOURCES";
pub const MAP_AGGREGATES: &str = "MON_AGGS";
pub const MAP_BANS: &str = "MON_BANS";
pub const MAP_ALLOW: &str = "MON_ALLOW";
pub const MAP_DENY: &str = "MON_DENY";
pub const MAP_EVENTS: &str = "MON_EVENTS";
/// Per-CPU scratch space for the kernel program's parsed packet (never read by user space,
/// never pinned, so not in `ALL_MAPS`). See `monitor-ebpf/src/classify.rs`.
pub const MAP_SCRATCH: &str = "MON_SCRATCH";

/// Every map, for pinning and adoption.
pub const ALL_MAPS: [&str; 9] = [
    MAP_CONFIG,
    MAP_PORTS,
    MAP_STATS,
    MAP_SOURCES,
    MAP_AGGREGATES,
    MAP_BANS,
    MAP_ALLOW,
    MAP_DENY,
    MAP_EVENTS,
];

pub const PROG_XDP: &str = "monitor_xdp";
pub const PROG_TC: &str = "monitor_tc";

/// Default capacity of the source table (set at load time from `--max-sources`).
pub const DEFAULT_MAX_SOURCES: u32 = 1_000_000;
/// Capacity of the aggregate table (one entry per /24 or /48 seen).
pub const DEFAULT_MAX_AGGREGATES: u32 = 262_144;
/// Capacity of the ban table. It is a plain hash, not an LRU: entries leave only by expiring,
/// so a flood of new sources cannot evict a ban.
pub const MAX_BANS: u32 = 65_536;
pub const MAX_LIST_ENTRIES: u32 = 16_384;
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Entries of `MON_PORTS`: one per port number.
pub const PORT_SLOTS: u32 = 65_536;

/// State of one key (a source or an aggregate prefix) in `MON_SOURCES` / `MON_AGGS`.
/// 40 bytes: small, because at a million keys each packet's lookup misses cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// GCRA theoretical arrival time (see `rate`), monotonic ns. Updated by CAS.
    pub tat_ns: u64,
    /// Copy of this source's ban deadline so a banned source costs one lookup; `MON_BANS`
    /// is authoritative when the bucket is missing (evicted or new).
    pub ban_until_ns: u64,
    /// When the last event for this key was emitted (at most one per second). Updated by CAS.
    pub last_event_ns: u64,
    /// Requests counted (admitted or refused). Plain increments: reporting, not limiting.
    pub requests: u64,
    /// Requests refused at this level.
    pub refused: u64,
}

/// A ban in `MON_BANS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ban {
    /// Monotonic ns after which the ban no longer applies (the kernel deletes it on sight).
    pub until_ns: u64,
}

/// An allow or deny entry in `MON_ALLOW` / `MON_DENY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// Monotonic ns after which the entry is ignored; 0 = permanent. `monitor block --for`.
    pub expires_ns: u64,
}
