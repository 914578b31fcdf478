//! Owns the kernel objects: loads the embedded eBPF object (optionally adopting maps pinned
//! by an earlier daemon), attaches the programs, and gives typed access to every map.
//! This is the only place in user space that writes to the kernel's maps.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use monitor_common::{
    addr::AddrKey,
    config::{Config, ConfigSlots},
    maps::{
        ALL_MAPS, Ban, Bucket, ListEntry, MAP_AGGREGATES, MAP_ALLOW, MAP_BANS, MAP_CONFIG,
        MAP_DENY, MAP_EVENTS, MAP_PORTS, MAP_SOURCES, MAP_STATS, PROG_TC, PROG_XDP,
    },
    stats::{STAT_COUNT, Stat},
};

use crate::cidr::Cidr;

/// The eBPF object built by build.rs (aya-build) from `monitor-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "loading the eBPF object failed: {0} (are you root, or have CAP_BPF and CAP_NET_ADMIN?)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "map or program {0} missing from the eBPF object (was it built from this source tree?)"
    )]
    Missing(&'static str),
    #[error(
        "creating pin directory {path}: {source} (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("batched map read failed: {0}")]
    Batch(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, KernelError>;

/// Which list an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    fn map_name(self) -> &'static str {
        match self {
            List::Allow => MAP_ALLOW,
            List::Deny => MAP_DENY,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the tracked-sources table.
    pub max_sources: u32,
    /// When set, every map is pinned as `<dir>/<MAP_NAME>`, and maps already pinned there are
    /// adopted (counters, bans and lists survive a daemon restart).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_sources: 4096,
            pin_dir: None,
        }
    }
}

/// See [`Kernel::table_reader`].
pub struct TableReader {
    sources: OwnedFd,
    aggregates: OwnedFd,
    bans: OwnedFd,
}

impl TableReader {
    pub fn sources(&self) -> Result<Vec<(AddrKey, Bucket)>> {
        crate::batch::read_all(self.sources.as_raw_fd()).map_err(KernelError::Batch)
    }

    pub fn aggregates(&self) -> Result<Vec<(AddrKey, Bucket)>> {
        crate::batch::read_all(self.aggregates.as_raw_fd()).map_err(KernelError::Batch)
    }

    pub fn bans(&self) -> Result<Vec<(AddrKey, Ban)>> {
        crate::batch::read_all(self.bans.as_raw_fd()).map_err(KernelError::Batch)
    }
}

/// The kernel statistics, summed over CPUs, indexed by `Stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub [u64; STAT_COUNT as usize]);

impl Stats {
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }
}

pub struct Kernel {
    ebpf: Ebpf,
    /// `MON_CONFIG` mapped into this process, made on the first `set_config`.
    config_map: Option<ConfigMapping>,
}

/// A shared mapping of `MON_CONFIG` (created `BPF_F_MMAPABLE`): the config writer stores the
/// idle slot and then the index directly, in that order, which a map-update syscall (one
/// memcpy of the whole value, index included, in no stated order) cannot promise.
struct ConfigMapping {
    ptr: *mut ConfigSlots,
    len: usize,
}

// SAFETY: the mapping is owned by one `Kernel` and written only through `&mut Kernel`.
unsafe impl Send for ConfigMapping {}
unsafe impl Sync for ConfigMapping {}

impl ConfigMapping {
    fn new(fd: i32) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = std::mem::size_of::<ConfigSlots>().div_ceil(page) * page;
        // SAFETY: maps `len` bytes of the array's value area, which the kernel rounds up to
        // whole pages; the mapping keeps the map alive until munmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for ConfigMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Waits until every program run that began before the call has finished (an RCU grace
/// period): XDP and TC programs run inside RCU read-side sections, and `membarrier`'s global
/// command is `synchronize_rcu()`. Kernels booted with `nohz_full` refuse that command; there a
/// sleep stands in, far longer than a program run (microseconds, with bottom halves off).
fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Kernel {
    /// Loads the object and both programs (not attached). Nothing is written to the maps:
    /// `MON_CONFIG` carries no magic until `set_config` runs (the programs pass everything),
    /// and no port is monitored.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        Self::load_object(OBJECT, opts)
    }

