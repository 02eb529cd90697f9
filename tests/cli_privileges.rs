//! `owsyncctl migrate` (idempotent, the only way in) and least privilege: what the
//! `sync_service` role owsyncd runs as may and may not do, and the row-level security
//! that keeps one host's rows away from another's.

mod common;

use std::path::Path;

use common::{TestEnv, ok, small_db, stderr, stdout};
use owsync::store::migrate::{MIGRATIONS, latest};
use sqlx::{PgConnection, PgPool};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A catalog fingerprint of sync_metadata: every relation, function, policy, ACL and
/// migration row, with the xmin of each catalog row (any rewrite or re-GRANT changes it).
async fn catalog(admin: &PgPool) -> (i64, i64, i64, Vec<String>) {
    let q = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(admin).await.unwrap() };
    let classes = q("SELECT count(*) FROM pg_class WHERE relnamespace = 'sync_metadata'::regnamespace").await;
    let procs = q("SELECT count(*) FROM pg_proc WHERE pronamespace = 'sync_metadata'::regnamespace").await;
    let policies = q("SELECT count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                      WHERE c.relnamespace = 'sync_metadata'::regnamespace")
    .await;
    let detail: Vec<String> = sqlx::query_scalar(
        "SELECT 'class ' || relname || ' ' || relkind::text || ' ' || xmin::text || ' ' || coalesce(relacl::text, '-')
           FROM pg_class WHERE relnamespace = 'sync_metadata'::regnamespace
         UNION ALL SELECT 'proc ' || proname || ' ' || xmin::text || ' ' || coalesce(proacl::text, '-')
           FROM pg_proc WHERE pronamespace = 'sync_metadata'::regnamespace
         UNION ALL SELECT 'policy ' || polname || ' ' || polrelid::regclass::text || ' ' || p.xmin::text
           FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = 'sync_metadata'::regnamespace
         UNION ALL SELECT 'schema ' || xmin::text || ' ' || coalesce(nspacl::text, '-')
           FROM pg_namespace WHERE nspname = 'sync_metadata'
         UNION ALL SELECT 'migration ' || version || ' ' || name || ' ' || checksum || ' ' || applied_at::text
           FROM sync_metadata.schema_migrations
         ORDER BY 1",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    (classes, procs, policies, detail)
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_once_then_changes_nothing() {
    // The role is server-wide: make sure it exists (with the tests' password) first.
    let _warm = TestEnv::new("migrate_warm").await;
    let env = TestEnv::new_with("migrate_twice", false).await;
    let m = env.manifest("x", Path::new("/data/x/webui.db"), "");

    // Before migrating, sync_service's commands say what to do.
    for (args, want) in [(vec!["get", "clients"], 1), (vec!["apply", "-f", s(&m)], 1), (vec!["diff", "-f", s(&m)], 2)] {
        let o = env.ctl(&args);
        assert_eq!(o.status.code(), Some(want), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("not migrated") && err.contains("owsyncctl migrate"), "{args:?}: {err}");
    }

    let admin_file = s(&env.admin_url_file).to_string();
    let first = ok(&env.ctl(&["migrate", "--admin-url-file", &admin_file]));
    for m in MIGRATIONS {
        assert!(first.contains(&format!("migration/{:04}_{} applied\n", m.version, m.name)), "{first}");
    }
    assert!(first.contains(&format!("migrated from version 0 to {}", latest())), "{first}");
    assert!(!first.contains(common::pg().admin_password()), "the admin password was printed: {first}");
    let admin = env.admin_pool().await;
    let before = catalog(&admin).await;
    assert!(before.0 >= 11 && before.1 >= 1 && before.2 >= 10, "{before:?}");
    assert_eq!(before.3.iter().filter(|l| l.starts_with("migration ")).count(), MIGRATIONS.len(), "{before:?}");

    let second = env.ctl(&["migrate", "--admin-url-file", &admin_file]);
    let out = ok(&second);
    assert!(out.contains(&format!("sync_metadata is up to date at version {}", latest())), "{out}");
    assert!(!out.contains("applied"), "{out}");
    assert_eq!(catalog(&admin).await, before, "the second migrate changed the catalog");

    // And now sync_service can work.
    let o = env.ctl(&["get", "clients"]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), ""), "{}", stderr(&o));
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&m)])), "clientsync/x created\n");
}

/// Runs one statement; `None` when it succeeded, else the SQLSTATE and message.
async fn try_sql(c: &mut PgConnection, sql: &str) -> Option<(String, String)> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut *c).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some((e.code().unwrap_or_default().to_string(), e.message().to_string())),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[track_caller]
fn assert_denied(sql: &str, r: Option<(String, String)>) {
    match r {
        None => panic!("sync_service was allowed: {sql}"),
        Some((code, msg)) => assert_eq!(code, "42501", "{sql}: {msg}"),
    }
}

