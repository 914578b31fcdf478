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
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use monitor_common::{
    addr::{AddrKey, ListAddr},
    config::{Config, ConfigSlots},
    maps::{
        ALL_MAPS, Ban, Bucket, FleetConfig, FleetCount, ListEntry, MAP_AGGREGATES, MAP_ALLOW,
        MAP_BANS, MAP_CONFIG, MAP_DENY, MAP_EVENTS, MAP_FLEET_CONFIG, MAP_FLEET_HITTERS, MAP_PORTS,
        MAP_SOURCES, MAP_STATS, PROG_SET_BAN, PROG_TC, PROG_XDP, SetBan, set_ban,
    },
    stats::{STAT_COUNT, Stat},
    table::{SourceSlot, TableShape, sets_for},
};

use crate::{cidr::Cidr, source_table::SourceTable};

/// The eBPF object built by build.rs (aya-build) from `monitor-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object failed: {0}{hint}", hint = load_hint(.0))]
    Load(#[source] Box<aya::EbpfError>),
    #[error("not permitted to {what}: {source} ({PRIVILEGE_HINT})")]
    Permission {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel's verifier rejected program {name} ({source}); its last line: {last}; \
         set {VERIFIER_LOG_ENV}=N to print its last N lines"
    )]
    Verifier {
        name: &'static str,
        source: std::io::Error,
        last: String,
        /// The verifier's whole log.
        log: String,
    },
    #[error("adopting the maps pinned under {dir}: {detail}")]
    Adopt { dir: PathBuf, detail: String },
    #[error("{0}")]
    PinMismatch(String),
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
    #[error("writing a bucket's ban in place: {PROG_SET_BAN} returned {0}")]
    SetBan(u32),
    #[error("batched map read failed: {0}")]
    Batch(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, KernelError>;

/// What loading and attaching need (kernel 5.8 and later; root has them all).
pub const PRIVILEGE_HINT: &str = "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";
/// Set to a number of lines to see the end of the verifier's log when it rejects a program.
pub const VERIFIER_LOG_ENV: &str = "MONITOR_VERIFIER_LOG";

fn is_permission(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

fn load_hint(e: &aya::EbpfError) -> &'static str {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && is_permission(io)
        {
            return " (run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)";
        }
        source = err.source();
    }
    ""
}

impl KernelError {
    /// The last `n` lines of the verifier's log, when this is a verifier rejection.
    pub fn verifier_tail(&self, n: usize) -> Option<String> {
        let KernelError::Verifier { log, .. } = self else {
            return None;
        };
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        Some(lines[lines.len().saturating_sub(n)..].join("\n"))
    }
}

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
    /// The source table's hash seed. None: the seed of the adopted table, or a random one
    /// for a new table. Tests fix it so that where each source lands is the same every run.
    pub table_seed: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_sources: 4096,
            pin_dir: None,
            table_seed: None,
        }
    }
}

/// See [`Kernel::table_reader`].
pub struct TableReader {
    sources: std::sync::Arc<SourceTable>,
    aggregates: OwnedFd,
    bans: OwnedFd,
}

impl TableReader {
    pub fn bans(&self) -> Result<Vec<(AddrKey, Ban)>> {
        crate::batch::read_all(self.bans.as_raw_fd()).map_err(KernelError::Batch)
    }

    /// A chunked walk over the tracked-source table (read through its shared mapping).
    pub fn walk_sources(&self, chunk: usize) -> TableWalk {
        TableWalk::Sources {
            table: self.sources.clone(),
            next_set: 0,
            chunk,
        }
    }

    /// A chunked walk over the aggregate table.
    pub fn walk_aggregates(&self, chunk: usize) -> TableWalk {
        TableWalk::Buckets(crate::batch::Walk::new(self.aggregates.as_raw_fd(), chunk))
    }
}

/// A walk over the source table or the aggregate table, from a [`TableReader`]. Sources are
/// reported as `Bucket`s (`source_table::report`), so both levels read alike.
pub enum TableWalk {
    Sources {
        table: std::sync::Arc<SourceTable>,
        next_set: u32,
        chunk: usize,
    },
    Buckets(crate::batch::Walk<AddrKey, Bucket>),
}

