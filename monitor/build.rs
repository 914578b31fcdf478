//! Builds `monitor-ebpf` for the BPF target and leaves the object in OUT_DIR, where
//! `kernel.rs` embeds it. Needs the nightly toolchain with rust-src and bpf-linker:
//! `cargo xtask setup` provides both.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("monitor crate has no parent directory"))?
        .join("monitor-ebpf");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF object failed; run `cargo xtask setup` (nightly rust-src and \
         bpf-linker), then retry",
    )
}
