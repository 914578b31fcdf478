//! One handler per control command: parse the request's values, apply them through the
//! daemon's map writer (the only code that writes maps), and build the reply.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use monitor_common::stats::Stat;
use serde_json::{Value, to_value};

use super::{
    Done, Limits, ListName, ListRow, PortRow, Request, Response, SetRequest, StatusReply, TopReply,
};
use crate::{
    cidr::Cidr,
    clock,
    config::{Action, CountMode},
    daemon::{
        Shared,
        fleet::{
            FleetReply,
            entry::{Entry, Op},
            unix_ms,
        },
        policy_changes, sampler,
        writer::BlockKind,
    },
    kernel::List,
    timefmt,
    units::{Rate, format_duration, parse_duration},
};

/// Default and ceiling of `block --for`.
const DEFAULT_BLOCK: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn handle(shared: &Arc<Shared>, request: Request) -> Response {
    shared.metrics.control_requests.inc();
    let result = match request {
        Request::Status => status(shared),
        Request::Stats => stats(shared),
        Request::Top {
            limit,
            level: _,
            fleet: true,
        } => fleet_top(shared, limit),
        Request::Top { limit, level, .. } => top(shared, limit, level.as_deref()),
        Request::Fleet => Ok(json(
            shared
                .fleet
                .as_ref()
                .map_or_else(FleetReply::disabled, |f| f.reply()),
        )),
        Request::Offenders { since, limit } => offenders(shared, since.as_deref(), limit).await,
        Request::Block { cidr, duration } => block(shared, &cidr, duration.as_deref()),
        Request::Unblock { cidr } => unblock(shared, &cidr),
        Request::ListAdd {
            list,
            cidr,
            duration,
        } => list_add(shared, list, &cidr, duration.as_deref()),
        Request::ListRemove { list, cidr } => list_remove(shared, list, &cidr),
        Request::ListShow { list } => list_show(shared, list),
        Request::Set(set_request) => set(shared, set_request),
        Request::Reload => shared.reload().map(|changes| {
            let message = if changes.is_empty() {
                "reloaded: nothing changed".to_string()
            } else {
                format!("reloaded: {}", changes.join("; "))
            };
            json(Done { message })
        }),
    };
    match result {
        Ok(value) => Response::Ok(value),
        Err(e) => {
            shared.metrics.control_errors.inc();
            Response::Error(format!("{e:#}").replace('\n', " "))
        }
    }
}

fn json<T: serde::Serialize>(value: T) -> Value {
    to_value(value).unwrap_or(Value::Null)
}

fn done(message: String) -> Result<Value> {
    log::info!("control: {message}");
    Ok(json(Done { message }))
}

fn cidr(input: &str) -> Result<Cidr> {
    Ok(input.parse::<Cidr>()?)
}

fn list_of(name: ListName) -> List {
    match name {
        ListName::Allow => List::Allow,
        ListName::Deny => List::Deny,
    }
}

fn counters(shared: &Shared) -> Result<BTreeMap<String, u64>> {
    let stats = shared.writer().kernel().stats()?;
    Ok(Stat::ALL
        .iter()
        .map(|s| (s.label().to_string(), stats.get(*s)))
        .collect())
}

fn status(shared: &Shared) -> Result<Value> {
    let settings = shared.settings();
    let snapshot = shared.snapshot();
    let (policy, allow, deny) = {
        let w = shared.writer();
        (
            w.policy().clone(),
            w.kernel().list_entries(List::Allow)?.len(),
            w.kernel().list_entries(List::Deny)?.len(),
        )
    };
    let reply = StatusReply {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_at: timefmt::rfc3339(shared.started_at),
        uptime_secs: shared.started.elapsed().as_secs(),
        attach: settings.attach.to_string(),
        interfaces: shared.attachments.clone(),
        ports: policy
            .ports
            .iter()
            .map(|p| PortRow {
                port: *p,
                proto: policy.proto.to_string(),
            })
            .collect(),
        action: policy.action.to_string(),
        limits: Limits {
            rate: policy.rate.to_string(),
            burst: policy.burst,
            agg_rate: policy.agg_rate.map(|r| r.to_string()),
            agg_burst: policy.agg_burst,
            v4_prefix: policy.v4_prefix,
            v6_prefix: policy.v6_prefix,
            v4_agg_prefix: policy.v4_agg_prefix,
            v6_agg_prefix: policy.v6_agg_prefix,
            count: policy.count.to_string(),
            http_path: policy.http_path.clone(),
            ban: format_duration(policy.ban),
        },
        persist: settings.persist,
        pin_path: settings.pin_path.display().to_string(),
        db: settings.db.display().to_string(),
        socket: settings.socket.display().to_string(),
        metrics: settings.metrics.map(|a| a.to_string()),
        allow_entries: allow,
        deny_entries: deny,
        active_bans: snapshot.active_bans,
        tracked_sources: snapshot.tracked_sources,
        tracked_aggregates: snapshot.tracked_aggregates,
        counters: counters(shared)?,
    };
    Ok(json(reply))
}

