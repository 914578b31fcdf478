//! Header parsing: one helper per header over a bounds-checked cursor, with named depth limits.
//! Every read is checked against the end of the directly readable data before it happens;
//! lengths declared by headers are checked against the packet's real length.

use core::mem::size_of;

use monitor_common::addr::AddrKey;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::frame::Frame;

/// VLAN tags we look through (802.1Q inside 802.1ad, as in QinQ). A third tag is malformed.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we walk before giving up (fail open, counted as malformed).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Bytes at the start of a first fragment's transport header that hold both ports.
const PORTS_LEN: usize = 4;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Authentication header: walked like the others (its length counts 4-byte words, less 2),
/// because behind it is plain TCP or UDP that an IPsec peer's requests would ride on.
const IPPROTO_AH: u8 = 51;

const IPV4_MORE_FRAGMENTS: u16 = 0x2000;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Why a packet could not be parsed. Both outcomes pass the packet and count it as malformed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A header runs past the readable data.
    Truncated,
    /// A header is inconsistent (bad version, length, or a chain over its depth limit).
    Invalid,
}

/// What the classifier learns from a packet.
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// IP, but neither TCP nor UDP.
    OtherProtocol,
    /// A non-first IP fragment: it carries no ports.
    LaterFragment,
    Transport(Transport),
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Transport {
    pub src: AddrKey,
    /// The destination address (IPv4 in mapped form), for the connection lookup.
    pub dst: AddrKey,
    pub is_v4: bool,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The first fragment of a fragmented datagram: it carries the ports, and its transport
    /// header may be cut short (the flags, payload offset and length are then unknown: 0).
    pub first_fragment: bool,
    /// Offsets of the IP and transport headers from the start of the frame.
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// The TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Offset of the L4 payload from the start of the frame.
    pub payload_offset: usize,
    /// L4 payload bytes, from the IP length fields (not the frame, which may be padded).
    pub payload_len: usize,
}

struct Cursor {
    start: usize,
    pos: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    fn take<T>(&mut self) -> Result<*const T, ParseError> {
        let at = self.pos;
        if at + size_of::<T>() > self.end {
            return Err(ParseError::Truncated);
        }
        self.pos = at + size_of::<T>();
        Ok(at as *const T)
    }

    #[inline(always)]
    fn skip(&mut self, len: usize) -> Result<(), ParseError> {
        if self.pos + len > self.end {
            return Err(ParseError::Truncated);
        }
        self.pos += len;
        Ok(())
    }

    #[inline(always)]
    fn offset(&self) -> usize {
        self.pos - self.start
    }
}

#[inline(always)]
pub fn parse<F: Frame>(frame: &F) -> Result<Parsed, ParseError> {
    let mut c = Cursor {
        start: frame.start(),
        pos: frame.start(),
        end: frame.end(),
    };
    let ether_type = ethernet(&mut c)?;
    let ether_type = vlan_tags(&mut c, ether_type)?;
    let packet_len = frame.len();
    let l3 = match ether_type {
        ETH_P_IPV4 => ipv4(&mut c, packet_len)?,
        ETH_P_IPV6 => ipv6(&mut c, packet_len)?,
        _ => return Ok(Parsed::NotIp),
    };
    if l3.later_fragment {
        return Ok(Parsed::LaterFragment);
    }
    match l3.proto {
        IPPROTO_TCP => tcp(&mut c, &l3),
        IPPROTO_UDP => udp(&mut c, &l3),
        _ => Ok(Parsed::OtherProtocol),
    }
}

#[inline(always)]
fn ethernet(c: &mut Cursor) -> Result<u16, ParseError> {
    let eth = c.take::<EthHdr>()?;
    Ok(u16::from_be(unsafe { (*eth).ether_type }))
}

#[inline(always)]
fn vlan_tags(c: &mut Cursor, mut ether_type: u16) -> Result<u16, ParseError> {
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            return Ok(ether_type);
        }
        let tag = c.take::<VlanHdr>()?;
        ether_type = u16::from_be(unsafe { (*tag).ether_type });
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(ParseError::Invalid);
    }
    Ok(ether_type)
}

struct L3 {
    src: AddrKey,
    dst: AddrKey,
    is_v4: bool,
    proto: u8,
    l3_offset: usize,
    later_fragment: bool,
    first_fragment: bool,
    /// Bytes after the network headers (transport header and payload), per the IP lengths.
    l4_len: usize,
}

#[inline(always)]
fn ipv4(c: &mut Cursor, packet_len: usize) -> Result<L3, ParseError> {
    let l3_offset = c.offset();
    let ip = c.take::<Ipv4Hdr>()?;
    let (vihl, tot_len, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if vihl >> 4 != 4 {
        return Err(ParseError::Invalid);
    }
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if header_len < Ipv4Hdr::LEN || tot_len < header_len || l3_offset + tot_len > packet_len {
        return Err(ParseError::Invalid);
    }
    c.skip(header_len - Ipv4Hdr::LEN)?;
    let offset = frags & 0x1fff;
    Ok(L3 {
        src: AddrKey::from_v4(src),
        dst: AddrKey::from_v4(dst),
        is_v4: true,
        proto,
        l3_offset,
        later_fragment: offset != 0,
        first_fragment: offset == 0 && frags & IPV4_MORE_FRAGMENTS != 0,
        l4_len: tot_len - header_len,
    })
}

#[inline(always)]
fn ipv6(c: &mut Cursor, packet_len: usize) -> Result<L3, ParseError> {
    let l3_offset = c.offset();
    let ip = c.take::<Ipv6Hdr>()?;
    let (version, payload_len, mut next, src, dst) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if version != 6 || l3_offset + Ipv6Hdr::LEN + payload_len > packet_len {
        return Err(ParseError::Invalid);
    }
    let src = AddrKey::from_v6(src);
    // An IPv4-mapped source on IPv6 is not a source: Linux drops such packets (ip6_rcv_core),
    // and taking it as one would give it the key of the IPv4 source it names.
    if src.is_v4() {
        return Err(ParseError::Invalid);
    }
    let mut ext_len = 0usize;
    let mut later_fragment = false;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        let (this_next, this_len, fragment) = ipv6_extension(c, next)?;
        next = this_next;
        ext_len += this_len;
        match fragment {
            Fragment::No => {}
            Fragment::First => first_fragment = true,
            Fragment::Later => later_fragment = true,
        }
    }
    if is_ipv6_extension(next) {
        return Err(ParseError::Invalid);
    }
    if ext_len > payload_len {
        return Err(ParseError::Invalid);
    }
    Ok(L3 {
        src,
        dst: AddrKey::from_v6(dst),
        is_v4: false,
        proto: next,
        l3_offset,
        later_fragment,
        first_fragment: first_fragment && !later_fragment,
        l4_len: payload_len - ext_len,
    })
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS | IPPROTO_AH
    )
}

