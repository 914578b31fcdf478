//! Pre-filling the source table with batched map updates (`monitor::batch::write_all`): a
//! million entries in a few hundred system calls, so "N tracked sources" costs seconds, not
//! minutes.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::Map;
use monitor_common::addr::AddrKey;

pub fn map_fd(map: &Map) -> io::Result<i32> {
    match map {
        Map::HashMap(m) | Map::LruHashMap(m) | Map::Array(m) => Ok(m.fd().as_fd().as_raw_fd()),
        _ => Err(io::Error::other("not a hash or array map")),
    }
}

/// The i-th synthetic IPv4 source of the benchmark's range (10.128.0.0 + i).
pub fn v4_source(i: u32) -> AddrKey {
    AddrKey::from_v4((V4_BASE + i).to_be_bytes())
}

/// 10.128.0.0: room for 2^22 sources without leaving 10/8.
pub const V4_BASE: u32 = 0x0a80_0000;
/// The first 32 bits of every IPv6 source, and the counter base of the next 32.
pub const V6_PREFIX: [u8; 4] = [0x20, 0x01, 0x0d, 0xb8];
pub const V6_BASE: u32 = 0x0001_0000;
