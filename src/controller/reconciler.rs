//! One tenant's reconcile loop: sync, record the outcome (status, job, event) in one
//! fenced transaction, then wait for the next reason to sync (`schedule`): the interval
//! after a success or a resetting backoff after failures, a request, or (with
//! `spec.watch`) a change of the source file.
//!
//! Everything a reconcile does as leader runs under [`Shared::lease_lost`]: the moment
//! the term's deadline passes, the sync is dropped (its open transaction rolls back) and
//! the reconciler ends, even before the election loop has noticed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Shared;
use super::conditions;
use super::record::{Finished, RecordError, Recorder};
use super::schedule::{FileWatch, Schedule, Wake, next_wake};
use crate::spec::{ClientSyncStatus, Phase, interval_of};
use crate::store::{self, FencedTx, specs::StoredSpec, status};
use crate::sync::drift;
use crate::sync::{Fence, SyncError, SyncJob, SyncOptions, SyncReport, sync_tenant};

pub(super) struct Reconciler {
    pub shared: Arc<Shared>,
    pub spec: StoredSpec,
    pub fence: Fence,
    pub slots: Arc<Semaphore>,
    /// The pool connections syncs may hold ([`super::budget`]): a sync waits for one and
    /// takes up to `--table-connections` of what is free.
    pub connections: Arc<Semaphore>,
    pub lock: Arc<Mutex<()>>,
    /// Notified when a sync of this tenant is requested now.
    pub wake: Arc<Notify>,
    pub token: CancellationToken,
}

