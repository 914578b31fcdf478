//! Ways to send requests past the counter, closed: fragments (a first fragment counts as one
//! request in every mode that counts payload, even when it holds only part of the TCP header),
//! address families (an IPv6 list entry never matches an IPv4 source, nor the reverse, and an
//! IPv6 packet cannot borrow an IPv4 source's key), and IPv6 authentication headers. Each row
//! runs on both hooks.

use monitor::{cidr::Cidr, kernel::List};
use monitor_common::{
    config::{Config, config_flags, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{Frame, IPPROTO_AH, IPPROTO_FRAGMENT, TCP_ACK, TCP_PSH},
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;

fn strict(mode: u8) -> Config {
    Config {
        source: Limit::new(1, MINUTE_NS, 1).expect("valid limit"),
        count_mode: mode,
        ..Config::default()
    }
}

/// `bytes` counts as one request of `src`: the first run passes, the second is over the
/// budget of one and dropped.
#[track_caller]
fn assert_one_request(k: &mut Loaded, hook: Hook, bytes: &[u8], src: &str, what: &str) {
    let before = k.stats();
    assert_eq!(
        k.run_each(hook, bytes, 2),
        [Verdict::Pass, Verdict::Drop],
        "{hook:?} {what}"
    );
    assert_eq!(
        delta(&before, &k.stats(), Stat::Requests),
        2,
        "{hook:?} {what}"
    );
    let bucket = k
        .source_bucket(src)
        .unwrap_or_else(|| panic!("{hook:?} {what}: no bucket for {src}"));
    assert_eq!((bucket.requests, bucket.refused), (2, 1), "{hook:?} {what}");
}

/// An IPv4 first fragment whose IP payload is cut to `l4_bytes` of the TCP header and payload.
fn v4_first_fragment(src: &str, l4_bytes: usize) -> Vec<u8> {
    let frame = Frame::request(src, LOOKUP_PORT).with_v4_fragment(0, true);
    let mut bytes = frame.build();
    let l3 = frame.l3_offset();
    bytes.truncate(l3 + 20 + l4_bytes);
    bytes[l3 + 2..l3 + 4].copy_from_slice(&((20 + l4_bytes) as u16).to_be_bytes());
    bytes
}

#[test]
fn a_first_fragment_holding_only_the_tcp_header_counts() {
    for (mode, name) in [(count_mode::PAYLOAD, "payload"), (count_mode::HTTP, "http")] {
        let mut k = Loaded::new(strict(mode));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            let v4 = v4_source(h as u8, 1);
            let bytes = Frame::tcp(&v4, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"")
                .with_v4_fragment(0, true)
                .build();
            assert_one_request(
                &mut k,
                hook,
                &bytes,
                &v4,
                &format!("{name}: IPv4 header only"),
            );

            let v6 = v6_source(h as u8, 1);
            let bytes = Frame::tcp(&v6, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"")
                .with_v6_extensions(&[(IPPROTO_FRAGMENT, 8)])
                .with_v6_more_fragments()
                .build();
            assert_one_request(
                &mut k,
                hook,
                &bytes,
                &v6,
                &format!("{name}: IPv6 header only"),
            );

            // In http mode the first piece of the request line is no evidence either way.
            let v4 = v4_source(h as u8, 2);
            let bytes = Frame::tcp(&v4, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"GE")
                .with_v4_fragment(0, true)
                .build();
            assert_one_request(
                &mut k,
                hook,
                &bytes,
                &v4,
                &format!("{name}: `GE` then the rest"),
            );
        }
    }
}

/// Linux discards a non-final fragment of under 8 bytes, so 8 bytes (both ports and the
/// sequence number) is the shortest first fragment that reassembles; 16 still lacks the flags.
#[test]
fn a_first_fragment_cut_inside_the_tcp_header_counts() {
    let mut k = Loaded::new(strict(count_mode::PAYLOAD));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (n, cut) in [8usize, 16].into_iter().enumerate() {
            let src = v4_source(10 + h as u8, n as u8);
            let bytes = v4_first_fragment(&src, cut);
            assert_one_request(
                &mut k,
                hook,
                &bytes,
                &src,
                &format!("{cut}-byte TCP fragment"),
            );
        }
        // Under 4 bytes the ports are unknown: it passes as malformed (and Linux discards it).
        let src = v4_source(10 + h as u8, 9);
        let before = k.stats();
        assert_eq!(k.run(hook, &v4_first_fragment(&src, 2)), Verdict::Pass);
        k.expect_stats(
            &format!("{hook:?} 2-byte first fragment"),
            &before,
            &[(Stat::Seen, 1), (Stat::Malformed, 1)],
        );
    }
}

/// Fragments open no path around the connection check: a forged first fragment is not counted.
#[test]
fn a_forged_first_fragment_is_not_counted() {
    let mut k = Loaded::new(strict(count_mode::PAYLOAD));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(20 + h as u8, 1);
        for bytes in [
            v4_first_fragment(&src, 8),
            Frame::request(&src, LOOKUP_PORT)
                .with_v4_fragment(0, true)
                .build(),
        ] {
            k.expect_unconnected(hook, &bytes, &format!("{hook:?} forged first fragment"));
        }
        assert_eq!(k.source_bucket(&src), None);
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test CIDR")
}

