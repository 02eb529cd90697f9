//! Admin operations on a whole cluster (a host's owsyncd pair) or on one tenant's
//! ownership: the census of a cluster's rows in `sync_metadata`, deregistration (release
//! the lease, remove every row, retire the name), marking dead hosts offline, and moving
//! a tenant to another cluster. Deregistration and moves need an admin role (they DELETE
//! and see every cluster); `prune_stale` also works as `sync_service` for its own cluster.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use super::{Context, StoreError};
use crate::sql::qualified;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation would lose or orphan something; the message says what to do.
    #[error("cluster {cluster}: {message}")]
    Refused { cluster: String, message: String },
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// How many rows of one `sync_metadata` table belong to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCount {
    pub table: String,
    pub rows: i64,
}

/// A replica's host record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostRow {
    pub cluster: String,
    pub node_id: String,
    pub hostname: String,
    pub status: String,
    pub is_leader: bool,
    pub last_heartbeat: DateTime<Utc>,
    pub age_secs: f64,
}

/// A tenant as deregistration sees it (live, disabled or deleted).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantRow {
    pub name: String,
    pub enabled: bool,
    pub deleted: bool,
    pub schema: String,
    pub phase: String,
}

/// Every `sync_metadata` table that keys rows by `cluster_name` (found in the catalog, so
/// tables added by later migrations are covered), except `retired_clusters` itself.
pub async fn cluster_tables(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'sync_metadata' AND c.column_name = 'cluster_name'
           AND t.table_type = 'BASE TABLE' AND c.table_name <> 'retired_clusters'
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .ctx(|| "list the tables of sync_metadata".into())?)
}

/// The rows a cluster has in each table (zero counts included).
pub async fn census(conn: &mut PgConnection, cluster: &str) -> Result<Vec<TableCount>> {
    let mut out = Vec::new();
    for table in cluster_tables(conn).await? {
        let q = format!("SELECT count(*) FROM {} WHERE cluster_name = $1", qualified("sync_metadata", &table));
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
            .bind(cluster)
            .fetch_one(&mut *conn)
            .await
            .ctx(|| format!("count the rows of cluster {cluster} in sync_metadata.{table}"))?;
        out.push(TableCount { table, rows });
    }
    Ok(out)
}

fn host_from(r: &sqlx::postgres::PgRow) -> HostRow {
    HostRow {
        cluster: r.get(0),
        node_id: r.get(1),
        hostname: r.get(2),
        status: r.get(3),
        is_leader: r.get(4),
        last_heartbeat: r.get(5),
        age_secs: r.get(6),
    }
}

const HOST_COLUMNS: &str = "cluster_name, node_id, coalesce(hostname, ''), status, is_leader, last_heartbeat,
    extract(epoch FROM now() - last_heartbeat)::float8";

