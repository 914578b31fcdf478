//! Parsing and classification through the real program, on both hooks: which frames reach
//! the limiter (and under which source), which pass untouched, and how each is counted.
//!
//! Most tests run under a budget of one request per minute, so a frame that is parsed right
//! passes once and is dropped the second time; that proves the source and port were read
//! correctly, not only that the frame was not refused.

use monitor::kernel::List;
use monitor_common::{
    config::{Config, action, config_flags, port_flags},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{
        ETH_P_8021AD, Frame, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_ROUTING, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;

/// One request per minute, burst 1.
fn strict() -> Config {
    Config {
        source: Limit::new(1, MINUTE_NS, 1).expect("valid limit"),
        ..Config::default()
    }
}

/// Sends `frame` twice and asserts it was taken as a monitored request of its own source: the
/// first passes, the second is over the budget of one and dropped, and the source's bucket saw
/// both.
#[track_caller]
fn assert_request(k: &mut Loaded, hook: Hook, frame: &Frame, what: &str) {
    let bytes = frame.build();
    let before = k.stats();
    assert_eq!(
        k.run(hook, &bytes),
        Verdict::Pass,
        "{hook:?} {what}: first request"
    );
    k.expect_stats(
        &format!("{hook:?} {what}: first request"),
        &before,
        &[
            (Stat::Seen, 1),
            (Stat::Monitored, 1),
            (Stat::Requests, 1),
            (Stat::Passed, 1),
        ],
    );
    let before = k.stats();
    assert_eq!(
        k.run(hook, &bytes),
        Verdict::Drop,
        "{hook:?} {what}: second request"
    );
    k.expect_stats(
        &format!("{hook:?} {what}: second request"),
        &before,
        &[
            (Stat::Seen, 1),
            (Stat::Monitored, 1),
            (Stat::Requests, 1),
            (Stat::Dropped, 1),
            (Stat::DroppedRate, 1),
            (Stat::EventsSent, 1),
        ],
    );
    let bucket = k
        .source_bucket(&frame.src.to_string())
        .unwrap_or_else(|| panic!("{hook:?} {what}: no bucket for {}", frame.src));
    assert_eq!(
        (bucket.requests, bucket.refused),
        (2, 1),
        "{hook:?} {what}: bucket of {}",
        frame.src
    );
}

/// Runs `bytes` once and asserts it passed, moved only `Seen` and `stat`, and created no
/// bucket for `src`.
#[track_caller]
fn assert_untracked(k: &mut Loaded, hook: Hook, bytes: &[u8], src: &str, stat: Stat, what: &str) {
    let before = k.stats();
    assert_eq!(k.run(hook, bytes), Verdict::Pass, "{hook:?} {what}");
    k.expect_stats(
        &format!("{hook:?} {what}"),
        &before,
        &[(Stat::Seen, 1), (stat, 1)],
    );
    assert!(
        k.source_bucket(src).is_none(),
        "{hook:?} {what}: {src} was charged"
    );
}

fn source(hook_index: usize, v6: bool, n: u8) -> String {
    if v6 {
        v6_source(hook_index as u8, n as u16)
    } else {
        v4_source(hook_index as u8, n)
    }
}

#[test]
fn tcp_and_udp_over_both_families_with_zero_one_or_two_vlan_tags() {
    let mut k = Loaded::new(strict());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let mut n = 0u8;
        for tags in [&[][..], &[100], &[100, 4094]] {
            for v6 in [false, true] {
                for udp in [false, true] {
                    n += 1;
                    let src = source(h, v6, n);
                    let frame = if udp {
                        Frame::udp(&src, LOOKUP_PORT, b"lookup")
                    } else {
                        Frame::request(&src, LOOKUP_PORT)
                    }
                    .with_vlans(tags);
                    let what = format!(
                        "{} {} with {} VLAN tags",
                        if v6 { "IPv6" } else { "IPv4" },
                        if udp { "UDP" } else { "TCP" },
                        tags.len()
                    );
                    assert_request(&mut k, hook, &frame, &what);
                }
            }
        }
        // A single 802.1ad (S-tag) is as good as a single 802.1Q tag.
        for v6 in [false, true] {
            n += 1;
            let src = source(h, v6, n);
            let frame = Frame::request(&src, LOOKUP_PORT).with_vlans(&[7]);
            let mut bytes = frame.build();
            bytes[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
            assert_eq!(k.run(hook, &bytes), Verdict::Pass);
            assert_eq!(
                k.run(hook, &bytes),
                Verdict::Drop,
                "{hook:?} single 802.1ad tag"
            );
            assert_eq!(k.source_bucket(&src).map(|b| b.requests), Some(2));
        }
    }
}

#[test]
fn a_third_vlan_tag_is_malformed_and_passes() {
    let mut k = Loaded::new(strict());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let src = source(h, v6, 1);
            let bytes = Frame::request(&src, LOOKUP_PORT)
                .with_vlans(&[1, 2, 3])
                .build();
            for _ in 0..3 {
                assert_untracked(
                    &mut k,
                    hook,
                    &bytes,
                    &src,
                    Stat::Malformed,
                    "three VLAN tags",
                );
            }
        }
    }
}

