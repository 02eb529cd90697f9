//! One tenant's runner (kube-runtime's `Runner`, for one object): it waits for its turn
//! (the term's concurrency and sync connections, then the tenant's lock: [`Gate`]), runs
//! [`reconcile`] under the lease-lost cancellation, takes the policy's requeue, records
//! the run (status, job, event) in one fenced transaction, then waits for the next reason
//! to reconcile (`schedule`): the interval after a success or a resetting backoff after
//! failures, a request, or (with `spec.watch`) a change of the source file.
//!
//! Everything a reconcile does as leader runs under [`Shared::lease_lost`]: the moment
//! the term's deadline passes, the sync is dropped (its open transaction rolls back) and
//! the runner ends, even before the election loop has noticed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::backoff::random_jitter;
use super::policy::{self, Requeue};
use super::reconcile::{ReconcileContext, reconcile};
use super::record::{Finished, Next, RecordError};
use super::schedule::{FileWatch, Schedule, Wake, next_wake};
use super::{ControllerConfig, Shared};
use crate::spec::{ClientSyncStatus, interval_of};
use crate::store::{specs::StoredSpec, status};
use crate::sync::{SyncError, SyncReport, drift};

/// What a term's runners take turns on: reconciles running at once, the pool connections
/// syncs may hold ([`super::budget`]), and one lock per tenant, so that a tenant is never
/// reconciled twice at once (a stopped runner finishing its sync while its successor
/// starts, or the leader recording `Suspended`).
pub(super) struct Gate {
    slots: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// The most of those one sync takes (`--table-connections`).
    table_connections: usize,
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A runner's turn, held while it reconciles (released in this order).
struct Turn {
    /// How many tables the sync copies at once.
    tables: usize,
    _lock: OwnedMutexGuard<()>,
    _connections: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(config: &ControllerConfig) -> Arc<Gate> {
        Arc::new(Gate {
            slots: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            connections: Arc::new(Semaphore::new(config.sync_connections.max(1))),
            table_connections: config.table_connections.max(1),
            locks: Default::default(),
        })
    }

    /// The lock of `tenant`'s reconciles.
    pub fn lock(&self, tenant: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(tenant.to_string()).or_default().clone()
    }

    /// Waits for a slot and a sync connection (counted in the queue depth meanwhile),
    /// then for the tenant's lock. `None` when `token` is cancelled first.
    async fn admit(&self, sh: &Shared, tenant: &str, token: &CancellationToken) -> Option<Turn> {
        sh.metrics.queue_depth.inc();
        let queued = async {
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            let (tables, connections) = self.grant().await?;
            Some((slot, tables, connections))
        };
        let granted = tokio::select! {
            g = queued => g,
            () = token.cancelled() => None,
        };
        sh.metrics.queue_depth.dec();
        let (slot, tables, connections) = granted?;
        let lock = tokio::select! {
            g = self.lock(tenant).lock_owned() => g,
            () = token.cancelled() => return None,
        };
        if token.is_cancelled() {
            return None;
        }
        Some(Turn { tables, _lock: lock, _connections: connections, _slot: slot })
    }

    /// Waits for a sync connection, then takes up to `--table-connections` of those free:
    /// how many tables the sync copies at once, and the permits (`None`: closed).
    async fn grant(&self) -> Option<(usize, OwnedSemaphorePermit)> {
        let mut permit = self.connections.clone().acquire_owned().await.ok()?;
        let mut tables = 1;
        while tables < self.table_connections {
            match self.connections.clone().try_acquire_owned() {
                Ok(more) => permit.merge(more),
                Err(_) => break,
            }
            tables += 1;
        }
        Some((tables, permit))
    }
}

/// What a runner keeps of its tenant between reconciles.
struct Tenant {
    status: ClientSyncStatus,
    schedule: Schedule,
    /// The schema drift last reported, the sync's input for a re-check.
    drift: drift::Reported,
}

impl Tenant {
    /// From the recorded status: the failures so far, and whether it drifts (what drift,
    /// only a sync of this process can say).
    fn new(spec: &StoredSpec, status: ClientSyncStatus) -> Tenant {
        let schedule = Schedule::new(interval_of(&spec.spec), status.consecutive_failures.max(0) as u32);
        let drifting = status.condition("SchemaDrift").is_some_and(|c| c.status == "True");
        let drift = if drifting { drift::Reported::DriftingUnseen } else { drift::Reported::InSync };
        Tenant { status, schedule, drift }
    }
}

pub(super) struct Runner {
    pub ctx: Arc<ReconcileContext>,
    pub spec: StoredSpec,
    pub gate: Arc<Gate>,
    /// Notified when a reconcile of this tenant is requested now.
    pub wake: Arc<Notify>,
    pub token: CancellationToken,
}

impl Runner {
    pub async fn run(self) {
        let sh = &self.ctx.shared;
        let read = status::get(&sh.pool, &self.spec.cluster, &self.spec.name);
        let status = tokio::select! {
            biased;
            () = sh.lease_lost(self.ctx.fence.epoch) => return,
            s = read => s.ok().flatten().unwrap_or_default(),
        };
        let mut tenant = Tenant::new(&self.spec, status);
        let source = Path::new(&self.spec.spec.source.path);
        let mut watch = self.spec.spec.watch.then(|| FileWatch::new(source));
        // Follows the source's WAL between syncs, so that a sync reads only what changed.
        let _follower = super::follow::spawn(source, &self.token);
        let mut why = Wake::Due;
        loop {
            let Some(turn) = self.gate.admit(sh, &self.spec.name, &self.token).await else { return };
            if let Some(w) = watch.as_mut() {
                w.mark_synced();
            }
            let Some(delay) = self.take_turn(&mut tenant, turn, why).await else { return };
            // While backing off after failures, only a request cuts the wait short.
            let watching = watch.as_mut().filter(|_| !tenant.schedule.backing_off());
            why = next_wake(delay, &self.wake, watching, &self.token).await;
            match why {
                Wake::Stop => return,
                Wake::Changed => info!(client = %self.spec.name, "source changed: syncing"),
                Wake::Due | Wake::Requested => {}
            }
        }
    }

