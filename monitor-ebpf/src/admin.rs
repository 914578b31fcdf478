//! `monitor_set_ban`: the daemon's narrow write into a bucket. Never attached; user space runs
//! it with `BPF_PROG_TEST_RUN`, passing a `SetBan` as the packet. It stores one field, the
//! bucket's copy of the ban deadline, with one 8-byte store, so the counters and the limiter
//! state the data path updates concurrently are never overwritten from a stale read (which a
//! user-space read-modify-write of the whole bucket would do).

use aya_ebpf::programs::XdpContext;
use monitor_common::{
    addr::AddrKey,
    maps::{SetBan, set_ban},
};

use crate::maps::MON_SOURCES;

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
    match MON_SOURCES.get_ptr_mut(key) {
        Some(bucket) => {
            // SAFETY: the pointer is the map's value for as long as this program runs; an
            // aligned 8-byte store is atomic against the data path's reads of the field.
            unsafe { core::ptr::write_volatile(&raw mut (*bucket).ban_until_ns, input.until_ns) };
            set_ban::WRITTEN
        }
        None => set_ban::NO_BUCKET,
    }
}
