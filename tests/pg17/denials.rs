//! What sync_service may not do on the Supabase-shaped server (the same checks as
//! tests/cli_privileges.rs, condensed): no DELETE, TRUNCATE, DDL or role changes, no
//! provisioning outside its own cluster's `client_*` schemas, no other cluster's rows.

use sqlx::PgConnection;

use crate::common::{TestEnv, ok};

/// Runs one statement; `None` when it succeeded, else the SQLSTATE and message.
pub async fn try_sql(c: &mut PgConnection, sql: &str) -> Option<(String, String)> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut *c).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some((e.code().unwrap_or_default().to_string(), e.message().to_string())),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[track_caller]
pub fn assert_denied(who: &str, sql: &str, r: Option<(String, String)>) {
    match r {
        None => panic!("{who} was allowed: {sql}"),
        Some((code, msg)) => assert_eq!(code, "42501", "{who}: {sql}: {msg}"),
    }
}

const DENIED: [&str; 18] = [
    "DELETE FROM sync_metadata.client_specs",
    "TRUNCATE sync_metadata.sync_jobs",
    "DROP TABLE sync_metadata.events",
    "DROP SCHEMA sync_metadata CASCADE",
    "ALTER TABLE sync_metadata.client_specs DISABLE ROW LEVEL SECURITY",
    "DROP POLICY sync_host_isolation ON sync_metadata.client_specs",
    "CREATE TABLE sync_metadata.evil (id int)",
    "UPDATE sync_metadata.schema_migrations SET name = 'evil'",
    "CREATE SCHEMA client_evil",
    "CREATE TABLE public.evil (id int)",
    r#"CREATE TABLE "client_acme"."evil" (id int)"#,
    r#"DELETE FROM "client_acme"."chat""#,
    r#"TRUNCATE "client_acme"."chat""#,
    r#"ALTER TABLE "client_acme"."chat" ADD COLUMN evil int"#,
    "ALTER ROLE sync_service BYPASSRLS",
    "SET ROLE postgres",
    "GRANT postgres TO sync_service",
    "CREATE ROLE evil",
];

fn provision(schema: &str) -> String {
    format!(
        r#"SELECT sync_metadata.provision_table('{schema}', 'extra', '[{{"name": "id", "type": "text"}}]'::jsonb, ARRAY['id'])"#
    )
}

/// Every denial, as sync_service through the test's route; another cluster sees nothing.
pub async fn sync_service_denials(env: &TestEnv) {
    let other = env.manifest("other", &env.path("webui.db"), "  target:\n    schema: client_other\n");
    let out = ok(&env.ctl(&["--cluster", "other-host", "apply", "-f", other.to_str().expect("utf-8")]));
    assert_eq!(out, "clientsync/other created\n");
    let pool = env.sync_pool().await;
    let mut c = pool.acquire().await.expect("sync_service connection");
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', false)").execute(&mut *c).await.expect("set");
    for sql in DENIED {
        assert_denied("sync_service", sql, try_sql(&mut c, sql).await);
    }
    for schema in ["public", "sync_metadata", "pg_catalog", "client_nobody", "client_other"] {
        let sql = provision(schema);
        assert_denied("sync_service", &sql, try_sql(&mut c, &sql).await);
    }
    assert_eq!(try_sql(&mut c, r#"SELECT count(*) FROM "client_acme"."chat""#).await, None);
    drop(c);

    // other-host's transactions see none of test-host's rows and change none.
    let mut tx = owsync::store::begin(&pool, "other-host").await.expect("begin");
    for t in ["client_specs", "client_status", "table_state", "sync_jobs", "events", "leader_election", "hosts"] {
        let q = format!("SELECT count(*) FROM sync_metadata.{t} WHERE cluster_name = 'test-host'");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone())).fetch_one(&mut *tx).await.expect("count");
        assert_eq!(n, 0, "other-host sees test-host's rows: {q}");
    }
    let q = "UPDATE sync_metadata.client_status SET updated_at = now() WHERE cluster_name = 'test-host'";
    let n = sqlx::raw_sql(q).execute(&mut *tx).await.expect("update").rows_affected();
    assert_eq!(n, 0, "other-host changed test-host's status");
    let q = "INSERT INTO sync_metadata.state (cluster_name, key, value) VALUES ('test-host', 'evil', '1')";
    assert_denied("other-host", q, try_sql(&mut tx, q).await);
    tx.rollback().await.expect("rollback");
    let mut c = pool.acquire().await.expect("connection");
    let sql = provision("client_acme");
    sqlx::query("SELECT set_config('app.current_host_id', 'other-host', false)").execute(&mut *c).await.expect("set");
    assert_denied("other-host", &sql, try_sql(&mut c, &sql).await);
}

/// `owsyncctl cluster add-role` by the Supabase-shaped admin (CREATEROLE, not a superuser,
/// PostgreSQL 17's role rules): the role logs in, is bound to its cluster, and sees none
/// of test-host's rows or mirror whatever it sets.
pub async fn cluster_role(env: &TestEnv) {
    let pw_file = env.path("pg17-role-password");
    std::fs::write(&pw_file, "pg17-role-pw-71b2").expect("write password file");
    let out = ok(&env.ctl(&[
        "cluster",
        "add-role",
        "pg17-host",
        "--password-file",
        pw_file.to_str().expect("utf-8"),
        "--admin-url-file",
        env.admin_url_file.to_str().expect("utf-8"),
    ]));
    assert_eq!(out, "owsync_pg17_host\n");
    let url = env
        .sync_url
        .replace(&format!("sync_service:{}", crate::common::SYNC_PASSWORD), "owsync_pg17_host:pg17-role-pw-71b2");
    assert!(url.contains("owsync_pg17_host:"), "{url}");
    let pool = owsync::store::connect(&url, "pg17-role", 1).await.expect("the cluster role logs in");
    let mut c = pool.acquire().await.expect("connection");
    let bound: Option<String> =
        sqlx::query_scalar("SELECT sync_metadata.session_cluster()").fetch_one(&mut *c).await.expect("bound");
    assert_eq!(bound.as_deref(), Some("pg17-host"));
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', false)").execute(&mut *c).await.expect("set");
    let seen: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_metadata.client_specs").fetch_one(&mut *c).await.expect("read");
    assert_eq!(seen, 0, "the pg17-host role sees test-host's specs");
    for sql in [r#"SELECT count(*) FROM "client_acme"."chat""#, &provision("client_acme"), "SET ROLE sync_service"] {
        assert_denied("owsync_pg17_host", sql, try_sql(&mut c, sql).await);
        println!("NEGATIVE CHECK (pg17, cluster role) denied: {sql}");
    }
}
