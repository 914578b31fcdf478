//! Real TCP connections for frames run through BPF_PROG_TEST_RUN.
//!
//! In `payload` and `http` modes the program counts a TCP segment only when a socket lookup in
//! the packet's network namespace finds its connection, and a test run's packet is in the
//! namespace of the thread that runs it. So each `Loaded` moves its thread into a private
//! namespace of its own (`ThreadNetns`), where every address is local (a `local` route over
//! all of IPv4 and IPv6 on loopback), and `Conns` opens a real connection with a frame's exact
//! addresses and ports before the frame runs: the client binds the frame's source and port,
//! the server listens on its destination port. Traffic stays on that namespace's loopback.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
};

use socket2::{Domain, Socket, Type};

use crate::netns::sh;

/// The calling thread in a fresh network namespace until dropped (then back where it was).
/// Threads it spawns meanwhile start in the new namespace too.
pub struct ThreadNetns {
    home: File,
}

impl ThreadNetns {
    pub fn enter() -> Self {
        let home = File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
        // SAFETY: plain syscall; it changes only the calling thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let ns = Self { home };
        // Commands run from this thread inherit its namespace.
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-4",
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
        ]);
        sh(&["ip", "-6", "route", "add", "local", "::/0", "dev", "lo"]);
        ns
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 && !std::thread::panicking() {
            panic!(
                "setns back to the test's namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A frame's TCP four-tuple, as the sender sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Open connections (both ends) and listeners, kept until dropped.
#[derive(Default)]
pub struct Conns {
    listeners: HashMap<SocketAddr, TcpListener>,
    open: HashMap<Tuple, (Socket, std::net::TcpStream)>,
}

impl Conns {
    /// Makes sure a connection with exactly this tuple exists (in the calling thread's
    /// namespace). An error says why none could be made (a source no socket can bind, such as
    /// a multicast address): the frame then runs without one, as a forged one would.
    pub fn ensure(&mut self, tuple: Tuple) -> Result<(), String> {
        if self.open.contains_key(&tuple) {
            return Ok(());
        }
        raise_fd_limit();
        let listener = match self.listeners.entry(tuple.dst) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let sock = socket(tuple.dst)?;
                sock.bind(&tuple.dst.into())
                    .map_err(|err| format!("listen on {}: {err}", tuple.dst))?;
                sock.listen(1024).map_err(|err| format!("listen: {err}"))?;
                e.insert(sock.into())
            }
        };
        let client = socket(tuple.src)?;
        client
            .bind(&tuple.src.into())
            .map_err(|e| format!("bind {}: {e}", tuple.src))?;
        client
            .connect(&tuple.dst.into())
            .map_err(|e| format!("connect {} -> {}: {e}", tuple.src, tuple.dst))?;
        let (server, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        if peer != tuple.src {
            // A source such as 0.0.0.0 binds the wildcard: the connection is not the frame's.
            return Err(format!("connected from {peer}, not {}", tuple.src));
        }
        self.open.insert(tuple, (client, server));
        Ok(())
    }

    /// Closes the connection (both ends reset, so no TIME-WAIT socket is left behind).
    pub fn close(&mut self, tuple: &Tuple) {
        if let Some((client, server)) = self.open.remove(tuple) {
            let _ = client.set_linger(Some(std::time::Duration::ZERO));
            let _ = socket2::SockRef::from(&server).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

fn socket(addr: SocketAddr) -> Result<Socket, String> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    // The addresses are local through the namespace's `local` routes; IPv6 binds check for a
    // configured address, so let them bind anyway. Frames share source ports.
    let set = if addr.is_ipv4() {
        sock.set_freebind_v4(true)
    } else {
        sock.set_only_v6(true)
            .and_then(|()| sock.set_freebind_v6(true))
    };
    set.and_then(|()| sock.set_reuse_address(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(sock)
}

fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

/// The TCP tuple of a frame built by `frames::Frame` (Ethernet, VLAN tags, IPv4 or IPv6 with
/// the extension headers the builder writes), or `None` for anything else, including a
/// fragment (a first fragment's ports are read the same way).
pub fn tcp_tuple(frame: &[u8]) -> Option<Tuple> {
    let mut at = 12;
    let mut ether_type = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    at += 2;
    while ether_type == 0x8100 || ether_type == 0x88a8 {
        ether_type = u16::from_be_bytes(frame.get(at + 2..at + 4)?.try_into().ok()?);
        at += 4;
    }
    let (src, dst, l4) = match ether_type {
        0x0800 => {
            let ip = frame.get(at..at + 20)?;
            let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if ip[9] != 6 || frag_offset != 0 {
                return None;
            }
            let src: [u8; 4] = ip[12..16].try_into().ok()?;
            let dst: [u8; 4] = ip[16..20].try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                at + (ip[0] & 0x0f) as usize * 4,
            )
        }
        0x86dd => {
            let ip = frame.get(at..at + 40)?;
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            let mut next = ip[6];
            let mut l4 = at + 40;
            loop {
                match next {
                    6 => break,
                    0 | 43 | 60 => {
                        let h = frame.get(l4..l4 + 2)?;
                        next = h[0];
                        l4 += (h[1] as usize + 1) * 8;
                    }
                    51 => {
                        let h = frame.get(l4..l4 + 2)?;
                        next = h[0];
                        l4 += (h[1] as usize + 2) * 4;
                    }
                    44 => {
                        let h = frame.get(l4..l4 + 4)?;
                        if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                            return None;
                        }
                        next = h[0];
                        l4 += 8;
                    }
                    _ => return None,
                }
            }
            (IpAddr::from(src), IpAddr::from(dst), l4)
        }
        _ => return None,
    };
    let ports = frame.get(l4..l4 + 4)?;
    Some(Tuple {
        src: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    })
}
