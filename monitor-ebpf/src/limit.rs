//! Charging one request to one level's bucket: the GCRA step of `monitor_common::rate`, made
//! safe for several CPUs by a compare-and-swap on the bucket's `tat_ns`.

use aya_ebpf::maps::LruHashMap;
use monitor_common::{addr::AddrKey, maps::Bucket, rate::Limit, stats::Stat};

use crate::{atomic, maps::count};

/// CAS attempts before giving up. Losing this many races in a row needs several CPUs hammering
/// one key at once; the request is then admitted (fail open) and counted as `cas_exhausted`.
/// The verifier needs the retry loop bounded anyway.
const CAS_ATTEMPTS: usize = 4;

pub const BPF_NOEXIST: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Admitted,
    Refused,
}

/// Counts one request on an existing bucket and runs the GCRA step on it.
#[inline(always)]
pub fn charge_bucket(bucket: *mut Bucket, limit: &Limit, now: u64) -> Charge {
    // Plain increments: these are for reports; the limit itself is the CAS'd `tat_ns`.
    unsafe { (*bucket).requests += 1 };
    let tat_ptr = unsafe { &raw mut (*bucket).tat_ns };
    for _ in 0..CAS_ATTEMPTS {
        let tat = atomic::load(tat_ptr);
        match limit.admit(tat, now) {
            None => {
                unsafe { (*bucket).refused += 1 };
                return Charge::Refused;
            }
            Some(new_tat) => {
                if atomic::compare_and_swap(tat_ptr, tat, new_tat) {
                    return Charge::Admitted;
                }
            }
        }
    }
    count(Stat::CasExhausted);
    Charge::Admitted
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
