//! GitOps inventories (ApplySet-style) for `owsyncctl apply --prune`: every apply records,
//! on each spec it applies, the id of the inventory it came from
//! (`client_specs.applied_by_inventory`), and in `inventories` the names that inventory
//! owns afterwards. Pruning deletes only specs of the same cluster recorded under the same
//! inventory id that the current apply no longer has: never by labels, never specs applied
//! without an inventory or from another one.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;
use sqlx::types::Json;

use super::specs::set_cluster;
use super::{Context, Result};

/// Records that `name` (just applied) belongs to inventory `id` of `cluster`.
pub async fn claim(conn: &mut PgConnection, cluster: &str, name: &str, id: &str) -> Result<()> {
    set_cluster(conn, cluster).await?;
    sqlx::query(
        "UPDATE sync_metadata.client_specs SET applied_by_inventory = $3
         WHERE cluster_name = $1 AND name = $2 AND applied_by_inventory IS DISTINCT FROM $3",
    )
    .bind(cluster)
    .bind(name)
    .bind(id)
    .execute(conn)
    .await
    .ctx(|| format!("record inventory {id:?} on clientsync/{name} of cluster {cluster}"))?;
    Ok(())
}

/// Live specs of `cluster` applied from inventory `id` whose names are not in `keep` (and
/// that carry every label of `selector`, when given).
pub async fn prune_candidates(
    conn: &mut PgConnection,
    cluster: &str,
    id: &str,
    keep: &BTreeSet<String>,
    selector: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(String, bool)>> {
    set_cluster(conn, cluster).await?;
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT name, enabled FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND applied_by_inventory = $2 AND deleted_at IS NULL AND NOT (name = ANY ($3))
           AND labels @> $4
         ORDER BY name FOR UPDATE",
    )
    .bind(cluster)
    .bind(id)
    .bind(&keep)
    .bind(Json(selector.cloned().unwrap_or_default()))
    .fetch_all(conn)
    .await
    .ctx(|| format!("find what inventory {id:?} of cluster {cluster} no longer has"))?;
    Ok(rows)
}

/// Deletes a spec the way `owsyncctl delete` does (a tombstone: the controller stops
/// syncing the tenant, the mirror is kept).
pub async fn prune(conn: &mut PgConnection, cluster: &str, name: &str) -> Result<()> {
    set_cluster(conn, cluster).await?;
    sqlx::query(
        "UPDATE sync_metadata.client_specs SET deleted_at = now(), enabled = false, updated_at = now()
         WHERE cluster_name = $1 AND name = $2 AND deleted_at IS NULL",
    )
    .bind(cluster)
    .bind(name)
    .execute(&mut *conn)
    .await
    .ctx(|| format!("prune clientsync/{name} of cluster {cluster}"))?;
    sqlx::query("SELECT pg_notify('owsync_specs', $1)")
        .bind(cluster)
        .execute(conn)
        .await
        .ctx(|| "notify owsync_specs".into())?;
    Ok(())
}

/// Rewrites the inventory record of `cluster`/`id` with the live specs it owns now.
pub async fn record(conn: &mut PgConnection, cluster: &str, id: &str) -> Result<Vec<String>> {
    set_cluster(conn, cluster).await?;
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND applied_by_inventory = $2 AND deleted_at IS NULL ORDER BY name",
    )
    .bind(cluster)
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .ctx(|| format!("list the members of inventory {id:?} of cluster {cluster}"))?;
    sqlx::query(
        "INSERT INTO sync_metadata.inventories (cluster_name, id, members, applied_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (cluster_name, id) DO UPDATE SET members = EXCLUDED.members, applied_at = now()",
    )
    .bind(cluster)
    .bind(id)
    .bind(&members)
    .execute(conn)
    .await
    .ctx(|| format!("record inventory {id:?} of cluster {cluster}"))?;
    Ok(members)
}
