//! Drivers turn a group's [`Target`] into a real balancer's state: each reads
//! what the balancer has, applies the smallest set of changes ([`diff`]) and
//! reads again to verify.

pub mod exec;
pub mod haproxy;
pub mod ipvs;

use crate::config::GroupConfig;
use crate::state::{Target, Want};
use crate::wire::Endpoint;
use std::collections::BTreeMap;
use std::time::Instant;

/// Where drivers report what they do: `*` lines when a request is being
/// answered, the log otherwise.
pub type Note<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// The state of one balancer entry as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ready,
    /// No new connections; existing ones go on.
    Drain,
    /// Out of service (HAProxy maintenance).
    Maint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub mode: Mode,
    pub weight: u32,
}

impl Slot {
    pub fn wanted(want: Want, weight: u32) -> Slot {
        match want {
            Want::Ready => Slot {
                mode: Mode::Ready,
                weight,
            },
            Want::Drain => Slot {
                mode: Mode::Drain,
                weight: 0,
            },
        }
    }

    /// The actual slot satisfies this wanted one (a draining entry's weight
    /// does not matter).
    fn satisfied_by(&self, actual: &Slot) -> bool {
        self.mode == actual.mode && (self.mode == Mode::Drain || self.weight == actual.weight)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<K> {
    Add(K, Slot),
    Update { key: K, from: Slot, to: Slot },
    Remove(K),
}

/// The changes that turn `actual` into `wanted`. An entry wanted as draining
/// but already gone needs nothing: draining only ever ends in removal.
pub fn diff<K: Ord + Clone>(
    actual: &BTreeMap<K, Slot>,
    wanted: &BTreeMap<K, Slot>,
) -> Vec<Change<K>> {
    let mut out = Vec::new();
    for (k, want) in wanted {
        match actual.get(k) {
            None if want.mode == Mode::Drain => {}
            None => out.push(Change::Add(k.clone(), *want)),
            Some(have) if want.satisfied_by(have) => {}
            Some(have) => out.push(Change::Update {
                key: k.clone(),
                from: *have,
                to: *want,
            }),
        }
    }
    out.extend(
        actual
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| Change::Remove(k.clone())),
    );
    out
}

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries changed (0 when the balancer already matched).
    pub changes: usize,
}

pub enum Driver {
    Haproxy(haproxy::Haproxy),
    Ipvs(ipvs::Ipvs),
    Exec(exec::Exec),
}

impl Driver {
    /// The driver of a group (validation guarantees exactly one table).
    pub fn new(group: &str, cfg: &GroupConfig) -> Result<Driver, String> {
        match (&cfg.haproxy, &cfg.ipvs, &cfg.exec) {
            (Some(h), None, None) => Ok(Driver::Haproxy(haproxy::Haproxy::new(h.clone()))),
            (None, Some(i), None) => Ok(Driver::Ipvs(ipvs::Ipvs::new(i.clone()))),
            (None, None, Some(e)) => Ok(Driver::Exec(exec::Exec::new(group, e.clone()))),
            _ => Err(format!("group {group} needs exactly one driver")),
        }
    }

    /// The balancer entry an address stands for, so that `10.0.0.5` and
    /// `[10.0.0.5]:25` are one server when 25 is the group's port: HAProxy
    /// fills in its port, IPVS in direct-routing mode cannot map ports (a
    /// server is its IP), an exec program gets the address as sent.
    pub fn entry(&self, ep: Endpoint) -> Endpoint {
        match self {
            Driver::Haproxy(h) => ep.with_port(ep.port.or(Some(h.port()))),
            Driver::Ipvs(_) => ep.with_port(None),
            Driver::Exec(_) => ep,
        }
    }

    pub async fn reconcile(
        &self,
        target: &Target,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<Applied, String> {
        match self {
            Driver::Haproxy(h) => h.reconcile(target, deadline, note).await,
            Driver::Ipvs(i) => i.reconcile(target, deadline, note).await,
            Driver::Exec(e) => e.reconcile(target, deadline).await,
        }
    }
}

/// The time left for one operation: its own limit, cut to the deadline.
pub fn op_limit(limit: std::time::Duration, deadline: Instant) -> std::time::Duration {
    limit.min(deadline.saturating_duration_since(Instant::now()))
}

/// Runs a program with a time limit, feeding `stdin`; `Ok(stdout)` when it
/// exits 0. Shared by the IPVS and exec drivers and the VIP hook.
pub async fn run_program(
    argv: &[String],
    stdin: &[u8],
    limit: std::time::Duration,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut input = child.stdin.take();
    let stdin = stdin.to_vec();
    let run = async move {
        if let Some(i) = input.as_mut() {
            // A program that does not read its input is not an error.
            let _ = i.write_all(&stdin).await;
        }
        drop(input);
        child.wait_with_output().await
    };
    match tokio::time::timeout(limit, run).await {
        Err(_) => Err(format!("{program} did not finish within {limit:?}")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(200).collect();
            Err(format!("{program} failed ({}): {first}", out.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(mode: Mode, weight: u32) -> Slot {
        Slot { mode, weight }
    }

    #[test]
    fn diff_is_minimal() {
        let actual: BTreeMap<u8, Slot> = (0..50).map(|k| (k, slot(Mode::Ready, 1))).collect();
        let mut wanted = actual.clone();
        assert!(diff(&actual, &wanted).is_empty());
        wanted.insert(7, Slot::wanted(Want::Drain, 1));
        assert_eq!(
            diff(&actual, &wanted),
            vec![Change::Update {
                key: 7,
                from: slot(Mode::Ready, 1),
                to: slot(Mode::Drain, 0)
            }]
        );
        wanted.remove(&8);
        wanted.insert(60, slot(Mode::Ready, 2));
        wanted.insert(61, Slot::wanted(Want::Drain, 1));
        let d = diff(&actual, &wanted);
        assert_eq!(d.len(), 3);
        assert!(d.contains(&Change::Add(60, slot(Mode::Ready, 2))));
        assert!(d.contains(&Change::Remove(8)));
        // Draining is satisfied whatever the weight; maintenance is not drain.
        let a: BTreeMap<u8, Slot> = [(1, slot(Mode::Drain, 5)), (2, slot(Mode::Maint, 1))].into();
        let w: BTreeMap<u8, Slot> = [(1, slot(Mode::Drain, 0)), (2, slot(Mode::Ready, 1))].into();
        assert_eq!(diff(&a, &w).len(), 1);
    }
}
