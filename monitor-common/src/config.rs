//! The live configuration the kernel reads on every packet, and the per-port flags in
//! `MON_PORTS`. User space validates and writes them; the kernel only reads, so policy changes
//! take effect on the next packet with no reload.
//!
//! `MON_CONFIG` holds one [`ConfigSlots`]: two `Config`s and the index of the live one. The
//! writer (user space, through a shared mapping of the map) fills the idle slot, publishes it by
//! storing the index, then waits for an RCU grace period before it may write the old slot
//! again. Every program run is an RCU read-side section, so a packet that read the old index
//! has finished with the old slot by then: each packet sees one whole config, old or new,
//! never a mix. The kernel's cost is the one array lookup it always had, plus one load.

use crate::{addr::AddrMask, http::HTTP_PATH_MAX, rate::Limit, table::TableShape};

/// What one request is (the unit a limit counts).
pub mod count_mode {
    /// A new TCP connection: a SYN without ACK. UDP datagrams each count.
    pub const SYN: u8 = 0;
    /// Every packet to a monitored port.
    pub const PACKETS: u8 = 1;
    /// A TCP segment carrying payload, or a UDP datagram (the default).
    pub const PAYLOAD: u8 = 2;
    /// A TCP segment whose payload begins an HTTP/1.x request line (see `http`). UDP never counts.
    pub const HTTP: u8 = 3;
}

/// What happens to a request over a limit.
pub mod action {
    /// Drop it (XDP_DROP / TC_ACT_SHOT).
    pub const DROP: u8 = 0;
    /// Pass it and count it: the dry run for rolling out.
    pub const MONITOR: u8 = 1;
}

/// Bits of `MON_PORTS[port]`.
pub mod port_flags {
    pub const TCP: u8 = 1;
    pub const UDP: u8 = 2;
}

/// Bits of `Config::flags`.
pub mod config_flags {
    /// The allowlist has entries: without it the kernel skips the trie lookup.
    pub const HAS_ALLOW: u8 = 1;
    /// The denylist has entries.
    pub const HAS_DENY: u8 = 2;
}

pub const DEFAULT_V4_PREFIX: u8 = 32;
pub const DEFAULT_V6_PREFIX: u8 = 64;
pub const DEFAULT_V4_AGG_PREFIX: u8 = 24;
pub const DEFAULT_V6_AGG_PREFIX: u8 = 48;

/// `Config::magic`: a config that does not carry it was never written by this project (an
/// all-zero slot, say), and the kernel passes every packet untouched rather than act on it.
pub const CONFIG_MAGIC: u32 = 0x4d4f_4e43; // "MONC"
/// `Config::version`: bumped whenever the layout of `Config` or `ConfigSlots` changes, so a
/// daemon can refuse a pinned config written by another build.
pub const CONFIG_VERSION: u32 = 3;

/// The default global event budget (see `Config::events`): ring-buffer events per second.
pub const DEFAULT_EVENTS_PER_SEC: u32 = 1000;
/// The most events per second the budget's packed state can count.
pub const MAX_EVENTS_PER_SEC: u32 = 1_000_000;

/// The value of `MON_CONFIG[0]`: two configurations and which one is live (see the module doc).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSlots {
    /// Index (0 or 1) of the live slot. Only its low bit is read.
    pub active: u32,
    pub _pad: u32,
    pub slots: [Config; 2],
}

impl ConfigSlots {
    /// Both slots hold `config`, slot 0 live.
    pub const fn new(config: Config) -> Self {
        Self {
            active: 0,
            _pad: 0,
            slots: [config, config],
        }
    }

