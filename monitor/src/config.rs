//! The daemon's settings: the `monitor run` flags, the same keys in a TOML file, how they
//! merge (flags win over the file, the file over the defaults), and their validation into one
//! resolved `Settings` with one-line errors.
//!
//! The defaults suit a contact-lookup API: a person using an app sends a handful of lookups a
//! second at most, so 20/s with a burst of 40 never touches them, while a scraper sending
//! hundreds a second loses everything above 20/s. The aggregate level (100/s, burst 200, per
//! IPv4 /24 and IPv6 /48) catches scrapers spreading over many neighbouring addresses while
//! leaving room for an office or carrier NAT full of real users: a hundred people behind one
//! /24 each looking up a number a second is already far more than contact lookup sees. At
//! 200/s the demo's distributed scraper kept about 1,700 numbers in 25 s (94.7% cut in all);
//! at 100/s the cut was 96.8%.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use monitor_common::{
    config::{self as kconfig, Config},
    http::HTTP_PATH_MAX,
    rate::Limit,
};
use serde::{Deserialize, Serialize};

use crate::{
    cidr::Cidr,
    units::{Rate, format_duration, parse_duration},
};

pub const DEFAULT_SOCKET: &str = "/run/monitor/monitor.sock";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/monitor";
pub const DEFAULT_DB: &str = "/var/lib/monitor/offenders.db";
pub const DEFAULT_RATE: &str = "20/s";
pub const DEFAULT_BURST: u64 = 40;
pub const DEFAULT_AGG_RATE: &str = "100/s";
pub const DEFAULT_AGG_BURST: u64 = 200;
/// Offender event lines per second before the daemon summarises instead: enough to follow a
/// handful of offenders line by line, and a flood from a million addresses still writes at
/// most this many lines plus one summary a second.
pub const DEFAULT_EVENT_LINES: &str = "20/s";
/// Percent of a core the table sampler may use while it samples (`--sample-cpu`).
pub const DEFAULT_SAMPLE_CPU: u8 = 2;
/// Largest source table we let an operator ask for (each entry is about 100 bytes of kernel
/// memory; 16M is 1.6 GiB).
pub const MAX_MAX_SOURCES: u32 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $(#[value(name = $text)] #[serde(rename = $text)] $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "invalid value {s:?}: expected one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

choice!(
    /// Where the program hooks in.
    AttachKind { Xdp = "xdp", Tc = "tc" }
);
choice!(
    /// XDP attach mode; `auto` tries native (driver) first and falls back to generic (skb).
    XdpModeSetting { Auto = "auto", Native = "native", Skb = "skb" }
);
choice!(Proto { Tcp = "tcp", Udp = "udp", Both = "both" });
choice!(CountMode { Syn = "syn", Packets = "packets", Payload = "payload", Http = "http" });
choice!(Action { Drop = "drop", Monitor = "monitor" });
choice!(LogFormat { Text = "text", Json = "json" });

impl Proto {
    pub fn port_flags(self) -> u8 {
        match self {
            Proto::Tcp => kconfig::port_flags::TCP,
            Proto::Udp => kconfig::port_flags::UDP,
            Proto::Both => kconfig::port_flags::TCP | kconfig::port_flags::UDP,
        }
    }
}

impl CountMode {
    fn kernel(self) -> u8 {
        match self {
            CountMode::Syn => kconfig::count_mode::SYN,
            CountMode::Packets => kconfig::count_mode::PACKETS,
            CountMode::Payload => kconfig::count_mode::PAYLOAD,
            CountMode::Http => kconfig::count_mode::HTTP,
        }
    }
}

impl Action {
    fn kernel(self) -> u8 {
        match self {
            Action::Drop => kconfig::action::DROP,
            Action::Monitor => kconfig::action::MONITOR,
        }
    }
}

/// Deserializes an optional value from its string form with the same parser as the flag.
fn de_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

fn de_duration<'de, D>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse::<Rate>().map_err(|e| e.to_string())
}

