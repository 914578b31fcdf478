//! Fleet mode's kernel side: marks the local heavy hitters the daemon publishes to the fleet,
//! in a small map of its own, so the daemon never walks the source table to find them.
//!
//! A source is charged here once per step of requests (`FleetConfig::step_mask + 1`, set by
//! the daemon from the fleet limit and the number of live hosts), so most requests cost one
//! array lookup and one `&`. An off-path spoofer can make sources of its own choosing appear
//! here (each one costs it a step of requests), which at worst evicts quieter candidates from
//! this LRU map; it cannot make a source it does not send as exceed the fleet limit.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use monitor_common::{
    addr::AddrKey,
    maps::{FleetConfig, FleetCount, MAX_FLEET_HITTERS},
};

use crate::clock::Now;

#[map]
pub static MON_FLEET_CFG: Array<FleetConfig> = Array::with_max_entries(1, 0);

#[map]
pub static MON_FLEET_HH: LruHashMap<AddrKey, FleetCount> =
    LruHashMap::with_max_entries(MAX_FLEET_HITTERS, 0);

/// Counts one request of the source `key`, whose slot has counted `requests` so far (and is
/// about to count this one).
#[inline(always)]
pub fn note(key: &AddrKey, requests: u32, now: &mut Now) {
    let Some(cfg) = MON_FLEET_CFG.get(0) else {
        return;
    };
    if cfg.interval_ns == 0 {
        return;
    }
    let n = requests.wrapping_add(1) as u64;
    if n & cfg.step_mask != 0 {
        return;
    }
    let step = cfg.step_mask + 1;
    let interval = now.fine() / cfg.interval_ns;
    match MON_FLEET_HH.get_ptr_mut(key) {
        // Plain updates: a lost increment under a race between CPUs undercounts by one step,
        // which the floor's margin absorbs; the limit itself is enforced by the ban.
        Some(c) => unsafe {
            if (*c).interval == interval {
                (*c).count += step;
            } else {
                (*c).prev_interval = (*c).interval;
                (*c).prev_count = (*c).count;
                (*c).interval = interval;
                (*c).count = step;
            }
        },
        None => {
            let fresh = FleetCount {
                interval,
                count: step,
                prev_interval: 0,
                prev_count: 0,
            };
            let _ = MON_FLEET_HH.insert(key, fresh, 0);
        }
    }
}
