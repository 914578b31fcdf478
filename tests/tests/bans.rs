//! Bans, on both hooks: one starts when a source exceeds its limit, drops everything from that
//! source on the monitored ports (requests or not) until it expires by timestamp in the kernel,
//! and survives a spoofed flood that washes the source's own bucket out of the LRU table.

use std::time::Instant;

use monitor::clock::kernel_now_ns;
use monitor_common::{
    addr::AddrKey,
    config::{Config, count_mode},
    maps::MAX_BANS,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
    table::SOURCE_WAYS,
};
use tests::{
    frames::{Frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    harness::*,
};

fn ban_of(k: &Loaded, key: &AddrKey) -> Option<u64> {
    k.kernel
        .bans()
        .expect("read MON_BANS")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, ban)| ban.until_ns)
}

/// Every kind of packet a banned source might send to the monitored port.
fn everything(src: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("request", Frame::request(src, LOOKUP_PORT).build()),
        ("SYN", Frame::tcp(src, LOOKUP_PORT, TCP_SYN, b"").build()),
        (
            "pure ACK",
            Frame::tcp(src, LOOKUP_PORT, TCP_ACK, b"").build(),
        ),
        (
            "FIN+ACK",
            Frame::tcp(src, LOOKUP_PORT, TCP_FIN | TCP_ACK, b"").build(),
        ),
        ("RST", Frame::tcp(src, LOOKUP_PORT, TCP_RST, b"").build()),
        ("UDP", Frame::udp(src, LOOKUP_PORT, b"x").build()),
    ]
}

#[test]
fn a_ban_starts_on_excess_drops_everything_and_expires_on_time() {
    const BAN_NS: u64 = NANOS_PER_SEC;
    // 10/s: by the time the one-second ban is over, the budget has refilled.
    // On the test clock: every instant below is exact, so each assert always runs.
    let mut clock = 1_000 * NANOS_PER_SEC;
    let mut k = Loaded::clocked(
        Config {
            source: Limit::new(10, NANOS_PER_SEC, 3).unwrap(),
            ban_ns: BAN_NS,
            ..Config::default()
        },
        clock,
    );
    let mut banned = Vec::new();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [v4_source(h as u8, 1), v6_source(h as u8, 1)] {
            let request = Frame::request(&src, LOOKUP_PORT).build();
            clock += 10_000_000;
            k.set_now(clock);
            assert_eq!(k.passes(hook, &request, 3), 3, "{hook:?} {src}: the burst");
            let before = k.stats();
            assert_eq!(k.run(hook, &request), Verdict::Drop, "{hook:?} {src}: over");
            k.expect_stats(
                &format!("{hook:?} {src}: the request that starts the ban"),
                &before,
                &[
                    (Stat::Seen, 1),
                    (Stat::Monitored, 1),
                    (Stat::Requests, 1),
                    (Stat::Dropped, 1),
                    (Stat::DroppedRate, 1),
                    (Stat::BansStarted, 1),
                    (Stat::EventsSent, 1),
                ],
            );
            let key = source_key(&src, &k.config());
            let until = ban_of(&k, &key).expect("MON_BANS holds the ban");
            assert_eq!(until, clock + BAN_NS, "{hook:?} {src}: ban deadline");
            assert_eq!(k.source_bucket(&src).unwrap().ban_until_ns, until);
            banned.push((hook, src, key, until));
        }
    }

    // While banned, everything from the source to the monitored port is dropped; other ports
    // are untouched.
    for (hook, src, _, _) in &banned {
        for (what, bytes) in everything(src) {
            let before = k.stats();
            assert_eq!(
                k.run(*hook, &bytes),
                Verdict::Drop,
                "{hook:?} banned {src}: {what}"
            );
            k.expect_stats(
                &format!("{hook:?} banned {src}: {what}"),
                &before,
                &[
                    (Stat::Seen, 1),
                    (Stat::Monitored, 1),
                    (Stat::Dropped, 1),
                    (Stat::DroppedBan, 1),
                ],
            );
        }
        assert_eq!(
            k.run(*hook, &Frame::request(src, 80).build()),
            Verdict::Pass
        );
    }

    // A nanosecond before its deadline each ban holds; at the deadline it is gone.
    for (hook, src, _, until) in &banned {
        k.set_now(until - 1);
        let verdict = k.run(*hook, &Frame::tcp(src, LOOKUP_PORT, TCP_ACK, b"").build());
        assert_eq!(verdict, Verdict::Drop, "{hook:?} {src}: ban ended early");
    }
    let last = banned.iter().map(|b| b.3).max().unwrap();
    k.set_now(last);
    for (hook, src, key, _) in &banned {
        let request = Frame::request(src, LOOKUP_PORT).build();
        let before = k.stats();
        assert_eq!(
            k.run(*hook, &request),
            Verdict::Pass,
            "{hook:?} {src}: ban expired"
        );
        let after = k.stats();
        assert_eq!(delta(&before, &after, Stat::DroppedBan), 0);
        assert_eq!(
            ban_of(&k, key),
            None,
            "{hook:?} {src}: expired ban left in MON_BANS"
        );
        assert_eq!(k.source_bucket(src).unwrap().ban_until_ns, 0);
        // Back to being rate limited: the rest of the refilled burst, then a new ban.
        assert_eq!(k.passes(*hook, &request, 3), 2, "{hook:?} {src}");
        assert!(
            ban_of(&k, key).is_some(),
            "{hook:?} {src}: a new excess, a new ban"
        );
    }
    assert_eq!(k.stat(Stat::BansStarted), 8);
}

