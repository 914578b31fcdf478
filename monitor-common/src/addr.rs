//! Source addresses as map keys.
//!
//! IPv4 is stored as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one hash map serves
//! both families. The families never meet in it: the kernel program does not take an IPv6
//! packet whose source is IPv4-mapped as an IPv6 source (Linux drops those in `ip6_rcv_core`),
//! so only IPv4 packets make keys under `::ffff:0:0/96`, whatever the IPv6 prefix length.
//!
//! The allow and deny tries key on [`ListAddr`]: a family tag before the address, so that no
//! IPv6 prefix (not even `::/0`) can contain an IPv4 source, and no IPv4 prefix an IPv6 one.

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

    /// Whether the address lies in `::ffff:0:0/96` (IPv4 in mapped form).
    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        // Two word compares: bytes 0..8 are zero and bytes 8..12 are 0, 0, ff, ff.
        const MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        const MARK: u64 = u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        // SAFETY: [u8; 16] and [u64; 2] have the same size and every bit pattern is valid.
        let [hi, lo]: [u64; 2] = unsafe { core::mem::transmute(self.addr) };
        hi == 0 && lo & MASK == MARK
    }

    /// This address with everything after the first `bits` bits cleared (bits over the whole
    /// 128-bit mapped space).
    #[inline(always)]
    pub fn masked(&self, mask: &AddrMask) -> Self {
        let (hi, lo) = self.words();
        Self::from_words(hi & mask.hi, lo & mask.lo)
    }

    /// The key as two native-endian words (the inverse of [`AddrKey::from_words`]).
    #[inline(always)]
    pub const fn words(&self) -> (u64, u64) {
        // SAFETY: [u8; 16] and [u64; 2] have the same size and every bit pattern is valid.
        let [hi, lo]: [u64; 2] = unsafe { core::mem::transmute(self.addr) };
        (hi, lo)
    }
}

/// Family tags of [`ListAddr`].
pub mod family {
    pub const V4: [u8; 4] = [0, 0, 0, 4];
    pub const V6: [u8; 4] = [0, 0, 0, 6];
}

/// Bits of the family tag that lead every allow/deny trie key.
pub const LIST_FAMILY_BITS: u32 = 32;

/// The data of an allow/deny LPM trie key: a family tag, then the address (IPv4 in mapped
/// form). A prefix of `L` bits of one family is the trie prefix `32 + L` (IPv6) or
/// `32 + 96 + L` (IPv4), so it always includes the whole tag and matches only its own family.
/// A packet's source is looked up at the full `LIST_KEY_BITS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListAddr {
    pub family: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix length of a whole address in a list key (tag and 128 address bits).
pub const LIST_KEY_BITS: u32 = LIST_FAMILY_BITS + 128;

impl ListAddr {
    /// The list key of a (mapped) address; `is_v4` comes from the packet, not the address.
    #[inline(always)]
    pub const fn new(key: &AddrKey, is_v4: bool) -> Self {
        Self {
            family: if is_v4 { family::V4 } else { family::V6 },
            addr: key.addr,
        }
    }

    pub fn is_v4(&self) -> bool {
        self.family == family::V4
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
    fn only_mapped_addresses_are_v4() {
        assert!(AddrKey::from_v4([0, 0, 0, 0]).is_v4());
        assert!(AddrKey::from_v4([255, 255, 255, 255]).is_v4());
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        assert!(AddrKey::from_v6(a).is_v4());
        a[11] = 0xfe;
        assert!(!AddrKey::from_v6(a).is_v4());
        a[11] = 0xff;
        a[0] = 0x20;
        assert!(!AddrKey::from_v6(a).is_v4());
        assert!(!AddrKey::from_v6([0; 16]).is_v4());
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
