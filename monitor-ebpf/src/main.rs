//! The monitor's kernel programs: `monitor_xdp` (XDP) and `monitor_tc` (TC clsact ingress).
//! Both are a few lines over the one classifier in `classify`, so either attach point gives
//! identical verdicts. `monitor_set_ban` is never attached: the daemon runs it to set one
//! bucket's ban field in place (see `admin`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod admin;
#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod conn;
#[cfg(target_arch = "bpf")]
mod fleet;
#[cfg(target_arch = "bpf")]
mod frame;
#[cfg(target_arch = "bpf")]
mod limit;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod sources;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    use crate::{
        classify::{Verdict, classify},
        frame::{TcFrame, XdpFrame},
    };

    #[xdp]
    pub fn monitor_xdp(ctx: XdpContext) -> u32 {
        match classify(&XdpFrame(&ctx)) {
            Verdict::Pass => xdp_action::XDP_PASS,
            Verdict::Drop => xdp_action::XDP_DROP,
        }
    }

    #[xdp]
    pub fn monitor_set_ban(ctx: XdpContext) -> u32 {
        crate::admin::set_ban(&ctx)
    }

    #[classifier]
    pub fn monitor_tc(ctx: TcContext) -> i32 {
        match classify(&TcFrame(&ctx)) {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Drop => TC_ACT_SHOT,
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// Host builds (clippy, `cargo build --workspace`) get an empty binary; the real object is
/// built for `bpfel-unknown-none` by `monitor/build.rs` through aya-build.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
