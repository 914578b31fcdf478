//! The source table (`MON_SOURCES`): finding a source's slot, claiming one for a new source,
//! charging a request to it, bans held in the slot, and the per-key spacing of offender events.
//! The layout, placement and eviction rule are in `monitor_common::table`, shared with user
//! space.
//!
//! What an off-path spoofer can do here: fill sets with addresses of its choosing. Each spoofed
//! address takes the quietest slot of its two sets, so a loud real source keeps its slot unless
//! a new address whose sets are the loud source's finds every other slot there held by a source
//! deeper in debt, which needs each of those to spend about a burst; a source that does lose
//! its slot while in debt finds its state parked in `MON_PAROLE` and resumes it. Aiming at a
//! source's sets needs the seed, drawn when the table is created.
//! docs/kernel.md ("The source table") has the bounds and the tests that show them.

use monitor_common::{
    addr::AddrKey,
    rate::Limit,
    table::{BANNED, CLAIMING, SOURCE_WAYS, SourceSet, SourceSlot, TableShape, eviction_score},
};

use crate::{
    atomic,
    clock::{self, Now},
    limit::{Charge, gcra},
    maps::{
        CLAIM_LOCKS, MON_BANS, MON_CLAIM_LOCKS, MON_EVT_SPACING, MON_PAROLE, MON_PLACE,
        MON_SOURCES, SPACING_ENTRIES,
    },
    policy,
};

/// A source's place in the table, found or claimed.
#[derive(Clone, Copy)]
pub struct Slot {
    ptr: *mut SourceSlot,
}

/// Where a source's lookup ended: its two sets (by index), and the slot that holds it (or
/// none). Plain numbers, so that every outcome of the lookup is one verifier state.
#[derive(Clone, Copy)]
pub struct Place {
    sets: [u32; 2],
    /// `0..2 * SOURCE_WAYS`: the slot holding the key (the first set's ways, then the
    /// second's); `2 * SOURCE_WAYS`: no slot holds it.
    slot: u32,
}

/// Slots of a source's two sets.
const CANDIDATES: usize = 2 * SOURCE_WAYS;

impl Place {
    /// The source's slot, if it has one.
    #[inline(always)]
    pub fn slot(&self) -> Option<Slot> {
        if self.slot as usize >= CANDIDATES {
            return None;
        }
        Some(Slot {
            ptr: self.candidate(self.slot as usize)?,
        })
    }

    /// Candidate slot `i` (`0..CANDIDATES`) of the source's two sets.
    #[inline(always)]
    fn candidate(&self, i: usize) -> Option<*mut SourceSlot> {
        let index = if i < SOURCE_WAYS {
            self.sets[0]
        } else {
            self.sets[1]
        };
        let set = MON_SOURCES.get_ptr_mut(index)?;
        Some(unsafe { &raw mut (*set).slots[i & (SOURCE_WAYS - 1)] })
    }
}

#[inline(always)]
fn key_equals(slot: *const SourceSlot, key: &AddrKey) -> bool {
    let (hi, lo) = key.words();
    let words = unsafe { &raw const (*slot).key } as *const u64;
    unsafe { core::ptr::read_volatile(words) == hi && core::ptr::read_volatile(words.add(1)) == lo }
}

/// The way of `set` that holds `key`, or `SOURCE_WAYS`.
#[inline(always)]
fn find_way(set: *const SourceSet, key: &AddrKey) -> usize {
    let mut way = 0;
    while way < SOURCE_WAYS {
        if key_equals(unsafe { &raw const (*set).slots[way] }, key) {
            break;
        }
        way += 1;
    }
    way
}

/// Probes the key's first set, and its second only when the first does not hold it: one
/// memory round trip for most sources, two for the rest and for new ones. None when the config
/// names no table (not written by a daemon yet).
///
/// The result goes through this CPU's `MON_PLACE` slot and back: the verifier does not track
/// values stored in maps, so the eight "found in slot i" outcomes and "missing" leave here as
/// one state with an unknown slot, instead of nine states that each walk the rest of the
/// program (which took it past its instruction budget).
#[inline(always)]
pub fn lookup(shape: &TableShape, key: &AddrKey) -> Option<Place> {
    probe(shape.sets_of(key)?, key)
}

/// The probe behind [`lookup`], over sets already known.
#[inline(always)]
fn probe(sets: [u32; 2], key: &AddrKey) -> Option<Place> {
    let mut slot = find_way(MON_SOURCES.get_ptr(sets[0])?, key);
    if slot == SOURCE_WAYS {
        slot += find_way(MON_SOURCES.get_ptr(sets[1])?, key);
    }
    let scratch = MON_PLACE.get_ptr_mut(0)?;
    unsafe { core::ptr::write_volatile(scratch, slot as u64) };
    let slot = unsafe { core::ptr::read_volatile(scratch) } as usize;
    Some(Place {
        sets,
        slot: if slot < CANDIDATES { slot } else { CANDIDATES } as u32,
    })
}

