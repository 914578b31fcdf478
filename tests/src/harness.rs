//! The real eBPF object loaded into the kernel, driven with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use aya::{
    maps::{Array, MapData},
    programs::{ProgramError, TestRun, TestRunOptions},
};
use monitor::kernel::{Kernel, LoadOptions, Stats};
use monitor_common::{
    addr::{AddrKey, AddrMask},
    config::{Config, count_mode, port_flags},
    maps::{Bucket, MAP_TEST_CLOCK},
    rate::{COARSE_MARGIN_NS, Limit, NANOS_PER_SEC},
    stats::Stat,
};

use crate::conns::{Conns, ThreadNetns, tcp_tuple};

/// The attach points; every classifier test runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

pub const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The port tests monitor unless they say otherwise.
pub const LOOKUP_PORT: u16 = 8443;

/// The source table's seed in tests: where each source lands is then the same every run, so a
/// test's outcome never depends on which sources happened to share a set.
pub const TEST_TABLE_SEED: u64 = 0x5eed_0f7e_5757_eed5;

/// The object built by tests/build.rs with the `test-clock` feature: `now` is what the test
/// writes with [`Loaded::set_now`] (the real clock until then).
pub static TEST_CLOCK_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

/// Which build of the kernel object a test loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The daemon's own object.
    Production,
    /// The `test-clock` build.
    TestClock,
}

/// The loaded object, run from a thread in a private network namespace (see `conns`).
///
/// `run` and its relatives give every TCP frame a real connection with its exact addresses
/// and ports first, when the live counting mode is one that counts only segments of real
/// connections (`payload`, `http`): the frames stand for a real client's segments.
/// `run_spoofed` sends a frame with no connection behind it, as an off-path forger would.
pub struct Loaded {
    pub kernel: Kernel,
    pub conns: Conns,
    // Dropped last: the sockets above live in it.
    _netns: ThreadNetns,
}

impl Loaded {
    /// Loads the object with a small source table, monitors TCP and UDP on `LOOKUP_PORT`, and
    /// writes `config`.
    pub fn new(config: Config) -> Self {
        Self::with_capacity(config, 4096)
    }

    pub fn with_capacity(config: Config, max_sources: u32) -> Self {
        Self::load(config, max_sources, Object::Production)
    }

    /// The `test-clock` object, its clock set to `now_ns` (so every arrival time is exact).
    pub fn clocked(config: Config, now_ns: u64) -> Self {
        let mut k = Self::load(config, 4096, Object::TestClock);
        k.set_now(now_ns);
        k
    }

    pub fn load(config: Config, max_sources: u32, object: Object) -> Self {
        let netns = ThreadNetns::enter();
        let opts = LoadOptions {
            max_sources,
            pin_dir: None,
            table_seed: Some(TEST_TABLE_SEED),
        };
        let mut kernel = match object {
            Object::Production => Kernel::load(&opts),
            Object::TestClock => Kernel::load_object(TEST_CLOCK_OBJECT, &opts),
        }
        .expect("load the eBPF object (tests need root)");
        kernel.set_config(&config).expect("write config");
        kernel
            .set_port(LOOKUP_PORT, port_flags::TCP | port_flags::UDP)
            .expect("monitor the lookup port");
        Self {
            kernel,
            conns: Conns::default(),
            _netns: netns,
        }
    }

    /// Sets the `test-clock` object's `now` (panics on the production object, which has no
    /// clock map: a test that means to control time must not silently run on the real clock).
    pub fn set_now(&mut self, now_ns: u64) {
        assert!(now_ns != 0, "0 means the real clock");
        self.test_clock()
            .set(0, now_ns, 0)
            .expect("write the test clock");
    }

    /// Makes the `test-clock` object's coarse clock lag its fine `now` by `lag_ns` (at most
    /// `COARSE_MARGIN_NS`, the largest lag the kernel allows for).
    pub fn set_coarse_lag(&mut self, lag_ns: u64) {
        assert!(
            lag_ns <= COARSE_MARGIN_NS,
            "a lag beyond the margin is outside what the kernel allows for"
        );
        self.test_clock().set(1, lag_ns, 0).expect("write the lag");
    }

    /// Requests the `test-clock` object refused on the coarse clock alone.
    pub fn coarse_refusals(&mut self) -> u64 {
        self.test_clock()
            .get(&2, 0)
            .expect("read the coarse refusals")
    }

