//! The desired state of each balancer group, how commands change it, and its
//! persistence in the local store.

use crate::wire::{Command, Endpoint};
use cgp_lookup::store::{Opened, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What the cluster wants of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// This server holds the balancer duty (START seen, no STOP since).
    pub held: bool,
    /// The VIPs of the last START; kept after STOP so that the driver knows
    /// which virtual services are its own to remove.
    pub vips: Vec<IpAddr>,
    pub servers: BTreeMap<Endpoint, Member>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Member {
    Active,
    /// Leaving: no new connections until `until_ms` (Unix time), then removed.
    Draining {
        until_ms: u64,
    },
}

/// What the balancer must show for one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Ready,
    Drain,
}

/// The balancer state a driver must reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The VIPs whose virtual services belong to the group.
    pub vips: Vec<IpAddr>,
    /// Virtual services should exist (duty held, or servers still draining).
    pub services: bool,
    pub servers: BTreeMap<Endpoint, Want>,
    /// Weight of an active server; `None`: whatever the balancer has.
    pub weight: Option<u32>,
}

impl GroupState {
    /// Applies a command; `default_vips` stand in for a START without a list.
    /// Returns whether anything changed.
    pub fn apply(
        &mut self,
        cmd: &Command,
        default_vips: &[IpAddr],
        now_ms: u64,
        grace: Duration,
    ) -> bool {
        let before = self.clone();
        let until_ms = now_ms.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let drain = |m: &mut Member| {
            if *m == Member::Active {
                *m = Member::Draining { until_ms };
            }
        };
        match cmd {
            Command::Start { vips } => {
                self.held = true;
                self.vips = vips.clone().unwrap_or_else(|| default_vips.to_vec());
            }
            Command::Stop => {
                self.held = false;
                self.servers.values_mut().for_each(drain);
            }
            Command::Servers(list) => {
                for (ep, m) in self.servers.iter_mut() {
                    if !list.contains(ep) {
                        drain(m);
                    }
                }
                for ep in list {
                    self.servers.insert(*ep, Member::Active);
                }
            }
            Command::Add(ep) => {
                self.servers.insert(*ep, Member::Active);
            }
            Command::Remove(ep) => {
                if let Some(m) = self.servers.get_mut(ep) {
                    drain(m);
                }
            }
        }
        *self != before
    }

    /// Forgets servers whose drain period is over; returns whether any was.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let n = self.servers.len();
        self.servers
            .retain(|_, m| !matches!(m, Member::Draining { until_ms } if *until_ms <= now_ms));
        self.servers.len() != n
    }

    /// The earliest end of a drain, if any server is draining.
    pub fn next_expiry(&self) -> Option<u64> {
        self.servers
            .values()
            .filter_map(|m| match m {
                Member::Draining { until_ms } => Some(*until_ms),
                Member::Active => None,
            })
            .min()
    }

    /// The balancer state this desired state asks for; `weight` is the
    /// configured weight of an active server (`None`: left as the balancer has it).
    pub fn target(&self, weight: Option<u32>) -> Target {
        let servers: BTreeMap<Endpoint, Want> = self
            .servers
            .iter()
            .map(|(ep, m)| {
                let want = match m {
                    Member::Active if self.held => Want::Ready,
                    _ => Want::Drain,
                };
                (*ep, want)
            })
            .collect();
        Target {
            vips: self.vips.clone(),
            services: self.held || !servers.is_empty(),
            servers,
            weight,
        }
    }
}

/// The persisted desired states, or an in-memory stand-in when no store is
/// configured or it cannot be opened.
pub struct StateDb {
    tree: Option<(Store, sled::Tree)>,
}

impl StateDb {
    pub fn memory() -> StateDb {
        StateDb { tree: None }
    }

    /// Opens the store; the message tells what happened when it is not clean.
    pub fn open(path: &Path) -> (StateDb, Option<String>) {
        match Store::open(path, cgp_lookup::store::LOCK_WAIT) {
            Ok((store, how)) => match store.tree("groups") {
                Ok(tree) => {
                    let note = match how {
                        Opened::Clean => None,
                        Opened::Replaced { moved_to } => Some(format!(
                            "state store unreadable, moved to {}; starting empty",
                            moved_to.display()
                        )),
                    };
                    (
                        StateDb {
                            tree: Some((store, tree)),
                        },
                        note,
                    )
                }
                Err(e) => (
                    StateDb::memory(),
                    Some(format!("state store: {e}; state kept in memory only")),
                ),
            },
            Err(e) => (
                StateDb::memory(),
                Some(format!("{e}; state kept in memory only")),
            ),
        }
    }

