//! `sync_requests`: durable "sync this tenant now" requests, filed by any replica's API
//! or `owsyncctl trigger`, claimed by the leader.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::lease::Candidate;
use super::{Context, Fence, FencedTx, Result, StoreError};

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
/// `who` holds the lease at `epoch`: the claim's transaction is fenced ([`FencedTx`]), so
/// a deposed leader (another epoch, or its lease expired) claims nothing and the requests
/// stay open for the new leader.
pub async fn claim(pool: &PgPool, who: &Candidate, epoch: i64) -> Result<Vec<(Uuid, String)>> {
    let fence = Fence { who: who.clone(), epoch };
    let mut tx = FencedTx::begin(pool, &who.cluster, Some(&fence)).await?;
    let rows = sqlx::query(
        "UPDATE sync_metadata.sync_requests SET claimed_at = now()
         WHERE cluster_name = $1 AND claimed_at IS NULL RETURNING id, client_name",
    )
    .bind(&who.cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| "claim sync requests".into())?;
    match tx.commit().await {
        Ok(()) => {}
        Err(StoreError::Fenced { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
