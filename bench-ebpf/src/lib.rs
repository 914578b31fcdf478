//! Empty library target: lets `bench/` list this crate as a build dependency, so cargo
//! rebuilds the embedded object when the programs change.
#![no_std]
