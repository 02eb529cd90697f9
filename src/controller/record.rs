//! Recording a run, the same way whoever runs it: a leader's reconciler (fenced with its
//! lease) or `owsyncctl sync NAME --once` (outside the election, unfenced). Before the
//! sync: an in-progress status for a first sync or a new generation, and the run's
//! `sync_jobs` row. After it: the status (tables, conditions, drift, pending conflicts),
//! the end of the run and its events, in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::warn;
use uuid::Uuid;

use super::conditions::{self, Outcome};
use super::schedule::Schedule;
use crate::spec::{ClientSyncStatus, Phase, TableStatus};
use crate::store::{self, Fence, FencedTx, jobs, specs::StoredSpec, status};
use crate::sync::{SyncError, SyncReport};

/// After how many consecutive failures a tenant is `Stalled`, unless configured.
pub const DEFAULT_STALL_AFTER: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(store::StoreError),
    #[error("lost the lease")]
    OwnershipLost,
}

impl From<store::StoreError> for RecordError {
    fn from(e: store::StoreError) -> RecordError {
        match e {
            store::StoreError::Fenced { .. } => RecordError::OwnershipLost,
            e => RecordError::Store(e),
        }
    }
}

/// Who records a tenant's runs, and how.
pub struct Recorder<'a> {
    pub pool: &'a PgPool,
    pub spec: &'a StoredSpec,
    /// The lease every record is fenced with; `None` outside the election (owsyncctl).
    pub fence: Option<&'a Fence>,
    /// Who ran the sync (`sync_jobs.leader_id`, the events' node).
    pub node: &'a str,
    /// This process's own view of its lease (its renew deadline not passed), asked
    /// before every commit, ahead of the fence's check in the database.
    pub lease_valid: &'a (dyn Fn() -> bool + Sync),
}

/// How a run ended, to be recorded.
pub struct Finished<'a> {
    /// The run's `sync_jobs` row, if its start was recorded.
    pub job_id: Option<Uuid>,
    pub result: &'a Result<SyncReport, SyncError>,
    pub elapsed: Duration,
    pub now: DateTime<Utc>,
    pub stall_after: i32,
}

/// What a run's result comes to, for its `sync_jobs` row and the status.
struct Summary {
    job_status: &'static str,
    rows: i64,
    error: Option<String>,
    outcome: Outcome,
}

