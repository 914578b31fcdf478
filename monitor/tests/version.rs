//! `monitor --version` names the daemon in a line `cargo xtask build` checks, so a build that
//! left some other program at `target/<profile>/monitor` is caught (the eBPF crate's host stub
//! once was, and printed nothing).

use std::process::Command;

#[test]
fn the_built_monitor_binary_is_the_daemon() {
    let out = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .arg("--version")
        .output()
        .expect("run monitor --version");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(
        stdout.trim_end(),
        format!("monitor {}", monitor::cli::VERSION),
        "the line xtask's check looks for"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("(kernel-level request limiter: daemon and CLI)"),
        "must match xtask's DAEMON_MARK: {stdout}"
    );
    // And it is the real CLI, not a stub that exits 0 on anything.
    let help = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .arg("--help")
        .output()
        .expect("run monitor --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("run") && help.contains("status"), "{help}");
}
