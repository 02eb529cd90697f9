//! Lease-based leader election on a dedicated connection (its backend pid is recorded as
//! the holder's), renewed in the background.
//!
//! Fail-stop: a term of leadership is valid until the start of its last successful lease
//! round plus the renew deadline ([`super::Term`]). When that passes, when a round
//! fails (the connection that holds the lease broke: a standby may take over at once) or
//! when another replica holds the lease, the leader task is aborted with every reconciler
//! in it: in-flight syncs are dropped and their transactions roll back; nothing waits
//! for them to end. Only a shutdown (SIGTERM) drains, while the lease keeps being renewed.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::control::{self, Control};
use super::leader::run_leader;
use super::{Shared, Term};
use crate::store::{Context, jobs, lease};

struct Leading {
    epoch: i64,
    /// Cancelled to stop gracefully (drain in-flight syncs).
    stop: CancellationToken,
    /// Cancelled when the leader task has returned.
    done: CancellationToken,
    task: JoinHandle<()>,
}

fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + rand::random_range(-spread..=spread))
}

/// Fail-stop: ends the term at once and aborts the leader task, which aborts every
/// reconciler it holds (and so every in-flight sync).
async fn step_down(shared: &Shared, leading: Leading, why: &str) {
    shared.set_term(None);
    warn!(epoch = leading.epoch, reason = why, "stepping down: lost the lease; aborting all reconcilers");
    leading.stop.cancel();
    leading.task.abort();
    let _ = leading.task.await;
    shared.metrics.is_leader.set(0);
    shared.metrics.leader_transitions.inc();
    shared.update_node(|n| {
        n.is_leader = false;
        n.epoch = None;
    });
}

async fn next_or_pending(c: Option<&mut Control>) -> Result<sqlx::postgres::PgNotification, sqlx::Error> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Closes the control session (its backend leaves `pg_stat_activity`).
fn drop_control(shared: &Shared, conn: &mut Option<Control>) {
    if conn.take().is_some() {
        shared.set_listening(false);
    }
}

/// Waits `pause` between lease rounds, handing notifications on meanwhile. Returns early
/// on shutdown, the end of the leader task or of its term, or (for a standby) a lease
/// release; false when the control session was lost.
async fn pause(
    shared: &Shared,
    conn: &mut Option<Control>,
    leading: Option<&Leading>,
    pause: Duration,
    shutdown: &CancellationToken,
    draining: bool,
) -> bool {
    let until = Instant::now() + pause;
    let term = leading.and(shared.term());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            _ = shutdown.cancelled(), if !draining => return true,
            _ = done_or_pending(leading) => return true,
            _ = deadline_or_pending(term) => return true,
            n = next_or_pending(conn.as_mut()) => match n {
                // A standby wakes as soon as the leader releases the lease (clean shutdown).
                Ok(n) => if control::dispatch(shared, &n) && leading.is_none() { return true },
                Err(e) => {
                    warn!(error = %e, "the control session was lost");
                    return false;
                }
            },
        }
    }
}

