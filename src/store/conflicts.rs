//! `sync_metadata.conflict_log`: rows changed both in the source and in PostgreSQL, how
//! each was resolved, and the manual-review queue (`owsyncctl conflicts list|resolve`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};

use super::{Context, StoreError};
use crate::sql::{qualified, quote_ident};
use crate::target::conflict::{COL_SOURCE_HASH, COL_TARGET_CHANGED};
use crate::target::{COL_DELETED, COL_SYNCED_AT};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub id: i64,
    pub client: String,
    pub table: String,
    pub row_key: Value,
    pub strategy: String,
    /// `pending` (manual, waiting for review), `source`, `target` or `merged`.
    pub resolution: String,
    pub detected_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    pub source_row: Option<Value>,
    pub target_row: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConflictError {
    #[error("conflict {id} not found in cluster {cluster} (see `owsyncctl conflicts list --all`)")]
    NotFound { cluster: String, id: i64 },
    #[error(
        "conflict {id} (tenant {client}, table {table}) is already resolved: {resolution} by {by} at {at}; nothing changed"
    )]
    AlreadyResolved { id: i64, client: String, table: String, resolution: String, by: String, at: String },
    #[error(
        "conflict {id}: tenant {client}, table {table}: the conflict has no {side} version recorded; resolve it with the other one"
    )]
    NoVersion { id: i64, client: String, table: String, side: &'static str },
    #[error(
        "conflict {id}: tenant {client}: mirror row {key} of table {table} no longer exists; nothing changed (sync the tenant, then list its conflicts again)"
    )]
    RowGone { id: i64, client: String, table: String, key: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const COLUMNS: &str = "id, client_name, table_name, row_key, strategy, resolution, detected_at, resolved_at,
    resolved_by, source_row, target_row";

fn from_row(r: &sqlx::postgres::PgRow) -> Conflict {
    Conflict {
        id: r.get("id"),
        client: r.get("client_name"),
        table: r.get("table_name"),
        row_key: r.get::<Json<Value>, _>("row_key").0,
        strategy: r.get("strategy"),
        resolution: r.get("resolution"),
        detected_at: r.get("detected_at"),
        resolved_at: r.get("resolved_at"),
        resolved_by: r.get("resolved_by"),
        source_row: r.get::<Option<Json<Value>>, _>("source_row").map(|j| j.0),
        target_row: r.get::<Option<Json<Value>>, _>("target_row").map(|j| j.0),
    }
}

/// A conflict a sync found in one row, and how the table's strategy resolved it
/// (`pending`: left for review).
pub struct Detected<'a> {
    pub cluster: &'a str,
    pub client: &'a str,
    pub table: &'a str,
    pub key: &'a serde_json::Map<String, Value>,
    pub strategy: &'a str,
    pub source: &'a serde_json::Map<String, Value>,
    pub target: &'a serde_json::Map<String, Value>,
    pub resolution: &'a str,
    pub source_hash: &'a str,
}

/// Records `c` in `conflict_log`, in the caller's (the table's, fenced) transaction; a
/// row already pending review is updated with the newest versions instead.
pub async fn record(conn: &mut PgConnection, c: &Detected<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sync_metadata.conflict_log (cluster_name, client_name, table_name, row_key, strategy,
             source_row, target_row, resolution, resolved_at, resolved_by, source_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN NULL ELSE now() END,
                 CASE WHEN $9 THEN NULL ELSE 'owsync (' || $5 || ')' END, $10)
         ON CONFLICT (cluster_name, client_name, table_name, row_key) WHERE resolution = 'pending'
         DO UPDATE SET source_row = EXCLUDED.source_row, target_row = EXCLUDED.target_row,
             source_hash = EXCLUDED.source_hash, detected_at = now()",
    )
    .bind(c.cluster)
    .bind(c.client)
    .bind(c.table)
    .bind(Json(c.key))
    .bind(c.strategy)
    .bind(Json(c.source))
    .bind(Json(c.target))
    .bind(c.resolution)
    .bind(c.resolution == "pending")
    .bind(c.source_hash)
    .execute(conn)
    .await
    .ctx(|| format!("table {}: record a conflict in sync_metadata.conflict_log", c.table))?;
    Ok(())
}

/// The cluster's conflicts (of one tenant if `client` is given): pending ones first,
/// then the newest; resolved ones only with `all`.
pub async fn list(pool: &PgPool, cluster: &str, client: Option<&str>, all: bool) -> Result<Vec<Conflict>, StoreError> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.conflict_log
         WHERE cluster_name = $1 AND ($2::text IS NULL OR client_name = $2) AND ($3 OR resolved_at IS NULL)
         ORDER BY resolved_at IS NOT NULL, id DESC"
    )))
    .bind(cluster)
    .bind(client)
    .bind(all)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("list conflicts of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(from_row).collect())
}

