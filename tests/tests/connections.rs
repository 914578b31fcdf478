//! In `payload` and `http` modes a TCP segment counts only when it belongs to a connection
//! this host has: an off-path sender forging someone else's address (no handshake) can neither
//! spend that address's budget nor get it banned. Each row runs on both hooks; the connections
//! are real, on loopback in the test's own network namespace (`tests::conns`).

use monitor_common::{
    config::{Config, count_mode},
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    conns::{Tuple, tcp_tuple},
    frames::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
    harness::*,
};

const MINUTE_NS: u64 = 60 * NANOS_PER_SEC;
const GET: &[u8] = b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n";

/// One request per minute, burst 1, in `mode`.
fn strict(mode: u8) -> Config {
    Config {
        source: Limit::new(1, MINUTE_NS, 1).expect("valid limit"),
        count_mode: mode,
        ..Config::default()
    }
}

fn tuple_of(frame: &Frame) -> Tuple {
    tcp_tuple(&frame.build()).expect("a TCP frame")
}

/// A forged segment: passes, counted `unconnected` (and `not_counted`), charged to nobody.
#[track_caller]
fn assert_uncounted(k: &mut Loaded, hook: Hook, frame: &Frame, what: &str) {
    k.expect_unconnected(hook, &frame.build(), &format!("{hook:?} {what}"));
    assert_eq!(
        k.source_bucket(&frame.src.to_string()),
        None,
        "{hook:?} {what}: a bucket for {}",
        frame.src
    );
}

#[test]
fn forged_data_segments_are_not_counted_and_real_connections_are() {
    for (mode, name) in [(count_mode::PAYLOAD, "payload"), (count_mode::HTTP, "http")] {
        let mut k = Loaded::new(strict(mode));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            for src in [v4_source(h as u8, 1), v6_source(h as u8, 1)] {
                // A real client of the same server, so the port has a listener: a segment
                // that finds only the listener is not part of a connection either.
                let neighbour = Frame::tcp(&src, LOOKUP_PORT, TCP_ACK, b"");
                let mut neighbour_tuple = tuple_of(&neighbour);
                neighbour_tuple.src.set_port(40001);
                k.conns.ensure(neighbour_tuple).expect("a real connection");

                let forged = Frame::tcp(&src, LOOKUP_PORT, TCP_PSH | TCP_ACK, GET);
                for _ in 0..3 {
                    assert_uncounted(&mut k, hook, &forged, &format!("{name}: forged {src}"));
                }

                // The same bytes on a real connection are requests: the first passes, the
                // second is over the budget of one.
                let before = k.stats();
                assert_eq!(
                    k.run_each(hook, &forged.build(), 2),
                    [Verdict::Pass, Verdict::Drop],
                    "{hook:?} {name}: {src} connected"
                );
                assert_eq!(delta(&before, &k.stats(), Stat::Requests), 2);
                assert_eq!(delta(&before, &k.stats(), Stat::Unconnected), 0);
            }
        }
    }
}

#[test]
fn a_closed_connection_no_longer_counts() {
    let mut k = Loaded::new(config_with_limit(1000, 1000));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for src in [v4_source(10 + h as u8, 1), v6_source(10 + h as u8, 1)] {
            let request = Frame::request(&src, LOOKUP_PORT);
            let before = k.stats();
            assert_eq!(k.run(hook, &request.build()), Verdict::Pass);
            assert_eq!(delta(&before, &k.stats(), Stat::Requests), 1, "{src}");
            k.conns.close(&tuple_of(&request));
            assert_uncounted_keeps_bucket(&mut k, hook, &request, &src);
        }
    }
}

/// Like `assert_uncounted`, for a source that already has a bucket (it must not move).
#[track_caller]
fn assert_uncounted_keeps_bucket(k: &mut Loaded, hook: Hook, frame: &Frame, src: &str) {
    let bucket = k
        .source_bucket(src)
        .expect("a bucket from the real request");
    k.expect_unconnected(
        hook,
        &frame.build(),
        &format!("{hook:?} {src}: after its connection closed"),
    );
    let after = k.source_bucket(src).expect("bucket");
    assert_eq!(
        (after.requests, after.tat_ns),
        (bucket.requests, bucket.tat_ns)
    );
}

