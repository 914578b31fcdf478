//! Rates (`100/s`, `600/m`) and durations (`10m`, `90s`, `1h`, `0`) as operators write them.

use std::{fmt, str::FromStr, time::Duration};

use monitor_common::rate::NANOS_PER_SEC;

/// A rate: `requests` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests: u64,
    pub period_ns: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid rate {0:?}: expected N/s or N/m with N a whole number, e.g. 100/s")]
    Rate(String),
    #[error(
        "invalid duration {0:?}: expected a number with a unit (ms, s, m, h, d), e.g. 10m, or 0"
    )]
    Duration(String),
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 * NANOS_PER_SEC as f64 / self.period_ns as f64
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Rate(input.to_string());
        let s = input.trim();
        let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
        let requests: u64 = n.trim().parse().map_err(|_| err())?;
        let period_ns = match unit.trim() {
            "s" | "sec" | "second" => NANOS_PER_SEC,
            "m" | "min" | "minute" => 60 * NANOS_PER_SEC,
            "h" | "hour" => 3600 * NANOS_PER_SEC,
            _ => return Err(err()),
        };
        Ok(Rate {
            requests,
            period_ns,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period_ns {
            p if p == NANOS_PER_SEC => write!(f, "{}/s", self.requests),
            p if p == 60 * NANOS_PER_SEC => write!(f, "{}/m", self.requests),
            p if p == 3600 * NANOS_PER_SEC => write!(f, "{}/h", self.requests),
            p => write!(f, "{}/{}ns", self.requests, p),
        }
    }
}

/// Parses `10m`, `90s`, `500ms`, `1h`, `2d`, or `0`.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(input.to_string());
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(err);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(err()),
    }
}

/// The shortest way to write `d` back (`10m`, `90s`, `0`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("100/s".parse::<Rate>().unwrap().per_second(), 100.0);
        assert_eq!("600/m".parse::<Rate>().unwrap().per_second(), 10.0);
        assert_eq!("50".parse::<Rate>().unwrap().to_string(), "50/s");
        for bad in ["", "x/s", "10/y", "-1/s", "1.5/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "m", "10", "10x", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
