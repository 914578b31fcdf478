//! Builds the benchmark-only XDP programs (`bench-ebpf`) into OUT_DIR for `progs.rs` to embed.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("bench crate has no parent directory"))?
        .join("bench-ebpf");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bench-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the bench eBPF object failed; run `cargo xtask setup`, then retry")
}
