//! `monitor reload` and SIGHUP: re-read the config file and apply what changed (the policy
//! through the map writer, the configured list entries), and say which settings wait for a
//! restart.

use anyhow::Result;
use log::{info, warn};
use serde_json::Value;

use super::{Maps, json};
use crate::{
    config::Settings,
    daemon::{Shared, policy_changes},
    proto::Done,
};

/// Re-reads the file and applies it. Returns one line per change.
pub fn apply<M: Maps>(shared: &Shared<M>) -> Result<Vec<String>> {
    let current = shared.settings();
    let Some(file) = current.config_file.clone() else {
        anyhow::bail!("the daemon was started without --config; there is no file to reload");
    };
    let new = Settings::resolve(&shared.flags, shared.socket_flag.as_deref(), Some(&file))?;
    let mut changes = Vec::new();
    let mut warning = None;
    {
        let mut writer = shared.writer();
        let old = writer.policy().clone();
        changes.extend(policy_changes(&old, &new.policy));
        if old != new.policy {
            writer.apply_policy(new.policy.clone())?;
            warning = old.spoofable_bans_change(&new.policy);
        }
        changes.extend(writer.sync_configured_lists(&new.allow, &new.deny)?);
    }
    for name in new.restart_only_changes(&current) {
        warn!(
            "reload: {name} changed in {}; it takes effect on restart",
            file.display()
        );
        changes.push(format!("{name}: changed, takes effect on restart"));
    }
    shared.replace_settings(Settings {
        policy: new.policy,
        allow: new.allow,
        deny: new.deny,
        ..current
    });
    for c in &changes {
        info!("reload: {c}");
    }
    if let Some(w) = warning {
        warn!("{w}");
        changes.push(format!("warning: {w}"));
    }
    Ok(changes)
}

pub fn run<M: Maps>(shared: &Shared<M>) -> Result<Value> {
    let changes = apply(shared)?;
    let message = if changes.is_empty() {
        "reloaded: nothing changed".to_string()
    } else {
        format!("reloaded: {}", changes.join("; "))
    };
    Ok(json(Done { message }))
}
