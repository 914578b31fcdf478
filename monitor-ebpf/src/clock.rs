//! The program's one clock read per packet. Production objects read the monotonic clock; an
//! object built with the `test-clock` feature reads the `now` a test wrote to `MON_TEST_CLOCK`
//! (0 falls back to the real clock), so rate tests run on exact arrival times.

use aya_ebpf::helpers::bpf_ktime_get_ns;

#[cfg(not(feature = "test-clock"))]
#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[cfg(feature = "test-clock")]
#[inline(always)]
pub fn now() -> u64 {
    match crate::maps::MON_TEST_CLOCK.get(0) {
        Some(&t) if t != 0 => t,
        _ => unsafe { bpf_ktime_get_ns() },
    }
}
