//! The ban stream's entries: what a daemon writes (ban, block, unblock) and the checks every
//! entry passes before it reaches the map writer. Anything else is malformed: skipped and
//! counted, never applied.
//!
//! Anyone who can write to the Redis can write entries, so an entry is trusted exactly as far
//! as the Redis is: a bad entry cannot crash a daemon, outlive `MAX_AHEAD`, or touch the allow
//! and deny lists, but a well-formed one does ban (or unblock) its source on every host.

use std::{collections::HashMap, time::Duration};

use crate::cidr::Cidr;

/// Furthest in the future an entry's expiry may lie (the longest `--fleet-ban` plus slack for
/// clock differences); later ones are malformed, so a bad writer cannot ban for ever.
pub const MAX_AHEAD: Duration = Duration::from_secs(7 * 86_400 + 3_600);

const MAX_NAME: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The fleet's decision: the source went over the fleet limit.
    Ban,
    /// `monitor block` on some host.
    Block,
    /// `monitor unblock` on some host.
    Unblock,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ban => "ban",
            Op::Block => "block",
            Op::Unblock => "unblock",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub op: Op,
    pub src: Cidr,
    /// Wall-clock expiry (Unix ms); 0 for `Unblock`.
    pub until_ms: i64,
    /// The fleet id of the daemon that wrote the entry.
    pub origin: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed fleet stream entry: {0}")]
pub struct Malformed(pub String);

fn bad(msg: impl Into<String>) -> Malformed {
    Malformed(msg.into())
}

fn name(field: &str, value: Option<&String>) -> Result<String, Malformed> {
    let value = value.ok_or_else(|| bad(format!("no {field}")))?;
    if value.is_empty() || value.len() > MAX_NAME || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad(format!("bad {field}")));
    }
    Ok(value.clone())
}

impl Entry {
    /// Checks one entry's fields, with `now_ms` the reader's wall clock.
    pub fn parse(fields: &HashMap<String, String>, now_ms: i64) -> Result<Self, Malformed> {
        let op = match fields.get("op").map(String::as_str) {
            Some("ban") => Op::Ban,
            Some("block") => Op::Block,
            Some("unblock") => Op::Unblock,
            Some(other) => return Err(bad(format!("unknown op {:.32?}", other))),
            None => return Err(bad("no op")),
        };
        let src: Cidr = fields
            .get("src")
            .ok_or_else(|| bad("no src"))?
            .parse()
            .map_err(|_| bad("src is not a CIDR"))?;
        let until_ms = match op {
            Op::Unblock => 0,
            Op::Ban | Op::Block => {
                let until: i64 = fields
                    .get("until")
                    .ok_or_else(|| bad("no until"))?
                    .parse()
                    .map_err(|_| bad("until is not a number"))?;
                if until <= 0 || until > now_ms.saturating_add(MAX_AHEAD.as_millis() as i64) {
                    return Err(bad("until out of range"));
                }
                until
            }
        };
        Ok(Entry {
            op,
            src,
            until_ms,
            origin: name("origin", fields.get("origin"))?,
            reason: name("reason", fields.get("reason"))?,
        })
    }

    /// The fields as written to the stream.
    pub fn fields(&self) -> [(&'static str, String); 5] {
        [
            ("op", self.op.as_str().to_string()),
            ("src", self.src.to_string()),
            ("until", self.until_ms.to_string()),
            ("origin", self.origin.clone()),
            ("reason", self.reason.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn fleet_entries_round_trip() {
        let e = Entry {
            op: Op::Ban,
            src: "198.51.100.7/32".parse().unwrap(),
            until_ms: NOW + 60_000,
            origin: "api-1".into(),
            reason: "fleet-rate".into(),
        };
        let f: HashMap<String, String> = e
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Entry::parse(&f, NOW), Ok(e));
        let u = fields(&[
            ("op", "unblock"),
            ("src", "2001:db8::/64"),
            ("origin", "api-2"),
            ("reason", "manual"),
        ]);
        assert_eq!(Entry::parse(&u, NOW).unwrap().op, Op::Unblock);
    }

    #[test]
    fn fleet_malformed_entries_are_refused() {
        let ok = [
            ("op", "ban"),
            ("src", "198.51.100.7/32"),
            ("until", "1800000060000"),
            ("origin", "api-1"),
            ("reason", "fleet-rate"),
        ];
        assert!(Entry::parse(&fields(&ok), NOW).is_ok());
        let cases: Vec<(usize, &str)> = vec![
            (0, "nuke"),
            (1, "not-an-address"),
            (1, "198.51.100.7/40"),
            (2, "soon"),
            (2, "-5"),
            (2, "99999999999999999"),
            (3, ""),
            (3, "two words"),
            (4, "\u{7}"),
        ];
        for (i, value) in cases {
            let mut f = ok;
            f[i].1 = value;
            assert!(
                Entry::parse(&fields(&f), NOW).is_err(),
                "{} = {value:?} accepted",
                ok[i].0
            );
        }
        for missing in 0..ok.len() {
            let f: Vec<_> = ok
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, p)| *p)
                .collect();
            assert!(Entry::parse(&fields(&f), NOW).is_err());
        }
    }
}