fn stats(shared: &Shared) -> Result<Value> {
    Ok(json(counters(shared)?))
}

fn top(shared: &Shared, limit: usize, level: Option<&str>) -> Result<Value> {
    if limit == 0 || limit > sampler::MAX_ROWS {
        bail!(
            "invalid --limit {limit}: must be between 1 and {}",
            sampler::MAX_ROWS
        );
    }
    if let Some(l) = level
        && l != "source"
        && l != "aggregate"
    {
        bail!("invalid --level {l:?}: expected source or aggregate");
    }
    let snapshot = shared.snapshot();
    let rows = snapshot
        .rows
        .iter()
        .filter(|r| level.is_none_or(|l| r.level == l))
        .take(limit)
        .cloned()
        .collect();
    Ok(json(TopReply {
        sampled_at: snapshot.taken_at.map(timefmt::rfc3339),
        interval_ms: snapshot.interval.as_millis() as u64,
        sample_took_ms: snapshot.took.as_millis() as u64,
        tracked_sources: snapshot.tracked_sources,
        tracked_aggregates: snapshot.tracked_aggregates,
        rows,
    }))
}

async fn offenders(shared: &Shared, since: Option<&str>, limit: usize) -> Result<Value> {
    let since_ms = match since {
        None => 0,
        Some(s) => {
            let d = parse_duration(s)?;
            timefmt::unix_ms(SystemTime::now()) - d.as_millis().min(i64::MAX as u128) as i64
        }
    };
    if limit == 0 {
        bail!("invalid --limit 0: must be at least 1");
    }
    Ok(json(shared.offenders(since_ms, limit).await?))
}

fn deadline(duration: Option<&str>, default: Option<std::time::Duration>) -> Result<(u64, String)> {
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

fn block(shared: &Shared, input: &str, duration: Option<&str>) -> Result<Value> {
    let c = cidr(input)?;
    let (until, when) = deadline(duration, Some(DEFAULT_BLOCK))?;
    let kind = shared.writer().block(&c, until)?;
    let mut fleet_note = "";
    if let Some(fleet) = &shared.fleet {
        let left_ms = (until.saturating_sub(clock::kernel_now_ns()) / 1_000_000) as i64;
        fleet.submit(Entry {
            op: Op::Block,
            src: c,
            until_ms: unix_ms() + left_ms,
            origin: fleet.settings.id.clone(),
            reason: "manual".into(),
        });
        fleet_note = if fleet.connected() {
            "; sent to the fleet"
        } else {
            "; the fleet's Redis is unreachable: applied here, sent to the fleet when it returns"
        };
    }
    done(match kind {
        BlockKind::Ban => format!("blocked {c} {when} (ban){fleet_note}"),
        BlockKind::TimedDeny => format!(
            "blocked {c} {when} (expiring deny entry: the CIDR is not one source at the configured prefix){fleet_note}"
        ),
    })
}

fn unblock(shared: &Shared, input: &str) -> Result<Value> {
    let c = cidr(input)?;
    let lifted = shared.writer().unblock(&c)?;
    if let Some(fleet) = &shared.fleet {
        // Any host may unblock a fleet ban, whether or not it holds the ban yet.
        fleet.submit(Entry {
            op: Op::Unblock,
            src: c,
            until_ms: 0,
            origin: fleet.settings.id.clone(),
            reason: "manual".into(),
        });
        let here = if lifted { "here and " } else { "" };
        return done(format!("unblocked {c} ({here}sent to the fleet)"));
    }
    if lifted {
        done(format!("unblocked {c}"))
    } else {
        bail!("{c} is not blocked (no ban and no expiring deny entry for exactly this CIDR)")
    }
}

fn fleet_top(shared: &Shared, limit: usize) -> Result<Value> {
    let Some(fleet) = &shared.fleet else {
        bail!("fleet mode is off: start the daemon with --fleet URL");
    };
    if limit == 0 || limit > sampler::MAX_ROWS {
        bail!(
            "invalid --limit {limit}: must be between 1 and {}",
            sampler::MAX_ROWS
        );
    }
    Ok(json(fleet.top(limit)))
}

fn list_add(shared: &Shared, name: ListName, input: &str, duration: Option<&str>) -> Result<Value> {
    let c = cidr(input)?;
    let (expires, when) = deadline(duration, None)?;
    shared.writer().list_add(list_of(name), &c, expires)?;
    done(format!("{} add {c} ({when})", name_str(name)))
}

fn list_remove(shared: &Shared, name: ListName, input: &str) -> Result<Value> {
    let c = cidr(input)?;
    if shared.writer().list_remove(list_of(name), &c)? {
        done(format!("{} rm {c}", name_str(name)))
    } else {
        bail!("{c} is not in the {} list", name_str(name))
    }
}

fn name_str(name: ListName) -> &'static str {
    match name {
        ListName::Allow => "allow",
        ListName::Deny => "deny",
    }
}