/// A cluster's host records, by node id.
pub async fn hosts(conn: &mut PgConnection, cluster: &str) -> Result<Vec<HostRow>> {
    let q = format!("SELECT {HOST_COLUMNS} FROM sync_metadata.hosts WHERE cluster_name = $1 ORDER BY node_id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(cluster)
        .fetch_all(conn)
        .await
        .ctx(|| format!("read the hosts of cluster {cluster}"))?;
    Ok(rows.iter().map(host_from).collect())
}

/// Every spec row of a cluster, deleted ones included, with its phase.
pub async fn tenants(conn: &mut PgConnection, cluster: &str) -> Result<Vec<TenantRow>> {
    let rows = sqlx::query(
        "SELECT s.name, s.enabled, s.deleted_at IS NOT NULL, coalesce(s.spec #>> '{target,schema}', ''),
                coalesce(st.phase, '')
         FROM sync_metadata.client_specs s
         LEFT JOIN sync_metadata.client_status st ON st.cluster_name = s.cluster_name AND st.name = s.name
         WHERE s.cluster_name = $1 ORDER BY s.name",
    )
    .bind(cluster)
    .fetch_all(conn)
    .await
    .ctx(|| format!("read the tenants of cluster {cluster}"))?;
    Ok(rows
        .iter()
        .map(|r| TenantRow { name: r.get(0), enabled: r.get(1), deleted: r.get(2), schema: r.get(3), phase: r.get(4) })
        .collect())
}

/// When and at which lease epoch a cluster was deregistered, if it was.
pub async fn retired(conn: &mut PgConnection, cluster: &str) -> Result<Option<(DateTime<Utc>, Option<i64>)>> {
    let row = sqlx::query("SELECT retired_at, final_epoch FROM sync_metadata.retired_clusters WHERE cluster_name = $1")
        .bind(cluster)
        .fetch_optional(conn)
        .await
        .ctx(|| format!("read the retirement of cluster {cluster}"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// What a deregistration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deregistered {
    /// The lease epoch before and after the release, when the cluster had a lease row.
    pub epoch: Option<(i64, i64)>,
    pub removed: Vec<TableCount>,
}

/// Deregisters a cluster in one transaction: refuses if any tenant has sync enabled (checked
/// again here, under row locks), bumps the lease epoch and expires it (this waits for any
/// fenced write transaction in flight, and no fence of an earlier epoch can pass again),
/// deletes every row of the cluster from every `sync_metadata` table, and records the name
/// in `retired_clusters` so a replica still running cannot re-create its host or lease
/// rows. Mirror data (`client_*` schemas) is not touched.
pub async fn deregister(pool: &PgPool, cluster: &str) -> Result<Deregistered> {
    let ctx = |what: &str| format!("deregister cluster {cluster}: {what}");
    let mut tx = pool.begin().await.ctx(|| ctx("begin"))?;
    sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *tx).await.ctx(|| ctx("set lock_timeout"))?;
    // The retirement trigger on these tables checks `retired_clusters` BEFORE a row is
    // written, and a still-running replica's upsert of its lease or host row that passed that
    // check while this transaction was open would then re-create the row just deleted. This
    // lock makes such writes wait for the commit; their check then sees the retirement. It
    // blocks other clusters' heartbeats and lease renewals for the duration of this
    // transaction (a second or two, well inside the renew deadline).
    sqlx::query(
        "LOCK TABLE sync_metadata.hosts, sync_metadata.leader_election, sync_metadata.client_specs
         IN SHARE ROW EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await
    .ctx(|| ctx("lock the host, lease and spec tables"))?;
    let enabled: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND deleted_at IS NULL AND enabled ORDER BY name FOR UPDATE",
    )
    .bind(cluster)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| ctx("lock the specs"))?;
    if !enabled.is_empty() {
        return Err(ClusterError::Refused {
            cluster: cluster.into(),
            message: format!("tenants with sync enabled: {}", enabled.join(", ")),
        });
    }
    let epoch: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE sync_metadata.leader_election
         SET epoch = epoch + 1, expires_at = now() - interval '1 second', holder_pid = NULL
         WHERE cluster_name = $1 RETURNING epoch - 1, epoch",
    )
    .bind(cluster)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| ctx("release the lease"))?;
    let mut removed = Vec::new();
    for table in cluster_tables(&mut tx).await? {
        let q = format!("DELETE FROM {} WHERE cluster_name = $1", qualified("sync_metadata", &table));
        let n = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(cluster)
            .execute(&mut *tx)
            .await
            .ctx(|| ctx(&format!("delete from sync_metadata.{table}")))?
            .rows_affected();
        removed.push(TableCount { table, rows: n as i64 });
    }
    sqlx::query(
        "INSERT INTO sync_metadata.retired_clusters (cluster_name, final_epoch) VALUES ($1, $2)
         ON CONFLICT (cluster_name) DO UPDATE SET final_epoch = EXCLUDED.final_epoch, retired_at = now(),
             retired_by = current_user",
    )
    .bind(cluster)
    .bind(epoch.map(|e| e.1))
    .execute(&mut *tx)
    .await
    .ctx(|| ctx("record the retirement"))?;
    for channel in ["owsync_lease", "owsync_specs"] {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(cluster)
            .execute(&mut *tx)
            .await
            .ctx(|| ctx("notify"))?;
    }
    tx.commit().await.ctx(|| ctx("commit"))?;
    Ok(Deregistered { epoch, removed })
}

/// Forgets a cluster's retirement, so a new deployment may use the name again. Returns
/// whether it was retired.
pub async fn reinstate(pool: &PgPool, cluster: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM sync_metadata.retired_clusters WHERE cluster_name = $1")
        .bind(cluster)
        .execute(pool)
        .await
        .ctx(|| format!("reinstate cluster {cluster}"))?
        .rows_affected();
    Ok(n > 0)
}

