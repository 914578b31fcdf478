//! Whole-map reads, writes and deletes with `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_UPDATE_BATCH` /
//! `BPF_MAP_DELETE_BATCH`: thousands of entries per system call, where aya's iterator costs
//! two calls per entry. `monitor top` over a million tracked sources depends on the reads; the
//! daemon's sweep of expired bans and list entries uses the deletes; benchmarks and scale tests
//! pre-fill tables with the writes.

use std::{io, mem::size_of};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
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
    // Zeroed, not merely reserved: whatever count the kernel reports (or leaves untouched when
    // it fails before copying anything), every element up to CHUNK is initialised. Pod types
    // are valid as all zeros.
    // SAFETY: K and V are Pod (plain data for which all-zero bytes are a valid value).
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; CHUNK];
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
        let ret = batch_syscall(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match (ret < 0).then(io::Error::last_os_error) {
            None => false,
            // ENOENT: the walk reached the end; `count` says how many entries came with it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // Any other failure: the buffers' contents are not a consistent chunk.
            Some(e) => return Err(e),
        };
        let got = (attr.count as usize).min(CHUNK);
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        if done {
            return Ok(out);
        }
        cursor = next;
        first = false;
    }
}

/// One batch command on `attr` (the kernel reads and updates it in place); the raw return.
fn batch_syscall(cmd: libc::c_long, attr: &mut BatchAttr) -> libc::c_long {
    // SAFETY: `attr` is a valid, exclusively borrowed `bpf_attr` prefix of the size passed; the
    // buffers it points to are owned by the caller and sized for `attr.count` entries.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
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
        let ret = batch_syscall(BPF_MAP_UPDATE_BATCH, &mut attr);
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Deletes `keys` from a map (hash, LRU hash or LPM trie; `K` is the map's exact key type).
/// Keys already gone (expired and removed by the kernel meanwhile) are skipped. Returns how
/// many were deleted.
pub fn delete_all<K: aya::Pod>(map_fd: i32, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map_fd as u32,
            ..Default::default()
        };
        let ret = batch_syscall(BPF_MAP_DELETE_BATCH, &mut attr);
        // On failure `count` is the number deleted before the failing key.
        let done = (attr.count as usize).min(chunk.len());
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
            deleted += done;
            // Skip the key that was no longer there and go on after it.
            rest = &rest[done + 1..];
        } else {
            deleted += chunk.len();
            rest = &rest[chunk.len()..];
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor that is not a map: the kernel refuses the call before it copies anything.
    /// The read must return that error, with no entries made up from the buffers.
    #[test]
    fn a_failed_batch_read_returns_the_error_and_no_entries() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let err = read_all::<[u8; 16], u64>(fd).expect_err("/dev/null is not a map");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EINVAL | libc::EBADF | libc::EPERM)
            ),
            "{err}"
        );
        let err = read_all::<[u8; 16], u64>(-1).expect_err("-1 is not a descriptor");
        assert!(err.raw_os_error().is_some(), "{err}");
        let err = delete_all::<[u8; 16]>(fd, &[[0; 16]]).expect_err("/dev/null is not a map");
        assert!(err.raw_os_error().is_some(), "{err}");
    }
}
