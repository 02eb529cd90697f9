//! One login role per host cluster (migration 0015): `owsyncctl cluster add-role`.
//!
//! A cluster role is a member of the group `owsync_cluster` (which holds sync_service's
//! grants on `sync_metadata`) and is bound to exactly one cluster by a row of
//! `sync_metadata.cluster_roles`, which only the admin writes. Row-level security keys its
//! rows by that binding (the session's login role), never by a setting the session
//! chooses; its cluster's mirror schemas are granted to it, and to no other cluster's role.

use sqlx::{PgPool, Row};

use super::migrate::scram_verifier;
use super::{Context, Result, StoreError};
use crate::spec::is_dns_label;
use crate::sql::quote_ident;

/// The group role every cluster role belongs to (created by migration 0015).
pub const GROUP_ROLE: &str = "owsync_cluster";

/// The login role of a cluster: `owsync_` + the cluster with `-` turned into `_` (so it
/// needs no quoting in psql or in a pooler's `role.project-ref` user name); a name longer
/// than PostgreSQL's 63 bytes keeps 54 and ends with 8 hex digits of the cluster's hash.
pub fn role_name(cluster: &str) -> String {
    use sha2::Digest;
    let name = format!("owsync_{}", cluster.replace('-', "_"));
    if name.len() <= 63 {
        return name;
    }
    let hash: String = sha2::Sha256::digest(cluster.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}_{hash}", &name[..54])
}

/// What `add_role` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedRole {
    pub role: String,
    /// The role was created (else an existing owsync cluster role was bound or re-keyed).
    pub created: bool,
    /// The mapping row was new.
    pub bound: bool,
    /// Mirror schemas of the cluster now granted to the role.
    pub mirrors: i32,
}

/// Who a role is, as far as cluster roles go.
struct Found {
    exists: bool,
    member: bool,
    bound_to: Option<String>,
}

async fn find(conn: &mut sqlx::PgConnection, role: &str) -> Result<Found> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
                EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                        JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $2 AND u.rolname = $1),
                (SELECT cluster_name FROM sync_metadata.cluster_roles WHERE role_name = $1)",
    )
    .bind(role)
    .bind(GROUP_ROLE)
    .fetch_one(&mut *conn)
    .await
    .ctx(|| format!("look up role {role}"))?;
    Ok(Found { exists: row.get(0), member: row.get(1), bound_to: row.get(2) })
}

/// Creates (or re-keys) the login role of `cluster` with `password`, binds it to the
/// cluster and grants it the cluster's existing mirrors, in one transaction, as admin.
/// Refuses a role name that belongs to another cluster or to something other than owsync.
pub async fn add_role(pool: &PgPool, cluster: &str, password: &str) -> Result<AddedRole> {
    if !is_dns_label(cluster) {
        return Err(StoreError::Invalid(format!("cluster {cluster:?} is not a DNS-1123 label")));
    }
    let role = role_name(cluster);
    let ident = quote_ident(&role);
    let mut tx = pool.begin().await.ctx(|| "begin".into())?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('owsync.cluster_roles'))")
        .execute(&mut *tx)
        .await
        .ctx(|| "take the cluster roles lock".into())?;
    let found = find(&mut tx, &role).await?;
    if let Some(other) = found.bound_to.as_deref().filter(|c| *c != cluster) {
        return Err(StoreError::Invalid(format!(
            "role {role} is already bound to cluster {other}; nothing was changed"
        )));
    }
    if found.exists && !found.member {
        return Err(StoreError::Invalid(format!(
            "a role named {role} exists and is not an owsync cluster role (not a member of {GROUP_ROLE}); \
             nothing was changed"
        )));
    }
    if !found.exists {
        let create = format!("CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut *tx)
            .await
            .ctx(|| format!("create role {role} (the admin role needs CREATEROLE)"))?;
        let grant = format!("GRANT {} TO {ident}", quote_ident(GROUP_ROLE));
        sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
            .execute(&mut *tx)
            .await
            .ctx(|| format!("make {role} a member of {GROUP_ROLE}"))?;
    }
    let verifier = scram_verifier(password);
    // The verifier is base64 plus `$:`; nothing in it needs escaping, and the password
    // itself never reaches the server (or its statement log).
    debug_assert!(verifier.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=$:-".contains(&c)));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE {ident} PASSWORD '{verifier}'")))
        .execute(&mut *tx)
        .await
        .ctx(|| format!("set the password of {role}"))?;
    let bound = sqlx::query(
        "INSERT INTO sync_metadata.cluster_roles (role_name, cluster_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&role)
    .bind(cluster)
    .execute(&mut *tx)
    .await
    .ctx(|| format!("bind {role} to cluster {cluster}"))?
    .rows_affected()
        == 1;
    let mirrors: i32 = sqlx::query_scalar("SELECT sync_metadata.grant_cluster_mirrors($1)")
        .bind(cluster)
        .fetch_one(&mut *tx)
        .await
        .ctx(|| format!("grant the mirrors of cluster {cluster} to {role}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(AddedRole { role, created: !found.exists, bound, mirrors })
}

/// The cluster the connected session's login role is bound to; `None` for sync_service,
/// an admin, or a role without a binding. Works for any role that can read the catalog.
pub async fn session_cluster(conn: &mut sqlx::PgConnection) -> Result<Option<String>> {
    let has: bool = sqlx::query_scalar(
        "SELECT to_regprocedure('sync_metadata.session_cluster()') IS NOT NULL
                AND has_function_privilege('sync_metadata.session_cluster()', 'EXECUTE')",
    )
    .fetch_one(&mut *conn)
    .await
    .ctx(|| "look for sync_metadata.session_cluster".into())?;
    if !has {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT sync_metadata.session_cluster()")
        .fetch_one(&mut *conn)
        .await
        .ctx(|| "read the session's cluster".into())
}

#[cfg(test)]
mod tests {
    use super::role_name;

    #[test]
    fn role_names_are_plain_identifiers_within_63_bytes() {
        assert_eq!(role_name("prod-host-1"), "owsync_prod_host_1");
        let long = "a".repeat(63);
        let r = role_name(&long);
        assert_eq!(r.len(), 63, "{r}");
        assert!(r.starts_with("owsync_aaaa"), "{r}");
        assert_ne!(role_name(&"b".repeat(63)), r);
        let other = format!("{}b", "a".repeat(62));
        assert_ne!(role_name(&other), r, "long names differ by their hash");
    }
}
