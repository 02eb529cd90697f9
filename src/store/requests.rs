//! `sync_requests`: durable "sync this tenant now" requests, filed by any replica's API
//! or `owsyncctl trigger`, claimed by the leader.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::lease::Candidate;
use super::{Context, Result};

/// Files a request and wakes the leader (NOTIFY owsync_requests; it also polls).
pub async fn file(pool: &PgPool, cluster: &str, client: &str, requested_by: &str) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let mut tx = super::begin(pool, cluster).await?;
    sqlx::query(
        "INSERT INTO sync_metadata.sync_requests (id, cluster_name, client_name, requested_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(cluster)
    .bind(client)
    .bind(requested_by)
    .execute(&mut *tx)
    .await
    .ctx(|| format!("file a sync request for {client}"))?;
    sqlx::query("SELECT pg_notify('owsync_requests', $1)")
        .bind(cluster)
        .execute(&mut *tx)
        .await
        .ctx(|| "notify owsync_requests".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(id)
}

/// Claims every open request of `who`'s cluster: `(request id, tenant)`, but only while
/// `who` holds the lease at `epoch`: the check runs inside the claim's transaction under
/// the lease row's lock ([`super::lease::holds`]), so a deposed leader (another epoch,
/// or its lease expired) claims nothing and the requests stay open for the new leader.
pub async fn claim(pool: &PgPool, who: &Candidate, epoch: i64) -> Result<Vec<(Uuid, String)>> {
    let mut tx = super::begin(pool, &who.cluster).await?;
    if !super::lease::holds(&mut tx, who, epoch).await? {
        tx.rollback().await.ctx(|| "roll back the claim".into())?;
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE sync_metadata.sync_requests SET claimed_at = now()
         WHERE cluster_name = $1 AND claimed_at IS NULL RETURNING id, client_name",
    )
    .bind(&who.cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| "claim sync requests".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
