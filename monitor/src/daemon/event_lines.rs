//! Keeps the daemon's event lines within `--event-lines` (lines per second, averaged, with a
//! burst of one second's worth). Past it, events still reach the history and the metrics, but
//! their lines are held back, and once a second one summary line says how many more sources
//! went over their limit, how many requests the kernel dropped in that time, and the busiest
//! few. The cost of the output is then flat in the number of attacking sources: an attacker
//! who spoofs a million addresses gets the configured lines and one summary per second.
//!
//! Time is passed in (`now`, from any fixed origin), so the tests drive it by hand.

use std::{collections::HashSet, time::Duration};

use monitor_common::addr::AddrKey;

use super::sampler::Level;
use crate::units::Rate;

/// How often a summary may be written, and the window it covers.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// How many of the busiest held-back sources a summary names.
pub const BUSIEST: usize = 3;

/// One held-back source, for the summary's list of the busiest.
#[derive(Clone, Debug, PartialEq)]
pub struct Busiest {
    pub source: String,
    pub level: Level,
    /// Requests per second, when known.
    pub rate: Option<f64>,
}

/// What a summary line reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Distinct sources (and aggregates) whose events were held back in the window.
    pub sources: u64,
    /// Event lines held back in the window.
    pub lines: u64,
    /// Requests the kernel dropped during the window (all sources), when known.
    pub dropped: Option<u64>,
    /// The busiest held-back sources, highest rate first.
    pub busiest: Vec<Busiest>,
    /// How long the window was.
    pub window: Duration,
}

pub struct EventLines {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Duration>,
    /// Start of the window that has held-back lines, if any.
    window_start: Option<Duration>,
    held_keys: HashSet<(Level, AddrKey)>,
    held_lines: u64,
    busiest: Vec<Busiest>,
    /// The kernel's dropped counter at the start of the window.
    dropped_at_start: Option<u64>,
}

impl EventLines {
    pub fn new(limit: Rate) -> Self {
        let per_sec = limit.per_second();
        let burst = per_sec.max(1.0).ceil();
        Self {
            per_sec,
            burst,
            // A limit of 0 writes no event lines at all: only summaries.
            tokens: if per_sec > 0.0 { burst } else { 0.0 },
            last: None,
            window_start: None,
            held_keys: HashSet::new(),
            held_lines: 0,
            busiest: Vec::new(),
            dropped_at_start: None,
        }
    }