impl Recorder<'_> {
    async fn begin(&self) -> Result<FencedTx<'static>, RecordError> {
        Ok(FencedTx::begin(self.pool, &self.spec.cluster, self.fence).await?)
    }

    /// Commits `tx` only if this replica still holds the lease at its epoch: by its own
    /// clock and in the database ([`FencedTx::commit`]).
    async fn commit(&self, tx: FencedTx<'static>) -> Result<(), RecordError> {
        if !(self.lease_valid)() {
            let _ = tx.rollback().await;
            return Err(RecordError::OwnershipLost);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Before a sync: shows a first sync (or one of a new generation, which can take
    /// long) as `Syncing`, and records the run's start. The run's id, if recorded;
    /// `Err` only when the lease is lost.
    pub async fn start(&self, st: &mut ClientSyncStatus, trigger: &str) -> Result<Option<Uuid>, RecordError> {
        let generation = self.spec.generation;
        if st.observed_generation != generation || st.phase == Phase::Pending {
            conditions::syncing(st, generation, Utc::now());
            if let Err(RecordError::OwnershipLost) = self.progress(st).await {
                return Err(RecordError::OwnershipLost);
            }
        }
        match self.start_job(trigger).await {
            Ok(id) => Ok(Some(id)),
            Err(RecordError::OwnershipLost) => Err(RecordError::OwnershipLost),
            Err(e) => {
                warn!(client = %self.spec.name, error = %e, "cannot record the start of the sync");
                Ok(None)
            }
        }
    }

    /// Writes an in-progress status.
    async fn progress(&self, st: &ClientSyncStatus) -> Result<(), RecordError> {
        let mut tx = self.begin().await?;
        status::write(&mut tx, &self.spec.cluster, &self.spec.name, st, None).await?;
        self.commit(tx).await
    }

    /// Records the start of a run: its `sync_jobs` row.
    async fn start_job(&self, trigger: &str) -> Result<Uuid, RecordError> {
        let mut tx = self.begin().await?;
        let epoch = self.fence.map_or(0, |f| f.epoch);
        let id = jobs::start(&mut tx, &self.spec.cluster, &self.spec.name, self.node, epoch, trigger).await?;
        self.commit(tx).await?;
        Ok(id)
    }

    /// After a sync: applies its result to `st` (tables, conditions, schema drift,
    /// pending conflicts) and records status, the run's end and its events. Returns the
    /// delay before the next sync, and whether the record was written.
    pub async fn finish(
        &self,
        st: &mut ClientSyncStatus,
        schedule: &mut Schedule,
        run: &Finished<'_>,
    ) -> (Duration, Result<(), RecordError>) {
        let (name, generation, now) = (&self.spec.name, self.spec.generation, run.now);
        let summary = summarize(st, run);
        store::observed::with_quarantined(self.pool, &self.spec.cluster, name, &mut st.tables).await;
        let ok = matches!(run.result, Ok(r) if r.failed.is_empty());
        // A hold is not a failure: it is checked again every interval, without backoff.
        let held = matches!(summary.outcome, Outcome::Held { .. });
        let delay = if ok || held { schedule.succeeded() } else { schedule.failed(super::backoff::random_jitter()) };
        let held_before = st.condition("DeletionsHeld").filter(|c| c.status == "True").map(|c| c.reason.clone());
        conditions::record(st, &summary.outcome, generation, now, schedule.failures(), run.stall_after, delay);
        let schema = self.spec.spec.mirror_schema(name);
        let drift = run.result.as_ref().ok().and_then(|r| r.drift.as_deref());
        let drift_changed = drift.and_then(|d| conditions::drift(st, &schema, d, generation, now));
        // Counted only when it can have changed: an unchanged cycle stays a few round trips.
        let pending_before = st.condition("ConflictsPending").is_some_and(|c| c.status == "True");
        let pending_now = matches!(run.result, Ok(r) if r.tables.values().any(|t| t.pending_conflicts > 0));
        if pending_before || pending_now {
            match self.pending_conflicts().await {
                Ok(n) => conditions::conflicts_pending(st, name, n, generation, now),
                Err(e) => warn!(client = %name, error = %e, "cannot count pending conflicts"),
            }
        }
        (delay, self.record(st, run, &summary, (drift_changed, held_before)).await)
    }

    async fn pending_conflicts(&self) -> Result<i64, store::StoreError> {
        let mut tx = store::begin(self.pool, &self.spec.cluster).await?;
        let n = store::conflicts::pending_count(&mut tx, &self.spec.cluster, &self.spec.name).await?;
        let _ = tx.rollback().await;
        Ok(n)
    }

    /// Status, the run's end and its events, in one transaction.
    async fn record(
        &self,
        st: &ClientSyncStatus,
        run: &Finished<'_>,
        s: &Summary,
        (drift_changed, held_before): (Option<bool>, Option<String>),
    ) -> Result<(), RecordError> {
        let (cluster, name, node) = (&self.spec.cluster, &self.spec.name, Some(self.node));
        let mut tx = self.begin().await?;
        status::write(&mut tx, cluster, name, st, Some(run.elapsed.as_millis() as i64)).await?;
        if let Some(id) = run.job_id {
            let tables = match run.result {
                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            jobs::finish(&mut tx, id, s.job_status, s.rows, &tables, s.error.as_deref()).await?;
        }
        if let Outcome::Held { reason, message } = &s.outcome {
            // One event when a hold starts (or its reason changes), not one per interval.
            if held_before.as_deref() != Some(*reason) {
                jobs::event(&mut tx, cluster, Some(name), true, "DeletionsHeld", message, node).await?;
            }
        } else if let Some(err) = &s.error {
            jobs::event(&mut tx, cluster, Some(name), true, "SyncFailed", err, node).await?;
        } else {
            let msg = match run.result {
                Ok(r) if r.unchanged => "source unchanged since the last complete sync; nothing written".to_string(),
                _ => format!("wrote {} rows", s.rows),
            };
            jobs::event(&mut tx, cluster, Some(name), false, "Synced", &msg, node).await?;
        }
        if let Some(now_drifting) = drift_changed {
            let (reason, msg) = match (now_drifting, st.condition("SchemaDrift")) {
                (true, Some(c)) => ("SchemaDrift", c.message.as_str()),
                _ => ("SchemaDriftResolved", "the mirror follows the source's schema again"),
            };
            jobs::event(&mut tx, cluster, Some(name), now_drifting, reason, msg, node).await?;
        }
        self.commit(tx).await
    }
}

/// Applies a run's tables to `st` and says what the run came to.
fn summarize(st: &mut ClientSyncStatus, run: &Finished<'_>) -> Summary {
    let r = match run.result {
        Ok(r) => r,
        Err(SyncError::DeletionsHeld { plan, message, .. }) => {
            let outcome = Outcome::Held { reason: plan.reason.as_str(), message: message.clone() };
            return Summary { job_status: "held", rows: 0, error: Some(message.clone()), outcome };
        }
        Err(e) => {
            let message = e.to_string();
            return Summary {
                job_status: "failed",
                rows: 0,
                error: Some(message.clone()),
                outcome: Outcome::Failed { message },
            };
        }
    };
    for (t, tr) in &r.tables {
        let conflicts = st.tables.get(t).map_or(0, |s| s.conflicts) + tr.conflicts as i64;
        st.tables.insert(t.clone(), TableStatus { rows: tr.rows, quarantined: 0, watermark: None, conflicts });
    }
    st.tables.retain(|t, _| r.tables.contains_key(t) || r.failed.contains_key(t));
    let rows = r.rows_written as i64;
    if r.failed.is_empty() {
        let outcome = Outcome::Succeeded { tables: r.tables.len(), elapsed: run.elapsed };
        Summary { job_status: "succeeded", rows, error: None, outcome }
    } else {
        let message = describe_failed(r);
        Summary { job_status: "degraded", rows, error: Some(message.clone()), outcome: Outcome::Degraded { message } }
    }
}

fn describe_failed(r: &SyncReport) -> String {
    let parts: Vec<String> = r.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
    format!("{} of {} tables failed: {}", r.failed.len(), r.failed.len() + r.tables.len(), parts.join("; "))
}
