//! Real traffic through the attached program: a veth pair between a client namespace and a
//! server namespace, the program attached to the server's veth (native XDP, or TC ingress),
//! a listening server, and TCP connections from several source addresses.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::programs::{TcAttachType, xdp::XdpMode};
use monitor::kernel::{Kernel, LoadOptions};
use monitor_common::{
    addr::{AddrKey, AddrMask},
    config::{Config, count_mode, port_flags},
    http::HTTP_PATH_MAX,
    rate::{Limit, NANOS_PER_SEC},
    stats::Stat,
};
use tests::{
    netns::Link,
    traffic::{Server, burst, request},
};

const PORT: u16 = 8080;
/// Long enough for a SYN/ACK round trip on veth many times over; short enough that a dropped
/// request (retransmitted by TCP at 200 ms, 600 ms, 1.4 s...) reads as lost.
const TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy)]
enum Attach {
    XdpNative,
    Tc,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn to(server: &str) -> SocketAddr {
    SocketAddr::new(ip(server), PORT)
}

/// The source-table key of an address under the default prefixes (/32, /64).
fn key(addr: &str) -> AddrKey {
    match ip(addr) {
        IpAddr::V4(v4) => AddrKey::from_v4(v4.octets()),
        IpAddr::V6(v6) => AddrKey::from_v6(v6.octets()).masked(&AddrMask::v6(64)),
    }
}

/// Loads the program and attaches it to the server's veth from inside the server namespace
/// (interface names resolve per namespace). Detached when the returned `Kernel` drops.
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

fn limit(rate: u64, burst: u64) -> Limit {
    Limit::new(rate, NANOS_PER_SEC, burst).unwrap()
}

fn loud_source_is_dropped_and_others_served(how: Attach) {
    let link = Link::new(&["10.201.0.1/24", "fd00:201::1/64"]);
    for a in [
        "10.201.0.11/24",
        "10.201.0.12/24",
        "10.201.0.13/24",
        "fd00:201::12/64",
    ] {
        link.add_client_addr(a);
    }
    let _server = link.server.run_in(|| Server::start(PORT));
    let kernel = attach(
        &link,
        Config {
            source: limit(5, 10),
            ..Config::default()
        },
        how,
    );

    // 40 concurrent requests against a burst of 10 refilling at 5/s: at most about
    // 10 + 5 * 1.5 s of them can be admitted before the timeout.
    let loud_ok = link
        .client
        .run_in(|| burst(ip("10.201.0.11"), to("10.201.0.1"), "/", 40, TIMEOUT));
    assert!(
        (5..=25).contains(&loud_ok),
        "loud source: {loud_ok} of 40 succeeded, expected its burst and a little refill"
    );

    // Quiet sources, one request every 300 ms, must lose nothing.
    for (src, dst) in [
        ("10.201.0.12", "10.201.0.1"),
        ("10.201.0.13", "10.201.0.1"),
        ("fd00:201::12", "fd00:201::1"),
    ] {
        let ok = link.client.run_in(move || {
            (0..3)
                .filter(|_| {
                    std::thread::sleep(Duration::from_millis(300));
                    request(ip(src), to(dst), "/", TIMEOUT)
                })
                .count()
        });
        assert_eq!(ok, 3, "quiet source {src} lost requests");
        let bucket = kernel
            .source(&key(src))
            .unwrap()
            .unwrap_or_else(|| panic!("{src} not tracked; table: {:?}", kernel.sources().unwrap()));
        assert_eq!(bucket.refused, 0, "{src} was refused");
    }

    let loud = kernel
        .source(&key("10.201.0.11"))
        .unwrap()
        .expect("tracked");
    assert!(loud.refused > 0, "loud source never refused: {loud:?}");
    let stats = kernel.stats().unwrap();
    assert!(stats.get(Stat::DroppedRate) > 0);
    assert_eq!(stats.get(Stat::DroppedRate), stats.get(Stat::Dropped));
}

#[test]
fn native_xdp_drops_the_loud_source_and_serves_the_rest() {
    loud_source_is_dropped_and_others_served(Attach::XdpNative);
}

#[test]
fn tc_drops_the_loud_source_and_serves_the_rest() {
    loud_source_is_dropped_and_others_served(Attach::Tc);
}

/// `http` counting with a path prefix: a /24 of clients each under its own limit is held to
/// the aggregate, another /24 is untouched, addresses of one IPv6 /64 share one budget, and
/// requests outside the prefix are never counted.
#[test]
fn http_mode_holds_a_slash_24_to_its_aggregate_and_a_slash_64_to_one_budget() {
    let link = Link::new(&["10.202.0.1/24", "10.202.1.1/24", "fd00:202::1/64"]);
    let v4_group = ["10.202.0.21", "10.202.0.22", "10.202.0.23", "10.202.0.24"];
    let v6_group = [
        "fd00:202::21",
        "fd00:202::22",
        "fd00:202::23",
        "fd00:202::24",
    ];
    for a in v4_group {
        link.add_client_addr(&format!("{a}/24"));
    }
    for a in v6_group {
        link.add_client_addr(&format!("{a}/64"));
    }
    link.add_client_addr("10.202.1.5/24");
    let _server = link.server.run_in(|| Server::start(PORT));
    let prefix = b"/1.1/contacts/lookup";
    let mut http_path = [0u8; HTTP_PATH_MAX];
    http_path[..prefix.len()].copy_from_slice(prefix);
    let kernel = attach(
        &link,
        Config {
            // Each address alone (4 requests) is under its burst of 5...
            source: limit(1, 5),
            // ...but four of them in one /24 (16 requests) are over the aggregate's 8.
            aggregate: limit(1, 8),
            count_mode: count_mode::HTTP,
            http_path,
            http_path_len: prefix.len() as u8,
            ..Config::default()
        },
        Attach::XdpNative,
    );
    let lookup = "/1.1/contacts/lookup?phone=15550100";

    let v4_ok: usize = link.client.run_in(move || {
        let handles: Vec<_> = v4_group
            .iter()
            .map(|a| {
                let src = ip(a);
                std::thread::spawn(move || burst(src, to("10.202.0.1"), lookup, 4, TIMEOUT))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(
        (8..16).contains(&v4_ok),
        "the /24 got {v4_ok} of 16 through; its aggregate admits 8 plus little refill"
    );
    let stats = kernel.stats().unwrap();
    assert!(stats.get(Stat::DroppedAggregate) > 0, "{stats:?}");

    // Another /24 has its own aggregate.
    let other = link
        .client
        .run_in(move || burst(ip("10.202.1.5"), to("10.202.1.1"), lookup, 4, TIMEOUT));
    assert_eq!(other, 4, "a client in another /24 was held back");

    // Paths outside the prefix are not requests in this mode: never limited.
    let health = link
        .client
        .run_in(move || burst(ip("10.202.0.21"), to("10.202.0.1"), "/health", 6, TIMEOUT));
    assert_eq!(health, 6, "requests outside the path prefix were dropped");

    // Four addresses of one /64, 3 requests each: 12 against one shared burst of 5.
    let v6_ok: usize = link.client.run_in(move || {
        let handles: Vec<_> = v6_group
            .iter()
            .map(|a| {
                let src = ip(a);
                std::thread::spawn(move || burst(src, to("fd00:202::1"), lookup, 3, TIMEOUT))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(
        (5..12).contains(&v6_ok),
        "the /64 got {v6_ok} of 12 through; it shares one burst of 5"
    );
    assert!(kernel.stats().unwrap().get(Stat::DroppedRate) > 0);
    // One bucket for the /64, counting every address's requests (and TCP's retransmissions
    // of the dropped ones, which count again), and no bucket per address.
    let v6_keys: Vec<AddrKey> = kernel
        .sources()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.is_v4())
        .collect();
    assert_eq!(v6_keys, vec![key("fd00:202::")]);
    let shared = kernel.source(&key("fd00:202::")).unwrap().unwrap();
    assert!(shared.requests >= 12 && shared.refused > 0, "{shared:?}");
}
