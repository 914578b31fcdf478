//! The `monitor` binary, built as part of this package so the daemon tests can run it by
//! path (`CARGO_BIN_EXE_*` is only set for a package's own binaries).

fn main() -> std::process::ExitCode {
    monitor::cli::main()
}
