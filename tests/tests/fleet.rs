//! Fleet mode end to end: three API hosts in namespaces behind a router, each running
//! `monitor run --fleet` in front of a small HTTP responder, sharing a real `redis-server` in
//! the router. The fleet limit is 30/s per source; the per-host limits are far above it.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    daemon::eventually,
    fleet::{BLACKHOLE, Redis, World},
    traffic::{TIMEOUT, burst, request},
};

const FLEET: &[&str] = &["--fleet-rate", "30/s", "--fleet-interval", "500ms"];

fn fleet(world: &World, i: usize) -> Value {
    world.hosts[i].daemon().json(&["fleet"])
}

fn wait_fleet_of(world: &World, n: usize) {
    for i in 0..world.hosts.len() {
        if world.hosts[i].daemon.is_none() {
            continue;
        }
        eventually(
            Duration::from_secs(20),
            "every daemon to see the fleet",
            || {
                let f = fleet(world, i);
                (f["connected"] == true && f["hosts"].as_array().map_or(0, Vec::len) >= n)
                    .then_some(())
            },
        );
    }
}

/// One request from `src` to host `h`; whether it was answered.
fn one(world: &World, src: IpAddr, h: usize) -> bool {
    let dst = world.hosts[h].dst();
    world
        .client
        .run_in(move || request(src, dst, "/lookup", TIMEOUT))
}

/// Stream entries (op, src, origin, reason) read with redis-cli.
fn stream(redis: &Redis) -> Vec<[String; 4]> {
    let out = redis
        .cli(&["XRANGE", "{monitor-fleet}:bans", "-", "+"])
        .expect("XRANGE");
    let lines: Vec<&str> = out.lines().collect();
    let mut entries = Vec::new();
    for w in lines.windows(10) {
        if w[0] == "op" && w[2] == "src" && w[4] == "until" && w[6] == "origin" && w[8] == "reason"
        {
            entries.push([w[1], w[3], w[7], w[9]].map(str::to_string));
        }
    }
    entries
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

#[test]
fn fleet_sees_a_scraper_no_host_sees() {
    let mut world = World::new(61, 3, &[10, 11]);
    let port = Redis::unique_port();
    let url = world.start_redis(port).url();
    let mut args = vec!["--rate", "1000/s", "--burst", "1000"];
    args.extend_from_slice(FLEET);
    for i in 0..3 {
        world.start_daemon(i, &url, &args);
    }
    wait_fleet_of(&world, 3);

    let scraper = world.client_ip(10);
    let quiet = world.client_ip(11);
    let (results, quiet_ok) = std::thread::scope(|s| {
        let q = s.spawn(|| world.spread(quiet, 2, Duration::from_secs(5)));
        let r = world.spread(scraper, 60, Duration::from_secs(5));
        (r, q.join().unwrap())
    });

    // 60/s crosses 30/s after about half a second; every host must drop the scraper within
    // 2 s of that.
    let cutoff = Duration::from_millis(2_500);
    for h in 0..3 {
        let late: Vec<_> = results
            .iter()
            .filter(|r| r.1 == h && r.0 >= cutoff)
            .collect();
        assert!(late.len() >= 10, "too few late requests to host {h}");
        let admitted: Vec<_> = late.iter().filter(|r| r.2).map(|r| r.0).collect();
        assert!(
            admitted.is_empty(),
            "host {h} still admitted the scraper at {admitted:?} (each host sees only 20/s)"
        );
        let early = results
            .iter()
            .filter(|r| r.1 == h && r.0 < Duration::from_millis(300));
        assert!(
            early.clone().all(|r| r.2),
            "host {h} dropped the scraper before the fleet limit"
        );
    }
    assert!(
        quiet_ok.iter().all(|r| r.2),
        "the quiet client lost requests: {quiet_ok:?}"
    );
    let bans: Vec<_> = stream(world.redis())
        .into_iter()
        .filter(|e| e[0] == "ban" && e[1] == format!("{scraper}/32"))
        .collect();
    assert_eq!(bans.len(), 1, "exactly one ban decision: {bans:?}");
    assert_eq!(bans[0][3], "fleet-rate");
    assert!(bans[0][2].starts_with("host"));
    for i in 0..3 {
        assert!(fleet(&world, i)["bans_applied"].as_u64().unwrap() >= 1);
        assert!(fleet(&world, i)["keys_published"].as_u64().unwrap() >= 1);
    }
    let top = world.hosts[0].daemon().json(&["top", "--fleet"]);
    let row = top
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == format!("{scraper}/32"))
        .cloned()
        .expect("the scraper in top --fleet");
    assert!(row["fleet_rate"].as_f64().unwrap() > 30.0, "{row}");
}

