//! `monitor set SETTING VALUE`: changes one part of the policy live. The new policy goes to
//! the map writer (`MapWriter::apply_policy`), which writes `MON_CONFIG` and `MON_PORTS`; the
//! kernel applies it from the next packet. Values arrive as the operator typed them, so the
//! errors below are the ones the operator sees.

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{Maps, done};
use crate::{
    config::{Action, CountMode, Policy},
    daemon::{Shared, policy_changes},
    proto::SetRequest,
    units::{Rate, parse_duration},
};

/// The policy `request` asks for, starting from `old`.
fn parse(old: &Policy, request: SetRequest) -> Result<Policy> {
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
        SetRequest::EventsPerSec(n) => new.events_per_sec = n,
        SetRequest::PortRm(p) => {
            if !new.ports.remove(&p) {
                bail!("port {p} is not monitored");
            }
            if new.ports.is_empty() {
                bail!("port {p} is the last monitored port; add another before removing it");
            }
        }
    }
    Ok(new)
}

pub fn run<M: Maps>(shared: &Shared<M>, request: SetRequest) -> Result<Value> {
    let mut writer = shared.writer();
    let old = writer.policy().clone();
    let new = parse(&old, request)?;
    writer
        .apply_policy(new.clone())
        .context("the kernel kept the previous settings")?;
    drop(writer);
    let changes = policy_changes(&old, &new);
    let mut message = if changes.is_empty() {
        "no change".to_string()
    } else {
        format!("set {}", changes.join("; "))
    };
    if let Some(warning) = old.spoofable_bans_change(&new) {
        log::warn!("{warning}");
        message = format!("{message}\nwarning: {warning}");
    }
    done(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{daemon::control::fake, proto::Request};

    async fn set(shared: &Shared<fake::FakeMaps>, request: SetRequest) -> crate::proto::Response {
        crate::daemon::control::handle(shared, Request::Set(request)).await
    }

    fn message(r: crate::proto::Response) -> String {
        match r {
            crate::proto::Response::Ok(v) => v["message"].as_str().unwrap().to_string(),
            crate::proto::Response::Error(e) => panic!("error reply: {e}"),
        }
    }

    #[tokio::test]
    async fn a_rate_change_reaches_the_maps_and_a_bad_one_keeps_the_old_policy() {
        let shared = fake::shared(|_| {});
        let m = message(set(&shared, SetRequest::Rate("5/s".into())).await);
        assert_eq!(m, "set rate: 20/s -> 5/s");
        assert_eq!(shared.writer().written.len(), 1);
        assert_eq!(shared.writer().policy().rate.to_string(), "5/s");
        let r = set(&shared, SetRequest::Rate("0/s".into())).await;
        assert!(
            matches!(&r, crate::proto::Response::Error(e) if e.contains("at least 1/m")),
            "{r:?}"
        );
        assert_eq!(shared.writer().written.len(), 1, "nothing written on error");
        assert_eq!(shared.metrics.control_errors.get(), 1);
    }

    #[tokio::test]
    async fn the_event_budget_changes_live_within_its_bound() {
        let shared = fake::shared(|_| {});
        let m = message(set(&shared, SetRequest::EventsPerSec(200)).await);
        assert_eq!(m, "set events-per-sec: 1000 -> 200");
        assert_eq!(shared.writer().policy().events_per_sec, 200);
        let too_many = monitor_common::config::MAX_EVENTS_PER_SEC + 1;
        let r = set(&shared, SetRequest::EventsPerSec(too_many)).await;
        assert!(
            matches!(&r, crate::proto::Response::Error(e) if e.contains("at most")),
            "{r:?}"
        );
        assert_eq!(
            shared.writer().policy().events_per_sec,
            200,
            "kept on error"
        );
    }

    #[tokio::test]
    async fn bans_on_forgeable_counts_warn_once_per_change_that_makes_them() {
        let shared = fake::shared(|_| {});
        let m = message(set(&shared, SetRequest::Ban("10m".into())).await);
        assert!(
            !m.contains("warning"),
            "payload counting is not forgeable: {m}"
        );
        let m = message(set(&shared, SetRequest::Count("syn".into())).await);
        assert!(
            m.contains("\nwarning: ") && m.contains("spoof"),
            "syn with bans must warn: {m}"
        );
        let m = message(set(&shared, SetRequest::Burst(50)).await);
        assert!(
            !m.contains("warning"),
            "an unrelated change does not repeat it: {m}"
        );
        let m = message(set(&shared, SetRequest::Count("packets".into())).await);
        assert!(m.contains("warning"), "{m}");
        let m = message(set(&shared, SetRequest::Ban("0".into())).await);
        assert!(!m.contains("warning"), "bans off: {m}");
    }
}
