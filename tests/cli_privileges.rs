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
        // The fix it names keeps the admin URL out of the process list (issue #16).
        assert!(err.contains("--admin-url-file") && !err.contains("--admin-url URL"), "{args:?}: {err}");
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

/// Every table of sync_metadata and of the tenant's schema, by name (as admin).
async fn tables_of(admin: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1")
        .bind(schema)
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_service_is_denied_ddl_delete_and_truncate_on_every_table() {
    let env = synced_env("priv_every").await;
    let admin = env.admin_pool().await;
    let meta = tables_of(&admin, "sync_metadata").await;
    let mirror = tables_of(&admin, "client_x").await;
    assert!(meta.len() >= 12 && mirror.len() >= 10, "{meta:?} {mirror:?}");
    let mut sql = Vec::new();
    for (schema, tables) in [("sync_metadata", &meta), ("client_x", &mirror)] {
        for t in tables {
            let q = owsync::sql::qualified(schema, t);
            sql.push(format!("DELETE FROM {q}"));
            sql.push(format!("TRUNCATE {q}"));
            sql.push(format!("DROP TABLE {q}"));
            sql.push(format!("ALTER TABLE {q} OWNER TO sync_service"));
        }
        let s = owsync::sql::quote_ident(schema);
        sql.push(format!("CREATE TABLE {s}.evil (id int)"));
        sql.push(format!("CREATE VIEW {s}.evil AS SELECT 1 AS one"));
        sql.push(format!("CREATE SEQUENCE {s}.evil"));
        sql.push(format!("CREATE FUNCTION {s}.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'"));
        sql.push(format!("DROP SCHEMA {s} CASCADE"));
        sql.push(format!("ALTER SCHEMA {s} RENAME TO evil"));
    }
    sql.push("CREATE SCHEMA evil".into());
    sql.push("CREATE SCHEMA client_evil".into());
    sql.push("CREATE SCHEMA evil AUTHORIZATION sync_service CREATE TABLE t (id int)".into());
    sql.push("GRANT DELETE ON sync_metadata.client_specs TO sync_service".into());
    sql.push("ALTER ROLE sync_service SUPERUSER".into());
    sql.push("ALTER ROLE sync_service CREATEDB".into());
    sql.push("SET ROLE postgres".into());

    let pool = env.sync_pool().await;
    let mut c = pool.acquire().await.unwrap();
    set_host(&mut c, "test-host").await;
    for q in &sql {
        let r = try_sql(&mut c, q).await;
        match &r {
            Some((code, msg)) => println!("NEGATIVE CHECK denied ({code}): {q}: {msg}"),
            None if q.starts_with("GRANT ") => println!("NEGATIVE CHECK no effect (a warning; checked below): {q}"),
            None => println!("NEGATIVE CHECK ALLOWED: {q}"),
        }
        // GRANT of a privilege one does not hold is a warning, not an error: check it had no effect.
        if q.starts_with("GRANT ") {
            continue;
        }
        assert_denied(q, r);
    }
    drop(c);
    let can_delete: bool =
        sqlx::query_scalar("SELECT has_table_privilege('sync_service', 'sync_metadata.client_specs', 'DELETE')")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!can_delete, "sync_service granted itself DELETE");
    println!("NEGATIVE CHECK denied: GRANT DELETE to itself had no effect (has_table_privilege = false)");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class WHERE relname = 'evil') + (SELECT count(*) FROM pg_namespace
         WHERE nspname IN ('evil', 'client_evil')) + (SELECT count(*) FROM pg_proc WHERE proname = 'evil')",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "an evil object was created");
    assert_eq!(tables_of(&admin, "sync_metadata").await, meta);
    assert_eq!(tables_of(&admin, "client_x").await, mirror);
    println!("FIGURE {} negative privilege checks as sync_service, all denied or without effect", sql.len());
}

