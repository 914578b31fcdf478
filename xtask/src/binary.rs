//! After a build: is `target/<profile>/monitor` the daemon? Two targets with one output name
//! once let the eBPF crate's host stub overwrite it, and the Quick Start then started a
//! program that silently did nothing. So xtask asks the binary itself (`monitor --version`)
//! and checks the workspace for bins that share a name.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// What the daemon's `--version` line carries after its version number; `monitor`'s
/// `cli::VERSION` defines it and `monitor/tests/version.rs` checks the built binary.
pub const DAEMON_MARK: &str = "(kernel-level request limiter: daemon and CLI)";

/// Checks one `--version` output: `monitor <version> (kernel-level request limiter: ...)`.
pub fn is_daemon_version(stdout: &str) -> bool {
    let line = stdout.lines().next().unwrap_or_default();
    line.starts_with("monitor ") && line.ends_with(DAEMON_MARK)
}

fn metadata() -> anyhow::Result<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .with_context(|| format!("running {cargo} metadata"))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading cargo metadata")
}

/// Bin names that more than one workspace target builds, with the packages that build them.
pub fn shared_bin_names(metadata: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                owners
                    .entry(name.to_string())
                    .or_default()
                    .push(package["name"].as_str().unwrap_or("?").to_string());
            }
        }
    }
    owners.retain(|_, packages| packages.len() > 1);
    owners
}

/// Fails unless the workspace's bins have distinct names and `target/<profile>/monitor
/// --version` is the daemon.
pub fn check(release: bool) -> anyhow::Result<()> {
    let metadata = metadata()?;
    let shared = shared_bin_names(&metadata);
    if !shared.is_empty() {
        bail!("two targets build the same binary name, so one overwrites the other: {shared:?}");
    }
    let target = metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target directory")?;
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("monitor");
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !is_daemon_version(&stdout) {
        bail!(
            "{} is not the monitor daemon: `--version` printed {:?} (expected `monitor <version> {DAEMON_MARK}`); another target may have overwritten it",
            bin.display(),
            stdout.trim()
        );
    }
    eprintln!("xtask: {} is the daemon: {}", bin.display(), stdout.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_daemons_version_line_passes() {
        assert!(is_daemon_version(
            "monitor 0.1.0 (kernel-level request limiter: daemon and CLI)\n"
        ));
        assert!(!is_daemon_version(""), "the old eBPF stub printed nothing");
        assert!(!is_daemon_version("monitor 0.1.0\n"));
        assert!(!is_daemon_version(
            "monitor-bench 0.1.0 (kernel-level request limiter: daemon and CLI)"
        ));
    }

    #[test]
    fn no_two_workspace_targets_share_a_binary_name() {
        let metadata = metadata().expect("cargo metadata");
        let bins = shared_bin_names(&metadata);
        assert!(bins.is_empty(), "{bins:?}");
        // And the check itself sees a collision when there is one.
        let clash = serde_json::json!({"packages": [
            {"name": "monitor", "targets": [{"kind": ["bin"], "name": "monitor"}]},
            {"name": "monitor-ebpf", "targets": [{"kind": ["bin"], "name": "monitor"}]},
        ]});
        assert_eq!(
            shared_bin_names(&clash).get("monitor").map(Vec::len),
            Some(2)
        );
    }
}
