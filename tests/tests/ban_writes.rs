//! What user space writes into the kernel's ban state: a ban from `monitor block` sets only
//! the bucket's ban field (the kernel's concurrent counting stands), and the daemon's sweep
//! removes expired bans and list entries so that dead entries never fill the tables.

use std::{
    path::PathBuf,
    thread::sleep,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use monitor::{
    cidr::Cidr,
    clock::kernel_now_ns,
    kernel::{Kernel, List, LoadOptions},
};
use monitor_common::{
    addr::AddrKey,
    config::{Config, port_flags},
    maps::MAX_BANS,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*};

/// A bpffs pin directory of this test's own, removed (with every pin in it) on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(format!(
            "mon-test-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        Kernel::remove_pins(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Two loads of the object that share their maps through pins: one runs packets on one CPU
/// while the other writes bans from another, as the daemon's `block` does while traffic flows.
/// A whole-bucket read-modify-write from user space loses the requests the kernel counted in
/// between; the in-place write must lose none.
#[test]
fn a_ban_write_keeps_the_kernels_concurrent_counts() {
    const RUNS: u32 = 2_000_000;
    let pins = PinDir::new("banwrite");
    let load = || {
        Kernel::load(&LoadOptions {
            max_sources: 4096,
            pin_dir: Some(pins.0.clone()),
            table_seed: Some(tests::harness::TEST_TABLE_SEED),
        })
        .expect("load the eBPF object (tests need root)")
    };
    // Packets mode: the raw test runs below have no connection behind them, and this test is
    // about concurrent writes to the bucket, not about what counts.
    let config = Config {
        source: Limit::new(1_000_000_000, NANOS_PER_SEC, 1_000_000_000).unwrap(),
        count_mode: monitor_common::config::count_mode::PACKETS,
        ..Config::default()
    };
    let mut data = load();
    data.set_config(&config).expect("config");
    data.set_port(LOOKUP_PORT, port_flags::TCP | port_flags::UDP)
        .expect("port");
    let mut admin = load();
    let src = v4_source(40, 1);
    let key = source_key(&src, &config);
    let frame = Frame::request(&src, LOOKUP_PORT).build();
    let runner = std::thread::spawn(move || {
        let result = data
            .tc()
            .expect("tc")
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: RUNS,
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, 0, "a request was refused");
        data
    });
    let started = Instant::now();
    let mut writes = 0u64;
    while !runner.is_finished() && started.elapsed() < Duration::from_secs(60) {
        // A deadline already past: the verdicts stay the same, the kernel clears it on sight.
        admin.set_ban(&key, 1).expect("write the ban");
        writes += 1;
    }
    let data = runner.join().expect("runner thread");
    assert!(writes > 0, "no ban was written while packets ran");
    let bucket = data.source(&key).unwrap().expect("the source's bucket");
    assert_eq!(
        bucket.requests,
        u64::from(RUNS),
        "{writes} ban writes during the run lost {} counted requests",
        u64::from(RUNS).saturating_sub(bucket.requests)
    );
}

fn ban_of(k: &Loaded, key: &AddrKey) -> Option<u64> {
    k.kernel
        .bans()
        .expect("read MON_BANS")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, b)| b.until_ns)
}

fn sleep_until(instant: u64) {
    while kernel_now_ns() < instant {
        sleep(Duration::from_millis(10));
    }
}

/// A spoofed sweep fills the ban table; the bans expire, but the kernel deletes an expired ban
/// only when its source comes back, and spoofed sources never do. Until the daemon's sweep
/// runs, a new offender cannot be banned; after it, one can.
#[test]
fn a_ban_table_full_of_expired_bans_takes_new_bans_after_a_sweep() {
    let config = Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap(),
        ban_ns: 3600 * NANOS_PER_SEC,
        ..Config::default()
    };
    let mut k = Loaded::new(config);
    let until = kernel_now_ns() + 300_000_000;
    for i in 0..MAX_BANS {
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0xfe, 0x80]);
        addr[12..].copy_from_slice(&i.to_be_bytes());
        k.kernel
            .set_ban(&AddrKey::from_v6(addr), until)
            .expect("fill MON_BANS");
    }
    sleep_until(until + 1);
    // Expired, yet still filling the table: no ban for a new offender.
    let src = v4_source(41, 1);
    let request = Frame::request(&src, LOOKUP_PORT).build();
    assert_eq!(k.run(Hook::Xdp, &request), Verdict::Pass);
    let full = k.stat(Stat::BansFull);
    assert_eq!(k.run(Hook::Xdp, &request), Verdict::Drop);
    assert_eq!(k.stat(Stat::BansFull), full + 1, "the table was not full");

    let swept = k.kernel.sweep_expired(kernel_now_ns()).expect("sweep");
    assert_eq!(swept.bans, MAX_BANS as usize);
    assert!(k.kernel.bans().unwrap().is_empty());

    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(42, h as u8);
        let request = Frame::request(&src, LOOKUP_PORT).build();
        assert_eq!(k.run(hook, &request), Verdict::Pass);
        let before = k.stat(Stat::BansStarted);
        assert_eq!(k.run(hook, &request), Verdict::Drop);
        assert_eq!(k.stat(Stat::BansStarted), before + 1, "{hook:?}: no ban");
        let key = source_key(&src, &k.config());
        assert!(
            ban_of(&k, &key).is_some(),
            "{hook:?}: {src} not in MON_BANS"
        );
    }
}

/// The sweep takes expired ban entries and expired list entries, and leaves live bans,
/// permanent entries and entries that have not expired.
#[test]
fn the_sweep_removes_only_what_has_expired() {
    let mut k = Loaded::new(Config::default());
    let now = kernel_now_ns();
    let hour = 3600 * NANOS_PER_SEC;
    let (dead, live) = (addr_key("192.0.2.1"), addr_key("192.0.2.2"));
    k.kernel.set_ban(&dead, now - 1).unwrap();
    k.kernel.set_ban(&live, now + hour).unwrap();
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("198.51.100.0/24"), now - 1)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("203.0.113.0/24"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("2001:db8::/32"), now + hour)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("192.0.2.128/25"), now - 1)
        .unwrap();
    let swept = k.kernel.sweep_expired(kernel_now_ns()).unwrap();
    assert_eq!((swept.bans, swept.deny, swept.allow), (1, 1, 1));
    let bans: Vec<AddrKey> = k
        .kernel
        .bans()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(bans, vec![live]);
    let deny: Vec<String> = k
        .kernel
        .list_entries(List::Deny)
        .unwrap()
        .into_iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(deny, vec!["203.0.113.0/24", "2001:db8::/32"]);
    assert!(k.kernel.list_entries(List::Allow).unwrap().is_empty());
}
