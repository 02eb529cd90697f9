//! The controller: leader election, and on the leader one reconciler per enabled
//! ClientSync of its cluster, each syncing its tenant, writing status and requeueing
//! itself (interval on success, resetting exponential backoff on failure).
//!
//! Shaped like kube-runtime's: `election` -> `leader` (one runner per tenant) ->
//! `runner` (its turn, the lease-lost cancellation, the wait) -> `reconcile` (the sync,
//! nothing about scheduling) -> `policy` (the requeue, pure) -> `record` (the status,
//! its conditions applied by pure functions in `conditions`, in one fenced transaction).

mod backoff;
pub mod budget;
pub mod conditions;
mod control;
mod election;
mod follow;
mod leader;
pub mod policy;
mod reconcile;
pub mod record;
mod retention;
mod runner;
pub mod schedule;

pub use backoff::backoff_delay;
pub use election::run_election;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::controller::record::DEFAULT_STALL_AFTER;
use crate::metrics::Metrics;
use crate::store::lease::Candidate;

/// Timings of leader election (DESIGN section 6 defaults).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// A leader that could not renew for this long stops all reconcilers.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries (with jitter).
    pub retry: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// How often the leader re-reads specs (a fallback: spec changes also NOTIFY).
pub const SPEC_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub cluster: String,
    pub node_id: String,
    pub election: ElectionConfig,
    /// How often the leader re-reads specs (a fallback: spec changes also NOTIFY).
    pub spec_poll: Duration,
    /// Syncs running at once across all tenants.
    pub max_concurrency: usize,
    /// Pool connections the running syncs may hold together ([`budget::Budget`]): a sync
    /// takes at least one and up to `--table-connections` of them, waiting for the first.
    pub sync_connections: usize,
    /// Tables one sync copies at once at most (`--table-connections`), each on one of
    /// those connections: a sync gets what is free of them, at least one.
    pub table_connections: usize,
    /// Consecutive failures after which a tenant is `Stalled`.
    pub stall_after: i32,
    /// The leader deletes finished sync runs and events older than this (`None`: keeps them).
    pub history_retention: Option<Duration>,
}

impl ControllerConfig {
    /// One sync at a time on one connection, the default election, history kept: a
    /// replica for tests and embedding (owsyncd builds its own from its flags).
    pub fn minimal(cluster: &str, node_id: &str) -> Self {
        ControllerConfig {
            cluster: cluster.into(),
            node_id: node_id.into(),
            election: ElectionConfig::default(),
            spec_poll: SPEC_POLL,
            max_concurrency: 1,
            sync_connections: 1,
            table_connections: 1,
            stall_after: DEFAULT_STALL_AFTER,
            history_retention: None,
        }
    }
}

/// What the HTTP API shows about this replica.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub is_leader: bool,
    pub epoch: Option<i64>,
    pub leader_id: Option<String>,
    pub last_sync: Option<DateTime<Utc>>,
    pub db_ok: bool,
}

/// The current term of leadership: its epoch, and until when this replica may act on
/// it without another successful renewal (the start of the last successful lease round
/// plus the renew deadline; the lease itself lasts longer, so this always ends first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub epoch: i64,
    pub valid_until: tokio::time::Instant,
}

/// State shared between the controller's tasks and the HTTP API.
pub struct Shared {
    pub config: ControllerConfig,
    pub candidate: Candidate,
    pub pool: PgPool,
    pub connect: PgConnectOptions,
    pub metrics: Metrics,
    pub node: RwLock<NodeState>,
    pub started: Instant,
    term: RwLock<Option<Term>>,
    /// Notified on NOTIFY owsync_specs / owsync_requests, and when the control session
    /// (re)opens: the leader re-reads specs and requests.
    pub(crate) spec_wake: tokio::sync::Notify,
    /// NOTIFY owsync_state payloads; `None` when notifications may have been missed.
    pub(crate) state_notes: tokio::sync::broadcast::Sender<Option<String>>,
    /// Whether the control session is up and listening (the loops poll rarely then).
    control_up: AtomicBool,
}

impl Shared {
    pub fn new(config: ControllerConfig, pool: PgPool, connect: PgConnectOptions) -> Arc<Shared> {
        Shared::with_instance(config, uuid::Uuid::new_v4(), pool, connect)
    }

    /// With a given instance id (whose tag the connections' `application_name` carries:
    /// [`crate::store::lease::application_name`]).
    pub fn with_instance(
        config: ControllerConfig,
        instance: uuid::Uuid,
        pool: PgPool,
        connect: PgConnectOptions,
    ) -> Arc<Shared> {
        let candidate = Candidate { cluster: config.cluster.clone(), node_id: config.node_id.clone(), instance };
        let metrics = Metrics::for_cluster(&config.cluster);
        Arc::new(Shared {
            config,
            candidate,
            pool,
            connect,
            metrics,
            node: RwLock::new(NodeState::default()),
            started: Instant::now(),
            term: RwLock::new(None),
            spec_wake: tokio::sync::Notify::new(),
            state_notes: tokio::sync::broadcast::channel(1024).0,
            control_up: AtomicBool::new(false),
        })
    }

