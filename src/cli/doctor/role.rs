//! The database half of `doctor`: the schema version against this build's embedded
//! migrations, and the role's privileges against what owsyncd needs (missing ones fail;
//! more than needed warns: least privilege is part of the contract).

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::Report;
use crate::store::migrate::{MIGRATIONS, latest};

/// The schema version; `true` when `sync_metadata` exists so privileges can be checked.
pub async fn migrations(r: &mut Report, c: &mut PgConnection) -> bool {
    let present: Result<bool, _> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                        WHERE n.nspname = 'sync_metadata' AND k.relname = 'schema_migrations')",
    )
    .fetch_one(&mut *c)
    .await;
    let run_migrate = "run `owsyncctl migrate --admin-url-file FILE` as an admin role";
    match present {
        Ok(true) => {}
        Ok(false) => {
            r.fail(
                "schema",
                format!("sync_metadata is missing (version 0; this owsync needs {}): {run_migrate}", latest()),
            );
            return false;
        }
        Err(e) => {
            r.fail("schema", format!("cannot read the catalog: {e}"));
            return false;
        }
    }
    let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM sync_metadata.schema_migrations ORDER BY 1")
        .fetch_all(&mut *c)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            r.fail(
                "schema",
                format!(
                    "cannot read sync_metadata.schema_migrations ({e}): the role lacks USAGE/SELECT; {run_migrate}"
                ),
            );
            return true;
        }
    };
    let found = applied.last().copied().unwrap_or(0);
    let missing: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.name))
        .collect();
    if found > latest() {
        r.fail(
            "schema",
            format!("the database is at schema version {found}, newer than this owsync ({}): upgrade owsync", latest()),
        );
    } else if !missing.is_empty() {
        r.fail(
            "schema",
            format!(
                "sync_metadata is at version {found}, this owsync needs {} (not applied: {}): {run_migrate}",
                latest(),
                missing.join(", ")
            ),
        );
    } else {
        r.ok("schema", format!("sync_metadata at version {found}: every migration of this owsync is applied"));
    }
    true
}

/// One relation of sync_metadata and what the connected role may do with it.
struct Rel {
    name: String,
    kind: String,
    select: bool,
    insert: bool,
    update: bool,
    delete: bool,
    truncate: bool,
    usage: bool,
    owns: bool,
    rls: bool,
}

