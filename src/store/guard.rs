//! `deletion_guard`: per tenant, the anchors sampled at the last complete sync, the
//! deletions a sync held, and an operator's approval of exactly those (`sync::guard`).

use sqlx::{PgConnection, PgPool, Row};

use super::{Context, Result};

/// A tenant's guard row, as JSON documents (`sync::guard::{Anchors, Plan}`).
#[derive(Debug, Default, Clone)]
pub struct GuardRow {
    pub anchors: Option<serde_json::Value>,
    pub held: Option<serde_json::Value>,
    pub held_at: Option<chrono::DateTime<chrono::Utc>>,
    pub approved: Option<serde_json::Value>,
    pub approved_by: Option<String>,
}

pub async fn load(conn: &mut PgConnection, cluster: &str, client: &str) -> Result<GuardRow> {
    let row = sqlx::query(
        "SELECT anchors, held, held_at, approved, approved_by FROM sync_metadata.deletion_guard
         WHERE cluster_name = $1 AND client_name = $2",
    )
    .bind(cluster)
    .bind(client)
    .fetch_optional(conn)
    .await
    .ctx(|| format!("read the deletion guard of {client}"))?;
    Ok(row
        .map(|r| GuardRow {
            anchors: r.get(0),
            held: r.get(1),
            held_at: r.get(2),
            approved: r.get(3),
            approved_by: r.get(4),
        })
        .unwrap_or_default())
}

/// Records what a sync held (replacing an earlier hold; an approval stays until used).
pub async fn hold(conn: &mut PgConnection, cluster: &str, client: &str, plan: &serde_json::Value) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.deletion_guard (cluster_name, client_name, held, held_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (cluster_name, client_name) DO UPDATE SET
             held = EXCLUDED.held,
             held_at = CASE WHEN deletion_guard.held IS NULL THEN now() ELSE deletion_guard.held_at END,
             updated_at = now()",
    )
    .bind(cluster)
    .bind(client)
    .bind(plan)
    .execute(&mut *conn)
    .await
    .ctx(|| format!("record the deletions held for {client}"))?;
    // Whatever comes back at the path (the original file, same inode and mtime) must be
    // checked, not skipped, so that the hold can clear.
    super::table_state::forget_fingerprint(conn, cluster, client).await?;
    Ok(())
}

/// After a sync that passed the guard: the new anchors, no hold, no approval (an approval
/// is for the deletions it saw, not for later ones).
pub async fn settle(conn: &mut PgConnection, cluster: &str, client: &str, anchors: &serde_json::Value) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.deletion_guard (cluster_name, client_name, anchors, anchors_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (cluster_name, client_name) DO UPDATE SET
             anchors = EXCLUDED.anchors, anchors_at = now(), held = NULL, held_at = NULL,
             approved = NULL, approved_by = NULL, approved_at = NULL, updated_at = now()",
    )
    .bind(cluster)
    .bind(client)
    .bind(anchors)
    .execute(conn)
    .await
    .ctx(|| format!("record the deletion guard's anchors of {client}"))?;
    Ok(())
}

/// Approves the deletions currently held for `client`: the held plan is copied as the
/// approval, so the next sync applies those deletions and no more. `None`: nothing held.
pub async fn approve(pool: &PgPool, cluster: &str, client: &str, by: &str) -> Result<Option<serde_json::Value>> {
    let mut tx = super::begin(pool, cluster).await?;
    let plan: Option<serde_json::Value> = sqlx::query_scalar(
        "UPDATE sync_metadata.deletion_guard SET approved = held, approved_by = $3, approved_at = now(), updated_at = now()
         WHERE cluster_name = $1 AND client_name = $2 AND held IS NOT NULL
         RETURNING approved",
    )
    .bind(cluster)
    .bind(client)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("approve the deletions held for {client}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(plan)
}

/// Forgets a hold and any approval, keeping the anchors: a restore put the data back.
pub async fn clear_hold(conn: &mut PgConnection, cluster: &str, client: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.deletion_guard SET held = NULL, held_at = NULL, approved = NULL, approved_by = NULL,
             approved_at = NULL, updated_at = now()
         WHERE cluster_name = $1 AND client_name = $2",
    )
    .bind(cluster)
    .bind(client)
    .execute(conn)
    .await
    .ctx(|| format!("clear the deletions held for {client}"))?;
    Ok(())
}
