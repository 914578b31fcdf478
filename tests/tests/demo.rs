//! `cargo xtask demo`, short: the monitor with its defaults stops the loud and distributed
//! scrapers, costs legitimate users nothing, names every attacker in `monitor offenders`, and
//! the demo leaves nothing behind.

use std::{net::IpAddr, path::Path, process::Command};

use monitor::cidr::Cidr;
use serde_json::Value;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
}

#[test]
fn demo_stops_the_scrapers_and_spares_the_users() {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["xtask", "demo", "--duration", "12", "--json"])
        .output()
        .expect("running cargo xtask demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stderr}"));
    // Shown on failure: the human report and the progress lines.
    eprintln!("{stderr}");

    let reduction = report["attacker_reduction"].as_f64().expect("attacker_reduction");
    assert!(
        reduction >= 0.95,
        "the loud and distributed scrapers' resolved numbers fell by only {:.1}%",
        reduction * 100.0
    );
    assert_eq!(report["legit_lost"].as_u64(), Some(0), "legitimate requests were lost");
    let legit_served = report["with"]["legit"]["served"].as_u64().unwrap_or(0);
    assert!(legit_served > 0, "no legitimate request ran with the monitor");

    // Every attacking source is in the offender history, itself or through its aggregate.
    let offenders: Vec<Cidr> = report["offenders"]
        .as_array()
        .expect("monitor offenders --json gives an array")
        .iter()
        .map(|o| {
            let s = o["source"].as_str().expect("offender source");
            s.parse().unwrap_or_else(|e| panic!("offender source {s}: {e}"))
        })
        .collect();
    let attackers = report["attackers"].as_array().expect("attackers");
    assert!(attackers.len() > 30, "the demo lists its attacking sources");
    for a in attackers {
        let a = a.as_str().expect("attacker source");
        let addr: IpAddr = a.split('/').next().and_then(|s| s.parse().ok()).expect("address");
        assert!(
            offenders.iter().any(|o| o.contains(addr)),
            "{a} is missing from monitor offenders: {offenders:?}"
        );
    }

    // Nothing left behind: namespaces, pins, run directory; the chart is written.
    let id = report["run_id"].as_str().expect("run_id");
    let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
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
    let chart = report["chart"].as_str().expect("chart path");
    let svg = std::fs::read_to_string(chart).expect("the chart exists");
    assert!(svg.starts_with("<svg"), "the chart is an SVG");
}
