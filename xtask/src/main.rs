//! `cargo xtask <command>`: everything a newcomer or CI runs, each preparing the machine first.

mod bench;
mod binary;
mod demo;
mod setup;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test, demo and benchmark the monitor", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare this machine: nightly rust-src, bpf-linker, bpffs, needed Debian packages.
    Setup,
    /// Set up, then build everything (the eBPF object is embedded into `monitor`).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then run every test: unit, BPF_PROG_TEST_RUN and namespace integration tests.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting and clippy (-D warnings) for user space and for the eBPF crate.
    Lint,
    /// Replay a contact-lookup enumeration attack without and with the monitor, and report.
    Demo(demo::DemoArgs),
    /// Set up, then benchmark against nftables and iptables; writes BENCHMARKS.md.
    Bench {
        /// One repetition, 1 and 1,000,000 sources only (about 4 minutes).
        #[arg(long)]
        quick: bool,
        /// Extra arguments for monitor-bench (e.g. `--only cost,throughput`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build { release } => setup::run().and_then(|()| build(release)),
        Command::Test { args } => setup::run().and_then(|()| test(&args)),
        Command::Lint => setup::run().and_then(|()| lint()),
        Command::Demo(args) => demo::run(args),
        Command::Bench { quick, args } => setup::run().and_then(|()| bench::run(quick, &args)),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--workspace"];
    if release {
        args.push("--release");
    }
    util::step(
        "building the workspace (the eBPF object is built by monitor/build.rs)",
        || util::cargo(&args),
    )?;
    binary::check(release)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut args: Vec<&str> = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    util::step(
        "running every test (unit, BPF_PROG_TEST_RUN, namespaces)",
        || util::cargo(&args),
    )
}

fn lint() -> anyhow::Result<()> {
    util::step("cargo fmt --check", || {
        util::cargo(&["fmt", "--all", "--", "--check"])
    })?;
    util::step("clippy on user space", || {
        util::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    // bench-ebpf compiles monitor-ebpf's modules by path, so both are linted for the target.
    util::step("clippy on the eBPF crates (bpfel-unknown-none)", || {
        util::run(
            std::process::Command::new("cargo")
                .args([
                    "+nightly",
                    "clippy",
                    "--package",
                    "monitor-ebpf",
                    "--package",
                    "bench-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/ebpf-lint",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    "--cfg=bpf_target_arch=\"x86_64\"",
                ),
        )
    })
}
