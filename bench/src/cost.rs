//! Part 1: the program's own cost per packet, with BPF_PROG_TEST_RUN `repeat`, next to the
//! trivial XDP_PASS and XDP_DROP programs in the same run. Cases are alternated inside every
//! round, so drift (other work on the machine) spreads over all of them.
//!
//! In `payload` and `http` modes a TCP segment counts only on a connection the host has (a
//! socket lookup), so the part runs on a thread in a private network namespace where the TCP
//! sources have real loopback connections with the frames' exact addresses and ports.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use monitor::kernel::{Kernel, LoadOptions};
use monitor_common::{
    addr::AddrKey,
    config::{Config, count_mode, port_flags},
    rate::{Limit, NANOS_PER_SEC},
    table::SourceSlot,
};
use socket2::{Domain, Socket, Type};

use crate::{
    fill,
    frames::{self, L4},
    progs::Bench,
    stats::{Summary, summarize},
    sys::sh,
};

pub const PORT: u16 = 8443;
const OTHER_PORT: u16 = 9999;
const HTTP_REQ: &[u8] = b"GET /1.1/contacts/lookup?phone=15551234567 HTTP/1.1\r\nHost: api\r\n\r\n";

/// Admits everything: 1 ns per request with ~18 minutes of tolerance.
pub fn admit_all() -> Limit {
    Limit::new(NANOS_PER_SEC, NANOS_PER_SEC, 1 << 40).expect("limit")
}

