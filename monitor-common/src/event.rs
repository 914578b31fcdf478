//! Offender events sent through the `MON_EVENTS` ring buffer.

pub mod level {
    pub const SOURCE: u8 = 0;
    pub const AGGREGATE: u8 = 1;
}

pub mod kind {
    /// A key exceeded its limit (at most one per key per second).
    pub const OVER_LIMIT: u8 = 0;
    /// A ban started.
    pub const BAN: u8 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns when the kernel emitted it.
    pub ts_ns: u64,
    /// The masked key (source or aggregate prefix), IPv4 in mapped form.
    pub addr: [u8; 16],
    /// Prefix length in the address family's own terms (e.g. 32, 24, 64, 48).
    pub prefix_len: u8,
    pub level: u8,
    pub kind: u8,
    /// `config::action` in force when it tripped.
    pub action: u8,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    pub is_v4: u8,
    pub dport: u16,
    /// The key's request count when it tripped.
    pub requests: u64,
    /// Ban deadline (monotonic ns) for `kind::BAN`, else 0.
    pub ban_until_ns: u64,
}

/// Bytes one event takes in the ring buffer.
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
