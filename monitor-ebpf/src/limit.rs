//! Charging one request to a limiter state: the GCRA step of `monitor_common::rate`, made safe
//! for several CPUs by a compare-and-swap on the state (`gcra`, used by the source table in
//! `sources` and by the aggregate buckets here).

use aya_ebpf::maps::LruHashMap;
use monitor_common::{addr::AddrKey, maps::Bucket, rate::Limit, stats::Stat};

use crate::{atomic, maps::count};

/// CAS attempts before falling back to an atomic add. Losing this many races in a row needs
/// several CPUs updating one key at once; the verifier needs the retry loop bounded anyway.
const CAS_ATTEMPTS: usize = 4;

pub const BPF_NOEXIST: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Admitted,
    Refused,
}

/// Counts one request on an existing bucket and runs the GCRA step on it ([`gcra`]).
#[inline(always)]
pub fn charge_bucket(bucket: *mut Bucket, limit: &Limit, now: u64) -> Charge {
    // Plain increments: these are for reports; the limit itself is the CAS'd `tat_ns`.
    unsafe { (*bucket).requests += 1 };
    let charge = gcra(unsafe { &raw mut (*bucket).tat_ns }, limit, now);
    if charge == Charge::Refused {
        unsafe { (*bucket).refused += 1 };
    }
    charge
}

/// Runs the GCRA step (`Limit::step`, with its clamp to the live limit) on the state at
/// `tat_ptr`.
///
/// When the CAS keeps losing races, the request is charged anyway by an atomic add of one
/// interval, which cannot lose: it is admitted if the state read back (with its charge in it)
/// still fits the limit, and otherwise refused and the charge taken back (a refused request
/// costs nothing). So every admitted request advances the state by exactly one interval,
/// however the CPUs interleave.
/// (The add charges from the stored `tat` rather than `max(tat, now)`. Under contention the
/// stored `tat` was just set by another CPU to its own `now` plus an interval, so it is not
/// behind this CPU's `now` unless the interval is shorter than the retry loop, well under a
/// microsecond: a limit of millions of requests per second per key.)
#[inline(always)]
pub fn gcra(tat_ptr: *mut u64, limit: &Limit, now: u64) -> Charge {
    for _ in 0..CAS_ATTEMPTS {
        let tat = atomic::load(tat_ptr);
        let step = limit.step(tat, now);
        // A refusal under an unchanged limit leaves the state as it was: no write.
        if step.tat == tat || atomic::compare_and_swap(tat_ptr, tat, step.tat) {
            return if step.admitted {
                Charge::Admitted
            } else {
                Charge::Refused
            };
        }
    }
    count(Stat::CasExhausted);
    atomic::add(tat_ptr, limit.interval_ns);
    // The state read back includes this charge (and maybe other CPUs'), so the check can only
    // err towards refusing; two CPUs can never both fit into one remaining interval.
    if limit.fits_charged(atomic::load(tat_ptr), now) {
        return Charge::Admitted;
    }
    atomic::add(tat_ptr, limit.interval_ns.wrapping_neg());
    Charge::Refused
}

/// Looks the key up, creating its bucket (admitted, first request) when missing. Returns the
/// outcome and the bucket when one exists after the call.
#[inline(always)]
pub fn charge_key(
    map: &LruHashMap<AddrKey, Bucket>,
    key: &AddrKey,
    limit: &Limit,
    now: u64,
) -> (Charge, Option<*mut Bucket>) {
    if let Some(bucket) = map.get_ptr_mut(key) {
        return (charge_bucket(bucket, limit, now), Some(bucket));
    }
    insert_new(map, key, limit, now)
}

/// Creates a bucket for a key seen for the first time, whose first request is admitted. If
/// another CPU created it first, charges that one instead.
#[inline(always)]
pub fn insert_new(
    map: &LruHashMap<AddrKey, Bucket>,
    key: &AddrKey,
    limit: &Limit,
    now: u64,
) -> (Charge, Option<*mut Bucket>) {
    let fresh = Bucket {
        tat_ns: limit.first(now),
        ban_until_ns: 0,
        last_event_ns: 0,
        requests: 1,
        refused: 0,
    };
    if map.insert(key, fresh, BPF_NOEXIST).is_ok() {
        return (Charge::Admitted, None);
    }
    match map.get_ptr_mut(key) {
        Some(bucket) => (charge_bucket(bucket, limit, now), Some(bucket)),
        // Evicted between the two calls, or the map refused the insert: fail open.
        None => (Charge::Admitted, None),
    }
}
