//! The rate algorithm: GCRA (the generic cell rate algorithm), the virtual-scheduling form of
//! a token bucket. It is the one definition of a limit, compiled into the kernel program and
//! into user space (where `monitor::limit` replays arrivals to check the kernel's verdicts).
//!
//! A level (a source key, or its aggregate prefix) is a rate `R` per second and a burst `B`.
//! Its state is one number, the theoretical arrival time `tat` in nanoseconds of the monotonic
//! clock, with `T = 1e9 / R` the emission interval and `tau = B * T` the tolerance.
//! A request arriving at `now`:
//!
//! ```text
//!   if tat > now + tau: tat = now + tau - T    (the clamp: see below)
//!   new_tat = max(tat, now) + T
//!   admit  if new_tat - now <= tau   (then tat := new_tat)
//!   refuse otherwise                 (tat unchanged: a refused request costs nothing)
//! ```
//!
//! So a fresh key admits `B` back-to-back requests, the `B+1`th is refused, and budget returns
//! at one request per `T`. A source sending at most `R`/s on average with bursts of at most `B`
//! is never refused.
//!
//! The clamp never fires while the limit stays the same: an admitted `new_tat` is at most
//! `now + tau`, and `now` only grows. It fires when the operator changes the limit live and a
//! key's state, built under the old limit, is beyond anything the new one allows (after `1/m`
//! with burst 40, `tat` may be 40 minutes ahead; under `200/s` with burst 40, `tau` is 200 ms).
//! Such a key is treated as having one request left: that request is admitted, and the key
//! refills at the new rate from then on. So the new limit governs every key from its next
//! request, and a limit change never grants more than one request beyond the new burst.
//!
//! The state fits in one `u64`, so the kernel updates it with a single
//! compare-and-swap and stays exact when one source's packets are processed on several CPUs.

/// One level's limit in the units the kernel uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limit {
    /// `T`: nanoseconds per admitted request. Zero switches the level off.
    pub interval_ns: u64,
    /// `tau = B * T`: how far ahead of `now` the theoretical arrival time may run.
    pub tolerance_ns: u64,
}

/// The outcome of [`Limit::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub admitted: bool,
    /// The key's state after the request.
    pub tat: u64,
}

/// Nanoseconds in the period that rates are expressed against.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Limit {
    /// `per` requests per `period_ns`, with a burst of `burst`. Returns `None` for a zero rate
    /// or burst, or an interval too long to represent.
    pub const fn new(requests: u64, period_ns: u64, burst: u64) -> Option<Self> {
        if requests == 0 || burst == 0 {
            return None;
        }
        let interval_ns = period_ns / requests;
        if interval_ns == 0 {
            return None;
        }
        let tolerance_ns = match interval_ns.checked_mul(burst) {
            Some(t) => t,
            None => return None,
        };
        Some(Self {
            interval_ns,
            tolerance_ns,
        })
    }

    /// A switched-off level: every request is admitted and costs nothing.
    pub const OFF: Self = Self {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    pub const fn is_off(&self) -> bool {
        self.interval_ns == 0
    }

    /// The burst `B` this limit was built with.
    pub const fn burst(&self) -> u64 {
        match self.tolerance_ns.checked_div(self.interval_ns) {
            Some(burst) => burst,
            None => 0,
        }
    }

    /// The GCRA step with the clamp: whether the request is admitted, and the state to store
    /// (equal to `tat` when refused: a refused request costs nothing).
    #[inline(always)]
    pub fn step(&self, tat: u64, now: u64) -> Step {
        let ceiling = now.saturating_add(self.tolerance_ns);
        let tat = if tat > ceiling {
            ceiling - self.interval_ns
        } else {
            tat
        };
        match self.admit(tat, now) {
            Some(new_tat) => Step {
                admitted: true,
                tat: new_tat,
            },
            None => Step {
                admitted: false,
                tat,
            },
        }
    }

    /// The GCRA step without the clamp. Returns the new `tat` when the request is admitted,
    /// `None` when refused.
    #[inline(always)]
    pub fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let start = if tat > now { tat } else { now };
        let new_tat = start + self.interval_ns;
        if new_tat - now <= self.tolerance_ns {
            Some(new_tat)
        } else {
            None
        }
    }

    /// Whether a state `tat` that already includes a request's charge (the kernel's atomic-add
    /// fallback when its compare-and-swap keeps losing races) is within the limit at `now`.
    #[inline(always)]
    pub fn fits_charged(&self, tat: u64, now: u64) -> bool {
        tat <= now.saturating_add(self.tolerance_ns)
    }

    /// The `tat` of a key seen for the first time and admitted at `now`.
    #[inline(always)]
    pub fn first(&self, now: u64) -> u64 {
        now + self.interval_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_sec(r: u64, b: u64) -> Limit {
        Limit::new(r, NANOS_PER_SEC, b).unwrap()
    }

    #[test]
    fn burst_then_refuse_then_refill() {
        let l = per_sec(10, 5);
        let now = 1_000_000_000;
        let mut tat = l.first(now);
        for _ in 1..5 {
            tat = l.admit(tat, now).expect("within burst");
        }
        assert_eq!(l.admit(tat, now), None, "B+1 refused");
        // One interval later exactly one more fits.
        let later = now + l.interval_ns;
        let tat2 = l.admit(tat, later).expect("refilled by one");
        assert_eq!(l.admit(tat2, later), None);
    }

    #[test]
    fn steady_rate_never_refused() {
        let l = per_sec(100, 1);
        let mut tat = l.first(0);
        for k in 1..10_000u64 {
            tat = l.admit(tat, k * l.interval_ns).expect("at exactly R/s");
        }
    }

    #[test]
    fn a_lowered_limit_state_is_clamped_to_the_new_burst() {
        let slow = Limit::new(1, 60 * NANOS_PER_SEC, 5).unwrap();
        let fast = per_sec(200, 5);
        let now = 1_000_000_000;
        let mut tat = slow.first(now);
        for _ in 1..5 {
            tat = slow.admit(tat, now).unwrap();
        }
        assert!(
            !slow.step(tat, now + NANOS_PER_SEC).admitted,
            "5 minutes spent"
        );
        // Under the new limit: one request left, then the new rate.
        let clamped = fast.step(tat, now);
        assert_eq!(
            clamped,
            Step {
                admitted: true,
                tat: now + fast.tolerance_ns
            }
        );
        assert!(!fast.step(clamped.tat, now).admitted);
        let t = now + fast.interval_ns;
        assert_eq!(
            fast.step(clamped.tat, t),
            Step {
                admitted: true,
                tat: t + fast.tolerance_ns
            }
        );
        // Under an unchanged limit the clamp never moves the state.
        let mut tat = fast.first(now);
        for k in 0..1000 {
            let at = now + k * fast.interval_ns / 3;
            let step = fast.step(tat, at);
            assert!(step.tat <= at + fast.tolerance_ns);
            if let Some(admitted) = fast.admit(tat, at) {
                assert_eq!(
                    step,
                    Step {
                        admitted: true,
                        tat: admitted
                    }
                );
            } else {
                assert_eq!(
                    step,
                    Step {
                        admitted: false,
                        tat
                    }
                );
            }
            tat = step.tat;
        }
    }

    #[test]
    fn zero_rate_or_burst_is_rejected() {
        assert_eq!(Limit::new(0, NANOS_PER_SEC, 5), None);
        assert_eq!(Limit::new(5, NANOS_PER_SEC, 0), None);
        assert_eq!(Limit::new(2_000_000_000, NANOS_PER_SEC, 1), None);
        assert_eq!(per_sec(10, 7).burst(), 7);
    }
}
