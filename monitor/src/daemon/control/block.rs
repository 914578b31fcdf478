//! `monitor block CIDR [--for DURATION]`: a ban when the CIDR is exactly one source at the
//! configured prefix, otherwise an expiring deny entry (the map writer decides which).

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use super::{Maps, cidr, done};
use crate::{clock, daemon::Shared, daemon::writer::BlockKind, timefmt, units::parse_duration};

/// Default of `block --for`.
const DEFAULT_BLOCK: std::time::Duration = std::time::Duration::from_secs(3600);

/// A deadline on the kernel clock from `--for` (or the default), and how to say it; `(0, "no
/// expiry")` when there is neither.
pub(super) fn deadline(
    duration: Option<&str>,
    default: Option<std::time::Duration>,
) -> Result<(u64, String)> {
    let d = match duration {
        Some(s) => parse_duration(s)?,
        None => match default {
            Some(d) => d,
            None => return Ok((0, "no expiry".into())),
        },
    };
    if d.is_zero() {
        bail!("invalid duration 0: give how long, e.g. --for 10m");
    }
    let until = clock::kernel_now_ns()
        .checked_add(d.as_nanos().min(u64::MAX as u128) as u64)
        .ok_or_else(|| anyhow!("duration too long"))?;
    Ok((
        until,
        format!("until {}", timefmt::rfc3339(clock::to_wall(until))),
    ))
}

pub fn run<M: Maps>(shared: &Shared<M>, input: &str, duration: Option<&str>) -> Result<Value> {
    let c = cidr(input)?;
    let (until, when) = deadline(duration, Some(DEFAULT_BLOCK))?;
    let kind = shared.writer().block(&c, until)?;
    done(match kind {
        BlockKind::Ban => format!("blocked {c} {when} (ban)"),
        BlockKind::TimedDeny => format!(
            "blocked {c} {when} (expiring deny entry: the CIDR is not one source at the configured prefix)"
        ),
    })
}
