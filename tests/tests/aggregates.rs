//! The second level: sources of one aggregate prefix (IPv4 /24 and IPv6 /48 by default) share
//! the aggregate's budget on top of their own, on both hooks. What each level is charged:
//! admitted at both = one token of each; refused by the source = nothing anywhere; admitted by
//! the source and refused by the aggregate = the source's token only.

use monitor::clock::kernel_now_ns;
use monitor_common::{
    config::Config,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;

fn per_minute(requests: u64, burst: u64) -> Limit {
    Limit::new(requests, MINUTE_NS, burst).expect("valid limit")
}

/// Source burst 5, aggregate burst 8, neither refilling within the test.
fn two_levels() -> Config {
    Config {
        source: per_minute(1, 5),
        aggregate: per_minute(1, 8),
        ..Config::default()
    }
}

fn req(src: &str) -> Vec<u8> {
    Frame::request(src, LOOKUP_PORT).build()
}

/// `a`, `b` and `third` are distinct sources sharing an aggregate; `other` is in another one.
fn held_to_the_aggregate(k: &mut Loaded, hook: Hook, [a, b, third, other]: [&str; 4]) {
    assert_eq!(
        k.passes(hook, &req(a), 5),
        5,
        "{hook:?} {a}: within both limits"
    );
    let before = k.stats();
    let verdicts = k.run_each(hook, &req(b), 5);
    assert_eq!(
        verdicts,
        [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Drop,
            Verdict::Drop
        ],
        "{hook:?} {b}: under its own limit, but its aggregate with {a} has 3 of 8 left"
    );
    k.expect_stats(
        &format!("{hook:?} {b} held to the aggregate"),
        &before,
        &[
            (Stat::Seen, 5),
            (Stat::Monitored, 5),
            (Stat::Requests, 5),
            (Stat::Passed, 3),
            (Stat::Dropped, 2),
            (Stat::DroppedAggregate, 2),
            (Stat::EventsSent, 1),
        ],
    );
    // The source level admitted all five (its tokens are spent); the aggregate refused two.
    let source = k.source_bucket(b).unwrap();
    assert_eq!(
        (source.requests, source.refused),
        (5, 0),
        "{hook:?} {b} source bucket"
    );
    let agg = k.aggregate_bucket(a).unwrap();
    assert_eq!(agg, k.aggregate_bucket(b).unwrap(), "one aggregate bucket");
    assert_eq!(
        (agg.requests, agg.refused),
        (10, 2),
        "{hook:?} aggregate bucket"
    );
    // The neighbouring aggregate is untouched.
    assert_eq!(
        k.passes(hook, &req(other), 5),
        5,
        "{hook:?} {other}: another aggregate"
    );
    let other_agg = k.aggregate_bucket(other).unwrap();
    assert_eq!((other_agg.requests, other_agg.refused), (5, 0));
    // And the exhausted one stays closed to a third member that has sent nothing yet.
    let before = k.stats();
    assert_eq!(k.run(hook, &req(third)), Verdict::Drop, "{hook:?} {third}");
    assert_eq!(delta(&before, &k.stats(), Stat::DroppedAggregate), 1);
}

#[test]
fn two_sources_of_one_ipv4_24_are_held_to_the_aggregate() {
    let mut k = Loaded::new(two_levels());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let (a, b, third, other) = (
            format!("198.51.{h}.10"),
            format!("198.51.{h}.20"),
            format!("198.51.{h}.30"),
            format!("198.51.{}.10", h + 10),
        );
        held_to_the_aggregate(&mut k, hook, [&a, &b, &third, &other]);
    }
}

#[test]
fn two_sources_of_one_ipv6_48_are_held_to_the_aggregate() {
    let mut k = Loaded::new(two_levels());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        // Different /64s (so different sources) inside one /48.
        let (a, b, third, other) = (
            format!("2001:db8:{h}:1::1"),
            format!("2001:db8:{h}:ffff::1"),
            format!("2001:db8:{h}:3::1"),
            format!("2001:db8:{}:1::1", h + 10),
        );
        held_to_the_aggregate(&mut k, hook, [&a, &b, &third, &other]);
    }
}