fn list_show(shared: &Shared, name: ListName) -> Result<Value> {
    let entries = shared.writer().kernel().list_entries(list_of(name))?;
    let now = clock::kernel_now_ns();
    let rows: Vec<ListRow> = entries
        .into_iter()
        .filter(|(_, e)| e.expires_ns == 0 || e.expires_ns > now)
        .map(|(c, e)| ListRow {
            cidr: c.to_string(),
            expires: (e.expires_ns != 0).then(|| timefmt::rfc3339(clock::to_wall(e.expires_ns))),
        })
        .collect();
    Ok(json(rows))
}

fn set(shared: &Shared, request: SetRequest) -> Result<Value> {
    let mut writer = shared.writer();
    let old = writer.policy().clone();
    let mut new = old.clone();
    match request {
        SetRequest::Rate(s) => {
            let rate: Rate = s.parse()?;
            if rate.requests == 0 {
                bail!(
                    "invalid rate 0: the per-source rate must be at least 1/m (use `set action monitor` to only report)"
                );
            }
            new.rate = rate;
        }
        SetRequest::Burst(b) => new.burst = b,
        SetRequest::AggRate(s) => {
            let rate: Rate = s.parse()?;
            new.agg_rate = (rate.requests != 0).then_some(rate);
        }
        SetRequest::AggBurst(b) => new.agg_burst = b,
        SetRequest::Action(s) => {
            new.action = s.parse::<Action>().map_err(|e| anyhow!("action: {e}"))?
        }
        SetRequest::Ban(s) => new.ban = parse_duration(&s)?,
        SetRequest::Count(s) => {
            new.count = s.parse::<CountMode>().map_err(|e| anyhow!("count: {e}"))?
        }
        SetRequest::HttpPath(s) => new.http_path = (!s.is_empty()).then_some(s),
        SetRequest::PortAdd(p) => {
            if p == 0 {
                bail!("invalid port 0: ports are 1 to 65535");
            }
            if !new.ports.insert(p) {
                bail!("port {p} is already monitored");
            }
        }
        SetRequest::PortRm(p) => {
            if !new.ports.remove(&p) {
                bail!("port {p} is not monitored");
            }
            if new.ports.is_empty() {
                bail!("port {p} is the last monitored port; add another before removing it");
            }
        }
    }
    writer
        .apply_policy(new.clone())
        .context("the kernel kept the previous settings")?;
    let changes = policy_changes(&old, &new);
    drop(writer);
    done(if changes.is_empty() {
        "no change".to_string()
    } else {
        format!("set {}", changes.join("; "))
    })
}
