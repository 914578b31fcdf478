//! The end-of-demo report: what the attackers got without and with the monitor, what legitimate
//! users lost, what the monitor itself says (`top`, `offenders`, `stats`), how long each
//! offender took to be stopped, and the honest limit of per-source counting. Rendered as text
//! for people and as JSON (`--json`) for scripts and the integration test.

use std::{fmt::Write as _, net::IpAddr};

use serde::Serialize;
use serde_json::Value;

use super::scenario::{Class, ClassTotals, UnitSummary};

#[derive(Serialize, Default)]
pub struct RunReport {
    pub legit: ClassTotals,
    pub loud: ClassTotals,
    pub distributed: ClassTotals,
    pub low_and_slow: ClassTotals,
}

impl RunReport {
    pub fn get(&self, class: Class) -> &ClassTotals {
        match class {
            Class::Legit => &self.legit,
            Class::Loud => &self.loud,
            Class::Distributed => &self.distributed,
            Class::LowAndSlow => &self.low_and_slow,
        }
    }
    pub fn set(&mut self, class: Class, totals: ClassTotals) {
        match class {
            Class::Legit => self.legit = totals,
            Class::Loud => self.loud = totals,
            Class::Distributed => self.distributed = totals,
            Class::LowAndSlow => self.low_and_slow = totals,
        }
    }
    /// Numbers resolved and lookups answered for the loud and distributed scrapers together.
    fn attackers(&self) -> (u64, u64) {
        (
            self.loud.resolved + self.distributed.resolved,
            self.loud.served + self.distributed.served,
        )
    }
}

#[derive(Serialize)]
pub struct Report {
    /// Share of the loud and distributed scrapers' resolved phone numbers that the monitor
    /// prevented (0..1); null unless both runs ran.
    pub attacker_reduction: Option<f64>,
    /// The same share counted over answered lookups (a 404 answers too).
    pub attacker_served_reduction: Option<f64>,
    /// Legitimate requests that failed with the monitor; null if that run did not run.
    pub legit_lost: Option<u64>,
    /// Legitimate requests that failed without the monitor (an overloaded service).
    pub legit_lost_without: Option<u64>,
    pub chart: Option<String>,
    pub run_id: String,
    pub seed: u64,
    pub duration_s: u64,
    pub attach: String,
    pub daemon_command: Option<String>,
    /// False when extra `monitor run` flags were given (measuring other defaults).
    pub daemon_defaults: bool,
    pub without: Option<RunReport>,
    pub with: Option<RunReport>,
    /// The loud and distributed scrapers' sources as the monitor keys them by default.
    pub attackers: Vec<String>,
    /// Attacking sources that no `monitor offenders` entry covers (should be empty).
    pub attackers_not_in_offenders: Vec<String>,
    /// Per offender, from the clients' side (with the monitor).
    pub time_to_stop: Vec<UnitSummary>,
    pub low_and_slow: LowAndSlow,
    /// `monitor top --json`, taken while the attack was running.
    pub top: Option<Value>,
    /// `monitor offenders --json`, after the run.
    pub offenders: Option<Value>,
    /// `monitor stats --json`, after the run.
    pub stats: Option<Value>,
    pub kept: bool,
}

#[derive(Serialize)]
pub struct LowAndSlow {
    pub sources: usize,
    pub resolved_without: Option<u64>,
    pub resolved_with: Option<u64>,
    pub statement: &'static str,
}

pub const LOW_AND_SLOW_STATEMENT: &str = "Per-source counting cannot stop the low-and-slow \
scraper: every one of its addresses, and every prefix around them, stays under any limit that \
leaves real users alone, so the monitor rightly lets it through. What stops it works above the \
network: per-account and per-API-key quotas on lookups, application-level limits on how many \
distinct numbers one client may resolve per day, and behavioural signals such as sequential or \
dictionary-ordered numbers, a high share of misses, and the same client fingerprint across \
many addresses.";

/// Fraction of `without` that `with` removed.
pub fn reduction(without: u64, with: u64) -> Option<f64> {
    (without > 0).then(|| 1.0 - (with as f64 / without as f64).min(1.0))
}

