//! The daemon's side of the control socket: the server (`server.rs`) and one file per command.
//! Each command file parses the request's values, applies them through [`Maps`] (in the
//! daemon, the map writer: the only code that writes maps), and builds the reply.
//!
//! The handlers see the maps only through the narrow [`Maps`] trait, so tests drive them (and
//! the server) with an in-memory fake, without root or a loaded object.

mod block;
mod list;
mod offenders;
pub mod reload;
pub mod server;
mod set;
mod stats;
mod status;
mod top;
mod unblock;

use std::collections::BTreeMap;

use anyhow::Result;
use monitor_common::{maps::ListEntry, stats::Stat};
use serde_json::{Value, to_value};

use super::{
    Shared,
    writer::{BlockKind, MapWriter},
};
use crate::{
    cidr::Cidr,
    config::Policy,
    kernel::{List, Stats},
    proto::{Done, ListName, Request, Response},
};

/// What the control handlers may do to the kernel's maps. The daemon's implementation is the
/// map writer; tests use a fake.
pub trait Maps: Send + 'static {
    fn policy(&self) -> &Policy;
    /// Validates `new` and writes it; on error the kernel keeps the previous policy.
    fn apply_policy(&mut self, new: Policy) -> Result<()>;
    /// Makes the entries that came from the settings match these lists; one line per change.
    fn sync_configured_lists(&mut self, allow: &[Cidr], deny: &[Cidr]) -> Result<Vec<String>>;
    fn block(&mut self, cidr: &Cidr, until_ns: u64) -> Result<BlockKind>;
    /// False when there was nothing to lift.
    fn unblock(&mut self, cidr: &Cidr) -> Result<bool>;
    fn list_add(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()>;
    /// False when the entry was not there.
    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool>;
    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>>;
    fn stats(&self) -> Result<Stats>;
}

