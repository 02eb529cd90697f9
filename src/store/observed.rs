//! Observed facts that `owsyncctl` and the controller report but that no status row
//! holds: the quarantined values of each mirrored table, every tenant's last successful
//! sync (the leader's lag gauges start from it), and which replica leads according to
//! the lease (not according to each replica's own heartbeat, which a dead replica never
//! corrects).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tracing::warn;

use super::{Context, Result};
use crate::spec::TableStatus;

/// Open (unresolved) quarantine entries of a tenant, by table.
pub async fn quarantined(pool: &PgPool, cluster: &str, client: &str) -> Result<BTreeMap<String, i64>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, count(*) FROM sync_metadata.quarantine
         WHERE cluster_name = $1 AND client_name = $2 AND resolved_at IS NULL GROUP BY table_name",
    )
    .bind(cluster)
    .bind(client)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("count the quarantined values of clientsync/{client}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sets `quarantined` of each table in `tables` to its open quarantine entries. Best
/// effort: when they cannot be counted, the tables keep their counts and a warning says why.
pub async fn with_quarantined(pool: &PgPool, cluster: &str, client: &str, tables: &mut BTreeMap<String, TableStatus>) {
    match quarantined(pool, cluster, client).await {
        Ok(counts) => {
            for (name, t) in tables.iter_mut() {
                t.quarantined = counts.get(name).copied().unwrap_or(0);
            }
        }
        Err(e) => warn!(client, error = %e, "cannot count quarantined values"),
    }
}

/// When each tenant of a cluster last synced successfully (tenants that never did are absent).
pub async fn last_syncs(pool: &PgPool, cluster: &str) -> Result<HashMap<String, DateTime<Utc>>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT name, last_sync_time FROM sync_metadata.client_status
         WHERE cluster_name = $1 AND last_sync_time IS NOT NULL",
    )
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the last syncs of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A cluster's lease as `cluster status` shows it.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub leader_id: String,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired: bool,
    /// The holder's lease session is still connected (or not recorded).
    pub holder_alive: bool,
    /// How long a renewal makes the lease last (expires_at - renewed_at).
    pub duration_secs: f64,
}

impl LeaseView {
    /// Whether the holder leads now: an unexpired lease whose session is connected.
    pub fn held(&self) -> bool {
        !self.expired && self.holder_alive
    }
}

/// A replica of a cluster, its role taken from the lease.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    pub node_id: String,
    pub hostname: String,
    pub version: String,
    /// `hosts.status`: `active`, or `offline` (deregistered, pruned).
    pub status: String,
    pub last_heartbeat: DateTime<Utc>,
    pub heartbeat_age_secs: f64,
    /// It holds the lease (see [`LeaseView::held`]); at most one replica does.
    pub leading: bool,
    /// No heartbeat for longer than the lease lasts: probably dead or cut off.
    pub stale: bool,
}

/// What `cluster status` reports: the lease, the replicas, and whether the cluster is
/// known at all (any replica, lease, ClientSync, event or retirement record).
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub lease: Option<LeaseView>,
    pub replicas: Vec<ReplicaView>,
    /// It has a ClientSync or an event (e.g. its reinstatement).
    pub has_records: bool,
}

/// Lease duration assumed when no lease row says it (owsyncd's default).
const DEFAULT_LEASE_SECS: f64 = 15.0;

/// Reads a cluster's lease and replicas in one transaction (one snapshot).
pub async fn cluster_view(pool: &PgPool, cluster: &str) -> Result<ClusterView> {
    let mut tx = super::begin(pool, cluster).await?;
    let lease = sqlx::query(
        "SELECT leader_id, epoch, acquired_at, renewed_at, expires_at, expires_at < now(),
                holder_pid IS NULL OR EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = le.holder_pid),
                extract(epoch FROM expires_at - renewed_at)::float8
         FROM sync_metadata.leader_election le WHERE cluster_name = $1",
    )
    .bind(cluster)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("read the lease of cluster {cluster}"))?
    .map(|r| LeaseView {
        leader_id: r.get(0),
        epoch: r.get(1),
        acquired_at: r.get(2),
        renewed_at: r.get(3),
        expires_at: r.get(4),
        expired: r.get(5),
        holder_alive: r.get(6),
        duration_secs: r.get(7),
    });
    let rows = sqlx::query(
        "SELECT node_id, coalesce(hostname, ''), coalesce(version, ''), status, last_heartbeat,
                extract(epoch FROM now() - last_heartbeat)::float8
         FROM sync_metadata.hosts WHERE cluster_name = $1 ORDER BY node_id",
    )
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the replicas of cluster {cluster}"))?;
    let has_records: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sync_metadata.client_specs WHERE cluster_name = $1)
             OR EXISTS (SELECT 1 FROM sync_metadata.events WHERE cluster_name = $1)",
    )
    .bind(cluster)
    .fetch_one(&mut *tx)
    .await
    .ctx(|| format!("read the ClientSyncs and events of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    let stale_after = lease.as_ref().map_or(DEFAULT_LEASE_SECS, |l| l.duration_secs.max(1.0));
    let leader = lease.as_ref().filter(|l| l.held()).map(|l| l.leader_id.clone());
    let replicas = rows
        .iter()
        .map(|r| {
            let node_id: String = r.get(0);
            let age: f64 = r.get(5);
            ReplicaView {
                leading: leader.as_deref() == Some(node_id.as_str()),
                node_id,
                hostname: r.get(1),
                version: r.get(2),
                status: r.get(3),
                last_heartbeat: r.get(4),
                heartbeat_age_secs: age,
                stale: age > stale_after,
            }
        })
        .collect();
    Ok(ClusterView { lease, replicas, has_records })
}