#[test]
fn fleet_outage_keeps_local_enforcement() {
    let mut world = World::new(62, 3, &[20, 21, 22]);
    let port = Redis::unique_port();
    let url = world.start_redis(port).url();
    // Per-host limits above the fleet's, low enough that one burst goes over them.
    let mut args = vec!["--rate", "40/s", "--burst", "5"];
    args.extend_from_slice(FLEET);
    for i in 0..3 {
        world.start_daemon(i, &url, &args);
    }
    wait_fleet_of(&world, 3);

    let check_local = |world: &World, h: usize, what: &str| {
        for i in 0..world.hosts.len() {
            let d = world.hosts[i].daemon();
            let (status, took) = timed(|| d.cli(&["status"]));
            assert!(status.is_ok(), "{what}: status failed on host {i}");
            assert!(
                took < Duration::from_secs(2),
                "{what}: status took {took:?}"
            );
            let (f, took) = timed(|| d.json(&["fleet"]));
            assert!(took < Duration::from_secs(2), "{what}: fleet took {took:?}");
            assert_eq!(f["connected"], false, "{what}: host {i}: {f}");
        }
        let loud = world.client_ip(20);
        let dst = world.hosts[h].dst();
        let ok = world
            .client
            .run_in(move || burst(loud, dst, "/lookup", 60, TIMEOUT));
        assert!(
            ok <= 40,
            "{what}: the per-host limit let {ok} of 60 through"
        );
    };

    // Redis hangs: the process stops answering on open connections.
    world.redis().signal(libc::SIGSTOP);
    eventually(Duration::from_secs(15), "every daemon to notice", || {
        (0..3)
            .all(|i| fleet(&world, i)["connected"] == false)
            .then_some(())
    });
    check_local(&world, 0, "redis stopped answering");
    // A block made now applies here at once and reaches the fleet later.
    let blocked = world.client_ip(22);
    let (msg, took) = timed(|| {
        world.hosts[0]
            .daemon()
            .cli(&["block", &blocked.to_string(), "--for", "10m"])
    });
    assert!(took < Duration::from_secs(2), "block took {took:?}");
    assert!(msg.unwrap().contains("unreachable"));
    assert!(!one(&world, blocked, 0), "the block did not apply locally");

    // Redis gone; and a daemon that starts against a blackholed address starts anyway.
    world.redis.as_mut().unwrap().kill();
    world.hosts[2].daemon = None;
    let blackhole = format!("redis://{BLACKHOLE}:{port}");
    let (_, took) = timed(|| world.start_daemon(2, &blackhole, &args));
    assert!(took < Duration::from_secs(30));
    check_local(&world, 2, "redis down, host 3 blackholed");
    for h in &world.hosts {
        let log = h.daemon().stderr.text();
        let downs = log.matches("enforcing locally").count();
        assert!(downs <= 2, "one line per state change, got {downs}: {log}");
    }

    // Redis returns: the others rejoin and the queued block reaches them.
    world.start_redis(port);
    eventually(Duration::from_secs(20), "hosts 1 and 2 to rejoin", || {
        (0..2)
            .all(|i| fleet(&world, i)["connected"] == true)
            .then_some(())
    });
    eventually(
        Duration::from_secs(10),
        "the queued block to reach host 2",
        || (fleet(&world, 1)["bans_applied"].as_u64().unwrap() >= 1).then_some(()),
    );
    assert!(
        !one(&world, blocked, 1),
        "host 2 did not apply the queued block"
    );
    assert!(
        world.hosts[0]
            .daemon()
            .stderr
            .text()
            .contains("reconnected")
    );
}

