//! Lease-based leader election on a dedicated connection (its backend pid is recorded as
//! the holder's), renewed in the background; fail-stop when the renew deadline passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use super::leader::run_leader;
use crate::store::{jobs, lease};

struct Leading {
    epoch: i64,
    token: CancellationToken,
    task: JoinHandle<()>,
}

fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + rand::random_range(-spread..=spread))
}

async fn step_down(shared: &Shared, leading: Leading, why: &str) {
    warn!(epoch = leading.epoch, reason = why, "stepping down: stopping all reconcilers");
    leading.token.cancel();
    let _ = leading.task.await;
    shared.metrics.is_leader.set(0);
    shared.metrics.leader_transitions.inc();
    shared.update_node(|n| {
        n.is_leader = false;
        n.epoch = None;
    });
}

/// LISTEN for lease releases; `None` when it cannot (polling still works).
async fn lease_listener(shared: &Shared) -> Option<PgListener> {
    let mut l = PgListener::connect_with(&shared.pool).await.ok()?;
    l.listen("owsync_lease").await.ok()?;
    Some(l)
}

/// Runs until `shutdown` is cancelled; then drains the reconcilers, releases the lease
/// and notifies the standby.
pub async fn run_election(shared: Arc<Shared>, shutdown: CancellationToken) {
    let cfg = shared.config.election.clone();
    let who = shared.candidate.clone();
    let mut conn: Option<PgConnection> = None;
    let mut leading: Option<Leading> = None;
    let mut last_renew = Instant::now();
    let mut released: Option<PgListener> = None;
    let version = env!("CARGO_PKG_VERSION");

    while !shutdown.is_cancelled() {
        if conn.is_none() {
            match PgConnection::connect_with(&shared.connect).await {
                Ok(c) => conn = Some(c),
                Err(e) => warn!(error = %e, "cannot connect for leader election; retrying"),
            }
        }
        let budget = if leading.is_some() {
            cfg.renew_deadline.saturating_sub(last_renew.elapsed()).max(Duration::from_millis(100))
        } else {
            cfg.renew_deadline
        };
        let outcome = match conn.as_mut() {
            Some(c) => tokio::time::timeout(budget, lease::try_acquire(c, &who, cfg.lease)).await.ok(),
            None => None,
        };
        match outcome {
            Some(Ok(Some(epoch))) => {
                last_renew = Instant::now();
                shared.update_node(|n| n.db_ok = true);
                if leading.as_ref().is_some_and(|l| l.epoch != epoch)
                    && let Some(l) = leading.take()
                {
                    step_down(&shared, l, "lease re-acquired under a new epoch").await;
                }
                if leading.is_none() {
                    info!(epoch, node = %who.node_id, cluster = %who.cluster, "became leader");
                    shared.metrics.is_leader.set(1);
                    shared.metrics.leader_transitions.inc();
                    shared.update_node(|n| {
                        n.is_leader = true;
                        n.epoch = Some(epoch);
                        n.leader_id = Some(who.node_id.clone());
                    });
                    if let Ok(mut tx) = crate::store::begin(&shared.pool, &who.cluster).await {
                        let msg = format!("{} leads cluster {} at epoch {epoch}", who.node_id, who.cluster);
                        let _ =
                            jobs::event(&mut tx, &who.cluster, None, false, "LeaderElected", &msg, Some(&who.node_id))
                                .await;
                        // Runs of earlier epochs that never ended died with their leader.
                        let _ = jobs::abandon_unfinished(&mut tx, &who.cluster, epoch).await;
                        let _ = tx.commit().await;
                    }
                    let token = shutdown.child_token();
                    let task = tokio::spawn(run_leader(shared.clone(), epoch, token.clone()));
                    leading = Some(Leading { epoch, token, task });
                }
            }
            Some(Ok(None)) => {
                shared.update_node(|n| n.db_ok = true);
                if let Some(l) = leading.take() {
                    step_down(&shared, l, "another replica holds the lease").await;
                }
            }
            Some(Err(e)) => {
                warn!(error = %e, "lease round failed");
                conn = None;
                shared.update_node(|n| n.db_ok = false);
            }
            None => {
                if conn.is_some() {
                    warn!("lease round timed out");
                }
                conn = None;
                shared.update_node(|n| n.db_ok = false);
            }
        }
        if leading.is_some()
            && last_renew.elapsed() >= cfg.renew_deadline
            && let Some(l) = leading.take()
        {
            step_down(&shared, l, "renew deadline passed").await;
        }
        if !shared.node().is_leader
            && let Ok(Some(l)) = lease::current(&shared.pool, &who.cluster).await
        {
            shared.update_node(|n| n.leader_id = (!l.expired).then_some(l.leader_id));
        }
        let _ = lease::heartbeat(&shared.pool, &who, leading.is_some(), version).await;
        let pause = if leading.is_some() { jittered(cfg.retry, 0.1) } else { jittered(cfg.retry / 2, 0.1) };
        if leading.is_none() && released.is_none() {
            released = lease_listener(&shared).await;
        }
        match (leading.is_none(), released.as_mut()) {
            // A standby wakes as soon as the leader releases the lease (clean shutdown).
            (true, Some(l)) => tokio::select! {
                r = l.recv() => if r.is_err() { released = None },
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            },
            _ => tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            },
        }
    }

    if let Some(l) = leading.take() {
        info!("shutting down: draining in-flight syncs");
        l.token.cancel();
        let _ = l.task.await;
        shared.metrics.is_leader.set(0);
        shared.update_node(|n| n.is_leader = false);
        if let Some(c) = conn.as_mut() {
            match lease::release(c, &who).await {
                Ok(()) => info!("lease released"),
                Err(e) => {
                    warn!(error = %e, "could not release the lease; the standby takes over when it expires")
                }
            }
        }
    }
    let _ = lease::heartbeat(&shared.pool, &who, false, version).await;
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}
