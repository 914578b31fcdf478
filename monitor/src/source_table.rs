//! User space's read-only view of the kernel's source table (`MON_SOURCES`, laid out by
//! `monitor_common::table`): a shared mapping of the array, so reading a million sources costs
//! memory reads, not syscalls, and a sampler can stop and resume anywhere.
//!
//! Slots are copied out with volatile reads while the kernel updates them, so one slot's
//! fields may come from two moments (its counters a packet apart from its state). Readers use
//! them for reports, never to write back.

use std::{io, sync::Arc};

use monitor_common::{
    addr::AddrKey,
    maps::Bucket,
    table::{BANNED, CLAIMING, SourceSet, SourceSlot, TableShape, is_empty},
};

/// A shared read-only mapping of `MON_SOURCES`.
pub struct SourceTable {
    ptr: *const SourceSet,
    len: usize,
    shape: TableShape,
}

// SAFETY: the mapping is read-only and lives until drop; every read is a volatile copy.
unsafe impl Send for SourceTable {}
unsafe impl Sync for SourceTable {}

impl SourceTable {
    /// Maps the table behind `fd` (an array map created with `BPF_F_MMAPABLE` and
    /// `shape.sets` entries).
    pub fn map(fd: i32, shape: TableShape) -> io::Result<Arc<Self>> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = shape.sets as usize * std::mem::size_of::<SourceSet>();
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: maps the array's value area, which the kernel rounds up to whole pages;
        // the mapping keeps the map alive until munmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Self {
            ptr: ptr.cast(),
            len,
            shape,
        }))
    }

    pub fn shape(&self) -> TableShape {
        self.shape
    }

    /// A copy of set `index` (None past the end).
    pub fn set(&self, index: u32) -> Option<SourceSet> {
        if index >= self.shape.sets {
            return None;
        }
        // SAFETY: `index` is within the mapped sets; the kernel may be writing, so the copy is
        // volatile (see the module docs on torn slots).
        Some(unsafe { std::ptr::read_volatile(self.ptr.add(index as usize)) })
    }

    /// The slot holding `key`, if the kernel tracks it (in its first set or its second).
    pub fn find(&self, key: &AddrKey) -> Option<SourceSlot> {
        self.shape.sets_of(key)?.into_iter().find_map(|index| {
            self.set(index)?
                .slots
                .into_iter()
                .find(|slot| slot.key == *key && holds_source(slot))
        })
    }

    /// Appends the tracked sources of sets `from..` until `out` has grown by at least
    /// `min_entries` or the table ends; returns the next set to read (`shape.sets` at the end).
    pub fn read_from(
        &self,
        from: u32,
        min_entries: usize,
        out: &mut Vec<(AddrKey, Bucket)>,
    ) -> u32 {
        let start = out.len();
        let mut index = from;
        while let Some(set) = self.set(index) {
            index += 1;
            for slot in &set.slots {
                if holds_source(slot) {
                    out.push((slot.key, report(slot)));
                }
            }
            if out.len() - start >= min_entries {
                break;
            }
        }
        index
    }

    /// The sets that result from putting `entries` into the table as it is now: each key into
    /// its own slot if it has one, else the first empty slot of its two sets. Returns the changed sets
    /// and how many entries found their set full (left out). For tests and benchmarks that
    /// pre-fill a table; writing whole sets back races with the kernel's updates of them.
    pub fn place(&self, entries: &[(AddrKey, SourceSlot)]) -> (Vec<(u32, SourceSet)>, usize) {
        let mut sets: std::collections::BTreeMap<u32, SourceSet> = Default::default();
        let mut left_out = 0;
        for (key, slot) in entries {
            let Some(choices) = self.shape.sets_of(key) else {
                left_out += 1;
                continue;
            };
            for index in choices {
                sets.entry(index)
                    .or_insert_with(|| self.set(index).unwrap_or_default());
            }
            // The kernel's order: the key's own slot in either set, else an empty slot of the
            // first set, else of the second.
            let own = choices.into_iter().find_map(|index| {
                let way = sets[&index]
                    .slots
                    .iter()
                    .position(|s| s.key == *key && !is_empty(s))?;
                Some((index, way))
            });
            let free = || {
                choices.into_iter().find_map(|index| {
                    let way = sets[&index].slots.iter().position(is_empty)?;
                    Some((index, way))
                })
            };
            match own.or_else(free) {
                Some((index, way)) => {
                    if let Some(set) = sets.get_mut(&index) {
                        set.slots[way] = SourceSlot { key: *key, ..*slot };
                    }
                }
                None => left_out += 1,
            }
        }
        (sets.into_iter().collect(), left_out)
    }

    /// Every tracked source.
    pub fn all(&self) -> Vec<(AddrKey, Bucket)> {
        let mut out = Vec::new();
        self.read_from(0, usize::MAX, &mut out);
        out
    }
}

impl Drop for SourceTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast_mut().cast(), self.len) };
    }
}

/// Whether a slot holds a source (not empty, and not half-written by a claim in progress).
fn holds_source(slot: &SourceSlot) -> bool {
    !is_empty(slot) && slot.tat_ns != CLAIMING
}

/// A slot as the reports see a source: its counters widened, its ban (if the slot holds one)
/// as `ban_until_ns` and its limiter state as `tat_ns` (0 while banned: a ban replaces the
/// state). `last_event_ns` is not kept per slot (the kernel spaces events in a map of its
/// own) and reads 0.
pub fn report(slot: &SourceSlot) -> Bucket {
    let banned = slot.tat_ns & BANNED != 0;
    Bucket {
        tat_ns: if banned { 0 } else { slot.tat_ns },
        ban_until_ns: if banned { slot.tat_ns & !BANNED } else { 0 },
        last_event_ns: 0,
        requests: u64::from(slot.requests),
        refused: u64::from(slot.refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_slot_reports_its_deadline_and_no_state() {
        let slot = SourceSlot {
            key: AddrKey::from_v4([192, 0, 2, 1]),
            tat_ns: BANNED | 5_000,
            requests: 7,
            refused: 3,
        };
        let b = report(&slot);
        assert_eq!(
            (b.tat_ns, b.ban_until_ns, b.requests, b.refused),
            (0, 5_000, 7, 3)
        );
        let plain = report(&SourceSlot {
            tat_ns: 9_000,
            ..slot
        });
        assert_eq!((plain.tat_ns, plain.ban_until_ns), (9_000, 0));
    }
}