fn names(v: &[&Rel]) -> String {
    v.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Metadata tables owsyncd only reads: the migration ledger, and the list of deregistered
/// clusters (written by `owsyncctl cluster deregister` as admin).
const READ_ONLY: &[&str] = &["schema_migrations", "retired_clusters"];

/// Metadata tables only the admin reads and writes: which role belongs to which cluster,
/// and which ClientSync owns each mirror schema.
const ADMIN_ONLY: &[&str] = &["cluster_roles", "mirror_owners"];

/// Checks the connected role against what owsyncd needs: its attributes, its binding to
/// the cluster, its grants on `sync_metadata`, excess privileges, the lease function and
/// row-level security.
pub async fn privileges(r: &mut Report, c: &mut PgConnection, cluster: &str) {
    let Some(role) = attributes(r, c).await else { return };
    binding(r, c, cluster, &role.name).await;
    schema_rights(r, &role);
    let Some(rels) = relations(r, c).await else { return };
    let tables: Vec<&Rel> = rels.iter().filter(|t| t.kind != "S" && !ADMIN_ONLY.contains(&t.name.as_str())).collect();
    let working: Vec<&Rel> = tables.iter().copied().filter(|t| !READ_ONLY.contains(&t.name.as_str())).collect();
    grants(r, &role.name, &rels, &tables, working.len());
    excess(r, &role.name, &rels, &tables);
    function(r, c, &role.name).await;
    let bypasses = role.superuser || role.bypassrls || working.iter().any(|t| t.owns);
    rls(r, c, cluster, &working, bypasses).await;
}

/// The connected role's name, the attributes that bypass what owsync relies on, and its
/// rights on `sync_metadata` and the database.
struct RoleAttributes {
    name: String,
    superuser: bool,
    bypassrls: bool,
    schema_usage: bool,
    schema_create: bool,
    database_create: bool,
}

/// Reads and reports the connected role's attributes; `None` when they cannot be read
/// (reported).
async fn attributes(r: &mut Report, c: &mut PgConnection) -> Option<RoleAttributes> {
    let role = match sqlx::query(
        "SELECT rolname::text, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,
                has_schema_privilege('sync_metadata', 'USAGE'), has_schema_privilege('sync_metadata', 'CREATE'),
                has_database_privilege(current_database(), 'CREATE')
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *c)
    .await
    {
        Ok(row) => row,
        Err(e) => {
            r.fail("role", format!("cannot read the role's attributes: {e}"));
            return None;
        }
    };
    let name: String = role.get(0);
    let flag = |i: usize| role.try_get::<bool, _>(i).unwrap_or(false);
    let attrs: Vec<&str> = [(1, "SUPERUSER"), (2, "BYPASSRLS"), (3, "CREATEROLE"), (4, "CREATEDB")]
        .into_iter()
        .filter(|(i, _)| flag(*i))
        .map(|(_, a)| a)
        .collect();
    if attrs.is_empty() {
        r.ok("role", format!("{name}: no SUPERUSER, BYPASSRLS, CREATEROLE or CREATEDB"));
    } else {
        r.warn(
            "role",
            format!(
                "{name} has {} (more than owsyncd needs: run owsyncd as sync_service, created by `owsyncctl migrate`)",
                attrs.join(", ")
            ),
        );
    }
    Some(RoleAttributes {
        name,
        superuser: flag(1),
        bypassrls: flag(2),
        schema_usage: flag(5),
        schema_create: flag(6),
        database_create: flag(7),
    })
}

/// Reports the role's USAGE (needed) and CREATE (not needed) on `sync_metadata`, and
/// CREATE on the database (not needed).
fn schema_rights(r: &mut Report, role: &RoleAttributes) {
    let name = &role.name;
    if !role.schema_usage {
        r.fail(
            "schema usage",
            format!("{name} lacks USAGE on schema sync_metadata: GRANT USAGE ON SCHEMA sync_metadata TO {name}"),
        );
    } else if role.schema_create {
        r.warn("schema usage", format!("{name} may CREATE in schema sync_metadata (owsyncd needs USAGE only)"));
    } else {
        r.ok("schema usage", "USAGE on sync_metadata, no CREATE");
    }
    if role.database_create && !role.superuser {
        r.warn("database", format!("{name} may CREATE schemas in this database (owsyncd needs no CREATE)"));
    }
}

/// The role's privileges on every table and sequence of `sync_metadata`; `None` when
/// they cannot be read (reported).
async fn relations(r: &mut Report, c: &mut PgConnection) -> Option<Vec<Rel>> {
    match sqlx::query(
        "SELECT k.relname::text, k.relkind::text,
                has_table_privilege(k.oid, 'SELECT'), has_table_privilege(k.oid, 'INSERT'),
                has_table_privilege(k.oid, 'UPDATE'), has_table_privilege(k.oid, 'DELETE'),
                has_table_privilege(k.oid, 'TRUNCATE'),
                -- an identity column's sequence needs no grant: INSERT draws from it
                CASE WHEN k.relkind = 'S' AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = k.oid AND d.deptype = 'i')
                     THEN has_sequence_privilege(k.oid, 'USAGE') ELSE true END,
                pg_has_role(k.relowner, 'USAGE'), k.relrowsecurity
         FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
         WHERE n.nspname = 'sync_metadata' AND k.relkind IN ('r', 'p', 'S') ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    {
        Ok(rows) => Some(
            rows.iter()
                .map(|row| Rel {
                    name: row.get(0),
                    kind: row.get(1),
                    select: row.get(2),
                    insert: row.get(3),
                    update: row.get(4),
                    delete: row.get(5),
                    truncate: row.get(6),
                    usage: row.get(7),
                    owns: row.get(8),
                    rls: row.get(9),
                })
                .collect(),
        ),
        Err(e) => {
            r.fail("tables", format!("cannot read the privileges on sync_metadata: {e}"));
            None
        }
    }
}

/// Reports what the role lacks of SELECT/INSERT/UPDATE on the tables (grouped by what
/// is lacking: "INSERT/UPDATE on client_specs, events, ...") and USAGE on sequences.
fn grants(r: &mut Report, name: &str, rels: &[Rel], tables: &[&Rel], working: usize) {
    let mut lacking: Vec<(String, Vec<&str>)> = Vec::new();
    for t in tables {
        let need: &[(&str, bool)] = if READ_ONLY.contains(&t.name.as_str()) {
            &[("SELECT", t.select)]
        } else {
            &[("SELECT", t.select), ("INSERT", t.insert), ("UPDATE", t.update)]
        };
        let lacks: Vec<&str> = need.iter().filter(|(_, has)| !has).map(|(p, _)| *p).collect();
        if lacks.is_empty() {
            continue;
        }
        let key = lacks.join("/");
        match lacking.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(&t.name),
            None => lacking.push((key, vec![&t.name])),
        }
    }
    let mut missing: Vec<String> =
        lacking.into_iter().map(|(k, v)| format!("{k} on sync_metadata.{{{}}}", v.join(", "))).collect();
    for s in rels.iter().filter(|t| t.kind == "S" && !t.usage) {
        missing.push(format!("USAGE on sequence sync_metadata.{}", s.name));
    }
    if missing.is_empty() {
        r.ok("tables", format!("SELECT, INSERT, UPDATE on the {working} metadata tables"));
    } else {
        r.fail(
            "tables",
            format!(
                "{name} lacks {} (re-run `owsyncctl migrate`, which grants them to sync_service, and connect as sync_service)",
                missing.join(", ")
            ),
        );
    }
}

