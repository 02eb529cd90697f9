//! `client_specs`: the desired state, one row per ClientSync.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};

use super::{Context, Result, StoreError};
use crate::spec::{API_VERSION, ClientSync, ClientSyncSpec, ClientSyncStatus, KIND, ObjectMeta};

/// A spec as stored, with its server-side metadata.
#[derive(Debug, Clone)]
pub struct StoredSpec {
    pub cluster: String,
    pub name: String,
    pub generation: i64,
    pub spec: ClientSyncSpec,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl StoredSpec {
    /// The resource as `get -o yaml` shows it.
    pub fn to_resource(&self, status: Option<&ClientSyncStatus>) -> ClientSync {
        ClientSync {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: ObjectMeta {
                name: self.name.clone(),
                cluster: Some(self.cluster.clone()),
                labels: self.labels.clone(),
                annotations: self.annotations.clone(),
                generation: Some(self.generation),
                creation_timestamp: Some(self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            },
            spec: self.spec.clone(),
            status: status.and_then(|s| serde_json::to_value(s).ok()),
        }
    }

    /// The resource as it would be applied (no server fields): what `diff` compares.
    pub fn to_applied(&self) -> ClientSync {
        let mut r = self.to_resource(None);
        r.metadata.generation = None;
        r.metadata.creation_timestamp = None;
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

const COLUMNS: &str = "cluster_name, name, generation, spec, labels, annotations, created_at, updated_at";

fn from_row(row: &sqlx::postgres::PgRow) -> Result<StoredSpec> {
    let name: String = row.get("name");
    let Json(spec): Json<ClientSyncSpec> = row.try_get("spec").map_err(|source| StoreError::Db {
        context: format!("decode the stored spec of clientsync/{name} (written by a newer owsync?)"),
        source,
    })?;
    let Json(labels): Json<BTreeMap<String, String>> = row.try_get("labels").ctx(|| "decode labels".into())?;
    let Json(annotations): Json<BTreeMap<String, String>> =
        row.try_get("annotations").ctx(|| "decode annotations".into())?;
    Ok(StoredSpec {
        cluster: row.get("cluster_name"),
        name,
        generation: row.get("generation"),
        spec,
        labels,
        annotations,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

/// Points row-level security at `cluster` for the rest of the transaction.
pub async fn set_cluster(conn: &mut PgConnection, cluster: &str) -> Result<()> {
    sqlx::query("SELECT set_config('app.current_host_id', $1, true)")
        .bind(cluster)
        .execute(conn)
        .await
        .ctx(|| "set app.current_host_id".into())?;
    Ok(())
}

/// Applies one normalised document inside the caller's transaction. The generation
/// grows only when the spec itself changes; label or annotation changes are
/// `configured` without a new generation.
pub async fn apply(conn: &mut PgConnection, doc: &ClientSync) -> Result<ApplyOutcome> {
    let cluster = doc.metadata.cluster.as_deref().unwrap_or_default();
    let name = &doc.metadata.name;
    set_cluster(conn, cluster).await?;
    let spec_json = serde_json::to_value(&doc.spec).map_err(|e| StoreError::Migration(e.to_string()))?;
    let existing = sqlx::query(
        "SELECT spec, labels, annotations, deleted_at IS NOT NULL AS deleted
         FROM sync_metadata.client_specs WHERE cluster_name = $1 AND name = $2 FOR UPDATE",
    )
    .bind(cluster)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .ctx(|| apply_context(doc))?;
    let Some(row) = existing else {
        insert_spec(conn, doc, &spec_json).await?;
        notify(conn, cluster).await?;
        return Ok(ApplyOutcome::Created);
    };
    let Json(old_spec): Json<serde_json::Value> = row.get("spec");
    let Json(old_labels): Json<BTreeMap<String, String>> = row.get("labels");
    let Json(old_ann): Json<BTreeMap<String, String>> = row.get("annotations");
    let deleted: bool = row.get("deleted");
    let spec_changed = deleted || old_spec != spec_json;
    if !spec_changed && old_labels == doc.metadata.labels && old_ann == doc.metadata.annotations {
        return Ok(ApplyOutcome::Unchanged);
    }
    update_spec(conn, doc, &spec_json, spec_changed).await?;
    notify(conn, cluster).await?;
    if deleted {
        reset_status(conn, doc).await?;
    }
    Ok(if deleted { ApplyOutcome::Created } else { ApplyOutcome::Configured })
}

/// The context of [`apply`]'s database errors: which spec, in which cluster.
fn apply_context(doc: &ClientSync) -> String {
    let cluster = doc.metadata.cluster.as_deref().unwrap_or_default();
    format!("apply clientsync/{} in cluster {cluster}", doc.metadata.name)
}

/// Maps a write's error: a taken mirror schema becomes a field error naming it (row-level
/// security hides other clusters' specs; the unique index still sees them).
fn schema_taken(doc: &ClientSync, source: sqlx::Error) -> StoreError {
    match &source {
        sqlx::Error::Database(d) if d.constraint() == Some("client_specs_target_schema") => {
            StoreError::Invalid(format!(
                "spec.target.schema: {:?} is already the mirror of another ClientSync (of this or another cluster); \
             give this one a schema of its own",
                doc.spec.target.schema.as_deref().unwrap_or_default()
            ))
        }
        _ => StoreError::Db { context: apply_context(doc), source },
    }
}

/// Inserts a new spec at generation 1.
async fn insert_spec(conn: &mut PgConnection, doc: &ClientSync, spec_json: &serde_json::Value) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.client_specs (cluster_name, name, generation, spec, labels, annotations, enabled)
         VALUES ($1, $2, 1, $3, $4, $5, $6)",
    )
    .bind(doc.metadata.cluster.as_deref().unwrap_or_default())
    .bind(&doc.metadata.name)
    .bind(Json(spec_json))
    .bind(Json(&doc.metadata.labels))
    .bind(Json(&doc.metadata.annotations))
    .bind(doc.spec.enabled)
    .execute(&mut *conn)
    .await
    .map_err(|e| schema_taken(doc, e))?;
    Ok(())
}

/// Overwrites an existing (or deleted) spec; the generation grows only if `spec_changed`.
async fn update_spec(
    conn: &mut PgConnection,
    doc: &ClientSync,
    spec_json: &serde_json::Value,
    spec_changed: bool,
) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.client_specs
         SET spec = $3, labels = $4, annotations = $5, enabled = $6, updated_at = now(), deleted_at = NULL,
             generation = generation + CASE WHEN $7 THEN 1 ELSE 0 END
         WHERE cluster_name = $1 AND name = $2",
    )
    .bind(doc.metadata.cluster.as_deref().unwrap_or_default())
    .bind(&doc.metadata.name)
    .bind(Json(spec_json))
    .bind(Json(&doc.metadata.labels))
    .bind(Json(&doc.metadata.annotations))
    .bind(doc.spec.enabled)
    .bind(spec_changed)
    .execute(&mut *conn)
    .await
    .map_err(|e| schema_taken(doc, e))?;
    Ok(())
}

/// A re-created tenant starts from Pending, not from its old life's status.
async fn reset_status(conn: &mut PgConnection, doc: &ClientSync) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.client_status SET phase = 'Pending', conditions = '[]', observed_generation = 0,
             consecutive_failures = 0, last_error = NULL, next_sync_time = NULL, updated_at = now()
         WHERE cluster_name = $1 AND name = $2",
    )
    .bind(doc.metadata.cluster.as_deref().unwrap_or_default())
    .bind(&doc.metadata.name)
    .execute(&mut *conn)
    .await
    .ctx(|| apply_context(doc))?;
    Ok(())
}

/// Wakes the cluster's controllers (LISTEN owsync_specs); polling is the fallback.
async fn notify(conn: &mut PgConnection, cluster: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify('owsync_specs', $1)")
        .bind(cluster)
        .execute(conn)
        .await
        .ctx(|| "notify owsync_specs".into())?;
    Ok(())
}

/// Live (not deleted) specs of a cluster, by name.
pub async fn list(pool: &PgPool, cluster: &str) -> Result<Vec<StoredSpec>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND deleted_at IS NULL ORDER BY name"
    )))
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("list clientsyncs of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    rows.iter().map(from_row).collect()
}

