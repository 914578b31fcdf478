//! Builds `monitor-ebpf` a second time, with the `test-clock` feature, into OUT_DIR: the
//! object the rate tests load, whose `now` is whatever the test writes to `MON_TEST_CLOCK`.
//! The daemon embeds the production object (monitor/build.rs), which never has the feature.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tests crate has no parent directory"))?
        .join("monitor-ebpf");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: root,
            features: &["test-clock"],
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the test-clock eBPF object failed; run `cargo xtask setup` (nightly rust-src \
         and bpf-linker), then retry",
    )
}