/// Marks `offline` (and not leader) every host whose heartbeat is older than
/// `older_than_secs`, of one cluster (under row-level security, as `sync_service` can) or
/// of every cluster (`None`; needs a role that sees them all). `dry_run` only lists them.
/// A replica that is in fact alive marks itself `active` again at its next heartbeat.
pub async fn prune_stale(
    pool: &PgPool,
    cluster: Option<&str>,
    older_than_secs: f64,
    dry_run: bool,
) -> Result<Vec<HostRow>> {
    let mut tx = match cluster {
        Some(c) => super::begin(pool, c).await?,
        None => pool.begin().await.ctx(|| "begin".into())?,
    };
    let q = format!(
        "SELECT {HOST_COLUMNS} FROM sync_metadata.hosts
         WHERE ($1::text IS NULL OR cluster_name = $1) AND status <> 'offline'
           AND last_heartbeat < now() - make_interval(secs => $2)
         ORDER BY cluster_name, node_id FOR UPDATE"
    );
    let stale: Vec<HostRow> = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(cluster)
        .bind(older_than_secs)
        .fetch_all(&mut *tx)
        .await
        .ctx(|| "find hosts with stale heartbeats".into())?
        .iter()
        .map(host_from)
        .collect();
    if !dry_run {
        for h in &stale {
            sqlx::query(
                "UPDATE sync_metadata.hosts SET status = 'offline', is_leader = false
                 WHERE cluster_name = $1 AND node_id = $2",
            )
            .bind(&h.cluster)
            .bind(&h.node_id)
            .execute(&mut *tx)
            .await
            .ctx(|| format!("mark host {}/{} offline", h.cluster, h.node_id))?;
        }
    }
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(stale)
}

/// What a move did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moved {
    pub schema: String,
    pub enabled: bool,
    /// The source cluster's lease epoch before and after the move, if it had a lease.
    pub epoch: Option<(i64, i64)>,
    pub moved: Vec<TableCount>,
}

/// Moves tenant `name` from cluster `from` to `to` in one transaction: its spec, status,
/// watermarks (`table_state`), quarantine, conflicts, jobs, requests and events, i.e. every
/// `sync_metadata` row keyed by the tenant. Refuses when `to` already has a tenant (or a
/// deleted tenant's rows) of that name, or another tenant with its target schema. Bumps
/// the source cluster's lease epoch, so no sync of the tenant in flight there can commit
/// afterwards (its leader starts a new term at its next renewal). The mirror is untouched.
/// `source_path`: the tenant's `spec.source.path` on the new cluster's hosts (a new
/// generation), when it differs there.
pub async fn move_tenant(pool: &PgPool, from: &str, name: &str, to: &str, source_path: Option<&str>) -> Result<Moved> {
    let refused = |message: String| ClusterError::Refused { cluster: from.into(), message };
    if from == to {
        return Err(refused(format!("clientsync/{name} is already in cluster {to}")));
    }
    let ctx = |what: &str| format!("move clientsync/{name} from cluster {from} to {to}: {what}");
    let mut tx = pool.begin().await.ctx(|| ctx("begin"))?;
    sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *tx).await.ctx(|| ctx("set lock_timeout"))?;
    let epoch: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE sync_metadata.leader_election SET epoch = epoch + 1
         WHERE cluster_name = $1 RETURNING epoch - 1, epoch",
    )
    .bind(from)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| ctx("fence the source cluster's lease"))?;
    let row = sqlx::query(
        "SELECT coalesce(spec #>> '{target,schema}', ''), enabled FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND name = $2 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(from)
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| ctx("read the spec"))?;
    let Some(row) = row else {
        return Err(StoreError::NotFound { cluster: from.into(), name: name.into() }.into());
    };
    let (schema, enabled): (String, bool) = (row.get(0), row.get(1));
    let taken: Option<(String, bool)> = sqlx::query_as(
        "SELECT name, deleted_at IS NOT NULL FROM sync_metadata.client_specs
         WHERE cluster_name = $1 AND (name = $2 OR spec #>> '{target,schema}' = $3) LIMIT 1",
    )
    .bind(to)
    .bind(name)
    .bind(&schema)
    .fetch_optional(&mut *tx)
    .await
    .ctx(|| ctx("look for a tenant of that name or schema in the target cluster"))?;
    if let Some((other, deleted)) = taken {
        let what = if other == name { "a tenant of that name".to_string() } else { format!("clientsync/{other}") };
        return Err(refused(format!(
            "cluster {to} already has {what}{} (name {name:?} or target schema {schema:?}); \
             give the tenant another name or schema there, or remove that one first",
            if deleted { " (deleted; its rows are kept)" } else { "" }
        )));
    }
    let m = Move { from, to, name };
    let keyed = keyed_tables(&mut tx, &m).await?;
    refuse_leftovers(&mut tx, &m, &keyed).await?;
    let moved = move_rows(&mut tx, &m, &keyed).await?;
    settle_spec(&mut tx, &m, source_path).await?;
    tx.commit().await.ctx(|| ctx("commit"))?;
    Ok(Moved { schema, enabled, epoch, moved })
}

