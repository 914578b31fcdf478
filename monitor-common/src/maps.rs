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
pub const MAP_STATE: &str = "MON_STATE";
/// Only in objects built with the `test-clock` feature: the `now` the program uses, written
/// by the test (0 falls back to the real clock). Never pinned, never in a production object.
pub const MAP_TEST_CLOCK: &str = "MON_TEST_CLOCK";

/// Every map, for pinning and adoption.
pub const ALL_MAPS: [&str; 10] = [
    MAP_CONFIG,
    MAP_PORTS,
    MAP_STATS,
    MAP_SOURCES,
    MAP_AGGREGATES,
    MAP_BANS,
    MAP_ALLOW,
    MAP_DENY,
    MAP_EVENTS,
    MAP_STATE,
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

/// The kernel's own global rate-limiter state, in `MON_STATE[0]`, shared by every CPU. Each
/// field is changed only by compare-and-swap, and only when the limiter lets something through
/// (at most a few thousand times a second), so refused attempts only read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    /// The event budget's window: `(second << EVENT_COUNT_BITS) | events sent in it`, where
    /// `second` is the monotonic clock in whole seconds.
    pub event_window: u64,
    /// When each kind of log record (`log_kind`) was last written.
    pub log_last_ns: [u64; LOG_KINDS],
}

/// Bits of `KernelState::event_window` that count events (the rest is the second).
pub const EVENT_COUNT_BITS: u32 = 24;

/// Kinds of kernel log record about a per-packet condition, each written at most once a second.
pub mod log_kind {
    pub const BAN_STARTED: usize = 0;
    pub const BANS_FULL: usize = 1;
}
pub const LOG_KINDS: usize = 2;
/// A kind of log record is written at most once per this many ns (globally, all CPUs).
pub const LOG_SPACING_NS: u64 = 1_000_000_000;
