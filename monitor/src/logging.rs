//! The daemon's log output: diagnostics (and forwarded kernel log records) to stderr, offender
//! event lines to stdout, each either human-readable or one JSON object per line.

use std::io::Write as _;

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

struct Logger {
    format: LogFormat,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time = crate::timefmt::rfc3339(std::time::SystemTime::now());
        let origin = if record.target() == KERNEL_TARGET {
            "kernel"
        } else {
            "daemon"
        };
        let line = match self.format {
            LogFormat::Text => format!("{time} {:5} {origin}: {}", record.level(), record.args()),
            LogFormat::Json => serde_json::json!({
                "time": time,
                "level": record.level().as_str().to_ascii_lowercase(),
                "origin": origin,
                "message": record.args().to_string(),
            })
            .to_string(),
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn flush(&self) {}
}

const KERNEL_TARGET: &str = "kernel";

/// Forwards the eBPF program's log records (read by aya-log) to the daemon's log, marked as
/// coming from the kernel.
pub struct KernelLog;

impl Log for KernelLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        log::logger().log(
            &Record::builder()
                .level(record.level())
                .target(KERNEL_TARGET)
                .args(*record.args())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// Installs the logger once; `MONITOR_LOG=debug` raises verbosity.
pub fn init(format: LogFormat) {
    let level = match std::env::var("MONITOR_LOG").ok().as_deref() {
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some("warn") => LevelFilter::Warn,
        _ => LevelFilter::Info,
    };
    // Leaked once: the logger lives as long as the process.
    let logger: &'static Logger = Box::leak(Box::new(Logger { format, level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Writes a batch of offender event lines (each ending in a newline) to stdout in one write
/// and flushes: these lines are what operators grep and what log shippers read. One write per
/// ring-buffer drain rather than per line keeps a flood of events from costing a system call
/// each.
pub fn event_lines(lines: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}