/// The attack the ban table exists for: the offender's bucket is evicted from the LRU source
/// table by a flood of spoofed sources, yet its ban, held in a table that only expiry empties,
/// still applies.
#[test]
fn a_spoofed_flood_of_a_million_sources_does_not_evict_a_ban() {
    const FLOOD: u32 = 1_000_000;
    const TABLE: u32 = 65_536;
    // Packets mode: in payload mode forged segments would create no buckets at all (they
    // belong to no connection); this is about a flood that does reach the table.
    let mut k = Loaded::with_capacity(
        Config {
            source: Limit::new(1, 60 * NANOS_PER_SEC, 2).unwrap(),
            ban_ns: 3600 * NANOS_PER_SEC,
            count_mode: count_mode::PACKETS,
            ..Config::default()
        },
        TABLE,
    );
    let offenders = ["203.0.113.66", "2001:db8:bad:1::66"];
    let mut bans = Vec::new();
    for (src, hook) in offenders.iter().zip(HOOKS) {
        let request = Frame::request(src, LOOKUP_PORT).build();
        assert_eq!(k.run_each(hook, &request, 3)[2], Verdict::Drop);
        let key = source_key(src, &k.config());
        let until = ban_of(&k, &key).expect("banned");
        bans.push((key, until));
    }

    // Spoofed sources: half IPv4 (a bijective scramble of the index, so all distinct), half
    // IPv6 /64s; alternating hooks; all within their budgets. The sources sent through TC
    // send twice (one test run repeated twice), so that some spoofed slots are deeper in debt
    // than a one-packet source; XDP test runs with a repeat wait for an RCU grace period
    // each, so XDP sources send once.
    let v4 = Frame::request("192.0.2.1", LOOKUP_PORT);
    let v6 = Frame::request("2001:db8::1", LOOKUP_PORT);
    let (mut v4_bytes, mut v6_bytes) = (v4.build(), v6.build());
    let (v4_at, v6_at) = (v4.src_offset(), v6.src_offset());
    let before = k.stats();
    let started = Instant::now();
    for i in 0..FLOOD {
        let scrambled = i.wrapping_mul(0x9e37_79b1) ^ 0x5bd1_e995;
        let hook = HOOKS[(i & 1) as usize];
        let repeat = if hook == Hook::Tc { 2 } else { 1 };
        let verdict = if i & 2 == 0 {
            // Never 203.0.113.0/24, so never the offender.
            let addr = if scrambled >> 8 == 0x00cb_0071 {
                scrambled ^ 0x0100_0000
            } else {
                scrambled
            };
            v4_bytes[v4_at..v4_at + 4].copy_from_slice(&addr.to_be_bytes());
            k.run_repeat(hook, &v4_bytes, repeat).0
        } else {
            // fd00::/8 unique-local /64s: never the offender's 2001:db8::/32.
            v6_bytes[v6_at] = 0xfd;
            v6_bytes[v6_at + 1..v6_at + 5].copy_from_slice(&scrambled.to_be_bytes());
            k.run_repeat(hook, &v6_bytes, repeat).0
        };
        assert_eq!(verdict, Verdict::Pass, "spoofed source {i}");
    }
    let elapsed = started.elapsed();
    let after = k.stats();
    println!(
        "flood of {FLOOD} distinct sources through BPF_PROG_TEST_RUN (alternating XDP and TC, \
         TC repeat 2): {:.2} s, {:.2} us per call",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / FLOOD as f64
    );
    assert_eq!(delta(&before, &after, Stat::Requests), 3 * FLOOD as u64 / 2);
    assert_eq!(delta(&before, &after, Stat::Dropped), 0);

    // The flood churned the whole table: far more sources than slots passed through it...
    let tracked = k.kernel.sources().unwrap().len();
    let slots = (k.kernel.table_shape().sets as usize) * SOURCE_WAYS;
    assert!(
        tracked > slots * 9 / 10 && tracked <= slots,
        "{tracked} sources tracked in {slots} slots after {FLOOD} spoofed sources"
    );
    // ...but a banned slot ranks above every unbanned one when a set is full, so the
    // offenders kept theirs (the path that restores an evicted ban from MON_BANS is
    // `a_restored_banned_bucket_counts_only_refused_requests`). Their bans still drop
    // everything they send, on both hooks. Back in payload mode, so that only two of the
    // kinds below are requests.
    k.update_config(|c| c.count_mode = count_mode::PAYLOAD);
    for ((key, until), src) in bans.iter().zip(offenders) {
        let slot = k
            .kernel
            .source(key)
            .unwrap()
            .expect("the ban's slot survived the flood");
        assert_eq!(slot.ban_until_ns, *until, "{src}");
        assert_eq!(
            ban_of(&k, key),
            Some(*until),
            "{src}: ban lost to the flood"
        );
        for hook in HOOKS {
            for (what, bytes) in everything(src) {
                let before = k.stats();
                assert_eq!(k.run(hook, &bytes), Verdict::Drop, "{hook:?} {src} {what}");
                assert_eq!(delta(&before, &k.stats(), Stat::DroppedBan), 1);
            }
        }
        // Three requests before the ban (two admitted, one refused), then the requests among
        // what was sent since: two of the six kinds per hook.
        let slot = k.kernel.source(key).unwrap().expect("slot");
        assert_eq!(slot.ban_until_ns, *until, "{src}");
        assert_eq!((slot.requests, slot.refused), (7, 5), "{src}");
    }
}