/// One request per hour, burst 1: a source whose bucket is in the future is always refused.
pub fn refuse_all() -> Limit {
    Limit::new(1, 3600 * NANOS_PER_SEC, 1).expect("limit")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prog {
    TrivialPass,
    TrivialDrop,
    MonitorXdp,
    MonitorTc,
}

struct Case {
    name: &'static str,
    prog: Prog,
    /// Counting mode and limit the case needs.
    mode: u8,
    frame: Vec<u8>,
    /// Expected return value (XDP: 1 drop, 2 pass; TC: 0 ok, 2 shot).
    expect: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CostResult {
    /// case -> tracked sources -> ns per packet
    pub ns: BTreeMap<String, BTreeMap<u32, Summary>>,
    /// tracked sources asked for -> sources the pre-fill left out because their set of the
    /// table was full (the measured sources are written first, into an empty table).
    pub left_out: BTreeMap<u32, usize>,
    pub repeat: u32,
    pub rounds: usize,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn run(sources: &[u32], rounds: usize, repeat: u32) -> anyhow::Result<CostResult> {
    let sources = sources.to_vec();
    std::thread::spawn(move || {
        // SAFETY: plain syscall; it moves only this thread into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        run_in_private_netns(&sources, rounds, repeat)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the cost thread panicked"))?
}

/// A real TCP connection from `src` to `dst` (both local through the namespace's `local`
/// route), kept open while the returned sockets live.
fn connect(src: SocketAddr, dst: &TcpListener) -> anyhow::Result<(Socket, TcpStream)> {
    let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    client.set_freebind_v4(true)?;
    client.set_reuse_address(true)?;
    client.bind(&src.into())?;
    client.connect(&dst.local_addr()?.into())?;
    let (server, _) = dst.accept()?;
    Ok((client, server))
}

fn run_in_private_netns(sources: &[u32], rounds: usize, repeat: u32) -> anyhow::Result<CostResult> {
    let v4_pass = ip("10.127.0.1");
    let v4_drop = ip("10.127.0.2");
    let v6_pass = ip("2001:db8:ffff:1::1");
    let v6_drop = ip("2001:db8:ffff:2::1");
    let d4 = ip("192.0.2.1");
    let d6 = ip("2001:db8::1");
    let v4_forged = ip("10.127.0.3");
    let pl = [0u8; 18];
    let f = |src, dst, vlan, l4, port, payload: &[u8]| {
        frames::build(src, dst, vlan, l4, port, payload).bytes
    };
    sh(&["ip", "link", "set", "lo", "up"])?;
    sh(&[
        "ip",
        "-4",
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
    ])?;
    let listener = TcpListener::bind(SocketAddr::new(d4, PORT)).context("listen")?;
    let _connections = [v4_pass, v4_drop]
        .map(|src| connect(SocketAddr::new(src, frames::SPORT), &listener))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("loopback connections for the TCP cases")?;
    use Prog::*;
    let cases = vec![
        Case {
            name: "trivial XDP_PASS",
            prog: TrivialPass,
            mode: count_mode::PACKETS,
            frame: f(v4_pass, d4, None, L4::Udp, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "trivial XDP_DROP",
            prog: TrivialDrop,
            mode: count_mode::PACKETS,
            frame: f(v4_pass, d4, None, L4::Udp, PORT, &pl),
            expect: 1,
        },
        Case {
            name: "not monitored (other port)",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, None, L4::Udp, OTHER_PORT, &pl),
            expect: 2,
        },
        Case {
            name: "IPv4 UDP monitored pass",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, None, L4::Udp, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "IPv4 UDP rate drop",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_drop, d4, None, L4::Udp, PORT, &pl),
            expect: 1,
        },
        Case {
            name: "IPv6 UDP monitored pass",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v6_pass, d6, None, L4::Udp, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "IPv6 UDP rate drop",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v6_drop, d6, None, L4::Udp, PORT, &pl),
            expect: 1,
        },
        Case {
            name: "VLAN IPv4 UDP monitored pass",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, Some(100), L4::Udp, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "VLAN IPv4 UDP rate drop",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_drop, d4, Some(100), L4::Udp, PORT, &pl),
            expect: 1,
        },
        Case {
            name: "IPv4 TCP SYN monitored pass (syn mode)",
            prog: MonitorXdp,
            mode: count_mode::SYN,
            frame: f(v4_pass, d4, None, L4::Syn, PORT, &[]),
            expect: 2,
        },
        Case {
            name: "IPv4 TCP payload pass, no lookup (packets mode)",
            prog: MonitorXdp,
            mode: count_mode::PACKETS,
            frame: f(v4_pass, d4, None, L4::Data, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "IPv4 TCP payload pass, connection found (payload mode)",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, None, L4::Data, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "IPv4 TCP forged payload, no connection (payload mode)",
            prog: MonitorXdp,
            mode: count_mode::PAYLOAD,
            frame: f(v4_forged, d4, None, L4::Data, PORT, &pl),
            expect: 2,
        },
        Case {
            name: "TC IPv4 TCP payload pass, connection found (payload mode)",
            prog: MonitorTc,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, None, L4::Data, PORT, &pl),
            expect: 0,
        },
        Case {
            name: "IPv4 TCP http request pass (http mode)",
            prog: MonitorXdp,
            mode: count_mode::HTTP,
            frame: f(v4_pass, d4, None, L4::Data, PORT, HTTP_REQ),
            expect: 2,
        },
        Case {
            name: "IPv4 TCP http request drop (http mode)",
            prog: MonitorXdp,
            mode: count_mode::HTTP,
            frame: f(v4_drop, d4, None, L4::Data, PORT, HTTP_REQ),
            expect: 1,
        },
        Case {
            name: "TC IPv4 UDP monitored pass",
            prog: MonitorTc,
            mode: count_mode::PAYLOAD,
            frame: f(v4_pass, d4, None, L4::Udp, PORT, &pl),
            expect: 0,
        },
        Case {
            name: "TC IPv4 UDP rate drop",
            prog: MonitorTc,
            mode: count_mode::PAYLOAD,
            frame: f(v4_drop, d4, None, L4::Udp, PORT, &pl),
            expect: 2,
        },
    ];

    let max = *sources.iter().max().unwrap_or(&1);
    let mut kernel = Kernel::load(&LoadOptions {
        max_sources: max.max(16),
        pin_dir: None,
        table_seed: None,
    })
    .context("loading the monitor object (bench needs root)")?;
    kernel.set_port(PORT, port_flags::TCP | port_flags::UDP)?;
    let mut bench = Bench::load()?;

    // Everyone except the drop sources can always pass; the drop sources' slots sit far in
    // the future under a one-per-hour limit, so each of their requests is refused.
    let far = SourceSlot {
        tat_ns: u64::MAX / 4,
        ..Default::default()
    };
    let passing = SourceSlot {
        tat_ns: 1,
        ..Default::default()
    };
    let key = |a: IpAddr, prefix_v6: bool| match a {
        IpAddr::V4(v) => AddrKey::from_v4(v.octets()),
        IpAddr::V6(v) => {
            let mut o = v.octets();
            if prefix_v6 {
                o[8..].fill(0);
            }
            AddrKey::from_v6(o)
        }
    };
    let measured = [
        (key(v4_pass, false), passing),
        (key(v6_pass, true), passing),
        (key(v4_drop, false), far),
        (key(v6_drop, true), far),
    ];
    let missed = kernel
        .write_sources(&measured)
        .context("writing the measured sources")?;
    anyhow::ensure!(missed == 0, "{missed} measured sources found no slot");

    let mut ns: BTreeMap<String, BTreeMap<u32, Summary>> = BTreeMap::new();
    let mut left_out: BTreeMap<u32, usize> = BTreeMap::new();
    let mut filled = measured.len() as u32;
    let mut missed_total = 0;
    let mut sorted = sources.to_vec();
    sorted.sort();
    for &n in &sorted {
        // Pre-fill the rest of the table with distinct sources that would pass. A source whose
        // two sets are already full is left out (the table is sized at 7/4 slots per source).
        if n > filled {
            let extra: Vec<(AddrKey, SourceSlot)> =
                (filled..n).map(|i| (fill::v4_source(i), passing)).collect();
            missed_total += kernel
                .write_sources(&extra)
                .context("pre-filling the source table")?;
            filled = n;
        }
        left_out.insert(n, missed_total);
        let tracked = kernel.sources().map(|v| v.len()).unwrap_or(0);
        eprintln!(
            "bench: {missed_total} of {n} sources left out of the table (their set was full)"
        );
        eprintln!("bench: program cost with {n} tracked sources (table holds {tracked})");
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for _ in 0..rounds {
            for (ci, case) in cases.iter().enumerate() {
                let limit = if case.expect == 1 || (case.prog == MonitorTc && case.expect == 2) {
                    refuse_all()
                } else {
                    admit_all()
                };
                let cfg = Config {
                    source: limit,
                    count_mode: case.mode,
                    ..Config::default()
                };
                kernel.set_config(&cfg)?;
                let opts = TestRunOptions {
                    data_in: Some(&case.frame),
                    repeat,
                    ..TestRunOptions::new()
                };
                let r = match case.prog {
                    TrivialPass => bench.prog("bench_pass")?.test_run(opts),
                    TrivialDrop => bench.prog("bench_drop")?.test_run(opts),
                    MonitorXdp => kernel.xdp()?.test_run(opts),
                    MonitorTc => kernel.tc()?.test_run(opts),
                }
                .with_context(|| format!("BPF_PROG_TEST_RUN of {}", case.name))?;
                anyhow::ensure!(
                    r.return_value == case.expect,
                    "{} returned {} (expected {})",
                    case.name,
                    r.return_value,
                    case.expect
                );
                samples[ci].push(r.duration.as_nanos() as f64);
            }
        }
        for (ci, case) in cases.iter().enumerate() {
            ns.entry(case.name.to_string())
                .or_default()
                .insert(n, summarize(&samples[ci]));
        }
    }
    Ok(CostResult {
        ns,
        left_out,
        repeat,
        rounds,
    })
}
