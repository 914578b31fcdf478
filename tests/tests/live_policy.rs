//! Every policy field changed while the programs stay loaded: a config, port or list write
//! leaves counters, buckets and bans exactly as they were, and the new policy applies from
//! the next packet, on top of the state that was kept. Exercised on both hooks.

use monitor::kernel::{List, Stats};
use monitor_common::{
    addr::AddrKey,
    config::{Config, action, config_flags, count_mode, port_flags},
    maps::{Ban, Bucket},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    frames::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;
const HOUR_NS: u64 = 60 * MINUTE_NS;
const OTHER_PORT: u16 = 9000;

fn per_minute(requests: u64, burst: u64) -> Limit {
    Limit::new(requests, MINUTE_NS, burst).expect("valid limit")
}

#[derive(Debug, PartialEq)]
struct State {
    stats: Stats,
    sources: Vec<(AddrKey, Bucket)>,
    aggregates: Vec<(AddrKey, Bucket)>,
    bans: Vec<(AddrKey, Ban)>,
}

fn state(k: &Loaded) -> State {
    let mut sources = k.kernel.sources().unwrap();
    let mut aggregates = k.kernel.aggregates().unwrap();
    let mut bans = k.kernel.bans().unwrap();
    sources.sort_by_key(|(key, _)| *key);
    aggregates.sort_by_key(|(key, _)| *key);
    bans.sort_by_key(|(key, _)| *key);
    State {
        stats: k.stats(),
        sources,
        aggregates,
        bans,
    }
}

/// Applies a policy change and asserts it touched no state.
#[track_caller]
fn change(k: &mut Loaded, what: &str, apply: impl FnOnce(&mut Loaded)) {
    let before = state(k);
    apply(k);
    assert_eq!(
        state(k),
        before,
        "changing {what} altered counters, buckets or bans"
    );
}

fn req(src: &str, port: u16) -> Vec<u8> {
    Frame::request(src, port).build()
}

#[test]
fn every_policy_change_keeps_counters_buckets_and_bans() {
    let mut k = Loaded::new(Config {
        source: per_minute(1, 3),
        aggregate: per_minute(1, 100),
        ban_ns: HOUR_NS,
        ..Config::default()
    });
    // Per hook: a source that has spent its burst of 3, and a banned source.
    let spent: Vec<String> = (0..2).map(|h| format!("198.51.{h}.1")).collect();
    let banned: Vec<String> = (0..2).map(|h| format!("2001:db8:{h}:bad::1")).collect();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(k.passes(hook, &req(&spent[h], LOOKUP_PORT), 3), 3);
        assert_eq!(k.passes(hook, &req(&banned[h], LOOKUP_PORT), 5), 3);
    }
    let ban_until: Vec<u64> = banned
        .iter()
        .map(|s| k.source_bucket(s).unwrap().ban_until_ns)
        .collect();
    assert!(ban_until.iter().all(|u| *u > 0));
    let is_banned = |k: &mut Loaded, hook: Hook, src: &str, port: u16| {
        let before = k.stats();
        let ack = Frame::tcp(src, port, TCP_ACK, b"").build();
        k.run(hook, &ack) == Verdict::Drop && delta(&before, &k.stats(), Stat::DroppedBan) == 1
    };

    // 0. Bans off: the running bans keep holding.
    change(&mut k, "the ban duration", |k| {
        k.update_config(|c| c.ban_ns = 0)
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert!(is_banned(&mut k, hook, &banned[h], LOOKUP_PORT), "{hook:?}");
    }

    // 1. The source limit: the spent sources' buckets carry over, so a burst raised from 3 to
    //    5 gives them exactly two more.
    change(&mut k, "the source limit", |k| {
        k.update_config(|c| c.source = per_minute(1, 5))
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(
            k.passes(hook, &req(&spent[h], LOOKUP_PORT), 4),
            2,
            "{hook:?}"
        );
        assert!(is_banned(&mut k, hook, &banned[h], LOOKUP_PORT));
    }

    // 2. The aggregate limit: a spent source's /24 has been charged 3 + 2 of 100; now the
    //    limit is 7 (same interval), so a fresh neighbour gets the two that are left.
    change(&mut k, "the aggregate limit", |k| {
        k.update_config(|c| c.aggregate = per_minute(1, 7))
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let neighbour = format!("198.51.{h}.2");
        assert_eq!(
            k.passes(hook, &req(&neighbour, LOOKUP_PORT), 4),
            2,
            "{hook:?}"
        );
    }

    // 3. Aggregate prefixes (/16 and /32 now): new aggregate keys start fresh; the old
    //    aggregate buckets stay where they were, unused.
    let old_aggregates = k.kernel.aggregates().unwrap().len();
    change(&mut k, "the aggregate prefixes", |k| {
        k.update_config(|c| c.set_prefixes(32, 64, 16, 32))
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let fresh = format!("{}.0.0.3", 60 + h);
        assert_eq!(k.passes(hook, &req(&fresh, LOOKUP_PORT), 6), 5, "{hook:?}");
        assert!(
            k.kernel
                .aggregate(&prefix_key(&fresh, 16))
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(k.kernel.aggregates().unwrap().len(), old_aggregates + 2);

    // 4. Lists: allowing a spent source lets it through; removing the entry puts it back
    //    under its kept bucket. Denying the banned source takes over from its ban, which
    //    is still there afterwards.
    change(&mut k, "the allowlist", |k| {
        for s in &spent {
            k.kernel
                .list_insert(List::Allow, &s.parse().unwrap(), 0)
                .unwrap();
        }
        k.update_config(|c| c.flags |= config_flags::HAS_ALLOW);
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(
            k.passes(hook, &req(&spent[h], LOOKUP_PORT), 5),
            5,
            "{hook:?} allowed"
        );
    }
    change(&mut k, "the allowlist", |k| {
        for s in &spent {
            assert!(
                k.kernel
                    .list_remove(List::Allow, &s.parse().unwrap())
                    .unwrap()
            );
        }
        k.update_config(|c| c.flags &= !config_flags::HAS_ALLOW);
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(
            k.passes(hook, &req(&spent[h], LOOKUP_PORT), 2),
            0,
            "{hook:?} spent"
        );
    }
    change(&mut k, "the denylist", |k| {
        k.kernel
            .list_insert(List::Deny, &"2001:db8::/32".parse().unwrap(), 0)
            .unwrap();
        k.update_config(|c| c.flags |= config_flags::HAS_DENY);
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let before = k.stats();
        assert_eq!(k.run(hook, &req(&banned[h], LOOKUP_PORT)), Verdict::Drop);
        assert_eq!(delta(&before, &k.stats(), Stat::DroppedDeny), 1);
    }
    change(&mut k, "the denylist", |k| {
        k.kernel
            .list_remove(List::Deny, &"2001:db8::/32".parse().unwrap())
            .unwrap();
        k.update_config(|c| c.flags &= !config_flags::HAS_DENY);
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert!(
            is_banned(&mut k, hook, &banned[h], LOOKUP_PORT),
            "{hook:?} ban kept"
        );
    }

    // 5. Ports: a newly monitored port is covered by the existing bans and buckets at once;
    //    a port no longer monitored passes everything, and coming back changes nothing.
    change(&mut k, "the ports", |k| {
        k.kernel.set_port(OTHER_PORT, port_flags::TCP).unwrap()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert!(is_banned(&mut k, hook, &banned[h], OTHER_PORT), "{hook:?}");
        assert_eq!(
            k.passes(hook, &req(&spent[h], OTHER_PORT), 2),
            0,
            "{hook:?}"
        );
    }
    change(&mut k, "the ports", |k| {
        k.kernel.set_port(LOOKUP_PORT, 0).unwrap()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(
            k.passes(hook, &req(&spent[h], LOOKUP_PORT), 3),
            3,
            "{hook:?}"
        );
        assert!(
            !is_banned(&mut k, hook, &banned[h], LOOKUP_PORT),
            "{hook:?}"
        );
    }
    change(&mut k, "the ports", |k| {
        k.kernel
            .set_port(LOOKUP_PORT, port_flags::TCP | port_flags::UDP)
            .unwrap()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert!(is_banned(&mut k, hook, &banned[h], LOOKUP_PORT), "{hook:?}");
    }

    // 6. The count mode: in `syn` mode a SYN is charged to the kept, spent bucket.
    change(&mut k, "the count mode", |k| {
        k.update_config(|c| c.count_mode = count_mode::SYN)
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let syn = Frame::tcp(&spent[h], LOOKUP_PORT, TCP_SYN, b"").build();
        assert_eq!(k.run(hook, &syn), Verdict::Drop, "{hook:?}");
        let fresh = format!("192.0.{}.9", 100 + h);
        let data = Frame::tcp(&fresh, LOOKUP_PORT, TCP_PSH | TCP_ACK, b"data").build();
        assert_eq!(
            k.passes(hook, &data, 10),
            10,
            "{hook:?}: data is not counted in syn mode"
        );
    }

    // 7. The action: monitor passes the banned and the spent; back to drop, the kept ban
    //    and buckets drop them again.
    change(&mut k, "the action", |k| {
        k.update_config(|c| c.action = action::MONITOR)
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let syn = Frame::tcp(&spent[h], LOOKUP_PORT, TCP_SYN, b"").build();
        assert_eq!(k.run(hook, &syn), Verdict::Pass);
        assert_eq!(k.run(hook, &req(&banned[h], LOOKUP_PORT)), Verdict::Pass);
    }
    change(&mut k, "the action", |k| {
        k.update_config(|c| c.action = action::DROP)
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert!(is_banned(&mut k, hook, &banned[h], LOOKUP_PORT), "{hook:?}");
    }

    // 8. The http path: only requests for the new path are charged.
    change(&mut k, "the http path", |k| {
        k.update_config(|c| {
            let path = b"/1.1/contacts/lookup";
            c.count_mode = count_mode::HTTP;
            c.http_path[..path.len()].copy_from_slice(path);
            c.http_path_len = path.len() as u8;
        })
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let other = Frame::tcp(
            &spent[h],
            LOOKUP_PORT,
            TCP_PSH | TCP_ACK,
            b"GET /x HTTP/1.1\r\n",
        )
        .build();
        assert_eq!(k.run(hook, &other), Verdict::Pass, "{hook:?}: another path");
        assert_eq!(
            k.run(hook, &req(&spent[h], LOOKUP_PORT)),
            Verdict::Drop,
            "{hook:?}"
        );
    }

    // 9. Bans back on, longer: the running bans keep their deadlines; new ones use the new
    //    duration.
    change(&mut k, "the ban duration", |k| {
        k.update_config(|c| c.ban_ns = 2 * HOUR_NS)
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        assert_eq!(
            k.source_bucket(&banned[h]).unwrap().ban_until_ns,
            ban_until[h]
        );
        let fresh = format!("{}.0.2.1", 100 + h);
        assert_eq!(k.passes(hook, &req(&fresh, LOOKUP_PORT), 6), 5);
        let until = k.source_bucket(&fresh).unwrap().ban_until_ns;
        assert!(
            until > ban_until[h] + HOUR_NS / 2,
            "{hook:?}: new bans last two hours"
        );
    }

    // Through all of it the counters only ever grew, and nothing was lost: every packet
    // seen was accounted for.
    let stats = k.stats();
    assert_eq!(
        stats.get(Stat::Seen),
        stats.get(Stat::Monitored) + stats.get(Stat::NotMonitored)
    );
    assert_eq!(
        stats.get(Stat::Monitored),
        stats.get(Stat::Passed) + stats.get(Stat::Dropped)
    );
}