    /// One reconcile in `turn`, dropped the moment the lease is lost; the delay before the
    /// next one, or `None` to stop.
    async fn take_turn(&self, tenant: &mut Tenant, turn: Turn, why: Wake) -> Option<Duration> {
        let (name, epoch) = (&self.spec.name, self.ctx.fence.epoch);
        let span = info_span!("reconcile", client = %name, generation = self.spec.generation);
        let once = self.reconcile_once(tenant, why.trigger(), turn.tables).instrument(span);
        let delay = tokio::select! {
            biased;
            () = self.ctx.shared.lease_lost(epoch) => {
                warn!(client = %name, epoch, "lease lost: abandoning the sync (its transaction rolls back)");
                return None;
            }
            d = once => d,
        };
        drop(turn);
        delay
    }

    /// Records the run's start, reconciles, takes the policy's requeue and records the
    /// outcome; the delay before the next reconcile, or `None` to stop.
    async fn reconcile_once(&self, tenant: &mut Tenant, trigger: &str, tables: usize) -> Option<Duration> {
        let (ctx, name) = (&*self.ctx, &self.spec.name);
        let lease_valid = || ctx.lease_valid();
        let rec = ctx.recorder(&self.spec, &lease_valid);
        let job_id = rec.start(&mut tenant.status, trigger).await.ok()?;
        let started = Instant::now();
        let result = reconcile(ctx, &self.spec, &tenant.drift, tables).await;
        let elapsed = started.elapsed();
        let requeue = policy::requeue(&result, tenant.schedule.failures(), random_jitter());
        if requeue == Requeue::Stop {
            warn!(client = %name, "lost the lease during sync; stopping");
            return None;
        }
        let now = Utc::now();
        observe(&ctx.shared, name, &result, elapsed, now);
        tenant.drift = tenant.drift.after(&result);
        let delay = tenant.schedule.apply(requeue)?;
        let run = Finished { job_id, result: &result, elapsed, now, stall_after: ctx.shared.config.stall_after };
        let next = Next { failures: tenant.schedule.failures(), delay };
        match rec.finish_with(&mut tenant.status, &run, next).await {
            Ok(()) => Some(delay),
            Err(RecordError::OwnershipLost) => None,
            Err(e) => {
                warn!(client = %name, error = %e, "cannot record sync outcome; retrying later");
                Some(delay)
            }
        }
    }
}

/// A run's metrics, and the node's last successful sync.
fn observe(sh: &Shared, name: &str, result: &Result<SyncReport, SyncError>, elapsed: Duration, now: DateTime<Utc>) {
    let ok = matches!(result, Ok(r) if r.failed.is_empty());
    sh.metrics.record_sync(name, ok, elapsed.as_secs_f64());
    sh.metrics.record_held(name, result.as_ref().err().and_then(SyncError::held).is_some());
    if let Ok(r) = result {
        for (t, tr) in &r.tables {
            sh.metrics.record_rows(name, t, "upsert", tr.upserted);
            sh.metrics.record_rows(name, t, "tombstone", tr.tombstoned);
            sh.metrics.record_conflicts(name, t, tr.conflict_strategy, tr.conflicts);
        }
    }
    if ok {
        sh.update_node(|n| n.last_sync = Some(now));
    }
}
