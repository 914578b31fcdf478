//! Policy lookups beside the limiter: allow and deny lists, bans, offender events and the
//! global budgets that keep the program's output bounded (events per second, log records).

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use monitor_common::{
    addr::{AddrKey, LIST_KEY_BITS, ListAddr},
    config::Config,
    event::Event,
    maps::{Ban, Bucket, EVENT_COUNT_BITS, LOG_SPACING_NS, ListEntry},
    rate::NANOS_PER_SEC,
    stats::Stat,
    table::BANNED,
};

use crate::{
    atomic,
    clock::Now,
    maps::{MON_ALLOW, MON_BANS, MON_DENY, MON_EVENTS, MON_STATE, count},
    sources::{self, Place, Slot},
};

/// CAS attempts on the shared budget state before the event or record is withheld.
const BUDGET_ATTEMPTS: usize = 4;

/// Events per key are spaced at least this far apart.
const EVENT_SPACING_NS: u64 = 1_000_000_000;

/// Whether an event sent at `last` still rules out another one now: decided on the coarse
/// clock's bounds when every instant the fine clock can read is within the spacing after
/// `last`, else on the fine clock.
#[inline(always)]
pub fn within_event_spacing(last: u64, now: &mut Now) -> bool {
    if last <= now.earliest() && now.latest() - last < EVENT_SPACING_NS {
        return true;
    }
    now.fine().wrapping_sub(last) < EVENT_SPACING_NS
}

#[inline(always)]
fn listed(trie: &LpmTrie<ListAddr, ListEntry>, src: &AddrKey, is_v4: bool, now: &mut Now) -> bool {
    match trie.get(Key::new(LIST_KEY_BITS, ListAddr::new(src, is_v4))) {
        Some(entry) => entry.expires_ns == 0 || now.is_before(entry.expires_ns),
        None => false,
    }
}

#[inline(always)]
pub fn allowlisted(src: &AddrKey, is_v4: bool, now: &mut Now) -> bool {
    listed(&MON_ALLOW, src, is_v4, now)
}

#[inline(always)]
pub fn denylisted(src: &AddrKey, is_v4: bool, now: &mut Now) -> bool {
    listed(&MON_DENY, src, is_v4, now)
}

/// The ban deadline in `MON_BANS` for a key with no bucket (new, or evicted by a flood), or 0.
/// An expired entry is deleted on sight.
#[inline(always)]
pub fn stored_ban(key: &AddrKey, now: &mut Now) -> u64 {
    match unsafe { MON_BANS.get(key) } {
        Some(ban) if now.is_before(ban.until_ns) => ban.until_ns,
        Some(_) => {
            let _ = MON_BANS.remove(key);
            0
        }
        None => 0,
    }
}

/// Gives a banned key that has no slot (new, or evicted by a flood) a slot with the ban in it,
/// so its next packets cost one probe. The packet in hand is refused, so it is counted as
/// refused if it is a request and charged to nothing: banned traffic never spends budget.
#[inline(always)]
pub fn restore_ban(place: &Place, key: &AddrKey, until_ns: u64, request: bool, now: u64) {
    let refused = request as u32;
    let _ = sources::claim(
        place,
        key,
        BANNED | until_ns,
        refused,
        refused,
        now,
        u64::MAX >> 1,
    );
}

/// Starts a ban: stores it where floods cannot evict it and puts it in the source's slot.
/// Returns false when the ban table is full (the source is then only rate limited).
#[inline(always)]
pub fn start_ban(slot: Slot, key: &AddrKey, until_ns: u64) -> bool {
    if MON_BANS.insert(key, Ban { until_ns }, 0).is_err() {
        count(Stat::BansFull);
        return false;
    }
    slot.ban(until_ns);
    count(Stat::BansStarted);
    true
}