/// Warns about privileges owsyncd never needs: DELETE, TRUNCATE, ownership.
fn excess(r: &mut Report, name: &str, rels: &[Rel], tables: &[&Rel]) {
    let deletes: Vec<&Rel> = tables.iter().copied().filter(|t| t.delete).collect();
    let truncates: Vec<&Rel> = tables.iter().copied().filter(|t| t.truncate).collect();
    let owned: Vec<&Rel> = rels.iter().filter(|t| t.owns).collect();
    if !deletes.is_empty() {
        r.warn("excess", format!("{name} may DELETE from {} (owsyncd never deletes metadata)", names(&deletes)));
    }
    if !truncates.is_empty() {
        r.warn("excess", format!("{name} may TRUNCATE {}", names(&truncates)));
    }
    if !owned.is_empty() {
        r.warn(
            "excess",
            format!(
                "{name} owns (or inherits the owner of) {}: an owner may DROP them and bypasses row-level security",
                names(&owned)
            ),
        );
    }
}

/// Which cluster the login role is bound to (`owsyncctl cluster add-role`): the shared
/// sync_service warns (its password opens every cluster), a role of another cluster or
/// an owsync cluster role without a binding fails.
async fn binding(r: &mut Report, c: &mut PgConnection, cluster: &str, name: &str) {
    let bound = match crate::store::roles::session_cluster(c).await {
        Ok(b) => b,
        Err(e) => {
            r.fail("cluster role", format!("cannot read the role's cluster: {e}"));
            return;
        }
    };
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                        JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $1 AND u.rolname = session_user)",
    )
    .bind(crate::store::roles::GROUP_ROLE)
    .fetch_one(&mut *c)
    .await
    .unwrap_or(false);
    let add_role = format!(
        "`owsyncctl cluster add-role {cluster} --password-file F --admin-url-file A` creates this cluster's own role \
         (docs/security.md)"
    );
    match bound {
        Some(b) if b == cluster => r.ok(
            "cluster role",
            format!("{name} is bound to cluster {b}: row-level security and mirror grants key on the role"),
        ),
        Some(b) => r.fail(
            "cluster role",
            format!("{name} is bound to cluster {b}, not {cluster}: it sees none of {cluster}'s rows (--cluster / OWSYNC_CLUSTER)"),
        ),
        None if member => {
            r.fail("cluster role", format!("{name} is an owsync cluster role bound to no cluster: {add_role}"));
        }
        None if name == crate::store::migrate::SYNC_ROLE => r.warn(
            "cluster role",
            format!(
                "connected as the shared {name}: row-level security keys on app.current_host_id, a setting any \
                 session chooses, so its password opens every cluster's rows and mirrors; {add_role}"
            ),
        ),
        None => {}
    }
}