#[test]
fn ipv4_options_are_skipped_and_bad_ipv4_headers_are_malformed() {
    let mut k = Loaded::new(strict());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let mut n = 0u8;
        for options in [4, 8, 20, 40] {
            for udp in [false, true] {
                n += 1;
                let src = v4_source(h as u8, n);
                let frame = if udp {
                    Frame::udp(&src, LOOKUP_PORT, b"lookup")
                } else {
                    Frame::request(&src, LOOKUP_PORT)
                }
                .with_ipv4_options(options);
                let what = format!("IPv4 with {options} bytes of options, udp={udp}");
                assert_request(&mut k, hook, &frame, &what);
            }
        }

        n += 1;
        let src = v4_source(h as u8, n);
        let frame = Frame::request(&src, LOOKUP_PORT);
        let l3 = frame.l3_offset();
        let good = frame.build();
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bad = good.clone();
        bad[l3] = 0x44; // header length 16 bytes, under the minimum
        cases.push(("IHL under 5", bad));
        let mut bad = good.clone();
        bad[l3] = 0x65; // version 6 behind an IPv4 ethertype
        cases.push(("version 6 in an IPv4 ethertype", bad));
        let mut bad = good.clone();
        let too_long = (good.len() - l3 + 1) as u16;
        bad[l3 + 2..l3 + 4].copy_from_slice(&too_long.to_be_bytes());
        cases.push(("total length past the frame", bad));
        let mut bad = good.clone();
        bad[l3 + 2..l3 + 4].copy_from_slice(&16u16.to_be_bytes());
        cases.push(("total length under the header", bad));
        let mut bad = good.clone();
        bad[l3 + 20 + 12] = 4 << 4; // TCP data offset 16 bytes, under the minimum
        cases.push(("TCP data offset under 5", bad));
        // A 24-byte segment whose TCP header claims 28 bytes.
        let mut bad = Frame::tcp(&src, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"abcd").build();
        bad[l3 + 20 + 12] = 7 << 4;
        cases.push(("TCP data offset past the segment", bad));
        let udp = Frame::udp(&src, LOOKUP_PORT, b"lookup");
        let mut bad = udp.build();
        // IP says 4 bytes of transport: too short for the UDP header the frame still carries.
        bad[l3 + 2..l3 + 4].copy_from_slice(&24u16.to_be_bytes());
        cases.push(("IP length too short for the UDP header", bad));
        for (what, bytes) in &cases {
            assert_untracked(&mut k, hook, bytes, &src, Stat::Malformed, what);
        }
        // The unmodified frame from the same source is a request: the source was untouched.
        assert_request(&mut k, hook, &frame, "the well-formed original");
    }
}

