//! The source table's layout, placement and eviction score, shared by the kernel program (which
//! probes and updates it), the daemon (which reads it) and the tests (which fill it).
//!
//! **Why not a hash map.** At a million sources every packet's lookup misses the cache. The
//! kernel's LRU hash costs several dependent misses per lookup (bucket, element, LRU
//! bookkeeping) and 127 bytes per source; issue 12 measured a set-associative prototype at
//! 1.45-2.19x its packet rate at a million sources.
//!
//! **Layout.** One array map (`MON_SOURCES`) of [`SourceSet`]s. A set is [`SOURCE_WAYS`] slots
//! of 32 bytes: 128 bytes, two adjacent cache lines, which the map's page-aligned storage
//! (`BPF_F_MMAPABLE`) keeps 128-byte aligned, so one probe costs one memory round trip (x86's
//! adjacent-line prefetcher fetches the pair). A source may live in either of two sets
//! (`sets_of(key)`, from a keyed hash with a seed drawn at load and kept with the table, so an
//! attacker who reads this code cannot aim addresses at a set without first learning the
//! seed): its first choice, probed first, and its second, probed only when the first does not
//! hold it.
//!
//! **A slot** holds the masked source address, its GCRA state and two wrapping 32-bit counters.
//! A ban lives in the state itself: [`BANNED`] set means "banned until the rest", so a banned
//! source still costs one probe. The authoritative ban is in `MON_BANS` (a plain hash: a flood
//! cannot evict it), which the kernel reads when a source has no slot.
//!
//! **Capacity.** 7/4 slots ([`SLOTS_PER_SOURCE_X4`] / 4) per source the operator asks for
//! (`--max-sources`): 56 bytes a source. With one set per source, a table filled to that many
//! sources would leave 6.5% of them without a slot (the sets that drew more than four: the
//! tail of a Poisson distribution of mean 16/7); with two, a new source takes an empty slot of
//! its first set, else of its second, and a simulation left out 0.81% (500,000 sources in
//! 218,750 sets; at two slots a source, 0.37% for 64 bytes). Most sources are found by the
//! first probe.
//!
//! **Claiming a slot** (a new source): the slot with the lowest [`eviction_score`] of its two
//! sets is taken, the first set's on a tie (so empty slots fill the first set first). The score
//! is how far the slot's state runs ahead of now, its debt: a source at its limit is in debt by
//! about its tolerance, a spoofed one-packet source by one interval, decaying; an empty slot or
//! one with no debt loses nothing when taken. Banned slots rank above every unbanned one. So a
//! spoofed flood that fills a set takes the slots of quiet sources first; a source taken while
//! in debt leaves its state in the kernel's `MON_PAROLE` map, which it resumes when it comes
//! back.
//!
//! **Concurrency.** A claimer swaps the victim's state to [`CLAIMING`] with a
//! compare-and-swap, writes key and counters, then stores the new state; a CPU that finds its
//! key with the state `CLAIMING` fails open. Updates of the state are compare-and-swaps
//! against the value read, so an update that raced with a claim fails and is not applied to
//! the new owner. Two CPUs claiming a slot for the same new key at the same instant would
//! both succeed (two slots, each admitting its first request), so the kernel serializes claims
//! by a lock word per first set and probes again under it (`sources::admit_new`).

use crate::addr::AddrKey;

/// Slots per set: 4 × 32 bytes = 128 bytes, two cache lines.
pub const SOURCE_WAYS: usize = 4;
/// Slots per four sources the operator asks for (`--max-sources`): 7/4 slots a source.
pub const SLOTS_PER_SOURCE_X4: u32 = 7;
/// In [`SourceSlot::tat_ns`]: the source is banned until the remaining bits (monotonic ns).
pub const BANNED: u64 = 1 << 63;
/// In [`SourceSlot::tat_ns`]: another CPU is writing this slot for a new source.
pub const CLAIMING: u64 = u64::MAX;

/// One tracked source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    /// The masked source address; all zero with `tat_ns` 0 is an empty slot.
    pub key: AddrKey,
    /// GCRA theoretical arrival time (see `rate`), or [`BANNED`] | deadline, or [`CLAIMING`].
    /// Changed only by compare-and-swap.
    pub tat_ns: u64,
    /// Requests counted (admitted or refused), wrapping. Plain increments: reporting only.
    pub requests: u32,
    /// Requests refused, wrapping.
    pub refused: u32,
}

/// One set of the source table (one element of the `MON_SOURCES` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet {
    pub slots: [SourceSlot; SOURCE_WAYS],
}

/// Where a table lives and how keys are placed in it: carried in every `Config`, so the
/// kernel reads it with the config it already has in hand.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    /// The keyed hash's seed, drawn when the table is created and kept with it.
    pub seed: u64,
    /// Sets in `MON_SOURCES` (its max entries); 0 = no table (sources are not limited).
    pub sets: u32,
    pub _pad: u32,
}

impl TableShape {
    /// The shape of a table for `max_sources` sources.
    pub const fn for_sources(max_sources: u32, seed: u64) -> Self {
        Self {
            seed,
            sets: sets_for(max_sources),
            _pad: 0,
        }
    }

    /// How many sources this table was sized for (what `--max-sources` said, rounded up to a
    /// whole set).
    pub const fn capacity(&self) -> u32 {
        let sources = self.sets as u64 * SOURCE_WAYS as u64 * 4 / SLOTS_PER_SOURCE_X4 as u64;
        if sources > u32::MAX as u64 {
            u32::MAX
        } else {
            sources as u32
        }
    }

