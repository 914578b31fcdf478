//! `monitor status`: what is attached, the policy in force, table occupancy and the kernel's
//! counters.

use anyhow::Result;
use serde_json::Value;

use super::{Maps, counters, json};
use crate::{
    daemon::Shared,
    kernel::List,
    proto::{Limits, PortRow, SamplerStatus, StatusReply},
    timefmt,
    units::format_duration,
};

pub fn run<M: Maps>(shared: &Shared<M>) -> Result<Value> {
    let settings = shared.settings();
    let snapshot = shared.snapshot();
    let (policy, allow, deny, capacity) = {
        let w = shared.writer();
        (
            w.policy().clone(),
            w.list_entries(List::Allow)?.len(),
            w.list_entries(List::Deny)?.len(),
            w.capacities()
                .into_iter()
                .map(|(name, n)| (name.to_string(), n))
                .collect(),
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
        capacity,
        sampler: SamplerStatus {
            samples: shared.metrics.samples.get(),
            last_took_ms: snapshot.took.as_millis() as u64,
            last_cpu_ms: snapshot.busy.as_millis() as u64,
            history_folded_sources: shared.metrics.history_folded.get(),
        },
    };
    Ok(json(reply))
}
