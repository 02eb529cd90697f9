//! What the leader runs: one reconciler per enabled ClientSync of its cluster, started,
//! restarted and stopped as specs are applied, changed, disabled or deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use super::reconciler::{Reconciler, mark_suspended};
use crate::store::{requests, specs};
use crate::sync::Fence;

struct Running {
    generation: i64,
    wake: Arc<Notify>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

/// LISTEN for spec changes; `None` when it cannot (polling still works).
async fn listener(shared: &Shared) -> Option<PgListener> {
    let mut l = PgListener::connect_with(&shared.pool).await.ok()?;
    l.listen_all(["owsync_specs", "owsync_requests"]).await.ok()?;
    Some(l)
}

pub(super) async fn run_leader(shared: Arc<Shared>, epoch: i64, token: CancellationToken) {
    let cluster = shared.config.cluster.clone();
    let fence = Fence { who: shared.candidate.clone(), epoch };
    let slots = Arc::new(Semaphore::new(shared.config.max_concurrency.max(1)));
    let mut locks: HashMap<String, Arc<Mutex<()>>> = HashMap::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut suspended: HashMap<String, i64> = HashMap::new();
    let mut listen = listener(&shared).await;

    while !token.is_cancelled() {
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
                        r.token.cancel();
                        stopping.push(r.task);
                    }
                }
                for (name, spec) in &wanted {
                    if running.contains_key(*name) {
                        continue;
                    }
                    let lock = locks.entry(name.to_string()).or_default().clone();
                    let child = token.child_token();
                    let wake = Arc::new(Notify::new());
                    let rec = Reconciler {
                        shared: shared.clone(),
                        spec: (*spec).clone(),
                        fence: fence.clone(),
                        slots: slots.clone(),
                        lock,
                        wake: wake.clone(),
                        token: child.clone(),
                    };
                    info!(client = %name, generation = spec.generation, "starting reconciler");
                    let task = tokio::spawn(rec.run());
                    running.insert(name.to_string(), Running { generation: spec.generation, wake, token: child, task });
                }
                for s in list.iter().filter(|s| !s.spec.enabled) {
                    if suspended.get(&s.name) != Some(&s.generation) {
                        // A stopped reconciler may still be finishing a sync that records its
                        // own outcome; it holds the tenant's lock until then. Write Suspended
                        // after it (a later round, at most spec_poll away), never before.
                        let lock = locks.entry(s.name.clone()).or_default().clone();
                        let Ok(_after_in_flight_sync) = lock.try_lock() else { continue };
                        match mark_suspended(&shared, &fence, s).await {
                            Ok(()) => {
                                suspended.insert(s.name.clone(), s.generation);
                            }
                            Err(e) => {
                                warn!(client = %s.name, error = %e, "cannot record Suspended status")
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read specs; keeping current reconcilers"),
        }
        match requests::claim(&shared.pool, &cluster).await {
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
            Err(e) => warn!(error = %e, "cannot read sync requests"),
        }
        stopping.retain(|t| !t.is_finished());
        let poll = shared.config.spec_poll;
        match listen.as_mut() {
            Some(l) => tokio::select! {
                r = l.recv() => {
                    if r.is_err() {
                        listen = None;
                    }
                    // Let a burst of notifications (a fleet apply) settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(poll) => {}
                _ = token.cancelled() => {}
            },
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = token.cancelled() => {}
                }
                listen = listener(&shared).await;
            }
        }
    }
    for (_, r) in running.drain() {
        r.token.cancel();
        stopping.push(r.task);
    }
    for t in stopping {
        let _ = t.await;
    }
}
