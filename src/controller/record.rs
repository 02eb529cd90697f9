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
use super::policy;
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
#[derive(Debug)]
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
    /// pending conflicts) and records status, the run's end and its events, the requeue
    /// decided by the policy from the result. Returns the delay before the next sync, and
    /// whether the record was written.
    pub async fn finish(
        &self,
        st: &mut ClientSyncStatus,
        schedule: &mut Schedule,
        run: &Finished<'_>,
    ) -> (Duration, Result<(), RecordError>) {
        let requeue = policy::requeue(run.result, schedule.failures(), super::backoff::random_jitter());
        let Some(delay) = schedule.apply(requeue) else { return (Duration::ZERO, Err(RecordError::OwnershipLost)) };
        (delay, self.finish_with(st, run, Next { failures: schedule.failures(), delay }).await)
    }

    /// After a sync whose requeue is decided (`next`): applies its result to `st`
    /// (`apply`), with the quarantined values and the pending conflicts counted, and
    /// records status, the run's end and its events.
    pub async fn finish_with(
        &self,
        st: &mut ClientSyncStatus,
        run: &Finished<'_>,
        next: Next,
    ) -> Result<(), RecordError> {
        let name = &self.spec.name;
        let applied = apply(st, self.spec, run, next);
        store::observed::with_quarantined(self.pool, &self.spec.cluster, name, &mut st.tables).await;
        // Counted only when it can have changed: an unchanged cycle stays a few round trips.
        let pending_before = st.condition("ConflictsPending").is_some_and(|c| c.status == "True");
        let pending_now = matches!(run.result, Ok(r) if r.tables.values().any(|t| t.pending_conflicts > 0));
        if pending_before || pending_now {
            match self.pending_conflicts().await {
                Ok(n) => conditions::conflicts_pending(st, name, n, self.spec.generation, run.now),
                Err(e) => warn!(client = %name, error = %e, "cannot count pending conflicts"),
            }
        }
        self.record(st, run, &applied).await
    }

    async fn pending_conflicts(&self) -> Result<i64, store::StoreError> {
        let mut tx = store::begin(self.pool, &self.spec.cluster).await?;
        let n = store::conflicts::pending_count(&mut tx, &self.spec.cluster, &self.spec.name).await?;
        let _ = tx.rollback().await;
        Ok(n)
    }

    /// Status, the run's end and its events, in one transaction.
    async fn record(&self, st: &ClientSyncStatus, run: &Finished<'_>, a: &Applied) -> Result<(), RecordError> {
        let (cluster, name, node) = (&self.spec.cluster, &self.spec.name, Some(self.node));
        let s = &a.summary;
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
            if a.held_before.as_deref() != Some(*reason) {
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
        if let Some(now_drifting) = a.drift_changed {
            let (reason, msg) = match (now_drifting, st.condition("SchemaDrift")) {
                (true, Some(c)) => ("SchemaDrift", c.message.as_str()),
                _ => ("SchemaDriftResolved", "the mirror follows the source's schema again"),
            };
            jobs::event(&mut tx, cluster, Some(name), now_drifting, reason, msg, node).await?;
        }
        self.commit(tx).await
    }

    /// Records that a disabled tenant is `Suspended` (fenced: a replica that lost the
    /// lease records nothing and says so).
    pub async fn suspended(&self) -> Result<(), RecordError> {
        let spec = self.spec;
        let mut st = status::get(self.pool, &spec.cluster, &spec.name).await?.unwrap_or_default();
        conditions::suspended(&mut st, spec.generation, Utc::now());
        let mut tx = self.begin().await?;
        status::write(&mut tx, &spec.cluster, &spec.name, &st, None).await?;
        self.commit(tx).await
    }
}

/// The requeue a run's status shows: consecutive failures including this run (0 after a
/// success or a hold) and the delay before the next sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Next {
    pub failures: u32,
    pub delay: Duration,
}

/// What applying a run to the status came to: what its record writes besides the status.
#[derive(Debug)]
struct Applied {
    summary: Summary,
    /// `SchemaDrift` turned True (`Some(true)`) or back to False (`Some(false)`): an event.
    drift_changed: Option<bool>,
    /// The `DeletionsHeld` reason before this run, while one was held.
    held_before: Option<String>,
}