pub fn parse_dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// One layer of settings: the `monitor run` flags, or the config file (same names, kebab-case).
/// Every field is optional so that the layers can be merged.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layer {
    /// Interface to protect (repeatable).
    #[arg(long = "iface", value_name = "IFACE")]
    #[serde(default)]
    pub iface: Vec<String>,
    /// Hook: xdp (fastest, before the stack) or tc (ingress, after GRO).
    #[arg(long, value_name = "xdp|tc")]
    pub attach: Option<AttachKind>,
    /// XDP mode: auto tries native and falls back to generic (logged).
    #[arg(long, value_name = "auto|native|skb")]
    pub xdp_mode: Option<XdpModeSetting>,
    /// Destination port to protect (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(default)]
    pub port: Vec<u16>,
    /// Transport protocol(s) of the protected ports.
    #[arg(long, value_name = "tcp|udp|both")]
    pub proto: Option<Proto>,
    /// Per-source rate, N/s or N/m [default: 20/s].
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_opt")]
    pub rate: Option<Rate>,
    /// Requests a source may send at once above its rate [default: 40].
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// What counts as one request [default: payload].
    ///
    /// payload: a TCP segment carrying data on a connection this host has (a segment that
    /// belongs to no connection passes uncounted, counted as `unconnected`), or a UDP datagram.
    ///
    /// http: such a segment that begins an HTTP/1.x request line.
    ///
    /// syn: a new TCP connection (a SYN), which is not a request: a keep-alive client sends
    /// many requests per connection (a load tool scraping over keep-alive ran at about 190/s
    /// against a 20/s limit in syn mode).
    ///
    /// packets: every packet to a protected port.
    ///
    /// syn and packets count what an off-path sender can forge with any source address (as
    /// does UDP in every mode): with --ban, forged packets can get that address banned.
    #[arg(long, value_name = "syn|packets|payload|http")]
    pub count: Option<CountMode>,
    /// With --count http: count only requests whose path starts with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    pub http_path: Option<String>,
    /// drop, or monitor (report only) [default: drop].
    #[arg(long, value_name = "drop|monitor")]
    pub action: Option<Action>,
    /// Ban a source that goes over its limit for DURATION (e.g. 10m; 0 = no ban) [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    #[serde(default, deserialize_with = "de_duration")]
    pub ban: Option<Duration>,
    /// IPv4 prefix length that makes one source [default: 32].
    #[arg(long, value_name = "LEN")]
    pub v4_prefix: Option<u8>,
    /// IPv6 prefix length that makes one source [default: 64].
    #[arg(long, value_name = "LEN")]
    pub v6_prefix: Option<u8>,
    /// Rate per aggregate prefix, N/s or N/m; 0 switches the aggregate level off [default: 100/s].
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_opt")]
    pub agg_rate: Option<Rate>,
    /// Burst per aggregate prefix [default: 200].
    #[arg(long, value_name = "N")]
    pub agg_burst: Option<u64>,
    /// IPv4 aggregate prefix length [default: 24].
    #[arg(long, value_name = "LEN")]
    pub v4_agg_prefix: Option<u8>,
    /// IPv6 aggregate prefix length [default: 48].
    #[arg(long, value_name = "LEN")]
    pub v6_agg_prefix: Option<u8>,
    /// Never limit this network (repeatable).
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Always drop this network (repeatable).
    #[arg(long = "deny", value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// Global kernel event budget: at most N offender events per second reach the daemon,
    /// whatever the number of offending sources; half of it is reserved for ban starts.
    /// Withheld events are counted as events_suppressed; totals still reach the history
    /// through table sampling [default: 1000].
    #[arg(long, value_name = "N")]
    pub events_per_sec: Option<u32>,
    /// Capacity of the tracked-sources table [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_sources: Option<u32>,
    /// Control socket (only settable in the file here; the flag is the global --socket).
    #[arg(skip)]
    pub socket: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links [default: /sys/fs/bpf/monitor].
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
    /// Offender history database [default: /var/lib/monitor/offenders.db].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Delete history rows last seen longer ago than DURATION (0 = keep any age) [default: 30d].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    #[serde(default, deserialize_with = "de_duration")]
    pub history_retention: Option<Duration>,
    /// Keep at most N history rows; the fewest dropped, longest unseen go first [default: 200000].
    #[arg(long, value_name = "N")]
    pub history_max_rows: Option<u64>,
    /// Log and event line format [default: text].
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<LogFormat>,
    /// Most offender event lines written, N/s or N/m; past it one summary line a second says
    /// how many more sources went over, requests dropped, and the busiest (0 = summaries
    /// only) [default: 20/s].
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_opt")]
    pub event_lines: Option<Rate>,
    /// Percent of one core the table sampler may use while it samples (1 to 100); it rests
    /// between chunks to stay within it, and samples at half that share over a whole cycle.
    /// Higher: fresher `top` on very large tables, more CPU taken from packet processing
    /// [default: 2].
    #[arg(long, value_name = "PERCENT")]
    pub sample_cpu: Option<u8>,
    /// Keep the programs attached and the state pinned when the daemon stops or crashes.
    #[arg(long)]
    #[serde(default)]
    pub persist: bool,
    /// Serve Prometheus metrics at ADDR (e.g. 127.0.0.1:9469) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Fleet mode: share limits and bans with every daemon using this Redis (redis:// or
    /// rediss://, with user:password@ if needed) [default: off].
    #[arg(long, value_name = "URL")]
    pub fleet: Option<String>,
    /// Fleet-wide rate per source, N/s or N/m [default: the per-source --rate].
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_opt")]
    pub fleet_rate: Option<Rate>,
    /// Requests above the fleet rate a source may send in one second before the fleet bans it
    /// [default: 0].
    #[arg(long, value_name = "N")]
    pub fleet_burst: Option<u64>,
    /// Fleet-wide rate per aggregate prefix, N/s or N/m [default: off].
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_opt")]
    pub fleet_agg_rate: Option<Rate>,
    /// This daemon's name in the fleet; distinct per daemon [default: the hostname].
    #[arg(long, value_name = "NAME")]
    pub fleet_id: Option<String>,
    /// How often heavy hitters are published [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    #[serde(default, deserialize_with = "de_duration")]
    pub fleet_interval: Option<Duration>,
    /// How long a fleet ban lasts; renewed while the source stays over [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    #[serde(default, deserialize_with = "de_duration")]
    pub fleet_ban: Option<Duration>,
    /// Most heavy hitters published per interval, largest first [default: 10000].
    #[arg(long, value_name = "N")]
    pub fleet_max_keys: Option<usize>,
}

