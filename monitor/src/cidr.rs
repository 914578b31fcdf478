//! CIDR prefixes as operators write them (`203.0.113.0/24`, `2001:db8::/48`, or a bare
//! address), and their form in the kernel's maps: IPv4 in mapped space for source keys, and a
//! family-tagged key in the allow/deny tries so that the families never match each other.

use std::{fmt, net::IpAddr, str::FromStr};

use monitor_common::addr::{AddrKey, AddrMask, LIST_FAMILY_BITS, ListAddr, V4_MAPPED_BITS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(
        "invalid CIDR {0:?}: expected an address or ADDRESS/LENGTH, e.g. 203.0.113.0/24 or 2001:db8::/48"
    )]
    Syntax(String),
    #[error("invalid CIDR {input:?}: prefix length {len} is over {max} for this address family")]
    Length { input: String, len: u32, max: u8 },
    #[error("invalid CIDR {input:?}: host bits are set; did you mean {suggestion}?")]
    HostBits { input: String, suggestion: String },
    #[error(
        "invalid CIDR {input:?}: an IPv4-mapped IPv6 range never matches (Linux drops IPv6 packets from such sources); write it as IPv4: {suggestion}"
    )]
    V4Mapped { input: String, suggestion: String },
}

impl Cidr {
    /// The prefix as a key of the whole 128-bit mapped space and its length there.
    pub fn to_mapped(&self) -> (AddrKey, u32) {
        match self.addr {
            IpAddr::V4(v4) => (
                AddrKey::from_v4(v4.octets()),
                (V4_MAPPED_BITS + self.len) as u32,
            ),
            IpAddr::V6(v6) => (AddrKey::from_v6(v6.octets()), self.len as u32),
        }
    }

    /// The inverse of `to_mapped` (IPv4-mapped keys become IPv4 prefixes).
    pub fn from_mapped(key: &AddrKey, mapped_len: u32) -> Self {
        if key.is_v4() && mapped_len >= V4_MAPPED_BITS as u32 {
            let a = &key.addr;
            Self {
                addr: IpAddr::from([a[12], a[13], a[14], a[15]]),
                len: (mapped_len - V4_MAPPED_BITS as u32) as u8,
            }
        } else {
            Self {
                addr: IpAddr::from(key.addr),
                len: mapped_len.min(128) as u8,
            }
        }
    }

    /// The prefix as an allow/deny trie key: (family tag, mapped address) and its length there.
    pub fn to_list_key(&self) -> (ListAddr, u32) {
        let (key, mapped_len) = self.to_mapped();
        let list = ListAddr::new(&key, self.addr.is_ipv4());
        (list, LIST_FAMILY_BITS + mapped_len)
    }

    /// The inverse of `to_list_key`; `None` for a key this program never writes.
    pub fn from_list_key(key: &ListAddr, len: u32) -> Option<Self> {
        let mapped_len = len.checked_sub(LIST_FAMILY_BITS)?;
        let addr = AddrKey { addr: key.addr };
        if key.is_v4() {
            if mapped_len < V4_MAPPED_BITS as u32 || !addr.is_v4() {
                return None;
            }
        } else if key.family != monitor_common::addr::family::V6 {
            return None;
        }
        let cidr = if key.is_v4() {
            Self::from_mapped(&addr, mapped_len)
        } else {
            Self {
                addr: IpAddr::from(key.addr),
                len: mapped_len.min(128) as u8,
            }
        };
        Some(cidr)
    }

    /// A masked kernel key (source or aggregate) with its prefix length in family terms.
    pub fn from_key(key: &AddrKey, family_len: u8) -> Self {
        if key.is_v4() {
            Self::from_mapped(key, (V4_MAPPED_BITS + family_len.min(32)) as u32)
        } else {
            Self::from_mapped(key, family_len.min(128) as u32)
        }
    }

