//! Running commands with visible progress: every long step says what it is doing and, while
//! it runs, prints a heartbeat so nobody stares at a silent terminal.

use std::{
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs `f`, announcing it, printing a heartbeat every 20 s, and its duration at the end.
pub fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("xtask: {what} ...");
    let start = Instant::now();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let label = what.to_string();
    let beat = thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(Duration::from_secs(20))
        {
            eprintln!(
                "xtask: still {label} ({}s so far)",
                start.elapsed().as_secs()
            );
        }
    });
    let result = f();
    drop(done_tx);
    let _ = beat.join();
    match &result {
        Ok(_) => eprintln!(
            "xtask: {what}: done in {:.1}s",
            start.elapsed().as_secs_f64()
        ),
        Err(_) => eprintln!(
            "xtask: {what}: FAILED after {:.1}s",
            start.elapsed().as_secs_f64()
        ),
    }
    result.with_context(|| what.to_string())
}

/// Runs a command with inherited output; an error names the command.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it could not run or failed.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}