impl TableWalk {
    /// Appends the next chunk; false once the table has been walked to its end.
    pub fn next_chunk(&mut self, out: &mut Vec<(AddrKey, Bucket)>) -> Result<bool> {
        match self {
            Self::Sources {
                table,
                next_set,
                chunk,
            } => {
                *next_set = table.read_from(*next_set, *chunk, out);
                Ok(*next_set < table.shape().sets)
            }
            Self::Buckets(walk) => walk.next_chunk(out).map_err(KernelError::Batch),
        }
    }
}

/// How many times a program load is tried when the verifier was interrupted by a signal.
const VERIFIER_ATTEMPTS: u32 = 5;

/// Whether a program load failed only because a signal interrupted the verifier.
fn interrupted(e: &ProgramError) -> bool {
    matches!(e, ProgramError::LoadError { io_error, .. } if io_error.raw_os_error() == Some(libc::EAGAIN))
}

fn program_load_error(name: &'static str, source: ProgramError) -> KernelError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.raw_os_error() == Some(libc::EPERM) {
                return KernelError::Permission {
                    what: format!("load program {name}"),
                    source: io_error,
                };
            }
            let log = verifier_log.to_string();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(the verifier wrote no log)")
                .trim()
                .to_string();
            KernelError::Verifier {
                name,
                source: io_error,
                last,
                log,
            }
        }
        source => KernelError::Program { name, source },
    }
}

/// Compares every map pinned under `dir` with the object's definition of it, before aya
/// adopts it (aya reuses a pin without comparing). A table created by another build or with
/// another capacity is refused with one line that names the map, the difference and the fix.
///
/// `MON_CONFIG` is compared like every map (type, sizes, entries): a `Config` of another layout
/// has another value size and is refused. Once `Config` carries a magic number and a version,
/// the pinned value's magic and version belong here too (a same-size layout change).
fn check_pins(dir: &Path, source_sets: u32) -> Result<()> {
    let mut object = None;
    for name in ALL_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let object = match &mut object {
            Some(o) => o,
            None => object.insert(
                aya_obj::Object::parse(OBJECT)
                    .map_err(|e| KernelError::Load(Box::new(aya::EbpfError::ParseError(e))))?,
            ),
        };
        let Some(want) = object.maps.get(name) else {
            continue;
        };
        let pinned = aya::maps::MapInfo::from_pin(&path).map_err(|e| match &e {
            MapError::SyscallError(s) if is_permission(&s.io_error) => KernelError::Permission {
                what: format!("open the pinned map {}", path.display()),
                source: std::io::Error::from_raw_os_error(
                    s.io_error.raw_os_error().unwrap_or(libc::EPERM),
                ),
            },
            _ => KernelError::Adopt {
                dir: dir.to_path_buf(),
                detail: format!("{}: {e}", path.display()),
            },
        })?;
        let want_entries = if name == MAP_SOURCES {
            source_sets
        } else {
            want.max_entries()
        };
        let found_type = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        if let Some(line) = pin_mismatch(
            name,
            &path,
            (
                want.map_type(),
                want.key_size(),
                want.value_size(),
                want_entries,
            ),
            (
                found_type,
                pinned.key_size(),
                pinned.value_size(),
                pinned.max_entries(),
            ),
        ) {
            return Err(KernelError::PinMismatch(line));
        }
    }
    Ok(())
}

/// One line naming the map, the difference and the fix, or None when they agree.
/// Tuples are (type, key size, value size, max entries).
pub fn pin_mismatch(
    name: &str,
    path: &Path,
    want: (u32, u32, u32, u32),
    found: (u32, u32, u32, u32),
) -> Option<String> {
    let dir = path.parent().unwrap_or(path).display();
    let remove = format!(
        "or stop the program and remove {dir} (its counters, bans and live list entries go with it)"
    );
    if want.0 != found.0 || want.1 != found.1 || want.2 != found.2 {
        return Some(format!(
            "{name} pinned at {} has type {}, key {} bytes, value {} bytes; this build wants type \
             {}, key {} bytes, value {} bytes: it was made by another build of monitor; run that \
             build, {remove}",
            path.display(),
            found.0,
            found.1,
            found.2,
            want.0,
            want.1,
            want.2
        ));
    }
    if want.3 != found.3 {
        if name == MAP_SOURCES {
            // The table's entries are sets; operators speak of sources.
            let sources = |sets: u32| {
                TableShape {
                    sets,
                    ..TableShape::default()
                }
                .capacity()
            };
            return Some(format!(
                "{name} pinned with room for {} sources, this run wants {}: restart with \
                 --max-sources {}, {remove}",
                sources(found.3),
                sources(want.3),
                sources(found.3)
            ));
        }
        return Some(format!(
            "{name} pinned with {} entries, this run wants {}: {remove}",
            found.3, want.3
        ));
    }
    None
}

