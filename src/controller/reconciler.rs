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
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Shared;
use super::backoff::random_jitter;
use super::conditions::{self, Outcome};
use super::schedule::{FileWatch, Schedule, Wake, next_wake};
use crate::spec::{ClientSyncStatus, Phase, TableStatus, interval_of};
use crate::store::{self, jobs, specs::StoredSpec, status};
use crate::sync::drift;
use crate::sync::{Fence, SyncError, SyncJob, SyncReport, sync_tenant, sync_tenant_with};

pub(super) struct Reconciler {
    pub shared: Arc<Shared>,
    pub spec: StoredSpec,
    pub fence: Fence,
    pub slots: Arc<Semaphore>,
    pub lock: Arc<Mutex<()>>,
    /// Notified when a sync of this tenant is requested now.
    pub wake: Arc<Notify>,
    pub token: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("lost the lease")]
    OwnershipLost,
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
        let mut why = Wake::Due;
        loop {
            self.shared.metrics.queue_depth.inc();
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p,
                _ = self.token.cancelled() => { self.shared.metrics.queue_depth.dec(); return; }
            };
            self.shared.metrics.queue_depth.dec();
            let Ok(_permit) = permit else { return };
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
            let once = self.reconcile_once(&mut st, &mut schedule, why.trigger()).instrument(span);
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

    /// One sync and its record; the delay before the next one, or `None` to stop.
    async fn reconcile_once(
        &self,
        st: &mut ClientSyncStatus,
        schedule: &mut Schedule,
        trigger: &str,
    ) -> Option<Duration> {
        let sh = &self.shared;
        let name = &self.spec.name;
        let cluster = &self.spec.cluster;
        let generation = self.spec.generation;
        if st.observed_generation != generation || st.phase == Phase::Pending {
            // A first sync (or one of a new generation) can take long: show it.
            conditions::syncing(st, generation, Utc::now());
            if let Err(RecordError::OwnershipLost) = self.record_progress(st).await {
                return None;
            }
        }
        let job_id = match self.start_job(trigger).await {
            Ok(id) => Some(id),
            Err(RecordError::OwnershipLost) => return None,
            Err(e) => {
                warn!(client = %name, error = %e, "cannot record the start of the sync");
                None
            }
        };
        let started = Instant::now();
        let job = SyncJob { pool: &sh.pool, cluster, client: name, spec: &self.spec.spec, fence: Some(&self.fence) };
        let result = self.sync(&job, st).await;
        let elapsed = started.elapsed();
        let drift = result.as_ref().ok().and_then(|r| r.drift.clone());
        if let Err(e) = &result
            && e.is_ownership_lost()
        {
            warn!(client = %name, "lost the lease during sync; stopping");
            return None;
        }
        let now = Utc::now();
        let ok = matches!(&result, Ok(r) if r.failed.is_empty());
        sh.metrics.record_sync(name, ok, elapsed.as_secs_f64());
        let (job_status, rows, error, outcome) = match &result {
            Ok(r) => {
                for (t, tr) in &r.tables {
                    sh.metrics.record_rows(name, t, "upsert", tr.upserted);
                    sh.metrics.record_rows(name, t, "tombstone", tr.tombstoned);
                    sh.metrics.record_conflicts(name, t, tr.conflict_strategy, tr.conflicts);
                    let conflicts = st.tables.get(t).map_or(0, |s| s.conflicts) + tr.conflicts as i64;
                    st.tables
                        .insert(t.clone(), TableStatus { rows: tr.rows, quarantined: 0, watermark: None, conflicts });
                }
                st.tables.retain(|t, _| r.tables.contains_key(t) || r.failed.contains_key(t));
                if r.failed.is_empty() {
                    ("succeeded", r.rows_written as i64, None, Outcome::Succeeded { tables: r.tables.len(), elapsed })
                } else {
                    let msg = describe_failed(r);
                    ("degraded", r.rows_written as i64, Some(msg.clone()), Outcome::Degraded { message: msg })
                }
            }
            Err(e) => ("failed", 0, Some(e.to_string()), Outcome::Failed { message: e.to_string() }),
        };
        let delay = if ok { schedule.succeeded() } else { schedule.failed(random_jitter()) };
        conditions::record(st, &outcome, generation, now, schedule.failures(), sh.config.stall_after, delay);
        let schema = self.spec.spec.mirror_schema(name);
        let drift_changed = drift.and_then(|d| conditions::drift(st, &schema, &d, generation, now));
        // Counted only when it can have changed: an unchanged cycle stays a few round trips.
        let pending_before = st.condition("ConflictsPending").is_some_and(|c| c.status == "True");
        let pending_now = matches!(&result, Ok(r) if r.tables.values().any(|t| t.pending_conflicts > 0));
        if pending_before || pending_now {
            match self.pending_conflicts().await {
                Ok(n) => conditions::conflicts_pending(st, name, n, generation, now),
                Err(e) => warn!(client = %name, error = %e, "cannot count pending conflicts"),
            }
        }
        if ok {
            sh.update_node(|n| n.last_sync = Some(now));
        }
        store::observed::with_quarantined(&sh.pool, cluster, name, &mut st.tables).await;
        match self.record(st, job_id, job_status, rows, error.as_deref(), &result, elapsed, drift_changed).await {
            Ok(()) => Some(delay),
            Err(RecordError::OwnershipLost) => None,
            Err(e) => {
                warn!(client = %name, error = %e, "cannot record sync outcome; retrying later");
                Some(delay)
            }
        }
    }

    async fn pending_conflicts(&self) -> Result<i64, store::StoreError> {
        let mut tx = store::begin(&self.shared.pool, &self.spec.cluster).await?;
        let n = store::conflicts::pending_count(&mut tx, &self.spec.cluster, &self.spec.name).await?;
        let _ = tx.rollback().await;
        Ok(n)
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
                    return sync_tenant_with(job, true).await;
                }
                Ok(d) => r.drift = Some(d),
                Err(e) => warn!(client = %job.client, error = %e, "cannot check schema drift"),
            }
        }
        result
    }

    /// Commits `tx` only if this replica still holds the lease at its epoch.
    async fn commit_fenced(&self, mut tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), RecordError> {
        if !self.shared.lease_valid(self.fence.epoch)
            || !store::lease::holds(&mut tx, &self.fence.who, self.fence.epoch).await?
        {
            return Err(RecordError::OwnershipLost);
        }
        tx.commit().await.map_err(|e| store::StoreError::Db { context: "commit".into(), source: e })?;
        Ok(())
    }

    /// Writes an in-progress status (fenced).
    async fn record_progress(&self, st: &ClientSyncStatus) -> Result<(), RecordError> {
        let mut tx = store::begin(&self.shared.pool, &self.spec.cluster).await?;
        status::write(&mut tx, &self.spec.cluster, &self.spec.name, st, None).await?;
        self.commit_fenced(tx).await
    }

    /// Records the start of a run (fenced): its `sync_jobs` row.
    async fn start_job(&self, trigger: &str) -> Result<uuid::Uuid, RecordError> {
        let mut tx = store::begin(&self.shared.pool, &self.spec.cluster).await?;
        let (who, epoch) = (&self.fence.who, self.fence.epoch);
        let id = jobs::start(&mut tx, &self.spec.cluster, &self.spec.name, &who.node_id, epoch, trigger).await?;
        self.commit_fenced(tx).await?;
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        st: &ClientSyncStatus,
        job_id: Option<uuid::Uuid>,
        job_status: &str,
        rows: i64,
        error: Option<&str>,
        result: &Result<SyncReport, SyncError>,
        elapsed: Duration,
        drift_changed: Option<bool>,
    ) -> Result<(), RecordError> {
        let sh = &self.shared;
        let (cluster, name) = (&self.spec.cluster, &self.spec.name);
        let mut tx = store::begin(&sh.pool, cluster).await?;
        status::write(&mut tx, cluster, name, st, Some(elapsed.as_millis() as i64)).await?;
        if let Some(id) = job_id {
            let tables = match result {
                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            jobs::finish(&mut tx, id, job_status, rows, &tables, error).await?;
        }
        if let Some(err) = error {
            jobs::event(&mut tx, cluster, Some(name), true, "SyncFailed", err, Some(&self.fence.who.node_id)).await?;
        } else if st.consecutive_failures == 0 && rows > 0 {
            let msg = format!("wrote {rows} rows");
            jobs::event(&mut tx, cluster, Some(name), false, "Synced", &msg, Some(&self.fence.who.node_id)).await?;
        }
        if let Some(now_drifting) = drift_changed {
            let node = Some(self.fence.who.node_id.as_str());
            let (reason, msg) = match (now_drifting, st.condition("SchemaDrift")) {
                (true, Some(c)) => ("SchemaDrift", c.message.as_str()),
                _ => ("SchemaDriftResolved", "the mirror follows the source's schema again"),
            };
            jobs::event(&mut tx, cluster, Some(name), now_drifting, reason, msg, node).await?;
        }
        self.commit_fenced(tx).await
    }
}

fn describe_failed(r: &SyncReport) -> String {
    let parts: Vec<String> = r.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
    format!("{} of {} tables failed: {}", r.failed.len(), r.failed.len() + r.tables.len(), parts.join("; "))
}

/// Records that a disabled tenant is Suspended.
pub(super) async fn mark_suspended(sh: &Shared, fence: &Fence, spec: &StoredSpec) -> Result<(), store::StoreError> {
    let mut st = status::get(&sh.pool, &spec.cluster, &spec.name).await?.unwrap_or_default();
    let now = Utc::now();
    st.phase = Phase::Suspended;
    st.observed_generation = spec.generation;
    st.next_sync_time = None;
    st.set_condition("Ready", false, "Suspended", "spec.enabled is false", spec.generation, now);
    let mut tx = store::begin(&sh.pool, &spec.cluster).await?;
    status::write(&mut tx, &spec.cluster, &spec.name, &st, None).await?;
    if sh.lease_valid(fence.epoch) && store::lease::holds(&mut tx, &fence.who, fence.epoch).await? {
        tx.commit().await.map_err(|e| store::StoreError::Db { context: "commit status".into(), source: e })?;
    }
    Ok(())
}