/// The attack the check exists for: with bans on, a flood of forged requests naming a victim
/// neither spends its budget nor bans it, and the victim's own requests still pass.
#[test]
fn forged_requests_never_ban_the_address_they_name() {
    let mut k = Loaded::new(Config {
        source: Limit::new(1, MINUTE_NS, 2).expect("valid limit"),
        ban_ns: 3600 * NANOS_PER_SEC,
        ..Config::default()
    });
    for (h, hook) in HOOKS.into_iter().enumerate() {
        for victim in [v4_source(20 + h as u8, 1), v6_source(20 + h as u8, 1)] {
            let forged = Frame::request(&victim, LOOKUP_PORT);
            for i in 0..50 {
                assert_eq!(
                    k.run_spoofed(hook, &forged.build()),
                    Verdict::Pass,
                    "{hook:?} forged {i} naming {victim}"
                );
            }
            assert_eq!(k.source_bucket(&victim), None, "{hook:?} {victim}");
            let key = source_key(&victim, &k.config());
            assert!(
                !k.kernel
                    .bans()
                    .expect("read MON_BANS")
                    .iter()
                    .any(|(banned, _)| *banned == key),
                "{hook:?} {victim} banned by forged segments"
            );
            // The victim's real requests: its whole burst passes.
            assert_eq!(
                k.passes(hook, &forged.build(), 2),
                2,
                "{hook:?} {victim}: own requests"
            );
        }
    }
    assert_eq!(k.stat(Stat::BansStarted), 0);
    assert_eq!(k.stat(Stat::Unconnected), 2 * 2 * 50);
}

/// `syn` and `packets` count what a forger can send (documented in README and kernel.md):
/// these rows pin that down so it changes only on purpose.
#[test]
fn syn_and_packets_modes_count_forged_segments() {
    for (mode, flags, payload, name) in [
        (count_mode::SYN, TCP_SYN, &b""[..], "syn: a forged SYN"),
        (
            count_mode::PACKETS,
            TCP_PSH | TCP_ACK,
            GET,
            "packets: a forged segment",
        ),
    ] {
        let mut k = Loaded::new(strict(mode));
        for (h, hook) in HOOKS.into_iter().enumerate() {
            let src = v4_source(30 + h as u8, 1);
            let frame = Frame::tcp(&src, LOOKUP_PORT, flags, payload).build();
            assert_eq!(
                [k.run_spoofed(hook, &frame), k.run_spoofed(hook, &frame)],
                [Verdict::Pass, Verdict::Drop],
                "{hook:?} {name}"
            );
        }
        assert_eq!(k.stat(Stat::Unconnected), 0, "{name}");
    }
}

/// UDP has no connections: every mode that counts UDP counts a forged datagram.
#[test]
fn udp_is_counted_without_a_connection() {
    let mut k = Loaded::new(strict(count_mode::PAYLOAD));
    for (h, hook) in HOOKS.into_iter().enumerate() {
        let frame = Frame::udp(&v4_source(40 + h as u8, 1), LOOKUP_PORT, b"q").build();
        assert_eq!(
            [k.run_spoofed(hook, &frame), k.run_spoofed(hook, &frame)],
            [Verdict::Pass, Verdict::Drop],
            "{hook:?}"
        );
    }
}

/// Real traffic: the program attached to a server's veth (native XDP, or TC ingress), a real
/// client's requests over TCP, and forged data segments sent raw from the client namespace
/// naming both the real client and an address nobody uses. Bans are on: the forged requests
/// must ban nobody and leave the real client's budget untouched.
mod over_a_veth {
    use std::{net::SocketAddr, time::Duration};

    use aya::programs::{TcAttachType, xdp::XdpMode};
    use monitor::kernel::{Kernel, LoadOptions};
    use monitor_common::{
        addr::AddrKey,
        config::{Config, port_flags},
        rate::{Limit, NANOS_PER_SEC},
        stats::Stat,
    };
    use tests::{
        frames::Frame,
        netns::Link,
        traffic::{Server, request},
    };

