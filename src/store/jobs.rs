//! `sync_jobs` (one row per sync run) and `events`.

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{Context, Result};

/// Records the start of a run inside the caller's (fenced) transaction; its id is a
/// time-ordered UUID.
pub async fn start(
    conn: &mut PgConnection,
    cluster: &str,
    client: &str,
    leader: &str,
    epoch: i64,
    trigger: &str,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sync_metadata.sync_jobs (id, cluster_name, client_name, leader_id, epoch, trigger)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(cluster)
    .bind(client)
    .bind(leader)
    .bind(epoch)
    .bind(trigger)
    .execute(conn)
    .await
    .ctx(|| format!("record the start of a sync of {client}"))?;
    Ok(id)
}

/// Closes the runs of epochs before `epoch` that are still `running`: their leader died
/// (kill -9, lost lease) before recording their end. Returns how many.
pub async fn abandon_unfinished(conn: &mut PgConnection, cluster: &str, epoch: i64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE sync_metadata.sync_jobs SET status = 'abandoned', finished_at = now(),
             error = 'its leader (epoch ' || epoch || ') stopped before the run ended'
         WHERE cluster_name = $1 AND status = 'running' AND epoch < $2",
    )
    .bind(cluster)
    .bind(epoch)
    .execute(conn)
    .await
    .ctx(|| format!("close unfinished sync jobs of cluster {cluster}"))?;
    Ok(done.rows_affected())
}

/// Records the end of a run inside the caller's transaction.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    rows: i64,
    tables: &serde_json::Value,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.sync_jobs SET status = $2, finished_at = now(), rows_written = $3, tables = $4, error = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(rows)
    .bind(Json(tables))
    .bind(error)
    .execute(conn)
    .await
    .ctx(|| format!("record the end of sync job {id}"))?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub time: chrono::DateTime<chrono::Utc>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub node_id: Option<String>,
}

/// Appends an event (Kubernetes-style: Normal or Warning, a reason, a message).
pub async fn event(
    conn: &mut PgConnection,
    cluster: &str,
    client: Option<&str>,
    warning: bool,
    reason: &str,
    message: &str,
    node: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.events (cluster_name, client_name, type, reason, message, node_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cluster)
    .bind(client)
    .bind(if warning { "Warning" } else { "Normal" })
    .bind(reason)
    .bind(message)
    .bind(node)
    .execute(conn)
    .await
    .ctx(|| "record an event".into())?;
    Ok(())
}

/// The latest events of a tenant, newest first.
pub async fn recent_events(pool: &PgPool, cluster: &str, client: &str, limit: i64) -> Result<Vec<Event>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT created_at, type, reason, message, node_id FROM sync_metadata.events
         WHERE cluster_name = $1 AND client_name = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(cluster)
    .bind(client)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read events of {client}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows
        .iter()
        .map(|r| Event { time: r.get(0), type_: r.get(1), reason: r.get(2), message: r.get(3), node_id: r.get(4) })
        .collect())
}

/// Deletes the cluster's finished `sync_jobs` runs and `events` older than `keep`
/// (through `sync_metadata.expire_history`: sync_service has no DELETE), in batches of
/// `batch` rows, each batch its own short transaction. Returns (runs, events) deleted.
pub async fn expire_history(pool: &PgPool, cluster: &str, keep: std::time::Duration, batch: i32) -> Result<(u64, u64)> {
    let keep_s = keep.as_secs_f64();
    let (mut jobs, mut events) = (0u64, 0u64);
    loop {
        let mut tx = super::begin(pool, cluster).await?;
        let (j, e): (i64, i64) =
            sqlx::query_as("SELECT jobs, events FROM sync_metadata.expire_history(make_interval(secs => $1), $2)")
                .bind(keep_s)
                .bind(batch)
                .fetch_one(&mut *tx)
                .await
                .ctx(|| format!("expire the history of cluster {cluster}"))?;
        tx.commit().await.ctx(|| "commit".into())?;
        jobs += j as u64;
        events += e as u64;
        if j < i64::from(batch) && e < i64::from(batch) {
            return Ok((jobs, events));
        }
    }
}
