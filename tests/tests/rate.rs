//! Rate semantics of the per-source level on both hooks: the burst, the refill, monitor mode,
//! keying by prefix, live limit changes, contention on two CPUs, and exact agreement of the
//! kernel, the user-space twin (`monitor::limit::Twin`) and an independent reference of the
//! specification over 100,000 seeded arrivals.
//!
//! Time: tests that depend on it load the `test-clock` build of the object
//! (`Loaded::clocked`) and set `now` before each arrival, so each row is an exact arrival time
//! and verdict; nothing sleeps.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::Barrier,
    thread::sleep,
    time::Duration,
};

use monitor::{clock::kernel_now_ns, limit::Twin};
use monitor_common::{
    addr::{AddrKey, AddrMask},
    config::{Config, action},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tests::{
    frames::{Frame, TCP_ACK},
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;

fn per_minute(requests: u64, burst: u64) -> Limit {
    Limit::new(requests, MINUTE_NS, burst).expect("valid limit")
}

#[test]
fn a_burst_of_b_passes_and_the_next_request_is_dropped() {
    let mut k = Loaded::new(Config::default());
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (i, burst) in [1u64, 5, 50].into_iter().enumerate() {
            let limit = per_minute(1, burst);
            k.update_config(|c| c.source = limit);
            for v6 in [false, true] {
                let n = (i * 2 + v6 as usize) as u8;
                let src = if v6 {
                    v6_source(h as u8, n as u16)
                } else {
                    v4_source(h as u8, n)
                };
                let bytes = Frame::request(&src, LOOKUP_PORT).build();
                let before = k.stats();
                let t0 = kernel_now_ns();
                let first = k.run(hook, &bytes);
                let t1 = kernel_now_ns();
                let mut verdicts = vec![first];
                verdicts.extend(k.run_each(hook, &bytes, burst as usize));
                let mut want = vec![Verdict::Pass; burst as usize];
                want.push(Verdict::Drop);
                assert_eq!(verdicts, want, "{hook:?} {src} burst {burst}");
                k.expect_stats(
                    &format!("{hook:?} {src} burst {burst}"),
                    &before,
                    &[
                        (Stat::Seen, burst + 1),
                        (Stat::Monitored, burst + 1),
                        (Stat::Requests, burst + 1),
                        (Stat::Passed, burst),
                        (Stat::Dropped, 1),
                        (Stat::DroppedRate, 1),
                        (Stat::EventsSent, 1),
                    ],
                );
                let bucket = k.source_bucket(&src).expect("bucket");
                assert_eq!((bucket.requests, bucket.refused), (burst + 1, 1));
                // B admissions moved the theoretical arrival time B intervals past the first.
                let span = burst * limit.interval_ns;
                assert!(
                    (t0 + span..=t1 + span).contains(&bucket.tat_ns),
                    "{hook:?} {src}: tat {} outside [{}, {}]",
                    bucket.tat_ns,
                    t0 + span,
                    t1 + span
                );
            }
        }
    }
}

/// Sends requests until one is dropped (at most `limit` + 1) and returns how many passed and
/// the clock instants around the whole exchange.
fn admitted_until_drop(k: &mut Loaded, hook: Hook, bytes: &[u8], most: u64) -> (u64, u64, u64) {
    let lo = kernel_now_ns();
    let mut passed = 0;
    for _ in 0..=most {
        if k.run(hook, bytes) == Verdict::Drop {
            break;
        }
        passed += 1;
    }
    (passed, lo, kernel_now_ns())
}

#[test]
fn the_bucket_refills_with_time() {
    const BURST: u64 = 4;
    let limit = Limit::new(20, NANOS_PER_SEC, BURST).unwrap(); // one request per 50 ms
    let t = limit.interval_ns;
    let mut k = Loaded::new(Config {
        source: limit,
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let src = if v6 {
                v6_source(h as u8, 1)
            } else {
                v4_source(h as u8, 1)
            };
            let bytes = Frame::request(&src, LOOKUP_PORT).build();
            let (passed, first_lo, first_hi) = admitted_until_drop(&mut k, hook, &bytes, BURST);
            assert_eq!(passed, BURST, "{hook:?} {src}: the first burst");
            // A partial refill. After the burst tat = first + B*T, so a request at `now` fits
            // while tat + T - now <= B*T: floor((now - first) / T) more, at most B. `now` and
            // `first` are only known to lie between clock reads, hence a range; the sleep's
            // length does not matter (a slow machine only moves the range up, to at most B).
            sleep(Duration::from_millis(130));
            let (refilled, lo, hi) = admitted_until_drop(&mut k, hook, &bytes, BURST);
            let least = ((lo - first_hi) / t).min(BURST);
            let most = ((hi - first_lo) / t).min(BURST);
            assert!(
                least >= 2,
                "{hook:?}: slept 130 ms but the clock moved {} ms",
                (lo - first_hi) / 1_000_000
            );
            assert!(
                (least..=most).contains(&refilled),
                "{hook:?} {src}: {refilled} refilled, expected {least}..={most}"
            );
            // A full refill after B intervals and more; never more than the burst.
            sleep(Duration::from_nanos(BURST * t + 20_000_000));
            let (full, _, _) = admitted_until_drop(&mut k, hook, &bytes, BURST + 1);
            assert_eq!(
                full, BURST,
                "{hook:?} {src}: full refill is the burst, no more"
            );
        }
    }
}

/// A source pacing itself under the limit, with the jitter a real client has, is never
/// refused. Sleeps can only run long, which makes the pace slower still.
#[test]
fn a_source_under_its_rate_is_never_refused() {
    let limit = Limit::new(100, NANOS_PER_SEC, 2).unwrap(); // 10 ms interval, small burst
    let mut k = Loaded::new(Config {
        source: limit,
        ..Config::default()
    });
    let sources: Vec<(Hook, Vec<u8>)> = HOOKS
        .into_iter()
        .enumerate()
        .flat_map(|(h, hook)| {
            [
                (
                    hook,
                    Frame::request(&v4_source(h as u8, 1), LOOKUP_PORT).build(),
                ),
                (
                    hook,
                    Frame::request(&v6_source(h as u8, 1), LOOKUP_PORT).build(),
                ),
            ]
        })
        .collect();
    let before = k.stats();
    for _ in 0..40 {
        for (hook, bytes) in &sources {
            assert_eq!(
                k.run(*hook, bytes),
                Verdict::Pass,
                "{hook:?} paced at half the rate"
            );
        }
        // 20 ms between requests of one source: half the rate; the burst of 2 absorbs any
        // scheduling jitter between the sleeps.
        sleep(Duration::from_millis(20));
    }
    let after = k.stats();
    assert_eq!(delta(&before, &after, Stat::Requests), 160);
    assert_eq!(delta(&before, &after, Stat::Dropped), 0);
}

/// A limit whose burst is smaller than its rate times a clock tick (1000/s with burst 1: one
/// request per millisecond) still admits a source pacing itself at half the rate. With the
/// coarse clock, which moves once per 4 ms tick, this source lost about half its requests.
#[test]
fn a_fast_limit_with_burst_one_admits_a_source_at_half_its_rate() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1000, NANOS_PER_SEC, 1).unwrap(),
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let bytes = Frame::request(&v4_source(h as u8, 7), LOOKUP_PORT).build();
        let before = k.stats();
        for _ in 0..200 {
            // Sleeps only run long, so every gap is at least 2 ms: twice the interval.
            sleep(Duration::from_millis(2));
            k.run(hook, &bytes);
        }
        let after = k.stats();
        assert_eq!(delta(&before, &after, Stat::Requests), 200, "{hook:?}");
        assert_eq!(
            delta(&before, &after, Stat::Dropped),
            0,
            "{hook:?} refused a paced source"
        );
    }
}

