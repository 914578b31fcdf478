//! The program's time. Each packet starts with the cheap coarse clock
//! (`bpf_ktime_get_coarse_ns`), which bounds what the fine clock (`bpf_ktime_get_ns`, about
//! 30 ns here) would read to `[coarse, coarse + COARSE_MARGIN_NS]`; the fine clock is read only
//! when a decision cannot be made exactly from those bounds (see `monitor_common::rate` for the
//! argument and what a coarse clock lagging further than the margin would change). So a
//! source flooding over its limit is refused without the fine clock, and every decision is the
//! one the fine clock gives.
//!
//! An object built with the `test-clock` feature reads the fine `now` a test wrote to
//! `MON_TEST_CLOCK[0]` (0 falls back to the real clocks) and a coarse clock that lags it by
//! `MON_TEST_CLOCK[1]` nanoseconds, and counts its coarse-clock refusals in `MON_TEST_CLOCK[2]`,
//! so tests run on exact arrival times and can prove the coarse path changes no verdict.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use monitor_common::rate::COARSE_MARGIN_NS;

/// One packet's clock: the coarse reading, and the fine one once something needed it.
pub struct Now {
    coarse: u64,
    fine: u64,
}

impl Now {
    #[inline(always)]
    pub fn read() -> Self {
        Self {
            coarse: coarse_ns(),
            fine: 0,
        }
    }

    /// A clock that reads `ns`, coarse and fine alike: for a decision made on a fine reading
    /// already taken (`sources::admit_new`), and for replays that inject time (bench-ebpf's
    /// churn replay).
    #[inline(always)]
    pub fn at(ns: u64) -> Self {
        Self {
            coarse: ns,
            fine: ns,
        }
    }

    /// The earliest instant the fine clock can read during this packet.
    #[inline(always)]
    pub fn earliest(&self) -> u64 {
        self.coarse
    }

    /// The latest instant the fine clock can read during this packet.
    #[inline(always)]
    pub fn latest(&self) -> u64 {
        self.coarse.saturating_add(COARSE_MARGIN_NS)
    }

    /// The fine clock, read at most once per packet.
    #[inline(always)]
    pub fn fine(&mut self) -> u64 {
        if self.fine == 0 {
            self.fine = fine_ns();
        }
        self.fine
    }

    /// Whether the fine clock reads before `t` (`now < t`), reading it only when the bounds
    /// cannot tell.
    #[inline(always)]
    pub fn is_before(&mut self, t: u64) -> bool {
        if t > self.latest() {
            return true;
        }
        if t <= self.earliest() {
            return false;
        }
        self.fine() < t
    }
}

#[cfg(not(feature = "test-clock"))]
#[inline(always)]
fn fine_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[cfg(not(feature = "test-clock"))]
#[inline(always)]
fn coarse_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A request refused on the coarse clock alone (counted only by the `test-clock` build).
#[cfg(not(feature = "test-clock"))]
#[inline(always)]
pub fn note_coarse_refusal() {}

#[cfg(feature = "test-clock")]
#[inline(always)]
fn fine_ns() -> u64 {
    match crate::maps::MON_TEST_CLOCK.get(0) {
        Some(&t) if t != 0 => t,
        _ => unsafe { bpf_ktime_get_ns() },
    }
}

#[cfg(feature = "test-clock")]
#[inline(always)]
fn coarse_ns() -> u64 {
    let lag = match crate::maps::MON_TEST_CLOCK.get(1) {
        Some(&lag) => lag,
        None => 0,
    };
    match crate::maps::MON_TEST_CLOCK.get(0) {
        Some(&t) if t != 0 => t.saturating_sub(lag),
        _ => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

#[cfg(feature = "test-clock")]
#[inline(always)]
pub fn note_coarse_refusal() {
    if let Some(n) = crate::maps::MON_TEST_CLOCK.get_ptr_mut(2) {
        crate::atomic::add(n, 1);
    }
}