impl Reconciler {
    pub async fn run(self) {
        let name = self.spec.name.clone();
        let epoch = self.fence.epoch;
        let read = status::get(&self.shared.pool, &self.spec.cluster, &name);
        let mut st = tokio::select! {
            biased;
            _ = self.shared.lease_lost(epoch) => return,
            s = read => s.ok().flatten().unwrap_or_default(),
        };
        let mut schedule = Schedule::new(interval_of(&self.spec.spec), st.consecutive_failures.max(0) as u32);
        let mut watch = self.spec.spec.watch.then(|| FileWatch::new(Path::new(&self.spec.spec.source.path)));
        // Follows the source's WAL between syncs, so that a sync reads only what changed.
        let _follower = super::follow::spawn(Path::new(&self.spec.spec.source.path), &self.token);
        let mut why = Wake::Due;
        loop {
            self.shared.metrics.queue_depth.inc();
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p,
                _ = self.token.cancelled() => { self.shared.metrics.queue_depth.dec(); return; }
            };
            let Ok(_permit) = permit else {
                self.shared.metrics.queue_depth.dec();
                return;
            };
            let granted = tokio::select! {
                g = self.grant() => g,
                _ = self.token.cancelled() => { self.shared.metrics.queue_depth.dec(); return; }
            };
            self.shared.metrics.queue_depth.dec();
            let Some((tables, _connections)) = granted else { return };
            let _guard = tokio::select! {
                g = self.lock.lock() => g,
                _ = self.token.cancelled() => return,
            };
            if self.token.is_cancelled() {
                return;
            }
            if let Some(w) = watch.as_mut() {
                w.mark_synced();
            }
            let span = info_span!("reconcile", client = %name, generation = self.spec.generation);
            let once = self.reconcile_once(&mut st, &mut schedule, why.trigger(), tables).instrument(span);
            let delay = tokio::select! {
                biased;
                _ = self.shared.lease_lost(epoch) => {
                    warn!(client = %name, epoch, "lease lost: abandoning the sync (its transaction rolls back)");
                    return;
                }
                d = once => d,
            };
            let Some(delay) = delay else { return };
            drop(_guard);
            drop(_connections);
            drop(_permit);
            // While backing off after failures, only a request cuts the wait short.
            let watching = watch.as_mut().filter(|_| !schedule.backing_off());
            why = next_wake(delay, &self.wake, watching, &self.token).await;
            match why {
                Wake::Stop => return,
                Wake::Changed => info!(client = %name, "source changed: syncing"),
                Wake::Due | Wake::Requested => {}
            }
        }
    }

    /// Waits for a sync connection, then takes up to `--table-connections` of those free:
    /// how many tables the sync copies at once, and the permits (`None`: closed).
    async fn grant(&self) -> Option<(usize, OwnedSemaphorePermit)> {
        let mut permit = self.connections.clone().acquire_owned().await.ok()?;
        let mut tables = 1;
        while tables < self.shared.config.table_connections {
            match self.connections.clone().try_acquire_owned() {
                Ok(more) => permit.merge(more),
                Err(_) => break,
            }
            tables += 1;
        }
        Some((tables, permit))
    }

    /// How this reconciler records its runs: fenced with its lease, as its node.
    fn recorder<'a>(&'a self, lease_valid: &'a (dyn Fn() -> bool + Sync)) -> Recorder<'a> {
        Recorder {
            pool: &self.shared.pool,
            spec: &self.spec,
            fence: Some(&self.fence),
            node: &self.fence.who.node_id,
            lease_valid,
        }
    }

    /// One sync (copying `tables` tables at once) and its record; the delay before the
    /// next one, or `None` to stop.
    async fn reconcile_once(
        &self,
        st: &mut ClientSyncStatus,
        schedule: &mut Schedule,
        trigger: &str,
        tables: usize,
    ) -> Option<Duration> {
        let sh = &self.shared;
        let name = &self.spec.name;
        let epoch = self.fence.epoch;
        let lease_valid = move || sh.lease_valid(epoch);
        let rec = self.recorder(&lease_valid);
        let job_id = rec.start(st, trigger).await.ok()?;
        let started = Instant::now();
        let job = SyncJob {
            pool: &sh.pool,
            cluster: &self.spec.cluster,
            client: name,
            spec: &self.spec.spec,
            fence: Some(&self.fence),
            options: SyncOptions { table_connections: tables, ..SyncOptions::default() },
        };
        let result = self.sync(&job, st).await;
        let elapsed = started.elapsed();
        if let Err(e) = &result
            && e.is_ownership_lost()
        {
            warn!(client = %name, "lost the lease during sync; stopping");
            return None;
        }
        let now = Utc::now();
        let ok = matches!(&result, Ok(r) if r.failed.is_empty());
        sh.metrics.record_sync(name, ok, elapsed.as_secs_f64());
        sh.metrics.record_held(name, result.as_ref().err().and_then(SyncError::held).is_some());
        if let Ok(r) = &result {
            for (t, tr) in &r.tables {
                sh.metrics.record_rows(name, t, "upsert", tr.upserted);
                sh.metrics.record_rows(name, t, "tombstone", tr.tombstoned);
                sh.metrics.record_conflicts(name, t, tr.conflict_strategy, tr.conflicts);
            }
        }
        if ok {
            sh.update_node(|n| n.last_sync = Some(now));
        }
        let run = Finished { job_id, result: &result, elapsed, now, stall_after: sh.config.stall_after };
        match rec.finish(st, schedule, &run).await {
            (delay, Ok(())) => Some(delay),
            (_, Err(RecordError::OwnershipLost)) => None,
            (delay, Err(e)) => {
                warn!(client = %name, error = %e, "cannot record sync outcome; retrying later");
                Some(delay)
            }
        }
    }

    /// Syncs the tenant. While it drifts and its source is unchanged (the sync skipped
    /// it), checks the drift again: if it changed (an operator fixed the mirror, e.g. by
    /// dropping a table to have it re-created), syncs every table at once so the fix
    /// takes effect without waiting for a source change. A healthy tenant's unchanged
    /// cycle costs no more than before.
    async fn sync(&self, job: &SyncJob<'_>, st: &ClientSyncStatus) -> Result<SyncReport, SyncError> {
        let mut result = sync_tenant(job).await;
        let drifting = st.condition("SchemaDrift").filter(|c| c.status == "True");
        if let (Ok(r), Some(cond)) = (&mut result, drifting)
            && r.unchanged
        {
            let schema = self.spec.spec.mirror_schema(job.client);
            match drift::check(job).await {
                Ok(d) if d.is_empty() || conditions::drift_summary(&schema, &d).1 != cond.message => {
                    info!(client = %job.client, "schema drift changed: syncing every table");
                    return sync_tenant(&job.full()).await;
                }
                Ok(d) => r.drift = Some(d),
                Err(e) => warn!(client = %job.client, error = %e, "cannot check schema drift"),
            }
        }
        result
    }
}

/// Records that a disabled tenant is Suspended (fenced: a replica that lost the lease
/// records nothing and says so).
pub(super) async fn mark_suspended(sh: &Shared, fence: &Fence, spec: &StoredSpec) -> Result<(), store::StoreError> {
    let mut st = status::get(&sh.pool, &spec.cluster, &spec.name).await?.unwrap_or_default();
    let now = Utc::now();
    st.phase = Phase::Suspended;
    st.observed_generation = spec.generation;
    st.next_sync_time = None;
    st.set_condition("Ready", false, "Suspended", "spec.enabled is false", spec.generation, now);
    let mut tx = FencedTx::begin(&sh.pool, &spec.cluster, Some(fence)).await?;
    status::write(&mut tx, &spec.cluster, &spec.name, &st, None).await?;
    if !sh.lease_valid(fence.epoch) {
        let _ = tx.rollback().await;
        return Err(store::StoreError::Fenced { epoch: fence.epoch });
    }
    tx.commit().await
}