#[test]
fn ipv6_extension_chains_up_to_six_headers_are_walked_and_a_seventh_is_malformed() {
    let mut k = Loaded::new(strict());
    let chains: Vec<(&str, Vec<(u8, usize)>)> = vec![
        ("hop-by-hop", vec![(IPPROTO_HOPOPTS, 8)]),
        ("routing", vec![(IPPROTO_ROUTING, 16)]),
        ("destination options", vec![(IPPROTO_DSTOPTS, 24)]),
        ("first fragment", vec![(IPPROTO_FRAGMENT, 8)]),
        (
            "hop-by-hop, routing, fragment, destination options",
            vec![
                (IPPROTO_HOPOPTS, 8),
                (IPPROTO_ROUTING, 24),
                (IPPROTO_FRAGMENT, 8),
                (IPPROTO_DSTOPTS, 8),
            ],
        ),
        (
            "six headers",
            vec![
                (IPPROTO_HOPOPTS, 8),
                (IPPROTO_DSTOPTS, 16),
                (IPPROTO_ROUTING, 8),
                (IPPROTO_FRAGMENT, 8),
                (IPPROTO_DSTOPTS, 8),
                (IPPROTO_DSTOPTS, 32),
            ],
        ),
    ];
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let mut n = 0u8;
        for (what, chain) in &chains {
            for udp in [false, true] {
                n += 1;
                let src = v6_source(h as u8, n as u16);
                let frame = if udp {
                    Frame::udp(&src, LOOKUP_PORT, b"lookup")
                } else {
                    Frame::request(&src, LOOKUP_PORT).with_tcp_options(12)
                }
                .with_v6_extensions(chain);
                assert_request(&mut k, hook, &frame, &format!("{what}, udp={udp}"));
            }
        }
        let mut seven = chains.last().unwrap().1.clone();
        seven.push((IPPROTO_DSTOPTS, 8));
        n += 1;
        let src = v6_source(h as u8, n as u16);
        let bytes = Frame::request(&src, LOOKUP_PORT)
            .with_v6_extensions(&seven)
            .build();
        assert_untracked(
            &mut k,
            hook,
            &bytes,
            &src,
            Stat::Malformed,
            "seven extension headers",
        );
        // Extension lengths that overrun IPv6's payload length are inconsistent.
        n += 1;
        let src = v6_source(h as u8, n as u16);
        let frame =
            Frame::other(&src, IPPROTO_ICMPV6, &[]).with_v6_extensions(&[(IPPROTO_DSTOPTS, 8)]);
        let mut bytes = frame.build();
        bytes.extend_from_slice(&[0; 16]); // room for the header the length byte claims
        bytes[frame.l3_offset() + 40 + 1] = 2; // claims 24 bytes; IPv6 says 8
        assert_untracked(
            &mut k,
            hook,
            &bytes,
            &src,
            Stat::Malformed,
            "extension past payload length",
        );
    }
}

#[test]
fn later_fragments_pass_uncharged_and_count_as_fragment() {
    let mut k = Loaded::new(strict());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let v4 = v4_source(h as u8, 1);
        let v6 = v6_source(h as u8, 1);
        // First fragments carry the ports: they are requests like any other.
        let first_v4 = Frame::request(&v4, LOOKUP_PORT).with_v4_fragment(0, true);
        assert_request(&mut k, hook, &first_v4, "IPv4 first fragment");
        let first_v6 =
            Frame::request(&v6, LOOKUP_PORT).with_v6_extensions(&[(IPPROTO_FRAGMENT, 8)]);
        assert_request(&mut k, hook, &first_v6, "IPv6 first fragment");

        // The sources are now over budget, yet their later fragments pass, uncharged.
        let v4_bucket = k.source_bucket(&v4);
        let v6_bucket = k.source_bucket(&v6);
        let later: Vec<(&str, Vec<u8>)> = vec![
            (
                "IPv4 middle fragment",
                Frame::request(&v4, LOOKUP_PORT)
                    .with_v4_fragment(185, true)
                    .build(),
            ),
            (
                "IPv4 last fragment",
                Frame::request(&v4, LOOKUP_PORT)
                    .with_v4_fragment(370, false)
                    .build(),
            ),
            (
                "IPv4 later fragment in a VLAN",
                Frame::udp(&v4, LOOKUP_PORT, b"x")
                    .with_vlans(&[5])
                    .with_v4_fragment(1, false)
                    .build(),
            ),
            (
                "IPv6 later fragment",
                Frame::request(&v6, LOOKUP_PORT)
                    .with_v6_extensions(&[(IPPROTO_FRAGMENT, 8)])
                    .with_v6_fragment_offset(100)
                    .build(),
            ),
            (
                "IPv6 later fragment behind hop-by-hop",
                Frame::request(&v6, LOOKUP_PORT)
                    .with_v6_extensions(&[(IPPROTO_HOPOPTS, 8), (IPPROTO_FRAGMENT, 8)])
                    .with_v6_fragment_offset(1)
                    .build(),
            ),
        ];
        for (what, bytes) in &later {
            for _ in 0..3 {
                let before = k.stats();
                assert_eq!(k.run(hook, bytes), Verdict::Pass, "{hook:?} {what}");
                k.expect_stats(
                    &format!("{hook:?} {what}"),
                    &before,
                    &[(Stat::Seen, 1), (Stat::Fragment, 1)],
                );
            }
        }
        assert_eq!(
            k.source_bucket(&v4),
            v4_bucket,
            "later fragments charged {v4}"
        );
        assert_eq!(
            k.source_bucket(&v6),
            v6_bucket,
            "later fragments charged {v6}"
        );
    }
}