    /// Every stored group state (unreadable entries are skipped and logged).
    pub fn load(&self) -> BTreeMap<String, GroupState> {
        let Some((_, tree)) = &self.tree else {
            return BTreeMap::new();
        };
        tree.iter()
            .flatten()
            .filter_map(|(k, v)| {
                let name = String::from_utf8_lossy(&k).into_owned();
                match serde_json::from_slice(&v) {
                    Ok(s) => Some((name, s)),
                    Err(e) => {
                        tracing::warn!(group = %name, error = %e, "stored state unreadable, ignored");
                        None
                    }
                }
            })
            .collect()
    }

    /// Stores a group's state durably (flushed before returning, so that a
    /// crash right after a reply cannot lose what was replied to).
    /// [`StateDb::save`] on the runtime's compute pool: it ends in a flush
    /// to disk, which must not hold up the reader that polls a request
    /// first.
    pub async fn store(self: &Arc<Self>, group: &str, state: &GroupState) -> Result<(), String> {
        let (db, group, state) = (self.clone(), group.to_string(), state.clone());
        cgp_runtime::compute(move || db.save(&group, &state)).await
    }

    pub fn save(&self, group: &str, state: &GroupState) -> Result<(), String> {
        let Some((store, tree)) = &self.tree else {
            return Ok(());
        };
        let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        tree.insert(group.as_bytes(), json)
            .and_then(|_| store.flush())
            .map_err(|e| format!("cannot save the state: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn commands_are_idempotent_and_leaving_servers_drain() {
        let mut s = GroupState::default();
        let vips: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap()];
        assert!(s.apply(&Command::Start { vips: None }, &vips, 0, GRACE));
        assert_eq!(s.vips, vips);
        let list = Command::Servers(vec![ep("10.0.0.1"), ep("10.0.0.2")]);
        assert!(s.apply(&list, &vips, 0, GRACE));
        assert!(!s.apply(&list, &vips, 5, GRACE));
        assert!(s.apply(&Command::Remove(ep("10.0.0.2")), &vips, 100, GRACE));
        assert_eq!(
            s.servers[&ep("10.0.0.2")],
            Member::Draining { until_ms: 10_100 }
        );
        // A second REMOVE does not restart the drain period.
        assert!(!s.apply(&Command::Remove(ep("10.0.0.2")), &vips, 200, GRACE));
        assert!(!s.apply(&Command::Remove(ep("10.0.0.9")), &vips, 200, GRACE));
        assert_eq!(s.next_expiry(), Some(10_100));
        assert!(!s.expire(10_099));
        assert!(s.expire(10_100));
        assert_eq!(s.servers.len(), 1);
        // Re-added while draining: active again.
        s.apply(&Command::Remove(ep("10.0.0.1")), &vips, 0, GRACE);
        assert!(s.apply(&Command::Add(ep("10.0.0.1")), &vips, 1, GRACE));
        assert_eq!(s.servers[&ep("10.0.0.1")], Member::Active);
    }

    #[test]
    fn stop_drains_everything_and_targets_follow() {
        let mut s = GroupState::default();
        s.apply(&Command::Start { vips: Some(vec![]) }, &[], 0, GRACE);
        s.apply(
            &Command::Servers(vec![ep("10.0.0.1:25"), ep("10.0.0.2")]),
            &[],
            0,
            GRACE,
        );
        let t = s.target(Some(3));
        assert_eq!(t.servers.len(), 2);
        assert!(t.servers.values().all(|w| *w == Want::Ready));
        assert!(t.services);
        s.apply(&Command::Stop, &[], 0, GRACE);
        let t = s.target(Some(3));
        assert!(t.servers.values().all(|w| *w == Want::Drain));
        assert!(t.services);
        s.expire(u64::MAX);
        let t = s.target(None);
        assert!(t.servers.is_empty() && !t.services);
    }

    #[test]
    fn persisted_states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut s = GroupState::default();
        s.apply(&Command::Add(ep("[2001:db8::5]:25")), &[], 0, GRACE);
        {
            let (db, note) = StateDb::open(&path);
            assert_eq!(note, None);
            db.save("mail", &s).unwrap();
        }
        let (db, _) = StateDb::open(&path);
        assert_eq!(db.load().get("mail"), Some(&s));
    }
}