async fn done_or_pending(l: Option<&Leading>) {
    match l {
        Some(l) => l.done.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn deadline_or_pending(term: Option<Term>) {
    match term {
        Some(t) => tokio::time::sleep_until(t.valid_until).await,
        None => std::future::pending().await,
    }
}

/// Runs until `shutdown` is cancelled; then drains the reconcilers (renewing the lease
/// meanwhile), releases the lease and notifies the standby.
pub async fn run_election(shared: Arc<Shared>, shutdown: CancellationToken) {
    let cfg = shared.config.election.clone();
    let who = shared.candidate.clone();
    let mut conn: Option<Control> = None;
    let mut leading: Option<Leading> = None;
    // Side queries (heartbeat, who leads) never hold up the lease rounds for long.
    let side = cfg.retry.clamp(Duration::from_millis(200), Duration::from_secs(2));

    loop {
        let draining = shutdown.is_cancelled();
        if draining {
            match &leading {
                None => break,
                Some(l) if l.done.is_cancelled() => break,
                Some(l) => l.stop.cancel(),
            }
        } else if leading.as_ref().is_some_and(|l| l.done.is_cancelled())
            && let Some(l) = leading.take()
        {
            step_down(&shared, l, "the leader task ended").await;
        }
        if let Some(l) = &leading
            && !shared.lease_valid(l.epoch)
            && let Some(l) = leading.take()
        {
            step_down(&shared, l, "renew deadline passed").await;
            drop_control(&shared, &mut conn);
            if draining {
                break;
            }
        }

        // A leader's round may take what is left of its term; a standby's, a renew deadline.
        let budget = match shared.term() {
            Some(t) if leading.is_some() => {
                t.valid_until.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))
            }
            _ => cfg.renew_deadline,
        };
        if conn.is_none() {
            match timeout(budget, Control::connect(&shared.connect)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    shared.set_listening(true);
                    control::resync(&shared);
                }
                Ok(Err(e)) => warn!(error = %e, "cannot connect for leader election; retrying"),
                Err(_) => warn!("connecting for leader election timed out; retrying"),
            }
        }
        let sent = Instant::now();
        let renewing = leading.as_ref().map(|l| l.epoch);
        let outcome = match conn.as_mut() {
            Some(c) => timeout(budget, async {
                let c = c.conn().await.ctx(|| "the control session".into())?;
                lease::try_acquire(c, &who, cfg.lease, renewing).await
            })
            .await
            .ok(),
            None => None,
        };
        match outcome {
            Some(Ok(Some(acq))) => {
                shared.update_node(|n| n.db_ok = true);
                if leading.as_ref().is_some_and(|l| l.epoch != acq.epoch)
                    && let Some(l) = leading.take()
                {
                    step_down(&shared, l, "lease renewed only after it expired (new term)").await;
                }
                if leading.is_some() {
                    shared.set_term(Some(Term { epoch: acq.epoch, valid_until: sent + cfg.renew_deadline }));
                } else if !draining {
                    shared.set_term(Some(Term { epoch: acq.epoch, valid_until: sent + cfg.renew_deadline }));
                    leading = Some(become_leader(&shared, &acq, &shutdown).await);
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
                drop_control(&shared, &mut conn);
                shared.update_node(|n| n.db_ok = false);
                if let Some(l) = leading.take() {
                    step_down(&shared, l, "lost the connection that holds the lease").await;
                }
            }
            None => {
                if conn.is_some() {
                    warn!("lease round timed out");
                }
                drop_control(&shared, &mut conn);
                shared.update_node(|n| n.db_ok = false);
                if let Some(l) = leading.take() {
                    step_down(&shared, l, "lease round timed out").await;
                }
            }
        }
        if draining && leading.is_none() {
            break;
        }
        if !side_queries(&shared, &mut conn, leading.is_some(), side).await {
            // Cut off mid-query: the session is in no state to hold the lease.
            drop_control(&shared, &mut conn);
            if let Some(l) = leading.take() {
                step_down(&shared, l, "the control session stopped answering").await;
            }
        }
        let pause_for = match (&leading, draining) {
            (Some(_), false) => jittered(cfg.retry, 0.1),
            // Draining: keep renewing, and notice the end of the drain soon.
            (Some(_), true) => jittered(cfg.retry, 0.1).min(Duration::from_millis(200)),
            (None, _) => jittered(cfg.retry / 2, 0.1),
        };
        if !pause(&shared, &mut conn, leading.as_ref(), pause_for, &shutdown, draining).await {
            drop_control(&shared, &mut conn);
            if let Some(l) = leading.take() {
                step_down(&shared, l, "lost the connection that holds the lease").await;
            }
        }
    }

    shared.set_term(None);
    if let Some(l) = leading.take() {
        let _ = l.task.await;
        shared.metrics.is_leader.set(0);
        shared.update_node(|n| n.is_leader = false);
        if let Some(c) = conn.as_mut() {
            let release = async {
                let c = c.conn().await.ctx(|| "the control session".into())?;
                lease::release(c, &who).await
            };
            match timeout(cfg.renew_deadline, release).await {
                Ok(Ok(())) => info!("lease released"),
                Ok(Err(e)) => {
                    warn!(error = %e, "could not release the lease; the standby takes over when it expires")
                }
                Err(_) => warn!("releasing the lease timed out; the standby takes over when it expires"),
            }
        }
    }
    if let Some(c) = conn.as_mut()
        && let Ok(c) = c.conn().await
    {
        let _ = timeout(side, lease::heartbeat_on(c, &who, false, VERSION)).await;
    }
    drop_control(&shared, &mut conn);
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The heartbeat, and for a standby who leads: on the control session, bounded by `side`
/// so they never hold up the lease rounds for long. False when they timed out.
async fn side_queries(shared: &Shared, conn: &mut Option<Control>, leading: bool, side: Duration) -> bool {
    let Some(c) = conn.as_mut() else { return true };
    let who = &shared.candidate;
    let work = async {
        let c = c.conn().await.ctx(|| "the control session".into())?;
        if !leading && let Some(l) = lease::current_on(c, &who.cluster).await? {
            shared.update_node(|n| n.leader_id = (!l.expired).then_some(l.leader_id));
        }
        lease::heartbeat_on(c, who, leading, VERSION).await
    };
    match timeout(side, work).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "heartbeat failed");
            true
        }
        Err(_) => false,
    }
}

/// Starts a term: records the event, closes runs of earlier epochs and starts the leader
/// task.
async fn become_leader(shared: &Arc<Shared>, acq: &lease::Acquired, shutdown: &CancellationToken) -> Leading {
    let who = &shared.candidate;
    let epoch = acq.epoch;
    let side = shared.config.election.renew_deadline;
    info!(epoch, node = %who.node_id, cluster = %who.cluster, "became leader");
    if let Some(prev) = acq.took_over_from {
        info!(previous = %prev, sessions_ended = acq.sessions_ended, "took the lease over from another replica");
    }
    shared.metrics.is_leader.set(1);
    shared.metrics.leader_transitions.inc();
    shared.update_node(|n| {
        n.is_leader = true;
        n.epoch = Some(epoch);
        n.leader_id = Some(who.node_id.clone());
    });
    let record = async {
        let fence = crate::store::Fence { who: who.clone(), epoch };
        let mut tx = crate::store::FencedTx::begin(&shared.pool, &who.cluster, Some(&fence)).await.ok()?;
        let msg = format!("{} leads cluster {} at epoch {epoch}", who.node_id, who.cluster);
        let _ = jobs::event(&mut tx, &who.cluster, None, false, "LeaderElected", &msg, Some(&who.node_id)).await;
        // Runs of earlier epochs that never ended died with their term.
        let _ = jobs::abandon_unfinished(&mut tx, &who.cluster, epoch).await;
        tx.commit().await.ok()
    };
    let _ = timeout(side, record).await;
    let stop = shutdown.child_token();
    let done = CancellationToken::new();
    let (s, d) = (shared.clone(), done.clone());
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let _done = d.drop_guard();
        run_leader(s, epoch, token).await;
    });
    Leading { epoch, stop, done, task }
}
