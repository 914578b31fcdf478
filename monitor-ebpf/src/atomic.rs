//! The two atomic operations the program needs. `bpfel-unknown-none` has no
//! compare-and-swap in `core::sync::atomic`, so these use the intrinsics the BPF backend
//! lowers to `BPF_CMPXCHG` (see ../shared/notes/toolchain.md).

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

/// Reads a `u64` that other CPUs may be updating. An LLVM atomic load does not select on BPF;
/// a volatile read is a single 8-byte load, and the CAS that follows catches any race.
#[inline(always)]
pub fn load(p: *const u64) -> u64 {
    unsafe { core::ptr::read_volatile(p) }
}

/// Sets `*p` to `new` if it still holds `old`. True when this CPU won.
#[inline(always)]
pub fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> bool {
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(p, old, new)
    };
    won
}

/// Adds `n` (wrapping; pass `n.wrapping_neg()` to subtract). Lowers to `BPF_ATOMIC | BPF_ADD`,
/// which cannot lose a race. The previous value is not returned: with the default bpf-linker
/// CPU, LLVM refuses to use a fetch-add's result ("Invalid usage of the XADD return value").
#[inline(always)]
pub fn add(p: *mut u64, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}
