//! Frames for the benchmark: Ethernet, an optional 802.1Q tag, IPv4 or IPv6, UDP or TCP, with
//! correct checksums (the receiving stack verifies them, and GRO flushes on bad ones).

use std::net::IpAddr;

/// The source port of every frame.
pub const SPORT: u16 = 40000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp,
    /// A bare SYN (no payload).
    Syn,
    /// A PSH|ACK segment carrying the payload (an HTTP request line in `http` mode).
    Data,
}

pub struct Built {
    pub bytes: Vec<u8>,
    /// Offset of the L4 checksum from the frame start (for the generator's incremental fix).
    pub l4_csum_off: usize,
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_be(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum()
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    src: IpAddr,
    dst: IpAddr,
    vlan: Option<u16>,
    l4: L4,
    dport: u16,
    payload: &[u8],
) -> Built {
    let mut seg = Vec::new();
    let proto = match l4 {
        L4::Udp => {
            seg.extend_from_slice(&SPORT.to_be_bytes());
            seg.extend_from_slice(&dport.to_be_bytes());
            seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
            seg.extend_from_slice(payload);
            17u8
        }
        L4::Syn | L4::Data => {
            seg.extend_from_slice(&SPORT.to_be_bytes());
            seg.extend_from_slice(&dport.to_be_bytes());
            seg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, if l4 == L4::Syn { 0 } else { 1 }]);
            seg.push(5 << 4);
            seg.push(if l4 == L4::Syn { 0x02 } else { 0x18 });
            seg.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            if l4 == L4::Data {
                seg.extend_from_slice(payload);
            }
            6u8
        }
    };
    let csum_in_seg = if proto == 17 { 6 } else { 16 };
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    let mut c = fold(sum_be(&pseudo) + sum_be(&seg));
    if c == 0 {
        c = 0xffff;
    }
    seg[csum_in_seg..csum_in_seg + 2].copy_from_slice(&c.to_be_bytes());

    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let ethertype: u16 = if src.is_ipv4() { 0x0800 } else { 0x86dd };
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = f.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = fold(sum_be(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!(),
    }
    let l4_off = f.len();
    f.extend_from_slice(&seg);
    let _ = l3;
    Built {
        bytes: f,
        l4_csum_off: l4_off + csum_in_seg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_header_checksum_verifies() {
        let b = build(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            None,
            L4::Udp,
            8443,
            &[0; 18],
        );
        assert_eq!(b.bytes.len(), 60);
        assert_eq!(fold(sum_be(&b.bytes[14..34])), 0);
    }
}
