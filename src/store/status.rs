//! `client_status`: the observed state, written only by the controller.

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};

use super::{Context, Result};
use crate::spec::{ClientSyncStatus, Phase, TableStatus};

fn from_row(row: &sqlx::postgres::PgRow) -> ClientSyncStatus {
    let conditions = row.try_get::<Json<_>, _>("conditions").map(|j| j.0).unwrap_or_default();
    let tables: BTreeMap<String, TableStatus> = row.try_get::<Json<_>, _>("tables").map(|j| j.0).unwrap_or_default();
    let dur: Option<i64> = row.get("last_sync_duration_ms");
    ClientSyncStatus {
        observed_generation: row.get("observed_generation"),
        phase: Phase::parse(row.get::<&str, _>("phase")),
        conditions,
        last_sync_time: row.get("last_sync_time"),
        next_sync_time: row.get("next_sync_time"),
        last_sync_duration: dur
            .map(|ms| humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()),
        consecutive_failures: row.get("consecutive_failures"),
        tables,
        last_error: row.get("last_error"),
    }
}

const COLUMNS: &str = "name, observed_generation, phase, conditions, last_sync_time, next_sync_time,
    last_sync_duration_ms, consecutive_failures, tables, last_error";

/// Status of every tenant of a cluster, by name.
pub async fn list(pool: &PgPool, cluster: &str) -> Result<BTreeMap<String, ClientSyncStatus>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.client_status WHERE cluster_name = $1"
    )))
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read status of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get::<String, _>("name"), from_row(r))).collect())
}

pub async fn get(pool: &PgPool, cluster: &str, name: &str) -> Result<Option<ClientSyncStatus>> {
    let mut tx = super::begin(pool, cluster).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_metadata.client_status WHERE cluster_name = $1 AND name = $2"
    )))
    .bind(cluster)
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("read status of clientsync/{name}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(row.as_ref().map(from_row))
}

/// Writes a tenant's status inside the caller's (fenced) transaction.
pub async fn write(
    conn: &mut PgConnection,
    cluster: &str,
    name: &str,
    st: &ClientSyncStatus,
    duration_ms: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.client_status AS s (cluster_name, name, observed_generation, phase, conditions,
             last_sync_time, next_sync_time, last_sync_duration_ms, consecutive_failures, tables, last_error, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
         ON CONFLICT (cluster_name, name) DO UPDATE SET
             observed_generation = EXCLUDED.observed_generation, phase = EXCLUDED.phase,
             conditions = EXCLUDED.conditions, last_sync_time = EXCLUDED.last_sync_time,
             next_sync_time = EXCLUDED.next_sync_time,
             last_sync_duration_ms = coalesce(EXCLUDED.last_sync_duration_ms, s.last_sync_duration_ms),
             consecutive_failures = EXCLUDED.consecutive_failures, tables = EXCLUDED.tables,
             last_error = EXCLUDED.last_error, updated_at = now()",
    )
    .bind(cluster)
    .bind(name)
    .bind(st.observed_generation)
    .bind(st.phase.as_str())
    .bind(Json(&st.conditions))
    .bind(st.last_sync_time)
    .bind(st.next_sync_time)
    .bind(duration_ms)
    .bind(st.consecutive_failures)
    .bind(Json(&st.tables))
    .bind(&st.last_error)
    .execute(conn)
    .await
    .ctx(|| format!("write status of clientsync/{name}"))?;
    Ok(())
}