/// Whether this CPU may emit an event for an aggregate bucket now (at most one per key per
/// second). Claims the slot with a CAS so two CPUs never both emit. The fine clock is read
/// only when the coarse clock's bounds cannot rule the event out.
#[inline(always)]
pub fn claim_event_slot(bucket: *mut Bucket, now: &mut Now, always: bool) -> bool {
    let slot = unsafe { &raw mut (*bucket).last_event_ns };
    let last = atomic::load(slot);
    if !always && within_event_spacing(last, now) {
        return false;
    }
    atomic::compare_and_swap(slot, last, now.fine()) || always
}

/// Whether the current second's event budget may still have room, reading the shared state
/// only: lets a flood that has spent the budget skip the per-key spacing check. The coarse
/// clock's second is enough to say "maybe"; `take_event_budget` decides. An event ruled out
/// here is counted as `events_suppressed`, as there.
#[inline(always)]
pub fn event_budget_left(cfg: &Config, now: &mut Now, ban: bool) -> bool {
    let cap = if ban {
        cfg.events_per_sec
    } else {
        cfg.events_per_sec.saturating_sub(cfg.events_reserved)
    } as u64;
    let Some(state) = MON_STATE.get_ptr(0) else {
        return true;
    };
    let w = atomic::load(unsafe { &raw const (*state).event_window });
    let mask = (1u64 << EVENT_COUNT_BITS) - 1;
    // A later second than the window's (at any instant the fine clock can read) starts afresh.
    if now.latest() / NANOS_PER_SEC > w >> EVENT_COUNT_BITS || w & mask < cap {
        return true;
    }
    count(Stat::EventsSuppressed);
    false
}

/// Takes one event from the global budget of the current second (`Config::events_per_sec`).
/// Over-limit events stop at the budget less the ban reserve; ban starts may use all of it, so
/// no number of over-limit keys can crowd them out. A withheld event is counted as
/// `events_suppressed` and never reaches the ring buffer. The shared state is written only when
/// an event is let through; once the second's budget is spent, callers only read it.
#[inline(always)]
pub fn take_event_budget(cfg: &Config, now: u64, ban: bool) -> bool {
    let cap = if ban {
        cfg.events_per_sec
    } else {
        cfg.events_per_sec.saturating_sub(cfg.events_reserved)
    } as u64;
    if let Some(state) = MON_STATE.get_ptr_mut(0) {
        let window = unsafe { &raw mut (*state).event_window };
        let second = now / NANOS_PER_SEC;
        let mask = (1u64 << EVENT_COUNT_BITS) - 1;
        for _ in 0..BUDGET_ATTEMPTS {
            let w = atomic::load(window);
            let (w_second, sent) = (w >> EVENT_COUNT_BITS, w & mask);
            // A CPU whose clock read is a little behind another's counts in the newer window.
            let next = if second > w_second {
                if cap == 0 {
                    break;
                }
                (second << EVENT_COUNT_BITS) | 1
            } else if sent < cap {
                w + 1
            } else {
                break;
            };
            if atomic::compare_and_swap(window, w, next) {
                return true;
            }
        }
    }
    count(Stat::EventsSuppressed);
    false
}

/// Whether a kernel log record of `kind` (`maps::log_kind`) may be written now: at most one per
/// kind per second across all CPUs, however many packets meet the condition. Every occurrence
/// is still counted in the statistics.
#[inline(always)]
pub fn log_allowed(kind: usize, now: u64) -> bool {
    let Some(state) = MON_STATE.get_ptr_mut(0) else {
        return false;
    };
    let slot = unsafe { &raw mut (*state).log_last_ns[kind] };
    let last = atomic::load(slot);
    if last != 0 && now.wrapping_sub(last) < LOG_SPACING_NS {
        return false;
    }
    atomic::compare_and_swap(slot, last, now)
}

/// Sends an event; a full ring buffer costs the event, never the verdict.
#[inline(always)]
pub fn emit(event: &Event) {
    match MON_EVENTS.output::<Event>(event, 0) {
        Ok(()) => count(Stat::EventsSent),
        Err(_) => count(Stat::EventsLost),
    }
}