/// Fleet mode's settings (`--fleet` and friends), resolved. Changes take effect on restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    pub url: String,
    pub rate: Rate,
    pub burst: u64,
    pub agg_rate: Option<Rate>,
    pub id: String,
    pub interval: Duration,
    pub ban: Duration,
    pub max_keys: usize,
}

pub const DEFAULT_FLEET_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_FLEET_BAN: Duration = Duration::from_secs(60);
pub const DEFAULT_FLEET_MAX_KEYS: usize = 10_000;

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "monitor".to_string(),
    }
}

fn resolve_fleet(
    flags: &Layer,
    file: &Layer,
    rate: Rate,
) -> Result<Option<FleetSettings>, ConfigError> {
    let Some(url) = pick(&flags.fleet, &file.fleet) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid(format!(
            "invalid --fleet {:?}: expected a redis:// or rediss:// URL",
            redact_url(&url)
        )));
    }
    let fleet_rate = pick(&flags.fleet_rate, &file.fleet_rate).unwrap_or(rate);
    if fleet_rate.requests == 0 {
        return Err(invalid("invalid --fleet-rate 0: must be at least 1/m"));
    }
    let interval =
        pick(&flags.fleet_interval, &file.fleet_interval).unwrap_or(DEFAULT_FLEET_INTERVAL);
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
        return Err(invalid(format!(
            "invalid --fleet-interval {}: must be between 100ms and 60s",
            format_duration(interval)
        )));
    }
    let ban = pick(&flags.fleet_ban, &file.fleet_ban).unwrap_or(DEFAULT_FLEET_BAN);
    if ban < Duration::from_secs(1) || ban > Duration::from_secs(7 * 86_400) {
        return Err(invalid(format!(
            "invalid --fleet-ban {}: must be between 1s and 7d",
            format_duration(ban)
        )));
    }
    let id = pick(&flags.fleet_id, &file.fleet_id).unwrap_or_else(hostname);
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "invalid --fleet-id {id:?}: 1 to 64 printable ASCII characters without spaces"
        )));
    }
    let max_keys =
        pick(&flags.fleet_max_keys, &file.fleet_max_keys).unwrap_or(DEFAULT_FLEET_MAX_KEYS);
    if max_keys == 0 || max_keys > 100_000 {
        return Err(invalid(format!(
            "invalid --fleet-max-keys {max_keys}: must be between 1 and 100000"
        )));
    }
    let agg_rate = pick(&flags.fleet_agg_rate, &file.fleet_agg_rate).filter(|r| r.requests != 0);
    Ok(Some(FleetSettings {
        url,
        rate: fleet_rate,
        burst: pick(&flags.fleet_burst, &file.fleet_burst).unwrap_or(0),
        agg_rate,
        id,
        interval,
        ban,
        max_keys,
    }))
}

