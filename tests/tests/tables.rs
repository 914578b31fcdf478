//! The tracked-sources table at the size the foundation issue requires: 1,000,000 sources
//! load, fill through the real program (both hooks), and read back whole with batched lookups.

use std::{collections::HashSet, time::Instant};

use monitor_common::{
    addr::AddrKey,
    config::Config,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*};

const SOURCES: u32 = 1_000_000;

/// The IPv4 address of source `i`: a bijective scramble of the index, so all are distinct.
fn v4_of(i: u32) -> u32 {
    i.wrapping_mul(0x9e37_79b1) ^ 0x2c1b_3c6d
}

#[test]
fn a_million_tracked_sources_load_fill_and_read_back() {
    let started = Instant::now();
    let mut k = Loaded::with_capacity(
        Config {
            source: Limit::new(1, 60 * NANOS_PER_SEC, 10).unwrap(),
            ..Config::default()
        },
        SOURCES,
    );
    println!(
        "loaded with a {SOURCES}-entry source table in {:.2?}",
        started.elapsed()
    );

    // Half the sources IPv4, half IPv6 /64s; alternating hooks.
    let v4 = Frame::request("192.0.2.1", LOOKUP_PORT);
    let v6 = Frame::request("2001:db8::1", LOOKUP_PORT);
    let (mut v4_bytes, mut v6_bytes) = (v4.build(), v6.build());
    let (v4_at, v6_at) = (v4.src_offset(), v6.src_offset());
    let mut sent: HashSet<AddrKey> = HashSet::with_capacity(SOURCES as usize);
    let started = Instant::now();
    for i in 0..SOURCES {
        let hook = HOOKS[(i & 1) as usize];
        let addr = v4_of(i);
        let verdict = if i & 2 == 0 {
            v4_bytes[v4_at..v4_at + 4].copy_from_slice(&addr.to_be_bytes());
            sent.insert(AddrKey::from_v4(addr.to_be_bytes()));
            k.run(hook, &v4_bytes)
        } else {
            let mut key = [0u8; 16];
            key[0] = 0xfd;
            key[1..5].copy_from_slice(&addr.to_be_bytes());
            v6_bytes[v6_at..v6_at + 16].copy_from_slice(&key);
            v6_bytes[v6_at + 15] = 1; // a host address inside the /64
            sent.insert(AddrKey::from_v6(key));
            k.run(hook, &v6_bytes)
        };
        assert_eq!(verdict, Verdict::Pass, "source {i}");
    }
    let fill = started.elapsed();
    println!(
        "filled with {SOURCES} distinct sources in {:.2} s ({:.2} us per BPF_PROG_TEST_RUN)",
        fill.as_secs_f64(),
        fill.as_secs_f64() * 1e6 / SOURCES as f64
    );
    assert_eq!(sent.len(), SOURCES as usize);
    assert_eq!(k.stat(Stat::Requests), SOURCES as u64);

    let started = Instant::now();
    let entries = k.kernel.sources().expect("batched read of MON_SOURCES");
    let read = started.elapsed();
    println!(
        "batched read of MON_SOURCES returned {} entries in {:.1} ms",
        entries.len(),
        read.as_secs_f64() * 1e3
    );
    // The LRU table evicts a little before it is completely full (it keeps per-CPU free
    // lists), so allow a 1% shortfall; every entry must be one of ours, seen once.
    assert!(
        entries.len() as u64 >= SOURCES as u64 * 99 / 100,
        "only {} of {SOURCES} sources tracked",
        entries.len()
    );
    assert!(entries.len() <= SOURCES as usize);
    let mut keys = HashSet::with_capacity(entries.len());
    for (key, bucket) in &entries {
        assert!(sent.contains(key), "unexpected key {key:?}");
        assert!(keys.insert(*key), "key {key:?} returned twice");
        assert_eq!((bucket.requests, bucket.refused), (1, 0), "{key:?}");
    }
}
