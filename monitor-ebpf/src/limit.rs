//! Charging one request to one level's bucket: the GCRA step of `monitor_common::rate`, made
//! safe for several CPUs by a compare-and-swap on the bucket's `tat_ns`, and refused without
//! the fine clock when the coarse one already decides (`charge_source`).

use aya_ebpf::maps::LruHashMap;
use monitor_common::{addr::AddrKey, maps::Bucket, rate::Limit, stats::Stat};

use crate::{atomic, clock, clock::Now, maps::count};

/// CAS attempts before falling back to an atomic add. Losing this many races in a row needs
/// several CPUs updating one key at once; the verifier needs the retry loop bounded anyway.
const CAS_ATTEMPTS: usize = 4;

pub const BPF_NOEXIST: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Admitted,
    Refused,
}

/// Counts one request on an existing bucket and runs the GCRA step (`Limit::step`, with its
/// clamp to the live limit) on it.
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
pub fn charge_bucket(bucket: *mut Bucket, limit: &Limit, now: u64) -> Charge {
    // Plain increments: these are for reports; the limit itself is the CAS'd `tat_ns`.
    unsafe { (*bucket).requests += 1 };
    let tat_ptr = unsafe { &raw mut (*bucket).tat_ns };
    for _ in 0..CAS_ATTEMPTS {
        let tat = atomic::load(tat_ptr);
        let step = limit.step(tat, now);
        // A refusal under an unchanged limit leaves the state as it was: no write.
        if step.tat == tat || atomic::compare_and_swap(tat_ptr, tat, step.tat) {
            if step.admitted {
                return Charge::Admitted;
            }
            unsafe { (*bucket).refused += 1 };
            return Charge::Refused;
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
    unsafe { (*bucket).refused += 1 };
    Charge::Refused
}

/// Charges a source's request on its bucket. A request that `step` would refuse at every
/// instant the fine clock can read (`Limit::refuses_throughout` on the coarse clock's bounds)
/// is refused here, reading only: the same verdict, and the same unchanged state, as
/// `charge_bucket` on the fine clock. Anything else reads the fine clock and charges as usual.
#[inline(always)]
pub fn charge_source(bucket: *mut Bucket, limit: &Limit, now: &mut Now) -> Charge {
    let tat = atomic::load(unsafe { &raw const (*bucket).tat_ns });
    if limit.refuses_throughout(tat, now.earliest(), now.latest()) {
        unsafe {
            (*bucket).requests += 1;
            (*bucket).refused += 1;
        }
        clock::note_coarse_refusal();
        return Charge::Refused;
    }
    charge_bucket(bucket, limit, now.fine())
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