#[test]
fn frames_truncated_at_every_length_pass_as_malformed() {
    let mut k = Loaded::new(strict());
    let mut refused_short = 0;
    let mut refused_tc = 0;
    let mut truncated = 0;
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let frames = [
            (
                "IPv4 TCP, two VLAN tags, IP and TCP options",
                Frame::request(&v4_source(h as u8, 1), LOOKUP_PORT)
                    .with_vlans(&[10, 20])
                    .with_ipv4_options(8)
                    .with_tcp_options(12),
                Stat::Requests,
            ),
            (
                "IPv6 TCP, hop-by-hop, routing and fragment headers",
                Frame::request(&v6_source(h as u8, 2), LOOKUP_PORT)
                    .with_v6_extensions(&[
                        (IPPROTO_HOPOPTS, 8),
                        (IPPROTO_ROUTING, 16),
                        (IPPROTO_FRAGMENT, 8),
                    ])
                    .with_tcp_options(4),
                Stat::Requests,
            ),
            (
                "IPv4 UDP",
                Frame::udp(&v4_source(h as u8, 3), LOOKUP_PORT, b"lookup"),
                Stat::Requests,
            ),
            (
                "IPv6 UDP in one VLAN tag",
                Frame::udp(&v6_source(h as u8, 4), LOOKUP_PORT, b"lookup").with_vlans(&[30]),
                Stat::Requests,
            ),
            (
                "IPv4 ICMP",
                Frame::other(
                    &v4_source(h as u8, 5),
                    IPPROTO_ICMP,
                    &[8, 0, 0, 0, 0, 1, 0, 1],
                ),
                Stat::NotMonitored,
            ),
        ];
        for (what, frame, full_stat) in &frames {
            let src = frame.src.to_string();
            let bytes = frame.build();
            for len in 0..bytes.len() {
                let cut = &bytes[..len];
                if len < 14 {
                    // BPF_PROG_TEST_RUN itself refuses frames shorter than an Ethernet header
                    // (EINVAL), so the program never sees them; a NIC would not deliver them.
                    assert!(
                        k.try_run(hook, cut).is_err(),
                        "{hook:?}: the kernel ran a {len}-byte frame"
                    );
                    refused_short += 1;
                    continue;
                }
                if hook == Hook::Tc && tc_refuses(cut) {
                    // For an untagged IPv4 or IPv6 frame, the skb flavour of
                    // BPF_PROG_TEST_RUN also refuses (EINVAL) data shorter than the bare IP
                    // header; a tagged frame of the same length does reach the program.
                    assert!(
                        k.try_run(hook, cut).is_err(),
                        "{hook:?}: expected the kernel to refuse {len} bytes"
                    );
                    refused_tc += 1;
                    continue;
                }
                truncated += 1;
                assert_untracked(
                    &mut k,
                    hook,
                    cut,
                    &src,
                    Stat::Malformed,
                    &format!("{what} cut to {len} of {} bytes", bytes.len()),
                );
            }
            // Whole, the same frame is classified normally.
            let before = k.stats();
            assert_eq!(k.run(hook, &bytes), Verdict::Pass, "{hook:?} {what} whole");
            assert_eq!(
                delta(&before, &k.stats(), *full_stat),
                1,
                "{hook:?} {what} whole"
            );
            assert_eq!(
                delta(&before, &k.stats(), Stat::Malformed),
                0,
                "{hook:?} {what} whole"
            );
        }
    }
    println!(
        "truncated frames run: {truncated}; skipped because BPF_PROG_TEST_RUN refuses them: \
         {refused_short} under 14 bytes, {refused_tc} untagged IP frames shorter than the IP \
         header on TC"
    );
}

/// Whether the skb test run refuses this frame: untagged IPv4 shorter than 14 + 20 bytes, or
/// untagged IPv6 shorter than 14 + 40 (measured on Linux 6.18).
fn tc_refuses(frame: &[u8]) -> bool {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => frame.len() < 14 + 20,
        0x86dd => frame.len() < 14 + 40,
        _ => false,
    }
}