/// Applies a finished run to `st`: its tables, the conditions ([`conditions::record`]) with
/// the requeue `next`, and the schema drift it found. Pure.
fn apply(st: &mut ClientSyncStatus, spec: &StoredSpec, run: &Finished<'_>, next: Next) -> Applied {
    let summary = summarize(st, run);
    let held_before = st.condition("DeletionsHeld").filter(|c| c.status == "True").map(|c| c.reason.clone());
    let ended = conditions::Ended {
        outcome: &summary.outcome,
        generation: spec.generation,
        now: run.now,
        failures: next.failures,
        stall_after: run.stall_after,
        delay: next.delay,
    };
    conditions::record(st, &ended);
    let schema = spec.spec.mirror_schema(&spec.name);
    let drift = run.result.as_ref().ok().and_then(|r| r.drift.as_deref());
    let drift_changed = drift.and_then(|d| conditions::drift(st, &schema, d, spec.generation, run.now));
    Applied { summary, drift_changed, held_before }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::TableReport;
    use crate::sync::drift::Drift;
    use crate::sync::guard::{Plan, Reason};

    fn spec() -> StoredSpec {
        let spec = serde_json::from_value(serde_json::json!({"source": {"path": "/data/acme/webui.db"}})).unwrap();
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        StoredSpec {
            cluster: "host-a".into(),
            name: "acme".into(),
            generation: 2,
            spec,
            labels: Default::default(),
            annotations: Default::default(),
            created_at: t,
            updated_at: t,
        }
    }

    fn finished(result: &Result<SyncReport, SyncError>, s: i64) -> Finished<'_> {
        let now = DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        Finished { job_id: None, result, elapsed: Duration::from_secs(1), now, stall_after: 5 }
    }

    const NEXT: Next = Next { failures: 0, delay: Duration::from_secs(300) };

    fn synced(tables: &[(&str, i64)], drift: Option<Vec<Drift>>) -> SyncReport {
        let tables = tables.iter().map(|(t, rows)| (t.to_string(), TableReport { rows: *rows, ..Default::default() }));
        SyncReport { tables: tables.collect(), rows_written: 7, drift, ..Default::default() }
    }

    #[test]
    fn a_run_applies_its_tables_conditions_and_drift_with_the_requeue() {
        let (spec, mut st) = (spec(), ClientSyncStatus::default());
        st.tables.insert("gone".into(), TableStatus { rows: 1, quarantined: 0, watermark: None, conflicts: 0 });
        let run = Ok(synced(&[("chat", 10), ("tag", 3)], Some(vec![])));
        let a = apply(&mut st, &spec, &finished(&run, 0), NEXT);
        assert_eq!((a.summary.job_status, a.summary.rows, a.summary.error.as_deref()), ("succeeded", 7, None));
        assert_eq!(st.tables.keys().collect::<Vec<_>>(), ["chat", "tag"], "a table no longer synced goes");
        assert_eq!((st.phase, st.observed_generation, st.consecutive_failures), (Phase::Synced, 2, 0));
        assert_eq!(st.next_sync_time, Some(finished(&run, 300).now));
        assert_eq!((a.drift_changed, a.held_before), (None, None), "in sync from the start: no event");

        // Drift found: an event once, then none while it stays.
        let dropped = Drift::ColumnDropped { table: "chat".into(), column: "summary".into() };
        let run = Ok(synced(&[("chat", 10), ("tag", 3)], Some(vec![dropped])));
        assert_eq!(apply(&mut st, &spec, &finished(&run, 10), NEXT).drift_changed, Some(true));
        let msg = &st.condition("SchemaDrift").unwrap().message;
        assert!(msg.contains("ALTER TABLE \"client_acme\".\"chat\" DROP COLUMN"), "{msg}");
        assert_eq!(apply(&mut st, &spec, &finished(&run, 20), NEXT).drift_changed, None);
        // An unchanged source's sync that did not check the drift leaves it as it was.
        assert_eq!(apply(&mut st, &spec, &finished(&Ok(synced(&[("chat", 10)], None)), 30), NEXT).drift_changed, None);
        assert_eq!(st.condition("SchemaDrift").unwrap().status, "True");
        let fixed = Ok(synced(&[("chat", 10)], Some(vec![])));
        assert_eq!(apply(&mut st, &spec, &finished(&fixed, 40), NEXT).drift_changed, Some(false));
    }

    #[test]
    fn failures_and_holds_are_summarized_for_the_record() {
        let (spec, mut st) = (spec(), ClientSyncStatus::default());
        let mut degraded = synced(&[("chat", 10)], None);
        degraded.failed.insert("tag".into(), "NUL in text".into());
        let backoff = Next { failures: 1, delay: Duration::from_secs(5) };
        let a = apply(&mut st, &spec, &finished(&Ok(degraded), 0), backoff);
        assert_eq!(a.summary.job_status, "degraded");
        assert_eq!(a.summary.error.as_deref(), Some("1 of 2 tables failed: tag: NUL in text"));
        assert_eq!((st.phase, st.consecutive_failures), (Phase::Degraded, 1));
        assert_eq!(st.tables.keys().collect::<Vec<_>>(), ["chat"]);

        let plan = Plan { reason: Reason::MassDeletion, tables: vec![], foreign: vec![], anchored: 0 };
        let held =
            || SyncError::DeletionsHeld { client: "acme".into(), plan: Box::new(plan.clone()), message: "held".into() };
        let a = apply(&mut st, &spec, &finished(&Err(held()), 10), NEXT);
        assert_eq!((a.summary.job_status, a.held_before), ("held", None), "a hold starts: an event");
        assert_eq!((st.phase, st.consecutive_failures), (Phase::Held, 0));
        assert_eq!(st.tables.keys().collect::<Vec<_>>(), ["chat"], "a held run keeps the tables");
        let a = apply(&mut st, &spec, &finished(&Err(held()), 20), NEXT);
        assert_eq!(a.held_before.as_deref(), Some("MassDeletion"), "the same hold: no second event");

        let failed = Err(SyncError::Reader { client: "acme".into(), message: "gone".into() });
        let a = apply(&mut st, &spec, &finished(&failed, 30), backoff);
        assert_eq!((a.summary.job_status, st.phase), ("failed", Phase::Failed));
        assert!(matches!(&a.summary.outcome, Outcome::Failed { message } if message.contains("gone")));
    }
}
