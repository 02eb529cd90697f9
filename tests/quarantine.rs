//! Values PostgreSQL cannot hold in the mapped column go to sync_metadata.quarantine,
//! raw and with the reason, never altered silently and never blocking the rest of the
//! sync; verify accounts for them; fixing the source resolves them.

mod common;

use common::{TestEnv, ok, stderr, stdout};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn unfit_values_are_quarantined_not_lost() {
    let env = TestEnv::new("quarantine").await;
    let db = env.path("odd.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, s TEXT, j JSON);
             CREATE TABLE ok (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO ok VALUES (1, 'fine'), (2, 'also fine');",
        )
        .unwrap();
        let ins = |id: &[u8], n: rusqlite::types::Value, s: rusqlite::types::Value, j: &str| {
            c.execute(
                "INSERT INTO t VALUES (CAST(?1 AS TEXT), ?2, ?3, ?4)",
                rusqlite::params![rusqlite::types::Value::Blob(id.to_vec()), n, s, j],
            )
            .unwrap();
        };
        use rusqlite::types::Value as V;
        ins(b"good", V::Integer(1), V::Text("x".into()), "{}");
        ins(b"blobintext", V::Integer(3), V::Blob(vec![1, 2]), "[]");
        c.execute("INSERT INTO t VALUES ('nul', 2, CAST(X'610062' AS TEXT), '[]')", []).unwrap();
        ins(b"textint", V::Text("not a number".into()), V::Text("y".into()), "1");
        ins(b"badjson", V::Integer(4), V::Text("z".into()), "{nope");
        // Invalid UTF-8 in a TEXT column, and in the key itself.
        c.execute("INSERT INTO t VALUES ('badutf8', 5, CAST(X'FF41' AS TEXT), 'null')", []).unwrap();
        c.execute("INSERT INTO t VALUES (CAST(X'FE42' AS TEXT), 6, 'k', 'null')", []).unwrap();
    }
    ok(&env.ctl(&["apply", "-f", env.manifest("odd", &db, "").to_str().unwrap()]));
    let out = env.ctl(&["sync", "odd", "--once"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    let pool = env.sync_pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', true)").execute(&mut *tx).await.unwrap();
    let q = sqlx::query(
        "SELECT row_key, column_name, storage_class, reason, raw FROM sync_metadata.quarantine
         WHERE client_name = 'odd' AND resolved_at IS NULL ORDER BY row_key, column_name",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let got: Vec<(String, String, String, Vec<u8>)> =
        q.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get::<Option<Vec<u8>>, _>(4).unwrap_or_default())).collect();
    let reasons: Vec<String> = q.iter().map(|r| r.get(3)).collect();
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(got.contains(&("blobintext".into(), "s".into(), "blob".into(), vec![1, 2])), "{got:?}");
    assert!(got.contains(&("nul".into(), "s".into(), "text".into(), b"a\0b".to_vec())), "{got:?}");
    assert!(got.contains(&("textint".into(), "n".into(), "text".into(), b"not a number".to_vec())), "{got:?}");
    assert!(got.contains(&("badjson".into(), "j".into(), "text".into(), b"{nope".to_vec())), "{got:?}");
    assert!(got.contains(&("badutf8".into(), "s".into(), "text".into(), vec![0xff, 0x41])), "{got:?}");
    assert!(got.iter().any(|g| g.1 == "id" && g.3 == vec![0xfe, 0x42]), "{got:?}");
    assert!(reasons.iter().any(|r| r.contains("NUL")) && reasons.iter().any(|r| r.contains("UTF-8")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("key column")), "{reasons:?}");
    // The rest of the row is mirrored, the unfit cell is NULL; the key-unfit row is not there.
    let row = sqlx::query("SELECT n, s, j::text FROM client_odd.t WHERE id = 'nul'").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(row.get::<Option<i64>, _>(0), Some(2));
    assert_eq!(row.get::<Option<String>, _>(1), None);
    assert_eq!(row.get::<Option<String>, _>(2).as_deref(), Some("[]"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM client_odd.t").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(n, 6);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM client_odd.ok").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(n, 2, "the other table syncs");
    tx.commit().await.unwrap();

    // verify: equal, with the quarantined values accounted for.
    let out = env.ctl(&["verify", "odd"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let line: Vec<&str> = text.lines().find(|l| l.starts_with("t ")).unwrap().split_whitespace().collect();
    let col = header.iter().position(|h| *h == "QUARANTINED").unwrap();
    assert_eq!(line[col], "6", "{text}");

    // Fix one at the source: resolved on the next sync.
    rusqlite::Connection::open(&db).unwrap().execute("UPDATE t SET j = '{\"ok\":1}' WHERE id = 'badjson'", []).unwrap();
    ok(&env.ctl(&["sync", "odd", "--once"]));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', true)").execute(&mut *tx).await.unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.quarantine WHERE client_name = 'odd' AND resolved_at IS NULL",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(open, 5);
    let j: Option<String> =
        sqlx::query_scalar("SELECT j::text FROM client_odd.t WHERE id = 'badjson'").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(j.as_deref(), Some("{\"ok\":1}"));
    tx.commit().await.unwrap();
    let out = env.ctl(&["verify", "odd"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
}

/// A value fixed at the source is resolved by an incremental pass too (one that re-reads
/// only the changed pages' rows), and a value still unfit keeps its first detection time.
#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_pass_resolves_what_it_re_reads() {
    let env = TestEnv::new("quarantine_inc").await;
    let db = env.path("big.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, j JSON);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO t SELECT i, printf('%.*c', 300, 'x'), '{}' FROM n;
         UPDATE t SET j = '{broken' WHERE id IN (10, 2900);",
    )
    .unwrap();
    ok(&env.ctl(&["apply", "-f", env.manifest("big", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "big", "--once"]));
    let pool = env.admin_pool().await;
    let open = || async {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT row_key, detected_at FROM sync_metadata.quarantine
             WHERE client_name = 'big' AND resolved_at IS NULL ORDER BY row_key",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let before = open().await;
    assert_eq!(before.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["10", "2900"]);
    // Fix one; touch the other's page without fixing it.
    c.execute_batch("UPDATE t SET j = '{\"ok\":true}' WHERE id = 10; UPDATE t SET body = 'y' WHERE id = 2901;")
        .unwrap();
    let out = ok(&env.ctl(&["sync", "big", "--once"]));
    assert!(out.lines().any(|l| l.starts_with("t ") && l.contains("changed-pages")), "not an incremental pass:\n{out}");
    let after = open().await;
    assert_eq!(after.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["2900"], "the fixed value is still listed");
    assert_eq!(after[0].1, before[1].1, "a value still unfit keeps its first detection time");
}