#[test]
fn other_ports_protocols_and_non_ip_frames_are_not_monitored() {
    let mut k = Loaded::new(strict());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let v4 = v4_source(h as u8, 1);
        let v6 = v6_source(h as u8, 1);
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        let cases: Vec<(String, String, Vec<u8>)> = vec![
            (
                "TCP to port 80".into(),
                v4.clone(),
                Frame::request(&v4, 80).build(),
            ),
            (
                "TCP to the next port".into(),
                v6.clone(),
                Frame::request(&v6, LOOKUP_PORT + 1).build(),
            ),
            (
                "TCP to port 0".into(),
                v4.clone(),
                Frame::request(&v4, 0).build(),
            ),
            (
                "TCP to port 65535".into(),
                v6.clone(),
                Frame::request(&v6, 65535).build(),
            ),
            (
                "UDP to port 53".into(),
                v4.clone(),
                Frame::udp(&v4, 53, b"q").build(),
            ),
            (
                "TCP to port 80 in two VLAN tags".into(),
                v6.clone(),
                Frame::request(&v6, 80).with_vlans(&[1, 2]).build(),
            ),
            (
                "ICMP".into(),
                v4.clone(),
                Frame::other(&v4, IPPROTO_ICMP, &[8, 0, 0, 0]).build(),
            ),
            (
                "ICMPv6".into(),
                v6.clone(),
                Frame::other(&v6, IPPROTO_ICMPV6, &[128, 0, 0, 0]).build(),
            ),
            (
                "ICMPv6 behind a hop-by-hop header".into(),
                v6.clone(),
                Frame::other(&v6, IPPROTO_ICMPV6, &[143, 0, 0, 0])
                    .with_v6_extensions(&[(IPPROTO_HOPOPTS, 8)])
                    .build(),
            ),
            (
                "GRE".into(),
                v4.clone(),
                Frame::other(&v4, 47, &[0; 8]).build(),
            ),
            (
                "SCTP".into(),
                v6.clone(),
                Frame::other(&v6, 132, &[0; 12]).build(),
            ),
            ("ARP".into(), v4.clone(), arp),
        ];
        for (what, src, bytes) in &cases {
            for _ in 0..3 {
                assert_untracked(&mut k, hook, bytes, src, Stat::NotMonitored, what);
            }
        }
    }
}

#[test]
fn port_flags_select_tcp_udp_or_both() {
    let mut k = Loaded::new(strict());
    const TCP_ONLY: u16 = 9000;
    const UDP_ONLY: u16 = 9001;
    k.kernel.set_port(TCP_ONLY, port_flags::TCP).unwrap();
    k.kernel.set_port(UDP_ONLY, port_flags::UDP).unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let src = source(h, v6, 1);
            let udp_to_tcp_port = Frame::udp(&src, TCP_ONLY, b"x").build();
            assert_untracked(
                &mut k,
                hook,
                &udp_to_tcp_port,
                &src,
                Stat::NotMonitored,
                "UDP to a TCP-only port",
            );
            let tcp_to_udp_port = Frame::request(&src, UDP_ONLY).build();
            assert_untracked(
                &mut k,
                hook,
                &tcp_to_udp_port,
                &src,
                Stat::NotMonitored,
                "TCP to a UDP-only port",
            );
            assert_request(
                &mut k,
                hook,
                &Frame::request(&src, TCP_ONLY),
                "TCP to a TCP-only port",
            );
            let src = source(h, v6, 2);
            assert_request(
                &mut k,
                hook,
                &Frame::udp(&src, UDP_ONLY, b"x"),
                "UDP to a UDP-only port",
            );
            // The port on both (LOOKUP_PORT) takes both protocols, each charged to the source.
            let src = source(h, v6, 3);
            let both = Frame::request(&src, LOOKUP_PORT).build();
            assert_eq!(k.run(hook, &both), Verdict::Pass);
            assert_eq!(
                k.run(hook, &Frame::udp(&src, LOOKUP_PORT, b"x").build()),
                Verdict::Drop
            );
        }
    }
    // Clearing a port's flags stops monitoring it at once.
    k.kernel.set_port(TCP_ONLY, 0).unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = source(h, false, 9);
        let bytes = Frame::request(&src, TCP_ONLY).build();
        assert_untracked(
            &mut k,
            hook,
            &bytes,
            &src,
            Stat::NotMonitored,
            "a port switched off",
        );
    }
}