    /// Whether this event's line may be written now. A held-back event is remembered for the
    /// next summary. `dropped` is the kernel's dropped counter, read when the window opens.
    pub fn admit(
        &mut self,
        now: Duration,
        level: Level,
        key: AddrKey,
        source: impl FnOnce() -> String,
        rate: Option<f64>,
        dropped: impl FnOnce() -> Option<u64>,
    ) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        if self.window_start.is_none() {
            self.window_start = Some(now);
            self.dropped_at_start = dropped();
        }
        self.held_lines += 1;
        if self.held_keys.insert((level, key)) {
            self.note_busiest(source, level, rate);
        }
        false
    }

    fn note_busiest(&mut self, source: impl FnOnce() -> String, level: Level, rate: Option<f64>) {
        let r = rate.unwrap_or(-1.0);
        let weakest = self
            .busiest
            .last()
            .map_or(f64::NEG_INFINITY, |b| b.rate.unwrap_or(-1.0));
        if self.busiest.len() < BUSIEST || r > weakest {
            let entry = Busiest {
                source: source(),
                level,
                rate,
            };
            let at = self
                .busiest
                .iter()
                .position(|b| b.rate.unwrap_or(-1.0) < r)
                .unwrap_or(self.busiest.len());
            self.busiest.insert(at, entry);
            self.busiest.truncate(BUSIEST);
        }
    }

    /// When the pending summary is due, if lines are being held back.
    pub fn summary_due(&self) -> Option<Duration> {
        self.window_start.map(|s| s + SUMMARY_EVERY)
    }

    /// The summary of the window, once it is due; `dropped` reads the kernel's dropped
    /// counter now.
    pub fn summary(
        &mut self,
        now: Duration,
        dropped: impl FnOnce() -> Option<u64>,
    ) -> Option<Summary> {
        let start = self.window_start?;
        if now < start + SUMMARY_EVERY {
            return None;
        }
        let dropped = match (self.dropped_at_start, dropped()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let summary = Summary {
            sources: self.held_keys.len() as u64,
            lines: self.held_lines,
            dropped,
            busiest: std::mem::take(&mut self.busiest),
            window: now - start,
        };
        self.window_start = None;
        self.held_keys.clear();
        self.held_lines = 0;
        self.dropped_at_start = None;
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> AddrKey {
        AddrKey::from_v4(i.to_be_bytes())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Offers one event of source `i` at `now`; true if its line is written.
    fn offer(l: &mut EventLines, now: Duration, i: u32, rate: f64, dropped: u64) -> bool {
        l.admit(
            now,
            Level::Source,
            key(i),
            || format!("10.0.0.{i}/32"),
            Some(rate),
            || Some(dropped),
        )
    }

    #[test]
    fn a_flood_gets_the_configured_lines_and_one_summary_a_second() {
        let mut l = EventLines::new("20/s".parse().unwrap());
        // 1,000 sources trip within the first 100 ms.
        let written = (0..1000u32)
            .filter(|&i| offer(&mut l, ms(u64::from(i) / 10), i, f64::from(i), 5_000))
            .count();
        assert_eq!(
            written,
            20 + 1,
            "the burst, plus what 100 ms of the rate earns"
        );
        // The first line held back (source 20, at 2 ms) opened the window.
        assert_eq!(l.summary_due(), Some(ms(1_002)));
        assert_eq!(l.summary(ms(1_001), || Some(9_000)), None, "not yet due");
        let s = l.summary(ms(1_002), || Some(9_000)).expect("due");
        assert_eq!((s.sources, s.lines), (979, 979));
        assert_eq!(s.dropped, Some(4_000));
        let busiest: Vec<&str> = s.busiest.iter().map(|b| b.source.as_str()).collect();
        assert_eq!(busiest, ["10.0.0.999/32", "10.0.0.998/32", "10.0.0.997/32"]);
        assert_eq!(l.summary_due(), None, "nothing held back any more");
        assert_eq!(l.summary(ms(5_000), || Some(9_000)), None);
    }

    #[test]
    fn over_a_long_flood_the_lines_stay_within_the_rate() {
        let mut l = EventLines::new("20/s".parse().unwrap());
        let mut written = 0;
        let mut summaries = 0;
        // 10 simulated seconds, 1,000 events each (one every millisecond).
        for t in 0..10_000u64 {
            if offer(&mut l, ms(t), t as u32, 1.0, 0) {
                written += 1;
            }
            if l.summary(ms(t), || Some(0)).is_some() {
                summaries += 1;
            }
        }
        // The first second's burst of 20 plus 20 a second.
        assert!((200..=220).contains(&written), "{written} lines");
        assert!((9..=10).contains(&summaries), "{summaries} summaries");
    }

    #[test]
    fn a_quiet_source_is_never_held_back_and_zero_means_summaries_only() {
        let mut l = EventLines::new("20/s".parse().unwrap());
        for s in 0..100u64 {
            assert!(offer(&mut l, Duration::from_secs(s), 1, 1.0, 0));
        }
        assert_eq!(l.summary_due(), None);
        let mut off = EventLines::new("0/s".parse().unwrap());
        assert!(!offer(&mut off, ms(0), 1, 1.0, 0));
        assert!(!offer(&mut off, Duration::from_secs(100), 2, 1.0, 0));
        let s = off.summary(Duration::from_secs(101), || None).unwrap();
        assert_eq!((s.sources, s.dropped), (2, None));
    }

    #[test]
    fn a_source_counts_once_per_summary_however_many_lines_it_had() {
        let mut l = EventLines::new("1/s".parse().unwrap());
        assert!(offer(&mut l, ms(0), 1, 9.0, 0));
        for t in 1..50 {
            assert!(!offer(&mut l, ms(t), 7, 9.0, 0));
        }
        let s = l.summary(ms(1_001), || Some(0)).unwrap();
        assert_eq!((s.sources, s.lines, s.busiest.len()), (1, 49, 1));
    }
}