#[test]
fn monitor_mode_passes_every_excess_request_and_counts_it() {
    let mut k = Loaded::new(Config {
        source: per_minute(1, 3),
        action: action::MONITOR,
        ban_ns: 60 * NANOS_PER_SEC,
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for v6 in [false, true] {
            let src = if v6 {
                v6_source(h as u8, 1)
            } else {
                v4_source(h as u8, 1)
            };
            let request = Frame::request(&src, LOOKUP_PORT).build();
            let ack = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"").build();
            let before = k.stats();
            assert_eq!(k.passes(hook, &request, 4), 4, "{hook:?} {src}");
            k.expect_stats(
                &format!("{hook:?} {src}: over the limit in monitor mode"),
                &before,
                &[
                    (Stat::Seen, 4),
                    (Stat::Monitored, 4),
                    (Stat::Requests, 4),
                    (Stat::Passed, 4),
                    (Stat::MonitorOnly, 1),
                    (Stat::BansStarted, 1),
                    (Stat::EventsSent, 1),
                ],
            );
            // The (dry-run) ban that started is counted too, and still drops nothing.
            let before = k.stats();
            assert_eq!(k.passes(hook, &request, 10), 10);
            assert_eq!(k.passes(hook, &ack, 10), 10);
            k.expect_stats(
                &format!("{hook:?} {src}: banned in monitor mode"),
                &before,
                &[
                    (Stat::Seen, 20),
                    (Stat::Monitored, 20),
                    (Stat::Passed, 20),
                    (Stat::MonitorOnly, 20),
                ],
            );
            let bucket = k.source_bucket(&src).unwrap();
            assert_eq!((bucket.requests, bucket.refused), (14, 11));
            assert!(bucket.ban_until_ns > 0);
        }
    }
}

