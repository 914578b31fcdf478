//! The kernel program stamps bans, list expiries and events with the monotonic clock
//! (`bpf_ktime_get_ns`); this reads the same clock and converts its instants to wall time.

use std::time::{Duration, SystemTime};

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // clock_gettime cannot fail for these clock ids on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now, on the kernel program's clock (CLOCK_MONOTONIC).
pub fn kernel_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// The wall-clock time of a kernel timestamp.
pub fn to_wall(kernel_ns: u64) -> SystemTime {
    let now_k = kernel_now_ns();
    let now_w = SystemTime::now();
    if kernel_ns >= now_k {
        now_w + Duration::from_nanos(kernel_ns - now_k)
    } else {
        now_w - Duration::from_nanos(now_k - kernel_ns)
    }
}