/// Row-level security on status, state and sync state through `store::begin` (the host
/// set per transaction): another cluster's rows are invisible and unchangeable, and the
/// setting ends with the transaction, so a pooled server connection keeps nothing.
async fn other_cluster_cannot_touch(pool: &PgPool, via: &str) {
    let tables = [
        "client_specs",
        "client_status",
        "state",
        "table_state",
        "events",
        "sync_jobs",
        "hosts",
        "leader_election",
        "sync_requests",
    ];
    let mut tx = owsync::store::begin(pool, "other-host").await.unwrap();
    for t in tables {
        let q = format!("SELECT count(*) FROM sync_metadata.{t} WHERE cluster_name = 'test-host'");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone())).fetch_one(&mut *tx).await.unwrap();
        println!("NEGATIVE CHECK ({via}) other-host reads test-host's {t}: {n} rows");
        assert_eq!(n, 0, "{via}: {q}");
    }
    for t in ["client_specs", "client_status", "state", "table_state"] {
        let q = format!("UPDATE sync_metadata.{t} SET updated_at = now() WHERE cluster_name = 'test-host'");
        let n = sqlx::raw_sql(sqlx::AssertSqlSafe(q.clone())).execute(&mut *tx).await.unwrap().rows_affected();
        println!("NEGATIVE CHECK ({via}) other-host updates test-host's {t}: {n} rows changed");
        assert_eq!(n, 0, "{via}: {q}");
    }
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.state").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(own, 1, "{via}: other-host sees its own state row");
    tx.commit().await.unwrap();
    for q in [
        "INSERT INTO sync_metadata.state (cluster_name, key, value) VALUES ('test-host', 'evil', '1')",
        "INSERT INTO sync_metadata.client_status (cluster_name, name) VALUES ('test-host', 'evil')",
        "INSERT INTO sync_metadata.table_state (cluster_name, client_name, table_name) VALUES ('test-host', 'x', 'evil')",
        "UPDATE sync_metadata.state SET cluster_name = 'test-host', key = 'moved' WHERE cluster_name = 'other-host'",
        "UPDATE sync_metadata.client_status SET cluster_name = 'test-host' WHERE cluster_name = 'other-host'",
    ] {
        let mut tx = owsync::store::begin(pool, "other-host").await.unwrap();
        let r = try_sql(&mut tx, q).await;
        println!("NEGATIVE CHECK ({via}) {q}: {r:?}");
        assert_denied(q, r);
        tx.rollback().await.unwrap();
    }
    // The host was set for the transaction only: the (pooled) session keeps nothing.
    let mut c = pool.acquire().await.unwrap();
    let setting: Option<String> =
        sqlx::query_scalar("SELECT current_setting('app.current_host_id', true)").fetch_one(&mut *c).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.state").fetch_one(&mut *c).await.unwrap();
    println!(
        "NEGATIVE CHECK ({via}) after the transaction: app.current_host_id = {setting:?}, {seen} state rows visible"
    );
    assert!(setting.as_deref().unwrap_or("").is_empty(), "{via}: the host outlived its transaction: {setting:?}");
    assert_eq!(seen, 0, "{via}");
}

#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_on_status_and_state_directly_and_through_a_session_pooler() {
    let env = synced_env("priv_rls_status").await;
    let admin = env.admin_pool().await;
    for q in [
        "INSERT INTO sync_metadata.state (cluster_name, key, value) VALUES ('test-host', 'k', '1'), ('other-host', 'k', '2')",
        "INSERT INTO sync_metadata.client_status (cluster_name, name) VALUES ('other-host', 'y'), ('test-host', 'x')
         ON CONFLICT DO NOTHING",
    ] {
        sqlx::raw_sql(q).execute(&admin).await.unwrap();
    }
    let fingerprint = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT concat_ws('|',
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM sync_metadata.client_specs t),
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM sync_metadata.client_status t),
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM sync_metadata.state t),
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM sync_metadata.table_state t))",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    let n = |q: &'static str| {
        let admin = admin.clone();
        async move { sqlx::query_scalar::<_, i64>(q).fetch_one(&admin).await.unwrap() }
    };
    for t in ["client_specs", "client_status", "state", "table_state"] {
        let q = format!("SELECT count(*) FROM sync_metadata.{t} WHERE cluster_name = 'test-host'");
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(&admin).await.unwrap();
        assert!(rows > 0, "test-host has no {t} rows to protect");
    }
    let before = fingerprint().await;

    let direct = owsync::store::connect(&env.sync_url, "test-rls", 1).await.unwrap();
    other_cluster_cannot_touch(&direct, "direct").await;
    let bouncer = common::bouncer::Bouncer::start("session");
    let probe = owsync::store::connect(&bouncer.url(&env.db), "test-rls-probe", 2).await.unwrap();
    owsync::store::check_session_pooling(&probe).await.unwrap();
    probe.close().await;
    let pooled = owsync::store::connect(&bouncer.url(&env.db), "test-rls-pooled", 1).await.unwrap();
    other_cluster_cannot_touch(&pooled, "session pooler").await;
    assert!(bouncer.log().contains("login attempt"), "nothing went through pgbouncer");
    assert_eq!(fingerprint().await, before, "other-host changed test-host's rows");
    assert_eq!(n("SELECT count(*) FROM sync_metadata.state WHERE key IN ('evil', 'moved')").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_table_refuses_a_deleted_clientsync_until_it_is_applied_again() {
    let env = synced_env("priv_deleted").await;
    let pool = env.sync_pool().await;
    let sql = r#"SELECT sync_metadata.provision_table('client_x', 'extra', '[{"name": "id", "type": "text"}]'::jsonb, ARRAY['id'])"#;
    let provision = || async {
        let mut c = pool.acquire().await.unwrap();
        set_host(&mut c, "test-host").await;
        try_sql(&mut c, sql).await
    };
    assert_eq!(provision().await, None, "a live ClientSync provisions");
    let out = ok(&env.ctl(&["delete", "client", "x", "--force"]));
    assert!(out.contains("clientsync/x"), "{out}");
    let r = provision().await;
    println!("NEGATIVE CHECK provision_table for deleted clientsync/x: {r:?}");
    let (code, msg) = r.clone().expect("provision_table accepted a deleted ClientSync");
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.contains("is deleted") && msg.contains("re-apply"), "{msg}");
    // Applying it again clears the deletion.
    let db = env.path("webui.db");
    ok(&env.ctl(&["apply", "-f", s(&env.manifest("x", &db, ""))]));
    assert_eq!(provision().await, None, "a re-applied ClientSync provisions again");
}