#[test]
fn two_addresses_in_one_v6_64_share_a_budget_and_other_64s_do_not() {
    let mut k = Loaded::new(Config {
        source: per_minute(1, 4),
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let a = format!("2001:db8:{h}:1::1");
        let b = format!("2001:db8:{h}:1:ffff:ffff:ffff:fffe");
        let other = format!("2001:db8:{h}:2::1");
        let req = |s: &str| Frame::request(s, LOOKUP_PORT).build();
        assert_eq!(k.passes(hook, &req(&a), 2), 2);
        assert_eq!(k.passes(hook, &req(&b), 2), 2);
        assert_eq!(
            k.run(hook, &req(&a)),
            Verdict::Drop,
            "{hook:?}: {a} shares {b}'s /64"
        );
        assert_eq!(
            k.run(hook, &req(&b)),
            Verdict::Drop,
            "{hook:?}: {b} shares {a}'s /64"
        );
        assert_eq!(
            k.run_each(hook, &req(&other), 5)[..4],
            [Verdict::Pass; 4],
            "{hook:?}: {other}"
        );
        let shared = k
            .kernel
            .source(&prefix_key(&a, 64))
            .unwrap()
            .expect("/64 bucket");
        assert_eq!((shared.requests, shared.refused), (6, 2));
        assert!(
            k.kernel.source(&addr_key(&a)).unwrap().is_none(),
            "keyed by /64, not /128"
        );

        // IPv4 defaults to /32: neighbours are separate.
        let v4a = format!("198.51.{h}.1");
        let v4b = format!("198.51.{h}.2");
        assert_eq!(k.passes(hook, &req(&v4a), 5), 4);
        assert_eq!(
            k.passes(hook, &req(&v4b), 5),
            4,
            "{hook:?}: {v4b} has its own /32 budget"
        );
    }
}

#[test]
fn source_prefixes_are_configurable() {
    let mut config = Config {
        source: per_minute(1, 4),
        ..Config::default()
    };
    config.set_prefixes(24, 56, 16, 32);
    let mut k = Loaded::new(config);
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let req = |s: &str| Frame::request(s, LOOKUP_PORT).build();
        // IPv4 keyed by /24: neighbours in one /24 share, the next /24 does not.
        let (a, b, c) = (
            format!("198.51.{h}.1"),
            format!("198.51.{h}.254"),
            format!("198.51.{}.1", h + 10),
        );
        assert_eq!(k.passes(hook, &req(&a), 2), 2);
        assert_eq!(
            k.passes(hook, &req(&b), 3),
            2,
            "{hook:?}: {b} shares {a}'s /24"
        );
        assert_eq!(
            k.passes(hook, &req(&c), 5),
            4,
            "{hook:?}: {c} is another /24"
        );
        let bucket = k
            .kernel
            .source(&prefix_key(&a, 24))
            .unwrap()
            .expect("/24 bucket");
        assert_eq!((bucket.requests, bucket.refused), (5, 1));

        // IPv6 keyed by /56: two /64s inside one /56 share, the next /56 does not.
        let (a, b, c) = (
            format!("2001:db8:{h}:ab00::1"),
            format!("2001:db8:{h}:abff::1"),
            format!("2001:db8:{h}:ac00::1"),
        );
        assert_eq!(k.passes(hook, &req(&a), 2), 2);
        assert_eq!(
            k.passes(hook, &req(&b), 3),
            2,
            "{hook:?}: {b} shares {a}'s /56"
        );
        assert_eq!(
            k.passes(hook, &req(&c), 5),
            4,
            "{hook:?}: {c} is another /56"
        );
        assert!(k.kernel.source(&prefix_key(&a, 56)).unwrap().is_some());
    }
    // Per-address keying (/32 and /128): every address on its own.
    k.update_config(|c| c.set_prefixes(32, 128, 24, 48));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for (a, b) in [
            (format!("192.0.{h}.1"), format!("192.0.{h}.2")),
            (format!("2001:db8:{h}:cd::1"), format!("2001:db8:{h}:cd::2")),
        ] {
            let req = |s: &str| Frame::request(s, LOOKUP_PORT).build();
            assert_eq!(k.passes(hook, &req(&a), 5), 4);
            assert_eq!(
                k.passes(hook, &req(&b), 5),
                4,
                "{hook:?}: {b} is its own key"
            );
        }
    }
}

