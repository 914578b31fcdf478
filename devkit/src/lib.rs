//! Dev-only helpers shared by the integration tests (`tests`), the demo (`xtask demo`) and the
//! benchmarks (`bench`): network namespaces, veth pairs, addresses, sysctls, and moving one
//! thread into a namespace. Not part of the product. Everything runs `ip` (iproute2) or
//! `setns(2)`; every error carries the failing command and its stderr.

pub mod netns;
