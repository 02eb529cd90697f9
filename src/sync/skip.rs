//! Skipping unchanged sources: the source file's fingerprint (plus what of the spec
//! shapes the mirror) is recorded, fenced, after a sync in which every table succeeded;
//! the next sync with the same fingerprint does nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::SyncJob;
use crate::source::follow;
use crate::source::pages::Stored;
use crate::spec::ClientSyncSpec;
use crate::store::{FencedTx, StoreError, table_state};

/// What of the spec changes the mirror: a different selection must not be skipped.
pub fn spec_digest(spec: &ClientSyncSpec) -> String {
    serde_json::json!({"tables": spec.tables, "deletes": spec.deletes, "schema": spec.target.schema}).to_string()
}

/// The recorded fingerprint and the row counts of the tables of the last sync. No
/// fingerprint when a mirror table the last sync recorded is gone or was re-created (an
/// operator dropped it): the source may be unchanged, but the mirror is not on spec, so
/// the sync must run to put it back.
pub async fn previous(job: &SyncJob<'_>) -> Result<(Option<String>, BTreeMap<String, i64>), StoreError> {
    let schema = job.spec.mirror_schema(job.client);
    let fp = table_state::fingerprint(job.pool, job.cluster, job.client, &schema).await?;
    if !fp.intact {
        tracing::info!(client = job.client, "a mirror table was dropped or re-created since the last sync: syncing");
    }
    Ok((fp.fingerprint.filter(|_| fp.intact), fp.rows))
}

/// Records, fenced, the fingerprint a complete sync started from, and what its deletion
/// guard sampled (`guard::settle`), in one transaction.
pub async fn record(job: &SyncJob<'_>, fingerprint: &str, passed: super::guard::Passed) -> Result<(), StoreError> {
    let mut tx = FencedTx::begin(job.pool, job.cluster, job.fence).await?;
    let schema = job.spec.mirror_schema(job.client);
    let epoch = tx.epoch();
    table_state::record_fingerprint(&mut tx, job.cluster, job.client, &schema, fingerprint, epoch).await?;
    super::guard::settle(&mut tx, job, passed).await?;
    tx.commit().await
}

/// What a sync starts from, per table whose mirror table is still the one its state was
/// recorded with (same oid: a mirror table dropped and re-created since, by an operator
/// or a restore, gets provisioned again and a full pass, not an incremental one that
/// would leave it empty), read once for the whole sync.
pub struct Baseline {
    /// `(source_ddl, page state)` of the tables that have one.
    pub pages: super::reader::Previous,
    /// The mirror shape digest provisioning recorded, for tables that have one, while the
    /// ClientSync is live (provision_table refuses a deleted one: provisioning then runs
    /// and lets it say so).
    pub shapes: HashMap<String, String>,
}

/// Reads the page states this process does not keep already (`follow::recorded_states`:
/// the ones its last syncs recorded, while their rows are still those versions).
pub async fn baseline(job: &SyncJob<'_>, schema: &str) -> Result<Baseline, StoreError> {
    let started = std::time::Instant::now();
    let mut kept = follow::recorded_states(std::path::Path::new(&job.spec.source.path));
    let have = kept.iter().map(|(t, k)| (t.clone(), k.version.clone())).collect();
    let rows = table_state::recorded(job.pool, job.cluster, job.client, schema, &have).await?;
    let fresh = rows.iter().filter(|r| r.fresh).count();
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        tables = rows.len(),
        fresh,
        "recorded table state read"
    );
    let mut out = Baseline { pages: Default::default(), shapes: HashMap::new() };
    for r in rows {
        if let Some(shape) = r.shape {
            out.shapes.insert(r.table.clone(), shape);
        }
        let stored = match (r.fresh, r.pages) {
            (true, _) => kept.remove(&r.table).map(Stored::kept),
            (false, Some(base)) => {
                Some(Stored { base: Arc::new(base), delta: r.pages_delta, made: None, version: r.version })
            }
            (false, None) => None,
        };
        if let Some(stored) = stored {
            out.pages.insert(r.table, (r.source_ddl, stored));
        }
    }
    Ok(out)
}
