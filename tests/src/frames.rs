//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet, up to two VLAN tags, IPv4 (options,
//! fragments) or IPv6 (extension headers), TCP or UDP, and a payload. Checksums are left zero:
//! the program never reads them.

use std::net::IpAddr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_AH: u8 = 51;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        dport: u16,
        flags: u8,
        options: usize,
    },
    Udp {
        dport: u16,
    },
    /// Another IP protocol number, with no header of its own.
    Other(u8),
}

/// A frame to build. IPv6 extension headers are listed in order as (protocol number, total
/// length in bytes, a multiple of 8); a fragment header (44) is always 8 bytes and takes its
/// offset from `v6_fragment_offset`; an authentication header (51) writes its length in its
/// own 4-byte unit.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlan_tags: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ipv4_options: usize,
    /// IPv4: fragment offset in 8-byte units and the more-fragments flag.
    pub v4_fragment: Option<(u16, bool)>,
    pub v6_extensions: Vec<(u8, usize)>,
    /// Offset (8-byte units) written into a v6 fragment header, if one is in `v6_extensions`.
    pub v6_fragment_offset: u16,
    /// The more-fragments flag of that header.
    pub v6_more_fragments: bool,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: &str, dport: u16, flags: u8, payload: &[u8]) -> Self {
        let src: IpAddr = src.parse().expect("test address");
        let dst: IpAddr = if src.is_ipv4() {
            "192.0.2.1".parse().unwrap()
        } else {
            "2001:db8::1".parse().unwrap()
        };
        Self {
            vlan_tags: Vec::new(),
            src,
            dst,
            ipv4_options: 0,
            v4_fragment: None,
            v6_extensions: Vec::new(),
            v6_fragment_offset: 0,
            v6_more_fragments: false,
            l4: L4::Tcp {
                dport,
                flags,
                options: 0,
            },
            payload: payload.to_vec(),
        }
    }

    pub fn udp(src: &str, dport: u16, payload: &[u8]) -> Self {
        let mut f = Self::tcp(src, dport, 0, payload);
        f.l4 = L4::Udp { dport };
        f
    }

    /// A TCP segment with data (PSH|ACK): one request in `payload` mode.
    pub fn request(src: &str, dport: u16) -> Self {
        Self::tcp(
            src,
            dport,
            TCP_PSH | TCP_ACK,
            b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n\r\n",
        )
    }

    pub fn with_vlans(mut self, tags: &[u16]) -> Self {
        self.vlan_tags = tags.to_vec();
        self
    }

    /// A packet of another IP protocol (ICMP, say) carrying `payload` as its whole body.
    pub fn other(src: &str, proto: u8, payload: &[u8]) -> Self {
        let mut f = Self::tcp(src, 0, 0, payload);
        f.l4 = L4::Other(proto);
        f
    }

    /// IPv4 options of `len` bytes (a multiple of 4, at most 40), filled with NOPs.
    pub fn with_ipv4_options(mut self, len: usize) -> Self {
        self.ipv4_options = len;
        self
    }

    /// Marks an IPv4 packet as a fragment at `offset` (8-byte units), with more-fragments set
    /// as given.
    pub fn with_v4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.v4_fragment = Some((offset, more));
        self
    }

    /// IPv6 extension headers in order, as (protocol number, length in bytes).
    pub fn with_v6_extensions(mut self, extensions: &[(u8, usize)]) -> Self {
        self.v6_extensions = extensions.to_vec();
        self
    }

    /// The offset (8-byte units) written into the IPv6 fragment header.
    pub fn with_v6_fragment_offset(mut self, offset: u16) -> Self {
        self.v6_fragment_offset = offset;
        self
    }

    /// Sets the more-fragments flag of the IPv6 fragment header.
    pub fn with_v6_more_fragments(mut self) -> Self {
        self.v6_more_fragments = true;
        self
    }

    /// TCP options of `len` bytes (a multiple of 4, at most 40).
    pub fn with_tcp_options(mut self, len: usize) -> Self {
        if let L4::Tcp { options, .. } = &mut self.l4 {
            *options = len;
        }
        self
    }

    /// Where the IP header starts in `build()`'s output.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlan_tags.len()
    }

    /// Where the source address sits in `build()`'s output, so a flood can rewrite it in place.
    pub fn src_offset(&self) -> usize {
        self.l3_offset() + if self.src.is_ipv4() { 12 } else { 8 }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let proto = match &self.l4 {
            L4::Tcp {
                dport,
                flags,
                options,
            } => {
                assert!(options.is_multiple_of(4) && *options <= 40);
                l4.extend_from_slice(&40000u16.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                l4.push((((20 + options) / 4) as u8) << 4);
                l4.push(*flags);
                l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
                l4.extend(std::iter::repeat_n(1u8, *options)); // NOPs
                6
            }
            L4::Udp { dport } => {
                l4.extend_from_slice(&40000u16.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                17
            }
            L4::Other(p) => *p,
        };
        l4.extend_from_slice(&self.payload);

        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let ether_type = if self.src.is_ipv4() {
            ETH_P_IPV4
        } else {
            ETH_P_IPV6
        };
        let mut types: Vec<u16> = Vec::new();
        for (i, _) in self.vlan_tags.iter().enumerate() {
            types.push(if i == 0 && self.vlan_tags.len() > 1 {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            });
        }
        types.push(ether_type);
        frame.extend_from_slice(&types[0].to_be_bytes());
        for (i, vid) in self.vlan_tags.iter().enumerate() {
            frame.extend_from_slice(&vid.to_be_bytes());
            frame.extend_from_slice(&types[i + 1].to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert!(self.ipv4_options.is_multiple_of(4) && self.ipv4_options <= 40);
                let hl = 20 + self.ipv4_options;
                frame.push(0x40 | (hl / 4) as u8);
                frame.push(0);
                frame.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                frame.extend_from_slice(&[0x12, 0x34]);
                let frags = match self.v4_fragment {
                    None => 0u16,
                    Some((offset, more)) => offset | if more { 0x2000 } else { 0 },
                };
                frame.extend_from_slice(&frags.to_be_bytes());
                frame.push(64);
                frame.push(proto);
                frame.extend_from_slice(&[0, 0]);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                frame.extend(std::iter::repeat_n(1u8, self.ipv4_options));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext_len: usize = self.v6_extensions.iter().map(|(_, l)| l).sum();
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                frame.push(self.v6_extensions.first().map_or(proto, |(p, _)| *p));
                frame.push(64);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                for (i, (kind, len)) in self.v6_extensions.iter().enumerate() {
                    let next = self.v6_extensions.get(i + 1).map_or(proto, |(p, _)| *p);
                    let mut ext = vec![0u8; *len];
                    ext[0] = next;
                    if *kind == 44 {
                        assert_eq!(*len, 8);
                        let field = self.v6_fragment_offset << 3 | self.v6_more_fragments as u16;
                        ext[2..4].copy_from_slice(&field.to_be_bytes());
                    } else if *kind == IPPROTO_AH {
                        // AH counts 4-byte words, less 2; in IPv6 it spans whole 8-byte units.
                        assert!(len.is_multiple_of(8) && *len >= 16);
                        ext[1] = (len / 4 - 2) as u8;
                    } else {
                        assert!(len.is_multiple_of(8) && *len >= 8);
                        ext[1] = (len / 8 - 1) as u8;
                    }
                    frame.extend_from_slice(&ext);
                }
            }
            _ => panic!("source and destination must be the same family"),
        }
        frame.extend_from_slice(&l4);
        frame
    }
}
