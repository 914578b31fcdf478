//! The daemon's life: `--persist` keeps the program enforcing through `kill -9` and the next
//! daemon adopts counters, bans, lists and history; without it a clean stop leaves nothing
//! behind; SIGHUP and `monitor reload` apply the config file live.

use std::time::Duration;

use tests::{
    daemon::{Daemon, Paths, eventually, top_row},
    netns::Link,
    traffic::{PORT, Server, TIMEOUT, burst, ip, one, to},
};

const REPORT: Duration = Duration::from_secs(10);

fn xdp_attached(link: &Link) -> bool {
    link.server
        .exec(&["ip", "link", "show", "dev", &link.server_if])
        .contains("xdp")
}

#[test]
fn persist_keeps_enforcing_through_kill_9_and_the_restart_adopts_everything() {
    let link = Link::new(&["10.220.0.1/24"]);
    for c in ["10.220.0.11/24", "10.220.0.12/24"] {
        link.add_client_addr(c);
    }
    let _server = link.server.run_in(|| Server::start(PORT));
    let paths = Paths::new();
    let args = [
        "--port",
        "8443",
        "--rate",
        "2/s",
        "--burst",
        "2",
        "--ban",
        "10m",
        "--persist",
        "--max-sources",
        "4096",
    ];
    let mut d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    let (loud, quiet, dst) = ("10.220.0.11", "10.220.0.12", "10.220.0.1");
    link.client
        .run_in(move || burst(ip(loud), to(dst), "/", 20, TIMEOUT));
    d.cli(&["deny", "add", "192.0.2.0/24"]).unwrap();
    eventually(REPORT, "the offender in the history", || {
        let o = d.json(&["offenders"]);
        o.as_array()?
            .iter()
            .any(|r| r["source"] == "10.220.0.11/32" && r["times_banned"] == 1)
            .then_some(())
    });
    let dropped = d.json(&["stats"])["dropped"].as_u64().unwrap();
    assert!(dropped > 0);

    d.kill9();
    assert!(
        xdp_attached(&link),
        "kill -9 with --persist detached the program"
    );
    assert!(paths.pin.join("MON_SOURCES").exists());
    assert!(
        !one(&link, loud, dst),
        "the ban stopped holding while the daemon was down"
    );
    assert!(
        one(&link, quiet, dst),
        "a quiet source lost a request while the daemon was down"
    );

    let d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    let status = d.json(&["status"]);
    assert_eq!(status["interfaces"][0]["adopted"], true, "{status}");
    let stats = d.json(&["stats"]);
    assert!(
        stats["dropped"].as_u64().unwrap() > dropped,
        "counters restarted: {stats} (before the crash: {dropped})"
    );
    let row = eventually(REPORT, "the adopted ban in top", || {
        top_row(&d.json(&["top"]), "10.220.0.11/32")
    });
    assert!(row["banned_until"].is_string(), "ban lost: {row}");
    assert_eq!(d.json(&["deny", "list"])[0]["cidr"], "192.0.2.0/24");
    let offenders = d.json(&["offenders"]);
    assert!(
        offenders
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["source"] == "10.220.0.11/32"),
        "history lost: {offenders}"
    );
    assert!(!one(&link, loud, dst));
    drop(d);
}

#[test]
fn without_persist_a_clean_stop_leaves_no_program_and_no_pins() {
    let link = Link::new(&["10.221.0.1/24"]);
    link.add_client_addr("10.221.0.11/24");
    let _server = link.server.run_in(|| Server::start(PORT));
    let paths = Paths::new();
    let mut d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &[
            "--port",
            "8443",
            "--rate",
            "1/s",
            "--burst",
            "1",
            "--max-sources",
            "4096",
        ],
    );
    assert!(xdp_attached(&link));
    assert!(paths.pin.join("MON_CONFIG").exists());
    let got = link
        .client
        .run_in(|| burst(ip("10.221.0.11"), to("10.221.0.1"), "/", 10, TIMEOUT));
    assert!(got < 10);

    let status = d.stop();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        !xdp_attached(&link),
        "program still attached after a clean stop"
    );
    assert!(!paths.pin.exists(), "pin directory left behind");
    assert!(!paths.socket.exists(), "socket left behind");
    let got = link
        .client
        .run_in(|| burst(ip("10.221.0.11"), to("10.221.0.1"), "/", 10, TIMEOUT));
    assert_eq!(got, 10, "traffic still limited after the daemon stopped");
}

