//! Whole-map reads and writes with `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_UPDATE_BATCH`: thousands
//! of entries per system call, where aya's iterator costs two calls per entry. `monitor top`
//! over a million tracked sources depends on the reads; benchmarks and scale tests pre-fill
//! tables with the writes.

use std::{io, mem::size_of};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries asked for per call. Large enough that no hash bucket overflows it (ENOSPC).
const CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr`.
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

/// Reads every (key, value) of a hash or LRU hash map. `K` and `V` must be the map's exact
/// key and value types (plain `#[repr(C)]` data).
pub fn read_all<K: aya::Pod, V: aya::Pod>(map_fd: i32) -> io::Result<Vec<(K, V)>> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut out = Vec::new();
    // The hash map's batch cursor is a bucket index (u32).
    let mut cursor: u32 = 0;
    let mut next: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map_fd as u32,
            ..Default::default()
        };
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let got = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel wrote `got` entries into each buffer; K and V are Pod.
        unsafe {
            keys.set_len(got);
            values.set_len(got);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        cursor = next;
        first = false;
    }
}

/// Writes every (key, value) pair into a hash or LRU hash map. `K` and `V` must be the map's
/// exact key and value types (plain `#[repr(C)]` data).
pub fn write_all<K: aya::Pod, V: aya::Pod>(map_fd: i32, entries: &[(K, V)]) -> io::Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map_fd as u32,
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