impl Report {
    pub fn fill_reductions(&mut self) {
        if let (Some(wo), Some(w)) = (&self.without, &self.with) {
            let ((r0, s0), (r1, s1)) = (wo.attackers(), w.attackers());
            self.attacker_reduction = reduction(r0, r1);
            self.attacker_served_reduction = reduction(s0, s1);
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n=== monitor demo: contact-lookup enumeration, {} s per run, seed {}, {} ===",
            self.duration_s, self.seed, self.attach
        );
        if let Some(cmd) = &self.daemon_command {
            let note = if self.daemon_defaults {
                "(documented defaults otherwise)"
            } else {
                "(NOT the defaults: extra flags given with --monitor-arg)"
            };
            let _ = writeln!(o, "daemon: {cmd}   {note}");
        }
        let _ = writeln!(
            o,
            "\n{:<14} {:>26} {:>26}",
            "", "without the monitor", "with the monitor"
        );
        let _ = writeln!(
            o,
            "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "client class", "served", "dropped", "resolved", "served", "dropped", "resolved"
        );
        for class in Class::ALL {
            let cell = |r: &Option<RunReport>| match r {
                Some(r) => {
                    let t = r.get(class);
                    format!("{:>8} {:>8} {:>8}", t.served, t.dropped, t.resolved)
                }
                None => format!("{:>8} {:>8} {:>8}", "-", "-", "-"),
            };
            let _ = writeln!(
                o,
                "{:<14} {} {}",
                class.label(),
                cell(&self.without),
                cell(&self.with)
            );
        }
        if let (Some(wo), Some(w)) = (&self.without, &self.with) {
            let (r0, r1) = (wo.attackers().0, w.attackers().0);
            let _ = writeln!(
                o,
                "\nPhone numbers resolved by the loud and distributed scrapers: {r0} without the \
                 monitor, {r1} with it ({} prevented).",
                pct(self.attacker_reduction)
            );
        }
        if let Some(lost) = self.legit_lost {
            let total = self
                .with
                .as_ref()
                .map_or(0, |w| w.legit.served + w.legit.dropped);
            let _ = writeln!(
                o,
                "Legitimate requests lost with the monitor: {lost} of {total}."
            );
        }
        if let Some(lost) = self.legit_lost_without
            && lost > 0
        {
            let _ = writeln!(
                o,
                "(Without the monitor, {lost} legitimate requests failed: the service was swamped.)"
            );
        }
        if let Some(stats) = &self.stats {
            let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
            let _ = writeln!(
                o,
                "{}",
                wrap(
                    &format!(
                        "In the kernel (monitor stats): {} request segments dropped, {} over a \
                         source limit, {} over an aggregate limit, {} banned. A scraper whose \
                         request is dropped waits for it (TCP retransmits it, and each \
                         retransmission counts again) until its 1 s timeout, so it sees far \
                         fewer failures than the kernel drops.",
                        n("dropped"),
                        n("dropped_rate"),
                        n("dropped_aggregate"),
                        n("dropped_ban")
                    ),
                    96
                )
            );
        }
        if let Some(top) = &self.top {
            let _ = writeln!(o, "\nmonitor top (during the attack):");
            table(
                &mut o,
                top,
                &[
                    "source",
                    "level",
                    "rate",
                    "total",
                    "dropped",
                    "banned_until",
                ],
                10,
            );
        }
        if let Some(off) = &self.offenders {
            let _ = writeln!(o, "\nmonitor offenders:");
            table(
                &mut o,
                off,
                &["source", "first_seen", "last_seen", "peak_rate", "dropped"],
                12,
            );
            if self.attackers_not_in_offenders.is_empty() {
                let _ = writeln!(o, "Every attacking address or prefix is among them.");
            } else {
                let _ = writeln!(
                    o,
                    "NOT among them: {}",
                    self.attackers_not_in_offenders.join(", ")
                );
            }
        }
        if !self.time_to_stop.is_empty() {
            let _ = writeln!(
                o,
                "\nTime to stop, as each offender saw it: from its first request to the first \
                 one the monitor refused, and how many lookups per second still got through \
                 after that (the limit it was held to; 0 once banned):"
            );
            for u in &self.time_to_stop {
                let stop = u
                    .time_to_first_drop_s
                    .map_or("never refused".to_string(), |t| {
                        format!("refused after {t:.2} s")
                    });
                let after = u.served_per_s_after_first_drop.map_or(String::new(), |r| {
                    format!(", then {r:.1} lookups/s got through")
                });
                let _ = writeln!(
                    o,
                    "  {:<18} {:<12} {stop}{after}",
                    u.source,
                    u.class.label()
                );
            }
        }
        let l = &self.low_and_slow;
        let _ = writeln!(
            o,
            "\nLow-and-slow scraper ({} addresses in unrelated prefixes): {} numbers resolved \
             without the monitor, {} with it.",
            l.sources,
            opt(l.resolved_without),
            opt(l.resolved_with)
        );
        let _ = writeln!(o, "{}", wrap(l.statement, 96));
        if let Some(chart) = &self.chart {
            let _ = writeln!(o, "\nChart: {chart}");
        }
        o
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// Prints the first `limit` objects of a JSON array as a table of the given columns.
fn table(o: &mut String, value: &Value, columns: &[&str], limit: usize) {
    let Some(rows) = value.as_array() else {
        let _ = writeln!(o, "  (unexpected output: {value})");
        return;
    };
    if rows.is_empty() {
        let _ = writeln!(o, "  (none)");
        return;
    }
    let cell = |row: &Value, col: &str| match row.get(col) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Some(v) => v.to_string(),
    };
    let shown = &rows[..rows.len().min(limit)];
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            shown
                .iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", parts.join("  ").trim_end())
    };
    let _ = writeln!(
        o,
        "{}",
        line(columns.iter().map(|c| c.to_string()).collect())
    );
    for r in shown {
        let _ = writeln!(o, "{}", line(columns.iter().map(|c| cell(r, c)).collect()));
    }
    if rows.len() > limit {
        let _ = writeln!(o, "  ... and {} more", rows.len() - limit);
    }
}

