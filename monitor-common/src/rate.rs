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
//!
//! **Refusing on the coarse clock.** Reading the kernel's fine clock (`bpf_ktime_get_ns`)
//! costs more than the rest of the GCRA path together, and a source flooding over its limit
//! is refused on almost every packet. [`Limit::refuses_throughout`] lets the kernel refuse such
//! a request on the cheap coarse clock (`bpf_ktime_get_coarse_ns`) with exactly the verdict the
//! fine clock gives. Why it is exact:
//!
//! 1. For a fixed state `tat` (and a burst of at least 1, as `Limit::new` builds), the arrival
//!    times `now` at which `step` refuses form one interval, `[tat - tau, tat - tau + T)`:
//!    below it the clamp fires and admits, from its end on the budget has refilled.
//!    So `step` refuses at every `now` between two instants if and only if it refuses at both.
//! 2. The coarse clock is the fine clock's reading at the kernel's last timekeeping update (a
//!    tick), so the fine clock at the same moment lies in `[coarse, coarse + lag]`, with `lag`
//!    at most one tick (4 ms at HZ=250, 10 ms at HZ=100) on a CPU that is processing packets.
//! 3. The kernel asks `refuses_throughout(tat, coarse, coarse + COARSE_MARGIN_NS)`, with the
//!    margin twice the longest common tick. When it says yes, the fine clock would have
//!    refused too, whatever it read; when it says no, the kernel reads the fine clock and runs
//!    `step` as usual. Either way the verdict and the stored state are the fine clock's.
//!
//! A source flooding over its limit is refused on the coarse clock except in the last
//! `COARSE_MARGIN_NS` before each of its admissions. If the coarse clock ever lagged by more
//! than the margin (a CPU whose tick stayed stopped that long: `nohz_full`), a request could
//! be refused up to `lag - COARSE_MARGIN_NS` before the fine clock would admit it; nothing
//! else changes, and a refused request costs no budget.

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

/// How far behind the fine clock the kernel assumes the coarse clock may be (see the module
/// documentation): twice the 10 ms tick of HZ=100, five ticks at HZ=250.
pub const COARSE_MARGIN_NS: u64 = 20_000_000;

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

    /// Whether `step(tat, now)` refuses for every `now` in `earliest..=latest`: the kernel's
    /// refusal on the coarse clock, with `earliest` the coarse reading and `latest` that plus
    /// [`COARSE_MARGIN_NS`]. Exact because the instants at which `step` refuses form one
    /// interval (see the module documentation), so refusing at both ends is refusing
    /// throughout.
    #[inline(always)]
    pub fn refuses_throughout(&self, tat: u64, earliest: u64, latest: u64) -> bool {
        !self.step(tat, earliest).admitted && !self.step(tat, latest).admitted
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

    /// The claim `refuses_throughout` rests on: for a fixed state, the instants at which
    /// `step` refuses form one interval. Checked over seeded random limits (including live
    /// limit changes, whose states the clamp handles), states and windows up to the margin wide,
    /// at 65 instants of each window: whenever both ends refuse, every instant between
    /// refuses; whenever one end admits, the function says no.
    #[test]
    fn refusing_at_both_ends_of_a_window_is_refusing_throughout() {
        let mut x: u64 = 0x5eed_c0a5;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut yes, mut no) = (0, 0);
        for _ in 0..20_000 {
            let interval = 1 + rand(20 * COARSE_MARGIN_NS);
            let burst = 1 + rand(8);
            let l = Limit {
                interval_ns: interval,
                tolerance_ns: interval * burst,
            };
            let base = 1_000 * NANOS_PER_SEC;
            // States from idle to far ahead (as a slower limit leaves them).
            let tat = base + rand(3 * l.tolerance_ns + 2 * COARSE_MARGIN_NS);
            let earliest = base + rand(3 * l.tolerance_ns + COARSE_MARGIN_NS);
            let latest = earliest + rand(COARSE_MARGIN_NS + 1);
            let sure = l.refuses_throughout(tat, earliest, latest);
            let points = 64;
            let mut admitted_inside = false;
            for i in 0..=points {
                let now = earliest + (latest - earliest) * i / points;
                admitted_inside |= l.step(tat, now).admitted;
            }
            if sure {
                yes += 1;
                assert!(!admitted_inside, "{l:?} tat {tat} [{earliest}, {latest}]");
            } else {
                no += 1;
                assert!(
                    l.step(tat, earliest).admitted || l.step(tat, latest).admitted,
                    "{l:?} tat {tat} [{earliest}, {latest}]"
                );
            }
        }
        assert!(
            yes > 1_000 && no > 1_000,
            "{yes} sure refusals, {no} others"
        );
    }

    /// A source flooding over a slow limit is refused on the coarse clock except in the last
    /// `COARSE_MARGIN_NS` before its next admission, and never when the fine clock admits.
    #[test]
    fn a_flood_is_refused_on_the_coarse_clock_until_the_margin_before_its_next_admission() {
        let l = per_sec(10, 1); // one request per 100 ms
        let now = 1_000 * NANOS_PER_SEC;
        let tat = l.first(now);
        let refill = tat - l.tolerance_ns + l.interval_ns; // the fine clock admits from here
        assert!(l.refuses_throughout(tat, now, now + COARSE_MARGIN_NS));
        let last_sure = refill - COARSE_MARGIN_NS - 1;
        assert!(l.refuses_throughout(tat, last_sure, last_sure + COARSE_MARGIN_NS));
        assert!(!l.refuses_throughout(tat, last_sure + 1, last_sure + 1 + COARSE_MARGIN_NS));
        assert!(!l.step(tat, refill - 1).admitted && l.step(tat, refill).admitted);
    }

    #[test]
    fn zero_rate_or_burst_is_rejected() {
        assert_eq!(Limit::new(0, NANOS_PER_SEC, 5), None);
        assert_eq!(Limit::new(5, NANOS_PER_SEC, 0), None);
        assert_eq!(Limit::new(2_000_000_000, NANOS_PER_SEC, 1), None);
        assert_eq!(per_sec(10, 7).burst(), 7);
    }
}