/// A Redis URL with its password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// The part of the settings that can change while the daemon runs (`monitor set`, reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub ports: BTreeSet<u16>,
    pub proto: Proto,
    pub rate: Rate,
    pub burst: u64,
    pub count: CountMode,
    pub http_path: Option<String>,
    pub action: Action,
    pub ban: Duration,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// None when the aggregate level is off.
    pub agg_rate: Option<Rate>,
    pub agg_burst: u64,
    pub v4_agg_prefix: u8,
    pub v6_agg_prefix: u8,
    /// The kernel's global event budget per second (`Config::events_per_sec`).
    pub events_per_sec: u32,
}

/// Everything `monitor run` needs, merged and validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ifaces: Vec<String>,
    pub attach: AttachKind,
    pub xdp_mode: XdpModeSetting,
    pub policy: Policy,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub max_sources: u32,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub db: PathBuf,
    pub history: crate::history::Retention,
    pub log_format: LogFormat,
    pub event_lines: Rate,
    /// Percent of a core the sampler may use while it samples.
    pub sample_cpu: u8,
    pub persist: bool,
    pub metrics: Option<SocketAddr>,
    pub config_file: Option<PathBuf>,
    pub fleet: Option<FleetSettings>,
}

/// Reads a config file into a layer; errors name the file and the line.
pub fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str::<Layer>(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().replace('\n', " ");
        ConfigError::File {
            path: path.to_path_buf(),
            message: match line {
                Some(l) => format!("line {l}: {message}"),
                None => message,
            },
        }
    })
}

fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>) -> Option<T> {
    flag.clone().or_else(|| file.clone())
}

fn pick_vec<T: Clone>(flag: &[T], file: &[T]) -> Vec<T> {
    if flag.is_empty() { file } else { flag }.to_vec()
}

fn prefix(name: &str, value: u8, max: u8) -> Result<u8, ConfigError> {
    if value == 0 || value > max {
        return Err(invalid(format!(
            "invalid --{name} {value}: must be between 1 and {max}"
        )));
    }
    Ok(value)
}