impl Slot {
    #[inline(always)]
    fn tat_ptr(&self) -> *mut u64 {
        unsafe { &raw mut (*self.ptr).tat_ns }
    }

    /// Requests counted so far (wrapping), including the one being charged once charged.
    #[inline(always)]
    pub fn requests(&self) -> u32 {
        unsafe { (*self.ptr).requests }
    }

    /// Counts a request refused before charging (a banned source's).
    #[inline(always)]
    pub fn count_refused(&self) {
        self.count_request();
        self.count_refused_only();
    }

    /// Whether the slot holds a ban that still applies. A ban found expired is lifted here:
    /// the slot starts afresh and the authoritative `MON_BANS` entry is deleted.
    #[inline(always)]
    pub fn banned(&self, key: &AddrKey, now: &mut Now) -> bool {
        let tat = atomic::load(self.tat_ptr());
        if tat & BANNED == 0 || tat == CLAIMING {
            return false;
        }
        if now.is_before(tat & !BANNED) {
            return true;
        }
        if atomic::compare_and_swap(self.tat_ptr(), tat, 0) {
            let _ = MON_BANS.remove(key);
        }
        false
    }

    /// Puts a ban in the slot (the caller stored the authoritative one in `MON_BANS`). A plain
    /// store: whatever limiter state it overwrites no longer matters.
    #[inline(always)]
    pub fn ban(&self, until_ns: u64) {
        unsafe { core::ptr::write_volatile(self.tat_ptr(), BANNED | until_ns) };
    }

    /// Lifts a ban held in the slot (the caller deleted the authoritative one): the slot
    /// starts afresh. A slot not banned is left alone.
    #[inline(always)]
    pub fn unban(&self) {
        let tat = atomic::load(self.tat_ptr());
        if tat & BANNED != 0 && tat != CLAIMING {
            let _ = atomic::compare_and_swap(self.tat_ptr(), tat, 0);
        }
    }

    /// Charges a request: counted, then refused on the coarse clock when `step` would refuse
    /// at every instant the fine clock can read (`Limit::refuses_throughout`), reading only;
    /// otherwise the GCRA step on the fine clock. A slot that is being claimed, or holds a ban
    /// (lifted under this CPU's feet), admits: it fails open.
    #[inline(always)]
    pub fn charge(&self, limit: &Limit, now: &mut Now) -> Charge {
        self.count_request();
        let tat = atomic::load(self.tat_ptr());
        if tat & BANNED != 0 {
            return Charge::Admitted;
        }
        if limit.refuses_throughout(tat, now.earliest(), now.latest()) {
            clock::note_coarse_refusal();
            self.count_refused_only();
            return Charge::Refused;
        }
        let charge = gcra(self.tat_ptr(), limit, now.fine());
        if charge == Charge::Refused {
            self.count_refused_only();
        }
        charge
    }

    #[inline(always)]
    fn count_request(&self) {
        unsafe { (*self.ptr).requests = (*self.ptr).requests.wrapping_add(1) };
    }

    #[inline(always)]
    fn count_refused_only(&self) {
        unsafe { (*self.ptr).refused = (*self.ptr).refused.wrapping_add(1) };
    }
}

/// Takes the lowest-scoring slot of the source's two sets (the first set's on a tie) for `key`
/// with state `tat` and counters. Returns the slot, or None when other CPUs won every attempt
/// (the caller fails open).
///
/// A victim that is in debt and has been refused, or is more than `park_debt_ns` in debt (it
/// sent more than one request within its tolerance), leaves its state in `MON_PAROLE`, where
/// its next request finds it (`admit_new`). A spoofed one-packet source is neither.
#[inline(always)]
pub fn claim(
    place: &Place,
    key: &AddrKey,
    tat: u64,
    requests: u32,
    refused: u32,
    now: u64,
    park_debt_ns: u64,
) -> Option<Slot> {
    for _attempt in 0..2 {
        let mut victim = 0usize;
        let mut victim_tat = 0u64;
        let mut victim_score = i64::MAX;
        let mut i = 0;
        while i < CANDIDATES {
            let candidate = place.candidate(i)?;
            let slot_tat = atomic::load(unsafe { &raw const (*candidate).tat_ns });
            let score = eviction_score(slot_tat, now);
            if score < victim_score {
                victim = i;
                victim_tat = slot_tat;
                victim_score = score;
            }
            i += 1;
        }
        if victim_score == i64::MAX {
            return None;
        }
        let slot = place.candidate(victim & (CANDIDATES - 1))?;
        let tat_ptr = unsafe { &raw mut (*slot).tat_ns };
        // Read before the swap: once it succeeds the state was unchanged since the read, so no
        // other claim wrote the key or counters in between.
        let victim_key = unsafe { core::ptr::read_volatile(&raw const (*slot).key) };
        let victim_refused = unsafe { core::ptr::read_volatile(&raw const (*slot).refused) };
        if atomic::compare_and_swap(tat_ptr, victim_tat, CLAIMING) {
            unsafe {
                (*slot).key = *key;
                (*slot).requests = requests;
                (*slot).refused = refused;
                core::ptr::write_volatile(tat_ptr, tat);
            }
            // Banned and claiming slots score above every debt; empty slots below 0.
            let live = victim_score > 0 && victim_score < i64::MAX - 1;
            if live && (victim_refused != 0 || victim_score > park_debt_ns as i64) {
                let _ = MON_PAROLE.insert(victim_key, victim_tat, 0);
            }
            return Some(Slot { ptr: slot });
        }
    }
    None
}