    fn test_clock(&mut self) -> Array<&mut MapData, u64> {
        let map = self
            .kernel
            .ebpf_mut()
            .map_mut(MAP_TEST_CLOCK)
            .expect("the test clock needs the test-clock object (Loaded::clocked)");
        Array::try_from(map).expect("clock map")
    }

    /// Runs `frame` at `now_ns` on the test clock.
    pub fn run_at(&mut self, hook: Hook, frame: &[u8], now_ns: u64) -> Verdict {
        self.set_now(now_ns);
        self.run(hook, frame)
    }

    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> Verdict {
        self.run_repeat(hook, frame, 1).0
    }

    /// Runs a frame with no connection behind it, whatever the counting mode.
    pub fn run_spoofed(&mut self, hook: Hook, frame: &[u8]) -> Verdict {
        self.run_test(hook, frame, 1).expect("BPF_PROG_TEST_RUN").0
    }

    /// Opens the connection a TCP frame belongs to, if the live mode needs one.
    fn connect_for(&mut self, frame: &[u8]) {
        let mode = self.config().count_mode;
        if mode == count_mode::SYN || mode == count_mode::PACKETS {
            return;
        }
        if let Some(tuple) = tcp_tuple(frame)
            && let Err(why) = self.conns.ensure(tuple)
        {
            eprintln!("no connection for {tuple:?}: {why}; the frame runs without one");
        }
    }

    /// Runs one frame `repeat` times; returns the last verdict and the kernel's mean ns per run.
    /// On XDP a `repeat` above 1 makes the kernel swap the program into its XDP dispatcher and
    /// wait for an RCU grace period (tens of ms on this machine) per call, unless the program
    /// is attached somewhere: use few large repeats there, never many small ones.
    pub fn run_repeat(&mut self, hook: Hook, frame: &[u8], repeat: u32) -> (Verdict, u64) {
        self.try_run_repeat(hook, frame, repeat)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// One run, returning the kernel's refusal (a frame shorter than Ethernet, say) as an error.
    pub fn try_run(&mut self, hook: Hook, frame: &[u8]) -> Result<Verdict, ProgramError> {
        self.try_run_repeat(hook, frame, 1).map(|(v, _)| v)
    }

    fn try_run_repeat(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, u64), ProgramError> {
        self.connect_for(frame);
        self.run_test(hook, frame, repeat)
    }

    fn run_test(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, u64), ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        };
        let result = match hook {
            Hook::Xdp => self.kernel.xdp().expect("xdp").test_run(opts),
            Hook::Tc => self.kernel.tc().expect("tc").test_run(opts),
        }?;
        let verdict = match (hook, result.return_value) {
            (Hook::Xdp, 2) | (Hook::Tc, 0) => Verdict::Pass,
            (Hook::Xdp, 1) | (Hook::Tc, 2) => Verdict::Drop,
            (h, v) => panic!("{h:?} returned unexpected action {v}"),
        };
        Ok((verdict, result.duration.as_nanos() as u64))
    }

    /// Runs one frame `n` times as separate runs (each its own verdict, unlike `repeat`).
    pub fn run_each(&mut self, hook: Hook, frame: &[u8], n: usize) -> Vec<Verdict> {
        (0..n).map(|_| self.run(hook, frame)).collect()
    }

    /// How many of `n` separate runs of one frame passed.
    pub fn passes(&mut self, hook: Hook, frame: &[u8], n: usize) -> usize {
        self.run_each(hook, frame, n)
            .into_iter()
            .filter(|v| *v == Verdict::Pass)
            .count()
    }

    pub fn config(&self) -> Config {
        self.kernel.config().expect("read config")
    }

    /// Changes the live config in place (the programs stay loaded).
    pub fn update_config(&mut self, change: impl FnOnce(&mut Config)) {
        let mut config = self.config();
        change(&mut config);
        self.kernel.set_config(&config).expect("write config");
    }

    /// The source bucket `addr` is charged to under the live config's source prefixes.
    pub fn source_bucket(&self, addr: &str) -> Option<Bucket> {
        let config = self.config();
        let key = source_key(addr, &config);
        self.kernel.source(&key).expect("read MON_SOURCES")
    }

    /// The aggregate bucket `addr` is charged to under the live config's aggregate prefixes.
    pub fn aggregate_bucket(&self, addr: &str) -> Option<Bucket> {
        let config = self.config();
        let key = aggregate_key(addr, &config);
        self.kernel.aggregate(&key).expect("read MON_AGGS")
    }

    /// Runs `frame` with no connection behind it and asserts what a segment that belongs to no
    /// connection gets in `payload` and `http` modes: it passes, counted `unconnected` (and
    /// `not_counted`), and nothing else moves.
    #[track_caller]
    pub fn expect_unconnected(&mut self, hook: Hook, frame: &[u8], context: &str) {
        let before = self.stats();
        assert_eq!(self.run_spoofed(hook, frame), Verdict::Pass, "{context}");
        self.expect_stats(
            context,
            &before,
            &[
                (Stat::Seen, 1),
                (Stat::Monitored, 1),
                (Stat::NotCounted, 1),
                (Stat::Unconnected, 1),
                (Stat::Passed, 1),
            ],
        );
    }

    /// Asserts that, since `before`, each listed statistic moved by exactly its count and every
    /// other statistic did not move at all.
    #[track_caller]
    pub fn expect_stats(&self, context: &str, before: &Stats, want: &[(Stat, u64)]) {
        let after = self.stats();
        let mut wrong = Vec::new();
        for stat in Stat::ALL {
            let expected = want
                .iter()
                .filter(|(s, _)| s == stat)
                .map(|(_, n)| *n)
                .sum::<u64>();
            let got = delta(before, &after, *stat);
            if got != expected {
                wrong.push(format!("{}: got {got}, want {expected}", stat.label()));
            }
        }
        assert!(
            wrong.is_empty(),
            "{context}: statistics moved unexpectedly: {}",
            wrong.join("; ")
        );
    }

    pub fn stats(&self) -> Stats {
        self.kernel.stats().expect("read stats")
    }

    pub fn stat(&self, stat: Stat) -> u64 {
        self.stats().get(stat)
    }
}

