//! Benchmark-only XDP programs, kept out of the product object:
//! - `bench_pass` / `bench_drop`: the trivial baselines (XDP_PASS, and XDP_DROP with a per-CPU
//!   count so throughput runs can read how many it dropped);
//! - `bench_gen`: a traffic generator for `BPF_PROG_TEST_RUN` in XDP live-frames mode. Each
//!   frame gets the next source address of a configured range (checksums fixed up
//!   incrementally) and is redirected out of a veth.
//! - `steps`: the product's path cut after each step, for the cost breakdown, and prototypes of
//!   the cuts (one statistics record, one configuration lookup with a port bitmap, a 4-byte key);
//! - `table`: a set-associative source table prototype beside the LRU hash design, and a
//!   replay of a spoofed churn through the prototypes and the product's own source table.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

// The product's kernel modules, compiled unchanged into this object so the step variants run
// the product's own code (its maps here are this object's copies, sized by monitor-bench).
// Keep this list in step with monitor-ebpf/src/main.rs.
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/atomic.rs"]
#[allow(dead_code)]
mod atomic;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/classify.rs"]
#[allow(dead_code)]
mod classify;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/clock.rs"]
#[allow(dead_code)]
mod clock;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/conn.rs"]
#[allow(dead_code)]
mod conn;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/frame.rs"]
#[allow(dead_code)]
mod frame;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/limit.rs"]
#[allow(dead_code)]
mod limit;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/maps.rs"]
#[allow(dead_code)]
mod maps;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/parse.rs"]
#[allow(dead_code)]
mod parse;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/policy.rs"]
#[allow(dead_code)]
mod policy;
#[cfg(target_arch = "bpf")]
#[path = "../../monitor-ebpf/src/sources.rs"]
#[allow(dead_code)]
mod sources;

#[cfg(target_arch = "bpf")]
mod steps;
#[cfg(target_arch = "bpf")]
mod table;