/// CAS attempts on a claim lock before claiming without it (fail open: at worst a second slot
/// for the same source). A claim holds the lock for a probe, a `MON_PAROLE` lookup and a
/// claim; 64 attempts were too few for the two-CPU rate test's TC runs, 1,024 were enough.
const CLAIM_LOCK_ATTEMPTS: usize = 1024;

/// A source with no slot: its state from `MON_PAROLE` if a claim parked it there, charged
/// with this request (the GCRA step: admitted or refused), or else a fresh state that admits
/// it. Claims a slot for it either way (None if other CPUs won every attempt).
///
/// Two CPUs that see a new source's first packets at once would each claim a slot, and each
/// admit a first request. So a claim holds the lock of the source's first set
/// (`MON_CLAIM_LOCKS`) and probes again under it: the second CPU finds the first one's slot
/// and charges it like any found slot.
#[inline(always)]
pub fn admit_new(place: &Place, key: &AddrKey, limit: &Limit, now: u64) -> (Charge, Option<Slot>) {
    let lock = MON_CLAIM_LOCKS.get_ptr_mut(place.sets[0] & (CLAIM_LOCKS - 1));
    let locked = match lock {
        Some(lock) => take_claim_lock(lock),
        None => false,
    };
    let result = admit_new_locked(place, key, limit, now);
    if locked && let Some(lock) = lock {
        // A plain store releases it: the claim's stores are already visible before it.
        unsafe { core::ptr::write_volatile(lock, 0) };
    }
    result
}

#[inline(always)]
fn take_claim_lock(lock: *mut u64) -> bool {
    let mut attempt = 0;
    while attempt < CLAIM_LOCK_ATTEMPTS {
        if atomic::compare_and_swap(lock, 0, 1) {
            return true;
        }
        attempt += 1;
    }
    false
}

#[inline(always)]
fn admit_new_locked(
    place: &Place,
    key: &AddrKey,
    limit: &Limit,
    now: u64,
) -> (Charge, Option<Slot>) {
    if let Some(slot) = probe(place.sets, key).and_then(|again| again.slot()) {
        return (slot.charge(limit, &mut Now::at(now)), Some(slot));
    }
    let (admitted, tat) = match unsafe { MON_PAROLE.get(key) } {
        Some(&parked) => {
            let _ = MON_PAROLE.remove(key);
            let step = limit.step(parked, now);
            (step.admitted, step.tat)
        }
        None => (true, limit.first(now)),
    };
    let slot = claim(
        place,
        key,
        tat,
        1,
        (!admitted) as u32,
        now,
        limit.interval_ns,
    );
    let charge = if admitted {
        Charge::Admitted
    } else {
        Charge::Refused
    };
    (charge, slot)
}

/// Whether this CPU may emit an event for the source now (at most one per key per second;
/// ban starts always may). The fine clock is read only when the coarse clock's bounds cannot
/// rule the event out.
#[inline(always)]
pub fn claim_event_slot(shape: &TableShape, key: &AddrKey, now: &mut Now, always: bool) -> bool {
    let hash = monitor_common::table::key_hash(key, shape.seed);
    let Some(entry) = MON_EVT_SPACING.get_ptr_mut(hash as u32 & (SPACING_ENTRIES - 1)) else {
        return always;
    };
    let owner_ptr = unsafe { &raw mut (*entry)[0] };
    let last_ptr = unsafe { &raw mut (*entry)[1] };
    let owner = atomic::load(owner_ptr);
    let last = atomic::load(last_ptr);
    let mine = owner == hash && last != 0;
    if !always && mine && policy::within_event_spacing(last, now) {
        return false;
    }
    let fine = now.fine();
    if !mine {
        // Taking the entry from another key (or a fresh one): plain stores, since a race here
        // costs at most one extra event, which the global budget still bounds.
        unsafe {
            core::ptr::write_volatile(owner_ptr, hash);
            core::ptr::write_volatile(last_ptr, fine);
        }
        return true;
    }
    atomic::compare_and_swap(last_ptr, last, fine) || always
}
