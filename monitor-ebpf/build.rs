//! Fails early, with what to do, when the BPF linker is missing: without it the eBPF build
//! dies deep inside rustc with a message about a missing linker.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf")
        && which::which("bpf-linker").is_err()
    {
        panic!("bpf-linker is not on PATH: run `cargo xtask setup` to build and install it");
    }
}