#[test]
fn sighup_and_reload_apply_the_config_file_live() {
    let link = Link::new(&["10.222.0.1/24"]);
    let paths = Paths::new();
    let file = paths.dir.join("monitor.toml");
    std::fs::write(
        &file,
        "port = [8443]\nrate = \"100/s\"\nburst = 100\nmax-sources = 4096\n",
    )
    .unwrap();
    let mut d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &["--config", file.to_str().unwrap()],
    );
    assert_eq!(d.json(&["status"])["limits"]["rate"], "100/s");

    std::fs::write(
        &file,
        "port = [8443, 9000]\nrate = \"7/s\"\nburst = 3\nallow = [\"198.51.100.0/24\"]\nmax-sources = 4096\n",
    )
    .unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let status = eventually(REPORT, "the SIGHUP reload", || {
        let s = d.json(&["status"]);
        (s["limits"]["rate"] == "7/s").then_some(s)
    });
    assert_eq!(status["limits"]["burst"], 3);
    assert_eq!(status["ports"].as_array().unwrap().len(), 2);
    assert_eq!(d.json(&["allow", "list"])[0]["cidr"], "198.51.100.0/24");

    // A bad file is refused with its line, and the running settings stay.
    std::fs::write(&file, "port = [8443]\nrate = \"lots\"\n").unwrap();
    let err = d.cli(&["reload"]).unwrap_err();
    assert!(err.contains("line 2") && err.lines().count() == 1, "{err}");
    assert_eq!(d.json(&["status"])["limits"]["rate"], "7/s");

    std::fs::write(
        &file,
        "port = [8443]\nrate = \"9/s\"\nburst = 3\nmax-sources = 8192\n",
    )
    .unwrap();
    let msg = d.cli(&["reload"]).unwrap();
    assert!(msg.contains("rate: 7/s -> 9/s"), "{msg}");
    assert!(msg.contains("allow rm 198.51.100.0/24"), "{msg}");
    assert!(
        msg.contains("max-sources: changed, takes effect on restart"),
        "{msg}"
    );
    assert!(d.json(&["allow", "list"]).as_array().unwrap().is_empty());
    assert!(d.stop().success());
}

/// The same life at TC ingress (tcx links): pinned with `--persist`, still limiting after
/// `kill -9`, adopted by the next daemon, and gone after a clean stop without `--persist`.
#[test]
fn tc_links_persist_are_adopted_and_are_removed_by_a_clean_stop() {
    let link = Link::new(&["10.223.0.1/24"]);
    link.add_client_addr("10.223.0.11/24");
    let _server = link.server.run_in(|| Server::start(PORT));
    let paths = Paths::new();
    let limited = [
        "--attach", "tc", "--port", "8443", "--rate", "1/s", "--burst", "1",
    ];
    let loud = || {
        link.client
            .run_in(|| burst(ip("10.223.0.11"), to("10.223.0.1"), "/", 10, TIMEOUT))
    };
    let mut args = limited.to_vec();
    args.extend(["--persist", "--max-sources", "4096"]);
    let mut d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    assert!(loud() < 10, "TC program does not limit");
    d.kill9();
    assert!(
        paths
            .pin
            .join("link_tc_".to_string() + &link.server_if)
            .exists()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        loud() < 10,
        "TC program stopped limiting when the daemon was killed"
    );

    let mut args = limited.to_vec();
    args.extend(["--max-sources", "4096"]);
    let mut d = Daemon::start(&link.server, &link.server_if, &paths, &args);
    let status = d.json(&["status"]);
    assert_eq!(status["interfaces"][0]["adopted"], true, "{status}");
    assert_eq!(status["interfaces"][0]["hook"], "tc", "{status}");
    assert!(d.stop().success());
    assert!(!paths.pin.exists(), "pins left behind");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(loud(), 10, "traffic still limited after a clean stop");
}
