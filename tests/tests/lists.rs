//! Allow and deny lists (LPM tries of IPv4 and IPv6 CIDRs), on both hooks: what each does, the
//! precedence allow > deny > ban > limit, prefixes of several lengths in both families, entry
//! expiry, and the config flags that tell the kernel a list is worth looking up.

use monitor::{cidr::Cidr, clock::kernel_now_ns, kernel::List};
use monitor_common::{
    config::{Config, config_flags},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{Frame, TCP_ACK, TCP_SYN},
    harness::*,
};

const HOUR_NS: u64 = 3600 * NANOS_PER_SEC;

/// One request per minute, burst 1, hour-long bans, and a tight aggregate too: without the
/// lists, a source gets one request through.
fn strict() -> Config {
    Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap(),
        aggregate: Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap(),
        ban_ns: HOUR_NS,
        ..Config::default()
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test CIDR")
}

fn req(src: &str) -> Vec<u8> {
    Frame::request(src, LOOKUP_PORT).build()
}

#[test]
fn allowlisted_sources_are_never_limited() {
    let mut k = Loaded::new(Config {
        flags: config_flags::HAS_ALLOW,
        ..strict()
    });
    k.kernel
        .list_insert(List::Allow, &cidr("198.51.100.0/24"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("2001:db8:a11::/48"), 0)
        .unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [
            format!("198.51.100.{}", h + 1),
            format!("2001:db8:a11:{h}::1"),
        ] {
            let before = k.stats();
            assert_eq!(k.passes(hook, &req(&src), 50), 50, "{hook:?} {src}");
            let ack = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"").build();
            assert_eq!(k.passes(hook, &ack, 5), 5, "{hook:?} {src}");
            k.expect_stats(
                &format!("{hook:?} allowlisted {src}"),
                &before,
                &[
                    (Stat::Seen, 55),
                    (Stat::Monitored, 55),
                    (Stat::Allowlisted, 55),
                    (Stat::Passed, 55),
                ],
            );
            assert!(
                k.source_bucket(&src).is_none(),
                "allowlisted sources are not tracked"
            );
            assert!(k.aggregate_bucket(&src).is_none());
        }
        // Their neighbours outside the allowed prefixes are limited as usual.
        for src in [format!("198.51.{}.1", 101 + h), format!("2001:db8:b{h}::1")] {
            assert_eq!(k.passes(hook, &req(&src), 5), 1, "{hook:?} {src}");
        }
    }
}

#[test]
fn denylisted_sources_are_always_dropped_on_monitored_ports_only() {
    let mut k = Loaded::new(Config {
        flags: config_flags::HAS_DENY,
        ..strict()
    });
    k.kernel
        .list_insert(List::Deny, &cidr("203.0.113.0/24"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("2001:db8:bad::/48"), 0)
        .unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [
            format!("203.0.113.{}", h + 1),
            format!("2001:db8:bad:{h}::1"),
        ] {
            let frames = [
                req(&src),
                Frame::tcp(&src, LOOKUP_PORT, TCP_SYN, b"").build(),
                Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"").build(),
                Frame::udp(&src, LOOKUP_PORT, b"x").build(),
            ];
            let before = k.stats();
            for bytes in &frames {
                assert_eq!(k.run(hook, bytes), Verdict::Drop, "{hook:?} denied {src}");
            }
            k.expect_stats(
                &format!("{hook:?} denied {src}"),
                &before,
                &[
                    (Stat::Seen, 4),
                    (Stat::Monitored, 4),
                    (Stat::Dropped, 4),
                    (Stat::DroppedDeny, 4),
                ],
            );
            assert!(
                k.source_bucket(&src).is_none(),
                "a denied source costs no table entry"
            );
            // Elsewhere it is not our business.
            assert_eq!(
                k.run(hook, &Frame::request(&src, 443).build()),
                Verdict::Pass
            );
        }
    }
}