#[cfg(target_arch = "bpf")]
pub mod programs {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::bpf_redirect,
        macros::{map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray},
        programs::XdpContext,
    };

    /// Layout shared with `monitor-bench` (`gen::GenCfg`): keep both in step.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct GenCfg {
        /// Where frames go (0: drop them here, to measure the generator alone).
        pub ifindex: u32,
        /// Distinct sources to cycle through (at least 1).
        pub sources: u32,
        /// 0 = IPv4, 1 = IPv6.
        pub is_v6: u32,
        /// Offset of the L4 checksum from the frame start.
        pub l4_csum_off: u32,
        /// First source value (host order): the IPv4 address, or the IPv6 address's second
        /// 32-bit word (inside the /64, so each value is its own /64).
        pub base: u32,
        pub _pad: u32,
    }

    #[map]
    static GEN_CFG: Array<GenCfg> = Array::with_max_entries(1, 0);
    #[map]
    static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// The floor under any per-source table of this shape: one LRU hash lookup with the
    /// monitor's 16-byte key (IPv4-mapped address), pre-filled by user space, then drop.
    #[map]
    static FLOOR_LRU: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(1 << 20, 0);

    /// The same table shape keyed by the bare 4-byte IPv4 address.
    #[map]
    static FLOOR_LRU4: LruHashMap<[u8; 4], u64> = LruHashMap::with_max_entries(1 << 20, 0);
    /// The 16-byte key in a plain (non-LRU, preallocated) hash.
    #[map]
    static FLOOR_HASH: HashMap<[u8; 16], u64> = HashMap::with_max_entries(1 << 20, 0);

    #[inline(always)]
    pub fn v4_source(ctx: &XdpContext) -> Option<[u8; 4]> {
        let data = ctx.data();
        if data + ETH_LEN + 20 > ctx.data_end() {
            return None;
        }
        Some(unsafe { core::ptr::read_unaligned((data + ETH_LEN + 12) as *const [u8; 4]) })
    }

    #[inline(always)]
    pub fn counted_drop() -> u32 {
        if let Some(n) = DROPS.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
        xdp_action::XDP_DROP
    }

    #[xdp]
    pub fn bench_floor4(ctx: XdpContext) -> u32 {
        match v4_source(&ctx) {
            Some(src) if FLOOR_LRU4.get_ptr_mut(src).is_some() => counted_drop(),
            _ => xdp_action::XDP_PASS,
        }
    }

    #[xdp]
    pub fn bench_floorh(ctx: XdpContext) -> u32 {
        let Some(src) = v4_source(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        let mut key = [0u8; 16];
        key[10] = 0xff;
        key[11] = 0xff;
        key[12..16].copy_from_slice(&src);
        if unsafe { FLOOR_HASH.get(key) }.is_some() {
            counted_drop()
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// IPv4 only: Ethernet, then the source address; anything else passes.
    #[xdp]
    pub fn bench_floor(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        if data + ETH_LEN + 20 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let mut key = [0u8; 16];
        key[10] = 0xff;
        key[11] = 0xff;
        unsafe {
            let src = core::ptr::read_unaligned((data + ETH_LEN + 12) as *const [u8; 4]);
            key[12..16].copy_from_slice(&src);
        }
        if FLOOR_LRU.get_ptr_mut(key).is_none() {
            return xdp_action::XDP_PASS;
        }
        if let Some(n) = DROPS.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
        xdp_action::XDP_DROP
    }

    /// The trivial drop plus one read of the packet (the IPv4 source): what any filter that
    /// looks at headers pays for bringing the frame into this core's cache.
    #[xdp]
    pub fn bench_touch(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        if data + ETH_LEN + 20 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let src = unsafe { core::ptr::read_unaligned((data + ETH_LEN + 12) as *const u32) };
        if src == 0 {
            return xdp_action::XDP_PASS;
        }
        if let Some(n) = DROPS.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
        xdp_action::XDP_DROP
    }

    #[xdp]
    pub fn bench_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[xdp]
    pub fn bench_drop(_ctx: XdpContext) -> u32 {
        if let Some(n) = DROPS.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
        xdp_action::XDP_DROP
    }

    const ETH_LEN: usize = 14;

    /// One's-complement update of a 16-bit checksum for one changed 32-bit word (RFC 1624),
    /// in whatever byte order the words were read: the sum is order independent.
    #[inline(always)]
    fn csum_replace(csum: u16, old: u32, new: u32) -> u16 {
        let mut sum: u32 = (!csum) as u32;
        sum += (!(old as u16)) as u32 + (!((old >> 16) as u16)) as u32;
        sum += (new as u16) as u32 + ((new >> 16) as u16) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    #[xdp]
    pub fn bench_gen(ctx: XdpContext) -> u32 {
        let Some(cfg) = GEN_CFG.get(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let i = unsafe { *seq };
        unsafe { *seq = i + 1 };
        let sources = if cfg.sources == 0 { 1 } else { cfg.sources };
        let value = cfg.base.wrapping_add((i % sources as u64) as u32).to_be();
        let data = ctx.data();
        let end = ctx.data_end();
        // Offset of the rewritten source word, and of the IPv4 header checksum (0 for IPv6).
        let (src_off, ip_csum_off) = if cfg.is_v6 != 0 {
            (ETH_LEN + 8 + 4, 0)
        } else {
            (ETH_LEN + 12, ETH_LEN + 10)
        };
        let l4 = cfg.l4_csum_off as usize;
        if l4 > 128 || data + src_off + 4 > end || data + l4 + 2 > end {
            return xdp_action::XDP_ABORTED;
        }
        unsafe {
            let src = (data + src_off) as *mut u32;
            let old = core::ptr::read_unaligned(src);
            core::ptr::write_unaligned(src, value);
            if ip_csum_off != 0 {
                let p = (data + ip_csum_off) as *mut u16;
                core::ptr::write_unaligned(
                    p,
                    csum_replace(core::ptr::read_unaligned(p), old, value),
                );
            }
            if l4 != 0 {
                let p = (data + l4) as *mut u16;
                core::ptr::write_unaligned(
                    p,
                    csum_replace(core::ptr::read_unaligned(p), old, value),
                );
            }
        }
        if cfg.ifindex == 0 {
            return xdp_action::XDP_DROP;
        }
        unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

/// Host builds get an empty binary; the real object is built for `bpfel-unknown-none` by
/// `bench/build.rs` through aya-build.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
