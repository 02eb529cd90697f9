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
use super::{ElectionConfig, Shared, Term};
use crate::store::{Context, StoreError, jobs, lease};

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
    let mut election = Election::new(shared, shutdown);
    while election.round().await {}
    election.resign().await;
}

/// What a lease round yields: the lease (`Some`) or another's (`None`), an error of the
/// control session, or nothing (no session, or the round timed out).
type RoundOutcome = Option<Result<Option<lease::Acquired>, StoreError>>;

/// This replica's side of the election: its control session and its term, if it leads.
struct Election {
    shared: Arc<Shared>,
    cfg: ElectionConfig,
    shutdown: CancellationToken,
    conn: Option<Control>,
    leading: Option<Leading>,
    /// Side queries (heartbeat, who leads) never hold up the lease rounds for long.
    side: Duration,
}

impl Election {
    fn new(shared: Arc<Shared>, shutdown: CancellationToken) -> Election {
        let cfg = shared.config.election.clone();
        let side = cfg.retry.clamp(Duration::from_millis(200), Duration::from_secs(2));
        Election { shared, cfg, shutdown, conn: None, leading: None, side }
    }

    /// One lease round and the pause after it; false when the election is over (shut
    /// down, and the drain ended or the term with it).
    async fn round(&mut self) -> bool {
        let draining = self.shutdown.is_cancelled();
        if !self.check_term(draining).await {
            return false;
        }
        let budget = self.budget();
        self.open_control(budget).await;
        let sent = Instant::now();
        let outcome = self.lease_round(budget).await;
        self.settle(outcome, sent, draining).await;
        if draining && self.leading.is_none() {
            return false;
        }
        self.between_rounds(draining).await;
        true
    }

    /// Before a round: while draining, stops the leader task gracefully (the election is
    /// over once it returned); otherwise steps down when the leader task ended; and steps
    /// down when the term's renew deadline passed. False when the election is over.
    async fn check_term(&mut self, draining: bool) -> bool {
        if draining {
            match &self.leading {
                None => return false,
                Some(l) if l.done.is_cancelled() => return false,
                Some(l) => l.stop.cancel(),
            }
        } else if self.leading.as_ref().is_some_and(|l| l.done.is_cancelled()) {
            self.step_down("the leader task ended").await;
        }
        if self.leading.as_ref().is_some_and(|l| !self.shared.lease_valid(l.epoch)) {
            self.step_down("renew deadline passed").await;
            drop_control(&self.shared, &mut self.conn);
            if draining {
                return false;
            }
        }
        true
    }