/// Whether `cidr` (as the monitor prints it, e.g. `198.18.96.0/24`) contains `addr`.
pub fn cidr_contains(cidr: &str, addr: IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return net_eq(cidr, addr);
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn net_eq(s: &str, addr: IpAddr) -> bool {
    s.parse::<IpAddr>().is_ok_and(|a| a == addr)
}

/// The attacking sources (`a.b.c.d/32`, `x::/64`, ...) that no offender entry covers. A source
/// counts as covered by an entry for it or for a prefix around it (its aggregate).
pub fn uncovered(attackers: &[String], offenders: &Value) -> Vec<String> {
    let entries: Vec<&str> = offenders
        .as_array()
        .map(|a| a.iter().filter_map(|o| o.get("source")?.as_str()).collect())
        .unwrap_or_default();
    attackers
        .iter()
        .filter(|src| {
            let addr = src.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
            !addr.is_some_and(|a| entries.iter().any(|e| cidr_contains(e, a)))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_by_prefix() {
        let a: IpAddr = "198.18.96.17".parse().unwrap();
        assert!(cidr_contains("198.18.96.0/24", a));
        assert!(cidr_contains("198.18.96.17/32", a));
        assert!(cidr_contains("198.18.96.17", a));
        assert!(!cidr_contains("198.18.97.0/24", a));
        assert!(!cidr_contains("fd00::/8", a));
        let b: IpAddr = "fd00:77:0:7:1234::1".parse().unwrap();
        assert!(cidr_contains("fd00:77:0:7::/64", b));
        assert!(!cidr_contains("fd00:77:0:8::/64", b));
        assert!(!cidr_contains("garbage/24", b));
    }

    #[test]
    fn uncovered_lists_only_missing_sources() {
        let offenders = serde_json::json!([
            {"source": "198.18.64.66/32"},
            {"source": "198.18.96.0/24"},
        ]);
        let attackers = vec![
            "198.18.64.66/32".to_string(),
            "198.18.96.10/32".to_string(),
            "fd00:77:0:7::/64".to_string(),
        ];
        assert_eq!(
            uncovered(&attackers, &offenders),
            vec!["fd00:77:0:7::/64".to_string()]
        );
    }

    #[test]
    fn reduction_is_a_fraction() {
        assert_eq!(reduction(0, 0), None);
        assert_eq!(reduction(100, 5), Some(0.95));
        assert_eq!(reduction(100, 200), Some(0.0));
    }
}