    /// Whether `addr` lies in the prefix; never across families (`::/0` holds no IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        if self.addr.is_ipv4() != addr.is_ipv4() {
            return false;
        }
        let (net, len) = self.to_mapped();
        let (other, _) = Cidr {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
        .to_mapped();
        other.masked(&AddrMask::from_bits(len as u8)) == net
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        let (addr_part, len_part) = match trimmed.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (trimmed, None),
        };
        let addr: IpAddr = addr_part
            .parse()
            .map_err(|_| CidrError::Syntax(input.to_string()))?;
        let max = if addr.is_ipv4() { 32u8 } else { 128 };
        let len = match len_part {
            None => max,
            Some(l) => {
                let len: u32 = l
                    .parse()
                    .map_err(|_| CidrError::Syntax(input.to_string()))?;
                if len > max as u32 {
                    return Err(CidrError::Length {
                        input: input.to_string(),
                        len,
                        max,
                    });
                }
                len as u8
            }
        };
        let cidr = Cidr { addr, len };
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            // Inside ::ffff:0:0/96: no IPv6 source lives there, so say what was meant.
            let suggestion = Cidr {
                addr: IpAddr::V4(v4),
                len: len.saturating_sub(V4_MAPPED_BITS),
            };
            return Err(CidrError::V4Mapped {
                input: input.to_string(),
                suggestion: suggestion.to_string(),
            });
        }
        let (key, mapped_len) = cidr.to_mapped();
        let masked = key.masked(&AddrMask::from_bits(mapped_len as u8));
        if masked != key {
            let suggestion = Cidr::from_mapped(&masked, mapped_len);
            return Err(CidrError::HostBits {
                input: input.to_string(),
                suggestion: suggestion.to_string(),
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_bare_addresses() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "203.0.113.0/24");
        assert_eq!(c.to_mapped().1, 120);
        let c: Cidr = "2001:db8::/48".parse().unwrap();
        assert_eq!(c.to_mapped().1, 48);
        let c: Cidr = "198.51.100.7".parse().unwrap();
        assert_eq!(c.len, 32);
        assert!(c.contains("198.51.100.7".parse().unwrap()));
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_input_with_one_line() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "2001:db8::/129",
            "300.1.1.1",
            "x/8",
            "10.0.0.1/24",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(
            "10.0.0.1/24".parse::<Cidr>().unwrap_err().to_string(),
            "invalid CIDR \"10.0.0.1/24\": host bits are set; did you mean 10.0.0.0/24?"
        );
    }

    #[test]
    fn families_never_contain_each_other() {
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(!all6.contains("203.0.113.7".parse().unwrap()));
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(!all4.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!all4.contains("::1".parse().unwrap()));
        // The trie keys differ in the family tag, which every prefix covers in full.
        let (k6, l6) = all6.to_list_key();
        let (k4, l4) = all4.to_list_key();
        assert_eq!((l6, l4), (32, 32 + 96));
        assert_ne!(k6.family, k4.family);
    }

    #[test]
    fn v4_mapped_ranges_are_refused_with_the_ipv4_form() {
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap_err(),
            CidrError::V4Mapped {
                input: "::ffff:10.0.0.0/104".into(),
                suggestion: "10.0.0.0/8".into()
            }
        );
        assert!(
            "::ffff:0:0/96"
                .parse::<Cidr>()
                .unwrap_err()
                .to_string()
                .contains("0.0.0.0/0")
        );
        // A range that merely contains the mapped space is an ordinary IPv6 range.
        assert!("::/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn list_key_round_trip() {
        for text in [
            "0.0.0.0/0",
            "192.0.2.0/24",
            "198.51.100.7/32",
            "::/0",
            "2001:db8::/48",
        ] {
            let c: Cidr = text.parse().unwrap();
            let (key, len) = c.to_list_key();
            assert_eq!(Cidr::from_list_key(&key, len), Some(c), "{text}");
        }
    }

    #[test]
    fn key_round_trip() {
        let key = AddrKey::from_v4([192, 0, 2, 0]);
        assert_eq!(Cidr::from_key(&key, 24).to_string(), "192.0.2.0/24");
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        assert_eq!(
            Cidr::from_key(&AddrKey::from_v6(a), 64).to_string(),
            "2001::/64"
        );
    }
}
