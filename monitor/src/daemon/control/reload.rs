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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::CountMode, daemon::control::fake};

    #[test]
    fn a_reload_applies_the_file_and_warns_when_it_turns_on_bans_with_a_forgeable_count() {
        let dir = std::env::temp_dir().join(format!(
            "monitor-reload-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.toml");
        std::fs::write(&file, "ban = \"10m\"\n").unwrap();
        let shared = fake::shared_with(|_| {}, Some(&file));
        let message = |v: Value| v["message"].as_str().unwrap().to_string();
        assert_eq!(message(run(&shared).unwrap()), "reloaded: nothing changed");
        std::fs::write(&file, "ban = \"10m\"\ncount = \"syn\"\nrate = \"5/s\"\n").unwrap();
        let m = message(run(&shared).unwrap());
        assert!(
            m.contains("count: payload -> syn") && m.contains("rate: 20/s -> 5/s"),
            "{m}"
        );
        assert!(m.contains("warning: bans are on"), "{m}");
        assert_eq!(shared.writer().policy().count, CountMode::Syn);
        assert_eq!(shared.settings().policy.count, CountMode::Syn);
        std::fs::write(&file, "ban = \"10m\"\ncount = \"syn\"\nrate = \"6/s\"\n").unwrap();
        let m = message(run(&shared).unwrap());
        assert!(!m.contains("warning"), "count and ban unchanged: {m}");
        std::fs::write(&file, "rate = \"fast\"\n").unwrap();
        let err = run(&shared).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(
            shared.writer().policy().rate.to_string(),
            "6/s",
            "kept on error"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
