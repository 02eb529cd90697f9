//! What the leader runs: one reconciler per enabled ClientSync of its cluster, started,
//! restarted and stopped as specs are applied, changed, disabled or deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::reconcile::ReconcileContext;
use super::runner::{Gate, Runner};
use super::{AbortOnDrop, Shared};
use crate::spec::interval_of;
use crate::store::specs::{self, StoredSpec};
use crate::store::{observed, requests};
use crate::sync::Fence;

struct Running {
    generation: i64,
    wake: Arc<Notify>,
    token: CancellationToken,
    /// Dropping it aborts the reconciler: when the leader task is aborted (lost lease),
    /// every reconciler goes with it.
    task: AbortOnDrop,
}

/// How often the leader re-reads specs and requests while notifications arrive (the
/// control session LISTENs for them): a safety net only, so an idle leader's pool
/// connections can close.
const POLL_WHILE_LISTENING: Duration = Duration::from_secs(300);

/// Runs the leader's reconcilers until `token` is cancelled (then lets in-flight syncs
/// finish: spec changes and shutdown), or until the task is aborted (lost lease: every
/// reconciler is aborted with it).
pub(super) async fn run_leader(shared: Arc<Shared>, epoch: i64, token: CancellationToken) {
    // The lag gauges show only the tenants this term runs a reconciler for.
    shared.metrics.untrack_all();
    let _retention = shared
        .config
        .history_retention
        .map(|keep| AbortOnDrop(tokio::spawn(super::retention::run(shared.clone(), epoch, keep, token.child_token()))));
    let mut leader = Leader::new(shared, epoch, token.clone());
    while !token.is_cancelled() {
        if !leader.ctx.lease_valid() {
            // The election aborts this task in a moment; start nothing new meanwhile.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = token.cancelled() => {}
            }
            continue;
        }
        // Something is left to do on a later round (a Suspended status waiting for an
        // in-flight sync, a failed read): come back within spec_poll even while listening.
        let mut again_soon = leader.follow_specs().await;
        again_soon |= leader.claim_requests().await;
        leader.fleet.stopping.retain(|t| !t.0.is_finished());
        leader.pause(again_soon).await;
    }
    leader.fleet.drain().await;
}

/// A term's leader: its reconcilers, and what they share.
struct Leader {
    ctx: Arc<ReconcileContext>,
    gate: Arc<Gate>,
    fleet: Fleet,
    /// The generation each disabled tenant was recorded `Suspended` at.
    suspended: HashMap<String, i64>,
    token: CancellationToken,
}

impl Leader {
    fn new(shared: Arc<Shared>, epoch: i64, token: CancellationToken) -> Leader {
        let fence = Fence { who: shared.candidate.clone(), epoch };
        let gate = Gate::new(&shared.config);
        let fleet = Fleet { epoch, running: HashMap::new(), stopping: Vec::new(), drained: false };
        Leader { ctx: Arc::new(ReconcileContext { shared, fence }), gate, fleet, suspended: HashMap::new(), token }
    }

