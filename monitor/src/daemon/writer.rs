//! The daemon's map writer: the one place where a policy change, a list entry or a ban
//! reaches the kernel's maps. Control handlers, reload and start-up all come through here.
//!
//! A rate-limit change travels: `cli/mod.rs` (`monitor set rate`, sent by `proto::client`)
//! -> `daemon/control/set.rs` (parse, build the new `Policy`) -> `MapWriter::apply_policy`
//! here (write `MON_CONFIG` and `MON_PORTS`).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail};
use monitor_common::config::config_flags;

use crate::{
    cidr::Cidr,
    config::Policy,
    kernel::{Kernel, List},
};

/// How a `block` was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// The CIDR is exactly one source at the configured prefix: a ban in `MON_BANS`.
    Ban,
    /// Any other CIDR: a deny-list entry that expires.
    TimedDeny,
}

pub struct MapWriter {
    kernel: Kernel,
    policy: Policy,
    /// Entries that came from the settings (flags or file), so that a reload can remove those
    /// the file no longer lists without touching entries added live.
    configured_allow: BTreeSet<Cidr>,
    configured_deny: BTreeSet<Cidr>,
}

impl MapWriter {
    /// Writes `policy` and the configured list entries over whatever the (possibly adopted)
    /// maps hold. Entries added live in an earlier run stay; ports no longer configured are
    /// cleared.
    pub fn start(
        mut kernel: Kernel,
        policy: Policy,
        allow: &[Cidr],
        deny: &[Cidr],
    ) -> Result<Self> {
        for (port, _) in kernel.ports().context("reading the monitored ports")? {
            if !policy.ports.contains(&port) {
                kernel.set_port(port, 0).context("clearing an old port")?;
            }
        }
        let mut writer = Self {
            kernel,
            policy: policy.clone(),
            configured_allow: BTreeSet::new(),
            configured_deny: BTreeSet::new(),
        };
        writer.sync_configured_lists(allow, deny)?;
        writer.write(&policy, true)?;
        Ok(writer)
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// For attaching the programs at start-up (not for map writes, which stay in this file).
    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Applies a new policy live: config first, then the port table, so that a newly
    /// monitored port is limited by the new config from its first packet.
    pub fn apply_policy(&mut self, new: Policy) -> Result<()> {
        new.validate()?;
        self.write(&new, false)
    }

    fn write(&mut self, new: &Policy, all_ports: bool) -> Result<()> {
        let config = new.kernel_config(self.list_flags()?)?;
        self.kernel
            .set_config(&config)
            .context("writing the limits to the kernel")?;
        let flags = new.proto.port_flags();
        for port in &new.ports {
            if all_ports || !self.policy.ports.contains(port) || self.policy.proto != new.proto {
                self.kernel
                    .set_port(*port, flags)
                    .context("monitoring a port")?;
            }
        }
        for port in self.policy.ports.difference(&new.ports) {
            self.kernel
                .set_port(*port, 0)
                .context("unmonitoring a port")?;
        }
        self.policy = new.clone();
        Ok(())
    }

    fn list_flags(&self) -> Result<u8> {
        let mut flags = 0;
        if !self.kernel.list_entries(List::Allow)?.is_empty() {
            flags |= config_flags::HAS_ALLOW;
        }
        if !self.kernel.list_entries(List::Deny)?.is_empty() {
            flags |= config_flags::HAS_DENY;
        }
        Ok(flags)
    }

    /// Rewrites the config so the kernel consults exactly the lists that have entries.
    fn refresh_list_flags(&mut self) -> Result<()> {
        let policy = self.policy.clone();
        self.write(&policy, false)
    }

    pub fn list_add(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()> {
        let other = match list {
            List::Allow => List::Deny,
            List::Deny => List::Allow,
        };
        if self
            .kernel
            .list_entries(other)?
            .iter()
            .any(|(c, _)| c == cidr)
        {
            bail!(
                "{cidr} is already in the {} list; remove it there first",
                list_name(other)
            );
        }
        self.kernel
            .list_insert(list, cidr, expires_ns)
            .with_context(|| {
                format!(
                    "adding {cidr} to the {} list (is it full?)",
                    list_name(list)
                )
            })?;
        self.refresh_list_flags()
    }

    pub fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool> {
        let removed = self.kernel.list_remove(list, cidr)?;
        match list {
            List::Allow => self.configured_allow.remove(cidr),
            List::Deny => self.configured_deny.remove(cidr),
        };
        self.refresh_list_flags()?;
        Ok(removed)
    }

    /// Makes the configured entries match `allow`/`deny`: adds new ones, removes those that
    /// were configured before and no longer are. Returns a description of each change.
    pub fn sync_configured_lists(&mut self, allow: &[Cidr], deny: &[Cidr]) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        for (list, wanted) in [(List::Allow, allow), (List::Deny, deny)] {
            let wanted: BTreeSet<Cidr> = wanted.iter().copied().collect();
            let old = match list {
                List::Allow => std::mem::take(&mut self.configured_allow),
                List::Deny => std::mem::take(&mut self.configured_deny),
            };
            for gone in old.difference(&wanted) {
                self.kernel.list_remove(list, gone)?;
                changes.push(format!("{} rm {gone}", list_name(list)));
            }
            for new in wanted.difference(&old) {
                self.kernel
                    .list_insert(list, new, 0)
                    .with_context(|| format!("adding {new} to the {} list", list_name(list)))?;
                changes.push(format!("{} add {new}", list_name(list)));
            }
            match list {
                List::Allow => self.configured_allow = wanted,
                List::Deny => self.configured_deny = wanted,
            }
        }
        self.refresh_list_flags()?;
        Ok(changes)
    }

    fn source_prefix(&self, cidr: &Cidr) -> u8 {
        if cidr.addr.is_ipv4() {
            self.policy.v4_prefix
        } else {
            self.policy.v6_prefix
        }
    }

    /// Blocks a CIDR until `until_ns` (kernel clock).
    pub fn block(&mut self, cidr: &Cidr, until_ns: u64) -> Result<BlockKind> {
        if cidr.len == self.source_prefix(cidr) {
            let (key, _) = cidr.to_mapped();
            self.kernel
                .set_ban(&key, until_ns)
                .context("storing the ban")?;
            Ok(BlockKind::Ban)
        } else {
            self.list_add(List::Deny, cidr, until_ns)?;
            Ok(BlockKind::TimedDeny)
        }
    }

    /// Lifts a block: the ban on exactly this source and any expiring deny entry for exactly
    /// this CIDR. False when there was neither.
    pub fn unblock(&mut self, cidr: &Cidr) -> Result<bool> {
        let mut lifted = false;
        if cidr.len == self.source_prefix(cidr) {
            let (key, _) = cidr.to_mapped();
            lifted |= self.kernel.clear_ban(&key)?;
        }
        let timed = self
            .kernel
            .list_entries(List::Deny)?
            .into_iter()
            .any(|(c, e)| c == *cidr && e.expires_ns != 0);
        if timed {
            lifted |= self.list_remove(List::Deny, cidr)?;
        }
        Ok(lifted)
    }
}

pub fn list_name(list: List) -> &'static str {
    match list {
        List::Allow => "allow",
        List::Deny => "deny",
    }
}
