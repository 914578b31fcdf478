//! `monitor_set_ban`: the daemon's narrow write into the source table. Never attached; user
//! space runs it with `BPF_PROG_TEST_RUN`, passing a `SetBan` as the packet. It changes one
//! field, the slot's state, with one 8-byte store or compare-and-swap, so the counters the
//! data path updates concurrently are never overwritten from a stale read (which a
//! user-space read-modify-write of the slot would do).

use aya_ebpf::programs::XdpContext;
use monitor_common::{
    addr::AddrKey,
    maps::{SetBan, set_ban},
};

use crate::{maps::MON_CONFIG, sources};

#[inline(always)]
pub fn set_ban(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + core::mem::size_of::<SetBan>() > ctx.data_end() {
        return set_ban::BAD_INPUT;
    }
    // SAFETY: the bounds check above covers the whole `SetBan`; read_unaligned copes with
    // any alignment of the packet data.
    let input = unsafe { core::ptr::read_unaligned(start as *const SetBan) };
    let key = AddrKey {
        addr: input.key.addr,
    };
    let Some(slots) = MON_CONFIG.get_ptr(0) else {
        return set_ban::NO_BUCKET;
    };
    let live = unsafe { core::ptr::read_volatile(&raw const (*slots).active) } & 1;
    let cfg = unsafe { &(*slots).slots[live as usize] };
    match sources::lookup(&cfg.table, &key).and_then(|place| place.slot()) {
        Some(slot) => {
            if input.until_ns != 0 {
                slot.ban(input.until_ns);
            } else {
                slot.unban();
            }
            set_ban::WRITTEN
        }
        None => set_ban::NO_BUCKET,
    }
}
