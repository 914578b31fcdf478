//! The kernel's output stays bounded and its configuration whole, whatever the traffic, on
//! both hooks and on the test clock: the global event budget (with the share reserved for ban
//! starts), kernel log records at most once a second, a full ban table of live bans, and the
//! double-buffered config with its magic number and version.

use aya::maps::{Array, MapData, RingBuf};
use monitor_common::{
    addr::AddrKey,
    config::{CONFIG_MAGIC, CONFIG_VERSION, Config, ConfigSlots},
    event::{EVENT_SIZE, Event, kind},
    maps::{MAP_CONFIG, MAX_BANS},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*};

const T0: u64 = 1_000 * NANOS_PER_SEC;
const HOUR_NS: u64 = 3_600 * NANOS_PER_SEC;

fn one_per_minute() -> Limit {
    Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap()
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), EVENT_SIZE, "event record size");
        // SAFETY: the record is exactly one `Event`, plain data; read unaligned to be safe.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    events
}

/// The aya-log ring buffer, where the program's log records go (nobody reads it in tests).
fn log_ring(k: &mut Loaded) -> RingBuf<MapData> {
    let map = k
        .kernel
        .ebpf_mut()
        .take_map("AYA_LOGS")
        .expect("the object logs through AYA_LOGS");
    RingBuf::try_from(map).expect("AYA_LOGS is a ring buffer")
}

fn count_records(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// The `n`th source of a family, each its own /32 or /64.
fn src(family: u8, n: u16, v6: bool) -> String {
    if v6 {
        format!("fd{family:02x}:{n:x}::1")
    } else {
        format!("10.{family}.{}.{}", n / 256, n % 256)
    }
}

/// Issue 11: 50 keys over their limit in one second with a budget of 10 events per second
/// (5 reserved for ban starts) send 5 over-limit events and suppress 45; the ban starts that
/// follow in the same second still get the 5 reserved; a new second brings a new budget.
/// Verdicts never depend on the budget. Today's code sent one event per key.
#[test]
fn the_event_budget_caps_events_per_second_whatever_the_number_of_offenders() {
    let mut config = Config {
        source: one_per_minute(),
        ..Config::default()
    };
    config.set_event_budget(10);
    let mut k = Loaded::clocked(config, T0);
    let mut ring = k.kernel.take_events().unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let second = T0 + (10 + h as u64 * 10) * NANOS_PER_SEC;
        k.update_config(|c| c.ban_ns = 0);
        let before = k.stats();
        for n in 0..50 {
            let frame = Frame::request(&src(10 + h as u8, n, n % 2 == 1), LOOKUP_PORT).build();
            assert_eq!(k.run_at(hook, &frame, second), Verdict::Pass);
            assert_eq!(k.run_at(hook, &frame, second + 1), Verdict::Drop);
        }
        let events = drain(&mut ring);
        assert_eq!(events.len(), 5, "{hook:?}: over-limit events in one second");
        assert!(events.iter().all(|e| e.kind == kind::OVER_LIMIT));
        k.expect_stats(
            &format!("{hook:?}: 50 offenders, budget 10 with 5 reserved"),
            &before,
            &[
                (Stat::Seen, 100),
                (Stat::Monitored, 100),
                (Stat::Requests, 100),
                (Stat::Passed, 50),
                (Stat::Dropped, 50),
                (Stat::DroppedRate, 50),
                (Stat::EventsSent, 5),
                (Stat::EventsSuppressed, 45),
            ],
        );

        // Bans on, same second: the over-limit events could not touch the reserve.
        k.update_config(|c| c.ban_ns = HOUR_NS);
        let before = k.stats();
        for n in 100..120 {
            let frame = Frame::request(&src(10 + h as u8, n, n % 2 == 1), LOOKUP_PORT).build();
            assert_eq!(k.run_at(hook, &frame, second + 2), Verdict::Pass);
            assert_eq!(k.run_at(hook, &frame, second + 3), Verdict::Drop);
        }
        let events = drain(&mut ring);
        assert_eq!(events.len(), 5, "{hook:?}: ban events from the reserve");
        assert!(
            events
                .iter()
                .all(|e| e.kind == kind::BAN && e.ban_until_ns != 0)
        );
        let after = k.stats();
        assert_eq!(delta(&before, &after, Stat::BansStarted), 20);
        assert_eq!(delta(&before, &after, Stat::EventsSuppressed), 15);

        // The next second: a fresh budget (over-limit events again stop at 5).
        let before = k.stats();
        k.update_config(|c| c.ban_ns = 0);
        for n in 200..220 {
            let frame = Frame::request(&src(10 + h as u8, n, n % 2 == 1), LOOKUP_PORT).build();
            k.run_at(hook, &frame, second + NANOS_PER_SEC);
            k.run_at(hook, &frame, second + NANOS_PER_SEC + 1);
        }
        assert_eq!(drain(&mut ring).len(), 5, "{hook:?}: the next second");
        assert_eq!(delta(&before, &k.stats(), Stat::EventsSuppressed), 15);
    }
}

