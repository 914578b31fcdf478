//! `cargo xtask demo`, short (12 s per run): the monitor with its documented defaults costs
//! legitimate users nothing, names every attacker in `monitor offenders`, cuts the scrapers
//! down, and the demo leaves nothing behind. One demo run is shared by the tests below.

use std::{net::IpAddr, path::Path, process::Command, sync::OnceLock};

use monitor::cidr::Cidr;
use serde_json::Value;

/// The goal for the loud and distributed scrapers' resolved numbers, together.
const GOAL: f64 = 0.95;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
}

/// Runs the demo once per test binary and returns its JSON report.
fn report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let out = Command::new(cargo)
            .current_dir(workspace())
            .args(["xtask", "demo", "--duration", "12", "--json"])
            .output()
            .expect("running cargo xtask demo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the demo failed:\n{stderr}");
        // Shown when a test fails: the progress lines and the human report.
        eprintln!("{stderr}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stderr}"))
    })
}

fn reduction(class: &str) -> f64 {
    let r = report();
    let resolved = |run: &str| r[run][class]["resolved"].as_u64().expect("resolved") as f64;
    let without = resolved("without");
    assert!(
        without > 1000.0,
        "the {class} scraper barely ran without the monitor"
    );
    1.0 - resolved("with") / without
}

#[test]
fn no_legitimate_request_is_lost() {
    let r = report();
    assert_eq!(
        r["legit_lost"].as_u64(),
        Some(0),
        "legitimate requests were lost"
    );
    let served = r["with"]["legit"]["served"].as_u64().unwrap_or(0);
    assert!(
        served >= 10,
        "too few legitimate requests ran with the monitor: {served}"
    );
}

#[test]
fn the_loud_scraper_is_cut_by_the_goal() {
    let loud = reduction("loud");
    assert!(
        loud >= GOAL,
        "the loud scraper was cut by only {:.1}%",
        loud * 100.0
    );
}

#[test]
fn the_distributed_scraper_is_held_back() {
    // A regression guard while the combined goal below does not hold with the defaults. The
    // cut is relative to what the machine could serve without the monitor, which falls when
    // other work shares the CPU (85% to 86% measured here, 79% on a machine busy with builds),
    // hence the margin.
    let distributed = reduction("distributed");
    assert!(
        distributed >= 0.5,
        "the distributed scraper was cut by only {:.1}%",
        distributed * 100.0
    );
}

#[test]
fn the_loud_and_distributed_scrapers_are_cut_by_the_goal() {
    let combined = report()["attacker_reduction"]
        .as_f64()
        .expect("attacker_reduction");
    assert!(
        combined >= GOAL,
        "the loud and distributed scrapers' resolved numbers fell by only {:.1}%",
        combined * 100.0
    );
}

#[test]
fn every_attacker_is_in_monitor_offenders() {
    let r = report();
    let offenders: Vec<Cidr> = r["offenders"]
        .as_array()
        .expect("monitor offenders --json gives an array")
        .iter()
        .map(|o| {
            let s = o["source"].as_str().expect("offender source");
            s.parse()
                .unwrap_or_else(|e| panic!("offender source {s}: {e}"))
        })
        .collect();
    let attackers = r["attackers"].as_array().expect("attackers");
    assert!(attackers.len() > 30, "the demo lists its attacking sources");
    for a in attackers {
        let a = a.as_str().expect("attacker source");
        let addr: IpAddr = a
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("address");
        assert!(
            offenders.iter().any(|o| o.contains(addr)),
            "{a} is missing from monitor offenders: {offenders:?}"
        );
    }
}

#[test]
fn nothing_is_left_behind_but_the_chart() {
    let r = report();
    let id = r["run_id"].as_str().expect("run_id");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let prefix = format!("mdemo{id}-");
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins = format!("/sys/fs/bpf/monitor-demo-{id}");
    assert!(!Path::new(&pins).exists(), "{pins} left behind");
    let run_dir = format!("/run/monitor-demo/{id}");
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
    let marker = format!("/run/monitor-demo/{id}/");
    let daemons: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(daemons.is_empty(), "processes left running: {daemons:?}");
    let chart = r["chart"].as_str().expect("chart path");
    let svg = std::fs::read_to_string(chart).expect("the chart exists");
    assert!(svg.starts_with("<svg"), "the chart is an SVG");
}