/// What one sweep of expired state deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub bans: usize,
    pub allow: usize,
    pub deny: usize,
}

/// See [`Kernel::fleet_reader`].
pub struct FleetReader {
    fd: OwnedFd,
}

impl FleetReader {
    /// Every fleet candidate (at most `MAX_FLEET_HITTERS`), read with batched lookups.
    pub fn candidates(&self) -> Result<Vec<(AddrKey, FleetCount)>> {
        crate::batch::read_all(self.fd.as_raw_fd()).map_err(KernelError::Batch)
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
    /// The source table's seed and size, written into every config (`set_config`).
    table: TableShape,
    /// `MON_SOURCES` mapped into this process, made on first use.
    sources_view: std::sync::OnceLock<std::sync::Arc<SourceTable>>,
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

/// A seed for a new source table, from the kernel's random source.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        // Not reachable on the kernels this runs on (getrandom exists since 3.17 and does
        // not fail for 8 bytes once the pool is ready); the clock still varies per host.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
    }
    u64::from_ne_bytes(seed) | 1
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
        let max_sources = opts.max_sources.max(1);
        let source_sets = sets_for(max_sources);
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_SOURCES, source_sets);
        let pins: Vec<(&'static str, PathBuf)>;
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| KernelError::PinDir {
                path: dir.clone(),
                source,
            })?;
            check_pins(dir, source_sets)?;
            pins = ALL_MAPS
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect();
            for (name, path) in &pins {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader.load(object).map_err(|e| match (&opts.pin_dir, &e) {
            (Some(dir), aya::EbpfError::MapError(MapError::PinError { .. }))
                if load_hint(&e).is_empty() =>
            {
                KernelError::Adopt {
                    dir: dir.clone(),
                    detail: format!(
                        "{e}; stop any other monitor using them, or remove {} to start afresh",
                        dir.display()
                    ),
                }
            }
            _ => KernelError::Load(Box::new(e)),
        })?;
        for name in [PROG_XDP, PROG_TC, PROG_SET_BAN] {
            let program = ebpf.program_mut(name).ok_or(KernelError::Missing(name))?;
            let mut attempt = 1;
            loop {
                let result = match &mut *program {
                    aya::programs::Program::Xdp(p) => p.load(),
                    aya::programs::Program::SchedClassifier(p) => p.load(),
                    _ => return Err(KernelError::Missing(name)),
                };
                match result {
                    Ok(()) => break,
                    // The verifier gives up with EAGAIN when a signal arrives while it works
                    // (a second or more for the classifier); libbpf retries the same way.
                    Err(e) if attempt < VERIFIER_ATTEMPTS && interrupted(&e) => attempt += 1,
                    Err(e) => return Err(program_load_error(name, e)),
                }
            }
        }
        let mut kernel = Self {
            ebpf,
            config_map: None,
            table: TableShape::default(),
            sources_view: std::sync::OnceLock::new(),
        };
        // An adopted table keeps the seed its entries were placed with (the pinned config
        // carries it); a new one gets a fresh random seed.
        let adopted = kernel
            .config()
            .ok()
            .filter(|c| c.is_valid() && c.table.sets == source_sets && c.table.seed != 0)
            .map(|c| c.table.seed);
        let seed = opts.table_seed.or(adopted).unwrap_or_else(random_seed);
        kernel.table = TableShape::for_sources(max_sources, seed);
        Ok(kernel)
    }

    /// The source table's seed and size.
    pub fn table_shape(&self) -> TableShape {
        self.table
    }

    /// The shared read-only mapping of the source table.
    pub fn source_table(&self) -> Result<std::sync::Arc<SourceTable>> {
        if let Some(view) = self.sources_view.get() {
            return Ok(view.clone());
        }
        let view = SourceTable::map(self.map_fd(MAP_SOURCES)?, self.table).map_err(|e| {
            KernelError::Map {
                name: MAP_SOURCES,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: e,
                }),
            }
        })?;
        Ok(self.sources_view.get_or_init(|| view).clone())
    }

    /// The kernel's ids of the source and aggregate tables: they name the very tables a saved
    /// sampler baseline was taken from.
    pub fn table_ids(&self) -> Result<(u32, u32)> {
        let id = |name: &'static str| -> Result<u32> {
            Ok(self
                .map_data(name)?
                .info()
                .map_err(Self::map_err(name))?
                .id())
        };
        Ok((id(MAP_SOURCES)?, id(MAP_AGGREGATES)?))
    }

    /// Capacity (max entries) of each table, by map name: what was created or adopted.
    pub fn capacities(&self) -> Vec<(&'static str, u32)> {
        ALL_MAPS
            .iter()
            .filter_map(|name| {
                let info = match self.ebpf.map(name)? {
                    Map::HashMap(m)
                    | Map::LruHashMap(m)
                    | Map::Array(m)
                    | Map::LpmTrie(m)
                    | Map::PerCpuArray(m)
                    | Map::RingBuf(m) => m.info().ok()?,
                    _ => return None,
                };
                let capacity = if *name == MAP_SOURCES {
                    self.table.capacity()
                } else {
                    info.max_entries()
                };
                Some((*name, capacity))
            })
            .collect()
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
        let config = &Config {
            table: self.table,
            ..*config
        };
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

    /// A tracked source as the reports see it (`source_table::report`).
    pub fn source(&self, key: &AddrKey) -> Result<Option<Bucket>> {
        Ok(self
            .source_table()?
            .find(key)
            .map(|slot| crate::source_table::report(&slot)))
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

    /// Puts sources into the table (`SourceTable::place`) with batched updates; returns how
    /// many found their set full. For tests and benchmarks that pre-fill a table.
    pub fn write_sources(&mut self, entries: &[(AddrKey, SourceSlot)]) -> Result<usize> {
        let table = self.source_table()?;
        let (sets, left_out) = table.place(entries);
        crate::batch::write_all(self.map_fd(MAP_SOURCES)?, &sets).map_err(KernelError::Batch)?;
        Ok(left_out)
    }

    /// Every tracked source, read through the table's shared mapping.
    pub fn sources(&self) -> Result<Vec<(AddrKey, Bucket)>> {
        Ok(self.source_table()?.all())
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
            sources: self.source_table()?,
            aggregates: dup(MAP_AGGREGATES)?,
            bans: dup(MAP_BANS)?,
        })
    }

    /// The map's data, for the kinds whose descriptor this wrapper reads directly (hashes and
    /// the source table's array).
    fn map_data(&self, name: &'static str) -> Result<&MapData> {
        match self.map(name)? {
            Map::HashMap(m) | Map::LruHashMap(m) | Map::Array(m) => Ok(m),
            _ => Err(KernelError::Missing(name)),
        }
    }

    fn map_fd(&self, name: &'static str) -> Result<i32> {
        Ok(self.map_data(name)?.fd().as_fd().as_raw_fd())
    }

    /// Switches fleet heavy-hitter marking on (or off, with the all-zero config).
    pub fn set_fleet_config(&mut self, config: &FleetConfig) -> Result<()> {
        let mut array: Array<&mut MapData, FleetConfig> = self.typed_mut(MAP_FLEET_CONFIG)?;
        array
            .set(0, config, 0)
            .map_err(Self::map_err(MAP_FLEET_CONFIG))
    }

    /// A read-only handle on the fleet candidate map, usable without borrowing the `Kernel`.
    pub fn fleet_reader(&self) -> Result<FleetReader> {
        let fd = self.map_fd(MAP_FLEET_HITTERS)?;
        // SAFETY: `fd` belongs to a map this `Kernel` owns and is open for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(KernelError::Batch)?;
        Ok(FleetReader { fd })
    }

    /// Stores a ban the way the kernel does: the authoritative `MON_BANS` entry, then its copy
    /// in the source's slot, written in place by `PROG_SET_BAN` (only the state word, so the
    /// kernel's concurrent counter updates stand). A source with no slot picks the ban up from
    /// `MON_BANS` when it next sends.
    pub fn set_ban(&mut self, key: &AddrKey, until_ns: u64) -> Result<()> {
        let mut map: HashMap<&mut MapData, AddrKey, Ban> = self.typed_mut(MAP_BANS)?;
        map.insert(key, Ban { until_ns }, 0)
            .map_err(Self::map_err(MAP_BANS))?;
        self.set_bucket_ban(key, until_ns)?;
        Ok(())
    }

    /// Lifts a ban: the authoritative entry and the bucket's copy. True when `MON_BANS` had
    /// an entry or the bucket carried a ban.
    pub fn clear_ban(&mut self, key: &AddrKey) -> Result<bool> {
        let mut map: HashMap<&mut MapData, AddrKey, Ban> = self.typed_mut(MAP_BANS)?;
        let existed = match map.remove(key) {
            Ok(()) => true,
            Err(MapError::KeyNotFound) => false,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                false
            }
            Err(source) => {
                return Err(KernelError::Map {
                    name: MAP_BANS,
                    source,
                });
            }
        };
        let had_copy = self.source(key)?.is_some_and(|b| b.ban_until_ns != 0);
        if had_copy {
            self.set_bucket_ban(key, 0)?;
        }
        Ok(existed || had_copy)
    }

    /// Sets one bucket's `ban_until_ns` in place. False when the source has no bucket (the
    /// kernel then consults `MON_BANS` on its next packet).
    fn set_bucket_ban(&mut self, key: &AddrKey, until_ns: u64) -> Result<bool> {
        let input = SetBan {
            key: *key,
            until_ns,
        };
        // SAFETY: SetBan is plain #[repr(C)] data without padding (16 + 8 bytes).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const input).cast::<u8>(),
                std::mem::size_of::<SetBan>(),
            )
        };
        let program: &mut Xdp = self.program(PROG_SET_BAN)?;
        let run = program
            .test_run(TestRunOptions {
                data_in: Some(bytes),
                ..TestRunOptions::new()
            })
            .map_err(|source| KernelError::Program {
                name: PROG_SET_BAN,
                source,
            })?;
        match run.return_value {
            set_ban::WRITTEN => Ok(true),
            set_ban::NO_BUCKET => Ok(false),
            other => Err(KernelError::SetBan(other)),
        }
    }

    /// Deletes, in batches, every ban that ended at or before `now_ns` and every list entry that
    /// expired by then. The kernel deletes an expired ban only when its source comes back,
    /// which a spoofed address never does; without this sweep dead bans would fill the
    /// table and no new offender could be banned.
    ///
    /// A source whose ban ended and that is banned again between the read and the delete
    /// loses the new `MON_BANS` entry; its bucket keeps the ban's copy, so it stays banned
    /// unless the bucket is also evicted in that window.
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<Swept> {
        let bans_fd = self.map_fd(MAP_BANS)?;
        let dead: Vec<AddrKey> = crate::batch::read_all::<AddrKey, Ban>(bans_fd)
            .map_err(KernelError::Batch)?
            .into_iter()
            .filter(|(_, b)| b.until_ns <= now_ns)
            .map(|(k, _)| k)
            .collect();
        let bans = crate::batch::delete_all(bans_fd, &dead).map_err(KernelError::Batch)?;
        let mut lists = [0; 2];
        for (i, list) in [List::Allow, List::Deny].into_iter().enumerate() {
            let name = list.map_name();
            let expired: Vec<Key<ListAddr>> = self
                .list_entries(list)?
                .into_iter()
                .filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= now_ns)
                .map(|(cidr, _)| {
                    let (key, len) = cidr.to_list_key();
                    Key::new(len, key)
                })
                .collect();
            if expired.is_empty() {
                continue;
            }
            let fd = match self.map(name)? {
                Map::LpmTrie(m) => m.fd().as_fd().as_raw_fd(),
                _ => return Err(KernelError::Missing(name)),
            };
            lists[i] = crate::batch::delete_all(fd, &expired).map_err(KernelError::Batch)?;
        }
        Ok(Swept {
            bans,
            allow: lists[0],
            deny: lists[1],
        })
    }

    pub fn list_insert(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()> {
        let name = list.map_name();
        let mut trie: LpmTrie<&mut MapData, ListAddr, ListEntry> = self.typed_mut(name)?;
        let (key, len) = cidr.to_list_key();
        trie.insert(&Key::new(len, key), ListEntry { expires_ns }, 0)
            .map_err(Self::map_err(name))
    }

    /// Removes an entry; false when it was not there.
    pub fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool> {
        let name = list.map_name();
        let mut trie: LpmTrie<&mut MapData, ListAddr, ListEntry> = self.typed_mut(name)?;
        let (key, len) = cidr.to_list_key();
        match trie.remove(&Key::new(len, key)) {
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
        let trie: LpmTrie<&MapData, ListAddr, ListEntry> = self.typed(name)?;
        let mut out = Vec::new();
        for item in trie.iter() {
            let (key, entry) = item.map_err(Self::map_err(name))?;
            // Keys come only from `list_insert`; one in another layout (a pin from an older
            // build) is skipped rather than shown as a prefix it is not.
            if let Some(cidr) = Cidr::from_list_key(&key.data(), key.prefix_len()) {
                out.push((cidr, entry));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_error(errno: i32, log: &str) -> KernelError {
        program_load_error(
            PROG_XDP,
            ProgramError::LoadError {
                io_error: std::io::Error::from_raw_os_error(errno),
                verifier_log: aya_obj::VerifierLog::new(log.to_string()),
            },
        )
    }

    #[test]
    fn a_verifier_rejection_says_so_and_keeps_its_last_lines() {
        let e = load_error(
            libc::EACCES,
            "0: (b7) r0 = 0\n1: (85) call bpf_foo#999\nunknown func bpf_foo#999\n\n",
        );
        let msg = e.to_string();
        assert!(
            msg.contains("verifier rejected program monitor_xdp"),
            "{msg}"
        );
        assert!(msg.contains("unknown func bpf_foo#999"), "{msg}");
        assert!(msg.contains(VERIFIER_LOG_ENV), "{msg}");
        assert!(!msg.contains("CAP_"), "not a privilege problem: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(
            e.verifier_tail(2).unwrap(),
            "1: (85) call bpf_foo#999\nunknown func bpf_foo#999"
        );
    }

    #[test]
    fn a_permission_error_names_every_capability() {
        let msg = load_error(libc::EPERM, "").to_string();
        for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
            assert!(msg.contains(cap), "{msg}");
        }
        assert!(!msg.contains("verifier"), "{msg}");
    }

    #[test]
    fn a_pinned_map_that_differs_is_named_with_the_difference_and_the_fix() {
        let path = Path::new("/sys/fs/bpf/monitor/MON_SOURCES");
        let line = pin_mismatch(
            MAP_SOURCES,
            path,
            (2, 4, 128, sets_for(1_000_000)),
            (2, 4, 128, sets_for(2_000_000)),
        )
        .unwrap();
        assert!(
            line.starts_with(
                "MON_SOURCES pinned with room for 2000000 sources, this run wants 1000000: \
                 restart with --max-sources 2000000, or stop the program and remove \
                 /sys/fs/bpf/monitor"
            ),
            "{line}"
        );
        let line = pin_mismatch(
            MAP_BANS,
            Path::new("/p/MON_BANS"),
            (1, 16, 8, 65_536),
            (1, 16, 16, 65_536),
        )
        .unwrap();
        assert!(
            line.contains("value 16 bytes") && line.contains("value 8 bytes"),
            "{line}"
        );
        assert!(line.contains("another build"), "{line}");
        assert!(pin_mismatch(MAP_BANS, path, (1, 16, 8, 9), (1, 16, 8, 9)).is_none());
    }
}
