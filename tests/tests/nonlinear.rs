//! TC sees skbs whose headers are not in the linear part (a driver that builds packets from
//! page fragments). The program then asks the kernel to pull the headers in; a packet shorter
//! than the 256 bytes it wants must still be pulled, or it would pass as malformed, uncounted.
//! A tap device with IFF_NAPI_FRAGS receives each write as page fragments, as such a driver
//! does, in the test's own network namespace.

use std::{ffi::CString, os::fd::AsRawFd};

use aya::programs::TcAttachType;
use monitor_common::{
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{frames::Frame, harness::*, netns::sh};

/// A tap device whose writes arrive as fragments (dropped with its file).
fn frag_tap(name: &str) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let cname = CString::new(name).unwrap();
    for (dst, src) in req.ifr_name.iter_mut().zip(cname.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_NAPI | libc::IFF_NAPI_FRAGS) as i16;
    // SAFETY: TUNSETIFF with a valid ifreq on the tun control file.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    sh(&["ip", "link", "set", name, "up"]);
    file
}

/// Writes a frame as two pieces: the Ethernet header, and the rest (which becomes a page
/// fragment, so the skb's linear part holds no IP header).
fn write_split(tap: &std::fs::File, frame: &[u8]) {
    let iov = [
        libc::iovec {
            iov_base: frame.as_ptr() as *mut _,
            iov_len: 14,
        },
        libc::iovec {
            iov_base: frame[14..].as_ptr() as *mut _,
            iov_len: frame.len() - 14,
        },
    ];
    // SAFETY: two iovecs over a live slice.
    let n = unsafe { libc::writev(tap.as_raw_fd(), iov.as_ptr(), 2) };
    assert_eq!(
        n,
        frame.len() as isize,
        "writev: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn tc_pulls_the_headers_of_a_short_non_linear_packet() {
    // Packets mode: this is about parsing, so no connection check plays a part.
    let mut k = Loaded::new(Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1).unwrap(),
        count_mode: count_mode::PACKETS,
        ..Config::default()
    });
    let name = "montap0";
    let tap = frag_tap(name);
    k.kernel
        .tc()
        .unwrap()
        .attach(name, TcAttachType::Ingress)
        .expect("attach TC ingress to the tap");
    for src in ["10.90.0.1", "fd90::1"] {
        let frame = Frame::request(src, LOOKUP_PORT).build();
        assert!(frame.len() < 256, "the frame must be shorter than the pull");
        let before = k.stats();
        write_split(&tap, &frame);
        write_split(&tap, &frame);
        // The tap delivers on its NAPI poll: wait (bounded) for both packets to be seen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while delta(&before, &k.stats(), Stat::Seen) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        k.expect_stats(
            &format!("{src}: {}-byte frame, headers in a fragment", frame.len()),
            &before,
            &[
                (Stat::Seen, 2),
                (Stat::Monitored, 2),
                (Stat::Requests, 2),
                (Stat::Passed, 1),
                (Stat::Dropped, 1),
                (Stat::DroppedRate, 1),
                (Stat::EventsSent, 1),
            ],
        );
    }
}