fn with_lists(k: &mut Loaded, allow: &[&str], deny: &[&str]) {
    for c in allow {
        k.kernel
            .list_insert(List::Allow, &cidr(c), 0)
            .expect("allow");
    }
    for c in deny {
        k.kernel.list_insert(List::Deny, &cidr(c), 0).expect("deny");
    }
    let mut flags = 0;
    if !allow.is_empty() {
        flags |= config_flags::HAS_ALLOW;
    }
    if !deny.is_empty() {
        flags |= config_flags::HAS_DENY;
    }
    k.update_config(|c| c.flags = flags);
}

#[test]
fn an_ipv6_allow_entry_never_exempts_ipv4_and_the_reverse() {
    for (allow, src, other) in [
        ("::/0", "10.50.0.1", "fd50::1"),
        ("0.0.0.0/0", "fd51::1", "10.51.0.1"),
    ] {
        let mut k = Loaded::new(strict(count_mode::PAYLOAD));
        with_lists(&mut k, &[allow], &[]);
        for hook in HOOKS {
            // The other family's source is limited like any unlisted one...
            let bytes = Frame::request(src, LOOKUP_PORT).build();
            let before = k.stats();
            assert_eq!(
                k.run_each(hook, &bytes, 2)[1],
                Verdict::Drop,
                "{hook:?} allow {allow}: {src} was exempt"
            );
            assert_eq!(delta(&before, &k.stats(), Stat::Allowlisted), 0);
            // ...and the entry's own family is exempt.
            let bytes = Frame::request(other, LOOKUP_PORT).build();
            assert_eq!(
                k.passes(hook, &bytes, 3),
                3,
                "{hook:?} allow {allow}: {other}"
            );
        }
    }
}

#[test]
fn an_ipv6_deny_entry_never_drops_ipv4_and_the_reverse() {
    for (deny, src, other) in [
        ("::/8", "10.52.0.1", "::5"),
        ("0.0.0.0/0", "fd53::1", "10.53.0.1"),
    ] {
        let mut k = Loaded::new(config_with_limit(1000, 1000));
        with_lists(&mut k, &[], &[deny]);
        for hook in HOOKS {
            let bytes = Frame::request(src, LOOKUP_PORT).build();
            let before = k.stats();
            assert_eq!(
                k.run(hook, &bytes),
                Verdict::Pass,
                "{hook:?} deny {deny}: {src}"
            );
            assert_eq!(delta(&before, &k.stats(), Stat::DroppedDeny), 0);
            let bytes = Frame::request(other, LOOKUP_PORT).build();
            assert_eq!(
                k.run(hook, &bytes),
                Verdict::Drop,
                "{hook:?} deny {deny}: {other}"
            );
        }
    }
}

/// With an IPv6 source prefix of 96 or more, an IPv6 packet from `::ffff:a.b.c.d` used to land
/// in the bucket of the IPv4 source a.b.c.d. Linux drops such packets, so it passes as
/// malformed and touches no bucket. `packets` mode, so no connection check plays a part.
#[test]
fn an_ipv6_packet_from_a_v4_mapped_source_is_not_that_ipv4_source() {
    for v6_prefix in [96, 128] {
        let mut k = Loaded::new(strict(count_mode::PACKETS));
        k.update_config(|c| c.set_prefixes(32, v6_prefix, 24, 48));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            let v4 = v4_source(60 + h as u8, 1);
            let v4_bytes = Frame::request(&v4, LOOKUP_PORT).build();
            assert_eq!(k.run(hook, &v4_bytes), Verdict::Pass, "{hook:?} {v4}");
            let mapped = format!("::ffff:{v4}");
            let mut frame = Frame::request(&mapped, LOOKUP_PORT);
            frame.dst = "2001:db8::1".parse().unwrap();
            let before = k.stats();
            assert_eq!(
                k.run(hook, &frame.build()),
                Verdict::Pass,
                "{hook:?} {mapped}"
            );
            k.expect_stats(
                &format!("{hook:?} /{v6_prefix}: {mapped}"),
                &before,
                &[(Stat::Seen, 1), (Stat::Malformed, 1)],
            );
            assert_eq!(k.source_bucket(&v4).expect("bucket").requests, 1);
        }
    }
}

/// An IPv6 authentication header counts its length in 4-byte words, less 2; walked like the
/// other extension headers, the request behind it is counted.
#[test]
fn a_request_behind_an_ipv6_authentication_header_counts() {
    let mut k = Loaded::new(strict(count_mode::PAYLOAD));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v6_source(70 + h as u8, 1);
        let bytes = Frame::request(&src, LOOKUP_PORT)
            .with_v6_extensions(&[(IPPROTO_AH, 24)])
            .build();
        assert_one_request(&mut k, hook, &bytes, &src, "IPv6 AH (24 bytes)");
        let src = v6_source(70 + h as u8, 2);
        let bytes = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"x")
            .with_v6_extensions(&[(IPPROTO_FRAGMENT, 8), (IPPROTO_AH, 16)])
            .build();
        assert_one_request(
            &mut k,
            hook,
            &bytes,
            &src,
            "fragment header then AH (16 bytes)",
        );
    }
}
