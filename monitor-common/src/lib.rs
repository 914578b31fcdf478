//! Types shared by the kernel programs (`monitor-ebpf`) and user space (`monitor`).
//!
//! Everything here is `#[repr(C)]` plain data or pure arithmetic: it is compiled once for
//! `bpfel-unknown-none` and once for the host, so both sides agree on layouts, map names and
//! the rate algorithm by construction.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod config;
pub mod event;
pub mod http;
pub mod maps;
pub mod rate;
pub mod stats;
pub mod table;

#[cfg(feature = "user")]
mod pod {
    //! Map values must be `Pod` for aya; only user space needs it.
    use crate::{
        addr::{AddrKey, ListAddr},
        config::{Config, ConfigSlots},
        event::Event,
        maps::*,
        table::{SourceSet, SourceSlot, TableShape},
    };
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for ListAddr {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConfigSlots {}
    unsafe impl aya::Pod for KernelState {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for Ban {}
    unsafe impl aya::Pod for ListEntry {}
    unsafe impl aya::Pod for FleetConfig {}
    unsafe impl aya::Pod for FleetCount {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for SourceSet {}
    unsafe impl aya::Pod for SourceSlot {}
    unsafe impl aya::Pod for TableShape {}
}
