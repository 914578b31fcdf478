//! The `monitor` binary: everything lives in the library; see `monitor::cli`.

fn main() -> std::process::ExitCode {
    monitor::cli::main()
}