/// Ban starts may use the whole budget, over-limit events only the part outside the reserve;
/// a budget of 0 sends nothing and counts every withheld event.
#[test]
fn ban_starts_may_use_the_whole_budget_and_a_zero_budget_sends_nothing() {
    let mut config = Config {
        source: one_per_minute(),
        ban_ns: HOUR_NS,
        ..Config::default()
    };
    config.set_event_budget(10);
    let mut k = Loaded::clocked(config, T0);
    let mut ring = k.kernel.take_events().unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let second = T0 + (10 + h as u64 * 10) * NANOS_PER_SEC;
        k.update_config(|c| c.set_event_budget(10));
        for n in 0..30 {
            let frame = Frame::request(&src(20 + h as u8, n, n % 2 == 0), LOOKUP_PORT).build();
            k.run_at(hook, &frame, second);
            assert_eq!(k.run_at(hook, &frame, second), Verdict::Drop);
        }
        let events = drain(&mut ring);
        assert_eq!(
            events.len(),
            10,
            "{hook:?}: ban starts use the whole budget"
        );
        assert!(events.iter().all(|e| e.kind == kind::BAN));

        k.update_config(|c| c.set_event_budget(0));
        let before = k.stats();
        for n in 100..110 {
            let frame = Frame::request(&src(20 + h as u8, n, n % 2 == 0), LOOKUP_PORT).build();
            k.run_at(hook, &frame, second + 5 * NANOS_PER_SEC);
            k.run_at(hook, &frame, second + 5 * NANOS_PER_SEC);
        }
        assert!(drain(&mut ring).is_empty(), "{hook:?}: budget 0");
        let after = k.stats();
        assert_eq!(delta(&before, &after, Stat::EventsSuppressed), 10);
        assert_eq!(delta(&before, &after, Stat::EventsSent), 0);
    }
}

/// Issue 10 hole 6: a spoofed sweep of sources made the kernel write "ban started" once per
/// ban and "ban table full" once per refused request. Each kind of record is now written at
/// most once a second across all CPUs; the statistics still count every occurrence.
#[test]
fn kernel_log_records_about_per_packet_conditions_are_at_most_one_per_second() {
    let mut k = Loaded::clocked(
        Config {
            source: one_per_minute(),
            ban_ns: HOUR_NS,
            ..Config::default()
        },
        T0,
    );
    let mut logs = log_ring(&mut k);
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let second = T0 + (10 + h as u64 * 10) * NANOS_PER_SEC;
        let before = k.stats();
        for n in 0..100 {
            let frame = Frame::request(&src(30 + h as u8, n, n % 2 == 0), LOOKUP_PORT).build();
            k.run_at(hook, &frame, second + n as u64);
            assert_eq!(k.run_at(hook, &frame, second + n as u64), Verdict::Drop);
        }
        assert_eq!(delta(&before, &k.stats(), Stat::BansStarted), 100);
        assert_eq!(
            count_records(&mut logs),
            1,
            "{hook:?}: 100 bans in one second"
        );
        // A second later, one more record for the next batch.
        for n in 100..110 {
            let frame = Frame::request(&src(30 + h as u8, n, n % 2 == 0), LOOKUP_PORT).build();
            k.run_at(hook, &frame, second + NANOS_PER_SEC);
            k.run_at(hook, &frame, second + NANOS_PER_SEC);
        }
        assert_eq!(count_records(&mut logs), 1, "{hook:?}: the next second");
    }
}

