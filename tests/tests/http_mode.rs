//! The `http` counting mode on both hooks: a TCP segment is one request when its payload
//! begins an HTTP/1.x request line (whose path starts with the configured prefix, if any).
//! Pipelined requests in one segment count once; a request split across segments counts once,
//! on the segment carrying its start.

use monitor_common::{
    config::{Config, count_mode},
    http::{HTTP_INSPECT_MAX, HTTP_PATH_MAX},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{Frame, IPPROTO_HOPOPTS, IPPROTO_ROUTING, TCP_ACK, TCP_PSH},
    harness::*,
};

const PREFIX: &[u8] = b"/1.1/contacts/lookup";

fn http_config(prefix: &[u8]) -> Config {
    let mut config = Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1000).unwrap(),
        count_mode: count_mode::HTTP,
        ..Config::default()
    };
    config.http_path[..prefix.len()].copy_from_slice(prefix);
    config.http_path_len = prefix.len() as u8;
    config
}

fn segment(src: &str, payload: &[u8]) -> Frame {
    Frame::tcp(src, LOOKUP_PORT, TCP_PSH | TCP_ACK, payload)
}

/// Runs one segment and returns whether it was counted as a request (asserting it passed and
/// was otherwise counted as not a request).
#[track_caller]
fn counted(k: &mut Loaded, hook: Hook, frame: &Frame) -> bool {
    let before = k.stats();
    assert_eq!(k.run(hook, &frame.build()), Verdict::Pass);
    let after = k.stats();
    let requests = delta(&before, &after, Stat::Requests);
    let not_counted = delta(&before, &after, Stat::NotCounted);
    assert_eq!(requests + not_counted, 1, "{hook:?}: one monitored segment");
    requests == 1
}

#[test]
fn request_lines_with_and_without_the_path_prefix() {
    let mut k = Loaded::new(http_config(PREFIX));
    let cases: [(&[u8], bool); 12] = [
        (
            b"GET /1.1/contacts/lookup?phone=15555550100 HTTP/1.1\r\nHost: api\r\n\r\n",
            true,
        ),
        (
            b"POST /1.1/contacts/lookup HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            true,
        ),
        (b"PUT /1.1/contacts/lookup/bulk HTTP/1.0\r\n\r\n", true),
        (b"HEAD /1.1/contacts/lookup HTTP/1.1\r\n\r\n", true),
        (b"OPTIONS /1.1/contacts/lookup HTTP/1.1\r\n\r\n", true),
        (b"GET /1.1/users/show?id=1 HTTP/1.1\r\n\r\n", false),
        (b"GET / HTTP/1.1\r\n\r\n", false),
        (b"GET /1.1/contacts/looku HTTP/1.1\r\n\r\n", false),
        (b"get /1.1/contacts/lookup HTTP/1.1\r\n\r\n", false),
        (b"GET  /1.1/contacts/lookup HTTP/1.1\r\n\r\n", false),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS client hello",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n", false),
    ];
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (i, (payload, want)) in cases.iter().enumerate() {
            for v6 in [false, true] {
                let src = if v6 {
                    v6_source(h as u8, i as u16)
                } else {
                    v4_source(h as u8, i as u8)
                };
                let what = String::from_utf8_lossy(&payload[..payload.len().min(40)]);
                assert_eq!(
                    counted(&mut k, hook, &segment(&src, payload)),
                    *want,
                    "{hook:?} with prefix: {what:?}"
                );
                assert_eq!(k.source_bucket(&src).is_some(), *want, "{hook:?} {what:?}");
            }
        }
    }
    // Without a prefix, any request line counts, and still nothing else does.
    k.update_config(|c| c.http_path_len = 0);
    for hook in HOOKS {
        let src = "192.0.2.9";
        for (payload, want) in [
            (&b"GET /1.1/users/show HTTP/1.1\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"DELETE /x HTTP/1.1\r\n\r\n", true),
            (b"GET x HTTP/1.1\r\n\r\n", false),
            (b"\x16\x03\x01\x02\x00", false),
        ] {
            assert_eq!(
                counted(&mut k, hook, &segment(src, payload)),
                want,
                "{hook:?} no prefix"
            );
        }
    }
}

#[test]
fn the_payload_is_found_behind_every_header_variant() {
    let mut k = Loaded::new(http_config(PREFIX));
    let request = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n";
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let frames = [
            segment(&v4_source(h as u8, 1), request).with_tcp_options(12),
            segment(&v4_source(h as u8, 2), request)
                .with_vlans(&[3, 4])
                .with_ipv4_options(12)
                .with_tcp_options(40),
            segment(&v6_source(h as u8, 3), request)
                .with_vlans(&[5])
                .with_v6_extensions(&[(IPPROTO_HOPOPTS, 16), (IPPROTO_ROUTING, 8)])
                .with_tcp_options(20),
        ];
        for frame in &frames {
            assert!(counted(&mut k, hook, frame), "{hook:?} {frame:?}");
        }
    }
}

