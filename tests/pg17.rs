//! The Supabase compatibility set: PostgreSQL 17 (Supabase's default) with an admin role
//! shaped like Supabase's `postgres` (not a superuser), TLS required and every client on
//! `sslmode=verify-full` with a CA file, directly and through a session-mode PgBouncer
//! (TLS on both of its sides): migrate, apply, a daemon pair syncing and failing over,
//! verify, restore, and sync_service's privilege denials. One server for the whole set
//! (tests/pg17/server.rs). PostgreSQL 17 comes from `scripts/ensure-deps.sh pg17`; the
//! tests fail, naming that script, when it is missing.

mod common;
#[path = "pg17/denials.rs"]
mod denials;
#[path = "pg17/server.rs"]
mod server;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db, stderr};
use owsync::fixtures::{MutateOptions, mutate};
use server::{ADMIN, Route, supa};
use sqlx::PgPool;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn env(prefix: &str, route: Route) -> (TestEnv, Option<common::bouncer::Bouncer>) {
    tokio::task::block_in_place(|| supa().env(prefix, route))
}

async fn scalar<T>(pool: &PgPool, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_is_postgresql_17_with_a_supabase_shaped_admin_and_tls_required() {
    let (env, _) = env("pg17_shape", Route::Direct);
    let admin = env.admin_pool().await;
    let version: i32 = scalar(&admin, "SELECT current_setting('server_version_num')::int").await;
    assert!((170000..180000).contains(&version), "server_version_num {version}");
    let attrs: String = scalar(
        &admin,
        "SELECT concat_ws(' ', rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolreplication, rolbypassrls)
           FROM pg_roles WHERE rolname = current_user",
    )
    .await;
    assert_eq!(attrs, "f t t t t t", "the admin is not shaped like Supabase's {ADMIN}");
    assert!(scalar::<bool>(&admin, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await);
    let lz4: bool =
        scalar(&admin, "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'").await;
    println!("FIGURE pg17: lz4 TOAST compression {}", if lz4 { "built in" } else { "not built in (pglz kept)" });
    // What Supabase's admin cannot do, this one cannot either.
    let mut c = admin.acquire().await.expect("connection");
    for sql in [
        "ALTER ROLE postgres SUPERUSER",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "CREATE ROLE evil SUPERUSER",
        "ALTER SYSTEM SET fsync = on",
    ] {
        denials::assert_denied(ADMIN, sql, denials::try_sql(&mut c, sql).await);
    }
    drop(c);
    // A client without TLS, or that does not trust the server's CA, gets nowhere.
    let port = supa().pg.port();
    let plain = format!("postgres://sync_service:x@127.0.0.1:{port}/{}?sslmode=disable", env.db);
    let untrusted = supa().url(ADMIN, "x", port, &env.db, &supa().other_ca);
    for (url, want) in [(plain, "no encryption"), (untrusted, "certificate")] {
        let err = owsync::store::connect(&url, "test-tls", 1).await.expect_err("connected");
        let text = format!("{err:#} {:?}", std::error::Error::source(&err));
        assert!(text.contains(want), "{url}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_migrate_apply_failover_verify_restore_and_denials() {
    everything(Route::Direct, "pg17_direct").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_pooler_migrate_apply_failover_verify_restore_and_denials() {
    everything(Route::SessionPooler, "pg17_pooler").await;
}

async fn everything(route: Route, prefix: &str) {
    let t = Instant::now();
    let (env, bouncer) = env(prefix, route);
    let first = supa().migrate(&env).await;
    assert!(first.contains("migrated from version 0"), "{first}");
    let second = supa().migrate(&env).await;
    assert!(second.contains("is up to date"), "{second}");
    let admin = env.admin_pool().await;
    assert_admin_owns_sync_metadata(&admin).await;

    let db = env.path("webui.db");
    small_db(&db, 71);
    let out = ok(&env.ctl(&["apply", "-f", s(&env.manifest("acme", &db, ""))]));
    assert_eq!(out, "clientsync/acme created\n");
    failover(&env, &db, route).await;
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'client_acme' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .expect("owners");
    assert_eq!(owners, [ADMIN], "tenant tables are owned by the admin (provision_table is SECURITY DEFINER)");
    verify_and_restore(&env, &db, &admin).await;
    denials::sync_service_denials(&env).await;
    if route == Route::Direct {
        denials::cluster_role(&env).await;
    }
    if let Some(b) = bouncer {
        let log = b.log();
        assert!(
            log.contains("sync_service") && log.contains("login attempt"),
            "nothing went through pgbouncer:\n{log}"
        );
    }
    println!("FIGURE pg17 {route:?}: everything in {:?}", t.elapsed());
}

async fn assert_admin_owns_sync_metadata(admin: &PgPool) {
    let foreign: i64 = scalar(
        admin,
        "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'sync_metadata'::regnamespace
                   AND relowner <> current_user::regrole)
              + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'sync_metadata'::regnamespace
                   AND proowner <> current_user::regrole)
              + (SELECT count(*) FROM pg_namespace WHERE nspname = 'sync_metadata' AND nspowner <> current_user::regrole)",
    )
    .await;
    assert_eq!(foreign, 0, "objects in sync_metadata not owned by the admin");
    let definer: bool = scalar(admin, "SELECT prosecdef FROM pg_proc WHERE proname = 'provision_table'").await;
    assert!(definer, "provision_table is not SECURITY DEFINER");
}

/// Two daemons: the first leads and syncs, kill -9, the second takes over and syncs a change.
async fn failover(env: &TestEnv, db: &Path, route: Route) {
    let flags = ["--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"];
    let a = Daemon::start(env, "node-a", &flags);
    a.wait_up(Duration::from_secs(20)).await;
    let out = ok(&env.ctl(&["wait", "client/acme", "--for", "condition=Synced", "--timeout", "60s"]));
    assert!(out.contains("condition met"), "{out}");
    let pool = env.sync_pool().await;
    let (diffs, n) = mirror_diff(&pool, "client_acme", db).await;
    assert!(diffs.is_empty() && n > 20, "{diffs:#?}");
    assert!(a.is_leader().await, "node-a does not lead:\n{}", a.log_text());

    let mut a = a;
    let b = Daemon::start(env, "node-b", &flags);
    b.wait_up(Duration::from_secs(20)).await;
    let br = &b;
    eventually(Duration::from_secs(10), "node-b's first heartbeat as standby", || async move {
        br.get_json("/health").await.filter(|h| h["leader_id"] == "node-a").map(|_| ())
    })
    .await;
    a.kill9();
    let t = Instant::now();
    eventually(Duration::from_secs(15), "node-b leads", || async move { br.is_leader().await.then_some(()) }).await;
    println!("FIGURE pg17 {route:?}: kill -9 -> standby leads in {:?} (lease 4s)", t.elapsed());
    mutate(db, &MutateOptions { ops: 30, seed: 5, ..Default::default() }).expect("mutate the source");
    ok(&env.ctl(&["trigger", "acme"]));
    let (pool_r, db_r) = (&pool, db);
    eventually(Duration::from_secs(30), "node-b syncs the change", || async move {
        mirror_diff(pool_r, "client_acme", db_r).await.0.is_empty().then_some(())
    })
    .await;
    let mut b = b;
    assert!(b.terminate().success(), "node-b did not exit cleanly:\n{}", b.log_text());
}

/// verify says equal, restore gives back the source, a changed mirror value is found.
async fn verify_and_restore(env: &TestEnv, db: &Path, admin: &PgPool) {
    let out = ok(&env.ctl(&["verify", "acme"]));
    assert!(!out.is_empty(), "verify printed nothing");
    let restored = env.path("restored.db");
    let out = ok(&env.ctl(&["restore", "acme", "--to", s(&restored)]));
    assert!(out.contains("clientsync/acme restored to"), "{out}");
    let diff = Command::new("sqldiff")
        .args(["--primarykey", s(db), s(&restored)])
        .output()
        .expect("sqldiff (Debian package sqlite3-tools; scripts/test.sh installs it)");
    assert!(diff.status.success(), "sqldiff failed: {}", String::from_utf8_lossy(&diff.stderr));
    assert!(diff.stdout.is_empty(), "restore differs:\n{}", String::from_utf8_lossy(&diff.stdout));

    let changed = sqlx::raw_sql(r#"UPDATE client_acme."chat" SET title = title || ' (edited)' WHERE id = (SELECT min(id) FROM client_acme."chat")"#)
        .execute(admin)
        .await
        .expect("edit the mirror");
    assert_eq!(changed.rows_affected(), 1);
    let o = env.ctl(&["verify", "acme"]);
    assert_eq!(o.status.code(), Some(1), "verify missed an edited mirror value: {}", common::stdout(&o));
    let text = common::stdout(&o) + &stderr(&o);
    assert!(text.contains("chat") && text.contains("title"), "{text}");
}