/// One live spec, or `NotFound`.
pub async fn get(pool: &PgPool, cluster: &str, name: &str) -> Result<StoredSpec> {
    find(pool, cluster, name).await?.ok_or_else(|| StoreError::NotFound { cluster: cluster.into(), name: name.into() })
}

pub async fn find(pool: &PgPool, cluster: &str, name: &str) -> Result<Option<StoredSpec>> {
    let mut conn = super::begin(pool, cluster).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND name = $2 AND deleted_at IS NULL"
    )))
    .bind(cluster)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .ctx(|| format!("read clientsync/{name}"))?;
    conn.commit().await.ctx(|| "commit".into())?;
    row.as_ref().map(from_row).transpose()
}

/// Marks a spec deleted. sync_service has no DELETE privilege, and the mirror's data is
/// kept: the row stays as a tombstone and the controller stops syncing the tenant.
pub async fn delete(pool: &PgPool, cluster: &str, name: &str) -> Result<()> {
    let mut tx = super::begin(pool, cluster).await?;
    let n = sqlx::query(
        "UPDATE sync_metadata.client_specs SET deleted_at = now(), enabled = false, updated_at = now()
         WHERE cluster_name = $1 AND name = $2 AND deleted_at IS NULL",
    )
    .bind(cluster)
    .bind(name)
    .execute(&mut *tx)
    .await
    .ctx(|| format!("delete clientsync/{name}"))?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound { cluster: cluster.into(), name: name.into() });
    }
    notify(&mut tx, cluster).await?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(())
}