/// What a fragment header says about the packet.
#[derive(Clone, Copy)]
enum Fragment {
    /// No fragment header, or an atomic one (offset 0, no more fragments): the whole datagram.
    No,
    /// Offset 0 with more to come: this piece carries the transport header.
    First,
    Later,
}

/// One IPv6 extension header: returns (next header, its length, what it says of fragments).
#[inline(always)]
fn ipv6_extension(c: &mut Cursor, kind: u8) -> Result<(u8, usize, Fragment), ParseError> {
    // Every extension we walk starts with (next header, length); the fragment header's second
    // byte is reserved and its length is fixed at 8.
    let head = c.take::<[u8; 8]>()?;
    let head = unsafe { *head };
    if kind == IPPROTO_FRAGMENT {
        let field = u16::from_be_bytes([head[2], head[3]]);
        let fragment = if field >> 3 != 0 {
            Fragment::Later
        } else if field & 1 != 0 {
            Fragment::First
        } else {
            Fragment::No
        };
        return Ok((head[0], 8, fragment));
    }
    let len = if kind == IPPROTO_AH {
        (head[1] as usize + 2) * 4
    } else {
        (head[1] as usize + 1) * 8
    };
    c.skip(len - 8)?;
    Ok((head[0], len, Fragment::No))
}

/// The first fragment of a datagram: only its ports matter (it counts as one request, see
/// `classify::is_request`), and a sender may cut the transport header short there, so read the
/// ports and nothing else. Linux discards a non-final fragment of under 8 bytes, so any first
/// fragment it would reassemble holds both ports.
#[inline(always)]
fn first_fragment(c: &mut Cursor, l3: &L3, proto: u8) -> Result<Parsed, ParseError> {
    let l4_offset = c.offset();
    if l3.l4_len < PORTS_LEN {
        return Err(ParseError::Invalid);
    }
    let ports = c.take::<[u8; PORTS_LEN]>()?;
    let ports = unsafe { *ports };
    Ok(Parsed::Transport(Transport {
        src: l3.src,
        dst: l3.dst,
        is_v4: l3.is_v4,
        proto,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        first_fragment: true,
        l3_offset: l3.l3_offset,
        l4_offset,
        tcp_flags: 0,
        payload_offset: 0,
        payload_len: 0,
    }))
}

#[inline(always)]
fn tcp(c: &mut Cursor, l3: &L3) -> Result<Parsed, ParseError> {
    if l3.first_fragment {
        return first_fragment(c, l3, IPPROTO_TCP);
    }
    let l4_offset = c.offset();
    let hdr = c.take::<TcpHdr>()?;
    let raw = hdr as *const u8;
    let (sport, dport, doff_byte, flags) = unsafe {
        (
            u16::from_be_bytes((*hdr).source),
            u16::from_be_bytes((*hdr).dest),
            *raw.add(12),
            *raw.add(13),
        )
    };
    let header_len = ((doff_byte >> 4) as usize) * 4;
    if header_len < TcpHdr::LEN || header_len > l3.l4_len {
        return Err(ParseError::Invalid);
    }
    c.skip(header_len - TcpHdr::LEN)?;
    Ok(Parsed::Transport(Transport {
        src: l3.src,
        dst: l3.dst,
        is_v4: l3.is_v4,
        proto: IPPROTO_TCP,
        sport,
        dport,
        first_fragment: false,
        l3_offset: l3.l3_offset,
        l4_offset,
        tcp_flags: flags,
        payload_offset: c.offset(),
        payload_len: l3.l4_len - header_len,
    }))
}

#[inline(always)]
fn udp(c: &mut Cursor, l3: &L3) -> Result<Parsed, ParseError> {
    if l3.first_fragment {
        return first_fragment(c, l3, IPPROTO_UDP);
    }
    let l4_offset = c.offset();
    let hdr = c.take::<UdpHdr>()?;
    let (sport, dport) = unsafe {
        (
            u16::from_be_bytes((*hdr).src),
            u16::from_be_bytes((*hdr).dst),
        )
    };
    if l3.l4_len < UdpHdr::LEN {
        return Err(ParseError::Invalid);
    }
    Ok(Parsed::Transport(Transport {
        src: l3.src,
        dst: l3.dst,
        is_v4: l3.is_v4,
        proto: IPPROTO_UDP,
        sport,
        dport,
        first_fragment: false,
        l3_offset: l3.l3_offset,
        l4_offset,
        tcp_flags: 0,
        payload_offset: c.offset(),
        payload_len: l3.l4_len - UdpHdr::LEN,
    }))
}