    /// How long this round may take: a leader's, what is left of its term; a standby's,
    /// a renew deadline.
    fn budget(&self) -> Duration {
        match self.shared.term() {
            Some(t) if self.leading.is_some() => {
                t.valid_until.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))
            }
            _ => self.cfg.renew_deadline,
        }
    }

    /// Opens the control session unless it is open.
    async fn open_control(&mut self, budget: Duration) {
        if self.conn.is_some() {
            return;
        }
        match timeout(budget, Control::connect(&self.shared.connect)).await {
            Ok(Ok(c)) => {
                self.conn = Some(c);
                self.shared.set_listening(true);
                control::resync(&self.shared);
            }
            Ok(Err(e)) => warn!(error = %e, "cannot connect for leader election; retrying"),
            Err(_) => warn!("connecting for leader election timed out; retrying"),
        }
    }

    /// Takes or renews the lease on the control session, within `budget`.
    async fn lease_round(&mut self, budget: Duration) -> RoundOutcome {
        let renewing = self.leading.as_ref().map(|l| l.epoch);
        let (who, lease) = (&self.shared.candidate, self.cfg.lease);
        let c = self.conn.as_mut()?;
        timeout(budget, async {
            let c = c.conn().await.ctx(|| "the control session".into())?;
            lease::try_acquire(c, who, lease, renewing).await
        })
        .await
        .ok()
    }

    /// Acts on a round sent at `sent`: a term starts, goes on (valid until `sent` plus the
    /// renew deadline) or ends.
    async fn settle(&mut self, outcome: RoundOutcome, sent: Instant, draining: bool) {
        match outcome {
            Some(Ok(Some(acq))) => {
                self.shared.update_node(|n| n.db_ok = true);
                if self.leading.as_ref().is_some_and(|l| l.epoch != acq.epoch) {
                    self.step_down("lease renewed only after it expired (new term)").await;
                }
                let term = Term { epoch: acq.epoch, valid_until: sent + self.cfg.renew_deadline };
                if self.leading.is_some() {
                    self.shared.set_term(Some(term));
                } else if !draining {
                    self.shared.set_term(Some(term));
                    self.leading = Some(become_leader(&self.shared, &acq, &self.shutdown).await);
                }
            }
            Some(Ok(None)) => {
                self.shared.update_node(|n| n.db_ok = true);
                self.step_down("another replica holds the lease").await;
            }
            Some(Err(e)) => {
                warn!(error = %e, "lease round failed");
                drop_control(&self.shared, &mut self.conn);
                self.shared.update_node(|n| n.db_ok = false);
                self.step_down("lost the connection that holds the lease").await;
            }
            None => {
                if self.conn.is_some() {
                    warn!("lease round timed out");
                }
                drop_control(&self.shared, &mut self.conn);
                self.shared.update_node(|n| n.db_ok = false);
                self.step_down("lease round timed out").await;
            }
        }
    }

    /// The side queries, then the pause until the next round; a session that fails
    /// meanwhile is closed (and its term ended).
    async fn between_rounds(&mut self, draining: bool) {
        if !self.side_queries().await {
            // Cut off mid-query: the session is in no state to hold the lease.
            self.drop_session("the control session stopped answering").await;
        }
        let pause_for = match (&self.leading, draining) {
            (Some(_), false) => jittered(self.cfg.retry, 0.1),
            // Draining: keep renewing, and notice the end of the drain soon.
            (Some(_), true) => jittered(self.cfg.retry, 0.1).min(Duration::from_millis(200)),
            (None, _) => jittered(self.cfg.retry / 2, 0.1),
        };
        if !self.pause(pause_for, draining).await {
            self.drop_session("lost the connection that holds the lease").await;
        }
    }

    /// Steps down (`why`) if leading.
    async fn step_down(&mut self, why: &str) {
        if let Some(l) = self.leading.take() {
            step_down(&self.shared, l, why).await;
        }
    }

    /// Closes the control session, stepping down (`why`) if leading.
    async fn drop_session(&mut self, why: &str) {
        drop_control(&self.shared, &mut self.conn);
        self.step_down(why).await;
    }

    /// The heartbeat, and for a standby who leads: on the control session, bounded by
    /// `side` so they never hold up the lease rounds for long. False when they timed out.
    async fn side_queries(&mut self) -> bool {
        let Some(c) = self.conn.as_mut() else { return true };
        let (shared, leading) = (&self.shared, self.leading.is_some());
        let who = &shared.candidate;
        let work = async {
            let c = c.conn().await.ctx(|| "the control session".into())?;
            if !leading && let Some(l) = lease::current_on(c, &who.cluster).await? {
                shared.update_node(|n| n.leader_id = (!l.expired).then_some(l.leader_id));
            }
            lease::heartbeat_on(c, who, leading, VERSION).await
        };
        match timeout(self.side, work).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "heartbeat failed");
                true
            }
            Err(_) => false,
        }
    }

    /// Waits `pause` between lease rounds, handing notifications on meanwhile. Returns
    /// early on shutdown, the end of the leader task or of its term, or (for a standby) a
    /// lease release; false when the control session was lost.
    async fn pause(&mut self, pause: Duration, draining: bool) -> bool {
        let until = Instant::now() + pause;
        let leading = self.leading.as_ref();
        let term = leading.and(self.shared.term());
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                () = self.shutdown.cancelled(), if !draining => return true,
                () = done_or_pending(leading) => return true,
                () = deadline_or_pending(term) => return true,
                n = next_or_pending(self.conn.as_mut()) => match n {
                    // A standby wakes as soon as the leader releases the lease (clean shutdown).
                    Ok(n) => if control::dispatch(&self.shared, &n) && leading.is_none() { return true },
                    Err(e) => {
                        warn!(error = %e, "the control session was lost");
                        return false;
                    }
                },
            }
        }
    }

    /// After the last round: waits for the leader task, releases the lease, records the
    /// last heartbeat (not leading) and closes the control session.
    async fn resign(mut self) {
        self.shared.set_term(None);
        if let Some(l) = self.leading.take() {
            let _ = l.task.await;
            self.shared.metrics.is_leader.set(0);
            self.shared.update_node(|n| n.is_leader = false);
            self.release().await;
        }
        if let Some(c) = self.conn.as_mut()
            && let Ok(c) = c.conn().await
        {
            let _ = timeout(self.side, lease::heartbeat_on(c, &self.shared.candidate, false, VERSION)).await;
        }
        drop_control(&self.shared, &mut self.conn);
    }

    /// Releases the lease, so that the standby takes over at once.
    async fn release(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        let who = &self.shared.candidate;
        let release = async {
            let c = c.conn().await.ctx(|| "the control session".into())?;
            lease::release(c, who).await
        };
        match timeout(self.cfg.renew_deadline, release).await {
            Ok(Ok(())) => info!("lease released"),
            Ok(Err(e)) => warn!(error = %e, "could not release the lease; the standby takes over when it expires"),
            Err(_) => warn!("releasing the lease timed out; the standby takes over when it expires"),
        }
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Closes the control session (its backend leaves `pg_stat_activity`).
fn drop_control(shared: &Shared, conn: &mut Option<Control>) {
    if conn.take().is_some() {
        shared.set_listening(false);
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
