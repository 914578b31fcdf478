//! The live configuration the kernel reads on every packet (one `Config` in `MON_CONFIG[0]`),
//! and the per-port flags in `MON_PORTS`. User space validates and writes them; the kernel
//! only reads, so policy changes take effect on the next packet with no reload.

use crate::{addr::AddrMask, http::HTTP_PATH_MAX, rate::Limit};

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

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The per-source level. Always on.
    pub source: Limit,
    /// The aggregate level (the enclosing prefix); `Limit::OFF` switches it off.
    pub aggregate: Limit,
    /// How long a source that exceeds its limit is dropped entirely; 0 = no bans.
    pub ban_ns: u64,
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
            source: match Limit::new(100, crate::rate::NANOS_PER_SEC, 50) {
                Some(l) => l,
                None => Limit::OFF,
            },
            aggregate: Limit::OFF,
            ban_ns: 0,
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

    /// Sets every prefix length and its mask together, so they never disagree.
    pub fn set_prefixes(&mut self, v4: u8, v6: u8, v4_agg: u8, v6_agg: u8) {
        *self = Self {
            source: self.source,
            aggregate: self.aggregate,
            ban_ns: self.ban_ns,
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
