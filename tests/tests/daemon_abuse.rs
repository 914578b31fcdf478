//! The real daemon under abuse of its control socket, its bounded event output, and its
//! warning about bans on forgeable counting modes.

use std::{io::Read as _, os::unix::net::UnixStream, process::Command, time::Duration};

use tests::{
    daemon::{Daemon, Paths},
    netns::Link,
    traffic::{Server, burst},
};

/// The case: under the shipped unit's old limit of 1,024 open files, about 990 idle
/// connections once stopped the daemon from accepting. With the limit forced back to 1,024
/// on the running daemon, 1,000 idle connections must not stop `status` from answering.
#[test]
fn a_thousand_idle_control_connections_do_not_lock_out_status() {
    let link = Link::new(&["10.233.0.1/24"]);
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &["--port", "8443", "--max-sources", "4096"],
    );
    let pid = d.pid().to_string();
    let out = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:1024"])
        .output()
        .expect("run prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
    let mut idle = Vec::with_capacity(1000);
    for i in 0..1000 {
        idle.push(
            UnixStream::connect(&paths.socket)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}")),
        );
    }
    let status = d.json(&["status"]);
    assert_eq!(status["pid"].as_u64(), Some(u64::from(d.pid())));
    // Still answering after a few more rounds, and the idle ones it let go were closed rather
    // than piling up descriptors.
    for _ in 0..3 {
        assert!(d.cli(&["stats"]).is_ok(), "{}", d.stderr.text());
    }
    assert!(
        !d.stderr.text().contains("Too many open files"),
        "{}",
        d.stderr.text()
    );
    // The daemon holds at most its cap of 64: the others were closed (EOF on our side).
    let mut closed = 0;
    for s in &mut idle {
        s.set_nonblocking(true).unwrap();
        if matches!(s.read(&mut [0u8; 1]), Ok(0)) {
            closed += 1;
        }
    }
    assert!(
        closed >= 1000 - 64,
        "only {closed} of 1000 idle connections closed"
    );
    drop(idle);
}

#[test]
fn bans_on_syn_or_packets_counting_warn_at_start_and_on_a_live_change() {
    let link = Link::new(&["10.234.0.1/24"]);
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[
            "--port",
            "8443",
            "--max-sources",
            "4096",
            "--count",
            "syn",
            "--ban",
            "10m",
        ],
    );
    let warning = |l: &str| l.contains("WARN") && l.contains("count syn") && l.contains("spoofer");
    assert!(
        d.stderr
            .wait_line(Duration::from_secs(5), warning)
            .is_some(),
        "no start-up warning: {}",
        d.stderr.text()
    );
    let reply = d.cli(&["set", "count", "payload"]).unwrap();
    assert!(!reply.contains("warning"), "{reply}");
    let reply = d.cli(&["set", "count", "packets"]).unwrap();
    assert!(
        reply.contains("warning:") && reply.contains("count packets"),
        "{reply}"
    );
    assert!(
        d.stderr
            .wait_line(Duration::from_secs(5), |l| l.contains("WARN")
                && l.contains("count packets"))
            .is_some(),
        "no warning logged on the live change: {}",
        d.stderr.text()
    );
}

/// With `--event-lines 0/s` no event line is written; summary lines stand for them and name
/// the sources, while the history still gets every event.
#[test]
fn event_lines_past_the_limit_become_one_summary_line_a_second() {
    let link = Link::new(&["10.235.0.1/24"]);
    for c in ["10.235.0.11/24", "10.235.0.12/24"] {
        link.add_client_addr(c);
    }
    let _server = link.server.run_in(|| Server::start(8443));
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[
            "--port",
            "8443",
            "--max-sources",
            "4096",
            "--rate",
            "5/s",
            "--burst",
            "5",
            "--agg-rate",
            "0",
            "--event-lines",
            "0/s",
        ],
    );
    for src in ["10.235.0.11", "10.235.0.12"] {
        let ok = link.client.run_in(move || {
            burst(
                src.parse().unwrap(),
                "10.235.0.1:8443".parse().unwrap(),
                "/lookup",
                30,
                Duration::from_millis(800),
            )
        });
        assert!(ok < 30, "{src}: nothing was refused");
    }
    let named = |src: &'static str| {
        move |l: &str| l.contains("offender summary:") && l.contains(&format!("{src}/32 ("))
    };
    for src in ["10.235.0.11", "10.235.0.12"] {
        assert!(
            d.stdout
                .wait_line(Duration::from_secs(10), named(src))
                .is_some(),
            "no summary naming {src}: {}",
            d.stdout.text()
        );
    }
    let out = d.stdout.text();
    assert!(!out.contains("offender over-limit"), "{out}");
    let summary = out
        .lines()
        .find(|l| l.contains("offender summary:"))
        .unwrap();
    assert!(
        summary.contains("more sources over their limit") && summary.contains("requests dropped="),
        "{summary}"
    );
    // Every event still reached the history.
    let offenders = d.json(&["offenders"]);
    let rows = offenders.as_array().expect("rows");
    for src in ["10.235.0.11/32", "10.235.0.12/32"] {
        assert!(
            rows.iter()
                .any(|r| r["source"] == src && r["events"].as_u64() >= Some(1)),
            "{src} missing from the history: {offenders}"
        );
    }
}
