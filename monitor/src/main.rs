fn main() {
    eprintln!("monitor: the daemon and CLI are not built yet");
    std::process::exit(2);
}
