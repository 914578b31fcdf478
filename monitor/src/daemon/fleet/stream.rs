//! The stream-reading task: on every (re)connection it applies the active-ban set (so a daemon
//! that was down, or whose cursor fell behind the stream's trim, catches up), then reads the
//! ban stream from its cursor with a blocking read and applies each entry through the map
//! writer. The cursor is saved in SQLite after each applied batch, so a restart resumes there.

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering, time::Duration};

use log::{info, warn};
use redis::{
    AsyncCommands as _, Value,
    aio::ConnectionManager,
    streams::{StreamReadOptions, StreamReadReply},
};

use super::{
    Backoff, CALL_TIMEOUT, Fleet, call,
    entry::{Entry, Op},
    script, unix_ms,
};
use crate::{
    clock,
    daemon::Shared,
    history::{FleetRecord, Sighting},
};

/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
const READ_COUNT: usize = 512;

/// Whether `id` looks like a stream ID (`ms-seq`), so a damaged saved cursor is not sent.
fn valid_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let seq = parts.next().unwrap_or("");
    !ms.is_empty()
        && !seq.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.bytes().all(|b| b.is_ascii_digit())
}

fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// Applies one entry through the map writer; returns whether it changed the kernel's policy.
pub async fn apply(shared: &Shared, fleet: &Fleet, entry: &Entry) -> bool {
    let now_ms = unix_ms();
    let result = match entry.op {
        Op::Ban | Op::Block => {
            if entry.until_ms <= now_ms {
                return false;
            }
            let until_ns = clock::kernel_now_ns() + (entry.until_ms - now_ms) as u64 * 1_000_000;
            shared.writer().block(&entry.src, until_ns).map(|_| true)
        }
        Op::Unblock => shared.writer().unblock(&entry.src),
    };
    match result {
        Ok(changed) => {
            if entry.op != Op::Unblock {
                fleet.metrics.fleet_bans_applied.inc();
                shared
                    .record_history(vec![Sighting {
                        source: entry.src.to_string(),
                        level: "fleet",
                        at_ms: now_ms,
                        rate: 0.0,
                        dropped: 0,
                        banned: true,
                        event: true,
                    }])
                    .await;
            }
            shared
                .record_fleet(FleetRecord {
                    source: entry.src.to_string(),
                    op: entry.op.as_str(),
                    at_ms: now_ms,
                    until_ms: entry.until_ms,
                    origin: entry.origin.clone(),
                    reason: entry.reason.clone(),
                })
                .await;
            changed
        }
        Err(e) => {
            warn!(
                "fleet: applying {} {} from {} failed: {e:#}",
                entry.op.as_str(),
                entry.src,
                entry.origin
            );
            false
        }
    }
}

fn fields(map: HashMap<String, Value>) -> Option<HashMap<String, String>> {
    map.into_iter()
        .map(|(k, v)| match v {
            Value::BulkString(b) => String::from_utf8(b).ok().map(|s| (k, s)),
            Value::SimpleString(s) => Some((k, s)),
            Value::Int(i) => Some((k, i.to_string())),
            _ => None,
        })
        .collect()
}

async fn sync_active(
    con: &mut ConnectionManager,
    shared: &Shared,
    fleet: &Fleet,
) -> Result<(), String> {
    let active: Vec<(String, i64)> = call(
        CALL_TIMEOUT,
        con.zrangebyscore_withscores(script::active_key(), unix_ms(), "+inf"),
    )
    .await?;
    let mut applied = 0;
    for (src, until_ms) in active {
        let mut f = HashMap::new();
        f.insert("op".to_string(), "ban".to_string());
        f.insert("src".to_string(), src);
        f.insert("until".to_string(), until_ms.to_string());
        f.insert("origin".to_string(), "fleet".to_string());
        f.insert("reason".to_string(), "active-set".to_string());
        match Entry::parse(&f, unix_ms()) {
            Ok(e) => applied += apply(shared, fleet, &e).await as usize,
            Err(_) => {
                fleet.metrics.fleet_malformed.inc();
            }
        }
    }
    if applied > 0 {
        info!("fleet: applied {applied} active fleet bans");
    }
    Ok(())
}

