//! Pre-filling the source table with `BPF_MAP_UPDATE_BATCH`: a million entries in a few
//! hundred system calls, so "N tracked sources" costs seconds, not minutes.

use std::{io, os::fd::AsRawFd as _};

use aya::maps::Map;
use monitor_common::{addr::AddrKey, maps::Bucket};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const CHUNK: usize = 8192;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

pub fn map_fd(map: &Map) -> io::Result<i32> {
    match map {
        Map::HashMap(m) | Map::LruHashMap(m) => Ok(m.fd().as_fd().as_raw_fd()),
        _ => Err(io::Error::other("not a hash map")),
    }
}

use std::os::fd::AsFd as _;

/// Writes every (key, bucket) pair into the map behind `fd`.
pub fn update_all(fd: i32, entries: &[(AddrKey, Bucket)]) -> io::Result<()> {
    update_pairs(fd, entries)
}

/// Writes every (key, value) pair into the map behind `fd` (K and V: the map's exact types).
pub fn update_pairs<K: Copy, V: Copy>(fd: i32, entries: &[(K, V)]) -> io::Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
