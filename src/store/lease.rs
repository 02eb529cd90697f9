//! The leader lease in `sync_metadata.leader_election`: one row per cluster, taken with
//! the seed's `INSERT ... ON CONFLICT ... WHERE expires_at < now() OR holder = me`, plus
//! an `epoch` that grows on every change of holder (the fencing token), and the holder's
//! backend pid so a standby can take over as soon as a dead leader's session is gone.
//! All times are the database's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::specs::set_cluster;
use super::{Context, Result};

/// Who holds a cluster's lease.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseInfo {
    pub leader_id: String,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired: bool,
}

/// This replica's identity in elections: its node id and a per-process instance id (a
/// restarted process is a new holder, so the epoch grows even under the same node id).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub cluster: String,
    pub node_id: String,
    pub instance: Uuid,
}

/// What one lease round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The epoch this candidate holds the lease at.
    pub epoch: i64,
    /// The instance that held the lease before, when this round took it over from another
    /// replica.
    pub took_over_from: Option<Uuid>,
    /// How many sessions of that former holder this round ended (see [`try_acquire`]).
    pub sessions_ended: i64,
}

/// The `application_name` of a replica's sessions: carries a tag of its instance, so a
/// new leader can find (and end) the sessions of the replica it took the lease from.
pub fn application_name(node_id: &str, instance: Uuid) -> String {
    let mut s = format!("owsyncd/{}/{node_id}", instance_tag(instance));
    // PostgreSQL keeps 63 bytes; cut on a character boundary.
    while s.len() > 63 {
        s.pop();
    }
    s
}

fn instance_tag(instance: Uuid) -> String {
    instance.simple().to_string()[..12].to_string()
}

/// Takes or renews the lease on `conn` (whose backend pid is recorded as the holder's).
///
/// `renewing` is the epoch of the term this candidate is leading in, if any. The epoch
/// stays the same only for an on-time renewal of that very term; every new term (another
/// holder, this replica again after stepping down, or a renewal that came after expiry)
/// gets a greater epoch, so fenced writes of an earlier term can never commit.
///
/// Before taking over from another replica whose lease has lapsed (or whose lease
/// session is gone) while it did not release it, this ends that replica's remaining
/// sessions (`pg_terminate_backend` works on one's own role's sessions; they are found by
/// the instance tag in their `application_name`): a frozen or cut-off former leader must
/// not keep row locks that block the new one (or hold the lease row's share lock of a
/// fence between its check and its commit), and whatever it had in flight rolls back now.
///
/// Returns `None` when another replica holds the lease.
pub async fn try_acquire(
    conn: &mut PgConnection,
    who: &Candidate,
    lease: Duration,
    renewing: Option<i64>,
) -> Result<Option<Acquired>> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.ctx(|| "begin lease transaction".into())?;
    set_cluster(&mut tx, &who.cluster).await?;
    // A plain read: it does not wait for locks on the row.
    let stale: Option<Uuid> = sqlx::query_scalar(
        "SELECT holder_instance FROM sync_metadata.leader_election le
         WHERE cluster_name = $1 AND holder_instance IS DISTINCT FROM $2 AND holder_pid IS NOT NULL
           AND (expires_at < now() OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = le.holder_pid))",
    )
    .bind(&who.cluster)
    .bind(who.instance)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("read the lease of cluster {}", who.cluster))?
    .flatten();
    let sessions_ended = match stale {
        Some(prev) => terminate_sessions(&mut tx, prev).await?,
        None => 0,
    };
    let row = sqlx::query(
        "WITH prev AS (SELECT holder_instance FROM sync_metadata.leader_election WHERE cluster_name = $1)
         INSERT INTO sync_metadata.leader_election AS le
             (cluster_name, leader_id, holder_instance, holder_pid, epoch, acquired_at, renewed_at, expires_at)
         VALUES ($1, $2, $3, pg_backend_pid(), 1, now(), now(), now() + make_interval(secs => $4))
         ON CONFLICT (cluster_name) DO UPDATE SET
             leader_id = EXCLUDED.leader_id,
             holder_pid = EXCLUDED.holder_pid,
             epoch = CASE WHEN le.holder_instance = EXCLUDED.holder_instance AND le.epoch = $5
                               AND le.expires_at >= now()
                          THEN le.epoch ELSE le.epoch + 1 END,
             acquired_at = CASE WHEN le.holder_instance = EXCLUDED.holder_instance AND le.epoch = $5
                                     AND le.expires_at >= now()
                                THEN le.acquired_at ELSE now() END,
             holder_instance = EXCLUDED.holder_instance,
             renewed_at = now(),
             expires_at = EXCLUDED.expires_at
         WHERE le.holder_instance = EXCLUDED.holder_instance
            OR le.expires_at < now()
            OR (le.holder_pid IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = le.holder_pid))
         RETURNING epoch, (SELECT holder_instance FROM prev)",
    )
    .bind(&who.cluster)
    .bind(&who.node_id)
    .bind(who.instance)
    .bind(lease.as_secs_f64())
    .bind(renewing)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("take or renew the lease of cluster {}", who.cluster))?;
    tx.commit().await.ctx(|| "commit lease".into())?;
    Ok(row.map(|r| {
        let prev: Option<Uuid> = r.get(1);
        Acquired { epoch: r.get(0), took_over_from: prev.filter(|p| *p != who.instance), sessions_ended }
    }))
}

