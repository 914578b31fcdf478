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
    let mut walk = Walk::new(map_fd, CHUNK);
    let mut out = Vec::new();
    while walk.next_chunk(&mut out)? {}
    Ok(out)
}

/// A walk over a hash or LRU hash map, one chunk of entries per system call, that can pause
/// between chunks: the sampler reads a million-entry table in small pieces with sleeps in
/// between, so that it never holds a CPU the data plane needs for long. Entries inserted or
/// deleted while the walk is paused may or may not be seen (the cursor is a bucket index);
/// an entry present throughout is seen exactly once.
pub struct Walk<K, V> {
    map_fd: i32,
    keys: Vec<K>,
    values: Vec<V>,
    /// The bucket to resume from; None before the first chunk.
    cursor: Option<u32>,
    done: bool,
}

impl<K: aya::Pod, V: aya::Pod> Walk<K, V> {
    /// A walk reading up to `chunk` entries per call (at least 1; a chunk smaller than the
    /// map's fullest bucket fails with ENOSPC, so keep it in the thousands).
    pub fn new(map_fd: i32, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        // Zeroed, not merely reserved: whatever count the kernel reports (or leaves untouched
        // when it fails before copying anything), every element up to `chunk` is initialised.
        // SAFETY: K and V are Pod (plain data for which all-zero bytes are a valid value).
        let (keys, values) = unsafe {
            (
                vec![std::mem::zeroed(); chunk],
                vec![std::mem::zeroed(); chunk],
            )
        };
        Self {
            map_fd,
            keys,
            values,
            cursor: None,
            done: false,
        }
    }

    /// Appends the next chunk to `out`. Returns whether more may follow (false once the walk
    /// has reached the end of the map; later calls then append nothing).
    pub fn next_chunk(&mut self, out: &mut Vec<(K, V)>) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let chunk = self.keys.len();
        // The hash map's batch cursor is a bucket index (u32).
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: self.cursor.as_ref().map_or(0, |c| c as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: self.map_fd as u32,
            ..Default::default()
        };
        let ret = batch_syscall(BPF_MAP_LOOKUP_BATCH, &mut attr);
        self.done = match (ret < 0).then(io::Error::last_os_error) {
            None => false,
            // ENOENT: the walk reached the end; `count` says how many entries came with it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // Any other failure: the buffers' contents are not a consistent chunk.
            Some(e) => return Err(e),
        };
        let got = (attr.count as usize).min(chunk);
        out.extend(
            self.keys[..got]
                .iter()
                .copied()
                .zip(self.values[..got].iter().copied()),
        );
        self.cursor = Some(next);
        Ok(!self.done)
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
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    /// A fresh BPF hash map (needs CAP_BPF, as the daemon does).
    fn hash_map(max_entries: u32) -> OwnedFd {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 8,
            max_entries,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &attr as *const CreateAttr,
                size_of::<CreateAttr>() as u32,
            )
        };
        assert!(
            fd >= 0,
            "creating a BPF map failed (run as root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// The sampler pauses between chunks: a walk in small chunks must see every entry exactly
    /// once, and report its end.
    #[test]
    fn a_chunked_walk_sees_every_entry_once() {
        let map = hash_map(10_000);
        let entries: Vec<(u32, u64)> = (0..10_000u32).map(|i| (i, u64::from(i) * 3)).collect();
        write_all(map.as_raw_fd(), &entries).unwrap();
        let mut walk = Walk::<u32, u64>::new(map.as_raw_fd(), 700);
        let mut seen = Vec::new();
        let mut calls = 0;
        while walk.next_chunk(&mut seen).unwrap() {
            calls += 1;
            assert!(calls < 1000, "the walk never ended");
        }
        assert!(
            calls >= 10_000 / 700,
            "{calls} chunks for 10,000 entries of 700"
        );
        assert!(
            !walk.next_chunk(&mut seen).unwrap(),
            "a finished walk stays finished"
        );
        seen.sort_unstable();
        assert_eq!(seen, entries);
        assert_eq!(read_all::<u32, u64>(map.as_raw_fd()).unwrap().len(), 10_000);
    }

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