/// Issue 10 hole 6: with the ban table full of live bans, a new offender cannot be banned,
/// but it is still limited: its excess is refused by its rate limit (`dropped_rate`, never
/// admitted), `bans_full` counts each failed ban, and "ban table full" is logged at most once a
/// second. It is admitted again only as its rate allows.
#[test]
fn with_the_ban_table_full_of_live_bans_a_new_offender_is_still_limited() {
    let mut k = Loaded::clocked(
        Config {
            source: Limit::new(1, 60 * NANOS_PER_SEC, 2).unwrap(),
            ban_ns: HOUR_NS,
            ..Config::default()
        },
        T0,
    );
    for n in 0..MAX_BANS {
        let key = AddrKey::from_v4([100, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        k.kernel
            .set_ban(&key, T0 + 10 * HOUR_NS)
            .expect("fill the ban table");
    }
    assert_eq!(k.kernel.bans().unwrap().len(), MAX_BANS as usize);
    let mut logs = log_ring(&mut k);
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let s = src(40 + h as u8, 1, v6);
            let frame = Frame::request(&s, LOOKUP_PORT).build();
            let t = T0 + (h as u64 * 2 + v6 as u64 + 1) * 600 * NANOS_PER_SEC;
            let before = k.stats();
            assert_eq!(k.run_at(hook, &frame, t), Verdict::Pass);
            assert_eq!(k.run_at(hook, &frame, t), Verdict::Pass);
            for i in 0..100 {
                assert_eq!(k.run_at(hook, &frame, t + i), Verdict::Drop, "{hook:?} {s}");
            }
            let after = k.stats();
            assert_eq!(
                delta(&before, &after, Stat::DroppedRate),
                100,
                "{hook:?} {s}"
            );
            assert_eq!(delta(&before, &after, Stat::DroppedBan), 0, "{hook:?} {s}");
            assert_eq!(delta(&before, &after, Stat::BansFull), 100, "{hook:?} {s}");
            assert_eq!(delta(&before, &after, Stat::BansStarted), 0, "{hook:?} {s}");
            assert_eq!(k.source_bucket(&s).unwrap().ban_until_ns, 0);
            assert_eq!(count_records(&mut logs), 1, "{hook:?} {s}: one record");
            // Still limited by its rate: one more request a minute, no more.
            let rows = [
                (t + 59 * NANOS_PER_SEC, Verdict::Drop),
                (t + 60 * NANOS_PER_SEC, Verdict::Pass),
                (t + 60 * NANOS_PER_SEC, Verdict::Drop),
            ];
            for (at, want) in rows {
                assert_eq!(k.run_at(hook, &frame, at), want, "{hook:?} {s} at {at}");
            }
            // The two refusals, a second apart, each wrote a record.
            assert_eq!(count_records(&mut logs), 2, "{hook:?} {s}: a second apart");
        }
    }
    assert_eq!(k.kernel.bans().unwrap().len(), MAX_BANS as usize);
}

fn raw_slots(k: &mut Loaded) -> ConfigSlots {
    let map = k.kernel.ebpf_mut().map(MAP_CONFIG).expect("MON_CONFIG");
    let array: Array<&MapData, ConfigSlots> = Array::try_from(map).expect("config array");
    array.get(&0, 0).expect("read MON_CONFIG")
}

/// Issue 10 hole 7: a packet sees the old config or the new one, never a mix. The writer
/// fills the idle slot and then flips the index, so the slot packets read is never written:
/// after each write the live slot holds the new config and the other still holds the old one.
#[test]
fn a_config_write_never_touches_the_slot_packets_are_reading() {
    let configs: Vec<Config> = (1..=4u64)
        .map(|i| Config {
            source: Limit::new(i, NANOS_PER_SEC, i).unwrap(),
            ban_ns: i,
            ..Config::default()
        })
        .collect();
    let mut k = Loaded::new(configs[0]);
    let mut previous = Config {
        table: k.kernel.table_shape(),
        ..configs[0]
    };
    for config in &configs[1..] {
        let before = raw_slots(&mut k);
        k.kernel.set_config(config).unwrap();
        // The writer puts the source table's shape into every config it writes.
        let config = &Config {
            table: k.kernel.table_shape(),
            ..*config
        };
        let after = raw_slots(&mut k);
        assert_ne!(after.active & 1, before.active & 1, "the index flipped");
        assert_eq!(after.live(), config, "the new config is live");
        assert_eq!(
            after.slots[(before.active & 1) as usize],
            previous,
            "the slot that was live is untouched"
        );
        assert_eq!(k.config(), *config);
        previous = *config;
    }
}

/// Issue 10 hole 8 (the kernel's side): the config carries a magic number and a version; a
/// slot without them (never written, or written by another layout) is not acted on: packets
/// pass untouched, counted as not monitored.
#[test]
fn a_config_without_the_magic_or_with_another_version_limits_nothing() {
    let mut k = Loaded::new(Config {
        source: one_per_minute(),
        ..Config::default()
    });
    assert_eq!(
        (k.config().magic, k.config().version),
        (CONFIG_MAGIC, CONFIG_VERSION)
    );
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let frame = Frame::request(&src(50 + h as u8, 1, false), LOOKUP_PORT).build();
        assert_eq!(k.run_each(hook, &frame, 2), [Verdict::Pass, Verdict::Drop]);
        for (what, change) in [
            (
                "no magic",
                (|c: &mut Config| c.magic = 0) as fn(&mut Config),
            ),
            ("another version", |c: &mut Config| {
                c.version = CONFIG_VERSION + 1
            }),
        ] {
            k.update_config(change);
            let before = k.stats();
            assert_eq!(k.run(hook, &frame), Verdict::Pass, "{hook:?} {what}");
            k.expect_stats(
                &format!("{hook:?} {what}"),
                &before,
                &[(Stat::Seen, 1), (Stat::NotMonitored, 1)],
            );
            k.update_config(|c| {
                c.magic = CONFIG_MAGIC;
                c.version = CONFIG_VERSION;
            });
            assert_eq!(k.run(hook, &frame), Verdict::Drop, "{hook:?} restored");
        }
    }
}
