//! The helper: commands change a group's desired state, which is persisted
//! and then reconciled onto the balancer before the reply. A background task
//! ends drain periods and repairs balancers changed behind the helper's back
//! (and, at start, re-applies what a previous process left unfinished).

use crate::config::{BalancerConfig, GroupConfig};
use crate::driver::{Driver, Note, op_limit, run_program};
use crate::state::{GroupState, StateDb};
use crate::wire::{self, Parsed, Refused};
use cgp_runtime::metrics::{self, Event};
use cgp_runtime::{Ctx, Helper};
use cgp_wire::shape::UnknownShapes;
use cgp_wire::{Reply, Request};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

pub struct Group {
    name: String,
    cfg: GroupConfig,
    driver: Driver,
    live: Mutex<Live>,
}

struct Live {
    desired: GroupState,
    /// The VIPs the hook last brought up; `None` until the hook has run in
    /// this process (the machine's real state is unknown until then).
    vips_up: Option<Vec<IpAddr>>,
    /// A command or the store gave this group a state. A group the helper
    /// knows nothing about is left as it is (its servers may be managed by
    /// hand until the cluster makes this server its balancer).
    known: bool,
}

pub struct Balancer {
    groups: BTreeMap<String, Arc<Group>>,
    db: Arc<StateDb>,
    grace: Duration,
    deadline: Duration,
    /// Requests outside the reconstructed grammar, reported once per shape
    /// (kept over a reload, so a shape is reported once per process).
    unknown_shapes: Arc<UnknownShapes>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Group {
    /// Brings the balancer to the desired state: drains whose time is over
    /// are dropped, VIPs go down before servers leave and up after they are
    /// ready.
    async fn reconcile(
        &self,
        live: &mut Live,
        db: &Arc<StateDb>,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<usize, String> {
        if live.desired.expire(now_ms()) {
            db.store(&self.name, &live.desired).await?;
        }
        let wanted_vips = if live.desired.held {
            live.desired.vips.clone()
        } else {
            Vec::new()
        };
        if !live.desired.held {
            self.vip_hook(live, &wanted_vips, deadline).await?;
        }
        let target = live.desired.target(self.cfg.weight);
        let applied = self.driver.reconcile(&target, deadline, note).await?;
        if live.desired.held {
            self.vip_hook(live, &wanted_vips, deadline).await?;
        }
        Ok(applied.changes)
    }

    /// Runs `<hook> down <group> <vips>` for VIPs to release and
    /// `<hook> up <group> <vips>` for VIPs to bring up.
    async fn vip_hook(
        &self,
        live: &mut Live,
        wanted: &[IpAddr],
        deadline: Instant,
    ) -> Result<(), String> {
        if self.cfg.vip_hook.is_empty() || live.vips_up.as_deref() == Some(wanted) {
            return Ok(());
        }
        // Unknown state: release the last known VIPs (a hook must accept
        // releasing what is not there), bring up the wanted ones.
        let up_before = live
            .vips_up
            .clone()
            .unwrap_or_else(|| live.desired.vips.clone());
        let down: Vec<IpAddr> = up_before
            .iter()
            .filter(|v| !wanted.contains(v))
            .copied()
            .collect();
        let up: Vec<IpAddr> = match &live.vips_up {
            Some(before) => wanted
                .iter()
                .filter(|v| !before.contains(v))
                .copied()
                .collect(),
            None => wanted.to_vec(),
        };
        for (verb, vips) in [("down", down), ("up", up)] {
            if vips.is_empty() {
                continue;
            }
            let mut argv = self.cfg.vip_hook.clone();
            argv.extend([verb.to_string(), self.name.clone()]);
            argv.extend(vips.iter().map(ToString::to_string));
            run_program(&argv, b"", op_limit(Duration::from_secs(10), deadline))
                .await
                .map_err(|e| format!("VIP hook: {e}"))?;
        }
        live.vips_up = Some(wanted.to_vec());
        Ok(())
    }
}

impl Balancer {
    async fn command(&self, ctx: &Ctx, parsed: Parsed) -> Reply {
        let Some(group) = self.groups.get(&parsed.group) else {
            return wire::refused(&format!("unknown group {}", parsed.group));
        };
        // Leave time to write the reply before the runtime's own deadline.
        let deadline = ctx
            .deadline()
            .checked_sub(Duration::from_millis(200))
            .unwrap_or_else(Instant::now);
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(mut live) = tokio::time::timeout(left, group.live.lock()).await else {
            return wire::refused("the group is busy with another change");
        };
        live.known = true;
        let command = parsed.command.map_endpoints(|ep| group.driver.entry(ep));
        let before = live.desired.clone();
        let changed = live
            .desired
            .apply(&command, &group.cfg.vips, now_ms(), self.grace);
        // Saved before the balancer is touched: a helper killed in the middle
        // of the change (no reply sent, so CGP sends it again) finishes it
        // at start.
        if changed {
            if let Err(e) = self.db.store(&group.name, &live.desired).await {
                live.desired = before;
                return wire::refused(&e);
            }
            tracing::info!(group = %group.name, command = ?command, "desired state saved");
        }
        let note = |s: &str| ctx.info(s);
        let left = deadline.saturating_duration_since(Instant::now());
        let result =
            tokio::time::timeout(left, group.reconcile(&mut live, &self.db, deadline, &note))
                .await
                .unwrap_or_else(|_| Err("the balancer did not match within the deadline".into()));
        match result {
            Ok(n) => {
                tracing::info!(group = %group.name, command = ?command, changes = n, "reconciled");
                wire::applied()
            }
            Err(e) => {
                // ERROR means "not applied": the command is dropped from the
                // desired state, which goes back to what the balancer had
                // before it (the next reconcile undoes any part applied).
                metrics::count(Event::BackendError);
                tracing::warn!(group = %group.name, command = ?command, error = %e, "not applied");
                if changed {
                    live.desired = before;
                    if let Err(e) = self.db.store(&group.name, &live.desired).await {
                        tracing::error!(group = %group.name, error = %e, "cannot save the state");
                    }
                }
                wire::refused(&e)
            }
        }
    }
}

/// Runs every group's reconcile at start, then ends drain periods as they
/// fall due and reconciles every `interval` (when not zero).
async fn sweep(groups: Vec<Arc<Group>>, db: Arc<StateDb>, interval: Duration, deadline: Duration) {
    let note = |s: &str| tracing::info!(note = %s, "balancer");
    let mut last_full: Option<Instant> = None;
    loop {
        let full = last_full.is_none_or(|t| !interval.is_zero() && t.elapsed() >= interval);
        if full {
            last_full = Some(Instant::now());
        }
        for g in &groups {
            let mut live = g.live.lock().await;
            let due = live.desired.next_expiry().is_some_and(|t| t <= now_ms());
            if due || (full && live.known) {
                if let Err(e) = g
                    .reconcile(&mut live, &db, Instant::now() + deadline, &note)
                    .await
                {
                    metrics::count(Event::BackendError);
                    tracing::warn!(group = %g.name, error = %e, "background reconcile failed; retried later");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Helper for Balancer {
    type Config = BalancerConfig;

    async fn build(cfg: BalancerConfig, previous: Option<Arc<Self>>) -> Result<Self, String> {
        // The store cannot be opened twice: a reload keeps the open one.
        let db = match (&previous, &cfg.state_path) {
            (Some(p), _) => p.db.clone(),
            (None, Some(path)) => {
                let path = path.clone();
                let (db, note) = tokio::task::spawn_blocking(move || StateDb::open(&path))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(n) = note {
                    tracing::warn!("{n}");
                }
                Arc::new(db)
            }
            (None, None) => Arc::new(StateDb::memory()),
        };
        let mut stored = db.load();
        let mut groups = BTreeMap::new();
        for (name, gcfg) in &cfg.groups {
            // An unchanged group keeps its lock and VIP knowledge over a reload.
            let kept = previous
                .as_ref()
                .and_then(|p| p.groups.get(name))
                .filter(|g| g.cfg == *gcfg);
            let group = match kept {
                Some(g) => g.clone(),
                None => Arc::new(Group {
                    name: name.clone(),
                    cfg: gcfg.clone(),
                    driver: Driver::new(name, gcfg)?,
                    live: Mutex::new(match stored.remove(name) {
                        Some(desired) => Live {
                            desired,
                            vips_up: None,
                            known: true,
                        },
                        None => Live {
                            desired: GroupState::default(),
                            vips_up: None,
                            known: false,
                        },
                    }),
                }),
            };
            groups.insert(name.clone(), group);
        }
        for name in stored.keys() {
            tracing::warn!(group = %name, "stored state for a group no longer configured, ignored");
        }
        let sweeper = tokio::spawn(sweep(
            groups.values().cloned().collect(),
            db.clone(),
            cfg.reconcile_interval,
            cfg.runtime.deadline,
        ));
        Ok(Balancer {
            groups,
            db,
            grace: cfg.drain_grace,
            deadline: cfg.runtime.deadline,
            unknown_shapes: previous
                .as_ref()
                .map(|p| p.unknown_shapes.clone())
                .unwrap_or_default(),
            sweeper,
        })
    }

    /// Commands for one group are applied in the order the cluster sent
    /// them (an ADD followed at once by a REMOVE of the same server must not
    /// be applied the other way round); groups do not wait for each other.
    fn order_key(&self, req: &Request) -> Option<Vec<u8>> {
        let parsed = wire::parse(&req.command, &req.rest).ok()?;
        Some(parsed.group.into_bytes())
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
        match wire::parse(&req.command, &req.rest) {
            Ok(parsed) => self.command(&ctx, parsed).await,
            Err(refused) => {
                if let Refused::UnknownShape(_) = refused {
                    self.unknown_shapes.report(&req, "error, state unchanged");
                }
                wire::refused(refused.reason())
            }
        }
    }

    fn timeout_reply(&self, _command: &str) -> Reply {
        wire::refused(&format!(
            "the balancer did not match within {:?}",
            self.deadline
        ))
    }

    fn panic_reply(&self, _command: &str) -> Reply {
        wire::refused("internal error")
    }

    fn oversize_reply(&self, _command: &str) -> Reply {
        wire::refused("the balancer did not match (reason too long to report)")
    }
}