impl Settings {
    /// Merges the flags over the file (if any) over the defaults, and validates the result.
    pub fn resolve(
        flags: &Layer,
        socket_flag: Option<&Path>,
        config_file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let file = match config_file {
            Some(path) => read_file(path)?,
            None => Layer::default(),
        };
        let ifaces = pick_vec(&flags.iface, &file.iface);
        if ifaces.is_empty() {
            return Err(invalid(
                "no --iface given: name the interface(s) that receive API traffic, e.g. --iface eth0",
            ));
        }
        for iface in &ifaces {
            if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ', '\0']) {
                return Err(invalid(format!(
                    "invalid --iface {iface:?}: not an interface name"
                )));
            }
        }
        let ports: BTreeSet<u16> = pick_vec(&flags.port, &file.port).into_iter().collect();
        if ports.is_empty() {
            return Err(invalid(
                "no --port given: name the port(s) to protect, e.g. --port 443",
            ));
        }
        if ports.contains(&0) {
            return Err(invalid("invalid --port 0: ports are 1 to 65535"));
        }
        let default_rate: Rate = DEFAULT_RATE.parse().expect("valid default");
        let rate = pick(&flags.rate, &file.rate).unwrap_or(default_rate);
        if rate.requests == 0 {
            return Err(invalid(
                "invalid --rate 0: the per-source rate must be at least 1/m (use --action monitor to only report)",
            ));
        }
        let burst = pick(&flags.burst, &file.burst).unwrap_or(DEFAULT_BURST);
        let agg_rate = pick(&flags.agg_rate, &file.agg_rate)
            .unwrap_or_else(|| DEFAULT_AGG_RATE.parse().expect("valid default"));
        let agg_rate = (agg_rate.requests != 0).then_some(agg_rate);
        let agg_burst = pick(&flags.agg_burst, &file.agg_burst).unwrap_or(DEFAULT_AGG_BURST);
        let v4_prefix = prefix(
            "v4-prefix",
            pick(&flags.v4_prefix, &file.v4_prefix).unwrap_or(kconfig::DEFAULT_V4_PREFIX),
            32,
        )?;
        let v6_prefix = prefix(
            "v6-prefix",
            pick(&flags.v6_prefix, &file.v6_prefix).unwrap_or(kconfig::DEFAULT_V6_PREFIX),
            128,
        )?;
        let v4_agg_prefix = prefix(
            "v4-agg-prefix",
            pick(&flags.v4_agg_prefix, &file.v4_agg_prefix)
                .unwrap_or(kconfig::DEFAULT_V4_AGG_PREFIX),
            32,
        )?;
        let v6_agg_prefix = prefix(
            "v6-agg-prefix",
            pick(&flags.v6_agg_prefix, &file.v6_agg_prefix)
                .unwrap_or(kconfig::DEFAULT_V6_AGG_PREFIX),
            128,
        )?;
        let policy = Policy {
            ports,
            proto: pick(&flags.proto, &file.proto).unwrap_or(Proto::Tcp),
            rate,
            burst,
            count: pick(&flags.count, &file.count).unwrap_or(CountMode::Payload),
            http_path: pick(&flags.http_path, &file.http_path),
            action: pick(&flags.action, &file.action).unwrap_or(Action::Drop),
            ban: pick(&flags.ban, &file.ban).unwrap_or(Duration::ZERO),
            v4_prefix,
            v6_prefix,
            agg_rate,
            agg_burst,
            v4_agg_prefix,
            v6_agg_prefix,
            events_per_sec: pick(&flags.events_per_sec, &file.events_per_sec)
                .unwrap_or(kconfig::DEFAULT_EVENTS_PER_SEC),
        };
        policy.validate()?;
        let max_sources = pick(&flags.max_sources, &file.max_sources)
            .unwrap_or(monitor_common::maps::DEFAULT_MAX_SOURCES);
        if max_sources == 0 || max_sources > MAX_MAX_SOURCES {
            return Err(invalid(format!(
                "invalid --max-sources {max_sources}: must be between 1 and {MAX_MAX_SOURCES}"
            )));
        }
        let allow = pick_vec(&flags.allow, &file.allow);
        let deny = pick_vec(&flags.deny, &file.deny);
        if let Some(both) = allow.iter().find(|c| deny.contains(c)) {
            return Err(invalid(format!(
                "{both} is in both the allow and the deny list; the allow list would win"
            )));
        }
        let limit = monitor_common::maps::MAX_LIST_ENTRIES as usize;
        if allow.len() > limit || deny.len() > limit {
            return Err(invalid(format!(
                "too many allow or deny entries (at most {limit} each)"
            )));
        }
        let history = crate::history::Retention {
            max_age: pick(&flags.history_retention, &file.history_retention)
                .unwrap_or(crate::history::DEFAULT_RETENTION),
            max_rows: pick(&flags.history_max_rows, &file.history_max_rows)
                .unwrap_or(crate::history::DEFAULT_MAX_ROWS),
        };
        if history.max_rows == 0 {
            return Err(invalid(
                "invalid --history-max-rows 0: the history needs at least 1 row".to_string(),
            ));
        }
        let sample_cpu = pick(&flags.sample_cpu, &file.sample_cpu).unwrap_or(DEFAULT_SAMPLE_CPU);
        if !(1..=100).contains(&sample_cpu) {
            return Err(invalid(format!(
                "invalid --sample-cpu {sample_cpu}: must be a percentage from 1 to 100"
            )));
        }
        let fleet = resolve_fleet(flags, &file, rate)?;
        let socket = socket_flag
            .map(Path::to_path_buf)
            .or(file.socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Ok(Settings {
            ifaces,
            attach: pick(&flags.attach, &file.attach).unwrap_or(AttachKind::Xdp),
            xdp_mode: pick(&flags.xdp_mode, &file.xdp_mode).unwrap_or(XdpModeSetting::Auto),
            policy,
            allow,
            deny,
            max_sources,
            socket,
            pin_path: pick(&flags.pin_path, &file.pin_path)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
            db: pick(&flags.db, &file.db).unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            history,
            log_format: pick(&flags.log_format, &file.log_format).unwrap_or(LogFormat::Text),
            event_lines: pick(&flags.event_lines, &file.event_lines)
                .unwrap_or_else(|| DEFAULT_EVENT_LINES.parse().expect("valid default")),
            sample_cpu,
            persist: flags.persist || file.persist,
            metrics: pick(&flags.metrics, &file.metrics),
            config_file: config_file.map(Path::to_path_buf),
            fleet,
        })
    }