    /// The two sets `key` may live in (its first choice, then its second), or None for a
    /// table with no sets. They are the same set for one key in `sets`.
    #[inline(always)]
    pub fn sets_of(&self, key: &AddrKey) -> Option<[u32; 2]> {
        if self.sets == 0 {
            return None;
        }
        let h = key_hash(key, self.seed);
        // Multiply-shift maps each half of the hash onto any number of sets without a modulo.
        let sets = self.sets as u64;
        Some([
            (((h >> 32) * sets) >> 32) as u32,
            (((h & 0xffff_ffff) * sets) >> 32) as u32,
        ])
    }
}

/// Sets for a table of `max_sources` sources ([`SLOTS_PER_SOURCE_X4`] / 4 slots each).
pub const fn sets_for(max_sources: u32) -> u32 {
    let slots_x4 = (max_sources as u64) * SLOTS_PER_SOURCE_X4 as u64;
    let sets = slots_x4.div_ceil(4 * SOURCE_WAYS as u64);
    if sets == 0 {
        1
    } else if sets > u32::MAX as u64 {
        u32::MAX
    } else {
        sets as u32
    }
}

/// A keyed mix of the key's two words (multiply-xorshift, as in splitmix64). Not a
/// cryptographic hash: its job is to spread real and spoofed addresses evenly over the sets,
/// and, with the seed unknown, to leave an attacker no cheaper way to fill one set than
/// sending from many addresses and hoping.
#[inline(always)]
pub fn key_hash(key: &AddrKey, seed: u64) -> u64 {
    let (hi, lo) = key.words();
    let mut x = (hi ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= lo ^ seed.rotate_left(29);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether a slot holds nothing (never used).
#[inline(always)]
pub fn is_empty(slot: &SourceSlot) -> bool {
    slot.tat_ns == 0 && slot.key.words() == (0, 0)
}

/// How much is lost by giving this slot to another source: the lowest-scoring slot of a full
/// set is taken. Empty slots and sources with no debt score at most 0; a source in debt
/// scores its debt in ns; banned slots score above all of those, and a slot being claimed is
/// never taken.
#[inline(always)]
pub fn eviction_score(tat_ns: u64, now: u64) -> i64 {
    if tat_ns == CLAIMING {
        return i64::MAX;
    }
    if tat_ns & BANNED != 0 {
        return i64::MAX - 1;
    }
    // Debt is below 2^63 for any real state (it is bounded by the tolerance).
    (tat_ns as i64).wrapping_sub(now as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn the_table_is_56_bytes_a_source_in_sets_of_128_bytes() {
        assert_eq!(core::mem::size_of::<SourceSlot>(), 32);
        assert_eq!(core::mem::size_of::<SourceSet>(), 128);
        assert_eq!(sets_for(1_000_000), 437_500);
        assert_eq!(sets_for(1_000_000) as u64 * 128, 56_000_000);
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(0), 1);
        assert_eq!(sets_for(u32::MAX), 1_879_048_192);
        for sources in [4096, 8192, 1_000_000] {
            assert_eq!(TableShape::for_sources(sources, 0).capacity(), sources);
        }
        // Rounded up to a whole set.
        assert_eq!(TableShape::for_sources(3, 0).capacity(), 4);
    }

    #[test]
    fn sources_spread_evenly_over_the_sets() {
        // 200,000 consecutive IPv4 addresses (what a spoofer walking a range sends) over
        // 50,000 sets, by either choice: the fullest set should hold no more than a Poisson
        // tail allows, and the two choices should be independent.
        let shape = TableShape {
            seed: 0x1234_5678_9abc_def0,
            sets: 50_000,
            _pad: 0,
        };
        for choice in 0..2 {
            let mut fill = std::vec![0u32; shape.sets as usize];
            for i in 0..200_000u32 {
                let key = AddrKey::from_v4((0x0a00_0000 + i).to_be_bytes());
                fill[shape.sets_of(&key).unwrap()[choice] as usize] += 1;
            }
            let max = *fill.iter().max().unwrap();
            let empty = fill.iter().filter(|&&n| n == 0).count();
            // Poisson(4): P(X >= 17) is about 1e-6 per set; P(X = 0) = 1.8%.
            assert!(max <= 16, "fullest set holds {max}");
            assert!((500..1400).contains(&empty), "{empty} empty sets of 50,000");
        }
        let same = (0..200_000u32)
            .map(|i| shape.sets_of(&AddrKey::from_v4((0x0a00_0000 + i).to_be_bytes())))
            .filter(|s| s.unwrap()[0] == s.unwrap()[1])
            .count();
        // One key in 50,000 draws the same set twice.
        assert!(same < 20, "{same} keys drew one set twice");
    }

    #[test]
    fn the_seed_decides_the_set() {
        let key = AddrKey::from_v4([192, 0, 2, 1]);
        let sets: Vec<u32> = (0..64u64)
            .map(|seed| TableShape::for_sources(1 << 20, seed.wrapping_mul(0x9e37_79b9)))
            .map(|shape| shape.sets_of(&key).unwrap()[0])
            .collect();
        let distinct = sets.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 60, "{distinct} distinct sets for 64 seeds");
    }

    #[test]
    fn loud_sources_outrank_quiet_ones_and_bans_outrank_both() {
        let now = 10_000_000_000;
        let quiet = eviction_score(now - 5, now);
        let spoofed_once = eviction_score(now + 1_000_000, now);
        let loud = eviction_score(now + 9_000_000_000, now);
        let banned = eviction_score(BANNED | (now + 1), now);
        assert!(eviction_score(0, now) < quiet);
        assert!(quiet < spoofed_once && spoofed_once < loud && loud < banned);
        assert!(banned < eviction_score(CLAIMING, now));
    }
}
