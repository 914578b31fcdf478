//! `monitor fleet` and `monitor top --fleet`: fleet mode's link state and the fleet-wide rates
//! of this host's published heavy hitters. Both read state the fleet tasks keep; neither waits
//! on Redis, so they answer at once while it is down.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, json};
use crate::{daemon::Shared, proto::FleetReply};

/// Most rows `top --fleet` returns (the fleet task keeps 100).
const MAX_ROWS: usize = 1000;

pub fn run<M: Maps>(shared: &Shared<M>) -> Result<Value> {
    Ok(json(
        shared
            .fleet
            .as_ref()
            .map_or_else(FleetReply::disabled, |f| f.reply()),
    ))
}

pub fn top<M: Maps>(shared: &Shared<M>, limit: usize) -> Result<Value> {
    let Some(fleet) = &shared.fleet else {
        bail!("fleet mode is off: start the daemon with --fleet URL");
    };
    if limit == 0 || limit > MAX_ROWS {
        bail!("invalid --limit {limit}: must be between 1 and {MAX_ROWS}");
    }
    Ok(json(fleet.top(limit)))
}
