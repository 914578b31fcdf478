//! Whether a TCP segment belongs to a connection this host has, so that in `payload` and
//! `http` modes a forged segment (an off-path sender using someone else's address, with no
//! handshake) is never charged to the address it names.
//!
//! One socket lookup (`bpf_skc_lookup_tcp`, in the packet's network namespace) per segment
//! that would otherwise count. Established and closing connections, and request sockets (a
//! handshake in progress whose final ACK may carry data), count. A segment that finds only a
//! listener counts only if it is the ACK that completes a SYN-cookie handshake
//! (`bpf_tcp_check_syncookie`), since the kernel then creates the connection from it; a
//! TIME-WAIT or closed socket is not a connection.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
};

use crate::{frame::Frame, parse::Transport};

// Socket states (include/net/tcp_states.h).
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

/// `sizeof(bpf_sock_tuple.ipv4)` and `.ipv6`.
const TUPLE_V4_LEN: u32 = 12;
const TUPLE_V6_LEN: u32 = 36;

/// An IPv6 header is the longer of the two; the syncookie helper reads only the fixed header.
const IP_HEADER_COPY: usize = 40;
const TCP_HEADER_LEN: usize = 20;

#[inline(always)]
pub fn belongs<F: Frame>(frame: &F, pkt: &Transport) -> bool {
    // SAFETY: plain data; zero is a valid tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let len = if pkt.is_v4 {
        let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        v4.saddr = u32::from_ne_bytes(tail4(&pkt.src.addr));
        v4.daddr = u32::from_ne_bytes(tail4(&pkt.dst.addr));
        v4.sport = pkt.sport.to_be();
        v4.dport = pkt.dport.to_be();
        TUPLE_V4_LEN
    } else {
        let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        // SAFETY: [u8; 16] and [u32; 4] have the same size; the bytes stay in wire order.
        v6.saddr = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(pkt.src.addr) };
        v6.daddr = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(pkt.dst.addr) };
        v6.sport = pkt.sport.to_be();
        v6.dport = pkt.dport.to_be();
        TUPLE_V6_LEN
    };
    let sk: *mut bpf_sock = unsafe {
        bpf_skc_lookup_tcp(
            frame.ctx().as_ptr(),
            &mut tuple,
            len,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    let belongs = match unsafe { (*sk).state } {
        TCP_LISTEN => !pkt.first_fragment && completes_syncookie(frame, pkt, sk),
        TCP_TIME_WAIT | TCP_CLOSE => false,
        _ => true,
    };
    unsafe { bpf_sk_release(sk.cast()) };
    belongs
}

#[inline(always)]
fn tail4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

/// Whether the segment is a valid SYN-cookie ACK for `listener`: the helper checks the flags
/// (ACK, no SYN or RST), that the listener recently sent cookies, and the cookie itself.
#[inline(always)]
fn completes_syncookie<F: Frame>(frame: &F, pkt: &Transport, listener: *mut bpf_sock) -> bool {
    let mut ip = [0u8; IP_HEADER_COPY];
    let mut th = [0u8; TCP_HEADER_LEN];
    let ip_len = if pkt.is_v4 { 20 } else { IP_HEADER_COPY };
    if !frame.load_bytes(pkt.l3_offset, &mut ip, ip_len)
        || !frame.load_bytes(pkt.l4_offset, &mut th, TCP_HEADER_LEN)
    {
        return false;
    }
    let ret = unsafe {
        bpf_tcp_check_syncookie(
            listener.cast(),
            ip.as_mut_ptr().cast(),
            IP_HEADER_COPY as u32,
            th.as_mut_ptr().cast(),
            TCP_HEADER_LEN as u32,
        )
    };
    ret == 0
}
