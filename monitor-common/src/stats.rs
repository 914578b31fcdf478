//! Indices of the per-CPU statistics array `MON_STATS`.

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat { $($(#[$doc])* $name,)* }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$name,)*];
            /// snake_case name, used in JSON, metrics and tables.
            pub const fn label(self) -> &'static str {
                match self { $(Stat::$name => $label,)* }
            }
        }
    };
}

stats! {
    /// Every packet the program saw.
    Seen = "seen",
    /// Passed untouched: not IP, not TCP/UDP, or not to a monitored port and protocol.
    NotMonitored = "not_monitored",
    /// Could not be parsed (truncated or inconsistent headers): passed untouched.
    Malformed = "malformed",
    /// A later IP fragment: no ports, passed untouched.
    Fragment = "fragment",
    /// To a monitored port and protocol.
    Monitored = "monitored",
    /// Monitored packets that were not a request in the counting mode (an ACK, say): passed.
    NotCounted = "not_counted",
    /// Requests counted against a limit.
    Requests = "requests",
    /// Monitored packets passed (admitted requests, uncounted packets, allowlisted, monitor-mode excess).
    Passed = "passed",
    /// Monitored packets dropped, for any reason below.
    Dropped = "dropped",
    DroppedRate = "dropped_rate",
    DroppedAggregate = "dropped_aggregate",
    DroppedBan = "dropped_ban",
    DroppedDeny = "dropped_deny",
    /// Allowlisted packets (never limited).
    Allowlisted = "allowlisted",
    /// Requests over a limit that passed because the action is `monitor`.
    MonitorOnly = "monitor_only",
    /// Bans started.
    BansStarted = "bans_started",
    /// A ban could not be stored: the ban table was full.
    BansFull = "bans_full",
    EventsSent = "events_sent",
    /// Events not delivered because the ring buffer was full (the verdict is unaffected).
    EventsLost = "events_lost",
    /// The bucket CAS lost its race too often; the request was charged with an atomic add
    /// instead (admitted only if the charge fit within the limit).
    CasExhausted = "cas_exhausted",
    /// In `payload` and `http` modes: TCP segments that would have been requests but belong to
    /// no connection of this host (forged, stale, or matching only a listener): passed, not
    /// counted. Also counted in `not_counted`.
    Unconnected = "unconnected",
    /// Events withheld by the global event budget (`Config::events_per_sec`): they never
    /// reached the ring buffer. The sampler still carries every key's totals to the history.
    EventsSuppressed = "events_suppressed",
}

pub const STAT_COUNT: u32 = Stat::ALL.len() as u32;
