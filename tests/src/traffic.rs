//! Real TCP traffic for namespace tests: a tiny HTTP responder and clients that bind chosen
//! source addresses. Every loop here is bounded by a count and a deadline.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Link;

/// The port the daemon tests protect.
pub const PORT: u16 = 8443;
/// Long enough for a round trip on veth many times over; shorter than TCP's first SYN
/// retransmission (1 s), so a dropped connection attempt reads as lost.
pub const TIMEOUT: Duration = Duration::from_millis(800);

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}

/// `server`'s protected port.
pub fn to(server: &str) -> SocketAddr {
    SocketAddr::new(ip(server), PORT)
}

/// One request from `src` (an address of the link's client side) to `dst`; whether it was
/// answered.
pub fn one(link: &Link, src: &'static str, dst: &'static str) -> bool {
    link.client
        .run_in(move || request(ip(src), to(dst), "/lookup", TIMEOUT))
}

/// A responder answering every HTTP request with `200 ok` and closing. Stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `[::]:port` (dual-stack) in the calling thread's namespace and serves on a
    /// new thread (which inherits that namespace).
    pub fn start(port: u16) -> Self {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        socket.set_only_v6(false).expect("dual-stack");
        socket.set_reuse_address(true).expect("reuseaddr");
        let addr: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
        socket.bind(&addr.into()).expect("bind server");
        socket.listen(1024).expect("listen");
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: a test never runs this long, and the flag ends it sooner.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let served = served2.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
                            let mut buf = [0u8; 1024];
                            if let Ok(n) = conn.read(&mut buf)
                                && n > 0
                            {
                                served.fetch_add(1, Ordering::Relaxed);
                                let _ = conn.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                                );
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `src` to `dst`, sends one HTTP request for `path`, and returns whether a
/// `200` came back within `timeout`.
pub fn request(src: IpAddr, dst: SocketAddr, path: &str, timeout: Duration) -> bool {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(socket) = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)) else {
        return false;
    };
    if socket
        .bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .is_err()
    {
        return false;
    }
    if socket.connect_timeout(&dst.into(), timeout).is_err() {
        return false;
    }
    let mut stream: TcpStream = socket.into();
    let _ = stream.set_read_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

/// `n` concurrent requests from `src`; returns how many succeeded.
pub fn burst(src: IpAddr, dst: SocketAddr, path: &str, n: usize, timeout: Duration) -> usize {
    let path = path.to_string();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || request(src, dst, &path, timeout))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count()
}