#[test]
fn fleet_host_catches_up_on_start() {
    let mut world = World::new(63, 3, &[30]);
    let port = Redis::unique_port();
    let url = world.start_redis(port).url();
    let mut args = vec!["--rate", "1000/s", "--burst", "1000"];
    args.extend_from_slice(FLEET);
    for i in 0..2 {
        world.start_daemon(i, &url, &args);
    }
    wait_fleet_of(&world, 2);
    let src = world.client_ip(30);
    world.hosts[0]
        .daemon()
        .cli(&["block", &src.to_string(), "--for", "10m"])
        .unwrap();
    eventually(Duration::from_secs(5), "host 2 to apply the block", || {
        (fleet(&world, 1)["bans_applied"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(one(&world, src, 2), "host 3 has no daemon yet");

    world.start_daemon(2, &url, &args);
    let started = Instant::now();
    eventually(Duration::from_secs(5), "host 3 to apply the ban", || {
        (fleet(&world, 2)["bans_applied"].as_u64().unwrap() >= 1).then_some(())
    });
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "host 3 applied the ban {took:?} after starting"
    );
    assert!(
        !one(&world, src, 2),
        "host 3 admits a source banned while it was down"
    );

    // An unblock on a host that never held the ban reaches every host.
    world.hosts[2].daemon = None;
    let msg = world.hosts[1]
        .daemon()
        .cli(&["unblock", &src.to_string()])
        .unwrap();
    assert!(msg.contains("fleet"), "{msg}");
    eventually(
        Duration::from_secs(5),
        "the unblock to reach host 1",
        || one(&world, src, 0).then_some(()),
    );
}

#[test]
fn fleet_skips_bad_stream_entries_and_counts_them() {
    let mut world = World::new(64, 1, &[40, 41]);
    let port = Redis::unique_port();
    let url = world.start_redis(port).url();
    let mut args = vec!["--rate", "1000/s", "--burst", "1000"];
    args.extend_from_slice(FLEET);
    world.start_daemon(0, &url, &args);
    wait_fleet_of(&world, 1);
    let redis = world.redis();
    let key = "{monitor-fleet}:bans";
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000)
        .to_string();
    let bad_src = world.client_ip(40).to_string() + "/32";
    let good_src = world.client_ip(41).to_string() + "/32";
    let bad: Vec<Vec<&str>> = vec![
        vec![
            "op", "nuke", "src", &bad_src, "until", &far, "origin", "x", "reason", "y",
        ],
        vec![
            "op",
            "ban",
            "src",
            "not-an-address",
            "until",
            &far,
            "origin",
            "x",
            "reason",
            "y",
        ],
        vec![
            "op",
            "ban",
            "src",
            &bad_src,
            "until",
            "99999999999999999",
            "origin",
            "x",
            "reason",
            "y",
        ],
        vec!["op", "ban", "src", &bad_src, "origin", "x", "reason", "y"],
        vec!["garbage", "1"],
    ];
    for fields in &bad {
        let mut cmd = vec!["XADD", key, "*"];
        cmd.extend(fields.iter().copied());
        redis.cli(&cmd).unwrap();
    }
    redis
        .cli(&[
            "XADD", key, "*", "op", "ban", "src", &good_src, "until", &far, "origin", "x",
            "reason", "test",
        ])
        .unwrap();
    eventually(Duration::from_secs(5), "the entries to be read", || {
        let f = fleet(&world, 0);
        (f["malformed_entries"].as_u64() == Some(bad.len() as u64)
            && f["bans_applied"].as_u64() == Some(1))
        .then_some(())
    });
    assert!(
        one(&world, world.client_ip(40), 0),
        "a malformed entry was applied"
    );
    assert!(
        !one(&world, world.client_ip(41), 0),
        "the good entry was not applied"
    );
    assert!(world.hosts[0].daemon().cli(&["status"]).is_ok());
}