    /// Names of the settings that differ from `other` and only take effect on a restart.
    pub fn restart_only_changes(&self, other: &Settings) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.ifaces != other.ifaces {
            out.push("iface");
        }
        if self.attach != other.attach {
            out.push("attach");
        }
        if self.xdp_mode != other.xdp_mode {
            out.push("xdp-mode");
        }
        if self.max_sources != other.max_sources {
            out.push("max-sources");
        }
        if self.socket != other.socket {
            out.push("socket");
        }
        if self.pin_path != other.pin_path {
            out.push("pin-path");
        }
        if self.db != other.db {
            out.push("db");
        }
        if self.history != other.history {
            out.push("history-retention/history-max-rows");
        }
        if self.log_format != other.log_format {
            out.push("log-format");
        }
        if self.event_lines != other.event_lines {
            out.push("event-lines");
        }
        if self.sample_cpu != other.sample_cpu {
            out.push("sample-cpu");
        }
        if self.persist != other.persist {
            out.push("persist");
        }
        if self.metrics != other.metrics {
            out.push("metrics");
        }
        if self.fleet != other.fleet {
            out.push("fleet");
        }
        out
    }
}

impl Policy {
    /// A one-line warning when bans are on while counting what an off-path spoofer can forge:
    /// `syn` and `packets` count packets whose source address nobody checked, so a spoofer can
    /// spend any source's budget and get it banned.
    pub fn spoofable_bans_warning(&self) -> Option<String> {
        let forgeable = matches!(self.count, CountMode::Syn | CountMode::Packets);
        (forgeable && !self.ban.is_zero()).then(|| {
            format!(
                "bans are on (ban {}) with count {}: that mode counts packets an off-path spoofer can forge with any source address, so a spoofer can get real clients banned; use count payload or http with bans, or ban 0",
                format_duration(self.ban),
                self.count
            )
        })
    }

    /// The warning, when going from `self` to `new` changed the ban or the counting mode and
    /// `new` bans on a forgeable count.
    pub fn spoofable_bans_change(&self, new: &Policy) -> Option<String> {
        let touched = self.count != new.count || self.ban != new.ban;
        if touched {
            new.spoofable_bans_warning()
        } else {
            None
        }
    }

    /// Checks what the kernel's arithmetic and layout require.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.source_limit()?;
        self.aggregate_limit()?;
        if self.v4_agg_prefix > self.v4_prefix || self.v6_agg_prefix > self.v6_prefix {
            return Err(invalid(format!(
                "aggregate prefixes (/{} and /{}) must not be longer than the source prefixes (/{} and /{})",
                self.v4_agg_prefix, self.v6_agg_prefix, self.v4_prefix, self.v6_prefix
            )));
        }
        if let Some(path) = &self.http_path
            && (!path.starts_with('/') || path.len() > HTTP_PATH_MAX || !path.is_ascii())
        {
            return Err(invalid(format!(
                "invalid --http-path {path:?}: must start with / and be at most {HTTP_PATH_MAX} ASCII bytes"
            )));
        }
        if self.events_per_sec > kconfig::MAX_EVENTS_PER_SEC {
            return Err(invalid(format!(
                "invalid --events-per-sec {}: must be at most {}",
                self.events_per_sec,
                kconfig::MAX_EVENTS_PER_SEC
            )));
        }
        if self.ban.as_nanos() > u64::MAX as u128 / 4 {
            return Err(invalid(format!(
                "invalid --ban {}: too long",
                format_duration(self.ban)
            )));
        }
        Ok(())
    }

    fn source_limit(&self) -> Result<Limit, ConfigError> {
        limit("rate", "burst", self.rate, self.burst)
    }

    fn aggregate_limit(&self) -> Result<Limit, ConfigError> {
        match self.agg_rate {
            None => Ok(Limit::OFF),
            Some(rate) => limit("agg-rate", "agg-burst", rate, self.agg_burst),
        }
    }

    /// The kernel's `Config` for this policy; `list_flags` says which lists have entries.
    pub fn kernel_config(&self, list_flags: u8) -> Result<Config, ConfigError> {
        let mut c = Config::with_prefixes(
            self.v4_prefix,
            self.v6_prefix,
            self.v4_agg_prefix,
            self.v6_agg_prefix,
        );
        c.source = self.source_limit()?;
        c.aggregate = self.aggregate_limit()?;
        c.ban_ns = self.ban.as_nanos() as u64;
        c.set_event_budget(self.events_per_sec);
        c.count_mode = self.count.kernel();
        c.action = self.action.kernel();
        c.flags = list_flags;
        if let Some(path) = &self.http_path {
            c.http_path_len = path.len() as u8;
            c.http_path[..path.len()].copy_from_slice(path.as_bytes());
        }
        Ok(c)
    }
}

