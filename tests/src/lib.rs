//! Helpers shared by the integration tests: frame builders for BPF_PROG_TEST_RUN, a loaded
//! program with its maps, and network namespaces that clean up after themselves.

pub mod conns;
pub mod daemon;
pub mod fleet;
pub mod frames;
pub mod harness;
pub mod netns;
pub mod table;
pub mod traffic;