/// The kernel and the twin see the same arrivals. An arrival is compared only when the twin
/// gives the same verdict at the clock instants read just before and just after the run
/// (the kernel read its clock somewhere in between); otherwise it is skipped and the twin is
/// re-synced from the kernel's bucket. When both reads are the same tick the kernel's `now`
/// is known exactly, and the twin's state must equal the bucket's too.
#[test]
fn kernel_verdicts_match_the_user_space_twin_over_random_arrivals() {
    const ARRIVALS: usize = 1500;
    // 40 ms interval, burst 3. Ten keys, an arrival every millisecond on average: each key is
    // offered about four times its rate, so both verdicts are common even if a loaded machine
    // stretches the sleeps a few times over.
    let limit = Limit::new(25, NANOS_PER_SEC, 3).unwrap();
    let (mask_v4, mask_v6) = (AddrMask::v4(32), AddrMask::v6(64));
    let mut k = Loaded::new(Config {
        source: limit,
        ..Config::default()
    });
    // Ten keys, two of them reached from two addresses in one /64.
    let mut sources: Vec<String> = (1..=5).map(|i| format!("203.0.113.{i}")).collect();
    sources.extend((1..=3).map(|i| format!("2001:db8:77:{i}::1")));
    sources.extend(["2001:db8:77:1::2".into(), "2001:db8:77:2::ffff".into()]);
    sources.extend((4..=5).map(|i| format!("2001:db8:77:{i}::1")));
    let frames: Vec<Vec<u8>> = sources
        .iter()
        .map(|s| Frame::request(s, LOOKUP_PORT).build())
        .collect();
    let keys: Vec<AddrKey> = sources
        .iter()
        .map(|s| {
            let key = addr_key(s);
            key.masked(if key.is_v4() { &mask_v4 } else { &mask_v6 })
        })
        .collect();

    let mut twins: HashMap<AddrKey, Twin> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    let (mut compared, mut skipped, mut exact) = ([0usize; 2], [0usize; 2], 0usize);
    let (mut admitted, mut refused) = (0usize, 0usize);
    for arrival in 0..ARRIVALS {
        let i = rng.random_range(0..sources.len());
        let h = rng.random_range(0..2);
        let hook = HOOKS[h];
        let src = addr_key(&sources[i]);
        let twin = twins
            .entry(keys[i])
            .or_insert_with(|| Twin::new(limit, mask_v4, mask_v6));

        let t0 = kernel_now_ns();
        let verdict = k.run(hook, &frames[i]);
        let t1 = kernel_now_ns();
        let kernel_admitted = verdict == Verdict::Pass;
        if kernel_admitted {
            admitted += 1;
        } else {
            refused += 1;
        }
        let (early, late) = (twin.would_admit(&src, t0), twin.would_admit(&src, t1));
        if early == late {
            compared[h] += 1;
            assert_eq!(
                kernel_admitted, early,
                "arrival {arrival} from {} on {hook:?} at {t0}..{t1}: kernel and twin disagree",
                sources[i]
            );
        } else {
            skipped[h] += 1;
        }
        let bucket = k
            .kernel
            .source(&keys[i])
            .unwrap()
            .expect("bucket after a request");
        if t0 == t1 {
            twin.request(&src, t0);
            exact += 1;
            assert_eq!(
                twin.tat(&src),
                Some(bucket.tat_ns),
                "arrival {arrival}: twin state differs from the kernel's bucket"
            );
        } else {
            // Re-sync: a fresh twin's first request at `tat - T` leaves its state at `tat`.
            *twin = Twin::new(limit, mask_v4, mask_v6);
            twin.request(&src, bucket.tat_ns - limit.interval_ns);
        }
        sleep(Duration::from_micros(rng.random_range(0..2000)));
    }
    println!(
        "twin vs kernel over {ARRIVALS} arrivals: compared XDP {} TC {}, skipped as ambiguous \
         XDP {} TC {}; state checked exactly {exact}; kernel admitted {admitted}, refused {refused}",
        compared[0], compared[1], skipped[0], skipped[1]
    );
    assert!(compared[0] > ARRIVALS / 3 && compared[1] > ARRIVALS / 3);
    // The sequence must exercise both outcomes to mean anything.
    assert!(
        admitted > ARRIVALS / 10 && refused > ARRIVALS / 10,
        "{admitted} / {refused}"
    );
    let stats = k.stats();
    assert_eq!(stats.get(Stat::Requests), ARRIVALS as u64);
    assert_eq!(stats.get(Stat::DroppedRate), refused as u64);
}