    /// `load` with another build of the object (the tests' `test-clock` build).
    pub fn load_object(object: &[u8], opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_SOURCES, opts.max_sources.max(1));
        let pins: Vec<(&'static str, PathBuf)>;
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| KernelError::PinDir {
                path: dir.clone(),
                source,
            })?;
            pins = ALL_MAPS
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect();
            for (name, path) in &pins {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| KernelError::Load(Box::new(e)))?;
        for name in [PROG_XDP, PROG_TC] {
            let program = ebpf.program_mut(name).ok_or(KernelError::Missing(name))?;
            let result = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => return Err(KernelError::Missing(name)),
            };
            result.map_err(|source| KernelError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            config_map: None,
        })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        self.program(PROG_XDP)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        self.program(PROG_TC)
    }

    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing(name))?;
        program
            .try_into()
            .map_err(|source| KernelError::Program { name, source })
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf.map(name).ok_or(KernelError::Missing(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or(KernelError::Missing(name))
    }

    /// A typed view of a map; `name` is also the error's label.
    fn typed<'a, T>(&'a self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        T::try_from(self.map(name)?).map_err(|source| KernelError::Map { name, source })
    }

    fn typed_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        T::try_from(self.map_mut(name)?).map_err(|source| KernelError::Map { name, source })
    }

    fn map_err(name: &'static str) -> impl Fn(MapError) -> KernelError {
        move |source| KernelError::Map { name, source }
    }

    /// The live config (all zeros, without its magic, before the first `set_config`).
    pub fn config(&self) -> Result<Config> {
        let array: Array<&MapData, ConfigSlots> = self.typed(MAP_CONFIG)?;
        let slots = array.get(&0, 0).map_err(Self::map_err(MAP_CONFIG))?;
        Ok(*slots.live())
    }

    /// Replaces the live config so that each packet sees the old one or the new one, never a
    /// mix: writes the idle slot, publishes it, then waits until no program run can still be
    /// reading the old slot, which the next call will overwrite (see `monitor_common::config`).
    /// Costs one RCU grace period (milliseconds); packets are never held up.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        if self.config_map.is_none() {
            let fd = match self.map(MAP_CONFIG)? {
                Map::Array(m) => m.fd().as_fd().as_raw_fd(),
                _ => return Err(KernelError::Missing(MAP_CONFIG)),
            };
            let mapping = ConfigMapping::new(fd).map_err(|e| KernelError::Map {
                name: MAP_CONFIG,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: e,
                }),
            })?;
            self.config_map = Some(mapping);
        }
        let slots = self
            .config_map
            .as_ref()
            .map(|m| m.ptr)
            .expect("mapped above");
        // SAFETY: `slots` points at the mapped value. Only this writer stores to it; readers
        // never read the idle slot, and the last call waited for every run that read it while
        // it was live. The index is published with release ordering after the slot's bytes.
        unsafe {
            let active = std::sync::atomic::AtomicU32::from_ptr(&raw mut (*slots).active);
            let idle = (active.load(std::sync::atomic::Ordering::Relaxed) & 1) ^ 1;
            std::ptr::write_volatile(&raw mut (*slots).slots[idle as usize], *config);
            active.store(idle, std::sync::atomic::Ordering::Release);
        }
        wait_for_program_runs();
        Ok(())
    }

    /// Sets the `port_flags` of one port (0 stops monitoring it).
    pub fn set_port(&mut self, port: u16, flags: u8) -> Result<()> {
        let mut array: Array<&mut MapData, u8> = self.typed_mut(MAP_PORTS)?;
        array
            .set(port as u32, flags, 0)
            .map_err(Self::map_err(MAP_PORTS))
    }

    /// Monitored ports and their `port_flags`.
    pub fn ports(&self) -> Result<Vec<(u16, u8)>> {
        let array: Array<&MapData, u8> = self.typed(MAP_PORTS)?;
        let mut out = Vec::new();
        for (port, flags) in array.iter().enumerate() {
            let flags = flags.map_err(Self::map_err(MAP_PORTS))?;
            if flags != 0 {
                out.push((port as u16, flags));
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats> {
        let array: PerCpuArray<&MapData, u64> = self.typed(MAP_STATS)?;
        let mut stats = Stats::default();
        for stat in Stat::ALL {
            let per_cpu = array
                .get(&(*stat as u32), 0)
                .map_err(Self::map_err(MAP_STATS))?;
            stats.0[*stat as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    pub fn source(&self, key: &AddrKey) -> Result<Option<Bucket>> {
        self.lookup(MAP_SOURCES, key)
    }

    pub fn aggregate(&self, key: &AddrKey) -> Result<Option<Bucket>> {
        self.lookup(MAP_AGGREGATES, key)
    }

    fn lookup(&self, name: &'static str, key: &AddrKey) -> Result<Option<Bucket>> {
        let map: HashMap<&MapData, AddrKey, Bucket> = self.typed(name)?;
        match map.get(key, 0) {
            Ok(b) => Ok(Some(b)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::Map { name, source }),
        }
    }

    /// Every tracked source, read with batched lookups (a million entries in well under a second).
    pub fn sources(&self) -> Result<Vec<(AddrKey, Bucket)>> {
        crate::batch::read_all(self.map_fd(MAP_SOURCES)?).map_err(KernelError::Batch)
    }

    pub fn aggregates(&self) -> Result<Vec<(AddrKey, Bucket)>> {
        crate::batch::read_all(self.map_fd(MAP_AGGREGATES)?).map_err(KernelError::Batch)
    }

    pub fn bans(&self) -> Result<Vec<(AddrKey, Ban)>> {
        crate::batch::read_all(self.map_fd(MAP_BANS)?).map_err(KernelError::Batch)
    }

    /// Read-only handles on the tracked-source, aggregate and ban tables that work without
    /// borrowing the `Kernel`, so a sampler can walk a million entries while map writes go on.
    pub fn table_reader(&self) -> Result<TableReader> {
        let dup = |name: &'static str| -> Result<OwnedFd> {
            let fd = self.map_fd(name)?;
            // SAFETY: `fd` belongs to a map this `Kernel` owns and is open for this call.
            unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .map_err(KernelError::Batch)
        };
        Ok(TableReader {
            sources: dup(MAP_SOURCES)?,
            aggregates: dup(MAP_AGGREGATES)?,
            bans: dup(MAP_BANS)?,
        })
    }

    fn map_fd(&self, name: &'static str) -> Result<i32> {
        let fd = match self.map(name)? {
            Map::HashMap(m) | Map::LruHashMap(m) => m.fd().as_fd().as_raw_fd(),
            _ => return Err(KernelError::Missing(name)),
        };
        Ok(fd)
    }

    /// Stores a ban the way the kernel does (authoritative entry; the bucket copy is refreshed
    /// by the kernel when the bucket is next missing).
    pub fn set_ban(&mut self, key: &AddrKey, until_ns: u64) -> Result<()> {
        let mut map: HashMap<&mut MapData, AddrKey, Ban> = self.typed_mut(MAP_BANS)?;
        map.insert(key, Ban { until_ns }, 0)
            .map_err(Self::map_err(MAP_BANS))?;
        let mut sources: HashMap<&mut MapData, AddrKey, Bucket> = self.typed_mut(MAP_SOURCES)?;
        if let Ok(mut bucket) = sources.get(key, 0) {
            bucket.ban_until_ns = until_ns;
            let _ = sources.insert(key, bucket, 2 /* BPF_EXIST */);
        }
        Ok(())
    }

    /// Lifts a ban (both the authoritative entry and the bucket's copy).
    pub fn clear_ban(&mut self, key: &AddrKey) -> Result<bool> {
        let mut map: HashMap<&mut MapData, AddrKey, Ban> = self.typed_mut(MAP_BANS)?;
        let existed = match map.remove(key) {
            Ok(()) => true,
            Err(MapError::KeyNotFound) => false,
            Err(source) => {
                return Err(KernelError::Map {
                    name: MAP_BANS,
                    source,
                });
            }
        };
        let mut sources: HashMap<&mut MapData, AddrKey, Bucket> = self.typed_mut(MAP_SOURCES)?;
        if let Ok(mut bucket) = sources.get(key, 0)
            && bucket.ban_until_ns != 0
        {
            bucket.ban_until_ns = 0;
            let _ = sources.insert(key, bucket, 2 /* BPF_EXIST */);
        }
        Ok(existed)
    }

    pub fn list_insert(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()> {
        let name = list.map_name();
        let mut trie: LpmTrie<&mut MapData, [u8; 16], ListEntry> = self.typed_mut(name)?;
        let (key, len) = cidr.to_mapped();
        trie.insert(&Key::new(len, key.addr), ListEntry { expires_ns }, 0)
            .map_err(Self::map_err(name))
    }

    /// Removes an entry; false when it was not there.
    pub fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool> {
        let name = list.map_name();
        let mut trie: LpmTrie<&mut MapData, [u8; 16], ListEntry> = self.typed_mut(name)?;
        let (key, len) = cidr.to_mapped();
        match trie.remove(&Key::new(len, key.addr)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(KernelError::Map { name, source }),
        }
    }

    pub fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>> {
        let name = list.map_name();
        let trie: LpmTrie<&MapData, [u8; 16], ListEntry> = self.typed(name)?;
        let mut out = Vec::new();
        for item in trie.iter() {
            let (key, entry) = item.map_err(Self::map_err(name))?;
            let addr = AddrKey { addr: key.data() };
            out.push((Cidr::from_mapped(&addr, key.prefix_len()), entry));
        }
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    /// The event ring buffer, taken out of the object (call once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(KernelError::Missing(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(Self::map_err(MAP_EVENTS))
    }

    /// Removes every map pin under `dir` that this project creates (used on a clean stop).
    pub fn remove_pins(dir: &Path) {
        for name in ALL_MAPS {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}
