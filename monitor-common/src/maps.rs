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
/// Fleet mode: the one-element settings of the heavy-hitter candidate map (`FleetConfig`).
pub const MAP_FLEET_CONFIG: &str = "MON_FLEET_CFG";
/// Fleet mode: sources counted in the current fleet interval (`FleetCount`).
pub const MAP_FLEET_HITTERS: &str = "MON_FLEET_HH";
/// Per-CPU scratch space for the kernel program's parsed packet (never read by user space,
/// never pinned, so not in `ALL_MAPS`). See `monitor-ebpf/src/classify.rs`.
pub const MAP_SCRATCH: &str = "MON_SCRATCH";
/// When each source last sent an offender event (never read by user space, never pinned).
pub const MAP_EVENT_SPACING: &str = "MON_EVT_SPACING";
/// Limiter states of sources evicted from the source table while in debt (never pinned).
pub const MAP_PAROLE: &str = "MON_PAROLE";

pub const MAP_STATE: &str = "MON_STATE";
/// Only in objects built with the `test-clock` feature: the `now` the program uses, written
/// by the test (0 falls back to the real clock). Never pinned, never in a production object.
pub const MAP_TEST_CLOCK: &str = "MON_TEST_CLOCK";

pub const ALL_MAPS: [&str; 12] = [
    MAP_CONFIG,
    MAP_PORTS,
    MAP_STATS,
    MAP_SOURCES,
    MAP_AGGREGATES,
    MAP_BANS,
    MAP_ALLOW,
    MAP_DENY,
    MAP_EVENTS,
    MAP_FLEET_CONFIG,
    MAP_FLEET_HITTERS,
    MAP_STATE,
];

pub const PROG_XDP: &str = "monitor_xdp";
pub const PROG_TC: &str = "monitor_tc";
/// Never attached: user space runs it with `BPF_PROG_TEST_RUN` to set one bucket's ban copy
/// in place (see [`SetBan`]), the one field user space changes in a bucket the kernel owns.
pub const PROG_SET_BAN: &str = "monitor_set_ban";

/// The input of `PROG_SET_BAN`, passed as the test run's packet data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetBan {
    /// The source's key in `MON_SOURCES`.
    pub key: crate::addr::AddrKey,
    /// The new `Bucket::ban_until_ns` (0 lifts the ban).
    pub until_ns: u64,
}

/// `PROG_SET_BAN`'s return values.
pub mod set_ban {
    /// The bucket's ban copy now holds the new deadline.
    pub const WRITTEN: u32 = 2;
    /// The source has no bucket: the kernel reads `MON_BANS` when it next sees the source.
    pub const NO_BUCKET: u32 = 1;
    /// The input was shorter than `SetBan`.
    pub const BAD_INPUT: u32 = 0;
}

/// Default capacity of the source table (set at load time from `--max-sources`).
pub const DEFAULT_MAX_SOURCES: u32 = 1_000_000;
/// Capacity of the aggregate table (one entry per /24 or /48 seen).
pub const DEFAULT_MAX_AGGREGATES: u32 = 262_144;
/// Capacity of the ban table. It is a plain hash, not an LRU: entries leave only by expiring,
/// so a flood of new sources cannot evict a ban.
pub const MAX_BANS: u32 = 65_536;
pub const MAX_LIST_ENTRIES: u32 = 16_384;
/// Capacity of `MON_PAROLE`: how many evicted in-debt sources keep their state. To wash a loud
/// source's parked state out before it returns, a flood must evict this many other in-debt
/// sources (each sending more than one request) in that time. 32,768 entries take 2.8 MiB of
/// memlock (half of what 65,536 took in the bench): the table and its parole together stay
/// within 64 bytes a source at a million sources.
pub const MAX_PAROLE: u32 = 32_768;
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Entries of `MON_PORTS`: one per port number.
pub const PORT_SLOTS: u32 = 65_536;

/// Capacity of the fleet heavy-hitter candidate map. Only sources that send at least a
/// step's worth of requests in an interval enter it, so it holds the loud few, not the table.
pub const MAX_FLEET_HITTERS: u32 = 32_768;

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

/// The settings of fleet heavy-hitter marking (`MON_FLEET_CFG`, one element), written by the
/// daemon. All zero (the state before a daemon writes it, and without `--fleet`) is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetConfig {
    /// Length of one counting interval, monotonic ns; 0 switches marking off.
    pub interval_ns: u64,
    /// A source is charged to `MON_FLEET_HH` once per `step_mask + 1` requests (a power of
    /// two), when its request counter's low bits are all zero. So a source is counted within
    /// one step of exactly, and one sending less than a step per interval costs one `&` per
    /// request and never enters the map.
    pub step_mask: u64,
}

/// One candidate's count in `MON_FLEET_HH`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCount {
    /// Which interval `count` belongs to: monotonic ns / `interval_ns`.
    pub interval: u64,
    /// Requests counted in that interval (in steps of `step_mask + 1`).
    pub count: u64,
    /// The previous interval's number and count, so the daemon can read a finished interval
    /// even after the source's first request of the next one.
    pub prev_interval: u64,
    pub prev_count: u64,
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