    /// Whether notifications arrive (the control session is up): loops that also poll
    /// as a fallback poll rarely then.
    pub fn listening(&self) -> bool {
        self.control_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_listening(&self, up: bool) {
        self.control_up.store(up, Ordering::Relaxed);
    }

    /// State keys written by any replica (`None`: notifications may have been missed).
    pub fn state_notes(&self) -> tokio::sync::broadcast::Receiver<Option<String>> {
        self.state_notes.subscribe()
    }

    /// What the API shows. `is_leader` is true only within the current term's deadline:
    /// a leader that was frozen (SIGSTOP, a stalled VM) past it says false at once, before
    /// its election loop has even noticed.
    pub fn node(&self) -> NodeState {
        let mut n = self.node.read().map(|n| n.clone()).unwrap_or_default();
        if n.is_leader && !n.epoch.is_some_and(|e| self.lease_valid(e)) {
            n.is_leader = false;
        }
        n
    }

    pub fn term(&self) -> Option<Term> {
        self.term.read().ok().and_then(|t| *t)
    }

    pub(crate) fn set_term(&self, term: Option<Term>) {
        if let Ok(mut t) = self.term.write() {
            *t = term;
        }
    }

    /// Whether this replica may still act as leader of `epoch` (checked against the
    /// clock, not a timer, so it holds the moment a frozen process resumes).
    pub fn lease_valid(&self, epoch: i64) -> bool {
        self.term().is_some_and(|t| t.epoch == epoch && tokio::time::Instant::now() < t.valid_until)
    }

    /// Resolves as soon as this replica may no longer act as leader of `epoch`. Meant as
    /// the first branch of a `biased` select around work done as leader: it looks at the
    /// clock every time it is polled, so the work is dropped (its transactions roll back)
    /// before it can take another step past the deadline.
    pub fn lease_lost(&self, epoch: i64) -> LeaseLost<'_> {
        LeaseLost { shared: self, epoch, sleep: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }

    pub(crate) fn update_node(&self, f: impl FnOnce(&mut NodeState)) {
        if let Ok(mut n) = self.node.write() {
            f(&mut n);
        }
    }
}

/// See [`Shared::lease_lost`].
pub struct LeaseLost<'a> {
    shared: &'a Shared,
    epoch: i64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for LeaseLost<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(term) = self.shared.term().filter(|t| t.epoch == self.epoch) else { return Poll::Ready(()) };
            if tokio::time::Instant::now() >= term.valid_until {
                return Poll::Ready(());
            }
            if self.sleep.deadline() != term.valid_until {
                self.sleep.as_mut().reset(term.valid_until);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// A task handle that aborts its task when dropped: the leader holds its reconcilers
/// this way, so aborting the leader aborts every reconciler with it (fail-stop).
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let connect: PgConnectOptions = "postgres://u@127.0.0.1:1/db".parse().unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(connect.clone());
        Shared::new(ControllerConfig::minimal("c", "n"), pool, connect)
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_at_its_deadline_and_health_says_so() {
        let sh = shared();
        let now = tokio::time::Instant::now();
        sh.set_term(Some(Term { epoch: 7, valid_until: now + Duration::from_secs(10) }));
        sh.update_node(|n| {
            n.is_leader = true;
            n.epoch = Some(7);
        });
        assert!(sh.lease_valid(7) && !sh.lease_valid(6));
        assert!(sh.node().is_leader);
        // Work as leader runs until the deadline, which renewals push back.
        let t0 = tokio::time::Instant::now();
        let sh2 = sh.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            sh2.set_term(Some(Term { epoch: 7, valid_until: until }));
        });
        let work = std::future::pending::<()>();
        tokio::select! {
            biased;
            () = sh.lease_lost(7) => {}
            () = work => unreachable!(),
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(14));
        assert!(!sh.lease_valid(7));
        assert!(!sh.node().is_leader, "past the deadline /health must not claim leadership");
        // Lost at once when the term is gone or another epoch's.
        sh.set_term(Some(Term { epoch: 8, valid_until: tokio::time::Instant::now() + Duration::from_secs(10) }));
        tokio::time::timeout(Duration::from_millis(1), sh.lease_lost(7)).await.expect("epoch 7 is over");
        sh.set_term(None);
        tokio::time::timeout(Duration::from_millis(1), sh.lease_lost(8)).await.expect("no term");
    }

    /// A process frozen past its deadline (SIGSTOP) resumes with its timers not yet
    /// fired: the clock check still stops the work on its first poll.
    #[tokio::test]
    async fn lease_lost_checks_the_clock_not_only_its_timer() {
        let sh = shared();
        let valid_until = tokio::time::Instant::now() + Duration::from_millis(30);
        sh.set_term(Some(Term { epoch: 1, valid_until }));
        let mut lost = Box::pin(sh.lease_lost(1));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(lost.as_mut().poll(&mut cx).is_pending());
        // Blocks the thread (as a stopped process would): the runtime's timer cannot fire.
        std::thread::sleep(Duration::from_millis(40));
        assert!(lost.as_mut().poll(&mut cx).is_ready());
    }
}