async fn function(r: &mut Report, c: &mut PgConnection, name: &str) {
    let f: Result<Option<bool>, _> = sqlx::query_scalar(
        "SELECT has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'sync_metadata' AND p.proname = 'provision_table' LIMIT 1",
    )
    .fetch_optional(&mut *c)
    .await;
    match f {
        Ok(Some(true)) => r.ok("provision", "EXECUTE on sync_metadata.provision_table (creates tenant tables)"),
        Ok(Some(false)) => r.fail(
            "provision",
            format!("{name} lacks EXECUTE on sync_metadata.provision_table: it cannot create tenants' mirror tables"),
        ),
        Ok(None) => r.fail("provision", "sync_metadata.provision_table is missing: run `owsyncctl migrate`"),
        Err(e) => r.fail("provision", format!("cannot check sync_metadata.provision_table: {e}")),
    }
}

/// `SET LOCAL app.current_host_id` works, the setting ends with the transaction, and
/// row-level security is on for every metadata table.
async fn rls(r: &mut Report, c: &mut PgConnection, cluster: &str, tables: &[&Rel], bypasses: bool) {
    use sqlx::Connection;
    let res: Result<(Option<String>, i64), sqlx::Error> = async {
        let mut tx = c.begin().await?;
        sqlx::query("SELECT set_config('app.current_host_id', $1, true)").bind(cluster).execute(&mut *tx).await?;
        let set: Option<String> =
            sqlx::query_scalar("SELECT current_setting('app.current_host_id', true)").fetch_one(&mut *tx).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.client_specs").fetch_one(&mut *tx).await?;
        tx.rollback().await?;
        Ok((set, n))
    }
    .await;
    let (set, n) = match res {
        Ok(v) => v,
        Err(e) => {
            r.fail("rls", format!("SET LOCAL app.current_host_id and a read of client_specs failed: {e}"));
            return;
        }
    };
    let after: Option<String> = sqlx::query_scalar("SELECT current_setting('app.current_host_id', true)")
        .fetch_one(&mut *c)
        .await
        .unwrap_or(None);
    if set.as_deref() != Some(cluster) {
        r.fail("rls", format!("app.current_host_id read back as {set:?}, not {cluster:?}"));
        return;
    }
    if after.as_deref().is_some_and(|a| !a.is_empty()) {
        r.warn("rls", format!("app.current_host_id outlived its transaction ({after:?}): a pooler in between?"));
    }
    let off: Vec<&Rel> = tables.iter().copied().filter(|t| !t.rls).collect();
    if !off.is_empty() {
        r.fail("rls", format!("row-level security is off on {}: run `owsyncctl migrate`", names(&off)));
    } else if bypasses {
        r.warn(
            "rls",
            format!("SET LOCAL app.current_host_id works, but this role bypasses row-level security: it sees every cluster's rows ({n} ClientSyncs in all)"),
        );
    } else {
        r.ok(
            "rls",
            format!(
                "SET LOCAL app.current_host_id = {cluster:?} works; this role sees the {n} ClientSync(s) of that cluster only (RLS on {} tables)",
                tables.len()
            ),
        );
    }
}