#[test]
fn a_request_split_across_segments_counts_once_on_its_first_segment() {
    let mut k = Loaded::new(http_config(PREFIX));
    let whole = b"GET /1.1/contacts/lookup?phone=15555550100 HTTP/1.1\r\nHost: api\r\n\r\n";
    for (h, hook) in HOOKS.into_iter().enumerate() {
        // Split inside the path, inside the prefix, and right after the slash.
        for (i, at) in [30usize, 13, 5].into_iter().enumerate() {
            let src = v4_source(h as u8, i as u8);
            assert!(
                counted(&mut k, hook, &segment(&src, &whole[..at])),
                "{hook:?}: first segment split at {at}"
            );
            assert!(
                !counted(&mut k, hook, &segment(&src, &whole[at..])),
                "{hook:?}: continuation from {at}"
            );
            assert_eq!(k.source_bucket(&src).unwrap().requests, 1);
        }
        // Split before the slash: neither piece is recognisable, so the request is not
        // counted at all (documented in monitor_common::http).
        let src = v4_source(h as u8, 9);
        assert!(!counted(&mut k, hook, &segment(&src, &whole[..4])));
        assert!(!counted(&mut k, hook, &segment(&src, &whole[4..])));
        // A first segment whose bytes already disagree with the prefix is not a request.
        let other = b"GET /1.1/users/show?id=1 HTTP/1.1\r\n\r\n";
        assert!(!counted(&mut k, hook, &segment(&src, &other[..10])));
    }
}

#[test]
fn pipelined_requests_in_one_segment_count_once() {
    let mut k = Loaded::new(http_config(PREFIX));
    let one = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\nHost: api\r\n\r\n";
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v6_source(h as u8, 1);
        let three: Vec<u8> = one.iter().chain(one).chain(one).copied().collect();
        assert!(counted(&mut k, hook, &segment(&src, &three)));
        assert_eq!(
            k.source_bucket(&src).unwrap().requests,
            1,
            "{hook:?}: three pipelined"
        );
    }
}

#[test]
fn payloads_shorter_than_a_request_line_at_every_length() {
    let mut k = Loaded::new(http_config(PREFIX));
    let request = b"GET /1.1/contacts/lookup?phone=15555550100 HTTP/1.1\r\nHost: api\r\n\r\n";
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for len in 1..=request.len() {
            let src = format!("10.{h}.{}.{}", len / 200, len % 200 + 1);
            // "GET /" is the shortest start of a request; every longer cut agrees with the
            // prefix as far as it goes.
            assert_eq!(
                counted(&mut k, hook, &segment(&src, &request[..len])),
                len >= 5,
                "{hook:?}: first {len} bytes"
            );
        }
    }
}

#[test]
fn the_longest_prefix_is_compared_in_full_with_the_longest_method() {
    let mut prefix = vec![b'/'];
    prefix.extend(std::iter::repeat_n(b'p', HTTP_PATH_MAX - 1));
    let mut k = Loaded::new(http_config(&prefix));
    let mut request = b"OPTIONS ".to_vec();
    request.extend_from_slice(&prefix);
    request.extend_from_slice(b"?x HTTP/1.1\r\n\r\n");
    let last = b"OPTIONS ".len() + HTTP_PATH_MAX - 1;
    assert_eq!(
        last,
        HTTP_INSPECT_MAX - 1,
        "the last byte the kernel inspects"
    );
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(h as u8, 1);
        assert!(counted(&mut k, hook, &segment(&src, &request)));
        let mut wrong = request.clone();
        wrong[last] = b'q';
        assert!(
            !counted(&mut k, hook, &segment(&src, &wrong)),
            "{hook:?}: last prefix byte"
        );
    }
}

#[test]
fn an_exhausted_source_loses_requests_but_not_the_rest_of_its_stream() {
    let mut config = http_config(PREFIX);
    config.source = Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap();
    let mut k = Loaded::new(config);
    let request = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n";
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(h as u8, 1);
        assert_eq!(k.run(hook, &segment(&src, request).build()), Verdict::Pass);
        assert_eq!(k.run(hook, &segment(&src, request).build()), Verdict::Drop);
        for other in [
            segment(&src, b"GET /1.1/users/show HTTP/1.1\r\n\r\n"),
            segment(&src, b"continuation of a body"),
            Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b""),
        ] {
            assert_eq!(k.run(hook, &other.build()), Verdict::Pass, "{hook:?}");
        }
    }
}