/// The `n`th of a family of distinct IPv4 sources, each in its own /24 so that sources never
/// share a default aggregate; `family` separates tests or hooks.
pub fn v4_source(family: u8, n: u8) -> String {
    format!("10.{family}.{n}.1")
}

/// The `n`th of a family of distinct IPv6 sources, each in its own /48 (so its own /64 too).
pub fn v6_source(family: u8, n: u16) -> String {
    format!("fd{family:02x}:{n:x}::1")
}

/// The unmasked key of a source address (IPv4 in mapped form).
pub fn addr_key(addr: &str) -> AddrKey {
    match addr.parse::<IpAddr>().expect("test address") {
        IpAddr::V4(v4) => AddrKey::from_v4(v4.octets()),
        IpAddr::V6(v6) => AddrKey::from_v6(v6.octets()),
    }
}

/// The key `addr` is tracked under at the source level of `config`.
pub fn source_key(addr: &str, config: &Config) -> AddrKey {
    let key = addr_key(addr);
    key.masked(if key.is_v4() {
        &config.v4_source_mask
    } else {
        &config.v6_source_mask
    })
}

/// The key `addr` is tracked under at the aggregate level of `config`.
pub fn aggregate_key(addr: &str, config: &Config) -> AddrKey {
    let key = addr_key(addr);
    key.masked(if key.is_v4() {
        &config.v4_agg_mask
    } else {
        &config.v6_agg_mask
    })
}

/// `addr` masked to `bits` of its own family (32 for IPv4, 128 for IPv6).
pub fn prefix_key(addr: &str, bits: u8) -> AddrKey {
    let key = addr_key(addr);
    key.masked(&if key.is_v4() {
        AddrMask::v4(bits)
    } else {
        AddrMask::v6(bits)
    })
}

/// A limit of `rate_per_sec` with burst `burst`.
pub fn limit(rate_per_sec: u64, burst: u64) -> Limit {
    Limit::new(rate_per_sec, NANOS_PER_SEC, burst).expect("valid limit")
}

/// A config with the given per-source limit, everything else default.
pub fn config_with_limit(rate_per_sec: u64, burst: u64) -> Config {
    Config {
        source: Limit::new(rate_per_sec, NANOS_PER_SEC, burst).expect("valid limit"),
        ..Config::default()
    }
}

/// Stat deltas between two snapshots, for asserting side effects.
pub fn delta(before: &Stats, after: &Stats, stat: Stat) -> u64 {
    after.get(stat) - before.get(stat)
}
