//! How replies are printed: aligned tables for people, JSON (`--json`) for scripts. The JSON
//! shapes are a contract: `top` and `offenders` print arrays of rows, `stats` an object.

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::proto::{Done, ListRow, OffenderRow, Request, StatusReply, TopReply};

fn parse<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).context("unexpected reply from the daemon (version mismatch?)")
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print(request: &Request, value: Value, json: bool) -> Result<()> {
    match request {
        Request::Top { fleet: true, .. } => {
            let rows: Vec<crate::proto::FleetRate> = parse(value.clone())?;
            if json {
                return print_json(&value);
            }
            let rows = rows
                .iter()
                .map(|r| {
                    vec![
                        r.key.clone(),
                        format!("{:.1}", r.fleet_rate),
                        r.local_count.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["KEY", "FLEET RATE/s", "LOCAL (LAST INTERVAL)"], rows)
            );
        }
        Request::Fleet => {
            let r: crate::proto::FleetReply = parse(value.clone())?;
            if json {
                return print_json(&value);
            }
            if !r.enabled {
                println!("fleet mode: off (start the daemon with --fleet URL)");
                return Ok(());
            }
            println!(
                "fleet: {} as {} via {}",
                if r.connected {
                    "connected"
                } else {
                    "NOT CONNECTED (enforcing locally)"
                },
                r.id.as_deref().unwrap_or("-"),
                r.redis.as_deref().unwrap_or("-")
            );
            println!("hosts: {} ({})", r.hosts.len(), r.hosts.join(", "));
            println!(
                "last sync: {}, stream lag {} ms",
                r.last_sync.as_deref().unwrap_or("never"),
                r.lag_ms.map_or("-".to_string(), |l| l.to_string())
            );
            println!(
                "keys published {}, suppressed {}; bans applied {}; malformed entries {}; waiting to publish {}",
                r.keys_published,
                r.keys_suppressed,
                r.bans_applied,
                r.malformed_entries,
                r.pending_entries
            );
        }
        Request::Top { .. } => {
            let reply: TopReply = parse(value)?;
            if json {
                return print_json(&serde_json::to_value(&reply.rows)?);
            }
            let rows = reply
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.source.clone(),
                        r.level.clone(),
                        format!("{:.1}", r.rate),
                        r.total.to_string(),
                        r.dropped.to_string(),
                        r.banned_until.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "SOURCE",
                        "LEVEL",
                        "RATE/s",
                        "TOTAL",
                        "DROPPED",
                        "BANNED UNTIL"
                    ],
                    rows
                )
            );
            println!(
                "({} sources and {} aggregates tracked; sampled {} over {} ms using {} ms of CPU; rates over the last {:.1} s)",
                reply.tracked_sources,
                reply.tracked_aggregates,
                reply.sampled_at.as_deref().unwrap_or("not yet"),
                reply.sample_took_ms,
                reply.sample_cpu_ms,
                reply.interval_ms as f64 / 1000.0
            );
        }
        Request::Offenders { .. } => {
            let rows: Vec<OffenderRow> = parse(value.clone())?;
            if json {
                return print_json(&value);
            }
            let rows = rows
                .into_iter()
                .map(|r| {
                    vec![
                        r.source,
                        r.level,
                        r.first_seen,
                        r.last_seen,
                        format!("{:.1}", r.peak_rate),
                        r.dropped.to_string(),
                        r.times_banned.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "SOURCE",
                        "LEVEL",
                        "FIRST SEEN",
                        "LAST SEEN",
                        "PEAK RATE/s",
                        "DROPPED",
                        "BANS"
                    ],
                    rows
                )
            );
        }
        Request::Stats => {
            if json {
                return print_json(&value);
            }
            let map: std::collections::BTreeMap<String, u64> = parse(value)?;
            let rows = map
                .into_iter()
                .map(|(k, v)| vec![k, v.to_string()])
                .collect();
            print!("{}", table(&["COUNTER", "VALUE"], rows));
        }
        Request::ListShow { .. } => {
            if json {
                return print_json(&value);
            }
            let rows: Vec<ListRow> = parse(value)?;
            if rows.is_empty() {
                println!("(empty)");
                return Ok(());
            }
            let rows = rows
                .into_iter()
                .map(|r| vec![r.cidr, r.expires.unwrap_or_else(|| "never".into())])
                .collect();
            print!("{}", table(&["CIDR", "EXPIRES"], rows));
        }
        Request::Status => {
            if json {
                return print_json(&value);
            }
            print_status(&parse(value)?);
        }
        _ => {
            if json {
                return print_json(&value);
            }
            let done: Done = parse(value)?;
            println!("{}", done.message);
        }
    }
    Ok(())
}

fn print_status(s: &StatusReply) {
    println!(
        "monitor {} (pid {}), up {}s since {}",
        s.version, s.pid, s.uptime_secs, s.started_at
    );
    for a in &s.interfaces {
        println!("  attached: {} {} ({})", a.iface, a.hook, a.mode);
    }
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.proto))
        .collect();
    println!("  ports:    {}", ports.join(", "));
    let l = &s.limits;
    println!(
        "  action:   {}; count {}{}; ban {}",
        s.action,
        l.count,
        l.http_path
            .as_deref()
            .map(|p| format!(" (path {p})"))
            .unwrap_or_default(),
        l.ban
    );
    println!(
        "  source:   {} burst {} per IPv4 /{} and IPv6 /{}",
        l.rate, l.burst, l.v4_prefix, l.v6_prefix
    );
    match &l.agg_rate {
        Some(r) => println!(
            "  aggregate: {r} burst {} per IPv4 /{} and IPv6 /{}",
            l.agg_burst, l.v4_agg_prefix, l.v6_agg_prefix
        ),
        None => println!("  aggregate: off"),
    }
    println!(
        "  tables:   {} sources, {} aggregates, {} bans, {} allow, {} deny",
        s.tracked_sources, s.tracked_aggregates, s.active_bans, s.allow_entries, s.deny_entries
    );
    let sm = &s.sampler;
    println!(
        "  sampler:  {} samples, the last took {} ms ({} ms of CPU); {} sources kept out of the history's per-source rows",
        sm.samples, sm.last_took_ms, sm.last_cpu_ms, sm.history_folded_sources
    );
    println!(
        "  state:    pins {}{}, history {}, socket {}{}",
        s.pin_path,
        if s.persist { " (persist)" } else { "" },
        s.db,
        s.socket,
        s.metrics
            .as_deref()
            .map(|m| format!(", metrics {m}"))
            .unwrap_or_default()
    );
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    println!(
        "  packets:  seen {}, monitored {}, passed {}, dropped {} (rate {}, aggregate {}, ban {}, deny {}), monitor-only {}",
        c("seen"),
        c("monitored"),
        c("passed"),
        c("dropped"),
        c("dropped_rate"),
        c("dropped_aggregate"),
        c("dropped_ban"),
        c("dropped_deny"),
        c("monitor_only")
    );
}