pub async fn run(fleet: Arc<Fleet>, shared: Arc<Shared>, cursor: Option<String>) {
    let mut cursor = cursor.filter(|c| valid_id(c));
    let mut backoff = Backoff::new();
    let mut last_malformed_log: Option<std::time::Instant> = None;
    let key = script::stream_key();
    loop {
        let mut con = match fleet.connect(BLOCK + CALL_TIMEOUT * 2).await {
            Ok(c) => c,
            Err(e) => {
                fleet.set_up(None, Some(false), &e);
                tokio::time::sleep(backoff.step()).await;
                continue;
            }
        };
        // Without a cursor, start after the stream's last entry; the active set (read after
        // taking that position, so nothing falls between) covers everything before it.
        if cursor.is_none() {
            let last: Result<redis::streams::StreamRangeReply, String> =
                call(CALL_TIMEOUT, con.xrevrange_count(&key, "+", "-", 1)).await;
            match last {
                Ok(r) => cursor = Some(r.ids.first().map_or("0-0".to_string(), |i| i.id.clone())),
                Err(e) => {
                    fleet.set_up(None, Some(false), &e);
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            }
        }
        if let Err(e) = sync_active(&mut con, &shared, &fleet).await {
            fleet.set_up(None, Some(false), &e);
            tokio::time::sleep(backoff.step()).await;
            continue;
        }
        backoff.reset();
        fleet.set_up(None, Some(true), "");
        fleet.synced();
        loop {
            let at = cursor.clone().unwrap_or_else(|| "0-0".to_string());
            let opts = StreamReadOptions::default()
                .count(READ_COUNT)
                .block(BLOCK.as_millis() as usize);
            let reply: Result<Option<StreamReadReply>, String> = call(
                BLOCK + CALL_TIMEOUT,
                con.xread_options(&[&key], &[&at], &opts),
            )
            .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    fleet.set_up(None, Some(false), &e);
                    tokio::time::sleep(backoff.step()).await;
                    break;
                }
            };
            fleet.synced();
            let Some(reply) = reply else { continue };
            let mut last_id = None;
            for sk in reply.keys {
                for sid in sk.ids {
                    let now_ms = unix_ms();
                    let parsed = fields(sid.map)
                        .ok_or_else(|| "a field is not a string".to_string())
                        .and_then(|f| Entry::parse(&f, now_ms).map_err(|e| e.to_string()));
                    match parsed {
                        Ok(entry) => {
                            apply(&shared, &fleet, &entry).await;
                            if let Some(ms) = id_ms(&sid.id) {
                                let lag = (unix_ms() - ms).max(0) as u64;
                                fleet.status.lag_ms.store(lag, Ordering::Relaxed);
                                fleet
                                    .metrics
                                    .fleet_stream_lag_seconds
                                    .set(lag as f64 / 1000.0);
                            }
                        }
                        Err(e) => {
                            fleet.metrics.fleet_malformed.inc();
                            if last_malformed_log.is_none_or(|t| t.elapsed().as_secs() >= 60) {
                                warn!("fleet: skipped stream entry {}: {e}", sid.id);
                                last_malformed_log = Some(std::time::Instant::now());
                            }
                        }
                    }
                    last_id = Some(sid.id);
                }
            }
            if let Some(id) = last_id {
                cursor = Some(id.clone());
                shared.save_fleet_cursor(id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_cursor_ids_are_checked() {
        assert!(valid_id("1700000000000-0"));
        assert!(valid_id("0-0"));
        assert!(!valid_id("$"));
        assert!(!valid_id("12-"));
        assert!(!valid_id("a-1"));
        assert_eq!(id_ms("1700000000123-4"), Some(1_700_000_000_123));
    }
}
