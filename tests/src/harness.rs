//! The real eBPF object loaded into the kernel, driven with BPF_PROG_TEST_RUN.

use aya::programs::{TestRun, TestRunOptions};
use monitor::kernel::{Kernel, LoadOptions, Stats};
use monitor_common::{
    config::{Config, port_flags},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};

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

pub struct Loaded {
    pub kernel: Kernel,
}

impl Loaded {
    /// Loads the object with a small source table, monitors TCP and UDP on `LOOKUP_PORT`, and
    /// writes `config`.
    pub fn new(config: Config) -> Self {
        Self::with_capacity(config, 4096)
    }

    pub fn with_capacity(config: Config, max_sources: u32) -> Self {
        let mut kernel = Kernel::load(&LoadOptions {
            max_sources,
            pin_dir: None,
        })
        .expect("load the eBPF object (tests need root)");
        kernel.set_config(&config).expect("write config");
        kernel
            .set_port(LOOKUP_PORT, port_flags::TCP | port_flags::UDP)
            .expect("monitor the lookup port");
        Self { kernel }
    }

    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> Verdict {
        self.run_repeat(hook, frame, 1).0
    }

    /// Runs one frame `repeat` times; returns the last verdict and the kernel's mean ns per run.
    pub fn run_repeat(&mut self, hook: Hook, frame: &[u8], repeat: u32) -> (Verdict, u64) {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        };
        let result = match hook {
            Hook::Xdp => self.kernel.xdp().expect("xdp").test_run(opts),
            Hook::Tc => self.kernel.tc().expect("tc").test_run(opts),
        }
        .expect("BPF_PROG_TEST_RUN");
        let verdict = match (hook, result.return_value) {
            (Hook::Xdp, 2) | (Hook::Tc, 0) => Verdict::Pass,
            (Hook::Xdp, 1) | (Hook::Tc, 2) => Verdict::Drop,
            (h, v) => panic!("{h:?} returned unexpected action {v}"),
        };
        (verdict, result.duration.as_nanos() as u64)
    }

    pub fn stats(&self) -> Stats {
        self.kernel.stats().expect("read stats")
    }

    pub fn stat(&self, stat: Stat) -> u64 {
        self.stats().get(stat)
    }
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