/// Regression: a banned source whose bucket had been evicted got it back charged as if its
/// first packet were an admitted request, whatever that packet was (a pure ACK included):
/// `requests` went to 1 with nothing refused, and a token was spent.
#[test]
fn a_restored_banned_bucket_counts_only_refused_requests() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 2).unwrap(),
        ..Config::default()
    });
    let until = kernel_now_ns() + 3600 * NANOS_PER_SEC;
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [v4_source(h as u8, 1), v6_source(h as u8, 1)] {
            // Banned from user space with no bucket: the same state a flood leaves behind.
            let key = source_key(&src, &k.config());
            k.kernel.set_ban(&key, until).unwrap();
            assert!(k.source_bucket(&src).is_none());
            let ack = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"").build();
            assert_eq!(k.run(hook, &ack), Verdict::Drop, "{hook:?} {src}");
            let bucket = k.source_bucket(&src).expect("bucket restored");
            assert_eq!(bucket.ban_until_ns, until);
            assert_eq!(
                (bucket.requests, bucket.refused),
                (0, 0),
                "{hook:?} {src}: an ACK"
            );
            let request = Frame::request(&src, LOOKUP_PORT).build();
            assert_eq!(k.run(hook, &request), Verdict::Drop);
            let bucket = k.source_bucket(&src).unwrap();
            assert_eq!((bucket.requests, bucket.refused), (1, 1), "{hook:?} {src}");
            // Once the ban is lifted the source has its whole budget: the banned traffic
            // spent none of it.
            k.kernel.clear_ban(&key).unwrap();
            assert_eq!(
                k.passes(hook, &request, 3),
                2,
                "{hook:?} {src}: burst of 2 intact"
            );
        }
    }
}

/// When the ban table is full a new offender cannot be banned: it is counted and the source
/// stays rate limited (its excess is still dropped).
#[test]
fn a_full_ban_table_is_counted_and_the_source_is_only_rate_limited() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap(),
        ban_ns: 3600 * NANOS_PER_SEC,
        ..Config::default()
    });
    let until = kernel_now_ns() + 3600 * NANOS_PER_SEC;
    for i in 0..MAX_BANS {
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0xfe, 0x80]);
        addr[12..].copy_from_slice(&i.to_be_bytes());
        k.kernel
            .set_ban(&AddrKey::from_v6(addr), until)
            .expect("fill MON_BANS");
    }
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(h as u8, 1);
        let request = Frame::request(&src, LOOKUP_PORT).build();
        assert_eq!(k.run(hook, &request), Verdict::Pass);
        let before = k.stats();
        assert_eq!(k.run(hook, &request), Verdict::Drop);
        k.expect_stats(
            &format!("{hook:?} {src}: over the limit with the ban table full"),
            &before,
            &[
                (Stat::Seen, 1),
                (Stat::Monitored, 1),
                (Stat::Requests, 1),
                (Stat::Dropped, 1),
                (Stat::DroppedRate, 1),
                (Stat::BansFull, 1),
                (Stat::EventsSent, 1),
            ],
        );
        assert_eq!(k.source_bucket(&src).unwrap().ban_until_ns, 0);
        // Not banned: its non-requests still pass.
        let ack = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"").build();
        assert_eq!(k.run(hook, &ack), Verdict::Pass);
    }
}