/// `BPF_PROG_TEST_RUN` on a raw program fd, so two threads can drive one loaded program at
/// once (the harness needs `&mut`). The fields are the kernel's `bpf_attr.test`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn test_run_raw(prog_fd: i32, frame: &[u8], repeat: u32) {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for this command; the frame outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
}

/// The CPUs this process may run on (a container may not start at CPU 0).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `frame` `per_cpu` times on each of two CPUs at once through `hook`.
fn on_two_cpus(k: &mut Loaded, hook: Hook, frame: &[u8], per_cpu: u32, cpus: [usize; 2]) {
    let fd = match hook {
        Hook::Xdp => k.kernel.xdp().unwrap().fd().unwrap().as_fd().as_raw_fd(),
        Hook::Tc => k.kernel.tc().unwrap().fd().unwrap().as_fd().as_raw_fd(),
    };
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        for cpu in cpus {
            let start = &start;
            scope.spawn(move || {
                pin_to_cpu(cpu);
                start.wait();
                test_run_raw(fd, frame, per_cpu);
            });
        }
    });
}

/// One source's packets processed on two CPUs at once. The bucket is updated by
/// compare-and-swap, so every admission advances its state by one interval, however the CPUs
/// interleave; a racy read-modify-write would let two CPUs spend one token. (A CAS that loses
/// its race too often admits anyway and counts `cas_exhausted`: fail open, accounted for.)
#[test]
fn one_source_on_two_cpus_at_once_never_overspends() {
    const PER_CPU: u32 = 1_000_000;
    // A burst that does not refill within the test, as large as one CPU's share, so the CPUs
    // are still racing for tokens well after both have started.
    const BURST: u64 = PER_CPU as u64;
    let allowed = allowed_cpus();
    let [a, b, ..] = allowed[..] else {
        println!("skipped: needs two CPUs, this process may use {allowed:?}");
        return;
    };
    let mut k = Loaded::new(Config {
        source: per_minute(1, BURST),
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = if h == 0 {
            "198.51.100.10"
        } else {
            "2001:db8:100::1"
        };
        let frame = Frame::request(src, LOOKUP_PORT).build();
        let before = k.stats();
        on_two_cpus(&mut k, hook, &frame, PER_CPU, [a, b]);
        let after = k.stats();
        let admitted = delta(&before, &after, Stat::Passed);
        let exhausted = delta(&before, &after, Stat::CasExhausted);
        // The bucket's request count is a plain (reporting) increment: counts lost to the
        // other CPU show that the two runs really overlapped.
        let counted = k.source_bucket(src).unwrap().requests;
        println!(
            "{hook:?}: {} requests on two CPUs, burst {BURST}: {admitted} admitted \
             ({exhausted} after exhausting CAS retries); the bucket counted {counted}",
            2 * PER_CPU
        );
        assert_eq!(delta(&before, &after, Stat::Requests), 2 * PER_CPU as u64);
        assert_eq!(
            admitted - exhausted,
            BURST,
            "{hook:?}: admissions other than the burst"
        );
        assert_eq!(
            delta(&before, &after, Stat::DroppedRate),
            2 * PER_CPU as u64 - admitted
        );
    }
}
