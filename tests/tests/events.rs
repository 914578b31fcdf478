//! Offender events through the `MON_EVENTS` ring buffer, on both hooks: when they fire (a
//! source or an aggregate over its limit, a ban starting; at most once per key per second),
//! what they carry, and that a full ring buffer costs events, counted, never verdicts.

use aya::maps::{MapData, RingBuf};
use monitor_common::{
    addr::AddrKey,
    config::{Config, MAX_EVENTS_PER_SEC, action, count_mode},
    event::{EVENT_SIZE, Event, kind, level},
    maps::EVENTS_BYTES,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;

fn per_minute(requests: u64, burst: u64) -> Limit {
    Limit::new(requests, MINUTE_NS, burst).expect("valid limit")
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

struct Offender {
    hook: Hook,
    src: String,
    frame: Vec<u8>,
    key: AddrKey,
    udp: bool,
}

#[test]
fn source_events_fire_once_per_key_per_second_with_correct_fields() {
    // On the test clock: every instant below is exact, so each assert always runs.
    let mut clock = 1_000 * NANOS_PER_SEC;
    let mut k = Loaded::clocked(
        Config {
            source: per_minute(1, 2),
            ..Config::default()
        },
        clock,
    );
    let mut ring = k.kernel.take_events().unwrap();
    let config = k.config();
    let mut offenders = Vec::new();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (n, (v6, udp)) in [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
        {
            let src = if v6 {
                format!("2001:db8:{h}:{n}::77")
            } else {
                v4_source(h as u8, n as u8)
            };
            let frame = if udp {
                Frame::udp(&src, LOOKUP_PORT, b"lookup").build()
            } else {
                Frame::request(&src, LOOKUP_PORT).build()
            };
            let key = source_key(&src, &config);
            offenders.push(Offender {
                hook,
                src,
                frame,
                key,
                udp,
            });
        }
    }

    let mut firsts = Vec::new();
    for o in &offenders {
        clock += 10_000_000;
        k.set_now(clock);
        assert_eq!(k.passes(o.hook, &o.frame, 2), 2);
        assert_eq!(k.run(o.hook, &o.frame), Verdict::Drop);
        // More refusals within the second: no more events for this key.
        assert_eq!(k.passes(o.hook, &o.frame, 5), 0);
        let events = drain(&mut ring);
        assert_eq!(
            events.len(),
            1,
            "{:?} {}: one event for six refusals",
            o.hook,
            o.src
        );
        let e = events[0];
        let v4 = !o.src.contains(':');
        assert_eq!(e.ts_ns, clock, "{:?} {}: timestamp", o.hook, o.src);
        let want = Event {
            ts_ns: e.ts_ns,
            addr: o.key.addr,
            prefix_len: if v4 { 32 } else { 64 },
            level: level::SOURCE,
            kind: kind::OVER_LIMIT,
            action: action::DROP,
            proto: if o.udp { 17 } else { 6 },
            is_v4: v4 as u8,
            dport: LOOKUP_PORT,
            // Two admitted and the one that tripped it.
            requests: 3,
            ban_until_ns: 0,
        };
        assert_eq!(e, want, "{:?} {}", o.hook, o.src);
        firsts.push(e.ts_ns);
    }
    assert_eq!(k.stat(Stat::EventsSent), offenders.len() as u64);

    // A nanosecond short of a second after its last event a key stays quiet; at the second it
    // reports once more, with its grown count.
    for (o, first) in offenders.iter().zip(&firsts) {
        k.set_now(first + NANOS_PER_SEC - 1);
        assert_eq!(k.passes(o.hook, &o.frame, 2), 0);
        assert!(
            drain(&mut ring).is_empty(),
            "{:?} {}: an event within its second",
            o.hook,
            o.src
        );
        k.set_now(first + NANOS_PER_SEC);
        assert_eq!(k.passes(o.hook, &o.frame, 2), 0);
        let late = drain(&mut ring);
        assert_eq!(
            late.len(),
            1,
            "{:?} {}: one event after its second",
            o.hook,
            o.src
        );
        // 3 at the first event, 5 more refused, 2 a nanosecond early, then the one that
        // reported (the last of the two is after the event).
        assert_eq!(late[0].requests, 11, "{:?} {}", o.hook, o.src);
        assert_eq!(late[0].addr, o.key.addr);
    }
}

#[test]
fn ban_aggregate_and_monitor_mode_events() {
    const BAN_NS: u64 = 30 * NANOS_PER_SEC;
    let mut k = Loaded::new(Config {
        source: per_minute(1, 1),
        aggregate: per_minute(1, 3),
        ban_ns: BAN_NS,
        ..Config::default()
    });
    let mut ring = k.kernel.take_events().unwrap();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let (a, b, c, d) = if v6 {
                (
                    format!("2001:db8:{h}:1::1"),
                    format!("2001:db8:{h}:2::1"),
                    format!("2001:db8:{h}:3::1"),
                    format!("2001:db8:{h}:4::1"),
                )
            } else {
                (
                    format!("192.0.{h}.1"),
                    format!("192.0.{h}.2"),
                    format!("192.0.{h}.3"),
                    format!("192.0.{h}.4"),
                )
            };
            let config = k.config();
            // A ban starts: one BAN event carrying the deadline MON_BANS holds.
            let req = |s: &str| Frame::request(s, LOOKUP_PORT).build();
            assert_eq!(
                k.run_each(hook, &req(&a), 2),
                [Verdict::Pass, Verdict::Drop]
            );
            // Banned traffic afterwards raises nothing.
            assert_eq!(k.passes(hook, &req(&a), 5), 0);
            let events = drain(&mut ring);
            assert_eq!(events.len(), 1, "{hook:?} {a}: {events:?}");
            let e = events[0];
            let key = source_key(&a, &config);
            let (_, ban) = k
                .kernel
                .bans()
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .expect("ban stored");
            assert_eq!(
                (e.kind, e.level, e.addr, e.requests, e.ban_until_ns),
                (kind::BAN, level::SOURCE, key.addr, 2, ban.until_ns),
                "{hook:?} {a}"
            );
            assert_eq!(e.ban_until_ns - e.ts_ns, BAN_NS);

            // The aggregate (3) is spent by a, b, c (one each); d is refused by it.
            assert_eq!(k.run(hook, &req(&b)), Verdict::Pass);
            assert_eq!(k.run(hook, &req(&c)), Verdict::Pass);
            assert_eq!(k.run(hook, &req(&d)), Verdict::Drop);
            let events = drain(&mut ring);
            assert_eq!(events.len(), 1, "{hook:?} aggregate: {events:?}");
            let e = events[0];
            let agg = aggregate_key(&a, &config);
            assert_eq!(
                (
                    e.level,
                    e.kind,
                    e.addr,
                    e.prefix_len,
                    e.requests,
                    e.ban_until_ns
                ),
                (
                    level::AGGREGATE,
                    kind::OVER_LIMIT,
                    agg.addr,
                    if v6 { 48 } else { 24 },
                    4,
                    0
                ),
                "{hook:?} aggregate of {a}"
            );
            assert_eq!((e.dport, e.proto, e.is_v4), (LOOKUP_PORT, 6, !v6 as u8));
        }
    }

    // In monitor mode the event says so.
    k.update_config(|c| {
        c.action = action::MONITOR;
        c.ban_ns = 0;
        c.aggregate = Limit::OFF;
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(h as u8, 50);
        let bytes = Frame::request(&src, LOOKUP_PORT).build();
        assert_eq!(k.passes(hook, &bytes, 2), 2);
        let events = drain(&mut ring);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].action, events[0].kind),
            (action::MONITOR, kind::OVER_LIMIT)
        );
    }
}

