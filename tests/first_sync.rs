//! First syncs copy straight into an empty mirror table (no stage, upsert or tombstone
//! pass); everything else goes through the stage. Both keep the engine's guarantees:
//! quarantine, key-less rows, conflict tracking, and a failed table leaves nothing.

mod common;

use common::compare::mirror_diff;
use common::{TestEnv, ok, small_db};
use owsync::sync::{SyncJob, sync_tenant};
use sqlx::PgPool;

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

async fn state(pool: &PgPool, table: &str) -> Option<(i64, String)> {
    sqlx::query_as(
        "SELECT rows, updated_at::text FROM sync_metadata.table_state WHERE client_name = 'acme' AND table_name = $1",
    )
    .bind(table)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_table_is_copied_straight_in_then_synced_through_the_stage() {
    let env = TestEnv::new("firstsync_new").await;
    let db = env.path("webui.db");
    small_db(&db, 11);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    let pool = env.sync_pool().await;
    let admin = env.admin_pool().await;
    let spec = owsync::store::specs::get(&pool, &env.cluster, "acme").await.unwrap().spec;
    let job = SyncJob {
        pool: &pool,
        cluster: &env.cluster,
        client: "acme",
        spec: &spec,
        fence: None,
        options: Default::default(),
    };

    let first = sync_tenant(&job).await.unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert!(first.tables.values().all(|t| t.direct), "a first sync copies every table straight in: {first:?}");
    assert_eq!(first.tables["chat"].upserted as i64, first.tables["chat"].rows);
    let (diffs, _) = mirror_diff(&pool, "client_acme", &db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
    let bad = scalar(
        &admin,
        "SELECT count(*) FROM client_acme.chat WHERE _owsync_deleted IS DISTINCT FROM false OR _owsync_synced_at IS NULL",
    )
    .await;
    assert_eq!(bad, 0, "the direct COPY writes the bookkeeping columns");

    // A new table, with an unfit value and a row whose key cannot be held.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE memo (id TEXT PRIMARY KEY, n INTEGER, body TEXT);
         INSERT INTO memo VALUES ('a', 1, 'one'), ('b', 'not a number', 'two'), (NULL, 3, 'no key');
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
         INSERT INTO memo SELECT 'k' || i, i, hex(randomblob(200)) FROM s;",
    )
    .unwrap();
    drop(c);
    let second = sync_tenant(&job).await.unwrap();
    assert!(second.failed.is_empty(), "{:?}", second.failed);
    let memo = &second.tables["memo"];
    assert!(memo.direct, "a new table of a synced tenant is copied straight in: {memo:?}");
    assert_eq!((memo.rows, memo.upserted, memo.quarantined), (3003, 3002, 2), "{memo:?}");
    assert!(second.tables.iter().filter(|(n, _)| *n != "memo").all(|(_, t)| !t.direct), "{second:?}");
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.memo").await, 3002);
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.memo WHERE id = 'b' AND n IS NULL").await, 1);
    let open = scalar(
        &admin,
        "SELECT count(*) FROM sync_metadata.quarantine WHERE table_name = 'memo' AND resolved_at IS NULL",
    )
    .await;
    assert_eq!(open, 2, "the unfit value and the NULL key are quarantined");

    // Conflict tracking was provisioned on the directly copied table: a write made in
    // PostgreSQL is stamped.
    sqlx::query("UPDATE client_acme.memo SET body = 'edited in pg' WHERE id = 'k7'").execute(&admin).await.unwrap();
    let stamped =
        scalar(&admin, "SELECT count(*) FROM client_acme.memo WHERE _owsync_target_changed_at IS NOT NULL").await;
    assert_eq!(stamped, 1);

    // From now on the table goes through the stage: updates, tombstones, the PostgreSQL edit kept.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("UPDATE memo SET body = 'changed' WHERE id = 'a'; DELETE FROM memo WHERE id = 'k9';").unwrap();
    drop(c);
    let third = sync_tenant(&job).await.unwrap();
    let memo = &third.tables["memo"];
    assert!(!memo.direct, "{memo:?}");
    assert_eq!((memo.upserted, memo.tombstoned, memo.kept_target), (1, 1, 1), "{memo:?}");
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.memo WHERE body = 'edited in pg'").await, 1);
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.memo WHERE _owsync_deleted").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_direct_copy_leaves_no_rows_and_no_table_state() {
    let env = TestEnv::new("firstsync_fail").await;
    let db = env.path("webui.db");
    small_db(&db, 12);
    // Two distinct SQLite keys (integer 1 and text '1' in an untyped column) that are
    // the same text key in PostgreSQL: the COPY fails after thousands of rows.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE clash (id PRIMARY KEY, body TEXT);
         WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM s WHERE i < 5000)
         INSERT INTO clash SELECT 'k' || i, hex(randomblob(300)) FROM s;
         INSERT INTO clash VALUES (1, 'int'), ('1', 'text');",
    )
    .unwrap();
    drop(c);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    let pool = env.sync_pool().await;
    let admin = env.admin_pool().await;
    let spec = owsync::store::specs::get(&pool, &env.cluster, "acme").await.unwrap().spec;
    let job = SyncJob {
        pool: &pool,
        cluster: &env.cluster,
        client: "acme",
        spec: &spec,
        fence: None,
        options: Default::default(),
    };

    let r = sync_tenant(&job).await.unwrap();
    assert!(r.failed.contains_key("clash"), "{r:?}");
    assert!(r.tables["chat"].direct && r.tables["chat"].rows > 0, "the other tables are synced: {r:?}");
    // Provisioned beforehand, in a transaction of its own (`sync::provision`): left empty.
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.clash").await, 0);
    assert_eq!(state(&admin, "clash").await, None);

    // An empty mirror table that exists: the failed direct COPY leaves it empty and its state as it was.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE later (id PRIMARY KEY, body TEXT);").unwrap();
    drop(c);
    let r = sync_tenant(&job).await.unwrap();
    assert!(r.tables["later"].direct, "{r:?}");
    let before = state(&admin, "later").await.expect("state of the empty table");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM s WHERE i < 5000)
         INSERT INTO later SELECT 'k' || i, hex(randomblob(300)) FROM s;
         INSERT INTO later VALUES (1, 'int'), ('1', 'text');",
    )
    .unwrap();
    drop(c);
    let r = sync_tenant(&job).await.unwrap();
    assert!(r.failed.contains_key("later"), "{r:?}");
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.later").await, 0);
    assert_eq!(state(&admin, "later").await, Some(before));

    // Fixed at the source: the next sync copies both tables straight in.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("DELETE FROM clash WHERE id = 1; DELETE FROM later WHERE id = 1;").unwrap();
    drop(c);
    let r = sync_tenant(&job).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(r.tables["clash"].direct && r.tables["later"].direct, "{r:?}");
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.clash").await, 5000);
    assert_eq!(scalar(&admin, "SELECT count(*) FROM client_acme.later").await, 5000);
    let (diffs, _) = mirror_diff(&pool, "client_acme", &db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
    let open = scalar(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'test-sync' AND state LIKE 'idle in transaction%'",
    )
    .await;
    assert_eq!(open, 0, "no pooled connection is left inside a transaction");
}