    const PORT: u16 = 8080;
    const TIMEOUT: Duration = Duration::from_millis(1500);
    const FORGED: usize = 40;

    #[derive(Clone, Copy, Debug)]
    enum Attach {
        XdpNative,
        Tc,
    }

    fn attach(link: &Link, config: Config, how: Attach) -> Kernel {
        let ifname = link.server_if.clone();
        link.server.run_in(move || {
            let mut kernel = Kernel::load(&LoadOptions {
                max_sources: 1024,
                pin_dir: None,
                table_seed: Some(tests::harness::TEST_TABLE_SEED),
            })
            .expect("load");
            kernel.set_config(&config).expect("config");
            kernel.set_port(PORT, port_flags::TCP).expect("port");
            match how {
                Attach::XdpNative => {
                    kernel
                        .xdp()
                        .unwrap()
                        .attach(&ifname, XdpMode::Driver)
                        .expect("attach native XDP to veth");
                }
                Attach::Tc => {
                    kernel
                        .tc()
                        .unwrap()
                        .attach(&ifname, TcAttachType::Ingress)
                        .expect("attach TC ingress");
                }
            }
            kernel
        })
    }

    /// Sends raw frames out of `ifname` (an AF_PACKET socket in the calling thread's namespace).
    fn send_raw(ifname: &str, frames: &[Vec<u8>]) {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain libc calls on local, zero-initialised structures.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            assert!(addr.sll_ifindex > 0, "no interface {ifname}");
            addr.sll_halen = 6;
            for frame in frames {
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "send: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    }

    fn forged_requests_ban_nobody(how: Attach, net: u8) {
        let server = format!("10.{net}.0.1");
        let client = format!("10.{net}.0.11");
        let victim = format!("10.{net}.0.12");
        let link = Link::new(&[&format!("{server}/24")]);
        link.add_client_addr(&format!("{client}/24"));
        let _server = link.server.run_in(|| Server::start(PORT));
        let kernel = attach(
            &link,
            Config {
                source: Limit::new(1, 60 * NANOS_PER_SEC, 3).unwrap(),
                ban_ns: 3600 * NANOS_PER_SEC,
                ..Config::default()
            },
            how,
        );
        let frames: Vec<Vec<u8>> = [&client, &victim]
            .iter()
            .flat_map(|src| {
                let mut f = Frame::request(src, PORT);
                f.dst = server.parse().unwrap();
                std::iter::repeat_n(f.build(), FORGED)
            })
            .collect();
        let before = kernel.stats().unwrap();
        let ifname = link.client_if.clone();
        link.client.run_in(move || send_raw(&ifname, &frames));
        let after = kernel.stats().unwrap();
        let moved = |s: Stat| after.get(s) - before.get(s);
        assert_eq!(moved(Stat::Unconnected), 2 * FORGED as u64, "{how:?}");
        assert_eq!(moved(Stat::Requests), 0, "{how:?}");
        assert_eq!(moved(Stat::BansStarted), 0, "{how:?}");

        // The real client still has its whole burst of 3: each request passes and counts.
        let to = SocketAddr::new(server.parse().unwrap(), PORT);
        let src = client.parse().unwrap();
        let served = link
            .client
            .run_in(move || (0..3).filter(|_| request(src, to, "/", TIMEOUT)).count());
        assert_eq!(served, 3, "{how:?}: the real client's requests");
        let v4 = |a: &str| AddrKey::from_v4(a.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let bucket = kernel.source(&v4(&client)).unwrap().expect("client bucket");
        assert_eq!((bucket.requests, bucket.refused), (3, 0), "{how:?}");
        assert_eq!(kernel.source(&v4(&victim)).unwrap(), None, "{how:?}");
        assert!(
            kernel.bans().unwrap().is_empty(),
            "{how:?}: someone was banned"
        );
    }

    #[test]
    fn forged_requests_over_xdp_ban_nobody() {
        forged_requests_ban_nobody(Attach::XdpNative, 203);
    }

    #[test]
    fn forged_requests_over_tc_ban_nobody() {
        forged_requests_ban_nobody(Attach::Tc, 204);
    }
}