#[test]
fn nothing_outside_the_monitored_ports_is_ever_dropped_at_zero_budget() {
    let mut config = strict();
    config.ban_ns = 3600 * NANOS_PER_SEC;
    config.aggregate = Limit::new(1, MINUTE_NS, 1).unwrap();
    let mut k = Loaded::new(config);
    k.kernel.set_port(9000, port_flags::TCP).unwrap();
    let mut sources = Vec::new();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            // Spend the budget and get banned on the monitored port.
            let src = source(h, v6, 1);
            let request = Frame::request(&src, LOOKUP_PORT).build();
            assert_eq!(
                k.run_each(hook, &request, 2),
                [Verdict::Pass, Verdict::Drop]
            );
            assert!(
                k.source_bucket(&src).unwrap().ban_until_ns > 0,
                "{src} not banned"
            );
            sources.push((hook, src));
        }
    }
    // And deny everyone, both families.
    for cidr in ["0.0.0.0/0", "::/0"] {
        k.kernel
            .list_insert(List::Deny, &cidr.parse().unwrap(), 0)
            .unwrap();
    }
    k.update_config(|c| c.flags |= config_flags::HAS_DENY);

    let before = k.stats();
    let mut runs = 0;
    for (hook, src) in &sources {
        let frames = [
            Frame::request(src, 80),
            Frame::tcp(src, 443, TCP_SYN, b""),
            Frame::tcp(src, 22, TCP_ACK, b""),
            Frame::tcp(src, 9001, TCP_FIN | TCP_ACK, b""),
            Frame::tcp(src, 0, TCP_RST, b""),
            Frame::udp(src, 53, b"query"),
            Frame::udp(src, 9000, b"UDP to a TCP-only port"),
            Frame::other(src, IPPROTO_ICMP, &[8, 0, 0, 0]),
            Frame::request(src, LOOKUP_PORT).with_vlans(&[1, 2, 3]),
        ];
        let mut bytes: Vec<Vec<u8>> = frames.iter().map(Frame::build).collect();
        let later = if src.contains(':') {
            Frame::request(src, LOOKUP_PORT)
                .with_v6_extensions(&[(IPPROTO_FRAGMENT, 8)])
                .with_v6_fragment_offset(9)
        } else {
            Frame::request(src, LOOKUP_PORT).with_v4_fragment(9, false)
        };
        bytes.push(later.build());
        let full = Frame::request(src, LOOKUP_PORT).build();
        bytes.push(full[..full.len() - 1].to_vec());
        for b in &bytes {
            for _ in 0..5 {
                assert_eq!(k.run(*hook, b), Verdict::Pass, "{hook:?} from {src}");
                runs += 1;
            }
        }
    }
    let after = k.stats();
    assert_eq!(delta(&before, &after, Stat::Seen), runs);
    assert_eq!(delta(&before, &after, Stat::Monitored), 0);
    assert_eq!(delta(&before, &after, Stat::Dropped), 0);
    // Meanwhile the monitored port is closed to all of them.
    for (hook, src) in &sources {
        let before = k.stats();
        assert_eq!(
            k.run(*hook, &Frame::request(src, LOOKUP_PORT).build()),
            Verdict::Drop
        );
        assert_eq!(delta(&before, &k.stats(), Stat::DroppedDeny), 1);
    }
}

#[test]
fn the_denylist_drops_even_in_monitor_mode() {
    let mut config = strict();
    config.action = action::MONITOR;
    config.flags = config_flags::HAS_DENY;
    let mut k = Loaded::new(config);
    k.kernel
        .list_insert(List::Deny, &"203.0.113.0/24".parse().unwrap(), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &"2001:db8:bad::/48".parse().unwrap(), 0)
        .unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for denied in ["203.0.113.9", "2001:db8:bad:1::9"] {
            let before = k.stats();
            let bytes = Frame::request(denied, LOOKUP_PORT).build();
            assert_eq!(k.run(hook, &bytes), Verdict::Drop, "{hook:?} {denied}");
            k.expect_stats(
                &format!("{hook:?} denied {denied} in monitor mode"),
                &before,
                &[
                    (Stat::Seen, 1),
                    (Stat::Monitored, 1),
                    (Stat::Dropped, 1),
                    (Stat::DroppedDeny, 1),
                ],
            );
            assert!(
                k.source_bucket(denied).is_none(),
                "a denied source is not charged"
            );
        }
        // Monitor mode still never drops what is merely over its limit.
        let src = v4_source(h as u8, 1);
        let bytes = Frame::request(&src, LOOKUP_PORT).build();
        let before = k.stats();
        assert_eq!(k.run_each(hook, &bytes, 4), [Verdict::Pass; 4]);
        assert_eq!(delta(&before, &k.stats(), Stat::MonitorOnly), 3);
        assert_eq!(delta(&before, &k.stats(), Stat::Dropped), 0);
    }
}
