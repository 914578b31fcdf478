//! The user-space twin of the kernel's limiter: the same GCRA arithmetic
//! (`monitor_common::rate`) applied to the same keys, so tests can replay arrivals and compare
//! verdicts with the kernel's, and so reports can explain a verdict.

use std::collections::HashMap;

use monitor_common::{
    addr::{AddrKey, AddrMask},
    rate::Limit,
};

/// Per-key limiter state, as the kernel keeps it in `MON_SOURCES` (only `tat_ns` matters).
#[derive(Default, Debug, Clone)]
pub struct Twin {
    limit: Limit,
    mask_v4: AddrMask,
    mask_v6: AddrMask,
    tats: HashMap<AddrKey, u64>,
}

impl Twin {
    pub fn new(limit: Limit, mask_v4: AddrMask, mask_v6: AddrMask) -> Self {
        Self {
            limit,
            mask_v4,
            mask_v6,
            tats: HashMap::new(),
        }
    }

    fn key(&self, src: &AddrKey) -> AddrKey {
        src.masked(if src.is_v4() {
            &self.mask_v4
        } else {
            &self.mask_v6
        })
    }

    /// Changes the limit live, as `monitor set` does: every key keeps its state, which the
    /// next request clamps to the new limit (`Limit::step`).
    pub fn set_limit(&mut self, limit: Limit) {
        self.limit = limit;
    }

    /// What the kernel would decide for a request from `src` at `now_ns`, without changing state.
    pub fn would_admit(&self, src: &AddrKey, now_ns: u64) -> bool {
        match self.tats.get(&self.key(src)) {
            None => true,
            Some(&tat) => self.limit.step(tat, now_ns).admitted,
        }
    }

    /// Applies one request and returns whether it was admitted.
    pub fn request(&mut self, src: &AddrKey, now_ns: u64) -> bool {
        let key = self.key(src);
        match self.tats.get(&key).copied() {
            None => {
                self.tats.insert(key, self.limit.first(now_ns));
                true
            }
            Some(tat) => {
                let step = self.limit.step(tat, now_ns);
                self.tats.insert(key, step.tat);
                step.admitted
            }
        }
    }

    /// The key's state, for comparing with the kernel's bucket.
    pub fn tat(&self, src: &AddrKey) -> Option<u64> {
        self.tats.get(&self.key(src)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::rate::NANOS_PER_SEC;

    #[test]
    fn shares_budget_within_prefix() {
        let limit = Limit::new(10, NANOS_PER_SEC, 2).unwrap();
        let mut twin = Twin::new(limit, AddrMask::v4(32), AddrMask::v6(64));
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[15] = 1;
        let mut b = a;
        b[15] = 2;
        let mut c = a;
        c[7] = 1;
        let (a, b, c) = (
            AddrKey::from_v6(a),
            AddrKey::from_v6(b),
            AddrKey::from_v6(c),
        );
        assert!(twin.request(&a, 0));
        assert!(twin.request(&b, 0));
        assert!(!twin.request(&a, 0), "a and b share one /64 budget of 2");
        assert!(twin.request(&c, 0), "another /64 has its own budget");
    }
}