fn limit(rate_name: &str, burst_name: &str, rate: Rate, burst: u64) -> Result<Limit, ConfigError> {
    if burst == 0 {
        return Err(invalid(format!(
            "invalid --{burst_name} 0: must be at least 1"
        )));
    }
    Limit::new(rate.requests, rate.period_ns, burst).ok_or_else(|| {
        invalid(format!(
            "invalid --{rate_name} {rate} with --{burst_name} {burst}: the rate must be at most 1000000000/s and rate interval times burst must fit in 64-bit nanoseconds"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: impl FnOnce(&mut Layer)) -> Layer {
        let mut l = Layer {
            iface: vec!["eth0".into()],
            port: vec![443],
            ..Layer::default()
        };
        f(&mut l);
        l
    }

    #[test]
    fn fleet_settings_resolve_from_flags_and_file() {
        let s = Settings::resolve(&flags(|_| {}), None, None).unwrap();
        assert_eq!(s.fleet, None, "no --fleet, no fleet mode");
        let dir = std::env::temp_dir().join(format!("monitor-fleet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "fleet = \"redis://u:pw@r:6379\"\nfleet-rate = \"30/s\"\nfleet-interval = \"500ms\"\n",
        )
        .unwrap();
        let f = Settings::resolve(
            &flags(|l| l.fleet_id = Some("api-1".into())),
            None,
            Some(&path),
        )
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(f.rate.to_string(), "30/s");
        assert_eq!(f.interval, Duration::from_millis(500));
        assert_eq!(
            (f.id.as_str(), f.ban, f.burst),
            ("api-1", DEFAULT_FLEET_BAN, 0)
        );
        let bad = |f: fn(&mut Layer)| {
            Settings::resolve(&flags(f), None, None)
                .unwrap_err()
                .to_string()
        };
        let e = bad(|l| l.fleet = Some("http://u:pw@r".into()));
        assert!(e.contains("redis://") && !e.contains("pw"), "{e}");
        assert!(
            bad(|l| {
                l.fleet = Some("redis://r".into());
                l.fleet_interval = Some(Duration::from_millis(10));
            })
            .contains("--fleet-interval")
        );
        assert!(
            bad(|l| {
                l.fleet = Some("redis://r".into());
                l.fleet_id = Some("two words".into());
            })
            .contains("--fleet-id")
        );
        assert_eq!(
            redact_url("rediss://user:secret@h:1"),
            "rediss://user:***@h:1"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_suit_a_lookup_api() {
        let s = Settings::resolve(&flags(|_| {}), None, None).unwrap();
        assert_eq!(s.policy.rate.to_string(), "20/s");
        assert_eq!(s.policy.burst, 40);
        assert_eq!(s.policy.agg_rate.unwrap().to_string(), "100/s");
        assert_eq!(s.policy.action, Action::Drop);
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        let c = s.policy.kernel_config(0).unwrap();
        assert_eq!(c.source.burst(), 40);
        assert_eq!(c.v4_agg_prefix, 24);
        assert!(c.is_valid(), "carries the magic number and version");
        assert_eq!((c.events_per_sec, c.events_reserved), (1000, 500));
        let c = Settings::resolve(&flags(|l| l.events_per_sec = Some(40)), None, None)
            .unwrap()
            .policy
            .kernel_config(0)
            .unwrap();
        assert_eq!((c.events_per_sec, c.events_reserved), (40, 20));
    }

    #[test]
    fn flags_win_over_file_and_file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("monitor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "iface = [\"eth1\"]\nport = [8443]\nrate = \"5/s\"\nburst = 7\n",
        )
        .unwrap();
        let s = Settings::resolve(&flags(|l| l.burst = Some(9)), None, Some(&path)).unwrap();
        assert_eq!(s.ifaces, vec!["eth0".to_string()]);
        assert_eq!(s.policy.rate.to_string(), "5/s");
        assert_eq!(s.policy.burst, 9);
        std::fs::write(&path, "port = [1]\nrate = \"fast\"\n").unwrap();
        let err = Settings::resolve(&flags(|_| {}), None, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("invalid rate"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        std::fs::write(&path, "colour = 1\n").unwrap();
        let err = Settings::resolve(&flags(|_| {}), None, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_config_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor.example.toml");
        let s = Settings::resolve(&Layer::default(), None, Some(&path)).unwrap();
        let d = Settings::resolve(&flags(|_| {}), None, None).unwrap();
        let mut example = s.policy.clone();
        example.ports = d.policy.ports.clone();
        assert_eq!(
            example, d.policy,
            "monitor.example.toml disagrees with the defaults"
        );
        assert_eq!(
            (s.max_sources, s.socket, s.db, s.history),
            (d.max_sources, d.socket, d.db, d.history)
        );
        assert_eq!(
            (
                s.log_format,
                s.event_lines,
                s.persist,
                s.metrics,
                s.sample_cpu
            ),
            (
                d.log_format,
                d.event_lines,
                d.persist,
                d.metrics,
                d.sample_cpu
            )
        );
        assert_eq!(
            (s.attach, s.xdp_mode, s.pin_path, s.allow.len()),
            (d.attach, d.xdp_mode, d.pin_path, 2)
        );
    }

    #[test]
    fn bans_on_a_forgeable_count_warn_in_one_line() {
        let policy = |f: fn(&mut Layer)| Settings::resolve(&flags(f), None, None).unwrap().policy;
        assert_eq!(policy(|_| {}).spoofable_bans_warning(), None);
        assert_eq!(
            policy(|l| l.count = Some(CountMode::Syn)).spoofable_bans_warning(),
            None,
            "no bans, no warning"
        );
        assert_eq!(
            policy(|l| l.ban = Some(Duration::from_secs(600))).spoofable_bans_warning(),
            None,
            "payload counting is not forgeable off-path"
        );
        for mode in [CountMode::Syn, CountMode::Packets] {
            let p = Settings::resolve(
                &flags(|l| {
                    l.count = Some(mode);
                    l.ban = Some(Duration::from_secs(600));
                }),
                None,
                None,
            )
            .unwrap()
            .policy;
            let w = p.spoofable_bans_warning().expect("a warning");
            assert!(
                w.contains(mode.as_str()) && w.contains("spoofer") && !w.contains('\n'),
                "{w}"
            );
        }
    }

    #[test]
    fn invalid_values_are_refused_with_one_line() {
        type Case = Box<dyn Fn(&mut Layer)>;
        let cases: Vec<Case> = vec![
            Box::new(|l| l.v4_prefix = Some(33)),
            Box::new(|l| l.v6_agg_prefix = Some(0)),
            Box::new(|l| l.burst = Some(0)),
            Box::new(|l| l.rate = Some("0/s".parse().unwrap())),
            Box::new(|l| l.max_sources = Some(0)),
            Box::new(|l| l.history_max_rows = Some(0)),
            Box::new(|l| l.sample_cpu = Some(0)),
            Box::new(|l| l.sample_cpu = Some(101)),
            Box::new(|l| l.http_path = Some("api".into())),
            Box::new(|l| l.iface.clear()),
            Box::new(|l| l.port.clear()),
            Box::new(|l| l.v4_prefix = Some(16)),
            Box::new(|l| l.events_per_sec = Some(kconfig::MAX_EVENTS_PER_SEC + 1)),
            Box::new(|l| {
                l.allow = vec!["10.0.0.0/8".parse().unwrap()];
                l.deny = vec!["10.0.0.0/8".parse().unwrap()];
            }),
        ];
        for (i, case) in cases.iter().enumerate() {
            let err = Settings::resolve(&flags(case), None, None)
                .expect_err(&format!("case {i} must fail"))
                .to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        let off = Settings::resolve(
            &flags(|l| l.agg_rate = Some("0/s".parse().unwrap())),
            None,
            None,
        )
        .unwrap();
        assert!(off.policy.kernel_config(0).unwrap().aggregate.is_off());
    }
}
