//! What counts as one request in each counting mode (`syn`, `packets`, `payload`, `http`), for
//! every TCP flag combination a connection goes through and for UDP, on both hooks; and that
//! packets which are not requests are never charged or dropped.

use monitor_common::{
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    harness::*,
};

const MODES: [(u8, &str); 4] = [
    (count_mode::SYN, "syn"),
    (count_mode::PACKETS, "packets"),
    (count_mode::PAYLOAD, "payload"),
    (count_mode::HTTP, "http"),
];

const HTTP: &[u8] = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\nHost: x\r\n\r\n";
const TLS: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";

struct Case {
    what: &'static str,
    build: fn(&str) -> Vec<u8>,
    /// Whether it is a request in syn, packets, payload, http mode.
    counts: [bool; 4],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "SYN",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_SYN, b"").build(),
            counts: [true, true, false, false],
        },
        Case {
            what: "SYN carrying data (fast open)",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_SYN, HTTP).build(),
            counts: [true, true, true, true],
        },
        Case {
            what: "SYN+ACK",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_SYN | TCP_ACK, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "pure ACK",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_ACK, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "pure ACK padded to the 60-byte Ethernet minimum",
            build: |s| {
                let mut b = Frame::tcp(s, LOOKUP_PORT, TCP_ACK, b"").build();
                b.resize(60.max(b.len()), 0);
                b
            },
            counts: [false, true, false, false],
        },
        Case {
            what: "PSH+ACK without payload",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "PSH+ACK with an HTTP request",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_PSH | TCP_ACK, HTTP).build(),
            counts: [false, true, true, true],
        },
        Case {
            what: "ACK with non-HTTP payload",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_ACK, TLS).build(),
            counts: [false, true, true, false],
        },
        Case {
            what: "FIN+ACK",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_FIN | TCP_ACK, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "RST",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_RST, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "RST+ACK",
            build: |s| Frame::tcp(s, LOOKUP_PORT, TCP_RST | TCP_ACK, b"").build(),
            counts: [false, true, false, false],
        },
        Case {
            what: "UDP datagram",
            build: |s| Frame::udp(s, LOOKUP_PORT, b"lookup 15555550100").build(),
            counts: [true, true, true, false],
        },
        Case {
            what: "UDP datagram carrying an HTTP request line",
            build: |s| Frame::udp(s, LOOKUP_PORT, HTTP).build(),
            counts: [true, true, true, false],
        },
        Case {
            what: "empty UDP datagram",
            build: |s| Frame::udp(s, LOOKUP_PORT, b"").build(),
            counts: [true, true, true, false],
        },
    ]
}

#[test]
fn each_mode_counts_exactly_its_requests() {
    let mut k = Loaded::new(config_with_limit(1000, 1000));
    let cases = cases();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (m, (mode, mode_name)) in MODES.into_iter().enumerate() {
            k.update_config(|c| c.count_mode = mode);
            let family = (h * MODES.len() + m) as u8;
            for (c, case) in cases.iter().enumerate() {
                for v6 in [false, true] {
                    let src = if v6 {
                        v6_source(family, c as u16)
                    } else {
                        v4_source(family, c as u8)
                    };
                    let context = format!("{hook:?} {mode_name} mode, {} from {src}", case.what);
                    let before = k.stats();
                    assert_eq!(k.run(hook, &(case.build)(&src)), Verdict::Pass, "{context}");
                    if case.counts[m] {
                        k.expect_stats(
                            &context,
                            &before,
                            &[
                                (Stat::Seen, 1),
                                (Stat::Monitored, 1),
                                (Stat::Requests, 1),
                                (Stat::Passed, 1),
                            ],
                        );
                        let bucket = k.source_bucket(&src);
                        assert_eq!(bucket.map(|b| b.requests), Some(1), "{context}");
                    } else {
                        k.expect_stats(
                            &context,
                            &before,
                            &[
                                (Stat::Seen, 1),
                                (Stat::Monitored, 1),
                                (Stat::NotCounted, 1),
                                (Stat::Passed, 1),
                            ],
                        );
                        assert!(k.source_bucket(&src).is_none(), "{context}: charged");
                    }
                }
            }
        }
    }
}

/// A source over its budget still gets its non-requests through (its ACKs, FINs and RSTs keep
/// existing connections healthy), while every request is dropped.
#[test]
fn an_exhausted_source_is_dropped_only_on_requests() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 2).unwrap(),
        ..Config::default()
    });
    let cases = cases();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (m, (mode, mode_name)) in MODES.into_iter().enumerate() {
            k.update_config(|c| c.count_mode = mode);
            for v6 in [false, true] {
                let family = (h * MODES.len() + m) as u8;
                let src = if v6 {
                    v6_source(family, 0)
                } else {
                    v4_source(family, 0)
                };
                // Spend the budget of two with whatever this mode counts.
                let spend = cases.iter().find(|c| c.counts[m]).unwrap();
                let bytes = (spend.build)(&src);
                assert_eq!(
                    k.passes(hook, &bytes, 3),
                    2,
                    "{hook:?} {mode_name}: burst of 2"
                );
                for case in &cases {
                    let context = format!("{hook:?} {mode_name} mode, exhausted, {}", case.what);
                    let before = k.stats();
                    let verdict = k.run(hook, &(case.build)(&src));
                    let after = k.stats();
                    if case.counts[m] {
                        assert_eq!(verdict, Verdict::Drop, "{context}");
                        assert_eq!(delta(&before, &after, Stat::DroppedRate), 1, "{context}");
                    } else {
                        assert_eq!(verdict, Verdict::Pass, "{context}");
                        assert_eq!(delta(&before, &after, Stat::NotCounted), 1, "{context}");
                    }
                }
                let bucket = k.source_bucket(&src).unwrap();
                let requests = cases.iter().filter(|c| c.counts[m]).count() as u64;
                assert_eq!(
                    (bucket.requests, bucket.refused),
                    (3 + requests, 1 + requests),
                    "{hook:?} {mode_name}: only requests reach the bucket"
                );
            }
        }
    }
}