/// Ends the sessions of a replica instance that lost the lease. Returns how many.
pub async fn terminate_sessions(conn: &mut PgConnection, instance: Uuid) -> Result<i64> {
    let pattern = format!("owsyncd/{}/%", instance_tag(instance));
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
         FROM pg_stat_activity
         WHERE application_name LIKE $1 AND pid <> pg_backend_pid() AND usename = current_user",
    )
    .bind(pattern)
    .fetch_one(conn)
    .await
    .ctx(|| "end the sessions of the former leader".into())
}

/// Gives the lease up at once (clean shutdown), so a standby need not wait for expiry.
pub async fn release(conn: &mut PgConnection, who: &Candidate) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.ctx(|| "begin".into())?;
    set_cluster(&mut tx, &who.cluster).await?;
    sqlx::query(
        "UPDATE sync_metadata.leader_election SET expires_at = now() - interval '1 second', holder_pid = NULL
         WHERE cluster_name = $1 AND holder_instance = $2",
    )
    .bind(&who.cluster)
    .bind(who.instance)
    .execute(&mut *tx)
    .await
    .ctx(|| "release the lease".into())?;
    sqlx::query("SELECT pg_notify('owsync_lease', $1)")
        .bind(&who.cluster)
        .execute(&mut *tx)
        .await
        .ctx(|| "notify owsync_lease".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(())
}

/// The fence: inside a write transaction, checks under a row lock that `who` still
/// holds the lease at `epoch`. A takeover that committed earlier makes this false; one
/// that comes later waits for this transaction to end.
pub async fn holds(conn: &mut PgConnection, who: &Candidate, epoch: i64) -> Result<bool> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM sync_metadata.leader_election
         WHERE cluster_name = $1 AND holder_instance = $2 AND epoch = $3 AND expires_at > now()
         FOR SHARE",
    )
    .bind(&who.cluster)
    .bind(who.instance)
    .bind(epoch)
    .fetch_optional(conn)
    .await
    .ctx(|| "check the lease (fence)".into())?;
    Ok(held.is_some())
}

/// The current holder of a cluster's lease, if any.
pub async fn current(pool: &PgPool, cluster: &str) -> Result<Option<LeaseInfo>> {
    let mut conn = pool.acquire().await.ctx(|| "connect".into())?;
    current_on(&mut conn, cluster).await
}

/// [`current`] on a connection the caller holds (owsyncd's control session).
pub async fn current_on(conn: &mut PgConnection, cluster: &str) -> Result<Option<LeaseInfo>> {
    let mut tx = super::begin_on(conn, cluster, super::Durability::Synchronous).await?;
    let row = sqlx::query(
        "SELECT leader_id, epoch, acquired_at, renewed_at, expires_at, expires_at < now() AS expired
         FROM sync_metadata.leader_election WHERE cluster_name = $1",
    )
    .bind(cluster)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| format!("read the lease of cluster {cluster}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(row.map(|r| LeaseInfo {
        leader_id: r.get(0),
        epoch: r.get(1),
        acquired_at: r.get(2),
        renewed_at: r.get(3),
        expires_at: r.get(4),
        expired: r.get(5),
    }))
}

/// Records this replica's heartbeat in `hosts`.
pub async fn heartbeat(pool: &PgPool, who: &Candidate, is_leader: bool, version: &str) -> Result<()> {
    let mut conn = pool.acquire().await.ctx(|| "connect".into())?;
    heartbeat_on(&mut conn, who, is_leader, version).await
}

/// [`heartbeat`] on a connection the caller holds (owsyncd's control session).
pub async fn heartbeat_on(conn: &mut PgConnection, who: &Candidate, is_leader: bool, version: &str) -> Result<()> {
    let mut tx = super::begin_on(conn, &who.cluster, super::Durability::Synchronous).await?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string());
    sqlx::query(
        "INSERT INTO sync_metadata.hosts (cluster_name, node_id, hostname, version, status, is_leader, last_heartbeat)
         VALUES ($1, $2, $3, $4, 'active', $5, now())
         ON CONFLICT (cluster_name, node_id) DO UPDATE SET hostname = EXCLUDED.hostname, version = EXCLUDED.version,
             status = 'active', is_leader = EXCLUDED.is_leader, last_heartbeat = now()",
    )
    .bind(&who.cluster)
    .bind(&who.node_id)
    .bind(hostname)
    .bind(version)
    .bind(is_leader)
    .execute(&mut *tx)
    .await
    .ctx(|| "record heartbeat".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(())
}
