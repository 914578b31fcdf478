//! In `payload` and `http` modes a TCP segment counts only when it belongs to a connection
//! this host has: an off-path sender forging someone else's address (no handshake) can neither
//! spend that address's budget nor get it banned. Each row runs on both hooks; the connections
//! are real, on loopback in the test's own network namespace (`tests::conns`).

use monitor_common::{
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    conns::{Tuple, tcp_tuple},
    frames::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;
const GET: &[u8] = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n";

/// One request per minute, burst 1, in `mode`.
fn strict(mode: u8) -> Config {
    Config {
        source: Limit::new(1, MINUTE_NS, 1).expect("valid limit"),
        count_mode: mode,
        ..Config::default()
    }
}

fn tuple_of(frame: &Frame) -> Tuple {
    tcp_tuple(&frame.build()).expect("a TCP frame")
}

/// A forged segment: passes, counted `unconnected` (and `not_counted`), charged to nobody.
#[track_caller]
fn assert_uncounted(k: &mut Loaded, hook: Hook, frame: &Frame, what: &str) {
    let before = k.stats();
    assert_eq!(
        k.run_spoofed(hook, &frame.build()),
        Verdict::Pass,
        "{hook:?} {what}"
    );
    k.expect_stats(
        &format!("{hook:?} {what}"),
        &before,
        &[
            (Stat::Seen, 1),
            (Stat::Monitored, 1),
            (Stat::NotCounted, 1),
            (Stat::Unconnected, 1),
            (Stat::Passed, 1),
        ],
    );
    assert_eq!(
        k.source_bucket(&frame.src.to_string()),
        None,
        "{hook:?} {what}: a bucket for {}",
        frame.src
    );
}

#[test]
fn forged_data_segments_are_not_counted_and_real_connections_are() {
    for (mode, name) in [(count_mode::PAYLOAD, "payload"), (count_mode::HTTP, "http")] {
        let mut k = Loaded::new(strict(mode));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            for src in [v4_source(h as u8, 1), v6_source(h as u8, 1)] {
                // A real client of the same server, so the port has a listener: a segment
                // that finds only the listener is not part of a connection either.
                let neighbour = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"");
                let mut neighbour_tuple = tuple_of(&neighbour);
                neighbour_tuple.src.set_port(40001);
                k.conns.ensure(neighbour_tuple).expect("a real connection");

                let forged = Frame::tcp(&src, LOOKUP_PORT, TCP_PSH | TCP_ACK, GET);
                for _ in 0..3 {
                    assert_uncounted(&mut k, hook, &forged, &format!("{name}: forged {src}"));
                }

                // The same bytes on a real connection are requests: the first passes, the
                // second is over the budget of one.
                let before = k.stats();
                assert_eq!(
                    k.run_each(hook, &forged.build(), 2),
                    [Verdict::Pass, Verdict::Drop],
                    "{hook:?} {name}: {src} connected"
                );
                assert_eq!(delta(&before, &k.stats(), Stat::Requests), 2);
                assert_eq!(delta(&before, &k.stats(), Stat::Unconnected), 0);
            }
        }
    }
}

#[test]
fn a_closed_connection_no_longer_counts() {
    let mut k = Loaded::new(config_with_limit(1000, 1000));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [v4_source(10 + h as u8, 1), v6_source(10 + h as u8, 1)] {
            let request = Frame::request(&src, LOOKUP_PORT);
            let before = k.stats();
            assert_eq!(k.run(hook, &request.build()), Verdict::Pass);
            assert_eq!(delta(&before, &k.stats(), Stat::Requests), 1, "{src}");
            k.conns.close(&tuple_of(&request));
            assert_uncounted_keeps_bucket(&mut k, hook, &request, &src);
        }
    }
}

/// Like `assert_uncounted`, for a source that already has a bucket (it must not move).
#[track_caller]
fn assert_uncounted_keeps_bucket(k: &mut Loaded, hook: Hook, frame: &Frame, src: &str) {
    let bucket = k.source_bucket(src).expect("a bucket from the real request");
    let before = k.stats();
    assert_eq!(k.run_spoofed(hook, &frame.build()), Verdict::Pass);
    k.expect_stats(
        &format!("{hook:?} {src}: after its connection closed"),
        &before,
        &[
            (Stat::Seen, 1),
            (Stat::Monitored, 1),
            (Stat::NotCounted, 1),
            (Stat::Unconnected, 1),
            (Stat::Passed, 1),
        ],
    );
    let after = k.source_bucket(src).expect("bucket");
    assert_eq!(
        (after.requests, after.tat_ns),
        (bucket.requests, bucket.tat_ns)
    );
}

/// The attack the check exists for: with bans on, a flood of forged requests naming a victim
/// neither spends its budget nor bans it, and the victim's own requests still pass.
#[test]
fn forged_requests_never_ban_the_address_they_name() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, MINUTE_NS, 2).expect("valid limit"),
        ban_ns: 3600 * NANOS_PER_SEC,
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for victim in [v4_source(20 + h as u8, 1), v6_source(20 + h as u8, 1)] {
            let forged = Frame::request(&victim, LOOKUP_PORT);
            for i in 0..50 {
                assert_eq!(
                    k.run_spoofed(hook, &forged.build()),
                    Verdict::Pass,
                    "{hook:?} forged {i} naming {victim}"
                );
            }
            assert_eq!(k.source_bucket(&victim), None, "{hook:?} {victim}");
            let key = source_key(&victim, &k.config());
            assert!(
                !k.kernel
                    .bans()
                    .expect("read MON_BANS")
                    .iter()
                    .any(|(banned, _)| *banned == key),
                "{hook:?} {victim} banned by forged segments"
            );
            // The victim's real requests: its whole burst passes.
            assert_eq!(
                k.passes(hook, &forged.build(), 2),
                2,
                "{hook:?} {victim}: own requests"
            );
        }
    }
    assert_eq!(k.stat(Stat::BansStarted), 0);
    assert_eq!(k.stat(Stat::Unconnected), 2 * 2 * 50);
}

/// `syn` and `packets` count what a forger can send (documented in README and kernel.md):
/// these rows pin that down so it changes only on purpose.
#[test]
fn syn_and_packets_modes_count_forged_segments() {
    for (mode, flags, payload, name) in [
        (count_mode::SYN, TCP_SYN, &b""[..], "syn: a forged SYN"),
        (
            count_mode::PACKETS,
            TCP_PSH | TCP_ACK,
            GET,
            "packets: a forged segment",
        ),
    ] {
        let mut k = Loaded::new(strict(mode));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            let src = v4_source(30 + h as u8, 1);
            let frame = Frame::tcp(&src, LOOKUP_PORT, flags, payload).build();
            assert_eq!(
                [k.run_spoofed(hook, &frame), k.run_spoofed(hook, &frame)],
                [Verdict::Pass, Verdict::Drop],
                "{hook:?} {name}"
            );
        }
        assert_eq!(k.stat(Stat::Unconnected), 0, "{name}");
    }
}

/// UDP has no connections: every mode that counts UDP counts a forged datagram.
#[test]
fn udp_is_counted_without_a_connection() {
    let mut k = Loaded::new(strict(count_mode::PAYLOAD));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let frame = Frame::udp(&v4_source(40 + h as u8, 1), LOOKUP_PORT, b"q").build();
        assert_eq!(
            [k.run_spoofed(hook, &frame), k.run_spoofed(hook, &frame)],
            [Verdict::Pass, Verdict::Drop],
            "{hook:?}"
        );
    }
}
