//! What a daemon adopts from the pins an earlier one left: tables are checked before they are
//! adopted (a different `--max-sources` is refused with the fix), and requests refused while
//! no daemon ran reach the history once the next daemon adopts the tables. And what it keeps
//! clean in them: expired bans are swept, so a ban table filled by a spoofed sweep takes new
//! bans again within a sweep interval.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use monitor::{clock::kernel_now_ns, daemon::SWEEP_INTERVAL};
use monitor_common::{
    addr::AddrKey,
    maps::{Ban, MAX_BANS},
};

use serde_json::Value;
use tests::{
    daemon::{Daemon, Paths, eventually, run_to_exit, top_row},
    netns::Link,
    traffic::{PORT, Server, TIMEOUT, burst, ip, to},
};

const REPORT: Duration = Duration::from_secs(15);

#[test]
fn a_persisted_table_of_another_capacity_is_refused_with_the_fix() {
    let link = Link::new(&["10.223.0.1/24"]);
    let paths = Paths::new();
    let base = ["--port", "8443", "--persist"];
    let mut d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[&base[..], &["--max-sources", "4096"]].concat(),
    );
    let status = d.json(&["status"]);
    assert_eq!(status["capacity"]["MON_SOURCES"], 4096, "{status}");
    assert_eq!(status["capacity"]["MON_BANS"], 65_536, "{status}");
    d.stop();
    assert!(paths.pin.join("MON_SOURCES").exists());

    let mut args = vec!["run", "--iface", link.server_if.as_str()];
    let run_args = paths.run_args();
    args.extend(run_args.iter().map(String::as_str));
    args.extend(base);
    args.extend(["--max-sources", "8192"]);
    let (code, stderr) = run_to_exit(Some(&link.server), &args, Duration::from_secs(30));
    assert_ne!(code, Some(0), "a mismatched table was adopted: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("MON_SOURCES pinned with room for 4096 sources, this run wants 8192"))
        .unwrap_or_else(|| panic!("no line naming the map and the difference: {stderr}"));
    assert!(
        line.contains("restart with --max-sources 4096")
            && line.contains(&paths.pin.display().to_string()),
        "the line does not give the fix: {line}"
    );
    // The refusal left the pinned state alone: the matching restart still adopts it.
    assert!(paths.pin.join("MON_SOURCES").exists());
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[&base[..], &["--max-sources", "4096"]].concat(),
    );
    assert_eq!(d.json(&["status"])["interfaces"][0]["adopted"], true);
}

/// The history's count of requests dropped for `source` (source level).
fn history_dropped(d: &Daemon, source: &str) -> Option<u64> {
    d.json(&["offenders"])
        .as_array()?
        .iter()
        .find(|r| r["source"] == source && r["level"] == "source")
        .and_then(|r| r["dropped"].as_u64())
}

fn table_dropped(d: &Daemon, source: &str) -> Option<u64> {
    top_row(&d.json(&["top"]), source).and_then(|r: Value| r["dropped"].as_u64())
}

#[test]
fn requests_dropped_while_no_daemon_ran_reach_the_history() {
    let link = Link::new(&["10.224.0.1/24"]);
    link.add_client_addr("10.224.0.11/24");
    let _server = link.server.run_in(|| Server::start(PORT));
    let paths = Paths::new();
    let args = [
        "--port",
        "8443",
        "--rate",
        "1/m",
        "--burst",
        "2",
        "--agg-rate",
        "0",
        "--persist",
        "--max-sources",
        "4096",
    ];
    let (loud, dst) = ("10.224.0.11", "10.224.0.1");
    let src = "10.224.0.11/32";
    let mut d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    link.client
        .run_in(move || burst(ip(loud), to(dst), "/", 10, TIMEOUT));
    // The history books exactly what the table counted.
    let before = eventually(REPORT, "the history to match the table", || {
        let t = table_dropped(&d, src)?;
        (t > 0 && history_dropped(&d, src) == Some(t)).then_some(t)
    });
    d.stop();

    // No daemon: the pinned program keeps refusing.
    link.client
        .run_in(move || burst(ip(loud), to(dst), "/", 10, TIMEOUT));
    let d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    eventually(
        REPORT,
        "the history to book the refusals of the time without a daemon",
        || {
            let t = table_dropped(&d, src)?;
            (t > before && history_dropped(&d, src) == Some(t)).then_some(())
        },
    );
}

#[test]
fn a_ban_table_full_of_expired_bans_takes_a_new_ban_within_a_sweep_interval() {
    let link = Link::new(&["10.225.0.1/24"]);
    link.add_client_addr("10.225.0.11/24");
    let _server = link.server.run_in(|| Server::start(PORT));
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[
            "--port",
            "8443",
            "--rate",
            "1/m",
            "--burst",
            "2",
            "--agg-rate",
            "0",
            "--ban",
            "10m",
            "--max-sources",
            "4096",
        ],
    );
    // A spoofed sweep's worth of bans, all ending shortly.
    let bans = aya::maps::MapData::from_pin(paths.pin.join("MON_BANS")).expect("open MON_BANS");
    let until = kernel_now_ns() + 500_000_000;
    let entries: Vec<(AddrKey, Ban)> = (0..MAX_BANS)
        .map(|i| {
            let mut addr = [0u8; 16];
            addr[..2].copy_from_slice(&[0xfe, 0x80]);
            addr[12..].copy_from_slice(&i.to_be_bytes());
            (AddrKey::from_v6(addr), Ban { until_ns: until })
        })
        .collect();
    monitor::batch::write_all(bans.fd().as_fd().as_raw_fd(), &entries).expect("fill MON_BANS");
    while kernel_now_ns() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    // One sweep interval after the bans ended (and a little for the sweep itself to run).
    std::thread::sleep(SWEEP_INTERVAL + Duration::from_millis(500));
    let swept_at = Instant::now();
    let (loud, dst) = ("10.225.0.11", "10.225.0.1");
    link.client
        .run_in(move || burst(ip(loud), to(dst), "/", 10, TIMEOUT));
    let row = eventually(REPORT, "the new offender banned", || {
        top_row(&d.json(&["top"]), "10.225.0.11/32").filter(|r| r["banned_until"].is_string())
    });
    assert!(row["banned_until"].is_string());
    let stats = d.json(&["stats"]);
    assert_eq!(stats["bans_full"], 0, "the table was still full: {stats}");
    eprintln!(
        "new offender banned {:.1} s after the burst, {} dead bans swept",
        swept_at.elapsed().as_secs_f64(),
        MAX_BANS
    );
}
