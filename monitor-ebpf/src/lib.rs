//! Empty: cargo needs a library target for `monitor` to list this crate as a build
//! dependency (so changes here rebuild the embedded object). The programs are in main.rs.
#![no_std]
