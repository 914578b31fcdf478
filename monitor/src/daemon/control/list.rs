//! `monitor allow|deny add|rm|list`: the allow and deny lists.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, block::deadline, cidr, done, json, list_of};
use crate::{
    clock,
    daemon::Shared,
    proto::{ListName, ListRow},
    timefmt,
};

fn name(list: ListName) -> &'static str {
    match list {
        ListName::Allow => "allow",
        ListName::Deny => "deny",
    }
}

pub fn add<M: Maps>(
    shared: &Shared<M>,
    list: ListName,
    input: &str,
    duration: Option<&str>,
) -> Result<Value> {
    let c = cidr(input)?;
    let (expires, when) = deadline(duration, None)?;
    shared.writer().list_add(list_of(list), &c, expires)?;
    done(format!("{} add {c} ({when})", name(list)))
}

pub fn remove<M: Maps>(shared: &Shared<M>, list: ListName, input: &str) -> Result<Value> {
    let c = cidr(input)?;
    if shared.writer().list_remove(list_of(list), &c)? {
        done(format!("{} rm {c}", name(list)))
    } else {
        bail!("{c} is not in the {} list", name(list))
    }
}

/// The entries still in force (an expired entry stays in the trie until removed, but the
/// kernel ignores it, so it is not shown).
pub fn show<M: Maps>(shared: &Shared<M>, list: ListName) -> Result<Value> {
    let entries = shared.writer().list_entries(list_of(list))?;
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
