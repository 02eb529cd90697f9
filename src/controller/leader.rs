//! What the leader runs: one reconciler per enabled ClientSync of its cluster, started,
//! restarted and stopped as specs are applied, changed, disabled or deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::reconciler::{Reconciler, mark_suspended};
use super::{AbortOnDrop, Shared};
use crate::spec::interval_of;
use crate::store::{observed, requests, specs};
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
    let cluster = shared.config.cluster.clone();
    let fence = Fence { who: shared.candidate.clone(), epoch };
    let slots = Arc::new(Semaphore::new(shared.config.max_concurrency.max(1)));
    let connections = Arc::new(Semaphore::new(shared.config.sync_connections.max(1)));
    let mut locks: HashMap<String, Arc<Mutex<()>>> = HashMap::new();
    let mut fleet = Fleet { epoch, running: HashMap::new(), stopping: Vec::new(), drained: false };
    let Fleet { running, stopping, .. } = &mut fleet;
    let mut suspended: HashMap<String, i64> = HashMap::new();
    // The lag gauges show only the tenants this term runs a reconciler for.
    shared.metrics.untrack_all();
    let _retention = shared
        .config
        .history_retention
        .map(|keep| AbortOnDrop(tokio::spawn(super::retention::run(shared.clone(), epoch, keep, token.child_token()))));

    while !token.is_cancelled() {
        // Something is left to do on a later round (a Suspended status waiting for an
        // in-flight sync, a failed read): come back within spec_poll even while listening.
        let mut again_soon = false;
        if !shared.lease_valid(epoch) {
            // The election aborts this task in a moment; start nothing new meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = token.cancelled() => {}
            }
            continue;
        }
        match specs::list(&shared.pool, &cluster).await {
            Ok(list) => {
                let wanted: HashMap<&str, &specs::StoredSpec> =
                    list.iter().filter(|s| s.spec.enabled).map(|s| (s.name.as_str(), s)).collect();
                let stale: Vec<String> = running
                    .iter()
                    .filter(|(name, r)| wanted.get(name.as_str()).is_none_or(|s| s.generation != r.generation))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in stale {
                    if let Some(r) = running.remove(&name) {
                        info!(client = %name, "stopping reconciler (spec changed, disabled or deleted)");
                        shared.metrics.untrack(&name);
                        r.token.cancel();
                        stopping.push(r.task);
                    }
                }
                let new = wanted.keys().any(|n| !running.contains_key(*n));
                let last_syncs = if new { observed::last_syncs(&shared.pool, &cluster).await.ok() } else { None };
                for (name, spec) in &wanted {
                    if running.contains_key(*name) {
                        continue;
                    }
                    let last = last_syncs.as_ref().and_then(|m| m.get(*name).copied());
                    shared.metrics.track(name, interval_of(&spec.spec), last);
                    let lock = locks.entry(name.to_string()).or_default().clone();
                    let child = token.child_token();
                    let wake = Arc::new(Notify::new());
                    let rec = Reconciler {
                        shared: shared.clone(),
                        spec: (*spec).clone(),
                        fence: fence.clone(),
                        slots: slots.clone(),
                        connections: connections.clone(),
                        lock,
                        wake: wake.clone(),
                        token: child.clone(),
                    };
                    info!(client = %name, generation = spec.generation, "starting reconciler");
                    let task = AbortOnDrop(tokio::spawn(rec.run()));
                    running.insert(name.to_string(), Running { generation: spec.generation, wake, token: child, task });
                }
                for s in list.iter().filter(|s| !s.spec.enabled) {
                    if suspended.get(&s.name) != Some(&s.generation) {
                        // A stopped reconciler may still be finishing a sync that records its
                        // own outcome; it holds the tenant's lock until then. Write Suspended
                        // after it (a later round, at most spec_poll away), never before.
                        let lock = locks.entry(s.name.clone()).or_default().clone();
                        let Ok(_after_in_flight_sync) = lock.try_lock() else {
                            again_soon = true;
                            continue;
                        };
                        match mark_suspended(&shared, &fence, s).await {
                            Ok(()) => {
                                suspended.insert(s.name.clone(), s.generation);
                            }
                            Err(e) => {
                                again_soon = true;
                                warn!(client = %s.name, error = %e, "cannot record Suspended status")
                            }
                        }
                    }
                }
            }
            Err(e) => {
                again_soon = true;
                warn!(error = %e, "cannot read specs; keeping current reconcilers")
            }
        }
        let claimed = match shared.lease_valid(epoch) {
            true => requests::claim(&shared.pool, &shared.candidate, epoch).await,
            false => Ok(Vec::new()),
        };
        match claimed {
            Ok(claimed) => {
                for (id, name) in claimed {
                    match running.get(&name) {
                        Some(r) => {
                            info!(client = %name, request = %id, "sync requested");
                            r.wake.notify_one();
                        }
                        None => warn!(client = %name, request = %id, "sync requested for a tenant that is not enabled"),
                    }
                }
            }
            Err(e) => {
                again_soon = true;
                warn!(error = %e, "cannot read sync requests")
            }
        }
        stopping.retain(|t| !t.0.is_finished());
        let poll = match shared.listening() && !again_soon {
            true => POLL_WHILE_LISTENING.max(shared.config.spec_poll),
            false => shared.config.spec_poll,
        };
        tokio::select! {
            _ = shared.spec_wake.notified() => {
                // Let a burst of notifications (a fleet apply) settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = tokio::time::sleep(poll) => {}
            _ = token.cancelled() => {}
        }
    }
    for (_, r) in running.drain() {
        r.token.cancel();
        stopping.push(r.task);
    }
    for t in stopping.iter_mut() {
        let _ = (&mut t.0).await;
    }
    fleet.drained = true;
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

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.drained {
            let busy = self.running.values().map(|r| &r.task).chain(&self.stopping).filter(|t| !t.0.is_finished());
            warn!(epoch = self.epoch, reconcilers = busy.count(), "leader aborted: aborting all reconcilers");
        }
    }
}