#[test]
fn a_source_refused_at_its_own_level_costs_the_aggregate_nothing() {
    let mut k = Loaded::new(Config {
        source: per_minute(1, 3),
        aggregate: per_minute(1, 6),
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (loud, quiet, late) in [
            (
                format!("192.0.{h}.1"),
                format!("192.0.{h}.2"),
                format!("192.0.{h}.3"),
            ),
            (
                format!("2001:db8:{h}:1::1"),
                format!("2001:db8:{h}:2::1"),
                format!("2001:db8:{h}:3::1"),
            ),
        ] {
            let before = k.stats();
            let t0 = kernel_now_ns();
            assert_eq!(k.passes(hook, &req(&loud), 20), 3, "{hook:?} {loud}");
            let t1 = kernel_now_ns();
            let after = k.stats();
            assert_eq!(delta(&before, &after, Stat::DroppedRate), 17);
            assert_eq!(delta(&before, &after, Stat::DroppedAggregate), 0);
            // The aggregate was charged for the three admitted requests only: its state is
            // three intervals past the first arrival.
            let agg = k.aggregate_bucket(&loud).unwrap();
            assert_eq!(
                (agg.requests, agg.refused),
                (3, 0),
                "{hook:?} {loud}'s aggregate"
            );
            let span = 3 * per_minute(1, 6).interval_ns;
            assert!((t0 + span..=t1 + span).contains(&agg.tat_ns));
            // So a quiet neighbour still has the other three aggregate tokens.
            assert_eq!(k.passes(hook, &req(&quiet), 3), 3, "{hook:?} {quiet}");
            // And then the aggregate is spent for a third member.
            let before = k.stats();
            assert_eq!(k.run(hook, &req(&late)), Verdict::Drop, "{hook:?} {late}");
            assert_eq!(delta(&before, &k.stats(), Stat::DroppedAggregate), 1);
        }
    }
}

#[test]
fn with_the_aggregate_off_only_sources_are_limited() {
    let mut k = Loaded::new(Config {
        source: per_minute(1, 2),
        aggregate: Limit::OFF,
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        // Twenty members of one /24 and of one /48, each within its own budget.
        for i in 1..=20 {
            for src in [format!("198.18.{h}.{i}"), format!("2001:db8:{h}:{i:x}::1")] {
                assert_eq!(k.passes(hook, &req(&src), 3), 2, "{hook:?} {src}");
            }
        }
    }
    assert!(
        k.kernel.aggregates().unwrap().is_empty(),
        "no aggregate state is kept while the level is off"
    );
    assert_eq!(k.stat(Stat::DroppedAggregate), 0);
    assert_eq!(k.stat(Stat::DroppedRate), 80);

    // Switched on live, it applies at once (a fresh aggregate with a burst of 3).
    k.update_config(|c| c.aggregate = per_minute(1, 3));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for i in 21..=23 {
            assert_eq!(k.run(hook, &req(&format!("198.18.{h}.{i}"))), Verdict::Pass);
        }
        assert_eq!(k.run(hook, &req(&format!("198.18.{h}.24"))), Verdict::Drop);
    }
    assert_eq!(k.stat(Stat::DroppedAggregate), 2);
}

#[test]
fn aggregate_prefixes_are_configurable() {
    let mut config = Config {
        source: per_minute(1, 5),
        aggregate: per_minute(1, 6),
        ..Config::default()
    };
    config.set_prefixes(32, 64, 16, 32);
    let mut k = Loaded::new(config);
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (a, b, other) in [
            // Different /24s inside one /16.
            (
                format!("172.{}.1.1", 16 + h),
                format!("172.{}.200.1", 16 + h),
                format!("172.{}.1.1", 20 + h),
            ),
            // Different /48s inside one /32.
            (
                format!("2001:db{h}:1::1"),
                format!("2001:db{h}:2::1"),
                format!("2001:dc{h}:1::1"),
            ),
        ] {
            assert_eq!(k.passes(hook, &req(&a), 4), 4);
            assert_eq!(
                k.passes(hook, &req(&b), 4),
                2,
                "{hook:?} {b} shares {a}'s aggregate"
            );
            assert_eq!(k.passes(hook, &req(&other), 4), 4, "{hook:?} {other}");
            let agg = k
                .kernel
                .aggregate(&prefix_key(&a, if a.contains(':') { 32 } else { 16 }))
                .unwrap()
                .expect("aggregate under the configured prefix");
            assert_eq!((agg.requests, agg.refused), (8, 2));
        }
    }
}