#[test]
fn precedence_is_allow_then_deny_then_ban_then_limit() {
    let mut k = Loaded::new(Config {
        flags: config_flags::HAS_ALLOW | config_flags::HAS_DENY,
        ..strict()
    });
    // Allowed and denied (and banned): allowed.
    k.kernel
        .list_insert(List::Allow, &cidr("192.0.2.0/28"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("2001:db8:1::/64"), 0)
        .unwrap();
    for c in [
        "192.0.2.0/24",
        "2001:db8:1::/48",
        "2001:db8:2::/48",
        "198.51.100.0/24",
    ] {
        k.kernel.list_insert(List::Deny, &cidr(c), 0).unwrap();
    }
    let until = kernel_now_ns() + HOUR_NS;
    let config = k.config();
    for src in [
        "192.0.2.1",
        "2001:db8:1::1",
        "2001:db8:2::1",
        "198.51.100.1",
        "192.0.2.200",
    ] {
        k.kernel.set_ban(&source_key(src, &config), until).unwrap();
    }
    // Banned only, with a full budget: the ban wins over the limit.
    for src in ["203.0.113.1", "2001:db8:3::1"] {
        k.kernel.set_ban(&source_key(src, &config), until).unwrap();
    }
    let cases = [
        (
            "192.0.2.1",
            Verdict::Pass,
            Stat::Allowlisted,
            "allowed, denied and banned",
        ),
        (
            "2001:db8:1::1",
            Verdict::Pass,
            Stat::Allowlisted,
            "allowed, denied and banned",
        ),
        (
            "192.0.2.200",
            Verdict::Drop,
            Stat::DroppedDeny,
            "denied and banned, outside the allowed /28",
        ),
        (
            "2001:db8:2::1",
            Verdict::Drop,
            Stat::DroppedDeny,
            "denied and banned",
        ),
        (
            "198.51.100.1",
            Verdict::Drop,
            Stat::DroppedDeny,
            "denied and banned",
        ),
        (
            "203.0.113.1",
            Verdict::Drop,
            Stat::DroppedBan,
            "banned, within its budget",
        ),
        (
            "2001:db8:3::1",
            Verdict::Drop,
            Stat::DroppedBan,
            "banned, within its budget",
        ),
    ];
    for hook in HOOKS {
        for (src, verdict, stat, what) in cases {
            let before = k.stats();
            assert_eq!(k.run(hook, &req(src)), verdict, "{hook:?} {src}: {what}");
            let moved = delta(&before, &k.stats(), stat);
            assert_eq!(
                moved,
                1,
                "{hook:?} {src}: {what} should count {}",
                stat.label()
            );
            assert_eq!(
                delta(&before, &k.stats(), Stat::Requests),
                0,
                "{hook:?} {src}"
            );
        }
    }
    // And with no list entry and no ban, the limit: one request, then a drop.
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(h as u8, 1);
        assert_eq!(
            k.run_each(hook, &req(&src), 2),
            [Verdict::Pass, Verdict::Drop]
        );
    }
    assert_eq!(k.stat(Stat::DroppedRate), 2);
}

