//! The control protocol between the CLI and the daemon: request and reply types (JSON in
//! length-delimited frames over the Unix socket), the framing and the client. Both `cli` and
//! `daemon` import this module; it imports neither (the server and the handlers live in
//! `daemon::control`).

pub mod client;
pub mod codec;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most rows `top` answers with (the sampler keeps this many per sample).
pub const MAX_TOP_ROWS: usize = 1000;
/// Most rows `offenders` answers with. An offender row is about 250 bytes of JSON, so this
/// many stay far below the frame cap (`codec::MAX_FRAME`); for more, narrow `--since`.
pub const MAX_OFFENDER_ROWS: usize = 1000;

/// Which list a list command addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ListName {
    Allow,
    Deny,
}

/// What `monitor set` changes. Values travel as the operator typed them and are parsed by the
/// daemon's handler, so the daemon's error is the one the operator sees.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "setting", content = "value")]
pub enum SetRequest {
    Rate(String),
    Burst(u64),
    AggRate(String),
    AggBurst(u64),
    Action(String),
    Ban(String),
    Count(String),
    HttpPath(String),
    PortAdd(u16),
    PortRm(u16),
    EventsPerSec(u32),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum Request {
    Status,
    Stats,
    Top {
        limit: usize,
        level: Option<String>,
        /// Fleet-wide rates of this host's published heavy hitters instead of local rates.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fleet: bool,
    },
    /// Fleet mode's link state.
    Fleet,
    Offenders {
        since: Option<String>,
        limit: usize,
    },
    Block {
        cidr: String,
        #[serde(rename = "for")]
        duration: Option<String>,
    },
    Unblock {
        cidr: String,
    },
    ListAdd {
        list: ListName,
        cidr: String,
        #[serde(rename = "for")]
        duration: Option<String>,
    },
    ListRemove {
        list: ListName,
        cidr: String,
    },
    ListShow {
        list: ListName,
    },
    Set(SetRequest),
    Reload,
}

/// A reply: the command's data, or one line of error.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopRow {
    pub source: String,
    /// Requests per second over the last sampling interval.
    pub rate: f64,
    pub total: u64,
    pub dropped: u64,
    pub banned_until: Option<String>,
    pub level: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopReply {
    /// When the sample was taken (RFC 3339), and over how long the rates were measured.
    pub sampled_at: Option<String>,
    pub interval_ms: u64,
    /// How long reading and ranking the tables took, start to end (the sampler rests
    /// between chunks, so a large table's sample is mostly rest).
    pub sample_took_ms: u64,
    /// The CPU time that sample used.
    #[serde(default)]
    pub sample_cpu_ms: u64,
    pub tracked_sources: u64,
    pub tracked_aggregates: u64,
    pub rows: Vec<TopRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OffenderRow {
    pub source: String,
    pub level: String,
    pub first_seen: String,
    pub last_seen: String,
    pub peak_rate: f64,
    pub dropped: u64,
    pub times_banned: u64,
    pub events: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListRow {
    pub cidr: String,
    pub expires: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub hook: String,
    pub mode: String,
    pub adopted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortRow {
    pub port: u16,
    pub proto: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub rate: String,
    pub burst: u64,
    pub agg_rate: Option<String>,
    pub agg_burst: u64,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub v4_agg_prefix: u8,
    pub v6_agg_prefix: u8,
    pub count: String,
    pub http_path: Option<String>,
    pub ban: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub pid: u32,
    pub started_at: String,
    pub uptime_secs: u64,
    pub attach: String,
    pub interfaces: Vec<Attachment>,
    pub ports: Vec<PortRow>,
    pub action: String,
    pub limits: Limits,
    pub persist: bool,
    pub pin_path: String,
    pub db: String,
    pub socket: String,
    pub metrics: Option<String>,
    pub allow_entries: usize,
    pub deny_entries: usize,
    pub active_bans: u64,
    pub tracked_sources: u64,
    pub tracked_aggregates: u64,
    pub counters: BTreeMap<String, u64>,
    /// Capacity (max entries) of each kernel table, by map name, as created or adopted.
    #[serde(default)]
    pub capacity: BTreeMap<String, u32>,
    /// The table sampler's own figures.
    #[serde(default)]
    pub sampler: SamplerStatus,
}

/// What the sampler has done: how many samples, what the last one cost, and how many sources
/// a flood kept out of the history's per-source rows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SamplerStatus {
    pub samples: u64,
    /// From the last sample's start to its end (it rests between chunks).
    pub last_took_ms: u64,
    /// The CPU time the last sample used.
    pub last_cpu_ms: u64,
    /// Sources with newly refused requests not written to the history one by one (a sample
    /// writes at most the 1,000 that refused most).
    pub history_folded_sources: u64,
}

/// Reply to commands that change something.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

/// One row of `monitor top --fleet`: a key this host published, with the fleet's estimate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetRate {
    pub key: String,
    /// Requests per second the whole fleet saw from this key (the script's sliding estimate).
    pub fleet_rate: f64,
    /// Requests this host counted in its last interval.
    pub local_count: u64,
}

/// `monitor fleet`'s reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetReply {
    pub enabled: bool,
    pub connected: bool,
    pub id: Option<String>,
    pub hosts: Vec<String>,
    pub last_sync: Option<String>,
    pub lag_ms: Option<u64>,
    pub bans_applied: u64,
    pub keys_published: u64,
    pub keys_suppressed: u64,
    pub malformed_entries: u64,
    pub pending_entries: u64,
    pub redis: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is what a CLI of one version and a daemon of another must agree on.
    #[test]
    fn requests_and_replies_have_a_stable_json_shape() {
        let top = serde_json::to_value(Request::Top {
            limit: 20,
            level: None,
            fleet: false,
        })
        .unwrap();
        assert_eq!(
            top,
            serde_json::json!({"command": "top", "limit": 20, "level": null})
        );
        let set = serde_json::to_value(Request::Set(SetRequest::Rate("10/s".into()))).unwrap();
        assert_eq!(
            set,
            serde_json::json!({"command": "set", "setting": "rate", "value": "10/s"})
        );
        let block: Request =
            serde_json::from_str(r#"{"command":"block","cidr":"10.0.0.0/8","for":"1h"}"#).unwrap();
        assert!(matches!(block, Request::Block { duration: Some(d), .. } if d == "1h"));
        let err = serde_json::to_string(&Response::Error("no".into())).unwrap();
        assert_eq!(err, r#"{"error":"no"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }
}
