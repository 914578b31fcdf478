//! The set-associative source table under an attacker who fills a source's sets
//! (`monitor_common::table`): which slot a new source takes, what a loud source keeps, and
//! that it loses nothing when it does lose its slot. The spoofed addresses are chosen to land
//! only in the loud source's own two sets, which an attacker could do only by knowing the
//! table's seed; the tests fix the seed, so they can.
//!
//! Time is the `test-clock` object's: every arrival is exact, and the loud source's verdicts
//! are compared with the user-space twin of the limiter (`monitor::limit::Twin`).

use monitor::limit::Twin;
use monitor_common::{
    addr::AddrKey,
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    table::SOURCE_WAYS,
};
use tests::{frames::Frame, harness::*};

const T0: u64 = 1_000 * NANOS_PER_SEC;
const MS: u64 = 1_000_000;
const LOUD: &str = "198.51.100.7";

fn config() -> Config {
    Config {
        // 10 a second, burst 10.
        source: Limit::new(10, NANOS_PER_SEC, 10).unwrap(),
        // Every packet is a request: spoofed datagrams need no connection.
        count_mode: count_mode::PACKETS,
        ..Config::default()
    }
}

/// The user-space twin of the kernel's limiter under `config()`.
fn twin() -> Twin {
    let c = config();
    Twin::new(c.source, c.v4_source_mask, c.v6_source_mask)
}

/// A small table (28 sets), so that addresses aimed at one source's sets are quick to find.
const SMALL_TABLE: u32 = 64;

fn load() -> Loaded {
    let mut k = Loaded::load(config(), SMALL_TABLE, Object::TestClock);
    k.set_now(T0);
    k
}

/// `n` IPv4 addresses whose two sets are both among the loud source's two sets: the only
/// addresses whose claims can take the loud source's slot (an address with one set elsewhere
/// takes an empty or quieter slot there first).
fn aimed(k: &Loaded, n: usize) -> Vec<String> {
    let shape = k.kernel.table_shape();
    let loud = shape.sets_of(&source_key(LOUD, &k.config())).unwrap();
    (0..u32::MAX)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i))
        .filter(|a| {
            let sets = shape.sets_of(&AddrKey::from_v4(a.octets())).unwrap();
            sets.iter().all(|s| loud.contains(s))
        })
        .take(n)
        .map(|a| a.to_string())
        .collect()
}

/// Slots in the loud source's sets (one set when its two choices coincide).
fn loud_slots(k: &Loaded) -> usize {
    let [a, b] = k
        .kernel
        .table_shape()
        .sets_of(&source_key(LOUD, &k.config()))
        .unwrap();
    if a == b { SOURCE_WAYS } else { 2 * SOURCE_WAYS }
}

/// A one-packet-per-address spoofed flood aimed at the loud source's sets never takes its
/// slot: each new spoofed source takes the quietest slot, and a source at its limit is deeper
/// in debt than any one-packet source. So the loud source is limited exactly as the twin says,
/// through 400 spoofed sources in its own two sets.
#[test]
fn a_spoofed_flood_into_a_loud_sources_sets_takes_the_quiet_slots_first() {
    let mut k = load();
    let spoofed = aimed(&k, 400);
    let loud = Frame::udp(LOUD, LOOKUP_PORT, b"lookup").build();
    let loud_key = source_key(LOUD, &k.config());
    let mut twin = twin();
    let (mut admitted, mut refused) = (0, 0);
    // The loud source sends 40 a second (four times its limit) for 10 s; between each two of
    // its packets a new spoofed address sends one.
    for i in 0..400u64 {
        let now = T0 + i * 25 * MS;
        let verdict = k.run_at(Hook::Xdp, &loud, now);
        let expected = twin.request(&loud_key, now);
        assert_eq!(verdict == Verdict::Pass, expected, "loud packet {i}");
        if expected {
            admitted += 1;
        } else {
            refused += 1;
        }
        let forged = Frame::udp(&spoofed[i as usize], LOOKUP_PORT, b"lookup").build();
        assert_eq!(k.run_at(Hook::Tc, &forged, now + MS), Verdict::Pass);
    }
    // Burst 10, then 10 a second: about 10 + 10 × 10.
    assert!((105..=112).contains(&admitted), "admitted {admitted}");
    let slot = k
        .kernel
        .source(&loud_key)
        .unwrap()
        .expect("the loud source kept its slot");
    assert_eq!((slot.requests, slot.refused), (400, refused));
    // Its sets hold the loud source and the most recent spoofed ones.
    let tracked: Vec<AddrKey> = spoofed
        .iter()
        .map(|s| source_key(s, &k.config()))
        .filter(|key| k.kernel.source(key).unwrap().is_some())
        .collect();
    assert_eq!(tracked.len(), loud_slots(&k) - 1);
}

/// The worst case, stated in docs/kernel.md: spoofed sources that each spend a whole burst are
/// deeper in debt than a source at its limit, so they can take its slot. Here an attacker who
/// knows the seed sends full bursts from three new addresses aimed at the loud source's sets
/// after each of the loud source's requests (33 packets per loud request), which takes its
/// slot before most of its requests. The evicted state waits in `MON_PAROLE` and the loud source resumes
/// it, so it is admitted exactly what its limit allows, as if it had never lost the slot.
#[test]
fn a_loud_source_that_loses_its_slot_resumes_its_state() {
    let mut k = load();
    let spoofed: Vec<Vec<u8>> = aimed(&k, 120)
        .iter()
        .map(|s| Frame::udp(s, LOOKUP_PORT, b"lookup").build())
        .collect();
    let loud = Frame::udp(LOUD, LOOKUP_PORT, b"lookup").build();
    let loud_key = source_key(LOUD, &k.config());
    let mut twin = twin();
    let (mut admitted, mut allowed, mut evictions) = (0u64, 0u64, 0u64);
    for second in 0..10u64 {
        // The loud source: 40 requests spread over the second.
        for i in 0..40u64 {
            let now = T0 + second * NANOS_PER_SEC + i * 25 * MS;
            if k.kernel.source(&loud_key).unwrap().is_none() && (second, i) != (0, 0) {
                evictions += 1;
            }
            if k.run_at(Hook::Xdp, &loud, now) == Verdict::Pass {
                admitted += 1;
            }
            if twin.request(&loud_key, now) {
                allowed += 1;
            }
            // After each, the next three spoofed addresses spend a full burst (11 packets).
            for j in 0..3 {
                let forged = &spoofed[((second * 120 + i * 3 + j) % 120) as usize];
                for _ in 0..11 {
                    k.run_at(Hook::Tc, forged, now + MS);
                }
            }
        }
    }
    println!(
        "loud source: {admitted} admitted, {allowed} allowed by its limit, {evictions} evictions"
    );
    assert!(
        evictions > 100,
        "the flood took the loud source's slot only {evictions} times"
    );
    assert_eq!(
        admitted, allowed,
        "a lost slot changed what the limit lets through"
    );
}
