//! Prepares a fresh machine, idempotently and quickly when already done:
//! root check, Debian packages, nightly with rust-src, bpf-linker built against the nightly's
//! own libLLVM (major version and library name found at run time), and bpffs.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::util::{self, output, step};

/// The bpf-linker release known to work with aya 0.14 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests need (`ip` for namespaces; a real Redis for the fleet tests,
/// which start their own `redis-server` and use `redis-cli` to inspect and damage it).
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
];

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    require_root()?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    eprintln!("xtask: setup done in {:.2}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    let uid = output("id", &["-u"]).unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "loading eBPF programs and creating network namespaces needs root: re-run as root \
             (for example `sudo -E env PATH=$PATH cargo xtask ...`)"
        );
    }
    Ok(())
}

/// Installs the Debian packages whose commands are missing, running `apt-get update` once.
pub fn ensure_packages(needed: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cmd, _)| !command_exists(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !command_exists("apt-get") {
        bail!("missing packages {missing:?} and no apt-get to install them: install them by hand");
    }
    step(&format!("installing Debian packages {missing:?}"), || {
        util::run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })
}

pub fn command_exists(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_rust_src() -> anyhow::Result<()> {
    if !command_exists("rustup") {
        bail!("rustup is not installed: install it from your distribution or rustup.rs first");
    }
    if output("rustc", &["+nightly", "-V"]).is_none() {
        step("installing the nightly toolchain", || {
            util::run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
        })?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok(());
    }
    step(
        "adding rust-src to the nightly toolchain (about 80 MB)",
        || {
            util::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        },
    )
}

/// The nightly's LLVM major version and the name of its shared libLLVM, read at run time.
fn nightly_llvm() -> anyhow::Result<(String, String, String)> {
    let vv = output("rustc", &["+nightly", "-vV"]).context("`rustc +nightly -vV` failed")?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("`rustc +nightly --print sysroot` failed")?;
    let libdir = format!("{}/lib", sysroot.trim());
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {libdir}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM-{major}")) && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-{major}*.so in {libdir}"))?;
    let name = lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    Ok((major, name, libdir))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let (major, lib, libdir) = nightly_llvm()?;
    if let Some(v) = output("bpf-linker", &["--version"])
        && v.contains(BPF_LINKER_VERSION)
        && Path::new(&libdir).join(format!("lib{lib}.so")).exists()
    {
        return Ok(());
    }
    let rustflags = format!("-L {libdir} -l dylib={lib} -C link-args=-Wl,-rpath,{libdir}");
    step(
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({lib}); \
             on a fresh machine this takes up to 15 minutes"
        ),
        || {
            util::run(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        BPF_LINKER_VERSION,
                        "--locked",
                        "--force",
                        "--no-default-features",
                        "--features",
                        &format!("llvm-{major},no-llvm-linking"),
                    ])
                    .env("RUSTFLAGS", rustflags),
            )
        },
    )
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&"/sys/fs/bpf") && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    step("mounting bpffs on /sys/fs/bpf", || {
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("could not mount bpffs: is this a container without CAP_SYS_ADMIN?")
    })
}