/// Each prefix is probed at its edges: the first and last address inside, and the addresses
/// just outside.
const PREFIXES: [(&str, &[&str], &[&str]); 6] = [
    (
        "10.0.0.0/8",
        &["10.0.0.0", "10.255.255.255"],
        &["9.255.255.255", "11.0.0.0"],
    ),
    (
        "192.0.2.0/24",
        &["192.0.2.0", "192.0.2.255"],
        &["192.0.1.255", "192.0.3.0"],
    ),
    (
        "198.51.100.7/32",
        &["198.51.100.7"],
        &["198.51.100.6", "198.51.100.8"],
    ),
    (
        "2001:db8::/32",
        &["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
        &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
    ),
    (
        "2001:dc0:1::/48",
        &["2001:dc0:1::", "2001:dc0:1:ffff:ffff:ffff:ffff:ffff"],
        &["2001:dc0::ffff", "2001:dc0:2::"],
    ),
    (
        "2001:dd0::7/128",
        &["2001:dd0::7"],
        &["2001:dd0::6", "2001:dd0::8"],
    ),
];

#[test]
fn cidrs_of_several_lengths_match_exactly_their_addresses_in_both_lists() {
    // /128 sources, so the addresses just outside a prefix are never charged to the same key
    // as those inside.
    let mut config = strict();
    config.set_prefixes(32, 128, 32, 128);
    config.aggregate = Limit::OFF;
    config.ban_ns = 0;
    let mut k = Loaded::new(config);
    for (prefix, _, _) in PREFIXES {
        k.kernel.list_insert(List::Deny, &cidr(prefix), 0).unwrap();
        k.kernel.list_insert(List::Allow, &cidr(prefix), 0).unwrap();
    }
    // An IPv4 entry lives in mapped space and must not swallow IPv6 sources that share bits.
    k.kernel
        .list_insert(List::Deny, &cidr("0.0.0.0/1"), 0)
        .unwrap();
    let listed_entries = k.kernel.list_entries(List::Deny).unwrap();
    assert_eq!(listed_entries.len(), PREFIXES.len() + 1);

    for (list, flag) in [
        (List::Deny, config_flags::HAS_DENY),
        (List::Allow, config_flags::HAS_ALLOW),
    ] {
        k.update_config(|c| c.flags = flag);
        for hook in HOOKS {
            for (prefix, inside, outside) in PREFIXES {
                for src in inside {
                    let before = k.stats();
                    let verdicts = k.run_each(hook, &req(src), 2);
                    let after = k.stats();
                    let (want, stat) = match list {
                        List::Deny => ([Verdict::Drop; 2], Stat::DroppedDeny),
                        List::Allow => ([Verdict::Pass; 2], Stat::Allowlisted),
                    };
                    assert_eq!(verdicts, want, "{hook:?} {list:?} {prefix} holds {src}");
                    assert_eq!(delta(&before, &after, stat), 2, "{hook:?} {src}");
                }
                for src in outside {
                    let before = k.stats();
                    let verdicts = k.run_each(hook, &req(src), 2);
                    let after = k.stats();
                    // Outside IPv4 prefixes, the 0.0.0.0/1 deny entry still applies to low
                    // IPv4 addresses; everything else is rate limited normally.
                    let low_v4 = list == List::Deny
                        && src
                            .parse::<std::net::Ipv4Addr>()
                            .is_ok_and(|a| a.octets()[0] < 128);
                    if low_v4 {
                        assert_eq!(verdicts, [Verdict::Drop; 2], "{hook:?} {src} in 0.0.0.0/1");
                        continue;
                    }
                    assert_eq!(
                        delta(&before, &after, Stat::Requests),
                        2,
                        "{hook:?} {list:?} {prefix} does not hold {src}"
                    );
                }
            }
            // IPv6 sources whose leading bits are zero are not in 0.0.0.0/1.
            let before = k.stats();
            k.run(hook, &req("::1"));
            assert_eq!(
                delta(&before, &k.stats(), Stat::DroppedDeny),
                0,
                "{hook:?} ::1"
            );
        }
        // The buckets charged in this pass stay for the next one (no code resets them);
        // nothing checked depends on a source's remaining budget: inside a prefix the list
        // decides, and outside it only the request count is checked.
    }
}

#[test]
fn list_entries_expire_by_timestamp() {
    // No aggregate: the sources below share /24s and /48s.
    // On the test clock: every instant below is exact, so each assert always runs.
    let now = 1_000 * NANOS_PER_SEC;
    let mut k = Loaded::clocked(
        Config {
            flags: config_flags::HAS_ALLOW | config_flags::HAS_DENY,
            aggregate: Limit::OFF,
            ..strict()
        },
        now,
    );
    let deny_until = now + 400_000_000;
    k.kernel
        .list_insert(List::Deny, &cidr("203.0.113.0/24"), deny_until)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("2001:db8:bad::/48"), deny_until)
        .unwrap();
    // Already expired entries are ignored.
    k.kernel
        .list_insert(List::Allow, &cidr("198.51.100.0/24"), now - 1)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("2001:db8:a11::/48"), now - 1)
        .unwrap();

    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [
            format!("198.51.100.{}", h + 1),
            format!("2001:db8:a11:{h}::1"),
        ] {
            assert_eq!(
                k.passes(hook, &req(&src), 3),
                1,
                "{hook:?} {src}: expired allow"
            );
        }
    }
    let denied = [
        "203.0.113.1",
        "2001:db8:bad::1",
        "203.0.113.2",
        "2001:db8:bad:1::1",
    ];
    // A nanosecond before the deadline the entries hold; at the deadline they no longer do.
    k.set_now(deny_until - 1);
    for (i, src) in denied.iter().enumerate() {
        let hook = HOOKS[i % 2];
        assert_eq!(
            k.run(hook, &req(src)),
            Verdict::Drop,
            "{hook:?} {src}: deny entry still live"
        );
    }
    k.set_now(deny_until);
    for (i, src) in denied.iter().enumerate() {
        let hook = HOOKS[i % 2];
        let before = k.stats();
        assert_eq!(
            k.run(hook, &req(src)),
            Verdict::Pass,
            "{hook:?} {src}: deny expired"
        );
        assert_eq!(delta(&before, &k.stats(), Stat::Requests), 1);
    }
    // The kernel never deletes list entries: expired ones stay in the trie, ignored, until
    // user space removes them (no daemon runs here, so nothing does).
    assert_eq!(k.kernel.list_entries(List::Deny).unwrap().len(), 2);
}

#[test]
fn config_flags_gate_the_list_lookups() {
    let mut k = Loaded::new(strict());
    k.kernel
        .list_insert(List::Deny, &cidr("203.0.113.0/24"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Deny, &cidr("2001:db8:bad::/48"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("198.51.100.0/24"), 0)
        .unwrap();
    k.kernel
        .list_insert(List::Allow, &cidr("2001:db8:a11::/48"), 0)
        .unwrap();
    let denied = ["203.0.113.1", "2001:db8:bad::1"];
    let allowed = ["198.51.100.1", "2001:db8:a11::1"];
    for (flags, deny_applies, allow_applies) in [
        (0, false, false),
        (config_flags::HAS_DENY, true, false),
        (config_flags::HAS_ALLOW, false, true),
        (config_flags::HAS_ALLOW | config_flags::HAS_DENY, true, true),
        (0, false, false),
    ] {
        k.update_config(|c| c.flags = flags);
        for hook in HOOKS {
            for src in denied {
                let before = k.stats();
                let verdict = k.run(hook, &req(src));
                let dropped_deny = delta(&before, &k.stats(), Stat::DroppedDeny);
                assert_eq!(
                    dropped_deny == 1,
                    deny_applies,
                    "{hook:?} flags {flags}: deny entry for {src} ({verdict:?})"
                );
                if deny_applies {
                    assert_eq!(verdict, Verdict::Drop);
                }
            }
            for src in allowed {
                let before = k.stats();
                k.run(hook, &req(src));
                let allowlisted = delta(&before, &k.stats(), Stat::Allowlisted);
                assert_eq!(
                    allowlisted == 1,
                    allow_applies,
                    "{hook:?} flags {flags}: allow entry for {src}"
                );
            }
        }
    }
}