#[test]
fn a_full_ring_buffer_counts_lost_events_and_keeps_verdicts() {
    // Each record takes the event plus the ring buffer's 8-byte header.
    let capacity = EVENTS_BYTES as usize / (EVENT_SIZE + 8);
    let offenders = capacity + 2000;
    // The largest event budget (half of it, 500,000 a second, open to over-limit events), on a
    // stopped test clock: all of these fall in one second and none is withheld by the budget.
    let mut config = Config {
        source: per_minute(1, 1),
        count_mode: count_mode::PACKETS,
        ..Config::default()
    };
    config.set_event_budget(MAX_EVENTS_PER_SEC);
    let mut k = Loaded::clocked(config, 1_000 * NANOS_PER_SEC);
    let mut ring = k.kernel.take_events().unwrap();
    let template = Frame::request("10.0.0.1", LOOKUP_PORT);
    let at = template.src_offset();
    let mut bytes = template.build();
    let before = k.stats();
    for i in 0..offenders as u32 {
        let hook = HOOKS[(i & 1) as usize];
        bytes[at..at + 4].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
        assert_eq!(
            k.run(hook, &bytes),
            Verdict::Pass,
            "offender {i}: first request"
        );
        assert_eq!(
            k.run(hook, &bytes),
            Verdict::Drop,
            "offender {i}: over the limit"
        );
    }
    let after = k.stats();
    let sent = delta(&before, &after, Stat::EventsSent);
    let lost = delta(&before, &after, Stat::EventsLost);
    println!("{offenders} offenders into a ring of {capacity} records: {sent} sent, {lost} lost");
    assert_eq!(
        sent + lost,
        offenders as u64,
        "every offence is either sent or counted lost"
    );
    assert_eq!(delta(&before, &after, Stat::EventsSuppressed), 0);
    assert!(
        lost >= 2000,
        "ring of {capacity} overflowed by at least 2000: lost {lost}"
    );
    assert_eq!(delta(&before, &after, Stat::DroppedRate), offenders as u64);
    assert_eq!(delta(&before, &after, Stat::Passed), offenders as u64);

    let events = drain(&mut ring);
    assert_eq!(
        events.len() as u64,
        sent,
        "what was sent is what user space reads"
    );
    // Once user space has caught up, events flow again.
    bytes[at..at + 4].copy_from_slice(&[10, 255, 255, 1]);
    assert_eq!(
        k.run_each(Hook::Tc, &bytes, 2),
        [Verdict::Pass, Verdict::Drop]
    );
    assert_eq!(drain(&mut ring).len(), 1);
}
