//! An operator's damage to a mirror is repaired by the controller, as Kubernetes puts a
//! resource back on spec: a dropped mirror column comes back and a table whose mirror
//! was dropped is re-created, within two syncs, and the mirror then equals its source.

mod common;

use common::compare::mirror_diff;
use common::{TestEnv, ok, small_db};

fn sync(env: &TestEnv, name: &str) -> std::process::Output {
    env.ctl(&["sync", name, "--once"])
}

/// A tenant `fix` over a small generated source, synced once; its source path and an
/// admin pool (the operator who damages the mirror).
async fn synced(prefix: &str, seed: u64) -> (TestEnv, std::path::PathBuf, sqlx::PgPool) {
    let env = TestEnv::new(prefix).await;
    let db = env.path("webui.db");
    small_db(&db, seed);
    let m = env.manifest("fix", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    ok(&sync(&env, "fix"));
    let admin = env.admin_pool().await;
    (env, db, admin)
}

/// Two syncs; the second must succeed and leave the mirror equal to the source.
async fn two_syncs_repair(env: &TestEnv, db: &std::path::Path, admin: &sqlx::PgPool) {
    let first = sync(env, "fix");
    let second = sync(env, "fix");
    assert!(
        second.status.success(),
        "the second sync after the damage still fails:\n{}\n{}",
        common::stderr(&first),
        common::stderr(&second)
    );
    let (diffs, n) = mirror_diff(admin, "client_fix", db).await;
    assert!(n > 0 && diffs.is_empty(), "{} differences: {:#?}", diffs.len(), &diffs[..diffs.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_mirror_column_comes_back() {
    let (env, db, admin) = synced("repair_col", 5).await;
    sqlx::query(r#"ALTER TABLE "client_fix"."chat" DROP COLUMN "title""#).execute(&admin).await.unwrap();
    // A change in the source, so the sync does not skip it as unchanged.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("UPDATE chat SET title = title || ' (renamed)' WHERE rowid % 3 = 0").unwrap();
    drop(c);
    two_syncs_repair(&env, &db, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_mirror_table_is_re_created_though_the_source_did_not_change() {
    let (env, db, admin) = synced("repair_tbl", 6).await;
    sqlx::query(r#"DROP TABLE "client_fix"."tag""#).execute(&admin).await.unwrap();
    two_syncs_repair(&env, &db, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_dropped_after_its_source_table_does_not_keep_the_tenant_syncing() {
    let (env, db, admin) = synced("repair_gone", 7).await;
    // The table goes at the source (its mirror is kept, as drift), then the operator
    // drops the mirror too.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("DROP TABLE tag").unwrap();
    drop(c);
    ok(&sync(&env, "fix"));
    sqlx::query(r#"DROP TABLE "client_fix"."tag""#).execute(&admin).await.unwrap();
    let after_drop = ok(&sync(&env, "fix"));
    assert!(!after_drop.contains("source unchanged"), "the dropped mirror table was not noticed:\n{after_drop}");
    let next = ok(&sync(&env, "fix"));
    assert!(next.contains("source unchanged"), "a mirror the sync no longer keeps makes it run again:\n{next}");
    let gone: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('client_fix.tag')::text").fetch_one(&admin).await.unwrap();
    assert_eq!(gone, None, "a table dropped at the source is not re-created");
}