    pub const fn live(&self) -> &Config {
        &self.slots[(self.active & 1) as usize]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// [`CONFIG_MAGIC`]; anything else makes the kernel pass packets untouched.
    pub magic: u32,
    /// [`CONFIG_VERSION`] of the build that wrote it.
    pub version: u32,
    /// The per-source level. Always on.
    pub source: Limit,
    /// The aggregate level (the enclosing prefix); `Limit::OFF` switches it off.
    pub aggregate: Limit,
    /// How long a source that exceeds its limit is dropped entirely; 0 = no bans.
    pub ban_ns: u64,
    /// The global event budget: at most this many ring-buffer events in each second of the
    /// monotonic clock, whatever the number of offending keys. Over-limit events stop at
    /// `events_per_sec - events_reserved`; ban starts may use the whole budget, so the
    /// reserve is theirs alone. 0 sends no events.
    pub events_per_sec: u32,
    /// Of `events_per_sec`, how many only ban starts may use.
    pub events_reserved: u32,
    /// The source table's seed and size (`table`): set by user space's config writer from the
    /// table it created or adopted, never by policy.
    pub table: TableShape,
    pub v4_source_mask: AddrMask,
    pub v6_source_mask: AddrMask,
    pub v4_agg_mask: AddrMask,
    pub v6_agg_mask: AddrMask,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub v4_agg_prefix: u8,
    pub v6_agg_prefix: u8,
    pub count_mode: u8,
    pub action: u8,
    pub flags: u8,
    /// Bytes of `http_path` in use; 0 = any request line counts in `http` mode.
    pub http_path_len: u8,
    pub http_path: [u8; HTTP_PATH_MAX],
}

impl Config {
    /// The kernel's view before user space writes anything: 100 requests/s, burst 50,
    /// aggregate off, no bans, payload counting, drop.
    pub const fn with_prefixes(v4: u8, v6: u8, v4_agg: u8, v6_agg: u8) -> Self {
        Self {
            magic: CONFIG_MAGIC,
            version: CONFIG_VERSION,
            source: match Limit::new(100, crate::rate::NANOS_PER_SEC, 50) {
                Some(l) => l,
                None => Limit::OFF,
            },
            aggregate: Limit::OFF,
            ban_ns: 0,
            events_per_sec: DEFAULT_EVENTS_PER_SEC,
            events_reserved: DEFAULT_EVENTS_PER_SEC / 2,
            table: TableShape {
                seed: 0,
                sets: 0,
                _pad: 0,
            },
            v4_source_mask: AddrMask::v4(v4),
            v6_source_mask: AddrMask::v6(v6),
            v4_agg_mask: AddrMask::v4(v4_agg),
            v6_agg_mask: AddrMask::v6(v6_agg),
            v4_prefix: v4,
            v6_prefix: v6,
            v4_agg_prefix: v4_agg,
            v6_agg_prefix: v6_agg,
            count_mode: count_mode::PAYLOAD,
            action: action::DROP,
            flags: 0,
            http_path_len: 0,
            http_path: [0; HTTP_PATH_MAX],
        }
    }

    /// Sets the event budget: `per_sec` events per second, half of them reserved for ban starts.
    pub fn set_event_budget(&mut self, per_sec: u32) {
        self.events_per_sec = per_sec;
        self.events_reserved = per_sec / 2;
    }

    /// Whether this config was written by a build with this layout.
    pub const fn is_valid(&self) -> bool {
        self.magic == CONFIG_MAGIC && self.version == CONFIG_VERSION
    }

    /// Sets every prefix length and its mask together, so they never disagree.
    pub fn set_prefixes(&mut self, v4: u8, v6: u8, v4_agg: u8, v6_agg: u8) {
        *self = Self {
            source: self.source,
            aggregate: self.aggregate,
            ban_ns: self.ban_ns,
            events_per_sec: self.events_per_sec,
            events_reserved: self.events_reserved,
            table: self.table,
            count_mode: self.count_mode,
            action: self.action,
            flags: self.flags,
            http_path_len: self.http_path_len,
            http_path: self.http_path,
            ..Self::with_prefixes(v4, v6, v4_agg, v6_agg)
        };
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::with_prefixes(
            DEFAULT_V4_PREFIX,
            DEFAULT_V6_PREFIX,
            DEFAULT_V4_AGG_PREFIX,
            DEFAULT_V6_AGG_PREFIX,
        )
    }
}
