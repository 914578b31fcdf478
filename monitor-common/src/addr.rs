//! Source addresses as map keys.
//!
//! IPv4 is stored as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one hash map and one
//! LPM trie serve both families, and an IPv4 prefix of length `L` is the mapped prefix `96 + L`.

/// Bytes 0..12 of every IPv4-mapped IPv6 address.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
/// Length of the `::ffff:0:0/96` prefix that IPv4 addresses live under.
pub const V4_MAPPED_BITS: u8 = 96;

/// A (masked) source address, IPv4 in mapped form. Used as the key of the source, aggregate
/// and ban maps, and as the data of LPM trie keys.
///
/// Aligned to 8 so that the kernel program masks and hashes it as two words: BPF forbids
/// misaligned stack access, and without the alignment LLVM moves the key byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
}

impl AddrKey {
    // The constructors assemble the two words in registers and store them whole: building
    // the key byte by byte and then reading it back as words (to mask and hash it) stalls on
    // store forwarding, which showed as the hottest instruction of the kernel program.

    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let lo = u64::from_ne_bytes([0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]);
        Self::from_words(0, lo)
    }

    pub const fn from_v6(addr: [u8; 16]) -> Self {
        let hi = u64::from_ne_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let lo = u64::from_ne_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]);
        Self::from_words(hi, lo)
    }

    /// The key whose bytes are the native-endian bytes of `hi` then `lo`.
    #[inline(always)]
    pub const fn from_words(hi: u64, lo: u64) -> Self {
        // SAFETY: [u64; 2] and [u8; 16] have the same size and every bit pattern is valid.
        Self {
            addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([hi, lo]) },
        }
    }

    pub fn is_v4(&self) -> bool {
        self.addr[..12] == V4_MAPPED_PREFIX
    }

    /// This address with everything after the first `bits` bits cleared (bits over the whole
    /// 128-bit mapped space).
    #[inline(always)]
    pub fn masked(&self, mask: &AddrMask) -> Self {
        // SAFETY: [u8; 16] and [u64; 2] have the same size and every bit pattern is valid.
        let [hi, lo]: [u64; 2] = unsafe { core::mem::transmute(self.addr) };
        Self::from_words(hi & mask.hi, lo & mask.lo)
    }
}

/// A prefix mask over the 128-bit mapped space, as two native-endian words of the address
/// bytes, so the kernel masks a key with two ANDs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrMask {
    pub hi: u64,
    pub lo: u64,
}

impl AddrMask {
    /// The mask keeping the first `bits` (0..=128, clamped) of a 16-byte address.
    pub const fn from_bits(bits: u8) -> Self {
        let bits = if bits > 128 { 128 } else { bits };
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let remaining = bits as i32 - (i as i32) * 8;
            bytes[i] = if remaining >= 8 {
                0xff
            } else if remaining <= 0 {
                0
            } else {
                0xffu8 << (8 - remaining)
            };
            i += 1;
        }
        let hi = u64::from_ne_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]);
        let lo = u64::from_ne_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
        ]);
        Self { hi, lo }
    }

    /// The mask for an IPv4 prefix length (0..=32), in mapped space.
    pub const fn v4(len: u8) -> Self {
        let len = if len > 32 { 32 } else { len };
        Self::from_bits(V4_MAPPED_BITS + len)
    }

    /// The mask for an IPv6 prefix length (0..=128).
    pub const fn v6(len: u8) -> Self {
        Self::from_bits(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mask_keeps_mapped_marker_and_network() {
        let key = AddrKey::from_v4([203, 0, 113, 77]);
        assert!(key.is_v4());
        assert_eq!(
            key.masked(&AddrMask::v4(24)),
            AddrKey::from_v4([203, 0, 113, 0])
        );
        assert_eq!(key.masked(&AddrMask::v4(32)), key);
        assert_eq!(key.masked(&AddrMask::v4(0)), AddrKey::from_v4([0, 0, 0, 0]));
    }

    #[test]
    fn v6_mask_clears_host_bits() {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[7] = 0xab;
        a[8] = 0xcd;
        a[15] = 1;
        let key = AddrKey::from_v6(a);
        let mut want = a;
        want[8..].fill(0);
        assert_eq!(key.masked(&AddrMask::v6(64)).addr, want);
        want[6..].fill(0);
        assert_eq!(key.masked(&AddrMask::v6(48)).addr, want);
        let m = AddrMask::v6(61);
        let mut w = [0u8; 16];
        w[0] = 0x20;
        w[1] = 0x01;
        w[7] = 0xa8;
        assert_eq!(key.masked(&m).addr, w);
    }
}