impl Maps for MapWriter {
    fn policy(&self) -> &Policy {
        MapWriter::policy(self)
    }
    fn apply_policy(&mut self, new: Policy) -> Result<()> {
        MapWriter::apply_policy(self, new)
    }
    fn sync_configured_lists(&mut self, allow: &[Cidr], deny: &[Cidr]) -> Result<Vec<String>> {
        MapWriter::sync_configured_lists(self, allow, deny)
    }
    fn block(&mut self, cidr: &Cidr, until_ns: u64) -> Result<BlockKind> {
        MapWriter::block(self, cidr, until_ns)
    }
    fn unblock(&mut self, cidr: &Cidr) -> Result<bool> {
        MapWriter::unblock(self, cidr)
    }
    fn list_add(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()> {
        MapWriter::list_add(self, list, cidr, expires_ns)
    }
    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool> {
        MapWriter::list_remove(self, list, cidr)
    }
    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>> {
        Ok(self.kernel().list_entries(list)?)
    }
    fn stats(&self) -> Result<Stats> {
        Ok(self.kernel().stats()?)
    }
}

/// Runs one request and turns any error into the one-line error reply.
pub async fn handle<M: Maps>(shared: &Shared<M>, request: Request) -> Response {
    shared.metrics.control_requests.inc();
    let result = match request {
        Request::Status => status::run(shared),
        Request::Stats => stats::run(shared),
        Request::Top { limit, level } => top::run(shared, limit, level.as_deref()),
        Request::Offenders { since, limit } => {
            offenders::run(shared, since.as_deref(), limit).await
        }
        Request::Block { cidr, duration } => block::run(shared, &cidr, duration.as_deref()),
        Request::Unblock { cidr } => unblock::run(shared, &cidr),
        Request::ListAdd {
            list,
            cidr,
            duration,
        } => list::add(shared, list, &cidr, duration.as_deref()),
        Request::ListRemove { list, cidr } => list::remove(shared, list, &cidr),
        Request::ListShow { list } => list::show(shared, list),
        Request::Set(request) => set::run(shared, request),
        Request::Reload => reload::run(shared),
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

/// The reply to a command that changed something; also logged.
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

fn counters<M: Maps>(shared: &Shared<M>) -> Result<BTreeMap<String, u64>> {
    let stats = shared.writer().stats()?;
    Ok(Stat::ALL
        .iter()
        .map(|s| (s.label().to_string(), stats.get(*s)))
        .collect())
}

#[cfg(test)]
pub mod fake {
    //! An in-memory stand-in for the kernel's maps: enough to run every handler and the
    //! server without root.

    use std::collections::BTreeMap;

    use anyhow::{Result, bail};
    use monitor_common::maps::ListEntry;

    use super::Maps;
    use crate::{
        cidr::Cidr,
        config::{Layer, Policy, Settings},
        daemon::{Shared, writer::BlockKind},
        history::History,
        kernel::{List, Stats},
    };

    #[derive(Default)]
    pub struct FakeMaps {
        pub policy: Option<Policy>,
        /// Every policy written, in order: what the kernel would have seen.
        pub written: Vec<Policy>,
        pub bans: BTreeMap<Cidr, u64>,
        pub allow: BTreeMap<Cidr, u64>,
        pub deny: BTreeMap<Cidr, u64>,
        pub stats: Stats,
    }

    impl FakeMaps {
        fn list(&mut self, list: List) -> &mut BTreeMap<Cidr, u64> {
            match list {
                List::Allow => &mut self.allow,
                List::Deny => &mut self.deny,
            }
        }
    }

    impl Maps for FakeMaps {
        fn policy(&self) -> &Policy {
            self.policy.as_ref().expect("the fake starts with a policy")
        }
        fn apply_policy(&mut self, new: Policy) -> Result<()> {
            new.validate()?;
            self.written.push(new.clone());
            self.policy = Some(new);
            Ok(())
        }
        fn sync_configured_lists(&mut self, allow: &[Cidr], deny: &[Cidr]) -> Result<Vec<String>> {
            let mut changes = Vec::new();
            for c in allow {
                if self.allow.insert(*c, 0).is_none() {
                    changes.push(format!("allow add {c}"));
                }
            }
            for c in deny {
                if self.deny.insert(*c, 0).is_none() {
                    changes.push(format!("deny add {c}"));
                }
            }
            Ok(changes)
        }
        fn block(&mut self, cidr: &Cidr, until_ns: u64) -> Result<BlockKind> {
            if cidr.len == 32 || cidr.len == 64 {
                self.bans.insert(*cidr, until_ns);
                Ok(BlockKind::Ban)
            } else {
                self.deny.insert(*cidr, until_ns);
                Ok(BlockKind::TimedDeny)
            }
        }
        fn unblock(&mut self, cidr: &Cidr) -> Result<bool> {
            Ok(self.bans.remove(cidr).is_some())
        }
        fn list_add(&mut self, list: List, cidr: &Cidr, expires_ns: u64) -> Result<()> {
            if self.list(list).len() >= 4 {
                bail!("the list is full");
            }
            self.list(list).insert(*cidr, expires_ns);
            Ok(())
        }
        fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool> {
            Ok(self.list(list).remove(cidr).is_some())
        }
        fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>> {
            let map = match list {
                List::Allow => &self.allow,
                List::Deny => &self.deny,
            };
            Ok(map
                .iter()
                .map(|(c, e)| (*c, ListEntry { expires_ns: *e }))
                .collect())
        }
        fn stats(&self) -> Result<Stats> {
            Ok(self.stats)
        }
    }

    /// Settings as `monitor run --iface eth0 --port 443` plus `f`, and a history in a
    /// temporary database.
    pub fn shared(f: impl FnOnce(&mut Layer)) -> Shared<FakeMaps> {
        let mut flags = Layer {
            iface: vec!["eth0".into()],
            port: vec![443],
            ..Layer::default()
        };
        f(&mut flags);
        let settings = Settings::resolve(&flags, None, None).expect("valid test settings");
        let maps = FakeMaps {
            policy: Some(settings.policy.clone()),
            ..FakeMaps::default()
        };
        let history = History::open(std::path::Path::new(":memory:")).expect("in-memory history");
        Shared::new(maps, settings, flags, None, history, Vec::new())
    }
}
