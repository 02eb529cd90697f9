//! Skipping unchanged sources: the source file's fingerprint (plus what of the spec
//! shapes the mirror) is recorded, fenced, after a sync in which every table succeeded;
//! the next sync with the same fingerprint does nothing.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::{Fence, SyncJob};
use crate::spec::ClientSyncSpec;
use crate::store::{self, Context, StoreError};

/// The `table_state` row that holds a tenant's source fingerprint.
const MARKER: &str = "*";

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
    let mut tx = store::begin(job.pool, job.cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, rows, watermark->>'fingerprint',
                table_name = $3 OR NOT watermark ? 'mirror_oid'
                  OR (watermark->>'mirror_oid')::bigint
                     IS NOT DISTINCT FROM to_regclass(format('%I.%I', $4::text, table_name))::oid::bigint
         FROM sync_metadata.table_state
         WHERE cluster_name = $1 AND client_name = $2",
    )
    .bind(job.cluster)
    .bind(job.client)
    .bind(MARKER)
    .bind(&schema)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the table state of {}", job.client))?;
    let _ = tx.commit().await;
    let mut fp = None;
    let mut intact = true;
    let mut tables = BTreeMap::new();
    for r in rows {
        let name: String = r.get(0);
        intact &= r.get::<bool, _>(3);
        if name == MARKER {
            fp = r.get(2);
        } else {
            tables.insert(name, r.get(1));
        }
    }
    if !intact {
        tracing::info!(client = job.client, "a mirror table was dropped or re-created since the last sync: syncing");
    }
    Ok((fp.filter(|_| intact), tables))
}

/// Records the fingerprint a complete sync started from. `Ok(false)`: the lease was lost.
pub async fn record(job: &SyncJob<'_>, fingerprint: &str) -> Result<bool, StoreError> {
    let mut tx = store::begin(job.pool, job.cluster).await?;
    sqlx::query(
        "INSERT INTO sync_metadata.table_state (cluster_name, client_name, table_name, watermark, epoch, updated_at)
         VALUES ($1, $2, $3, jsonb_build_object('fingerprint', $4::text), $5, now())
         ON CONFLICT (cluster_name, client_name, table_name) DO UPDATE SET watermark = EXCLUDED.watermark,
             epoch = EXCLUDED.epoch, updated_at = now()",
    )
    .bind(job.cluster)
    .bind(job.client)
    .bind(MARKER)
    .bind(fingerprint)
    .bind(job.fence.map(|f: &Fence| f.epoch))
    .execute(&mut *tx)
    .await
    .ctx(|| format!("record the source fingerprint of {}", job.client))?;
    // A complete sync re-created the mirror of every table it syncs: a recorded table
    // whose mirror is still missing is one it no longer syncs (dropped at the source, or
    // excluded), so its missing mirror must not make `previous` sync again and again.
    sqlx::query(
        "UPDATE sync_metadata.table_state SET watermark = watermark - 'mirror_oid'
         WHERE cluster_name = $1 AND client_name = $2 AND table_name <> $3 AND watermark ? 'mirror_oid'
           AND to_regclass(format('%I.%I', $4::text, table_name)) IS NULL",
    )
    .bind(job.cluster)
    .bind(job.client)
    .bind(MARKER)
    .bind(job.spec.mirror_schema(job.client))
    .execute(&mut *tx)
    .await
    .ctx(|| format!("record the mirror tables of {} no longer synced", job.client))?;
    if let Some(f) = job.fence
        && !store::lease::holds(&mut tx, &f.who, f.epoch).await?
    {
        return Ok(false);
    }
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(true)
}

/// What a sync starts from, per table whose mirror table is still the one its state was
/// recorded with (same oid: a mirror table dropped and re-created since, by an operator
/// or a restore, gets provisioned again and a full pass, not an incremental one that
/// would leave it empty), read once for the whole sync.
pub struct Recorded {
    /// `(source_ddl, page state)` of the tables that have one.
    pub pages: super::reader::Previous,
    /// The mirror shape digest provisioning recorded, for tables that have one, while the
    /// ClientSync is live (provision_table refuses a deleted one: provisioning then runs
    /// and lets it say so).
    pub shapes: HashMap<String, String>,
}

pub async fn recorded(job: &SyncJob<'_>, schema: &str) -> Result<Recorded, StoreError> {
    let started = std::time::Instant::now();
    let mut tx = store::begin(job.pool, job.cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, coalesce(source_ddl, ''), pages, watermark->>'shape',
                EXISTS (SELECT 1 FROM sync_metadata.client_specs s WHERE s.cluster_name = $1
                        AND s.spec #>> '{target,schema}' = $3 AND s.deleted_at IS NULL),
                pages_delta
         FROM sync_metadata.table_state
         WHERE cluster_name = $1 AND client_name = $2
           AND (watermark->>'mirror_oid')::bigint = to_regclass(format('%I.%I', $3::text, table_name))::oid::bigint",
    )
    .bind(job.cluster)
    .bind(job.client)
    .bind(schema)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the recorded table state of {}", job.client))?;
    // The largest state grew the connection's read buffer: not kept by an idle connection.
    sqlx::Connection::shrink_buffers(&mut *tx);
    let _ = tx.commit().await;
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, tables = rows.len(), "recorded table state read");
    let mut out = Recorded { pages: Default::default(), shapes: HashMap::new() };
    for r in rows {
        let name: String = r.get(0);
        if let (Some(shape), true) = (r.get::<Option<String>, _>(3), r.get::<bool, _>(4)) {
            out.shapes.insert(name.clone(), shape);
        }
        if let Some(base) = r.get::<Option<Vec<u8>>, _>(2) {
            out.pages.insert(name, (r.get(1), super::reader::Stored { base, delta: r.get(5) }));
        }
    }
    Ok(out)
}