    /// Reads the specs and has the fleet follow them: reconcilers stopped for specs
    /// changed, disabled or deleted, started for new ones, and disabled tenants recorded
    /// `Suspended`. True when something is left for a later round.
    async fn follow_specs(&mut self) -> bool {
        let sh = &self.ctx.shared;
        let list = match specs::list(&sh.pool, &sh.config.cluster).await {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %e, "cannot read specs; keeping current reconcilers");
                return true;
            }
        };
        let wanted: HashMap<&str, &StoredSpec> =
            list.iter().filter(|s| s.spec.enabled).map(|s| (s.name.as_str(), s)).collect();
        self.stop_stale(&wanted);
        self.start_new(&wanted).await;
        self.suspend_disabled(&list).await
    }

    /// Stops the reconcilers whose spec changed, was disabled or deleted.
    fn stop_stale(&mut self, wanted: &HashMap<&str, &StoredSpec>) {
        let running = &mut self.fleet.running;
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| wanted.get(name.as_str()).is_none_or(|s| s.generation != r.generation))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                info!(client = %name, "stopping reconciler (spec changed, disabled or deleted)");
                self.ctx.shared.metrics.untrack(&name);
                r.token.cancel();
                self.fleet.stopping.push(r.task);
            }
        }
    }

    /// Starts a reconciler for each wanted spec that has none.
    async fn start_new(&mut self, wanted: &HashMap<&str, &StoredSpec>) {
        let sh = &self.ctx.shared;
        let new = wanted.keys().any(|n| !self.fleet.running.contains_key(*n));
        let last_syncs = if new { observed::last_syncs(&sh.pool, &sh.config.cluster).await.ok() } else { None };
        for (name, spec) in wanted {
            if self.fleet.running.contains_key(*name) {
                continue;
            }
            let last = last_syncs.as_ref().and_then(|m| m.get(*name).copied());
            sh.metrics.track(name, interval_of(&spec.spec), last);
            let token = self.token.child_token();
            let wake = Arc::new(Notify::new());
            let runner = Runner {
                ctx: self.ctx.clone(),
                spec: (*spec).clone(),
                gate: self.gate.clone(),
                wake: wake.clone(),
                token: token.clone(),
            };
            info!(client = %name, generation = spec.generation, "starting reconciler");
            let task = AbortOnDrop(tokio::spawn(runner.run()));
            self.fleet.running.insert(name.to_string(), Running { generation: spec.generation, wake, token, task });
        }
    }

    /// Records each disabled tenant `Suspended`, once per generation. True when one must
    /// wait for a later round.
    async fn suspend_disabled(&mut self, list: &[StoredSpec]) -> bool {
        let mut again_soon = false;
        for s in list.iter().filter(|s| !s.spec.enabled) {
            if self.suspended.get(&s.name) == Some(&s.generation) {
                continue;
            }
            // A stopped reconciler may still be finishing a sync that records its own
            // outcome; it holds the tenant's lock until then. Write Suspended after it (a
            // later round, at most spec_poll away), never before.
            let lock = self.gate.lock(&s.name);
            let Ok(_after_in_flight_sync) = lock.try_lock() else {
                again_soon = true;
                continue;
            };
            let lease_valid = || self.ctx.lease_valid();
            match self.ctx.recorder(s, &lease_valid).suspended().await {
                Ok(()) => {
                    self.suspended.insert(s.name.clone(), s.generation);
                }
                Err(e) => {
                    again_soon = true;
                    warn!(client = %s.name, epoch = self.ctx.fence.epoch, error = %e, "cannot record Suspended status");
                }
            }
        }
        again_soon
    }

    /// Claims the sync requests and wakes their reconcilers. True when they could not be
    /// read.
    async fn claim_requests(&self) -> bool {
        let sh = &self.ctx.shared;
        let claimed = if self.ctx.lease_valid() {
            requests::claim(&sh.pool, &sh.candidate, self.ctx.fence.epoch).await
        } else {
            Ok(Vec::new())
        };
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                warn!(error = %e, "cannot read sync requests");
                return true;
            }
        };
        for (id, name) in claimed {
            if let Some(r) = self.fleet.running.get(&name) {
                info!(client = %name, request = %id, "sync requested");
                r.wake.notify_one();
            } else {
                warn!(client = %name, request = %id, "sync requested for a tenant that is not enabled");
            }
        }
        false
    }

    /// Waits for a notification (specs, requests), the poll period or the end.
    async fn pause(&self, again_soon: bool) {
        let sh = &self.ctx.shared;
        let poll = if sh.listening() && !again_soon {
            POLL_WHILE_LISTENING.max(sh.config.spec_poll)
        } else {
            sh.config.spec_poll
        };
        tokio::select! {
            () = sh.spec_wake.notified() => {
                // Let a burst of notifications (a fleet apply) settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            () = tokio::time::sleep(poll) => {}
            () = self.token.cancelled() => {}
        }
    }
}

/// The leader's reconcilers. Dropped without having been drained (the leader task was
/// aborted: lost lease), it aborts every one of them at once and says so.
struct Fleet {
    epoch: i64,
    running: HashMap<String, Running>,
    /// Stopped (spec changed, disabled, deleted), finishing an in-flight sync.
    stopping: Vec<AbortOnDrop>,
    drained: bool,
}

impl Fleet {
    /// Stops every reconciler and waits for their in-flight syncs to finish.
    async fn drain(&mut self) {
        for (_, r) in self.running.drain() {
            r.token.cancel();
            self.stopping.push(r.task);
        }
        for t in &mut self.stopping {
            let _ = (&mut t.0).await;
        }
        self.drained = true;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.drained {
            let busy = self.running.values().map(|r| &r.task).chain(&self.stopping).filter(|t| !t.0.is_finished());
            warn!(epoch = self.epoch, reconcilers = busy.count(), "leader aborted: aborting all reconcilers");
        }
    }
}
