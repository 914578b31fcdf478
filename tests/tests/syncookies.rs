//! The SYN-cookie path of the connection check (`monitor-ebpf/src/conn.rs`). Under a SYN flood
//! the kernel keeps no state for a handshake: it answers with a cookie, and the ACK that
//! returns it (which may carry the first request) finds only the listener. In `payload` mode
//! such a segment counts only when `bpf_tcp_check_syncookie` accepts its cookie: a real
//! client's first request counts, while an off-path sender, who never sees the SYN-ACK and so
//! cannot know the cookie, is not charged to the address it forges.
//!
//! The handshake is real: the test's namespace always answers with cookies
//! (`tcp_syncookies = 2`), a raw socket sends the SYN from the frame's source and reads the
//! cookie from the kernel's SYN-ACK, and the ACK with data then runs through the program.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use monitor_common::{
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use socket2::{Domain, Protocol, Socket, Type};
use tests::{
    frames::{Frame, TCP_ACK, TCP_PSH},
    harness::*,
};

const GET: &[u8] = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n";
/// The source port `Frame` writes.
const FRAME_SPORT: u16 = 40000;
/// The client's initial sequence number in the SYN the test sends.
const CLIENT_ISN: u32 = 0x1234_5678;
const TCP_SYN_ACK: u8 = 0x12;

/// Makes this thread's network namespace answer every SYN with a cookie.
fn always_send_cookies() {
    std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
        .expect("setting tcp_syncookies in the test's namespace");
}

fn listen(addr: SocketAddr) -> TcpListener {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.set_reuse_address(true).expect("reuseaddr");
    sock.bind(&addr.into()).expect("bind the listener");
    sock.listen(16).expect("listen");
    sock.into()
}

/// The Internet checksum of a TCP segment over IPv4 (pseudo-header included).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(segment.len() as u16).to_be_bytes());
    add(segment);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends a SYN from `src`:`FRAME_SPORT` to `dst`:`dport` through the real stack and returns
/// the cookie the kernel answers with (the SYN-ACK's sequence number).
fn cookie_for(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> u32 {
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).expect("raw socket");
    raw.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
        .expect("bind the raw socket to the frame's source");
    raw.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut syn = [0u8; 20];
    syn[0..2].copy_from_slice(&FRAME_SPORT.to_be_bytes());
    syn[2..4].copy_from_slice(&dport.to_be_bytes());
    syn[4..8].copy_from_slice(&CLIENT_ISN.to_be_bytes());
    syn[12] = 5 << 4;
    syn[13] = 0x02;
    syn[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let sum = tcp_checksum(src, dst, &syn);
    syn[16..18].copy_from_slice(&sum.to_be_bytes());
    raw.send_to(&syn, &SocketAddr::new(IpAddr::V4(dst), 0).into())
        .expect("send the SYN");
    let mut raw = raw;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Ok(n) = raw.read(&mut buf) else { continue };
        let ip = &buf[..n];
        if n < 20 {
            continue;
        }
        let l4 = usize::from(ip[0] & 0x0f) * 4;
        let Some(th) = ip.get(l4..l4 + 20) else {
            continue;
        };
        let from = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let sport = u16::from_be_bytes([th[0], th[1]]);
        let to_port = u16::from_be_bytes([th[2], th[3]]);
        if from == dst && sport == dport && to_port == FRAME_SPORT && th[13] == TCP_SYN_ACK {
            return u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
        }
    }
    panic!("no SYN-ACK from {dst}:{dport} to {src}:{FRAME_SPORT} within 3 s");
}

/// The request frame from `src` with its sequence and acknowledgement numbers set.
fn ack_with_data(src: &str, seq: u32, ack: u32) -> Vec<u8> {
    let frame = Frame::tcp(src, LOOKUP_PORT, TCP_PSH | TCP_ACK, GET);
    let l4 = frame.l3_offset() + 20;
    let mut bytes = frame.build();
    bytes[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    bytes[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
    bytes
}

#[test]
fn a_cookie_ack_counts_and_a_forged_one_does_not() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, 60 * NANOS_PER_SEC, 1).expect("valid limit"),
        count_mode: count_mode::PAYLOAD,
        ..Config::default()
    });
    always_send_cookies();
    let dst: Ipv4Addr = match Frame::tcp(&v4_source(0, 1), LOOKUP_PORT, 0, b"").dst {
        IpAddr::V4(d) => d,
        IpAddr::V6(_) => unreachable!("an IPv4 source gets an IPv4 destination"),
    };
    let _listener = listen(SocketAddr::new(IpAddr::V4(dst), LOOKUP_PORT));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let src = v4_source(60 + h as u8, 1);
        let cookie = cookie_for(src.parse().expect("v4"), dst, LOOKUP_PORT);

        let right_ack = cookie.wrapping_add(1);
        // The forger knows everything but the cookie. (The cookie's low bits encode one of four
        // MSS values, so an ACK less than four above the right one can still be valid: these
        // are not.)
        for wrong_ack in [right_ack.wrapping_add(4), right_ack ^ 0x00ff_0000] {
            let forged = ack_with_data(&src, CLIENT_ISN + 1, wrong_ack);
            k.expect_unconnected(
                hook,
                &forged,
                &format!("{hook:?} forged cookie ACK from {src}"),
            );
            assert_eq!(k.source_bucket(&src), None, "{hook:?}: forged ACK charged");
        }

        // The client's real ACK: its request counts (and the second is over the budget of
        // one a minute, so it really was charged).
        let real = ack_with_data(&src, CLIENT_ISN + 1, right_ack);
        let before = k.stats();
        assert_eq!(
            [k.run_spoofed(hook, &real), k.run_spoofed(hook, &real)],
            [Verdict::Pass, Verdict::Drop],
            "{hook:?}: the cookie ACK from {src}"
        );
        assert_eq!(delta(&before, &k.stats(), Stat::Requests), 2, "{hook:?}");
        assert_eq!(delta(&before, &k.stats(), Stat::Unconnected), 0, "{hook:?}");
    }
}