/// One tenant's move, for the steps of [`move_tenant`].
struct Move<'a> {
    from: &'a str,
    to: &'a str,
    name: &'a str,
}

impl Move<'_> {
    fn ctx(&self, what: &str) -> String {
        format!("move clientsync/{} from cluster {} to {}: {what}", self.name, self.from, self.to)
    }
}

/// Every `sync_metadata` table keyed by a tenant, with its tenant column.
async fn keyed_tables(c: &mut PgConnection, m: &Move<'_>) -> Result<Vec<(String, &'static str)>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'sync_metadata' AND c.column_name = 'client_name' AND t.table_type = 'BASE TABLE'
         ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    .ctx(|| m.ctx("list the tables of sync_metadata"))?;
    let mut keyed: Vec<(String, &str)> = vec![("client_specs".into(), "name"), ("client_status".into(), "name")];
    keyed.extend(tables.into_iter().map(|t| (t, "client_name")));
    Ok(keyed)
}

/// Refuses when the target cluster already holds rows of a tenant of that name.
async fn refuse_leftovers(c: &mut PgConnection, m: &Move<'_>, keyed: &[(String, &str)]) -> Result<()> {
    let (to, name) = (m.to, m.name);
    for (table, column) in keyed {
        let q = format!(
            "SELECT count(*) FROM {} WHERE cluster_name = $1 AND {} = $2",
            qualified("sync_metadata", table),
            crate::sql::quote_ident(column)
        );
        let leftovers: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
            .bind(to)
            .bind(name)
            .fetch_one(&mut *c)
            .await
            .ctx(|| m.ctx(&format!("look for rows of {name} in sync_metadata.{table}")))?;
        if leftovers > 0 {
            return Err(ClusterError::Refused {
                cluster: m.from.into(),
                message: format!(
                    "cluster {to} already has {leftovers} row(s) of a tenant named {name} in sync_metadata.{table}; \
                     remove them first (as admin) or give the tenant another name"
                ),
            });
        }
    }
    Ok(())
}

/// Moves the tenant's rows of every keyed table; how many each.
async fn move_rows(c: &mut PgConnection, m: &Move<'_>, keyed: &[(String, &str)]) -> Result<Vec<TableCount>> {
    let mut moved = Vec::new();
    for (table, column) in keyed {
        let q = format!(
            "UPDATE {} SET cluster_name = $3 WHERE cluster_name = $1 AND {} = $2",
            qualified("sync_metadata", table),
            crate::sql::quote_ident(column)
        );
        let n = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(m.from)
            .bind(m.name)
            .bind(m.to)
            .execute(&mut *c)
            .await
            .ctx(|| m.ctx(&format!("move the rows of sync_metadata.{table}")))?
            .rows_affected();
        moved.push(TableCount { table: table.clone(), rows: n as i64 });
    }
    Ok(moved)
}

/// The moved spec: no inventory of the old cluster, the new source path if given, and
/// both clusters' leaders woken.
async fn settle_spec(c: &mut PgConnection, m: &Move<'_>, source_path: Option<&str>) -> Result<()> {
    // An inventory of the old cluster must not prune it in the new one.
    sqlx::query(
        "UPDATE sync_metadata.client_specs SET applied_by_inventory = NULL, updated_at = now()
         WHERE cluster_name = $1 AND name = $2",
    )
    .bind(m.to)
    .bind(m.name)
    .execute(&mut *c)
    .await
    .ctx(|| m.ctx("clear the inventory"))?;
    if let Some(path) = source_path {
        sqlx::query(
            "UPDATE sync_metadata.client_specs
             SET spec = jsonb_set(spec, '{source,path}', to_jsonb($3::text)), updated_at = now(),
                 generation = generation + CASE WHEN spec #>> '{source,path}' = $3 THEN 0 ELSE 1 END
             WHERE cluster_name = $1 AND name = $2",
        )
        .bind(m.to)
        .bind(m.name)
        .bind(path)
        .execute(&mut *c)
        .await
        .ctx(|| m.ctx("set spec.source.path"))?;
    }
    for cluster in [m.from, m.to] {
        sqlx::query("SELECT pg_notify('owsync_specs', $1)")
            .bind(cluster)
            .execute(&mut *c)
            .await
            .ctx(|| m.ctx("notify"))?;
    }
    Ok(())
}