/// One conflict by its id (in any tenant of the cluster).
pub async fn get(pool: &PgPool, cluster: &str, id: i64) -> Result<Option<Conflict>, StoreError> {
    let mut tx = super::begin(pool, cluster).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.conflict_log WHERE cluster_name = $1 AND id = $2"
    )))
    .bind(cluster)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("read conflict {id}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(row.as_ref().map(from_row))
}

/// How many conflicts wait for review, by tenant (tenants without any are left out).
pub async fn pending_counts(pool: &PgPool, cluster: &str) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT client_name, count(*) FROM sync_metadata.conflict_log
         WHERE cluster_name = $1 AND resolved_at IS NULL GROUP BY client_name",
    )
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("count pending conflicts of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect())
}

/// How many of a tenant's conflicts wait for review.
pub async fn pending_count(conn: &mut PgConnection, cluster: &str, client: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.conflict_log
         WHERE cluster_name = $1 AND client_name = $2 AND resolved_at IS NULL",
    )
    .bind(cluster)
    .bind(client)
    .fetch_one(conn)
    .await
    .ctx(|| format!("count pending conflicts of tenant {client}"))
}

/// Resolves a pending conflict inside `conn`'s transaction, which must come from
/// [`super::begin`] (scoped to `cluster`, and marked as owsync's so the write is not
/// stamped as a PostgreSQL edit): writes the chosen version to the mirror row of `schema` and marks
/// the entry resolved by `who`. With the source's version the row is owsync's again
/// (later source changes sync as usual); with the mirror's it stays marked as changed in
/// PostgreSQL, so the sync keeps it until the source changes the row again.
pub async fn resolve(
    conn: &mut PgConnection,
    cluster: &str,
    schema: &str,
    id: i64,
    use_source: bool,
    who: &str,
) -> Result<Conflict, ConflictError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.conflict_log WHERE cluster_name = $1 AND id = $2 FOR UPDATE"
    )))
    .bind(cluster)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .ctx(|| format!("read conflict {id}"))?;
    let Some(c) = row.as_ref().map(from_row) else {
        return Err(ConflictError::NotFound { cluster: cluster.to_string(), id });
    };
    if let Some(at) = c.resolved_at {
        return Err(ConflictError::AlreadyResolved {
            id,
            client: c.client,
            table: c.table,
            resolution: c.resolution,
            by: c.resolved_by.unwrap_or_else(|| "unknown".into()),
            at: at.to_rfc3339(),
        });
    }
    let side = if use_source { "source" } else { "target" };
    let version = if use_source { &c.source_row } else { &c.target_row };
    let Some(Value::Object(version)) = version else {
        return Err(ConflictError::NoVersion { id, client: c.client, table: c.table, side });
    };
    let Value::Object(key) = &c.row_key else {
        return Err(ConflictError::NoVersion { id, client: c.client, table: c.table, side: "key" });
    };
    let tbl = qualified(schema, &c.table);
    let sets: Vec<String> =
        version.keys().filter(|k| !key.contains_key(*k)).map(|k| format!("{0} = r.{0}", quote_ident(k))).collect();
    let join: Vec<String> = key.keys().map(|k| format!("t.{0}::text = r.{0}::text", quote_ident(k))).collect();
    let (stamp, hash) = (quote_ident(COL_TARGET_CHANGED), quote_ident(COL_SOURCE_HASH));
    let bookkeeping = if use_source {
        format!("{stamp} = NULL, {hash} = NULL")
    } else {
        format!("{stamp} = coalesce(t.{stamp}, clock_timestamp())")
    };
    let sql = format!(
        "UPDATE {tbl} t SET {sets}{bookkeeping}, {del} = false, {at} = now()
         FROM jsonb_populate_record(NULL::{tbl}, $1) r WHERE {join}",
        sets = if sets.is_empty() { String::new() } else { format!("{}, ", sets.join(", ")) },
        join = join.join(" AND "),
        del = quote_ident(COL_DELETED),
        at = quote_ident(COL_SYNCED_AT),
    );
    let n = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Json(Value::Object(version.clone())))
        .execute(&mut *conn)
        .await
        .ctx(|| format!("write the {side} version of conflict {id} to {tbl}"))?
        .rows_affected();
    if n == 0 {
        return Err(ConflictError::RowGone { id, client: c.client, table: c.table, key: c.row_key.to_string() });
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE sync_metadata.conflict_log SET resolution = $3, resolved_at = now(), resolved_by = $4
         WHERE cluster_name = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(cluster)
    .bind(id)
    .bind(side)
    .bind(who)
    .fetch_one(&mut *conn)
    .await
    .ctx(|| format!("mark conflict {id} resolved"))?;
    Ok(from_row(&row))
}
