//! `cargo xtask bench`: prepares the machine (the setup steps, plus nftables, iptables and
//! ethtool for the comparison), builds the benchmark and the daemon in release mode, and runs
//! `monitor-bench` (crate `bench/`), which writes BENCHMARKS.md and `target/bench/summary.json`.
//! The benchmark itself lives in its own crate because it links the eBPF objects, which xtask
//! must not need before `setup` has installed the BPF toolchain.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{setup, util};

pub fn run(quick: bool, extra: &[String]) -> anyhow::Result<()> {
    setup::ensure_packages(&[
        ("nft", "nftables"),
        ("iptables", "iptables"),
        ("ethtool", "ethtool"),
        ("taskset", "util-linux"),
        ("chrt", "util-linux"),
    ])?;
    util::step("building the benchmark and the daemon (release)", || {
        util::cargo(&[
            "build",
            "--release",
            "--package",
            "monitor-bench",
            "--package",
            "monitor",
        ])
    })?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut cmd = Command::new(target.join("release/monitor-bench"));
    cmd.current_dir(&root)
        .arg("--out-dir")
        .arg(target.join("bench"))
        .arg("--monitor")
        .arg(target.join("release/monitor"))
        .args(extra);
    if quick {
        cmd.arg("--quick");
    }
    let what = if quick {
        "running the quick benchmark (about 4 minutes)"
    } else {
        "running the benchmark (about 20 minutes)"
    };
    util::step(what, || util::run(&mut cmd))
}