async fn set_host(c: &mut PgConnection, host: &str) {
    sqlx::query("SELECT set_config('app.current_host_id', $1, false)").bind(host).execute(&mut *c).await.unwrap();
}

/// A tenant synced once: specs in test-host (`x`) and other-host (`y`), schema client_x.
async fn synced_env(prefix: &str) -> TestEnv {
    let env = TestEnv::new(prefix).await;
    let db = env.path("webui.db");
    small_db(&db, 11);
    let m = env.manifest("x", &db, "");
    ok(&env.ctl(&["apply", "-f", s(&m)]));
    assert!(ok(&env.ctl(&["sync", "x", "--once"])).contains("clientsync/x synced"));
    let y = env.manifest("y", &db, "");
    assert_eq!(ok(&env.ctl(&["--cluster", "other-host", "apply", "-f", s(&y)])), "clientsync/y created\n");
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_service_cannot_delete_drop_create_or_truncate() {
    let env = synced_env("priv_denied").await;
    let admin = env.admin_pool().await;
    let count = |sql: &'static str| {
        let admin = admin.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&admin).await.unwrap() }
    };
    let chats = count(r#"SELECT count(*) FROM "client_x"."chat""#).await;
    assert!(chats > 0, "the sync mirrored no chats");
    let specs = count("SELECT count(*) FROM sync_metadata.client_specs").await;

    let pool = env.sync_pool().await;
    let mut c = pool.acquire().await.unwrap();
    set_host(&mut c, "test-host").await;
    for sql in [
        "DELETE FROM sync_metadata.client_specs",
        "DELETE FROM sync_metadata.events",
        "TRUNCATE sync_metadata.client_specs",
        "TRUNCATE sync_metadata.sync_jobs",
        "DROP TABLE sync_metadata.events",
        "DROP SCHEMA sync_metadata CASCADE",
        "ALTER TABLE sync_metadata.client_specs DISABLE ROW LEVEL SECURITY",
        "DROP POLICY sync_host_isolation ON sync_metadata.client_specs",
        "CREATE TABLE sync_metadata.evil (id int)",
        "CREATE FUNCTION sync_metadata.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "UPDATE sync_metadata.schema_migrations SET name = 'evil'",
        "INSERT INTO sync_metadata.schema_migrations (version, name, checksum) VALUES (99, 'evil', 'x')",
        "CREATE SCHEMA evil",
        "CREATE SCHEMA client_evil",
        "CREATE TABLE public.evil (id int)",
        r#"CREATE TABLE "client_x"."evil" (id int)"#,
        r#"DELETE FROM "client_x"."chat""#,
        r#"TRUNCATE "client_x"."chat""#,
        r#"DROP TABLE "client_x"."chat""#,
        r#"ALTER TABLE "client_x"."chat" ADD COLUMN evil int"#,
        r#"DROP SCHEMA "client_x" CASCADE"#,
        "ALTER ROLE sync_service BYPASSRLS",
    ] {
        assert_denied(sql, try_sql(&mut c, sql).await);
    }
    // What it needs does work.
    assert!(try_sql(&mut c, r#"SELECT count(*) FROM "client_x"."chat""#).await.is_none());
    assert!(try_sql(&mut c, r#"UPDATE "client_x"."chat" SET id = id WHERE false"#).await.is_none());
    drop(c);

    assert_eq!(count(r#"SELECT count(*) FROM "client_x"."chat""#).await, chats);
    assert_eq!(count("SELECT count(*) FROM sync_metadata.client_specs").await, specs);
    assert_eq!(count("SELECT count(*) FROM pg_namespace WHERE nspname IN ('evil', 'client_evil')").await, 0);
    assert_eq!(count("SELECT count(*) FROM pg_class WHERE relname = 'evil'").await, 0);
    assert_eq!(count("SELECT count(*) FROM sync_metadata.schema_migrations").await, MIGRATIONS.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_table_only_creates_tables_in_own_client_schemas() {
    let env = synced_env("priv_provision").await;
    let pool = env.sync_pool().await;
    let mut c = pool.acquire().await.unwrap();
    set_host(&mut c, "test-host").await;
    let call = |schema: &str, ty: &str| {
        format!(
            r#"SELECT sync_metadata.provision_table('{schema}', 'extra', '[{{"name": "id", "type": "text"}}, {{"name": "v", "type": "{ty}"}}]'::jsonb, ARRAY['id'])"#
        )
    };
    for schema in
        ["public", "sync_metadata", "pg_catalog", "evil", "client_nobody", "client_y", "Client_x", "client_x; x"]
    {
        let sql = call(schema, "text");
        assert_denied(&sql, try_sql(&mut c, &sql).await);
    }
    for ty in ["serial", "text) ; DROP TABLE x; --", "regclass"] {
        let sql = call("client_x", ty);
        assert_denied(&sql, try_sql(&mut c, &sql).await);
    }
    // Another cluster's schema is refused from this one, accepted from that one.
    let sql = call("client_x", "text");
    set_host(&mut c, "other-host").await;
    assert_denied(&sql, try_sql(&mut c, &sql).await);
    set_host(&mut c, "test-host").await;
    assert_eq!(try_sql(&mut c, &sql).await, None, "{sql}");
    assert_eq!(try_sql(&mut c, r#"INSERT INTO "client_x"."extra" VALUES ('a', 'b')"#).await, None);
    assert_denied("drop", try_sql(&mut c, r#"DROP TABLE "client_x"."extra""#).await);
    drop(c);

    let admin = env.admin_pool().await;
    let made: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = 'extra' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(made, ["client_x.extra"]);
    let owner: String = sqlx::query_scalar(
        r#"SELECT tableowner::text FROM pg_tables WHERE schemaname = 'client_x' AND tablename = 'extra'"#,
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_ne!(owner, "sync_service", "sync_service must not own tenant tables");
}

#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_keeps_clusters_apart() {
    let env = synced_env("priv_rls").await;
    let admin = env.admin_pool().await;
    let snapshot = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(cluster_name || '/' || name || ' ' || generation || ' ' || labels::text || ' ' || enabled, ', ' ORDER BY 1)
             FROM sync_metadata.client_specs",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    let before = snapshot().await;
    let pool = env.sync_pool().await;
    let mut c = pool.acquire().await.unwrap();
    let names = |sql: &'static str| sqlx::query_scalar::<_, String>(sql);

    // No host set: nothing at all.
    assert!(names("SELECT name FROM sync_metadata.client_specs").fetch_all(&mut *c).await.unwrap().is_empty());

    set_host(&mut c, "other-host").await;
    let seen = names("SELECT cluster_name || '/' || name FROM sync_metadata.client_specs ORDER BY 1")
        .fetch_all(&mut *c)
        .await
        .unwrap();
    assert_eq!(seen, ["other-host/y"]);
    for sql in [
        "UPDATE sync_metadata.client_specs SET generation = generation + 100 WHERE cluster_name = 'test-host'",
        "UPDATE sync_metadata.client_specs SET cluster_name = 'other-host' WHERE name = 'x'",
    ] {
        assert_eq!(sqlx::raw_sql(sql).execute(&mut *c).await.unwrap().rows_affected(), 0, "{sql}");
    }
    for sql in [
        "INSERT INTO sync_metadata.client_specs (cluster_name, name, spec, enabled) VALUES ('test-host', 'evil', '{}', true)",
        "INSERT INTO sync_metadata.events (cluster_name, client_name, reason, message) VALUES ('test-host', 'x', 'Evil', 'evil')",
        "UPDATE sync_metadata.client_specs SET cluster_name = 'test-host' WHERE name = 'y'",
    ] {
        assert_denied(sql, try_sql(&mut c, sql).await);
    }
    assert_eq!(snapshot().await, before, "other-host changed test-host's rows");

    // Its own cluster: SELECT, INSERT and UPDATE work.
    set_host(&mut c, "test-host").await;
    let seen = names("SELECT name FROM sync_metadata.client_specs ORDER BY 1").fetch_all(&mut *c).await.unwrap();
    assert_eq!(seen, ["x"]);
    let ins = "INSERT INTO sync_metadata.client_specs (cluster_name, name, spec, labels, enabled)
               SELECT 'test-host', 'own', jsonb_set(spec, '{target,schema}', '\"client_own\"'), '{\"by\": \"sql\"}', false
               FROM sync_metadata.client_specs WHERE name = 'x'";
    assert_eq!(sqlx::raw_sql(ins).execute(&mut *c).await.unwrap().rows_affected(), 1);
    let upd = "UPDATE sync_metadata.client_specs SET labels = '{\"tier\": \"gold\"}' WHERE name = 'x'";
    assert_eq!(sqlx::raw_sql(upd).execute(&mut *c).await.unwrap().rows_affected(), 1);
    drop(c);
    let out = ok(&env.ctl(&["get", "clients"]));
    assert!(out.lines().any(|l| l.starts_with("own ")) && out.lines().any(|l| l.starts_with("x ")), "{out}");
    assert!(!out.contains("\ny "), "{out}");
    let out = ok(&env.ctl(&["--cluster", "other-host", "get", "clients"]));
    assert_eq!(out.lines().skip(1).map(|l| l.split(' ').next().unwrap()).collect::<Vec<_>>(), ["y"], "{out}");
}
